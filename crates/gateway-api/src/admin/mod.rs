//! The admin console under `/admin`: server-rendered pages over the same NATS
//! requests and stores the `nexus` CLI uses (service discovery, memory-svc's
//! `usage`, `nexus_gateway::pairing`, `N.scheduler.<op>`, `N_DEADLETTER`, `N.events.>`
//! for the live view), so there is no second source of truth.
//!
//! Never open: without `[api] admin_keys` nothing is mounted (404). Every page but
//! the login form needs a valid session cookie ([`session`]); every change is a
//! POST that carries the session's CSRF token, and the cookie is `SameSite=Strict`.
//! It reads and acts over its own NATS connection ([`nats`]), so in production it
//! has a NATS user of its own rather than widening the public API's.
//!
//! It must never show message bodies (unless an admin asks, on the live view) or a key.

mod channels;
mod live;
pub mod nats;
mod page;
pub mod session;
mod tasks;
mod views;

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use nexus_bus::Bus;
use nexus_common::{Config, shutdown::CancellationToken};
use serde::Deserialize;

use self::{
    page::{Notice, page},
    session::{AdminKeys, COOKIE, SESSION_SECS, Session, cookie},
};

/// What the console's handlers share.
pub struct AdminState {
    pub bus: Bus,
    pub config: Config,
    pub keys: AdminKeys,
    /// Cancelled when gateway-api stops: the live view's streams end with it rather
    /// than hold the HTTP server's graceful shutdown open.
    pub stop: CancellationToken,
}

/// The console's routes, or `None` when no admin key is configured (the console is
/// off). `service` is the gateway's own bus, used when the console has no NATS
/// credentials of its own. `stop` ends the live view's streams.
pub async fn router(
    service: &Bus,
    config: &Config,
    stop: CancellationToken,
) -> anyhow::Result<Option<Router>> {
    let keys = AdminKeys::new(&config.api.admin_keys);
    if keys.is_empty() {
        return Ok(None);
    }
    let bus = nats::connect(config, service).await?;
    let state = Arc::new(AdminState {
        bus,
        config: config.clone(),
        keys,
        stop,
    });
    Ok(Some(
        Router::new()
            .route("/admin", get(|| async { Redirect::to("/admin/services") }))
            .route("/admin/", get(|| async { Redirect::to("/admin/services") }))
            .route("/admin/login", get(login_form).post(login))
            .route("/admin/logout", post(logout))
            .route("/admin/services", get(views::services))
            .route("/admin/channels", get(channels::channels))
            .route(
                "/admin/channels/whatsapp/login",
                post(channels::whatsapp_login),
            )
            .route("/admin/usage", get(views::usage))
            .route("/admin/pairings", get(views::pairings))
            .route("/admin/pairings/approve", post(views::approve))
            .route("/admin/pairings/reject", post(views::reject))
            .route("/admin/jobs", get(views::jobs))
            .route("/admin/jobs/{action}", post(views::job_action))
            .route("/admin/tasks", get(tasks::tasks))
            .route("/admin/tasks/cancel", post(tasks::cancel))
            .route("/admin/deadletters", get(views::dead_letters))
            .route("/admin/live", get(live::live))
            .route("/admin/live.js", get(live::script))
            .route("/admin/live/events", get(live::events))
            .with_state(state),
    ))
}

/// A request with a valid session; without one, the browser is sent to the login form.
pub struct Admin {
    pub session: Session,
    pub csrf: String,
}

impl FromRequestParts<Arc<AdminState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        let now = nexus_common::now_ms() / 1000;
        parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|h| cookie(h, COOKIE))
            .find_map(|value| state.keys.verify(value, now))
            .map(|session| Admin {
                csrf: state.keys.csrf(&session),
                session,
            })
            .ok_or_else(|| Redirect::to("/admin/login").into_response())
    }
}

impl Admin {
    /// The refusal of a form without this session's CSRF token; `None` when it has it.
    pub fn refused(&self, state: &AdminState, csrf: Option<&str>) -> Option<Response> {
        if state.keys.csrf_ok(&self.session, csrf) {
            None
        } else {
            Some(page(
                StatusCode::FORBIDDEN,
                "Refused",
                "",
                Some(&self.csrf),
                &Notice::Failed(
                    "the form did not carry this session's token; reload the page and try again"
                        .into(),
                ),
                "",
            ))
        }
    }
}

fn login_page(status: StatusCode, notice: &Notice) -> Response {
    let body = "<form id=\"login\" method=\"post\" action=\"/admin/login\">\
        <label for=\"key\">Admin key</label>\
        <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required>\
        <p><button id=\"login-submit\" type=\"submit\">Log in</button></p></form>\
        <p class=\"muted\">The key is one of <code>[api] admin_keys</code> \
        (<code>NEXUS__API__ADMIN_KEYS</code>).</p>";
    page(status, "Log in", "", None, notice, body)
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, &Notice::None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
}

/// Sets the session cookie for an admin key; `Secure` when the request came over
/// TLS through a proxy that says so (`X-Forwarded-Proto: https`).
async fn login(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = nexus_common::now_ms() / 1000;
    let Some((_, value)) = state.keys.login(&form.key, now) else {
        tracing::warn!("admin console: a login with a wrong key was refused");
        return login_page(
            StatusCode::UNAUTHORIZED,
            &Notice::Failed("that is not an admin key".into()),
        );
    };
    tracing::info!("admin console: login");
    let secure = if behind_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}"
    );
    with_cookie(Redirect::to("/admin/services").into_response(), &cookie)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

async fn logout(
    State(state): State<Arc<AdminState>>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = admin.refused(&state, form.csrf.as_deref()) {
        return refused;
    }
    let secure = if behind_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    with_cookie(Redirect::to("/admin/login").into_response(), &cookie)
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
