//! The command line.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rota",
    version,
    about = "Rota: a distributed job scheduler over NATS",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes. Precedence: flag, then environment, then the TOML file.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// NATS server URL(s), comma-separated; `nats://user:pass@host` and `tls://` work too.
    #[arg(long, global = true, env = "ROTA_NATS_URL")]
    pub nats_url: Option<String>,
    /// The admin token admin commands are sealed with (`rota token create` makes one).
    #[arg(long, global = true, env = "ROTA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Subject prefix shared by a deployment (default "rota").
    #[arg(long, global = true, env = "ROTA_PREFIX")]
    pub prefix: Option<String>,
    /// Database URL: sqlite://file.db, postgres://…, mysql://…
    #[arg(long, global = true, env = "ROTA_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A TOML configuration file.
    #[arg(long, global = true, env = "ROTA_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Send admin requests to this server rather than to any server.
    #[arg(long, global = true, env = "ROTA_SERVER")]
    pub server: Option<String>,
    /// Print the reply's data as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines as text (coloured only on a terminal) or as JSON objects, one a line.
    #[arg(long, global = true, env = "ROTA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long to wait for a server's answer to an admin request, e.g. 5s (default 15s).
    #[arg(long, global = true, env = "ROTA_REQUEST_TIMEOUT", value_parser = crate::duration::parse_ms)]
    pub request_timeout: Option<u64>,
    // Last: its help heading applies to what follows it.
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How to log in to NATS. At most one of user and password, token, NKey and credentials file;
/// TLS options go with any of them.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "NATS login (global)")]
pub struct NatsArgs {
    /// NATS user (with --nats-password).
    #[arg(long, global = true, env = "ROTA_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        global = true,
        env = "ROTA_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, global = true, env = "ROTA_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// A file holding an NKey seed.
    #[arg(long, global = true, env = "ROTA_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<std::path::PathBuf>,
    /// A credentials file (user JWT and NKey seed).
    #[arg(long, global = true, env = "ROTA_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA certificates (PEM) to trust for NATS' certificate; turns TLS on.
    #[arg(long, global = true, env = "ROTA_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for a NATS that verifies clients; needs --nats-tls-key.
    #[arg(long, global = true, env = "ROTA_NATS_TLS_CERT", value_name = "FILE")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// The key of --nats-tls-cert.
    #[arg(long, global = true, env = "ROTA_NATS_TLS_KEY", value_name = "FILE")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scheduler server (`rota server list`: list the servers).
    Server(ServerArgs),
    /// Run a worker agent with the built-in processors (`rota worker list`: list workers).
    Worker(WorkerArgs),
    /// Try Rota: a private NATS server, a server, a worker and a demo job on SQLite.
    Dev(DevArgs),
    /// Apps: create, list.
    #[command(subcommand)]
    App(AppCommand),
    /// Jobs: create, update, list, show, run, enable, disable, delete.
    #[command(subcommand)]
    Job(Box<JobCommand>),
    /// Instances: list, show, stop, retry.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Show an instance's log.
    Logs(LogsArgs),
    /// Containers (versioned processor bundles): upload, list, deploy, destroy.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Admin tokens: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Schedules: preview the fire times of a CRON expression, as the scheduler computes them.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Print a nats-server authorization block with users for servers, administrators and
    /// each app's workers.
    NatsConfig(NatsConfigArgs),
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Record a version of a container: a directory or a .tar.gz with a rota-container.toml,
    /// uploaded to the deployment's NATS object store; or, with --url and --sha256, a bundle
    /// served over HTTP(S).
    #[command(disable_version_flag = true)]
    Upload {
        #[arg(long)]
        app: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The bundle: a directory (packed as a .tar.gz) or a .tar.gz.
        #[arg(conflicts_with = "url", required_unless_present = "url")]
        path: Option<std::path::PathBuf>,
        /// Where workers download the bundle instead.
        #[arg(long, requires = "sha256")]
        url: Option<String>,
        /// The bundle's sha256 (with --url).
        #[arg(long)]
        sha256: Option<String>,
        /// The bundle's size in bytes (with --url). Without it the CLI downloads the bundle
        /// once, to learn its size and refuse a wrong --sha256 before anything is recorded.
        #[arg(long)]
        size: Option<u64>,
    },
    /// The versions of an app's containers and the workers that have each.
    List {
        #[arg(long)]
        app: String,
    },
    /// Ask the app's live workers to fetch a version now.
    #[command(disable_version_flag = true)]
    Deploy {
        #[arg(long)]
        app: String,
        name: String,
        /// The version (default: the newest).
        #[arg(long)]
        version: Option<String>,
    },
    /// Forget a version, delete its bundle from the app's bucket, and ask the live workers to
    /// drop it (a run using it keeps its files until it ends).
    #[command(disable_version_flag = true)]
    Destroy {
        #[arg(long)]
        app: String,
        name: String,
        #[arg(long)]
        version: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once). Without an admin token but with a database URL, it is
    /// made straight in the database: that is how the first one is made.
    Create {
        /// viewer (read), operator (run, stop, retry, enable) or admin (everything).
        #[arg(long)]
        role: String,
        /// Scope the token to one app.
        #[arg(long)]
        app: Option<String>,
        /// What the token is for, shown in `rota token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: every server refuses it within a second.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// The next fire times of a CRON expression, exactly as the scheduler will use them
    /// (daylight saving included). Runs locally: no server is asked.
    Preview {
        /// CRON expression (seconds field optional): "0 30 2 * * *".
        #[arg(long)]
        cron: String,
        /// IANA time zone (default UTC).
        #[arg(long)]
        tz: Option<String>,
        /// Fires after this RFC 3339 time (default: now).
        #[arg(long)]
        from: Option<String>,
        /// How many fire times (default 10, at most 10,000).
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
}

#[derive(Debug, Args)]
pub struct NatsConfigArgs {
    /// An app whose workers get a NATS user (repeatable).
    #[arg(long = "app", required = true)]
    pub apps: Vec<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    /// A stable server id (default: generated). Servers that restart should keep theirs.
    #[arg(long, env = "ROTA_SERVER_ID")]
    pub server_id: Option<String>,
    /// Serve /metrics, /healthz and /readyz over HTTP here, e.g. 0.0.0.0:9090.
    #[arg(long, env = "ROTA_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// A file holding an admin token (rt1.…) that the server creates at start if it does not
    /// exist: how a deployment hands its operators a token without `rota token create`.
    #[arg(long, env = "ROTA_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Subcommand-style use: `rota server list`.
    #[command(subcommand)]
    pub list: Option<ServerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List the servers and whether they are alive.
    List,
    /// Each live server's readiness, repairs by reason and background services.
    Stats,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    /// The app this worker serves.
    #[arg(long, env = "ROTA_APP")]
    pub app: Option<String>,
    /// The app's secret.
    #[arg(long, env = "ROTA_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file whose first line is the app's secret; re-read at every re-acquire, so that a
    /// rotated secret reaches the running worker.
    #[arg(long, env = "ROTA_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// A stable worker id (default: generated).
    #[arg(long, env = "ROTA_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Tags jobs can require, comma-separated.
    #[arg(long, env = "ROTA_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Instances run at once at most.
    #[arg(long, env = "ROTA_CAPACITY")]
    pub capacity: Option<u32>,
    /// Allow the `shell` processor: jobs can then run any command on this machine.
    #[arg(long, env = "ROTA_ALLOW_SHELL")]
    pub allow_shell: bool,
    /// Where the worker records its running shell jobs' process groups, so that, started
    /// again with the same --worker-id after a crash, it kills what the crash left (default
    /// with a --worker-id: $XDG_STATE_HOME/rota or ~/.local/state/rota).
    #[arg(long, env = "ROTA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Disable the `http` processor.
    #[arg(long)]
    pub no_http: bool,
    /// Offer the `container` processor, which runs the entries of uploaded bundles (off by
    /// default: a bundle is code).
    #[arg(long, env = "ROTA_ALLOW_CONTAINERS")]
    pub allow_containers: bool,
    /// Offer the SDK's example processors (demo-sum-squares, demo-broadcast, demo-shard,
    /// demo-flaky), which compute and echo and run no user code: for trying distributed
    /// execution.
    #[arg(long)]
    pub demo_processors: bool,
    /// How often the worker heartbeats (a server counts it lost after three missed).
    #[arg(long, value_parser = crate::duration::parse_ms, env = "ROTA_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// How often the worker asks which server owns its app.
    #[arg(long, value_parser = crate::duration::parse_ms, env = "ROTA_REACQUIRE_INTERVAL")]
    pub reacquire_interval: Option<u64>,
    /// Serve /metrics, /healthz and /readyz over HTTP here, e.g. 0.0.0.0:9090.
    #[arg(long, env = "ROTA_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Subcommand-style use: `rota worker list`.
    #[command(subcommand)]
    pub list: Option<WorkerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// List live workers.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
}

/// Which page of a list to show.
#[derive(Debug, Args, Clone, Default)]
pub struct Paging {
    /// At most this many (the server's default when not given; at most 1,000 a page).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Start after this cursor (the `next` a previous page named).
    #[arg(long, conflicts_with = "all")]
    pub after: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the SQLite database lives (default: .rota-dev/rota.db).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Stop after this many finished demo runs (default: run until Ctrl-C).
    #[arg(long)]
    pub runs: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app.
    Create {
        name: String,
        /// The secret its workers present.
        #[arg(long, env = "ROTA_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// List apps with their owner and epoch.
    List,
    /// Give an app a new secret. Workers on a previous one keep working for the grace period;
    /// a worker started with --secret-file picks the new one up from its file.
    RotateSecret {
        name: String,
        /// The new secret its workers present.
        #[arg(long, env = "ROTA_SECRET", hide_env_values = true)]
        secret: String,
        /// How long the previous secrets stay valid, e.g. 1h, 0s (default 1h).
        #[arg(long, value_parser = crate::duration::parse_ms)]
        grace: Option<u64>,
    },
}

/// The job settings shared by `job create` and `job update`.
#[derive(Debug, Args, Default)]
pub struct JobFields {
    /// CRON expression (seconds field optional): "*/5 * * * * *".
    #[arg(long, conflicts_with_all = ["at", "api", "fixed_rate", "fixed_delay"])]
    pub cron: Option<String>,
    /// A frequent job started every interval (start to start), e.g. 100ms, on one worker.
    #[arg(long, value_parser = crate::duration::parse_ms, conflicts_with_all = ["at", "api", "fixed_delay"])]
    pub fixed_rate: Option<u64>,
    /// A frequent job started this long after each run ends, on one worker.
    #[arg(long, value_parser = crate::duration::parse_ms, conflicts_with_all = ["at", "api"])]
    pub fixed_delay: Option<u64>,
    /// The job fires only from this RFC 3339 time on.
    #[arg(long)]
    pub starts_at: Option<String>,
    /// The job fires only until this RFC 3339 time (a frequent job stops then).
    #[arg(long)]
    pub ends_at: Option<String>,
    /// Fires missed while no server ran: fire_once (default), skip or catch_up:N.
    #[arg(long)]
    pub misfire: Option<String>,
    /// IANA time zone of the CRON expression (default UTC).
    #[arg(long, requires = "cron")]
    pub tz: Option<String>,
    /// Run once at this RFC 3339 time.
    #[arg(long, conflicts_with = "api")]
    pub at: Option<String>,
    /// Run only when asked (`rota job run`).
    #[arg(long)]
    pub api: bool,
    /// Processor name: shell, http, or one registered in an SDK worker.
    #[arg(long)]
    pub processor: Option<String>,
    /// The processor's configuration: a script for shell, a JSON request for http.
    #[arg(long, visible_alias = "script")]
    pub processor_config: Option<String>,
    /// Parameters every instance gets.
    #[arg(long)]
    pub params: Option<String>,
    /// A description of the job.
    #[arg(long)]
    pub description: Option<String>,
    /// Runs after the first that a failing instance gets.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Delay before a retry, e.g. 10s, 500ms.
    #[arg(long, value_parser = crate::duration::parse_ms)]
    pub retry_delay: Option<u64>,
    /// Kill a run after this long, e.g. 30s (0: no limit).
    #[arg(long, value_parser = crate::duration::parse_ms)]
    pub timeout: Option<u64>,
    /// Live instances at most (0: no limit).
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// At the limit: skip (cancel the new one) or queue (wait).
    #[arg(long)]
    pub overlap: Option<String>,
    /// Worker choice: health-first, random, round-robin.
    #[arg(long)]
    pub dispatch: Option<String>,
    /// A tag the worker must carry (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A worker allowed to run it (repeatable; default: any).
    #[arg(long = "worker")]
    pub workers: Vec<String>,
    /// How an instance's work is spread: standalone (one worker), broadcast (every eligible
    /// worker), map, map-reduce or sharding.
    #[arg(long)]
    pub execution: Option<String>,
    /// The items of a sharding job, INDEX=PARAM: "0=a,1=b,2=c" (sets --execution sharding).
    #[arg(long, conflicts_with = "shard_count")]
    pub shards: Option<String>,
    /// A sharding job of N items with empty parameters (sets --execution sharding).
    #[arg(long)]
    pub shard_count: Option<u32>,
    /// Runs after the first that a failing task of a distributed instance gets.
    #[arg(long)]
    pub task_retries: Option<u32>,
    /// For --processor container: the container, NAME or NAME@VERSION (default: the newest).
    #[arg(long, requires = "entry")]
    pub container: Option<String>,
    /// For --processor container: the processor of the container's manifest to run.
    #[arg(long, requires = "container")]
    pub entry: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job.
    Create {
        /// The app the job belongs to.
        #[arg(long)]
        app: String,
        /// The job's name, unique within its app.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        fields: JobFields,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Change a job; only the given settings change.
    Update {
        id: i64,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: JobFields,
    },
    /// List jobs.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one job.
    Show {
        id: i64,
    },
    /// Run a job now.
    Run {
        id: i64,
        /// Parameters for this instance.
        #[arg(long)]
        params: Option<String>,
        /// Start after this delay, e.g. 30s.
        #[arg(long, value_parser = crate::duration::parse_ms)]
        delay: Option<u64>,
        /// Makes the run safe to repeat: a run of this job with the same key returns the
        /// instance the first one created. Without it, one is made up for this command, whose
        /// own retries after a timeout are then safe too.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    Enable {
        id: i64,
    },
    Disable {
        id: i64,
    },
    Delete {
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// List instances, newest first.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        /// Only this job's instances.
        #[arg(long)]
        job: Option<i64>,
        /// A status name or code: RUNNING, failed, 5 …
        #[arg(long)]
        status: Option<String>,
        /// Newest first, a page at a time (default 50 a page).
        #[command(flatten)]
        paging: Paging,
    },
    Show {
        id: i64,
    },
    /// Stop a live instance (its worker kills the work).
    Stop {
        id: i64,
    },
    /// Run a finished instance again, as a new instance.
    Retry {
        id: i64,
    },
    /// List a running distributed instance's tasks, in id order, with status, worker,
    /// attempts and result (asked of its master).
    Tasks {
        id: i64,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub instance: i64,
    /// Keep printing new lines until the instance finishes.
    #[arg(long, short)]
    pub follow: bool,
}
