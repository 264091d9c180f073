//! Scheduling end to end: CRON jobs with a seconds field and one-shot jobs fire on time, once
//! per fire time, and their runs succeed with their output stored.

use std::collections::HashSet;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceInfo, JobDisable, JobId, JobShow};
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_cron_runs_four_times_in_five_seconds() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let mut spec = shell_job("app", "tick", r#"echo "tick $ROTA_INSTANCE_ID""#);
    spec.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: Some("Europe/Berlin".into()),
    };
    let job = d.create_job(spec).await?;

    // Five fires in a row must have finished; the first four lie within five seconds.
    let finished = wait::until("five finished fires", Duration::from_secs(20), || async {
        let mut list = d.instances_of(job.id).await.ok()?;
        list.retain(|i| i.instance.status.is_terminal());
        (list.len() >= 5).then_some(list)
    })
    .await;
    d.admin.call(&JobDisable(JobId { id: job.id })).await?;

    let mut fires: Vec<&InstanceInfo> = finished.iter().collect();
    fires.sort_by_key(|i| i.instance.expected_trigger_time_ms);
    let first = fires[0]
        .instance
        .expected_trigger_time_ms
        .expect("a scheduled fire has a fire time");
    let in_window: Vec<&&InstanceInfo> = fires
        .iter()
        .filter(|i| {
            i.instance
                .expected_trigger_time_ms
                .is_some_and(|t| t < first + 5_000)
        })
        .collect();
    assert!(
        in_window.len() >= 4,
        "only {} runs in the first 5 s: {fires:#?}",
        in_window.len()
    );
    for i in &in_window {
        assert_eq!(i.instance.status, InstanceStatus::Succeeded, "{i:?}");
        let fire = i.instance.expected_trigger_time_ms.unwrap_or_default();
        assert_eq!(fire % 1000, 0, "CRON fires on whole seconds: {i:?}");
        let started = i
            .instance
            .started_at_ms
            .expect("a succeeded instance has started");
        // Runs start at their fire time; the bound only has to absorb a loaded 2-core machine.
        assert!(
            (fire..fire + 2_000).contains(&started),
            "instance {} started {} ms after its fire time",
            i.instance.id,
            started - fire
        );
        let logs = d.logs(i.instance.id).await?;
        assert!(
            logs.iter()
                .any(|l| l.text == format!("tick {}", i.instance.id)),
            "output of instance {} missing from its log: {logs:?}",
            i.instance.id
        );
    }
    // Disabled, the job stops: fires already created ahead of time are canceled, not run, and
    // every instance comes to rest.
    let all = wait::until(
        "every instance to finish",
        Duration::from_secs(10),
        || async {
            let list = d.instances_of(job.id).await.ok()?;
            list.iter()
                .all(|i| i.instance.status.is_terminal())
                .then_some(list)
        },
    )
    .await;
    for i in &all {
        let disabled = i.instance.status == InstanceStatus::Canceled
            && i.instance.result.as_deref() == Some("job was disabled");
        assert!(
            i.instance.status == InstanceStatus::Succeeded || disabled,
            "{i:?}"
        );
    }
    // A fire time never has two instances.
    let distinct: HashSet<Option<i64>> = all
        .iter()
        .map(|i| i.instance.expected_trigger_time_ms)
        .collect();
    assert_eq!(distinct.len(), all.len(), "a fire time has two instances");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_job_fires_once_at_its_time() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    // A whole second at least 2 s ahead, so the instance is created before it is due.
    let at_ms = (rota_transport::wall_ms() / 1000 + 3) * 1000;
    let mut spec = shell_job("app", "once", "echo once");
    spec.spec.schedule = Schedule::At { at_ms };
    let job = d.create_job(spec).await?;
    assert_eq!(job.next_trigger_time_ms, Some(at_ms));

    let done = wait::until("the one-shot run", Duration::from_secs(15), || async {
        let list = d.instances_of(job.id).await.ok()?;
        list.into_iter().find(|i| i.instance.status.is_terminal())
    })
    .await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded);
    assert_eq!(done.instance.expected_trigger_time_ms, Some(at_ms));
    let started = done.instance.started_at_ms.unwrap_or_default();
    assert!(
        (at_ms..at_ms + 2_000).contains(&started),
        "started {} ms after its time",
        started - at_ms
    );
    // Its schedule is used up: no next fire is stored and the fire made one instance.
    let job = d.admin.call(&JobShow(JobId { id: job.id })).await?;
    assert_eq!(job.next_trigger_time_ms, None);
    assert_eq!(d.instances_of(job.id).await?.len(), 1);
    d.shutdown().await;
    Ok(())
}

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
}

/// The scheduler itself places wall-clock CRON times across daylight-saving changes: a time in
/// the spring-forward gap runs once, right after it, and a time in the repeated fall-back hour
/// runs once. The days of the changes lie in the past, so the jobs' fires there are made by the
/// misfire catch-up, which walks the fire times exactly as a live schedule does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_across_daylight_saving_changes_as_wall_times() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // A worker makes the server own (and so schedule) the app.
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let store = rota_server::store::Store::connect(d.db.url()).await?;
    let cases = [
        (
            "0 30 2,14 * * *",
            "America/New_York",
            ("2026-03-07T00:00:00-05:00", "2026-03-09T00:00:00-04:00"),
            vec![
                "2026-03-07T02:30:00-05:00",
                "2026-03-07T14:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T14:30:00-04:00",
            ],
        ),
        (
            "0 30 1,14 * * *",
            "America/New_York",
            ("2026-10-31T00:00:00-04:00", "2026-11-02T00:00:00-05:00"),
            vec![
                "2026-10-31T01:30:00-04:00",
                "2026-10-31T14:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T14:30:00-05:00",
            ],
        ),
        (
            "0 0,30 2 * * *",
            "Europe/Berlin",
            ("2026-03-28T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
            vec![
                "2026-03-28T02:00:00+01:00",
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
            ],
        ),
    ];
    let mut jobs = Vec::new();
    for (i, (expression, zone, (from, to), expected)) in cases.iter().enumerate() {
        let mut spec = shell_job("app", &format!("dst-{i}"), "true");
        spec.spec.schedule = Schedule::Cron {
            expression: (*expression).to_owned(),
            time_zone: Some((*zone).to_owned()),
        };
        spec.spec.lifecycle = rota_shared::schedule::Lifecycle {
            start_ms: Some(at(from)),
            end_ms: Some(at(to)),
        };
        spec.spec.misfire = rota_shared::admin::MisfirePolicy::CatchUp { max: 100 };
        let job = d.create_job(spec).await?;
        // The window has passed, so the job has no next fire; put it at the window's first.
        store
            .set_next_trigger(job.id, Some(at(expected[0])), at(from))
            .await?;
        jobs.push((job.id, expected));
    }
    for (job, expected) in jobs {
        let want: Vec<i64> = expected.iter().map(|t| at(t)).collect();
        let got = wait::until(
            &format!("job {job}'s fires to be made"),
            Duration::from_secs(10),
            || async {
                let mut times: Vec<i64> = d
                    .instances_of(job)
                    .await
                    .ok()?
                    .iter()
                    .filter_map(|i| i.instance.expected_trigger_time_ms)
                    .collect();
                times.sort_unstable();
                (times.len() >= want.len()).then_some(times)
            },
        )
        .await;
        assert_eq!(got, want, "job {job}");
    }
    d.shutdown().await;
    Ok(())
}
