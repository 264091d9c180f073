//! Admin tokens and the deployment's own secrets.

use rota_shared::admin::Role;
use rota_transport::Key;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entity::{admin_token, deployment_secret};
use super::{Store, StoreError, StoreResult};

/// The name of the cluster key in `deployment_secret`.
const CLUSTER_KEY: &str = "cluster_key";

/// An admin token as the server knows it: never the token itself, only the key derived from it.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub id: String,
    pub role: Role,
    pub app_id: Option<i64>,
    pub description: String,
    pub key: Key,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl StoredToken {
    fn from_model(m: admin_token::Model) -> StoreResult<Self> {
        let role = Role::parse(&m.role)
            .ok_or_else(|| StoreError::Corrupt(format!("token {} has role {:?}", m.id, m.role)))?;
        let key = Key::from_hex(&m.key)
            .map_err(|e| StoreError::Corrupt(format!("token {}: {e}", m.id)))?;
        Ok(Self {
            id: m.id,
            role,
            app_id: m.app_id,
            description: m.description,
            key,
            created_at_ms: m.created_at_ms,
            revoked_at_ms: m.revoked_at_ms,
        })
    }
}

impl Store {
    pub async fn insert_token(&self, token: &StoredToken) -> StoreResult<()> {
        admin_token::ActiveModel {
            id: Set(token.id.clone()),
            role: Set(token.role.as_str().to_owned()),
            app_id: Set(token.app_id),
            description: Set(token.description.clone()),
            key: Set(token.key.to_hex()),
            created_at_ms: Set(token.created_at_ms),
            revoked_at_ms: Set(token.revoked_at_ms),
        }
        .insert(self.conn())
        .await
        .map_err(|e| StoreError::from_insert(e, format!("token {}", token.id)))?;
        Ok(())
    }

    pub async fn token(&self, id: &str) -> StoreResult<StoredToken> {
        let model = admin_token::Entity::find_by_id(id.to_owned())
            .one(self.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        StoredToken::from_model(model)
    }

    pub async fn list_tokens(&self) -> StoreResult<Vec<StoredToken>> {
        admin_token::Entity::find()
            .order_by_asc(admin_token::Column::CreatedAtMs)
            .all(self.conn())
            .await?
            .into_iter()
            .map(StoredToken::from_model)
            .collect()
    }

    /// Revokes a token; revoking one already revoked keeps its first revocation time.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> StoreResult<StoredToken> {
        admin_token::Entity::update_many()
            .col_expr(admin_token::Column::RevokedAtMs, Expr::value(now_ms))
            .filter(admin_token::Column::Id.eq(id))
            .filter(admin_token::Column::RevokedAtMs.is_null())
            .exec(self.conn())
            .await?;
        self.token(id).await
    }

    /// The deployment's cluster key, made by the first server that asks. Every server of a
    /// deployment shares the database, and so the key.
    pub async fn cluster_key(&self, now_ms: i64) -> StoreResult<Key> {
        let fresh = Key::random().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Servers starting together race here: the first insert wins, the others read it.
        deployment_secret::Entity::insert(deployment_secret::ActiveModel {
            name: Set(CLUSTER_KEY.to_owned()),
            value: Set(fresh.to_hex()),
            created_at_ms: Set(now_ms),
        })
        .on_conflict(
            OnConflict::column(deployment_secret::Column::Name)
                // Naming a column keeps MySQL's rendering valid (see `Store::fire`).
                .do_nothing_on([deployment_secret::Column::Name])
                .to_owned(),
        )
        .exec_without_returning(self.conn())
        .await?;
        let stored = deployment_secret::Entity::find_by_id(CLUSTER_KEY.to_owned())
            .one(self.conn())
            .await?
            .ok_or_else(|| StoreError::Corrupt("the cluster key vanished".to_owned()))?;
        Key::from_hex(&stored.value).map_err(|e| StoreError::Corrupt(format!("cluster key: {e}")))
    }
}
