//! The `container` processor: runs an entry of a container bundle (offered only by a worker
//! started with containers allowed).
//!
//! The job names the container (`NAME` or `NAME@VERSION`) and the entry. At each run the worker
//! asks the owner which version that is and where its bundle is, takes it from its cache or
//! downloads and checks it, and runs the entry's command from the bundle's root, as the leader
//! of a process group of its own like `shell` (timeout and stop kill the whole group). The
//! entry's environment has the manifest's `env`, the work's `ROTA_*` variables (see `shell`),
//! `ROTA_CONTAINER` and `ROTA_CONTAINER_VERSION`; its standard input is one JSON object with the
//! instance, the parameters and the task. Its output becomes the instance's log, and **its last
//! line of standard output is the result** (exit status 0 succeeds, any other fails).
//!
//! An instance runs the version resolved when it started: a bundle is kept by its digest, so a
//! new version deployed meanwhile is another directory and changes nothing for it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;

use crate::containers::Containers;
use crate::context::TaskContext;
use crate::processor::{ProcessResult, Processor};
use crate::reaper::Reaper;

use super::shell::run_group;

pub(crate) struct ContainerProcessor {
    pub containers: Arc<Containers>,
    pub kill_grace: Duration,
    pub reaper: Arc<Reaper>,
}

impl Processor for ContainerProcessor {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        let containers = Arc::clone(&self.containers);
        let reaper = Arc::clone(&self.reaper);
        let kill_grace = self.kill_grace;
        Box::pin(async move { run(ctx, containers, kill_grace, reaper).await })
    }
}

async fn run(
    ctx: TaskContext,
    containers: Arc<Containers>,
    kill_grace: Duration,
    reaper: Arc<Reaper>,
) -> ProcessResult {
    let Some(job) = ctx.container.clone() else {
        return ProcessResult::failed("the job names no container (--container NAME --entry E)");
    };
    let info = match containers.info(&job.container).await {
        Ok(info) => info,
        Err(e) => {
            return ProcessResult::failed(format!("container {}: {e}", job.container.to_text()));
        }
    };
    let label = format!("{}@{}", info.name, info.version);
    let ready = match containers.ensure(info).await {
        Ok(ready) => ready,
        Err(e) => {
            ctx.error(format!("container {label} refused: {e}"));
            return ProcessResult::failed(format!("container {label}: {e}"));
        }
    };
    if ready.downloaded {
        ctx.info(format!("container {label} downloaded and checked"));
    }
    let Some(entry) = ready.manifest.processors.get(&job.entry) else {
        let offered: Vec<&str> = ready
            .manifest
            .processors
            .keys()
            .map(String::as_str)
            .collect();
        return ProcessResult::failed(format!(
            "container {label} has no processor {:?} (it has {})",
            job.entry,
            offered.join(", ")
        ));
    };
    let program = &entry.command[0];
    let mut cmd = if program.contains('/') {
        Command::new(ready.root.join(Path::new(program)))
    } else {
        Command::new(program)
    };
    cmd.args(&entry.command[1..])
        .current_dir(&ready.root)
        .envs(&entry.env)
        .env("ROTA_CONTAINER", &ready.info.name)
        .env("ROTA_CONTAINER_VERSION", &ready.info.version);
    let input = serde_json::json!({
        "instance_id": ctx.instance_id,
        "attempt": ctx.attempt,
        "job_id": ctx.job_id,
        "job_name": ctx.job_name,
        "job_params": ctx.job_params,
        "instance_params": ctx.instance_params,
        "container": ready.info.name,
        "version": ready.info.version,
        "task": {
            "id": ctx.task.id,
            "name": ctx.task.name,
            "payload": ctx.task.payload,
            "shard": ctx.task.shard,
        },
    });
    let stdin = serde_json::to_vec(&input).unwrap_or_default();
    let shown = program.clone();
    let result = run_group(ctx, cmd, &shown, Some(stdin), kill_grace, reaper).await;
    // The lease kept the bundle's directory from eviction and destroy until the entry ended.
    drop(ready);
    result
}
