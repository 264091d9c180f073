//! How to reach NATS and prove who we are to it: every authentication mode nats-server has, for
//! every Rota process.
//!
//! - user and password (`--nats-user`, `--nats-password`, or `nats://user:pass@host` in the URL);
//! - a token (`--nats-token`, or `nats://token@host`);
//! - an NKey seed file (`--nats-nkey`);
//! - a credentials file with a user JWT and its NKey seed (`--nats-creds`);
//! - TLS: `tls://` URLs or any TLS option, a CA file to trust (`--nats-tls-ca`), and a client
//!   certificate and key for servers that verify clients (`--nats-tls-cert`, `--nats-tls-key`).
//!
//! async-nats reads no credentials from URLs, so they are taken out here and passed as options;
//! the URL that appears in logs and errors never carries them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use thiserror::Error;

/// Where NATS is and how to log in to it. It is also the `[nats]` section of `rota`'s
/// configuration file, whose keys are these fields' names.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsOptions {
    /// One URL or several, comma-separated (`nats://`, `tls://`, or `host:port`).
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey: Option<PathBuf>,
    /// A credentials file: a user JWT and its NKey seed, as `nsc` writes it.
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the NATS server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords and tokens never reach a log.
        f.debug_struct("NatsOptions")
            .field("url", &redact_urls(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("nkey", &self.nkey)
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// How many times `client`'s connection was re-established (its first connect not counted).
pub fn reconnects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(1)
}

impl NatsOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// These options with every field `over` sets replacing this one's (flags over a file).
    pub fn overridden_by(self, over: NatsOptions) -> Self {
        Self {
            url: if over.url.is_empty() {
                self.url
            } else {
                over.url
            },
            user: over.user.or(self.user),
            password: over.password.or(self.password),
            token: over.token.or(self.token),
            nkey: over.nkey.or(self.nkey),
            creds: over.creds.or(self.creds),
            tls_ca: over.tls_ca.or(self.tls_ca),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
        }
    }
}

/// What kind of failure a connection attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The options contradict each other or a URL does not parse.
    InvalidOptions,
    /// A credentials, NKey or certificate file cannot be read.
    Credentials,
    /// NATS refused the login.
    Authorization,
    /// The TLS handshake failed.
    Tls,
    /// No NATS server answered.
    Unreachable,
}

#[derive(Debug, Clone, Error)]
#[error("cannot connect to NATS at {url}: {message}")]
pub struct ConnectError {
    kind: ConnectErrorKind,
    url: String,
    message: String,
}

impl ConnectError {
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    fn new(kind: ConnectErrorKind, url: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            url: redact_urls(url),
            message: message.into(),
        }
    }
}

/// Called on every connection event (connected, disconnected, server errors such as a
/// permissions violation).
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;

/// How one process connects: its name in `nats server` reports, the inbox prefix its replies
/// come to (per role, so that NATS permissions can confine them), and whether the first
/// connection is retried.
#[derive(Clone)]
pub struct Connection {
    pub name: String,
    pub inbox_prefix: String,
    /// Keep trying the first connection (a long-running process started before NATS); otherwise
    /// the first failure is returned at once, with its reason.
    pub retry_initial: bool,
    pub on_event: Option<EventHandler>,
}

impl Connection {
    pub fn new(name: impl Into<String>, inbox_prefix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            inbox_prefix: inbox_prefix.into(),
            retry_initial: false,
            on_event: None,
        }
    }
}

/// The URLs, and the credentials taken out of them.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrls {
    urls: Vec<String>,
    user: Option<(String, String)>,
    token: Option<String>,
    tls: bool,
}

fn parse_urls(text: &str) -> Result<ParsedUrls, String> {
    let mut parsed = ParsedUrls {
        urls: Vec::new(),
        user: None,
        token: None,
        tls: false,
    };
    for raw in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = match raw.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, raw),
        };
        if let Some(scheme) = scheme
            && !matches!(scheme, "nats" | "tls" | "ws" | "wss")
        {
            return Err(format!(
                "unsupported URL scheme {scheme:?} (use nats:// or tls://)"
            ));
        }
        parsed.tls |= matches!(scheme, Some("tls" | "wss"));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, pass)) => {
                        parsed.user = Some((percent_decode(user)?, percent_decode(pass)?));
                    }
                    None => parsed.token = Some(percent_decode(userinfo)?),
                }
                host
            }
            None => authority,
        };
        if host.is_empty() {
            return Err(format!("no host in NATS URL {:?}", redact_url(raw)));
        }
        parsed.urls.push(match scheme {
            Some(scheme) => format!("{scheme}://{host}{path}"),
            None => format!("{host}{path}"),
        });
    }
    if parsed.urls.is_empty() {
        return Err("no NATS URL given".to_owned());
    }
    Ok(parsed)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad percent-encoding in NATS URL credentials".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "NATS URL credentials are not UTF-8".to_owned())
}

/// A URL with any credentials replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{prefix}***@{host}{}", &rest[end..]),
        None => url.to_owned(),
    }
}

fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn readable(kind: &str, path: &Path, url: &str) -> Result<(), ConnectError> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| {
        ConnectError::new(
            ConnectErrorKind::Credentials,
            url,
            format!("cannot read the {kind} {}: {e}", path.display()),
        )
    })
}

impl NatsOptions {
    /// Builds async-nats' options. Contradictory settings are refused here, before any
    /// connection is tried.
    async fn connect_options(
        &self,
        conn: &Connection,
    ) -> Result<(ConnectOptions, Vec<String>), ConnectError> {
        let invalid = |m: String| ConnectError::new(ConnectErrorKind::InvalidOptions, &self.url, m);
        let parsed = parse_urls(&self.url).map_err(invalid)?;
        let user = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "give both a NATS user and a password, or neither".to_owned(),
                ));
            }
            (None, None) => parsed.user.clone(),
        };
        let token = self.token.clone().or(parsed.token.clone());
        let modes = [
            user.is_some(),
            token.is_some(),
            self.nkey.is_some(),
            self.creds.is_some(),
        ];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "choose one NATS login: user and password, token, NKey or credentials file"
                    .to_owned(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "a TLS client certificate needs its key, and a key its certificate".to_owned(),
            ));
        }

        let mut options = ConnectOptions::new()
            .name(&conn.name)
            .custom_inbox_prefix(&conn.inbox_prefix)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if conn.retry_initial {
            options = options.retry_on_initial_connect();
        }
        if let Some((user, password)) = user {
            options = options.user_and_password(user, password);
        }
        if let Some(token) = token {
            options = options.token(token);
        }
        if let Some(path) = &self.nkey {
            readable("NKey seed file", path, &self.url)?;
            let seed = std::fs::read_to_string(path).map_err(|e| {
                ConnectError::new(
                    ConnectErrorKind::Credentials,
                    &self.url,
                    format!("cannot read the NKey seed file {}: {e}", path.display()),
                )
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.creds {
            readable("credentials file", path, &self.url)?;
            options = options.credentials_file(path).await.map_err(|e| {
                ConnectError::new(
                    ConnectErrorKind::Credentials,
                    &self.url,
                    format!("invalid credentials file {}: {e}", path.display()),
                )
            })?;
        }
        let tls = parsed.tls || self.tls_ca.is_some() || self.tls_cert.is_some();
        if let Some(path) = &self.tls_ca {
            readable("TLS CA file", path, &self.url)?;
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            readable("TLS certificate", cert, &self.url)?;
            readable("TLS key", key, &self.url)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls {
            options = options.require_tls(true);
        }
        let handler = conn.on_event.clone();
        options = options.event_callback(move |event| {
            let handler = handler.clone();
            async move {
                match &event {
                    Event::ServerError(e) => tracing::warn!("NATS server error: {e}"),
                    Event::ClientError(e) => tracing::warn!("NATS client error: {e}"),
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(subscription = sid, "NATS slow consumer: messages dropped")
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
                if let Some(handler) = handler {
                    handler(&event);
                }
            }
        });
        Ok((options, parsed.urls))
    }

    /// Connects to NATS.
    pub async fn connect(&self, conn: Connection) -> Result<Client, ConnectError> {
        let (options, urls) = self.connect_options(&conn).await?;
        options.connect(urls).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let text = e.to_string();
            let kind = match e.kind() {
                K::ServerParse => ConnectErrorKind::InvalidOptions,
                K::Authentication | K::AuthorizationViolation => ConnectErrorKind::Authorization,
                K::Tls => ConnectErrorKind::Tls,
                // rustls' handshake errors come through as I/O errors.
                K::Io if text.contains("certificate") || text.contains("tls") => {
                    ConnectErrorKind::Tls
                }
                _ => ConnectErrorKind::Unreachable,
            };
            let message = match kind {
                ConnectErrorKind::Authorization => {
                    format!("{e} (check the NATS user, password, token, NKey or credentials file)")
                }
                _ => text,
            };
            ConnectError::new(kind, &self.url, message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_urls() {
        let p = parse_urls("nats://alice:s%40cret@127.0.0.1:4222").unwrap();
        assert_eq!(p.urls, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(p.user, Some(("alice".into(), "s@cret".into())));
        let p = parse_urls("tls://tok@h:1, nats://h2:2").unwrap();
        assert_eq!(p.urls, vec!["tls://h:1", "nats://h2:2"]);
        assert_eq!(p.token.as_deref(), Some("tok"));
        assert!(p.tls);
        let p = parse_urls("127.0.0.1:4222").unwrap();
        assert_eq!(p.urls, vec!["127.0.0.1:4222"]);
        assert!(!p.tls && p.user.is_none() && p.token.is_none());
        assert!(parse_urls("").is_err());
        assert!(parse_urls("http://h:1").is_err());
        assert!(parse_urls("nats://u:p@").is_err());
    }

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact_url("nats://a:b@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        let o = NatsOptions {
            url: "nats://u:secret-pass@h".into(),
            password: Some("other-secret".into()),
            ..NatsOptions::default()
        };
        let shown = format!("{o:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[tokio::test]
    async fn contradictions_are_refused_before_connecting() {
        let conn = Connection::new("t", "rota.inbox.admin");
        let cases = [
            NatsOptions {
                user: Some("u".into()),
                ..NatsOptions::new("nats://h:1")
            },
            NatsOptions {
                token: Some("t".into()),
                ..NatsOptions::new("nats://u:p@h:1")
            },
            NatsOptions {
                tls_cert: Some("c.pem".into()),
                ..NatsOptions::new("nats://h:1")
            },
        ];
        for o in cases {
            let e = o.connect_options(&conn).await.unwrap_err();
            assert_eq!(e.kind(), ConnectErrorKind::InvalidOptions, "{o:?}: {e}");
        }
        let missing = NatsOptions {
            nkey: Some("/nonexistent/seed.nk".into()),
            ..NatsOptions::new("nats://h:1")
        };
        let e = missing.connect_options(&conn).await.unwrap_err();
        assert_eq!(e.kind(), ConnectErrorKind::Credentials);
    }
}
