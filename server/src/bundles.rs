//! Uploaded container bundles. `rota container upload` puts a bundle in the upload bucket
//! (`Subjects::upload_bucket`), which the administrators' NATS user may write but not create
//! or configure (servers create it at start); once the `container.create` verb has checked the
//! caller's token for the app, the server copies the bundle into the app's own bucket
//! (`Subjects::container_bucket`), which only servers write and only the app's workers read,
//! checking on the way that it has the size and sha256 the caller recorded, and drops the
//! upload. So a bundle reaches an app's workers only through a token with the admin role for
//! that app, and the digest is known to be right before any worker fetches it.
//!
//! Whatever the administrators' user writes to the upload bucket is untrusted: an object may be
//! a link (into another app's bucket), claim chunks that are not there, or change while it is
//! copied. Links are refused, the copy has a deadline, and every copy is written under a name of
//! its own and deleted unless its bytes are what the request records.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use base64::Engine;
use rota_shared::container::{ContainerSource, UPLOAD_MAX_AGE};
use rota_shared::{ErrorCode, Subjects};
use std::future::Future;

use tokio::io::{AsyncRead, ReadBuf};

/// Why an uploaded bundle could not be moved into its app's bucket.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The upload named is not in the upload bucket (never uploaded, expired, or moved).
    #[error("no uploaded bundle {0:?}: upload it with `rota container upload ... PATH`")]
    Missing(String),
    /// Its bytes are not what the request recorded, or it is not a bundle at all (a link).
    #[error("the uploaded bundle is not what was recorded: {0}")]
    Mismatch(String),
    /// JetStream failed, or the copy did not end in time.
    #[error("object store: {0}")]
    Store(String),
}

impl AdoptError {
    /// The code of the error reply that reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing(_) => ErrorCode::NotFound,
            Self::Mismatch(_) => ErrorCode::InvalidArgument,
            Self::Store(_) => ErrorCode::Unavailable,
        }
    }
}

/// What the bundle must be, and where it goes.
pub struct Adopt<'a> {
    pub app: &'a str,
    pub upload: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub size: u64,
}

/// How long a copy may take: a few seconds, and a second for every 8 MiB (local JetStream
/// moves far more), so that an upload whose chunks never come cannot hold a request slot.
fn copy_deadline(size: u64) -> Duration {
    Duration::from_secs(5 + size / (8 * 1024 * 1024))
}

/// The digest as the object store writes it (`SHA-256=` and URL-safe base64), in hexadecimal.
fn digest_hex(digest: Option<&str>) -> Option<String> {
    let encoded = digest?.strip_prefix("SHA-256=")?;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates the upload bucket, or recreates it when it exists with a configuration a server did
/// not give it (another source, another stream's subjects, republishing, no expiry): whoever
/// creates a stream chooses where its messages come from and go.
pub async fn ensure_upload_bucket(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> Result<(), AdoptError> {
    let js = jetstream::new(client.clone());
    let bucket = subjects.upload_bucket();
    let stream = format!("OBJ_{bucket}");
    if let Ok(existing) = js.get_stream(&stream).await {
        if upload_bucket_is_sound(&existing.cached_info().config, &bucket) {
            return Ok(());
        }
        tracing::warn!(%stream, "the upload bucket is not configured as servers create it; recreating it");
        // Another server starting at the same moment may have deleted it first.
        if let Err(e) = js.delete_stream(&stream).await
            && js.get_stream(&stream).await.is_ok()
        {
            return Err(AdoptError::Store(format!("delete {stream}: {e}")));
        }
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.clone(),
        description: Some("Rota container bundles waiting to be recorded".to_owned()),
        max_age: UPLOAD_MAX_AGE,
        ..Default::default()
    })
    .await
    .map_err(|e| AdoptError::Store(format!("create bucket {bucket}: {e}")))?;
    Ok(())
}

/// Whether an upload bucket's stream is configured as servers create it: its own subjects only,
/// nothing copied in or out (sources, mirror, republish), the one-hour expiry, no limits, and
/// deletes, purges and rollups allowed (else uploads could not be dropped or replaced). Servers
/// own this bucket's configuration; one configured otherwise is recreated.
fn upload_bucket_is_sound(config: &jetstream::stream::Config, bucket: &str) -> bool {
    use jetstream::stream::{DiscardPolicy, RetentionPolicy};
    let subjects = [format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")];
    config.subjects == subjects
        && config.sources.as_ref().is_none_or(Vec::is_empty)
        && config.mirror.is_none()
        && config.republish.is_none()
        && config.max_age == UPLOAD_MAX_AGE
        && config.retention == RetentionPolicy::Limits
        && config.discard == DiscardPolicy::New
        && config.max_bytes <= 0
        && config.max_messages <= 0
        && config.max_messages_per_subject <= 0
        && config.max_message_size <= 0
        && !config.sealed
        && !config.deny_delete
        && !config.deny_purge
        && config.allow_rollup
        && config.allow_direct
}

/// Copies the upload into the app's bucket and returns where it now is; drops the upload
/// whatever the outcome.
pub async fn adopt(
    client: &async_nats::Client,
    subjects: &Subjects,
    a: Adopt<'_>,
) -> Result<ContainerSource, AdoptError> {
    // The copy's own deadline ends its reading (so that what it wrote is deleted whole); this
    // one is the backstop for a JetStream that stops answering altogether.
    let backstop = copy_deadline(a.size) * 2 + Duration::from_secs(10);
    let result = match tokio::time::timeout(backstop, copy(client, subjects, &a)).await {
        Ok(result) => result,
        Err(_) => Err(AdoptError::Store(format!(
            "JetStream did not answer within {backstop:?}"
        ))),
    };
    drop_upload(client, subjects, a.upload).await;
    result
}

async fn copy(
    client: &async_nats::Client,
    subjects: &Subjects,
    a: &Adopt<'_>,
) -> Result<ContainerSource, AdoptError> {
    let js = jetstream::new(client.clone());
    let upload_bucket = subjects.upload_bucket();
    let uploads = js
        .get_object_store(&upload_bucket)
        .await
        .map_err(|_| AdoptError::Missing(a.upload.to_owned()))?;
    let missing = |e: object_store::InfoError| match e.kind() {
        object_store::InfoErrorKind::NotFound => AdoptError::Missing(a.upload.to_owned()),
        _ => AdoptError::Store(e.to_string()),
    };
    let meta = uploads.info(a.upload).await.map_err(missing)?;
    if meta.deleted {
        return Err(AdoptError::Missing(a.upload.to_owned()));
    }
    // A link would make the server read another bucket with its own rights.
    if meta.options.as_ref().is_some_and(|o| o.link.is_some()) {
        return Err(AdoptError::Mismatch(
            "it is a link, not a bundle".to_owned(),
        ));
    }
    if meta.size as u64 != a.size {
        return Err(AdoptError::Mismatch(format!(
            "{} bytes, not {}",
            meta.size, a.size
        )));
    }
    let staged = uploads.get(a.upload).await.map_err(|e| match e.kind() {
        object_store::GetErrorKind::NotFound => AdoptError::Missing(a.upload.to_owned()),
        _ => AdoptError::Store(e.to_string()),
    })?;
    // Replaced by a link since it was looked at: `get` followed it elsewhere.
    if staged.info.bucket != upload_bucket || staged.info.name != a.upload {
        return Err(AdoptError::Mismatch(
            "it is a link, not a bundle".to_owned(),
        ));
    }

    let bucket = subjects.container_bucket(a.app);
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        // Creating is idempotent: two servers creating it at once get the same bucket.
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                description: Some(format!("Rota container bundles of app {}", a.app)),
                ..Default::default()
            })
            .await
            .map_err(|e| AdoptError::Store(format!("create bucket {bucket}: {e}")))?,
    };
    // A name of its own: a concurrent copy of the same version, or a destroy and re-create,
    // never touches this one's bytes.
    let object = format!(
        "{}/{}/{}/{}",
        a.name,
        a.version,
        a.sha256,
        uuid::Uuid::new_v4().simple()
    );
    // The copy ends at the first read error (the upload's own digest check, a lost chunk) or
    // at its deadline (chunks that never come) as if the bytes had ended there: the object is
    // then written whole, found short or wrong, and deleted, rather than leaving chunks no
    // object names.
    let deadline = copy_deadline(a.size);
    let mut reader = EndAtError::new(tokio::io::AsyncReadExt::take(staged, a.size + 1), deadline);
    let written = store
        .put(object.as_str(), &mut reader)
        .await
        .map_err(|e| AdoptError::Store(format!("copy into {bucket}: {e}")))?;
    let digest = digest_hex(written.digest.as_deref());
    if written.size as u64 != a.size || digest.as_deref() != Some(a.sha256) {
        // Best effort: a copy nobody records is never fetched.
        let _ = store.delete(&object).await;
        if reader
            .error
            .as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return Err(AdoptError::Store(format!(
                "the copy of {:?} did not end within {deadline:?}",
                a.upload
            )));
        }
        let why = reader.error.map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(AdoptError::Mismatch(format!(
            "{} bytes with sha256 {}, not {} bytes with sha256 {}{why}",
            written.size,
            digest.as_deref().unwrap_or("unknown"),
            a.size,
            a.sha256
        )));
    }
    Ok(ContainerSource::ObjectStore { bucket, object })
}

/// A reader that ends at its inner reader's first error or at a deadline, and keeps the error
/// (`TimedOut` for the deadline).
struct EndAtError<R> {
    inner: R,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    error: Option<std::io::Error>,
}

impl<R> EndAtError<R> {
    fn new(inner: R, within: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
            error: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for EndAtError<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.error.is_some() {
            return std::task::Poll::Ready(Ok(()));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.error = Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the deadline passed",
            ));
            return std::task::Poll::Ready(Ok(()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) => {
                self.error = Some(e);
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Drops an upload (recorded, refused or copied): best effort, since the upload bucket
/// expires what it keeps anyway.
pub async fn drop_upload(client: &async_nats::Client, subjects: &Subjects, upload: &str) {
    let js = jetstream::new(client.clone());
    if let Ok(uploads) = js.get_object_store(subjects.upload_bucket()).await
        && let Err(e) = uploads.delete(upload).await
    {
        tracing::debug!(%upload, error = %e, "could not drop an upload");
    }
}

/// Drops a recorded bundle from its app's bucket (`container destroy`): best effort, a
/// bundle nobody records any longer is never fetched.
pub async fn drop_bundle(client: &async_nats::Client, source: &ContainerSource) {
    if let ContainerSource::ObjectStore { bucket, object } = source {
        let js = jetstream::new(client.clone());
        if let Ok(store) = js.get_object_store(bucket).await
            && let Err(e) = store.delete(object).await
        {
            tracing::warn!(%bucket, %object, error = %e, "could not delete a destroyed bundle");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_digests_read_as_hex() {
        // sha256("") in the object store's notation.
        assert_eq!(
            digest_hex(Some("SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=")).as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(digest_hex(Some("MD5=abc")), None);
        assert_eq!(digest_hex(None), None);
    }

    #[test]
    fn only_an_upload_bucket_configured_as_servers_create_it_is_sound() {
        use jetstream::stream::{Config, DiscardPolicy, Republish};
        // As `create_object_store` asks for it, with nats-server's -1 for "no limit".
        let sound = Config {
            name: "OBJ_up".into(),
            subjects: vec!["$O.up.C.>".into(), "$O.up.M.>".into()],
            max_age: UPLOAD_MAX_AGE,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            ..Default::default()
        };
        assert!(upload_bucket_is_sound(&sound, "up"));
        type Change = (&'static str, fn(&mut Config));
        let changes: [Change; 9] = [
            ("other subjects", |c| c.subjects.push("rota.>".into())),
            ("a republish", |c| {
                c.republish = Some(Republish {
                    source: "$O.up.C.>".into(),
                    destination: "stolen.>".into(),
                    headers_only: false,
                })
            }),
            ("no expiry", |c| c.max_age = Duration::ZERO),
            ("old messages dropped", |c| c.discard = DiscardPolicy::Old),
            ("a size limit", |c| c.max_bytes = 1024),
            ("sealed", |c| c.sealed = true),
            ("no deletes", |c| c.deny_delete = true),
            ("no purges", |c| c.deny_purge = true),
            ("no rollups", |c| c.allow_rollup = false),
        ];
        for (what, change) in changes {
            let mut config = sound.clone();
            change(&mut config);
            assert!(!upload_bucket_is_sound(&config, "up"), "{what}");
        }
    }

    #[test]
    fn a_copy_has_seconds_and_more_for_a_big_bundle() {
        assert_eq!(copy_deadline(0), Duration::from_secs(5));
        assert_eq!(
            copy_deadline(rota_shared::container::MAX_BUNDLE_BYTES),
            Duration::from_secs(37)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_copy_whose_bytes_never_come() {
        use tokio::io::AsyncReadExt;
        let (_writer, never) = tokio::io::duplex(16);
        let mut reader = EndAtError::new((&b"abc"[..]).chain(never), Duration::from_secs(5));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("ends, no error");
        assert_eq!(out, b"abc");
        assert_eq!(
            reader.error.map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test]
    async fn a_read_error_ends_the_copy_and_is_kept() {
        use tokio::io::AsyncReadExt;
        let failing = abc_then_error();
        let mut reader = EndAtError::new(failing, Duration::from_secs(60));
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("ends, no error");
        assert_eq!(out, b"abc");
        assert_eq!(
            reader.error.map(|e| e.kind()),
            Some(std::io::ErrorKind::InvalidData)
        );
    }

    /// Three bytes, then an error.
    fn abc_then_error() -> impl AsyncRead + Unpin {
        use tokio::io::AsyncReadExt;
        (&b"abc"[..]).chain(Failing)
    }

    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "wrong digest",
            )))
        }
    }
}
