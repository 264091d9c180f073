//! Starting and stopping a server: the NATS service and its endpoints, and the background loops.
//!
//! Every request/reply endpoint is served through NATS' service API (`rota-server`), so that
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` describe each running server. Every message is
//! verified by the [`Gate`] before anything acts on it; replies are sealed with the key the
//! request was verified with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use futures::stream::BoxStream;
use rota_shared::container::ContainerRequest;
use rota_shared::limits::Limited;
use rota_shared::message::{
    AcquireReply, AcquireRequest, ClusterQuery, ClusterReply, LogAck, LogBatch, Ping, Pong,
    StatusBatchAck, StatusReport, StatusReportBatch, WorkerHeartbeat,
};
use rota_shared::subject::{SERVER_QUEUE_GROUP, ServerEndpoint, validate_token};
use rota_shared::{ErrorBody, ErrorCode, Subjects};
use rota_transport::{Connection, Incoming, Key, Transport, decode_message};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::core::Core;
use crate::dispatch::{Dispatcher, DispatcherParts};
use crate::gate::{Gate, WorkerPeer};
use crate::inserts::InsertQueue;
use crate::job_cache::JobCache;
use crate::metrics::{self, ServerMetrics};
use crate::ownership::{Ownership, ensure_owner};
use crate::readiness::Readiness;
use crate::registry::{Seen, WorkerRegistry};
use crate::repairs::Repairs;
use crate::reports::{self, BatchReply, Pending, Queued, ReplyTo, ReportQueue};
use crate::service::{self, ServiceBoard, ServiceHandle};
use crate::store::{Store, StoreError};
use crate::worker_calls::WorkerCalls;
use crate::{admin, reconcile, scheduler, timer};

/// The server's software version, reported by pings, the service API and the server registry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The NATS service name every Rota server registers under.
pub const SERVICE_NAME: &str = "rota-server";

/// Admin and discovery requests served at once; more wait their turn.
const CONCURRENT_REQUESTS: usize = 64;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Connect(#[from] rota_transport::ConnectError),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// A running server.
pub struct ServerHandle {
    core: Arc<Core>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    services: Vec<ServiceHandle>,
    /// The NATS service (`$SRV.*` answers); stopped with the server.
    nats_service: Option<async_nats::service::Service>,
    /// `/metrics`, `/healthz` and `/readyz`, when `http_listen` is set.
    endpoint: Option<rota_observe::Endpoint>,
}

impl ServerHandle {
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// Stops serving, leaves the server registry and drains the NATS connection. Instances keep
    /// their stored state; another server (or this one, restarted) carries on from it.
    /// Where `/metrics`, `/healthz` and `/readyz` are served, when they are.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint
            .as_ref()
            .map(rota_observe::Endpoint::local_addr)
    }

    pub async fn shutdown(mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.shutdown().await;
        }
        if let Some(service) = self.nats_service.take() {
            let _ = service.stop().await;
        }
        self.core.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
        // The shutdown token stops every service after its current iteration.
        for service in self.services {
            let _ = tokio::time::timeout(Duration::from_secs(10), service.stop()).await;
        }
        if let Err(e) = self.core.store.deregister_server(&self.core.id).await {
            tracing::warn!(error = %e, "could not leave the server registry");
        }
        let _ = self.core.transport.client().drain().await;
    }

    /// Stops at once, as a crash would: no deregistration, no drain.
    pub fn abort(mut self) {
        // A crashed server no longer answers `$SRV.PING` either, nor its probes.
        if let Some(service) = self.nats_service.take() {
            tokio::spawn(service.stop());
        }
        if let Some(endpoint) = self.endpoint.take() {
            tokio::spawn(endpoint.shutdown());
        }
        for service in &self.services {
            service.abort();
        }
        self.core.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Server;

/// The requests one service endpoint receives, tagged with what they are.
type Requests<T> = BoxStream<'static, (T, async_nats::service::Request)>;

fn tag<T: Copy + Send + 'static>(
    endpoint: async_nats::service::endpoint::Endpoint,
    kind: T,
) -> Requests<T> {
    endpoint.map(move |r| (kind, r)).boxed()
}

/// What a server's own (not shared) endpoints receive.
#[derive(Debug, Clone, Copy)]
enum Own {
    Worker(ServerEndpoint),
    Ping,
}

impl Server {
    pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let subjects =
            Subjects::new(&config.prefix).map_err(|e| ServerError::Config(e.to_string()))?;
        let id = match &config.server_id {
            Some(id) => {
                validate_token(id).map_err(|e| ServerError::Config(e.to_string()))?;
                id.clone()
            }
            None => format!("s-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        };
        let store = Store::connect(&config.database_url).await?;
        let started_at_ms = config.clock.now_ms();
        crate::bootstrap::ensure_declared(
            &store,
            config.admin_token.as_ref(),
            &config.apps,
            started_at_ms,
        )
        .await
        .map_err(|e| ServerError::Config(e.to_string()))?;
        let gate = Gate::new(&id, store.cluster_key(started_at_ms).await?, started_at_ms);
        gate.refresh_apps(&store, started_at_ms).await?;

        let readiness = Arc::new(Readiness::new());
        let mut connection =
            Connection::new(format!("rota-server {id}"), subjects.server_inbox(&id));
        connection.retry_initial = true;
        connection.on_event = Some({
            let readiness = readiness.clone();
            Arc::new(move |event: &async_nats::Event| match event {
                async_nats::Event::Connected => {
                    readiness.connected();
                    tracing::info!("connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                _ => {}
            })
        });
        let client = config.nats.connect(connection).await?;
        store.register_server(&id, VERSION, started_at_ms).await?;

        let shutdown = CancellationToken::new();
        let (fired_tx, fired_rx) = mpsc::unbounded_channel();
        let inserts = InsertQueue::start(store.clone(), config.clock, shutdown.clone());
        let timer = timer::start(fired_tx, config.clock, shutdown.clone());
        let transport = Transport::new(client.clone());
        let gate = Arc::new(gate);
        let calls = WorkerCalls::new(
            transport.clone(),
            subjects.clone(),
            gate.clone(),
            config.dispatch_timeout,
        );
        let jobs = Arc::new(JobCache::new(store.clone()));
        let workers = Arc::new(WorkerRegistry::new(config.worker_timeout));
        let ownership = Arc::new(Ownership::default());
        let metrics = Arc::new(ServerMetrics::new(gate.clone()));
        let dispatcher = Dispatcher::new(DispatcherParts {
            metrics: metrics.clone(),
            server_id: id.clone(),
            clock: config.clock,
            store: store.clone(),
            jobs: jobs.clone(),
            ownership: ownership.clone(),
            workers: workers.clone(),
            timer: timer.clone(),
            calls: calls.clone(),
            dispatch_ahead: config.dispatch_ahead,
            dispatch_timeout: config.dispatch_timeout,
            no_worker_timeout: config.no_worker_timeout,
        });
        dispatcher.start(fired_rx, shutdown.clone());
        let core = Arc::new(Core {
            id: id.clone(),
            clock: config.clock,
            started_at_ms,
            config,
            transport,
            subjects: subjects.clone(),
            store,
            gate,
            workers,
            ownership,
            timer,
            inserts,
            jobs,
            calls,
            dispatcher,
            readiness,
            repairs: Repairs::default(),
            metrics,
            services: ServiceBoard::default(),
            shutdown,
        });

        // Subscribe before anything announces this server, so no request finds it deaf.
        let nats_service = client
            .service_builder()
            .description("Rota scheduler server")
            .metadata(HashMap::from([
                ("server_id".to_owned(), id.clone()),
                ("prefix".to_owned(), subjects.prefix().to_owned()),
            ]))
            .start(SERVICE_NAME, VERSION)
            .await
            .map_err(|e| ServerError::Subscribe(e.to_string()))?;
        let add = |name: &'static str, subject: String, shared: bool| {
            let builder = nats_service.endpoint_builder().name(name);
            let builder = if shared {
                builder.queue_group(SERVER_QUEUE_GROUP)
            } else {
                builder
            };
            async move {
                builder
                    .add(subject.clone())
                    .await
                    .map_err(|e| ServerError::Subscribe(format!("{subject}: {e}")))
            }
        };
        let mut own = vec![tag(
            add("ping", subjects.server_ping(&id), false).await?,
            Own::Ping,
        )];
        for endpoint in ServerEndpoint::ALL {
            let subject = subjects.to_server_all(&id, endpoint);
            own.push(tag(
                add(endpoint.as_str(), subject, false).await?,
                Own::Worker(endpoint),
            ));
        }
        let shared = vec![
            tag(
                add("admin", subjects.admin_all(), true).await?,
                Shared::Admin,
            ),
            tag(
                add("admin-direct", subjects.server_admin_all(&id), false).await?,
                Shared::Admin,
            ),
            tag(
                add("discovery", subjects.discovery_all(), true).await?,
                Shared::Discovery,
            ),
            tag(
                add("rpc", subjects.server_rpc(&id), false).await?,
                Shared::Rpc,
            ),
        ];
        // The subscriptions must be in force before anyone is told this server is up.
        round_trip(&client).await?;

        // Servers create the upload bucket, so that no administrator chooses its configuration.
        // Without JetStream there are no uploads, and everything else works.
        if let Err(why) = ensure_upload_bucket(&core).await {
            tracing::warn!(%why, "no upload bucket yet: container uploads need JetStream; trying again every 30 s");
            let core = core.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = core.shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                    if ensure_upload_bucket(&core).await.is_ok() {
                        tracing::info!("upload bucket created");
                        return;
                    }
                }
            });
        }

        let reports_tx = reports::start(core.clone());
        let token = &core.shutdown;
        let mut services = vec![
            service::spawn(
                scheduler::ScheduleLoop {
                    core: core.clone(),
                    refreshed: None,
                },
                token,
            ),
            service::spawn(scheduler::Presence { core: core.clone() }, token),
            service::spawn(scheduler::Health { core: core.clone() }, token),
            service::spawn(reconcile::Reconcile { core: core.clone() }, token),
            service::spawn(reconcile::CleanUp { core: core.clone() }, token),
        ];
        // The grouped count behind `rota_instances` is for `/metrics` only: no endpoint, no query.
        if core.config.http_listen.is_some() {
            services.push(service::spawn(
                metrics::InstanceCounts { core: core.clone() },
                token,
            ));
        }
        core.services
            .show(services.iter().map(ServiceHandle::probe).collect());
        let tasks = vec![
            tokio::spawn(serve_own(
                core.clone(),
                futures::stream::select_all(own),
                reports_tx,
            )),
            tokio::spawn(serve_concurrently(
                core.clone(),
                futures::stream::select_all(shared),
            )),
        ];
        core.metrics.watch(&core);
        let endpoint = match core.config.http_listen {
            Some(addr) => Some(
                rota_observe::Endpoint::bind(
                    addr,
                    Arc::new(metrics::ServerSite { core: core.clone() }),
                )
                .await
                .map_err(|e| ServerError::Config(e.to_string()))?,
            ),
            None => None,
        };
        tracing::info!(server = %id, "server started");
        Ok(ServerHandle {
            core,
            tasks,
            services,
            nats_service: Some(nats_service),
            endpoint,
        })
    }
}

/// Waits until NATS has processed everything this connection sent so far. `flush` only empties
/// the client's buffer into the socket; a message to our own inbox coming back proves that the
/// NATS server has handled the subscriptions sent before it.
async fn round_trip(client: &async_nats::Client) -> Result<(), ServerError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServerError::Subscribe(e.to_string()))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| ServerError::Config(format!("NATS publish failed: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(ServerError::Config(
            "NATS did not confirm the server's subscriptions within 10 s".to_owned(),
        )),
    }
}

/// Creates the container upload bucket (`bundles::ensure_upload_bucket`), within 10 s.
async fn ensure_upload_bucket(core: &Core) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        crate::bundles::ensure_upload_bucket(core.transport.client(), &core.subjects),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("JetStream did not answer within 10 s".to_owned()),
    }
}

/// Requests any server may answer, and forwarded calls: they touch the database, so they are
/// served a few at a time, each in its own task.
#[derive(Debug, Clone, Copy)]
enum Shared {
    Admin,
    Discovery,
    Rpc,
}

async fn serve_concurrently(
    core: Arc<Core>,
    mut requests: futures::stream::SelectAll<Requests<Shared>>,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    while let Some((kind, request)) = requests.next().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let incoming = Incoming::Service(Box::new(request));
            match kind {
                Shared::Admin => admin::handle(&core, &incoming).await,
                Shared::Rpc => admin::handle_remote(&core, &incoming).await,
                Shared::Discovery => {
                    let (result, key) = discover(&core, incoming.message()).await;
                    core.transport
                        .respond(&incoming, result, key.as_ref())
                        .await;
                }
            }
            drop(permit);
        });
    }
}

/// Hands a report to its writer; one whose writer is behind is refused at once (the worker sends
/// it again) so that this loop, which heartbeats share, never waits. `false` once the writers
/// have stopped.
async fn queue_report(core: &Core, reports: &ReportQueue, pending: Pending) -> bool {
    match reports.push(pending) {
        Queued::Accepted => true,
        Queued::Full(pending) => {
            let busy = ErrorBody::new(
                ErrorCode::Unavailable,
                "the server is behind on status reports; send it again",
            );
            reports::answer(core, &pending, Err(busy)).await;
            true
        }
        Queued::Closed => false,
    }
}

/// Serves this server's own endpoints: the workers' messages and pings. Heartbeats, pings and
/// cluster queries are answered from memory at once; reports and logs go to their writers.
async fn serve_own(
    core: Arc<Core>,
    mut requests: futures::stream::SelectAll<Requests<Own>>,
    reports: ReportQueue,
) {
    while let Some((kind, request)) = requests.next().await {
        let incoming = Incoming::Service(Box::new(request));
        match kind {
            Own::Ping => {
                let result = core
                    .gate
                    .verify_cluster(incoming.message(), core.clock.now_ms())
                    .and_then(|_| decode_message::<Ping>(incoming.message()))
                    .map(|_| Pong {
                        server_id: core.id.clone(),
                        started_at_ms: core.started_at_ms,
                        version: VERSION.to_owned(),
                    });
                let key = result
                    .is_ok()
                    .then(|| core.gate.cluster_credential().key().clone());
                core.transport
                    .respond(&incoming, result, key.as_ref())
                    .await;
            }
            Own::Worker(endpoint) => {
                let verified = core
                    .subjects
                    .parse_to_server(&core.id, incoming.subject())
                    .ok_or_else(|| ErrorBody::bad_request("malformed subject"))
                    .and_then(|(app, _)| {
                        core.gate
                            .verify_worker(app, incoming.message(), core.clock.now_ms())
                    });
                match verified {
                    Ok(peer) => {
                        if !from_worker(&core, &reports, endpoint, peer, incoming).await {
                            break;
                        }
                    }
                    Err(e) => core.transport.respond::<()>(&incoming, Err(e), None).await,
                }
            }
        }
    }
}

/// Decodes a worker's message, checks its limits and that it speaks for its sender only.
fn decode_from<T>(
    peer: &WorkerPeer,
    incoming: &Incoming,
    worker: impl Fn(&T) -> &str,
) -> Result<T, ErrorBody>
where
    T: serde::de::DeserializeOwned + Limited,
{
    let msg: T = decode_message(incoming.message())?;
    msg.check_limits()?;
    peer.check_worker(worker(&msg))?;
    Ok(msg)
}

/// Handles one verified message from a worker. `false` once the report writers have stopped.
async fn from_worker(
    core: &Arc<Core>,
    reports: &ReportQueue,
    endpoint: ServerEndpoint,
    peer: WorkerPeer,
    incoming: Incoming,
) -> bool {
    match endpoint {
        ServerEndpoint::Heartbeat => {
            match decode_from::<WorkerHeartbeat>(&peer, &incoming, |h| &h.worker_id) {
                Ok(mut hb) => {
                    // Only the check below needs them; the registry keeps the rest.
                    let attempts = std::mem::take(&mut hb.attempts);
                    let worker_id = hb.worker_id.clone();
                    let seen = core.workers.record(peer.app_id, hb);
                    if seen != Seen::Known {
                        tokio::spawn(reconcile::attempts_not_on_worker(
                            Arc::clone(core),
                            peer.app_id,
                            worker_id,
                            attempts,
                            seen,
                        ));
                    }
                }
                Err(e) => {
                    core.transport
                        .respond::<()>(&incoming, Err(e), Some(&peer.key))
                        .await
                }
            }
        }
        ServerEndpoint::Status => {
            match decode_from::<StatusReport>(&peer, &incoming, |r| &r.worker_id) {
                Ok(report) => {
                    let pending = Pending {
                        report,
                        app_id: peer.app_id,
                        reply: ReplyTo::Message(incoming, peer.key),
                    };
                    return queue_report(core, reports, pending).await;
                }
                Err(e) => {
                    core.transport
                        .respond::<()>(&incoming, Err(e), Some(&peer.key))
                        .await
                }
            }
        }
        ServerEndpoint::Reports => {
            let batch = decode_message::<StatusReportBatch>(incoming.message())
                .and_then(|b| b.check_limits().map(|()| b))
                .and_then(|b| {
                    for r in &b.reports {
                        peer.check_worker(&r.worker_id)?;
                    }
                    Ok(b)
                });
            match batch {
                Ok(batch) if batch.reports.is_empty() => {
                    let done = StatusBatchAck { results: vec![] };
                    core.transport
                        .respond(&incoming, Ok(done), Some(&peer.key))
                        .await;
                }
                Ok(batch) => {
                    let reply = BatchReply::new(incoming, batch.reports.len(), peer.key);
                    for (index, report) in batch.reports.into_iter().enumerate() {
                        let pending = Pending {
                            report,
                            app_id: peer.app_id,
                            reply: ReplyTo::Batch {
                                batch: Arc::clone(&reply),
                                index,
                            },
                        };
                        if !queue_report(core, reports, pending).await {
                            return false;
                        }
                    }
                }
                Err(e) => {
                    core.transport
                        .respond::<()>(&incoming, Err(e), Some(&peer.key))
                        .await
                }
            }
        }
        ServerEndpoint::Logs => {
            // A log write waits on the database; heartbeats and reports must not wait behind
            // it. Each worker has one batch in flight, so order is kept.
            let core = core.clone();
            tokio::spawn(async move {
                let result = match decode_from::<LogBatch>(&peer, &incoming, |b| &b.worker_id) {
                    Ok(batch) => store_logs(&core, &peer, batch).await,
                    Err(e) => Err(e),
                };
                core.transport
                    .respond(&incoming, result, Some(&peer.key))
                    .await;
            });
        }
        ServerEndpoint::Cluster => {
            let query = decode_message::<ClusterQuery>(incoming.message());
            let result = match query {
                Ok(query) => cluster(core, peer.app_id, query.job_id).await,
                Err(e) => Err(e),
            };
            core.transport
                .respond(&incoming, result, Some(&peer.key))
                .await;
        }
        ServerEndpoint::Container => {
            // A read of the database: heartbeats and reports must not wait behind it.
            let core = core.clone();
            tokio::spawn(async move {
                let result = match decode_message::<ContainerRequest>(incoming.message()) {
                    Ok(req) => core
                        .store
                        .container(peer.app_id, &req.name, req.version.as_deref())
                        .await
                        .map_err(ErrorBody::from),
                    Err(e) => Err(e),
                };
                core.transport
                    .respond(&incoming, result, Some(&peer.key))
                    .await;
            });
        }
    }
    true
}

/// Discovery (DESIGN §3): which server owns the worker's app. The request proves the app's
/// secret; the reply is sealed with the same key, which proves this server knows it. Returns the
/// answer and the key to seal it with (none when the request did not verify).
async fn discover(
    core: &Core,
    msg: &async_nats::Message,
) -> (Result<AcquireReply, ErrorBody>, Option<Key>) {
    let Some(app) = core.subjects.parse_discovery(msg.subject.as_str()) else {
        return (
            Err(ErrorBody::bad_request("malformed discovery subject")),
            None,
        );
    };
    let (entry, key, sender) = match core
        .gate
        .verify_discovery(&core.store, app, msg, core.clock.now_ms())
        .await
    {
        Ok(verified) => verified,
        Err(e) => return (Err(e), None),
    };
    let result = async {
        let request: AcquireRequest = decode_message(msg)?;
        request.check_limits()?;
        if request.worker_id != sender {
            return Err(ErrorBody::unauthorized(format!(
                "the request is sealed by {sender} but names worker {}",
                request.worker_id
            )));
        }
        let owner = ensure_owner(core, entry.id).await?;
        Ok(AcquireReply {
            server_id: owner.server_id,
            app_id: entry.id,
            epoch: owner.epoch,
        })
    }
    .await;
    (result, Some(key))
}

/// Stores a batch of log lines: only the lines of instances of the sender's app whose current
/// attempt was dispatched to the sender; the others are refused and counted.
async fn store_logs(core: &Core, peer: &WorkerPeer, batch: LogBatch) -> Result<LogAck, ErrorBody> {
    if batch.dropped > 0 {
        tracing::warn!(worker = %batch.worker_id, dropped = batch.dropped, "worker dropped log lines");
    }
    let mut ids: Vec<i64> = batch.lines.iter().map(|l| l.instance_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mine: std::collections::HashSet<i64> = core
        .store
        .instances_by_ids(&ids)
        .await?
        .into_iter()
        .filter(|m| {
            m.app_id == peer.app_id && m.worker_id.as_deref() == Some(peer.worker_id.as_str())
        })
        .map(|m| m.id)
        .collect();
    let total = batch.lines.len() as u64;
    let lines: Vec<_> = batch
        .lines
        .into_iter()
        .filter(|l| mine.contains(&l.instance_id))
        .collect();
    let refused = total - lines.len() as u64;
    if refused > 0 {
        core.gate.refuse(
            "foreign_log_lines",
            ErrorBody::unauthorized(format!(
                "{refused} log lines of instances not run by {}",
                peer.worker_id
            )),
        );
    }
    let stored = core.store.insert_logs(&lines).await?;
    Ok(LogAck { stored, refused })
}

/// The cluster query: the app's live workers, or, for a job, those eligible for its tasks (a
/// job of another app is, to this worker, a job that does not exist).
async fn cluster(core: &Core, app_id: i64, job_id: Option<i64>) -> Result<ClusterReply, ErrorBody> {
    if !core.ownership.owns(app_id) {
        return Err(ErrorBody::new(
            ErrorCode::NotOwner,
            format!("server {} does not own app {app_id}", core.id),
        ));
    }
    let Some(job_id) = job_id else {
        return Ok(ClusterReply {
            workers: core.workers.live(Some(app_id)),
        });
    };
    let jobs = core.jobs.jobs(&[job_id]).await?;
    let job = jobs
        .get(&job_id)
        .filter(|j| j.app_id == app_id)
        .ok_or_else(|| ErrorBody::not_found(format!("job {job_id} not found")))?;
    Ok(ClusterReply {
        workers: core.workers.eligible(job),
    })
}
