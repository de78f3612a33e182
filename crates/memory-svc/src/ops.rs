//! The memory operations, from request bytes to reply bytes: decode the
//! proto, turn it into validated domain values, ask the store and the files,
//! encode the answer. Errors become service error codes here and only here:
//! 400 for a request that can never succeed, 500 for our own failure.
//!
//! It must never panic on input and never touch NATS; the server loop owns the
//! subscriptions.

use bytes::Bytes;
use nexus_bus::{MemoryOp, async_nats::service, reply_bytes};
use nexus_common::{
    config::MemoryConfig,
    domain::{ChannelName, SessionKey, default_user_id},
    now_ms,
};
use nexus_proto::{
    Message,
    v1::{
        AnsweredRequest, AnsweredResponse, AppendTurnRequest, AppendTurnResponse, ClaimBatch,
        CommitBatch, ConsolidateRequest, ConsolidateResponse, ConsolidationBatch, ContextRequest,
        ContextResponse, HistoryEntry, HistoryRequest, HistoryResponse, Identity as IdentityMsg,
        IdentityRequest, IdentityResponse, OutboundMessage, SessionCommandRequest,
        SessionCommandResponse, SessionRef, UsageRequest, UsageResponse, UsageRow,
        consolidate_request, identity_request, session_command_request,
    },
};

use crate::{
    files::{Markdown, MarkdownFiles, is_file_safe},
    index::{self, MemoryIndex, UserId},
    journal::{self, Journal, JournalError, StoredFact},
    store::{
        Answered, BatchEntry, EarlierSummary, Entry, Identity, ModelOverride, NewConsolidation,
        NewTurn, PastEntry, Role, SessionStore, StoreError, TurnId, TurnQuery,
    },
};

/// Ledger rows one usage request may return; keeps a reply under NATS' payload limit.
const MAX_USAGE_ROWS: usize = 5_000;
/// Days a usage request covers when it names no first day.
const DEFAULT_USAGE_DAYS: i64 = 30;
/// Most turns one request may ask history for; keeps a reply under NATS' payload limit.
const MAX_HISTORY_TURNS: u32 = 500;
/// Excerpts of a large MEMORY.md considered for a context, best first.
const MAX_EXCERPT_HITS: u32 = 64;
/// Most entries one turn may carry (a long tool loop stays far below).
const MAX_ENTRIES_PER_TURN: usize = 10_000;
/// Longest status text sent in the service error header.
const MAX_STATUS_LEN: usize = 512;
/// Longest user id a link may set (the default ids are at most the channel plus 96).
pub const MAX_LINKED_USER_ID: usize = 96;
/// Longest sender id accepted, as upstream platforms spell them.
const MAX_SENDER_ID: usize = 256;
/// Sessions one "due" request lists at most.
const MAX_DUE: u32 = 100;
/// Turns one summary covers at most, and bytes of entry text it is given.
const MAX_BATCH_TURNS: u32 = 40;
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long a claimed batch stays with its caller before others may take it,
/// when the caller does not say, and the bounds of what it may ask.
const DEFAULT_LEASE_MS: i64 = 3 * 60 * 1000;
const LEASE_BOUNDS_MS: (i64, i64) = (5_000, 3_600_000);
/// Longest lease owner (a replica id).
const MAX_OWNER: usize = 128;
/// Bytes of earlier summaries, and of journal excerpts, in a context.
const MAX_SUMMARY_CONTEXT_BYTES: usize = 4096;
const MAX_JOURNAL_CONTEXT_BYTES: usize = 4096;
/// Earlier summaries of a conversation considered for a context.
const MAX_EARLIER_SUMMARIES: u32 = 8;

/// Why an operation failed, split by whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request can never succeed as sent.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the workspace: {0}")]
    Files(#[from] std::io::Error),
    #[error("cannot write the journal: {0}")]
    Journal(#[from] JournalError),
}

impl OpError {
    /// The NATS service error code.
    pub fn code(&self) -> u16 {
        match self {
            OpError::BadRequest(_) => 400,
            OpError::Store(_) | OpError::Files(_) | OpError::Journal(_) => 500,
        }
    }
}

/// Everything the operations need; shared by all request tasks.
#[derive(Debug)]
pub struct Memory {
    store: SessionStore,
    files: MarkdownFiles,
    index: MemoryIndex,
    journal: Journal,
    history_turns: u32,
    timezone: String,
    max_memory_bytes: usize,
    /// `[memory] journal`: when off, no session is ever due.
    journal_enabled: bool,
    journal_batch_turns: u32,
    journal_idle_ms: i64,
}

impl Memory {
    /// `config.timezone` must name a time zone (the config checks it when loaded).
    pub fn new(
        store: SessionStore,
        files: MarkdownFiles,
        index: MemoryIndex,
        config: &MemoryConfig,
    ) -> Result<Self, jiff::Error> {
        let tz = jiff::tz::TimeZone::get(&config.timezone)?;
        Ok(Self {
            journal: Journal::new(store.clone(), index.clone(), tz),
            store,
            files,
            index,
            history_turns: config.history_turns,
            timezone: config.timezone.clone(),
            max_memory_bytes: config.max_memory_bytes,
            journal_enabled: config.journal,
            journal_batch_turns: config.journal_batch_turns.max(1),
            journal_idle_ms: i64::try_from(config.journal_idle_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        })
    }

    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Runs one operation on a request payload and encodes the reply or the service error.
    pub async fn handle(
        &self,
        op: MemoryOp,
        payload: &[u8],
    ) -> Result<Bytes, service::error::Error> {
        match op {
            MemoryOp::Context => reply(op, self.context(payload).await),
            MemoryOp::Append => reply(op, self.append(payload).await),
            MemoryOp::Answered => reply(op, self.answered(payload).await),
            MemoryOp::History => reply(op, self.history(payload).await),
            MemoryOp::Session => reply(op, self.session(payload).await),
            MemoryOp::Identity => reply(op, self.identity(payload).await),
            MemoryOp::Consolidate => reply(op, self.consolidate(payload).await),
            MemoryOp::Usage => reply(op, self.usage(payload).await),
        }
    }

    async fn context(&self, payload: &[u8]) -> Result<ContextResponse, OpError> {
        let req: ContextRequest = decode(payload)?;
        let session = session_key(req.session.as_ref())?;
        let turn_id = if req.turn_id.is_empty() {
            None
        } else {
            Some(TurnId::parse(&req.turn_id).map_err(bad)?)
        };
        let sender = if req.channel_sender_id.is_empty() {
            None
        } else {
            Some(sender_id(&req.channel_sender_id)?)
        };
        let turns = self.turns(req.history_turns);
        // Whether the turn was answered is read with the rest: a redelivered turn is
        // rare, and every other turn would wait for one more query.
        let reads = self
            .store
            .turn_reads(&TurnQuery {
                session: &session,
                turns,
                summaries: MAX_EARLIER_SUMMARIES,
                turn_id: turn_id.as_ref(),
                sender: sender.map(|s| (session.channel().as_str(), s)),
            })
            .await?;
        if let (Some(answered), Some(turn_id)) = (reads.answered, &turn_id) {
            return Ok(ContextResponse {
                answered: Some(answered_response(turn_id, answered)?),
                ..Default::default()
            });
        }
        // The linked user, else the one the gateway named, else `<channel>_<sender>`.
        let user_id = match (reads.identity, sender) {
            (Some(linked), _) => linked.user_id,
            (None, Some(_)) if !req.user_id.is_empty() => req.user_id,
            (None, Some(sender)) => default_user_id(session.channel(), sender),
            (None, None) => req.user_id,
        };
        let markdown = async {
            let (profile, markdown) = self
                .files
                .ensure_profile_and_read(&user_id, self.max_memory_bytes)
                .await?;
            match profile {
                Ok(true) => tracing::info!(user_id, "first contact: profile created"),
                Ok(false) => {}
                // The default profile still serves; a context is never refused over it.
                Err(error) => tracing::warn!(%error, user_id, "profile not created"),
            }
            Ok::<_, OpError>(self.with_excerpts(markdown, &req.query).await)
        };
        let reader = UserId::parse(&user_id);
        let (markdown, journal_md) =
            tokio::join!(markdown, self.journal_context(&req.query, reader.as_ref()));
        let markdown = markdown?;
        Ok(ContextResponse {
            agents_md: markdown.agents_md,
            soul_md: markdown.soul_md,
            user_profile_md: markdown.user_profile_md,
            memory_md: markdown.memory_md,
            history: reads.history.into_iter().map(history_entry).collect(),
            session_id: session.id(),
            timezone: self.timezone.clone(),
            model_override: reads.model_override,
            user_id,
            session_summary: self.earlier_summaries(&reads.earlier),
            journal_md,
            answered: turn_id.is_some().then(AnsweredResponse::default),
        })
    }

    /// What this conversation said before its history window, as summarized,
    /// newest kept first when over budget.
    fn earlier_summaries(&self, summaries: &[EarlierSummary]) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut used = 0;
        for s in summaries.iter().rev() {
            let part = format!(
                "{} to {} ({} turn{}):\n{}\n",
                self.journal.day_of(s.first_at_ms),
                self.journal.day_of(s.last_at_ms),
                s.turns,
                if s.turns == 1 { "" } else { "s" },
                s.summary.trim_end()
            );
            let part = if used + part.len() <= MAX_SUMMARY_CONTEXT_BYTES {
                part
            } else if parts.is_empty() {
                // The newest alone is over budget: its head, rather than nothing.
                let mut end = MAX_SUMMARY_CONTEXT_BYTES.saturating_sub(" …\n".len());
                while !part.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{} …\n", &part[..end])
            } else {
                break;
            };
            used += part.len();
            parts.push(part);
        }
        parts.reverse();
        parts.concat()
    }

    /// The reader's journal sections for the days the query names ("on Monday",
    /// "yesterday", 2026-11-23). Empty on failure. Nothing else from the journals
    /// is searched per turn: that cost every turn a full-text search and a
    /// freshness check of every memory file; the model has `memory_search`.
    async fn journal_context(&self, query: &str, reader: Option<&UserId>) -> String {
        let mut out = String::new();
        for day in journal::days_named(query, self.journal.today()) {
            let left = MAX_JOURNAL_CONTEXT_BYTES.saturating_sub(out.len());
            match self.journal.day_for_reader(day, reader, left).await {
                Ok(Some(text)) => out.push_str(&format!(
                    "From memories/{day}.md ({}):\n{text}\n",
                    day.strftime("%A")
                )),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, %day, "journal of a named day unreadable"),
            }
        }
        out
    }

    async fn identity(&self, payload: &[u8]) -> Result<IdentityResponse, OpError> {
        use identity_request::Op;
        let req: IdentityRequest = decode(payload)?;
        match req.op {
            Some(Op::Resolve(r)) => {
                let channel = ChannelName::parse(&r.channel).map_err(bad)?;
                let sender = sender_id(&r.sender_id)?;
                let linked = self.store.identity(channel.as_str(), sender).await?;
                let user_id = match &linked {
                    Some(linked) => linked.user_id.clone(),
                    None => default_user_id(&channel, sender),
                };
                Ok(IdentityResponse {
                    user_id,
                    identities: linked.into_iter().map(identity_msg).collect(),
                })
            }
            Some(Op::Link(l)) => {
                let channel = ChannelName::parse(&l.channel).map_err(bad)?;
                let sender = sender_id(&l.sender_id)?;
                let user_id = linkable_user_id(&l.user_id)?;
                let linked = self
                    .store
                    .link_identity(channel.as_str(), sender, user_id)
                    .await?;
                tracing::info!(channel = %channel, sender_id = sender, user_id, "identity linked");
                Ok(IdentityResponse {
                    user_id: linked.user_id.clone(),
                    identities: vec![identity_msg(linked)],
                })
            }
            Some(Op::List(l)) => {
                let user = (!l.user_id.is_empty()).then_some(l.user_id.as_str());
                let identities = self.store.identities(user).await?;
                Ok(IdentityResponse {
                    user_id: String::new(),
                    identities: identities.into_iter().map(identity_msg).collect(),
                })
            }
            None => Err(OpError::BadRequest(
                "op is missing; expected resolve, link or list".into(),
            )),
        }
    }

    /// A MEMORY.md too large to give whole becomes its excerpts most relevant
    /// to `query`. Without relevant excerpts, or when the index fails, its
    /// head stays: a context is never refused over retrieval.
    async fn with_excerpts(&self, mut markdown: Markdown, query: &str) -> Markdown {
        let Some(total) = markdown.memory_shortened_from else {
            return markdown;
        };
        match self.index.search_memory_md(query, MAX_EXCERPT_HITS).await {
            Ok(hits) => {
                if let Some(excerpts) = index::excerpts(total, &hits, self.max_memory_bytes) {
                    markdown.memory_md = excerpts;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "MEMORY.md excerpts unavailable; giving its head");
            }
        }
        markdown
    }

    async fn append(&self, payload: &[u8]) -> Result<AppendTurnResponse, OpError> {
        let req: AppendTurnRequest = decode(payload)?;
        let session = session_key(req.session.as_ref())?;
        let turn_id = TurnId::parse(&req.turn_id).map_err(bad)?;
        if req.user_id.len() > 256 || req.user_id.chars().any(char::is_control) {
            return Err(OpError::BadRequest(
                "user id is too long or holds control characters".into(),
            ));
        }
        if req.entries.len() > MAX_ENTRIES_PER_TURN {
            return Err(OpError::BadRequest(format!(
                "a turn holds at most {MAX_ENTRIES_PER_TURN} entries, this one has {}",
                req.entries.len()
            )));
        }
        let now = now_ms();
        let entries = req
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| entry(i, e, &turn_id, now))
            .collect::<Result<Vec<_>, _>>()?;
        let turn = NewTurn {
            session,
            turn_id,
            user_id: req.user_id,
            entries,
            reply: req.reply.as_ref().map(Message::encode_to_vec),
            at_ms: now,
        };
        // The count is a hint only: the sweep finds the session anyway.
        let appended = self
            .store
            .append_counting(&turn, self.journal_enabled)
            .await?;
        let stored = appended.is_some();
        if !stored {
            tracing::info!(
                turn_id = turn.turn_id.as_str(),
                "turn already stored; append ignored"
            );
        }
        let consolidation_due = self.journal_enabled
            && appended.is_some_and(|pending| pending >= self.journal_batch_turns);
        Ok(AppendTurnResponse {
            stored,
            consolidation_due,
        })
    }

    async fn usage(&self, payload: &[u8]) -> Result<UsageResponse, OpError> {
        let req: UsageRequest = decode(payload)?;
        let day = |s: &str, what: &str| {
            s.parse::<jiff::civil::Date>().map_err(|e| {
                OpError::BadRequest(format!("{what} {s:?} is not a YYYY-MM-DD day: {e}"))
            })
        };
        let to = if req.to_day.is_empty() {
            crate::usage::utc_day(now_ms())
                .parse::<jiff::civil::Date>()
                .map_err(|e| OpError::BadRequest(e.to_string()))?
        } else {
            day(&req.to_day, "to_day")?
        };
        let from = if req.from_day.is_empty() {
            to.checked_sub(jiff::Span::new().days(DEFAULT_USAGE_DAYS - 1))
                .map_err(|e| OpError::BadRequest(e.to_string()))?
        } else {
            day(&req.from_day, "from_day")?
        };
        if from > to {
            return Err(OpError::BadRequest(format!(
                "from_day {from} is after to_day {to}"
            )));
        }
        if req.user_id.len() > 256 || req.user_id.chars().any(char::is_control) {
            return Err(OpError::BadRequest(
                "user id is too long or holds control characters".into(),
            ));
        }
        let user = (!req.user_id.is_empty()).then_some(req.user_id.as_str());
        let rows = self
            .store
            .usage(&from.to_string(), &to.to_string(), user)
            .await?;
        if rows.len() > MAX_USAGE_ROWS {
            return Err(OpError::BadRequest(format!(
                "{} ledger rows from {from} to {to}; ask for fewer days (at most {MAX_USAGE_ROWS} rows)",
                rows.len()
            )));
        }
        Ok(UsageResponse {
            rows: rows
                .into_iter()
                .map(|r| UsageRow {
                    day: r.key.day,
                    user_id: r.key.user_id,
                    channel: r.key.channel,
                    model: r.key.model,
                    purpose: r.key.purpose,
                    calls: r.calls,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                })
                .collect(),
        })
    }

    async fn consolidate(&self, payload: &[u8]) -> Result<ConsolidateResponse, OpError> {
        use consolidate_request::Op as C;
        let req: ConsolidateRequest = decode(payload)?;
        match req.op {
            Some(C::Due(due)) => {
                // Summaries stored but not yet in the files (a crash, a full disk) are retried here.
                if let Err(error) = self.journal.apply_pending().await {
                    tracing::warn!(%error, "stored summaries not written to the journal yet");
                }
                if !self.journal_enabled {
                    return Ok(ConsolidateResponse::default());
                }
                let now = now_ms();
                let limit = if due.limit == 0 {
                    MAX_DUE
                } else {
                    due.limit.min(MAX_DUE)
                };
                let sessions = self
                    .store
                    .due_sessions(
                        now,
                        now.saturating_sub(self.journal_idle_ms),
                        self.journal_batch_turns,
                        limit,
                    )
                    .await?;
                Ok(ConsolidateResponse {
                    due: sessions.iter().map(session_ref).collect(),
                    ..Default::default()
                })
            }
            Some(C::Claim(claim)) => self.claim(claim).await,
            Some(C::Commit(commit)) => self.commit(commit).await,
            Some(C::Release(release)) => {
                let session = session_key(release.session.as_ref())?;
                let owner = lease_owner(&release.owner)?;
                let failed = !release.error.is_empty();
                if failed {
                    tracing::warn!(
                        session = %session,
                        error = %status_text(&release.error),
                        "summary failed; the turns wait for a retry"
                    );
                }
                self.store
                    .release_claim(&session, owner, failed, now_ms())
                    .await?;
                Ok(ConsolidateResponse::default())
            }
            None => Err(OpError::BadRequest(
                "op is missing; expected due, claim, commit or release".into(),
            )),
        }
    }

    /// Leases the session and hands out its oldest unsummarized turns: whole
    /// turns of one local day, within the byte cap.
    async fn claim(&self, req: ClaimBatch) -> Result<ConsolidateResponse, OpError> {
        let session = session_key(req.session.as_ref())?;
        let owner = lease_owner(&req.owner)?;
        let now = now_ms();
        let lease_ms = match i64::try_from(req.lease_ms) {
            Ok(0) => DEFAULT_LEASE_MS,
            Ok(ms) => ms.clamp(LEASE_BOUNDS_MS.0, LEASE_BOUNDS_MS.1),
            Err(_) => LEASE_BOUNDS_MS.1,
        };
        let lease_until_ms = now.saturating_add(lease_ms);
        let Some(claim) = self
            .store
            .claim(&session, owner, now, lease_until_ms, MAX_BATCH_TURNS)
            .await?
        else {
            return Ok(ConsolidateResponse::default());
        };
        let taken = cut_batch(&claim.entries, MAX_BATCH_BYTES, |at| {
            self.journal.day_of(at)
        });
        let entries = &claim.entries[..taken.entries];
        let Some(last) = entries.last() else {
            return Ok(ConsolidateResponse::default());
        };
        let mut users: Vec<String> = entries.iter().map(|e| e.user_id.clone()).collect();
        users.sort();
        users.dedup();
        let batch = ConsolidationBatch {
            session: Some(session_ref(&session)),
            entries: entries.iter().map(batch_entry).collect(),
            from_entry: claim.from_entry,
            to_entry: last.id,
            user_ids: users,
            day: self.journal.day_of(entries[0].entry.at_ms).to_string(),
            turns: taken.turns,
            lease_until_ms,
            remaining_turns: claim.pending_turns.saturating_sub(taken.turns),
        };
        tracing::info!(session = %session, turns = batch.turns, day = batch.day, "batch claimed for a summary");
        Ok(ConsolidateResponse {
            batch: Some(batch),
            ..Default::default()
        })
    }

    /// Stores a summary with the pointer move, then writes it to the files.
    async fn commit(&self, req: CommitBatch) -> Result<ConsolidateResponse, OpError> {
        let session = session_key(req.session.as_ref())?;
        if req.from_entry < 0 || req.to_entry <= req.from_entry {
            return Err(OpError::BadRequest(format!(
                "entries ({}, {}] are no range",
                req.from_entry, req.to_entry
            )));
        }
        let summary = req.summary_md.trim();
        if summary.is_empty() {
            return Err(OpError::BadRequest("summary_md is empty".into()));
        }
        if summary.len() > 4 * journal::MAX_SUMMARY_BYTES {
            return Err(OpError::BadRequest(format!(
                "summary_md is {} bytes; keep it under {}",
                summary.len(),
                journal::MAX_SUMMARY_BYTES
            )));
        }
        if req.facts.len() > journal::MAX_FACTS {
            return Err(OpError::BadRequest(format!(
                "{} facts; at most {} per summary",
                req.facts.len(),
                journal::MAX_FACTS
            )));
        }
        let range = self
            .store
            .range_facts(&session, req.from_entry, req.to_entry)
            .await?;
        if range.turns == 0 {
            return Err(OpError::BadRequest(format!(
                "session {session} has no turns in entries ({}, {}]",
                req.from_entry, req.to_entry
            )));
        }
        let mut facts = Vec::with_capacity(req.facts.len());
        for (i, fact) in req.facts.iter().enumerate() {
            let text = crate::markdown::one_line(&fact.text);
            if text.is_empty() || text.len() > journal::MAX_FACT_BYTES {
                return Err(OpError::BadRequest(format!(
                    "fact {i} must be 1 to {} bytes",
                    journal::MAX_FACT_BYTES
                )));
            }
            if !fact.user_id.is_empty() && !range.users.contains(&fact.user_id) {
                return Err(OpError::BadRequest(format!(
                    "fact {i} is about {:?}, who did not speak in these turns",
                    fact.user_id.chars().take(100).collect::<String>()
                )));
            }
            facts.push(StoredFact {
                text,
                user_id: fact.user_id.clone(),
            });
        }
        let day = self.journal.day_of(range.first_at_ms).to_string();
        let facts_json = serde_json::to_string(&facts)
            .map_err(|e| OpError::BadRequest(format!("facts do not serialize: {e}")))?;
        let committed = self
            .store
            .commit_consolidation(&NewConsolidation {
                session: session.clone(),
                from_entry: req.from_entry,
                to_entry: req.to_entry,
                range,
                day: day.clone(),
                summary: summary.to_owned(),
                facts_json,
                model: req.model.chars().take(200).collect(),
                at_ms: now_ms(),
            })
            .await?;
        if committed {
            // Stored is what counts; files that fail now are written on the next pass.
            if let Err(error) = self.journal.apply_pending().await {
                tracing::warn!(%error, "summary stored; journal file not written yet");
            }
        } else {
            tracing::info!(session = %session, "summary of an already summarized range ignored");
        }
        Ok(ConsolidateResponse {
            committed,
            journal_path: format!("{}/{day}.md", index::JOURNAL_DIR),
            ..Default::default()
        })
    }

    async fn answered(&self, payload: &[u8]) -> Result<AnsweredResponse, OpError> {
        let req: AnsweredRequest = decode(payload)?;
        self.answered_turn(&req.turn_id).await
    }

    async fn answered_turn(&self, turn_id: &str) -> Result<AnsweredResponse, OpError> {
        let turn_id = TurnId::parse(turn_id).map_err(bad)?;
        match self.store.answered(&turn_id).await? {
            Some(answered) => answered_response(&turn_id, answered),
            None => Ok(AnsweredResponse::default()),
        }
    }

    async fn history(&self, payload: &[u8]) -> Result<HistoryResponse, OpError> {
        let req: HistoryRequest = decode(payload)?;
        let session = session_key(req.session.as_ref())?;
        let entries = self.store.history(&session, self.turns(req.limit)).await?;
        Ok(HistoryResponse {
            entries: entries.into_iter().map(history_entry).collect(),
        })
    }

    async fn session(&self, payload: &[u8]) -> Result<SessionCommandResponse, OpError> {
        use session_command_request::Command;
        let req: SessionCommandRequest = decode(payload)?;
        let session = session_key(req.session.as_ref())?;
        match req.command {
            Some(Command::Reset(true)) => {
                let archived_turns = self.store.reset(&session).await?;
                tracing::info!(session = %session, archived_turns, "session reset");
                Ok(SessionCommandResponse {
                    model_override: self.store.model_override(&session).await?,
                    archived_turns,
                })
            }
            Some(Command::SetModel(name)) => {
                let model = ModelOverride::parse(&name).map_err(bad)?;
                self.store.set_model(&session, &model).await?;
                tracing::info!(session = %session, model = model.as_str(), "session model set");
                Ok(SessionCommandResponse {
                    model_override: model.into_string(),
                    archived_turns: 0,
                })
            }
            Some(Command::Reset(false)) => Err(OpError::BadRequest(
                "reset is false: send reset = true or set_model".into(),
            )),
            None => Err(OpError::BadRequest(
                "command is missing; expected reset or set_model".into(),
            )),
        }
    }

    fn turns(&self, requested: u32) -> u32 {
        history_window(requested, self.history_turns)
    }
}

/// Turns of history to read: the request's number, 0 meaning the configured default.
/// A stored turn as the answer to "was it answered?", its reply decoded.
fn answered_response(turn_id: &TurnId, answered: Answered) -> Result<AnsweredResponse, OpError> {
    let reply = answered
        .reply
        .map(|bytes| OutboundMessage::decode(bytes.as_slice()))
        .transpose()
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "stored reply of turn {} does not decode: {e}",
                turn_id.as_str()
            ))
        })?;
    Ok(AnsweredResponse {
        answered: true,
        reply,
    })
}

fn history_window(requested: u32, default: u32) -> u32 {
    let turns = if requested == 0 { default } else { requested };
    turns.min(MAX_HISTORY_TURNS)
}

/// The one place where an operation's result becomes a reply or a service error.
fn reply<M: Message>(
    op: MemoryOp,
    result: Result<M, OpError>,
) -> Result<Bytes, service::error::Error> {
    reply_bytes(result.map_err(|error| {
        let code = error.code();
        if code >= 500 {
            tracing::error!(op = op.name(), code, %error, "memory operation failed");
        } else {
            tracing::warn!(op = op.name(), code, %error, "memory request refused");
        }
        (code, status_text(&error.to_string()))
    }))
}

/// The status travels in a header: one line, bounded.
fn status_text(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_STATUS_LEN {
        let mut end = MAX_STATUS_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

fn bad(e: impl std::fmt::Display) -> OpError {
    OpError::BadRequest(e.to_string())
}

fn decode<T: Message + Default>(payload: &[u8]) -> Result<T, OpError> {
    nexus_bus::decode(payload).map_err(bad)
}

fn session_key(session: Option<&SessionRef>) -> Result<SessionKey, OpError> {
    let session = session.ok_or_else(|| OpError::BadRequest("session is missing".into()))?;
    let channel = ChannelName::parse(&session.channel).map_err(bad)?;
    SessionKey::new(channel, &session.chat_id, &session.thread_id).map_err(bad)
}

fn sender_id(s: &str) -> Result<&str, OpError> {
    if s.is_empty() || s.len() > MAX_SENDER_ID || s.chars().any(char::is_control) {
        return Err(OpError::BadRequest(format!(
            "sender id must be 1 to {MAX_SENDER_ID} bytes without control characters"
        )));
    }
    Ok(s)
}

fn linkable_user_id(s: &str) -> Result<&str, OpError> {
    if !is_file_safe(s) || s.len() > MAX_LINKED_USER_ID {
        return Err(OpError::BadRequest(format!(
            "user id {:?} must be 1 to {MAX_LINKED_USER_ID} of A-Z, a-z, 0-9, _ and -",
            s.chars().take(120).collect::<String>()
        )));
    }
    Ok(s)
}

fn lease_owner(s: &str) -> Result<&str, OpError> {
    if s.is_empty() || s.len() > MAX_OWNER || s.chars().any(char::is_control) {
        return Err(OpError::BadRequest(format!(
            "owner must be 1 to {MAX_OWNER} bytes without control characters"
        )));
    }
    Ok(s)
}

fn session_ref(session: &SessionKey) -> SessionRef {
    SessionRef {
        channel: session.channel().to_string(),
        chat_id: session.chat_id().to_owned(),
        thread_id: session.thread_id().to_owned(),
    }
}

/// How much of a claim one summary takes.
#[derive(Debug, PartialEq, Eq)]
struct Taken {
    entries: usize,
    turns: u32,
}

/// Whole turns from the start of `entries` (which are whole turns, in order):
/// all of the first turn's local day, while their text fits `max_bytes`. The
/// first turn is always taken, so a batch is never empty.
fn cut_batch<D: PartialEq>(
    entries: &[BatchEntry],
    max_bytes: usize,
    day_of: impl Fn(i64) -> D,
) -> Taken {
    let mut taken = Taken {
        entries: 0,
        turns: 0,
    };
    let Some(first) = entries.first() else {
        return taken;
    };
    let day = day_of(first.entry.at_ms);
    let mut bytes = 0;
    let mut i = 0;
    while i < entries.len() {
        let turn = &entries[i].turn_id;
        let end = entries[i..]
            .iter()
            .position(|e| &e.turn_id != turn)
            .map_or(entries.len(), |n| i + n);
        let turn_bytes: usize = entries[i..end].iter().map(|e| e.entry.text.len()).sum();
        if taken.turns > 0
            && (day_of(entries[i].entry.at_ms) != day || bytes + turn_bytes > max_bytes)
        {
            break;
        }
        bytes += turn_bytes;
        taken.turns += 1;
        taken.entries = end;
        i = end;
    }
    taken
}

fn batch_entry(e: &BatchEntry) -> HistoryEntry {
    HistoryEntry {
        role: e.entry.role.code(),
        text: e.entry.text.clone(),
        tool_name: e.entry.tool_name.clone(),
        tool_call_id: e.entry.tool_call_id.clone(),
        at_ms: e.entry.at_ms,
        turn_id: e.turn_id.as_str().to_owned(),
        user_id: if e.entry.role == Role::User {
            e.user_id.clone()
        } else {
            String::new()
        },
    }
}

fn identity_msg(id: Identity) -> IdentityMsg {
    IdentityMsg {
        channel: id.channel,
        sender_id: id.sender_id,
        user_id: id.user_id,
        linked_at_ms: id.linked_at_ms,
    }
}

fn entry(i: usize, e: &HistoryEntry, turn_id: &TurnId, now: i64) -> Result<Entry, OpError> {
    let role = Role::from_code(e.role).ok_or_else(|| {
        OpError::BadRequest(format!(
            "entry {i} has role {}; expected user, assistant, tool or system",
            e.role
        ))
    })?;
    // The entry's own turn id is redundant here; a different one is a caller bug.
    if !e.turn_id.is_empty() && e.turn_id != turn_id.as_str() {
        return Err(OpError::BadRequest(format!(
            "entry {i} belongs to turn {:?}, not to {:?}",
            e.turn_id,
            turn_id.as_str()
        )));
    }
    Ok(Entry {
        role,
        text: e.text.clone(),
        tool_name: e.tool_name.clone(),
        tool_call_id: e.tool_call_id.clone(),
        at_ms: if e.at_ms > 0 { e.at_ms } else { now },
    })
}

fn history_entry(past: PastEntry) -> HistoryEntry {
    HistoryEntry {
        role: past.entry.role.code(),
        text: past.entry.text,
        tool_name: past.entry.tool_name,
        tool_call_id: past.entry.tool_call_id,
        at_ms: past.entry.at_ms,
        turn_id: past.turn_id.as_str().to_owned(),
        user_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn status_text_is_one_bounded_line() {
        assert_eq!(status_text("a\r\nb"), "a  b");
        let long = "é".repeat(400);
        let out = status_text(&long);
        assert!(out.len() <= MAX_STATUS_LEN + '…'.len_utf8());
        assert!(out.ends_with('…'));
    }

    fn batch(turns: &[(&str, i64, usize)]) -> Vec<BatchEntry> {
        turns
            .iter()
            .enumerate()
            .map(|(i, (turn, at_ms, len))| BatchEntry {
                id: i as i64 + 1,
                turn_id: TurnId::parse(turn).unwrap(),
                user_id: "u".into(),
                entry: Entry {
                    role: Role::User,
                    text: "x".repeat(*len),
                    tool_name: String::new(),
                    tool_call_id: String::new(),
                    at_ms: *at_ms,
                },
            })
            .collect()
    }

    #[test]
    fn a_batch_is_whole_turns_of_one_day_within_the_byte_cap() {
        let day = |at: i64| at / 100;
        // Turn a has two entries; c starts the next "day".
        let entries = batch(&[("a", 10, 5), ("a", 11, 5), ("b", 20, 5), ("c", 150, 5)]);
        assert_eq!(
            cut_batch(&entries, 1000, day),
            Taken {
                entries: 3,
                turns: 2
            }
        );
        // The cap stops before b, never inside a.
        assert_eq!(
            cut_batch(&entries, 12, day),
            Taken {
                entries: 2,
                turns: 1
            }
        );
        // The first turn is taken even when it alone is over the cap.
        let big = batch(&[("a", 10, 50), ("b", 11, 1)]);
        assert_eq!(
            cut_batch(&big, 10, day),
            Taken {
                entries: 1,
                turns: 1
            }
        );
        assert_eq!(
            cut_batch(&[], 10, day),
            Taken {
                entries: 0,
                turns: 0
            }
        );
    }

    #[test]
    fn history_turns_default_to_the_config_and_are_capped() {
        assert_eq!(history_window(0, 7), 7);
        assert_eq!(history_window(3, 7), 3);
        assert_eq!(history_window(u32::MAX, 7), MAX_HISTORY_TURNS);
    }
}
