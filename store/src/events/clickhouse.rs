//! ClickHouse as the flushed tier of the event store, in place of Parquet
//! segments, for deployments where several instances share one ClickHouse.
//!
//! Each flush inserts the partial states of its objects as rows of `events`,
//! with a marker row (`kind = 'flush'`) that records which write-ahead log
//! records of the instance the flush contains. Data and marker go in one
//! INSERT, which ClickHouse applies as one block when it has at most
//! `max_insert_block_size` rows (1,048,576 by default). So after a crash the
//! log replays exactly the records whose rows are missing. Reads select an
//! object's rows in flush order (`version`, then `instance`) and merge them
//! like segment rows.
//!
//! NOTE: a larger flush, or an INSERT that failed on the client after the
//! server applied it, can leave rows without their marker. The log then
//! replays them once more, and the copies merge into the same state, except
//! that a write another instance flushed in between is overridden again.
//!
//! Only SQL that ClickHouse 18.16 and current releases both accept is used:
//! a plain MergeTree, String and UInt64 columns, and bound values.

use serde::{Deserialize, Serialize};

use super::segment::{Applied, SegmentRow, KIND_SPAN, KIND_TRACE, KIND_USAGE};
use crate::StoreError;

const MIGRATIONS: [(u32, &str, &str); 1] = [(1, "events", include_str!("../../../migrations/clickhouse/0001_events.sql"))];

/// The kind of the marker row a flush writes.
const KIND_FLUSH: &str = "flush";

#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
struct EventRow {
    organization_id: String,
    kind: String,
    id: String,
    trace_id: String,
    instance: String,
    version: u64,
    seq: u64,
    state: String,
}

#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
struct MigrationRow {
    version: u32,
    name: String,
    applied_at: u64,
}

/// The rows a read needs.
#[derive(Debug, Clone)]
pub enum RowFilter<'a> {
    Organization(&'a str),
    Object { organization_id: &'a str, kind: &'static str, id: &'a str },
    Objects { organization_id: &'a str, kind: &'static str, ids: Vec<&'a str> },
    SpansOfTraces { organization_id: &'a str, trace_ids: Vec<&'a str> },
}

/// The start of the message of every [`StoreError::Unavailable`] this module raises.
pub const UNREACHABLE: &str = "ClickHouse is unreachable";

fn unavailable(err: clickhouse::error::Error) -> StoreError {
    match err {
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut => {
            StoreError::Unavailable(format!("{UNREACHABLE}: {err}"))
        }
        other => StoreError::Internal(format!("ClickHouse query failed: {other}")),
    }
}

fn static_kind(text: &str) -> Result<&'static str, StoreError> {
    match text {
        KIND_TRACE => Ok(KIND_TRACE),
        KIND_SPAN => Ok(KIND_SPAN),
        KIND_USAGE => Ok(KIND_USAGE),
        other => Err(StoreError::Internal(format!("ClickHouse row of unknown kind {other:?}"))),
    }
}

/// The ClickHouse tier of one instance.
pub struct ClickHouseTier {
    client: clickhouse::Client,
    instance: String,
}

impl ClickHouseTier {
    /// Connects to `url` (`http://host:port`, optionally with `?database=`)
    /// as the instance `instance`, and applies the schema migrations.
    pub async fn open(url: &str, instance: &str) -> Result<ClickHouseTier, StoreError> {
        let (base, database) = match url.split_once("?database=") {
            Some((base, database)) => (base, Some(database)),
            None => (url, None),
        };
        let mut client = clickhouse::Client::default().with_url(base).with_validation(false);
        if let Some(database) = database {
            client = client.with_database(database);
        }
        let tier = ClickHouseTier { client, instance: instance.to_string() };
        tier.migrate().await?;
        Ok(tier)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.client
            .query("CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at UInt64) ENGINE = TinyLog")
            .execute()
            .await
            .map_err(unavailable)?;
        let applied: Vec<MigrationRow> =
            self.client.query("SELECT ?fields FROM schema_migrations").fetch_all().await.map_err(unavailable)?;
        for (version, name, sql) in MIGRATIONS {
            if applied.iter().any(|row| row.version == version) {
                continue;
            }
            // Comment lines go first, so a `;` in a comment never splits a statement.
            let code: String = sql.lines().filter(|line| !line.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                self.client.query(statement).execute().await.map_err(unavailable)?;
            }
            let mut insert = self.client.insert::<MigrationRow>("schema_migrations").await.map_err(unavailable)?;
            let row = MigrationRow { version, name: name.to_string(), applied_at: now_micros() };
            insert.write(&row).await.map_err(unavailable)?;
            insert.end().await.map_err(unavailable)?;
            tracing::info!(version, name, "ClickHouse migration applied");
        }
        Ok(())
    }

    /// Returns what the last flush of this instance recorded as applied.
    pub async fn applied(&self) -> Result<Applied, StoreError> {
        let rows: Vec<EventRow> = self
            .client
            .query("SELECT ?fields FROM events WHERE organization_id = '' AND kind = ? AND id = ? ORDER BY version DESC LIMIT 1")
            .bind(KIND_FLUSH)
            .bind(self.instance.as_str())
            .fetch_all()
            .await
            .map_err(unavailable)?;
        match rows.first() {
            Some(row) => {
                let extra: Vec<u64> = serde_json::from_str(&row.state).map_err(StoreError::internal)?;
                Ok(Applied { through: row.seq, extra })
            }
            None => Ok(Applied::default()),
        }
    }

    /// Inserts the rows of one flush with its marker, as one block. The rows
    /// are moved into the insert, so their states are not copied.
    pub async fn insert(&self, rows: Vec<SegmentRow>, applied: &Applied, version: u64) -> Result<(), StoreError> {
        let mut insert = self.client.insert::<EventRow>("events").await.map_err(unavailable)?;
        for row in rows {
            let event = EventRow {
                organization_id: row.organization_id,
                kind: row.kind.to_string(),
                id: row.id,
                trace_id: row.trace_id.unwrap_or_default(),
                instance: self.instance.clone(),
                version,
                seq: row.seq,
                state: row.state,
            };
            insert.write(&event).await.map_err(unavailable)?;
        }
        let marker = EventRow {
            organization_id: String::new(),
            kind: KIND_FLUSH.to_string(),
            id: self.instance.clone(),
            trace_id: String::new(),
            instance: self.instance.clone(),
            version,
            seq: applied.through,
            state: serde_json::to_string(&applied.extra).map_err(StoreError::internal)?,
        };
        insert.write(&marker).await.map_err(unavailable)?;
        insert.end().await.map_err(unavailable)
    }

    /// Returns the rows `filter` selects, in flush order.
    pub async fn rows(&self, filter: &RowFilter<'_>) -> Result<Vec<SegmentRow>, StoreError> {
        const ORDER: &str = " ORDER BY version, instance";
        let query = match filter {
            RowFilter::Organization(organization_id) => self
                .client
                .query(&format!("SELECT ?fields FROM events WHERE organization_id = ? AND kind != ?{ORDER}"))
                .bind(*organization_id)
                .bind(KIND_FLUSH),
            RowFilter::Object { organization_id, kind, id } => self
                .client
                .query(&format!("SELECT ?fields FROM events WHERE organization_id = ? AND kind = ? AND id = ?{ORDER}"))
                .bind(*organization_id)
                .bind(*kind)
                .bind(*id),
            RowFilter::Objects { organization_id, kind, ids } => {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                self.client
                    .query(&format!("SELECT ?fields FROM events WHERE organization_id = ? AND kind = ? AND has(?, id){ORDER}"))
                    .bind(*organization_id)
                    .bind(*kind)
                    .bind(ids.as_slice())
            }
            RowFilter::SpansOfTraces { organization_id, trace_ids } => {
                if trace_ids.is_empty() {
                    return Ok(Vec::new());
                }
                self.client
                    .query(&format!("SELECT ?fields FROM events WHERE organization_id = ? AND kind = ? AND has(?, trace_id){ORDER}"))
                    .bind(*organization_id)
                    .bind(KIND_SPAN)
                    .bind(trace_ids.as_slice())
            }
        };
        let rows: Vec<EventRow> = query.fetch_all().await.map_err(unavailable)?;
        rows.into_iter()
            .map(|row| {
                Ok(SegmentRow {
                    organization_id: row.organization_id,
                    kind: static_kind(&row.kind)?,
                    id: row.id,
                    trace_id: (!row.trace_id.is_empty()).then_some(row.trace_id),
                    seq: row.seq,
                    state: row.state,
                    typed: None,
                })
            })
            .collect()
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
