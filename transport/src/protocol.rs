//! The protocol header and its version check, and decoding a received message: the one place
//! every process of Rota does it.

use async_nats::{HeaderMap, Message};
use rota_shared::envelope::decode;
use rota_shared::{ErrorBody, ErrorCode, PROTOCOL_HEADER, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;

/// Headers every message Rota sends carries.
pub fn protocol_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(PROTOCOL_HEADER, PROTOCOL_VERSION_TEXT);
    headers
}

const PROTOCOL_VERSION_TEXT: &str = {
    // One digit today; the assertion keeps the constant honest when the version moves.
    assert!(PROTOCOL_VERSION == 2);
    "2"
};

/// Refuses a message sent with a protocol version this process does not speak. A message
/// without the header is taken to be of the current version, so that standard NATS tools can
/// send requests.
pub fn check_version(headers: Option<&HeaderMap>) -> Result<(), ErrorBody> {
    let Some(value) = headers.and_then(|h| h.get(PROTOCOL_HEADER)) else {
        return Ok(());
    };
    match value.as_str().trim().parse::<u32>() {
        Ok(PROTOCOL_VERSION) => Ok(()),
        _ => Err(ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {:?} is not supported; this process speaks {PROTOCOL_VERSION}",
                value.as_str()
            ),
        )),
    }
}

/// Checks the version and decodes the payload (size limit, JSON object, shape).
pub fn decode_message<T: DeserializeOwned>(msg: &Message) -> Result<T, ErrorBody> {
    check_version(msg.headers.as_ref())?;
    decode(&msg.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        assert!(check_version(None).is_ok());
        assert!(check_version(Some(&protocol_headers())).is_ok());
        let mut future = HeaderMap::new();
        future.insert(PROTOCOL_HEADER, "99");
        let e = check_version(Some(&future)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        let mut junk = HeaderMap::new();
        junk.insert(PROTOCOL_HEADER, "one");
        assert!(check_version(Some(&junk)).is_err());
        assert_eq!(
            protocol_headers()
                .get(PROTOCOL_HEADER)
                .map(|v| v.as_str().to_owned()),
            Some(PROTOCOL_VERSION.to_string())
        );
    }
}
