//! Admin tokens: `rt1.{id}.{secret}`. The id names the token in seals and listings; the secret
//! (256 random bits) never leaves the holder: requests are sealed with the key derived from it,
//! and the server stores only that key.

use std::fmt;

use thiserror::Error;

use crate::keys::{Key, KeyError, random_text, token_key};

const PREFIX: &str = "rt1";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("not a Rota admin token (they look like rt1.<id>.<secret>)")]
pub struct MalformedToken;

/// An admin token as its holder has it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    id: String,
    secret: String,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({})", self.id)
    }
}

impl AdminToken {
    /// A new token from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            id: hex::encode(id),
            secret: random_text(32)?,
        })
    }

    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let secret_ok = secret.len() >= 32
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok || !secret_ok {
            return Err(MalformedToken);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key requests are sealed with, and the server stores.
    pub fn key(&self) -> Key {
        token_key(&self.secret)
    }

    /// The token as its holder writes it down (`ROTA_TOKEN`). Shown once, at creation.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}.{}.{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_differ() {
        let t = AdminToken::generate().unwrap();
        let parsed = AdminToken::parse(&t.reveal()).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(parsed.key(), t.key());
        assert_ne!(AdminToken::generate().unwrap().key(), t.key());
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "rt1",
            "rt1.abc.def",
            "rt2.0011223344556677.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert_eq!(AdminToken::parse(bad), Err(MalformedToken), "{bad}");
        }
    }
}
