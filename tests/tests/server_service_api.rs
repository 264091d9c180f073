//! Servers serve their endpoints through the NATS service API: `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` describe every running server, as `nats micro ls` would show them.

use std::time::Duration;

use rota_shared::admin::AppList;
use rota_tests::bus::service_api;
use rota_tests::cluster::Deployment;
use serde_json::Value;

fn endpoint<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no endpoint {name} in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_answers_ping_info_and_stats() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.start_server("s2").await?;
    let nats = async_nats::connect(d.nats.url()).await?;
    let wait = Duration::from_millis(500);

    let mut ids: Vec<String> = service_api(&nats, "PING", wait)
        .await?
        .iter()
        .map(|p| {
            p["metadata"]["server_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["s1", "s2"]);

    let infos = service_api(&nats, "INFO", wait).await?;
    assert_eq!(infos.len(), 2);
    for info in &infos {
        let id = info["metadata"]["server_id"].as_str().unwrap_or_default();
        assert_eq!(info["version"], rota_server::VERSION);
        let discovery = endpoint(info, "discovery");
        assert_eq!(discovery["subject"], "rota.discovery.*");
        assert_eq!(discovery["queue_group"], "rota-servers");
        assert_eq!(
            endpoint(info, "heartbeat")["subject"],
            format!("rota.app.*.srv.{id}.heartbeat")
        );
        assert_eq!(
            endpoint(info, "ping")["subject"],
            format!("rota.srv.{id}.ping")
        );
        assert_eq!(endpoint(info, "admin")["subject"], "rota.admin.>");
    }

    // Requests asked of s1 in particular are counted in its stats.
    let at_s1 = d.admin.at_server("s1");
    for _ in 0..3 {
        at_s1.call(&AppList {}).await?;
    }
    let stats = service_api(&nats, "STATS", wait).await?;
    let s1 = stats
        .iter()
        .find(|s| {
            infos
                .iter()
                .any(|i| i["id"] == s["id"] && i["metadata"]["server_id"] == "s1")
        })
        .expect("s1's stats");
    let direct = endpoint(s1, "admin-direct");
    assert!(
        direct["num_requests"].as_u64().unwrap_or(0) >= 3,
        "{direct}"
    );
    // A stopped server leaves the service.
    d.stop_server("s2").await;
    let left = service_api(&nats, "PING", wait).await?;
    assert_eq!(left.len(), 1, "{left:?}");
    d.shutdown().await;
    Ok(())
}
