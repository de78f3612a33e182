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

use nexus_bus::{BusError, MemoryOp, Outcome, TraceContext};
use nexus_common::{
    domain::{ChannelName, SessionKey, default_user_id, reply_id},
    now_ms,
};
use nexus_proto::v1::{
    AnsweredRequest, AnsweredResponse, AppendTurnRequest, AppendTurnResponse, ContextRequest,
    ContextResponse, HistoryEntry, InboundMessage, LlmUsage as LlmUsageEvent, OutboundKind,
    OutboundMessage, Role, SessionRef, ToolCall, ToolCalled, ToolContext, TurnFinished,
    TurnStarted, event,
};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::{Agent, provider_of},
    approvals::approval_answer,
    commands::Command,
    context::{
        MemoryContext, TurnFacts, estimate_tokens, fence_untrusted, fit_history, system_prompt,
    },
    limits::Gate,
    llm::{LlmError, LlmMessage, LlmRequest, LlmToolCall, router::chain},
    progress::Progress,
    scheduled, tasks,
    tools::result_text,
};

/// How a turn is answered: the reply, what is stored of it, and what it cost.
struct Answer {
    reply: OutboundMessage,
    /// History entries to store with the reply; `None` for a failed turn, which is
    /// not stored (history keeps only real exchanges).
    entries: Option<Vec<HistoryEntry>>,
    llm_calls: u32,
    tool_calls: u32,
    /// Why the turn failed; empty when it did not.
    error: String,
    /// The turn's LLM usage events on their way to the ledger.
    usage: UsageEvents,
}

impl Answer {
    fn stored(
        reply: OutboundMessage,
        entries: Vec<HistoryEntry>,
        llm_calls: u32,
        tool_calls: u32,
    ) -> Self {
        Self {
            reply,
            entries: Some(entries),
            llm_calls,
            tool_calls,
            error: String::new(),
            usage: UsageEvents::default(),
        }
    }

    fn unstored(reply: OutboundMessage, error: String) -> Self {
        Self {
            reply,
            entries: None,
            llm_calls: 0,
            tool_calls: 0,
            error,
            usage: UsageEvents::default(),
        }
    }
}

/// LLM usage events sent while a turn goes on, each resent by a task of its own
/// until JetStream stores it (`Bus::emit_counted`). The turn waits for them only
/// before its reply goes out, beside storing the turn: waiting after each model
/// call put a JetStream round trip in front of every reply. A reply still never
/// leaves before the usage it cost is stored in `N_EVENTS`. Dropped unwaited (a
/// turn that failed or was stopped), the tasks still finish.
#[derive(Default)]
pub(crate) struct UsageEvents(Vec<tokio::task::JoinHandle<()>>);

impl UsageEvents {
    fn send(&mut self, bus: &nexus_bus::Bus, kind: event::Kind) {
        let bus = bus.clone();
        self.0
            .push(tokio::spawn(async move { bus.emit_counted(kind).await }));
    }

    /// Waits until every event is stored or given up (`emit_counted` logs which).
    pub(crate) async fn stored(self) {
        for sent in self.0 {
            // A panic in the task is the only error, and it was logged where it happened.
            let _ = sent.await;
        }
    }
}

/// Why a turn ended without an answer from the model.
#[derive(Debug)]
pub(crate) enum TurnError {
    Llm(LlmError),
    /// The user sent /stop.
    Stopped,
    /// Our own infrastructure failed; the turn is retried.
    Transient(String),
    /// Over a budget or message rate: the one notice to send instead.
    Limited(String),
}

impl From<LlmError> for TurnError {
    fn from(e: LlmError) -> Self {
        Self::Llm(e)
    }
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

    /// The sender's id, for memory-svc to resolve: an admin's link wins over the
    /// user the gateway named.
    pub(crate) fn sender_id(&self) -> String {
        self.msg
            .sender
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default()
    }

    /// This turn as the user memory-svc resolved; `Turn::parse`'s id stays
    /// when the answer carries none (an older memory-svc).
    pub(crate) fn for_user(&self, resolved: &str) -> Self {
        Self {
            msg: self.msg.clone(),
            session: self.session.clone(),
            user_id: if resolved.is_empty() {
                self.user_id.clone()
            } else {
                resolved.to_owned()
            },
            trace: self.trace.clone(),
        }
    }

    pub(crate) fn session_ref(&self) -> SessionRef {
        SessionRef {
            channel: self.session.channel().to_string(),
            chat_id: self.session.chat_id().to_owned(),
            thread_id: self.session.thread_id().to_owned(),
        }
    }
}

/// What memory-svc knows of a turn before it runs.
enum Known {
    /// Answered before (a redelivery): the stored reply.
    Answered(Box<OutboundMessage>),
    /// Not answered yet; its context, when one was asked for.
    New(Option<Box<MemoryContext>>),
}

/// What the tool loop produced.
pub(crate) struct LoopResult {
    pub(crate) text: String,
    entries: Vec<HistoryEntry>,
    model: String,
    llm_calls: u32,
    tool_calls: u32,
    /// Summed over every model call of the turn.
    usage: crate::llm::LlmUsage,
    /// Its model calls' usage events, still on their way to the ledger.
    pub(crate) usage_events: UsageEvents,
}

impl Agent {
    /// Runs a turn to its durable reply, and says how the inbound message is settled.
    #[tracing::instrument(skip_all, fields(turn = %turn.msg.id, session = %turn.session))]
    pub async fn run_turn(&self, turn: &Turn, stop: &CancellationToken) -> Outcome {
        let started = Instant::now();
        // A job's fire is not the person's answer: a question waiting for them stays.
        let fire = scheduled::job_of(turn).is_some();
        let command = Command::parse(&turn.msg.text).filter(|_| !fire);
        // Asked at once, not one after another: each is a round trip in front of the
        // reply. The context is wasted on a redelivery or an approval answer, both rare.
        let (known, pending) = tokio::join!(self.known_before(turn, command.is_none()), async {
            if fire {
                Ok(None)
            } else {
                self.pending_approval(turn).await
            }
        });
        let ctx = match known {
            Ok(Known::Answered(reply)) => {
                tracing::info!("turn already answered; publishing the stored reply again");
                return self.publish_reply(turn, &reply).await;
            }
            Ok(Known::New(ctx)) => ctx.map(|c| *c),
            Err(e) => return retry(format!("memory-svc: {e}")),
        };

        self.bus
            .emit_soon(event::Kind::TurnStarted(TurnStarted {
                turn_id: turn.msg.id.clone(),
                session_id: turn.session.id(),
                channel: turn.session.channel().to_string(),
                user_id: turn.user_id.clone(),
            }))
            .await;

        let pending = match pending {
            Ok(p) => p,
            Err(e) => return retry(format!("approvals: {e}")),
        };
        let answer = pending
            .as_ref()
            .and_then(|_| approval_answer(&turn.msg.text));
        if pending.is_some() && answer.is_none() {
            // The person moved on without answering: the question lapses.
            tracing::info!("pending approval dropped: the reply was neither yes nor no");
            if let Err(e) = self.clear_approval(turn).await {
                return retry(format!("approvals: {e}"));
            }
        }

        // The user the turn is stored under: resolved by memory-svc when a context is built.
        let mut user_id = turn.user_id.clone();
        let answer = if let (Some(pending), Some(yes)) = (pending, answer) {
            // Stored under the user the question was asked for (resolved then), so the
            // journal files this exchange with the rest of their conversation.
            if !pending.user_id.is_empty() {
                user_id.clone_from(&pending.user_id);
            }
            let text = match self.settle_approval(turn, pending, yes).await {
                Ok(text) => text,
                Err(e) => return retry(format!("approvals: {e}")),
            };
            let reply = self.outbound(turn, text.clone(), OutboundKind::Reply, "");
            let entries = vec![
                entry(turn, Role::User, &turn.msg.text),
                entry(turn, Role::Assistant, &text),
            ];
            Answer::stored(reply, entries, 0, 1)
        } else if let Some(cmd) = command {
            // Commands are answered without the model; stored with their reply only,
            // so a redelivery is answered from the store and history stays clean.
            let text = match self.command(turn, cmd).await {
                Ok(t) => t,
                Err(e) => return retry(format!("memory-svc: {e}")),
            };
            let reply = self.outbound(turn, text, OutboundKind::Reply, "");
            Answer::stored(reply, Vec::new(), 0, 0)
        } else {
            let ctx = match ctx {
                Some(ctx) => ctx,
                None => match self.context(turn).await {
                    Ok(c) => c,
                    Err(e) => return retry(format!("memory-svc: {e}")),
                },
            };
            let resolved = turn.for_user(&ctx.user_id);
            user_id.clone_from(&resolved.user_id);
            // Budgets and rates hold before the model is called; commands and
            // approval answers above never call it, so they always work.
            let gate = match self.limits_gate(&resolved).await {
                Ok(gate) => gate,
                Err(e) => return retry(format!("limits: {e}")),
            };
            let result = match gate {
                Gate::Open => tokio::select! {
                    r = self.tool_loop(&resolved, &ctx) => r,
                    _ = stop.cancelled() => Err(TurnError::Stopped),
                },
                Gate::Refused { notice: Some(text) } => Err(TurnError::Limited(text)),
                Gate::Refused { notice: None } => {
                    // Told already: nothing is sent, and the message is acked.
                    self.finished(turn, started, "limit reached; the user was told before")
                        .await;
                    return Outcome::Ack;
                }
            };
            match result {
                Ok(r) => {
                    let mut reply =
                        self.outbound(turn, r.text.clone(), OutboundKind::Reply, &r.model);
                    reply.input_tokens = r.usage.input_tokens;
                    reply.output_tokens = r.usage.output_tokens;
                    Answer {
                        usage: r.usage_events,
                        ..Answer::stored(reply, r.entries, r.llm_calls, r.tool_calls)
                    }
                }
                Err(TurnError::Stopped) => {
                    tracing::info!("turn stopped by the user");
                    let reply = self.outbound(
                        turn,
                        "Stopped, as you asked. I did not finish that request.".into(),
                        OutboundKind::Notice,
                        "",
                    );
                    Answer::unstored(reply, "stopped".into())
                }
                Err(TurnError::Transient(e)) => return retry(e),
                Err(TurnError::Limited(text)) => {
                    let reply = self.outbound(turn, text, OutboundKind::Notice, "");
                    Answer::unstored(reply, "limit reached".into())
                }
                Err(TurnError::Llm(e)) => {
                    tracing::warn!(error = %e, "turn failed; telling the user");
                    let reply = self.outbound(turn, e.user_message(), OutboundKind::Error, "");
                    Answer::unstored(reply, e.to_string())
                }
            }
        };

        // A failed turn is not stored: history keeps only real exchanges, and the
        // reply id still dedupes a redelivery within the duplicate window.
        let Answer {
            reply,
            entries,
            llm_calls,
            tool_calls,
            error,
            usage,
        } = answer;
        let usage_stored = usage.stored();
        if let Some(entries) = entries {
            let req = AppendTurnRequest {
                session: Some(turn.session_ref()),
                user_id,
                turn_id: turn.msg.id.clone(),
                entries,
                reply: Some(reply.clone()),
            };
            // Stored once per turn id, so it may be sent again after a lost connection.
            let append = self.bus.request_idempotent::<_, AppendTurnResponse>(
                self.bus.subjects().memory(MemoryOp::Append),
                &req,
                &turn.trace,
                None,
            );
            match tokio::join!(append, usage_stored).0 {
                Ok(stored) if stored.consolidation_due => self.journal.session(turn.session_ref()),
                Ok(_) => {}
                Err(e) => return retry(format!("storing the turn: {e}")),
            }
        } else {
            usage_stored.await;
        }

        let outcome = self.publish_reply(turn, &reply).await;
        self.bus
            .emit_soon(event::Kind::TurnFinished(TurnFinished {
                turn_id: turn.msg.id.clone(),
                session_id: turn.session.id(),
                ok: error.is_empty(),
                llm_calls,
                tool_calls,
                duration_ms: started.elapsed().as_millis() as u64,
                error,
            }))
            .await;
        outcome
    }

    /// Emits `turn_finished` for a turn that ended without a reply.
    async fn finished(&self, turn: &Turn, started: Instant, error: &str) {
        self.bus
            .emit_soon(event::Kind::TurnFinished(TurnFinished {
                turn_id: turn.msg.id.clone(),
                session_id: turn.session.id(),
                ok: false,
                llm_calls: 0,
                tool_calls: 0,
                duration_ms: started.elapsed().as_millis() as u64,
                error: error.to_owned(),
            }))
            .await;
    }

    /// Whether the turn was answered already and, when `with_context`, its context:
    /// one request to memory-svc (the context request names the turn).
    async fn known_before(&self, turn: &Turn, with_context: bool) -> Result<Known, BusError> {
        let (answered, ctx) = if with_context {
            let mut ctx = self.context_of(turn, turn.msg.id.clone()).await?;
            match ctx.answered.take() {
                Some(answered) => (answered, Some(ctx)),
                // A memory-svc older than ContextResponse.answered: ask it apart.
                None => (self.answered(turn).await?, Some(ctx)),
            }
        } else {
            (self.answered(turn).await?, None)
        };
        Ok(match answered.reply {
            Some(reply) if answered.answered => Known::Answered(Box::new(reply)),
            _ => Known::New(ctx.map(|c| Box::new(MemoryContext::from(c)))),
        })
    }

    async fn answered(&self, turn: &Turn) -> Result<AnsweredResponse, BusError> {
        self.bus
            .request_idempotent(
                self.bus.subjects().memory(MemoryOp::Answered),
                &AnsweredRequest {
                    turn_id: turn.msg.id.clone(),
                },
                &turn.trace,
                None,
            )
            .await
    }

    pub(crate) async fn context(&self, turn: &Turn) -> Result<MemoryContext, BusError> {
        self.context_of(turn, String::new())
            .await
            .map(MemoryContext::from)
    }

    /// The turn's context; with a `turn_id`, also whether that turn was answered.
    async fn context_of(&self, turn: &Turn, turn_id: String) -> Result<ContextResponse, BusError> {
        self.bus
            .request_idempotent(
                self.bus.subjects().memory(MemoryOp::Context),
                &ContextRequest {
                    session: Some(turn.session_ref()),
                    user_id: turn.user_id.clone(),
                    query: turn.msg.text.clone(),
                    history_turns: self.config.memory.history_turns,
                    channel_sender_id: turn.sender_id(),
                    turn_id,
                },
                &turn.trace,
                None,
            )
            .await
    }

    /// The chain of models for a turn: the session's `/model` (a route name or a model),
    /// else the model an admin chose for everyone (`/model all`), else the user's route,
    /// else the channel's, else the `default` route, else `[llm] model` with its fallbacks.
    pub(crate) async fn models_for(&self, turn: &Turn, ctx: &MemoryContext) -> Vec<String> {
        let llm = &self.config.llm;
        let route = |name: &str| {
            llm.routes
                .get(name)
                .map(|r| r.0.clone())
                .filter(|r| !r.is_empty())
        };
        if let Some(chosen) = &ctx.model_override {
            return route(chosen).unwrap_or_else(|| chain(chosen, &llm.fallbacks));
        }
        let everyone = self.model_for_everyone().await;
        if !everyone.is_empty() {
            return route(&everyone).unwrap_or_else(|| chain(&everyone, &llm.fallbacks));
        }
        llm.user_routes
            .get(&turn.user_id)
            .or_else(|| llm.channel_routes.get(turn.session.channel().as_str()))
            .and_then(|name| route(name))
            .or_else(|| route("default"))
            .unwrap_or_else(|| chain(&llm.model, &llm.fallbacks))
    }

    async fn publish_reply(&self, turn: &Turn, reply: &OutboundMessage) -> Outcome {
        if scheduled::is_silent(turn, reply) {
            tracing::info!("the scheduled job had nothing to report; no reply is sent");
            return Outcome::Ack;
        }
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
            // Set by the caller when a model answered.
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    /// The model decides; tools run; repeat until it answers or the budget is spent.
    pub(crate) async fn tool_loop(
        &self,
        turn: &Turn,
        ctx: &MemoryContext,
    ) -> Result<LoopResult, TurnError> {
        // The user's own time zone travels to tools (a cron job "at 9" is their 9).
        let timezone = crate::context::user_timezone(&ctx.user_profile_md).unwrap_or_default();
        let specs = self.specs_for(turn).await;
        let (tools, tool_tokens) = self.tools.offer(&specs);
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
        let models = self.models_for(turn, ctx).await;
        let primary = models.first().cloned().unwrap_or_default();
        let mut system = system_prompt(ctx, &facts, &names);
        system.push_str(&scheduled::prompt_note(turn));
        system.push_str(&tasks::prompt_note(turn));
        let text = scheduled::user_text(turn);
        // History gets what the window leaves after the prompt, the tools, the
        // message and the room kept for the answer.
        let fixed = estimate_tokens(&system) + tool_tokens + estimate_tokens(&text);
        let budget = self
            .config
            .llm
            .context_tokens
            .saturating_sub(self.config.llm.answer_reserve_tokens)
            .saturating_sub(fixed);
        let (history, dropped) = fit_history(ctx.history.clone(), budget);
        if dropped > 0 {
            tracing::info!(dropped, "history trimmed to fit the context window");
            system.push_str(&format!(
                "\n({dropped} older messages of this conversation were left out to fit the context window.)\n"
            ));
        }
        let mut req = LlmRequest {
            model: primary,
            system,
            messages: history,
            tools,
            max_output_tokens: self.config.llm.max_output_tokens,
        };
        req.messages.push(LlmMessage::User(text.clone()));

        let now = now_ms();
        let mut entries = vec![HistoryEntry {
            role: Role::User as i32,
            text,
            at_ms: now,
            turn_id: turn.msg.id.clone(),
            ..Default::default()
        }];
        let progress = Progress::start(
            &self.bus,
            turn.session.channel(),
            &turn.msg.id,
            &turn.session.id(),
        );
        let max_iterations = match tasks::task_of(turn) {
            Some(_) => self.config.subagents.max_iterations.max(1),
            None => self.config.llm.max_tool_iterations.max(1),
        };
        let mut llm_calls = 0;
        let mut tool_calls = 0;
        let mut usage = crate::llm::LlmUsage::default();
        let mut usage_events = UsageEvents::default();
        loop {
            // The last allowed call gets no tools, so it must answer in words.
            if llm_calls + 1 >= max_iterations && !req.tools.is_empty() {
                req.tools = Arc::default();
                req.system.push_str(
                    "\n\nYou have used your tool budget for this turn. Answer now with what you know, and say what is \
                     left undone.",
                );
            }
            let started = Instant::now();
            progress.llm_call(llm_calls + 1);
            let sink = {
                let p = progress.clone();
                move |d: &str| p.text(d)
            };
            // One span per model call, with OpenTelemetry's GenAI attributes.
            let llm_span = tracing::info_span!(
                "llm_call",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                gen_ai.operation.name = "chat",
                gen_ai.system = gen_ai_system(&req.model),
                gen_ai.request.model = %req.model,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
            );
            nexus_common::telemetry::name_span(&llm_span, "client", || {
                format!("chat {}", req.model)
            });
            let routed = tracing::Instrument::instrument(
                self.router
                    .chat(self.model.as_ref(), &models, req.clone(), &sink),
                llm_span.clone(),
            )
            .await;
            llm_calls += 1;
            let routed = routed?;
            let attempts = routed.attempts;
            let resp = routed.response;
            llm_span.record("gen_ai.response.model", resp.model.as_str());
            // As i64: the OpenTelemetry layer would turn unsigned numbers into text.
            llm_span.record(
                "gen_ai.usage.input_tokens",
                i64::from(resp.usage.input_tokens),
            );
            llm_span.record(
                "gen_ai.usage.output_tokens",
                i64::from(resp.usage.output_tokens),
            );
            drop(llm_span);
            nexus_common::telemetry::metrics().llm_call(
                &routed.model,
                gen_ai_system(&routed.model),
                started.elapsed().as_secs_f64(),
                resp.usage.input_tokens.into(),
                resp.usage.output_tokens.into(),
            );
            usage.input_tokens = usage.input_tokens.saturating_add(resp.usage.input_tokens);
            usage.output_tokens = usage.output_tokens.saturating_add(resp.usage.output_tokens);
            usage_events.send(
                &self.bus,
                event::Kind::LlmUsage(LlmUsageEvent {
                    turn_id: turn.msg.id.clone(),
                    model: routed.model.clone(),
                    provider: provider_of(&routed.model),
                    input_tokens: resp.usage.input_tokens,
                    output_tokens: resp.usage.output_tokens,
                    duration_ms: started.elapsed().as_millis() as u64,
                    attempts,
                    user_id: turn.user_id.clone(),
                    session_id: turn.session.id(),
                    channel: turn.session.channel().to_string(),
                    purpose: tasks::usage_purpose(turn)
                        .unwrap_or_else(|| scheduled::usage_purpose(turn)),
                }),
            );
            tracing::info!(
                gen_ai.request.model = %routed.model,
                gen_ai.response.model = %resp.model,
                gen_ai.usage.input_tokens = resp.usage.input_tokens,
                gen_ai.usage.output_tokens = resp.usage.output_tokens,
                tool_calls = resp.tool_calls.len(),
                "llm call"
            );

            // The budget is spent when the last call still asks for tools: answer with
            // what there is instead of looping.
            let exhausted = llm_calls >= max_iterations;
            if resp.tool_calls.is_empty() || exhausted {
                let text = if !resp.text.trim().is_empty() {
                    resp.text
                } else if exhausted {
                    format!(
                        "I reached the limit of {max_iterations} steps for one request before finishing. \
                         I ran {tool_calls} tool call(s) so far; ask me to continue and I will pick it up from here."
                    )
                } else {
                    "(The model returned an empty answer.)".to_owned()
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
                    usage,
                    usage_events,
                });
            }

            let calls = resp.tool_calls.clone();
            if let Some(call) = calls
                .iter()
                .find(|c| specs.get(&c.name).is_some_and(|s| s.requires_approval))
            {
                // A person decides; the turn ends with the question, the call waits in KV.
                let question = self
                    .ask_approval(turn, call, &timezone)
                    .await
                    .map_err(TurnError::Transient)?;
                entries.push(entry(turn, Role::Assistant, &question));
                return Ok(LoopResult {
                    text: question,
                    entries,
                    model: resp.model,
                    llm_calls,
                    tool_calls,
                    usage,
                    usage_events,
                });
            }
            req.messages.push(LlmMessage::Assistant {
                text: resp.text.clone(),
                tool_calls: calls.clone(),
            });
            tool_calls += calls.len() as u32;
            // Parallel tool calls run concurrently; results go back in call order.
            let results = futures::future::join_all(calls.iter().map(|c| {
                let span = tracing::info_span!(
                    "tool_call",
                    otel.name = tracing::field::Empty,
                    otel.kind = tracing::field::Empty,
                    gen_ai.operation.name = "execute_tool",
                    gen_ai.tool.name = %c.name,
                    gen_ai.tool.call.id = %c.id,
                );
                nexus_common::telemetry::name_span(&span, "client", || {
                    format!("execute_tool {}", c.name)
                });
                tracing::Instrument::instrument(
                    self.run_tool(turn, &specs, c, &progress, &timezone),
                    span,
                )
            }))
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
                    ..Default::default()
                });
                req.messages.push(LlmMessage::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: fence_untrusted(&call.name, &text),
                });
            }
        }
    }

    /// The tools of a turn. A sub-agent gets no tool that needs a person's yes
    /// (nobody is there to give it), no `spawn` at the depth limit and no `message`
    /// unless `[subagents] allow_message`.
    async fn specs_for(&self, turn: &Turn) -> crate::tools::Specs {
        let specs = self.tools.specs().await;
        let Some((_, depth)) = tasks::task_of(turn) else {
            return specs;
        };
        let limits = &self.config.subagents;
        let mut own = (*specs).clone();
        own.retain(|name, spec| {
            let too_deep = name == tasks::NAME && depth >= limits.max_depth;
            let no_message = name == crate::message::NAME && !limits.allow_message;
            !(spec.requires_approval || too_deep || no_message)
        });
        Arc::new(own)
    }

    async fn run_tool(
        &self,
        turn: &Turn,
        specs: &std::collections::BTreeMap<String, nexus_proto::v1::ToolSpec>,
        call: &LlmToolCall,
        progress: &Progress,
        timezone: &str,
    ) -> (bool, String) {
        let started = Instant::now();
        let args = if call.arguments.is_null() {
            "{}".to_owned()
        } else {
            call.arguments.to_string()
        };
        // A sub-agent acts for the user in the chat its task came from (a cron job it
        // makes fires there, not in the task's own session).
        let (channel, chat_id) = tasks::origin_chat(turn).unwrap_or_else(|| {
            (
                turn.session.channel().to_string(),
                turn.session.chat_id().to_owned(),
            )
        });
        let wire = ToolCall {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments_json: args.clone(),
            context: Some(ToolContext {
                session_id: turn.session.id(),
                user_id: turn.user_id.clone(),
                channel,
                chat_id,
                turn_id: turn.msg.id.clone(),
                // Tools that need a yes never get here: the loop asks the person first.
                approved: false,
                timezone: timezone.to_owned(),
            }),
        };
        let result = if call.name == tasks::NAME {
            // Served here: it needs the whole turn (its origin, its depth).
            let spawned = self.spawn_task(turn, call).await;
            nexus_proto::v1::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                outcome: Some(match spawned {
                    Ok(text) => nexus_proto::v1::tool_result::Outcome::Output(text),
                    Err(failure) => nexus_proto::v1::tool_result::Outcome::Error(failure.into()),
                }),
                ..Default::default()
            }
        } else {
            self.tools
                .call(specs.get(&call.name), wire, &turn.trace.child())
                .await
        };
        if matches!(
            result.outcome,
            Some(nexus_proto::v1::tool_result::Outcome::Output(_))
        ) {
            self.note_written(turn, call);
        }
        let (ok, text) = result_text(&result);
        let error_kind = match &result.outcome {
            Some(nexus_proto::v1::tool_result::Outcome::Error(e)) => {
                nexus_proto::v1::ToolErrorKind::try_from(e.kind)
                    .map(|k| k.as_str_name().to_owned())
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        let called = ToolCalled {
            turn_id: turn.msg.id.clone(),
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments_json: args,
            ok,
            error_kind,
            duration_ms: started.elapsed().as_millis() as u64,
            output_preview: text.chars().take(500).collect(),
        };
        progress.tool(called.clone());
        self.bus.emit_soon(event::Kind::ToolCalled(called)).await;
        (ok, text)
    }
}

/// A history entry of this turn.
pub(crate) fn entry(turn: &Turn, role: Role, text: &str) -> HistoryEntry {
    HistoryEntry {
        role: role as i32,
        text: text.to_owned(),
        at_ms: now_ms(),
        turn_id: turn.msg.id.clone(),
        ..Default::default()
    }
}

/// `gen_ai.system` of a model: the provider genai routes it to (`openai`, `anthropic`, …).
fn gen_ai_system(model: &str) -> &'static str {
    genai::adapter::AdapterKind::from_model(model)
        .map(|k| k.as_lower_str())
        .unwrap_or("unknown")
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
