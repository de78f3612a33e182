//! The gRPC API (tonic): `nexus.v1.AgentApi` from proto/nexus/v1/api.proto.
//! `authorization: Bearer <key>` metadata authenticates each call.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use nexus_proto::v1::{
    OutboundMessage, SendAccepted, SendEvent, SendRequest, SendResponse, send_event, turn_progress,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::ApiKeys,
    error::ApiError,
    proto::agent_api_server::AgentApi,
    turns::{Ask, TurnEvent, Turns},
};

pub struct AgentApiService {
    pub turns: Arc<Turns>,
    pub keys: Arc<ApiKeys>,
}

impl AgentApiService {
    fn start_ask(&self, request: Request<SendRequest>) -> Result<Ask, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let user = self.keys.authenticate(header).map_err(ApiError::from)?;
        let req = request.into_inner();
        Ok(Ask {
            user,
            session: Some(req.session),
            text: req.text,
            idempotency_key: Some(req.idempotency_key),
        })
    }
}

fn response(reply: OutboundMessage, turn_id: &str, session: &str) -> SendResponse {
    SendResponse {
        reply: reply.text,
        session: session.to_owned(),
        turn_id: turn_id.to_owned(),
        kind: reply.kind,
        model: reply.model,
        input_tokens: reply.input_tokens,
        output_tokens: reply.output_tokens,
    }
}

fn event(kind: send_event::Kind) -> Result<SendEvent, Status> {
    Ok(SendEvent { kind: Some(kind) })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SendEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let ask = self.start_ask(request)?;
        let pending = self.turns.start(ask).await?;
        let (turn_id, session) = (pending.turn_id.clone(), pending.session.clone());
        let reply = pending.reply().await?;
        Ok(Response::new(response(reply, &turn_id, &session)))
    }

    type SendStreamStream = EventStream;

    async fn send_stream(
        &self,
        request: Request<SendRequest>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let ask = self.start_ask(request)?;
        let pending = self.turns.start(ask).await?;
        let (turn_id, session) = (pending.turn_id.clone(), pending.session.clone());
        let accepted = event(send_event::Kind::Accepted(SendAccepted {
            turn_id: turn_id.clone(),
            session: session.clone(),
        }));
        let events = pending.stream(vec![accepted], move |e| match e {
            Ok(TurnEvent::Progress(kind)) => {
                let kind = match kind {
                    turn_progress::Kind::TextDelta(d) => send_event::Kind::TextDelta(d),
                    turn_progress::Kind::Tool(t) => send_event::Kind::Tool(t),
                    turn_progress::Kind::LlmCall(n) => send_event::Kind::LlmCall(n),
                };
                (vec![event(kind)], false)
            }
            Ok(TurnEvent::Reply(reply)) => (
                vec![event(send_event::Kind::Reply(response(
                    reply, &turn_id, &session,
                )))],
                true,
            ),
            Err(e) => (vec![Err(Status::from(e))], true),
        });
        Ok(Response::new(Box::pin(events)))
    }
}
