//! Settings from flags, the environment (`ROTA_*`) and a TOML file, in that order of precedence.
//! Clap already merges flags and environment; the file fills what both left unset.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use rota_transport::NatsOptions;

use crate::args::Global;

/// The TOML file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub nats_url: Option<String>,
    /// The admin token of admin commands.
    pub token: Option<String>,
    pub prefix: Option<String>,
    pub database_url: Option<String>,
    pub server_id: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<crate::args::LogFormat>,
    /// Where `rota server` and `rota worker` serve /metrics, /healthz and /readyz.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `[nats]`: where NATS is and how to log in (the same as the `--nats-*` flags).
    #[serde(default)]
    pub nats: NatsOptions,
    #[serde(default)]
    pub worker: FileWorker,
    #[serde(default)]
    pub server: FileServer,
}

/// Server timings, as durations such as `10s` or `500ms`. Unset ones keep their defaults
/// (see `rota_server::ServerConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub worker_timeout: Option<String>,
    pub schedule_interval: Option<String>,
    pub schedule_lookahead: Option<String>,
    pub misfire_threshold: Option<String>,
    pub dispatch_timeout: Option<String>,
    pub dispatch_ahead: Option<String>,
    pub no_worker_timeout: Option<String>,
    pub ownership_refresh: Option<String>,
    pub presence_interval: Option<String>,
    pub rpc_timeout: Option<String>,
    pub health_interval: Option<String>,
    pub reconcile_interval: Option<String>,
    pub waiting_overdue: Option<String>,
    pub unacknowledged_timeout: Option<String>,
    pub report_timeout: Option<String>,
    pub clean_up_interval: Option<String>,
    pub retention: Option<String>,
    /// A file holding an admin token the server creates at start if it does not exist.
    pub admin_token_file: Option<PathBuf>,
    /// `[[server.apps]]`: apps the server creates at start if they do not exist.
    #[serde(default)]
    pub apps: Vec<FileApp>,
}

/// An app a deployment declares, with the file holding its secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApp {
    pub name: String,
    pub secret_file: PathBuf,
}

/// The first line of a secret file, trimmed; an empty one is an error.
pub fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        anyhow::bail!("{} holds no {what}", path.display());
    }
    Ok(line.to_owned())
}

impl FileServer {
    /// Applies the timings that are set to `config`.
    pub fn apply(&self, config: &mut rota_server::ServerConfig) -> anyhow::Result<()> {
        let set = |name: &str, value: &Option<String>, field: &mut std::time::Duration| {
            if let Some(v) = value {
                let ms = crate::duration::parse_ms(v)
                    .map_err(|e| anyhow::anyhow!("[server] {name}: {e}"))?;
                *field = std::time::Duration::from_millis(ms);
            }
            anyhow::Ok(())
        };
        set(
            "worker_timeout",
            &self.worker_timeout,
            &mut config.worker_timeout,
        )?;
        set(
            "schedule_interval",
            &self.schedule_interval,
            &mut config.schedule_interval,
        )?;
        set(
            "schedule_lookahead",
            &self.schedule_lookahead,
            &mut config.schedule_lookahead,
        )?;
        set(
            "misfire_threshold",
            &self.misfire_threshold,
            &mut config.misfire_threshold,
        )?;
        set(
            "dispatch_timeout",
            &self.dispatch_timeout,
            &mut config.dispatch_timeout,
        )?;
        set(
            "dispatch_ahead",
            &self.dispatch_ahead,
            &mut config.dispatch_ahead,
        )?;
        set(
            "no_worker_timeout",
            &self.no_worker_timeout,
            &mut config.no_worker_timeout,
        )?;
        set(
            "ownership_refresh",
            &self.ownership_refresh,
            &mut config.ownership_refresh,
        )?;
        set(
            "presence_interval",
            &self.presence_interval,
            &mut config.presence_interval,
        )?;
        set("rpc_timeout", &self.rpc_timeout, &mut config.rpc_timeout)?;
        set(
            "health_interval",
            &self.health_interval,
            &mut config.health_interval,
        )?;
        set(
            "reconcile_interval",
            &self.reconcile_interval,
            &mut config.reconcile_interval,
        )?;
        set(
            "waiting_overdue",
            &self.waiting_overdue,
            &mut config.waiting_overdue,
        )?;
        set(
            "unacknowledged_timeout",
            &self.unacknowledged_timeout,
            &mut config.unacknowledged_timeout,
        )?;
        set(
            "report_timeout",
            &self.report_timeout,
            &mut config.report_timeout,
        )?;
        set(
            "clean_up_interval",
            &self.clean_up_interval,
            &mut config.clean_up_interval,
        )?;
        set("retention", &self.retention, &mut config.retention)?;
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWorker {
    pub app: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub worker_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub capacity: Option<u32>,
    pub allow_shell: Option<bool>,
    /// Offer the `container` processor (off by default).
    pub allow_containers: Option<bool>,
    pub state_dir: Option<PathBuf>,
}

pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans lines; keep the error to one.
        let msg = e.message().to_owned();
        anyhow::anyhow!("invalid config file {}: {msg}", path.display())
    })
}

/// The settings every command resolves.
#[derive(Clone)]
pub struct Settings {
    pub nats: NatsOptions,
    /// Whether the NATS URL was given at all (`rota dev` starts its own NATS otherwise).
    pub explicit_nats: bool,
    /// The admin token, as given.
    pub token: Option<String>,
    pub prefix: String,
    pub database_url: String,
    pub json: bool,
    /// Admin requests go to this server when set.
    pub server: Option<String>,
    /// How long an admin request waits for its answer.
    pub request_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log.
        f.debug_struct("Settings")
            .field("nats", &self.nats)
            .field("prefix", &self.prefix)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn resolve(global: &Global, file: &FileConfig) -> Self {
        let n = &global.nats;
        let url = global
            .nats_url
            .clone()
            .or_else(|| Some(file.nats.url.clone()).filter(|u| !u.is_empty()))
            .or_else(|| file.nats_url.clone());
        let flags = NatsOptions {
            url: String::new(),
            user: n.nats_user.clone(),
            password: n.nats_password.clone(),
            token: n.nats_token.clone(),
            nkey: n.nats_nkey.clone(),
            creds: n.nats_creds.clone(),
            tls_ca: n.nats_tls_ca.clone(),
            tls_cert: n.nats_tls_cert.clone(),
            tls_key: n.nats_tls_key.clone(),
        };
        let mut nats = file.nats.clone().overridden_by(flags);
        nats.url = url
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        Self {
            nats,
            explicit_nats: url.is_some(),
            token: global.token.clone().or_else(|| file.token.clone()),
            prefix: global
                .prefix
                .clone()
                .or_else(|| file.prefix.clone())
                .unwrap_or_else(|| rota_shared::subject::DEFAULT_PREFIX.to_owned()),
            database_url: global
                .database_url
                .clone()
                .or_else(|| file.database_url.clone())
                .unwrap_or_else(|| "sqlite://rota.db".to_owned()),
            json: global.json,
            server: global.server.clone(),
            request_timeout: global.request_timeout.map(std::time::Duration::from_millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            "nats_url = \"nats://file:4222\"\nprefix = \"filep\"\n[worker]\napp = \"a\"\n",
        )
        .unwrap();
        let global = Global {
            nats_url: Some("nats://flag:4222".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&global, &file);
        assert_eq!(s.nats.url, "nats://flag:4222");
        assert_eq!(s.prefix, "filep");
        assert_eq!(s.database_url, "sqlite://rota.db");
        assert_eq!(file.worker.app.as_deref(), Some("a"));
    }

    #[test]
    fn server_timings_come_from_the_file() {
        let file: FileConfig =
            toml::from_str("[server]\nreconcile_interval = \"2s\"\nretention = \"1h\"\n").unwrap();
        let mut config = rota_server::ServerConfig::default();
        file.server.apply(&mut config).unwrap();
        assert_eq!(config.reconcile_interval, std::time::Duration::from_secs(2));
        assert_eq!(config.retention, std::time::Duration::from_secs(3600));
        let spelt: FileConfig = toml::from_str("[server]\nretention = \"1 week\"\n").unwrap();
        spelt.server.apply(&mut config).unwrap();
        assert_eq!(config.retention, std::time::Duration::from_secs(7 * 86_400));
        let bad: FileConfig = toml::from_str("[server]\nretention = \"a week\"\n").unwrap();
        assert!(bad.server.apply(&mut config).is_err());
    }

    #[test]
    fn nats_logins_come_from_flags_then_the_file() {
        let file: FileConfig = toml::from_str(
            "[nats]\nurl = \"tls://n:4222\"\nuser = \"u\"\npassword = \"p\"\ntls_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let s = Settings::resolve(&Global::default(), &file);
        assert_eq!(s.nats.url, "tls://n:4222");
        assert_eq!(s.nats.user.as_deref(), Some("u"));
        assert_eq!(s.nats.tls_ca, Some(PathBuf::from("ca.pem")));
        let mut global = Global::default();
        global.nats.nats_user = Some("flag-user".into());
        let s = Settings::resolve(&global, &file);
        assert_eq!(s.nats.user.as_deref(), Some("flag-user"));
        assert_eq!(s.nats.password.as_deref(), Some("p"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("natsurl = \"x\"").is_err());
    }
}
