//! Speaking on the bus by hand, for tests that send what a worker would (with its real keys) or
//! what an attacker would (without them).

use std::sync::Arc;
use std::time::Duration;

use rota_shared::Subjects;
use rota_shared::subject::ServerEndpoint;
use rota_transport::keys::{app_key, worker_key};
use rota_transport::{Credential, RequestError, Scope, Stamper, Transport};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One worker of an app, as the servers know it: it holds the keys the app's secret gives, so
/// what it sends is authenticated exactly like a real worker's.
pub struct WorkerVoice {
    transport: Transport,
    subjects: Subjects,
    app: String,
    credential: Credential,
    discovery: Credential,
}

impl WorkerVoice {
    pub fn new(
        client: async_nats::Client,
        app: &str,
        worker_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let key = app_key(app, secret)?;
        let stamper = Arc::new(Stamper::new());
        let key_id = key.id();
        Ok(Self {
            transport: Transport::new(client),
            subjects: Subjects::default(),
            app: app.to_owned(),
            credential: Credential::new(
                Scope::Worker {
                    key_id: key_id.clone(),
                },
                worker_key(&key, app, worker_id),
                worker_id,
                stamper.clone(),
            ),
            discovery: Credential::new(Scope::App { key_id }, key, worker_id, stamper),
        })
    }

    /// The subject of `endpoint` on `server`, for this worker's app.
    pub fn subject(&self, server: &str, endpoint: ServerEndpoint) -> String {
        self.subjects.to_server(&self.app, server, endpoint)
    }

    /// Sends a request to `server`, sealed as this worker, and checks the reply is sealed too.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        server: &str,
        endpoint: ServerEndpoint,
        request: &Req,
    ) -> Result<Resp, RequestError> {
        let subject = self.subject(server, endpoint);
        self.transport
            .request(
                &subject,
                request,
                Duration::from_secs(5),
                Some(&self.credential),
            )
            .await
    }

    /// Publishes a message to `server`, sealed as this worker.
    pub async fn publish<T: Serialize>(
        &self,
        server: &str,
        endpoint: ServerEndpoint,
        msg: &T,
    ) -> Result<(), RequestError> {
        let subject = self.subject(server, endpoint);
        self.transport
            .publish(&subject, msg, Some(&self.credential), None)
            .await
    }

    /// Asks discovery, sealed with the app key, as a worker starting up does.
    pub async fn discover<Resp: DeserializeOwned>(
        &self,
        request: &impl Serialize,
    ) -> Result<Resp, RequestError> {
        self.transport
            .request(
                &self.subjects.discovery(&self.app),
                request,
                Duration::from_secs(5),
                Some(&self.discovery),
            )
            .await
    }
}

/// A credential with the worker key of `worker_id`, for `sender` (the worker, or a server
/// writing to it).
fn worker_keyed(
    app: &str,
    secret: &str,
    worker_id: &str,
    sender: &str,
) -> anyhow::Result<Credential> {
    let key = app_key(app, secret)?;
    Ok(Credential::new(
        Scope::Worker { key_id: key.id() },
        worker_key(&key, app, worker_id),
        sender,
        Arc::new(Stamper::new()),
    ))
}

/// The credential a worker of `app` seals its messages with.
pub fn worker_credential(app: &str, secret: &str, worker_id: &str) -> anyhow::Result<Credential> {
    worker_keyed(app, secret, worker_id, worker_id)
}

/// The credential a worker of `app` seals discovery with.
pub fn discovery_credential(
    app: &str,
    secret: &str,
    worker_id: &str,
) -> anyhow::Result<Credential> {
    let key = app_key(app, secret)?;
    Ok(Credential::new(
        Scope::App { key_id: key.id() },
        key,
        worker_id,
        Arc::new(Stamper::new()),
    ))
}

/// The credential server `server_id` seals its messages to worker `worker_id` with.
pub fn server_credential(
    app: &str,
    secret: &str,
    worker_id: &str,
    server_id: &str,
) -> anyhow::Result<Credential> {
    worker_keyed(app, secret, worker_id, server_id)
}

/// The credential an administrator seals requests with.
pub fn token_credential(token: &rota_transport::AdminToken) -> Credential {
    Credential::new(
        Scope::Token {
            token_id: token.id().to_owned(),
        },
        token.key(),
        "test-admin",
        Arc::new(Stamper::new()),
    )
}

/// The credential of a server of the deployment whose database is at `database_url`.
pub async fn cluster_credential(database_url: &str, server_id: &str) -> anyhow::Result<Credential> {
    let store = rota_server::store::Store::connect(database_url).await?;
    let key = store.cluster_key(rota_transport::wall_ms()).await?;
    Ok(Credential::new(
        Scope::Cluster,
        key,
        server_id,
        Arc::new(Stamper::new()),
    ))
}

/// Sends `payload` as it is (any bytes), sealed with `credential` when given, with `headers`
/// added, and returns the raw reply.
pub async fn raw_request(
    nats: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
    credential: Option<&Credential>,
    headers: Option<async_nats::HeaderMap>,
) -> anyhow::Result<async_nats::Message> {
    let mut h = headers.unwrap_or_default();
    if let Some(c) = credential {
        c.seal(&mut h, subject, &payload, rota_transport::wall_ms());
    }
    let request = async_nats::Request::new()
        .payload(payload.into())
        .headers(h)
        .timeout(Some(Duration::from_secs(10)));
    Ok(nats.send_request(subject.to_owned(), request).await?)
}

/// Records every message on a subject (wildcards allowed) as an eavesdropper on an open NATS
/// would, headers and all.
pub struct Sniffer {
    seen: Arc<std::sync::Mutex<Vec<async_nats::Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sniffer {
    pub async fn start(client: &async_nats::Client, subject: &str) -> anyhow::Result<Self> {
        use futures::StreamExt;
        let mut sub = client.subscribe(subject.to_owned()).await?;
        // The subscription must be in force before the traffic it is to see. `flush` only
        // empties the client's buffer (a request sent right after by another connection could
        // still reach NATS first, which lost a sniffed request in three full-suite runs); NATS
        // handles one connection's commands in order, so an echo from our own inbox proves the
        // subscription is registered.
        let inbox = client.new_inbox();
        let mut echo = client.subscribe(inbox.clone()).await?;
        client.publish(inbox, bytes::Bytes::new()).await?;
        tokio::time::timeout(std::time::Duration::from_secs(10), echo.next())
            .await
            .map_err(|_| anyhow::anyhow!("NATS did not echo within 10 s"))?;
        let seen: Arc<std::sync::Mutex<Vec<async_nats::Message>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(msg) = sub.next().await {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                }
            }
        });
        Ok(Self { seen, task })
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<async_nats::Message> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the first message `wanted` accepts.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&async_nats::Message) -> bool,
    ) -> async_nats::Message {
        crate::wait::until(what, timeout, || async {
            self.seen().into_iter().find(|m| wanted(m))
        })
        .await
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every answer to the NATS service API's `$SRV.{verb}.rota-server` (`PING`, `INFO`, `STATS`)
/// within `wait`: one per running Rota server.
pub async fn service_api(
    nats: &async_nats::Client,
    verb: &str,
    wait: Duration,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use futures::StreamExt;
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await?;
    let subject = format!("$SRV.{verb}.{}", rota_server::SERVICE_NAME);
    nats.publish_with_reply(subject, inbox, bytes::Bytes::new())
        .await?;
    let mut answers = Vec::new();
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, replies.next()).await {
        // NATS says "no responders" (an empty status message) while no server is up.
        if msg.status.is_some() {
            continue;
        }
        answers.push(serde_json::from_slice(&msg.payload)?);
    }
    Ok(answers)
}
