//! A job as the scheduler holds it: validated, owned by one user, tied to the
//! chat it was made in; and its protobuf form for `N.scheduler.<op>`.

use jiff::tz::TimeZone;
use nexus_proto::v1;

use crate::schedule::{MissedPolicy, Schedule};

/// Where a job was made, and where its fires go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub channel: String,
    pub chat_id: String,
    pub thread_id: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    /// The user it acts for; only they (and operators) see and change it.
    pub owner: String,
    pub origin: Origin,
    /// What the agent is asked to do when it fires.
    pub message: String,
    pub schedule: Schedule,
    /// IANA name; checked when the job was made.
    pub tz: String,
    pub missed: MissedPolicy,
    pub paused: bool,
    /// `None`: the job will not fire again (a one-shot that fired or was skipped).
    pub next_run_ms: Option<i64>,
    pub last_run_ms: Option<i64>,
    pub last_outcome: String,
    pub created_at_ms: i64,
}

impl Job {
    /// The job's time zone (UTC if the stored name stopped resolving).
    pub fn time_zone(&self) -> TimeZone {
        TimeZone::get(&self.tz).unwrap_or(TimeZone::UTC)
    }

    /// The schedule in words.
    pub fn describe(&self) -> String {
        self.schedule.describe(&self.tz)
    }

    pub fn to_proto(&self) -> v1::Job {
        let when = match &self.schedule {
            Schedule::Cron(expr) => v1::job::When::Cron(expr.to_string()),
            Schedule::Every { every, .. } => v1::job::When::EverySeconds(every.as_secs()),
            Schedule::At { at_ms } => v1::job::When::AtMs(*at_ms),
        };
        v1::Job {
            id: self.id.clone(),
            when: Some(when),
            timezone: self.tz.clone(),
            owner_user_id: self.owner.clone(),
            next_run_ms: self.next_run_ms.unwrap_or_default(),
            message: self.message.clone(),
            origin: Some(v1::JobOrigin {
                channel: self.origin.channel.clone(),
                chat_id: self.origin.chat_id.clone(),
                thread_id: self.origin.thread_id.clone(),
            }),
            missed: match self.missed {
                MissedPolicy::RunOnceLate => v1::MissedFirePolicy::RunOnceLate,
                MissedPolicy::Skip => v1::MissedFirePolicy::Skip,
            } as i32,
            paused: self.paused,
            last_run_ms: self.last_run_ms.unwrap_or_default(),
            last_outcome: self.last_outcome.clone(),
            created_at_ms: self.created_at_ms,
            schedule: self.describe(),
        }
    }
}

impl From<v1::MissedFirePolicy> for MissedPolicy {
    fn from(p: v1::MissedFirePolicy) -> Self {
        match p {
            v1::MissedFirePolicy::Skip => Self::Skip,
            v1::MissedFirePolicy::RunOnceLate | v1::MissedFirePolicy::Unspecified => {
                Self::RunOnceLate
            }
        }
    }
}
