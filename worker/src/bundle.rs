//! Container bundles on a worker: checked against their recorded size and sha256, unpacked
//! safely, and kept in a content-addressed cache directory within a size limit.
//!
//! A bundle is unpacked into a temporary directory beside the cache entry and renamed into
//! place only once it is complete and its manifest is valid, so a half-written bundle is never
//! used, and a worker started again finds its cache as it left it. An archive entry that would
//! land outside its directory (an absolute path, `..`, a link of any kind, a device) refuses the
//! whole bundle before anything of it is used.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rota_shared::container::{ContainerInfo, MANIFEST_FILE, MAX_BUNDLE_BYTES, Manifest};
use sha2::{Digest, Sha256};

/// What a bundle may unpack to at most, against archives that inflate without end.
const MAX_UNPACKED_BYTES: u64 = 4 * MAX_BUNDLE_BYTES;

/// Why a bundle cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is {got} bytes, but {expected} were recorded")]
    Size { expected: u64, got: u64 },
    #[error("the bundle's sha256 is {got}, but {expected} was recorded (digest mismatch)")]
    Digest { expected: String, got: String },
    #[error("the bundle's archive entry {0:?} escapes its directory")]
    Escapes(String),
    #[error(
        "the bundle's archive entry {0:?} is a link or a special file, which bundles may not hold"
    )]
    NotAFile(String),
    #[error("the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooLarge,
    #[error("the bundle is not a readable .tar.gz: {0}")]
    Archive(String),
    #[error("the bundle's {MANIFEST_FILE}: {0}")]
    Manifest(String),
    #[error("the bundle cache: {0}")]
    Cache(String),
    #[error("the bundle could not be downloaded: {0}")]
    Download(String),
}

/// The sha256 of `bytes`, in lower-case hexadecimal.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks downloaded bytes against what was recorded.
pub(crate) fn verify(info: &ContainerInfo, bytes: &[u8]) -> Result<(), BundleError> {
    let got = bytes.len() as u64;
    if got != info.size {
        return Err(BundleError::Size {
            expected: info.size,
            got,
        });
    }
    let digest = sha256_hex(bytes);
    if digest != info.sha256 {
        return Err(BundleError::Digest {
            expected: info.sha256.clone(),
            got: digest,
        });
    }
    Ok(())
}

/// The path an archive entry names, if it stays inside the directory it is unpacked into.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            // `..`, `/`, a Windows prefix: out of the directory.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks a `.tar.gz` into `dest` (which must exist and be empty): regular files and
/// directories only, every one inside `dest`.
pub(crate) fn unpack(bytes: &[u8], dest: &Path) -> Result<(), BundleError> {
    let archive_error = |e: std::io::Error| BundleError::Archive(e.to_string());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let raw = entry.path().map_err(archive_error)?.into_owned();
        let shown = raw.display().to_string();
        let Some(relative) = inside(&raw) else {
            // The archive's root itself ("./") is fine; anything else that leaves is not.
            if raw.components().all(|c| c == Component::CurDir) {
                continue;
            }
            return Err(BundleError::Escapes(shown));
        };
        let target = dest.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| BundleError::Cache(e.to_string()))?;
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::NotAFile(shown));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BundleError::Cache(e.to_string()))?;
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let mut file =
            std::fs::File::create(&target).map_err(|e| BundleError::Cache(e.to_string()))?;
        let room = MAX_UNPACKED_BYTES.saturating_sub(total);
        let copied =
            std::io::copy(&mut (&mut entry).take(room + 1), &mut file).map_err(archive_error)?;
        total += copied;
        if total > MAX_UNPACKED_BYTES {
            return Err(BundleError::TooLarge);
        }
        // Only the owner's execute bit and read/write for the owner: what a bundle needs.
        use std::os::unix::fs::PermissionsExt;
        let perms = std::fs::Permissions::from_mode(if mode & 0o100 != 0 { 0o700 } else { 0o600 });
        std::fs::set_permissions(&target, perms).map_err(|e| BundleError::Cache(e.to_string()))?;
    }
    Ok(())
}

/// Reads and checks the manifest of an unpacked bundle: every entry's command must exist, in
/// the bundle when it names a path, else on the `PATH`.
pub(crate) fn manifest(root: &Path) -> Result<Manifest, BundleError> {
    let text = std::fs::read_to_string(root.join(MANIFEST_FILE))
        .map_err(|e| BundleError::Manifest(format!("cannot read it: {e}")))?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| BundleError::Manifest(e.to_string()))?;
    manifest.validate().map_err(BundleError::Manifest)?;
    for (name, entry) in &manifest.processors {
        let program = &entry.command[0];
        let found = if program.contains('/') {
            inside(Path::new(program)).is_some_and(|p| root.join(p).is_file())
        } else {
            on_path(program)
        };
        if !found {
            return Err(BundleError::Manifest(format!(
                "processor {name:?} runs {program:?}, which is neither in the bundle nor on the PATH"
            )));
        }
    }
    Ok(manifest)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The wall clock, read the one way the worker reads it.
fn now() -> SystemTime {
    let ms = u64::try_from(rota_transport::wall_ms()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// The cache: one directory per bundle, named by its sha256, and a record of its name and
/// version beside it. A bundle an entry is running from is leased: eviction passes it by, and
/// a destroyed one loses its record at once (no new run finds it) but its directory only when
/// the last run from it ends.
#[derive(Debug)]
pub(crate) struct BundleCache {
    dir: PathBuf,
    limit_bytes: u64,
    leases: Arc<Mutex<HashMap<String, usize>>>,
}

/// A run's hold on its bundle's directory; dropped when the run ends.
#[derive(Debug)]
pub(crate) struct Lease {
    dir: PathBuf,
    sha256: String,
    leases: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let last = match leases.get_mut(&self.sha256) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                leases.remove(&self.sha256);
                true
            }
        };
        // Destroyed while it ran: its directory goes now.
        if last && !self.dir.join(format!("{}.json", self.sha256)).exists() {
            let _ = std::fs::remove_dir_all(self.dir.join(&self.sha256));
        }
    }
}

/// What the cache records of a bundle next to its directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    name: String,
    version: String,
    size: u64,
}

impl BundleCache {
    pub(crate) fn new(dir: PathBuf, limit_bytes: u64) -> Self {
        Self {
            dir,
            limit_bytes,
            leases: Arc::default(),
        }
    }

    /// Another handle on the same cache directory and leases (for a blocking task).
    pub(crate) fn clone_handle(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            limit_bytes: self.limit_bytes,
            leases: Arc::clone(&self.leases),
        }
    }

    /// Leases a bundle for a run, if the cache has it.
    pub(crate) fn lease(&self, info: &ContainerInfo) -> Option<(PathBuf, Lease)> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.get(info)?;
        *leases.entry(info.sha256.clone()).or_default() += 1;
        Some((
            path,
            Lease {
                dir: self.dir.clone(),
                sha256: info.sha256.clone(),
                leases: Arc::clone(&self.leases),
            },
        ))
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The unpacked bundle, if the cache has it (and marks it used now).
    pub(crate) fn get(&self, info: &ContainerInfo) -> Option<PathBuf> {
        let path = self.entry(&info.sha256);
        let record = self.dir.join(format!("{}.json", info.sha256));
        // No record: destroyed (its directory may stay a while for a run still using it).
        if !path.is_dir() || !record.is_file() {
            return None;
        }
        // The record's modification time is the entry's last use, for eviction.
        let _ = std::fs::File::options()
            .write(true)
            .open(&record)
            .and_then(|f| f.set_modified(now()));
        Some(path)
    }

    /// Checks downloaded bytes, unpacks them and puts the bundle in the cache; returns its
    /// directory. The bundle is in place only once it is whole and its manifest is valid.
    pub(crate) fn put(&self, info: &ContainerInfo, bytes: &[u8]) -> Result<PathBuf, BundleError> {
        verify(info, bytes)?;
        let cache_error = |e: std::io::Error| BundleError::Cache(e.to_string());
        std::fs::create_dir_all(&self.dir).map_err(cache_error)?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&tmp).map_err(cache_error)?;
        let unpacked = unpack(bytes, &tmp).and_then(|()| manifest(&tmp).map(|_| ()));
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let record = Record {
            name: info.name.clone(),
            version: info.version.clone(),
            size: info.size,
        };
        let json = serde_json::to_vec(&record).map_err(|e| BundleError::Cache(e.to_string()))?;
        // Under the leases' lock: the last run of a destroyed copy must not remove the
        // directory between the record's write and the rename.
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::write(self.dir.join(format!("{}.json", info.sha256)), json)
            .map_err(cache_error)?;
        let path = self.entry(&info.sha256);
        match std::fs::rename(&tmp, &path) {
            Ok(()) => {}
            // Another fetch of the same bundle finished first: its copy is as good.
            Err(_) if path.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(cache_error(e));
            }
        }
        drop(leases);
        self.evict(&info.sha256);
        Ok(path)
    }

    /// Removes what a worker that ended abruptly may have left: half-unpacked directories and
    /// directories of bundles destroyed while a run used them. Called before the worker takes
    /// work, when nothing runs from the cache.
    pub(crate) fn sweep(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let recorded = self.dir.join(format!("{name}.json")).is_file();
            if is_dir && (name.starts_with(".tmp-") || !recorded) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The bundles in the cache: (sha256, name, version, size, last use).
    fn entries(&self) -> Vec<(String, Record, SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let sha = name.strip_suffix(".json")?.to_owned();
                let record: Record = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                self.entry(&sha).is_dir().then_some((sha, record, used))
            })
            .collect()
    }

    /// Name and version of every bundle in the cache, for heartbeats.
    pub(crate) fn deployed(&self) -> Vec<rota_shared::container::DeployedContainer> {
        let mut out: Vec<_> = self
            .entries()
            .into_iter()
            .map(|(_, r, _)| rota_shared::container::DeployedContainer {
                name: r.name,
                version: r.version,
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// Drops a bundle (`container destroy`); whether it was there. A leased one keeps its
    /// directory until its last run ends.
    pub(crate) fn remove(&self, name: &str, version: &str) -> bool {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = false;
        for (sha, record, _) in self.entries() {
            if record.name == name && record.version == version {
                let _ = std::fs::remove_file(self.dir.join(format!("{sha}.json")));
                if !leases.contains_key(&sha) {
                    let _ = std::fs::remove_dir_all(self.entry(&sha));
                }
                removed = true;
            }
        }
        removed
    }

    /// Drops the least recently used bundles while the cache holds more than its limit,
    /// never `keep` (the bundle just put) nor one a run is using: the cache may stay over
    /// its limit until those runs end.
    fn evict(&self, keep: &str) {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|(_, r, _)| r.size).sum();
        entries.sort_by_key(|(_, _, used)| *used);
        for (sha, record, _) in entries {
            if total <= self.limit_bytes {
                break;
            }
            if sha == keep || leases.contains_key(&sha) {
                continue;
            }
            let _ = std::fs::remove_file(self.dir.join(format!("{sha}.json")));
            let _ = std::fs::remove_dir_all(self.entry(&sha));
            total = total.saturating_sub(record.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Gz = flate2::write::GzEncoder<Vec<u8>>;

    /// A `.tar.gz` whose entries are written raw, so that an entry may name any path (the tar
    /// crate refuses to build `..` itself, an attacker's tool does not).
    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Gz::new(Vec::new(), flate2::Compression::fast()));
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_gnu_mut().expect("a GNU header").name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("../../outside").expect("a link name");
                header.set_size(0);
            }
            header.set_cksum();
            builder
                .append(
                    &header,
                    if *kind == tar::EntryType::Symlink {
                        &b""[..]
                    } else {
                        data
                    },
                )
                .expect("an entry");
        }
        builder
            .into_inner()
            .and_then(|gz| gz.finish())
            .expect("an archive")
    }

    const MANIFEST: &[u8] = b"[processors.hello]\ncommand = [\"./run.sh\"]\n";

    fn info(bytes: &[u8]) -> ContainerInfo {
        ContainerInfo {
            id: 1,
            app_id: 1,
            name: "demo".into(),
            version: "1".into(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            source: rota_shared::container::ContainerSource::Url {
                url: "http://127.0.0.1/b.tar.gz".into(),
            },
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_good_bundle_is_unpacked_into_the_cache() {
        let dir = tempfile::tempdir().expect("a directory");
        let cache = BundleCache::new(dir.path().join("cache"), 1 << 30);
        let bytes = archive(&[
            (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
            ("run.sh", tar::EntryType::Regular, b"#!/bin/sh\necho hi\n"),
            ("lib/", tar::EntryType::Directory, b""),
        ]);
        let info = info(&bytes);
        assert!(cache.get(&info).is_none());
        let path = cache.put(&info, &bytes).expect("a valid bundle");
        assert!(path.join("run.sh").is_file());
        assert_eq!(cache.get(&info), Some(path.clone()));
        let manifest = manifest(&path).expect("its manifest");
        assert_eq!(manifest.processors["hello"].command, vec!["./run.sh"]);
        assert_eq!(cache.deployed().len(), 1);
        assert!(cache.remove("demo", "1"));
        assert!(cache.get(&info).is_none());
    }

    #[test]
    fn a_changed_or_cut_bundle_is_refused() {
        let bytes = archive(&[(MANIFEST_FILE, tar::EntryType::Regular, MANIFEST)]);
        let mut recorded = info(&bytes);
        recorded.sha256 = "0".repeat(64);
        assert!(matches!(
            verify(&recorded, &bytes),
            Err(BundleError::Digest { .. })
        ));
        let recorded = info(&bytes);
        assert!(matches!(
            verify(&recorded, &bytes[..bytes.len() - 1]),
            Err(BundleError::Size { .. })
        ));
    }

    #[test]
    fn entries_that_escape_are_refused_and_write_nothing_outside() {
        let dir = tempfile::tempdir().expect("a directory");
        let cache = BundleCache::new(dir.path().join("cache"), 1 << 30);
        let outside = dir.path().join("outside");
        for (path, kind) in [
            ("../outside", tar::EntryType::Regular),
            ("/tmp/rota-bundle-absolute", tar::EntryType::Regular),
            ("sub/../../outside", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("hard", tar::EntryType::Link),
        ] {
            let bytes = archive(&[
                (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
                (path, kind, b"pwned"),
            ]);
            let err = cache.put(&info(&bytes), &bytes).expect_err(path);
            assert!(
                matches!(err, BundleError::Escapes(_) | BundleError::NotAFile(_)),
                "{path}: {err}"
            );
            assert!(cache.get(&info(&bytes)).is_none(), "{path} left a bundle");
        }
        assert!(!outside.exists(), "an entry was written outside the cache");
        assert!(!Path::new("/tmp/rota-bundle-absolute").exists());
        // Nothing half-unpacked stays behind either.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .expect("the cache")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_manifest_naming_a_missing_command_is_refused() {
        let dir = tempfile::tempdir().expect("a directory");
        let cache = BundleCache::new(dir.path().join("cache"), 1 << 30);
        let bytes = archive(&[(
            MANIFEST_FILE,
            tar::EntryType::Regular,
            b"[processors.hello]\ncommand = [\"./missing.sh\"]\n",
        )]);
        assert!(matches!(
            cache.put(&info(&bytes), &bytes),
            Err(BundleError::Manifest(_))
        ));
        let bytes = archive(&[(
            MANIFEST_FILE,
            tar::EntryType::Regular,
            b"[processors.hello]\ncommand = [\"no-such-program-anywhere\"]\n",
        )]);
        assert!(matches!(
            cache.put(&info(&bytes), &bytes),
            Err(BundleError::Manifest(_))
        ));
    }

    #[test]
    fn the_least_recently_used_bundles_go_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("a directory");
        let first = archive(&[
            (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
            ("run.sh", tar::EntryType::Regular, b"1"),
        ]);
        let second = archive(&[
            (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
            ("run.sh", tar::EntryType::Regular, b"2"),
        ]);
        // Room for one of them.
        let cache = BundleCache::new(dir.path().join("cache"), first.len() as u64 + 1);
        let mut a = info(&first);
        a.version = "1".into();
        let mut b = info(&second);
        b.version = "2".into();
        cache.put(&a, &first).expect("the first");
        cache.put(&b, &second).expect("the second");
        assert!(cache.get(&a).is_none(), "the older one was evicted");
        assert!(cache.get(&b).is_some());
    }

    #[test]
    fn a_bundle_in_use_is_neither_evicted_nor_removed_under_its_run() {
        let dir = tempfile::tempdir().expect("a directory");
        let bundles: Vec<(ContainerInfo, Vec<u8>)> = (1..=3)
            .map(|n| {
                let bytes = archive(&[
                    (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
                    ("run.sh", tar::EntryType::Regular, n.to_string().as_bytes()),
                ]);
                let mut i = info(&bytes);
                i.version = n.to_string();
                (i, bytes)
            })
            .collect();
        let [(a, a_bytes), (b, b_bytes), (c, c_bytes)] = &bundles[..] else {
            unreachable!("three bundles");
        };
        // Room for one bundle.
        let cache = BundleCache::new(dir.path().join("cache"), a_bytes.len() as u64 + 1);
        cache.put(a, a_bytes).expect("the first");
        let (root, lease) = cache.lease(a).expect("leased");
        // A second version arrives while a run uses the first: the cache goes over its
        // limit rather than pull the first from under its run.
        cache.put(b, b_bytes).expect("the second");
        assert!(root.join("run.sh").is_file(), "still there for its run");
        assert!(cache.get(b).is_some());
        drop(lease);
        // Unused now: the next bundle put evicts it.
        let (root, lease) = {
            cache.put(c, c_bytes).expect("the third");
            cache.lease(c).expect("leased")
        };
        assert!(cache.get(a).is_none(), "evicted once its run ended");

        // Destroyed while a run uses it: no longer listed or found, its files stay for the
        // run and go when it ends.
        assert!(cache.remove(&c.name, &c.version));
        assert!(cache.get(c).is_none(), "a new run does not find it");
        assert!(cache.deployed().is_empty(), "{:?}", cache.deployed());
        assert!(root.join("run.sh").is_file(), "still there for its run");
        drop(lease);
        assert!(!root.exists(), "gone once its run ended");
    }

    #[test]
    fn a_sweep_removes_what_an_abrupt_end_left() {
        let dir = tempfile::tempdir().expect("a directory");
        let bytes = archive(&[
            (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST),
            ("run.sh", tar::EntryType::Regular, b"1"),
        ]);
        let cache = BundleCache::new(dir.path().join("cache"), u64::MAX);
        let kept = cache.put(&info(&bytes), &bytes).expect("a bundle");
        let half = dir.path().join("cache").join(".tmp-half");
        let destroyed = dir.path().join("cache").join("f".repeat(64));
        for d in [&half, &destroyed] {
            std::fs::create_dir_all(d.join("x")).expect("a leftover");
        }
        cache.sweep();
        assert!(!half.exists() && !destroyed.exists());
        assert!(kept.join("run.sh").is_file(), "a recorded bundle stays");
    }
}
