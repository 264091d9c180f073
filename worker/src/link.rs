//! The worker's link to the server that owns its app: the NATS connection, discovery and
//! re-acquire, and the request helpers that notice when that server has gone away.
//!
//! The current owner lives in a `watch` channel that every sender reads at send time, so a move
//! to another server changes where the next heartbeat, report and log batch go without touching
//! the connection or the work that runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, HeaderMap, RequestErrorKind, Subject};
use rota_shared::message::{AcquireReply, AcquireRequest};
use rota_shared::{ErrorBody, ErrorCode, PROTOCOL_HEADER, PROTOCOL_VERSION, Subjects};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// How long a request to a server may take before the server counts as gone.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two discovery requests, so that a burst of failed requests (every
/// tracker and the log flusher noticing the same dead server) asks discovery once.
const MIN_REACQUIRE_SPACING: Duration = Duration::from_millis(250);

/// How often, and how far apart, the first acquire is tried before `start` gives up: servers
/// that start together with the worker may need a moment to subscribe.
const START_ACQUIRE_ATTEMPTS: u32 = 4;
const START_ACQUIRE_PAUSE: Duration = Duration::from_millis(500);

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

/// The owner's subjects the worker sends to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Heartbeat,
    Status,
    /// Status reports in batches.
    Reports,
    Logs,
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
    #[error("NATS: {0}")]
    Transport(String),
}

impl CallError {
    /// Whether the error suggests that the server no longer owns the app (or is gone), so that
    /// the worker should ask discovery again.
    pub(crate) fn owner_lost(&self) -> bool {
        match self {
            Self::NoResponders(_) | Self::TimedOut(_) => true,
            Self::Remote(body) => body.code == ErrorCode::NotOwner,
            Self::Transport(_) => false,
        }
    }
}

/// The headers every Rota message carries.
pub(crate) fn protocol_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string().as_str());
    headers
}

/// Connects to NATS. The first connection must succeed, so that a wrong URL fails `start` with a
/// clear error; after that the client reconnects without limit.
pub(crate) async fn connect(
    config: &WorkerConfig,
    worker_id: &str,
    reacquire: Arc<Notify>,
) -> Result<Client, WorkerError> {
    let urls = config.nats_urls();
    // The callback also sees the first connection, which is not a reconnect.
    let connected_before = Arc::new(AtomicBool::new(false));
    ConnectOptions::new()
        .name(format!("rota-worker {worker_id}"))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let reacquire = Arc::clone(&reacquire);
            let connected_before = Arc::clone(&connected_before);
            async move {
                match event {
                    Event::Connected if connected_before.swap(true, Ordering::SeqCst) => {
                        info!("reconnected to NATS");
                        // The servers may have changed while the connection was down.
                        reacquire.notify_one();
                    }
                    Event::Connected => debug!("connected to NATS"),
                    Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                    other => debug!("NATS event: {other}"),
                }
            }
        })
        .connect(urls.clone())
        .await
        .map_err(|e| WorkerError::Connect(format!("cannot connect to {}: {e}", urls.join(","))))
}

/// Sends one request with the protocol header and decodes the reply envelope.
async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let payload = serde_json::to_vec(req)
        .map_err(|e| CallError::Transport(format!("encode request: {e}")))?;
    let request = async_nats::Request::new()
        .headers(protocol_headers())
        .payload(payload.into())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => CallError::NoResponders(subject.clone()),
            RequestErrorKind::TimedOut => CallError::TimedOut(subject.clone()),
            _ => CallError::Transport(e.to_string()),
        })?;
    rota_shared::envelope::decode_reply(&reply.payload).map_err(CallError::Remote)
}

/// The connection to the owning server.
pub(crate) struct Link {
    client: Client,
    subjects: Subjects,
    worker_id: String,
    app: String,
    secret: String,
    owner: watch::Sender<Owner>,
    reacquire: Arc<Notify>,
}

impl Link {
    /// Asks discovery for the owner of the app and builds the link on the answer. A refusal
    /// (`UNAUTHORIZED`, `NOT_FOUND`, …) is final; no answer at all is retried briefly.
    pub(crate) async fn establish(
        client: Client,
        subjects: Subjects,
        config: &WorkerConfig,
        worker_id: String,
        reacquire: Arc<Notify>,
    ) -> Result<Self, WorkerError> {
        let subject = subjects.discovery_acquire();
        let req = AcquireRequest {
            app: config.app.clone(),
            secret: config.secret.clone(),
            worker_id: worker_id.clone(),
            current_server: None,
        };
        let mut attempt = 1;
        let owner = loop {
            let result: Result<AcquireReply, CallError> =
                request(&client, subject.clone(), &req, REQUEST_TIMEOUT).await;
            let transient = match &result {
                Ok(_) => false,
                Err(CallError::Remote(body)) => body.code == ErrorCode::Unavailable,
                Err(CallError::NoResponders(_) | CallError::TimedOut(_)) => true,
                Err(CallError::Transport(_)) => false,
            };
            if transient && attempt < START_ACQUIRE_ATTEMPTS {
                attempt += 1;
                tokio::time::sleep(START_ACQUIRE_PAUSE).await;
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
                Err(e @ (CallError::NoResponders(_) | CallError::TimedOut(_))) => {
                    return Err(WorkerError::Acquire {
                        code: ErrorCode::Unavailable,
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
            client,
            subjects,
            worker_id,
            app: config.app.clone(),
            secret: config.secret.clone(),
            owner: watch::channel(owner).0,
            reacquire,
        })
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

    fn subject(&self, endpoint: Endpoint) -> String {
        let sid = self.owner.borrow().server_id.clone();
        match endpoint {
            Endpoint::Heartbeat => self.subjects.server_heartbeat(&sid),
            Endpoint::Status => self.subjects.server_status(&sid),
            Endpoint::Reports => self.subjects.server_reports(&sid),
            Endpoint::Logs => self.subjects.server_logs(&sid),
        }
    }

    /// Sends a request to the current owner. A failure that suggests the owner is gone also
    /// triggers a re-acquire, so the caller's retry goes to the new owner.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let result = request(&self.client, self.subject(endpoint), req, timeout).await;
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
        endpoint: Endpoint,
        msg: &T,
        reply: Option<String>,
    ) -> Result<(), CallError> {
        let payload = serde_json::to_vec(msg)
            .map_err(|e| CallError::Transport(format!("encode message: {e}")))?;
        let subject = self.subject(endpoint);
        let sent = match reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(
                        subject,
                        reply,
                        protocol_headers(),
                        payload.into(),
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(subject, protocol_headers(), payload.into())
                    .await
            }
        };
        sent.map_err(|e| CallError::Transport(e.to_string()))
    }

    /// Answers a request made to the worker.
    pub(crate) async fn respond(&self, reply: Subject, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish_with_headers(reply, protocol_headers(), payload.into())
            .await
        {
            warn!("cannot send a reply: {e}");
        }
    }

    /// Asks discovery once who owns the app, and moves to that server if it is another one.
    /// The connection and the running work stay as they are.
    pub(crate) async fn reacquire(&self) {
        let current = self.owner.borrow().server_id.clone();
        let req = AcquireRequest {
            app: self.app.clone(),
            secret: self.secret.clone(),
            worker_id: self.worker_id.clone(),
            current_server: Some(current.clone()),
        };
        let subject = self.subjects.discovery_acquire();
        match request::<_, AcquireReply>(&self.client, subject, &req, REQUEST_TIMEOUT).await {
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
        assert!(CallError::Remote(ErrorBody::new(ErrorCode::NotOwner, "x")).owner_lost());
        assert!(!CallError::Remote(ErrorBody::internal("x")).owner_lost());
        assert!(!CallError::Transport("x".into()).owner_lost());
    }

    #[test]
    fn headers_carry_the_protocol_version() {
        let headers = protocol_headers();
        assert_eq!(
            headers.get(PROTOCOL_HEADER).map(|v| v.as_str()),
            Some(PROTOCOL_VERSION.to_string().as_str())
        );
    }
}
