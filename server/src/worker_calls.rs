//! Calls from this server to workers: dispatch, stop, query and task list, each sealed with the worker's
//! key (so that the worker acts on nothing a server of its deployment did not send), each
//! answer checked to be sealed by the worker.

use std::sync::Arc;
use std::time::Duration;

use rota_shared::Subjects;
use rota_shared::message::{
    DispatchAck, DispatchRequest, InstanceRuntime, QueryRequest, StopAck, StopRequest,
};
use rota_shared::subject::WorkerEndpoint;
use rota_shared::task::{TaskInfo, TaskListRequest};
use rota_transport::{RequestError, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::gate::Gate;

/// The one client of workers' endpoints.
#[derive(Clone)]
pub struct WorkerCalls {
    transport: Transport,
    subjects: Subjects,
    gate: Arc<Gate>,
    /// How long a worker has to acknowledge a dispatch or a stop.
    timeout: Duration,
}

impl WorkerCalls {
    pub fn new(
        transport: Transport,
        subjects: Subjects,
        gate: Arc<Gate>,
        timeout: Duration,
    ) -> Self {
        Self {
            transport,
            subjects,
            gate,
            timeout,
        }
    }

    /// The largest message the NATS server accepts.
    pub fn max_payload(&self) -> usize {
        self.transport.client().server_info().max_payload
    }

    /// The subject and credential for a worker of `app_id`; an app without keys has no workers.
    fn address(
        &self,
        app_id: i64,
        worker_id: &str,
        endpoint: WorkerEndpoint,
    ) -> Result<(String, rota_transport::Credential), RequestError> {
        let (app, credential) =
            self.gate
                .worker_credential(app_id, worker_id)
                .ok_or_else(|| {
                    RequestError::transport(
                        worker_id,
                        format!("app {app_id} has no key to reach its workers with"),
                    )
                })?;
        Ok((
            self.subjects.to_worker(&app, worker_id, endpoint),
            credential,
        ))
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        app_id: i64,
        worker_id: &str,
        endpoint: WorkerEndpoint,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError> {
        let (subject, credential) = self.address(app_id, worker_id, endpoint)?;
        self.transport
            .request(&subject, request, timeout, Some(&credential))
            .await
    }

    pub async fn dispatch(
        &self,
        worker_id: &str,
        request: &DispatchRequest,
    ) -> Result<DispatchAck, RequestError> {
        self.call(
            request.app_id,
            worker_id,
            WorkerEndpoint::Dispatch,
            request,
            self.timeout,
        )
        .await
    }

    /// Asks a worker to stop an instance. Best effort: a worker that is gone has nothing to stop.
    pub async fn stop(
        &self,
        app_id: i64,
        worker_id: &str,
        instance_id: i64,
    ) -> Result<StopAck, RequestError> {
        let request = StopRequest { instance_id };
        self.call(
            app_id,
            worker_id,
            WorkerEndpoint::Stop,
            &request,
            self.timeout,
        )
        .await
    }

    /// Tells a worker to stop an instance without waiting for an answer: for paths that must not
    /// be held up by a worker that is frozen or gone (its reports are fenced off either way).
    pub async fn publish_stop(&self, app_id: i64, worker_id: &str, instance_id: i64) {
        let Ok((subject, credential)) = self.address(app_id, worker_id, WorkerEndpoint::Stop)
        else {
            return;
        };
        let request = StopRequest { instance_id };
        if let Err(e) = self
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
        &self,
        app_id: i64,
        worker_id: &str,
        instance_id: i64,
        timeout: Duration,
    ) -> Result<InstanceRuntime, RequestError> {
        let request = QueryRequest { instance_id };
        self.call(app_id, worker_id, WorkerEndpoint::Query, &request, timeout)
            .await
    }

    /// Asks a worker to fetch or drop a container bundle; a fetch may take a while.
    pub async fn container(
        &self,
        app_id: i64,
        worker_id: &str,
        call: &rota_shared::container::ContainerCall,
        timeout: Duration,
    ) -> Result<rota_shared::container::ContainerCallAck, RequestError> {
        self.call(app_id, worker_id, WorkerEndpoint::Container, call, timeout)
            .await
    }

    /// Asks a distributed instance's master for a page of its tasks.
    pub async fn task_list(
        &self,
        app_id: i64,
        worker_id: &str,
        request: &TaskListRequest,
    ) -> Result<Vec<TaskInfo>, RequestError> {
        self.call(
            app_id,
            worker_id,
            WorkerEndpoint::TaskList,
            request,
            self.timeout,
        )
        .await
    }
}
