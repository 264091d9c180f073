//! Sending and answering: requests whose errors say what happened, publishes, and replies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::client::RequestErrorKind as NatsRequestErrorKind;
use async_nats::{Client, Message};
use bytes::Bytes;
use rota_shared::envelope::decode_reply;
use rota_shared::{ErrorBody, ErrorCode, Reply};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::keys::Key;
use crate::protocol::protocol_headers;
use crate::seal::{Credential, seal_reply, verify_reply};

/// The wall clock in milliseconds since the Unix epoch, the unit of stamps and of every stored
/// time: the one place Rota reads the system's wall clock (clippy refuses it elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// What went wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    /// No answer within the timeout.
    TimedOut,
    /// Nobody listens on the subject.
    NoResponders,
    /// The responder answered with an error; [`RequestError::code`] says which.
    Remote,
    /// The responder does not accept the request's credentials (no seal, an unknown key or token,
    /// a replay). The answer may be unsealed, since the responder could not know the key: it is
    /// a reason to renew credentials, never to trust data.
    Unauthorized,
    /// A sealed request got a reply that is not sealed with its key: someone who cannot prove
    /// the key answered (a process posing as a server, or a server that did not accept the
    /// key and says so in [`RequestError::unverified`]). Nothing in it is to be acted on.
    Unverified,
    /// The request is larger than the NATS server's `max_payload`: it can never be sent as it is.
    TooLarge,
    /// NATS could not carry the request (not connected, encoding).
    Transport,
}

#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct RequestError {
    kind: RequestErrorKind,
    subject: String,
    body: Option<ErrorBody>,
    message: String,
}

impl RequestError {
    pub fn kind(&self) -> RequestErrorKind {
        self.kind
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The responder's error code, for a [`RequestErrorKind::Remote`] or
    /// [`RequestErrorKind::Unauthorized`] error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self.kind {
            RequestErrorKind::Remote | RequestErrorKind::Unauthorized => {
                self.body.as_ref().map(|b| b.code)
            }
            _ => None,
        }
    }

    /// The responder's error, for a [`RequestErrorKind::Remote`] or
    /// [`RequestErrorKind::Unauthorized`] error.
    pub fn remote(&self) -> Option<&ErrorBody> {
        match self.kind {
            RequestErrorKind::Remote | RequestErrorKind::Unauthorized => self.body.as_ref(),
            _ => None,
        }
    }

    /// What an unverified reply claimed, for showing to a person; never to act on.
    pub fn unverified(&self) -> Option<&ErrorBody> {
        match self.kind {
            RequestErrorKind::Unverified => self.body.as_ref(),
            _ => None,
        }
    }

    pub fn transport(subject: &str, message: impl Into<String>) -> Self {
        Self {
            kind: RequestErrorKind::Transport,
            subject: subject.to_owned(),
            body: None,
            message: message.into(),
        }
    }

    fn remote_error(subject: &str, body: ErrorBody) -> Self {
        let kind = match body.code {
            ErrorCode::Unauthorized => RequestErrorKind::Unauthorized,
            _ => RequestErrorKind::Remote,
        };
        Self {
            kind,
            subject: subject.to_owned(),
            message: body.to_string(),
            body: Some(body),
        }
    }
}

/// A received request or message, and how to answer it: a plain subscription's message, or a
/// request taken through the NATS service API (which counts it in `$SRV.STATS`).
#[derive(Debug)]
pub enum Incoming {
    Plain(Message),
    /// Boxed: a service request is several hundred bytes, a plain message far less.
    Service(Box<async_nats::service::Request>),
}

impl Incoming {
    pub fn message(&self) -> &Message {
        match self {
            Self::Plain(m) => m,
            Self::Service(r) => &r.message,
        }
    }

    pub fn subject(&self) -> &str {
        self.message().subject.as_str()
    }
}

impl From<Message> for Incoming {
    fn from(m: Message) -> Self {
        Self::Plain(m)
    }
}

/// The one way Rota's processes send and answer over NATS.
#[derive(Debug, Clone)]
pub struct Transport {
    client: Client,
}

impl Transport {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn encode<T: Serialize>(subject: &str, msg: &T) -> Result<Vec<u8>, RequestError> {
        serde_json::to_vec(msg)
            .map_err(|e| RequestError::transport(subject, format!("encode: {e}")))
    }

    /// Sends a request and decodes its reply envelope. A request sealed with `credential` takes
    /// only a reply sealed with the same key; anything else is [`RequestErrorKind::Unverified`].
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        request: &Req,
        timeout: Duration,
        credential: Option<&Credential>,
    ) -> Result<Resp, RequestError> {
        let payload = Self::encode(subject, request)?;
        let mut headers = protocol_headers();
        if let Some(c) = credential {
            c.seal(&mut headers, subject, &payload, wall_ms());
        }
        let req = async_nats::Request::new()
            .payload(payload.into())
            .headers(headers)
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(subject.to_owned(), req)
            .await
            .map_err(|e| {
                let (kind, message) = match e.kind() {
                    NatsRequestErrorKind::NoResponders => (
                        RequestErrorKind::NoResponders,
                        format!("nobody answers on {subject}"),
                    ),
                    NatsRequestErrorKind::TimedOut => (
                        RequestErrorKind::TimedOut,
                        format!("no answer on {subject} within {timeout:?}"),
                    ),
                    NatsRequestErrorKind::MaxPayloadExceeded => (
                        RequestErrorKind::TooLarge,
                        format!(
                            "the request on {subject} is larger than the NATS server's max payload of {} bytes",
                            self.client.server_info().max_payload
                        ),
                    ),
                    _ => (
                        RequestErrorKind::Transport,
                        format!("request on {subject} failed: {e}"),
                    ),
                };
                RequestError {
                    kind,
                    subject: subject.to_owned(),
                    body: None,
                    message,
                }
            })?;
        open_reply(subject, &reply, credential.map(Credential::key))
    }

    /// Publishes a message, sealed with `credential` when given, with a reply subject when the
    /// sender wants to hear back.
    pub async fn publish<T: Serialize>(
        &self,
        subject: &str,
        msg: &T,
        credential: Option<&Credential>,
        reply: Option<String>,
    ) -> Result<(), RequestError> {
        let payload = Self::encode(subject, msg)?;
        let mut headers = protocol_headers();
        if let Some(c) = credential {
            c.seal(&mut headers, subject, &payload, wall_ms());
        }
        let sent = match reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(
                        subject.to_owned(),
                        reply,
                        headers,
                        payload.into(),
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(subject.to_owned(), headers, payload.into())
                    .await
            }
        };
        sent.map_err(|e| RequestError::transport(subject, format!("publish on {subject}: {e}")))
    }

    /// Answers a request, if it has a reply subject, sealed with `key` when given (the key the
    /// request was verified with). A failed send is logged: every requester of ours times out
    /// and tries again.
    pub async fn respond<T: Serialize>(
        &self,
        to: &Incoming,
        result: Result<T, ErrorBody>,
        key: Option<&Key>,
    ) {
        let msg = to.message();
        let Some(reply_subject) = msg.reply.clone() else {
            if let Err(e) = &result {
                tracing::debug!(subject = %msg.subject, error = %e, "refused a message without a reply subject");
            }
            return;
        };
        let mut body = match result {
            Ok(data) => Reply::ok(data).to_bytes(),
            Err(e) => Reply::<()>::err(e).to_bytes(),
        };
        // NATS refuses a message over its max payload and the requester would see only a time-out:
        // answer with an error that says what happened instead.
        let limit = self.client.server_info().max_payload;
        if body.len() > limit.saturating_sub(1024) {
            let e = ErrorBody::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the reply would be {} bytes, over the NATS limit of {limit}; narrow the request",
                    body.len()
                ),
            );
            body = Reply::<()>::err(e).to_bytes();
        }
        let mut headers = protocol_headers();
        if let Some(key) = key {
            seal_reply(key, &mut headers, reply_subject.as_str(), &body);
        }
        let sent = match to {
            Incoming::Service(request) => request
                .respond_with_headers(Ok(Bytes::from(body)), headers)
                .await
                .map_err(|e| e.to_string()),
            Incoming::Plain(_) => self
                .client
                .publish_with_headers(reply_subject, headers, body.into())
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(subject = %msg.subject, "could not send a reply: {e}");
        }
    }
}

/// Checks a reply received for a request on `subject` and decodes its envelope. With `key`, the
/// reply must be sealed with it.
pub fn open_reply<Resp: DeserializeOwned>(
    subject: &str,
    reply: &Message,
    key: Option<&Key>,
) -> Result<Resp, RequestError> {
    if let Some(key) = key
        && !verify_reply(
            key,
            reply.headers.as_ref(),
            reply.subject.as_str(),
            &reply.payload,
        )
    {
        let body = decode_reply::<serde::de::IgnoredAny>(&reply.payload).err();
        // A responder that does not know the request's key cannot seal its refusal.
        if let Some(body) = body.filter(|b| b.code == ErrorCode::Unauthorized) {
            return Err(RequestError::remote_error(subject, body));
        }
        let body = decode_reply::<serde::de::IgnoredAny>(&reply.payload).err();
        let claim = body
            .as_ref()
            .map_or_else(String::new, |b| format!(": it says {b}"));
        return Err(RequestError {
            kind: RequestErrorKind::Unverified,
            subject: subject.to_owned(),
            message: format!("the answer on {subject} is not authenticated{claim}"),
            body,
        });
    }
    decode_reply(&reply.payload).map_err(|body| RequestError::remote_error(subject, body))
}
