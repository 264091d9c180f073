//! The server registry table.

use rota_shared::admin::ServerInfo;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entity::server;
use super::{Store, StoreResult};

impl Store {
    /// Registers a server, or refreshes its row when it restarts with the same id.
    pub async fn register_server(
        &self,
        id: &str,
        version: &str,
        started_at_ms: i64,
    ) -> StoreResult<()> {
        let model = server::ActiveModel {
            id: Set(id.to_owned()),
            version: Set(version.to_owned()),
            started_at_ms: Set(started_at_ms),
            last_seen_ms: Set(started_at_ms),
        };
        server::Entity::insert(model)
            .on_conflict(
                OnConflict::column(server::Column::Id)
                    .update_columns([
                        server::Column::Version,
                        server::Column::StartedAtMs,
                        server::Column::LastSeenMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(self.conn())
            .await?;
        Ok(())
    }

    pub async fn touch_server(&self, id: &str, now_ms: i64) -> StoreResult<()> {
        server::Entity::update_many()
            .col_expr(server::Column::LastSeenMs, now_ms.into())
            .filter(server::Column::Id.eq(id))
            .exec(self.conn())
            .await?;
        Ok(())
    }

    pub async fn deregister_server(&self, id: &str) -> StoreResult<()> {
        server::Entity::delete_by_id(id.to_owned())
            .exec(self.conn())
            .await?;
        Ok(())
    }

    /// Every registered server; those seen at or after `alive_since_ms` are alive.
    pub async fn list_servers(&self, alive_since_ms: i64) -> StoreResult<Vec<ServerInfo>> {
        Ok(server::Entity::find()
            .order_by_asc(server::Column::Id)
            .all(self.conn())
            .await?
            .into_iter()
            .map(|s| ServerInfo {
                alive: s.last_seen_ms >= alive_since_ms,
                id: s.id,
                version: s.version,
                started_at_ms: s.started_at_ms,
                last_seen_ms: s.last_seen_ms,
            })
            .collect())
    }
}
