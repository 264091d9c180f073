//! The endpoint over a real socket: each path's status and body, what it refuses, and that a
//! site that turns not ready is answered 503 with its reasons.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_observe::probe::get;
use rota_observe::{Endpoint, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A site whose readiness the test sets.
#[derive(Default)]
struct Switchable {
    reasons: Mutex<Vec<String>>,
}

impl Site for Switchable {
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        Ok("# TYPE demo gauge\ndemo 1\n# EOF\n".to_owned())
    }

    fn not_ready(&self) -> Vec<String> {
        self.reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

const WAIT: Duration = Duration::from_secs(5);

async fn start() -> (Endpoint, Arc<Switchable>) {
    let site = Arc::new(Switchable::default());
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let endpoint = Endpoint::bind(any, site.clone())
        .await
        .expect("bind a free port");
    (endpoint, site)
}

#[tokio::test]
async fn each_path_answers_and_readiness_follows_the_site() {
    let (endpoint, site) = start().await;
    let addr = endpoint.local_addr();

    let health = get(addr, "/healthz", WAIT).await.unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(addr, "/readyz", WAIT).await.unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let metrics = get(addr, "/metrics", WAIT).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("demo 1"), "{}", metrics.body);

    *site.reasons.lock().unwrap() = vec!["the database does not answer".into()];
    let not_ready = get(addr, "/readyz", WAIT).await.unwrap();
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.body.contains("- the database does not answer"),
        "{}",
        not_ready.body
    );
    // Alive all the same.
    assert_eq!(get(addr, "/healthz", WAIT).await.unwrap().status, 200);

    assert_eq!(get(addr, "/admin", WAIT).await.unwrap().status, 404);
    endpoint.shutdown().await;
    assert!(
        get(addr, "/healthz", Duration::from_secs(1)).await.is_err(),
        "a stopped endpoint must not answer"
    );
}

#[tokio::test]
async fn only_get_and_head_are_served_and_garbage_is_refused() {
    let (endpoint, _) = start().await;
    let addr = endpoint.local_addr();
    let exchange = |request: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .expect("the endpoint answered and closed")
            .unwrap();
        out
    };
    let post = exchange(b"POST /readyz HTTP/1.0\r\nContent-Length: 0\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.0 405"), "{post}");
    let garbage = exchange(b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // It goes on serving.
    assert_eq!(get(addr, "/healthz", WAIT).await.unwrap().status, 200);
    endpoint.shutdown().await;
}
