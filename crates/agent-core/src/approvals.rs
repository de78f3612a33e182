//! Approvals: a tool whose spec needs a person's yes is not run when the model
//! asks. The call waits in the `N_approvals` KV bucket (one per session, 24 h),
//! the turn ends with the question, and the session's next message settles it.
//!
//! It must never run a call twice: the approval is cleared before the call runs,
//! and a clear that fails retries the turn instead.

use nexus_bus::kv_key;
use nexus_common::now_ms;
use nexus_proto::v1::{Approval, PendingApproval, ToolCall, ToolContext, event};
use prost::Message as _;

use crate::{agent::Agent, llm::LlmToolCall, tools::result_text, turn::Turn};

impl Agent {
    pub(crate) async fn approvals(&self) -> Result<&async_nats::jetstream::kv::Store, String> {
        self.approvals
            .get_or_try_init(|| async {
                self.bus
                    .ensure_kv_bucket(
                        &self.bus.subjects().approvals_bucket(),
                        1,
                        Some(std::time::Duration::from_secs(24 * 3600)),
                        "tool calls waiting for a person's yes",
                    )
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    /// The call waiting for this session's yes, if any.
    pub(crate) async fn pending_approval(
        &self,
        turn: &Turn,
    ) -> Result<Option<PendingApproval>, String> {
        let kv = self.approvals().await?;
        match kv.get(kv_key(&turn.session.id())).await {
            Ok(Some(bytes)) => Ok(PendingApproval::decode(bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) async fn clear_approval(&self, turn: &Turn) -> Result<(), String> {
        let kv = self.approvals().await?;
        kv.purge(kv_key(&turn.session.id()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Records the call and returns the question for the person.
    pub(crate) async fn ask_approval(
        &self,
        turn: &Turn,
        call: &LlmToolCall,
        timezone: &str,
    ) -> Result<String, String> {
        let args = call.arguments.to_string();
        let question = format!(
            "I need your OK before I run {} with {}. Reply \"yes\" to go ahead or \"no\" to cancel.",
            call.name, args
        );
        let pending = PendingApproval {
            session_id: turn.session.id(),
            user_id: turn.user_id.clone(),
            turn_id: turn.msg.id.clone(),
            call_id: call.id.clone(),
            tool_name: call.name.clone(),
            arguments_json: args,
            question: question.clone(),
            asked_at_ms: now_ms(),
            timezone: timezone.to_owned(),
        };
        let kv = self.approvals().await?;
        kv.put(kv_key(&pending.session_id), pending.encode_to_vec().into())
            .await
            .map_err(|e| e.to_string())?;
        self.bus
            .emit(event::Kind::Approval(Approval {
                turn_id: turn.msg.id.clone(),
                tool_name: call.name.clone(),
                question: question.clone(),
                granted: false,
            }))
            .await;
        Ok(question)
    }

    /// Runs (yes) or drops (no) the waiting call, and says what happened. `Err`
    /// when the approval could not be cleared: then nothing runs (the turn is retried).
    pub(crate) async fn settle_approval(
        &self,
        turn: &Turn,
        pending: PendingApproval,
        yes: bool,
    ) -> Result<String, String> {
        // Cleared first, and only then run: a redelivered "yes" finds no approval (or
        // the stored turn), so the call never runs twice.
        self.clear_approval(turn).await?;
        self.bus
            .emit(event::Kind::Approval(Approval {
                turn_id: turn.msg.id.clone(),
                tool_name: pending.tool_name.clone(),
                question: pending.question.clone(),
                granted: yes,
            }))
            .await;
        if !yes {
            return Ok(format!("Okay, I did not run {}.", pending.tool_name));
        }
        let specs = self.tools.specs().await;
        let call = ToolCall {
            call_id: pending.call_id.clone(),
            name: pending.tool_name.clone(),
            arguments_json: pending.arguments_json.clone(),
            context: Some(ToolContext {
                session_id: turn.session.id(),
                // Whom the call was asked for; a "yes" turn builds no context to resolve.
                user_id: if pending.user_id.is_empty() {
                    turn.user_id.clone()
                } else {
                    pending.user_id.clone()
                },
                channel: turn.session.channel().to_string(),
                chat_id: turn.session.chat_id().to_owned(),
                turn_id: turn.msg.id.clone(),
                timezone: pending.timezone.clone(),
                approved: true,
            }),
        };
        let result = self
            .tools
            .call(specs.get(&pending.tool_name), call, &turn.trace.child())
            .await;
        Ok(match result_text(&result) {
            (true, out) => format!("Done. {out}"),
            (false, err) => format!("I tried, but {} failed: {err}", pending.tool_name),
        })
    }
}

/// `Some(true)` for a yes, `Some(false)` for a no, `None` for anything else.
pub(crate) fn approval_answer(text: &str) -> Option<bool> {
    let t = text.trim().trim_end_matches(['.', '!']).to_lowercase();
    match t.as_str() {
        "yes" | "y" | "ok" | "okay" | "approve" | "approved" | "go ahead" | "do it" | "sure" => {
            Some(true)
        }
        "no" | "n" | "cancel" | "stop" | "don't" | "do not" | "deny" => Some(false),
        _ => None,
    }
}
