//! Answers to progress reports.
//!
//! Progress reports are published, so that a slow server never holds a task tracker up, but
//! each carries a reply subject `{inbox}.{instance_id}.{attempt}` under this worker's inbox. A
//! server that answers (with `Reply<ReportAck>`) can thereby tell the worker to stop an attempt
//! it no longer wants; NATS' "no responders" status on that subject tells the worker that its
//! server is gone.

use std::sync::Arc;

use async_nats::{Message, StatusCode, Subscriber};
use futures::StreamExt;
use rota_shared::ErrorCode;
use rota_shared::message::{ReportAck, ReportAction};
use tracing::{debug, info};

use crate::agent::Agent;
use crate::instances::StopCause;

/// The `(instance_id, attempt)` an ack subject is about.
pub(crate) fn parse_ack_subject(inbox: &str, subject: &str) -> Option<(i64, i32)> {
    let rest = subject.strip_prefix(inbox)?.strip_prefix('.')?;
    let (instance, attempt) = rest.split_once('.')?;
    Some((instance.parse().ok()?, attempt.parse().ok()?))
}

pub(crate) async fn run(agent: Arc<Agent>, mut acks: Subscriber) {
    while let Some(msg) = acks.next().await {
        handle(&agent, &msg);
    }
}

fn handle(agent: &Agent, msg: &Message) {
    if msg.status == Some(StatusCode::NO_RESPONDERS) {
        debug!("no server listens for status reports; re-acquiring");
        agent.link.trigger_reacquire();
        return;
    }
    let Some((instance_id, attempt)) = parse_ack_subject(&agent.ack_inbox, &msg.subject) else {
        debug!(subject = %msg.subject, "ignoring a message on the ack inbox");
        return;
    };
    match rota_shared::envelope::decode_reply::<ReportAck>(&msg.payload) {
        Ok(ReportAck {
            action: ReportAction::Stop,
        }) => {
            if let Some(state) = agent.instances.get(instance_id, attempt)
                && state.stop(StopCause::ServerStop)
            {
                info!(
                    instance = instance_id,
                    attempt, "the server no longer wants this attempt; stopping it"
                );
            }
        }
        Ok(_) => {}
        Err(body) if body.code == ErrorCode::NotOwner => agent.link.trigger_reacquire(),
        Err(body) => debug!(instance = instance_id, "progress report refused: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_are_parsed() {
        let inbox = "_INBOX.abc";
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.42.3"), Some((42, 3)));
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.42"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abcd.42.3"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.x.3"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.1.2.3"), None);
    }
}
