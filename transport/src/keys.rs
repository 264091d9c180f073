//! Keys and how they are derived.
//!
//! Every key is 32 bytes and every derivation is HMAC-SHA256 over length-prefixed parts, so that
//! no two different inputs can ever yield the same MAC input. The one slow derivation is the app
//! key: an app's secret may be a word a person chose, so it goes through Argon2id, which makes a
//! dictionary attack on a MAC sniffed from the bus expensive.
//!
//! - **App key** `K_app = Argon2id(secret, salt(app))`: what a server stores for an app (never the
//!   secret) and what a worker derives from its secret at start. It authenticates discovery.
//! - **Worker key** `K_w = HMAC(K_app, app, worker_id)`: authenticates every message between the
//!   app's servers and that one worker, in both directions.
//! - **Cluster key**: 32 random bytes shared by a deployment's servers (kept in their database);
//!   it authenticates server-to-server pings and forwarded calls.
//! - **Token key** `K_t = HMAC(secret, "token")`: what a server stores for an admin token; the CLI
//!   derives it from the token and authenticates each admin request with it.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The length of every key.
pub const KEY_LEN: usize = 32;

/// The MAC carried by a message: HMAC-SHA256 cut to its first 16 bytes (128 bits), as
/// HMAC-SHA-256-128 does.
pub(crate) const TAG_LEN: usize = 16;

/// Argon2id's cost for app keys: one of OWASP's equivalent minimums for Argon2id (7 MiB, five
/// passes, one lane). Of those settings the one with the least memory: a worker derives once and
/// then idles for days, and its peak memory is part of its footprint.
const ARGON2_MEMORY_KIB: u32 = 7 * 1024;
const ARGON2_PASSES: u32 = 5;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("malformed key or sealed secret")]
    Malformed,
    #[error("the secret is empty")]
    EmptySecret,
    #[error("key derivation failed: {0}")]
    Derivation(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
}

/// A 32-byte secret key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A key from the system's random source.
    pub fn random() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// The key's bytes, to put in a secret box ([`seal_secret`]) for its new holder.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as stored in a database column.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed)?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(bytes))
    }

    /// A short public name for the key (11 characters), so that a message can say which key
    /// authenticates it without showing the key: the first 64 bits of a SHA-256 of it.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"rota key id v1\0");
        h.update(self.0);
        URL_SAFE_NO_PAD.encode(&h.finalize()[..8])
    }

    /// HMAC-SHA256 under this key over `label` and `parts`, each length-prefixed.
    pub(crate) fn mac(&self, label: &str, parts: &[&[u8]]) -> HmacSha256 {
        // An HMAC accepts a key of any length; ours are always 32 bytes.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        feed(&mut mac, label.as_bytes());
        for part in parts {
            feed(&mut mac, part);
        }
        mac
    }

    /// A key derived from this one for `label` and `parts`.
    fn derive(&self, label: &str, parts: &[&[u8]]) -> Key {
        Key(self.mac(label, parts).finalize().into_bytes().into())
    }

    /// The 16-byte tag of `parts` under this key.
    pub(crate) fn tag(&self, label: &str, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let full = self.mac(label, parts).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    pub(crate) fn verify(&self, label: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() == TAG_LEN && self.mac(label, parts).verify_truncated_left(tag).is_ok()
    }
}

fn feed(mac: &mut HmacSha256, part: &[u8]) {
    mac.update(&(part.len() as u64).to_be_bytes());
    mac.update(part);
}

/// The app key of `app` for `secret` (Argon2id; tens of milliseconds on purpose). The salt is
/// derived from the app's name, so that one secret used by two apps gives two keys.
pub fn app_key(app: &str, secret: &str) -> Result<Key, KeyError> {
    if secret.is_empty() {
        return Err(KeyError::EmptySecret);
    }
    let mut salt = Sha256::new();
    salt.update(b"rota app key salt v1\0");
    salt.update(app.as_bytes());
    let salt = salt.finalize();
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(KEY_LEN))
        .map_err(|e| KeyError::Derivation(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; KEY_LEN];
    argon
        .hash_password_into(secret.as_bytes(), &salt[..16], &mut out)
        .map_err(|e| KeyError::Derivation(e.to_string()))?;
    Ok(Key(out))
}

/// The key one worker and the app's servers share.
pub fn worker_key(app_key: &Key, app: &str, worker_id: &str) -> Key {
    app_key.derive(
        "rota worker key v1",
        &[app.as_bytes(), worker_id.as_bytes()],
    )
}

/// The key a server stores for an admin token's secret part.
pub fn token_key(token_secret: &str) -> Key {
    let mut h = Sha256::new();
    h.update(b"rota token v1\0");
    h.update(token_secret.as_bytes());
    // The secret is 256 random bits, so a plain hash is as strong as a slow one here; HMAC under
    // it makes the stored value a key rather than a hash someone could compare.
    Key(h.finalize().into()).derive("rota token key v1", &[])
}

/// What a secret box carries, named alike by both ends: an app key for `app.create` and
/// `app.rotate_secret`, a new token in `token.create`'s reply.
pub const APP_KEY_PURPOSE: &str = "app key";
pub const TOKEN_PURPOSE: &str = "new token";

/// Encrypts a secret value (an app key, a new token) for the holder of `key`, so that it can
/// travel in an admin request or reply: ChaCha20-Poly1305 with a random nonce, under a key
/// derived from `key` for `purpose` (which the receiver must name alike). The result is
/// base64url text.
pub fn seal_secret(key: &Key, purpose: &str, plaintext: &[u8]) -> Result<String, KeyError> {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let sealing = key.derive("rota secret box v1", &[purpose.as_bytes()]);
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &sealing.0)
        .map_err(|_| KeyError::Derivation("AEAD key".to_owned()))?;
    let aead = LessSafeKey::new(unbound);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    let mut data = plaintext.to_vec();
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(purpose.as_bytes()),
        &mut data,
    )
    .map_err(|_| KeyError::Derivation("AEAD seal".to_owned()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Decrypts what [`seal_secret`] made with the same key and purpose.
pub fn open_secret(key: &Key, purpose: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    let bytes = URL_SAFE_NO_PAD
        .decode(sealed.trim())
        .map_err(|_| KeyError::Malformed)?;
    if bytes.len() < NONCE_LEN {
        return Err(KeyError::Malformed);
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::Malformed)?;
    let sealing = key.derive("rota secret box v1", &[purpose.as_bytes()]);
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &sealing.0)
        .map_err(|_| KeyError::Derivation("AEAD key".to_owned()))?;
    let mut data = data.to_vec();
    let plain = LessSafeKey::new(unbound)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut data,
        )
        .map_err(|_| KeyError::Malformed)?;
    Ok(plain.to_vec())
}

/// `len` random bytes, base64url without padding: nonces, token secrets, passwords.
pub fn random_text(len: usize) -> Result<String, KeyError> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_keys_depend_on_app_and_secret() {
        let a = app_key("billing", "s3cret").unwrap();
        assert_eq!(a, app_key("billing", "s3cret").unwrap());
        assert_ne!(a, app_key("billing", "s3cret!").unwrap());
        assert_ne!(a, app_key("payroll", "s3cret").unwrap());
        assert_eq!(app_key("billing", ""), Err(KeyError::EmptySecret));
    }

    #[test]
    fn derived_keys_separate_workers() {
        let app = Key::from_bytes([7; KEY_LEN]);
        let w1 = worker_key(&app, "billing", "w1");
        assert_eq!(w1, worker_key(&app, "billing", "w1"));
        assert_ne!(w1, worker_key(&app, "billing", "w2"));
        assert_ne!(
            w1,
            worker_key(&app, "billin", "gw1"),
            "parts are length-prefixed"
        );
        assert_ne!(token_key("a"), token_key("b"));
    }

    #[test]
    fn keys_round_trip_through_hex_and_never_show() {
        let k = Key::random().unwrap();
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(Key::from_hex("abc"), Err(KeyError::Malformed));
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.to_hex()), "{shown}");
        assert_eq!(k.id().len(), 11);
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_purpose() {
        let k = Key::from_bytes([9; KEY_LEN]);
        let sealed = seal_secret(&k, "app key", b"the key").unwrap();
        assert!(!sealed.contains("the key"));
        assert_eq!(open_secret(&k, "app key", &sealed).unwrap(), b"the key");
        assert!(open_secret(&k, "token", &sealed).is_err());
        assert!(open_secret(&Key::from_bytes([8; KEY_LEN]), "app key", &sealed).is_err());
        assert_ne!(sealed, seal_secret(&k, "app key", b"the key").unwrap());
        assert!(open_secret(&k, "app key", "AAAA").is_err());
    }

    #[test]
    fn tags_verify_only_their_input() {
        let k = Key::from_bytes([1; KEY_LEN]);
        let tag = k.tag("l", &[b"a", b"b"]);
        assert!(k.verify("l", &[b"a", b"b"], &tag));
        assert!(!k.verify("l", &[b"a", b"c"], &tag));
        assert!(!k.verify("m", &[b"a", b"b"], &tag));
        assert!(!Key::from_bytes([2; KEY_LEN]).verify("l", &[b"a", b"b"], &tag));
        assert!(!k.verify("l", &[b"a", b"b"], &tag[..8]));
    }
}
