//! One turn: from an inbound message to a durable reply.
//!
//! Order of effects, which the guarantees depend on:
//! 1. already answered? (memory-svc knows) → publish the stored reply again, ack;
//! 2. context from memory-svc, tools from the directory, then the tool loop;
//! 3. store the turn (with its reply) in memory-svc;
//! 4. publish the reply under an id derived from the inbound id;
//! 5. only then is the inbound message acked (by the caller).
//!
//! A crash between any two steps redoes the turn without a second reply.

use std::{sync::Arc, time::Instant};

use nexus_bus::{Bus, BusError, Outcome, TraceContext, memory_op};
use nexus_common::{
    Config,
    domain::{ChannelName, SessionKey, default_user_id, reply_id},
    now_ms,
};
use nexus_proto::v1::{
    AnsweredRequest, AnsweredResponse, AppendTurnRequest, AppendTurnResponse, ContextRequest,
    ContextResponse, HistoryEntry, InboundMessage, LlmUsage as LlmUsageEvent, OutboundKind,
    OutboundMessage, Role, SessionRef, ToolCall, ToolCalled, ToolContext, TurnFinished,
    TurnStarted, event,
};

use crate::{
    context::{TurnFacts, fence_untrusted, history_messages, system_prompt},
    llm::{
        ChatModel, LlmError, LlmMessage, LlmRequest, LlmToolCall,
        retry::{RetryPolicy, chat_with_retry},
    },
    tools::{ToolDirectory, result_text, to_llm_tool},
};

/// Everything a turn needs; shared by all turns of a replica.
pub struct Agent {
    pub bus: Bus,
    pub model: Arc<dyn ChatModel>,
    pub tools: ToolDirectory,
    pub config: Arc<Config>,
    pub retry: RetryPolicy,
}

/// A validated inbound message.
pub struct Turn {
    pub msg: InboundMessage,
    pub session: SessionKey,
    pub user_id: String,
    pub trace: TraceContext,
}

impl Turn {
    /// Parses the wire message; `Err` is a reason to dead-letter it.
    pub fn parse(msg: InboundMessage, trace: TraceContext) -> Result<Self, String> {
        if msg.id.is_empty() {
            return Err("inbound message has no id".into());
        }
        let channel = ChannelName::parse(&msg.channel).map_err(|e| e.to_string())?;
        let chat = msg.chat.clone().unwrap_or_default();
        let session = SessionKey::new(channel.clone(), &chat.chat_id, &chat.thread_id)
            .map_err(|e| e.to_string())?;
        let sender = msg.sender.clone().unwrap_or_default();
        let user_id = if sender.user_id.is_empty() {
            default_user_id(&channel, &sender.id)
        } else {
            sender.user_id
        };
        Ok(Self {
            msg,
            session,
            user_id,
            trace,
        })
    }

    fn session_ref(&self) -> SessionRef {
        SessionRef {
            channel: self.session.channel().to_string(),
            chat_id: self.session.chat_id().to_owned(),
            thread_id: self.session.thread_id().to_owned(),
        }
    }
}

/// What the tool loop produced.
struct LoopResult {
    text: String,
    entries: Vec<HistoryEntry>,
    model: String,
    llm_calls: u32,
    tool_calls: u32,
}

impl Agent {
    /// Runs a turn to its durable reply, and says how the inbound message is settled.
    #[tracing::instrument(skip_all, fields(turn = %turn.msg.id, session = %turn.session))]
    pub async fn run_turn(&self, turn: &Turn) -> Outcome {
        let started = Instant::now();
        match self.answered(turn).await {
            Ok(Some(reply)) => {
                tracing::info!("turn already answered; publishing the stored reply again");
                return self.publish_reply(turn, &reply).await;
            }
            Ok(None) => {}
            Err(e) => return retry(format!("memory-svc: {e}")),
        }

        self.bus
            .emit(event::Kind::TurnStarted(TurnStarted {
                turn_id: turn.msg.id.clone(),
                session_id: turn.session.id(),
                channel: turn.session.channel().to_string(),
                user_id: turn.user_id.clone(),
            }))
            .await;

        let ctx = match self.context(turn).await {
            Ok(c) => c,
            Err(e) => return retry(format!("memory-svc: {e}")),
        };

        let (reply, stored_entries, counts) = match self.tool_loop(turn, &ctx).await {
            Ok(r) => {
                let reply = self.outbound(turn, r.text.clone(), OutboundKind::Reply, &r.model);
                (
                    reply,
                    Some(r.entries),
                    (r.llm_calls, r.tool_calls, String::new()),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "turn failed; telling the user");
                let reply = self.outbound(turn, e.user_message(), OutboundKind::Error, "");
                (reply, None, (0, 0, e.to_string()))
            }
        };

        // A failed turn is not stored: history keeps only real exchanges, and the
        // reply id still dedupes a redelivery within the duplicate window.
        if let Some(entries) = stored_entries {
            let req = AppendTurnRequest {
                session: Some(turn.session_ref()),
                user_id: turn.user_id.clone(),
                turn_id: turn.msg.id.clone(),
                entries,
                reply: Some(reply.clone()),
            };
            if let Err(e) = self
                .bus
                .request::<_, AppendTurnResponse>(
                    self.bus.subjects().memory(memory_op::APPEND),
                    &req,
                    &turn.trace,
                    None,
                )
                .await
            {
                return retry(format!("storing the turn: {e}"));
            }
        }

        let outcome = self.publish_reply(turn, &reply).await;
        self.bus
            .emit(event::Kind::TurnFinished(TurnFinished {
                turn_id: turn.msg.id.clone(),
                session_id: turn.session.id(),
                ok: counts.2.is_empty(),
                llm_calls: counts.0,
                tool_calls: counts.1,
                duration_ms: started.elapsed().as_millis() as u64,
                error: counts.2,
            }))
            .await;
        outcome
    }

    async fn answered(&self, turn: &Turn) -> Result<Option<OutboundMessage>, BusError> {
        let resp: AnsweredResponse = self
            .bus
            .request(
                self.bus.subjects().memory(memory_op::ANSWERED),
                &AnsweredRequest {
                    turn_id: turn.msg.id.clone(),
                },
                &turn.trace,
                None,
            )
            .await?;
        Ok(if resp.answered { resp.reply } else { None })
    }

    async fn context(&self, turn: &Turn) -> Result<ContextResponse, BusError> {
        self.bus
            .request(
                self.bus.subjects().memory(memory_op::CONTEXT),
                &ContextRequest {
                    session: Some(turn.session_ref()),
                    user_id: turn.user_id.clone(),
                    query: turn.msg.text.clone(),
                    history_turns: self.config.memory.history_turns,
                },
                &turn.trace,
                None,
            )
            .await
    }

    async fn publish_reply(&self, turn: &Turn, reply: &OutboundMessage) -> Outcome {
        match self.bus.publish_outbound(reply, &turn.trace.child()).await {
            Ok(_) => Outcome::Ack,
            Err(e) => retry(format!("publishing the reply: {e}")),
        }
    }

    fn outbound(
        &self,
        turn: &Turn,
        text: String,
        kind: OutboundKind,
        model: &str,
    ) -> OutboundMessage {
        OutboundMessage {
            id: reply_id(&turn.msg.id),
            in_reply_to: turn.msg.id.clone(),
            channel: turn.msg.channel.clone(),
            chat: turn.msg.chat.clone(),
            recipient_id: turn
                .msg
                .sender
                .as_ref()
                .map(|s| s.id.clone())
                .unwrap_or_default(),
            text,
            media: Vec::new(),
            reply_to_upstream_id: turn.msg.upstream_id.clone(),
            kind: kind as i32,
            created_at_ms: now_ms(),
            model: model.to_owned(),
            metadata: Default::default(),
        }
    }

    /// The model decides; tools run; repeat until it answers or the budget is spent.
    async fn tool_loop(&self, turn: &Turn, ctx: &ContextResponse) -> Result<LoopResult, LlmError> {
        let specs = self.tools.specs().await;
        let tools: Vec<_> = specs.values().map(to_llm_tool).collect();
        let names: Vec<String> = specs.keys().cloned().collect();
        let facts = TurnFacts {
            channel: turn.session.channel().as_str(),
            chat_id: turn.session.chat_id(),
            sender: turn
                .msg
                .sender
                .as_ref()
                .map(|s| s.id.as_str())
                .unwrap_or(""),
            now_utc: now_utc_text(),
        };
        let mut req = LlmRequest {
            model: self.config.llm.model.clone(),
            system: system_prompt(ctx, &facts, &names),
            messages: history_messages(&ctx.history),
            tools,
            max_output_tokens: self.config.llm.max_output_tokens,
        };
        req.messages.push(LlmMessage::User(turn.msg.text.clone()));

        let now = now_ms();
        let mut entries = vec![HistoryEntry {
            role: Role::User as i32,
            text: turn.msg.text.clone(),
            at_ms: now,
            turn_id: turn.msg.id.clone(),
            ..Default::default()
        }];
        let max_iterations = self.config.llm.max_tool_iterations.max(1);
        let mut llm_calls = 0;
        let mut tool_calls = 0;
        loop {
            // The last allowed call gets no tools, so it must answer in words.
            if llm_calls + 1 >= max_iterations && !req.tools.is_empty() {
                req.tools.clear();
                req.system.push_str(
                    "\n\nYou have used your tool budget for this turn. Answer now with what you know, and say what is \
                     left undone.",
                );
            }
            let started = Instant::now();
            let (resp, attempts) =
                chat_with_retry(self.model.as_ref(), self.retry, &req, &|_| {}).await;
            llm_calls += 1;
            let resp = resp?;
            self.bus
                .emit(event::Kind::LlmUsage(LlmUsageEvent {
                    turn_id: turn.msg.id.clone(),
                    model: resp.model.clone(),
                    provider: self
                        .config
                        .llm
                        .model
                        .split("::")
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                    input_tokens: resp.usage.input_tokens,
                    output_tokens: resp.usage.output_tokens,
                    duration_ms: started.elapsed().as_millis() as u64,
                    attempts,
                }))
                .await;
            tracing::info!(
                gen_ai.request.model = %req.model,
                gen_ai.response.model = %resp.model,
                gen_ai.usage.input_tokens = resp.usage.input_tokens,
                gen_ai.usage.output_tokens = resp.usage.output_tokens,
                tool_calls = resp.tool_calls.len(),
                "llm call"
            );

            if resp.tool_calls.is_empty() {
                let text = if resp.text.trim().is_empty() {
                    "(The model returned an empty answer.)".to_owned()
                } else {
                    resp.text
                };
                entries.push(HistoryEntry {
                    role: Role::Assistant as i32,
                    text: text.clone(),
                    at_ms: now_ms(),
                    turn_id: turn.msg.id.clone(),
                    ..Default::default()
                });
                return Ok(LoopResult {
                    text,
                    entries,
                    model: resp.model,
                    llm_calls,
                    tool_calls,
                });
            }

            let calls = resp.tool_calls.clone();
            req.messages.push(LlmMessage::Assistant {
                text: resp.text.clone(),
                tool_calls: calls.clone(),
            });
            tool_calls += calls.len() as u32;
            // Parallel tool calls run concurrently; results go back in call order.
            let results =
                futures::future::join_all(calls.iter().map(|c| self.run_tool(turn, &specs, c)))
                    .await;
            for (call, (ok, text)) in calls.iter().zip(results) {
                entries.push(HistoryEntry {
                    role: Role::Tool as i32,
                    text: if ok {
                        text.clone()
                    } else {
                        format!("(failed) {text}")
                    },
                    tool_name: call.name.clone(),
                    tool_call_id: call.id.clone(),
                    at_ms: now_ms(),
                    turn_id: turn.msg.id.clone(),
                });
                req.messages.push(LlmMessage::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: fence_untrusted(&call.name, &text),
                });
            }
        }
    }

    async fn run_tool(
        &self,
        turn: &Turn,
        specs: &std::collections::BTreeMap<String, nexus_proto::v1::ToolSpec>,
        call: &LlmToolCall,
    ) -> (bool, String) {
        let started = Instant::now();
        let args = if call.arguments.is_null() {
            "{}".to_owned()
        } else {
            call.arguments.to_string()
        };
        let wire = ToolCall {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments_json: args.clone(),
            context: Some(ToolContext {
                session_id: turn.session.id(),
                user_id: turn.user_id.clone(),
                channel: turn.session.channel().to_string(),
                chat_id: turn.session.chat_id().to_owned(),
                turn_id: turn.msg.id.clone(),
            }),
        };
        let result = self
            .tools
            .call(specs.get(&call.name), wire, &turn.trace.child())
            .await;
        let (ok, text) = result_text(&result);
        let error_kind = match &result.outcome {
            Some(nexus_proto::v1::tool_result::Outcome::Error(e)) => {
                nexus_proto::v1::ToolErrorKind::try_from(e.kind)
                    .map(|k| k.as_str_name().to_owned())
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        self.bus
            .emit(event::Kind::ToolCalled(ToolCalled {
                turn_id: turn.msg.id.clone(),
                call_id: call.id.clone(),
                name: call.name.clone(),
                arguments_json: args,
                ok,
                error_kind,
                duration_ms: started.elapsed().as_millis() as u64,
                output_preview: text.chars().take(500).collect(),
            }))
            .await;
        (ok, text)
    }
}

fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        delay: std::time::Duration::from_secs(2),
        reason,
    }
}

fn now_utc_text() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] ([weekday])");
    now.format(&fmt).unwrap_or_else(|_| now.to_string())
}
