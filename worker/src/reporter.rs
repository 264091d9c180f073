//! Terminal reports travel in batches. A tracker hands its report to the reporter, which sends
//! every report waiting at that moment in one request (`StatusReportBatch`) and gives each
//! tracker its own answer. A report that is alone goes at once; when many short jobs end
//! together, hundreds of reports cost one message each way instead of one each.

use std::sync::Arc;

use rota_shared::message::{
    MAX_REPORTS_PER_BATCH, ReportAck, StatusBatchAck, StatusReport, StatusReportBatch,
};
use rota_shared::{ErrorBody, ErrorCode};
use tokio::sync::{Semaphore, mpsc, oneshot};

use rota_shared::subject::ServerEndpoint as Endpoint;

use crate::link::{CallError, Link, REQUEST_TIMEOUT};

/// Batches in flight at once: while they are, new reports gather into the next ones.
const IN_FLIGHT: usize = 4;
/// Reports in one batch at most (well below the server's limit).
const BATCH: usize = 256;
const _: () = assert!(BATCH <= MAX_REPORTS_PER_BATCH);

type Answer = oneshot::Sender<Result<ReportAck, CallError>>;

#[derive(Clone)]
pub(crate) struct Reporter {
    tx: mpsc::Sender<(StatusReport, Answer)>,
}

impl Reporter {
    /// Starts the reporter's task; it ends when every `Reporter` is dropped.
    pub(crate) fn start(link: Arc<Link>) -> Self {
        let (tx, rx) = mpsc::channel(4 * BATCH);
        tokio::spawn(run(link, rx));
        Self { tx }
    }

    /// Sends one report, with whatever others are waiting, and returns the owner's answer to it.
    pub(crate) async fn send(&self, report: StatusReport) -> Result<ReportAck, CallError> {
        let (answer, wait) = oneshot::channel();
        let stopped = || CallError::Transport("the reporter has stopped".to_owned());
        self.tx
            .send((report, answer))
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

async fn run(link: Arc<Link>, mut rx: mpsc::Receiver<(StatusReport, Answer)>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot first: reports arriving meanwhile join the next batch.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let link = Arc::clone(&link);
        tokio::spawn(async move {
            let (reports, answers): (Vec<StatusReport>, Vec<Answer>) = batch.into_iter().unzip();
            let sent = reports.len();
            let batch = StatusReportBatch { reports };
            let result = link
                .call::<_, StatusBatchAck>(Endpoint::Reports, &batch, REQUEST_TIMEOUT)
                .await;
            let reports_again = batch.reports;
            match result {
                Ok(ack) if ack.results.len() == sent => {
                    for (answer, reply) in answers.into_iter().zip(ack.results) {
                        let _ = answer.send(reply.into_result().map_err(CallError::Remote));
                    }
                }
                Ok(ack) => {
                    let e = CallError::Remote(ErrorBody::internal(format!(
                        "{} answers to a batch of {sent} reports",
                        ack.results.len()
                    )));
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
                Err(CallError::Remote(body)) if body.code == ErrorCode::NotFound => {
                    // A server older than report batches: each report goes on its own.
                    for (answer, report) in answers.into_iter().zip(reports_again) {
                        let one = link
                            .call::<_, ReportAck>(Endpoint::Status, &report, REQUEST_TIMEOUT)
                            .await;
                        let _ = answer.send(one);
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
