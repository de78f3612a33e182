//! Pairing: on a channel with `dm_policy = "pairing"` a stranger gets a one-time
//! code instead of silence; an admin approves it (`nexus pair approve <code>`, or
//! `/pair approve <code>` in a chat) and the sender joins the channel's allowed senders.
//!
//! The state lives in NATS KV so that every gateway replica, the CLI and agent-core
//! see the same:
//! - `N_pairing` (entries live 7 days at most): `code.<CODE>` is a [`PairingCode`]
//!   (JSON), `sender.<channel>.<sender>` the sender's live code, `full.<channel>.<sender>`
//!   marks that the admins were told a sender got no code because too many wait.
//! - `N_paired` (kept for good): `allowed.<channel>.<sender>` an [`Approval`],
//!   `rejected.<channel>.<sender>` a rejection.
//!
//! A code is single-use: deciding it is a compare-and-set on its record. Expiry is a
//! timestamp in the record, judged against the `now_ms` the caller passes (tests pass
//! their own clock). This module never talks to a platform: gateways send the text.

use std::time::Duration;

use async_nats::jetstream::kv;
use nexus_bus::{Bus, BusError, MemoryOp, TraceContext, kv_key};
use nexus_common::domain::ChannelName;
use nexus_proto::v1::{
    ChatRef, IdentityRequest, IdentityResponse, LinkIdentity, OutboundKind, OutboundMessage,
    PairingNotice, ResolveIdentity, event, identity_request,
};
use serde::{Deserialize, Serialize};

/// The characters of a code: no 0/O, 1/I/L, so it survives being read aloud or retyped.
pub const CODE_ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a code (31^8 ≈ 8.5e11 codes).
pub const CODE_LEN: usize = 8;
/// How long code records are kept at all (a code's own expiry is at most a day).
const CODES_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const MEMORY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeState {
    Pending,
    Approved,
    Rejected,
}

/// A pairing code and whom it was given to (the value of `code.<CODE>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    pub code: String,
    pub channel: String,
    /// The sender id as `InboundMessage.sender.id` carries it.
    pub sender_id: String,
    pub display_name: String,
    /// The direct chat the code was sent to: where "you're in" goes.
    pub chat_id: String,
    pub thread_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub state: CodeState,
    /// Approved: the user the sender is linked to.
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub decided_by: String,
    #[serde(default)]
    pub decided_at_ms: i64,
}

impl PairingCode {
    /// Waiting for an admin and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.state == CodeState::Pending && now_ms < self.expires_at_ms
    }
}

/// A sender an admin let in (the value of `allowed.<channel>.<sender>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The user their messages are stamped with.
    pub user_id: String,
    pub code: String,
    pub by: String,
    pub at_ms: i64,
}

/// The sender asking, as the gateway sees them.
#[derive(Debug, Clone, Copy)]
pub struct Stranger<'a> {
    pub sender_id: &'a str,
    pub display_name: &'a str,
    /// Their direct chat with the bot.
    pub chat_id: &'a str,
    pub thread_id: &'a str,
}

/// What a stranger's message led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A new code: tell them.
    Issued(Box<PairingCode>),
    /// They already hold a live code: stay quiet.
    Waiting,
    /// An admin rejected them: stay quiet.
    Rejected,
    /// Too many codes wait on this channel: no code (the admins were told).
    Full,
}

/// Why a code could not be decided. The messages are for admins as they are.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("\"{0}\" is not a pairing code: a code is {CODE_LEN} characters of {CODE_ALPHABET}")]
    Malformed(String),
    #[error("there is no pairing code {0} (codes are kept 7 days at most)")]
    Unknown(String),
    #[error("pairing code {0} has expired; the sender gets a new one when they write again")]
    Expired(String),
    #[error("pairing code {code} was already {state} and cannot be used again")]
    Used { code: String, state: &'static str },
    #[error("{0}")]
    BadUser(String),
    #[error("memory-svc, which links the sender to a user, is not answering: {0}")]
    Memory(String),
    #[error("pairing state in NATS: {0}")]
    Store(String),
}

impl From<BusError> for PairingError {
    fn from(e: BusError) -> Self {
        Self::Store(e.to_string())
    }
}

fn store_err(e: impl std::fmt::Display) -> PairingError {
    PairingError::Store(e.to_string())
}

/// Reads a code as people type it: case, spaces and dashes do not matter.
pub fn normalize_code(input: &str) -> Result<String, PairingError> {
    let code: String = input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if code.chars().count() != CODE_LEN || !code.chars().all(|c| CODE_ALPHABET.contains(c)) {
        return Err(PairingError::Malformed(input.trim().to_owned()));
    }
    Ok(code)
}

/// A fresh random code (from the OS generator behind UUID v4).
fn new_code() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let alphabet = CODE_ALPHABET.as_bytes();
    // Bytes 6 and 8 carry UUID version bits; the others are random. Rejection
    // sampling keeps the characters uniform over a 31-letter alphabet.
    let mut out = String::with_capacity(CODE_LEN);
    let mut pool = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 6 && *i != 8)
        .map(|(_, b)| *b & 0x1f)
        .filter(|b| usize::from(*b) < alphabet.len());
    while out.len() < CODE_LEN {
        match pool.next() {
            Some(b) => out.push(char::from(alphabet[usize::from(b)])),
            None => return new_code(),
        }
    }
    out
}

/// "1 hour", "10 minutes", "90 seconds": how long a code is valid, in words.
pub fn for_how_long(secs: u64) -> String {
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 120 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The pairing state of the namespace.
#[derive(Clone)]
pub struct Pairing {
    bus: Bus,
    codes: kv::Store,
    paired: kv::Store,
}

impl Pairing {
    /// Opens (or creates) the two buckets.
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let s = bus.subjects();
        let codes = bus
            .ensure_kv_bucket(
                &s.pairing_bucket(),
                1,
                Some(CODES_MAX_AGE),
                "pairing codes waiting for an admin, and each sender's live code",
            )
            .await?;
        let paired = bus
            .ensure_kv_bucket(
                &s.paired_bucket(),
                1,
                None,
                "senders an admin approved or rejected, per channel",
            )
            .await?;
        Ok(Self {
            bus: bus.clone(),
            codes,
            paired,
        })
    }

    /// The approval of a sender on a channel, if an admin gave one.
    pub async fn approval(
        &self,
        channel: &ChannelName,
        sender_id: &str,
    ) -> Result<Option<Approval>, PairingError> {
        let Some(bytes) = self
            .paired
            .get(sender_key("allowed", channel.as_str(), sender_id))
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(store_err)
    }

    /// A stranger wrote: a new code unless they hold one, were rejected, or too many wait.
    pub async fn request(
        &self,
        channel: &ChannelName,
        who: Stranger<'_>,
        ttl_secs: u64,
        max_pending: u64,
        now_ms: i64,
    ) -> Result<Requested, PairingError> {
        let ch = channel.as_str();
        if self
            .paired
            .get(sender_key("rejected", ch, who.sender_id))
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Ok(Requested::Rejected);
        }
        let pointer = sender_key("sender", ch, who.sender_id);
        let held = self.codes.entry(pointer.clone()).await.map_err(store_err)?;
        let held_revision = match held {
            Some(e) if e.operation == kv::Operation::Put => {
                let code = String::from_utf8_lossy(&e.value).into_owned();
                if self
                    .code(&code)
                    .await?
                    .is_some_and(|(c, _)| c.is_live(now_ms))
                {
                    return Ok(Requested::Waiting);
                }
                Some(e.revision)
            }
            _ => None,
        };
        if self.live_codes_of(ch, &pointer, now_ms).await? >= max_pending {
            let marker = sender_key("full", ch, who.sender_id);
            // Once per sender (per week), not per message.
            if self.codes.create(&marker, "1".into()).await.is_ok() {
                tracing::warn!(
                    channel = ch,
                    sender = who.sender_id,
                    max_pending,
                    "pairing: too many codes wait for an admin; this sender gets none"
                );
                self.notice(ch, &who, "full", "", "", 0, "").await;
            }
            return Ok(Requested::Full);
        }

        let mut record = PairingCode {
            code: String::new(),
            channel: ch.to_owned(),
            sender_id: who.sender_id.to_owned(),
            display_name: who.display_name.to_owned(),
            chat_id: who.chat_id.to_owned(),
            thread_id: who.thread_id.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms
                .saturating_add(i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)),
            state: CodeState::Pending,
            user_id: String::new(),
            decided_by: String::new(),
            decided_at_ms: 0,
        };
        let mut attempts = 0;
        loop {
            record.code = new_code();
            match self
                .codes
                .create(code_key(&record.code), json(&record)?)
                .await
            {
                Ok(_) => break,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) => return Err(store_err(e)),
            }
        }
        // The pointer decides between replicas taking the same sender's messages at once.
        let claimed = match held_revision {
            Some(rev) => self
                .codes
                .update(&pointer, record.code.clone().into(), rev)
                .await
                .is_ok(),
            None => self
                .codes
                .create(&pointer, record.code.clone().into())
                .await
                .is_ok(),
        };
        if !claimed {
            let _ = self.codes.purge(code_key(&record.code)).await;
            return Ok(Requested::Waiting);
        }
        tracing::info!(channel = ch, sender = who.sender_id, "pairing code issued");
        self.notice(
            ch,
            &who,
            "requested",
            &record.code,
            "",
            record.expires_at_ms,
            "",
        )
        .await;
        Ok(Requested::Issued(Box::new(record)))
    }

    /// Codes waiting for an admin at `now_ms`, oldest first.
    pub async fn pending(&self, now_ms: i64) -> Result<Vec<PairingCode>, PairingError> {
        let mut out = Vec::new();
        for key in self.keys("code.").await? {
            if let Some((c, _)) = self.code(key.trim_start_matches("code.")).await?
                && c.is_live(now_ms)
            {
                out.push(c);
            }
        }
        out.sort_by_key(|c| c.created_at_ms);
        Ok(out)
    }

    /// Approves a code: the sender is allowed on its channel from now on, as `user_id`
    /// (linked in memory-svc) or, without it, as the user they already are.
    pub async fn approve(
        &self,
        code: &str,
        user_id: Option<&str>,
        by: &str,
        now_ms: i64,
    ) -> Result<PairingCode, PairingError> {
        let (mut record, revision) = self.decidable(code, Some(now_ms)).await?;
        let user_id = self.link(&record, user_id).await?;
        record.state = CodeState::Approved;
        record.user_id.clone_from(&user_id);
        record.decided_by = by.to_owned();
        record.decided_at_ms = now_ms;
        self.decide(&record, revision).await?;
        let approval = Approval {
            user_id,
            code: record.code.clone(),
            by: by.to_owned(),
            at_ms: now_ms,
        };
        self.paired
            .put(
                sender_key("allowed", &record.channel, &record.sender_id),
                json(&approval)?,
            )
            .await
            .map_err(store_err)?;
        self.release(&record).await;
        tracing::info!(channel = %record.channel, sender = %record.sender_id, user = %record.user_id, by, "pairing approved");
        self.decided_notice(&record, "approved").await;
        self.welcome(&record).await;
        Ok(record)
    }

    /// Rejects a code (also an expired one): the sender gets nothing further.
    pub async fn reject(
        &self,
        code: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<PairingCode, PairingError> {
        // No clock: an expired code can still be rejected.
        let (mut record, revision) = self.decidable(code, None).await?;
        record.state = CodeState::Rejected;
        record.decided_by = by.to_owned();
        record.decided_at_ms = now_ms;
        self.decide(&record, revision).await?;
        self.paired
            .put(
                sender_key("rejected", &record.channel, &record.sender_id),
                now_ms.to_string().into(),
            )
            .await
            .map_err(store_err)?;
        self.release(&record).await;
        tracing::info!(channel = %record.channel, sender = %record.sender_id, by, "pairing rejected");
        self.decided_notice(&record, "rejected").await;
        Ok(record)
    }

    /// A code's record and revision, if it may still be decided (at `now_ms`, when
    /// expiry matters).
    async fn decidable(
        &self,
        input: &str,
        now_ms: Option<i64>,
    ) -> Result<(PairingCode, u64), PairingError> {
        let code = normalize_code(input)?;
        let Some((record, revision)) = self.code(&code).await? else {
            return Err(PairingError::Unknown(code));
        };
        match record.state {
            CodeState::Pending if now_ms.is_some_and(|now| now >= record.expires_at_ms) => {
                Err(PairingError::Expired(code))
            }
            CodeState::Pending => Ok((record, revision)),
            CodeState::Approved => Err(PairingError::Used {
                code,
                state: "approved",
            }),
            CodeState::Rejected => Err(PairingError::Used {
                code,
                state: "rejected",
            }),
        }
    }

    /// Stores a decision only if nobody decided the code since it was read.
    async fn decide(&self, record: &PairingCode, revision: u64) -> Result<(), PairingError> {
        match self
            .codes
            .update(code_key(&record.code), json(record)?, revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(PairingError::Used {
                    code: record.code.clone(),
                    state: "decided by someone else just now",
                })
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Drops the sender's pointer when it still names this code.
    async fn release(&self, record: &PairingCode) {
        let pointer = sender_key("sender", &record.channel, &record.sender_id);
        if let Ok(Some(e)) = self.codes.entry(pointer.clone()).await
            && e.operation == kv::Operation::Put
            && e.value == record.code.as_bytes()
        {
            let _ = self
                .codes
                .delete_expect_revision(&pointer, Some(e.revision))
                .await;
        }
    }

    /// The user the approved sender becomes: `user_id` linked in memory-svc, or the
    /// one memory-svc already knows them as (a link made earlier, else the default id).
    async fn link(
        &self,
        record: &PairingCode,
        user_id: Option<&str>,
    ) -> Result<String, PairingError> {
        let op = match user_id {
            Some(u) => identity_request::Op::Link(LinkIdentity {
                channel: record.channel.clone(),
                sender_id: record.sender_id.clone(),
                user_id: u.trim().to_owned(),
            }),
            None => identity_request::Op::Resolve(ResolveIdentity {
                channel: record.channel.clone(),
                sender_id: record.sender_id.clone(),
            }),
        };
        let reply: Result<IdentityResponse, BusError> = self
            .bus
            .request(
                self.bus.subjects().memory(MemoryOp::Identity),
                &IdentityRequest { op: Some(op) },
                &TraceContext::new_root(),
                Some(MEMORY_TIMEOUT),
            )
            .await;
        match reply {
            Ok(r) if !r.user_id.is_empty() => Ok(r.user_id),
            Ok(_) => Err(PairingError::Memory("it named no user".into())),
            Err(BusError::Remote {
                code: 400, message, ..
            }) => Err(PairingError::BadUser(message)),
            Err(e) => Err(PairingError::Memory(e.to_string())),
        }
    }

    /// The record of a code and its revision.
    async fn code(&self, code: &str) -> Result<Option<(PairingCode, u64)>, PairingError> {
        match self.codes.entry(code_key(code)).await.map_err(store_err)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&e.value).map_err(store_err)?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Live codes of a channel other than `except`'s; pointers of expired ones go.
    async fn live_codes_of(
        &self,
        channel: &str,
        except: &str,
        now_ms: i64,
    ) -> Result<u64, PairingError> {
        let mut live = 0;
        for key in self.keys(&format!("sender.{channel}.")).await? {
            if key == except {
                continue;
            }
            let Some(entry) = self.codes.entry(key.clone()).await.map_err(store_err)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let code = String::from_utf8_lossy(&entry.value).into_owned();
            match self.code(&code).await? {
                Some((c, _)) if c.is_live(now_ms) => live += 1,
                // Only this revision: the sender may have just been given a new code.
                _ => {
                    let _ = self
                        .codes
                        .delete_expect_revision(&key, Some(entry.revision))
                        .await;
                }
            }
        }
        Ok(live)
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, PairingError> {
        use futures::TryStreamExt as _;
        let keys: Vec<String> = self
            .codes
            .keys()
            .await
            .map_err(store_err)?
            .try_collect()
            .await
            .map_err(store_err)?;
        Ok(keys.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }

    #[allow(clippy::too_many_arguments)]
    async fn notice(
        &self,
        channel: &str,
        who: &Stranger<'_>,
        status: &str,
        code: &str,
        user_id: &str,
        expires_at_ms: i64,
        by: &str,
    ) {
        self.bus
            .emit(event::Kind::Pairing(PairingNotice {
                channel: channel.to_owned(),
                sender_id: who.sender_id.to_owned(),
                display_name: who.display_name.to_owned(),
                status: status.to_owned(),
                code: code.to_owned(),
                user_id: user_id.to_owned(),
                expires_at_ms,
                by: by.to_owned(),
            }))
            .await;
    }

    async fn decided_notice(&self, record: &PairingCode, status: &str) {
        let who = Stranger {
            sender_id: &record.sender_id,
            display_name: &record.display_name,
            chat_id: &record.chat_id,
            thread_id: &record.thread_id,
        };
        self.notice(
            &record.channel,
            &who,
            status,
            &record.code,
            &record.user_id,
            record.expires_at_ms,
            &record.decided_by,
        )
        .await;
    }

    /// Tells the sender they are in, through the channel's outbound stream like any reply.
    async fn welcome(&self, record: &PairingCode) {
        let msg = OutboundMessage {
            id: format!("paired:{}:{}", record.channel, record.code),
            channel: record.channel.clone(),
            chat: Some(ChatRef {
                chat_id: record.chat_id.clone(),
                thread_id: record.thread_id.clone(),
                is_group: false,
            }),
            recipient_id: record.sender_id.clone(),
            text: "You're in: an admin approved your pairing code. Write to me any time."
                .to_owned(),
            kind: OutboundKind::Notice as i32,
            created_at_ms: record.decided_at_ms,
            ..Default::default()
        };
        if let Err(error) = self
            .bus
            .publish_outbound(&msg, &TraceContext::new_root())
            .await
        {
            tracing::warn!(%error, "pairing: the sender was not told they are in");
        }
    }
}

fn code_key(code: &str) -> String {
    format!("code.{code}")
}

fn sender_key(kind: &str, channel: &str, sender_id: &str) -> String {
    format!("{kind}.{channel}.{}", kv_key(sender_id))
}

fn json<T: Serialize>(value: &T) -> Result<bytes::Bytes, PairingError> {
    serde_json::to_vec(value).map(Into::into).map_err(store_err)
}

/// What a stranger is told with their code.
pub fn code_notice(code: &str, ttl_secs: u64) -> String {
    format!(
        "Hi! I only talk with people an admin has let in. Your pairing code is {code} \
         (valid for {}). Give it to an admin: they approve it with: nexus pair approve {code} \
         (or /pair approve {code} in their chat with me). Until then your messages are not passed on.",
        for_how_long(ttl_secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_unambiguous_alphabet_and_read_back_as_typed() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), CODE_LEN);
            assert!(c.chars().all(|ch| CODE_ALPHABET.contains(ch)), "{c}");
            assert_eq!(normalize_code(&c).unwrap(), c);
        }
        assert_eq!(normalize_code(" abcd-efgh ").unwrap(), "ABCDEFGH");
        assert!(matches!(
            normalize_code("ABCDEFG0"),
            Err(PairingError::Malformed(_))
        ));
        assert!(matches!(
            normalize_code("ABC"),
            Err(PairingError::Malformed(_))
        ));
        assert!(matches!(
            normalize_code("ABCDEFGHJ"),
            Err(PairingError::Malformed(_))
        ));
    }

    #[test]
    fn validity_is_said_in_words() {
        assert_eq!(for_how_long(3600), "1 hour");
        assert_eq!(for_how_long(7200), "2 hours");
        assert_eq!(for_how_long(600), "10 minutes");
        assert_eq!(for_how_long(90), "90 seconds");
        assert_eq!(for_how_long(3661), "61 minutes");
        assert_eq!(for_how_long(1), "1 second");
    }
}
