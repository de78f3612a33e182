//! `nexus whatsapp login` and `nexus whatsapp status`: pairing WhatsApp from the
//! operator's terminal.
//!
//! `login` asks gateway-whatsapp to pair afresh (`N.gateway.whatsapp.login`), draws
//! each QR code the gateway publishes as a `service` event, and returns once the
//! phone has paired. It never talks to the bridge: the gateway owns that link.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use nexus_bus::{Bus, BusError, TraceContext, event_kind, gateway_op};
use nexus_common::{Config, domain::ChannelName, now_ms};
use nexus_proto::v1::{Event, GatewayCommandRequest, GatewayCommandResponse, ServiceNotice, event};
use prost::Message as _;
use qrcode::{EcLevel, QrCode, render::unicode::Dense1x2};

/// The service whose events and commands this module reads and sends.
const GATEWAY: &str = "gateway-whatsapp";
/// A QR code older than this has expired (WhatsApp rotates them every 20 s to 60 s).
const QR_LOOKBACK: Duration = Duration::from_secs(60);
/// The gateway answers at once, or within its 5 s wait for the bridge's first status.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct WhatsAppArgs {
    #[command(subcommand)]
    command: WhatsAppCommand,
}

#[derive(Subcommand)]
enum WhatsAppCommand {
    /// Pair WhatsApp: draw the QR code to scan (WhatsApp → Linked devices → Link a
    /// device) and wait until the phone has paired.
    Login(LoginArgs),
    /// Print gateway-whatsapp's last known WhatsApp status.
    Status,
}

#[derive(Args)]
struct LoginArgs {
    /// Seconds to wait for the phone to pair.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Draw the QR code for a terminal with a light background.
    #[arg(long)]
    invert: bool,
}

pub async fn run(config: Config, args: WhatsAppArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&config, "nexus-cli").await?;
    bus.ensure_streams().await?;
    match args.command {
        WhatsAppCommand::Login(a) => login(&config, &bus, a).await,
        WhatsAppCommand::Status => status(&bus).await,
    }
}

async fn login(config: &Config, bus: &Bus, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let s = bus.subjects();
    // Subscribe before asking, so no event of this pairing can slip past.
    let mut live = bus
        .subscribe(s.event(event_kind::SERVICE))
        .await
        .context("subscribing to service events")?;
    let waiting_qr = recent_qr(bus).await?;

    let whatsapp = ChannelName::parse("whatsapp")?;
    let reply: GatewayCommandResponse = match bus
        .request(
            s.gateway_command(&whatsapp, gateway_op::LOGIN),
            &GatewayCommandRequest {},
            &TraceContext::new_root(),
            Some(REQUEST_TIMEOUT),
        )
        .await
    {
        Ok(reply) => reply,
        Err(BusError::NoResponders { .. }) => bail!(
            "{GATEWAY} is not running in namespace \"{}\" on {}: start it (`nexus up` starts it \
             when WHATSAPP_BRIDGE_URL and WHATSAPP_BRIDGE_TOKEN are set) and try again",
            config.namespace,
            config.nats.url
        ),
        Err(e) => return Err(e).context(format!("asking {GATEWAY} to log in")),
    };

    let mut screen = Screen::new(args.invert);
    // Whether this pairing has visibly started. After our login request, a logged-out
    // status means failure only then: an earlier one is what the request repairs.
    let mut started = false;
    let asked = reply.status == "login_requested";
    match reply.status.as_str() {
        "connected" => {
            println!(
                "Paired as {} (WhatsApp was already connected)",
                reply.detail
            );
            return Ok(ExitCode::SUCCESS);
        }
        "bridge_unavailable" => bail!("{}", reply.detail),
        "login_requested" => {
            // A code from before the request belongs to the session the bridge just dropped.
            eprintln!("{}. Waiting for the QR code…", reply.detail);
        }
        "in_progress" => {
            eprintln!("{}. Waiting…", reply.detail);
            if let Some(qr) = waiting_qr {
                screen.show(&qr)?;
                started = true;
            }
        }
        other => bail!(
            "{GATEWAY} answered {other:?} ({}); is it from another release than this nexus?",
            reply.detail
        ),
    }

    let timeout = Duration::from_secs(args.timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => bail!(
                "the phone did not pair within {}s; run `nexus whatsapp login` again \
                 (--timeout sets the wait)",
                timeout.as_secs()
            ),
            m = live.next() => m.context("the NATS subscription to service events closed")?,
        };
        let Some(notice) = whatsapp_notice(&msg.payload) else {
            continue;
        };
        match notice.status.as_str() {
            "qr" => {
                screen.show(&notice.detail)?;
                started = true;
            }
            "connecting" => started = true,
            "connected" => {
                println!("Paired as {}", notice.detail);
                return Ok(ExitCode::SUCCESS);
            }
            "logged_out" | "banned" | "replaced" if started || !asked => bail!(
                "pairing failed: WhatsApp is {} ({}); run `nexus whatsapp login` again",
                notice.status,
                notice.detail
            ),
            _ => {}
        }
    }
}

async fn status(bus: &Bus) -> anyhow::Result<ExitCode> {
    let live = bus
        .discover_services(Duration::from_millis(750))
        .await?
        .iter()
        .filter(|i| i.name == GATEWAY)
        .count();
    match live {
        0 => println!("{GATEWAY}: not running"),
        n => println!("{GATEWAY}: {n} live"),
    }
    let mut last = None;
    scan(bus, DeliverPolicy::All, |at_ms, n| last = Some((at_ms, n))).await?;
    let Some((at_ms, notice)) = last else {
        println!("WhatsApp: no status reported yet");
        return Ok(ExitCode::SUCCESS);
    };
    let ago = ago(now_ms().saturating_sub(at_ms));
    let what = match notice.status.as_str() {
        "connected" => format!("connected as {}", notice.detail),
        "qr" => "waiting for a QR code to be scanned (`nexus whatsapp login` draws it)".to_owned(),
        s @ ("logged_out" | "banned" | "replaced") => {
            format!(
                "{s}: {} — `nexus whatsapp login` pairs again",
                notice.detail
            )
        }
        s if notice.detail.is_empty() => s.to_owned(),
        s => format!("{s}: {}", notice.detail),
    };
    println!("WhatsApp: {what} (reported {ago} ago)");
    Ok(ExitCode::SUCCESS)
}

/// A `service` event of gateway-whatsapp, or `None` for anything else.
fn whatsapp_notice(payload: &[u8]) -> Option<ServiceNotice> {
    match Event::decode(payload).ok()?.kind? {
        event::Kind::Service(n) if n.service == GATEWAY => Some(n),
        _ => None,
    }
}

/// The QR code waiting to be scanned: the latest one gateway-whatsapp published within
/// `QR_LOOKBACK`, unless a later status (connected, logged out) ended that pairing.
async fn recent_qr(bus: &Bus) -> anyhow::Result<Option<String>> {
    let since = time::OffsetDateTime::now_utc() - QR_LOOKBACK;
    let mut qr = None;
    scan(
        bus,
        DeliverPolicy::ByStartTime { start_time: since },
        |_, n| match n.status.as_str() {
            "qr" => qr = Some(n.detail),
            "connected" | "logged_out" | "banned" | "replaced" => qr = None,
            _ => {}
        },
    )
    .await?;
    Ok(qr)
}

/// Feeds gateway-whatsapp's stored `service` events from `from` on, oldest first, to `f`.
async fn scan(
    bus: &Bus,
    from: DeliverPolicy,
    f: impl FnMut(i64, ServiceNotice),
) -> anyhow::Result<()> {
    scan_service_events(bus, from, Some(GATEWAY), f).await
}

/// Feeds stored `service` events (of one service, or all) from `from` on, oldest first, to `f`.
pub(crate) async fn scan_service_events(
    bus: &Bus,
    from: DeliverPolicy,
    only: Option<&str>,
    mut f: impl FnMut(i64, ServiceNotice),
) -> anyhow::Result<()> {
    scan_events(bus, event_kind::SERVICE, from, |at_ms, kind| {
        if let event::Kind::Service(n) = kind
            && only.is_none_or(|o| n.service == o)
        {
            f(at_ms, n);
        }
    })
    .await
}

/// Feeds stored events of one kind (`event_kind::…`) from `from` on, oldest first, to `f`.
pub(crate) async fn scan_events(
    bus: &Bus,
    kind: &str,
    from: DeliverPolicy,
    mut f: impl FnMut(i64, event::Kind),
) -> anyhow::Result<()> {
    let s = bus.subjects();
    let mut feed = bus
        .ordered_feed(
            &s.events_stream(),
            pull::OrderedConfig {
                filter_subject: s.event(kind),
                deliver_policy: from,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("reading {kind} events"))?;
    if feed.pending == 0 {
        return Ok(());
    }
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), feed.messages.next())
            .await
            .with_context(|| format!("reading {kind} events timed out"))?
            .context("the events stream closed")?
            .with_context(|| format!("reading {kind} events"))?;
        if let Ok(Event {
            at_ms,
            kind: Some(kind),
            ..
        }) = Event::decode(msg.payload.clone())
        {
            f(at_ms, kind);
        }
        if msg.info().map(|i| i.pending).unwrap_or(0) == 0 {
            return Ok(());
        }
    }
}

pub(crate) fn ago(ms: i64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// Draws a QR code in Unicode half blocks, two modules per character cell, with the
/// quiet zone scanners need. By default for a dark terminal: light modules are drawn
/// as blocks in the (light) text colour; `invert` is for light backgrounds.
pub fn render_qr(data: &str, invert: bool) -> anyhow::Result<String> {
    // Level L: WhatsApp's codes are long, and the lowest level keeps them small enough
    // for a terminal (a screen is not a damaged print).
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L)
        .context("the pairing code does not fit in a QR code")?;
    let (dark, light) = if invert {
        (Dense1x2::Dark, Dense1x2::Light)
    } else {
        (Dense1x2::Light, Dense1x2::Dark)
    };
    Ok(code
        .render::<Dense1x2>()
        .dark_color(dark)
        .light_color(light)
        .quiet_zone(true)
        .build())
}

/// The QR code on stdout; a new code replaces the previous one on a terminal.
struct Screen {
    invert: bool,
    terminal: bool,
    shown: Option<String>,
    /// Lines drawn for the code on screen, to move back over when redrawing.
    lines: usize,
}

impl Screen {
    fn new(invert: bool) -> Self {
        Self {
            invert,
            terminal: std::io::stdout().is_terminal(),
            shown: None,
            lines: 0,
        }
    }

    fn show(&mut self, data: &str) -> anyhow::Result<()> {
        if self.shown.as_deref() == Some(data) {
            return Ok(());
        }
        let text = format!(
            "{}\nScan it with WhatsApp on the phone: Settings → Linked devices → Link a device.\n\
             The code changes every 20 seconds or so; the new one {}.\n",
            render_qr(data, self.invert)?,
            if self.terminal {
                "replaces it here"
            } else {
                "follows below"
            }
        );
        let mut out = std::io::stdout().lock();
        if self.terminal && self.lines > 0 {
            // Up to the first line of the previous code, then clear to the end of the screen.
            write!(out, "\x1b[{}A\x1b[J", self.lines)?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        self.lines = text.lines().count();
        self.shown = Some(data.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "2@k3JxG5pQ0Qm4nT3Z8yHq1u8dWZ0bY0xk6mFzq9R1s5pV3cJ0aLr2m3e4,\
                        mK8sQ1h0Fv3gYb2lX6cD9eR4tU7wZ0aB3cE6fH9iJ2k=,rN5oP8qS1tV4wY7z=,\
                        A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U=,1";

    #[test]
    fn a_pairing_code_renders_to_a_square_block_of_equal_lines_the_same_every_time() {
        let block = render_qr(CODE, false).unwrap();
        let lines: Vec<&str> = block.lines().collect();
        assert!(lines.len() > 10, "{block}");
        let width = lines[0].chars().count();
        assert!(
            lines.iter().all(|l| l.chars().count() == width),
            "ragged lines:\n{block}"
        );
        // Two modules per line: as many lines as half the width, rounded up.
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(
            block
                .chars()
                .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\n'))
        );
        assert_eq!(block, render_qr(CODE, false).unwrap(), "not deterministic");
        assert_ne!(
            block,
            render_qr("2@another code", false).unwrap(),
            "another code must draw another picture"
        );
    }

    #[test]
    fn the_quiet_zone_is_drawn_light_and_invert_swaps_the_colours() {
        let dark_terminal = render_qr(CODE, false).unwrap();
        let first = dark_terminal.lines().next().unwrap();
        assert!(
            first.chars().all(|c| c == '\u{2588}'),
            "on a dark terminal the quiet zone is drawn in the light text colour: {first:?}"
        );
        let light_terminal = render_qr(CODE, true).unwrap();
        assert!(
            light_terminal
                .lines()
                .next()
                .unwrap()
                .chars()
                .all(|c| c == ' ')
        );
        // Every line but the last, which holds one row of modules (the size is odd).
        let swap = |line: &str| -> String {
            line.chars()
                .map(|c| match c {
                    ' ' => '\u{2588}',
                    '\u{2588}' => ' ',
                    '\u{2580}' => '\u{2584}',
                    '\u{2584}' => '\u{2580}',
                    c => c,
                })
                .collect()
        };
        let n = dark_terminal.lines().count();
        for (i, (d, l)) in dark_terminal
            .lines()
            .zip(light_terminal.lines())
            .enumerate()
        {
            if i + 1 < n {
                assert_eq!(l, swap(d), "line {i}");
            }
        }
    }

    #[test]
    fn ages_are_given_in_a_readable_unit() {
        assert_eq!(ago(42_000), "42s");
        assert_eq!(ago(600_000), "10 min");
        assert_eq!(ago(5 * 3600 * 1000), "5 h");
        assert_eq!(ago(3 * 86400 * 1000), "3 days");
    }
}
