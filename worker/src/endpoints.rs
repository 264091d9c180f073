//! The worker's own subjects: `dispatch`, `stop` and `query`, sent by the app's servers.
//!
//! Every request must be sealed with this worker's key by a server of the deployment, and be
//! new (a copy of one already taken is refused); only then is it decoded and acted on. A request
//! that does not verify is answered `UNAUTHORIZED` and changes nothing; one that cannot be
//! decoded gets `BAD_REQUEST` (or `PAYLOAD_TOO_LARGE`, `UNSUPPORTED_VERSION`). Answers are
//! sealed with the worker's key, so the server knows the worker itself answered.

use std::sync::Arc;

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use rota_shared::limits::Limited;
use rota_shared::message::{DispatchAck, DispatchRequest, QueryRequest, StopAck, StopRequest};
use rota_shared::subject::WorkerEndpoint;
use rota_shared::{ErrorBody, ErrorCode};
use rota_transport::{Incoming, Key, Seal, decode_message};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::now_ms;
use crate::instances::{self, Admission, Gate, StopCause};
use crate::tracker;

/// Serves the three subscriptions until they end (when the connection is drained).
pub(crate) async fn serve(agent: Arc<Agent>, subscriptions: Vec<Subscriber>) {
    let mut requests = futures::stream::select_all(subscriptions);
    while let Some(msg) = requests.next().await {
        handle(&agent, Incoming::Plain(msg)).await;
    }
    debug!("worker subscriptions ended");
}

/// Verifies a server's message: sealed with this worker's key, and new.
fn verify(agent: &Agent, msg: &Message) -> Result<(Seal, Key), ErrorBody> {
    let (seal, key) = agent.link.verify(msg)?;
    agent
        .replay
        .check(&seal.sender, seal.stamp, now_ms())
        .map_err(|e| ErrorBody::unauthorized(e.to_string()))?;
    Ok((seal, key))
}

async fn respond<T: Serialize>(
    agent: &Agent,
    msg: &Incoming,
    result: Result<T, ErrorBody>,
    key: Option<&Key>,
) {
    if msg.message().reply.is_none() {
        if let Err(e) = &result {
            debug!(subject = %msg.subject(), "refused a message without a reply subject: {e}");
        }
        return;
    }
    agent.link.respond(msg, result, key).await;
}

async fn handle(agent: &Arc<Agent>, msg: Incoming) {
    let endpoint = agent
        .link
        .subjects()
        .parse_to_worker(msg.subject())
        .map(|(_, _, endpoint)| endpoint);
    let (seal, key) = match verify(agent, msg.message()) {
        Ok(verified) => verified,
        Err(e) => {
            agent.metrics.refused("unauthenticated");
            warn!(subject = %msg.subject(), "refused a message: {e}");
            return respond::<()>(agent, &msg, Err(e), None).await;
        }
    };
    let key = Some(&key);
    match endpoint {
        Some(WorkerEndpoint::Dispatch) => dispatch(agent, &msg, &seal, key).await,
        Some(WorkerEndpoint::Stop) => {
            let result = decode_message::<StopRequest>(msg.message()).map(|req| {
                let was_running = agent.instances.stop(req.instance_id, StopCause::Stop);
                info!(instance = req.instance_id, was_running, server = %seal.sender, "stop requested");
                StopAck { was_running }
            });
            respond(agent, &msg, result, key).await;
        }
        Some(WorkerEndpoint::Query) => {
            let result = decode_message::<QueryRequest>(msg.message()).and_then(|req| {
                agent.instances.query(req.instance_id).ok_or_else(|| {
                    ErrorBody::not_found(format!(
                        "instance {} is not running on worker {}",
                        req.instance_id, agent.worker_id
                    ))
                })
            });
            respond(agent, &msg, result, key).await;
        }
        None => {
            let error =
                ErrorBody::bad_request(format!("unknown worker endpoint {}", msg.subject()));
            respond::<()>(agent, &msg, Err(error), key).await;
        }
    }
}

/// Accepts or refuses a dispatch. An accepted one is acknowledged before its tracker starts,
/// so that the server hears "accepted" before the first RUNNING report.
async fn dispatch(agent: &Arc<Agent>, msg: &Incoming, seal: &Seal, key: Option<&Key>) {
    let req = match decode_message::<DispatchRequest>(msg.message())
        .and_then(|r| r.check_limits().map(|()| r))
        .and_then(|r| {
            if r.server_id == seal.sender {
                Ok(r)
            } else {
                Err(ErrorBody::unauthorized(format!(
                    "the dispatch is sealed by server {} but names server {}",
                    seal.sender, r.server_id
                )))
            }
        }) {
        Ok(req) => req,
        Err(e) => {
            warn!("dispatch refused: {e}");
            respond::<()>(agent, msg, Err(e), key).await;
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
        max_held: agent.config.max_held(),
    };
    let now = now_ms();
    match (agent.instances.admit(&req, &gate, now), processor) {
        (Admission::Duplicate, _) => {
            debug!(
                instance = req.instance_id,
                attempt = req.attempt,
                "repeated dispatch ignored"
            );
            respond(agent, msg, Ok(DispatchAck { accepted: false }), key).await;
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
            agent.metrics.dispatch(false);
            let error = ErrorBody::new(ErrorCode::Rejected, reason);
            respond::<()>(agent, msg, Err(error), key).await;
        }
        (Admission::Accepted(state), Some(processor)) => {
            agent.metrics.dispatch(true);
            respond(agent, msg, Ok(DispatchAck { accepted: true }), key).await;
            let task = tracker::run(Arc::clone(agent), req, Arc::clone(&state), processor);
            let handle = agent.trackers.spawn(task);
            state.set_tracker(handle.abort_handle());
        }
        (Admission::Accepted(state), None) => {
            // Admission only accepts known processors; should that ever change, the slot is
            // given back rather than leaked.
            agent.instances.remove(state.instance_id, state.attempt);
            let error = ErrorBody::internal("processor vanished");
            respond::<()>(agent, msg, Err(error), key).await;
        }
    }
}
