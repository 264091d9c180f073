//! The fences of DESIGN §3, raced head-on against the real database: whatever number of
//! servers act at once, a fire time yields one instance, an instance is handed to one worker per
//! attempt, and a report's change applies once.

use std::collections::HashSet;

use rota_server::store::{FirePlan, Handover, InstanceGuard, Job, NewInstance, Store};
use rota_shared::rules::Update;
use rota_shared::{InstanceStatus, Trigger};
use rota_tests::cluster::shell_job;
use rota_tests::db::TestDatabase;

/// How many "servers" race in each round.
const RACERS: usize = 4;

async fn setup() -> anyhow::Result<(TestDatabase, Store, Job)> {
    rota_tests::init_tracing();
    let db = TestDatabase::create().await?;
    let store = Store::connect(db.url()).await?;
    let app = store
        .create_app("app", &rota_transport::Key::from_bytes([1; 32]), 0)
        .await?;
    let job = store
        .insert_job(&Job::new(shell_job("app", "j", "true").spec, app.id, 0))
        .await?;
    Ok((db, store, job))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_fire_passes_create_each_fire_once() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    // The job's next fire is at 1000; every racer read that and plans fires 1000..=3000.
    store.set_next_trigger(job.id, Some(1000), 0).await?;
    let plan = FirePlan {
        job_id: job.id,
        app_id: job.app_id,
        old_next: 1000,
        new_next: Some(4000),
        fires: vec![1000, 2000, 3000],
    };
    let mut racers = Vec::new();
    for _ in 0..RACERS {
        let (store, plan) = (store.clone(), plan.clone());
        racers.push(tokio::spawn(async move { store.fire(&[plan], 0).await }));
    }
    let mut ids = HashSet::new();
    for racer in racers {
        // A racer that lost the next-fire compare-and-set creates and returns nothing.
        for inst in racer.await?? {
            ids.insert((inst.id, inst.expected_trigger_time_ms));
        }
    }
    let stored = store
        .list_instances(&rota_server::store::InstanceFilter {
            job_id: Some(job.id),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let fires: Vec<Option<i64>> = stored.iter().map(|i| i.expected_trigger_time_ms).collect();
    assert_eq!(stored.len(), 3, "fires: {fires:?}");
    assert_eq!(ids.len(), 3);
    assert_eq!(store.job(job.id).await?.next_trigger_time_ms, Some(4000));

    // A second round that read the old next fire finds it moved and creates nothing.
    assert!(store.fire(&[plan], 0).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_dispatches_hand_an_attempt_to_one_worker() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    for round in 0..5 {
        store
            .set_next_trigger(job.id, Some(round * 10 + 1), 0)
            .await?;
        let plan = FirePlan {
            job_id: job.id,
            app_id: job.app_id,
            old_next: round * 10 + 1,
            new_next: None,
            fires: vec![round * 10 + 1],
        };
        let inst = store.fire(&[plan], 0).await?.pop().expect("one instance");
        let guard = InstanceGuard::of(&store.instance(inst.id).await?);
        let mut racers = Vec::new();
        for n in 0..RACERS {
            let store = store.clone();
            racers.push(tokio::spawn(async move {
                store
                    .cas_dispatch(inst.id, guard, &format!("w{n}"), 0)
                    .await
            }));
        }
        let mut won = Vec::new();
        for racer in racers {
            if let Some(attempt) = racer.await?? {
                won.push(attempt);
            }
        }
        assert_eq!(won, vec![1], "round {round}: attempts handed out: {won:?}");
        let after = store.instance(inst.id).await?;
        assert_eq!(after.status, InstanceStatus::WaitingWorkerReceive);
        assert_eq!(after.attempt, 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_change_applies_once() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    store.set_next_trigger(job.id, Some(5), 0).await?;
    let plan = FirePlan {
        job_id: job.id,
        app_id: job.app_id,
        old_next: 5,
        new_next: None,
        fires: vec![5],
    };
    let inst = store.fire(&[plan], 0).await?.pop().expect("one instance");
    let guard = InstanceGuard::of(&store.instance(inst.id).await?);
    store.cas_dispatch(inst.id, guard, "w1", 0).await?;
    let guard = InstanceGuard::of(&store.instance(inst.id).await?);
    let update = Update {
        status: InstanceStatus::Running,
        last_seq: 1,
        runs: 1,
        result: None,
        started_at_ms: Some(1),
        finished_at_ms: None,
        retry_at_ms: None,
        alert: false,
        tasks: None,
    };
    let mut racers = Vec::new();
    for _ in 0..RACERS {
        let (store, update) = (store.clone(), update.clone());
        racers.push(tokio::spawn(async move {
            store.apply_updates(&[(inst.id, guard, update)], 1).await
        }));
    }
    let mut applied = 0;
    for racer in racers {
        applied += racer.await??.into_iter().filter(|ok| *ok).count();
    }
    assert_eq!(applied, 1, "the same change applied {applied} times");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_insert_returns_each_instance_in_the_order_given() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    let news: Vec<NewInstance> = (0..300)
        .map(|i| NewInstance {
            job_id: job.id,
            app_id: job.app_id,
            trigger: Trigger::Api,
            params: Some(format!("p{i}")),
            due_at_ms: i,
            handed_to: None,
            idempotency_key: None,
        })
        .collect();
    let models = store.insert_instances(news, 0).await?;
    assert_eq!(models.len(), 300);
    for (i, m) in models.iter().enumerate() {
        assert_eq!(m.instance_params, Some(format!("p{i}")));
        assert_eq!(m.due_at_ms, Some(i as i64));
        assert_eq!(
            store.instance(m.id).await?.instance_params,
            m.instance_params
        );
    }
    Ok(())
}

/// `n` WAITING_DISPATCH instances of `job`.
async fn waiting(store: &Store, job: &Job, n: usize) -> anyhow::Result<Vec<i64>> {
    let news = (0..n)
        .map(|_| NewInstance {
            job_id: job.id,
            app_id: job.app_id,
            trigger: Trigger::Api,
            params: None,
            due_at_ms: 0,
            handed_to: None,
            idempotency_key: None,
        })
        .collect();
    Ok(store
        .insert_instances(news, 0)
        .await?
        .iter()
        .map(|m| m.id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_batched_dispatches_hand_each_attempt_to_one_worker() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    let ids = waiting(&store, &job, 50).await?;
    let guard = InstanceGuard {
        status: InstanceStatus::WaitingDispatch,
        attempt: 0,
        last_seq: 0,
    };
    let mut racers = Vec::new();
    for n in 0..RACERS {
        let (store, ids) = (store.clone(), ids.clone());
        racers.push(tokio::spawn(async move {
            let worker = format!("w{n}");
            let handovers: Vec<Handover<'_>> = ids
                .iter()
                .map(|id| Handover {
                    id: *id,
                    guard,
                    worker_id: &worker,
                    start_at_ms: None,
                })
                .collect();
            let won = store.cas_dispatch_many(&handovers, 7).await?;
            anyhow::Ok((worker.clone(), won))
        }));
    }
    let mut winner_of = std::collections::HashMap::new();
    for racer in racers {
        let (worker, won) = racer.await??;
        assert_eq!(won.len(), ids.len());
        for (id, attempt) in ids.iter().zip(won) {
            if let Some(attempt) = attempt {
                assert_eq!(attempt, 1);
                let earlier = winner_of.insert(*id, worker.clone());
                assert!(
                    earlier.is_none(),
                    "instance {id} handed to {earlier:?} and {worker}"
                );
            }
        }
    }
    assert_eq!(
        winner_of.len(),
        ids.len(),
        "an instance was handed to nobody"
    );
    for id in &ids {
        let m = store.instance(*id).await?;
        assert_eq!(m.status, InstanceStatus::WaitingWorkerReceive);
        assert_eq!((m.attempt, m.last_report_at_ms), (1, Some(7)));
        assert_eq!(m.worker_id.as_ref(), winner_of.get(id));
    }

    // A later start counts as the dispatch time; a stale guard in the same batch changes
    // nothing.
    let fresh = waiting(&store, &job, 1).await?[0];
    let handovers = [
        Handover {
            id: fresh,
            guard,
            worker_id: "w9",
            start_at_ms: Some(500),
        },
        Handover {
            id: ids[0],
            guard,
            worker_id: "w9",
            start_at_ms: None,
        },
    ];
    let won = store.cas_dispatch_many(&handovers, 100).await?;
    assert_eq!(won, vec![Some(1), None]);
    assert_eq!(store.instance(fresh).await?.last_report_at_ms, Some(500));
    assert_eq!(
        store.instance(ids[0]).await?.worker_id.as_ref(),
        winner_of.get(&ids[0])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_report_write_applies_only_the_rows_whose_guard_holds() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    let ids = waiting(&store, &job, 3).await?;
    let mut guards = Vec::new();
    for id in &ids {
        let m = store.instance(*id).await?;
        store
            .cas_dispatch(*id, InstanceGuard::of(&m), "w1", 0)
            .await?;
        guards.push(InstanceGuard::of(&store.instance(*id).await?));
    }
    let succeeded = Update {
        status: InstanceStatus::Succeeded,
        last_seq: 1,
        runs: 1,
        result: Some("done".into()),
        started_at_ms: Some(10),
        finished_at_ms: Some(11),
        retry_at_ms: None,
        alert: false,
        tasks: None,
    };
    let retry = Update {
        status: InstanceStatus::WaitingDispatch,
        result: None,
        finished_at_ms: None,
        retry_at_ms: Some(99),
        ..succeeded.clone()
    };
    let stale = InstanceGuard {
        attempt: guards[1].attempt + 1,
        ..guards[1]
    };
    let applied = store
        .apply_updates(
            &[
                (ids[0], guards[0], succeeded.clone()),
                (ids[1], stale, succeeded.clone()),
                (ids[2], guards[2], retry),
            ],
            12,
        )
        .await?;
    assert_eq!(applied, vec![true, false, true]);

    let done = store.instance(ids[0]).await?;
    assert_eq!(done.status, InstanceStatus::Succeeded);
    assert_eq!(done.result.as_deref(), Some("done"));
    assert_eq!(
        (
            done.started_at_ms,
            done.finished_at_ms,
            done.last_report_at_ms
        ),
        (Some(10), Some(11), Some(12))
    );
    assert_eq!(done.worker_id.as_deref(), Some("w1"));

    let untouched = store.instance(ids[1]).await?;
    assert_eq!(untouched.status, InstanceStatus::WaitingWorkerReceive);
    assert_eq!((untouched.last_seq, untouched.result), (0, None));

    let retried = store.instance(ids[2]).await?;
    assert_eq!(retried.status, InstanceStatus::WaitingDispatch);
    assert_eq!((retried.due_at_ms, retried.worker_id), (Some(99), None));
    assert_eq!(retried.finished_at_ms, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_created_handed_over_is_attempt_one_of_its_worker() -> anyhow::Result<()> {
    let (_db, store, job) = setup().await?;
    let news = vec![NewInstance {
        job_id: job.id,
        app_id: job.app_id,
        trigger: Trigger::Api,
        params: None,
        due_at_ms: 5,
        handed_to: Some("w1".into()),
        idempotency_key: None,
    }];
    let m = store.insert_instances(news, 5).await?.remove(0);
    assert_eq!(m.status, InstanceStatus::WaitingWorkerReceive);
    assert_eq!((m.attempt, m.worker_id.as_deref()), (1, Some("w1")));
    assert_eq!((m.due_at_ms, m.last_report_at_ms), (None, Some(5)));
    // Its fence is attempt 1 of w1: a dispatch racing from WAITING_DISPATCH finds nothing.
    let from_waiting = InstanceGuard {
        status: InstanceStatus::WaitingDispatch,
        attempt: 0,
        last_seq: 0,
    };
    assert_eq!(store.cas_dispatch(m.id, from_waiting, "w2", 6).await?, None);
    Ok(())
}
