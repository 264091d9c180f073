//! A process's metric registry behind a lock: families are registered once at start,
//! collectors once the parts they read exist, and each scrape encodes everything.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    /// A registry whose every name starts with `prefix_`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            registry: Mutex::new(Registry::with_prefix(prefix)),
        }
    }

    /// Registers families: `register(|r| r.register("name", "help", family.clone()))`.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Adds a collector read at each scrape.
    pub fn add_collector(&self, collector: Box<dyn Collector>) {
        self.register(|r| r.register_collector(collector));
    }

    /// Everything, in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}
