//! Helpers shared by every request handler: version check, decoding, replies.

use async_nats::{Client, HeaderMap, Message};
use rota_shared::envelope::decode;
use rota_shared::{ErrorBody, ErrorCode, PROTOCOL_HEADER, PROTOCOL_VERSION, Reply};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Headers every message Rota sends carries.
pub fn protocol_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string().as_str());
    h
}

/// Checks the protocol version (absent means current) and decodes the payload.
pub fn decode_message<T: DeserializeOwned>(msg: &Message) -> Result<T, ErrorBody> {
    if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(PROTOCOL_HEADER))
        && v.as_str() != PROTOCOL_VERSION.to_string()
    {
        return Err(ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                v.as_str()
            ),
        ));
    }
    decode(&msg.payload)
}

/// Answers a request, if it has a reply subject. A failed publish is logged: the requester will
/// time out and retry, which every requester of ours does.
pub async fn respond<T: Serialize>(client: &Client, msg: &Message, reply: Result<T, ErrorBody>) {
    let Some(subject) = msg.reply.clone() else {
        if let Err(e) = &reply {
            tracing::debug!(subject = %msg.subject, error = %e, "bad message without a reply subject");
        }
        return;
    };
    let mut body = match reply {
        Ok(data) => Reply::ok(data).to_bytes(),
        Err(e) => Reply::<()>::err(e).to_bytes(),
    };
    // NATS refuses a message over its max payload, and the requester would only see a time-out:
    // answer with an error that says what happened instead.
    let limit = client.server_info().max_payload;
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
    if let Err(e) = client
        .publish_with_headers(subject, protocol_headers(), body.into())
        .await
    {
        tracing::warn!(error = %e, "could not send a reply");
    }
}
