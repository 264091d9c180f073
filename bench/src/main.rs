//! `rota-bench`: Rota's benchmark harness (see BENCHMARKS.md).
//!
//! Every scenario runs against a private nats-server and a fresh database (SQLite or
//! PostgreSQL), as the test suite does. Scenarios that measure one component's CPU or memory run
//! that component as its own `rota` process.
#![forbid(unsafe_code)]

mod scenarios;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rota-bench", about = "Rota's benchmark harness")]
struct Cli {
    /// Database: sqlite or postgres.
    #[arg(long, default_value = "sqlite", global = true)]
    db: String,
    /// Append each result, as one JSON line, to this file.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// The `rota` binary, for scenarios that run a component as a process (default: next to
    /// this binary).
    #[arg(long, global = true)]
    rota_bin: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// API-triggered no-op jobs at a fixed offered rate: trigger→start and trigger→stored.
    Latency {
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Load offered first, at the same rate, and left out of the figures: the database
        /// pool's connections and their prepared statements are made then.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// The highest sustained rate of no-op instances completed end to end.
    Throughput {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Instances triggered but not yet started, at most.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
    },
    /// N enabled CRON jobs (each once a minute, spread over the seconds): start lateness, and
    /// the server's CPU and peak memory.
    Cron {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 70)]
        seconds: u64,
    },
    /// N CRON jobs firing every second on W workers, server and workers with their default
    /// settings: start lateness, refusals (fires handed over more than once) and each worker's
    /// share.
    EverySecond {
        #[arg(long, default_value_t = 20)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Processes that keep a core busy each while the scenario runs.
        #[arg(long, default_value_t = 0)]
        hogs: usize,
    },
    /// N simulated workers heartbeating once a period (the worker's default, 3 s): the
    /// server's CPU, and whether any is counted not live.
    Heartbeat {
        #[arg(long, default_value_t = 1_000)]
        workers: usize,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        period: Duration,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// An idle `rota worker` process's resident memory.
    Footprint,
    /// A map-reduce of N no-op sub-tasks (the example `demo-sum-squares`) over W `rota worker`
    /// processes: tasks per second end to end, and the master's peak resident memory.
    Mapreduce {
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
}

/// mimalloc instead of the system allocator: the hot paths allocate many small, short-lived
/// buffers (messages, rows), which glibc's malloc serves markedly slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let backend = match cli.db.as_str() {
        "sqlite" => rota_tests::db::Backend::Sqlite,
        "postgres" => rota_tests::db::Backend::Postgres,
        "mysql" => rota_tests::db::Backend::Mysql,
        other => anyhow::bail!("unknown --db {other:?}: use sqlite, postgres or mysql"),
    };
    let rota_bin = match cli.rota_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("rota"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate the rota binary; pass --rota-bin"))?,
    };
    let env = scenarios::Env { backend, rota_bin };
    let result = match cli.scenario {
        Scenario::Latency {
            rate,
            seconds,
            warmup,
        } => scenarios::latency(&env, rate, seconds, warmup).await?,
        Scenario::Throughput { seconds, in_flight } => {
            scenarios::throughput(&env, seconds, in_flight).await?
        }
        Scenario::Cron { jobs, seconds } => scenarios::cron(&env, jobs, seconds).await?,
        Scenario::Mapreduce { tasks, workers } => {
            scenarios::mapreduce(&env, tasks, workers).await?
        }
        Scenario::EverySecond {
            jobs,
            workers,
            seconds,
            hogs,
        } => scenarios::every_second(&env, jobs, workers, seconds, hogs).await?,
        Scenario::Heartbeat {
            workers,
            period,
            seconds,
        } => scenarios::heartbeat(&env, workers, period, seconds).await?,
        Scenario::Footprint => scenarios::footprint(&env).await?,
    };
    let line = serde_json::to_string(&result)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(path) = cli.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}
