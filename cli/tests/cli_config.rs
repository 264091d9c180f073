//! A bad value in the configuration is a one-line error and a non-zero exit at start, never a
//! service that dies later.

#[tokio::test]
async fn a_zero_interval_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("rota.toml");
    std::fs::write(&config, "[server]\nreconcile_interval = \"0s\"\n")?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--config", config.to_str().unwrap_or_default(), "server"])
        .env(
            "ROTA_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("r.db").display()),
        )
        .env_remove("ROTA_PREFIX")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reconcile_interval must be above zero"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    Ok(())
}
