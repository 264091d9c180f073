//! The smallest HTTP client that asks a probe: one GET over HTTP/1.0, for tests and health
//! checks that have nothing else at hand.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("{addr}{path}: no answer within {0:?}", .timeout)]
    TimedOut {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("{addr}{path}: not an HTTP answer")]
    Malformed { addr: SocketAddr, path: String },
}

/// An answer: the status code and the body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// GETs `path` from `addr`, answered within `timeout`. Bodies are read up to 16 MiB.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Answer, ProbeError> {
    let io = |source| ProbeError::Io {
        addr,
        path: path.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(16 << 20)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok::<_, ProbeError>(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::TimedOut {
            addr,
            path: path.to_owned(),
            timeout,
        })??;
    let malformed = || ProbeError::Malformed {
        addr,
        path: path.to_owned(),
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}
