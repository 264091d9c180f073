//! Starting and stopping a server: the NATS subscriptions and the background loops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use rota_shared::message::{
    AcquireReply, AcquireRequest, ClusterQuery, ClusterReply, LogAck, LogBatch,
    MAX_REPORTS_PER_BATCH, Ping, Pong, StatusBatchAck, StatusReport, StatusReportBatch,
    WorkerHeartbeat,
};
use rota_shared::subject::{SERVER_QUEUE_GROUP, validate_token};
use rota_shared::{ErrorBody, ErrorCode, Subjects};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::ServerConfig;
use crate::core::Core;
use crate::endpoint::{decode_message, respond};
use crate::ownership::{Ownership, ensure_owner};
use crate::registry::WorkerRegistry;
use crate::reports::{self, BatchReply, Pending, Queued, ReplyTo, ReportQueue};
use crate::service::{self, ServiceHandle};
use crate::store::{Store, StoreError, apps::hash_secret};
use crate::{admin, dispatch, reconcile, scheduler, timer};

/// The server's software version, reported by pings and in the server registry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Log lines one batch may carry.
const MAX_LINES_PER_BATCH: usize = 10_000;
/// Admin and discovery requests served at once; more wait their turn.
const CONCURRENT_REQUESTS: usize = 64;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// A running server.
pub struct ServerHandle {
    core: Arc<Core>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    services: Vec<ServiceHandle>,
}

impl ServerHandle {
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// Stops serving, leaves the server registry and drains the NATS connection. Instances keep
    /// their stored state; another server (or this one, restarted) carries on from it.
    pub async fn shutdown(self) {
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
        let _ = self.core.client.drain().await;
    }

    /// Stops at once, as a crash would: no deregistration, no drain.
    pub fn abort(self) {
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

impl Server {
    pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
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
        let connected_since = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let client = connect(&config.nats_url, &id, connected_since.clone()).await?;
        let started_at_ms = now_ms();
        store.register_server(&id, VERSION, started_at_ms).await?;

        let shutdown = CancellationToken::new();
        let (fired_tx, fired_rx) = mpsc::unbounded_channel();
        let (handed_tx, handed_rx) = mpsc::unbounded_channel();
        let inserts = crate::inserts::InsertQueue::start(store.clone(), shutdown.clone());
        let timer = timer::start(fired_tx, shutdown.clone());
        let core = Arc::new(Core {
            id: id.clone(),
            started_at_ms,
            workers: WorkerRegistry::new(config.worker_timeout),
            config,
            client: client.clone(),
            subjects: subjects.clone(),
            store,
            ownership: Ownership::default(),
            timer,
            inserts,
            handed: handed_tx,
            dispatching: Default::default(),
            job_slots: Default::default(),
            repairs: Default::default(),
            // The database answered the migrations a moment ago.
            ready: true.into(),
            services: Default::default(),
            connected_since,
            ready_since: std::sync::Mutex::new(tokio::time::Instant::now()),
            job_cache: Default::default(),
            shutdown,
        });

        // Subscribe before anything announces this server, so no request finds it deaf.
        let own = client.subscribe(subjects.server_all(&id)).await?;
        let admin = client
            .queue_subscribe(subjects.admin_all(), SERVER_QUEUE_GROUP.to_owned())
            .await?;
        let discovery = client
            .queue_subscribe(subjects.discovery_acquire(), SERVER_QUEUE_GROUP.to_owned())
            .await?;
        // The subscriptions must be in force before anyone is told this server is up.
        round_trip(&client).await?;

        let reports_tx = reports::start(core.clone());
        dispatch::start(core.clone(), fired_rx, handed_rx);
        let token = &core.shutdown;
        let services = vec![
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
        *core.services.lock().unwrap_or_else(|e| e.into_inner()) =
            services.iter().map(ServiceHandle::probe).collect();
        let tasks = vec![
            tokio::spawn(serve_own(core.clone(), own, reports_tx)),
            tokio::spawn(serve_concurrently(core.clone(), admin, Endpoint::Admin)),
            tokio::spawn(serve_concurrently(
                core.clone(),
                discovery,
                Endpoint::Discovery,
            )),
        ];
        tracing::info!(server = %id, "server started");
        Ok(ServerHandle {
            core,
            tasks,
            services,
        })
    }
}

async fn connect(
    url: &str,
    id: &str,
    connected_since: Arc<std::sync::Mutex<tokio::time::Instant>>,
) -> Result<Client, ServerError> {
    async_nats::ConnectOptions::new()
        .name(format!("rota-server {id}"))
        .event_callback(move |event| {
            let connected_since = connected_since.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        *connected_since.lock().unwrap_or_else(|e| e.into_inner()) =
                            tokio::time::Instant::now();
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| ServerError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Waits until NATS has processed everything this connection sent so far. `flush` only empties
/// the client's buffer into the socket; a message to our own inbox coming back proves that the
/// NATS server has handled the subscriptions sent before it.
async fn round_trip(client: &Client) -> Result<(), ServerError> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
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

#[derive(Clone, Copy)]
enum Endpoint {
    Admin,
    Discovery,
}

/// Serves requests that may take a while (they touch the database) a few at a time.
async fn serve_concurrently(core: Arc<Core>, mut sub: Subscriber, endpoint: Endpoint) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    while let Some(msg) = sub.next().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let core = core.clone();
        tokio::spawn(async move {
            match endpoint {
                Endpoint::Admin => admin::handle(&core, &msg).await,
                Endpoint::Discovery => {
                    let result = match decode_message::<AcquireRequest>(&msg) {
                        Ok(r) => acquire(&core, r).await,
                        Err(e) => Err(e),
                    };
                    respond(&core.client, &msg, result).await;
                }
            }
            drop(permit);
        });
    }
}

/// Hands a report to its writer; one whose writer is behind is refused at once (the worker sends
/// it again) so that this subscription, which heartbeats share, never waits. `false` once the
/// writers have stopped.
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

/// Serves `rota.srv.{me}.*`. Heartbeats, pings and cluster queries are answered from memory at
/// once; reports and logs go to their batching writers.
async fn serve_own(core: Arc<Core>, mut sub: Subscriber, reports: ReportQueue) {
    while let Some(msg) = sub.next().await {
        if core
            .subjects
            .parse_server_admin(&core.id, msg.subject.as_str())
            .is_some()
        {
            // An admin request for this server in particular.
            let core = core.clone();
            tokio::spawn(async move { admin::handle(&core, &msg).await });
            continue;
        }
        match Subjects::endpoint_of(msg.subject.as_str()) {
            "heartbeat" => match decode_message::<WorkerHeartbeat>(&msg) {
                Ok(hb) if validate_token(&hb.worker_id).is_ok() => core.workers.record(hb),
                Ok(hb) => {
                    tracing::debug!(worker = %hb.worker_id, "heartbeat with an invalid worker id")
                }
                Err(e) => respond::<()>(&core.client, &msg, Err(e)).await,
            },
            "status" => match decode_message::<StatusReport>(&msg) {
                Ok(report) => {
                    let reply = ReplyTo::Message(msg);
                    if !queue_report(&core, &reports, Pending { report, reply }).await {
                        break;
                    }
                }
                Err(e) => respond::<()>(&core.client, &msg, Err(e)).await,
            },
            "reports" => match decode_message::<StatusReportBatch>(&msg) {
                Ok(batch) if batch.reports.len() > MAX_REPORTS_PER_BATCH => {
                    let e = ErrorBody::invalid(format!(
                        "a report batch may carry at most {MAX_REPORTS_PER_BATCH} reports"
                    ));
                    respond::<()>(&core.client, &msg, Err(e)).await;
                }
                Ok(batch) if batch.reports.is_empty() => {
                    let done = StatusBatchAck { results: vec![] };
                    respond(&core.client, &msg, Ok(done)).await;
                }
                Ok(batch) => {
                    let reply = BatchReply::new(msg, batch.reports.len());
                    for (index, report) in batch.reports.into_iter().enumerate() {
                        let batch = Arc::clone(&reply);
                        let pending = Pending {
                            report,
                            reply: ReplyTo::Batch { batch, index },
                        };
                        if !queue_report(&core, &reports, pending).await {
                            return;
                        }
                    }
                }
                Err(e) => respond::<()>(&core.client, &msg, Err(e)).await,
            },
            "logs" => {
                // A log write waits on the database; heartbeats and reports must not wait
                // behind it. Each worker has one batch in flight, so order is kept.
                let core = core.clone();
                tokio::spawn(async move {
                    let result = match decode_message::<LogBatch>(&msg) {
                        Ok(batch) => store_logs(&core, batch).await,
                        Err(e) => Err(e),
                    };
                    respond(&core.client, &msg, result).await;
                });
            }
            "cluster" => {
                let result = decode_message::<ClusterQuery>(&msg).and_then(|q| cluster(&core, q));
                respond(&core.client, &msg, result).await;
            }
            "ping" => {
                let result = decode_message::<Ping>(&msg).map(|_| Pong {
                    server_id: core.id.clone(),
                    started_at_ms: core.started_at_ms,
                    version: VERSION.to_owned(),
                });
                respond(&core.client, &msg, result).await;
            }
            "rpc" => {
                // Forwarded calls touch the database and may wait on a worker: answer them
                // without holding up heartbeats and reports.
                let core = core.clone();
                tokio::spawn(async move { admin::handle_remote(&core, &msg).await });
            }
            "container" => {
                let err = ErrorBody::new(
                    ErrorCode::Unsupported,
                    format!("{} is not served by this version yet", msg.subject),
                );
                respond::<()>(&core.client, &msg, Err(err)).await;
            }
            other => {
                let err = ErrorBody::not_found(format!("unknown endpoint {other:?}"));
                respond::<()>(&core.client, &msg, Err(err)).await;
            }
        }
    }
}

/// Discovery (DESIGN §3): which server owns the worker's app.
async fn acquire(core: &Core, r: AcquireRequest) -> Result<AcquireReply, ErrorBody> {
    validate_token(&r.worker_id).map_err(|e| ErrorBody::invalid(e.to_string()))?;
    let app = core.store.app_by_name(&r.app).await?;
    if hash_secret(&app.name, &r.secret) != app.secret_hash {
        return Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("wrong secret for app {:?}", app.name),
        ));
    }
    let owner = ensure_owner(core, app.id).await?;
    Ok(AcquireReply {
        server_id: owner.server_id,
        app_id: app.id,
        epoch: owner.epoch,
    })
}

async fn store_logs(core: &Core, batch: LogBatch) -> Result<LogAck, ErrorBody> {
    if batch.lines.len() > MAX_LINES_PER_BATCH {
        return Err(ErrorBody::invalid(format!(
            "a log batch may carry at most {MAX_LINES_PER_BATCH} lines"
        )));
    }
    if batch.dropped > 0 {
        tracing::warn!(worker = %batch.worker_id, dropped = batch.dropped, "worker dropped log lines");
    }
    let stored = core.store.insert_logs(&batch.lines).await?;
    Ok(LogAck { stored })
}

fn cluster(core: &Core, q: ClusterQuery) -> Result<ClusterReply, ErrorBody> {
    if !core.ownership.owns(q.app_id) {
        return Err(ErrorBody::new(
            ErrorCode::NotOwner,
            format!("server {} does not own app {}", core.id, q.app_id),
        ));
    }
    Ok(ClusterReply {
        workers: core.workers.live(Some(q.app_id)),
    })
}
