//! Example processors, one for each way of spreading a job's work (see [`Processor`]). They
//! compute and echo; none runs user code, so a worker may offer them without risk: `rota
//! worker --demo-processors` registers them under the names below, for trying distributed
//! execution, for the benchmarks and for the end-to-end tests.
//!
//! - `demo-sum-squares` ([`SumOfSquares`], map-reduce): the sum of the squares of 1..=N.
//! - `demo-broadcast` ([`Broadcast`]): every worker says who it is; `post` lists them.
//! - `demo-shard` ([`ShardEcho`], sharding): each item says its index, total and parameter.
//! - `demo-flaky` ([`Flaky`], map): sub-tasks that succeed or fail as their payload says.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::context::TaskContext;
use crate::processor::{ProcessResult, Processor, ProcessorRegistry, by_counts};
use crate::task_store::TaskResults;

/// Registers every example processor under its `demo-` name.
pub fn register(registry: &mut ProcessorRegistry) {
    registry
        .register("demo-sum-squares", SumOfSquares)
        .register("demo-broadcast", Broadcast)
        .register("demo-shard", ShardEcho)
        .register("demo-flaky", Flaky);
}

/// The parameters of an instance: its own, else the job's.
fn params(ctx: &TaskContext) -> &str {
    ctx.instance_params
        .as_deref()
        .or(ctx.job_params.as_deref())
        .unwrap_or("")
        .trim()
}

/// A map-reduce: the sum of the squares of 1..=N.
///
/// Parameters `N` map N `square` sub-tasks from the root; `N/R` map ranges of R numbers
/// (`range` sub-tasks), each of which maps its own `square` sub-tasks: a map of two levels.
/// The configuration `sleep_ms=M` makes each square take M ms. `reduce` adds the squares up.
#[derive(Debug, Clone, Copy)]
pub struct SumOfSquares;

/// Sub-tasks emitted per `map` call, so that a million numbers are never all in memory.
const MAP_CHUNK: u64 = 10_000;

fn sleep_of(config: &str) -> Duration {
    config
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("sleep_ms="))
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

async fn map_numbers(ctx: &TaskContext, from: u64, to: u64) -> Result<(), String> {
    let mut start = from;
    while start <= to {
        let end = (start + MAP_CHUNK - 1).min(to);
        ctx.map((start..=end).map(|n| n.to_string()), "square")
            .await
            .map_err(|e| e.to_string())?;
        start = end + 1;
    }
    Ok(())
}

impl Processor for SumOfSquares {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        async move {
            let outcome = match ctx.task.name.as_str() {
                "square" => match ctx.task.payload.parse::<u64>() {
                    Ok(n) => {
                        let sleep = sleep_of(&ctx.config);
                        if !sleep.is_zero() {
                            tokio::time::sleep(sleep).await;
                        }
                        return ProcessResult::ok((n * n).to_string());
                    }
                    Err(_) => Err(format!("not a number: {:?}", ctx.task.payload)),
                },
                "range" => match ctx.task.payload.split_once('-') {
                    Some((a, b)) => match (a.parse(), b.parse()) {
                        (Ok(a), Ok(b)) => map_numbers(&ctx, a, b).await,
                        _ => Err(format!("not a range: {:?}", ctx.task.payload)),
                    },
                    None => Err(format!("not a range: {:?}", ctx.task.payload)),
                },
                _ if ctx.is_root() => {
                    let text = params(&ctx).to_owned();
                    let (n, range) = match text.split_once('/') {
                        Some((n, r)) => (n.parse::<u64>(), r.parse::<u64>().map(Some)),
                        None => (text.parse::<u64>(), Ok(None)),
                    };
                    match (n, range) {
                        (Ok(n), Ok(None)) => map_numbers(&ctx, 1, n).await,
                        (Ok(n), Ok(Some(r))) if r > 0 => {
                            let ranges = (0..n.div_ceil(r))
                                .map(|i| format!("{}-{}", i * r + 1, ((i + 1) * r).min(n)));
                            ctx.map(ranges, "range").await.map_err(|e| e.to_string())
                        }
                        _ => Err(format!("parameters must be N or N/R, not {text:?}")),
                    }
                }
                other => Err(format!("unknown task {other:?}")),
            };
            match outcome {
                Ok(()) => ProcessResult::ok("mapped"),
                Err(e) => ProcessResult::failed(e),
            }
        }
        .boxed()
    }

    fn reduce(&self, ctx: TaskContext, results: TaskResults) -> BoxFuture<'static, ProcessResult> {
        async move {
            if results.counts().failed > 0 {
                return by_counts(&results);
            }
            let mut sum: u128 = 0;
            let mut squares = 0u64;
            for output in results.try_iter() {
                let output = match output {
                    Ok(output) => output,
                    Err(e) => return ProcessResult::failed(e.to_string()),
                };
                if output.name == "square" {
                    match output.result.parse::<u128>() {
                        Ok(v) => sum += v,
                        Err(_) => {
                            return ProcessResult::failed(format!(
                                "task {} returned {:?}",
                                output.id, output.result
                            ));
                        }
                    }
                    squares += 1;
                }
            }
            ctx.info(format!("reduced {squares} squares"));
            ProcessResult::ok(format!("sum={sum}"))
        }
        .boxed()
    }
}

/// A broadcast: `pre` says it starts, each worker's task returns the worker's id, and `post`
/// lists the workers in order of their index.
#[derive(Debug, Clone, Copy)]
pub struct Broadcast;

impl Processor for Broadcast {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        async move {
            let (index, total) = ctx.shard().map_or((0, 1), |s| (s.index, s.total));
            ctx.info(format!("broadcast task {index} of {total}"));
            ProcessResult::ok(ctx.worker_id.clone())
        }
        .boxed()
    }

    fn pre(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        async move {
            ctx.info("broadcast pre on the master");
            ProcessResult::ok("")
        }
        .boxed()
    }

    fn post(&self, _ctx: TaskContext, results: TaskResults) -> BoxFuture<'static, ProcessResult> {
        async move {
            if results.counts().failed > 0 {
                return by_counts(&results);
            }
            let mut workers: Vec<String> = results.iter().map(|o| o.result).collect();
            workers.sort();
            ProcessResult::ok(format!("post saw {}: {}", workers.len(), workers.join(",")))
        }
        .boxed()
    }
}

/// A sharding job's item: returns `INDEX/TOTAL=PARAM`.
#[derive(Debug, Clone, Copy)]
pub struct ShardEcho;

impl Processor for ShardEcho {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        async move {
            match ctx.shard() {
                Some(s) => ProcessResult::ok(format!("{}/{}={}", s.index, s.total, s.param)),
                None => ProcessResult::failed("not a sharding job"),
            }
        }
        .boxed()
    }
}

/// A map whose root emits one sub-task per comma-separated word of its parameters: `ok`
/// succeeds, `fail` fails every time (naming its attempt), `fail-once` fails its first attempt.
#[derive(Debug, Clone, Copy)]
pub struct Flaky;

impl Processor for Flaky {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        async move {
            if ctx.is_root() {
                let words: Vec<String> = params(&ctx)
                    .split(',')
                    .map(|w| w.trim().to_owned())
                    .filter(|w| !w.is_empty())
                    .collect();
                return match ctx.map(words, "word").await {
                    Ok(()) => ProcessResult::ok("mapped"),
                    Err(e) => ProcessResult::failed(e.to_string()),
                };
            }
            let attempt = ctx.task.attempt;
            match ctx.task.payload.as_str() {
                "ok" => ProcessResult::ok(format!("ok on attempt {attempt}")),
                "fail-once" if attempt > 1 => ProcessResult::ok(format!("ok on attempt {attempt}")),
                _ => ProcessResult::failed(format!("failed on attempt {attempt}")),
            }
        }
        .boxed()
    }
}
