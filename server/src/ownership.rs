//! Which apps this server owns (DESIGN §3), and taking an app over.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use rota_shared::message::{Ping, Pong};
use rota_shared::{ErrorBody, ErrorCode};

use crate::core::Core;
use crate::store::StoreError;

/// The apps this server owns, with the epoch at which it took each and since when it knows.
#[derive(Default)]
pub struct Ownership {
    apps: RwLock<HashMap<i64, (i64, Instant)>>,
    /// Apps taken (at a new epoch) and given up since start, for `/metrics`.
    acquired: AtomicU64,
    released: AtomicU64,
}

impl Ownership {
    pub fn owns(&self, app_id: i64) -> bool {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&app_id)
    }

    pub fn app_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// How long this server has owned the app (at its current epoch).
    pub fn owned_for(&self, app_id: i64) -> Option<Duration> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&app_id)
            .map(|(_, since)| since.elapsed())
    }

    pub(crate) fn insert(&self, app_id: i64, epoch: i64) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        match apps.get(&app_id) {
            Some((known, _)) if *known == epoch => {}
            _ => {
                apps.insert(app_id, (epoch, Instant::now()));
                self.acquired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Apps taken and apps given up since start.
    pub fn changes(&self) -> (u64, u64) {
        (
            self.acquired.load(Ordering::Relaxed),
            self.released.load(Ordering::Relaxed),
        )
    }

    /// Replaces the set with what the database says; an app another server took is dropped here.
    pub fn replace(&self, owned: HashMap<i64, i64>) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let taken = owned
            .iter()
            .filter(|(app, epoch)| apps.get(app).is_none_or(|(known, _)| known != *epoch))
            .count();
        let given_up = apps.keys().filter(|app| !owned.contains_key(app)).count();
        self.acquired.fetch_add(taken as u64, Ordering::Relaxed);
        self.released.fetch_add(given_up as u64, Ordering::Relaxed);
        *apps = owned
            .into_iter()
            .map(|(app, epoch)| match apps.get(&app) {
                Some((known, since)) if *known == epoch => (app, (epoch, *since)),
                _ => (app, (epoch, now)),
            })
            .collect();
    }
}

/// Who owns an app after [`ensure_owner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub server_id: String,
    pub epoch: i64,
}

/// How many compare-and-set rounds an ownership decision may take.
const CLAIM_ROUNDS: usize = 5;
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Returns the app's live owner, taking the app over when it has none or its owner does not
/// answer a ping (DESIGN §3).
pub async fn ensure_owner(core: &Core, app_id: i64) -> Result<Owner, ErrorBody> {
    for _ in 0..CLAIM_ROUNDS {
        let app = core
            .store
            .app_by_id(app_id)
            .await
            .map_err(ErrorBody::from)?;
        match app.current_server.as_deref() {
            Some(owner) if owner == core.id => {
                core.ownership.insert(app.id, app.epoch);
                return Ok(Owner {
                    server_id: core.id.clone(),
                    epoch: app.epoch,
                });
            }
            Some(owner) if ping(core, owner).await => {
                return Ok(Owner {
                    server_id: owner.to_owned(),
                    epoch: app.epoch,
                });
            }
            _ => {}
        }
        if core
            .store
            .claim_app(app.id, app.epoch, &core.id)
            .await
            .map_err(ErrorBody::from)?
        {
            let epoch = app.epoch + 1;
            tracing::info!(app = %app.name, epoch, "took ownership of the app");
            core.ownership.insert(app.id, epoch);
            announce(core, app.id, epoch).await;
            return Ok(Owner {
                server_id: core.id.clone(),
                epoch,
            });
        }
    }
    Err(ErrorBody::new(
        ErrorCode::Unavailable,
        format!("no server could take ownership of app {app_id}: too much contention, try again"),
    ))
}

/// Tells all workers of an app that this server owns it now, so that they move at once rather
/// than at their next re-acquire (each asks discovery, which has the last word).
async fn announce(core: &Core, app_id: i64, epoch: i64) {
    let Some((app, credential)) = core.gate.app_credential(app_id) else {
        return;
    };
    let message = rota_shared::message::OwnerChanged {
        server_id: core.id.clone(),
        epoch,
    };
    if let Err(e) = core
        .transport
        .publish(
            &core.subjects.app_owner(&app),
            &message,
            Some(&credential),
            None,
        )
        .await
    {
        tracing::warn!(app = %app, "could not tell the app's workers of the new owner: {e}");
    }
}

/// Whether `server_id` answers a ping in time, with a reply sealed with the cluster key (a
/// process answering in a dead server's place cannot keep its apps from being taken over).
pub async fn ping(core: &Core, server_id: &str) -> bool {
    let subject = core.subjects.server_ping(server_id);
    let credential = core.gate.cluster_credential();
    match core
        .transport
        .request::<_, Pong>(&subject, &Ping::default(), PING_TIMEOUT, Some(credential))
        .await
    {
        Ok(pong) => pong.server_id == server_id,
        Err(e) => {
            tracing::debug!(server = server_id, "ping failed: {e}");
            false
        }
    }
}

/// Re-reads this server's ownerships from the database.
pub async fn refresh(core: &Core) -> Result<(), StoreError> {
    let owned = core.store.owned_apps(&core.id).await?;
    core.ownership
        .replace(owned.into_iter().map(|a| (a.id, a.epoch)).collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_and_giving_up_apps_is_counted_once_per_epoch() {
        let o = Ownership::default();
        o.insert(1, 1);
        o.insert(1, 1);
        assert_eq!(o.changes(), (1, 0), "the same epoch again is no change");
        o.replace(HashMap::from([(1, 1), (2, 4)]));
        assert_eq!(o.changes(), (2, 0), "app 2 taken by the re-read");
        o.replace(HashMap::from([(2, 5)]));
        assert_eq!(
            o.changes(),
            (3, 1),
            "app 1 given up, app 2 taken again at a new epoch"
        );
        assert_eq!(o.app_ids(), vec![2]);
    }
}
