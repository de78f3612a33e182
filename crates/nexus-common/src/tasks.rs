//! A sub-agent task's record, as agent-core keeps it (JSON) in the `N_tasks` bucket
//! under `nexus_bus::kv_key(id)`. Shared so the admin console lists and cancels
//! tasks without depending on agent-core; agent-core alone runs them.

use serde::{Deserialize, Serialize};

/// Where a task came from and where its result goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    pub channel: String,
    pub chat_id: String,
    pub thread_id: String,
    pub sender_id: String,
    pub user_id: String,
    pub session_id: String,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    /// Queued or running: it may still send a result, and counts against the limits.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A task: the work item's payload and, with its state, the KV record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub label: String,
    pub task: String,
    pub depth: u32,
    pub origin: Origin,
    pub state: State,
    pub created_ms: i64,
    #[serde(default)]
    pub started_ms: i64,
    #[serde(default)]
    pub finished_ms: i64,
    /// Deliveries that started it; more than one means it restarted.
    #[serde(default)]
    pub attempts: u32,
    /// The message sent to the origin chat (set once the outcome is decided).
    #[serde(default)]
    pub result: String,
}

impl Task {
    /// Marks an active task cancelled at `now_ms`: the replica running it stops at
    /// its next step and sends no result. `Err` with the state it already ended in.
    pub fn cancel(&mut self, now_ms: i64) -> Result<(), State> {
        if !self.state.is_active() {
            return Err(self.state);
        }
        self.state = State::Cancelled;
        self.finished_ms = now_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queued_or_running_task_can_be_cancelled() {
        let mut task: Task = serde_json::from_value(serde_json::json!({
            "id": "t0123456789", "label": "report", "task": "write it", "depth": 1,
            "origin": {"channel": "telegram", "chat_id": "42", "thread_id": "",
                       "sender_id": "42", "user_id": "ada", "session_id": "telegram:42"},
            "state": "running", "created_ms": 5
        }))
        .unwrap();
        assert_eq!(task.cancel(9), Ok(()));
        assert_eq!((task.state, task.finished_ms), (State::Cancelled, 9));
        assert_eq!(task.cancel(10), Err(State::Cancelled));
        task.state = State::Done;
        assert_eq!(task.cancel(10), Err(State::Done));
    }
}
