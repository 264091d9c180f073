//! The reply envelope: `{"ok":true,"data":…}` or `{"ok":false,"error":{"code":…,"message":…}}`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::MAX_PAYLOAD_BYTES;

/// A stable, upper-case error code. Callers match on it; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The payload is not valid JSON, or not the message the subject expects.
    BadRequest,
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    PayloadTooLarge,
    /// The message carries a protocol version this process does not speak.
    UnsupportedVersion,
    /// The request is well-formed but a value in it is not acceptable.
    InvalidArgument,
    /// The request or message is not authenticated: no token, an unknown or revoked one, a bad
    /// seal, a replay, or a wrong app secret.
    Unauthorized,
    /// The caller is authenticated but its role or app scope does not allow the request.
    Forbidden,
    NotFound,
    AlreadyExists,
    /// The request changes something that is not in a state that allows it.
    Conflict,
    /// This server does not own the app the request is about.
    NotOwner,
    /// No live worker can take the work.
    NoWorker,
    /// A worker refused a dispatch (overloaded, unknown processor, shutting down).
    Rejected,
    /// The feature exists in the protocol but is not served by this version.
    Unsupported,
    /// A dependency (database, peer server) is not reachable now; try again.
    Unavailable,
    Internal,
    /// A code from a newer version of the protocol.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::Conflict => "CONFLICT",
            Self::NotOwner => "NOT_OWNER",
            Self::NoWorker => "NO_WORKER",
            Self::Rejected => "REJECTED",
            Self::Unsupported => "UNSUPPORTED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Whether the same request can succeed if it is sent again unchanged: the one
    /// classification every retry loop uses.
    pub fn retry(self) -> Retry {
        match self {
            // The server is away, not the owner, or cannot reach its database now; another
            // server may answer, or this one later. An unauthorized answer is counted here
            // because it is what a worker hears from a server that has not yet loaded a rotated
            // key, and it asks discovery again before the next try.
            Self::Unavailable | Self::NotOwner | Self::Unauthorized => Retry::Transient,
            // The request itself is wrong, or what it concerns is gone or settled: the same
            // bytes get the same answer forever.
            Self::BadRequest
            | Self::PayloadTooLarge
            | Self::UnsupportedVersion
            | Self::InvalidArgument
            | Self::Forbidden
            | Self::NotFound
            | Self::AlreadyExists
            | Self::Conflict
            | Self::Unsupported => Retry::Permanent,
            // A server bug, a refusal of the moment, or a code this version does not know:
            // worth a few more tries, not an endless loop.
            Self::Internal | Self::Rejected | Self::NoWorker | Self::Unknown => Retry::Unclear,
        }
    }
}

/// How a failed request may be retried; see [`ErrorCode::retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Send it again, for as long as it takes, with a growing pause.
    Transient,
    /// Send it again a few times; then give up and say why.
    Unclear,
    /// Never send it again: the answer will not change.
    Permanent,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error half of the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
}

/// The reply to every Rota request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl<T> Reply<T> {
    pub fn ok(data: T) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn err(error: ErrorBody) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(error),
        }
    }

    /// Turns the envelope into a `Result`. An `ok` reply without data is a protocol error.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match (self.ok, self.data, self.error) {
            (true, Some(data), _) => Ok(data),
            (false, _, Some(error)) => Err(error),
            (true, None, _) => Err(ErrorBody::internal("reply is ok but carries no data")),
            (false, _, None) => Err(ErrorBody::internal("reply is not ok but carries no error")),
        }
    }
}

impl<T: Serialize> Reply<T> {
    /// Serializes the reply. Serializing our own types cannot fail; should it ever, the caller
    /// still gets a well-formed error envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| {
            let fallback: Reply<()> = Reply::err(ErrorBody::internal(format!("encode reply: {e}")));
            serde_json::to_vec(&fallback).unwrap_or_default()
        })
    }
}

/// Decodes a request payload, with the size limit and an error that says what was wrong.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorBody> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ErrorBody::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload of {} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes",
                payload.len()
            ),
        ));
    }
    // An empty payload is an empty object, so that requests without arguments need no body.
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        payload
    };
    // Every Rota message is a JSON object. serde would also read a struct from an array of its
    // fields in order, which no sender of ours produces: refuse it rather than guess.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                Ok(_) => ErrorBody::bad_request("invalid message: expected a JSON object"),
                Err(e) => ErrorBody::bad_request(format!("malformed JSON: {e}")),
            },
        );
    }
    serde_json::from_slice(payload).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ErrorBody::bad_request(format!("malformed JSON: {e}"))
            }
            Category::Data => ErrorBody::bad_request(format!("invalid message: {e}")),
        }
    })
}

/// Decodes a reply envelope received from another Rota process.
pub fn decode_reply<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ErrorBody> {
    let reply: Reply<T> = serde_json::from_slice(payload)
        .map_err(|e| ErrorBody::internal(format!("undecodable reply: {e}")))?;
    reply.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq, Serialize)]
    struct Msg {
        id: i64,
    }

    #[test]
    fn envelope_shape_is_stable() {
        let ok = String::from_utf8(Reply::ok(Msg { id: 3 }).to_bytes()).unwrap();
        assert_eq!(ok, r#"{"ok":true,"data":{"id":3}}"#);
        let err = Reply::<Msg>::err(ErrorBody::new(ErrorCode::NotOwner, "owned by s2"));
        assert_eq!(
            String::from_utf8(err.to_bytes()).unwrap(),
            r#"{"ok":false,"error":{"code":"NOT_OWNER","message":"owned by s2"}}"#
        );
        assert_eq!(
            decode_reply::<Msg>(br#"{"ok":false,"error":{"code":"FUTURE_CODE","message":"x"}}"#)
                .unwrap_err()
                .code,
            ErrorCode::Unknown
        );
    }

    #[test]
    fn decode_classifies_bad_input() {
        assert_eq!(decode::<Msg>(br#"{"id":1}"#).unwrap(), Msg { id: 1 });
        let e = decode::<Msg>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = decode::<Msg>(br#"{"id":"one"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("invalid message"), "{}", e.message);
        let e = decode::<Msg>(b"[1]").unwrap_err();
        assert_eq!(e.message, "invalid message: expected a JSON object");
        let e = decode::<Msg>(b"[1").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            decode::<Msg>(&big).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
    }
}
