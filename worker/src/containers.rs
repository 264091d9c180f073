//! Fetching containers: the seed's container request to the owner (`rota.app.{app}.srv.{sid}.
//! container`) says where a version of a bundle is and what it must hash to; the bundle is
//! downloaded from the deployment's NATS object store or its URL, checked and unpacked into the
//! cache (`bundle`), once: a worker started again finds it there.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rota_shared::container::{
    ContainerInfo, ContainerRef, ContainerRequest, ContainerSource, MAX_BUNDLE_BYTES, Manifest,
};
use rota_shared::subject::ServerEndpoint;

use crate::bundle::{BundleCache, BundleError, Lease, manifest};
use crate::link::{CallError, Link, REQUEST_TIMEOUT};

/// How long a download may take.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What the worker counts of its container fetches, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct FetchCounts {
    pub downloads: AtomicU64,
    pub cache_hits: AtomicU64,
    pub refusals: AtomicU64,
}

/// The worker's containers: the cache, and how bundles get into it.
pub(crate) struct Containers {
    link: Arc<Link>,
    client: async_nats::Client,
    cache: BundleCache,
    http: reqwest::Client,
    /// One download at a time: two instances that need the same bundle fetch it once.
    fetching: tokio::sync::Mutex<()>,
    pub counts: FetchCounts,
}

/// An unpacked bundle ready to run.
pub(crate) struct Ready {
    pub info: ContainerInfo,
    pub root: PathBuf,
    pub manifest: Manifest,
    /// Whether it was downloaded now (else the cache had it).
    pub downloaded: bool,
    /// Keeps the directory in place while the run uses it.
    pub _lease: Lease,
}

impl Containers {
    pub(crate) fn new(
        link: Arc<Link>,
        client: async_nats::Client,
        cache: BundleCache,
        http: reqwest::Client,
    ) -> Self {
        Self {
            link,
            client,
            cache,
            http,
            fetching: tokio::sync::Mutex::new(()),
            counts: FetchCounts::default(),
        }
    }

    /// What the owner records of a container's version (its newest when none is named).
    pub(crate) async fn info(&self, r: &ContainerRef) -> Result<ContainerInfo, BundleError> {
        let request = ContainerRequest {
            name: r.name.clone(),
            version: r.version.clone(),
        };
        self.link
            .call::<_, ContainerInfo>(ServerEndpoint::Container, &request, REQUEST_TIMEOUT)
            .await
            .map_err(|e| match e {
                CallError::Remote(body) => BundleError::Download(body.message),
                other => BundleError::Download(other.to_string()),
            })
    }

    /// The bundle of `info`, from the cache or downloaded now.
    pub(crate) async fn ensure(&self, info: ContainerInfo) -> Result<Ready, BundleError> {
        let result = self.ensure_inner(info).await;
        if result.is_err() {
            self.counts.refusals.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn ensure_inner(&self, info: ContainerInfo) -> Result<Ready, BundleError> {
        if let Some((root, lease)) = self.cache.lease(&info) {
            self.counts.cache_hits.fetch_add(1, Ordering::Relaxed);
            let manifest = manifest(&root)?;
            return Ok(Ready {
                info,
                root,
                manifest,
                downloaded: false,
                _lease: lease,
            });
        }
        let _one = self.fetching.lock().await;
        if let Some((root, lease)) = self.cache.lease(&info) {
            self.counts.cache_hits.fetch_add(1, Ordering::Relaxed);
            let manifest = manifest(&root)?;
            return Ok(Ready {
                info,
                root,
                manifest,
                downloaded: false,
                _lease: lease,
            });
        }
        let bytes = tokio::time::timeout(DOWNLOAD_TIMEOUT, self.download(&info))
            .await
            .map_err(|_| BundleError::Download(format!("not done in {DOWNLOAD_TIMEOUT:?}")))??;
        self.counts.downloads.fetch_add(1, Ordering::Relaxed);
        let cache = self.cache.clone_handle();
        let for_put = info.clone();
        tokio::task::spawn_blocking(move || cache.put(&for_put, &bytes))
            .await
            .map_err(|e| BundleError::Cache(e.to_string()))??;
        // Nothing else puts (and so evicts) while this fetch holds `fetching`.
        let (root, lease) = self
            .cache
            .lease(&info)
            .ok_or_else(|| BundleError::Cache("the bundle left the cache at once".to_owned()))?;
        let manifest = manifest(&root)?;
        Ok(Ready {
            info,
            root,
            manifest,
            downloaded: true,
            _lease: lease,
        })
    }

    /// Downloads a bundle, reading at most one byte more than was recorded (a longer one is
    /// refused by its size without being read whole).
    async fn download(&self, info: &ContainerInfo) -> Result<Vec<u8>, BundleError> {
        if info.size > MAX_BUNDLE_BYTES {
            return Err(BundleError::Download(format!(
                "the bundle is {} bytes; at most {MAX_BUNDLE_BYTES} are downloaded",
                info.size
            )));
        }
        let limit = info.size + 1;
        match &info.source {
            ContainerSource::ObjectStore { bucket, object } => {
                read_object(&self.client, bucket, object, limit).await
            }
            ContainerSource::Url { url } => fetch_bundle_url(&self.http, url, limit).await,
        }
        .map_err(BundleError::Download)
    }

    /// Drops a version from the cache (`container destroy`).
    pub(crate) fn remove(&self, name: &str, version: &str) -> bool {
        self.cache.remove(name, version)
    }

    /// The bundles in the cache, for heartbeats.
    pub(crate) fn deployed(&self) -> Vec<rota_shared::container::DeployedContainer> {
        self.cache.deployed()
    }
}

/// Downloads a bundle served over HTTP(S), reading at most `limit` bytes (a longer one is
/// noticed by its length without being read whole).
pub async fn fetch_bundle_url(
    http: &reqwest::Client,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("{url}: {e}"))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 >= limit {
            bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            break;
        }
    }
    Ok(bytes)
}

/// Reads an object of a bucket, at most `limit` bytes, with direct gets only: its metadata,
/// then its chunks one by one by subject. No consumer is created, so a worker needs no right to
/// create one (whoever creates a push consumer chooses where JetStream delivers it, unchecked
/// by NATS permissions). A link is refused: the server records objects, never links.
async fn read_object(
    client: &async_nats::Client,
    bucket: &str,
    object: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| format!("object store {bucket}: {e}"))?;
    let info = store
        .info(object)
        .await
        .map_err(|e| format!("object {object}: {e}"))?;
    if info.deleted {
        return Err(format!("object {object} was deleted"));
    }
    if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
        return Err(format!("object {object} is a link"));
    }
    let stream = js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|e| format!("object store {bucket}: {e}"))?;
    let subject = format!("$O.{bucket}.C.{}", info.nuid);
    let mut bytes = Vec::new();
    let mut next = None;
    for _ in 0..info.chunks {
        let chunk = stream
            .direct_get_next_for_subject(subject.as_str(), next)
            .await
            .map_err(|e| format!("object {object}: {e}"))?;
        bytes.extend_from_slice(&chunk.payload);
        if bytes.len() as u64 >= limit {
            bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            break;
        }
        next = Some(chunk.sequence + 1);
    }
    Ok(bytes)
}
