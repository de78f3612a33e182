//! Validated domain types. Protobuf messages are converted into these at the
//! edge of each service ("parse, don't validate"); a value that exists is valid.

use std::fmt;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {why}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn token(what: &'static str, value: &str, max: usize) -> Result<String, InvalidValue> {
    let bad = |why| InvalidValue {
        what,
        value: value.chars().take(80).collect(),
        why,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > max {
        return Err(bad("it is too long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad("only ASCII letters, digits, '-' and '_' are allowed"));
    }
    Ok(value.to_owned())
}

/// Prefix of every subject, stream, consumer and bucket. Safe as a NATS token and stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        token("namespace", s, 64).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel name (`cli`, `telegram`, …): one NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        token("channel", s, 32).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tool name: one subject token, as models and subjects both accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ToolName(String);

impl ToolName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        token("tool name", s, 64).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One conversation: a chat (and thread) on a channel. Turns of one session run in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    channel: ChannelName,
    chat_id: String,
    thread_id: String,
}

impl SessionKey {
    pub fn new(channel: ChannelName, chat_id: &str, thread_id: &str) -> Result<Self, InvalidValue> {
        let check = |what, v: &str, allow_empty: bool| {
            if v.is_empty() && !allow_empty {
                return Err(InvalidValue {
                    what,
                    value: String::new(),
                    why: "it is empty",
                });
            }
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(InvalidValue {
                    what,
                    value: v.chars().take(80).collect(),
                    why: "it is too long or holds control characters",
                });
            }
            Ok(())
        };
        check("chat id", chat_id, false)?;
        check("thread id", thread_id, true)?;
        Ok(Self {
            channel,
            chat_id: chat_id.to_owned(),
            thread_id: thread_id.to_owned(),
        })
    }
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
    pub fn chat_id(&self) -> &str {
        &self.chat_id
    }
    pub fn thread_id(&self) -> &str {
        &self.thread_id
    }
    /// Stable text form: `channel:chat` or `channel:chat:thread`.
    pub fn id(&self) -> String {
        if self.thread_id.is_empty() {
            format!("{}:{}", self.channel, self.chat_id)
        } else {
            format!("{}:{}:{}", self.channel, self.chat_id, self.thread_id)
        }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

/// Idempotency key of an inbound message: `<channel>:<upstream id>`.
pub fn inbound_id(channel: &ChannelName, upstream_id: &str) -> String {
    format!("{channel}:{upstream_id}")
}

/// Idempotency key of the reply to an inbound message. Derived, so a redone turn
/// publishes under the same id and JetStream drops the second copy.
pub fn reply_id(inbound_id: &str) -> String {
    format!("reply:{inbound_id}")
}

/// Idempotency key of a scheduled job's fire: `sched:<job id>:<due ms>`. The
/// same due time always gets the same id, so a fire published twice (a crash
/// between publishing and recording it) is stored once.
pub fn fire_id(job_id: &str, due_ms: i64) -> String {
    format!("sched:{job_id}:{due_ms}")
}

/// Metadata keys of an `INBOUND_KIND_SCHEDULED` message, set by the scheduler.
pub mod scheduled {
    /// The job that fired.
    pub const JOB_ID: &str = "job_id";
    /// The due time, milliseconds since the Unix epoch.
    pub const DUE_MS: &str = "due_ms";
    /// The schedule in words, e.g. `cron "0 9 * * 1" (Europe/Berlin)`.
    pub const SCHEDULE: &str = "schedule";
    /// `"true"` when the due time was missed and this fire comes late.
    pub const LATE: &str = "late";
}

/// User id for a sender that has no mapped identity yet: `<channel>_<sender>` made file-safe,
/// so it can name `USER_<id>.md`.
pub fn default_user_id(channel: &ChannelName, sender_id: &str) -> String {
    let safe: String = sender_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    format!("{channel}_{safe}")
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_what_would_break_a_subject() {
        for bad in ["", "a.b", "a b", "a*", "a>", "ü"] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ChannelName::parse("tele_gram-2").unwrap().as_str(),
            "tele_gram-2"
        );
    }

    #[test]
    fn session_ids_are_stable_and_thread_aware() {
        let cli = ChannelName::parse("cli").unwrap();
        assert_eq!(
            SessionKey::new(cli.clone(), "s1", "").unwrap().id(),
            "cli:s1"
        );
        assert_eq!(
            SessionKey::new(cli.clone(), "s1", "t").unwrap().id(),
            "cli:s1:t"
        );
        assert!(SessionKey::new(cli.clone(), "", "").is_err());
        assert!(SessionKey::new(cli, "a\nb", "").is_err());
    }

    #[test]
    fn user_ids_are_file_safe() {
        let wa = ChannelName::parse("whatsapp").unwrap();
        assert_eq!(
            default_user_id(&wa, "+49 151/../x"),
            "whatsapp__49_151____x"
        );
    }
}
