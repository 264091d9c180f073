//! Administrative requests on `rota.admin.{area}.{verb}` (DESIGN §9).
//!
//! Every request is verified by the gate (sealed with a known, unrevoked token), then needs the
//! role its verb declares (`AdminRequest::ROLE`) and, for a token scoped to an app, concerns that
//! app only. Replies are sealed with the caller's token key.

use std::collections::HashMap;

use rota_shared::admin::*;
use rota_shared::container::ContainerSource;
use rota_shared::limits::Limited;
use rota_shared::message::{RemoteCall, WorkerSummary};
use rota_shared::subject::validate_token;
use rota_shared::{ErrorBody, ErrorCode, Instance, InstanceStatus, Trigger};
use rota_transport::keys::{APP_KEY_PURPOSE, TOKEN_PURPOSE, open_secret, seal_secret};
use rota_transport::{AdminToken, Incoming, Key, RequestErrorKind, decode_message};

use crate::bundles;
use crate::core::Core;
use crate::dispatch::Handed;
use crate::gate::Caller;
use crate::ownership::ensure_owner;
use crate::store::{InstanceFilter, InstanceGuard, Job, NewInstance, StoreError, StoredToken};

type AdminResult<T> = Result<T, ErrorBody>;

macro_rules! route {
    ($core:expr, $caller:expr, $msg:expr, $handler:ident, $req:ty) => {{
        let result = match $caller.require(<$req as AdminRequest>::ROLE) {
            Ok(()) => match decode_message::<$req>($msg.message()) {
                Ok(request) => $handler($core, $caller, request).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        $core
            .transport
            .respond::<<$req as AdminRequest>::Reply>($msg, result, Some(&$caller.key))
            .await
    }};
}

/// Answers one admin request, received on `rota.admin.*` or on this server's own
/// `rota.srv.{sid}.admin.*`.
pub async fn handle(core: &Core, msg: &Incoming) {
    let subject = msg.subject();
    let Some((area, verb)) = core
        .subjects
        .parse_admin(subject)
        .or_else(|| core.subjects.parse_server_admin(&core.id, subject))
    else {
        return core
            .transport
            .respond::<()>(msg, Err(unknown(subject)), None)
            .await;
    };
    let caller = match core
        .gate
        .verify_admin(&core.store, msg.message(), core.clock.now_ms())
        .await
    {
        Ok(caller) => caller,
        Err(e) => return core.transport.respond::<()>(msg, Err(e), None).await,
    };
    let caller = &caller;
    match (area, verb) {
        ("app", "create") => route!(core, caller, msg, app_create, AppCreate),
        ("app", "rotate_secret") => route!(core, caller, msg, app_rotate_secret, AppRotateSecret),
        ("app", "list") => route!(core, caller, msg, app_list, AppList),
        ("job", "create") => route!(core, caller, msg, job_create, JobCreate),
        ("job", "update") => route!(core, caller, msg, job_update, JobUpdate),
        ("job", "list") => route!(core, caller, msg, job_list, JobList),
        ("job", "show") => route!(core, caller, msg, job_show, JobShow),
        ("job", "enable") => route!(core, caller, msg, job_enable, JobEnable),
        ("job", "disable") => route!(core, caller, msg, job_disable, JobDisable),
        ("job", "delete") => route!(core, caller, msg, job_delete, JobDelete),
        ("job", "run") => route!(core, caller, msg, job_run, JobRun),
        ("instance", "list") => route!(core, caller, msg, instance_list, InstanceList),
        ("instance", "show") => route!(core, caller, msg, instance_show, InstanceShow),
        ("instance", "stop") => route!(core, caller, msg, instance_stop, InstanceStop),
        ("instance", "retry") => route!(core, caller, msg, instance_retry, InstanceRetry),
        ("instance", "tasks") => route!(core, caller, msg, instance_tasks, InstanceTasks),
        ("logs", "get") => route!(core, caller, msg, logs_get, LogsGet),
        ("container", "create") => route!(core, caller, msg, container_create, ContainerCreate),
        ("container", "list") => route!(core, caller, msg, container_list, ContainerList),
        ("container", "deploy") => route!(core, caller, msg, container_deploy, ContainerDeploy),
        ("container", "destroy") => {
            route!(core, caller, msg, container_destroy, ContainerDestroy)
        }
        ("worker", "list") => route!(core, caller, msg, worker_list, WorkerList),
        ("server", "list") => route!(core, caller, msg, server_list, ServerList),
        ("server", "stats") => route!(core, caller, msg, server_stats, ServerStats),
        ("token", "create") => route!(core, caller, msg, token_create, TokenCreate),
        ("token", "list") => route!(core, caller, msg, token_list, TokenList),
        ("token", "revoke") => route!(core, caller, msg, token_revoke, TokenRevoke),
        _ => {
            let e = unknown(subject);
            core.transport
                .respond::<()>(msg, Err(e), Some(&caller.key))
                .await
        }
    }
}

/// The default and the largest page of a list.
const DEFAULT_PAGE: u64 = 100;

fn page_limit(asked: Option<u64>, default: u64) -> usize {
    usize::try_from(asked.unwrap_or(default).clamp(1, MAX_PAGE)).unwrap_or(100)
}

/// What a page's items may take of a reply: NATS' max payload, less room for the envelope.
fn page_budget(core: &Core) -> usize {
    core.transport
        .client()
        .server_info()
        .max_payload
        .saturating_sub(16 * 1024)
}

/// A page of `items` (fetched one past `limit`, to know whether more exist): at most `limit`,
/// and no more than fit `budget` bytes of JSON. `next` names the last item taken when more
/// remain.
fn paged<T: serde::Serialize>(
    items: Vec<T>,
    limit: usize,
    budget: usize,
    cursor: impl Fn(&T) -> String,
) -> Page<T> {
    let mut more = items.len() > limit;
    let mut used = 0;
    let mut taken = Vec::with_capacity(items.len().min(limit));
    for item in items.into_iter().take(limit) {
        let size = serde_json::to_vec(&item).map_or(0, |v| v.len()) + 1;
        if !taken.is_empty() && used + size > budget {
            more = true;
            break;
        }
        used += size;
        taken.push(item);
    }
    let next = if more {
        taken.last().map(&cursor)
    } else {
        None
    };
    Page { items: taken, next }
}

/// A numeric cursor (a job's or an instance's id).
fn id_cursor(after: Option<&str>) -> AdminResult<Option<i64>> {
    after
        .map(|c| {
            c.parse()
                .map_err(|_| ErrorBody::invalid(format!("invalid cursor {c:?}")))
        })
        .transpose()
}

/// Workers are listed by app, then id; a cursor is `{app_id}:{worker_id}`.
fn worker_key(w: &WorkerSummary) -> (i64, String) {
    (w.app_id, w.worker_id.clone())
}

fn worker_cursor(after: Option<&str>) -> AdminResult<Option<(i64, String)>> {
    after
        .map(|c| {
            c.split_once(':')
                .and_then(|(app, worker)| Some((app.parse().ok()?, worker.to_owned())))
                .ok_or_else(|| ErrorBody::invalid(format!("invalid cursor {c:?}")))
        })
        .transpose()
}

/// The first `n` workers this server holds for the apps it owns, after the cursor, in order.
fn local_workers_after(
    core: &Core,
    app_id: Option<i64>,
    after: Option<&str>,
    n: usize,
) -> AdminResult<Vec<WorkerSummary>> {
    let after = worker_cursor(after)?;
    let mut workers: Vec<WorkerSummary> = local_workers(core, app_id)
        .into_iter()
        .filter(|w| after.as_ref().is_none_or(|a| worker_key(w) > *a))
        .collect();
    workers.sort_by_key(worker_key);
    workers.truncate(n);
    Ok(workers)
}

fn worker_page(core: &Core, workers: Vec<WorkerSummary>, limit: usize) -> Page<WorkerSummary> {
    paged(workers, limit, page_budget(core), |w| {
        format!("{}:{}", w.app_id, w.worker_id)
    })
}

/// A page of the workers this server holds for the apps it owns.
fn local_worker_page(
    core: &Core,
    app_id: Option<i64>,
    after: Option<&str>,
    limit: usize,
) -> AdminResult<Page<WorkerSummary>> {
    let workers = local_workers_after(core, app_id, after, limit + 1)?;
    Ok(worker_page(core, workers, limit))
}

fn unknown(subject: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotFound,
        format!("no admin request is served on {subject}"),
    )
}

/// The app a request names, which the caller's scope must allow; or, when it names none, the
/// caller's own app for a scoped token.
async fn scoped_app(core: &Core, caller: &Caller, name: Option<&str>) -> AdminResult<Option<i64>> {
    match name {
        Some(name) => {
            let app = core.store.app_by_name(name).await?;
            caller.require_app(app.id)?;
            Ok(Some(app.id))
        }
        None => Ok(caller.app_id),
    }
}

/// Names of jobs are plain words so that they read well in tables and logs.
fn validate_name(kind: &str, name: &str, max: usize) -> AdminResult<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= max
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ErrorBody::invalid(format!(
            "invalid {kind} name {name:?}: 1 to {max} letters, digits, spaces, '-', '_', '.' or ':'"
        )))
    }
}

/// The app key an admin request carries, sealed with the caller's token key.
fn app_key_of(caller: &Caller, sealed: &str) -> AdminResult<Key> {
    let bytes = open_secret(&caller.key, APP_KEY_PURPOSE, sealed)
        .map_err(|_| ErrorBody::invalid("the app key is not sealed for this token"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ErrorBody::invalid("an app key is 32 bytes"))?;
    Ok(Key::from_bytes(bytes))
}

async fn app_create(core: &Core, caller: &Caller, r: AppCreate) -> AdminResult<AppInfo> {
    caller.require_unscoped()?;
    // An app's name is a subject token: its workers' subjects carry it.
    validate_token(&r.name).map_err(|e| ErrorBody::invalid(format!("invalid app name: {e}")))?;
    let key = app_key_of(caller, &r.sealed_key)?;
    let now = core.clock.now_ms();
    let app = core.store.create_app(&r.name, &key, now).await?;
    // So that this server knows the app's workers at once; the others re-read within a second.
    core.gate.refresh_apps(&core.store, now).await?;
    Ok(app)
}

async fn app_rotate_secret(
    core: &Core,
    caller: &Caller,
    r: AppRotateSecret,
) -> AdminResult<AppInfo> {
    caller.require_unscoped()?;
    let app = core.store.app_by_name(&r.name).await?;
    let key = app_key_of(caller, &r.sealed_key)?;
    let now = core.clock.now_ms();
    let grace = i64::try_from(r.grace_ms).unwrap_or(i64::MAX / 2);
    core.store.rotate_app_key(app.id, &key, now, grace).await?;
    core.gate.refresh_apps(&core.store, now).await?;
    tracing::info!(app = %app.name, grace_ms = r.grace_ms, "app secret rotated");
    Ok(app)
}

async fn app_list(core: &Core, caller: &Caller, _: AppList) -> AdminResult<Vec<AppInfo>> {
    Ok(core
        .store
        .list_apps()
        .await?
        .into_iter()
        .filter(|a| caller.app_id.is_none_or(|scope| scope == a.id))
        .collect())
}

// === Tokens ===

fn token_info(t: &StoredToken, apps: &HashMap<i64, String>) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        role: t.role,
        app: t
            .app_id
            .map(|id| apps.get(&id).cloned().unwrap_or_else(|| id.to_string())),
        description: t.description.clone(),
        created_at_ms: t.created_at_ms,
        revoked_at_ms: t.revoked_at_ms,
    }
}

/// Makes an admin token straight in the database: `rota token create --database-url` (the
/// first token of a deployment), `rota dev` and the test kit. Returns it, to be shown once.
pub async fn create_token(
    store: &crate::store::Store,
    role: Role,
    app: Option<&str>,
    description: &str,
) -> AdminResult<(TokenInfo, AdminToken)> {
    let app = match app {
        Some(name) => Some(store.app_by_name(name).await?),
        None => None,
    };
    // Outside a running server: the system's clock.
    let now = crate::clock::Clock::system().now_ms();
    let (token, stored) =
        make_token(store, role, app.as_ref().map(|a| a.id), description, now).await?;
    let names = app.map(|a| (a.id, a.name)).into_iter().collect();
    Ok((token_info(&stored, &names), token))
}

/// Makes a token and stores its key.
async fn make_token(
    store: &crate::store::Store,
    role: Role,
    app_id: Option<i64>,
    description: &str,
    now_ms: i64,
) -> AdminResult<(AdminToken, StoredToken)> {
    if description.len() > 255 {
        return Err(ErrorBody::invalid(
            "a token's description is at most 255 bytes",
        ));
    }
    let token = AdminToken::generate().map_err(|e| ErrorBody::internal(e.to_string()))?;
    let stored = StoredToken {
        id: token.id().to_owned(),
        role,
        app_id,
        description: description.to_owned(),
        key: token.key(),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    store.insert_token(&stored).await?;
    Ok((token, stored))
}

async fn token_create(core: &Core, caller: &Caller, r: TokenCreate) -> AdminResult<TokenCreated> {
    caller.require_unscoped()?;
    let app_id = match &r.app {
        Some(name) => Some(core.store.app_by_name(name).await?.id),
        None => None,
    };
    let (token, stored) = make_token(
        &core.store,
        r.role,
        app_id,
        &r.description,
        core.clock.now_ms(),
    )
    .await?;
    let sealed_token = seal_secret(&caller.key, TOKEN_PURPOSE, token.reveal().as_bytes())
        .map_err(|e| ErrorBody::internal(e.to_string()))?;
    tracing::info!(token = %stored.id, role = %stored.role, by = %caller.token_id, "token created");
    Ok(TokenCreated {
        info: token_info(&stored, &app_names(core).await?),
        sealed_token,
    })
}

async fn token_list(core: &Core, caller: &Caller, _: TokenList) -> AdminResult<Vec<TokenInfo>> {
    caller.require_unscoped()?;
    let apps = app_names(core).await?;
    Ok(core
        .store
        .list_tokens()
        .await?
        .iter()
        .map(|t| token_info(t, &apps))
        .collect())
}

async fn token_revoke(core: &Core, caller: &Caller, r: TokenRevoke) -> AdminResult<TokenInfo> {
    caller.require_unscoped()?;
    let token = core.store.revoke_token(&r.id, core.clock.now_ms()).await?;
    core.gate.forget_token(&token.id);
    tracing::info!(token = %token.id, by = %caller.token_id, "token revoked");
    Ok(token_info(&token, &app_names(core).await?))
}

// === Jobs ===

fn validate_job(job: &Job) -> AdminResult<()> {
    validate_name("job", &job.spec.name, 255)?;
    job.spec
        .schedule
        .validate()
        .map_err(|e| ErrorBody::invalid(e.to_string()))?;
    if job.spec.processor.trim().is_empty() {
        return Err(ErrorBody::invalid("a job needs a processor"));
    }
    if let (Some(start), Some(end)) = (job.spec.lifecycle.start_ms, job.spec.lifecycle.end_ms)
        && start > end
    {
        return Err(ErrorBody::invalid("the lifecycle ends before it starts"));
    }
    for t in job.spec.tags.iter().chain(&job.spec.designated_workers) {
        if t.is_empty() {
            return Err(ErrorBody::invalid("tags and worker ids may not be empty"));
        }
    }
    job.spec
        .execution
        .validate()
        .map_err(|e| ErrorBody::invalid(e.to_string()))?;
    let runs_container = job.spec.processor == rota_shared::container::CONTAINER_PROCESSOR;
    match (&job.spec.container, runs_container) {
        (None, true) => {
            return Err(ErrorBody::invalid(
                "a container job names its container and entry (--container NAME[@VERSION] --entry E)",
            ));
        }
        (Some(_), false) => {
            return Err(ErrorBody::invalid(
                "--container and --entry are for --processor container",
            ));
        }
        (Some(c), true) => validate_name("entry", &c.entry, 128)?,
        (None, false) => {}
    }
    if job.spec.execution.is_distributed() && job.spec.schedule.is_frequent() {
        return Err(ErrorBody::invalid(format!(
            "a {} job cannot run at a fixed rate or delay: its instances run once",
            job.spec.execution.as_str()
        )));
    }
    Ok(())
}

/// Sets the next fire from now, for a job that is new, changed or enabled.
fn reschedule(job: &mut Job, now: i64) -> AdminResult<()> {
    job.next_trigger_time_ms = if job.spec.enabled {
        job.spec
            .schedule
            .next_fire_after(now, job.spec.lifecycle)
            .map_err(|e| ErrorBody::invalid(e.to_string()))?
    } else {
        None
    };
    Ok(())
}

/// Refuses a CRON expression that matches no time from now on (`0 0 0 30 2 *`): such a job would
/// be stored and never run.
fn check_fires(job: &Job, now: i64) -> AdminResult<()> {
    if let rota_shared::schedule::Schedule::Cron { expression, .. } = &job.spec.schedule {
        let next = job
            .spec
            .schedule
            .next_fire_after(now, Default::default())
            .map_err(|e| ErrorBody::invalid(e.to_string()))?;
        if next.is_none() {
            return Err(ErrorBody::invalid(format!(
                "the CRON expression {expression:?} matches no time from now on"
            )));
        }
    }
    Ok(())
}

async fn job_create(core: &Core, caller: &Caller, r: JobCreate) -> AdminResult<JobInfo> {
    r.spec.check_limits()?;
    let app = core.store.app_by_name(&r.app).await?;
    caller.require_app(app.id)?;
    let now = core.clock.now_ms();
    let mut job = Job::new(r.spec, app.id, now);
    validate_job(&job)?;
    check_fires(&job, now)?;
    reschedule(&mut job, now)?;
    let job = core.store.insert_job(&job).await?;
    let mut info = job.to_info(&app.name);
    info.warnings = processor_warnings(core, &job, &app.name).await;
    Ok(info)
}

/// A warning when no live worker of the job's app offers its processor: its instances would
/// wait, and fail after `no_worker_timeout`, naming the processor. Workers list their processors
/// in every heartbeat; the owner of the app knows them.
async fn processor_warnings(core: &Core, job: &Job, app: &str) -> Vec<String> {
    let workers = match route(core, job.app_id, Via::Admin).await {
        Ok(Route::Here) => local_workers(core, Some(job.app_id)),
        Ok(Route::Owner(owner)) => {
            let call = RemoteCall::WorkerList {
                app_id: Some(job.app_id),
                after: None,
                limit: MAX_PAGE,
            };
            forward::<Page<WorkerSummary>>(core, &owner, &call)
                .await
                .map(|p| p.items)
                .unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    if workers
        .iter()
        .any(|w| w.processors.contains(&job.spec.processor))
    {
        return Vec::new();
    }
    let offered: std::collections::BTreeSet<&str> = workers
        .iter()
        .flat_map(|w| w.processors.iter().map(String::as_str))
        .collect();
    vec![format!(
        "no live worker of app {app:?} offers processor {:?} (offered: {}); its instances wait for \
         one and fail after {} s",
        job.spec.processor,
        if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.into_iter().collect::<Vec<_>>().join(", ")
        },
        core.config.no_worker_timeout.as_secs()
    )]
}

async fn job_update(core: &Core, caller: &Caller, r: JobUpdate) -> AdminResult<JobInfo> {
    let mut job = core.store.job(r.id).await?;
    caller.require_app(job.app_id)?;
    let app = core.store.app_by_id(job.app_id).await?;
    let spec = job
        .spec
        .patched(&r.changes)
        .map_err(|e| ErrorBody::invalid(e.to_string()))?;
    spec.check_limits()?;
    let timing_changed = spec.schedule != job.spec.schedule || spec.lifecycle != job.spec.lifecycle;
    job.spec = spec;
    validate_job(&job)?;
    let now = core.clock.now_ms();
    if timing_changed {
        check_fires(&job, now)?;
        reschedule(&mut job, now)?;
    }
    job.updated_at_ms = now;
    let saved = core.store.save_job(&job).await?;
    core.jobs.forget(saved.id);
    Ok(saved.to_info(&app.name))
}

async fn app_names(core: &Core) -> AdminResult<HashMap<i64, String>> {
    Ok(core
        .store
        .list_apps()
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect())
}

async fn job_list(core: &Core, caller: &Caller, r: JobList) -> AdminResult<Page<JobInfo>> {
    let app_id = scoped_app(core, caller, r.app.as_deref()).await?;
    let limit = page_limit(r.limit, DEFAULT_PAGE);
    let after = id_cursor(r.after.as_deref())?;
    let names = app_names(core).await?;
    let jobs: Vec<JobInfo> = core
        .store
        .list_jobs(app_id, after, limit as u64 + 1)
        .await?
        .iter()
        .map(|j| j.to_info(names.get(&j.app_id).map_or("?", String::as_str)))
        .collect();
    Ok(paged(jobs, limit, page_budget(core), |j| j.id.to_string()))
}

async fn job_info(core: &Core, job: &Job) -> AdminResult<JobInfo> {
    let app = core.store.app_by_id(job.app_id).await?;
    Ok(job.to_info(&app.name))
}

/// A job the caller may see.
async fn job_of(core: &Core, caller: &Caller, id: i64) -> AdminResult<Job> {
    let job = core.store.job(id).await?;
    caller.require_app(job.app_id)?;
    Ok(job)
}

async fn job_show(core: &Core, caller: &Caller, JobShow(r): JobShow) -> AdminResult<JobInfo> {
    let job = job_of(core, caller, r.id).await?;
    job_info(core, &job).await
}

async fn set_enabled(core: &Core, caller: &Caller, id: i64, enabled: bool) -> AdminResult<JobInfo> {
    let mut job = job_of(core, caller, id).await?;
    let now = core.clock.now_ms();
    job.spec.enabled = enabled;
    reschedule(&mut job, now)?;
    job.updated_at_ms = now;
    let job = core.store.save_job(&job).await?;
    core.jobs.forget(job.id);
    if !enabled {
        cancel_handed_fires(core, job.id, "job was disabled").await?;
    }
    job_info(core, &job).await
}

/// Cancels a job's scheduled fires that were handed to a worker but have not started (they are
/// dispatched ahead of their instant), and tells their workers to drop them. Fires still waiting
/// for a dispatch are cancelled when it comes.
async fn cancel_handed_fires(core: &Core, job_id: i64, reason: &str) -> AdminResult<()> {
    let handed = core
        .store
        .list_instances(&InstanceFilter {
            job_id: Some(job_id),
            status: Some(InstanceStatus::WaitingWorkerReceive),
            limit: 100_000,
            ..Default::default()
        })
        .await?;
    let now = core.clock.now_ms();
    for inst in handed.iter().filter(|i| i.trigger == Trigger::Schedule) {
        let guard = InstanceGuard::of(inst);
        let cancelled = core
            .store
            .cas_finish(inst.id, Some(guard), InstanceStatus::Canceled, reason, now)
            .await?;
        if cancelled {
            core.metrics.finished(inst.app_id, InstanceStatus::Canceled);
        }
        if let (true, Some(worker_id)) = (cancelled, &inst.worker_id) {
            core.calls
                .publish_stop(inst.app_id, worker_id, inst.id)
                .await;
        }
    }
    Ok(())
}

async fn job_enable(core: &Core, caller: &Caller, JobEnable(r): JobEnable) -> AdminResult<JobInfo> {
    set_enabled(core, caller, r.id, true).await
}

async fn job_disable(
    core: &Core,
    caller: &Caller,
    JobDisable(r): JobDisable,
) -> AdminResult<JobInfo> {
    set_enabled(core, caller, r.id, false).await
}

/// Deleting a job cancels its instances that wait for a dispatch; running ones finish.
async fn job_delete(core: &Core, caller: &Caller, JobDelete(r): JobDelete) -> AdminResult<Done> {
    job_of(core, caller, r.id).await?;
    core.store.delete_job(r.id).await?;
    core.jobs.forget(r.id);
    let waiting = core
        .store
        .list_instances(&InstanceFilter {
            job_id: Some(r.id),
            status: Some(InstanceStatus::WaitingDispatch),
            limit: 100_000,
            ..Default::default()
        })
        .await?;
    let now = core.clock.now_ms();
    for inst in waiting {
        let cancelled = core
            .store
            .cas_finish(
                inst.id,
                None,
                InstanceStatus::Canceled,
                "job was deleted",
                now,
            )
            .await?;
        if cancelled {
            core.metrics.finished(inst.app_id, InstanceStatus::Canceled);
        }
    }
    cancel_handed_fires(core, r.id, "job was deleted").await?;
    Ok(Done {})
}

/// Where an operation on an app's in-memory state runs.
enum Route {
    Here,
    /// On the owner, over `rota.srv.{owner}.rpc`.
    Owner(String),
}

/// Operations that act on the owner's in-memory state run on the owner: here, or forwarded to
/// it. A call that was itself forwarded is never forwarded again, so ownership moving during a
/// call ends in `NOT_OWNER` rather than a loop.
async fn route(core: &Core, app_id: i64, via: Via) -> AdminResult<Route> {
    // This server owned the app at its last re-read: no need to ask the database. Should it
    // have lost the app since, the new owner's schedule loop picks up what this call creates.
    if core.ownership.owns(app_id) {
        return Ok(Route::Here);
    }
    let owner = ensure_owner(core, app_id).await?;
    if owner.server_id == core.id {
        Ok(Route::Here)
    } else if via == Via::Forwarded {
        Err(ErrorBody::new(
            ErrorCode::NotOwner,
            format!("app {app_id} is owned by server {}", owner.server_id),
        ))
    } else {
        Ok(Route::Owner(owner.server_id))
    }
}

/// How a request reached this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From an administrator, on `rota.admin.*`.
    Admin,
    /// From another server, on `rota.srv.{me}.rpc`.
    Forwarded,
}

/// Sends a call to the owner, sealed with the cluster key, and returns its answer.
async fn forward<T: serde::de::DeserializeOwned>(
    core: &Core,
    server_id: &str,
    call: &RemoteCall,
) -> AdminResult<T> {
    let subject = core.subjects.server_rpc(server_id);
    let credential = core.gate.cluster_credential();
    core.transport
        .request(&subject, call, core.config.rpc_timeout, Some(credential))
        .await
        .map_err(|e| match (e.kind(), e.remote()) {
            (RequestErrorKind::Remote, Some(body)) => body.clone(),
            _ => ErrorBody::new(
                ErrorCode::Unavailable,
                format!("the owning server {server_id} could not be reached: {e}"),
            ),
        })
}

/// Answers a call forwarded by another server of the deployment (sealed with the cluster key).
pub async fn handle_remote(core: &Core, msg: &Incoming) {
    if let Err(e) = core.gate.verify_cluster(msg.message(), core.clock.now_ms()) {
        return core.transport.respond::<()>(msg, Err(e), None).await;
    }
    let key = Some(core.gate.cluster_credential().key());
    let call = match decode_message::<RemoteCall>(msg.message()) {
        Ok(call) => call,
        Err(e) => return core.transport.respond::<()>(msg, Err(e), key).await,
    };
    let via = Via::Forwarded;
    let t = &core.transport;
    match call {
        RemoteCall::JobRun(r) => t.respond(msg, job_run_via(core, r, via).await, key).await,
        RemoteCall::InstanceStop(r) => {
            t.respond(msg, instance_stop_via(core, r, via).await, key)
                .await
        }
        RemoteCall::InstanceRetry(r) => {
            t.respond(msg, instance_retry_via(core, r, via).await, key)
                .await
        }
        RemoteCall::WorkerList {
            app_id,
            after,
            limit,
        } => {
            let limit = usize::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(100);
            let page = local_worker_page(core, app_id, after.as_deref(), limit);
            t.respond(msg, page, key).await
        }
    }
}

async fn job_run(core: &Core, caller: &Caller, r: JobRun) -> AdminResult<RunStarted> {
    r.check_limits()?;
    // Through the job cache, like the run itself.
    caller.require_app(core.jobs.job(r.id).await?.app_id)?;
    job_run_via(core, r, Via::Admin).await
}

async fn job_run_via(core: &Core, r: JobRun, via: Via) -> AdminResult<RunStarted> {
    // Through the job cache: API runs come in bursts, and a job deleted meanwhile on another
    // server only means its run is cancelled at dispatch.
    let job = core.jobs.job(r.id).await?;
    if let Route::Owner(owner) = route(core, job.app_id, via).await? {
        return forward(core, &owner, &RemoteCall::JobRun(r)).await;
    }
    let now = core.clock.now_ms();
    let due = now.saturating_add(i64::try_from(r.delay_ms).unwrap_or(i64::MAX / 2));
    // A run due now of a job without a concurrency limit is created already handed to a
    // worker: one statement instead of an insert and a dispatch compare-and-set.
    let candidates =
        (due <= now && job.spec.max_instances == 0 && !job.spec.schedule.is_frequent())
            .then(|| core.workers.candidates(&job))
            .filter(|c| !c.is_empty());
    if let Some(first) = candidates.as_ref().and_then(|c| c.first()) {
        core.workers.note_handed(job.app_id, &first.worker_id);
    }
    let new = NewInstance {
        job_id: job.id,
        app_id: job.app_id,
        trigger: Trigger::Api,
        params: r.params.clone(),
        due_at_ms: due,
        handed_to: candidates.as_ref().map(|c| c[0].worker_id.clone()),
        idempotency_key: r.idempotency_key.clone(),
    };
    // A keyed run is created on its own, not in a batch: should its key be taken, a batch would
    // fail whole.
    let inst = match new.idempotency_key {
        Some(_) => {
            let (inst, created) = core.store.insert_keyed_instance(new, now).await?;
            if !created {
                return reused_run(inst, &r);
            }
            inst
        }
        None => core.inserts.insert(new).await?,
    };
    let id = inst.id;
    match candidates {
        Some(candidates) => {
            let handed = Handed {
                inst,
                job,
                candidates,
            };
            core.dispatcher.send_handed(handed);
        }
        None if due <= now => core.timer.fire_now(id),
        None => {
            core.timer.schedule(id, due);
        }
    }
    Ok(RunStarted {
        instance_id: id,
        reused: false,
    })
}

/// The answer to a run whose idempotency key an earlier run used: that run's instance, unless
/// the two ask for different parameters, which is a caller's mistake rather than a repeat.
fn reused_run(inst: Instance, r: &JobRun) -> AdminResult<RunStarted> {
    if inst.instance_params != r.params {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "idempotency key {:?} was used by instance {} with other parameters",
                r.idempotency_key.as_deref().unwrap_or_default(),
                inst.id
            ),
        ));
    }
    Ok(RunStarted {
        instance_id: inst.id,
        reused: true,
    })
}

// === Instances ===

async fn with_job_names(core: &Core, models: Vec<Instance>) -> AdminResult<Vec<InstanceInfo>> {
    let mut job_ids: Vec<i64> = models.iter().map(|m| m.job_id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    let names: HashMap<i64, String> = core
        .store
        .jobs_by_ids(&job_ids)
        .await?
        .into_iter()
        .map(|j| (j.id, j.spec.name))
        .collect();
    Ok(models
        .into_iter()
        .map(|m| {
            let name = names
                .get(&m.job_id)
                .cloned()
                .unwrap_or_else(|| "(deleted)".into());
            InstanceInfo {
                instance: m,
                job_name: name,
            }
        })
        .collect())
}

async fn one_instance(core: &Core, id: i64) -> AdminResult<InstanceInfo> {
    let m = core.store.instance(id).await?;
    with_job_names(core, vec![m])
        .await?
        .pop()
        .ok_or_else(|| ErrorBody::internal("instance vanished"))
}

async fn instance_list(
    core: &Core,
    caller: &Caller,
    r: InstanceList,
) -> AdminResult<Page<InstanceInfo>> {
    let app_id = scoped_app(core, caller, r.app.as_deref()).await?;
    let limit = page_limit(r.limit, 50);
    let filter = InstanceFilter {
        app_id,
        job_id: r.job_id,
        status: r.status,
        before_id: id_cursor(r.after.as_deref())?,
        limit: limit as u64 + 1,
    };
    let models = core.store.list_instances(&filter).await?;
    let instances = with_job_names(core, models).await?;
    Ok(paged(instances, limit, page_budget(core), |i| {
        i.instance.id.to_string()
    }))
}

/// Refuses an instance outside the caller's app scope.
async fn check_instance(core: &Core, caller: &Caller, id: i64) -> AdminResult<()> {
    if caller.app_id.is_some() {
        caller.require_app(core.store.instance(id).await?.app_id)?;
    }
    Ok(())
}

async fn instance_show(
    core: &Core,
    caller: &Caller,
    InstanceShow(r): InstanceShow,
) -> AdminResult<InstanceInfo> {
    check_instance(core, caller, r.id).await?;
    one_instance(core, r.id).await
}

/// A page of a distributed instance's tasks, from its master. Any server can ask: a worker is
/// reached with its key, which every server derives from the app key.
async fn instance_tasks(
    core: &Core,
    caller: &Caller,
    r: InstanceTasks,
) -> AdminResult<Page<rota_shared::task::TaskInfo>> {
    use rota_shared::task::{MAX_TASK_PAGE, TaskListRequest};
    let inst = core.store.instance(r.id).await?;
    caller.require_app(inst.app_id)?;
    let after = match r.after.as_deref() {
        Some(a) => Some(
            a.parse::<u64>()
                .map_err(|_| ErrorBody::invalid(format!("after {a:?} is not a task id")))?,
        ),
        None => None,
    };
    let (Some(worker), InstanceStatus::Running) = (inst.worker_id.as_deref(), inst.status) else {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "instance {} is {}: its master keeps its tasks only while it runs \
                 (instance show has the final counts)",
                inst.id, inst.status
            ),
        ));
    };
    let limit = r.limit.unwrap_or(50).clamp(1, MAX_TASK_PAGE);
    let request = TaskListRequest {
        instance_id: inst.id,
        after,
        limit,
    };
    let items = core
        .calls
        .task_list(inst.app_id, worker, &request)
        .await
        .map_err(|e| match (e.kind(), e.remote()) {
            (RequestErrorKind::Remote, Some(body)) => body.clone(),
            _ => ErrorBody::new(
                ErrorCode::Unavailable,
                format!("the instance's master {worker} could not be reached: {e}"),
            ),
        })?;
    let next = (items.len() as u64 >= limit)
        .then(|| items.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Page { items, next })
}

async fn instance_stop(
    core: &Core,
    caller: &Caller,
    InstanceStop(r): InstanceStop,
) -> AdminResult<InstanceInfo> {
    check_instance(core, caller, r.id).await?;
    instance_stop_via(core, r, Via::Admin).await
}

async fn instance_stop_via(core: &Core, r: InstanceId, via: Via) -> AdminResult<InstanceInfo> {
    let inst = core.store.instance(r.id).await?;
    let status = inst.status;
    if status.is_terminal() {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("instance {} is already {status}", inst.id),
        ));
    }
    if let Route::Owner(owner) = route(core, inst.app_id, via).await? {
        return forward(core, &owner, &RemoteCall::InstanceStop(r)).await;
    }
    let stopped = core
        .store
        .cas_finish(
            inst.id,
            None,
            InstanceStatus::Stopped,
            "stopped by an operator",
            core.clock.now_ms(),
        )
        .await?;
    if stopped {
        core.metrics.finished(inst.app_id, InstanceStatus::Stopped);
    }
    if !stopped {
        let now = core.store.instance(inst.id).await?.status;
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "instance {} became {now} before it could be stopped",
                inst.id
            ),
        ));
    }
    // The instance is STOPPED whatever the worker says; stopping its work is best effort, and
    // a worker that missed this is told to stop by its next report.
    if let Some(worker) = &inst.worker_id
        && let Err(e) = core.calls.stop(inst.app_id, worker, inst.id).await
    {
        tracing::info!(instance = inst.id, worker = %worker, error = %e, "stop not delivered");
    }
    one_instance(core, inst.id).await
}

async fn instance_retry(
    core: &Core,
    caller: &Caller,
    InstanceRetry(r): InstanceRetry,
) -> AdminResult<RunStarted> {
    check_instance(core, caller, r.id).await?;
    instance_retry_via(core, r, Via::Admin).await
}

async fn instance_retry_via(core: &Core, r: InstanceId, via: Via) -> AdminResult<RunStarted> {
    let inst = core.store.instance(r.id).await?;
    let status = inst.status;
    if !status.is_terminal() {
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "instance {} is {status}; only a finished instance can be retried",
                inst.id
            ),
        ));
    }
    let job = core.store.job(inst.job_id).await?;
    if let Route::Owner(owner) = route(core, job.app_id, via).await? {
        return forward(core, &owner, &RemoteCall::InstanceRetry(r)).await;
    }
    let now = core.clock.now_ms();
    let new = core
        .store
        .insert_instance(
            NewInstance {
                job_id: job.id,
                app_id: job.app_id,
                trigger: Trigger::Retry,
                params: inst.instance_params,
                due_at_ms: now,
                handed_to: None,
                idempotency_key: None,
            },
            now,
        )
        .await?;
    core.timer.schedule(new.id, now);
    Ok(RunStarted {
        instance_id: new.id,
        reused: false,
    })
}

// === Logs, workers, servers ===

async fn logs_get(core: &Core, caller: &Caller, r: LogsGet) -> AdminResult<LogPage> {
    // Read the status first: if it is terminal now, every line was stored before (workers
    // flush an instance's logs before its terminal report).
    let inst = core.store.instance(r.instance_id).await?;
    caller.require_app(inst.app_id)?;
    let limit = usize::try_from(r.limit.unwrap_or(1000).clamp(1, 10_000)).unwrap_or(1000);
    let lines: Vec<LogEntry> = core
        .store
        .logs_after(r.instance_id, r.after_id, limit as u64 + 1)
        .await?;
    // Like every list, a page of lines ends at its limit or where the reply would not fit.
    let page = paged(lines, limit, page_budget(core), |l| l.id.to_string());
    let last_id = page.items.last().map_or(r.after_id, |l| l.id);
    Ok(LogPage {
        more: page.next.is_some(),
        lines: page.items,
        last_id,
        finished: inst.status.is_terminal(),
    })
}

/// Live workers are in their owner's memory: one app's come from its owner; without an app,
/// every server that owns an app is asked for the workers of the apps it owns.
async fn worker_list(
    core: &Core,
    caller: &Caller,
    r: WorkerList,
) -> AdminResult<Page<WorkerSummary>> {
    let limit = page_limit(r.limit, DEFAULT_PAGE);
    if let Some(app_id) = scoped_app(core, caller, r.app.as_deref()).await? {
        return match route(core, app_id, Via::Admin).await? {
            Route::Here => local_worker_page(core, Some(app_id), r.after.as_deref(), limit),
            Route::Owner(owner) => {
                let call = RemoteCall::WorkerList {
                    app_id: Some(app_id),
                    after: r.after,
                    limit: limit as u64,
                };
                forward(core, &owner, &call).await
            }
        };
    }
    let mut owners: Vec<String> = core
        .store
        .list_apps()
        .await?
        .into_iter()
        .filter_map(|a| a.current_server)
        .filter(|s| *s != core.id)
        .collect();
    owners.sort();
    owners.dedup();
    // Every owner's first `limit + 1` after the cursor, merged: the first `limit` of them all
    // are the first `limit` of the whole list, and one more says whether more exist.
    let mut workers = local_workers_after(core, None, r.after.as_deref(), limit + 1)?;
    for owner in owners {
        let call = RemoteCall::WorkerList {
            app_id: None,
            after: r.after.clone(),
            limit: limit as u64 + 1,
        };
        match forward::<Page<WorkerSummary>>(core, &owner, &call).await {
            Ok(page) => workers.extend(page.items),
            // A server that does not answer has no workers anyone can reach through it.
            Err(e) => tracing::info!(server = %owner, error = %e, "no worker list from server"),
        }
    }
    workers.sort_by_key(worker_key);
    workers.dedup_by(|a, b| worker_key(a) == worker_key(b));
    workers.truncate(limit + 1);
    Ok(worker_page(core, workers, limit))
}

/// The live workers this server holds for the apps it owns.
fn local_workers(core: &Core, app_id: Option<i64>) -> Vec<WorkerSummary> {
    core.workers
        .live(app_id)
        .into_iter()
        .filter(|w| core.ownership.owns(w.app_id))
        .collect()
}

async fn server_list(core: &Core, _: &Caller, _: ServerList) -> AdminResult<Vec<ServerInfo>> {
    let window = 3 * crate::clock::millis(core.config.presence_interval);
    Ok(core
        .store
        .list_servers(core.clock.now_ms() - window)
        .await?)
}

/// Answered from memory: it must work while the database does not.
async fn server_stats(core: &Core, _: &Caller, _: ServerStats) -> AdminResult<ServerStatsInfo> {
    let services = core
        .services
        .probes()
        .iter()
        .map(|p| {
            let (iterations, failed_iterations) = p.iterations();
            ServiceInfo {
                name: p.name.to_owned(),
                state: p.state().to_string(),
                iterations,
                failed_iterations,
            }
        })
        .collect();
    Ok(ServerStatsInfo {
        server_id: core.id.clone(),
        ready: core.readiness.is_ready(),
        owned_apps: core.ownership.app_ids(),
        live_workers: local_workers(core, None).len() as u64,
        refused: core.gate.refusals(),
        repairs: core.repairs.snapshot(),
        services,
    })
}

// === Containers ===

async fn container_create(
    core: &Core,
    caller: &Caller,
    r: ContainerCreate,
) -> AdminResult<rota_shared::container::ContainerInfo> {
    use rota_shared::container::{ContainerRef, MAX_BUNDLE_BYTES, parse_sha256};
    let app = core.store.app_by_name(&r.app).await?;
    caller.require_app(app.id)?;
    let invalid = |e: rota_shared::container::ContainerError| ErrorBody::invalid(e.to_string());
    let checked = ContainerRef::parse(&format!("{}@{}", r.name, r.version)).map_err(invalid)?;
    let sha256 = parse_sha256(&r.sha256).map_err(invalid)?;
    if r.size == 0 || r.size > MAX_BUNDLE_BYTES {
        return Err(invalid(rota_shared::container::ContainerError::TooLarge(
            r.size,
        )));
    }
    r.source.validate().map_err(invalid)?;
    let name = checked.name;
    let version = checked.version.unwrap_or_default();
    let label = format!("{name}@{version}");
    let exists = || {
        ErrorBody::new(
            ErrorCode::Conflict,
            format!("container {label} exists already: give the new bundle a new version"),
        )
    };
    let taken = match core.store.container(app.id, &name, Some(&version)).await {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let source = match r.source {
        ContainerSource::Url { .. } if taken => return Err(exists()),
        url @ ContainerSource::Url { .. } => url,
        ContainerSource::ObjectStore { bucket, object } => {
            let client = core.transport.client();
            // Only what the administrators' user can write is taken: the upload bucket.
            if bucket != core.subjects.upload_bucket() {
                return Err(ErrorBody::invalid(format!(
                    "an uploaded bundle is taken from the bucket {}, not {bucket:?}",
                    core.subjects.upload_bucket()
                )));
            }
            if taken {
                bundles::drop_upload(client, &core.subjects, &object).await;
                return Err(exists());
            }
            bundles::adopt(
                client,
                &core.subjects,
                bundles::Adopt {
                    app: &app.name,
                    upload: &object,
                    name: &name,
                    version: &version,
                    sha256: &sha256,
                    size: r.size,
                },
            )
            .await
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()))?
        }
    };
    let info = rota_shared::container::ContainerInfo {
        id: 0,
        app_id: app.id,
        name,
        version,
        sha256,
        size: r.size,
        source,
        created_at_ms: core.clock.now_ms(),
    };
    let saved = core
        .store
        .insert_container(&info)
        .await
        .map_err(|e| match e {
            // Two uploads of one version at once: the first recorded wins. The loser's copy
            // has a name of its own, which nobody records, so it is never fetched.
            StoreError::Conflict(_) => exists(),
            other => ErrorBody::from(other),
        })?;
    tracing::info!(app = %r.app, name = %saved.name, version = %saved.version, by = %caller.token_id, "container recorded");
    Ok(saved)
}

/// The app's live workers, from its owner (forwarded when it is another server).
async fn app_workers(core: &Core, app_id: i64) -> AdminResult<Vec<WorkerSummary>> {
    match route(core, app_id, Via::Admin).await? {
        Route::Here => Ok(local_workers(core, Some(app_id))),
        Route::Owner(owner) => {
            let call = RemoteCall::WorkerList {
                app_id: Some(app_id),
                after: None,
                limit: MAX_PAGE,
            };
            Ok(forward::<Page<WorkerSummary>>(core, &owner, &call)
                .await?
                .items)
        }
    }
}

async fn container_list(
    core: &Core,
    caller: &Caller,
    r: ContainerList,
) -> AdminResult<Vec<ContainerListing>> {
    let app = core.store.app_by_name(&r.app).await?;
    caller.require_app(app.id)?;
    let workers = app_workers(core, app.id).await.unwrap_or_default();
    Ok(core
        .store
        .containers(app.id)
        .await?
        .into_iter()
        .map(|c| {
            let mut on: Vec<String> = workers
                .iter()
                .filter(|w| {
                    w.containers
                        .iter()
                        .any(|d| d.name == c.name && d.version == c.version)
                })
                .map(|w| w.worker_id.clone())
                .collect();
            on.sort();
            ContainerListing {
                container: c,
                workers: on,
            }
        })
        .collect())
}

/// How many workers fetch a bundle at once, and how long each may take.
const ROLLOUT_BATCH: usize = 8;
const ROLLOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Sends a container call to every live worker of the app, a batch at a time, and says how
/// each answered.
async fn rollout(
    core: &Core,
    app_id: i64,
    call: &rota_shared::container::ContainerCall,
) -> AdminResult<Vec<WorkerOutcome>> {
    let mut workers: Vec<String> = app_workers(core, app_id)
        .await?
        .into_iter()
        .map(|w| w.worker_id)
        .collect();
    workers.sort();
    let mut outcomes = Vec::with_capacity(workers.len());
    for batch in workers.chunks(ROLLOUT_BATCH) {
        let answers = futures::future::join_all(batch.iter().map(|w| async move {
            let answer = core.calls.container(app_id, w, call, ROLLOUT_TIMEOUT).await;
            let (ok, message) = match answer {
                Ok(ack) if ack.downloaded => (true, "downloaded".to_owned()),
                Ok(_) => (true, "ready".to_owned()),
                Err(e) => (
                    false,
                    e.remote()
                        .map_or_else(|| e.to_string(), |b| b.message.clone()),
                ),
            };
            WorkerOutcome {
                worker_id: w.clone(),
                ok,
                message,
            }
        }))
        .await;
        outcomes.extend(answers);
    }
    Ok(outcomes)
}

async fn container_deploy(
    core: &Core,
    caller: &Caller,
    r: ContainerDeploy,
) -> AdminResult<ContainerRollout> {
    let app = core.store.app_by_name(&r.app).await?;
    caller.require_app(app.id)?;
    let container = core
        .store
        .container(app.id, &r.name, r.version.as_deref())
        .await?;
    let call = rota_shared::container::ContainerCall::Deploy(container.clone());
    let workers = rollout(core, app.id, &call).await?;
    Ok(ContainerRollout { container, workers })
}

async fn container_destroy(
    core: &Core,
    caller: &Caller,
    r: ContainerDestroy,
) -> AdminResult<ContainerRollout> {
    let app = core.store.app_by_name(&r.app).await?;
    caller.require_app(app.id)?;
    let container = core
        .store
        .container(app.id, &r.name, Some(&r.version))
        .await?;
    core.store
        .delete_container(app.id, &r.name, &r.version)
        .await?;
    bundles::drop_bundle(core.transport.client(), &container.source).await;
    let call = rota_shared::container::ContainerCall::Destroy {
        name: r.name,
        version: r.version,
    };
    let workers = rollout(core, app.id, &call).await?;
    Ok(ContainerRollout { container, workers })
}
