//! Uploaded container bundles. `rota container upload` puts a bundle in the upload bucket
//! (`Subjects::upload_bucket`), which the administrators' NATS user may write; once the
//! `container.create` verb has checked the caller's token for the app, the server copies the
//! bundle into the app's own bucket (`Subjects::container_bucket`), which only servers write and
//! only the app's workers read, checking on the way that it has the size and sha256 the caller
//! recorded, and drops the upload. So a bundle reaches an app's workers only through a token
//! with the admin role for that app, and the digest is known to be right before any worker
//! fetches it.

use async_nats::jetstream::{self, object_store};
use base64::Engine;
use rota_shared::Subjects;
use rota_shared::container::ContainerSource;
use tokio::io::AsyncReadExt;

/// Why an uploaded bundle could not be moved into its app's bucket.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The upload named is not in the upload bucket (never uploaded, expired, or moved).
    #[error("no uploaded bundle {0:?}: upload it with `rota container upload ... PATH`")]
    Missing(String),
    /// Its bytes are not what the request recorded.
    #[error("the uploaded bundle is not what was recorded: {0}")]
    Mismatch(String),
    /// JetStream failed.
    #[error("object store: {0}")]
    Store(String),
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

/// The digest as the object store writes it (`SHA-256=` and URL-safe base64), in hexadecimal.
fn digest_hex(digest: Option<&str>) -> Option<String> {
    let encoded = digest?.strip_prefix("SHA-256=")?;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Copies the upload into the app's bucket and returns where it now is.
pub async fn adopt(
    client: &async_nats::Client,
    subjects: &Subjects,
    a: Adopt<'_>,
) -> Result<ContainerSource, AdoptError> {
    let js = jetstream::new(client.clone());
    let uploads = js
        .get_object_store(subjects.upload_bucket())
        .await
        .map_err(|_| AdoptError::Missing(a.upload.to_owned()))?;
    let staged = uploads.get(a.upload).await.map_err(|e| match e.kind() {
        object_store::GetErrorKind::NotFound => AdoptError::Missing(a.upload.to_owned()),
        _ => AdoptError::Store(e.to_string()),
    })?;
    if staged.info.size as u64 != a.size {
        return Err(AdoptError::Mismatch(format!(
            "{} bytes, not {}",
            staged.info.size, a.size
        )));
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
    let object = format!("{}/{}/{}", a.name, a.version, a.sha256);
    // Never more than was recorded, plus one byte to notice a longer one.
    let mut reader = staged.take(a.size + 1);
    let written = store
        .put(object.as_str(), &mut reader)
        .await
        .map_err(|e| AdoptError::Store(format!("copy into {bucket}: {e}")))?;
    let digest = digest_hex(written.digest.as_deref());
    if written.size as u64 != a.size || digest.as_deref() != Some(a.sha256) {
        // Best effort: a digest-named object nobody records is harmless but wasteful.
        let _ = store.delete(&object).await;
        return Err(AdoptError::Mismatch(format!(
            "{} bytes with sha256 {}, not {} bytes with sha256 {}",
            written.size,
            digest.as_deref().unwrap_or("unknown"),
            a.size,
            a.sha256
        )));
    }
    drop_upload(client, subjects, a.upload).await;
    Ok(ContainerSource::ObjectStore { bucket, object })
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
}
