//! API runs arrive one request at a time, often many at once; their instances are created by one
//! task that gathers whatever is waiting into one multi-row insert, instead of a transaction each.

use rota_shared::ErrorBody;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{NewInstance, Store};
use rota_shared::Instance;

/// Instances created in one statement at most.
const BATCH: usize = 256;

type Waiter = oneshot::Sender<Result<Instance, ErrorBody>>;

pub struct InsertQueue {
    tx: mpsc::Sender<(NewInstance, Waiter)>,
}

impl InsertQueue {
    pub fn start(store: Store, clock: Clock, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<(NewInstance, Waiter)>(4 * BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                batch.clear();
                let got = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    n = rx.recv_many(&mut batch, BATCH) => n,
                };
                if got == 0 {
                    break;
                }
                let (news, waiters): (Vec<NewInstance>, Vec<Waiter>) = batch.drain(..).unzip();
                match store.insert_instances(news, clock.now_ms()).await {
                    Ok(models) => {
                        for (waiter, model) in waiters.into_iter().zip(models) {
                            let _ = waiter.send(Ok(model));
                        }
                    }
                    Err(e) => {
                        let e = ErrorBody::from(e);
                        for waiter in waiters {
                            let _ = waiter.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Creates one instance, together with whatever else is waiting.
    pub async fn insert(&self, new: NewInstance) -> Result<Instance, ErrorBody> {
        let (done, wait) = oneshot::channel();
        self.tx.send((new, done)).await.map_err(|_| {
            ErrorBody::new(rota_shared::ErrorCode::Unavailable, "server is stopping")
        })?;
        wait.await.map_err(|_| {
            ErrorBody::new(rota_shared::ErrorCode::Unavailable, "server is stopping")
        })?
    }
}
