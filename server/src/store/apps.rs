//! Apps, their keys and their ownership.

use rota_shared::admin::AppInfo;
use rota_transport::Key;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entity::{app, app_key};
use super::{Store, StoreError, StoreResult};

/// An app key as the server holds it in memory.
#[derive(Debug, Clone)]
pub struct AppKey {
    pub app_id: i64,
    pub key_id: String,
    pub key: Key,
    /// The key no longer authenticates from this time on.
    pub retire_at_ms: Option<i64>,
}

impl AppKey {
    fn from_model(m: app_key::Model) -> StoreResult<Self> {
        let key = Key::from_hex(&m.key).map_err(|e| {
            StoreError::Corrupt(format!("key {} of app {}: {e}", m.key_id, m.app_id))
        })?;
        Ok(Self {
            app_id: m.app_id,
            key_id: m.key_id,
            key,
            retire_at_ms: m.retire_at_ms,
        })
    }
}

/// The one mapping from a stored app to the domain type (its unused `secret_hash` stays here).
fn app_info(m: app::Model) -> AppInfo {
    AppInfo {
        id: m.id,
        name: m.name,
        current_server: m.current_server,
        epoch: m.epoch,
        created_at_ms: m.created_at_ms,
    }
}

fn key_row(app_id: i64, key: &Key, now_ms: i64) -> app_key::ActiveModel {
    app_key::ActiveModel {
        app_id: Set(app_id),
        key_id: Set(key.id()),
        key: Set(key.to_hex()),
        created_at_ms: Set(now_ms),
        retire_at_ms: Set(None),
        ..Default::default()
    }
}

impl Store {
    /// Creates an app with its first key (derived from its secret by the caller).
    pub async fn create_app(&self, name: &str, key: &Key, now_ms: i64) -> StoreResult<AppInfo> {
        let txn = self.write_txn().await?;
        let model = app::ActiveModel {
            name: Set(name.to_owned()),
            secret_hash: Set(String::new()),
            current_server: Set(None),
            epoch: Set(0),
            created_at_ms: Set(now_ms),
            ..Default::default()
        };
        let app = model
            .insert(&txn)
            .await
            .map_err(|e| StoreError::from_insert(e, format!("app {name:?}")))?;
        key_row(app.id, key, now_ms).insert(&txn).await?;
        txn.commit().await?;
        Ok(app_info(app))
    }

    /// Gives an app a new key; its other keys stop authenticating at `now_ms + grace_ms` (or
    /// sooner, when a previous rotation said so).
    pub async fn rotate_app_key(
        &self,
        app_id: i64,
        key: &Key,
        now_ms: i64,
        grace_ms: i64,
    ) -> StoreResult<()> {
        let retire_at = now_ms.saturating_add(grace_ms);
        let txn = self.write_txn().await?;
        app_key::Entity::update_many()
            .col_expr(app_key::Column::RetireAtMs, Expr::value(retire_at))
            .filter(app_key::Column::AppId.eq(app_id))
            .filter(
                app_key::Column::RetireAtMs
                    .is_null()
                    .or(app_key::Column::RetireAtMs.gt(retire_at)),
            )
            .exec(&txn)
            .await?;
        key_row(app_id, key, now_ms)
            .insert(&txn)
            .await
            .map_err(|e| StoreError::from_insert(e, "an identical key for this app".to_owned()))?;
        txn.commit().await?;
        Ok(())
    }

    /// Every app's keys that still authenticate at `now_ms`.
    pub async fn app_keys(&self, now_ms: i64) -> StoreResult<Vec<AppKey>> {
        app_key::Entity::find()
            .filter(
                app_key::Column::RetireAtMs
                    .is_null()
                    .or(app_key::Column::RetireAtMs.gt(now_ms)),
            )
            .order_by_asc(app_key::Column::Id)
            .all(self.conn())
            .await?
            .into_iter()
            .map(AppKey::from_model)
            .collect()
    }

    pub async fn list_apps(&self) -> StoreResult<Vec<AppInfo>> {
        Ok(app::Entity::find()
            .order_by_asc(app::Column::Id)
            .all(self.conn())
            .await?
            .into_iter()
            .map(app_info)
            .collect())
    }

    pub async fn app_by_name(&self, name: &str) -> StoreResult<AppInfo> {
        app::Entity::find()
            .filter(app::Column::Name.eq(name))
            .one(self.conn())
            .await?
            .map(app_info)
            .ok_or_else(|| StoreError::NotFound(format!("app {name:?}")))
    }

    pub async fn app_by_id(&self, id: i64) -> StoreResult<AppInfo> {
        app::Entity::find_by_id(id)
            .one(self.conn())
            .await?
            .map(app_info)
            .ok_or_else(|| StoreError::NotFound(format!("app {id}")))
    }

    /// Takes the app over with a compare-and-set on its epoch (DESIGN §3): `true` when this call
    /// made `server_id` the owner, `false` when someone else changed the app first.
    pub async fn claim_app(
        &self,
        app_id: i64,
        expected_epoch: i64,
        server_id: &str,
    ) -> StoreResult<bool> {
        let res = app::Entity::update_many()
            .col_expr(app::Column::CurrentServer, Expr::value(server_id))
            .col_expr(app::Column::Epoch, Expr::col(app::Column::Epoch).add(1))
            .filter(app::Column::Id.eq(app_id))
            .filter(app::Column::Epoch.eq(expected_epoch))
            .exec(self.conn())
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// The apps `server_id` owns, with their epochs.
    pub async fn owned_apps(&self, server_id: &str) -> StoreResult<Vec<AppInfo>> {
        Ok(app::Entity::find()
            .filter(app::Column::CurrentServer.eq(server_id))
            .all(self.conn())
            .await?
            .into_iter()
            .map(app_info)
            .collect())
    }
}
