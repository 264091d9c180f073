//! Calls from this server to workers: dispatch, stop and query, each sealed with the worker's
//! key (so that the worker acts on nothing a server of its deployment did not send), each
//! answer checked to be sealed by the worker.

use std::time::Duration;

use rota_shared::message::{
    DispatchAck, DispatchRequest, InstanceRuntime, QueryRequest, StopAck, StopRequest,
};
use rota_shared::subject::WorkerEndpoint;
use rota_transport::RequestError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::Core;

/// The subject and credential for a worker of `app_id`; an app without keys has no workers.
fn address(
    core: &Core,
    app_id: i64,
    worker_id: &str,
    endpoint: WorkerEndpoint,
) -> Result<(String, rota_transport::Credential), RequestError> {
    let (app, credential) = core
        .gate
        .worker_credential(app_id, worker_id)
        .ok_or_else(|| {
            RequestError::transport(
                worker_id,
                format!("app {app_id} has no key to reach its workers with"),
            )
        })?;
    Ok((
        core.subjects.to_worker(&app, worker_id, endpoint),
        credential,
    ))
}

async fn call<Req: Serialize, Resp: DeserializeOwned>(
    core: &Core,
    app_id: i64,
    worker_id: &str,
    endpoint: WorkerEndpoint,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, RequestError> {
    let (subject, credential) = address(core, app_id, worker_id, endpoint)?;
    core.transport
        .request(&subject, request, timeout, Some(&credential))
        .await
}

pub async fn dispatch(
    core: &Core,
    worker_id: &str,
    request: &DispatchRequest,
) -> Result<DispatchAck, RequestError> {
    let timeout = core.config.dispatch_timeout;
    call(
        core,
        request.app_id,
        worker_id,
        WorkerEndpoint::Dispatch,
        request,
        timeout,
    )
    .await
}

/// Asks a worker to stop an instance. Best effort: a worker that is gone has nothing to stop.
pub async fn stop(
    core: &Core,
    app_id: i64,
    worker_id: &str,
    instance_id: i64,
) -> Result<StopAck, RequestError> {
    let timeout = core.config.dispatch_timeout;
    let request = StopRequest { instance_id };
    call(
        core,
        app_id,
        worker_id,
        WorkerEndpoint::Stop,
        &request,
        timeout,
    )
    .await
}

/// Tells a worker to stop an instance without waiting for an answer: for paths that must not be
/// held up by a worker that is frozen or gone (its reports are fenced off either way).
pub async fn publish_stop(core: &Core, app_id: i64, worker_id: &str, instance_id: i64) {
    let Ok((subject, credential)) = address(core, app_id, worker_id, WorkerEndpoint::Stop) else {
        return;
    };
    let request = StopRequest { instance_id };
    if let Err(e) = core
        .transport
        .publish(&subject, &request, Some(&credential), None)
        .await
    {
        tracing::debug!(
            instance = instance_id,
            worker = worker_id,
            "stop not sent: {e}"
        );
    }
}

/// Asks a worker what it knows of an instance it runs, waiting at most `timeout`.
pub async fn query(
    core: &Core,
    app_id: i64,
    worker_id: &str,
    instance_id: i64,
    timeout: Duration,
) -> Result<InstanceRuntime, RequestError> {
    let request = QueryRequest { instance_id };
    call(
        core,
        app_id,
        worker_id,
        WorkerEndpoint::Query,
        &request,
        timeout,
    )
    .await
}
