//! The `cron` tool the model sees (served on `N.tool.cron` through the shared
//! tool runtime): add, list, remove, pause and resume the caller's jobs.
//!
//! The owner and the chat a job reports to come from the caller context, never
//! from the model's arguments. It must never answer with anything but text or a
//! [`ToolFailure`] the model can act on.

use std::time::Duration;

use async_trait::async_trait;
use nexus_tools::{Caller, Tool, ToolFailure};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{
    job::{Job, Origin},
    jobs::{Actor, JobError, Jobs, NewJob},
    schedule::{self, MissedPolicy},
};

/// The tool's name, the design's contract.
pub const NAME: &str = "cron";

/// What the call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    List,
    Remove,
    Pause,
    Resume,
}

/// What a job does about fires missed while the scheduler was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire once, late, then carry on
    RunOnceLate,
    /// Fire none of the missed ones; wait for the next due time
    Skip,
}

/// Arguments of `cron`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronArgs {
    /// "add" a job; "list" the user's jobs; "remove", "pause" or "resume" one by job_id
    pub action: Action,
    /// For add: what you are to do when the job fires, as an instruction to yourself,
    /// e.g. "Remind the user to send the weekly report"
    #[serde(default)]
    pub message: Option<String>,
    /// For add, a repeating job: five fields, minute hour day-of-month month day-of-week,
    /// in tz. "0 9 * * 1" = Mondays at 09:00; "0 18 * * 1-5" = weekdays at 18:00;
    /// "30 7 1 * *" = the 1st of each month at 07:30
    #[serde(default)]
    pub cron_expr: Option<String>,
    /// For add, a repeating job: every this many seconds, starting now
    #[serde(default)]
    pub every_seconds: Option<u64>,
    /// For add, a one-time job: ISO 8601 date and time, local to tz unless it has an
    /// offset, e.g. "2026-03-01T12:00" or "2026-03-01T11:00:00Z"
    #[serde(default)]
    pub at: Option<String>,
    /// For add: IANA time zone of cron_expr and at, e.g. "Europe/Berlin"; default: the
    /// user's configured time zone
    #[serde(default)]
    pub tz: Option<String>,
    /// For add: fires missed while the scheduler was down: "run_once_late" (default)
    /// fires once when it is back; "skip" waits for the next due time
    #[serde(default)]
    pub missed: Option<Missed>,
    /// For remove, pause and resume: the job's id, as add and list show it
    #[serde(default)]
    pub job_id: Option<String>,
}

impl From<JobError> for ToolFailure {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Invalid(m) => ToolFailure::invalid_args(m),
            JobError::NotFound(m) => ToolFailure::not_found(m),
            JobError::Limit(m) => ToolFailure::denied(m),
            JobError::Store(error) => {
                tracing::error!(%error, "cron tool: job store failed");
                ToolFailure::upstream("The scheduler's job store is unavailable right now.")
            }
        }
    }
}

/// The `cron` tool over the jobs of one scheduler.
pub struct CronTool {
    jobs: Jobs,
}

impl CronTool {
    pub fn new(jobs: Jobs) -> Self {
        Self { jobs }
    }
}

#[async_trait]
impl Tool for CronTool {
    type Args = CronArgs;
    const NAME: &'static str = NAME;

    fn description(&self) -> String {
        "Schedules work for later, for the user you are talking to: reminders, recurring \
         checks and summaries. A job repeats on a cron_expr or every_seconds, or fires once \
         at a time; when it fires you get its message as an instruction in this same chat, \
         with the user's context and tools, and your answer is sent to them. Turn the user's \
         words into exactly one of cron_expr, every_seconds or at: \"every Monday at 9 AM\" \
         → cron_expr \"0 9 * * 1\"; \"every weekday at 18:00\" → \"0 18 * * 1-5\"; \"in 20 \
         minutes\" → at = the current time plus 20 minutes; \"on 1 March at noon\" → at \
         \"<year>-03-01T12:00\". Times are in tz (default: the user's time zone). list shows \
         the user's jobs with their ids; remove, pause and resume take a job_id."
            .into()
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(15)
    }

    async fn call(&self, caller: &Caller, args: CronArgs) -> Result<String, ToolFailure> {
        if caller.user_id.is_empty() {
            return Err(ToolFailure::denied(
                "cron needs to know whose jobs these are, and this call carries no user",
            ));
        }
        let actor = Actor::User(caller.user_id.clone());
        let job_id = || {
            args.job_id
                .as_deref()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    ToolFailure::invalid_args(
                        "job_id is missing: use action \"list\" to see the ids of the user's jobs",
                    )
                })
        };
        let jobs = &self.jobs;
        match args.action {
            Action::Add => {
                let job = jobs
                    .add(NewJob {
                        owner: caller.user_id.clone(),
                        origin: Some(origin_of(caller)),
                        message: args.message.clone().unwrap_or_default(),
                        cron_expr: args.cron_expr.clone(),
                        every_seconds: args.every_seconds,
                        at: args.at.clone(),
                        at_ms: None,
                        // Unsaid: the user's own zone (their profile), else the default.
                        tz: args
                            .tz
                            .clone()
                            .or_else(|| Some(caller.timezone.clone()).filter(|t| !t.is_empty())),
                        missed: args.missed.map(|m| match m {
                            Missed::RunOnceLate => MissedPolicy::RunOnceLate,
                            Missed::Skip => MissedPolicy::Skip,
                        }),
                    })
                    .await?;
                Ok(format!("Added {}", line(&job)))
            }
            Action::List => {
                let (list, counts) = jobs.list(&actor, None, 0).await?;
                if list.is_empty() {
                    return Ok("The user has no scheduled jobs.".into());
                }
                let mut out = format!(
                    "{} job(s), {} waiting to fire, {} paused:\n",
                    counts.total, counts.active, counts.paused
                );
                for job in &list {
                    out.push_str("- ");
                    out.push_str(&line(job));
                    out.push('\n');
                }
                Ok(out)
            }
            Action::Remove => {
                let job = jobs.remove(&actor, job_id()?).await?;
                Ok(format!(
                    "Removed {} ({}); it will not fire again.",
                    job.id,
                    job.describe()
                ))
            }
            Action::Pause => {
                let job = jobs.pause(&actor, job_id()?).await?;
                Ok(format!(
                    "Paused {} ({}); it fires nothing until resumed.",
                    job.id,
                    job.describe()
                ))
            }
            Action::Resume => {
                let job = jobs.resume(&actor, job_id()?).await?;
                Ok(format!("Resumed {}", line(&job)))
            }
        }
    }
}

/// The chat the call came from: channel and chat id from the context; the thread
/// from the session id (`<channel>:<chat>:<thread>`), which is all that carries it.
fn origin_of(caller: &Caller) -> Origin {
    let prefix = format!("{}:{}:", caller.channel, caller.chat_id);
    Origin {
        channel: caller.channel.clone(),
        chat_id: caller.chat_id.clone(),
        thread_id: caller
            .session_id
            .strip_prefix(&prefix)
            .unwrap_or_default()
            .to_owned(),
    }
}

/// One job in a line: id, schedule, next fire, state, message.
pub fn line(job: &Job) -> String {
    let next = match (job.paused, job.next_run_ms) {
        (true, _) => "paused".to_owned(),
        (false, Some(ms)) => format!("next fire {}", schedule::local_time(ms, &job.tz)),
        (false, None) => "done, fires no more".to_owned(),
    };
    let mut out = format!("{}: {}; {next}", job.id, job.describe());
    if job.missed == MissedPolicy::Skip {
        out.push_str("; missed fires are skipped");
    }
    if let Some(last) = job.last_run_ms {
        out.push_str(&format!(
            "; last fired {} ({})",
            schedule::local_time(last, &job.tz),
            job.last_outcome
        ));
    }
    out.push_str(&format!("; message: \"{}\"", job.message));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_of_a_job_comes_from_the_session_id_of_the_caller() {
        let caller = Caller {
            session_id: "slack:C1:1712.5".into(),
            user_id: "ada".into(),
            channel: "slack".into(),
            chat_id: "C1".into(),
            ..Caller::default()
        };
        assert_eq!(origin_of(&caller).thread_id, "1712.5");
        let caller = Caller {
            session_id: "telegram:42".into(),
            channel: "telegram".into(),
            chat_id: "42".into(),
            ..Caller::default()
        };
        assert_eq!(origin_of(&caller).thread_id, "");
    }

    #[test]
    fn the_schema_offers_the_contract_arguments_and_the_missed_fire_policy() {
        let schema = nexus_tools::schema_of::<CronArgs>();
        let props = schema["properties"].as_object().unwrap();
        for name in [
            "action",
            "message",
            "cron_expr",
            "every_seconds",
            "at",
            "tz",
            "job_id",
            "missed",
        ] {
            assert!(props.contains_key(name), "{name} missing: {schema}");
        }
        assert_eq!(schema["required"], serde_json::json!(["action"]));
        let text = schema.to_string();
        assert!(
            text.contains("run_once_late") && text.contains("skip"),
            "{text}"
        );
    }
}
