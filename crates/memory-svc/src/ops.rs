//! The memory operations, from request bytes to reply bytes: decode the
//! proto, turn it into validated domain values, ask the store and the files,
//! encode the answer. Errors become service error codes here and only here:
//! 400 for a request that can never succeed, 500 for our own failure.
//!
//! It must never panic on input and never touch NATS; the server loop owns the
//! subscriptions.

use bytes::Bytes;
use nexus_bus::{async_nats::service, memory_op, reply_bytes};
use nexus_common::{
    config::MemoryConfig,
    domain::{ChannelName, SessionKey, default_user_id},
    now_ms,
};
use nexus_proto::{
    Message,
    v1::{
        AnsweredRequest, AnsweredResponse, AppendTurnRequest, AppendTurnResponse, ContextRequest,
        ContextResponse, HistoryEntry, HistoryRequest, HistoryResponse, Identity as IdentityMsg,
        IdentityRequest, IdentityResponse, OutboundMessage, SessionCommandRequest,
        SessionCommandResponse, SessionRef, identity_request, session_command_request,
    },
};

use crate::{
    files::{Markdown, MarkdownFiles, is_file_safe},
    index::{self, MemoryIndex},
    store::{
        Entry, Identity, ModelOverride, NewTurn, PastEntry, Role, SessionStore, StoreError, TurnId,
    },
};

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

/// A memory operation, the last token of `N.memory.<op>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Context,
    Append,
    Answered,
    History,
    Session,
    Identity,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Context,
        Op::Append,
        Op::Answered,
        Op::History,
        Op::Session,
        Op::Identity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Context => memory_op::CONTEXT,
            Op::Append => memory_op::APPEND,
            Op::Answered => memory_op::ANSWERED,
            Op::History => memory_op::HISTORY,
            Op::Session => memory_op::SESSION,
            Op::Identity => memory_op::IDENTITY,
        }
    }
}

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
}

impl OpError {
    /// The NATS service error code.
    pub fn code(&self) -> u16 {
        match self {
            OpError::BadRequest(_) => 400,
            OpError::Store(_) | OpError::Files(_) => 500,
        }
    }
}

/// Everything the operations need; shared by all request tasks.
#[derive(Debug)]
pub struct Memory {
    store: SessionStore,
    files: MarkdownFiles,
    index: MemoryIndex,
    history_turns: u32,
    timezone: String,
    max_memory_bytes: usize,
}

impl Memory {
    pub fn new(
        store: SessionStore,
        files: MarkdownFiles,
        index: MemoryIndex,
        config: &MemoryConfig,
    ) -> Self {
        Self {
            store,
            files,
            index,
            history_turns: config.history_turns,
            timezone: config.timezone.clone(),
            max_memory_bytes: config.max_memory_bytes,
        }
    }

    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Runs one operation on a request payload and encodes the reply or the service error.
    pub async fn handle(&self, op: Op, payload: &[u8]) -> Result<Bytes, service::error::Error> {
        match op {
            Op::Context => reply(op, self.context(payload).await),
            Op::Append => reply(op, self.append(payload).await),
            Op::Answered => reply(op, self.answered(payload).await),
            Op::History => reply(op, self.history(payload).await),
            Op::Session => reply(op, self.session(payload).await),
            Op::Identity => reply(op, self.identity(payload).await),
        }
    }

    async fn context(&self, payload: &[u8]) -> Result<ContextResponse, OpError> {
        let req: ContextRequest = decode(payload)?;
        let session = session_key(req.session.as_ref())?;
        let turns = self.turns(req.history_turns);
        let user_id = if req.channel_sender_id.is_empty() {
            req.user_id
        } else {
            let sender = sender_id(&req.channel_sender_id)?;
            self.resolve(session.channel(), sender).await?
        };
        let markdown = async {
            match self.files.ensure_profile(&user_id).await {
                Ok(true) => tracing::info!(user_id, "first contact: profile created"),
                Ok(false) => {}
                // The default profile still serves; a context is never refused over it.
                Err(error) => tracing::warn!(%error, user_id, "profile not created"),
            }
            let markdown = self.files.read(&user_id, self.max_memory_bytes).await?;
            Ok::<_, OpError>(self.with_excerpts(markdown, &req.query).await)
        };
        let (markdown, history, model_override) = tokio::join!(
            markdown,
            self.store.history(&session, turns),
            self.store.model_override(&session),
        );
        let markdown = markdown?;
        Ok(ContextResponse {
            agents_md: markdown.agents_md,
            soul_md: markdown.soul_md,
            user_profile_md: markdown.user_profile_md,
            memory_md: markdown.memory_md,
            history: history?.into_iter().map(history_entry).collect(),
            session_id: session.id(),
            timezone: self.timezone.clone(),
            model_override: model_override?,
            user_id,
        })
    }

    /// The user id of a sender: the linked one, else `<channel>_<sender>`.
    async fn resolve(&self, channel: &ChannelName, sender_id: &str) -> Result<String, OpError> {
        Ok(
            match self.store.identity(channel.as_str(), sender_id).await? {
                Some(linked) => linked.user_id,
                None => default_user_id(channel, sender_id),
            },
        )
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
        let stored = self.store.append(&turn).await?;
        if !stored {
            tracing::info!(
                turn_id = turn.turn_id.as_str(),
                "turn already stored; append ignored"
            );
        }
        Ok(AppendTurnResponse { stored })
    }

    async fn answered(&self, payload: &[u8]) -> Result<AnsweredResponse, OpError> {
        let req: AnsweredRequest = decode(payload)?;
        let turn_id = TurnId::parse(&req.turn_id).map_err(bad)?;
        let Some(answered) = self.store.answered(&turn_id).await? else {
            return Ok(AnsweredResponse::default());
        };
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
fn history_window(requested: u32, default: u32) -> u32 {
    let turns = if requested == 0 { default } else { requested };
    turns.min(MAX_HISTORY_TURNS)
}

/// The one place where an operation's result becomes a reply or a service error.
fn reply<M: Message>(op: Op, result: Result<M, OpError>) -> Result<Bytes, service::error::Error> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_is_one_bounded_line() {
        assert_eq!(status_text("a\r\nb"), "a  b");
        let long = "é".repeat(400);
        let out = status_text(&long);
        assert!(out.len() <= MAX_STATUS_LEN + '…'.len_utf8());
        assert!(out.ends_with('…'));
    }

    #[test]
    fn history_turns_default_to_the_config_and_are_capped() {
        assert_eq!(history_window(0, 7), 7);
        assert_eq!(history_window(3, 7), 3);
        assert_eq!(history_window(u32::MAX, 7), MAX_HISTORY_TURNS);
    }
}
