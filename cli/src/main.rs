//! `rota`: the one binary users run.
#![forbid(unsafe_code)]

mod admin;
mod args;
mod config;
mod container;
mod duration;
mod nats_config;
mod preview;
mod run;
mod table;
mod usage;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::args::{Cli, Command, ServerCommand, WorkerCommand};
use crate::config::{FileConfig, Settings};

/// mimalloc instead of the system allocator: the hot paths allocate many small, short-lived
/// buffers (messages, rows), which glibc's malloc serves markedly slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // One line: clap's first line names the problem; usage is one `--help` away.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("{} (see rota --help)", message.join(" "));
            return ExitCode::from(2);
        }
    };
    let long_running = matches!(
        &cli.command,
        Command::Dev(_)
            | Command::Server(args::ServerArgs { list: None, .. })
            | Command::Worker(args::WorkerArgs { list: None, .. })
    );
    // The file first: it may say how to log. Its error is the one line a bad file gets.
    let file = match &cli.global.config {
        Some(path) => match config::load_file(path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => FileConfig::default(),
    };
    let format = cli
        .global
        .log_format
        .or(file.log_format)
        .unwrap_or(args::LogFormat::Text);
    init_tracing(long_running, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            if e.downcast_ref::<usage::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(long_running: bool, format: args::LogFormat) {
    let default = if long_running {
        "info,sea_orm_migration=warn,async_nats=warn"
    } else {
        // A command's failure is its one error line; async-nats' own log of it would be a
        // second.
        "warn,async_nats=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // One JSON object a line, for log collectors; the span's fields go with each event.
        args::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        // Colours only for a person watching a terminal, never in a file or a pipe.
        args::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

async fn run(cli: Cli, file: FileConfig) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.global, &file);
    let database_given = cli.global.database_url.is_some() || file.database_url.is_some();
    match cli.command {
        Command::Server(args) => match args.list {
            Some(ServerCommand::List) => admin::servers(&settings).await,
            Some(ServerCommand::Stats) => admin::server_stats(&settings).await,
            None => run::server(&settings, &file, args).await,
        },
        Command::Worker(args) => match args.list {
            Some(WorkerCommand::List { app, paging }) => {
                admin::workers(&settings, app, paging).await
            }
            None => run::worker(&settings, &file, args).await,
        },
        Command::Dev(args) => run::dev(&settings, args).await,
        Command::App(cmd) => admin::app(&settings, cmd).await,
        Command::Job(cmd) => admin::job(&settings, *cmd).await,
        Command::Instance(cmd) => admin::instance(&settings, cmd).await,
        Command::Logs(args) => admin::logs(&settings, args).await,
        Command::Container(cmd) => container::run(&settings, cmd).await,
        Command::Token(cmd) => admin::token_command(&settings, database_given, cmd).await,
        Command::Schedule(cmd) => preview::run(&settings, cmd),
        Command::NatsConfig(args) => {
            let subjects = rota_shared::Subjects::new(&settings.prefix)?;
            print!("{}", nats_config::render(&subjects, &args.apps)?);
            Ok(())
        }
    }
}
