//! `/admin/channels`: each channel's gateway as the CLI sees it (live replicas from
//! the service ping, what it last reported in its `service` events, its mode from
//! `[channels.<name>]`), and WhatsApp pairing: the QR code gateway-whatsapp
//! publishes is drawn here as inline SVG, as `nexus whatsapp login` draws it in a
//! terminal, and the page reloads itself while one waits.
//!
//! A QR code lets whoever scans it link a phone to the deployment's WhatsApp: it is
//! shown on this page only, behind the admin session, and never logged.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use axum::{Form, extract::State, http::StatusCode, response::Response};
use nexus_bus::{
    BusError, TraceContext, async_nats::jetstream::consumer::DeliverPolicy, gateway_op,
};
use nexus_common::{
    channel_settings::{slack, telegram},
    domain::ChannelName,
    now_ms,
};
use nexus_proto::v1::{GatewayCommandRequest, GatewayCommandResponse, ServiceNotice};
use qrcode::{Color, EcLevel, QrCode};

use super::{
    Admin, AdminState, CsrfForm,
    page::{Notice, button, esc, page_refreshing, table, utc},
};

/// A QR code older than this has expired (WhatsApp rotates them every 20 s to 60 s).
const QR_LOOKBACK_MS: i64 = 60_000;
/// How often the page reloads while a QR code waits, in seconds.
const QR_REFRESH_SECS: u32 = 5;
/// How long replicas get to answer the service ping (as `nexus status`).
const DISCOVERY_WAIT: Duration = Duration::from_millis(750);
/// gateway-whatsapp answers at once, or within its 5 s wait for the bridge.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
const WHATSAPP: &str = "gateway-whatsapp";

/// The last `service` event of each service, and the WhatsApp QR code that waits.
#[derive(Default)]
struct Reports {
    last: BTreeMap<String, (i64, ServiceNotice)>,
    /// The latest QR code of gateway-whatsapp, unless a later status ended that pairing.
    qr: Option<(i64, String)>,
}

/// `GET /admin/channels`.
pub async fn channels(State(state): State<Arc<AdminState>>, admin: Admin) -> Response {
    channels_page(&state, &admin, StatusCode::OK, Notice::None).await
}

async fn channels_page(
    state: &AdminState,
    admin: &Admin,
    status: StatusCode,
    notice: Notice,
) -> Response {
    let title = "Channels";
    let bus = &state.bus;
    let (instances, reports) = match tokio::join!(
        bus.discover_services(DISCOVERY_WAIT),
        service_reports(state)
    ) {
        (Ok(i), Ok(r)) => (i, r),
        (Err(e), _) => return failed(admin, title, &e.to_string()),
        (_, Err(e)) => return failed(admin, title, &e),
    };
    let replicas = |service: &str| instances.iter().filter(|i| i.name == service).count();
    let config = &state.config;
    let last = |service: &str| reports.last.get(service);
    let reported = |service: &str| match last(service) {
        Some((at, n)) if n.status == "qr" => format!("waiting for a QR code scan ({})", utc(*at)),
        Some((at, n)) if n.detail.is_empty() => format!("{} ({})", esc(&n.status), utc(*at)),
        Some((at, n)) => format!("{}: {} ({})", esc(&n.status), esc(&n.detail), utc(*at)),
        None => "nothing reported".to_owned(),
    };

    // A bad mode keeps the gateway from starting; its error says why.
    let telegram_mode = match telegram::configured_mode(&config.channel(telegram::CHANNEL)) {
        Ok(mode) => mode.as_str().to_owned(),
        Err(e) => esc(&e.to_string()),
    };
    let telegram_state = match (replicas("gateway-telegram"), last("gateway-telegram")) {
        (0, _) => "not running".to_owned(),
        (_, Some((at, n))) if n.status == "degraded" => format!(
            "{telegram_mode} degraded since {}: {}",
            utc(*at),
            esc(&n.detail)
        ),
        (_, Some((at, n))) if n.status == "recovered" => {
            format!("{telegram_mode}, recovered at {}", utc(*at))
        }
        _ => format!("{telegram_mode}, no trouble reported"),
    };
    let slack_mode = match slack::configured_mode(&config.channel(slack::CHANNEL)) {
        Ok(slack::Mode::Socket) => "Socket Mode".to_owned(),
        Ok(slack::Mode::Events) => "Events API (HTTP)".to_owned(),
        Err(e) => esc(&e.to_string()),
    };
    let whatsapp_state = match (reports.qr.is_some(), last(WHATSAPP)) {
        (true, _) => "pairing: scan the QR code below".to_owned(),
        (false, Some((_, n))) if n.status == "connected" => {
            format!("paired as {}", esc(&n.detail))
        }
        (false, Some((_, n)))
            if matches!(n.status.as_str(), "logged_out" | "banned" | "replaced") =>
        {
            format!("not paired ({})", esc(&n.status))
        }
        (false, Some((_, n))) => format!("{} (not known to be paired)", esc(&n.status)),
        (false, None) => "not known to be paired: nothing reported".to_owned(),
    };
    let row = |id: &str, name: &str, service: &str, mode: String, state: String| {
        vec![
            format!("<span id=\"channel-{id}\">{name}</span>"),
            format!("<span id=\"replicas-{id}\">{}</span>", replicas(service)),
            mode,
            format!("<span id=\"state-{id}\">{state}</span>"),
            reported(service),
        ]
    };
    let rows = vec![
        row(
            "telegram",
            "Telegram",
            "gateway-telegram",
            esc(&telegram_mode),
            telegram_state,
        ),
        row(
            "slack",
            "Slack",
            "gateway-slack",
            slack_mode,
            if replicas("gateway-slack") == 0 {
                "not running".to_owned()
            } else {
                "running".to_owned()
            },
        ),
        row(
            "whatsapp",
            "WhatsApp",
            WHATSAPP,
            "bridge (Baileys)".to_owned(),
            whatsapp_state,
        ),
        row(
            "api",
            "HTTP/gRPC API",
            "gateway-api",
            "HTTP and gRPC".to_owned(),
            "running".to_owned(),
        ),
    ];
    let mut body = String::from(
        "<p>Each channel's gateway: replicas that answered the service ping, the mode \
         <code>[channels.&lt;name&gt;]</code> sets, and what it last reported about itself.</p>",
    );
    body.push_str(&table(
        "channels",
        "Channels",
        &["Channel", "Replicas", "Mode", "State", "Last report"],
        &rows,
    ));

    body.push_str("<h2 id=\"whatsapp\">WhatsApp pairing</h2>");
    let mut refresh = None;
    match &reports.qr {
        Some((at, data)) => match qr_svg(data) {
            Ok(svg) => {
                refresh = Some(QR_REFRESH_SECS);
                let _ = write!(
                    body,
                    "<figure id=\"whatsapp-qr\">{svg}<figcaption>Scan it with WhatsApp on the \
                     phone: Settings → Linked devices → Link a device. Shown at {}; the code \
                     changes every 20 seconds or so, and this page reloads every {QR_REFRESH_SECS} s \
                     until the phone has paired.</figcaption></figure>",
                    utc(*at)
                );
            }
            Err(e) => {
                let _ = write!(
                    body,
                    "<p class=\"failed\" role=\"alert\">The QR code cannot be drawn: {}</p>",
                    esc(&e)
                );
            }
        },
        None if replicas(WHATSAPP) == 0 => body.push_str(
            "<p id=\"whatsapp-off\">gateway-whatsapp is not running: it starts with \
             <code>WHATSAPP_BRIDGE_URL</code> and <code>WHATSAPP_BRIDGE_TOKEN</code>.</p>",
        ),
        None => {
            body.push_str(
                "<p>No QR code waits. Pairing afresh unlinks the current phone, if any, \
                 and shows the code to scan here (as <code>nexus whatsapp login</code>).</p>",
            );
            body.push_str(&button(
                "/admin/channels/whatsapp/login",
                &admin.csrf,
                &[],
                "whatsapp-login",
                "Pair WhatsApp",
            ));
        }
    }
    page_refreshing(
        status,
        title,
        "/admin/channels",
        Some(&admin.csrf),
        &notice,
        &body,
        refresh,
    )
}

/// `POST /admin/channels/whatsapp/login`: `nexus whatsapp login`'s request.
pub async fn whatsapp_login(
    State(state): State<Arc<AdminState>>,
    admin: Admin,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    let bus = &state.bus;
    let outcome = match ChannelName::parse("whatsapp") {
        Ok(whatsapp) => bus
            .request::<_, GatewayCommandResponse>(
                bus.subjects().gateway_command(&whatsapp, gateway_op::LOGIN),
                &GatewayCommandRequest {},
                &TraceContext::new_root(),
                Some(LOGIN_TIMEOUT),
            )
            .await
            .map_err(|e| match e {
                BusError::NoResponders { .. } => format!(
                    "{WHATSAPP} is not running in namespace \"{}\"",
                    state.config.namespace
                ),
                e => format!("asking {WHATSAPP} to pair: {e}"),
            }),
        Err(e) => Err(e.to_string()),
    };
    tracing::info!("admin console: WhatsApp pairing requested");
    let (status, notice) = match outcome {
        Ok(r) if r.status == "bridge_unavailable" => {
            (StatusCode::BAD_GATEWAY, Notice::Failed(r.detail))
        }
        Ok(r) if r.status == "connected" => (
            StatusCode::OK,
            Notice::Done(format!("WhatsApp is already paired as {}", r.detail)),
        ),
        Ok(r) => (
            StatusCode::OK,
            Notice::Done(format!(
                "{}; the QR code shows here once the bridge has it (reload)",
                r.detail
            )),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Notice::Failed(e)),
    };
    channels_page(&state, &admin, status, notice).await
}

/// Every stored `service` event, oldest first (the stream's retention bounds them).
async fn service_reports(state: &AdminState) -> Result<Reports, String> {
    let mut reports = Reports::default();
    let qr_since = now_ms() - QR_LOOKBACK_MS;
    super::views::service_events(state, DeliverPolicy::All, |at_ms, n| {
        if n.service == WHATSAPP {
            match n.status.as_str() {
                "qr" if at_ms >= qr_since => reports.qr = Some((at_ms, n.detail.clone())),
                "qr" | "connected" | "logged_out" | "banned" | "replaced" => reports.qr = None,
                _ => {}
            }
        }
        reports.last.insert(n.service.clone(), (at_ms, n));
    })
    .await?;
    Ok(reports)
}

/// A QR code as inline SVG: one path of its dark modules on a light square with
/// the four-module quiet zone scanners need.
fn qr_svg(data: &str) -> Result<String, String> {
    // Level L, as the CLI: WhatsApp's codes are long, and a screen is not a damaged print.
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L)
        .map_err(|e| format!("the pairing code does not fit in a QR code: {e}"))?;
    let width = code.width();
    let size = width + 8;
    let mut path = String::new();
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color == Color::Dark {
            let _ = write!(path, "M{} {}h1v1h-1z", i % width + 4, i / width + 4);
        }
    }
    Ok(format!(
        "<svg id=\"whatsapp-qr-code\" class=\"qr\" role=\"img\" aria-label=\"QR code to pair WhatsApp\" \
         viewBox=\"0 0 {size} {size}\" xmlns=\"http://www.w3.org/2000/svg\" shape-rendering=\"crispEdges\" \
         data-modules=\"{width}\"><rect width=\"{size}\" height=\"{size}\" fill=\"#ffffff\"></rect>\
         <path d=\"{path}\" fill=\"#000000\"></path></svg>"
    ))
}

fn failed(admin: &Admin, title: &str, error: &str) -> Response {
    page_refreshing(
        StatusCode::SERVICE_UNAVAILABLE,
        title,
        "/admin/channels",
        Some(&admin.csrf),
        &Notice::Failed(error.to_owned()),
        "",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pairing_code_is_drawn_as_a_square_of_its_modules_the_same_every_time() {
        let data = "2@k3JxG5pQ0Qm4nT3Z8yHq1u8dWZ0bY0xk6mFzq9R1s5pV3cJ0aLr2m3e4,1";
        let svg = qr_svg(data).unwrap();
        let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L).unwrap();
        let dark = code
            .to_colors()
            .iter()
            .filter(|c| **c == Color::Dark)
            .count();
        assert_eq!(svg.matches("h1v1h-1z").count(), dark);
        let size = code.width() + 8;
        assert!(
            svg.contains(&format!("viewBox=\"0 0 {size} {size}\"")),
            "{svg}"
        );
        assert_eq!(svg, qr_svg(data).unwrap());
        assert_ne!(svg, qr_svg("2@another code").unwrap());
    }
}
