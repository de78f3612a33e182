//! What add, list, remove, pause and resume mean, for both doors into the
//! scheduler: the `cron` tool (a user, named by the caller context) and
//! `N.scheduler.<op>` (an operator, who sees every job). Input is checked here,
//! once, and every refusal says what to change.
//!
//! It must never let a user see or touch another user's job, and never take the
//! owner or the origin of a job from the model.

use std::time::Duration;

use jiff::tz::TimeZone;
use nexus_common::{config::SchedulerConfig, now_ms};

use crate::{
    cron::CronExpr,
    job::{Job, Origin},
    runner::Runner,
    schedule::{self, MissedPolicy, Schedule},
    store::{Inserted, Store, StoreError},
};

/// Longest job message, in characters: an instruction, not a document.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// An `at` this little in the past still counts as now: the model's clock
/// shows minutes, so "in one minute" can come out a few seconds late.
const PAST_TOLERANCE_MS: i64 = 60_000;

/// Who acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user: sees and changes only their own jobs.
    User(String),
    /// An operator (`nexus cron`): every job.
    Admin,
}

impl Actor {
    fn owner(&self) -> Option<&str> {
        match self {
            Self::User(u) => Some(u),
            Self::Admin => None,
        }
    }
}

/// A new job as asked for, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub owner: String,
    pub origin: Option<Origin>,
    pub message: String,
    pub cron_expr: Option<String>,
    pub every_seconds: Option<u64>,
    pub at: Option<String>,
    /// Milliseconds since the epoch, for callers that have an instant already.
    pub at_ms: Option<i64>,
    pub tz: Option<String>,
    pub missed: Option<MissedPolicy>,
}

/// Why a request was refused; each kind maps to one tool failure and one service error code.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input is wrong; the text says how to fix it.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A limit stands in the way.
    #[error("{0}")]
    Limit(String),
    #[error("the job store is unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Jobs as both doors see them.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    runner: Option<Runner>,
    limits: SchedulerConfig,
    default_tz: String,
}

impl Jobs {
    /// `default_tz` is `[memory] timezone`, for jobs that name none.
    pub fn new(
        store: Store,
        runner: Option<Runner>,
        limits: SchedulerConfig,
        default_tz: String,
    ) -> Self {
        Self {
            store,
            runner,
            limits,
            default_tz,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks and stores a new job; its first due time is computed from now.
    pub async fn add(&self, new: NewJob) -> Result<Job, JobError> {
        let now = now_ms();
        let job = self.check(new, now)?;
        match self
            .store
            .insert(&job, self.limits.max_jobs_per_user)
            .await?
        {
            Inserted::Yes => {}
            Inserted::TooMany(n) => {
                return Err(JobError::Limit(format!(
                    "{} already has {n} active jobs, the most allowed ([scheduler] max_jobs_per_user = {}); \
                     remove one first (list shows them)",
                    job.owner, self.limits.max_jobs_per_user
                )));
            }
        }
        tracing::info!(job = job.id, owner = job.owner, schedule = %job.describe(), next_ms = ?job.next_run_ms, "job added");
        if let Some(runner) = &self.runner {
            runner.wake();
        }
        Ok(job)
    }

    /// The job a request describes, checked against the limits, due first after `now`.
    pub fn check(&self, new: NewJob, now: i64) -> Result<Job, JobError> {
        let invalid = |m: String| JobError::Invalid(m);
        let message = new.message.trim().to_owned();
        if message.is_empty() {
            return Err(invalid(
                "message is empty: say what to do when the job fires, e.g. \"Remind the user to send the weekly report\"".into(),
            ));
        }
        if message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(invalid(format!(
                "message is longer than {MAX_MESSAGE_CHARS} characters; keep it to an instruction"
            )));
        }
        if new.owner.trim().is_empty() {
            return Err(invalid(
                "the job has no owner (no user id in the caller's context)".into(),
            ));
        }
        let origin = new
            .origin
            .filter(|o| !o.channel.is_empty() && !o.chat_id.is_empty())
            .ok_or_else(|| {
                invalid("the job has no chat to report to (channel and chat id)".into())
            })?;
        nexus_common::domain::SessionKey::new(
            nexus_common::domain::ChannelName::parse(&origin.channel)
                .map_err(|e| invalid(e.to_string()))?,
            &origin.chat_id,
            &origin.thread_id,
        )
        .map_err(|e| invalid(e.to_string()))?;
        let tz_name = new
            .tz
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| self.default_tz.clone());
        let tz = TimeZone::get(&tz_name).map_err(|_| {
            invalid(format!(
                "unknown timezone \"{tz_name}\": use an IANA name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
            ))
        })?;
        let min = Duration::from_secs(self.limits.min_interval_secs);
        let given = [
            new.cron_expr.is_some(),
            new.every_seconds.is_some(),
            new.at.is_some() || new.at_ms.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(invalid(format!(
                "give exactly one of cron_expr, every_seconds or at (got {given})"
            )));
        }
        let schedule = if let Some(expr) = new.cron_expr {
            let expr: CronExpr = expr
                .parse()
                .map_err(|e: crate::cron::CronError| invalid(e.to_string()))?;
            let gap = expr.min_gap();
            if gap < min {
                return Err(invalid(format!(
                    "cron expression \"{expr}\" fires every {}; the shortest interval allowed is {} \
                     ([scheduler] min_interval_secs)",
                    schedule::words(gap),
                    schedule::words(min)
                )));
            }
            Schedule::Cron(expr)
        } else if let Some(secs) = new.every_seconds {
            if secs < self.limits.min_interval_secs {
                return Err(invalid(format!(
                    "every_seconds = {secs} is below the shortest interval allowed, {} s \
                     ([scheduler] min_interval_secs)",
                    self.limits.min_interval_secs
                )));
            }
            Schedule::Every {
                every: Duration::from_secs(secs),
                anchor_ms: now,
            }
        } else {
            let at_ms = match (new.at_ms, new.at) {
                (Some(ms), _) => ms,
                (None, Some(text)) => schedule::parse_at(&text, &tz)
                    .map_err(invalid)?
                    .as_millisecond(),
                (None, None) => now,
            };
            if at_ms < now - PAST_TOLERANCE_MS {
                return Err(invalid(format!(
                    "at {} is in the past (it is now {}); give a time in the future",
                    schedule::local_time(at_ms, &tz_name),
                    schedule::local_time(now, &tz_name)
                )));
            }
            Schedule::At {
                at_ms: at_ms.max(now),
            }
        };
        let next_run_ms = match &schedule {
            Schedule::At { at_ms } => Some(*at_ms),
            other => other.next_after(now, &tz),
        };
        Ok(Job {
            id: format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
            owner: new.owner.trim().to_owned(),
            origin,
            message,
            schedule,
            tz: tz_name,
            missed: new.missed.unwrap_or_default(),
            paused: false,
            next_run_ms,
            last_run_ms: None,
            last_outcome: String::new(),
            created_at_ms: now,
        })
    }

    /// Jobs the actor may see, soonest first, with counts.
    pub async fn list(
        &self,
        actor: &Actor,
        owner_filter: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Job>, crate::store::Counts), JobError> {
        let owner = actor.owner().or(owner_filter.filter(|o| !o.is_empty()));
        let jobs = self.store.list(owner, limit).await?;
        let counts = self.store.counts(owner).await?;
        Ok((jobs, counts))
    }

    /// Deletes a job the actor may change.
    pub async fn remove(&self, actor: &Actor, id: &str) -> Result<Job, JobError> {
        let job = self
            .store
            .remove(id.trim(), actor.owner())
            .await?
            .ok_or_else(|| not_found(actor, id))?;
        tracing::info!(job = job.id, owner = job.owner, "job removed");
        Ok(job)
    }

    /// Pauses a job: it keeps its schedule and fires nothing until resumed.
    pub async fn pause(&self, actor: &Actor, id: &str) -> Result<Job, JobError> {
        let job = self
            .store
            .set_paused(id.trim(), actor.owner(), true, None, "paused")
            .await?
            .ok_or_else(|| not_found(actor, id))?;
        tracing::info!(job = job.id, "job paused");
        Ok(job)
    }

    /// Resumes a paused job from now on: due times that passed while it was paused
    /// do not fire (a one-shot whose time passed follows its missed-fire policy).
    pub async fn resume(&self, actor: &Actor, id: &str) -> Result<Job, JobError> {
        let id = id.trim();
        let job = self
            .store
            .get(id, actor.owner())
            .await?
            .ok_or_else(|| not_found(actor, id))?;
        if !job.paused {
            return Ok(job);
        }
        let now = now_ms();
        let next = match (&job.schedule, job.next_run_ms) {
            (Schedule::At { .. }, next) => next,
            (_, Some(next)) if next > now => Some(next),
            (schedule, _) => schedule.next_after(now, &job.time_zone()),
        };
        let job = self
            .store
            .set_paused(id, actor.owner(), false, next, "resumed")
            .await?
            .ok_or_else(|| not_found(actor, id))?;
        tracing::info!(job = job.id, next_ms = ?job.next_run_ms, "job resumed");
        if let Some(runner) = &self.runner {
            runner.wake();
        }
        Ok(job)
    }
}

fn not_found(actor: &Actor, id: &str) -> JobError {
    JobError::NotFound(match actor {
        // The same words whether the job is someone else's or does not exist.
        Actor::User(_) => format!(
            "you have no job \"{}\"; use action \"list\" to see your jobs and their ids",
            id.trim()
        ),
        Actor::Admin => format!("there is no job \"{}\"", id.trim()),
    })
}
