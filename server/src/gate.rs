//! Who may send what: the server's side of message authentication (`rota_transport::seal`).
//!
//! The gate holds every key the server checks messages with: the app keys (all apps, in memory,
//! re-read with the ownerships, so that the hot path never waits on the database), the cluster
//! key, and admin tokens (read on demand and cached for a second, so a revocation takes effect
//! within a second on every server). It keeps the replay state, and counts what it refused by
//! reason for `rota server stats`.
//!
//! **Architecture Invariant:** a handler acts on a message only after the gate verified it, and
//! then only as the sender the gate names: a worker's payload must name the worker its key
//! belongs to, and an admin request is decided with its token's role and app scope.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::Message;
use rota_shared::ErrorBody;
use rota_shared::admin::Role;
use rota_transport::keys::worker_key;
use rota_transport::{Credential, Key, ReplayGuard, Scope, Seal, Stamper};
use tokio::time::Instant;

use crate::store::{AppKey, Store, StoreError, StoredToken};

/// How long a token read from the database is used before it is read again.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Above this many cached tokens, stale ones are dropped.
const TOKEN_CACHE_MAX: usize = 10_000;

/// Tokens by id, with when they were read (`None`: no such token).
type TokenCache = HashMap<String, (Instant, Option<Arc<StoredToken>>)>;

/// An app and the keys that authenticate its workers now.
#[derive(Debug, Clone)]
pub struct AppEntry {
    pub id: i64,
    pub name: String,
    /// Oldest first.
    keys: Vec<AppKey>,
}

impl AppEntry {
    fn key(&self, key_id: &str, now_ms: i64) -> Option<&Key> {
        self.keys
            .iter()
            .find(|k| k.key_id == key_id && k.retire_at_ms.is_none_or(|at| at > now_ms))
            .map(|k| &k.key)
    }

    fn newest(&self) -> Option<&AppKey> {
        self.keys.last()
    }
}

#[derive(Default)]
struct AppBook {
    by_name: HashMap<String, Arc<AppEntry>>,
    by_id: HashMap<i64, Arc<AppEntry>>,
}

impl AppBook {
    fn insert(&mut self, entry: AppEntry) {
        let entry = Arc::new(entry);
        self.by_name.insert(entry.name.clone(), entry.clone());
        self.by_id.insert(entry.id, entry);
    }
}

/// A worker whose message the gate verified.
#[derive(Debug, Clone)]
pub struct WorkerPeer {
    pub app_id: i64,
    pub worker_id: String,
    /// The key its message was sealed with; the reply is sealed with it too.
    pub key: Key,
}

impl WorkerPeer {
    /// Refuses a payload that names another worker than the one whose key sealed it.
    pub fn check_worker(&self, named: &str) -> Result<(), ErrorBody> {
        if named == self.worker_id {
            Ok(())
        } else {
            Err(ErrorBody::unauthorized(format!(
                "the message is sealed by worker {} but names worker {named}",
                self.worker_id
            )))
        }
    }
}

/// An administrator whose request the gate verified.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    /// The only app the token may touch, when it is scoped.
    pub app_id: Option<i64>,
    pub key: Key,
}

impl Caller {
    /// Refuses a request that needs more than the token's role.
    pub fn require(&self, role: Role) -> Result<(), ErrorBody> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ErrorBody::forbidden(format!(
                "this needs the {role} role; token {} is {}",
                self.token_id, self.role
            )))
        }
    }

    /// Refuses a request about an app outside the token's scope.
    pub fn require_app(&self, app_id: i64) -> Result<(), ErrorBody> {
        match self.app_id {
            Some(scope) if scope != app_id => Err(ErrorBody::forbidden(format!(
                "token {} is scoped to another app",
                self.token_id
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a request that only an unscoped token may make (apps, tokens).
    pub fn require_unscoped(&self) -> Result<(), ErrorBody> {
        match self.app_id {
            Some(_) => Err(ErrorBody::forbidden(format!(
                "token {} is scoped to one app; this needs a token for every app",
                self.token_id
            ))),
            None => Ok(()),
        }
    }
}

/// The server's keys, replay state and refusal counts.
pub struct Gate {
    server_id: String,
    stamper: Arc<Stamper>,
    replay: ReplayGuard,
    cluster: Credential,
    apps: RwLock<AppBook>,
    tokens: Mutex<TokenCache>,
    /// The key id each worker last used, so that messages to it are sealed with the key it
    /// holds while a rotation's grace lets two keys authenticate.
    worker_key_ids: Mutex<HashMap<i64, HashMap<String, String>>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// When a discovery that named an unknown app or key last made the gate re-read the apps,
    /// held while one does: a stream of made-up names must not become a stream of database
    /// reads, and a real app made a moment ago on another server is found after a short wait.
    last_lookup: tokio::sync::Mutex<Option<Instant>>,
    /// Held through a re-read of the apps, reads and write together: two re-reads that
    /// overlapped could otherwise install the older snapshot last, and an app just made (its
    /// keys) would be missing until the next re-read, its dispatches failing "no key".
    refreshing: tokio::sync::Mutex<()>,
}

/// The least time between two re-reads of the apps on behalf of discovery.
const LOOKUP_SPACING: Duration = Duration::from_millis(250);

fn unauthorized(m: impl Into<String>) -> ErrorBody {
    ErrorBody::unauthorized(m)
}

impl Gate {
    pub fn new(server_id: &str, cluster_key: Key, now_ms: i64) -> Self {
        let stamper = Arc::new(Stamper::new());
        Self {
            server_id: server_id.to_owned(),
            cluster: Credential::new(Scope::Cluster, cluster_key, server_id, stamper.clone()),
            stamper,
            replay: ReplayGuard::new(now_ms),
            apps: RwLock::default(),
            tokens: Mutex::default(),
            worker_key_ids: Mutex::default(),
            refused: Mutex::default(),
            last_lookup: tokio::sync::Mutex::default(),
            refreshing: tokio::sync::Mutex::default(),
        }
    }

    /// What the gate refused since start, by reason.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }

    /// Counts a refusal and hands the error back.
    pub fn refuse(&self, reason: &'static str, error: ErrorBody) -> ErrorBody {
        tracing::debug!(reason, error = %error, "refused a message");
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
        error
    }

    // === Apps ===

    /// Re-reads every app and its keys.
    pub async fn refresh_apps(&self, store: &Store, now_ms: i64) -> Result<(), StoreError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let apps = store.list_apps().await?;
        let mut keys: HashMap<i64, Vec<AppKey>> = HashMap::new();
        for key in store.app_keys(now_ms).await? {
            keys.entry(key.app_id).or_default().push(key);
        }
        let mut book = AppBook::default();
        for app in apps {
            book.insert(AppEntry {
                id: app.id,
                keys: keys.remove(&app.id).unwrap_or_default(),
                name: app.name,
            });
        }
        *self.apps.write().unwrap_or_else(|e| e.into_inner()) = book;
        Ok(())
    }

    pub fn app_by_id(&self, id: i64) -> Option<Arc<AppEntry>> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&id)
            .cloned()
    }

    fn app_by_name(&self, name: &str) -> Option<Arc<AppEntry>> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(name)
            .cloned()
    }

    // === Discovery ===

    /// Verifies a discovery request of `app` (sealed with the app key); returns the app, the key
    /// and the sender. An app or key this server has not read yet (made a moment ago on another
    /// server) is looked for in the database.
    pub async fn verify_discovery(
        &self,
        store: &Store,
        app: &str,
        msg: &Message,
        now_ms: i64,
    ) -> Result<(Arc<AppEntry>, Key, String), ErrorBody> {
        let seal = Seal::require(msg.headers.as_ref()).map_err(|e| self.refuse("no_seal", e))?;
        let Scope::App { key_id } = &seal.scope else {
            return Err(self.refuse(
                "wrong_scope",
                unauthorized("discovery is sealed with the app key"),
            ));
        };
        let mut entry = self.app_by_name(app);
        let unknown = |entry: &Option<Arc<AppEntry>>| {
            entry
                .as_ref()
                .is_none_or(|e| e.key(key_id, now_ms).is_none())
        };
        if unknown(&entry) {
            // Made a moment ago on another server, perhaps. One re-read at a time, at most one
            // every LOOKUP_SPACING; a re-read that ended while this one waited may have brought
            // the app already.
            let mut last = self.last_lookup.lock().await;
            entry = self.app_by_name(app);
            if unknown(&entry) {
                if let Some(at) = *last {
                    tokio::time::sleep(LOOKUP_SPACING.saturating_sub(at.elapsed())).await;
                }
                self.refresh_apps(store, now_ms).await?;
                *last = Some(Instant::now());
                entry = self.app_by_name(app);
            }
        }
        let Some(entry) = entry else {
            return Err(self.refuse(
                "unknown_app",
                ErrorBody::not_found(format!("app {app:?} not found")),
            ));
        };
        let Some(key) = entry.key(key_id, now_ms).cloned() else {
            return Err(self.refuse(
                "unknown_key",
                unauthorized(format!(
                    "wrong secret for app {app:?} (or one retired by a rotation)"
                )),
            ));
        };
        if !seal.verify(&key, msg.subject.as_str(), &msg.payload) {
            return Err(self.refuse(
                "bad_seal",
                unauthorized(format!("wrong secret for app {app:?}")),
            ));
        }
        self.check_replay(
            &format!("a/{}/{}", entry.id, seal.sender),
            seal.stamp,
            now_ms,
        )?;
        Ok((entry, key, seal.sender))
    }

    fn check_replay(&self, sender: &str, stamp: u64, now_ms: i64) -> Result<(), ErrorBody> {
        self.replay
            .check(sender, stamp, now_ms)
            .map_err(|e| self.refuse("replayed", unauthorized(e.to_string())))
    }

    // === Workers ===

    /// Verifies a message from a worker of `app`. Memory only: it serves the hot path.
    pub fn verify_worker(
        &self,
        app: &str,
        msg: &Message,
        now_ms: i64,
    ) -> Result<WorkerPeer, ErrorBody> {
        let seal = Seal::require(msg.headers.as_ref()).map_err(|e| self.refuse("no_seal", e))?;
        let Scope::Worker { key_id } = &seal.scope else {
            return Err(self.refuse(
                "wrong_scope",
                unauthorized("a worker's message is sealed with its worker key"),
            ));
        };
        let Some(entry) = self.app_by_name(app) else {
            return Err(self.refuse(
                "unknown_app",
                ErrorBody::not_found(format!("app {app:?} not found")),
            ));
        };
        let Some(app_key) = entry.key(key_id, now_ms) else {
            return Err(self.refuse(
                "unknown_key",
                unauthorized(format!(
                    "unknown or retired key for app {app:?}; ask discovery again"
                )),
            ));
        };
        let key = worker_key(app_key, app, &seal.sender);
        if !seal.verify(&key, msg.subject.as_str(), &msg.payload) {
            return Err(self.refuse(
                "bad_seal",
                unauthorized("the message's seal does not verify"),
            ));
        }
        self.check_replay(
            &format!("w/{}/{}", entry.id, seal.sender),
            seal.stamp,
            now_ms,
        )?;
        {
            // On the hot path: only a worker's first message, or its first after a rotation,
            // writes here.
            let mut ids = self
                .worker_key_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let app_ids = ids.entry(entry.id).or_default();
            if app_ids.get(&seal.sender) != Some(key_id) {
                app_ids.insert(seal.sender.clone(), key_id.clone());
            }
        }
        Ok(WorkerPeer {
            app_id: entry.id,
            worker_id: seal.sender,
            key,
        })
    }

    /// The credential that seals this server's messages to a worker, with the key the worker
    /// last used (or the app's newest). `None` for an app without keys.
    pub fn worker_credential(&self, app_id: i64, worker_id: &str) -> Option<(String, Credential)> {
        let entry = self.app_by_id(app_id)?;
        let key_id = self
            .worker_key_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&app_id)
            .and_then(|ids| ids.get(worker_id))
            .cloned();
        let app_key = match key_id
            .as_deref()
            .and_then(|id| entry.keys.iter().find(|k| k.key_id == id))
        {
            Some(k) => k,
            None => entry.newest()?,
        };
        let key = worker_key(&app_key.key, &entry.name, worker_id);
        let scope = Scope::Worker {
            key_id: app_key.key_id.clone(),
        };
        Some((
            entry.name.clone(),
            Credential::new(scope, key, self.server_id.clone(), self.stamper.clone()),
        ))
    }

    /// The credential that seals what this server tells all workers of an app at once (the
    /// app's newest key), with the app's name. `None` for an app without keys.
    pub fn app_credential(&self, app_id: i64) -> Option<(String, Credential)> {
        let entry = self.app_by_id(app_id)?;
        let app_key = entry.newest()?;
        let scope = Scope::App {
            key_id: app_key.key_id.clone(),
        };
        Some((
            entry.name.clone(),
            Credential::new(
                scope,
                app_key.key.clone(),
                self.server_id.clone(),
                self.stamper.clone(),
            ),
        ))
    }

    // === Servers ===

    pub fn cluster_credential(&self) -> &Credential {
        &self.cluster
    }

    /// Verifies a message from another server of the deployment; returns its id.
    pub fn verify_cluster(&self, msg: &Message, now_ms: i64) -> Result<String, ErrorBody> {
        let seal = Seal::require(msg.headers.as_ref()).map_err(|e| self.refuse("no_seal", e))?;
        if seal.scope != Scope::Cluster
            || !seal.verify(self.cluster.key(), msg.subject.as_str(), &msg.payload)
        {
            return Err(self.refuse(
                "bad_seal",
                unauthorized("not sealed with the deployment's cluster key"),
            ));
        }
        self.check_replay(&format!("c/{}", seal.sender), seal.stamp, now_ms)?;
        Ok(seal.sender)
    }

    // === Administrators ===

    /// A token by id, read through the cache. While the database does not answer, a token read
    /// before is still used (no revocation can be stored meanwhile either), so that what is
    /// answered from memory, such as `server.stats`, keeps working through an outage.
    async fn token(&self, store: &Store, id: &str) -> Result<Option<Arc<StoredToken>>, ErrorBody> {
        let stale = {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(id) {
                Some((at, token)) if at.elapsed() < TOKEN_CACHE_TTL => return Ok(token.clone()),
                Some((_, token)) => Some(token.clone()),
                None => None,
            }
        };
        let token = match store.token(id).await {
            Ok(t) => Some(Arc::new(t)),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => {
                return match stale {
                    Some(token) => {
                        tracing::debug!(token = id, error = %e, "token from the cache while the database does not answer");
                        Ok(token)
                    }
                    None => Err(e.into()),
                };
            }
        };
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > TOKEN_CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < TOKEN_CACHE_TTL);
        }
        cache.insert(id.to_owned(), (Instant::now(), token.clone()));
        Ok(token)
    }

    /// Drops a token from the cache after this server changed it.
    pub fn forget_token(&self, id: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Verifies an admin request: sealed with a known, unrevoked token's key.
    pub async fn verify_admin(
        &self,
        store: &Store,
        msg: &Message,
        now_ms: i64,
    ) -> Result<Caller, ErrorBody> {
        let Some(seal) = Seal::read(msg.headers.as_ref()).map_err(|e| self.refuse("no_seal", e))?
        else {
            return Err(self.refuse(
                "no_token",
                unauthorized("admin requests need a token: give --token or set ROTA_TOKEN"),
            ));
        };
        let Scope::Token { token_id } = &seal.scope else {
            return Err(self.refuse(
                "wrong_scope",
                unauthorized("admin requests are sealed with a token"),
            ));
        };
        let Some(token) = self.token(store, token_id).await? else {
            return Err(self.refuse(
                "unknown_token",
                unauthorized(format!("unknown token {token_id}")),
            ));
        };
        if token.revoked_at_ms.is_some() {
            return Err(self.refuse(
                "revoked_token",
                unauthorized(format!("token {token_id} is revoked")),
            ));
        }
        if !seal.verify(&token.key, msg.subject.as_str(), &msg.payload) {
            return Err(self.refuse(
                "bad_seal",
                unauthorized(format!(
                    "the request's seal does not verify for token {token_id}"
                )),
            ));
        }
        self.check_replay(&format!("t/{token_id}/{}", seal.sender), seal.stamp, now_ms)?;
        Ok(Caller {
            token_id: token.id.clone(),
            role: token.role,
            app_id: token.app_id,
            key: token.key.clone(),
        })
    }
}
