//! The worker's link to the server that owns its app: the NATS connection, the worker's keys,
//! discovery and re-acquire, and the request helpers that notice when that server has gone away.
//!
//! The current owner lives in a `watch` channel that every sender reads at send time, so a move
//! to another server changes where the next heartbeat, report and log batch go without touching
//! the connection or the work that runs.
//!
//! The app's secret never travels. The worker derives the app key from it (Argon2id) and seals
//! discovery with it; the owner's answer must be sealed with the same key, so a process posing
//! as a server is not believed. Everything else between the worker and servers is sealed with
//! the worker key derived from the app key. A worker given its secret in a file re-reads the
//! file at every re-acquire, so a rotated secret is picked up without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::{Client, Event, Message};
use rota_shared::message::{AcquireReply, AcquireRequest};
use rota_shared::subject::{ServerEndpoint, WorkerEndpoint};
use rota_shared::{ErrorBody, ErrorCode, Subjects};
use rota_transport::keys::{app_key, worker_key};
use rota_transport::{
    Connection, Credential, Incoming, Key, RequestError, RequestErrorKind, Scope, Seal, Stamper,
    Transport,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::retry::{Next, Policy, Retrier};

/// How long a request to a server may take before the server counts as gone.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two discovery requests, so that a burst of failed requests (every
/// tracker and the log flusher noticing the same dead server) asks discovery once.
const MIN_REACQUIRE_SPACING: Duration = Duration::from_millis(250);

/// How the first discovery is retried before `start` gives up: a few times while no server
/// answers yet (servers that start together with the worker may need a moment to subscribe);
/// an unclear answer ends the start at once.
const START_ACQUIRE_RETRY: Policy = Policy {
    first: Duration::from_millis(500),
    max: Duration::from_secs(2),
    unclear_tries: 1,
    transient_tries: Some(4),
};

/// The server that owns the worker's app, as discovery last answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub server_id: String,
    pub app_id: i64,
    pub epoch: i64,
}

impl From<AcquireReply> for Owner {
    fn from(reply: AcquireReply) -> Self {
        Self {
            server_id: reply.server_id,
            app_id: reply.app_id,
            epoch: reply.epoch,
        }
    }
}

/// Why a request to a server did not get an answer it could use.
#[derive(Debug, Clone, Error)]
pub(crate) enum CallError {
    #[error("no server answers on {0}")]
    NoResponders(String),
    #[error("request on {0} timed out")]
    TimedOut(String),
    #[error("server answered {0}")]
    Remote(ErrorBody),
    /// An answer not sealed with the worker's key: not from a server of the deployment, or a
    /// server that did not accept the key. Never acted on; the request is tried again.
    #[error("{0}")]
    Unverified(String),
    #[error("NATS: {0}")]
    Transport(String),
}

impl CallError {
    /// Whether the error suggests that the server no longer owns the app (or is gone, or no
    /// longer accepts the worker's key), so that the worker should ask discovery again.
    pub(crate) fn owner_lost(&self) -> bool {
        match self {
            Self::NoResponders(_) | Self::TimedOut(_) | Self::Unverified(_) => true,
            Self::Remote(body) => {
                matches!(body.code, ErrorCode::NotOwner | ErrorCode::Unauthorized)
            }
            Self::Transport(_) => false,
        }
    }
}

impl From<RequestError> for CallError {
    fn from(e: RequestError) -> Self {
        match e.kind() {
            RequestErrorKind::NoResponders => Self::NoResponders(e.subject().to_owned()),
            RequestErrorKind::TimedOut => Self::TimedOut(e.subject().to_owned()),
            RequestErrorKind::Remote | RequestErrorKind::Unauthorized => match e.remote() {
                Some(body) => Self::Remote(body.clone()),
                None => Self::Transport(e.to_string()),
            },
            RequestErrorKind::Unverified => Self::Unverified(e.to_string()),
            // Never sendable as it is: handled like a server's PAYLOAD_TOO_LARGE.
            RequestErrorKind::TooLarge => {
                Self::Remote(ErrorBody::new(ErrorCode::PayloadTooLarge, e.to_string()))
            }
            RequestErrorKind::Transport => Self::Transport(e.to_string()),
        }
    }
}

/// The keys one secret gives a worker.
pub(crate) struct Keys {
    /// The secret they came from, to notice when a secret file changes.
    secret: String,
    /// Seals discovery requests.
    discovery: Credential,
    /// Seals what the worker sends, and verifies what servers send it.
    worker: Credential,
}

impl Keys {
    /// Derives the keys (Argon2id: tens of milliseconds and 7 MiB, so on a blocking thread; once
    /// at start and once per secret change).
    async fn derive(
        app: &str,
        worker_id: &str,
        secret: String,
        stamper: Arc<Stamper>,
    ) -> Result<Self, WorkerError> {
        let (app_owned, secret_copy) = (app.to_owned(), secret.clone());
        let key = tokio::task::spawn_blocking(move || app_key(&app_owned, &secret_copy))
            .await
            .map_err(|e| WorkerError::InvalidConfig(format!("key derivation: {e}")))?
            .map_err(|e| WorkerError::InvalidConfig(format!("app secret: {e}")))?;
        let key_id = key.id();
        let worker = worker_key(&key, app, worker_id);
        Ok(Self {
            secret,
            discovery: Credential::new(
                Scope::App {
                    key_id: key_id.clone(),
                },
                key,
                worker_id,
                stamper.clone(),
            ),
            worker: Credential::new(Scope::Worker { key_id }, worker, worker_id, stamper),
        })
    }
}

/// Reads the secret: the configured value, or the first line of the secret file.
fn read_secret(config_secret: &str, file: Option<&PathBuf>) -> Result<String, WorkerError> {
    let secret = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                WorkerError::InvalidConfig(format!(
                    "cannot read the secret file {}: {e}",
                    path.display()
                ))
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        None => config_secret.to_owned(),
    };
    if secret.is_empty() {
        return Err(WorkerError::InvalidConfig(
            "the app secret is empty".to_owned(),
        ));
    }
    Ok(secret)
}

/// Connects to NATS. The first connection must succeed, so that a wrong URL or login fails
/// `start` with a clear error; after that the client reconnects without limit.
pub(crate) async fn connect(
    config: &WorkerConfig,
    subjects: &Subjects,
    worker_id: &str,
    reacquire: Arc<Notify>,
) -> Result<Client, WorkerError> {
    // The callback also sees the first connection, which is not a reconnect.
    let connected_before = Arc::new(AtomicBool::new(false));
    let mut connection = Connection::new(
        format!("rota-worker {worker_id}"),
        subjects.worker_inbox(&config.app),
    );
    connection.on_event = Some(Arc::new(move |event: &Event| match event {
        Event::Connected if connected_before.swap(true, Ordering::SeqCst) => {
            info!("reconnected to NATS");
            // The servers may have changed while the connection was down.
            reacquire.notify_one();
        }
        Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
        _ => {}
    }));
    config
        .nats
        .connect(connection)
        .await
        .map_err(|e| WorkerError::Connect(e.to_string()))
}

/// The connection to the owning server.
pub(crate) struct Link {
    transport: Transport,
    subjects: Subjects,
    worker_id: String,
    app: String,
    secret: String,
    secret_file: Option<PathBuf>,
    stamper: Arc<Stamper>,
    /// The keys in use, and the ones before them (servers may still seal with those until they
    /// see the worker's next heartbeat).
    keys: RwLock<(Arc<Keys>, Option<Arc<Keys>>)>,
    owner: watch::Sender<Owner>,
    reacquire: Arc<Notify>,
}

impl Link {
    /// Derives the keys, asks discovery for the owner of the app and builds the link on the
    /// answer. A refusal (`UNAUTHORIZED`, `NOT_FOUND`, …) is final; no answer, or one not sealed
    /// with the app key, is retried briefly.
    pub(crate) async fn establish(
        client: Client,
        subjects: Subjects,
        config: &WorkerConfig,
        worker_id: String,
        reacquire: Arc<Notify>,
    ) -> Result<Self, WorkerError> {
        let secret = read_secret(&config.secret, config.secret_file.as_ref())?;
        let stamper = Arc::new(Stamper::new());
        let keys = Keys::derive(&config.app, &worker_id, secret, stamper.clone()).await?;
        let transport = Transport::new(client);
        let subject = subjects.discovery(&config.app);
        let req = AcquireRequest {
            worker_id: worker_id.clone(),
            current_server: None,
        };
        let mut retrier = Retrier::new(START_ACQUIRE_RETRY);
        let owner = loop {
            let result: Result<AcquireReply, CallError> = transport
                .request(&subject, &req, REQUEST_TIMEOUT, Some(&keys.discovery))
                .await
                .map_err(CallError::from);
            let pause = match &result {
                Ok(_) => None,
                // Discovery re-reads the apps before it refuses a key, so its refusal is the
                // deployment's answer: a wrong secret ends the start at once.
                Err(CallError::Remote(body)) if body.code == ErrorCode::Unauthorized => None,
                // A NATS connection that fails at start is a configuration error, said as such.
                Err(CallError::Transport(_)) => None,
                Err(e) => match retrier.failed(e) {
                    Next::Pause(pause) => Some(pause),
                    Next::GiveUp(_) => None,
                },
            };
            if let Some(pause) = pause {
                debug!(
                    tries = retrier.tries(),
                    "discovery not answered yet; retrying"
                );
                tokio::time::sleep(pause).await;
                continue;
            }
            break match result {
                Ok(reply) => Owner::from(reply),
                Err(CallError::Remote(body)) => {
                    return Err(WorkerError::Acquire {
                        code: body.code,
                        message: body.message,
                    });
                }
                Err(
                    e @ (CallError::NoResponders(_)
                    | CallError::TimedOut(_)
                    | CallError::Unverified(_)),
                ) => {
                    return Err(WorkerError::Acquire {
                        code: match e {
                            CallError::Unverified(_) => ErrorCode::Unauthorized,
                            _ => ErrorCode::Unavailable,
                        },
                        message: e.to_string(),
                    });
                }
                Err(CallError::Transport(m)) => return Err(WorkerError::Connect(m)),
            };
        };
        info!(
            server = %owner.server_id,
            app_id = owner.app_id,
            epoch = owner.epoch,
            "acquired the owning server"
        );
        Ok(Self {
            transport,
            subjects,
            worker_id,
            app: config.app.clone(),
            secret: config.secret.clone(),
            secret_file: config.secret_file.clone(),
            stamper,
            keys: RwLock::new((Arc::new(keys), None)),
            owner: watch::channel(owner).0,
            reacquire,
        })
    }

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub(crate) fn owner(&self) -> Owner {
        self.owner.borrow().clone()
    }

    /// A receiver that sees every change of owner.
    pub(crate) fn watch_owner(&self) -> watch::Receiver<Owner> {
        self.owner.subscribe()
    }

    /// Asks the re-acquire loop to ask discovery now.
    pub(crate) fn trigger_reacquire(&self) {
        self.reacquire.notify_one();
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The key a message from a server is sealed with, if it is one of the worker's.
    pub(crate) fn key_for(&self, scope: &Scope) -> Option<Key> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(&keys.0)
            .chain(keys.1.as_ref())
            .find(|k| k.worker.scope() == scope)
            .map(|k| k.worker.key().clone())
    }

    /// Verifies a message a server sent this worker; returns the server's id and the key to
    /// seal the answer with.
    pub(crate) fn verify(&self, msg: &Message) -> Result<(Seal, Key), ErrorBody> {
        let seal = Seal::require(msg.headers.as_ref())?;
        let key = self.key_for(&seal.scope).ok_or_else(|| {
            ErrorBody::unauthorized("the message is not sealed with this worker's key")
        })?;
        if !seal.verify(&key, msg.subject.as_str(), &msg.payload) {
            return Err(ErrorBody::unauthorized(
                "the message's seal does not verify",
            ));
        }
        Ok((seal, key))
    }

    /// Verifies a message a server sent all workers of the app (sealed with the app key);
    /// returns its seal.
    pub(crate) fn verify_app_message(&self, msg: &Message) -> Result<Seal, ErrorBody> {
        let seal = Seal::require(msg.headers.as_ref())?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = std::iter::once(&keys.0)
            .chain(keys.1.as_ref())
            .find(|k| k.discovery.scope() == &seal.scope)
            .map(|k| k.discovery.key().clone())
            .ok_or_else(|| ErrorBody::unauthorized("the message is not sealed with the app key"))?;
        if !seal.verify(&key, msg.subject.as_str(), &msg.payload) {
            return Err(ErrorBody::unauthorized(
                "the message's seal does not verify",
            ));
        }
        Ok(seal)
    }

    /// Whether a reply that arrived on the worker's ack inbox is sealed with its key.
    pub(crate) fn verify_reply(&self, msg: &Message) -> bool {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(&keys.0).chain(keys.1.as_ref()).any(|k| {
            rota_transport::seal::verify_reply(
                k.worker.key(),
                msg.headers.as_ref(),
                msg.subject.as_str(),
                &msg.payload,
            )
        })
    }

    fn subject(&self, endpoint: ServerEndpoint) -> String {
        let sid = self.owner.borrow().server_id.clone();
        self.subjects.to_server(&self.app, &sid, endpoint)
    }

    /// Sends a request to the current owner. A failure that suggests the owner is gone also
    /// triggers a re-acquire, so the caller's retry goes to the new owner.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: ServerEndpoint,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let keys = self.keys();
        let result = self
            .transport
            .request(&self.subject(endpoint), req, timeout, Some(&keys.worker))
            .await
            .map_err(CallError::from);
        if let Err(e) = &result
            && e.owner_lost()
        {
            debug!("{e}; re-acquiring");
            self.trigger_reacquire();
        }
        result
    }

    /// Publishes a message to the current owner, with a reply subject when the sender wants to
    /// hear back (progress reports, whose answer may say "stop").
    pub(crate) async fn publish<T: Serialize>(
        &self,
        endpoint: ServerEndpoint,
        msg: &T,
        reply: Option<String>,
    ) -> Result<(), CallError> {
        let keys = self.keys();
        self.transport
            .publish(&self.subject(endpoint), msg, Some(&keys.worker), reply)
            .await
            .map_err(CallError::from)
    }

    /// Seals a message to another worker of the app with that worker's key, which the app
    /// key gives (a master and its task workers talk this way; no server is in between).
    fn peer_credential(&self, peer: &str) -> Credential {
        let keys = self.keys();
        let key = worker_key(keys.discovery.key(), &self.app, peer);
        Credential::new(
            keys.worker.scope().clone(),
            key,
            self.worker_id.as_str(),
            self.stamper.clone(),
        )
    }

    /// Sends a request to another worker of the app; its answer must be sealed with that
    /// worker's key.
    pub(crate) async fn call_worker<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        endpoint: WorkerEndpoint,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let subject = self.subjects.to_worker(&self.app, peer, endpoint);
        self.transport
            .request(&subject, req, timeout, Some(&self.peer_credential(peer)))
            .await
            .map_err(CallError::from)
    }

    /// Answers a request made to the worker, sealed with `key`.
    pub(crate) async fn respond<T: Serialize>(
        &self,
        msg: &Incoming,
        result: Result<T, ErrorBody>,
        key: Option<&Key>,
    ) {
        self.transport.respond(msg, result, key).await;
    }

    /// Re-reads the secret file, if there is one, and derives new keys when it changed.
    async fn refresh_keys(&self) {
        let Some(file) = &self.secret_file else {
            return;
        };
        let secret = match read_secret(&self.secret, Some(file)) {
            Ok(s) => s,
            Err(e) => {
                warn!("{e}; keeping the current secret");
                return;
            }
        };
        if secret == self.keys().secret {
            return;
        }
        match Keys::derive(&self.app, &self.worker_id, secret, self.stamper.clone()).await {
            Ok(new) => {
                info!("the app secret changed; using the new one");
                let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
                let old = std::mem::replace(&mut keys.0, Arc::new(new));
                keys.1 = Some(old);
            }
            Err(e) => warn!("{e}; keeping the current secret"),
        }
    }

    /// Asks discovery once who owns the app, and moves to that server if it is another one.
    /// The connection and the running work stay as they are.
    pub(crate) async fn reacquire(&self) {
        self.refresh_keys().await;
        let current = self.owner.borrow().server_id.clone();
        let req = AcquireRequest {
            worker_id: self.worker_id.clone(),
            current_server: Some(current.clone()),
        };
        let subject = self.subjects.discovery(&self.app);
        let keys = self.keys();
        match self
            .transport
            .request::<_, AcquireReply>(&subject, &req, REQUEST_TIMEOUT, Some(&keys.discovery))
            .await
        {
            Ok(reply) => {
                let new = Owner::from(reply);
                self.owner.send_if_modified(|owner| {
                    if *owner == new {
                        return false;
                    }
                    info!(
                        from = %owner.server_id,
                        to = %new.server_id,
                        epoch = new.epoch,
                        "the app's owning server changed"
                    );
                    *owner = new;
                    true
                });
            }
            Err(e) => warn!(server = %current, "re-acquire failed: {e}"),
        }
    }

    /// Re-acquires every `every`, and soon after each trigger.
    pub(crate) async fn run_reacquire(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.reacquire.notified() => {}
            }
            self.reacquire().await;
            tokio::time::sleep(MIN_REACQUIRE_SPACING).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_loss_is_recognised() {
        assert!(CallError::NoResponders("s".into()).owner_lost());
        assert!(CallError::TimedOut("s".into()).owner_lost());
        assert!(CallError::Unverified("s".into()).owner_lost());
        assert!(CallError::Remote(ErrorBody::new(ErrorCode::NotOwner, "x")).owner_lost());
        assert!(CallError::Remote(ErrorBody::new(ErrorCode::Unauthorized, "x")).owner_lost());
        assert!(!CallError::Remote(ErrorBody::internal("x")).owner_lost());
        assert!(!CallError::Transport("x".into()).owner_lost());
    }

    #[test]
    fn secrets_come_from_the_file_when_there_is_one() {
        let dir = tempfile_dir();
        let path = dir.join("secret");
        std::fs::write(&path, "  from-file \nignored\n").unwrap();
        assert_eq!(read_secret("inline", Some(&path)).unwrap(), "from-file");
        assert_eq!(read_secret("inline", None).unwrap(), "inline");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret("inline", Some(&path)).is_err());
        assert!(read_secret("", None).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rota-link-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
