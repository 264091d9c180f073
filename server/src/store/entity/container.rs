use sea_orm::entity::prelude::*;

/// One version of a container of an app.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "container")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub app_id: i64,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    /// JSON of `rota_shared::container::ContainerSource`.
    pub source: String,
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
