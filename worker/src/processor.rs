//! The `Processor` trait users implement, and the registry that names processors.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::context::TaskContext;
use crate::task_store::TaskResults;

/// What a processor's run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessResult {
    pub success: bool,
    /// The result message the server records for the instance.
    pub message: String,
}

impl ProcessResult {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            success: true,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            success: false,
            message: message.into(),
        }
    }
}

/// A unit of work a worker can run, registered by name in a [`ProcessorRegistry`].
///
/// The returned future should watch [`TaskContext::cancellation`]: it is cancelled on timeout
/// and on stop, and a future that does not end soon after is dropped.
///
/// A job's execution decides which methods run, and where:
/// - **standalone**: `process` once, on the worker the instance was dispatched to;
/// - **broadcast**: `pre` on the master, then `process` once on every eligible worker (the
///   context's [`TaskContext::shard`] says which of how many), then `post` on the master over
///   every result;
/// - **map**: `process` for the root task on the master ([`TaskContext::is_root`]), which emits
///   sub-tasks with [`TaskContext::map`]; `process` again for each sub-task on any worker (its
///   name and payload in [`TaskContext::task`]), which may emit more;
/// - **map-reduce**: a map, then `reduce` on the master over every task's result;
/// - **sharding**: `process` once per shard item, on any worker, with its index, the total and
///   its parameter in [`TaskContext::shard`].
///
/// The instance's result is what the last step returns: `reduce`, `post`, or for map and
/// sharding the counts of the tasks (it succeeds when none failed). The defaults of `reduce`
/// and `post` apply that same rule, and `pre` succeeds.
pub trait Processor: Send + Sync + 'static {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult>;

    /// Map-reduce: runs on the master once every task ended, over their results.
    fn reduce(&self, _ctx: TaskContext, results: TaskResults) -> BoxFuture<'static, ProcessResult> {
        std::future::ready(by_counts(&results)).boxed()
    }

    /// Broadcast: runs on the master before the tasks; a failure ends the instance FAILED and
    /// no task runs.
    fn pre(&self, _ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        std::future::ready(ProcessResult::ok("")).boxed()
    }

    /// Broadcast: runs on the master once every worker's task ended, over their results.
    fn post(&self, _ctx: TaskContext, results: TaskResults) -> BoxFuture<'static, ProcessResult> {
        std::future::ready(by_counts(&results)).boxed()
    }
}

/// The instance's result by the counts of its tasks: it succeeds when none failed.
pub fn by_counts(results: &TaskResults) -> ProcessResult {
    let (success, message) = rota_shared::task::verdict(results.counts());
    ProcessResult { success, message }
}

/// A processor made of an async function or closure.
struct FnProcessor<F>(F);

impl<F, Fut> Processor for FnProcessor<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ProcessResult> + Send + 'static,
{
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        (self.0)(ctx).boxed()
    }
}

/// Turns an async function `TaskContext -> ProcessResult` into a [`Processor`].
pub fn processor_fn<F, Fut>(f: F) -> impl Processor
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ProcessResult> + Send + 'static,
{
    FnProcessor(f)
}

/// The processors a worker offers, by name.
#[derive(Default, Clone)]
pub struct ProcessorRegistry {
    processors: HashMap<String, Arc<dyn Processor>>,
}

impl ProcessorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `processor` as `name`, replacing any processor of that name.
    pub fn register(&mut self, name: impl Into<String>, processor: impl Processor) -> &mut Self {
        self.processors.insert(name.into(), Arc::new(processor));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.processors.keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn Processor>> {
        self.processors.get(name).cloned()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.processors.contains_key(name)
    }
}

impl fmt::Debug for ProcessorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorRegistry")
            .field("names", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::test_context;

    #[tokio::test]
    async fn registry_names_and_runs_processors() {
        let mut registry = ProcessorRegistry::new();
        registry
            .register(
                "echo",
                processor_fn(|ctx: TaskContext| async move { ProcessResult::ok(ctx.config) }),
            )
            .register(
                "fail",
                processor_fn(|_ctx: TaskContext| async { ProcessResult::failed("no") }),
            );
        assert_eq!(registry.names(), vec!["echo", "fail"]);
        assert!(registry.contains("echo"));
        assert!(registry.get("missing").is_none());

        let (ctx, _logs) = test_context("hello");
        let echo = registry.get("echo").unwrap();
        assert_eq!(echo.process(ctx).await, ProcessResult::ok("hello"));

        // A clone shares the processors but registers on its own.
        let mut clone = registry.clone();
        clone.register("more", processor_fn(|_| async { ProcessResult::ok("") }));
        assert_eq!(registry.names().len(), 2);
        assert_eq!(clone.names().len(), 3);
    }
}
