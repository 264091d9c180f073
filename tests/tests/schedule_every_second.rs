//! Twenty CRON jobs that fire every second, on three workers, with the default settings of
//! server and workers: every fire starts at its instant and no dispatch is refused. Fires are
//! handed to their workers `dispatch_ahead` (1.5 s) early and held there, so a worker holds a
//! dozen at a time; held fires take no execution slot, and a batch of fires is spread over the
//! workers rather than given to the one that looked healthiest.
//!
//! The bound on lateness here is generous, for a loaded CI machine; BENCHMARKS.md has the
//! figures of a quiet one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_server::ServerConfig;
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::wait;
use rota_worker::{ProcessResult, ProcessorRegistry, WorkerConfig, processor_fn};

const JOBS: usize = 20;
const SECONDS: i64 = 15;
/// Five times the 50 ms a quiet machine keeps to.
const LATENESS_BOUND_MS: i64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_every_second_jobs_on_three_workers_start_on_time_without_refusals()
-> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    d.start_server_with(ServerConfig {
        nats: d.nats_options.clone(),
        database_url: d.db.url().to_owned(),
        server_id: Some("s1".to_owned()),
        ..ServerConfig::default()
    })
    .await?;
    d.create_app("app").await?;

    // (job, instant, when the processor started), as the workers saw them.
    let starts: Arc<Mutex<Vec<(i64, i64, i64)>>> = Arc::default();
    let mut registry = ProcessorRegistry::new();
    registry.register("mark", {
        let starts = Arc::clone(&starts);
        processor_fn(move |ctx| {
            let now = rota_transport::wall_ms();
            if let Some(instant) = ctx.expected_trigger_time_ms {
                starts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((ctx.job_id, instant, now));
            }
            async { ProcessResult::ok("marked") }
        })
    });
    for id in ["w1", "w2", "w3"] {
        let config = WorkerConfig {
            nats: d.nats_options.clone(),
            app: "app".to_owned(),
            secret: SECRET.to_owned(),
            worker_id: Some(id.to_owned()),
            ..WorkerConfig::default()
        };
        d.start_worker(config, registry.clone()).await?;
    }
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        let mut job = shell_job("app", &format!("every-second-{n}"), "");
        job.spec.processor = "mark".to_owned();
        job.spec.schedule = Schedule::Cron {
            expression: "* * * * * *".to_owned(),
            time_zone: None,
        };
        jobs.push(d.create_job(job).await?.id);
    }

    // The window starts once every job is planned and its first fires handed over.
    let first = (rota_transport::wall_ms() / 1000 + 4) * 1000;
    let last = first + (SECONDS - 1) * 1000;
    let window = |instant: i64| (first..=last).contains(&instant);
    let seen = wait::until(
        &format!("every fire of {JOBS} jobs for {SECONDS} s to start"),
        Duration::from_secs(u64::try_from(SECONDS).unwrap_or(15) + 30),
        || async {
            let starts = starts.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let in_window: Vec<_> = starts.into_iter().filter(|(_, i, _)| window(*i)).collect();
            (in_window.len() >= JOBS * usize::try_from(SECONDS).unwrap_or(15)).then_some(in_window)
        },
    )
    .await;

    // Each job fired once for each second of the window: nothing lost, nothing twice.
    let mut per_job: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (job, instant, _) in &seen {
        per_job.entry(*job).or_default().push(*instant);
    }
    for job in &jobs {
        let mut fires = per_job.remove(job).unwrap_or_default();
        fires.sort_unstable();
        let expected: Vec<i64> = (0..SECONDS).map(|s| first + s * 1000).collect();
        assert_eq!(fires, expected, "job {job} fired once a second");
    }

    let mut lateness: Vec<i64> = seen.iter().map(|(_, instant, at)| at - instant).collect();
    lateness.sort_unstable();
    let pick = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{} fires: start lateness p50 {} ms, p99 {} ms, max {} ms, min {} ms",
        lateness.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0),
        pick(0.0)
    );
    assert!(
        pick(0.0) >= 0,
        "no fire starts before its instant: {lateness:?}"
    );
    assert!(
        pick(1.0) <= LATENESS_BOUND_MS,
        "every fire starts within {LATENESS_BOUND_MS} ms of its instant: max {} ms",
        pick(1.0)
    );

    // No dispatch was refused: a refusal would have handed the instance over again, as a
    // later attempt.
    for job in &jobs {
        for i in d.instances_of(*job).await? {
            let in_window = i.instance.expected_trigger_time_ms.is_some_and(window);
            if in_window {
                assert_eq!(
                    i.instance.attempt, 1,
                    "a fire was refused and handed over again: {i:?}"
                );
            }
        }
    }
    let mut workers: Vec<String> = Vec::new();
    for job in &jobs {
        for i in d.instances_of(*job).await? {
            workers.extend(i.instance.worker_id);
        }
    }
    for id in ["w1", "w2", "w3"] {
        let share = workers.iter().filter(|w| *w == id).count();
        eprintln!("{id} ran {share} of {} fires", workers.len());
        assert!(share > 0, "{id} took part");
    }
    d.shutdown().await;
    Ok(())
}
