//! The admin commands: one request each on `rota.admin.*`, printed as a table or as JSON.

use std::time::Duration;

use rota_client::AdminClient;
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::message::WorkerSummary;
use rota_shared::schedule::{Lifecycle, Schedule};
use rota_shared::task::{Execution, parse_shards, shard_count};
use rota_transport::AdminToken;
use serde::Serialize;

use crate::args::{
    AppCommand, InstanceCommand, JobCommand, JobFields, LogsArgs, Paging, TokenCommand,
};
use crate::config::Settings;
use crate::table::{opt, render, safe, time};
use crate::usage::usage;

/// The admin token of the settings, if one is given.
pub fn token(settings: &Settings) -> anyhow::Result<Option<AdminToken>> {
    settings
        .token
        .as_deref()
        .map(|t| AdminToken::parse(t).map_err(|e| usage!("--token / ROTA_TOKEN: {e}")))
        .transpose()
}

pub async fn client(settings: &Settings) -> anyhow::Result<AdminClient> {
    let token = token(settings)?;
    let mut client = AdminClient::connect(&settings.nats, &settings.prefix, token.as_ref()).await?;
    if let Some(timeout) = settings.request_timeout {
        client = client.with_timeout(timeout);
    }
    Ok(match &settings.server {
        Some(server) => client.at_server(server),
        None => client,
    })
}

/// How often a request that is safe to repeat is sent again after its answer timed out.
const TIMEOUT_RETRIES: usize = 2;

/// Sends a request that is safe to repeat (an idempotent one), again when its answer times out
/// or nobody answers yet: a server that is frozen or taking over must not make the command fail
/// while a repeat would have worked.
async fn call_retrying_timeouts<R: AdminRequest>(
    c: &AdminClient,
    request: &R,
) -> anyhow::Result<R::Reply> {
    let mut tries = 0;
    loop {
        match c.call(request).await {
            Err(rota_client::ClientError::Request(e))
                if tries < TIMEOUT_RETRIES
                    && matches!(
                        e.kind(),
                        rota_transport::RequestErrorKind::TimedOut
                            | rota_transport::RequestErrorKind::NoResponders
                    ) =>
            {
                tries += 1;
                eprintln!("no answer ({e}); asking again with the same idempotency key");
                if e.kind() == rota_transport::RequestErrorKind::NoResponders {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            other => return Ok(other?),
        }
    }
}

/// A list request's pages: the one `paging` names, or all of them with `--all`.
async fn pages<R, T>(
    c: &AdminClient,
    paging: &Paging,
    request: impl Fn(Option<String>, Option<u64>) -> R,
) -> anyhow::Result<Page<T>>
where
    R: AdminRequest<Reply = Page<T>>,
{
    let mut after = paging.after.clone();
    let mut items = Vec::new();
    loop {
        let page = c.call(&request(after.clone(), paging.limit)).await?;
        items.extend(page.items);
        match page.next {
            Some(next) if paging.all => after = Some(next),
            next => return Ok(Page { items, next }),
        }
    }
}

/// Says, after a table, where the rest of a list is.
fn more_hint(next: &Option<String>) {
    if let Some(next) = next {
        eprintln!("more exist: add --after {} (or --all)", safe(next));
    }
}

fn print_json<T: Serialize>(data: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(data)?);
    Ok(())
}

pub async fn app(settings: &Settings, cmd: AppCommand) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let apps = match cmd {
        AppCommand::Create { name, secret } => {
            let app = c.app_create(&name, &secret).await?;
            if settings.json {
                return print_json(&app);
            }
            vec![app]
        }
        AppCommand::RotateSecret {
            name,
            secret,
            grace,
        } => {
            let grace = Duration::from_millis(grace.unwrap_or(3_600_000));
            vec![c.app_rotate_secret(&name, &secret, grace).await?]
        }
        AppCommand::List => c.call(&AppList {}).await?,
    };
    if settings.json {
        return print_json(&apps);
    }
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.name.clone(),
                opt(a.current_server.as_deref()),
                a.epoch.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    println!("{}", render(&["ID", "NAME", "OWNER", "EPOCH"], &rows));
    Ok(())
}

fn time_of(flag: &str, value: &Option<String>) -> anyhow::Result<Option<i64>> {
    value
        .as_deref()
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|e| usage!("invalid {flag} {v:?}: {e} (use RFC 3339)"))
        })
        .transpose()
}

fn lifecycle_of(fields: &JobFields) -> anyhow::Result<Option<Lifecycle>> {
    let start_ms = time_of("--starts-at", &fields.starts_at)?;
    let end_ms = time_of("--ends-at", &fields.ends_at)?;
    Ok((start_ms.is_some() || end_ms.is_some()).then_some(Lifecycle { start_ms, end_ms }))
}

fn misfire_of(fields: &JobFields) -> anyhow::Result<Option<MisfirePolicy>> {
    fields
        .misfire
        .as_deref()
        .map(|v| {
            MisfirePolicy::parse(v)
                .ok_or_else(|| usage!("invalid --misfire {v:?}: use fire_once, skip or catch_up:N"))
        })
        .transpose()
}

fn schedule_of(fields: &JobFields) -> anyhow::Result<Option<Schedule>> {
    if let Some(interval_ms) = fields.fixed_rate {
        return Ok(Some(Schedule::FixedRate { interval_ms }));
    }
    if let Some(interval_ms) = fields.fixed_delay {
        return Ok(Some(Schedule::FixedDelay { interval_ms }));
    }
    if let Some(expression) = &fields.cron {
        return Ok(Some(Schedule::Cron {
            expression: expression.clone(),
            time_zone: fields.tz.clone(),
        }));
    }
    if let Some(at) = &fields.at {
        let t = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
            usage!("invalid --at {at:?}: {e} (use RFC 3339, e.g. 2026-12-01T09:00:00Z)")
        })?;
        return Ok(Some(Schedule::At {
            at_ms: t.timestamp_millis(),
        }));
    }
    Ok(fields.api.then_some(Schedule::Api))
}

fn overlap_of(s: &Option<String>) -> anyhow::Result<Option<OverlapPolicy>> {
    s.as_deref()
        .map(|v| {
            OverlapPolicy::parse(v)
                .ok_or_else(|| usage!("invalid --overlap {v:?}: use skip or queue"))
        })
        .transpose()
}

fn dispatch_of(s: &Option<String>) -> anyhow::Result<Option<DispatchStrategy>> {
    s.as_deref()
        .map(|v| {
            DispatchStrategy::parse(v).ok_or_else(|| {
                usage!("invalid --dispatch {v:?}: use health-first, random or round-robin")
            })
        })
        .transpose()
}

/// The execution the flags name: `--execution`, or sharding by `--shards` or `--shard-count`.
fn execution_of(fields: &JobFields) -> anyhow::Result<Option<Execution>> {
    let shards = match (&fields.shards, fields.shard_count) {
        (Some(text), _) => Some(parse_shards(text).map_err(|e| usage!("invalid --shards: {e}"))?),
        (None, Some(n)) => Some(shard_count(n)),
        (None, None) => None,
    };
    let kind = match (fields.execution.as_deref(), &shards) {
        (Some(kind), _) => kind,
        (None, Some(_)) => "sharding",
        (None, None) => return Ok(None),
    };
    let execution =
        Execution::parse(kind, shards.clone()).map_err(|e| usage!("invalid --execution: {e}"))?;
    if shards.is_some() && !matches!(execution, Execution::Sharding { .. }) {
        return Err(usage!(
            "--shards and --shard-count are for --execution sharding"
        ));
    }
    Ok(Some(execution))
}

/// The job fields the flags set, as the JSON object of [`JobSpec`] fields that `job create` reads
/// a job from and `job update` sends as its changes. A new job field needs its flag here.
fn changes_of(fields: &JobFields) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::{Value, to_value};
    let mut changes = serde_json::Map::new();
    let mut set = |key: &str, value: Value| {
        changes.insert(key.to_owned(), value);
    };
    if let Some(schedule) = schedule_of(fields)? {
        set("schedule", to_value(schedule)?);
    }
    if let Some(lifecycle) = lifecycle_of(fields)? {
        set("lifecycle", to_value(lifecycle)?);
    }
    if let Some(misfire) = misfire_of(fields)? {
        set("misfire", to_value(misfire)?);
    }
    if let Some(overlap) = overlap_of(&fields.overlap)? {
        set("overlap", to_value(overlap)?);
    }
    if let Some(dispatch) = dispatch_of(&fields.dispatch)? {
        set("dispatch", to_value(dispatch)?);
    }
    if let Some(v) = &fields.processor {
        set("processor", v.as_str().into());
    }
    if let Some(v) = &fields.processor_config {
        set("config", v.as_str().into());
    }
    if let Some(v) = &fields.params {
        // An empty value clears the parameters.
        set(
            "params",
            if v.is_empty() {
                Value::Null
            } else {
                v.as_str().into()
            },
        );
    }
    if let Some(v) = &fields.description {
        set("description", v.as_str().into());
    }
    if let Some(v) = fields.max_retries {
        set("max_retries", v.into());
    }
    if let Some(v) = fields.retry_delay {
        set("retry_delay_ms", v.into());
    }
    if let Some(v) = fields.timeout {
        set("timeout_ms", v.into());
    }
    if let Some(v) = fields.max_instances {
        set("max_instances", v.into());
    }
    if !fields.tags.is_empty() {
        set("tags", to_value(&fields.tags)?);
    }
    if !fields.workers.is_empty() {
        set("designated_workers", to_value(&fields.workers)?);
    }
    if let Some(execution) = execution_of(fields)? {
        set("execution", to_value(execution)?);
    }
    if let Some(v) = fields.task_retries {
        set("task_retries", v.into());
    }
    if let (Some(container), Some(entry)) = (&fields.container, &fields.entry) {
        let container = rota_shared::container::ContainerRef::parse(container)
            .map_err(|e| usage!("invalid --container: {e}"))?;
        set(
            "container",
            to_value(rota_shared::container::ContainerJob {
                container,
                entry: entry.clone(),
            })?,
        );
    }
    Ok(changes)
}

pub async fn job(settings: &Settings, cmd: JobCommand) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let cmd_is_enable = matches!(cmd, JobCommand::Enable { .. });
    let jobs = match cmd {
        JobCommand::Create {
            app,
            name,
            fields,
            disabled,
        } => {
            let mut changes = changes_of(&fields)?;
            if !changes.contains_key("schedule") {
                return Err(usage!(
                    "say when the job runs: --cron EXPR, --at TIME, --fixed-rate D, --fixed-delay D or --api"
                ));
            }
            if !changes.contains_key("processor") {
                return Err(usage!("say what runs: --processor shell|http|NAME"));
            }
            changes.insert("name".into(), name.into());
            changes.insert("enabled".into(), (!disabled).into());
            let spec = JobSpec::from_object(changes).map_err(|e| usage!("{e}"))?;
            let job = c.call(&JobCreate { app, spec }).await?;
            for warning in &job.warnings {
                eprintln!("warning: {}", safe(warning));
            }
            if settings.json {
                return print_json(&job);
            }
            vec![job]
        }
        JobCommand::Update { id, name, fields } => {
            let mut changes = changes_of(&fields)?;
            if let Some(name) = name {
                changes.insert("name".into(), name.into());
            }
            if changes.is_empty() {
                return Err(usage!("say what changes: see `rota job update --help`"));
            }
            let job = c.call(&JobUpdate { id, changes }).await?;
            if settings.json {
                return print_json(&job);
            }
            vec![job]
        }
        JobCommand::List { app, paging } => {
            let page = pages(&c, &paging, |after, limit| JobList {
                app: app.clone(),
                after,
                limit,
            })
            .await?;
            if settings.json {
                return print_json(&page);
            }
            print_jobs(&page.items);
            more_hint(&page.next);
            return Ok(());
        }
        JobCommand::Show { id } => {
            let job = c.call(&JobShow(JobId { id })).await?;
            return if settings.json {
                print_json(&job)
            } else {
                print_job_detail(&job)
            };
        }
        JobCommand::Run {
            id,
            params,
            delay,
            idempotency_key,
        } => {
            let run = JobRun {
                id,
                params,
                delay_ms: delay.unwrap_or(0),
                idempotency_key: Some(
                    idempotency_key
                        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple())),
                ),
            };
            let started = call_retrying_timeouts(&c, &run).await?;
            return if settings.json {
                print_json(&started)
            } else if started.reused {
                println!(
                    "instance {} was started before with this idempotency key",
                    started.instance_id
                );
                Ok(())
            } else {
                println!("started instance {}", started.instance_id);
                Ok(())
            };
        }
        JobCommand::Enable { id } | JobCommand::Disable { id } => {
            let job = match cmd_is_enable {
                true => c.call(&JobEnable(JobId { id })).await?,
                false => c.call(&JobDisable(JobId { id })).await?,
            };
            if settings.json {
                return print_json(&job);
            }
            vec![job]
        }
        JobCommand::Delete { id } => {
            let done = c.call(&JobDelete(JobId { id })).await?;
            return if settings.json {
                print_json(&done)
            } else {
                println!("deleted job {id}");
                Ok(())
            };
        }
    };
    if settings.json {
        return print_json(&jobs);
    }
    print_jobs(&jobs);
    Ok(())
}

fn print_jobs(jobs: &[JobInfo]) {
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.app.clone(),
                j.spec.name.clone(),
                schedule_text(&j.spec.schedule),
                j.spec.processor.clone(),
                if j.spec.enabled { "yes" } else { "no" }.to_owned(),
                time(j.next_trigger_time_ms),
            ]
        })
        .collect::<Vec<_>>();
    println!(
        "{}",
        render(
            &[
                "ID",
                "APP",
                "NAME",
                "SCHEDULE",
                "PROCESSOR",
                "ENABLED",
                "NEXT FIRE"
            ],
            &rows
        )
    );
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Api => "api".to_owned(),
        Schedule::Cron {
            expression,
            time_zone,
        } => format!(
            "cron {expression}{}",
            time_zone
                .as_deref()
                .map(|z| format!(" ({z})"))
                .unwrap_or_default()
        ),
        Schedule::At { at_ms } => format!("at {}", time(Some(*at_ms))),
        Schedule::FixedRate { interval_ms } => format!("every {interval_ms} ms"),
        Schedule::FixedDelay { interval_ms } => format!("{interval_ms} ms after each run"),
    }
}

fn print_job_detail(j: &JobInfo) -> anyhow::Result<()> {
    let s = &j.spec;
    let rows = vec![
        vec!["id".into(), j.id.to_string()],
        vec!["app".into(), j.app.clone()],
        vec!["name".into(), s.name.clone()],
        vec!["description".into(), opt(Some(&s.description))],
        vec!["schedule".into(), schedule_text(&s.schedule)],
        vec!["processor".into(), s.processor.clone()],
        vec!["config".into(), opt(Some(&s.config))],
        vec!["params".into(), opt(s.params.as_deref())],
        vec!["enabled".into(), s.enabled.to_string()],
        vec!["next fire".into(), time(j.next_trigger_time_ms)],
        vec!["max instances".into(), s.max_instances.to_string()],
        vec!["overlap".into(), s.overlap.as_str().into()],
        vec!["max retries".into(), s.max_retries.to_string()],
        vec!["retry delay".into(), format!("{} ms", s.retry_delay_ms)],
        vec!["timeout".into(), format!("{} ms", s.timeout_ms)],
        vec!["dispatch".into(), s.dispatch.as_str().into()],
        vec!["tags".into(), s.tags.join(",")],
        vec!["workers".into(), s.designated_workers.join(",")],
    ];
    println!("{}", render(&["FIELD", "VALUE"], &rows));
    Ok(())
}

pub async fn instance(settings: &Settings, cmd: InstanceCommand) -> anyhow::Result<()> {
    if let InstanceCommand::List {
        status: Some(s), ..
    } = &cmd
        && InstanceStatus::parse(s).is_none()
    {
        return Err(usage!(
            "unknown status {s:?}: use a name such as RUNNING or a code such as 3"
        ));
    }
    let c = client(settings).await?;
    match cmd {
        InstanceCommand::List {
            app,
            job,
            status,
            paging,
        } => {
            let status = status.as_deref().and_then(InstanceStatus::parse);
            let page = pages(&c, &paging, |after, limit| InstanceList {
                app: app.clone(),
                job_id: job,
                status,
                limit,
                after,
            })
            .await?;
            if settings.json {
                return print_json(&page);
            }
            let rows = page
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.instance.id.to_string(),
                        i.instance.job_id.to_string(),
                        i.job_name.clone(),
                        i.instance.status.to_string(),
                        i.instance.trigger.to_string(),
                        i.instance.runs.to_string(),
                        opt(i.instance.worker_id.as_deref()),
                        time(i.instance.started_at_ms),
                        time(i.instance.finished_at_ms),
                        opt(i.instance.result.as_deref()),
                    ]
                })
                .collect::<Vec<_>>();
            println!(
                "{}",
                render(
                    &[
                        "ID", "JOB", "NAME", "STATUS", "TRIGGER", "RUNS", "WORKER", "STARTED",
                        "FINISHED", "RESULT"
                    ],
                    &rows
                )
            );
            more_hint(&page.next);
            Ok(())
        }
        InstanceCommand::Show { id } => {
            let i = c.call(&InstanceShow(InstanceId { id })).await?;
            show_instance(settings, &i)
        }
        InstanceCommand::Stop { id } => {
            let i = c.call(&InstanceStop(InstanceId { id })).await?;
            show_instance(settings, &i)
        }
        InstanceCommand::Tasks { id, paging } => {
            let page = pages(&c, &paging, |after, limit| InstanceTasks {
                id,
                after,
                limit,
            })
            .await?;
            if settings.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .items
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        safe(&t.name).into_owned(),
                        t.status.as_str().to_owned(),
                        opt(t.worker_id.as_deref()),
                        t.attempts.to_string(),
                        opt(t.result.as_deref()),
                    ]
                })
                .collect();
            println!(
                "{}",
                render(
                    &["ID", "NAME", "STATUS", "WORKER", "ATTEMPTS", "RESULT"],
                    &rows
                )
            );
            more_hint(&page.next);
            Ok(())
        }
        InstanceCommand::Retry { id } => {
            let started = c.call(&InstanceRetry(InstanceId { id })).await?;
            if settings.json {
                return print_json(&started);
            }
            println!("started instance {}", started.instance_id);
            Ok(())
        }
    }
}

fn show_instance(settings: &Settings, i: &InstanceInfo) -> anyhow::Result<()> {
    if settings.json {
        return print_json(i);
    }
    let rows = vec![
        vec!["id".into(), i.instance.id.to_string()],
        vec![
            "job".into(),
            format!("{} ({})", i.instance.job_id, i.job_name),
        ],
        vec!["status".into(), i.instance.status.to_string()],
        vec!["trigger".into(), i.instance.trigger.to_string()],
        vec![
            "expected fire".into(),
            time(i.instance.expected_trigger_time_ms),
        ],
        vec!["params".into(), opt(i.instance.instance_params.as_deref())],
        vec!["attempt".into(), i.instance.attempt.to_string()],
        vec!["runs".into(), i.instance.runs.to_string()],
        vec!["worker".into(), opt(i.instance.worker_id.as_deref())],
        vec!["result".into(), opt(i.instance.result.as_deref())],
        vec!["created".into(), time(Some(i.instance.created_at_ms))],
        vec!["started".into(), time(i.instance.started_at_ms)],
        vec!["finished".into(), time(i.instance.finished_at_ms)],
        vec!["due".into(), time(i.instance.due_at_ms)],
    ];
    println!("{}", render(&["FIELD", "VALUE"], &rows));
    if let Some(t) = &i.instance.tasks {
        println!(
            "\ntasks: {} total, {} succeeded, {} failed, {} running",
            t.total, t.succeeded, t.failed, t.running
        );
        let finished = (t.succeeded + t.failed).max(1);
        let shares: Vec<Vec<String>> = t
            .workers
            .iter()
            .map(|w| {
                let share = 100.0 * (w.succeeded + w.failed) as f64 / finished as f64;
                vec![
                    safe(&w.worker_id).into_owned(),
                    w.succeeded.to_string(),
                    w.failed.to_string(),
                    format!("{share:.1} %"),
                ]
            })
            .collect();
        if !shares.is_empty() {
            println!(
                "{}",
                render(&["WORKER", "SUCCEEDED", "FAILED", "SHARE"], &shares)
            );
        }
    }
    Ok(())
}

pub async fn logs(settings: &Settings, args: LogsArgs) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let mut after_id = 0;
    let mut attempt = None;
    loop {
        let page = c
            .call(&LogsGet {
                instance_id: args.instance,
                after_id,
                limit: Some(1000),
            })
            .await?;
        let more = page.more;
        for l in &page.lines {
            if settings.json {
                println!("{}", serde_json::to_string(l)?);
            } else {
                // A retried instance's attempts, each under its own header.
                if attempt != Some(l.attempt) {
                    attempt = Some(l.attempt);
                    println!("--- attempt {} ---", l.attempt);
                }
                println!(
                    "{} {:<5} {}",
                    time(Some(l.ts_ms)),
                    l.level.as_str(),
                    safe(&l.text)
                );
            }
        }
        after_id = page.last_id;
        if more {
            continue;
        }
        if !args.follow || page.finished {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn workers(
    settings: &Settings,
    app: Option<String>,
    paging: Paging,
) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let page = pages(&c, &paging, |after, limit| WorkerList {
        app: app.clone(),
        after,
        limit,
    })
    .await?;
    if settings.json {
        return print_json(&page);
    }
    let list: Vec<WorkerSummary> = page.items;
    let apps: std::collections::HashMap<i64, String> = c
        .call(&AppList {})
        .await?
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    let rows = list
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                apps.get(&w.app_id)
                    .cloned()
                    .unwrap_or_else(|| w.app_id.to_string()),
                w.tags.join(","),
                w.processors.join(","),
                format!("{}/{}", w.running, w.capacity),
                format!("{:.0} %", w.health),
                format!("{:.1} s ago", w.last_seen_ago_ms as f64 / 1000.0),
            ]
        })
        .collect::<Vec<_>>();
    println!(
        "{}",
        render(
            &[
                "WORKER",
                "APP",
                "TAGS",
                "PROCESSORS",
                "RUNNING",
                "HEALTH",
                "LAST SEEN"
            ],
            &rows
        )
    );
    more_hint(&page.next);
    Ok(())
}

/// Asks every live server (or the one `--server` names) for its stats.
pub async fn server_stats(settings: &Settings) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let ids: Vec<String> = match &settings.server {
        Some(id) => vec![id.clone()],
        None => c
            .call(&ServerList {})
            .await?
            .into_iter()
            .filter(|s| s.alive)
            .map(|s| s.id)
            .collect(),
    };
    let mut all = Vec::new();
    for id in ids {
        all.push(c.at_server(&id).call(&ServerStats {}).await?);
    }
    if settings.json {
        return print_json(&all);
    }
    for s in &all {
        println!(
            "server {}: {} (owns apps {:?}, {} live workers)",
            safe(&s.server_id),
            if s.ready { "ready" } else { "NOT READY" },
            s.owned_apps,
            s.live_workers
        );
        let repairs: Vec<Vec<String>> = s
            .repairs
            .iter()
            .map(|(reason, n)| vec![reason.clone(), n.to_string()])
            .collect();
        if repairs.is_empty() {
            println!("no repairs");
        } else {
            println!("{}", render(&["REPAIR", "COUNT"], &repairs));
        }
        let refused: Vec<Vec<String>> = s
            .refused
            .iter()
            .map(|(reason, n)| vec![reason.clone(), n.to_string()])
            .collect();
        if !refused.is_empty() {
            println!("{}", render(&["REFUSED", "COUNT"], &refused));
        }
        let services: Vec<Vec<String>> = s
            .services
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.state.clone(),
                    v.iterations.to_string(),
                    v.failed_iterations.to_string(),
                ]
            })
            .collect();
        println!(
            "{}\n",
            render(&["SERVICE", "STATE", "ITERATIONS", "FAILED"], &services)
        );
    }
    Ok(())
}

pub async fn servers(settings: &Settings) -> anyhow::Result<()> {
    let c = client(settings).await?;
    let list = c.call(&ServerList {}).await?;
    if settings.json {
        return print_json(&list);
    }
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.version.clone(),
                if s.alive { "yes" } else { "no" }.to_owned(),
                time(Some(s.started_at_ms)),
                time(Some(s.last_seen_ms)),
            ]
        })
        .collect::<Vec<_>>();
    println!(
        "{}",
        render(
            &["SERVER", "VERSION", "ALIVE", "STARTED", "LAST SEEN"],
            &rows
        )
    );
    Ok(())
}

fn print_tokens(settings: &Settings, tokens: &[TokenInfo]) -> anyhow::Result<()> {
    if settings.json {
        return print_json(&tokens);
    }
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.role.to_string(),
                opt(t.app.as_deref()),
                opt(Some(&t.description)),
                time(Some(t.created_at_ms)),
                time(t.revoked_at_ms),
            ]
        })
        .collect::<Vec<_>>();
    println!(
        "{}",
        render(
            &["ID", "ROLE", "APP", "DESCRIPTION", "CREATED", "REVOKED"],
            &rows
        )
    );
    Ok(())
}

/// Prints a new token: once, on standard output, with how to use it.
fn print_new_token(
    settings: &Settings,
    info: &TokenInfo,
    token: &AdminToken,
) -> anyhow::Result<()> {
    if settings.json {
        return print_json(&serde_json::json!({ "info": info, "token": token.reveal() }));
    }
    eprintln!(
        "token {} ({}{}): it is shown only now",
        info.id,
        info.role,
        info.app
            .as_deref()
            .map(|a| format!(", app {}", safe(a)))
            .unwrap_or_default()
    );
    println!("export ROTA_TOKEN={}", token.reveal());
    Ok(())
}

pub async fn token_command(
    settings: &Settings,
    database_given: bool,
    cmd: TokenCommand,
) -> anyhow::Result<()> {
    if let TokenCommand::Create {
        role,
        app,
        description,
    } = &cmd
    {
        let role = Role::parse(role)
            .ok_or_else(|| usage!("invalid --role {role:?}: use viewer, operator or admin"))?;
        if settings.token.is_none() && database_given {
            // Bootstrap: no token to ask a server with yet, so straight to the database.
            let store = rota_server::store::Store::connect(&settings.database_url).await?;
            let (info, token) =
                rota_server::create_token(&store, role, app.as_deref(), description).await?;
            return print_new_token(settings, &info, &token);
        }
        let c = client(settings).await?;
        let (info, token) = c.token_create(role, app.as_deref(), description).await?;
        return print_new_token(settings, &info, &token);
    }
    let c = client(settings).await?;
    let tokens = match cmd {
        TokenCommand::List => c.call(&TokenList {}).await?,
        TokenCommand::Revoke { id } => vec![c.call(&TokenRevoke { id }).await?],
        TokenCommand::Create { .. } => unreachable!("handled above"),
    };
    print_tokens(settings, &tokens)
}
