//! The heartbeat: how the owning server learns that this worker lives and what it can take.

use std::sync::Arc;

use rota_shared::message::WorkerHeartbeat;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::agent::Agent;
use crate::metrics;
use rota_shared::subject::ServerEndpoint as Endpoint;

/// Publishes one heartbeat to the current owner.
pub(crate) async fn send(agent: &Agent) {
    let heartbeat = WorkerHeartbeat {
        worker_id: agent.worker_id.clone(),
        tags: agent.config.tags.clone(),
        processors: agent.registry.names(),
        capacity: agent.config.capacity,
        running: agent.instances.running_ids(),
        held: agent.instances.held_ids(),
        attempts: agent.instances.attempts(),
        incarnation: agent.incarnation.clone(),
        metrics: metrics::collect().await,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        dropped_log_lines: agent.logs.dropped(),
        containers: agent
            .containers
            .as_ref()
            .map(|c| c.deployed())
            .unwrap_or_default(),
    };
    if let Err(e) = agent
        .link
        // A reply subject, though the server does not answer: NATS says "no responders" on it
        // when the owner has gone, and the worker asks discovery at once.
        .publish(
            Endpoint::Heartbeat,
            &heartbeat,
            Some(format!("{}.hb", agent.ack_inbox)),
        )
        .await
    {
        debug!("heartbeat not sent: {e}");
    }
}

/// Sends a heartbeat every interval, and at once when the owner changes, so that a new owner
/// knows the worker before its first dispatch.
pub(crate) async fn run(agent: Arc<Agent>) {
    let every = agent.config.heartbeat_interval;
    let mut owner = agent.link.watch_owner();
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = owner.changed() => {
                if changed.is_err() {
                    // The link is gone, so the worker is going down.
                    return;
                }
                ticker.reset();
            }
        }
        send(&agent).await;
    }
}
