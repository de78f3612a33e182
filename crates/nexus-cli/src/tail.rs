//! `nexus tail`: every message of the namespace as one JSON line, decoded from
//! protobuf with the embedded descriptor set. Payloads that do not decode are
//! shown with the error, never dropped.

use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use nexus_bus::{Bus, MSG_ID, Subjects, TRACEPARENT};
use nexus_common::Config;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};

#[derive(Args)]
pub struct TailArgs {
    /// Subject filter below the namespace, e.g. `inbound.>` or `events.*` (default: everything).
    #[arg(default_value = ">")]
    filter: String,
}

pub async fn run(config: Config, args: TailArgs) -> anyhow::Result<ExitCode> {
    let pool = DescriptorPool::decode(nexus_proto::FILE_DESCRIPTOR_SET)?;
    let bus = Bus::connect(&config, "nexus-tail").await?;
    let subject = bus.subjects().below(&args.filter);
    let mut sub = bus.subscribe(subject.clone()).await?;
    eprintln!("tailing {subject} on {} (Ctrl-C to stop)", config.nats.url);
    let shutdown = nexus_common::shutdown::on_signals();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let line = describe(&pool, bus.subjects(), &msg);
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(pool: &DescriptorPool, subjects: &Subjects, msg: &async_nats::Message) -> Value {
    let header = |k: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(k))
            .map(|v| v.as_str().to_owned())
    };
    let mut line = json!({ "subject": msg.subject.as_str(), "bytes": msg.payload.len() });
    if let Some(id) = header(MSG_ID) {
        line["msg_id"] = json!(id);
    }
    if let Some(tp) = header(TRACEPARENT) {
        line["traceparent"] = json!(tp);
    }
    let Some(type_name) = subjects.payload_type(msg.subject.as_str()) else {
        line["raw"] = json!(String::from_utf8_lossy(&msg.payload));
        return line;
    };
    line["type"] = json!(type_name);
    match pool
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("{type_name} not in the descriptor set"))
        .and_then(|d| DynamicMessage::decode(d, msg.payload.as_ref()).map_err(|e| e.to_string()))
        .and_then(|m| serde_json::to_value(&m).map_err(|e| e.to_string()))
    {
        Ok(v) => line["message"] = v,
        Err(e) => line["decode_error"] = json!(e),
    }
    line
}

#[cfg(test)]
mod tests {
    use nexus_common::domain::Namespace;
    use nexus_proto::v1::InboundMessage;
    use prost::Message as _;

    use super::*;

    #[test]
    fn messages_decode_to_json_and_bad_payloads_say_why() {
        let s = Subjects::new(Namespace::parse("n").unwrap());

        let pool = DescriptorPool::decode(nexus_proto::FILE_DESCRIPTOR_SET).unwrap();
        let payload = InboundMessage {
            id: "cli:1".into(),
            text: "hello".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let msg = async_nats::Message {
            subject: "n.inbound.cli".into(),
            reply: None,
            payload: payload.into(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        let line = describe(&pool, &s, &msg);
        assert_eq!(line["message"]["text"], "hello");

        let bad = async_nats::Message {
            payload: vec![0xff, 0xff, 0xff].into(),
            ..msg
        };
        assert!(describe(&pool, &s, &bad)["decode_error"].is_string());
    }
}
