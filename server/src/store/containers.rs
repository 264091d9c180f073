//! Containers: the versions of each app's bundles.

use rota_shared::container::{ContainerInfo, ContainerSource};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entity::container;
use super::{Store, StoreError, StoreResult};

/// The one mapping from a stored container to the domain type.
fn info(m: container::Model) -> StoreResult<ContainerInfo> {
    let source: ContainerSource = serde_json::from_str(&m.source)
        .map_err(|e| StoreError::Corrupt(format!("container {}'s source: {e}", m.id)))?;
    Ok(ContainerInfo {
        id: m.id,
        app_id: m.app_id,
        name: m.name,
        version: m.version,
        sha256: m.sha256,
        size: u64::try_from(m.size)
            .map_err(|_| StoreError::Corrupt(format!("container {}'s size {}", m.id, m.size)))?,
        source,
        created_at_ms: m.created_at_ms,
    })
}

impl Store {
    /// Records a version of a container; a version recorded already is a conflict.
    pub async fn insert_container(&self, c: &ContainerInfo) -> StoreResult<ContainerInfo> {
        let source = serde_json::to_string(&c.source)
            .map_err(|e| StoreError::Corrupt(format!("a container source: {e}")))?;
        let row = container::ActiveModel {
            app_id: Set(c.app_id),
            name: Set(c.name.clone()),
            version: Set(c.version.clone()),
            sha256: Set(c.sha256.clone()),
            size: Set(i64::try_from(c.size).unwrap_or(i64::MAX)),
            source: Set(source),
            created_at_ms: Set(c.created_at_ms),
            ..Default::default()
        };
        info(row.insert(self.conn()).await?)
    }

    /// A version of a container of an app, or its newest version when none is named.
    pub async fn container(
        &self,
        app_id: i64,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<ContainerInfo> {
        let mut q = container::Entity::find()
            .filter(container::Column::AppId.eq(app_id))
            .filter(container::Column::Name.eq(name));
        if let Some(v) = version {
            q = q.filter(container::Column::Version.eq(v));
        }
        let found = q
            .order_by_desc(container::Column::CreatedAtMs)
            .order_by_desc(container::Column::Id)
            .one(self.conn())
            .await?;
        match found {
            Some(m) => info(m),
            None => Err(StoreError::NotFound(match version {
                Some(v) => format!("container {name}@{v}"),
                None => format!("container {name}"),
            })),
        }
    }

    /// Every version of every container of an app, by name, newest first.
    pub async fn containers(&self, app_id: i64) -> StoreResult<Vec<ContainerInfo>> {
        container::Entity::find()
            .filter(container::Column::AppId.eq(app_id))
            .order_by_asc(container::Column::Name)
            .order_by_desc(container::Column::CreatedAtMs)
            .order_by_desc(container::Column::Id)
            .all(self.conn())
            .await?
            .into_iter()
            .map(info)
            .collect()
    }

    /// Forgets a version of a container; whether it was recorded.
    pub async fn delete_container(
        &self,
        app_id: i64,
        name: &str,
        version: &str,
    ) -> StoreResult<bool> {
        let res = container::Entity::delete_many()
            .filter(container::Column::AppId.eq(app_id))
            .filter(container::Column::Name.eq(name))
            .filter(container::Column::Version.eq(version))
            .exec(self.conn())
            .await?;
        Ok(res.rows_affected > 0)
    }
}
