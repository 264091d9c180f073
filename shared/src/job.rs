//! A job: what it runs, when, where and with which limits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schedule::{Lifecycle, Schedule};
use crate::task::Execution;

/// What happens to a fire when the job already has `max_instances` live instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// The new instance ends CANCELED with a reason; nothing waits.
    #[default]
    Skip,
    /// The new instance waits until a slot is free.
    Queue,
}

/// How a worker is picked among the eligible ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchStrategy {
    #[default]
    HealthFirst,
    Random,
    RoundRobin,
}

impl DispatchStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HealthFirst => "health_first",
            Self::Random => "random",
            Self::RoundRobin => "round_robin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.replace('-', "_").to_ascii_lowercase().as_str() {
            "health_first" => Some(Self::HealthFirst),
            "random" => Some(Self::Random),
            "round_robin" => Some(Self::RoundRobin),
            _ => None,
        }
    }
}

impl OverlapPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Queue => "queue",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "skip" => Some(Self::Skip),
            "queue" => Some(Self::Queue),
            _ => None,
        }
    }
}

/// What a CRON or one-shot job does about fires that were missed while no server scheduled its
/// app (every server was down, or the database was unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// One instance for all the missed fires, now.
    #[default]
    FireOnce,
    /// No instance for the missed fires; the schedule resumes from now.
    Skip,
    /// One instance for each of the most recent `max` missed fires.
    CatchUp { max: u32 },
}

impl MisfirePolicy {
    pub fn as_text(self) -> String {
        match self {
            Self::FireOnce => "fire_once".to_owned(),
            Self::Skip => "skip".to_owned(),
            Self::CatchUp { max } => format!("catch_up:{max}"),
        }
    }

    /// Parses `fire_once`, `skip` or `catch_up:N`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().replace('-', "_").to_ascii_lowercase().as_str() {
            "fire_once" => Some(Self::FireOnce),
            "skip" => Some(Self::Skip),
            other => other
                .strip_prefix("catch_up:")
                .and_then(|n| n.parse().ok())
                .map(|max| Self::CatchUp { max }),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_retry_delay_ms() -> u64 {
    10_000
}

/// Everything that defines a job: the one definition the CLI fills, the wire carries, the
/// server schedules and dispatches by and the store keeps. The app a job belongs to and the
/// server's bookkeeping (id, next fire, times) are outside it.
///
/// A field added here needs a `serde` default, so that jobs stored before it existed still read,
/// and a CLI flag; the store keeps every field without being told of it (see
/// `server/src/store/jobs.rs`), and `job update` changes it as a JSON merge patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub schedule: Schedule,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Name of the processor in the worker's registry (`shell`, `http`, or a user's).
    pub processor: String,
    /// The processor's configuration: a script for `shell`, a JSON request for `http`.
    #[serde(default)]
    pub config: String,
    /// Parameters every instance of the job gets. Written as `null` when absent, so that every
    /// field appears in the JSON form and a merge patch can name it.
    #[serde(default)]
    pub params: Option<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Live instances at most; `0` means no limit.
    #[serde(default)]
    pub max_instances: u32,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    /// Runs after the first that a failing instance gets.
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default = "default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// Kill a run after this long; `0` means no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub dispatch: DispatchStrategy,
    /// A worker must carry all of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// If not empty, only these workers may run the job.
    #[serde(default)]
    pub designated_workers: Vec<String>,
    #[serde(default)]
    pub misfire: MisfirePolicy,
    /// How an instance's work is spread over the app's workers (standalone: one worker).
    #[serde(default)]
    pub execution: Execution,
    /// Runs after the first that a failing task of a distributed instance gets.
    #[serde(default)]
    pub task_retries: u32,
    /// For the `container` processor: the container and the entry it runs.
    #[serde(default)]
    pub container: Option<crate::container::ContainerJob>,
}

/// Why a merge patch does not make a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("a job has no field {0:?}")]
    UnknownField(String),
    #[error("invalid job: {0}")]
    Invalid(String),
}

impl JobSpec {
    /// The job as a JSON object with every field present.
    pub fn to_object(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // A struct of strings, numbers, lists and enums always serializes to an object.
            _ => unreachable!("a JobSpec serializes to a JSON object"),
        }
    }

    /// The job read back from [`JobSpec::to_object`]'s form, with defaults for missing fields.
    pub fn from_object(object: Map<String, Value>) -> Result<Self, PatchError> {
        serde_json::from_value(Value::Object(object))
            .map_err(|e| PatchError::Invalid(e.to_string()))
    }

    /// This job with `changes` applied: a field given replaces the job's whole value (a new
    /// schedule or lifecycle is taken as given, not merged into the old one), and `null` resets
    /// it to its default. A field the job does not have is refused rather than ignored, so that a
    /// misspelt change is not silently lost.
    pub fn patched(&self, changes: &Map<String, Value>) -> Result<Self, PatchError> {
        let mut object = self.to_object();
        for (key, value) in changes {
            if !object.contains_key(key) {
                return Err(PatchError::UnknownField(key.clone()));
            }
            if value.is_null() {
                object.remove(key);
            } else {
                object.insert(key.clone(), value.clone());
            }
        }
        Self::from_object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> JobSpec {
        JobSpec::from_object(
            json!({"name": "j", "schedule": {"type": "api"}, "processor": "shell",
                   "params": "p", "lifecycle": {"start_ms": 5, "end_ms": 9}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        )
        .expect("a minimal job reads")
    }

    #[test]
    fn missing_fields_take_their_defaults() {
        let job = spec();
        assert!(job.enabled);
        assert_eq!(job.retry_delay_ms, 10_000);
        assert_eq!(job.misfire, MisfirePolicy::FireOnce);
        assert_eq!(job.params.as_deref(), Some("p"));
    }

    #[test]
    fn every_field_appears_in_the_object_form() {
        let object = spec().to_object();
        let mut none = spec();
        none.params = None;
        assert!(none.to_object().contains_key("params"));
        assert_eq!(JobSpec::from_object(object).expect("round trip"), spec());
    }

    #[test]
    fn a_patch_replaces_and_resets() {
        let patch = json!({"max_retries": 3, "params": null, "lifecycle": {"start_ms": 5},
                           "overlap": "queue"});
        let job = spec()
            .patched(patch.as_object().expect("an object"))
            .expect("a valid patch");
        assert_eq!(job.max_retries, 3);
        assert_eq!(job.params, None);
        assert_eq!(job.overlap, OverlapPolicy::Queue);
        assert_eq!(
            job.lifecycle,
            Lifecycle {
                start_ms: Some(5),
                end_ms: None
            },
            "a value given replaces the old one whole"
        );
        assert_eq!(job.name, "j", "fields not in the patch are kept");
    }

    #[test]
    fn a_patch_with_an_unknown_or_mistyped_field_is_refused() {
        let unknown = json!({"max_retry": 3});
        assert_eq!(
            spec().patched(unknown.as_object().expect("an object")),
            Err(PatchError::UnknownField("max_retry".into()))
        );
        let mistyped = json!({"max_retries": "three"});
        assert!(matches!(
            spec().patched(mistyped.as_object().expect("an object")),
            Err(PatchError::Invalid(_))
        ));
    }
}
