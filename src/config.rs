//! Command-line settings. Every flag also reads an environment variable and
//! has a default, so `bedrock serve` with nothing set runs the embedded
//! deployment on 127.0.0.1:8000 with its state under `./bedrock-data`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "bedrock", version, about = "Ingests traces, spans and usage from AI agent harnesses and answers analytics over them.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeSettings),
    /// Apply pending control-plane migrations, then exit.
    Migrate(StorageSettings),
    /// Grant (or with --revoke, take away) the site-wide administrator flag of a user.
    MakeAdmin {
        /// Email address of the user.
        email: String,
        /// Take the flag away instead of granting it.
        #[arg(long)]
        revoke: bool,
        #[command(flatten)]
        storage: StorageSettings,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where state lives; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Directory for all local state: SQLite control plane, write-ahead log, event segments.
    #[arg(long, env = "BEDROCK_DATA_DIR", default_value = "./bedrock-data")]
    pub data_dir: PathBuf,

    /// Control-plane database: postgres://... for Postgres; unset means SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum number of connections to the control-plane database.
    #[arg(long, env = "BEDROCK_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Event store: http://host:8123 (optionally ?database=NAME) for ClickHouse; unset means Parquet segments in the data directory.
    #[arg(long, env = "CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address and port to listen on.
    #[arg(long, env = "BEDROCK_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub storage: StorageSettings,

    /// Log format on standard error.
    #[arg(long, env = "BEDROCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing-subscriber's EnvFilter syntax, e.g. `info` or `bedrock=debug`.
    #[arg(long, env = "BEDROCK_LOG", default_value = "info")]
    pub log: String,

    /// Key that encrypts provider API keys at rest: 64 hex digits (32 bytes). Unset: generated once into <data-dir>/secret.key.
    #[arg(long, env = "BEDROCK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Maximum size of a request body, in bytes.
    #[arg(long, env = "BEDROCK_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Maximum size of one text field of a trace or span (input, output, error, name) and of its metadata as JSON, in bytes.
    #[arg(long, env = "BEDROCK_MAX_TEXT_FIELD_BYTES", default_value_t = 1024 * 1024)]
    pub max_text_field_bytes: usize,

    /// Maximum number of events in one request to /api/tracing/ingest/.
    #[arg(long, env = "BEDROCK_BATCH_MAX_EVENTS", default_value_t = 1000)]
    pub batch_max_events: usize,

    /// Attributes read in order for the agent id of a span sent to /v1/traces. Each name is looked up among the span's attributes, then its resource's.
    #[arg(long, env = "BEDROCK_OTLP_AGENT_ATTRIBUTES", value_delimiter = ',', default_value = "agent.id,gen_ai.agent.id,service.name")]
    pub otlp_agent_attributes: Vec<String>,

    /// How long a resolved credential is cached, in seconds; a key revoked on another instance stops working within this time.
    #[arg(long, env = "BEDROCK_AUTH_CACHE_SECONDS", default_value_t = 5)]
    pub auth_cache_seconds: u64,

    /// How long an invite stays valid, in hours.
    #[arg(long, env = "BEDROCK_INVITE_TTL_HOURS", default_value_t = 168)]
    pub invite_ttl_hours: i64,

    /// How long shutdown waits for in-flight requests and the final flush, in seconds.
    #[arg(long, env = "BEDROCK_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    #[command(flatten)]
    pub events: EventSettings,
}

/// The ingest write path and the embedded event store.
#[derive(Debug, Clone, Args)]
pub struct EventSettings {
    /// Maximum bytes of write-ahead log not yet flushed to the event store; beyond it writes get 503.
    #[arg(long, env = "BEDROCK_WAL_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub wal_max_bytes: u64,

    /// Size at which the write-ahead log starts a new segment file, in bytes.
    #[arg(long, env = "BEDROCK_WAL_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub wal_segment_bytes: u64,

    /// Maximum number of writes waiting for the log writer; beyond it writes get 503.
    #[arg(long, env = "BEDROCK_WAL_MAX_PENDING", default_value_t = 65536)]
    pub wal_max_pending: usize,

    /// Maximum bytes held in the in-memory event buffer before new writes get 503.
    #[arg(long, env = "BEDROCK_BUFFER_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub buffer_max_bytes: usize,

    /// Flush the buffer to a Parquet segment once it holds this many events.
    #[arg(long, env = "BEDROCK_FLUSH_EVENTS", default_value_t = 50_000)]
    pub flush_events: usize,

    /// Flush the buffer at least this often, in milliseconds.
    #[arg(long, env = "BEDROCK_FLUSH_INTERVAL_MS", default_value_t = 2_000)]
    pub flush_interval_ms: u64,

    /// Merge adjacent segments of similar size once at least this many are in a row.
    #[arg(long, env = "BEDROCK_COMPACT_SEGMENTS", default_value_t = 8)]
    pub compact_segments: usize,
}

impl StorageSettings {
    /// The database URL of the control plane, SQLite in the data directory by default.
    pub fn control_plane_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!("sqlite://{}?mode=rwc", self.data_dir.join("control.db").display()),
        }
    }
}
