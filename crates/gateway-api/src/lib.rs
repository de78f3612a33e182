//! gateway-api: the programmatic channel (`api`). Programs send a message and get
//! the agent's reply over HTTP (axum, `[api] listen`) or gRPC (tonic, `[api]
//! grpc_listen`), streamed or whole, or talk to it as an OpenAI-compatible server.
//!
//! Layout: [`auth`] (API keys), [`admin`] (the admin console under `/admin`),
//! [`settings`], [`turns`] (start a turn, route its progress and reply back),
//! [`http`] and [`openai`] (HTTP routes), [`grpc`]
//! (the `AgentApi` service generated into [`proto`]), [`error`] (the one mapping
//! of failures to HTTP statuses and gRPC codes).
//!
//! # Who may talk
//! `[api.keys]` maps each API key to a user id; that user id becomes the sender
//! (`Sender.id` and `Sender.user_id`) and prefixes the chat id (`<user>:<session>`),
//! so one user cannot read another's session. No keys configured: every request is
//! refused (401 / UNAUTHENTICATED with a message saying so). The keys are the
//! channel's allow-list; `[channels.api] allow_from` is not consulted.
//! The admin console ([`admin`]) has keys of its own, `[api] admin_keys`; without
//! them `/admin` is not served at all.
//!
//! # Replies with several replicas
//! A request waits in the replica that received it, but agent-core publishes the
//! reply once on `N.outbound.api`, and `Gateway::deliver`'s durable consumer is
//! shared by all replicas, so it could hand the reply to the wrong one. Replies
//! are therefore not routed through the durable consumer at all:
//! - every replica reads `N.outbound.api` with its own ordered (ephemeral)
//!   JetStream consumer starting at new messages, and gives each reply to the
//!   request waiting for its `in_reply_to` in this process, if any ([`turns`]).
//!   Being JetStream, it survives a reconnect without missing a reply, unlike a
//!   core NATS subscription;
//! - `Gateway::deliver` still runs with a send that does nothing, so the durable
//!   consumer acks every reply (waited for or not) and nothing piles up in `N_OUTBOUND`;
//! - a reply nobody waits for any more (client gone, timeout, replica restarted)
//!   is not lost: memory-svc stores it with the turn, and `GET /v1/messages/{turn_id}`
//!   returns it to its owner later.
//!
//! We chose this over a reply inbox per replica because agent-core does not copy
//! inbound metadata to the reply, and because it needs no change outside this crate.
//! Each replica sees every API reply; that is one small protobuf per turn.
//!
//! This crate must never log an API key or let a user reach another user's session.

pub mod admin;
pub mod auth;
pub mod error;
pub mod grpc;
pub mod http;
pub mod openai;
pub mod settings;
pub mod turns;

/// The `AgentApi` service (server and client), generated from proto/nexus/v1/api.proto.
/// Its messages are `nexus_proto::v1`'s.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/nexus.v1.rs"));
}

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use nexus_common::{Config, shutdown::CancellationToken};
use nexus_gateway::Gateway;

use crate::{
    auth::ApiKeys,
    grpc::AgentApiService,
    http::AppState,
    proto::agent_api_server::AgentApiServer,
    settings::ApiSettings,
    turns::{Feeds, Turns},
};

/// The channel name of this gateway.
pub const CHANNEL: &str = nexus_common::channel_settings::api::CHANNEL;

/// Runs the gateway until `shutdown`: listeners, reply routing and reply acking.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = ApiSettings::from_config(&config)?;
    let keys = Arc::new(ApiKeys::new(&config.api.keys)?);
    if keys.is_empty() {
        tracing::warn!("no [api.keys] configured: every request will be refused");
    }
    let gateway = Arc::new(Gateway::connect(&config, CHANNEL).await?);
    let http_listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([api] listen)", settings.listen))?;
    let grpc_listener = tokio::net::TcpListener::bind(&settings.grpc_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ([api] grpc_listen)",
                settings.grpc_listen
            )
        })?;
    // Before the listeners serve: no reply can be published before someone listens.
    let feeds = Feeds::open(gateway.bus(), gateway.channel()).await?;
    let turns = Arc::new(Turns::new(gateway.clone(), settings.reply_timeout));
    tracing::info!(
        http = %settings.listen,
        grpc = %settings.grpc_listen,
        users = %keys_summary(&keys),
        "gateway-api ready"
    );

    // `stop` ends the listeners; the feeds run until they are done, so requests
    // still waiting during the grace period get their replies.
    let stop = shutdown.child_token();
    let feeds_stop = CancellationToken::new();
    let routing = tokio::spawn({
        let turns = turns.clone();
        let feeds_stop = feeds_stop.clone();
        async move { turns.route(feeds, feeds_stop).await }
    });
    let delivery = async {
        // Acks every reply; routing to waiting requests happens in `turns`.
        let result = gateway.deliver(stop.clone(), |_| async { Ok(()) }).await;
        if result.is_err() {
            stop.cancel();
        }
        result
    };

    let state = Arc::new(AppState {
        turns: turns.clone(),
        keys: keys.clone(),
    });
    let mut app = http::router(state, settings.max_body_bytes);
    match admin::router(gateway.bus(), &config, stop.clone())
        .await
        .context("starting the admin console")?
    {
        Some(console) => app = app.merge(console),
        None => tracing::info!("no [api] admin_keys configured: the admin console is off"),
    }
    let grace = settings.shutdown_grace;
    let http_server = async {
        let serve = axum::serve(http_listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future();
        let result = bounded(serve, &stop, grace, "HTTP").await;
        if result.is_err() {
            stop.cancel();
        }
        result.context("HTTP server failed")
    };
    let grpc_server = async {
        let service = AgentApiServer::new(AgentApiService {
            turns: turns.clone(),
            keys: keys.clone(),
        })
        .max_decoding_message_size(settings.max_body_bytes);
        let serve = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener),
                stop.clone().cancelled_owned(),
            );
        let result = bounded(serve, &stop, grace, "gRPC").await;
        if result.is_err() {
            stop.cancel();
        }
        result.context("gRPC server failed")
    };
    let (served_http, served_grpc, delivered) = tokio::join!(http_server, grpc_server, delivery);

    feeds_stop.cancel();
    if let Err(error) = routing.await {
        tracing::warn!(%error, "reply routing task failed");
    }
    drop(turns);
    match Arc::try_unwrap(gateway) {
        Ok(gateway) => gateway.close().await,
        Err(gateway) => gateway.bus().drain().await,
    }
    tracing::info!("gateway-api stopped");
    served_http.and(served_grpc).and(delivered)
}

/// Runs a server future; after `stop`, waits at most `grace` for open requests.
async fn bounded<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    stop: &CancellationToken,
    grace: Duration,
    what: &str,
) -> Result<(), E> {
    tokio::select! {
        r = serve => r,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("{what} requests still open {grace:?} after shutdown; closing them");
            Ok(())
        }
    }
}

fn keys_summary(keys: &ApiKeys) -> &'static str {
    if keys.is_empty() {
        "none (all refused)"
    } else {
        "configured"
    }
}
