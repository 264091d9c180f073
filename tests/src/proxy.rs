//! A TCP proxy that a test can cut and restore, to take a network dependency (the database)
//! away from a process and give it back without touching the dependency itself.
//!
//! [`TcpProxy::start`] listens on a free port of 127.0.0.1 and forwards every connection to an
//! upstream `host:port`, copying both ways. [`cut`](TcpProxy::cut) closes every open connection
//! at once and, until [`restore`](TcpProxy::restore), closes each new connection as soon as it
//! is accepted, so clients see their connections fail and cannot open new ones, as in an outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
struct State {
    cut: bool,
    next_id: u64,
    /// The forwarding task of each open connection; aborting it closes both sockets.
    connections: HashMap<u64, AbortHandle>,
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct TcpProxy {
    port: u16,
    upstream: String,
    state: Arc<Mutex<State>>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards connections to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the proxy's listener")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            Arc::clone(&state),
        ));
        Ok(TcpProxy {
            port,
            upstream: upstream.to_owned(),
            state,
            acceptor,
        })
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `host:port` connections are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Closes every open connection at once; new ones are closed as soon as they are accepted,
    /// until [`restore`](Self::restore).
    pub fn cut(&self) {
        let mut state = lock(&self.state);
        state.cut = true;
        for (_, connection) in state.connections.drain() {
            connection.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        lock(&self.state).cut = false;
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        lock(&self.state).cut
    }

    /// How many connections are open through the proxy.
    pub fn open_connections(&self) -> usize {
        lock(&self.state).connections.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, upstream: String, state: Arc<Mutex<State>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of file descriptors and the like: keep serving.
                tracing::warn!(%error, "proxy accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        // The check and the registration happen under the lock `cut` takes, so a connection is
        // either closed here or registered before `cut` aborts the registered ones.
        let mut guard = lock(&state);
        if guard.cut {
            drop(guard);
            // Closing at once is what a client of an unreachable server gets soonest.
            drop(client);
            continue;
        }
        let id = guard.next_id;
        guard.next_id += 1;
        let task = tokio::spawn(forward(client, upstream.clone(), Arc::clone(&state), id));
        guard.connections.insert(id, task.abort_handle());
    }
}

async fn forward(mut client: TcpStream, upstream: String, state: Arc<Mutex<State>>, id: u64) {
    match TcpStream::connect(&upstream).await {
        Ok(mut server) => {
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(%error, "proxied connection ended");
            }
        }
        Err(error) => tracing::warn!(%error, %upstream, "proxy cannot reach its upstream"),
    }
    lock(&state).connections.remove(&id);
}

/// A proxy in front of the host a database URL names, and that URL pointed at the proxy: a
/// process given the URL reaches the database only through the proxy, which the test can cut.
pub async fn in_front_of_database(url: &str) -> anyhow::Result<(TcpProxy, String)> {
    let (upstream, _) = through_proxy(url, 0)?;
    let proxy = TcpProxy::start(&upstream).await?;
    let (_, proxied) = through_proxy(url, proxy.port())?;
    Ok((proxy, proxied))
}

/// Splits a database URL into the `host:port` it connects to and the same URL pointed at
/// `127.0.0.1:proxy_port` instead (credentials, database and parameters kept).
pub fn through_proxy(url: &str, proxy_port: u16) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    // An IPv6 literal keeps its colons inside brackets.
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']') && port.parse::<u16>().is_ok());
    let upstream = if has_port {
        host_port.to_owned()
    } else {
        let port = match scheme {
            "postgres" | "postgresql" => 5432,
            "mysql" | "mariadb" => 3306,
            other => bail!("no default port for the scheme {other:?}"),
        };
        format!("{host_port}:{port}")
    };
    let proxied = match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@127.0.0.1:{proxy_port}{tail}"),
        None => format!("{scheme}://127.0.0.1:{proxy_port}{tail}"),
    };
    Ok((upstream, proxied))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    /// An echo server on a free port; returns its `host:port`.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0; text.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// Whether the connection is closed: a read ends (EOF or error) rather than waiting.
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_elapsed) => false,
        }
    }

    #[tokio::test]
    async fn cut_closes_connections_and_restore_lets_new_ones_through() {
        let proxy = TcpProxy::start(&echo_server().await).await.unwrap();
        let addr = format!("127.0.0.1:{}", proxy.port());

        let mut before = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(round_trip(&mut before, b"hello").await.unwrap(), b"hello");
        assert_eq!(proxy.open_connections(), 1);

        proxy.cut();
        assert!(proxy.is_cut());
        assert!(
            is_closed(&mut before).await,
            "an open connection survived the cut"
        );
        // Writing to it fails too, at the latest once the peer's reset has come back.
        let mut write_failed = false;
        for _ in 0..10 {
            if before.write_all(b"more").await.is_err() {
                write_failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(write_failed, "writes to a cut connection kept succeeding");

        // A new connection during the cut is closed at once, and nothing is echoed.
        let mut during = TcpStream::connect(&addr).await.unwrap();
        let _ = during.write_all(b"anyone?").await;
        assert!(
            is_closed(&mut during).await,
            "a connection opened during the cut was served"
        );
        assert_eq!(proxy.open_connections(), 0);

        proxy.restore();
        assert!(!proxy.is_cut());
        let mut after = TcpStream::connect(&addr).await.unwrap();
        let echoed = tokio::time::timeout(BOUND, round_trip(&mut after, b"back"))
            .await
            .expect("the restored proxy answers in time")
            .unwrap();
        assert_eq!(echoed, b"back");
    }

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        assert_eq!(
            through_proxy("postgres://postgres@127.0.0.1:5432/rota_test_1", 4000).unwrap(),
            (
                "127.0.0.1:5432".to_owned(),
                "postgres://postgres@127.0.0.1:4000/rota_test_1".to_owned()
            )
        );
        assert_eq!(
            through_proxy("mysql://root:p%40ss@db/x?ssl-mode=disabled", 4000).unwrap(),
            (
                "db:3306".to_owned(),
                "mysql://root:p%40ss@127.0.0.1:4000/x?ssl-mode=disabled".to_owned()
            )
        );
    }
}
