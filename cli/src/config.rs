//! Settings from flags, the environment (`ROTA_*`) and a TOML file, in that order of precedence.
//! Clap already merges flags and environment; the file fills what both left unset.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::args::Global;

/// The TOML file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub nats_url: Option<String>,
    pub prefix: Option<String>,
    pub database_url: Option<String>,
    pub server_id: Option<String>,
    #[serde(default)]
    pub worker: FileWorker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWorker {
    pub app: Option<String>,
    pub secret: Option<String>,
    pub worker_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub capacity: Option<u32>,
    pub allow_shell: Option<bool>,
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
#[derive(Debug, Clone)]
pub struct Settings {
    pub nats_url: String,
    pub prefix: String,
    pub database_url: String,
    pub json: bool,
    /// Admin requests go to this server when set.
    pub server: Option<String>,
}

impl Settings {
    pub fn resolve(global: &Global, file: &FileConfig) -> Self {
        Self {
            nats_url: global
                .nats_url
                .clone()
                .or_else(|| file.nats_url.clone())
                .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
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
        assert_eq!(s.nats_url, "nats://flag:4222");
        assert_eq!(s.prefix, "filep");
        assert_eq!(s.database_url, "sqlite://rota.db");
        assert_eq!(file.worker.app.as_deref(), Some("a"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("natsurl = \"x\"").is_err());
    }
}
