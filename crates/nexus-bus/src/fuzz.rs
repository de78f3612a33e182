//! Property tests of [`decode`] for every message of `nexus-proto`, and of the
//! `traceparent` header: random bytes give `Ok` or a `BusError::Decode` naming the
//! type, never a panic; a valid encoding with random field values always decodes and
//! survives a second round trip. `PROPTEST_CASES` sets the count.

use std::{collections::HashMap, fmt::Debug, sync::OnceLock};

use nexus_proto::v1;
use nexus_testkit::fuzz::config;
use proptest::{prelude::*, test_runner::TestCaseError};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};

use crate::{BusError, TraceContext, decode};

type Check = fn(&[u8], bool) -> Result<(), TestCaseError>;

/// Decodes `bytes` as `T`. `valid`: the bytes are an encoding of `T`, so they must decode.
fn check<T: Message + Default + PartialEq + Debug>(
    bytes: &[u8],
    valid: bool,
) -> Result<(), TestCaseError> {
    match decode::<T>(bytes) {
        Ok(m) => {
            let again = decode::<T>(&m.encode_to_vec());
            prop_assert!(again.is_ok(), "re-encoded {m:?} does not decode: {again:?}");
            if valid {
                // Valid encodings carry finite floats only, so equality holds.
                prop_assert_eq!(again.ok(), Some(m));
            }
        }
        Err(e) => {
            prop_assert!(!valid, "a valid encoding was refused: {e}");
            let BusError::Decode { what, .. } = &e else {
                return Err(TestCaseError::fail(format!("not a decode error: {e}")));
            };
            prop_assert_eq!(*what, std::any::type_name::<T>());
        }
    }
    Ok(())
}

macro_rules! messages {
    ($($t:ident),* $(,)?) => {
        /// Every message type, by its full protobuf name.
        const MESSAGES: &[(&str, Check)] = &[$((concat!("nexus.v1.", stringify!($t)), check::<v1::$t>)),*];
    };
}

messages![
    TurnStarted,
    TurnFinished,
    ToolCalled,
    LlmUsage,
    JournalWritten,
    Approval,
    DeadLetterNotice,
    PairingNotice,
    LimitReached,
    ServiceNotice,
    Event,
    DeadLetter,
    TurnProgress,
    Sender,
    MediaRef,
    ChatRef,
    InboundMessage,
    OutboundMessage,
    SendRequest,
    SendResponse,
    SendAccepted,
    SendEvent,
    GatewayCommandRequest,
    GatewayCommandResponse,
    UserLimits,
    SessionRef,
    HistoryEntry,
    ContextRequest,
    ContextResponse,
    AppendTurnRequest,
    AppendTurnResponse,
    AnsweredRequest,
    AnsweredResponse,
    HistoryRequest,
    HistoryResponse,
    MemoryError,
    SessionCommandRequest,
    SessionCommandResponse,
    Identity,
    ResolveIdentity,
    LinkIdentity,
    ListIdentities,
    IdentityRequest,
    IdentityResponse,
    ConsolidateRequest,
    DueSessions,
    ClaimBatch,
    CommitBatch,
    Fact,
    ReleaseBatch,
    ConsolidationBatch,
    ConsolidateResponse,
    UsageRequest,
    UsageRow,
    UsageResponse,
    JobOrigin,
    Job,
    AddJobRequest,
    AddJobResponse,
    ListJobsRequest,
    ListJobsResponse,
    JobActionRequest,
    JobActionResponse,
    ToolSpec,
    ToolAnnouncement,
    ToolContext,
    PendingApproval,
    ToolCall,
    ToolError,
    ToolResult,
    StageFileRequest,
    StageFileResponse,
];

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(nexus_proto::FILE_DESCRIPTOR_SET).unwrap())
}

/// Random values, handed out in turn to the fields of a message being built.
#[derive(Debug, Clone)]
struct Values {
    ints: Vec<i64>,
    texts: Vec<String>,
    blobs: Vec<Vec<u8>>,
    at: usize,
}

impl Values {
    fn next<T: Clone>(&mut self, from: impl Fn(&Self) -> &Vec<T>) -> T {
        self.at += 1;
        let all = from(self);
        all[self.at % all.len()].clone()
    }
    fn int(&mut self) -> i64 {
        self.next(|v| &v.ints)
    }
    fn text(&mut self) -> String {
        self.next(|v| &v.texts)
    }
    fn count(&mut self, max: i64) -> usize {
        self.int().rem_euclid(max + 1) as usize
    }

    fn scalar(&mut self, kind: &Kind, depth: u32) -> Value {
        let i = self.int();
        match kind {
            Kind::Double => Value::F64(i as f64 / 7.0),
            Kind::Float => Value::F32(i as f32 / 7.0),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(i as i32),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(i),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(i as u32),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(i as u64),
            Kind::Bool => Value::Bool(i % 2 == 0),
            Kind::String => Value::String(self.text()),
            Kind::Bytes => Value::Bytes(self.next(|v| &v.blobs).into()),
            // Numbers outside the enum too: a newer peer may send them.
            Kind::Enum(_) => Value::EnumNumber(i as i32),
            Kind::Message(m) => Value::Message(self.message(m, depth + 1)),
        }
    }

    fn map_key(&mut self, kind: &Kind) -> MapKey {
        match self.scalar(kind, 0) {
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(n) => MapKey::I32(n),
            Value::I64(n) => MapKey::I64(n),
            Value::U32(n) => MapKey::U32(n),
            Value::U64(n) => MapKey::U64(n),
            Value::String(s) => MapKey::String(s),
            other => unreachable!("{other:?} is no map key type"),
        }
    }

    fn field(&mut self, f: &FieldDescriptor, depth: u32) -> Value {
        let kind = f.kind();
        if f.is_map() {
            let Kind::Message(entry) = &kind else {
                unreachable!("a map field is a message of entries")
            };
            let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let map: HashMap<MapKey, Value> = (0..self.count(3))
                .map(|_| (self.map_key(&k.kind()), self.scalar(&v.kind(), depth)))
                .collect();
            Value::Map(map)
        } else if f.is_list() {
            Value::List(
                (0..self.count(3))
                    .map(|_| self.scalar(&kind, depth))
                    .collect(),
            )
        } else {
            self.scalar(&kind, depth)
        }
    }

    /// A message with a random subset of its fields set (nested ones to a few levels).
    fn message(&mut self, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
        let mut m = DynamicMessage::new(desc.clone());
        if depth > 3 {
            return m;
        }
        for f in desc.fields() {
            if self.int() % 3 != 0 {
                let value = self.field(&f, depth);
                m.set_field(&f, value);
            }
        }
        m
    }
}

fn values() -> impl Strategy<Value = Values> {
    let int = prop_oneof![
        any::<i64>(),
        -3i64..300,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::from(i32::MAX) + 1),
    ];
    (
        prop::collection::vec(int, 1..48),
        prop::collection::vec(any::<String>(), 1..8),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
    )
        .prop_map(|(ints, texts, blobs)| Values {
            ints,
            texts,
            blobs,
            at: 0,
        })
}

#[test]
fn every_message_of_nexus_proto_is_fuzzed() {
    let mut known: Vec<String> = pool()
        .all_messages()
        .filter(|m| !m.is_map_entry() && m.package_name() == "nexus.v1")
        .map(|m| m.full_name().to_owned())
        .collect();
    known.sort();
    let mut fuzzed: Vec<String> = MESSAGES.iter().map(|(n, _)| (*n).to_owned()).collect();
    fuzzed.sort();
    assert_eq!(fuzzed, known, "add new messages to MESSAGES");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_random_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for (_, check) in MESSAGES {
            check(&bytes, false)?;
        }
    }

    #[test]
    fn fuzz_valid_encodings_with_random_values_always_decode(values in values()) {
        for (name, check) in MESSAGES {
            let desc = pool().get_message_by_name(name).unwrap();
            let encoded = values.clone().message(&desc, 0).encode_to_vec();
            check(&encoded, true)?;
            // Cut short, the same bytes must still not panic.
            check(&encoded[..encoded.len() / 2], false)?;
        }
    }

    #[test]
    fn fuzz_traceparent_headers_parse_or_are_ignored(value in prop_oneof![
        any::<String>(),
        "0[0-9]-[0-9a-fA-F]{30,34}-[0-9a-fA-F]{14,18}-[0-9a-f]{2}[ -]{0,2}",
    ]) {
        if let Some(ctx) = TraceContext::parse(&value) {
            prop_assert_eq!(ctx.trace_id().len(), 32);
            prop_assert!(ctx.trace_id().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            prop_assert_eq!(TraceContext::parse(&ctx.header()), Some(ctx));
        }
    }
}
