//! Every way to log in to NATS, against a real nats-server configured for it: user and password
//! (as options and in the URL), token (as an option and in the URL), NKey seed file, credentials
//! file (an operator, an account and a user JWT made here), and TLS with a CA and a client
//! certificate (made here). In each, a server, a worker and an admin client connect and a job
//! runs end to end; a wrong login is refused with a clear error kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rota_client::AdminClient;
use rota_shared::InstanceStatus;
use rota_shared::admin::ServerList;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::nats::NatsServer;
use rota_transport::{ConnectErrorKind, NatsOptions};
use rota_worker::ProcessorRegistry;

/// A server, a worker and an admin client on `nats` with `options`; a job runs through them.
async fn a_job_runs(nats: NatsServer, options: NatsOptions) -> anyhow::Result<()> {
    let mut d = Deployment::start_with(nats, options).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d
        .create_job(shell_job("app", "hello", "echo logged-in"))
        .await?;
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(20)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("logged-in"));
    d.shutdown().await;
    Ok(())
}

/// What a connection with `options` fails with.
async fn refused(options: &NatsOptions) -> ConnectErrorKind {
    match AdminClient::connect(options, "rota", None).await {
        Ok(_) => panic!("{options:?} connected"),
        Err(rota_client::ClientError::Connect(e)) => e.kind(),
        Err(e) => panic!("{options:?} failed otherwise: {e}"),
    }
}

/// Whether a client logs in with `options`: NATS answers a request (here "no responders", as
/// no Rota server runs yet) only on a connection it accepted.
async fn connects(options: &NatsOptions) -> anyhow::Result<()> {
    let client = AdminClient::connect(options, "rota", None).await?;
    match client.call(&ServerList {}).await {
        Ok(list) => panic!("a server answered without a token: {list:?}"),
        Err(rota_client::ClientError::Request(e)) => {
            assert_eq!(
                e.kind(),
                rota_transport::RequestErrorKind::NoResponders,
                "{e}"
            )
        }
        Err(other) => panic!("{other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_as_options_and_in_the_url() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_config(
        r#"authorization { user: "rota", password: "pass word/1" }"#,
        true,
    )?;
    let mut wrong = NatsOptions::new(nats.url());
    wrong.user = Some("rota".into());
    wrong.password = Some("nope".into());
    assert_eq!(refused(&wrong).await, ConnectErrorKind::Authorization);
    assert_eq!(
        refused(&NatsOptions::new(nats.url())).await,
        ConnectErrorKind::Authorization
    );
    // In the URL, percent-encoded as URLs want it.
    connects(&NatsOptions::new(format!(
        "nats://rota:pass%20word%2F1@127.0.0.1:{}",
        nats.port()
    )))
    .await?;
    let mut options = NatsOptions::new(nats.url());
    options.user = Some("rota".into());
    options.password = Some("pass word/1".into());
    a_job_runs(nats, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_as_an_option_and_in_the_url() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_config(r#"authorization { token: "s3cret-token" }"#, true)?;
    let mut wrong = NatsOptions::new(nats.url());
    wrong.token = Some("other".into());
    assert_eq!(refused(&wrong).await, ConnectErrorKind::Authorization);
    connects(&NatsOptions::new(format!(
        "nats://s3cret-token@127.0.0.1:{}",
        nats.port()
    )))
    .await?;
    let mut options = NatsOptions::new(nats.url());
    options.token = Some("s3cret-token".into());
    a_job_runs(nats, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file() -> anyhow::Result<()> {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(
        &format!(
            r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
            user.public_key()
        ),
        true,
    )?;
    let dir = tempfile::tempdir()?;
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, user.seed()?)?;
    let stranger = dir.path().join("other.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed()?)?;
    let mut wrong = NatsOptions::new(nats.url());
    wrong.nkey = Some(stranger);
    assert_eq!(refused(&wrong).await, ConnectErrorKind::Authorization);
    let mut missing = NatsOptions::new(nats.url());
    missing.nkey = Some(dir.path().join("absent.nk"));
    assert_eq!(refused(&missing).await, ConnectErrorKind::Credentials);
    let mut options = NatsOptions::new(nats.url());
    options.nkey = Some(seed);
    a_job_runs(nats, options).await
}

/// A NATS JWT: header, claims and an Ed25519 signature by `issuer`, as nsc makes them.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:X}", uuid::Uuid::new_v4().as_u128()),
        "iat": rota_transport::wall_ms() / 1000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(body.as_bytes()).expect("an nkey signs");
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A NATS server in operator mode trusting one account, and a credentials file for a user of
/// it. Returns the server's configuration and the creds file's text.
fn operator_mode() -> (String, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "rota",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "rota-user",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    let config = format!(
        "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
        account.public_key()
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("a user seed")
    );
    (config, creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file() -> anyhow::Result<()> {
    let (config, creds) = operator_mode();
    let nats = NatsServer::start_with_config(&config, false)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rota.creds");
    std::fs::write(&path, creds)?;
    assert_eq!(
        refused(&NatsOptions::new(nats.url())).await,
        ConnectErrorKind::Authorization
    );
    let mut options = NatsOptions::new(nats.url());
    options.creds = Some(path);
    a_job_runs(nats, options).await
}

/// A CA, and a server and a client certificate it signed, as PEM files in `dir`.
fn certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let client =
        CertificateParams::new(vec!["rota-client".to_owned()])?.signed_by(&client_key, &issuer)?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    Ok((
        write("ca.pem", ca.pem())?,
        write("server.pem", server.pem())?,
        write("server-key.pem", server_key.serialize_pem())?,
        write("client.pem", client.pem())?,
        write("client-key.pem", client_key.serialize_pem())?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_a_client_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, server_cert, server_key, client_cert, client_key) = certificates(dir.path())?;
    let nats = NatsServer::start_with_config(
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
            server_cert, server_key, ca
        ),
        true,
    )?;
    let url = format!("tls://127.0.0.1:{}", nats.port());
    // Without the CA the server's certificate is not trusted; without a client certificate the
    // server refuses the client.
    assert_eq!(
        refused(&NatsOptions::new(url.clone())).await,
        ConnectErrorKind::Tls
    );
    let mut no_client_cert = NatsOptions::new(url.clone());
    no_client_cert.tls_ca = Some(ca.clone());
    // The server ends the handshake of a client without a certificate: the client sees the
    // connection close.
    let kind = refused(&no_client_cert).await;
    assert!(
        matches!(kind, ConnectErrorKind::Tls | ConnectErrorKind::Unreachable),
        "{kind:?}"
    );
    let mut options = NatsOptions::new(url);
    options.tls_ca = Some(ca);
    options.tls_cert = Some(client_cert);
    options.tls_key = Some(client_key);
    a_job_runs(nats, options).await
}
