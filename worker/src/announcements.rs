//! What the owner of the app tells all of its workers at once (`rota.app.{app}.owner`): that a
//! server took the app over. A worker that hears it from a server other than the one it follows
//! asks discovery now instead of at its next re-acquire. The message is only a hint: it must be
//! sealed with the app key and new to the replay guard, and even then the worker believes
//! discovery, not the message.

use std::sync::Arc;

use async_nats::Subscriber;
use futures::StreamExt;
use rota_shared::message::OwnerChanged;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::now_ms;

pub(crate) async fn run(agent: Arc<Agent>, mut messages: Subscriber) {
    while let Some(msg) = messages.next().await {
        let seal = match agent.link.verify_app_message(&msg) {
            Ok(seal) => seal,
            Err(e) => {
                agent.metrics.refused("unauthenticated");
                warn!(subject = %msg.subject, "refused an announcement: {e}");
                continue;
            }
        };
        if let Err(e) = agent.replay.check(&seal.sender, seal.stamp, now_ms()) {
            agent.metrics.refused("replay");
            warn!(subject = %msg.subject, "refused an announcement: {e}");
            continue;
        }
        let news = match rota_transport::decode_message::<OwnerChanged>(&msg) {
            Ok(news) => news,
            Err(e) => {
                debug!("ignoring an announcement that does not decode: {e}");
                continue;
            }
        };
        if news.server_id != agent.link.owner().server_id {
            info!(server = %news.server_id, epoch = news.epoch, "a server took the app over; asking discovery");
            agent.link.trigger_reacquire();
        }
    }
}
