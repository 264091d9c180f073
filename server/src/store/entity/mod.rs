//! sea-orm entities, one per table. They mirror `rota-migrations` exactly.

pub mod app;
pub mod instance;
pub mod instance_log;
pub mod job;
pub mod server;
