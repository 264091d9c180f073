//! Answers to progress reports.
//!
//! Progress reports are published, so that a slow server never holds a task tracker up, but
//! each carries a reply subject `{inbox}.{instance_id}.{attempt}.{seq}` under this worker's
//! inbox. A server that answers (with `Reply<ReportAck>`) can thereby tell the worker to stop an
//! attempt it no longer wants, and its answer tells the tracker which report it took (a frequent
//! tracker repeats an alert until a report carrying it is answered); NATS' "no responders" status
//! on that subject tells the worker that its server is gone. An answer is acted on only when it
//! is sealed with the worker's key.

use std::sync::Arc;

use async_nats::{Message, StatusCode, Subscriber};
use futures::StreamExt;
use rota_shared::ErrorCode;
use rota_shared::message::{ReportAck, ReportAction};
use tracing::{debug, info};

use crate::agent::Agent;
use crate::instances::StopCause;

/// The report an ack subject is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckSubject {
    pub instance_id: i64,
    pub attempt: i32,
    pub seq: i64,
}

/// The reply subject of one progress report.
pub(crate) fn ack_subject(inbox: &str, instance_id: i64, attempt: i32, seq: i64) -> String {
    format!("{inbox}.{instance_id}.{attempt}.{seq}")
}

/// Reads an ack subject back. Anything else on the inbox (it is the worker's own, but a
/// misbehaving peer may still publish there) yields `None`.
pub(crate) fn parse_ack_subject(inbox: &str, subject: &str) -> Option<AckSubject> {
    let rest = subject.strip_prefix(inbox)?.strip_prefix('.')?;
    let mut parts = rest.split('.');
    let parsed = AckSubject {
        instance_id: parts.next()?.parse().ok()?,
        attempt: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(parsed)
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
    let Some(AckSubject {
        instance_id,
        attempt,
        seq,
    }) = parse_ack_subject(&agent.ack_inbox, &msg.subject)
    else {
        debug!(subject = %msg.subject, "ignoring a message on the ack inbox");
        return;
    };
    if !agent.link.verify_reply(msg) {
        // Not from a server of the deployment: a forged "stop" must not stop anything.
        debug!(subject = %msg.subject, "ignoring an unauthenticated answer on the ack inbox");
        return;
    }
    let state = agent.instances.get(instance_id, attempt);
    match rota_shared::envelope::decode_reply::<ReportAck>(&msg.payload) {
        Ok(ReportAck { action }) => {
            let Some(state) = state else { return };
            state.note_answered(seq);
            if action == ReportAction::Stop && state.stop(StopCause::ServerStop) {
                info!(
                    instance = instance_id,
                    attempt, "the server no longer wants this attempt; stopping it"
                );
            }
        }
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
        let subject = ack_subject(inbox, 42, 3, 7);
        assert_eq!(subject, "_INBOX.abc.42.3.7");
        assert_eq!(
            parse_ack_subject(inbox, &subject),
            Some(AckSubject {
                instance_id: 42,
                attempt: 3,
                seq: 7
            })
        );
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.42.3"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abcd.42.3.7"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.x.3.7"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.1.2.x"), None);
        assert_eq!(parse_ack_subject(inbox, "_INBOX.abc.1.2.3.4"), None);
    }
}
