//! What a deployment declares (`[server] admin_token_file`, `[[server.apps]]`): servers create the
//! admin token and the apps when missing, and never undo an operator's act: a revoked declared
//! token stays revoked after a restart, an app keeps the secret it has, and a declared token
//! whose id exists with another secret stops the server with a clear error.

use std::time::Duration;

use rota_server::DeclaredApp;
use rota_shared::ErrorCode;
use rota_shared::admin::*;
use rota_tests::cluster::{Deployment, SECRET};
use rota_transport::AdminToken;
use rota_transport::keys::app_key;
use rota_worker::ProcessorRegistry;

fn declared(name: &str, secret: &str) -> anyhow::Result<DeclaredApp> {
    Ok(DeclaredApp {
        name: name.to_owned(),
        key: app_key(name, secret)?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_token_and_apps_are_made_once_and_never_undone() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let token = AdminToken::generate()?;
    let mut config = d.server_config("s1");
    config.admin_token = Some(token.clone());
    config.apps = vec![declared("billing", SECRET)?];
    d.start_server_with(config.clone()).await?;

    // The declared token works, and the declared app takes workers with its secret.
    let declared_admin = d.client_with(&token).await?;
    let apps = declared_admin.call(&AppList {}).await?;
    assert_eq!(
        apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["billing"]
    );
    d.start_worker(d.worker_config("billing", "w1"), ProcessorRegistry::new())
        .await?;

    // An operator revokes the token; a restart with the same declaration leaves it revoked,
    // and a declaration with another secret for the app changes nothing either.
    d.admin
        .call(&TokenRevoke {
            id: token.id().to_owned(),
        })
        .await?;
    d.stop_server("s1").await;
    config.apps = vec![declared("billing", "another-secret")?];
    d.start_server_with(config).await?;
    let refused = d
        .client_with(&token)
        .await?
        .call(&AppList {})
        .await
        .expect_err("a revoked declared token must stay revoked");
    assert_eq!(refused.code(), Some(ErrorCode::Unauthorized), "{refused}");
    // A worker with the app's first secret still joins: the app kept its key.
    let mut stays = d.worker_config("billing", "w2");
    stays.secret = SECRET.to_owned();
    d.start_worker(stays, ProcessorRegistry::new()).await?;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_token_whose_id_exists_with_another_secret_stops_the_server()
-> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    // The same id as the deployment's own admin token, another secret.
    let forged = AdminToken::parse(&format!("rt1.{}.{}", d.token.id(), "x".repeat(43)))?;
    let mut config = d.server_config("s1");
    config.admin_token = Some(forged);
    let started =
        tokio::time::timeout(Duration::from_secs(30), rota_server::Server::start(config)).await?;
    let Err(e) = started else {
        anyhow::bail!("a server started with a token that collides with an existing one");
    };
    assert!(e.to_string().contains("exists with another secret"), "{e}");
    // The real token still works: nothing was overwritten.
    d.start_server("s1").await?;
    d.admin.call(&AppList {}).await?;
    d.shutdown().await;
    Ok(())
}
