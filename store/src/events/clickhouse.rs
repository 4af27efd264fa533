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
//! After its rows, a flush writes the typed columns of each of its objects
//! to `objects` (see `migrations/clickhouse/0002_objects.sql`), resolved
//! from all the object's rows. Lists and summaries filter, sort and sum
//! those columns in ClickHouse ([`ClickHouseTier::select_objects`]), so no
//! query reads the JSON states of a whole organization.
//!
//! Only SQL that ClickHouse 18.16 and current releases both accept is used:
//! MergeTree and ReplacingMergeTree, String, UInt64, Int64 and Nullable
//! columns, and bound values.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, RecordBatch, RecordBatchOptions, StringBuilder};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::segment::{self, Applied, SegmentRow, KIND_SPAN, KIND_TRACE, KIND_USAGE};
use super::typed::Typed;
use crate::StoreError;

/// The schema files, with whether the typed columns of every stored object
/// must be computed once the file is applied.
const MIGRATIONS: [(u32, &str, &str, bool); 2] = [
    (1, "events", include_str!("../../../migrations/clickhouse/0001_events.sql"), false),
    (2, "objects", include_str!("../../../migrations/clickhouse/0002_objects.sql"), true),
];

/// The largest query text ClickHouse parses, raised from its 256 KiB default
/// so that the id lists of large flushes and pages fit in one query.
const MAX_QUERY_BYTES: &str = "67108864";

/// The columns of `objects` that reads may select (all but `merged_rows`),
/// each with the type of the segment column of the same name.
pub const OBJECT_COLUMNS: [&str; 23] = [
    "organization_id", "kind", "id", "trace_id", "name", "agent_id", "started_at", "ended_at", "first_seen", "has_error",
    "span_type", "flagged", "passed", "meta", "has_usage", "model", "input_tokens", "output_tokens", "cached_tokens",
    "reasoning_tokens", "cost_nanos", "usage_at", "span_id",
];

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

#[derive(Debug, clickhouse::Row, Serialize)]
struct ObjectRow<'a> {
    organization_id: &'a str,
    kind: &'static str,
    id: &'a str,
    trace_id: &'a str,
    merged_rows: u64,
    name: Option<&'a str>,
    agent_id: Option<&'a str>,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    first_seen: Option<i64>,
    has_error: Option<u8>,
    span_type: Option<&'a str>,
    flagged: Option<u8>,
    passed: Option<u8>,
    meta: Option<&'a str>,
    has_usage: Option<u8>,
    model: Option<&'a str>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cached_tokens: Option<i64>,
    reasoning_tokens: Option<i64>,
    cost_nanos: Option<i64>,
    usage_at: Option<i64>,
    span_id: Option<&'a str>,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct TraceSpanRow<'a> {
    organization_id: &'a str,
    trace_id: &'a str,
    id: &'a str,
}

/// The typed columns of one object, resolved from `merged_rows` of its rows.
#[derive(Debug, Clone)]
pub struct TypedObject {
    pub organization_id: String,
    pub kind: &'static str,
    pub id: String,
    pub trace_id: Option<String>,
    pub merged_rows: u64,
    pub typed: Typed,
}

impl<'a> From<&'a TypedObject> for ObjectRow<'a> {
    fn from(object: &'a TypedObject) -> ObjectRow<'a> {
        let t = &object.typed;
        let flag = |value: Option<bool>| value.map(u8::from);
        ObjectRow {
            organization_id: &object.organization_id,
            kind: object.kind,
            id: &object.id,
            trace_id: object.trace_id.as_deref().unwrap_or_default(),
            merged_rows: object.merged_rows,
            name: t.name.as_deref(),
            agent_id: t.agent_id.as_deref(),
            started_at: t.started_at,
            ended_at: t.ended_at,
            first_seen: t.first_seen,
            has_error: flag(t.has_error),
            span_type: t.span_type.as_deref(),
            flagged: flag(t.flagged),
            passed: flag(t.passed),
            meta: t.meta.as_deref(),
            has_usage: flag(t.has_usage),
            model: t.model.as_deref(),
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cached_tokens: t.cached_tokens,
            reasoning_tokens: t.reasoning_tokens,
            cost_nanos: t.cost_nanos,
            usage_at: t.usage_at,
            span_id: t.span_id.as_deref(),
        }
    }
}

/// A value bound to a `?` of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
    Float(f64),
    /// Bound as an array, for `IN (SELECT arrayJoin(?))`.
    Texts(Vec<String>),
    Ints(Vec<i64>),
}

/// A read of `objects`: the rows of one kind of one organization, except
/// `skipped` ids, that match `condition`.
#[derive(Debug, Clone, Default)]
pub struct ObjectSelect {
    pub organization_id: String,
    pub kind: &'static str,
    /// Columns of [`OBJECT_COLUMNS`]; with none, only the rows are counted.
    pub columns: Vec<&'static str>,
    /// SQL over the columns of [`OBJECT_COLUMNS`] with a `?` for each of `params`.
    pub condition: Option<String>,
    pub params: Vec<SqlValue>,
    pub skipped: Vec<String>,
    /// When set, only the spans of these traces, found through `trace_spans`.
    pub traces: Option<Vec<String>>,
    /// Whether some object of the organization has rows with `merged_rows`
    /// above 1 (see [`ClickHouseTier::has_merged_objects`]).
    pub merged: bool,
    pub limit: Option<usize>,
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
#[derive(Clone)]
pub struct ClickHouseTier {
    client: clickhouse::Client,
    instance: String,
}

impl ClickHouseTier {
    /// Connects to `url` (`http://host:port`, optionally with `?database=`)
    /// as the instance `instance`, and applies the schema files. Returns the
    /// tier and the schema versions whose objects' typed columns must be
    /// computed before [`ClickHouseTier::record_migration`] records them.
    pub async fn open(url: &str, instance: &str) -> Result<(ClickHouseTier, Vec<u32>), StoreError> {
        let (base, database) = match url.split_once("?database=") {
            Some((base, database)) => (base, Some(database)),
            None => (url, None),
        };
        let mut client =
            clickhouse::Client::default().with_url(base).with_validation(false).with_setting("max_query_size", MAX_QUERY_BYTES);
        if let Some(database) = database {
            client = client.with_database(database);
        }
        let tier = ClickHouseTier { client, instance: instance.to_string() };
        let backfills = tier.migrate().await?;
        Ok((tier, backfills))
    }

    async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        self.client
            .query("CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, applied_at UInt64) ENGINE = TinyLog")
            .execute()
            .await
            .map_err(unavailable)?;
        let applied: Vec<MigrationRow> =
            self.client.query("SELECT ?fields FROM schema_migrations").fetch_all().await.map_err(unavailable)?;
        let mut backfills = Vec::new();
        for (version, _, sql, backfill) in MIGRATIONS {
            if applied.iter().any(|row| row.version == version) {
                continue;
            }
            // Comment lines go first, so a `;` in a comment never splits a statement.
            let code: String = sql.lines().filter(|line| !line.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                self.client.query(statement).execute().await.map_err(unavailable)?;
            }
            // A file whose typed columns are still to compute is recorded
            // after them, so a crash meanwhile computes them again.
            if backfill {
                backfills.push(version);
            } else {
                self.record_migration(version).await?;
            }
        }
        Ok(backfills)
    }

    /// Records schema file `version` as applied.
    pub async fn record_migration(&self, version: u32) -> Result<(), StoreError> {
        let Some((_, name, _, _)) = MIGRATIONS.iter().find(|m| m.0 == version) else {
            return Err(StoreError::Internal(format!("no ClickHouse migration {version}")));
        };
        let mut insert = self.client.insert::<MigrationRow>("schema_migrations").await.map_err(unavailable)?;
        let row = MigrationRow { version, name: name.to_string(), applied_at: now_micros() };
        insert.write(&row).await.map_err(unavailable)?;
        insert.end().await.map_err(unavailable)?;
        tracing::info!(version, name, "ClickHouse migration applied");
        Ok(())
    }

    /// Lists the organizations that have rows, for computing every object's typed columns.
    pub async fn organizations(&self) -> Result<Vec<String>, StoreError> {
        self.client
            .query("SELECT DISTINCT organization_id FROM events WHERE kind != ?")
            .bind(KIND_FLUSH)
            .fetch_all::<String>()
            .await
            .map_err(unavailable)
    }

    /// Lists the objects of this instance's last flush, whose typed columns
    /// a crash may have kept from `objects`.
    pub async fn last_flush_objects(&self) -> Result<Vec<(String, &'static str, String)>, StoreError> {
        let keys: Vec<(String, String, String)> = self
            .client
            .query(
                "SELECT organization_id, kind, id FROM events WHERE instance = ? AND kind != ? AND version = \
                 (SELECT max(version) FROM events WHERE organization_id = '' AND kind = ? AND id = ?)",
            )
            .bind(self.instance.as_str())
            .bind(KIND_FLUSH)
            .bind(KIND_FLUSH)
            .bind(self.instance.as_str())
            .fetch_all()
            .await
            .map_err(unavailable)?;
        keys.into_iter().map(|(organization, kind, id)| Ok((organization, static_kind(&kind)?, id))).collect()
    }

    /// Counts the rows of each of the objects `ids` of one kind.
    pub async fn row_counts(&self, organization_id: &str, kind: &'static str, ids: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let counts: Vec<(String, u64)> = self
            .client
            .query("SELECT id, count() FROM events WHERE organization_id = ? AND kind = ? AND id IN (SELECT arrayJoin(?)) GROUP BY id")
            .bind(organization_id)
            .bind(kind)
            .bind(ids)
            .fetch_all()
            .await
            .map_err(unavailable)?;
        Ok(counts.into_iter().collect())
    }

    /// Reports whether some object of the organization has a row in
    /// `objects` merged from several rows of `events`.
    pub async fn has_merged_objects(&self, organization_id: &str) -> Result<bool, StoreError> {
        let found: Vec<u8> = self
            .client
            .query("SELECT 1 FROM objects PREWHERE merged_rows > 1 WHERE organization_id = ? LIMIT 1")
            .bind(organization_id)
            .fetch_all()
            .await
            .map_err(unavailable)?;
        Ok(!found.is_empty())
    }

    /// Returns the highest `merged_rows` of each of the objects `ids` of one
    /// kind in `objects`, or of every object of that kind when `ids` is `None`.
    pub async fn merged_rows(
        &self,
        organization_id: &str,
        kind: &'static str,
        ids: Option<&[&str]>,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let query = match ids {
            Some(ids) => self
                .client
                .query("SELECT id, max(merged_rows) FROM objects WHERE organization_id = ? AND kind = ? AND id IN (SELECT arrayJoin(?)) GROUP BY id")
                .bind(organization_id)
                .bind(kind)
                .bind(if ids.is_empty() { &[""][..] } else { ids }),
            None => self
                .client
                .query("SELECT id, max(merged_rows) FROM objects WHERE organization_id = ? AND kind = ? GROUP BY id")
                .bind(organization_id)
                .bind(kind),
        };
        let rows: Vec<(String, u64)> = query.fetch_all().await.map_err(unavailable)?;
        Ok(rows.into_iter().collect())
    }

    /// Writes the typed columns of `objects`.
    pub async fn insert_objects<'a>(&self, objects: impl IntoIterator<Item = &'a TypedObject>) -> Result<(), StoreError> {
        let objects: Vec<&TypedObject> = objects.into_iter().collect();
        if objects.is_empty() {
            return Ok(());
        }
        let mut spans = self.client.insert::<TraceSpanRow>("trace_spans").await.map_err(unavailable)?;
        for object in objects.iter().filter(|object| object.kind == KIND_SPAN) {
            if let Some(trace_id) = object.trace_id.as_ref().filter(|trace| !trace.is_empty()) {
                let row = TraceSpanRow { organization_id: &object.organization_id, trace_id, id: &object.id };
                spans.write(&row).await.map_err(unavailable)?;
            }
        }
        spans.end().await.map_err(unavailable)?;
        let mut insert = self.client.insert::<ObjectRow>("objects").await.map_err(unavailable)?;
        for object in objects {
            insert.write(&ObjectRow::from(object)).await.map_err(unavailable)?;
        }
        insert.end().await.map_err(unavailable)
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
                    .query(&format!("SELECT ?fields FROM events WHERE organization_id = ? AND kind = ? AND id IN (SELECT arrayJoin(?)){ORDER}"))
                    .bind(*organization_id)
                    .bind(*kind)
                    .bind(ids.as_slice())
            }
            RowFilter::SpansOfTraces { organization_id, trace_ids } => {
                if trace_ids.is_empty() {
                    return Ok(Vec::new());
                }
                // Every row of the spans that `trace_spans` lists, including
                // rows that name no trace.
                self.client
                    .query(&format!(
                        "SELECT ?fields FROM events WHERE organization_id = ? AND kind = ? AND id IN \
                         (SELECT id FROM trace_spans WHERE organization_id = ? AND trace_id IN (SELECT arrayJoin(?))){ORDER}"
                    ))
                    .bind(*organization_id)
                    .bind(KIND_SPAN)
                    .bind(*organization_id)
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

impl ClickHouseTier {
    /// Reads the columns `select` names of the objects it selects, as one
    /// batch with the segment schema's types. With no columns, the batch has
    /// no columns and one row per object.
    pub async fn select_objects(&self, select: &ObjectSelect) -> Result<RecordBatch, StoreError> {
        for column in &select.columns {
            if !OBJECT_COLUMNS.contains(column) {
                return Err(StoreError::Internal(format!("objects has no column {column:?}")));
            }
        }

        let mut condition = String::from("organization_id = ? AND kind = ?");
        let mut params = vec![SqlValue::Text(select.organization_id.clone()), SqlValue::Text(select.kind.to_string())];
        if !select.skipped.is_empty() {
            condition.push_str(" AND id NOT IN (SELECT arrayJoin(?))");
            params.push(SqlValue::Texts(select.skipped.clone()));
        }
        if let Some(traces) = &select.traces {
            condition.push_str(
                " AND id IN (SELECT id FROM trace_spans WHERE organization_id = ? AND trace_id IN (SELECT arrayJoin(?))) \
                 AND trace_id IN (SELECT arrayJoin(?))",
            );
            // An empty array has no element type in ClickHouse 18.16.
            let traces = if traces.is_empty() { vec![String::new()] } else { traces.clone() };
            params.push(SqlValue::Text(select.organization_id.clone()));
            params.push(SqlValue::Texts(traces.clone()));
            params.push(SqlValue::Texts(traces));
        }
        if let Some(extra) = &select.condition {
            condition.push_str(" AND (");
            condition.push_str(extra);
            condition.push(')');
            params.extend(select.params.iter().cloned());
        }

        let mut binds = Vec::new();
        let columns = if select.columns.is_empty() { "id".to_string() } else { select.columns.join(", ") };
        let rows = newest_objects(&columns, &condition, &params, &select.organization_id, select.merged, &mut binds);
        let mut sql = if select.columns.is_empty() { format!("SELECT count() FROM ({rows})") } else { format!("SELECT * FROM ({rows})") };
        if let (Some(limit), false) = (select.limit, select.columns.is_empty()) {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let query = bind_all(self.client.query(&sql), &binds);

        if select.columns.is_empty() {
            let count: u64 = query.fetch_one().await.map_err(unavailable)?;
            let rows = select.limit.map_or(count, |limit| count.min(limit as u64));
            return RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                Vec::new(),
                &RecordBatchOptions::new().with_row_count(Some(rows as usize)),
            )
            .map_err(StoreError::internal);
        }
        let bytes = query.fetch_bytes("RowBinary").map_err(unavailable)?.collect().await.map_err(unavailable)?;
        decode_row_binary(&bytes, &select.columns)
    }
}

/// Returns SQL that reads `columns` of the objects that `condition` selects,
/// each from its newest row, and appends the values of its `?` to `binds`.
///
/// A flush writes an object's first row with `merged_rows = 1`, and more
/// rows only when the object has several rows in `events`. Objects with that
/// single row are read as they are, with the condition in PREWHERE. Only the
/// few other objects are read with FINAL, which merges rows by key and is far
/// slower.
/// With FINAL, the condition stays in WHERE, which ClickHouse applies after
/// the merge (in PREWHERE it would see older rows).
/// When no object of the organization has such rows (`merged` is false),
/// only the single rows are read.
fn newest_objects(
    columns: &str,
    condition: &str,
    params: &[SqlValue],
    organization_id: &str,
    merged: bool,
    binds: &mut Vec<SqlValue>,
) -> String {
    if !merged {
        binds.extend(params.iter().cloned());
        return format!("SELECT {columns} FROM objects PREWHERE {condition} WHERE merged_rows = 1");
    }
    // PREWHERE reads the ids of the few rows above 1 only; the setting
    // `optimize_move_to_prewhere = 0` that keeps FINAL exact would read all.
    let several = "SELECT kind, id FROM objects PREWHERE merged_rows > 1 WHERE organization_id = ?";
    binds.extend(params.iter().cloned());
    binds.push(SqlValue::Text(organization_id.to_string()));
    binds.extend(params.iter().cloned());
    binds.push(SqlValue::Text(organization_id.to_string()));
    binds.push(SqlValue::Text(organization_id.to_string()));
    // The test on `id` alone lets the primary key narrow what FINAL reads
    // (ClickHouse 18.16 does not use the key for tuples from a subquery).
    format!(
        "SELECT {columns} FROM objects PREWHERE {condition} WHERE merged_rows = 1 AND (kind, id) NOT IN ({several}) \
         UNION ALL SELECT {columns} FROM objects FINAL WHERE ({condition}) \
         AND id IN (SELECT id FROM objects PREWHERE merged_rows > 1 WHERE organization_id = ?) AND (kind, id) IN ({several})"
    )
}

fn bind_all(mut query: clickhouse::query::Query, binds: &[SqlValue]) -> clickhouse::query::Query {
    for value in binds {
        query = match value {
            SqlValue::Text(text) => query.bind(text.as_str()),
            SqlValue::Int(value) => query.bind(*value),
            SqlValue::Float(value) => query.bind(*value),
            SqlValue::Texts(texts) => query.bind(texts.as_slice()),
            SqlValue::Ints(values) => query.bind(values.as_slice()),
        };
    }
    query.with_setting("optimize_move_to_prewhere", "0")
}

/// A usage summary summed in ClickHouse: the usage records of one
/// organization among the typed columns of `objects` (posted records, and
/// `llm` spans that carry usage and that no posted record names), filtered
/// and grouped.
#[derive(Debug, Clone, Default)]
pub struct UsageSums {
    pub organization_id: String,
    /// Posted records whose merged states the caller holds.
    pub skipped_usage: Vec<String>,
    /// Spans whose merged states the caller holds, and spans that a posted record names.
    pub skipped_spans: Vec<String>,
    pub model: Option<String>,
    pub trace: Option<String>,
    /// Inclusive start and exclusive end of the records' timestamps, in microseconds.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub by_model: bool,
    pub by_day: bool,
    pub by_hour: bool,
    pub by_trace: bool,
    /// The price of each model that has one, in nano-dollars per million
    /// uncached input, cached input and output tokens. Every price must be
    /// below [`MAX_PUSHED_PRICE`].
    pub prices: Vec<(String, [i64; 3])>,
    /// As in [`ObjectSelect`].
    pub merged: bool,
}

/// Prices from this one up, and token counts above [`MAX_PUSHED_TOKENS`],
/// could overflow ClickHouse's 64-bit products; summaries over them are
/// summed in the server.
pub const MAX_PUSHED_PRICE: i64 = 1_000_000_000_000;
pub const MAX_PUSHED_TOKENS: i64 = 1_000_000_000_000;

/// One group of a [`UsageSums`]: its keys (the microsecond a day or hour
/// starts at, 0 when not grouped; '' for no trace) and its sums. Costs are
/// summed as their high and low 32 bits, so the sums cannot overflow.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct UsageGroupRow {
    pub model: Option<String>,
    pub day: i64,
    pub hour: i64,
    pub trace: String,
    pub records: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub priced: u64,
    pub cost_high: i64,
    pub cost_low: i64,
    /// Records whose cost must be computed from token counts above [`MAX_PUSHED_TOKENS`].
    pub oversized: u64,
}

/// One group of [`ClickHouseTier::sum_usage_tokens`]: its keys as in
/// [`UsageGroupRow`], with the model always, and its sums. Client costs and
/// the clamped token counts of the records without one are summed as their
/// high and low 32 bits.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct UsageTokenRow {
    pub model: Option<String>,
    pub day: i64,
    pub hour: i64,
    pub trace: String,
    pub records: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// Records with a client cost, and the sum of those costs.
    pub with_cost: u64,
    pub cost_high: i64,
    pub cost_low: i64,
    /// Records without a cost, and the sums of their tokens to price.
    pub without_cost: u64,
    pub uncached_high: i64,
    pub uncached_low: i64,
    pub cached_high: i64,
    pub cached_low: i64,
    pub output_high: i64,
    pub output_low: i64,
}

impl ClickHouseTier {
    /// Sums usage records in ClickHouse, grouped by the dimensions `sums`
    /// sets. A record without a cost is priced as `pricing::cost_of` prices
    /// it: cached tokens clamped to the input, and rounded half up once per
    /// record. Each price is split into its millions and the rest, so the
    /// products fit in 64 bits.
    pub async fn sum_usage(&self, sums: &UsageSums) -> Result<Vec<UsageGroupRow>, StoreError> {
        let (model, day, hour, trace) = usage_keys(sums, sums.by_model);
        let (condition, params) = usage_condition(sums);

        // Entry 1 of the price arrays stands for "no price", so they are
        // never empty; a model of '' has no price.
        let mut names = vec![String::new()];
        let mut parts: [Vec<i64>; 6] = Default::default();
        for part in &mut parts {
            part.push(0);
        }
        for (name, price) in &sums.prices {
            if name.is_empty() {
                continue;
            }
            names.push(name.clone());
            for (index, value) in price.iter().enumerate() {
                parts[index].push(value / 1_000_000);
                parts[index + 3].push(value % 1_000_000);
            }
        }
        let mut binds = vec![SqlValue::Texts(names)];
        binds.extend(parts.into_iter().map(SqlValue::Ints));
        let records = newest_objects(
            USAGE_RECORD_COLUMNS,
            &condition,
            &params,
            &sums.organization_id,
            sums.merged,
            &mut binds,
        );
        let sql = format!(
            "SELECT {model} AS model, {day} AS day, {hour} AS hour, {trace} AS trace, count() AS records, \
             sum(ifNull(input_tokens, 0)), sum(ifNull(output_tokens, 0)), sum(ifNull(cached_tokens, 0)), \
             sum(ifNull(reasoning_tokens, 0)), countIf(isNotNull(cost_nanos) OR price > 1), \
             sum(intDiv(cost, toInt64(4294967296))), sum(cost % toInt64(4294967296)), \
             countIf(isNull(cost_nanos) AND price > 1 AND (input > {MAX_PUSHED_TOKENS} OR output > {MAX_PUSHED_TOKENS})) \
             FROM (SELECT model, usage_at, trace_id, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_nanos, \
               indexOf(?, ifNull(model, '')) AS price, \
               greatest(ifNull(input_tokens, 0), 0) AS input, greatest(ifNull(output_tokens, 0), 0) AS output, \
               least(greatest(ifNull(cached_tokens, 0), 0), input) AS cached, input - cached AS uncached, \
               uncached * arrayElement(?, price) + cached * arrayElement(?, price) + output * arrayElement(?, price) AS whole, \
               uncached * arrayElement(?, price) + cached * arrayElement(?, price) + output * arrayElement(?, price) AS rest, \
               if(isNotNull(cost_nanos), assumeNotNull(cost_nanos), \
                  if(price > 1, whole + intDiv(rest, 1000000) + if((rest % 1000000) * 2 >= 1000000, 1, 0), 0)) AS cost \
             FROM ({records})) \
             GROUP BY model, day, hour, trace"
        );
        bind_all(self.client.query(&sql), &binds).fetch_all().await.map_err(unavailable)
    }

    /// Sums usage records in ClickHouse, grouped by model and by the
    /// dimensions `sums` sets, without pricing them. For the records without
    /// a cost, it sums their uncached input, cached input and output tokens,
    /// clamped as `pricing::cost_of` clamps them. When every price is a whole
    /// number of nano-dollars per token, a group's cost follows exactly from
    /// these sums. `sums.prices` is ignored.
    pub async fn sum_usage_tokens(&self, sums: &UsageSums) -> Result<Vec<UsageTokenRow>, StoreError> {
        let (model, day, hour, trace) = usage_keys(sums, true);
        let (condition, params) = usage_condition(sums);
        let mut binds = Vec::new();
        let records = newest_objects(USAGE_RECORD_COLUMNS, &condition, &params, &sums.organization_id, sums.merged, &mut binds);
        let split = |name: &str| format!("sum(intDiv({name}, toInt64(4294967296))), sum({name} % toInt64(4294967296))");
        let sql = format!(
            "SELECT {model} AS model, {day} AS day, {hour} AS hour, {trace} AS trace, count() AS records, \
             sum(ifNull(input_tokens, 0)), sum(ifNull(output_tokens, 0)), sum(ifNull(cached_tokens, 0)), \
             sum(ifNull(reasoning_tokens, 0)), countIf(isNotNull(cost_nanos)), {}, countIf(isNull(cost_nanos)), {}, {}, {} \
             FROM (SELECT model, usage_at, trace_id, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_nanos, \
               ifNull(cost_nanos, 0) AS client, \
               if(isNull(cost_nanos), greatest(ifNull(input_tokens, 0), 0), 0) AS input, \
               if(isNull(cost_nanos), greatest(ifNull(output_tokens, 0), 0), 0) AS output, \
               least(if(isNull(cost_nanos), greatest(ifNull(cached_tokens, 0), 0), 0), input) AS cached, \
               input - cached AS uncached \
             FROM ({records})) \
             GROUP BY model, day, hour, trace",
            split("client"),
            split("uncached"),
            split("cached"),
            split("output"),
        );
        bind_all(self.client.query(&sql), &binds).fetch_all().await.map_err(unavailable)
    }
}

/// Returns the SQL of the group keys of a usage sum: model, day, hour and trace.
fn usage_keys(sums: &UsageSums, by_model: bool) -> (String, String, String, &'static str) {
    const DAY: i64 = 86_400_000_000;
    const HOUR: i64 = 3_600_000_000;
    let bucket = |size: i64| {
        let size = format!("toInt64({size})");
        format!("(ifNull(usage_at, 0) - ((ifNull(usage_at, 0) % {size}) + {size}) % {size})")
    };
    let model = if by_model { "model".to_string() } else { "CAST(NULL AS Nullable(String))".to_string() };
    let day = if sums.by_day { bucket(DAY) } else { "toInt64(0)".to_string() };
    let hour = if sums.by_hour { bucket(HOUR) } else { "toInt64(0)".to_string() };
    let trace = if sums.by_trace { "trace_id" } else { "''" };
    (model, day, hour, trace)
}

/// Returns the condition that selects the usage records of a sum, and its values.
fn usage_condition(sums: &UsageSums) -> (String, Vec<SqlValue>) {
    // Reading every id to test it against an empty list would cost
    // more than the rest of the sum: the test is left out then.
    let mut params = vec![SqlValue::Text(sums.organization_id.clone()), SqlValue::Text(KIND_USAGE.to_string())];
    let mut condition = String::from("organization_id = ? AND ((kind = ?");
    if !sums.skipped_usage.is_empty() {
        condition.push_str(" AND id NOT IN (SELECT arrayJoin(?))");
        params.push(SqlValue::Texts(sums.skipped_usage.clone()));
    }
    condition.push_str(") OR (kind = ? AND has_usage = 1");
    params.push(SqlValue::Text(KIND_SPAN.to_string()));
    if !sums.skipped_spans.is_empty() {
        condition.push_str(" AND id NOT IN (SELECT arrayJoin(?))");
        params.push(SqlValue::Texts(sums.skipped_spans.clone()));
    }
    condition.push_str("))");

    if let Some(model) = &sums.model {
        condition.push_str(" AND model = ?");
        params.push(SqlValue::Text(model.clone()));
    }
    if let Some(trace) = &sums.trace {
        condition.push_str(" AND trace_id = ?");
        params.push(SqlValue::Text(trace.clone()));
    }
    if let Some(start) = sums.start {
        condition.push_str(" AND usage_at >= ?");
        params.push(SqlValue::Int(start));
    }
    if let Some(end) = sums.end {
        condition.push_str(" AND usage_at < ?");
        params.push(SqlValue::Int(end));
    }
    (condition, params)
}

/// The columns of `objects` that usage sums read.
const USAGE_RECORD_COLUMNS: &str = "model, usage_at, trace_id, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_nanos";

/// Returns the Arrow schema of `columns` of `objects`.
pub fn object_schema(columns: &[&str]) -> SchemaRef {
    let segment = segment::schema();
    let fields: Vec<_> = columns.iter().filter_map(|name| segment.field_with_name(name).ok().cloned()).collect();
    Arc::new(Schema::new(fields))
}

/// The RowBinary encoding of one column of `objects`.
#[derive(Clone, Copy)]
enum Encoding {
    Text,
    NullableText,
    NullableInt,
    NullableFlag,
}

fn encoding(column: &str) -> Encoding {
    match column {
        "organization_id" | "kind" | "id" | "trace_id" => Encoding::Text,
        "name" | "agent_id" | "span_type" | "meta" | "model" | "span_id" => Encoding::NullableText,
        "has_error" | "flagged" | "passed" | "has_usage" => Encoding::NullableFlag,
        _ => Encoding::NullableInt,
    }
}

enum Builder {
    Text(StringBuilder),
    Int(Int64Builder),
    Flag(BooleanBuilder),
}

/// Reads RowBinary, the rows one after the other, each column in its binary
/// form: a string as its LEB128 length and bytes, an integer as 8 bytes in
/// little-endian order, a Nullable value as a byte that is 1 for null,
/// followed by the value when it is 0.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], StoreError> {
        if self.bytes.len() < n {
            return Err(StoreError::Internal("ClickHouse sent a truncated row".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn length(&mut self) -> Result<usize, StoreError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(StoreError::internal);
            }
        }
        Err(StoreError::Internal("ClickHouse sent an overlong string length".into()))
    }

    fn text(&mut self) -> Result<&str, StoreError> {
        let length = self.length()?;
        std::str::from_utf8(self.take(length)?).map_err(StoreError::internal)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(StoreError::internal)?))
    }

    fn is_null(&mut self) -> Result<bool, StoreError> {
        Ok(self.take(1)?[0] != 0)
    }
}

fn decode_row_binary(bytes: &[u8], columns: &[&'static str]) -> Result<RecordBatch, StoreError> {
    let encodings: Vec<Encoding> = columns.iter().map(|c| encoding(c)).collect();
    let mut builders: Vec<Builder> = encodings
        .iter()
        .map(|e| match e {
            Encoding::Text | Encoding::NullableText => Builder::Text(StringBuilder::new()),
            Encoding::NullableInt => Builder::Int(Int64Builder::new()),
            Encoding::NullableFlag => Builder::Flag(BooleanBuilder::new()),
        })
        .collect();
    let mut reader = Reader { bytes };
    while !reader.bytes.is_empty() {
        for (index, (encoding, builder)) in encodings.iter().zip(builders.iter_mut()).enumerate() {
            match (encoding, builder) {
                (Encoding::Text, Builder::Text(b)) => {
                    let text = reader.text()?;
                    // A trace id of '' means the object names no trace.
                    if text.is_empty() && columns[index] == "trace_id" {
                        b.append_null();
                    } else {
                        b.append_value(text);
                    }
                }
                (Encoding::NullableText, Builder::Text(b)) => {
                    if reader.is_null()? {
                        b.append_null();
                    } else {
                        b.append_value(reader.text()?);
                    }
                }
                (Encoding::NullableInt, Builder::Int(b)) => {
                    if reader.is_null()? {
                        b.append_null();
                    } else {
                        b.append_value(reader.u64()? as i64);
                    }
                }
                (Encoding::NullableFlag, Builder::Flag(b)) => {
                    if reader.is_null()? {
                        b.append_null();
                    } else {
                        b.append_value(reader.take(1)?[0] != 0);
                    }
                }
                _ => return Err(StoreError::Internal(format!("no RowBinary decoder for column {:?}", columns[index]))),
            }
        }
    }
    let schema = object_schema(columns);
    let arrays: Vec<ArrayRef> = builders
        .into_iter()
        .zip(schema.fields())
        .map(|(builder, field)| {
            let array: ArrayRef = match builder {
                Builder::Text(mut b) => Arc::new(b.finish()),
                Builder::Int(mut b) => Arc::new(b.finish()),
                Builder::Flag(mut b) => Arc::new(b.finish()),
            };
            if array.data_type() == field.data_type() {
                Ok(array)
            } else {
                datafusion::arrow::compute::cast(&array, field.data_type()).map_err(StoreError::internal)
            }
        })
        .collect::<Result<_, StoreError>>()?;
    RecordBatch::try_new(schema, arrays).map_err(StoreError::internal)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
