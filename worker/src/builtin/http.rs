//! The built-in `http` processor: makes one HTTP request described by the job's config.
//!
//! Config: `{"method":"GET","url":"…","headers":{…},"body":"…","expected_status":200}`.
//! `method` defaults to GET; without `expected_status` any 2xx succeeds. The status line and the
//! first 4 KiB of the body go to the instance's log.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::context::TaskContext;
use crate::processor::{ProcessResult, Processor};

/// How much of the response body is logged.
const BODY_LOG_BYTES: usize = 4096;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    expected_status: Option<u16>,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// Makes HTTP requests. Cancellation (timeout, stop) abandons the request.
#[derive(Debug, Clone)]
pub struct HttpProcessor {
    /// The client, or why it could not be built (reported by every run, so that the worker
    /// still starts and serves its other processors).
    client: Result<reqwest::Client, String>,
}

impl HttpProcessor {
    pub fn new() -> Self {
        Self {
            client: http_client(),
        }
    }
}

/// The HTTP client of the worker (the http processor, bundles served over HTTP) and of the
/// CLI's bundle checks.
pub fn http_client() -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; ring is the one this workspace
    // uses. Installing fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("rota-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

impl Default for HttpProcessor {
    fn default() -> Self {
        Self::new()
    }
}

impl Processor for HttpProcessor {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        let client = self.client.clone();
        Box::pin(async move {
            match client {
                Ok(client) => {
                    let cancel = ctx.cancellation();
                    tokio::select! {
                        result = run(&client, &ctx) => result,
                        () = cancel.cancelled() => ProcessResult::failed("cancelled"),
                    }
                }
                Err(e) => ProcessResult::failed(format!("no HTTP client: {e}")),
            }
        })
    }
}

/// Whether `status` is what the config expects.
fn status_matches(status: u16, expected: Option<u16>) -> bool {
    match expected {
        Some(code) => status == code,
        None => (200..300).contains(&status),
    }
}

async fn run(client: &reqwest::Client, ctx: &TaskContext) -> ProcessResult {
    let config: HttpConfig = match serde_json::from_str(&ctx.config) {
        Ok(config) => config,
        Err(e) => return ProcessResult::failed(format!("invalid http config: {e}")),
    };
    let method = match reqwest::Method::from_bytes(config.method.to_ascii_uppercase().as_bytes()) {
        Ok(method) => method,
        Err(_) => return ProcessResult::failed(format!("invalid method {:?}", config.method)),
    };
    ctx.info(format!("{method} {}", config.url));
    let mut request = client.request(method, &config.url);
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    if let Some(body) = config.body {
        request = request.body(body);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let message = format!("request failed: {e}");
            ctx.error(message.clone());
            return ProcessResult::failed(message);
        }
    };
    let status = response.status();
    ctx.info(format!("{:?} {status}", response.version()));

    let mut body = Vec::new();
    while body.len() < BODY_LOG_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                ctx.warn(format!("cannot read the body: {e}"));
                break;
            }
        }
    }
    let cut = body.len() > BODY_LOG_BYTES;
    body.truncate(BODY_LOG_BYTES);
    for line in String::from_utf8_lossy(&body).lines() {
        ctx.info(line);
    }
    if cut {
        ctx.info(format!("… (body cut after {BODY_LOG_BYTES} bytes)"));
    }

    if status_matches(status.as_u16(), config.expected_status) {
        ProcessResult::ok(format!("HTTP {status}"))
    } else {
        let expected = config
            .expected_status
            .map_or_else(|| "2xx".to_owned(), |code| code.to_string());
        ProcessResult::failed(format!("HTTP {status}, expected {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::test_context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn config_defaults() {
        let config: HttpConfig = serde_json::from_str(r#"{"url":"http://x"}"#).unwrap();
        assert_eq!(config.method, "GET");
        assert!(config.headers.is_empty() && config.body.is_none());
        assert!(status_matches(204, None));
        assert!(!status_matches(301, None));
        assert!(status_matches(404, Some(404)));
        assert!(!status_matches(200, Some(201)));
    }

    #[tokio::test]
    async fn bad_configs_fail_clearly() {
        let p = HttpProcessor::new();
        let (ctx, _rx) = test_context("not json");
        let r = p.process(ctx).await;
        assert!(
            !r.success && r.message.starts_with("invalid http config"),
            "{r:?}"
        );
        let (ctx, _rx) = test_context(r#"{"url":"http://127.0.0.1:1/","method":"GE T"}"#);
        let r = p.process(ctx).await;
        assert!(
            !r.success && r.message.starts_with("invalid method"),
            "{r:?}"
        );
    }

    /// Serves one canned HTTP response on a local port.
    async fn one_shot_server(response: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = socket.read(&mut buf).await;
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.ok();
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn requests_are_made_and_logged() {
        let url = one_shot_server(
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello\nworld",
        )
        .await;
        let (ctx, rx) = test_context(&format!(r#"{{"url":"{url}","headers":{{"x-a":"1"}}}}"#));
        let r = HttpProcessor::new().process(ctx).await;
        assert_eq!(r, ProcessResult::ok("HTTP 200 OK"));
        let mut lines = Vec::new();
        while let Some(line) = rx.try_recv() {
            lines.push(line.text);
        }
        assert_eq!(lines[1], "HTTP/1.1 200 OK");
        assert_eq!(&lines[2..], ["hello", "world"]);

        let url = one_shot_server(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        let (ctx, _rx) = test_context(&format!(r#"{{"url":"{url}","method":"post","body":"x"}}"#));
        let r = HttpProcessor::new().process(ctx).await;
        assert_eq!(
            r,
            ProcessResult::failed("HTTP 500 Internal Server Error, expected 2xx")
        );
    }
}
