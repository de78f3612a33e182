//! Turns that a scheduled job started (`INBOUND_KIND_SCHEDULED`): the owner's
//! turn in the chat the job was made in, told that a job fired, not a person;
//! usage attributed to the job; and `NO_REPLY` for "nothing to report", which
//! stores the turn but sends nothing.
//!
//! Pure functions of the turn; it must never decide when a job fires (the
//! scheduler does).

use nexus_common::domain::scheduled;
use nexus_proto::v1::{InboundKind, OutboundMessage};

use crate::{agent::USAGE_TURN, turn::Turn};

/// The whole answer of a scheduled turn that has nothing to tell the user.
pub const NO_REPLY: &str = "NO_REPLY";

/// The job a turn is a fire of; `None` for anything else.
pub fn job_of(turn: &Turn) -> Option<&str> {
    (turn.msg.kind == InboundKind::Scheduled as i32).then(|| {
        turn.msg
            .metadata
            .get(scheduled::JOB_ID)
            .map_or("", String::as_str)
    })
}

/// `LlmUsage.purpose` of the turn's model calls: `job:<id>` for a fire, else `turn`.
pub fn usage_purpose(turn: &Turn) -> String {
    match job_of(turn) {
        Some(job) => format!("job:{job}"),
        None => USAGE_TURN.to_owned(),
    }
}

/// The turn's message as the model and the history see it: a fire is marked as
/// the job's, so later turns ("move it to 10") know which job "it" is.
pub fn user_text(turn: &Turn) -> String {
    match job_of(turn) {
        Some(job) => format!("[scheduled job {job}] {}", turn.msg.text),
        None => turn.msg.text.clone(),
    }
}

/// What the system prompt says about a fire; empty for other turns.
pub fn prompt_note(turn: &Turn) -> String {
    let Some(job) = job_of(turn) else {
        return String::new();
    };
    let meta = &turn.msg.metadata;
    let schedule = meta.get(scheduled::SCHEDULE).map_or("", String::as_str);
    let late = if meta.get(scheduled::LATE).is_some_and(|l| l == "true") {
        " late: it was due while the scheduler was down"
    } else {
        " on time"
    };
    format!(
        "\n## Scheduled job\nThe last message was not typed by the user just now. It is the instruction of \
         their scheduled job {job} ({schedule}), which fired{late}. Carry it out for them; your answer is \
         sent to this chat. If there is nothing worth telling them (for example, a check found nothing \
         new), answer exactly {NO_REPLY} and nothing else: then no message is sent. To change or cancel \
         the job, use the cron tool with job_id {job}.\n"
    )
}

/// A stored or fresh reply that must not be sent: a fire answered with `NO_REPLY`.
pub fn is_silent(turn: &Turn, reply: &OutboundMessage) -> bool {
    job_of(turn).is_some() && reply.text.trim().trim_matches(['`', '"', '.']) == NO_REPLY
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use nexus_bus::TraceContext;
    use nexus_proto::v1::{ChatRef, InboundMessage, Sender};

    use super::*;

    fn fire(kind: InboundKind) -> Turn {
        let msg = InboundMessage {
            id: "sched:job-1:1000".into(),
            channel: "telegram".into(),
            chat: Some(ChatRef {
                chat_id: "42".into(),
                ..Default::default()
            }),
            sender: Some(Sender {
                id: "ada".into(),
                user_id: "ada".into(),
                ..Default::default()
            }),
            text: "Remind the user to stretch".into(),
            kind: kind as i32,
            metadata: [
                (scheduled::JOB_ID.to_owned(), "job-1".to_owned()),
                (scheduled::SCHEDULE.to_owned(), "every 1 h".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        Turn::parse(msg, TraceContext::new_root()).unwrap()
    }

    #[test]
    fn a_fire_is_marked_as_its_job_in_text_prompt_and_usage() {
        let turn = fire(InboundKind::Scheduled);
        assert_eq!(job_of(&turn), Some("job-1"));
        assert_eq!(usage_purpose(&turn), "job:job-1");
        assert_eq!(
            user_text(&turn),
            "[scheduled job job-1] Remind the user to stretch"
        );
        let note = prompt_note(&turn);
        assert!(
            note.contains("job-1 (every 1 h)") && note.contains("exactly NO_REPLY"),
            "{note}"
        );
        let user = fire(InboundKind::User);
        assert_eq!(job_of(&user), None);
        assert_eq!(usage_purpose(&user), "turn");
        assert_eq!(user_text(&user), "Remind the user to stretch");
        assert!(prompt_note(&user).is_empty());
    }

    #[test]
    fn only_a_fire_answered_with_no_reply_stays_silent() {
        let reply = |text: &str| OutboundMessage {
            text: text.into(),
            ..Default::default()
        };
        let turn = fire(InboundKind::Scheduled);
        assert!(is_silent(&turn, &reply("NO_REPLY")));
        assert!(is_silent(&turn, &reply(" `NO_REPLY`\n")));
        assert!(!is_silent(&turn, &reply("NO_REPLY, but the build broke")));
        assert!(!is_silent(&fire(InboundKind::User), &reply("NO_REPLY")));
    }
}
