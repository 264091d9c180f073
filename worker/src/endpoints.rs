//! The worker's own subjects: `dispatch`, `stop` and `query`, served by the owning server.
//!
//! Every request is answered with the `Reply<T>` envelope. A request that cannot be decoded gets
//! a `BAD_REQUEST` (or `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_VERSION`) reply and changes nothing.

use std::sync::Arc;

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use rota_shared::message::{DispatchAck, DispatchRequest, QueryRequest, StopAck, StopRequest};
use rota_shared::{ErrorBody, ErrorCode, PROTOCOL_HEADER, PROTOCOL_VERSION, Reply, Subjects};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::now_ms;
use crate::instances::{self, Admission, Gate, StopCause};
use crate::tracker;

/// Serves the three subscriptions until they end (when the connection is drained).
pub(crate) async fn serve(agent: Arc<Agent>, subscriptions: Vec<Subscriber>) {
    let mut requests = futures::stream::select_all(subscriptions);
    while let Some(msg) = requests.next().await {
        handle(&agent, msg).await;
    }
    debug!("worker subscriptions ended");
}

/// Refuses a message sent with a protocol version this worker does not speak. A message
/// without the header is taken to be of the current version.
fn check_version(msg: &Message) -> Result<(), ErrorBody> {
    let Some(value) = msg.headers.as_ref().and_then(|h| h.get(PROTOCOL_HEADER)) else {
        return Ok(());
    };
    match value.as_str().trim().parse::<u32>() {
        Ok(PROTOCOL_VERSION) => Ok(()),
        _ => Err(ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {:?} is not supported; this worker speaks {PROTOCOL_VERSION}",
                value.as_str()
            ),
        )),
    }
}

fn decode<T: DeserializeOwned>(msg: &Message) -> Result<T, ErrorBody> {
    check_version(msg)?;
    rota_shared::envelope::decode(&msg.payload)
}

fn error_reply(error: ErrorBody) -> Vec<u8> {
    Reply::<()>::err(error).to_bytes()
}

async fn respond(agent: &Agent, msg: &Message, payload: Vec<u8>) {
    match &msg.reply {
        Some(reply) => agent.link.respond(reply.clone(), payload).await,
        None => debug!(subject = %msg.subject, "request without a reply subject; no answer sent"),
    }
}

async fn handle(agent: &Arc<Agent>, msg: Message) {
    match Subjects::endpoint_of(&msg.subject) {
        "dispatch" => dispatch(agent, &msg).await,
        "stop" => {
            let payload = match decode::<StopRequest>(&msg) {
                Ok(req) => {
                    let was_running = agent.instances.stop(req.instance_id, StopCause::Stop);
                    info!(instance = req.instance_id, was_running, "stop requested");
                    Reply::ok(StopAck { was_running }).to_bytes()
                }
                Err(e) => error_reply(e),
            };
            respond(agent, &msg, payload).await;
        }
        "query" => {
            let payload = match decode::<QueryRequest>(&msg) {
                Ok(req) => match agent.instances.query(req.instance_id) {
                    Some(runtime) => Reply::ok(runtime).to_bytes(),
                    None => error_reply(ErrorBody::not_found(format!(
                        "instance {} is not running on worker {}",
                        req.instance_id, agent.worker_id
                    ))),
                },
                Err(e) => error_reply(e),
            };
            respond(agent, &msg, payload).await;
        }
        other => {
            let error = ErrorBody::bad_request(format!("unknown worker endpoint {other:?}"));
            respond(agent, &msg, error_reply(error)).await;
        }
    }
}

/// Accepts or refuses a dispatch. An accepted one is acknowledged before its tracker starts,
/// so that the server hears "accepted" before the first RUNNING report.
async fn dispatch(agent: &Arc<Agent>, msg: &Message) {
    let req = match decode::<DispatchRequest>(msg) {
        Ok(req) => req,
        Err(e) => {
            warn!("malformed dispatch: {e}");
            respond(agent, msg, error_reply(e)).await;
            return;
        }
    };
    if req.server_id != agent.link.owner().server_id {
        // Another server believes it owns the app: discovery will tell who does.
        agent.link.trigger_reacquire();
    }
    let processor = agent.registry.get(&req.processor);
    let gate = Gate {
        accepting: agent.accepting(),
        processor_known: processor.is_some(),
        capacity: agent.config.capacity,
    };
    let now = now_ms();
    match (agent.instances.admit(&req, &gate, now), processor) {
        (Admission::Duplicate, _) => {
            debug!(
                instance = req.instance_id,
                attempt = req.attempt,
                "repeated dispatch ignored"
            );
            respond(
                agent,
                msg,
                Reply::ok(DispatchAck { accepted: false }).to_bytes(),
            )
            .await;
        }
        (Admission::Rejected(reason), _) => {
            if instances::expired(&req, now) {
                // Said loudly, because a worker whose clock runs ahead of the servers' would
                // refuse every dispatch this way.
                warn!(
                    instance = req.instance_id,
                    attempt = req.attempt,
                    late_ms = now - req.deadline_ms.unwrap_or(now),
                    "dispatch arrived after its deadline; not running it (if this repeats, \
                     check the clocks of worker and server)"
                );
            } else {
                info!(instance = req.instance_id, "dispatch rejected: {reason}");
            }
            let error = ErrorBody::new(ErrorCode::Rejected, reason);
            respond(agent, msg, error_reply(error)).await;
        }
        (Admission::Accepted(state), Some(processor)) => {
            respond(
                agent,
                msg,
                Reply::ok(DispatchAck { accepted: true }).to_bytes(),
            )
            .await;
            let task = tracker::run(Arc::clone(agent), req, Arc::clone(&state), processor);
            let handle = agent.trackers.spawn(task);
            state.set_tracker(handle.abort_handle());
        }
        (Admission::Accepted(state), None) => {
            // Admission only accepts known processors; should that ever change, the slot is
            // given back rather than leaked.
            agent.instances.remove(state.instance_id, state.attempt);
            let error = ErrorBody::internal("processor vanished");
            respond(agent, msg, error_reply(error)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    fn message(headers: Option<HeaderMap>, payload: &str) -> Message {
        Message {
            subject: "rota.wrk.w1.stop".into(),
            reply: Some("_INBOX.x".into()),
            payload: payload.to_owned().into(),
            headers,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn requests_are_decoded_with_version_check() {
        let ok: StopRequest = decode(&message(None, r#"{"instance_id":5}"#)).unwrap();
        assert_eq!(ok.instance_id, 5);
        let e = decode::<StopRequest>(&message(None, "{oops")).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let mut current = HeaderMap::new();
        current.insert(PROTOCOL_HEADER, "1");
        assert!(decode::<StopRequest>(&message(Some(current), r#"{"instance_id":5}"#)).is_ok());
        let mut future = HeaderMap::new();
        future.insert(PROTOCOL_HEADER, "99");
        let e = decode::<StopRequest>(&message(Some(future), r#"{"instance_id":5}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    }
}
