//! The worker's own subjects: `dispatch`, `stop`, `query` and `task_list`, sent by the app's
//! servers, and `task` and `task_report`, which a distributed instance's master and its task
//! workers send each other.
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
use crate::master::Event;
use crate::{tasks, tracker};
use rota_shared::container::{ContainerCall, ContainerCallAck};
use rota_shared::task::{
    MAX_TASK_PAGE, TaskBatchAck, TaskCall, TaskListRequest, TaskReport, TaskReportAck,
};

/// Serves the three subscriptions until they end (when the connection is drained).
pub(crate) async fn serve(agent: Arc<Agent>, subscriptions: Vec<Subscriber>) {
    let mut requests = futures::stream::select_all(subscriptions);
    while let Some(msg) = requests.next().await {
        handle(&agent, Incoming::Plain(msg)).await;
    }
    debug!("worker subscriptions ended");
}

/// Verifies a message: sealed with this worker's key, and new from its sender (servers and
/// other workers each have their own replay state).
fn verify(
    agent: &Agent,
    msg: &Message,
    endpoint: Option<WorkerEndpoint>,
) -> Result<(Seal, Key), ErrorBody> {
    let (seal, key) = agent.link.verify(msg)?;
    let replay = if endpoint.is_some_and(WorkerEndpoint::between_workers) {
        &agent.peer_replay
    } else {
        &agent.replay
    };
    replay
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
    let (seal, key) = match verify(agent, msg.message(), endpoint) {
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
        Some(WorkerEndpoint::Task) => task_call(agent, &msg, &seal, key).await,
        Some(WorkerEndpoint::TaskReport) => task_report(agent, msg, &seal, key.cloned()).await,
        Some(WorkerEndpoint::TaskList) => task_list(agent, msg, key.cloned()).await,
        Some(WorkerEndpoint::Container) => container_call(agent, msg, key.cloned()).await,
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

/// A master's tasks for this worker, or its word that an attempt is over. The seal must be
/// the master's own (a worker of the app: it holds the app key), and the batch must name it.
async fn task_call(agent: &Arc<Agent>, msg: &Incoming, seal: &Seal, key: Option<&Key>) {
    let call = decode_message::<TaskCall>(msg.message())
        .and_then(|c| c.check_limits().map(|()| c))
        .and_then(|c| {
            let master = match &c {
                TaskCall::Run(batch) => &batch.master,
                TaskCall::Stop(stop) => &stop.master,
            };
            if *master == seal.sender {
                Ok(c)
            } else {
                Err(ErrorBody::unauthorized(format!(
                    "the task call is sealed by {} but names master {master}",
                    seal.sender
                )))
            }
        });
    let result = match call {
        Ok(TaskCall::Run(batch)) => match agent.registry.get(&batch.processor) {
            _ if !agent.accepting() => Err(ErrorBody::new(
                ErrorCode::Rejected,
                "the worker is shutting down",
            )),
            None => Err(ErrorBody::new(
                ErrorCode::Rejected,
                format!(
                    "worker {} has no processor {:?}",
                    agent.worker_id, batch.processor
                ),
            )),
            Some(processor) => {
                let map = batch.map;
                Ok(TaskBatchAck {
                    accepted: tasks::accept(agent, *batch, processor, map),
                })
            }
        },
        Ok(TaskCall::Stop(stop)) => {
            let had = agent.task_runs.stop(stop.instance_id, stop.attempt);
            debug!(
                instance = stop.instance_id,
                had, "the master ended the attempt"
            );
            Ok(TaskBatchAck { accepted: 0 })
        }
        Err(e) => {
            warn!("task call refused: {e}");
            Err(e)
        }
    };
    respond(agent, msg, result, key).await;
}

/// A task worker's report to this worker, the master of the instance. The seal must be the
/// reporting worker's own, and the report must name it; the master checks each result
/// against the task it gave that worker.
async fn task_report(agent: &Arc<Agent>, msg: Incoming, seal: &Seal, key: Option<Key>) {
    let report = decode_message::<TaskReport>(msg.message())
        .and_then(|r| r.check_limits().map(|()| r))
        .and_then(|r| {
            if r.worker_id == seal.sender {
                Ok(r)
            } else {
                Err(ErrorBody::unauthorized(format!(
                    "the task report is sealed by {} but names worker {}",
                    seal.sender, r.worker_id
                )))
            }
        });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            warn!("task report refused: {e}");
            return respond::<()>(agent, &msg, Err(e), key.as_ref()).await;
        }
    };
    let Some(inbox) = agent.masters.get(report.instance_id, report.attempt) else {
        // The attempt is over here (or never was): the task worker drops its tasks.
        let ack = TaskReportAck { stop: true };
        return respond(agent, &msg, Ok(ack), key.as_ref()).await;
    };
    // The master may take a moment (its task store is on disk): the worker's other
    // endpoints do not wait for it.
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let result = if inbox.send(Event::Report { report, reply }).await {
            answer.await.unwrap_or(Ok(TaskReportAck { stop: true }))
        } else {
            Ok(TaskReportAck { stop: true })
        };
        respond(&agent, &msg, result, key.as_ref()).await;
    });
}

/// A page of the tasks of an instance this worker is the master of.
async fn task_list(agent: &Arc<Agent>, msg: Incoming, key: Option<Key>) {
    let req = match decode_message::<TaskListRequest>(msg.message()) {
        Ok(req) => req,
        Err(e) => return respond::<()>(agent, &msg, Err(e), key.as_ref()).await,
    };
    let Some(inbox) = agent.masters.of_instance(req.instance_id) else {
        let e = ErrorBody::not_found(format!(
            "worker {} is not the master of instance {}",
            agent.worker_id, req.instance_id
        ));
        return respond::<()>(agent, &msg, Err(e), key.as_ref()).await;
    };
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let limit = req.limit.clamp(1, MAX_TASK_PAGE) as usize;
        let event = Event::List {
            after: req.after,
            limit,
            reply,
        };
        let ended = || ErrorBody::not_found(format!("instance {} ended", req.instance_id));
        let result = if inbox.send(event).await {
            answer.await.unwrap_or_else(|_| Err(ended()))
        } else {
            Err(ended())
        };
        respond(&agent, &msg, result, key.as_ref()).await;
    });
}

/// A server asks this worker to fetch a container bundle now (`container deploy`), or to drop
/// one (`container destroy`). The fetch runs beside the endpoints, which do not wait for it.
async fn container_call(agent: &Arc<Agent>, msg: Incoming, key: Option<Key>) {
    let call = match decode_message::<ContainerCall>(msg.message()) {
        Ok(call) => call,
        Err(e) => return respond::<()>(agent, &msg, Err(e), key.as_ref()).await,
    };
    let Some(containers) = agent.containers.clone() else {
        let e = ErrorBody::new(
            ErrorCode::Rejected,
            format!(
                "worker {} does not run containers (start it with --allow-containers)",
                agent.worker_id
            ),
        );
        return respond::<()>(agent, &msg, Err(e), key.as_ref()).await;
    };
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        let result = match call {
            ContainerCall::Deploy(info) => containers
                .ensure(info)
                .await
                .map(|ready| ContainerCallAck {
                    downloaded: ready.downloaded,
                })
                .map_err(|e| ErrorBody::new(ErrorCode::Rejected, e.to_string())),
            ContainerCall::Destroy { name, version } => {
                let removed = containers.remove(&name, &version);
                debug!(%name, %version, removed, "container destroyed");
                Ok(ContainerCallAck { downloaded: false })
            }
        };
        respond(&agent, &msg, result, key.as_ref()).await;
    });
}
