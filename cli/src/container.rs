//! `rota container`: upload a bundle to the deployment's NATS object store (or record one served
//! over HTTP), list the versions and where they are deployed, deploy and destroy.

use std::path::Path;

use anyhow::Context;
use rota_shared::admin::{
    ContainerCreate, ContainerDeploy, ContainerDestroy, ContainerList, ContainerRollout,
};
use rota_shared::container::{ContainerSource, MANIFEST_FILE, MAX_BUNDLE_BYTES, parse_sha256};
use rota_transport::keys::random_text;
use sha2::{Digest, Sha256};

use crate::admin::client;
use crate::args::ContainerCommand;
use crate::config::Settings;
use crate::table::{render, safe, time};
use crate::usage::usage;

/// How long the server may take to record an upload (it copies the bundle first).
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A directory packed as a `.tar.gz` (its manifest must be at its root), or a `.tar.gz` as it
/// is.
fn bundle_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.is_dir() {
        if !path.join(MANIFEST_FILE).is_file() {
            return Err(usage!(
                "{} has no {MANIFEST_FILE} at its root",
                path.display()
            ));
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", path)
            .with_context(|| format!("pack {}", path.display()))?;
        return Ok(tar.into_inner()?.finish()?);
    }
    std::fs::read(path).map_err(|e| usage!("cannot read {}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn show_rollout(settings: &Settings, r: &ContainerRollout) -> anyhow::Result<()> {
    if settings.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        let rows: Vec<Vec<String>> = r
            .workers
            .iter()
            .map(|w| {
                vec![
                    safe(&w.worker_id).into_owned(),
                    if w.ok { "ok" } else { "failed" }.to_owned(),
                    safe(&w.message).into_owned(),
                ]
            })
            .collect();
        println!("{}", render(&["WORKER", "RESULT", "MESSAGE"], &rows));
    }
    if r.workers.iter().any(|w| !w.ok) {
        anyhow::bail!(
            "{} of {} workers failed",
            r.workers.iter().filter(|w| !w.ok).count(),
            r.workers.len()
        );
    }
    Ok(())
}

pub async fn run(settings: &Settings, cmd: ContainerCommand) -> anyhow::Result<()> {
    let c = client(settings).await?;
    match cmd {
        ContainerCommand::Upload {
            app,
            name,
            version,
            path,
            url,
            sha256,
            size,
        } => {
            // The upload, to drop when the server does not record it.
            let mut uploaded = None;
            let (sha256, size, source) = match (path, url) {
                (Some(path), _) => {
                    let bytes = bundle_bytes(&path)?;
                    let size = bytes.len() as u64;
                    if size > MAX_BUNDLE_BYTES {
                        return Err(usage!(
                            "the bundle is {size} bytes; at most {MAX_BUNDLE_BYTES} are allowed"
                        ));
                    }
                    let sha256 = sha256_hex(&bytes);
                    // A random name in the upload bucket: the server moves the bundle into the
                    // app's bucket once it has checked the caller's token, and drops it here.
                    let object = format!("{app}/{}", random_text(16).context("an upload name")?);
                    let upload = c.subjects().upload_bucket();
                    let js = async_nats::jetstream::new(c.nats().clone());
                    // Servers create the upload bucket when they start.
                    let store = js.get_object_store(&upload).await.map_err(|e| {
                        anyhow::anyhow!(
                            "no upload bucket {upload} ({e}): servers create it when they start on a NATS with JetStream"
                        )
                    })?;
                    store
                        .put(object.as_str(), &mut bytes.as_slice())
                        .await
                        .context("upload the bundle to the object store")?;
                    uploaded = Some((store, object.clone()));
                    (
                        sha256,
                        size,
                        ContainerSource::ObjectStore {
                            bucket: upload,
                            object,
                        },
                    )
                }
                (None, Some(url)) => {
                    let sha = parse_sha256(sha256.as_deref().unwrap_or_default())
                        .map_err(|e| usage!("{e}"))?;
                    let size = match size {
                        Some(size) => size,
                        // Fetched once here, so that a wrong digest or an unreachable URL is
                        // told now rather than at the first run.
                        None => {
                            let http = rota_worker::builtin::http_client()
                                .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?;
                            let bytes =
                                rota_worker::fetch_bundle_url(&http, &url, MAX_BUNDLE_BYTES + 1)
                                    .await
                                    .map_err(|e| usage!("cannot fetch the bundle: {e}"))?;
                            let size = bytes.len() as u64;
                            if size > MAX_BUNDLE_BYTES {
                                return Err(usage!(
                                    "the bundle at {url} is over {MAX_BUNDLE_BYTES} bytes"
                                ));
                            }
                            let found = sha256_hex(&bytes);
                            if found != sha {
                                return Err(usage!(
                                    "the bundle at {url} has sha256 {found}, not {sha}"
                                ));
                            }
                            size
                        }
                    };
                    (sha, size, ContainerSource::Url { url })
                }
                (None, None) => return Err(usage!("give a PATH, or --url and --sha256")),
            };
            // The server copies an upload into the app's bucket before it answers.
            let c = match settings.request_timeout {
                Some(_) => c,
                None => c.with_timeout(RECORD_TIMEOUT),
            };
            let recorded = c
                .call(&ContainerCreate {
                    app,
                    name,
                    version,
                    sha256,
                    size,
                    source,
                })
                .await;
            let info = match (recorded, uploaded) {
                (Ok(info), _) => info,
                // Refused (a token without the admin role, say): the upload goes too, rather
                // than waiting for the bucket to expire it. Not when the answer was lost: the
                // server may still be copying it.
                (Err(e), Some((store, object))) if e.remote().is_some() => {
                    let _ = store.delete(object.as_str()).await;
                    return Err(e.into());
                }
                (Err(e), _) => return Err(e.into()),
            };
            if settings.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "container {}@{} recorded: {} bytes, sha256 {}, from {}",
                    info.name,
                    info.version,
                    info.size,
                    info.sha256,
                    info.source.describe()
                );
            }
            Ok(())
        }
        ContainerCommand::List { app } => {
            let list = c.call(&ContainerList { app }).await?;
            if settings.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|l| {
                    vec![
                        safe(&l.container.name).into_owned(),
                        safe(&l.container.version).into_owned(),
                        l.container.size.to_string(),
                        l.container.sha256[..12.min(l.container.sha256.len())].to_owned(),
                        time(Some(l.container.created_at_ms)),
                        l.workers.join(","),
                    ]
                })
                .collect();
            println!(
                "{}",
                render(
                    &["NAME", "VERSION", "SIZE", "SHA256", "CREATED", "WORKERS"],
                    &rows
                )
            );
            Ok(())
        }
        ContainerCommand::Deploy { app, name, version } => {
            let r = c.call(&ContainerDeploy { app, name, version }).await?;
            show_rollout(settings, &r)
        }
        ContainerCommand::Destroy { app, name, version } => {
            let r = c.call(&ContainerDestroy { app, name, version }).await?;
            show_rollout(settings, &r)
        }
    }
}
