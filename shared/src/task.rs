//! Distributed execution: how an instance's work is split into tasks across the app's workers,
//! the messages a master (the worker that received the dispatch) and its task workers exchange,
//! and the pure rules that decide a task's next step and an instance's verdict.
//!
//! The master asks the owner for the eligible workers (`cluster`), sends them tasks on
//! `rota.app.{app}.wrk.{wid}.task` ([`TaskCall`]) and hears their results on its own
//! `rota.app.{app}.wrk.{master}.task_report` ([`TaskReport`]). Both are sealed with the
//! receiver's worker key, which every worker of the app can derive from the app key and which
//! no one else holds.

use serde::{Deserialize, Serialize};

use crate::message::LogLine;

/// How an instance's work is spread over the app's workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Execution {
    /// One worker runs the processor once.
    #[default]
    Standalone,
    /// One task on every eligible live worker, with the processor's `pre` and `post` steps on
    /// the master around them.
    Broadcast,
    /// A root task on the master that emits sub-tasks (`ctx.map`), which may emit more.
    Map,
    /// A map, then `reduce` on the master over every task's result.
    MapReduce,
    /// One task per shard item (ElasticJob style), each with its index, the total and its
    /// parameter.
    Sharding { shards: Vec<ShardItem> },
}

/// One item of a sharded job: its index and its parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardItem {
    pub index: u32,
    #[serde(default)]
    pub param: String,
}

/// The most shard items a job may have.
pub const MAX_SHARDS: usize = 10_000;

/// Why an execution cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionError {
    #[error("unknown execution {0:?}: use standalone, broadcast, map, map-reduce or sharding")]
    Unknown(String),
    #[error("invalid shard item {0:?}: write INDEX=PARAM, e.g. \"0=a,1=b\"")]
    BadItem(String),
    #[error("shard index {0} appears twice")]
    Duplicate(u32),
    #[error("shard indexes must run from 0 to {last} without a gap; {missing} is missing")]
    Gap { last: u32, missing: u32 },
    #[error("a sharded job needs at least one shard item and at most {MAX_SHARDS}")]
    Count,
}

impl Execution {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Broadcast => "broadcast",
            Self::Map => "map",
            Self::MapReduce => "map_reduce",
            Self::Sharding { .. } => "sharding",
        }
    }

    /// Whether the instance is split into tasks (anything but standalone).
    pub fn is_distributed(&self) -> bool {
        !matches!(self, Self::Standalone)
    }

    /// Whether the processor's root task runs on the master and emits the others.
    pub fn has_root(&self) -> bool {
        matches!(self, Self::Map | Self::MapReduce)
    }

    /// Whether a task belongs to the worker it was given to: a broadcast task is that worker's
    /// share, so it is never run elsewhere.
    pub fn pins_tasks(&self) -> bool {
        matches!(self, Self::Broadcast)
    }

    /// The execution a command line names: `standalone`, `broadcast`, `map`, `map-reduce`, or
    /// `sharding` with its items.
    pub fn parse(kind: &str, shards: Option<Vec<ShardItem>>) -> Result<Self, ExecutionError> {
        let execution = match kind.trim().replace('-', "_").to_ascii_lowercase().as_str() {
            "standalone" => Self::Standalone,
            "broadcast" => Self::Broadcast,
            "map" => Self::Map,
            "map_reduce" | "mapreduce" => Self::MapReduce,
            "sharding" => Self::Sharding {
                shards: shards.ok_or(ExecutionError::Count)?,
            },
            _ => return Err(ExecutionError::Unknown(kind.to_owned())),
        };
        execution.validate()?;
        Ok(execution)
    }

    /// Shard items must be 1 to [`MAX_SHARDS`], indexed 0 to N-1, each once.
    pub fn validate(&self) -> Result<(), ExecutionError> {
        let Self::Sharding { shards } = self else {
            return Ok(());
        };
        if shards.is_empty() || shards.len() > MAX_SHARDS {
            return Err(ExecutionError::Count);
        }
        let mut seen = vec![false; shards.len()];
        let last = (shards.len() - 1) as u32;
        for item in shards {
            match seen.get_mut(item.index as usize) {
                Some(true) => return Err(ExecutionError::Duplicate(item.index)),
                Some(slot) => *slot = true,
                None => {
                    let missing = seen.iter().position(|s| !s).unwrap_or(0) as u32;
                    return Err(ExecutionError::Gap { last, missing });
                }
            }
        }
        Ok(())
    }
}

/// Parses `"0=a,1=b,2=c"` (ElasticJob's form) into shard items, in index order.
pub fn parse_shards(text: &str) -> Result<Vec<ShardItem>, ExecutionError> {
    let mut items = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (index, param) = part
            .split_once('=')
            .ok_or_else(|| ExecutionError::BadItem(part.to_owned()))?;
        let index = index
            .trim()
            .parse()
            .map_err(|_| ExecutionError::BadItem(part.to_owned()))?;
        items.push(ShardItem {
            index,
            param: param.trim().to_owned(),
        });
    }
    items.sort_by_key(|i| i.index);
    Ok(items)
}

/// `count` shard items with empty parameters.
pub fn shard_count(count: u32) -> Vec<ShardItem> {
    (0..count)
        .map(|index| ShardItem {
            index,
            param: String::new(),
        })
        .collect()
}

/// What a sharded or broadcast task knows of its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
    #[serde(default)]
    pub param: String,
}

/// The name of the root task of a map.
pub const ROOT_TASK: &str = "ROOT";

/// One task as the master hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within the instance's attempt; the root task is 0.
    pub id: u64,
    /// Rises each time the task is given out again (after a failure or a lost worker), from 1.
    pub attempt: u32,
    pub name: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// `rota.app.{app}.wrk.{wid}.task`: what a master asks a task worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum TaskCall {
    /// Run these tasks; answered with [`TaskBatchAck`] or `REJECTED`.
    Run(Box<TaskBatch>),
    /// The instance's attempt is over: drop its tasks. Answered with [`TaskBatchAck`].
    Stop(TaskStop),
}

/// Tasks of one instance's attempt, with what a processor needs to run them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBatch {
    /// The worker that sends it, which must be the one that sealed it.
    pub master: String,
    pub instance_id: i64,
    pub attempt: i32,
    pub job_id: i64,
    pub job_name: String,
    pub processor: String,
    #[serde(default)]
    pub config: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_params: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_params: Option<String>,
    /// Kill a task after this long; `0` means no limit.
    #[serde(default)]
    pub task_timeout_ms: u64,
    /// The job is a map or map-reduce: its tasks may emit sub-tasks.
    #[serde(default)]
    pub map: bool,
    /// For the `container` processor: the container and the entry it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::ContainerJob>,
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStop {
    pub master: String,
    pub instance_id: i64,
    pub attempt: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBatchAck {
    pub accepted: u32,
}

/// How one attempt of a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: u64,
    pub attempt: u32,
    pub success: bool,
    #[serde(default)]
    pub result: String,
}

/// Sub-tasks a task emitted (`ctx.map(payloads, name)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMap {
    /// The task that emitted them, and its attempt: the master takes them only while that
    /// attempt runs on the sender, so that a task run again does not emit its children twice.
    pub parent: u64,
    pub parent_attempt: u32,
    pub name: String,
    pub payloads: Vec<String>,
}

/// `rota.app.{app}.wrk.{master}.task_report`: results, sub-tasks and log lines of a task
/// worker's tasks, answered with [`TaskReportAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The worker that ran them, which must be the one that sealed it.
    pub worker_id: String,
    pub instance_id: i64,
    pub attempt: i32,
    /// Rises with every report a worker sends about one attempt, from 1; a report sent again
    /// (its answer was lost) carries the same number, and the master applies it once.
    pub seq: u64,
    #[serde(default)]
    pub results: Vec<TaskResult>,
    #[serde(default)]
    pub maps: Vec<TaskMap>,
    /// The tasks' log lines, which the master adds to the instance's log (the server takes an
    /// instance's log only from the worker it dispatched the instance to).
    #[serde(default)]
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReportAck {
    /// The attempt is over at the master: drop its tasks.
    pub stop: bool,
}

/// Where a task stands at its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for a worker (new, or to be run again).
    Pending,
    /// Given to a worker, which has not answered yet.
    Running,
    Succeeded,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One task as `rota instance tasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: u64,
    pub name: String,
    pub status: TaskStatus,
    /// The worker of its current (or last) attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// How many times it was given out.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// `rota.app.{app}.wrk.{master}.task_list`: a server asks the master of an instance for a page
/// of its tasks, in id order after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskListRequest {
    pub instance_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    pub limit: u64,
}

/// The most tasks one page lists.
pub const MAX_TASK_PAGE: u64 = 1_000;

/// The most tasks one [`TaskBatch`], and the most results or emitted payloads one
/// [`TaskReport`], carries.
pub const MAX_TASKS_PER_MESSAGE: usize = 2_000;
/// The most bytes of payloads one message carries, under the NATS payload limit with room for
/// the rest.
pub const MAX_TASK_BYTES_PER_MESSAGE: usize = 256 * 1024;
/// A task's payload or result.
pub const MAX_TASK_PAYLOAD_BYTES: usize = 64 * 1024;

/// Where an instance's tasks stand, carried by its reports and shown by `instance show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub running: u64,
    /// Each worker's share of the finished tasks, by worker id.
    #[serde(default)]
    pub workers: Vec<WorkerShare>,
}

/// The tasks one worker finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerShare {
    pub worker_id: String,
    pub succeeded: u64,
    pub failed: u64,
}

/// The most workers a [`TaskCounts`] lists.
pub const MAX_SHARES: usize = 1_000;

impl TaskCounts {
    /// Tasks neither succeeded nor failed yet (pending or running).
    pub fn unfinished(&self) -> u64 {
        self.total.saturating_sub(self.succeeded + self.failed)
    }
}

/// What happens to a task after one of its attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskNext {
    Succeeded,
    /// Run it again (on any worker; a broadcast task on its own).
    Retry,
    Failed,
}

/// The rule for a task whose attempt ended, `failures` being how many of its attempts failed,
/// this one included: a failure is run again while retries are left (`task_retries` runs after
/// the first failure), then counted failed. Attempts lost with their worker are not failures:
/// they use no retry.
pub fn after_task(success: bool, failures: u32, task_retries: u32) -> TaskNext {
    if success {
        TaskNext::Succeeded
    } else if failures <= task_retries {
        TaskNext::Retry
    } else {
        TaskNext::Failed
    }
}

/// The rule for an instance whose tasks all ended, where the processor has no last word (map,
/// sharding, and broadcast or map-reduce whose `post` or `reduce` keeps the default): it
/// succeeds when no task failed. The message counts the tasks.
pub fn verdict(counts: &TaskCounts) -> (bool, String) {
    if counts.failed == 0 {
        (true, format!("{} tasks succeeded", counts.succeeded))
    } else {
        (
            false,
            format!(
                "{} of {} tasks failed ({} succeeded)",
                counts.failed, counts.total, counts.succeeded
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_items_parse_in_index_order() {
        let items = parse_shards("2=c, 0=a,1=b").expect("valid items");
        assert_eq!(
            items
                .iter()
                .map(|i| (i.index, i.param.as_str()))
                .collect::<Vec<_>>(),
            vec![(0, "a"), (1, "b"), (2, "c")]
        );
        assert_eq!(parse_shards("0=").expect("an empty param")[0].param, "");
        assert!(matches!(parse_shards("a"), Err(ExecutionError::BadItem(_))));
        assert!(matches!(
            parse_shards("x=1"),
            Err(ExecutionError::BadItem(_))
        ));
    }

    #[test]
    fn shard_indexes_must_cover_zero_to_n_once() {
        let sharding = |text: &str| Execution::parse("sharding", Some(parse_shards(text)?));
        assert!(sharding("0=a,1=b").is_ok());
        assert_eq!(sharding("0=a,0=b"), Err(ExecutionError::Duplicate(0)));
        assert_eq!(
            sharding("0=a,2=b"),
            Err(ExecutionError::Gap {
                last: 1,
                missing: 1
            })
        );
        assert_eq!(sharding(""), Err(ExecutionError::Count));
        assert_eq!(
            Execution::parse("sharding", None),
            Err(ExecutionError::Count)
        );
        assert_eq!(
            Execution::parse("sharding", Some(shard_count(3))),
            Ok(Execution::Sharding {
                shards: shard_count(3)
            })
        );
    }

    #[test]
    fn executions_parse_by_name() {
        assert_eq!(
            Execution::parse("map-reduce", None),
            Ok(Execution::MapReduce)
        );
        assert_eq!(
            Execution::parse("Broadcast", None),
            Ok(Execution::Broadcast)
        );
        assert!(matches!(
            Execution::parse("fan-out", None),
            Err(ExecutionError::Unknown(_))
        ));
        assert!(!Execution::Standalone.is_distributed());
        assert!(Execution::Map.has_root() && !Execution::Broadcast.has_root());
        assert!(Execution::Broadcast.pins_tasks() && !Execution::Map.pins_tasks());
    }

    #[test]
    fn an_execution_is_a_tagged_object() {
        let json = serde_json::to_string(&Execution::Sharding {
            shards: shard_count(1),
        })
        .expect("serializes");
        assert_eq!(
            json,
            r#"{"type":"sharding","shards":[{"index":0,"param":""}]}"#
        );
        assert_eq!(
            serde_json::from_str::<Execution>(r#"{"type":"map_reduce"}"#).expect("reads"),
            Execution::MapReduce
        );
    }

    #[test]
    fn a_failed_task_is_retried_while_retries_are_left() {
        // The second argument counts the failures, this one included.
        assert_eq!(after_task(true, 0, 0), TaskNext::Succeeded);
        assert_eq!(after_task(false, 1, 0), TaskNext::Failed);
        assert_eq!(after_task(false, 1, 2), TaskNext::Retry);
        assert_eq!(after_task(false, 2, 2), TaskNext::Retry);
        assert_eq!(after_task(false, 3, 2), TaskNext::Failed);
        assert_eq!(after_task(true, 2, 2), TaskNext::Succeeded);
    }

    #[test]
    fn an_instance_succeeds_when_no_task_failed() {
        let mut counts = TaskCounts {
            total: 5,
            succeeded: 5,
            ..TaskCounts::default()
        };
        assert_eq!(verdict(&counts), (true, "5 tasks succeeded".to_owned()));
        counts.succeeded = 4;
        counts.failed = 1;
        assert_eq!(
            verdict(&counts),
            (false, "1 of 5 tasks failed (4 succeeded)".to_owned())
        );
        assert_eq!(counts.unfinished(), 0);
    }
}
