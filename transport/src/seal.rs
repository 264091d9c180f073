//! Message authentication: the `Rota-Auth` header on requests and published messages, and the
//! `Rota-Reply-Auth` header on replies.
//!
//! A sealed message carries `Rota-Auth: {scope} {sender} {stamp} {tag}`:
//!
//! - the **scope** names the key without showing it (`app:{key id}`, `wrk:{key id}`, `cluster`,
//!   `tok:{token id}`), so the receiver knows which key to check with;
//! - the **sender** is who sent it (a worker id, a server id, an admin client's nonce): the
//!   receiver keeps replay state per sender, and the tag covers it, so it cannot be changed;
//! - the **stamp** (see [`crate::replay`]) makes every message unique;
//! - the **tag** is HMAC-SHA256 (128 bits) over all of the above, the subject and the payload, so
//!   a copy with any byte changed, or published to another subject, fails.
//!
//! A reply is sealed with the request's key over its reply subject (unique per request) and its
//! payload: `Rota-Reply-Auth: {tag}`. Only someone holding the key can answer a request, so a
//! process that answers in a server's place (a fake owner in discovery) is detected.

use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rota_shared::{ErrorBody, ErrorCode};

use crate::keys::{Key, TAG_LEN};
use crate::replay::Stamper;

/// The header of an authenticated request or message.
pub const AUTH_HEADER: &str = "Rota-Auth";
/// The header of an authenticated reply.
pub const REPLY_AUTH_HEADER: &str = "Rota-Reply-Auth";

const MESSAGE_LABEL: &str = "rota message v1";
const REPLY_LABEL: &str = "rota reply v1";

/// Which key authenticates a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// An app key (discovery), by its id.
    App { key_id: String },
    /// A worker key, derived from the app key with this id.
    Worker { key_id: String },
    /// The deployment's cluster key (server to server).
    Cluster,
    /// An admin token's key, by the token's id.
    Token { token_id: String },
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App { key_id } => write!(f, "app:{key_id}"),
            Self::Worker { key_id } => write!(f, "wrk:{key_id}"),
            Self::Cluster => f.write_str("cluster"),
            Self::Token { token_id } => write!(f, "tok:{token_id}"),
        }
    }
}

impl Scope {
    fn parse(text: &str) -> Option<Self> {
        let (kind, id) = text.split_once(':').unwrap_or((text, ""));
        let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(is_id_byte);
        match kind {
            "app" if id_ok => Some(Self::App {
                key_id: id.to_owned(),
            }),
            "wrk" if id_ok => Some(Self::Worker {
                key_id: id.to_owned(),
            }),
            "tok" if id_ok => Some(Self::Token {
                token_id: id.to_owned(),
            }),
            "cluster" if id.is_empty() => Some(Self::Cluster),
            _ => None,
        }
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// What a sealed message says about itself, read from its `Rota-Auth` header. Nothing in it is
/// trusted until [`Seal::verify`] succeeded with the key its scope names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub scope: Scope,
    pub sender: String,
    pub stamp: u64,
    tag: [u8; TAG_LEN],
}

impl Seal {
    /// Reads the header of `headers`: `Ok(None)` when there is none, an `UNAUTHORIZED` error when
    /// it is malformed.
    pub fn read(headers: Option<&HeaderMap>) -> Result<Option<Seal>, ErrorBody> {
        let Some(value) = headers.and_then(|h| h.get(AUTH_HEADER)) else {
            return Ok(None);
        };
        let malformed = || ErrorBody::new(ErrorCode::Unauthorized, "malformed Rota-Auth header");
        let mut parts = value.as_str().split(' ');
        let (Some(scope), Some(sender), Some(stamp), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        let scope = Scope::parse(scope).ok_or_else(malformed)?;
        if sender.is_empty() || sender.len() > 128 || !sender.bytes().all(is_id_byte) {
            return Err(malformed());
        }
        let stamp = stamp.parse().map_err(|_| malformed())?;
        let tag = decode_tag(tag).ok_or_else(malformed)?;
        Ok(Some(Seal {
            scope,
            sender: sender.to_owned(),
            stamp,
            tag,
        }))
    }

    /// Reads the header and fails with `UNAUTHORIZED` when there is none.
    pub fn require(headers: Option<&HeaderMap>) -> Result<Seal, ErrorBody> {
        Self::read(headers)?.ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Unauthorized,
                "the message is not authenticated (no Rota-Auth header)",
            )
        })
    }

    /// Whether the tag is right for `subject` and `payload` under `key`.
    pub fn verify(&self, key: &Key, subject: &str, payload: &[u8]) -> bool {
        let scope = self.scope.to_string();
        let stamp = self.stamp.to_string();
        key.verify(
            MESSAGE_LABEL,
            &[
                scope.as_bytes(),
                self.sender.as_bytes(),
                stamp.as_bytes(),
                subject.as_bytes(),
                payload,
            ],
            &self.tag,
        )
    }
}

fn decode_tag(text: &str) -> Option<[u8; TAG_LEN]> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    bytes.try_into().ok()
}

/// A key, its scope and the sender's name: everything needed to seal messages.
#[derive(Clone)]
pub struct Credential {
    scope: Scope,
    key: Key,
    sender: String,
    stamper: Arc<Stamper>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("scope", &self.scope)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential whose messages are stamped by `stamper`: one stamper per sender process,
    /// shared by all its credentials, so that its stamps rise across all of them.
    pub fn new(scope: Scope, key: Key, sender: impl Into<String>, stamper: Arc<Stamper>) -> Self {
        Self {
            scope,
            key,
            sender: sender.into(),
            stamper,
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// Adds the `Rota-Auth` header for `subject` and `payload`, stamped at `now_ms`.
    pub fn seal(&self, headers: &mut HeaderMap, subject: &str, payload: &[u8], now_ms: i64) {
        let stamp = self.stamper.next(now_ms);
        let scope = self.scope.to_string();
        let stamp_text = stamp.to_string();
        let tag = self.key.tag(
            MESSAGE_LABEL,
            &[
                scope.as_bytes(),
                self.sender.as_bytes(),
                stamp_text.as_bytes(),
                subject.as_bytes(),
                payload,
            ],
        );
        let value = format!(
            "{scope} {} {stamp_text} {}",
            self.sender,
            URL_SAFE_NO_PAD.encode(tag)
        );
        headers.insert(AUTH_HEADER, value.as_str());
    }
}

/// Adds the `Rota-Reply-Auth` header to a reply published on `reply_subject`.
pub fn seal_reply(key: &Key, headers: &mut HeaderMap, reply_subject: &str, payload: &[u8]) {
    let tag = key.tag(REPLY_LABEL, &[reply_subject.as_bytes(), payload]);
    headers.insert(REPLY_AUTH_HEADER, URL_SAFE_NO_PAD.encode(tag).as_str());
}

/// Whether a reply received on `reply_subject` was sealed with `key`.
pub fn verify_reply(
    key: &Key,
    headers: Option<&HeaderMap>,
    reply_subject: &str,
    payload: &[u8],
) -> bool {
    headers
        .and_then(|h| h.get(REPLY_AUTH_HEADER))
        .and_then(|v| decode_tag(v.as_str()))
        .is_some_and(|tag| key.verify(REPLY_LABEL, &[reply_subject.as_bytes(), payload], &tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Credential {
        Credential::new(
            Scope::Worker {
                key_id: "k1".into(),
            },
            Key::from_bytes([3; 32]),
            "w-1",
            Arc::new(Stamper::new()),
        )
    }

    fn sealed(c: &Credential, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        c.seal(&mut h, subject, payload, 1_800_000_000_000);
        h
    }

    #[test]
    fn a_sealed_message_verifies_only_unchanged() {
        let c = credential();
        let h = sealed(&c, "rota.app.a.srv.s1.heartbeat", b"{}");
        let seal = Seal::require(Some(&h)).unwrap();
        assert_eq!(seal.sender, "w-1");
        assert_eq!(seal.scope, *c.scope());
        assert!(seal.verify(c.key(), "rota.app.a.srv.s1.heartbeat", b"{}"));
        assert!(!seal.verify(c.key(), "rota.app.a.srv.s2.heartbeat", b"{}"));
        assert!(!seal.verify(c.key(), "rota.app.a.srv.s1.heartbeat", b"{ }"));
        assert!(!seal.verify(
            &Key::from_bytes([4; 32]),
            "rota.app.a.srv.s1.heartbeat",
            b"{}"
        ));
        // Another sender or stamp in the header breaks the tag.
        let forged = Seal {
            sender: "w-2".into(),
            ..seal.clone()
        };
        assert!(!forged.verify(c.key(), "rota.app.a.srv.s1.heartbeat", b"{}"));
        let forged = Seal {
            stamp: seal.stamp + 1,
            ..seal
        };
        assert!(!forged.verify(c.key(), "rota.app.a.srv.s1.heartbeat", b"{}"));
    }

    #[test]
    fn headers_are_parsed_strictly() {
        assert_eq!(Seal::read(None), Ok(None));
        assert!(Seal::require(None).is_err());
        for bad in [
            "",
            "wrk:k1 w-1 12",
            "wrk:k1 w-1 12 AAAA extra",
            "nope:k1 w-1 12 AAAAAAAAAAAAAAAAAAAAAA",
            "wrk:k1 w.1 12 AAAAAAAAAAAAAAAAAAAAAA",
            "wrk:k1 w-1 x AAAAAAAAAAAAAAAAAAAAAA",
            "wrk:k1 w-1 12 short",
            "cluster:x s1 12 AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let mut h = HeaderMap::new();
            h.insert(AUTH_HEADER, bad);
            let e = Seal::read(Some(&h)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, "cluster s1 12 AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(Seal::read(Some(&h)).unwrap().unwrap().scope, Scope::Cluster);
    }

    #[test]
    fn replies_are_bound_to_their_subject_and_key() {
        let k = Key::from_bytes([5; 32]);
        let mut h = HeaderMap::new();
        seal_reply(&k, &mut h, "rota.inbox.app.a.x.1", b"ok");
        assert!(verify_reply(&k, Some(&h), "rota.inbox.app.a.x.1", b"ok"));
        assert!(!verify_reply(&k, Some(&h), "rota.inbox.app.a.x.2", b"ok"));
        assert!(!verify_reply(&k, Some(&h), "rota.inbox.app.a.x.1", b"no"));
        assert!(!verify_reply(
            &Key::from_bytes([6; 32]),
            Some(&h),
            "rota.inbox.app.a.x.1",
            b"ok"
        ));
        assert!(!verify_reply(&k, None, "rota.inbox.app.a.x.1", b"ok"));
    }
}
