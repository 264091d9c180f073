//! Instance log lines. Writes are batched: one multi-row insert per chunk.

use rota_shared::admin::LogEntry;
use rota_shared::message::LogLine;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::entity::instance_log;
use super::{Store, StoreResult};

/// Rows per insert statement: 5 bind parameters a row stays far below every backend's limit.
const ROWS_PER_INSERT: usize = 1000;

/// The longest line stored; longer lines are cut (on a character boundary).
pub const MAX_LINE_CHARS: usize = 8192;

impl Store {
    /// Stores log lines in as few statements as possible. Returns how many were stored.
    pub async fn insert_logs(&self, lines: &[LogLine]) -> StoreResult<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let txn = self.write_txn().await?;
        for chunk in lines.chunks(ROWS_PER_INSERT) {
            let rows = chunk.iter().map(|l| instance_log::ActiveModel {
                instance_id: Set(l.instance_id),
                attempt: Set(l.attempt),
                ts_ms: Set(l.ts_ms),
                level: Set(l.level),
                text: Set(truncate_chars(&l.text, MAX_LINE_CHARS)),
                ..Default::default()
            });
            instance_log::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(lines.len() as u64)
    }

    /// Lines of an instance stored after line `after_id`, oldest first.
    pub async fn logs_after(
        &self,
        instance_id: i64,
        after_id: i64,
        limit: u64,
    ) -> StoreResult<Vec<LogEntry>> {
        Ok(instance_log::Entity::find()
            .filter(instance_log::Column::InstanceId.eq(instance_id))
            .filter(instance_log::Column::Id.gt(after_id))
            .order_by_asc(instance_log::Column::Id)
            .limit(limit)
            .into_model::<LogEntry>()
            .all(self.conn())
            .await?)
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => s[..idx].to_owned(),
        None => s.to_owned(),
    }
}
