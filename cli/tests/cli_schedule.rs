//! `rota schedule preview` shows the fire times the scheduler will use, daylight saving
//! included, and a CRON expression that never matches is refused, by the preview and by
//! `job create`.

use rota_tests::cluster::Deployment;

async fn rota(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rota"));
    command
        .args(args)
        .env_remove("ROTA_CONFIG")
        .env_remove("ROTA_PREFIX");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().await.expect("the rota binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The UTC times `rota --json schedule preview` prints.
async fn preview(cron: &str, tz: &str, from: &str, count: &str) -> Vec<String> {
    let (code, stdout, stderr) = rota(
        &[
            "--json", "schedule", "preview", "--cron", cron, "--tz", tz, "--from", from, "--count",
            count,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let fires: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("JSON");
    fires
        .iter()
        .map(|f| f["utc"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_shows_daylight_saving_as_the_scheduler_applies_it() {
    // New York's spring-forward day: 02:30 runs once at 03:00 EDT; its fall-back day: 01:30
    // runs once, at the first of its two occurrences.
    assert_eq!(
        preview(
            "0 30 2,14 * * *",
            "America/New_York",
            "2026-03-08T00:00:00-05:00",
            "3"
        )
        .await,
        vec![
            "2026-03-08T07:00:00Z",
            "2026-03-08T18:30:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    assert_eq!(
        preview(
            "0 30 1,14 * * *",
            "America/New_York",
            "2026-11-01T00:00:00-04:00",
            "3"
        )
        .await,
        vec![
            "2026-11-01T05:30:00Z",
            "2026-11-01T19:30:00Z",
            "2026-11-02T06:30:00Z"
        ]
    );
    // Berlin: both times of the gap run once, at 03:00 CEST.
    assert_eq!(
        preview(
            "0 0,30 2 * * *",
            "Europe/Berlin",
            "2026-03-29T00:00:00+01:00",
            "2"
        )
        .await,
        vec!["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]
    );
    // Samoa skipped 2011-12-30; the job goes on.
    assert_eq!(
        preview(
            "0 0 9 * * *",
            "Pacific/Apia",
            "2011-12-29T00:00:00-10:00",
            "3"
        )
        .await,
        vec![
            "2011-12-29T19:00:00Z",
            "2011-12-30T10:00:00Z",
            "2011-12-30T19:00:00Z"
        ]
    );
    // A table for people shows local times with their offsets.
    let (code, stdout, _) = rota(
        &[
            "schedule",
            "preview",
            "--cron",
            "0 30 2 * * *",
            "--tz",
            "America/New_York",
            "--from",
            "2026-03-08T00:00:00-05:00",
            "--count",
            "1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("2026-03-08 03:00:00 -04:00 EDT"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_that_never_fires_is_refused() -> anyhow::Result<()> {
    let (code, _, stderr) = rota(&["schedule", "preview", "--cron", "0 0 0 30 2 *"], &[]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("matches no time"), "{stderr}");

    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let url = d.nats.url();
    let token = d.token.reveal();
    let (code, _, stderr) = rota(
        &[
            "job",
            "create",
            "--app",
            "app",
            "--name",
            "never",
            "--cron",
            "0 0 0 30 2 *",
            "--processor",
            "shell",
            "--script",
            "true",
        ],
        &[("ROTA_NATS_URL", &url), ("ROTA_TOKEN", &token)],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("matches no time"),
        "{stderr}"
    );
    d.shutdown().await;
    Ok(())
}
