//! Containers: versioned bundles of processors (any language: a script, a binary) that reach
//! running workers without a restart. A bundle is a `.tar.gz` with a [`MANIFEST_FILE`] at its
//! root naming its processors; it is stored in NATS JetStream's object store (one bucket per
//! app, [`crate::Subjects::container_bucket`], that only servers write) or served over
//! HTTP(S), and recorded with its sha256 and size, which a worker checks before it unpacks
//! anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::subject::validate_token;

/// The manifest at a bundle's root.
pub const MANIFEST_FILE: &str = "rota-container.toml";

/// How long the upload bucket keeps a bundle nobody recorded (a refused or abandoned upload).
pub const UPLOAD_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest bundle a worker downloads.
pub const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;

/// The processor name a job gives to run a container's entry.
pub const CONTAINER_PROCESSOR: &str = "container";

/// A container a job names: `NAME` (its newest version) or `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Why a container reference, name or version cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "invalid container {0:?}: write NAME or NAME@VERSION (letters, digits, '-', '_' and '.' in a version)"
    )]
    BadRef(String),
    #[error("invalid sha256 {0:?}: 64 hexadecimal digits")]
    BadDigest(String),
    #[error("a bundle may be at most {MAX_BUNDLE_BYTES} bytes; this one is {0}")]
    TooLarge(u64),
    #[error("invalid URL {0:?}: use http:// or https://")]
    BadUrl(String),
}

/// A version: 1 to 64 of letters, digits, `-`, `_` and `.`.
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ContainerRef {
    /// Parses `NAME` or `NAME@VERSION`.
    pub fn parse(text: &str) -> Result<Self, ContainerError> {
        let bad = || ContainerError::BadRef(text.to_owned());
        let (name, version) = match text.trim().split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (text.trim(), None),
        };
        validate_token(name).map_err(|_| bad())?;
        if let Some(v) = version
            && !valid_version(v)
        {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    pub fn to_text(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What a container job runs: an entry (a processor the bundle's manifest names) of a
/// container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerJob {
    pub container: ContainerRef,
    pub entry: String,
}

/// Where a bundle is downloaded from. In a `container.create` request, an object store source
/// names the upload bucket ([`crate::Subjects::upload_bucket`]); the server moves the object
/// into the app's bucket and records that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContainerSource {
    /// An object of the deployment's NATS object store.
    ObjectStore { bucket: String, object: String },
    /// An HTTP(S) URL.
    Url { url: String },
}

impl ContainerSource {
    /// An URL source must be http or https.
    pub fn validate(&self) -> Result<(), ContainerError> {
        match self {
            Self::ObjectStore { .. } => Ok(()),
            Self::Url { url } => {
                if (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048
                {
                    Ok(())
                } else {
                    Err(ContainerError::BadUrl(url.clone()))
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::ObjectStore { bucket, object } => format!("nats://{bucket}/{object}"),
            Self::Url { url } => url.clone(),
        }
    }
}

/// Checks a sha256 written in hexadecimal and returns it in lower case.
pub fn parse_sha256(text: &str) -> Result<String, ContainerError> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(ContainerError::BadDigest(text.to_owned()))
    }
}

/// One version of a container, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: i64,
    pub app_id: i64,
    pub name: String,
    pub version: String,
    /// The bundle's sha256, in lower-case hexadecimal.
    pub sha256: String,
    pub size: u64,
    pub source: ContainerSource,
    pub created_at_ms: i64,
}

/// `rota.app.{app}.srv.{sid}.container`: a worker asks for a container of its app, by name and
/// version (none: the newest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A bundle a worker has unpacked, as its heartbeats list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedContainer {
    pub name: String,
    pub version: String,
}

/// `rota.app.{app}.wrk.{wid}.container`: a server asks a worker to fetch a container now, or to
/// drop one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ContainerCall {
    Deploy(ContainerInfo),
    Destroy { name: String, version: String },
}

/// How a worker answered a [`ContainerCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCallAck {
    /// Whether the bundle was downloaded now (false: it was in the cache already, or it was
    /// dropped).
    pub downloaded: bool,
}

/// A bundle's manifest ([`MANIFEST_FILE`]), e.g.
///
/// ```toml
/// [processors.hello]
/// command = ["python3", "main.py"]
/// env = { GREETING = "hi" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub processors: BTreeMap<String, ManifestEntry>,
}

/// One processor of a bundle: a command run from the bundle's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Manifest {
    /// Every entry has a command, and its names are subject tokens.
    pub fn validate(&self) -> Result<(), String> {
        if self.processors.is_empty() {
            return Err("the manifest names no processor".to_owned());
        }
        for (name, entry) in &self.processors {
            validate_token(name).map_err(|e| format!("processor {name:?}: {e}"))?;
            if entry.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(format!("processor {name:?} has no command"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_container_and_maybe_a_version() {
        assert_eq!(
            ContainerRef::parse("etl@1.2.0").expect("valid"),
            ContainerRef {
                name: "etl".into(),
                version: Some("1.2.0".into())
            }
        );
        assert_eq!(ContainerRef::parse("etl").expect("valid").version, None);
        for bad in ["", "@1", "etl@", "a b", "etl@1/2", "../x"] {
            assert!(ContainerRef::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ContainerRef::parse("etl@2").expect("valid").to_text(),
            "etl@2"
        );
    }

    #[test]
    fn digests_and_sources_are_checked() {
        let hex = "A".repeat(64);
        assert_eq!(parse_sha256(&hex).expect("valid"), "a".repeat(64));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
        assert!(
            ContainerSource::Url {
                url: "file:///etc/passwd".into()
            }
            .validate()
            .is_err()
        );
        assert!(
            ContainerSource::Url {
                url: "https://example.com/b.tar.gz".into()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn a_manifest_needs_commands() {
        let mut m = Manifest {
            processors: BTreeMap::new(),
        };
        assert!(m.validate().is_err());
        m.processors.insert(
            "hello".into(),
            ManifestEntry {
                command: vec![],
                env: BTreeMap::new(),
            },
        );
        assert!(m.validate().is_err());
        m.processors.insert(
            "hello".into(),
            ManifestEntry {
                command: vec!["python3".into(), "main.py".into()],
                env: BTreeMap::new(),
            },
        );
        assert!(m.validate().is_ok());
    }
}
