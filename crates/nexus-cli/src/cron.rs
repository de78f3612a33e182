//! `nexus cron`: the operators' view of scheduled jobs, over `N.scheduler.<op>`:
//! every job with its owner, next fire, last fire and last outcome; and add,
//! remove, pause, resume. Users manage their own jobs in the chat (the `cron`
//! tool); this file never touches the database.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use nexus_bus::{Bus, BusError, TraceContext, scheduler_op};
use nexus_common::{Config, now_ms};
use nexus_proto::v1::{
    AddJobRequest, AddJobResponse, Job, JobActionRequest, JobActionResponse, JobOrigin,
    ListJobsRequest, ListJobsResponse, MissedFirePolicy, job::When,
};
use serde_json::json;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct CronArgs {
    #[command(subcommand)]
    command: CronCommand,
}

#[derive(Subcommand)]
enum CronCommand {
    /// Every job (or one user's) with its owner, schedule, next and last fire, and last outcome.
    List {
        /// Only this user's jobs.
        #[arg(long = "user")]
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a job for a user; its fires go to the chat given.
    Add(AddArgs),
    /// Delete a job; it fires no more.
    Remove { id: String },
    /// Stop a job firing until it is resumed.
    Pause { id: String },
    /// Let a paused job fire again, from now on.
    Resume { id: String },
}

#[derive(Args)]
struct AddArgs {
    /// The user the job acts for.
    #[arg(long = "user")]
    user: String,
    /// The channel its fires go to, e.g. `telegram`.
    #[arg(long)]
    channel: String,
    /// The chat on that channel.
    #[arg(long)]
    chat: String,
    /// The thread within the chat, if any.
    #[arg(long, default_value = "")]
    thread: String,
    /// What the agent is asked to do when it fires.
    #[arg(long, short = 'm')]
    message: String,
    /// A five-field cron expression, e.g. "0 9 * * 1".
    #[arg(long, group = "when")]
    cron: Option<String>,
    /// Fire every this many seconds.
    #[arg(long, group = "when")]
    every: Option<u64>,
    /// Fire once at this ISO 8601 time (local to --tz unless it has an offset).
    #[arg(long, group = "when")]
    at: Option<String>,
    /// IANA time zone; default `[memory] timezone`.
    #[arg(long, default_value = "")]
    tz: String,
    /// What to do about fires missed while the scheduler was down.
    #[arg(long, value_enum, default_value_t = Missed::RunOnceLate)]
    missed: Missed,
}

#[derive(Clone, Copy, ValueEnum)]
enum Missed {
    RunOnceLate,
    Skip,
}

pub async fn run(config: Config, args: CronArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-cron").await?;
    match args.command {
        CronCommand::List { user, json } => {
            let reply: ListJobsResponse = ask(
                &bus,
                &config,
                scheduler_op::LIST,
                &ListJobsRequest {
                    owner_user_id: user.unwrap_or_default(),
                    limit: 0,
                },
            )
            .await?;
            if json {
                let jobs: Vec<_> = reply.jobs.iter().map(job_json).collect();
                let out = json!({
                    "total": reply.total,
                    "active": reply.active,
                    "paused": reply.paused,
                    "jobs": jobs,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", table(&reply, now_ms()));
            }
        }
        CronCommand::Add(a) => {
            let when = match (a.cron, a.every, a.at) {
                (Some(c), None, None) => When::Cron(c),
                (None, Some(s), None) => When::EverySeconds(s),
                (None, None, Some(t)) => When::At(t),
                _ => bail!("give one of --cron, --every or --at"),
            };
            let job = Job {
                when: Some(when),
                timezone: a.tz,
                owner_user_id: a.user,
                message: a.message,
                origin: Some(JobOrigin {
                    channel: a.channel,
                    chat_id: a.chat,
                    thread_id: a.thread,
                }),
                missed: match a.missed {
                    Missed::RunOnceLate => MissedFirePolicy::RunOnceLate,
                    Missed::Skip => MissedFirePolicy::Skip,
                } as i32,
                ..Default::default()
            };
            let reply: AddJobResponse = ask(
                &bus,
                &config,
                scheduler_op::ADD,
                &AddJobRequest { job: Some(job) },
            )
            .await?;
            let job = reply.job.unwrap_or_default();
            println!(
                "added {} for {}: {}; next fire {}",
                job.id,
                job.owner_user_id,
                job.schedule,
                when_text(job.next_run_ms, now_ms())
            );
        }
        CronCommand::Remove { id } => {
            let job = act(&bus, &config, scheduler_op::REMOVE, id).await?;
            println!(
                "removed {} ({}, of {})",
                job.id, job.schedule, job.owner_user_id
            );
        }
        CronCommand::Pause { id } => {
            let job = act(&bus, &config, scheduler_op::PAUSE, id).await?;
            println!(
                "paused {} ({}, of {})",
                job.id, job.schedule, job.owner_user_id
            );
        }
        CronCommand::Resume { id } => {
            let job = act(&bus, &config, scheduler_op::RESUME, id).await?;
            println!(
                "resumed {} ({}, of {}); next fire {}",
                job.id,
                job.schedule,
                job.owner_user_id,
                when_text(job.next_run_ms, now_ms())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn act(bus: &Bus, config: &Config, op: &str, id: String) -> anyhow::Result<Job> {
    let reply: JobActionResponse = ask(
        bus,
        config,
        op,
        &JobActionRequest {
            id,
            owner_user_id: String::new(),
        },
    )
    .await?;
    Ok(reply.job.unwrap_or_default())
}

/// One request to the scheduler, its failures said in words: not running, or a
/// request it refused (its message as is).
pub(crate) async fn ask<Req: prost::Message, Resp: prost::Message + Default>(
    bus: &Bus,
    config: &Config,
    op: &str,
    req: &Req,
) -> anyhow::Result<Resp> {
    match bus
        .request(
            bus.subjects().scheduler(op),
            req,
            &TraceContext::new_root(),
            Some(REQUEST_TIMEOUT),
        )
        .await
    {
        Ok(reply) => Ok(reply),
        Err(BusError::NoResponders { .. }) => bail!(
            "the scheduler is not running in namespace \"{}\" on {}: start it (`nexus up`) and try again",
            config.namespace,
            config.nats.url
        ),
        Err(BusError::Remote {
            code: 400 | 404,
            message,
            ..
        }) => bail!("{message}"),
        Err(e) => Err(e).context("asking the scheduler"),
    }
}

fn job_json(j: &Job) -> serde_json::Value {
    let (kind, value) = match &j.when {
        Some(When::Cron(c)) => ("cron", json!(c)),
        Some(When::EverySeconds(s)) => ("every_seconds", json!(s)),
        Some(When::AtMs(ms)) => ("at_ms", json!(ms)),
        Some(When::At(t)) => ("at", json!(t)),
        None => ("none", json!(null)),
    };
    let origin = j.origin.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "owner": j.owner_user_id,
        kind: value,
        "timezone": j.timezone,
        "schedule": j.schedule,
        "message": j.message,
        "channel": origin.channel,
        "chat_id": origin.chat_id,
        "thread_id": origin.thread_id,
        "missed": if j.missed() == MissedFirePolicy::Skip { "skip" } else { "run_once_late" },
        "paused": j.paused,
        "next_run_ms": (j.next_run_ms > 0).then_some(j.next_run_ms),
        "last_run_ms": (j.last_run_ms > 0).then_some(j.last_run_ms),
        "last_outcome": j.last_outcome,
    })
}

/// An instant in UTC with how far away it is, e.g. `2026-03-02 08:00Z (in 3 h)`.
pub(crate) fn when_text(ms: i64, now: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string());
    if ms > now {
        format!("{at} (in {})", crate::whatsapp::ago(ms - now))
    } else {
        format!("{at} ({} ago)", crate::whatsapp::ago(now - ms))
    }
}

/// Jobs as an aligned table; a note when there are none.
fn table(reply: &ListJobsResponse, now: i64) -> String {
    if reply.jobs.is_empty() {
        return "no scheduled jobs\n".to_owned();
    }
    let header = [
        "ID",
        "OWNER",
        "SCHEDULE",
        "NEXT FIRE",
        "LAST FIRE",
        "LAST OUTCOME",
        "MESSAGE",
    ];
    let rows: Vec<[String; 7]> = reply
        .jobs
        .iter()
        .map(|j| {
            let next = if j.paused {
                "paused".to_owned()
            } else if j.next_run_ms > 0 {
                when_text(j.next_run_ms, now)
            } else {
                "done".to_owned()
            };
            let message: String = j.message.chars().take(40).collect();
            [
                j.id.clone(),
                j.owner_user_id.clone(),
                j.schedule.clone(),
                next,
                when_text(j.last_run_ms, now),
                if j.last_outcome.is_empty() {
                    "-".to_owned()
                } else {
                    j.last_outcome.clone()
                },
                message,
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        for (c, cell) in cells.iter().enumerate().take(6) {
            out.push_str(&format!("{cell:w$}  ", w = widths[c]));
        }
        out.push_str(cells[6]);
        out.push('\n');
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]);
    }
    out.push_str(&format!(
        "{} job(s): {} waiting to fire, {} paused\n",
        reply.total, reply.active, reply.paused
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_shows_owner_next_and_last_fire_and_outcome_in_columns() {
        assert_eq!(
            table(&ListJobsResponse::default(), 0),
            "no scheduled jobs\n"
        );
        let now = 1_772_438_400_000; // 2026-03-02T08:00:00Z
        let job = Job {
            id: "job-1".into(),
            owner_user_id: "ada".into(),
            schedule: "every 1 h".into(),
            next_run_ms: now + 3_600_000,
            last_run_ms: now,
            last_outcome: "fired".into(),
            message: "stretch".into(),
            ..Default::default()
        };
        let reply = ListJobsResponse {
            jobs: vec![job],
            total: 1,
            active: 1,
            paused: 0,
        };
        let out = table(&reply, now);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("ID     OWNER  SCHEDULE   NEXT FIRE"),
            "{out}"
        );
        assert!(
            lines[1].contains("ada")
                && lines[1].contains("2026-03-02 09:00:00Z (in 60 min)")
                && lines[1].contains("2026-03-02 08:00:00Z (0s ago)")
                && lines[1].contains("fired")
                && lines[1].ends_with("stretch"),
            "{out}"
        );
        assert_eq!(lines[2], "1 job(s): 1 waiting to fire, 0 paused");
    }
}
