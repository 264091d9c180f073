//! NATS subjects, all under a configurable prefix (default `rota`).

use thiserror::Error;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "rota";

/// The queue group every server joins for requests that any server may answer.
pub const SERVER_QUEUE_GROUP: &str = "rota-servers";

/// A token (prefix part, server id or worker id) that cannot be used in a subject.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid subject token {token:?}: use letters, digits, '-' and '_' (and '.' in a prefix)")]
pub struct InvalidToken {
    pub token: String,
}

/// Checks that `token` is one subject token: non-empty, ASCII letters, digits, `-` and `_` only.
pub fn validate_token(token: &str) -> Result<(), InvalidToken> {
    let ok = !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidToken {
            token: token.to_owned(),
        })
    }
}

/// Builds every subject Rota uses, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// A subject set under `prefix`, which may hold several dot-separated tokens.
    pub fn new(prefix: &str) -> Result<Self, InvalidToken> {
        for part in prefix.split('.') {
            validate_token(part).map_err(|_| InvalidToken {
                token: prefix.to_owned(),
            })?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Server discovery: a worker asks any server which server owns its app.
    pub fn discovery_acquire(&self) -> String {
        format!("{}.discovery.acquire", self.prefix)
    }

    /// Every subject addressed to one server.
    pub fn server_all(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.>", self.prefix)
    }

    pub fn server_heartbeat(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.heartbeat", self.prefix)
    }

    pub fn server_status(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.status", self.prefix)
    }

    /// Status reports in batches ([`crate::message::StatusReportBatch`]).
    pub fn server_reports(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.reports", self.prefix)
    }

    pub fn server_logs(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.logs", self.prefix)
    }

    pub fn server_cluster(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.cluster", self.prefix)
    }

    pub fn server_ping(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.ping", self.prefix)
    }

    pub fn server_rpc(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.rpc", self.prefix)
    }

    /// An admin request addressed to one server: `rota.srv.{sid}.admin.{area}.{verb}`.
    pub fn server_admin(&self, server_id: &str, area: &str, verb: &str) -> String {
        format!("{}.srv.{server_id}.admin.{area}.{verb}", self.prefix)
    }

    /// Splits a server-addressed admin subject into `(area, verb)`.
    pub fn parse_server_admin<'a>(
        &self,
        server_id: &str,
        subject: &'a str,
    ) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(".srv.")?;
        let rest = rest.strip_prefix(server_id)?;
        let rest = rest.strip_prefix(".admin.")?;
        let (area, verb) = rest.split_once('.')?;
        (!verb.contains('.')).then_some((area, verb))
    }

    pub fn worker_dispatch(&self, worker_id: &str) -> String {
        format!("{}.wrk.{worker_id}.dispatch", self.prefix)
    }

    pub fn worker_stop(&self, worker_id: &str) -> String {
        format!("{}.wrk.{worker_id}.stop", self.prefix)
    }

    pub fn worker_query(&self, worker_id: &str) -> String {
        format!("{}.wrk.{worker_id}.query", self.prefix)
    }

    /// An administrative request, `rota.admin.{area}.{verb}`.
    pub fn admin(&self, area: &str, verb: &str) -> String {
        format!("{}.admin.{area}.{verb}", self.prefix)
    }

    /// Every administrative subject, for the servers' queue subscription.
    pub fn admin_all(&self) -> String {
        format!("{}.admin.>", self.prefix)
    }

    /// Splits an admin subject into `(area, verb)`, or `None` if it is not one of ours.
    pub fn parse_admin<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(self.prefix.as_str())?;
        let rest = rest.strip_prefix(".admin.")?;
        let (area, verb) = rest.split_once('.')?;
        (!verb.contains('.')).then_some((area, verb))
    }

    /// The last token of a `srv.{sid}.{endpoint}` or `wrk.{wid}.{endpoint}` subject.
    pub fn endpoint_of(subject: &str) -> &str {
        subject.rsplit('.').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_use_the_prefix() {
        let s = Subjects::new("acme.rota").unwrap();
        assert_eq!(s.discovery_acquire(), "acme.rota.discovery.acquire");
        assert_eq!(s.server_status("s1"), "acme.rota.srv.s1.status");
        assert_eq!(s.worker_dispatch("w-1"), "acme.rota.wrk.w-1.dispatch");
        assert_eq!(s.admin("job", "run"), "acme.rota.admin.job.run");
        assert_eq!(
            s.parse_admin("acme.rota.admin.job.run"),
            Some(("job", "run"))
        );
        assert_eq!(s.parse_admin("acme.rota.admin.job"), None);
        assert_eq!(s.parse_admin("other.admin.job.run"), None);
        assert_eq!(
            s.server_admin("s1", "job", "run"),
            "acme.rota.srv.s1.admin.job.run"
        );
        assert_eq!(
            s.parse_server_admin("s1", "acme.rota.srv.s1.admin.job.run"),
            Some(("job", "run"))
        );
        assert_eq!(
            s.parse_server_admin("s1", "acme.rota.srv.s2.admin.job.run"),
            None
        );
        assert_eq!(s.parse_server_admin("s1", "acme.rota.srv.s1.status"), None);
    }

    #[test]
    fn invalid_tokens_are_rejected() {
        assert!(Subjects::new("").is_err());
        assert!(Subjects::new("a..b").is_err());
        assert!(Subjects::new("a b").is_err());
        assert!(Subjects::new("a.*").is_err());
        assert!(validate_token("w>1").is_err());
        assert!(validate_token("worker-01_a").is_ok());
    }
}
