//! Size limits on every field of every message, so that no sender can make a receiver store or
//! hold more than it means to. A message is refused whole (`INVALID_ARGUMENT`) when a field is
//! over its limit: the sender is at fault, and nothing of it is kept.

use crate::ErrorBody;
use crate::admin::{JobRun, JobSpec};
use crate::message::{
    AcquireRequest, ClusterQuery, DispatchRequest, LogBatch, StatusReport, StatusReportBatch,
    WorkerHeartbeat,
};
use crate::subject::validate_token;
use crate::task::{
    Execution, MAX_SHARES, MAX_TASK_PAYLOAD_BYTES, MAX_TASKS_PER_MESSAGE, Task, TaskCall,
    TaskCounts, TaskReport,
};

/// Ids (worker, server): one subject token.
pub const MAX_ID_BYTES: usize = 128;
/// Tags on a worker or a job.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_BYTES: usize = 128;
/// Processors a worker announces, and a processor's name.
pub const MAX_PROCESSORS: usize = 256;
pub const MAX_PROCESSOR_BYTES: usize = 128;
/// Instances a heartbeat may list as running.
pub const MAX_RUNNING: usize = 10_000;
pub const MAX_VERSION_BYTES: usize = 64;
/// A status report's result message.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;
/// One log line's text; longer lines are cut by the worker before they are sent.
pub const MAX_LOG_LINE_BYTES: usize = 32 * 1024;
/// Log lines in one batch.
pub const MAX_LOG_LINES: usize = 10_000;
/// A job's processor configuration (a script, an HTTP request). The `shell` processor hands
/// the script to `sh -c` as one argument, and Linux takes no argument longer than 128 KiB.
pub const MAX_CONFIG_BYTES: usize = 120 * 1024;
/// A job's or an instance's parameters.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
/// Workers a job may name.
pub const MAX_DESIGNATED_WORKERS: usize = 256;

/// A message whose fields have limits.
pub trait Limited {
    /// `INVALID_ARGUMENT` naming the first field over its limit.
    fn check_limits(&self) -> Result<(), ErrorBody>;
}

fn too_long(field: &str, len: usize, max: usize) -> ErrorBody {
    ErrorBody::invalid(format!("{field} is {len} bytes; at most {max} are allowed"))
}

fn text(field: &str, value: &str, max: usize) -> Result<(), ErrorBody> {
    if value.len() > max {
        Err(too_long(field, value.len(), max))
    } else {
        Ok(())
    }
}

fn opt_text(field: &str, value: &Option<String>, max: usize) -> Result<(), ErrorBody> {
    value.as_deref().map_or(Ok(()), |v| text(field, v, max))
}

fn id(field: &str, value: &str) -> Result<(), ErrorBody> {
    validate_token(value).map_err(|e| ErrorBody::invalid(format!("{field}: {e}")))
}

fn list(
    field: &str,
    items: &[String],
    max_items: usize,
    max_bytes: usize,
) -> Result<(), ErrorBody> {
    if items.len() > max_items {
        return Err(ErrorBody::invalid(format!(
            "{field} has {} entries; at most {max_items} are allowed",
            items.len()
        )));
    }
    items.iter().try_for_each(|i| text(field, i, max_bytes))
}

impl Limited for AcquireRequest {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("worker_id", &self.worker_id)?;
        match &self.current_server {
            Some(s) => id("current_server", s),
            None => Ok(()),
        }
    }
}

impl Limited for WorkerHeartbeat {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("worker_id", &self.worker_id)?;
        list("tags", &self.tags, MAX_TAGS, MAX_TAG_BYTES)?;
        list(
            "processors",
            &self.processors,
            MAX_PROCESSORS,
            MAX_PROCESSOR_BYTES,
        )?;
        if self.attempts.len() > 2 * MAX_RUNNING {
            return Err(ErrorBody::invalid(format!(
                "attempts lists {} attempts; at most {} are allowed",
                self.attempts.len(),
                2 * MAX_RUNNING
            )));
        }
        text("incarnation", &self.incarnation, MAX_VERSION_BYTES)?;
        if self.held.len() > MAX_RUNNING {
            return Err(ErrorBody::invalid(format!(
                "held lists {} instances; at most {MAX_RUNNING} are allowed",
                self.held.len()
            )));
        }
        if self.running.len() > MAX_RUNNING {
            return Err(ErrorBody::invalid(format!(
                "running lists {} instances; at most {MAX_RUNNING} are allowed",
                self.running.len()
            )));
        }
        if self.containers.len() > MAX_PROCESSORS {
            return Err(ErrorBody::invalid(format!(
                "containers lists {} bundles; at most {MAX_PROCESSORS} are allowed",
                self.containers.len()
            )));
        }
        text("version", &self.version, MAX_VERSION_BYTES)
    }
}

impl Limited for StatusReport {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("worker_id", &self.worker_id)?;
        opt_text("result", &self.result, MAX_RESULT_BYTES)?;
        match &self.tasks {
            Some(counts) => counts.check_limits(),
            None => Ok(()),
        }
    }
}

impl Limited for TaskCounts {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        if self.workers.len() > MAX_SHARES {
            return Err(ErrorBody::invalid(format!(
                "task counts list {} workers; at most {MAX_SHARES} are allowed",
                self.workers.len()
            )));
        }
        self.workers
            .iter()
            .try_for_each(|w| id("tasks.workers.worker_id", &w.worker_id))
    }
}

impl Limited for Execution {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        self.validate()
            .map_err(|e| ErrorBody::invalid(e.to_string()))?;
        if let Execution::Sharding { shards } = self {
            for item in shards {
                text("a shard parameter", &item.param, MAX_PARAMS_BYTES)?;
            }
        }
        Ok(())
    }
}

fn count(field: &str, len: usize, max: usize) -> Result<(), ErrorBody> {
    if len > max {
        Err(ErrorBody::invalid(format!(
            "{field} has {len} entries; at most {max} are allowed"
        )))
    } else {
        Ok(())
    }
}

fn task(t: &Task) -> Result<(), ErrorBody> {
    text("a task's name", &t.name, MAX_PROCESSOR_BYTES)?;
    text("a task's payload", &t.payload, MAX_TASK_PAYLOAD_BYTES)?;
    match &t.shard {
        Some(shard) => text("a shard parameter", &shard.param, MAX_PARAMS_BYTES),
        None => Ok(()),
    }
}

impl Limited for TaskCall {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        match self {
            TaskCall::Run(batch) => {
                id("master", &batch.master)?;
                text("job_name", &batch.job_name, 1024)?;
                text("processor", &batch.processor, MAX_PROCESSOR_BYTES)?;
                text("config", &batch.config, MAX_CONFIG_BYTES)?;
                opt_text("job_params", &batch.job_params, MAX_PARAMS_BYTES)?;
                opt_text("instance_params", &batch.instance_params, MAX_PARAMS_BYTES)?;
                count("tasks", batch.tasks.len(), MAX_TASKS_PER_MESSAGE)?;
                batch.tasks.iter().try_for_each(task)
            }
            TaskCall::Stop(stop) => id("master", &stop.master),
        }
    }
}

impl Limited for TaskReport {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("worker_id", &self.worker_id)?;
        count("results", self.results.len(), MAX_TASKS_PER_MESSAGE)?;
        count("logs", self.logs.len(), MAX_LOG_LINES)?;
        let payloads: usize = self.maps.iter().map(|m| m.payloads.len()).sum();
        count("maps", payloads, MAX_TASKS_PER_MESSAGE)?;
        for r in &self.results {
            text("a task's result", &r.result, MAX_TASK_PAYLOAD_BYTES)?;
        }
        for m in &self.maps {
            text("a task's name", &m.name, MAX_PROCESSOR_BYTES)?;
            for p in &m.payloads {
                text("a task's payload", p, MAX_TASK_PAYLOAD_BYTES)?;
            }
        }
        self.logs
            .iter()
            .try_for_each(|l| text("a log line", &l.text, MAX_LOG_LINE_BYTES + 64))
    }
}

impl Limited for StatusReportBatch {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        if self.reports.len() > crate::message::MAX_REPORTS_PER_BATCH {
            return Err(ErrorBody::invalid(format!(
                "a report batch may carry at most {} reports",
                crate::message::MAX_REPORTS_PER_BATCH
            )));
        }
        self.reports.iter().try_for_each(Limited::check_limits)
    }
}

impl Limited for LogBatch {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("worker_id", &self.worker_id)?;
        if self.lines.len() > MAX_LOG_LINES {
            return Err(ErrorBody::invalid(format!(
                "a log batch may carry at most {MAX_LOG_LINES} lines"
            )));
        }
        // The worker cuts long lines and marks the cut; the margin leaves room for the mark.
        self.lines
            .iter()
            .try_for_each(|l| text("a log line", &l.text, MAX_LOG_LINE_BYTES + 64))
    }
}

impl Limited for ClusterQuery {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        Ok(())
    }
}

impl Limited for DispatchRequest {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        id("server_id", &self.server_id)?;
        text("job_name", &self.job_name, 1024)?;
        text("processor", &self.processor, MAX_PROCESSOR_BYTES)?;
        text("config", &self.config, MAX_CONFIG_BYTES)?;
        opt_text("job_params", &self.job_params, MAX_PARAMS_BYTES)?;
        opt_text("instance_params", &self.instance_params, MAX_PARAMS_BYTES)?;
        self.execution.check_limits()
    }
}

impl Limited for JobSpec {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        text("description", &self.description, MAX_DESCRIPTION_BYTES)?;
        text("processor", &self.processor, MAX_PROCESSOR_BYTES)?;
        text("config", &self.config, MAX_CONFIG_BYTES)?;
        opt_text("params", &self.params, MAX_PARAMS_BYTES)?;
        list("tags", &self.tags, MAX_TAGS, MAX_TAG_BYTES)?;
        list(
            "designated_workers",
            &self.designated_workers,
            MAX_DESIGNATED_WORKERS,
            MAX_ID_BYTES,
        )?;
        self.execution.check_limits()
    }
}

impl Limited for JobRun {
    fn check_limits(&self) -> Result<(), ErrorBody> {
        opt_text("params", &self.params, MAX_PARAMS_BYTES)?;
        match &self.idempotency_key {
            Some(key) => idempotency_key(key),
            None => Ok(()),
        }
    }
}

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// An idempotency key: 1 to 128 characters of letters, digits and `-_.:` (a UUID, a fire
/// time, a caller's request id).
fn idempotency_key(key: &str) -> Result<(), ErrorBody> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !key.chars().all(allowed) {
        return Err(ErrorBody::invalid(format!(
            "idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} letters, digits or -_.: \
             characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::message::SystemMetrics;

    fn heartbeat() -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: "w1".into(),
            tags: vec![],
            processors: vec!["shell".into()],
            capacity: 4,
            running: vec![],
            held: vec![],
            attempts: vec![],
            incarnation: String::new(),
            metrics: SystemMetrics::default(),
            version: "0.1.0".into(),
            dropped_log_lines: 0,
            containers: Vec::new(),
        }
    }

    #[test]
    fn fields_over_their_limits_are_refused() {
        assert!(heartbeat().check_limits().is_ok());
        let bad = [
            WorkerHeartbeat {
                worker_id: "w.1".into(),
                ..heartbeat()
            },
            WorkerHeartbeat {
                tags: vec!["t".into(); MAX_TAGS + 1],
                ..heartbeat()
            },
            WorkerHeartbeat {
                processors: vec!["p".repeat(MAX_PROCESSOR_BYTES + 1)],
                ..heartbeat()
            },
            WorkerHeartbeat {
                running: vec![1; MAX_RUNNING + 1],
                held: vec![],
                attempts: vec![],
                incarnation: String::new(),
                ..heartbeat()
            },
            WorkerHeartbeat {
                version: "v".repeat(MAX_VERSION_BYTES + 1),
                ..heartbeat()
            },
        ];
        for hb in bad {
            assert_eq!(
                hb.check_limits().unwrap_err().code,
                ErrorCode::InvalidArgument
            );
        }
        let run = JobRun {
            id: 1,
            params: Some("x".repeat(MAX_PARAMS_BYTES + 1)),
            delay_ms: 0,
            idempotency_key: None,
        };
        assert!(run.check_limits().is_err());
    }
}
