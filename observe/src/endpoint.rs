//! The HTTP endpoint: HTTP/1 only, GET and HEAD only, a bounded number of connections, and a
//! deadline on reading a request's head, so that a slow or hostile client cannot hold it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the endpoint shows of a process.
pub trait Site: Send + Sync + 'static {
    /// The metrics, in the Prometheus (OpenMetrics) text format.
    fn metrics(&self) -> Result<String, std::fmt::Error>;
    /// Why the process cannot do its work now, one reason each; empty when it can.
    fn not_ready(&self) -> Vec<String>;
}

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// A request's head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running endpoint. Dropping it does not stop it; [`Endpoint::shutdown`] does.
pub struct Endpoint {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Listens on `addr` (port 0 picks a free one) and serves `site` until shut down.
    pub async fn bind(addr: SocketAddr, site: Arc<dyn Site>) -> Result<Self, EndpointError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, site, stop.clone()));
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(Self { addr, stop, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, without waiting (for `Drop` and crash-like aborts).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops accepting and waits for the accept loop to end.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, site: Arc<dyn Site>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let site = site.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(answer(site.as_ref(), &req)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn answer(site: &dyn Site, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let reasons = site.not_ready();
            if reasons.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let mut body = String::from("not ready:\n");
                for r in reasons {
                    body.push_str("- ");
                    body.push_str(&r);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        "/metrics" => match site.metrics() {
            Ok(body) => respond(StatusCode::OK, OPENMETRICS, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded\n".into(),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
