//! sea-orm entities, one per table. They mirror `rota-migrations` exactly.

pub mod admin_token;
pub mod app;
pub mod app_key;
pub mod container;
pub mod deployment_secret;
pub mod instance;
pub mod instance_log;
pub mod job;
pub mod server;
