//! Every list comes a page at a time: at most its limit, and never more than a NATS reply holds,
//! with a cursor to the next page while more exist, so that thousands of jobs, instances or
//! workers are listed whole and none is left out silently.

use std::collections::HashSet;

use rota_server::store::{Job, NewInstance, Store};
use rota_shared::Trigger;
use rota_shared::admin::{InstanceList, JobList, MAX_PAGE, Page, WorkerList};
use rota_tests::cluster::{Deployment, shell_job};
use rota_worker::ProcessorRegistry;

/// Every page of `list`, following its cursors.
async fn all_pages<T>(
    mut list: impl AsyncFnMut(Option<String>) -> anyhow::Result<Page<T>>,
) -> anyhow::Result<(Vec<T>, usize)> {
    let (mut items, mut pages, mut after) = (Vec::new(), 0, None);
    loop {
        let page = list(after).await?;
        pages += 1;
        items.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok((items, pages)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_instances_and_workers_are_listed_whole_a_page_at_a_time() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    let app = d.create_app("app").await?;
    let store = Store::connect(d.db.url()).await?;
    let now = rota_transport::wall_ms();
    let jobs: Vec<Job> = (0..250)
        .map(|i| Job::new(shell_job("app", &format!("j{i}"), "true").spec, app.id, now))
        .collect();
    store.insert_jobs(&jobs).await?;

    // The default page is 100 jobs; three pages hold them all, in order, each once.
    let first = d.admin.call(&JobList::default()).await?;
    assert_eq!(first.items.len(), 100);
    assert!(first.next.is_some());
    let (listed, pages) = all_pages(async |after| {
        Ok(d.admin
            .call(&JobList {
                after,
                ..Default::default()
            })
            .await?)
    })
    .await?;
    assert_eq!((listed.len(), pages), (250, 3));
    let ids: Vec<i64> = listed.iter().map(|j| j.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in order");

    // Jobs with 110 kB scripts: a page stops where its reply would be too large for NATS.
    let big: Vec<Job> = (0..20)
        .map(|i| {
            let script = format!("echo {}", "x".repeat(110_000));
            Job::new(
                shell_job("app", &format!("big{i}"), &script).spec,
                app.id,
                now,
            )
        })
        .collect();
    store.insert_jobs(&big).await?;
    let (listed, pages) = all_pages(async |after| {
        Ok(d.admin
            .call(&JobList {
                after,
                limit: Some(MAX_PAGE),
                ..Default::default()
            })
            .await?)
    })
    .await?;
    assert_eq!(listed.len(), 270);
    assert!(
        pages >= 3,
        "20 scripts of 110 kB need several 1 MB replies, got {pages} page(s)"
    );

    // Instances, newest first, 50 a page by default.
    let news = (0..120)
        .map(|_| NewInstance {
            job_id: ids[0],
            app_id: app.id,
            trigger: Trigger::Api,
            params: None,
            due_at_ms: now + 3_600_000,
            handed_to: None,
            idempotency_key: None,
        })
        .collect();
    store.insert_instances(news, now).await?;
    let first = d.admin.call(&InstanceList::default()).await?;
    assert_eq!(first.items.len(), 50);
    let (listed, pages) = all_pages(async |after| {
        Ok(d.admin
            .call(&InstanceList {
                after,
                ..Default::default()
            })
            .await?)
    })
    .await?;
    assert_eq!((listed.len(), pages), (120, 3));
    let ids: Vec<i64> = listed.iter().map(|i| i.instance.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "not newest first");

    // Workers, by app and id.
    for w in ["w1", "w2", "w3"] {
        d.start_worker(d.worker_config("app", w), ProcessorRegistry::new())
            .await?;
    }
    let (listed, pages) = all_pages(async |after| {
        Ok(d.admin
            .call(&WorkerList {
                after,
                limit: Some(2),
                ..Default::default()
            })
            .await?)
    })
    .await?;
    let names: HashSet<String> = listed.into_iter().map(|w| w.worker_id).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(pages, 2);
    d.shutdown().await;
    Ok(())
}
