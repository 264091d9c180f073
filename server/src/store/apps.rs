//! Apps and their ownership.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use sha2::{Digest, Sha256};

use super::entity::app;
use super::{Store, StoreError, StoreResult};

/// Secrets are stored as a salted SHA-256: the app name is the salt.
pub fn hash_secret(app: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(app.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

impl Store {
    pub async fn create_app(
        &self,
        name: &str,
        secret: &str,
        now_ms: i64,
    ) -> StoreResult<app::Model> {
        let model = app::ActiveModel {
            name: Set(name.to_owned()),
            secret_hash: Set(hash_secret(name, secret)),
            current_server: Set(None),
            epoch: Set(0),
            created_at_ms: Set(now_ms),
            ..Default::default()
        };
        model
            .insert(self.conn())
            .await
            .map_err(|e| StoreError::from_insert(e, format!("app {name:?}")))
    }

    pub async fn list_apps(&self) -> StoreResult<Vec<app::Model>> {
        Ok(app::Entity::find()
            .order_by_asc(app::Column::Id)
            .all(self.conn())
            .await?)
    }

    pub async fn app_by_name(&self, name: &str) -> StoreResult<app::Model> {
        app::Entity::find()
            .filter(app::Column::Name.eq(name))
            .one(self.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("app {name:?}")))
    }

    pub async fn app_by_id(&self, id: i64) -> StoreResult<app::Model> {
        app::Entity::find_by_id(id)
            .one(self.conn())
            .await?
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
    pub async fn owned_apps(&self, server_id: &str) -> StoreResult<Vec<app::Model>> {
        Ok(app::Entity::find()
            .filter(app::Column::CurrentServer.eq(server_id))
            .all(self.conn())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_hash_is_salted_by_app() {
        assert_ne!(hash_secret("a", "s"), hash_secret("b", "s"));
        assert_eq!(hash_secret("a", "s"), hash_secret("a", "s"));
        assert_eq!(hash_secret("a", "s").len(), 64);
    }
}
