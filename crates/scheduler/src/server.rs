//! The scheduler's NATS service: the operators' endpoints `N.scheduler.<op>`
//! (add, list, remove, pause, resume) and the `cron` tool, both on one service
//! registration (so `nats micro ls` and `nexus status` show every replica), in
//! the service's queue group; `nexus_tools::serve_with_ops` bounds the requests
//! in flight and drains them on shutdown.
//!
//! It must never decide what an operation means (`jobs` does), and is the one
//! place where job errors become service error codes.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use nexus_bus::{Bus, TraceContext, async_nats::service, reply_bytes, scheduler_op};
use nexus_common::config::ToolsConfig;
use nexus_proto::v1::{
    AddJobRequest, AddJobResponse, JobActionRequest, JobActionResponse, ListJobsRequest,
    ListJobsResponse, job::When,
};
use nexus_tools::{OpLimits, ServeOptions, ToolServer, serve_with_ops, typed};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    job::Origin,
    jobs::{Actor, JobError, Jobs, NewJob},
    tool::{self, CronTool},
};

/// Name in the NATS service API (`nats micro ls`).
pub const SERVICE_NAME: &str = "scheduler";
const DESCRIPTION: &str = "Persistent cron, interval and one-shot jobs, fired as inbound messages";
/// Operator requests handled at once.
const MAX_IN_FLIGHT: usize = 16;
/// How long requests in flight may take to answer after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The operations, by the last token of their subject.
const OPS: [&str; 5] = [
    scheduler_op::ADD,
    scheduler_op::LIST,
    scheduler_op::REMOVE,
    scheduler_op::PAUSE,
    scheduler_op::RESUME,
];

/// Serves the operations and the `cron` tool until `shutdown`.
pub async fn serve(
    bus: &Bus,
    jobs: Jobs,
    tools: &ToolsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = bus
        .register_service(SERVICE_NAME, DESCRIPTION)
        .await
        .context("cannot register with the NATS service API")?;
    let tool_server = ToolServer::new(
        bus.clone(),
        service,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        ServeOptions {
            max_output_bytes: tools.max_output_bytes,
            ..ServeOptions::default()
        },
    );
    if tools.disabled.iter().any(|d| d == tool::NAME) {
        tracing::info!("the cron tool is disabled by [tools] disabled");
    } else {
        tool_server.add(typed(CronTool::new(jobs.clone()))).await?;
    }
    tracing::info!(
        namespace = %bus.subjects().namespace(),
        subjects = %bus.subjects().scheduler("*"),
        tools = ?tool_server.names(),
        "scheduler ready"
    );
    let ops = OPS
        .into_iter()
        .map(|op| (op, op, bus.subjects().scheduler(op)))
        .collect();
    let limits = OpLimits {
        max_in_flight: MAX_IN_FLIGHT,
        grace: SHUTDOWN_GRACE,
    };
    serve_with_ops(tool_server, ops, limits, shutdown, move |op, request| {
        let jobs = jobs.clone();
        async move { answer(&jobs, op, request).await }
    })
    .await
}

async fn answer(jobs: &Jobs, op: &'static str, request: service::Request) {
    let trace = TraceContext::from_headers(request.message.headers.as_ref());
    let span = tracing::info_span!(
        "scheduler_op",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        op,
        trace_id = trace.trace_id()
    );
    nexus_common::telemetry::name_span(&span, "server", || format!("scheduler {op}"));
    let span = trace.span(span);
    async {
        let reply = handle(jobs, op, &request.message.payload).await;
        if let Err(error) = request.respond(reply).await {
            tracing::warn!(%error, "reply not sent; the caller will time out");
        }
    }
    .instrument(span)
    .await;
}

/// Runs one operation on its request bytes.
pub async fn handle(jobs: &Jobs, op: &str, payload: &[u8]) -> Result<Bytes, service::error::Error> {
    match op {
        scheduler_op::ADD => reply(op, add(jobs, payload).await),
        scheduler_op::LIST => reply(op, list(jobs, payload).await),
        scheduler_op::REMOVE | scheduler_op::PAUSE | scheduler_op::RESUME => {
            reply(op, action(jobs, op, payload).await)
        }
        _ => reply::<JobActionResponse>(
            op,
            Err(JobError::Invalid(format!("unknown operation {op}"))),
        ),
    }
}

fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, JobError> {
    M::decode(payload).map_err(|e| JobError::Invalid(format!("cannot decode the request: {e}")))
}

async fn add(jobs: &Jobs, payload: &[u8]) -> Result<AddJobResponse, JobError> {
    let job = decode::<AddJobRequest>(payload)?.job.unwrap_or_default();
    let missed = job.missed().into();
    let (mut cron_expr, mut every_seconds, mut at, mut at_ms) = (None, None, None, None);
    match job.when {
        Some(When::Cron(c)) => cron_expr = Some(c),
        Some(When::EverySeconds(s)) => every_seconds = Some(s),
        Some(When::At(t)) => at = Some(t),
        Some(When::AtMs(ms)) => at_ms = Some(ms),
        None => {}
    }
    let origin = job.origin.map(|o| Origin {
        channel: o.channel,
        chat_id: o.chat_id,
        thread_id: o.thread_id,
    });
    let added = jobs
        .add(NewJob {
            owner: job.owner_user_id,
            origin,
            message: job.message,
            cron_expr,
            every_seconds,
            at,
            at_ms,
            tz: Some(job.timezone),
            missed: Some(missed),
        })
        .await?;
    Ok(AddJobResponse {
        job: Some(added.to_proto()),
    })
}

async fn list(jobs: &Jobs, payload: &[u8]) -> Result<ListJobsResponse, JobError> {
    let req = decode::<ListJobsRequest>(payload)?;
    let (list, counts) = jobs
        .list(&Actor::Admin, Some(&req.owner_user_id), req.limit)
        .await?;
    Ok(ListJobsResponse {
        jobs: list.iter().map(|j| j.to_proto()).collect(),
        total: counts.total,
        active: counts.active,
        paused: counts.paused,
    })
}

async fn action(jobs: &Jobs, op: &str, payload: &[u8]) -> Result<JobActionResponse, JobError> {
    let req = decode::<JobActionRequest>(payload)?;
    // An operator acting for one user narrows the request to that user's jobs.
    let actor = if req.owner_user_id.is_empty() {
        Actor::Admin
    } else {
        Actor::User(req.owner_user_id)
    };
    let job = match op {
        scheduler_op::REMOVE => jobs.remove(&actor, &req.id).await?,
        scheduler_op::PAUSE => jobs.pause(&actor, &req.id).await?,
        _ => jobs.resume(&actor, &req.id).await?,
    };
    Ok(JobActionResponse {
        job: Some(job.to_proto()),
    })
}

/// The one mapping from job errors to service error codes.
fn reply<M: Message>(
    op: &str,
    result: Result<M, JobError>,
) -> Result<Bytes, service::error::Error> {
    reply_bytes(result.map_err(|error| {
        let code = match &error {
            JobError::Invalid(_) | JobError::Limit(_) => 400,
            JobError::NotFound(_) => 404,
            JobError::Store(_) => 500,
        };
        if code >= 500 {
            tracing::error!(op, code, %error, "scheduler operation failed");
        } else {
            tracing::info!(op, code, %error, "scheduler request refused");
        }
        let text: String = error
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(400)
            .collect();
        (code, text)
    }))
}
