//! `nexus chat`: the CLI channel. Publishes `InboundMessage`s on `N.inbound.cli`
//! and waits for the matching `OutboundMessage` on `N.outbound.cli`; shows tool
//! activity and streamed text from `N.progress.cli` (text only when stdout is a terminal).

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clap::Args;
use futures::StreamExt;
use nexus_bus::{Bus, TraceContext};
use nexus_common::{
    Config,
    domain::{ChannelName, inbound_id},
    now_ms,
};
use nexus_proto::v1::{
    ChatRef, InboundKind, InboundMessage, OutboundKind, OutboundMessage, Sender, TurnProgress,
    turn_progress,
};
use prost::Message as _;
use tokio::io::AsyncBufReadExt;

#[derive(Args)]
pub struct ChatArgs {
    /// Send one message, print the reply and exit.
    #[arg(short, long)]
    message: Option<String>,
    /// Session (chat) id; the same id continues the same conversation.
    #[arg(long, default_value = "default")]
    session: String,
    /// Seconds to wait for a reply.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Do not show tool activity.
    #[arg(long)]
    quiet: bool,
    /// Print only the final reply, not the text as it streams.
    #[arg(long)]
    no_stream: bool,
}

struct Channel {
    bus: Bus,
    replies: pull::Ordered,
    progress: async_nats::Subscriber,
    /// Print text as the model streams it (stdout is a terminal).
    stream: bool,
    session: String,
    sender: String,
    timeout: Duration,
    quiet: bool,
}

pub async fn run(config: Config, args: ChatArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-cli").await?;
    bus.ensure_streams().await?;
    // The first agent-core that answers is enough (no fixed wait for all replicas).
    if !bus
        .is_served("agent-core", Duration::from_millis(750))
        .await?
    {
        bail!(
            "no agent-core is running in namespace \"{}\" on {}. Start the stack with `nexus up` (or `just up`) in \
             another terminal.",
            config.namespace,
            config.nats.url
        );
    }
    let cli = ChannelName::parse("cli")?;
    let s = bus.subjects();
    // Subscribe before publishing so the reply cannot slip past.
    let replies = bus
        .ordered_feed(
            &s.outbound_stream(),
            pull::OrderedConfig {
                filter_subject: s.outbound(&cli),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            },
        )
        .await
        .context("reply consumer")?
        .messages;
    let progress = bus.subscribe(s.progress(&cli)).await?;
    let sender = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let mut ch = Channel {
        bus,
        replies,
        progress,
        stream: std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.no_stream,
        session: args.session,
        sender,
        timeout: Duration::from_secs(args.timeout),
        quiet: args.quiet,
    };

    if let Some(text) = args.message {
        let (reply, streamed) = ch.ask(&text).await?;
        return Ok(print_reply(&reply, &streamed));
    }

    eprintln!(
        "Nexus chat (session \"{}\"). Type a message and press Enter; Ctrl-D or /exit to leave.",
        ch.session
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("you> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next_line().await? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            break;
        }
        match ch.ask(line).await {
            Ok((reply, streamed)) => {
                print_reply(&reply, &streamed);
            }
            Err(e) => eprintln!("nexus: {e:#}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the reply, unless it was already shown as it streamed.
fn print_reply(reply: &OutboundMessage, streamed: &str) -> ExitCode {
    if reply.kind == OutboundKind::Error as i32 {
        if !streamed.is_empty() {
            println!();
        }
        eprintln!("{}", reply.text);
        ExitCode::FAILURE
    } else if !streamed.is_empty() && streamed.trim() == reply.text.trim() {
        println!();
        ExitCode::SUCCESS
    } else {
        if !streamed.is_empty() {
            println!();
        }
        println!("{}", reply.text);
        ExitCode::SUCCESS
    }
}

impl Channel {
    /// Sends one message; returns the reply and the text already streamed to stdout.
    async fn ask(&mut self, text: &str) -> anyhow::Result<(OutboundMessage, String)> {
        let cli = ChannelName::parse("cli")?;
        let upstream = uuid::Uuid::new_v4().to_string();
        let id = inbound_id(&cli, &upstream);
        let msg = InboundMessage {
            id: id.clone(),
            channel: cli.to_string(),
            chat: Some(ChatRef {
                chat_id: self.session.clone(),
                ..Default::default()
            }),
            sender: Some(Sender {
                id: self.sender.clone(),
                display_name: self.sender.clone(),
                user_id: String::new(),
            }),
            text: text.to_owned(),
            upstream_id: upstream,
            sent_at_ms: now_ms(),
            received_at_ms: now_ms(),
            kind: InboundKind::User as i32,
            ..Default::default()
        };
        self.bus
            .publish_inbound(&msg, &TraceContext::new_root())
            .await?;

        let deadline = tokio::time::Instant::now() + self.timeout;
        // Text of the current model call as streamed so far.
        let mut streamed = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("no reply within {}s; the turn may still finish (see `nexus tail`)", self.timeout.as_secs())
                }
                m = self.replies.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => bail!("reading replies: {e}"),
                        None => bail!("the reply stream closed"),
                    };
                    if let Ok(reply) = OutboundMessage::decode(m.payload.clone())
                        && reply.in_reply_to == id
                    {
                        return Ok((reply, streamed));
                    }
                }
                p = self.progress.next() => {
                    let Some(p) = p else { continue };
                    let Ok(TurnProgress { turn_id, kind: Some(kind), .. }) = TurnProgress::decode(p.payload) else {
                        continue;
                    };
                    if turn_id != id {
                        continue;
                    }
                    match kind {
                        turn_progress::Kind::TextDelta(d) if self.stream => {
                            print!("{d}");
                            let _ = std::io::stdout().flush();
                            streamed.push_str(&d);
                        }
                        // Text before tool calls was not the answer: start a new line.
                        turn_progress::Kind::LlmCall(n) if n > 1 && !streamed.is_empty() => {
                            println!();
                            streamed.clear();
                        }
                        turn_progress::Kind::Tool(t) if !self.quiet => {
                            let status = if t.ok { "ok".to_owned() } else { format!("failed: {}", t.error_kind) };
                            eprintln!("  [tool] {} {} ({status}, {} ms)", t.name, t.arguments_json, t.duration_ms);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
