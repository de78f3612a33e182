//! Sub-agents: the `spawn` tool queues a task, any replica runs it, the origin
//! chat gets its result.
//!
//! A task is a work item on `N_TASKS` (a JetStream work queue) under the id
//! `task:<id>`, the id derived from the spawning turn and the task text, so a
//! redone turn does not spawn twice. Its state lives in the `N_tasks` KV bucket, which /tasks,
//! /cancel and the limits read on any replica.
//!
//! A sub-agent is a turn of its own session (`task:<id>`) with its own limits and
//! tools. A replica that dies mid-task leaves the item unacked: it is redelivered
//! and the task restarts from the beginning (the user is told). The result is
//! stored in the origin session under the turn id `task:<id>` and sent under
//! `task:<id>:result`, both idempotent, so a redone task still reports once.
//! It must never send a result for a cancelled task.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use futures::StreamExt as _;
use nexus_bus::{InProgress, MemoryOp, Outcome, Puller, TraceContext, kv_key, settle};
use nexus_common::{now_ms, shutdown::CancellationToken};
use nexus_proto::v1::{
    AppendTurnRequest, AppendTurnResponse, ChatRef, HistoryEntry, InboundKind, InboundMessage,
    OutboundKind, OutboundMessage, Role, Sender, SessionRef, ToolSpec,
};
use nexus_tools::{ToolFailure, parse_args, schema_of};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::{agent::Agent, llm::LlmToolCall, turn::Turn};

pub const NAME: &str = "spawn";
/// The channel of a sub-agent's own session (`task:<id>`).
pub const CHANNEL: &str = nexus_common::channel_settings::TASK;
/// Metadata of a sub-agent's turn: its task id and depth.
const META_TASK: &str = "nexus.task_id";
const META_DEPTH: &str = "nexus.task_depth";
const META_ORIGIN_CHANNEL: &str = "nexus.task_origin_channel";
const META_ORIGIN_CHAT: &str = "nexus.task_origin_chat";
/// Tools whose `path` argument is a file the sub-agent wrote.
const WRITING_TOOLS: [&str; 2] = ["write_file", "edit_file"];
/// Pause before a task's cancel watch is opened again after it failed or ended.
const WATCH_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnArgs {
    /// What the sub-agent should do, complete on its own: it sees nothing of this chat
    pub task: String,
    /// A short name for the task, shown in /tasks
    pub label: Option<String>,
}

/// The spec agent-core offers beside the providers' tools.
pub fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_owned(),
        description: "Start a sub-agent on long work (research, a report, a batch of files) that runs in \
                      the background while this chat goes on. Returns at once with a task id; the result \
                      is sent to this chat when the task finishes. The sub-agent sees only the task text, \
                      so make it complete."
            .to_owned(),
        parameters_json_schema: schema_of::<SpawnArgs>().to_string(),
        requires_approval: false,
        timeout_ms: 10_000,
        provider: format!("agent-core/{}", env!("CARGO_PKG_VERSION")),
        encoding: String::new(),
    }
}

// The record lives in nexus-common, so the admin console shares it.
pub use nexus_common::tasks::{Origin, State, Task};

/// `(task id, depth)` of a sub-agent's turn; `None` for a chat's turn.
pub fn task_of(turn: &Turn) -> Option<(&str, u32)> {
    let id = turn.msg.metadata.get(META_TASK)?;
    let depth = turn
        .msg
        .metadata
        .get(META_DEPTH)
        .and_then(|d| d.parse().ok())
        .unwrap_or(1);
    Some((id.as_str(), depth))
}

/// `(channel, chat id)` a sub-agent's tools act in: its task's origin chat.
pub fn origin_chat(turn: &Turn) -> Option<(String, String)> {
    task_of(turn)?;
    let meta = &turn.msg.metadata;
    Some((
        meta.get(META_ORIGIN_CHANNEL)?.clone(),
        meta.get(META_ORIGIN_CHAT)?.clone(),
    ))
}

/// `LlmUsage.purpose` of a sub-agent's model calls: `task:<id>`.
pub fn usage_purpose(turn: &Turn) -> Option<String> {
    task_of(turn).map(|(id, _)| format!("task:{id}"))
}

/// What the system prompt says to a sub-agent; empty for other turns.
pub fn prompt_note(turn: &Turn) -> String {
    match task_of(turn) {
        Some((id, _)) => format!(
            "\n## Background task\nYou are a sub-agent running background task {id} for the user. Nobody \
             reads along or answers questions: work on your own with the tools you have. Your final answer \
             is sent to the user's chat as the task's result, so make it a self-contained summary; put long \
             output in workspace files and name their paths.\n"
        ),
        None => String::new(),
    }
}

/// `t` + 10 hex digits of the turn and the task text: short enough to type in
/// `/cancel <id>`. Not the call id: a redone turn's model names its calls anew, but
/// asks for the same task (as `message` ids its messages).
fn task_id(turn_id: &str, task: &str) -> String {
    let mut h = Sha256::new();
    h.update(turn_id.as_bytes());
    h.update([0]);
    h.update(task.as_bytes());
    format!("t{}", &hex::encode(h.finalize())[..10])
}

/// Id of a task's result message (and of the turn that stores it in the origin session).
fn result_turn_id(id: &str) -> String {
    format!("task:{id}")
}

impl Agent {
    pub(crate) async fn tasks_kv(&self) -> Result<&kv::Store, String> {
        self.tasks_kv
            .get_or_try_init(|| async {
                self.bus
                    .ensure_kv_bucket(
                        &self.bus.subjects().tasks_bucket(),
                        1,
                        Some(Duration::from_secs(7 * 24 * 3600)),
                        "sub-agent tasks: state, origin and result",
                    )
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    async fn load_task(&self, id: &str) -> Result<Option<(Task, u64)>, String> {
        let kv = self.tasks_kv().await?;
        match kv.entry(kv_key(id)).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                Ok(serde_json::from_slice(&e.value)
                    .ok()
                    .map(|t| (t, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every task in the bucket (bounded by its 7-day age).
    pub(crate) async fn all_tasks(&self) -> Result<Vec<Task>, String> {
        let kv = self.tasks_kv().await?;
        let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(bytes)) = kv.get(&key).await
                && let Ok(task) = serde_json::from_slice::<Task>(&bytes)
            {
                out.push(task);
            }
        }
        Ok(out)
    }

    async fn save_task(&self, task: &Task, revision: u64) -> Result<u64, String> {
        let kv = self.tasks_kv().await?;
        let bytes = serde_json::to_vec(task).map_err(|e| e.to_string())?;
        kv.update(kv_key(&task.id), bytes.into(), revision)
            .await
            .map_err(|e| e.to_string())
    }

    /// The `spawn` tool: queues a task for the call `call` of `turn`.
    pub(crate) async fn spawn_task(
        &self,
        turn: &Turn,
        call: &LlmToolCall,
    ) -> Result<String, ToolFailure> {
        let args: SpawnArgs = parse_args(call.arguments.clone())?;
        let text = args.task.trim();
        if text.is_empty() {
            return Err(ToolFailure::invalid_args("task is empty"));
        }
        let limits = &self.config.subagents;
        let (parent, depth) = match task_of(turn) {
            Some((id, d)) => (Some(id.to_owned()), d + 1),
            None => (None, 1),
        };
        if self.config.tools.disabled.iter().any(|d| d == NAME) {
            return Err(ToolFailure::not_found(
                "spawn is switched off here ([tools] disabled)",
            ));
        }
        if limits.max_depth == 0 {
            return Err(ToolFailure::denied(
                "background tasks are switched off here ([subagents] max_depth = 0)",
            ));
        }
        if depth > limits.max_depth {
            return Err(ToolFailure::denied(format!(
                "a sub-agent may not start further tasks: tasks nest at most {} deep ([subagents] max_depth)",
                limits.max_depth
            )));
        }
        let origin = match &parent {
            // A sub-agent's task reports to the chat its own task came from.
            Some(parent) => match self.load_task(parent).await {
                Ok(Some((p, _))) => p.origin,
                Ok(None) => return Err(ToolFailure::not_found("this task's record is gone")),
                Err(e) => return Err(ToolFailure::upstream(format!("task state: {e}"))),
            },
            None => Origin {
                channel: turn.session.channel().to_string(),
                chat_id: turn.session.chat_id().to_owned(),
                thread_id: turn.session.thread_id().to_owned(),
                sender_id: turn
                    .msg
                    .sender
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_default(),
                user_id: turn.user_id.clone(),
                session_id: turn.session.id(),
            },
        };
        let id = task_id(&turn.msg.id, text);
        let store = |e: String| ToolFailure::upstream(format!("task state: {e}"));
        if let Some((existing, _)) = self.load_task(&id).await.map_err(store)? {
            // The same call of a redone turn: the task exists already. Still queued, its
            // item may have been lost with the crash: publish it again (the same
            // `Nats-Msg-Id`, so a copy already in the queue is not doubled).
            if existing.state == State::Queued {
                self.queue(&existing, &turn.trace).await?;
            }
            return Ok(format!(
                "Task {id} was already started (it is {}).",
                existing.state.name()
            ));
        }
        let active: Vec<Task> = self
            .all_tasks()
            .await
            .map_err(store)?
            .into_iter()
            .filter(|t| t.state.is_active())
            .collect();
        let mine = active
            .iter()
            .filter(|t| t.origin.user_id == origin.user_id)
            .count();
        if mine >= limits.max_running_per_user as usize {
            return Err(ToolFailure::denied(format!(
                "too many tasks: this user already has {mine} queued or running (at most {}, [subagents] \
                 max_running_per_user). Wait for one to finish or /cancel one.",
                limits.max_running_per_user
            ))
            .retryable(true));
        }
        if active.len() >= limits.max_running_total as usize {
            return Err(ToolFailure::denied(format!(
                "too many tasks: {} are queued or running in this deployment (at most {}, [subagents] \
                 max_running_total). Try again later.",
                active.len(),
                limits.max_running_total
            ))
            .retryable(true));
        }
        let label = args
            .label
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| text.lines().next().unwrap_or(text))
            .chars()
            .take(80)
            .collect();
        let task = Task {
            id: id.clone(),
            label,
            task: text.to_owned(),
            depth,
            origin,
            state: State::Queued,
            created_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            attempts: 0,
            result: String::new(),
        };
        let bytes = serde_json::to_vec(&task).map_err(|e| ToolFailure::internal(e.to_string()))?;
        let kv = self.tasks_kv().await.map_err(store)?;
        // `create` fails if the key exists: a concurrent redo of the same call.
        if kv.create(kv_key(&id), bytes.into()).await.is_err() {
            return Ok(format!("Task {id} was already started."));
        }
        self.queue(&task, &turn.trace).await?;
        tracing::info!(task = %id, depth, "task queued");
        Ok(format!(
            "Started task {id} (\"{}\"). It runs in the background; its result is sent to this chat when it \
             finishes. The user can see it with /tasks and stop it with /cancel {id}.",
            task.label
        ))
    }

    /// Puts a task's work item on `N_TASKS` under `task:<id>`.
    async fn queue(&self, task: &Task, trace: &TraceContext) -> Result<(), ToolFailure> {
        let bytes = serde_json::to_vec(task).map_err(|e| ToolFailure::internal(e.to_string()))?;
        self.bus
            .publish_durable(
                self.bus.subjects().tasks(),
                &result_turn_id(&task.id),
                &trace.child(),
                bytes.into(),
            )
            .await
            .map(|_| ())
            .map_err(|e| ToolFailure::upstream(format!("the task was not queued: {e}")))
    }

    /// Remembers a file a sub-agent wrote, for its result message.
    pub(crate) fn note_written(&self, turn: &Turn, call: &LlmToolCall) {
        let Some((id, _)) = task_of(turn) else { return };
        if !WRITING_TOOLS.contains(&call.name.as_str()) {
            return;
        }
        if let Some(path) = call.arguments.get("path").and_then(|p| p.as_str())
            && let Ok(mut files) = self.task_files.lock()
        {
            let list = files.entry(id.to_owned()).or_default();
            if !list.iter().any(|p| p == path) {
                list.push(path.to_owned());
            }
        }
    }

    /// `/tasks`: this chat's tasks, newest first.
    pub(crate) async fn list_tasks(&self, turn: &Turn) -> Result<String, String> {
        let mut tasks: Vec<Task> = self
            .all_tasks()
            .await?
            .into_iter()
            .filter(|t| t.origin.session_id == turn.session.id())
            .collect();
        if tasks.is_empty() {
            return Ok("No tasks in this chat.".to_owned());
        }
        tasks.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        let now = now_ms();
        let lines: Vec<String> = tasks
            .iter()
            .take(15)
            .map(|t| {
                format!(
                    "{} — {} — {} ({} ago)",
                    t.id,
                    t.state.name(),
                    t.label,
                    age((now - t.created_ms).max(0))
                )
            })
            .collect();
        Ok(format!("Tasks of this chat:\n{}", lines.join("\n")))
    }

    /// `/cancel <id>`: marks the task cancelled; the replica running it stops it.
    pub(crate) async fn cancel_task(&self, turn: &Turn, id: &str) -> Result<String, String> {
        for _ in 0..3 {
            let Some((mut task, revision)) = self
                .load_task(id)
                .await?
                .filter(|(t, _)| t.origin.session_id == turn.session.id())
            else {
                return Ok(format!(
                    "There is no task {id} in this chat. /tasks lists them."
                ));
            };
            if let Err(ended) = task.cancel(now_ms()) {
                return Ok(format!("Task {id} is already {}.", ended.name()));
            }
            // A conflict means the task moved on meanwhile: look again.
            if self.save_task(&task, revision).await.is_ok() {
                tracing::info!(task = %id, "task cancelled");
                return Ok(format!(
                    "Cancelled task {id} (\"{}\"). It stops at its next step and sends no result.",
                    task.label
                ));
            }
        }
        Err(format!("task {id} kept changing"))
    }

    /// Runs one task to its result (or hands it back); says how the item is settled.
    #[tracing::instrument(skip_all, fields(task = %item.id))]
    async fn work(
        &self,
        item: Task,
        trace: &TraceContext,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let retry = |reason: String| Outcome::Retry {
            delay: Duration::from_secs(2),
            reason,
        };
        let (mut task, mut revision) = match self.load_task(&item.id).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::warn!("task record is gone; dropping the task");
                return Outcome::Ack;
            }
            Err(e) => return retry(e),
        };
        match task.state {
            State::Cancelled => return Outcome::Ack,
            // Decided before a crash: deliver again (idempotent) and finish.
            State::Done | State::Failed => return self.deliver(&task, trace).await,
            State::Queued | State::Running => {}
        }
        // Started before: the replica that ran it died or shut down; it starts over.
        let restarted = task.attempts > 0;
        task.state = State::Running;
        task.started_ms = now_ms();
        task.attempts += 1;
        revision = match self.save_task(&task, revision).await {
            Ok(r) => r,
            Err(e) => return retry(format!("claiming the task: {e}")),
        };
        if let Ok(mut files) = self.task_files.lock() {
            files.remove(&task.id);
        }

        let turn = match sub_agent_turn(&task, trace) {
            Ok(t) => t,
            Err(reason) => return Outcome::Poison { reason },
        };
        let limit = Duration::from_secs(self.config.subagents.timeout_secs.max(1));
        enum End {
            Finished(Result<String, crate::turn::TurnError>),
            TimedOut,
            Cancelled,
            Shutdown,
        }
        let end = tokio::select! {
            r = tokio::time::timeout(limit, self.sub_agent(&turn)) => match r {
                Ok(r) => End::Finished(r),
                Err(_) => End::TimedOut,
            },
            _ = self.cancelled(&task.id) => End::Cancelled,
            _ = shutdown.cancelled() => End::Shutdown,
        };
        let files = self
            .task_files
            .lock()
            .ok()
            .and_then(|mut f| f.remove(&task.id))
            .unwrap_or_default();
        let (state, head, body) = match end {
            End::Cancelled => {
                tracing::info!("task cancelled; no result is sent");
                return Outcome::Ack;
            }
            End::Shutdown => {
                // Handed back: another replica takes it from the queue (and starts
                // it over, which its result will say).
                task.state = State::Queued;
                let _ = self.save_task(&task, revision).await;
                return Outcome::Retry {
                    delay: Duration::ZERO,
                    reason: HANDED_BACK.into(),
                };
            }
            End::Finished(Ok(text)) => (State::Done, "finished", text),
            End::Finished(Err(crate::turn::TurnError::Llm(e))) => {
                (State::Failed, "failed", e.user_message())
            }
            End::Finished(Err(crate::turn::TurnError::Transient(e))) => return retry(e),
            End::Finished(Err(crate::turn::TurnError::Stopped)) => {
                (State::Failed, "failed", "It was stopped.".to_owned())
            }
            End::Finished(Err(crate::turn::TurnError::Limited(notice))) => {
                (State::Failed, "was not run", notice)
            }
            End::TimedOut => (
                State::Failed,
                "timed out",
                format!(
                    "It did not finish within {} s ([subagents] timeout_secs) and was stopped.",
                    limit.as_secs()
                ),
            ),
        };
        let mut result = format!(
            "Task {} (\"{}\") {head}:\n{}",
            task.id,
            task.label,
            body.trim()
        );
        if !files.is_empty() {
            result.push_str(&format!("\n\nFiles written: {}", files.join(", ")));
        }
        if restarted {
            result.push_str(
                "\n\n(This task restarted from the beginning after the replica running it stopped.)",
            );
        }
        task.state = state;
        task.finished_ms = now_ms();
        task.result = result;
        if let Err(e) = self.save_task(&task, revision).await {
            // Most likely cancelled meanwhile: then nothing is sent.
            return match self.load_task(&task.id).await {
                Ok(Some((t, _))) if t.state == State::Cancelled => Outcome::Ack,
                _ => retry(format!("recording the result: {e}")),
            };
        }
        self.deliver(&task, trace).await
    }

    /// Ends a task that failed on every delivery: recorded as failed, the user told.
    async fn give_up(&self, id: &str, reason: &str, trace: &TraceContext) -> Outcome {
        let Ok(Some((mut task, revision))) = self.load_task(id).await else {
            return Outcome::Retry {
                delay: Duration::ZERO,
                reason: "task state unreadable".into(),
            };
        };
        if task.state.is_active() {
            task.state = State::Failed;
            task.finished_ms = now_ms();
            task.result = format!(
                "Task {} (\"{}\") failed: it could not be completed, even after retrying.",
                task.id, task.label
            );
            tracing::warn!(reason, "task given up");
            if self.save_task(&task, revision).await.is_err() {
                return Outcome::Retry {
                    delay: Duration::ZERO,
                    reason: "task state changed".into(),
                };
            }
        }
        if task.state == State::Cancelled {
            return Outcome::Ack;
        }
        self.deliver(&task, trace).await
    }

    /// Resolves once the task is marked cancelled: a watch on its record (its value
    /// now, then each change), so a cancel stops the work at once and a running task
    /// costs no reads. A watch that cannot open or ends (NATS away) is opened again.
    async fn cancelled(&self, id: &str) {
        let is_cancelled = |value: &[u8]| {
            serde_json::from_slice::<Task>(value).is_ok_and(|t| t.state == State::Cancelled)
        };
        loop {
            if let Ok(kv) = self.tasks_kv().await
                && let Ok(mut changes) = kv.watch_with_history(kv_key(id)).await
            {
                while let Some(Ok(entry)) = changes.next().await {
                    if entry.operation == kv::Operation::Put && is_cancelled(&entry.value) {
                        return;
                    }
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    /// The sub-agent's tool loop; its answer text.
    async fn sub_agent(&self, turn: &Turn) -> Result<String, crate::turn::TurnError> {
        let ctx = self
            .context(turn)
            .await
            .map_err(|e| crate::turn::TurnError::Transient(format!("memory-svc: {e}")))?;
        let resolved = turn.for_user(&ctx.user_id);
        // A sub-agent spends its user's budget: over it, the task is not run.
        match self.limits_gate(&resolved).await {
            Ok(crate::limits::Gate::Open) => {}
            Ok(crate::limits::Gate::Refused { notice }) => {
                return Err(crate::turn::TurnError::Limited(notice.unwrap_or_else(
                    || "Your budget is used up, as you were told; the task was not run.".to_owned(),
                )));
            }
            Err(e) => return Err(crate::turn::TurnError::Transient(format!("limits: {e}"))),
        }
        let r = self.tool_loop(&resolved, &ctx).await?;
        r.usage_events.stored().await;
        Ok(r.text)
    }

    /// Stores the result in the origin session and sends it to the origin chat,
    /// both under ids derived from the task.
    async fn deliver(&self, task: &Task, trace: &TraceContext) -> Outcome {
        let turn_id = result_turn_id(&task.id);
        let o = &task.origin;
        let reply = OutboundMessage {
            id: format!("{turn_id}:result"),
            in_reply_to: turn_id.clone(),
            channel: o.channel.clone(),
            chat: Some(ChatRef {
                chat_id: o.chat_id.clone(),
                thread_id: o.thread_id.clone(),
                ..Default::default()
            }),
            recipient_id: o.sender_id.clone(),
            text: task.result.clone(),
            kind: OutboundKind::Notice as i32,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        let req = AppendTurnRequest {
            session: Some(SessionRef {
                channel: o.channel.clone(),
                chat_id: o.chat_id.clone(),
                thread_id: o.thread_id.clone(),
            }),
            user_id: o.user_id.clone(),
            turn_id: turn_id.clone(),
            entries: vec![HistoryEntry {
                role: Role::Assistant as i32,
                text: task.result.clone(),
                at_ms: now_ms(),
                turn_id,
                ..Default::default()
            }],
            reply: Some(reply.clone()),
        };
        if let Err(e) = self
            .bus
            .request_idempotent::<_, AppendTurnResponse>(
                self.bus.subjects().memory(MemoryOp::Append),
                &req,
                trace,
                None,
            )
            .await
        {
            return Outcome::Retry {
                delay: Duration::from_secs(2),
                reason: format!("storing the task's result: {e}"),
            };
        }
        match self.bus.publish_outbound(&reply, &trace.child()).await {
            Ok(_) => {
                tracing::info!(state = task.state.name(), "task result sent");
                Outcome::Ack
            }
            Err(e) => Outcome::Retry {
                delay: Duration::from_secs(2),
                reason: format!("publishing the task's result: {e}"),
            },
        }
    }
}

/// The turn a sub-agent runs as: its own session `task:<id>`, the spawning user.
fn sub_agent_turn(task: &Task, trace: &TraceContext) -> Result<Turn, String> {
    let msg = InboundMessage {
        id: result_turn_id(&task.id),
        channel: CHANNEL.to_owned(),
        chat: Some(ChatRef {
            chat_id: task.id.clone(),
            ..Default::default()
        }),
        sender: Some(Sender {
            id: task.origin.user_id.clone(),
            user_id: task.origin.user_id.clone(),
            ..Default::default()
        }),
        text: task.task.clone(),
        kind: InboundKind::User as i32,
        metadata: [
            (META_TASK.to_owned(), task.id.clone()),
            (META_DEPTH.to_owned(), task.depth.to_string()),
            (META_ORIGIN_CHANNEL.to_owned(), task.origin.channel.clone()),
            (META_ORIGIN_CHAT.to_owned(), task.origin.chat_id.clone()),
        ]
        .into(),
        ..Default::default()
    };
    Turn::parse(msg, trace.clone())
}

fn age(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Pulls tasks until shutdown and runs up to `[subagents] max_running_total` of
/// them at once on this replica; on shutdown running tasks are handed back.
pub async fn run(
    agent: Arc<Agent>,
    consumer: PullConsumer,
    ack_wait: Duration,
    shutdown: CancellationToken,
) {
    let mut puller = match Puller::new(&agent.bus, &consumer).await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "cannot pull tasks");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(
        agent.config.subagents.max_running_total.max(1) as usize,
    ));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let Some(msg) = puller.next(&shutdown).await else {
            break;
        };
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        running.spawn(async move {
            let _permit = permit;
            run_one(&agent, msg, ack_wait, &shutdown).await;
        });
        // Reap finished ones so the set does not grow.
        while running.try_join_next().is_some() {}
    }
    // Withdraw the open pull request first: the tasks handed back below would
    // otherwise be delivered straight to it, and wait out ack_wait in a dead process.
    drop(puller);
    while running.join_next().await.is_some() {}
}

async fn run_one(
    agent: &Agent,
    msg: jetstream::Message,
    ack_wait: Duration,
    shutdown: &CancellationToken,
) {
    let _in_progress = InProgress::keep(&msg, ack_wait);
    let trace = TraceContext::from_headers(msg.headers.as_ref());
    let max_deliver = agent.config.agent.max_deliver;
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let outcome = match serde_json::from_slice::<Task>(&msg.payload) {
        Err(e) => Outcome::Poison {
            reason: format!("not a task: {e}"),
        },
        Ok(item) => match agent.work(item.clone(), &trace, shutdown).await {
            Outcome::Retry { reason, .. } if reason == HANDED_BACK => {
                // Not a failure: the next replica takes it at once.
                // Flushed (a PING answered after it), since the process is about to exit.
                let handed = match msg.ack_with(jetstream::AckKind::Nak(None)).await {
                    Ok(()) => agent.bus.flush().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match handed {
                    Ok(()) => tracing::info!(task = %item.id, "task handed back"),
                    Err(error) => tracing::warn!(
                        %error,
                        "task not handed back; it is redelivered after ack_wait"
                    ),
                }
                return;
            }
            // The last delivery: tell the user instead of leaving the task running forever.
            Outcome::Retry { reason, delay } if delivered >= max_deliver => {
                match agent.give_up(&item.id, &reason, &trace).await {
                    Outcome::Ack => Outcome::Poison { reason },
                    _ => Outcome::Retry { reason, delay },
                }
            }
            outcome => outcome,
        },
    };
    settle(&agent.bus, &msg, outcome, max_deliver).await;
}

/// The reason of a task handed back on shutdown.
const HANDED_BACK: &str = "replica shutting down; task handed back";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_id_is_the_same_for_the_same_task_of_a_turn_and_short() {
        let a = task_id("test:c1-0", "write a report");
        assert_eq!(a, task_id("test:c1-0", "write a report"));
        assert_ne!(a, task_id("test:c1-0", "write another report"));
        assert_ne!(a, task_id("test:c1-1", "write a report"));
        assert_eq!(a.len(), 11);
    }

    #[test]
    fn a_sub_agent_runs_in_its_own_session_but_its_tools_act_in_the_origin_chat() {
        let task = Task {
            id: "t0123456789".into(),
            label: "report".into(),
            task: "write it".into(),
            depth: 1,
            origin: Origin {
                channel: "telegram".into(),
                chat_id: "42".into(),
                thread_id: String::new(),
                sender_id: "42".into(),
                user_id: "ada".into(),
                session_id: "telegram:42".into(),
            },
            state: State::Queued,
            created_ms: 0,
            started_ms: 0,
            finished_ms: 0,
            attempts: 0,
            result: String::new(),
        };
        let turn =
            sub_agent_turn(&task, &TraceContext::new_root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(turn.session.id(), "task:t0123456789");
        assert_eq!(turn.user_id, "ada");
        assert_eq!(task_of(&turn), Some(("t0123456789", 1)));
        assert_eq!(usage_purpose(&turn).as_deref(), Some("task:t0123456789"));
        assert_eq!(
            origin_chat(&turn),
            Some(("telegram".to_owned(), "42".to_owned()))
        );
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(5_000), "5 s");
        assert_eq!(age(125_000), "2 min");
        assert_eq!(age(7_200_000), "2 h");
    }
}
