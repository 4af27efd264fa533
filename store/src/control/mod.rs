//! The control plane: organizations, users, API keys, user tokens, invites,
//! and the agents with the templates and toolbox they boot from.
//!
//! One set of SQL statements serves SQLite (the embedded default) and Postgres
//! through sqlx's `Any` driver. Placeholders are `$1, $2, ...`, which both
//! backends accept, times are integer microseconds since the Unix epoch, and
//! booleans are `BIGINT` 0 or 1, because the `Any` driver cannot decode
//! SQLite's booleans. Every statement binds its values;
//! no SQL text is ever built from input.

mod accounts;
mod agents;
mod credentials;
mod evals;
mod invites;
mod prices;
mod sql;
mod toolbox;

pub use accounts::{NewOrganization, NewUser, OrganizationUpdate};
pub use agents::{Agent, AgentFilter, Template, Transition, TransitionOutcome, TransitionRequest};
pub use evals::{AgentFacts, EvalCase, Review};
pub use invites::InviteAcceptance;
pub use prices::PriceOverride;
pub use toolbox::{Adapter, AdapterConfig, EnabledAdapter, Tool};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

use crate::StoreError;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Which database holds the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the control-plane database; cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pool: AnyPool,
    backend: Backend,
}

#[derive(Debug, Clone)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub openai_api_key_enc: Option<String>,
    pub anthropic_api_key_enc: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub is_admin: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Invite {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: String,
    pub invited_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// One page of a list and the total number of rows behind it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub count: i64,
    pub rows: Vec<T>,
}

impl ControlPlane {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Internal(format!(
                "unsupported database URL scheme in {:?}: expected sqlite:// or postgres://",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let options = AnyConnectOptions::from_str(url)
            .map_err(|err| StoreError::Internal(format!("invalid database URL: {err}")))?
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(ControlPlane { pool, backend })
    }

    /// Opens the SQLite control plane in `data_dir/control.db`, creating it if needed.
    pub async fn open_sqlite(data_dir: &Path, max_connections: u32) -> Result<Self, StoreError> {
        let path = data_dir.join("control.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url, max_connections).await
    }

    /// Applies every migration that has not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|err| match err {
                sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
                other => StoreError::Internal(format!("migration failed: {other}")),
            })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock
    /// at once (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
    /// writes fails with SQLITE_BUSY, without waiting, when another connection
    /// committed in between.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }
}

impl ControlPlane {
    /// Runs one administrative statement (such as `CREATE DATABASE`) that
    /// takes no parameters. Only for fixed statements built by tests and
    /// tools, never from request input.
    pub async fn execute_admin(&self, statement: &str) -> Result<(), StoreError> {
        sqlx::query(statement).execute(&self.pool).await?;
        Ok(())
    }
}
