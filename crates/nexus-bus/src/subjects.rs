//! Every subject, stream, consumer, bucket and service name of Nexus, built here
//! and nowhere else. Version 1 of the layout; a breaking change gets a new module.

use nexus_common::domain::{ChannelName, Namespace, ToolName};

/// Partitions of `N_INBOUND`. A session always maps to the same partition, and each
/// partition is consumed one message at a time (across all agent-core replicas), which
/// is what keeps a session's turns in order. Changing it re-maps sessions: drain first.
pub const INBOUND_PARTITIONS: u32 = 128;

/// Names for one namespace (`NEXUS_NAMESPACE`).
#[derive(Debug, Clone)]
pub struct Subjects {
    ns: Namespace,
}

/// Event kinds, the last token of `N.events.<kind>`.
pub mod event_kind {
    pub const TURN_STARTED: &str = "turn_started";
    pub const TURN_FINISHED: &str = "turn_finished";
    pub const TOOL_CALLED: &str = "tool_called";
    pub const LLM_USAGE: &str = "llm_usage";
    pub const APPROVAL: &str = "approval";
    pub const DEAD_LETTER: &str = "dead_letter";
    pub const SERVICE: &str = "service";
    pub const JOURNAL: &str = "journal";
    /// A user reached a budget or message rate (`LimitReached`).
    pub const LIMIT_REACHED: &str = "limit_reached";
    /// An unknown sender asked to pair, or an admin decided (`PairingNotice`).
    pub const PAIRING: &str = "pairing";
}

/// A memory-svc operation: the last token of `N.memory.<op>` and the request it carries.
/// The one list of them; memory-svc serves `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryOp {
    Context,
    Append,
    Answered,
    History,
    Session,
    Identity,
    Consolidate,
    Usage,
}

impl MemoryOp {
    pub const ALL: [Self; 8] = [
        Self::Context,
        Self::Append,
        Self::Answered,
        Self::History,
        Self::Session,
        Self::Identity,
        Self::Consolidate,
        Self::Usage,
    ];

    /// The subject token.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Context => "context",
            Self::Append => "append",
            Self::Answered => "answered",
            Self::History => "history",
            Self::Session => "session",
            Self::Identity => "identity",
            Self::Consolidate => "consolidate",
            Self::Usage => "usage",
        }
    }

    /// The fully qualified protobuf type of the op's request.
    pub const fn request_type(self) -> &'static str {
        match self {
            Self::Context => "nexus.v1.ContextRequest",
            Self::Append => "nexus.v1.AppendTurnRequest",
            Self::Answered => "nexus.v1.AnsweredRequest",
            Self::History => "nexus.v1.HistoryRequest",
            Self::Session => "nexus.v1.SessionCommandRequest",
            Self::Identity => "nexus.v1.IdentityRequest",
            Self::Consolidate => "nexus.v1.ConsolidateRequest",
            Self::Usage => "nexus.v1.UsageRequest",
        }
    }

    /// The op a subject token names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// scheduler operations, the last token of `N.scheduler.<op>`.
pub mod scheduler_op {
    pub const ADD: &str = "add";
    pub const LIST: &str = "list";
    pub const REMOVE: &str = "remove";
    pub const PAUSE: &str = "pause";
    pub const RESUME: &str = "resume";
}

/// Operator commands a gateway serves, the last token of `N.gateway.<channel>.<op>`.
pub mod gateway_op {
    /// Start pairing afresh (WhatsApp QR login); progress follows as `service` events.
    pub const LOGIN: &str = "login";
}

impl Subjects {
    pub fn new(ns: Namespace) -> Self {
        Self { ns }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// `N.inbound.<channel>`
    pub fn inbound(&self, channel: &ChannelName) -> String {
        format!("{}.inbound.{channel}", self.ns)
    }
    /// `N.inbound.>`
    pub fn inbound_all(&self) -> String {
        format!("{}.inbound.>", self.ns)
    }
    /// `N.inbound.<channel>.<partition>`: where `Bus::publish_inbound` stores messages.
    pub fn inbound_partition(&self, channel: &ChannelName, partition: u32) -> String {
        format!("{}.inbound.{channel}.{partition}", self.ns)
    }
    /// `N.inbound.*.<partition>`: the filter of one partition's consumer.
    pub fn inbound_partition_filter(&self, partition: u32) -> String {
        format!("{}.inbound.*.{partition}", self.ns)
    }
    /// `N.inbound.*`: messages published without a partition (by producers outside
    /// Nexus that follow the plain subject); agent-core routes them to their partition.
    pub fn inbound_unpartitioned(&self) -> String {
        format!("{}.inbound.*", self.ns)
    }
    /// `N.outbound.<channel>`
    pub fn outbound(&self, channel: &ChannelName) -> String {
        format!("{}.outbound.{channel}", self.ns)
    }
    /// `N.outbound.>`
    pub fn outbound_all(&self) -> String {
        format!("{}.outbound.>", self.ns)
    }
    /// `N.tool.<name>`
    pub fn tool(&self, name: &ToolName) -> String {
        format!("{}.tool.{name}", self.ns)
    }
    /// `N.tools.announce`: providers' `ToolAnnouncement`s.
    pub fn tools_announce(&self) -> String {
        format!("{}.tools.announce", self.ns)
    }
    /// `N.tools.discover`: asks every provider to announce at once.
    pub fn tools_discover(&self) -> String {
        format!("{}.tools.discover", self.ns)
    }
    /// `N.files.stage`: tool-runner copies a workspace file into the media store.
    pub fn files_stage(&self) -> String {
        format!("{}.files.stage", self.ns)
    }
    /// `N.memory.<op>`
    pub fn memory(&self, op: MemoryOp) -> String {
        format!("{}.memory.{}", self.ns, op.name())
    }
    /// `N.memory.*`: every memory op (for logs and monitors).
    pub fn memory_all(&self) -> String {
        format!("{}.memory.*", self.ns)
    }
    /// `N.scheduler.<op>`
    pub fn scheduler(&self, op: &str) -> String {
        format!("{}.scheduler.{op}", self.ns)
    }
    /// `N.gateway.<channel>.<op>`: an operator command to a gateway (request/reply,
    /// an endpoint of the gateway's service; `GatewayCommandRequest` → `GatewayCommandResponse`).
    pub fn gateway_command(&self, channel: &ChannelName, op: &str) -> String {
        format!("{}.gateway.{channel}.{op}", self.ns)
    }
    /// `N.events.<kind>`
    pub fn event(&self, kind: &str) -> String {
        format!("{}.events.{kind}", self.ns)
    }
    /// `N.events.>`
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.ns)
    }
    /// `N.progress.<channel>`: live `TurnProgress` (core NATS, not stored).
    pub fn progress(&self, channel: &ChannelName) -> String {
        format!("{}.progress.{channel}", self.ns)
    }
    /// `N.progress.>`: every channel's progress (the admin console's live view).
    pub fn progress_all(&self) -> String {
        format!("{}.progress.>", self.ns)
    }
    /// `N.tasks.run`: sub-agent tasks waiting for a replica (`N_TASKS`, a work queue).
    pub fn tasks(&self) -> String {
        format!("{}.tasks.run", self.ns)
    }
    /// `N.tasks.>`
    pub fn tasks_all(&self) -> String {
        format!("{}.tasks.>", self.ns)
    }
    /// `N.deadletter`
    pub fn deadletter(&self) -> String {
        format!("{}.deadletter", self.ns)
    }
    /// `N.<filter>`: a subject or wildcard below the namespace (`>` is everything), for `nexus tail`.
    pub fn below(&self, filter: &str) -> String {
        format!("{}.{}", self.ns, filter.trim_start_matches('.'))
    }

    pub fn inbound_stream(&self) -> String {
        format!("{}_INBOUND", self.ns)
    }
    pub fn outbound_stream(&self) -> String {
        format!("{}_OUTBOUND", self.ns)
    }
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.ns)
    }
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.ns)
    }
    /// Durable consumer of `N_TASKS`, shared by every agent-core replica.
    pub fn tasks_consumer(&self) -> String {
        format!("{}_agent-core-tasks", self.ns)
    }
    /// KV bucket of sub-agent tasks' state, by task id (for /tasks, /cancel and limits).
    pub fn tasks_bucket(&self) -> String {
        format!("{}_tasks", self.ns)
    }
    pub fn deadletter_stream(&self) -> String {
        format!("{}_DEADLETTER", self.ns)
    }
    /// Durable consumer of one inbound partition, shared by all agent-core replicas.
    pub fn agent_consumer(&self, partition: u32) -> String {
        format!("{}_agent-core-p{partition}", self.ns)
    }
    /// Durable consumer of memory-svc on `N_EVENTS` (`llm_usage`), feeding the usage ledger.
    pub fn usage_consumer(&self) -> String {
        format!("{}_memory-svc-usage", self.ns)
    }
    /// Durable consumer that routes unpartitioned inbound messages to their partition.
    pub fn router_consumer(&self) -> String {
        format!("{}_agent-core-router", self.ns)
    }
    /// Durable consumer of one gateway on `N_OUTBOUND`.
    pub fn gateway_consumer(&self, channel: &ChannelName) -> String {
        format!("{}_gateway-{channel}", self.ns)
    }
    /// A short-lived ordered consumer of `N_OUTBOUND` following one channel's replies
    /// (gateway-api), unique by `id`. Named, so that its filter travels in the API
    /// subject (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), which the
    /// deployment's NATS permissions scope to the channel.
    pub fn reply_feed_consumer(&self, channel: &ChannelName, id: &str) -> String {
        format!("{}_gateway-{channel}-feed-{id}", self.ns)
    }
    /// KV bucket of outbound ids a gateway has delivered upstream (delivery dedupe).
    pub fn delivered_bucket(&self, channel: &ChannelName) -> String {
        format!("{}_delivered_{channel}", self.ns)
    }
    /// KV bucket of senders a gateway has already told they are not allowed.
    pub fn denied_bucket(&self, channel: &ChannelName) -> String {
        format!("{}_denied_{channel}", self.ns)
    }
    /// KV bucket of pairing codes (`code.<CODE>`) and each sender's live code
    /// (`sender.<channel>.<sender>`), for `dm_policy = "pairing"`.
    pub fn pairing_bucket(&self) -> String {
        format!("{}_pairing", self.ns)
    }
    /// KV bucket of senders an admin approved (`allowed.<channel>.<sender>`) or
    /// rejected (`rejected.<channel>.<sender>`): allowed beside `allow_from`, kept for good.
    pub fn paired_bucket(&self) -> String {
        format!("{}_paired", self.ns)
    }
    /// KV bucket of message-rate logs (`rate.user.<user>`, `rate.channel.<channel>`)
    /// and of the budget notices sent (`notice.<limit>.<window>.<user>`).
    pub fn limits_bucket(&self) -> String {
        format!("{}_limits", self.ns)
    }
    /// KV bucket of the limits admins set per user (`UserLimits`, by user id), kept for good.
    pub fn user_limits_bucket(&self) -> String {
        format!("{}_user_limits", self.ns)
    }
    /// KV bucket of deployment-wide choices admins make from a chat (`model`: the
    /// model for everyone, set with `/model all <name>`), kept for good.
    pub fn settings_bucket(&self) -> String {
        format!("{}_settings", self.ns)
    }
    /// KV bucket of calls waiting for a person's yes, one per session (`PendingApproval`).
    pub fn approvals_bucket(&self) -> String {
        format!("{}_approvals", self.ns)
    }
    /// Object store bucket for media.
    pub fn media_bucket(&self) -> String {
        format!("{}_media", self.ns)
    }
    /// Whether JetStream stream `name` belongs to this namespace: its own streams
    /// (`N_INBOUND`, …) and those behind its KV buckets (`KV_N_…`) and object stores
    /// (`OBJ_N_…`). What deleting a namespace deletes.
    pub fn owns_stream(&self, name: &str) -> bool {
        stream_namespace_part(name).starts_with(&format!("{}_", self.ns))
    }
    /// Queue group of a service's request endpoints.
    pub fn queue_group(&self, service: &str) -> String {
        format!("{}_{service}", self.ns)
    }

    /// The partition of a session (`channel`, `chat_id`, `thread_id`): FNV-1a, stable across releases.
    pub fn partition_of(channel: &str, chat_id: &str, thread_id: &str) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in channel
            .bytes()
            .chain([0x1f])
            .chain(chat_id.bytes())
            .chain([0x1f])
            .chain(thread_id.bytes())
        {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % INBOUND_PARTITIONS
    }

    /// The fully qualified protobuf type carried on a subject of this namespace
    /// (requests, for request/reply subjects), for tools that decode traffic.
    pub fn payload_type(&self, subject: &str) -> Option<&'static str> {
        let rest = subject.strip_prefix(self.ns.as_str())?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        Some(match (parts.next()?, parts.next()) {
            ("inbound", Some(_)) => "nexus.v1.InboundMessage",
            ("outbound", Some(_)) => "nexus.v1.OutboundMessage",
            ("tool", Some(_)) => "nexus.v1.ToolCall",
            ("events", Some(_)) => "nexus.v1.Event",
            ("progress", Some(_)) => "nexus.v1.TurnProgress",
            ("deadletter", None) => "nexus.v1.DeadLetter",
            ("memory", Some(op)) => MemoryOp::from_name(op)?.request_type(),
            ("scheduler", Some(scheduler_op::ADD)) => "nexus.v1.AddJobRequest",
            ("scheduler", Some(scheduler_op::LIST)) => "nexus.v1.ListJobsRequest",
            (
                "scheduler",
                Some(scheduler_op::REMOVE | scheduler_op::PAUSE | scheduler_op::RESUME),
            ) => "nexus.v1.JobActionRequest",
            ("gateway", Some(_)) if parts.next().is_some() => "nexus.v1.GatewayCommandRequest",
            _ => return None,
        })
    }
}

/// A stream name without the prefix JetStream gives the streams behind KV buckets and
/// object stores: it starts with the namespace and `_` when the namespace owns it.
pub fn stream_namespace_part(name: &str) -> &str {
    name.strip_prefix("KV_")
        .or_else(|| name.strip_prefix("OBJ_"))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_owns_its_streams_buckets_and_object_stores_only() {
        let s = Subjects::new(Namespace::parse("t1").unwrap());
        for own in [
            s.inbound_stream(),
            format!("KV_{}", s.pairing_bucket()),
            format!("OBJ_{}", s.media_bucket()),
        ] {
            assert!(s.owns_stream(&own), "{own}");
        }
        for other in [
            "t10_INBOUND",
            "KV_t10_pairing",
            "nexus_testkit_anchor",
            "t1",
        ] {
            assert!(!s.owns_stream(other), "{other}");
        }
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(
            Subjects::partition_of("cli", "s1", ""),
            Subjects::partition_of("cli", "s1", "")
        );
        let used: std::collections::BTreeSet<u32> = (0..2000)
            .map(|i| Subjects::partition_of("telegram", &i.to_string(), ""))
            .collect();
        assert_eq!(
            used.len() as u32,
            INBOUND_PARTITIONS,
            "2000 sessions should touch every partition"
        );
        assert!(used.iter().all(|p| *p < INBOUND_PARTITIONS));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            Subjects::partition_of("x", "ab", "c"),
            Subjects::partition_of("x", "a", "bc")
        );
    }

    #[test]
    fn names_follow_the_design() {
        let s = Subjects::new(Namespace::parse("t1").unwrap());
        let cli = ChannelName::parse("cli").unwrap();
        assert_eq!(s.inbound(&cli), "t1.inbound.cli");
        assert_eq!(s.inbound_partition(&cli, 7), "t1.inbound.cli.7");
        assert_eq!(s.inbound_partition_filter(7), "t1.inbound.*.7");
        assert_eq!(s.agent_consumer(7), "t1_agent-core-p7");
        assert_eq!(s.reply_feed_consumer(&cli, "x1"), "t1_gateway-cli-feed-x1");
        assert_eq!(
            s.payload_type("t1.inbound.cli.7"),
            Some("nexus.v1.InboundMessage")
        );
        assert_eq!(s.outbound(&cli), "t1.outbound.cli");
        assert_eq!(
            s.tool(&ToolName::parse("read_file").unwrap()),
            "t1.tool.read_file"
        );
        assert_eq!(s.memory(MemoryOp::Context), "t1.memory.context");
        assert_eq!(s.scheduler(scheduler_op::LIST), "t1.scheduler.list");
        assert_eq!(
            s.payload_type("t1.scheduler.pause"),
            Some("nexus.v1.JobActionRequest")
        );
        assert_eq!(s.event(event_kind::DEAD_LETTER), "t1.events.dead_letter");
        assert_eq!(s.deadletter(), "t1.deadletter");
        assert_eq!(s.tasks(), "t1.tasks.run");
        assert_eq!(s.progress_all(), "t1.progress.>");
        assert_eq!(s.tasks_stream(), "t1_TASKS");
        assert_eq!(s.tasks_bucket(), "t1_tasks");
        assert_eq!(s.limits_bucket(), "t1_limits");
        assert_eq!(s.user_limits_bucket(), "t1_user_limits");
        assert_eq!(
            s.event(event_kind::LIMIT_REACHED),
            "t1.events.limit_reached"
        );
        assert_eq!(s.pairing_bucket(), "t1_pairing");
        assert_eq!(s.paired_bucket(), "t1_paired");
        assert_eq!(s.event(event_kind::PAIRING), "t1.events.pairing");
        assert_eq!(s.inbound_stream(), "t1_INBOUND");
        assert_eq!(
            s.payload_type("t1.inbound.cli"),
            Some("nexus.v1.InboundMessage")
        );
        assert_eq!(
            s.payload_type("t1.events.llm_usage"),
            Some("nexus.v1.Event")
        );
        assert_eq!(s.payload_type("t1.deadletter"), Some("nexus.v1.DeadLetter"));
        assert_eq!(
            s.payload_type("t1.memory.context"),
            Some("nexus.v1.ContextRequest")
        );
        assert_eq!(s.payload_type("t2.inbound.cli"), None);
        let whatsapp = ChannelName::parse("whatsapp").unwrap();
        assert_eq!(
            s.gateway_command(&whatsapp, gateway_op::LOGIN),
            "t1.gateway.whatsapp.login"
        );
        assert_eq!(
            s.payload_type("t1.gateway.whatsapp.login"),
            Some("nexus.v1.GatewayCommandRequest")
        );
        assert_eq!(s.payload_type("t1.gateway.whatsapp"), None);
    }

    #[test]
    fn every_memory_op_has_its_subject_and_request_type() {
        let s = Subjects::new(Namespace::parse("t1").unwrap());
        for op in MemoryOp::ALL {
            let subject = s.memory(op);
            assert_eq!(subject, format!("t1.memory.{}", op.name()));
            assert_eq!(MemoryOp::from_name(op.name()), Some(op));
            assert_eq!(s.payload_type(&subject), Some(op.request_type()));
        }
        assert_eq!(MemoryOp::from_name("contexts"), None);
        assert_eq!(s.payload_type("t1.memory.contexts"), None);
    }
}
