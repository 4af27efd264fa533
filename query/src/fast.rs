//! Reads over the typed columns of the segments, for the queries that would
//! otherwise merge every object of an organization.
//!
//! An [`EventStore::fast_scan`] names the segment files and the objects that
//! need merging (those in memory or with rows in several segments). Every
//! other row describes a whole object, so DataFusion reads its typed columns
//! as they are and filters and aggregates them inside the Parquet scan. The
//! merged objects join as a small in-memory table, and [`Keep`] skips their
//! rows in the files.
//!
//! On ClickHouse, the typed columns come from its `objects` table instead
//! (see [`crate::clickhouse`]), and the merged objects are those in memory.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bedrock_store::events::typed::{key_hash, metadata_entry, metadata_key, Typed};
use bedrock_store::events::segment::{self, KIND_SPAN, KIND_TRACE, KIND_USAGE};
use bedrock_store::events::FastScan;
use crate::clickhouse::ObjectsTable;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::{col, lit, DataFrame, Expr, ParquetReadOptions, SessionConfig, SessionContext};

/// Bytes of segment footers and page indexes kept between queries.
const METADATA_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Creates a session that reads segments as the event store writes them,
/// with filters evaluated inside the Parquet decoder.
pub fn session() -> SessionContext {
    session_with_pushdown(true)
}

/// Creates a session for scans that keep a large, scattered share of the rows,
/// such as the usage records among spans: filtering decoded batches is then
/// faster than the decoder's row selections.
pub fn scan_session() -> SessionContext {
    session_with_pushdown(false)
}

fn session_with_pushdown(pushdown: bool) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(2);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    config.options_mut().execution.parquet.pushdown_filters = pushdown;
    config.options_mut().execution.parquet.reorder_filters = pushdown;
    config.options_mut().execution.parquet.max_in_list_size = bedrock_store::events::MAX_PRUNING_IN_LIST;
    SessionContext::new_with_config_rt(config, runtime())
}

/// Returns the runtime that every session of this module shares, so the
/// footers and page indexes of the segments are parsed once, not per query.
fn runtime() -> Arc<datafusion::execution::runtime_env::RuntimeEnv> {
    static RUNTIME: std::sync::OnceLock<Arc<datafusion::execution::runtime_env::RuntimeEnv>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_metadata_cache_limit(METADATA_CACHE_BYTES)
                .with_file_statistics_cache_limit(4 * 1024 * 1024)
                .build_arc()
                .unwrap_or_default()
        })
        .clone()
}

/// `keep(key_hash, id)`: false for the rows of the objects a scan merged
/// itself, true for every other row. The hash narrows the check to a few
/// rows, whose ids are then compared exactly.
#[derive(Debug)]
struct Keep {
    signature: Signature,
    hashes: HashSet<u64>,
    ids: HashSet<String>,
    /// Identity for DataFusion's expression equality.
    token: usize,
}

impl PartialEq for Keep {
    fn eq(&self, other: &Self) -> bool {
        self.token == other.token
    }
}
impl Eq for Keep {}
impl Hash for Keep {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.token.hash(state);
    }
}

fn next_token() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ScalarUDFImpl for Keep {
    fn name(&self) -> &str {
        "bedrock_keep"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let hashes = arrays[0]
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| DataFusionError::Internal("key_hash is not UInt64".into()))?;
        let ids = cast(&arrays[1], &DataType::Utf8)?;
        let ids = ids.as_any().downcast_ref::<StringArray>().ok_or_else(|| DataFusionError::Internal("id is not text".into()))?;
        let keep: BooleanArray = (0..rows)
            .map(|row| Some(!(self.hashes.contains(&hashes.value(row)) && self.ids.contains(ids.value(row)))))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(keep)))
    }
}

/// Returns the expression that keeps the rows of `kind` except those of `skipped` ids.
fn keep_expr<'a>(organization_id: &str, kind: &'static str, skipped: impl Iterator<Item = &'a String>) -> Expr {
    let ids: HashSet<String> = skipped.cloned().collect();
    let hashes = ids.iter().map(|id| key_hash(organization_id, kind, id)).collect();
    let keep = Keep {
        signature: Signature::exact(vec![DataType::UInt64, DataType::Utf8], Volatility::Immutable),
        hashes,
        ids,
        token: next_token(),
    };
    ScalarUDF::from(keep).call(vec![col("key_hash"), col("id")])
}

/// Returns the stored rows of one kind of an organization, minus `skipped`
/// ids: from ClickHouse's `objects` table, or from the segment files, or
/// `None` when there are none.
async fn segment_rows<'a>(
    context: &SessionContext,
    scan: &FastScan,
    organization_id: &str,
    kind: &'static str,
    skipped: impl Iterator<Item = &'a String>,
) -> Result<Option<DataFrame>> {
    if let Some(tier) = &scan.clickhouse {
        let table = ObjectsTable::new(tier.clone(), organization_id, kind, skipped.cloned().collect(), scan.merged);
        return Ok(Some(context.read_table(Arc::new(table))?));
    }
    if scan.paths.is_empty() {
        return Ok(None);
    }
    Ok(Some(parquet_rows(context, scan.paths.clone(), organization_id, kind, skipped).await?))
}

/// Returns the rows of one kind of an organization in the segment files
/// `paths`, minus `skipped` ids.
async fn parquet_rows<'a>(
    context: &SessionContext,
    paths: Vec<String>,
    organization_id: &str,
    kind: &'static str,
    skipped: impl Iterator<Item = &'a String>,
) -> Result<DataFrame> {
    let mut frame = context
        .read_parquet(paths, ParquetReadOptions::default().schema(&segment::schema()))
        .await?
        .filter(col("organization_id").eq(lit(organization_id)).and(col("kind").eq(lit(kind))))?;
    let mut skipped = skipped.peekable();
    if skipped.peek().is_some() {
        frame = frame.filter(keep_expr(organization_id, kind, skipped))?;
    }
    Ok(frame)
}

/// Returns the expression that keeps the rows whose `column` (`meta` or
/// `meta_low`) contains the top-level metadata entry `key` = `value`.
pub fn metadata_filter(column: &str, key: &str, value: &str) -> Expr {
    let pattern = format!("%{}%", crate::trace_list::like_literal(&metadata_entry(key, value)));
    Expr::Like(Like::new(false, Box::new(col(column)), Box::new(lit(pattern)), Some('\\'), false))
}

/// Reports whether a filter on the metadata key `key` searches the full
/// `meta` text somewhere in `scan`: on ClickHouse, or in a segment where the
/// key has many values.
pub fn metadata_reads_text(scan: &FastScan, key: &str) -> bool {
    let key = metadata_key(key);
    scan.clickhouse.is_some() || (0..scan.paths.len()).any(|index| scan.meta_is_high(index, &key))
}

/// Returns the stored traces of an organization that have every metadata
/// entry of `metadata`, minus those the scan merged itself.
///
/// In each segment, a filter on a key with few values searches the
/// dictionary column `meta_low` once per distinct value, and one on any
/// other key searches every row's `meta` text (see
/// [`bedrock_store::events::typed::MetaSplit`]). The segments are grouped by
/// which filters read which column, one scan per group.
async fn trace_rows(
    context: &SessionContext,
    scan: &FastScan,
    organization_id: &str,
    metadata: &[(String, String)],
) -> Result<Option<DataFrame>> {
    if scan.clickhouse.is_some() || metadata.is_empty() {
        let Some(mut rows) = segment_rows(context, scan, organization_id, KIND_TRACE, scan.slow.traces.keys()).await? else {
            return Ok(None);
        };
        for (key, value) in metadata {
            rows = rows.filter(metadata_filter("meta", key, value))?;
        }
        return Ok(Some(rows));
    }
    let keys: Vec<String> = metadata.iter().map(|(key, _)| metadata_key(key)).collect();
    let mut groups: std::collections::BTreeMap<Vec<bool>, Vec<String>> = std::collections::BTreeMap::new();
    for (index, path) in scan.paths.iter().enumerate() {
        let high = keys.iter().map(|key| scan.meta_is_high(index, key)).collect();
        groups.entry(high).or_default().push(path.clone());
    }
    let mut frame: Option<DataFrame> = None;
    for (high, paths) in groups {
        let mut part = parquet_rows(context, paths, organization_id, KIND_TRACE, scan.slow.traces.keys()).await?;
        for ((key, value), high) in metadata.iter().zip(high) {
            part = part.filter(metadata_filter(if high { "meta" } else { "meta_low" }, key, value))?;
        }
        frame = Some(match frame {
            Some(frame) => frame.union(part)?,
            None => part,
        });
    }
    Ok(frame)
}

/// Returns the columns of the fast `traces` table before its computed ones.
fn trace_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("agent_id", segment::dictionary_type(), true),
        Field::new("started_at", DataType::Int64, true),
        Field::new("ended_at", DataType::Int64, true),
        Field::new("first_seen", DataType::Int64, true),
        Field::new("own_error", DataType::Boolean, true),
        Field::new("meta", DataType::Utf8, true),
    ]))
}

fn trace_batch(rows: &[(&String, Typed)]) -> Result<RecordBatch> {
    let text = |get: fn(&Typed) -> Option<&str>| -> ArrayRef { Arc::new(rows.iter().map(|(_, t)| get(t)).collect::<StringArray>()) };
    let int = |get: fn(&Typed) -> Option<i64>| -> ArrayRef { Arc::new(rows.iter().map(|(_, t)| get(t)).collect::<Int64Array>()) };
    Ok(RecordBatch::try_new(
        trace_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(id, _)| id.as_str()))),
            text(|t| t.name.as_deref()),
            segment::dictionary_array(rows.iter().map(|(_, t)| t.agent_id.as_deref())),
            int(|t| t.started_at),
            int(|t| t.ended_at),
            int(|t| t.first_seen),
            Arc::new(rows.iter().map(|(_, t)| t.has_error).collect::<BooleanArray>()),
            text(|t| t.meta.as_deref()),
        ],
    )?)
}

/// Returns the organization's traces that have every top-level metadata entry
/// of `metadata`, with the trace list's columns: `id`, `name`, `agent_id`,
/// `started_at`, `ended_at`, `first_seen`, `meta`, `duration_ms` and `status`.
pub async fn traces(context: &SessionContext, scan: &FastScan, organization_id: &str, metadata: &[(String, String)]) -> Result<DataFrame> {
    let slow: Vec<(&String, Typed)> = scan.slow.traces.iter().map(|(id, state)| (id, Typed::of_trace(state))).collect();
    let mut memory = context.read_table(Arc::new(MemTable::try_new(trace_schema(), vec![vec![trace_batch(&slow)?]])?))?;
    for (key, value) in metadata {
        memory = memory.filter(metadata_filter("meta", key, value))?;
    }
    let columns = ["id", "name", "agent_id", "started_at", "ended_at", "first_seen", "own_error", "meta"];
    let mut frame = memory;
    if let Some(rows) = trace_rows(context, scan, organization_id, metadata).await? {
        let rows = rows.select(
            columns
                .iter()
                .map(|name| if *name == "own_error" { col("has_error").alias("own_error") } else { col(*name) })
                .collect::<Vec<_>>(),
        )?;
        frame = rows.union(frame)?;
    }
    let duration = datafusion::logical_expr::cast(col("ended_at") - col("started_at"), DataType::Float64) / lit(1000.0);
    let status = datafusion::logical_expr::when(col("ended_at").is_null(), lit("running"))
        .when(col("own_error").is_true(), lit("error"))
        .otherwise(lit("ok"))?;
    let mut all: Vec<Expr> = columns.iter().map(|name| col(*name)).collect();
    all.push(duration.alias("duration_ms"));
    all.push(status.alias("status"));
    frame.select(all)
}

/// Returns the columns of the fast `spans` table.
fn span_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("span_type", segment::dictionary_type(), true),
        Field::new("flagged", DataType::Boolean, true),
        Field::new("started_at", DataType::Int64, true),
        Field::new("first_seen", DataType::Int64, true),
    ]))
}

/// Returns every span of the organization with the columns of [`span_schema`].
pub async fn spans(context: &SessionContext, scan: &FastScan, organization_id: &str) -> Result<DataFrame> {
    let slow: Vec<(&String, Typed)> = scan.slow.spans.iter().map(|(id, state)| (id, Typed::of_span(state))).collect();
    let batch = RecordBatch::try_new(
        span_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(slow.iter().map(|(id, _)| id.as_str()))),
            segment::dictionary_array(slow.iter().map(|(_, t)| t.span_type.as_deref())),
            Arc::new(slow.iter().map(|(_, t)| t.flagged).collect::<BooleanArray>()),
            Arc::new(slow.iter().map(|(_, t)| t.started_at).collect::<Int64Array>()),
            Arc::new(slow.iter().map(|(_, t)| t.first_seen).collect::<Int64Array>()),
        ],
    )?;
    let mut frame = context.read_table(Arc::new(MemTable::try_new(span_schema(), vec![vec![batch]])?))?;
    if let Some(rows) = segment_rows(context, scan, organization_id, KIND_SPAN, scan.slow.spans.keys()).await? {
        frame = rows.select_columns(&["id", "span_type", "flagged", "started_at", "first_seen"])?.union(frame)?;
    }
    Ok(frame)
}

/// Returns the columns of the fast `usage` table.
fn usage_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("model", segment::dictionary_type(), true),
        Field::new("input_tokens", DataType::Int64, true),
        Field::new("output_tokens", DataType::Int64, true),
        Field::new("cached_tokens", DataType::Int64, true),
        Field::new("reasoning_tokens", DataType::Int64, true),
        Field::new("cost_nanos", DataType::Int64, true),
        Field::new("usage_at", DataType::Int64, true),
    ]))
}

const USAGE_COLUMNS: [&str; 9] =
    ["id", "trace_id", "model", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_nanos", "usage_at"];

fn usage_batch(rows: &[(&String, Option<String>, Typed)]) -> Result<RecordBatch> {
    let int = |get: fn(&Typed) -> Option<i64>| -> ArrayRef { Arc::new(rows.iter().map(|(_, _, t)| get(t)).collect::<Int64Array>()) };
    Ok(RecordBatch::try_new(
        usage_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(id, _, _)| id.as_str()))),
            Arc::new(rows.iter().map(|(_, trace, _)| trace.as_deref()).collect::<StringArray>()),
            segment::dictionary_array(rows.iter().map(|(_, _, t)| t.model.as_deref())),
            int(|t| t.input_tokens),
            int(|t| t.output_tokens),
            int(|t| t.cached_tokens),
            int(|t| t.reasoning_tokens),
            int(|t| t.cost_nanos),
            int(|t| t.usage_at),
        ],
    )?)
}

/// The usage records of a scan, in the parts that [`usage_records`] unites.
pub struct UsageParts {
    /// The records of the objects the scan merged itself.
    pub memory: DataFrame,
    /// Stored posted records, minus those in `memory`.
    pub posted: Option<DataFrame>,
    /// Stored `llm` spans with usage, minus those in `memory` and those a
    /// posted record names.
    pub spans: Option<DataFrame>,
    /// The ids of posted records that `posted` leaves out.
    pub skipped_usage: Vec<String>,
    /// The ids of spans that `spans` leaves out.
    pub skipped_spans: Vec<String>,
}

/// Returns every usage record of the organization, posted or derived from an
/// `llm` span, with the columns of [`usage_schema`]. A posted record that
/// names a span replaces that span's record. Costs are unpriced: summaries price
/// them (see [`crate::usage_sums`]).
pub async fn usage_records(context: &SessionContext, scan: &FastScan, organization_id: &str) -> Result<DataFrame> {
    let parts = usage_parts(context, scan, organization_id).await?;
    let mut frame = parts.memory;
    if let Some(posted) = parts.posted {
        frame = posted.union(frame)?;
    }
    if let Some(spans) = parts.spans {
        frame = spans.union(frame)?;
    }
    Ok(frame)
}

/// Reports whether a posted usage record names the span `span_id`.
pub async fn posted_record_names(context: &SessionContext, scan: &FastScan, organization_id: &str, span_id: &str) -> Result<bool> {
    if scan.slow.usage.values().any(|state| state.resolve().span_id.as_deref() == Some(span_id)) {
        return Ok(true);
    }
    match segment_rows(context, scan, organization_id, KIND_USAGE, scan.slow.usage.keys()).await? {
        Some(posted) => Ok(posted.filter(col("span_id").eq(lit(span_id)))?.count().await? > 0),
        None => Ok(false),
    }
}

/// Returns the usage records of the organization as [`UsageParts`].
pub async fn usage_parts(context: &SessionContext, scan: &FastScan, organization_id: &str) -> Result<UsageParts> {
    let slow = &scan.slow;
    let mut memory: Vec<(&String, Option<String>, Typed)> = Vec::new();
    let mut posted_spans: HashSet<String> = HashSet::new();
    for (id, state) in &slow.usage {
        let typed = Typed::of_usage(state);
        posted_spans.extend(typed.span_id.clone());
        memory.push((id, state.resolve().trace_id, typed));
    }

    let posted = segment_rows(context, scan, organization_id, KIND_USAGE, slow.usage.keys()).await?;
    if let Some(posted) = &posted {
        let named = posted.clone().filter(col("span_id").is_not_null())?.select_columns(&["span_id"])?.collect().await?;
        for batch in &named {
            let ids = cast(batch.column(0), &DataType::Utf8)?;
            let ids = ids.as_any().downcast_ref::<StringArray>().ok_or_else(|| DataFusionError::Internal("span_id".into()))?;
            posted_spans.extend(ids.iter().flatten().map(str::to_string));
        }
    }

    for (id, state) in &slow.spans {
        let typed = Typed::of_span(state);
        if typed.has_usage == Some(true) && !posted_spans.contains(id) {
            memory.push((id, state.resolve().trace_id, typed));
        }
    }

    let memory_frame = context.read_table(Arc::new(MemTable::try_new(usage_schema(), vec![vec![usage_batch(&memory)?]])?))?;
    let posted = match posted {
        Some(posted) => Some(posted.select_columns(&USAGE_COLUMNS)?),
        None => None,
    };
    let skipped_spans: Vec<String> = slow.spans.keys().cloned().chain(posted_spans).collect();
    let spans = match segment_rows(context, scan, organization_id, KIND_SPAN, skipped_spans.iter()).await? {
        Some(spans) => Some(spans.filter(col("has_usage").is_true())?.select_columns(&USAGE_COLUMNS)?),
        None => None,
    };
    Ok(UsageParts { memory: memory_frame, posted, spans, skipped_usage: slow.usage.keys().cloned().collect(), skipped_spans })
}

/// Reads the typed columns of the stored spans of `trace_ids`, with their
/// trace ids, minus the spans the scan merged itself. Each segment file is
/// queried only for the traces its Bloom filter may contain, so short lists
/// let page statistics prune the reads.
pub async fn span_rows_of_traces(
    context: &SessionContext,
    scan: &FastScan,
    organization_id: &str,
    trace_ids: &[&str],
) -> Result<Vec<(String, Typed)>> {
    let schema = segment::schema();
    let columns = [
        "trace_id", "span_type", "has_error", "flagged", "passed", "has_usage", "model", "input_tokens", "output_tokens",
        "cached_tokens", "reasoning_tokens", "cost_nanos",
    ];
    let probes: Vec<bedrock_store::events::bloom::Probe> =
        trace_ids.iter().map(|id| bedrock_store::events::bloom::Probe::of(&[organization_id, id])).collect();
    if trace_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut reads = Vec::new();
    if let Some(tier) = &scan.clickhouse {
        let table =
            ObjectsTable::new(tier.clone(), organization_id, KIND_SPAN, scan.slow.spans.keys().cloned().collect(), scan.merged)
                .of_traces(trace_ids);
        let frame = context.read_table(Arc::new(table))?;
        reads.push(tokio::spawn(frame.select_columns(&columns)?.collect()));
    }
    let keep = (!scan.slow.spans.is_empty()).then(|| keep_expr(organization_id, KIND_SPAN, scan.slow.spans.keys()));
    for (index, path) in scan.paths.iter().enumerate() {
        let list: Vec<Expr> =
            trace_ids.iter().zip(&probes).filter(|(_, probe)| scan.may_hold_trace(index, **probe)).map(|(id, _)| lit(*id)).collect();
        if list.is_empty() {
            continue;
        }
        let mut frame = context
            .read_parquet(path.as_str(), ParquetReadOptions::default().schema(&schema))
            .await?
            .filter(col("organization_id").eq(lit(organization_id)).and(col("kind").eq(lit(KIND_SPAN))).and(col("trace_id").in_list(list, false)))?;
        if let Some(keep) = &keep {
            frame = frame.filter(keep.clone())?;
        }
        // Each file is read on its own task, so the files decode in parallel.
        reads.push(tokio::spawn(frame.select_columns(&columns)?.collect()));
    }
    let mut rows = Vec::new();
    for read in reads {
        let batches = read.await.map_err(|err| DataFusionError::External(Box::new(err)))??;
        for batch in batches {
            let text = |name: &str| -> Result<StringArray> {
                let array = cast(batch.column_by_name(name).ok_or_else(|| DataFusionError::Internal(name.into()))?, &DataType::Utf8)?;
                array.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| DataFusionError::Internal(name.into()))
            };
            let int = |name: &str| -> Result<Int64Array> {
                let array = cast(batch.column_by_name(name).ok_or_else(|| DataFusionError::Internal(name.into()))?, &DataType::Int64)?;
                array.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| DataFusionError::Internal(name.into()))
            };
            let flag = |name: &str| -> Result<BooleanArray> {
                let array = batch.column_by_name(name).ok_or_else(|| DataFusionError::Internal(name.into()))?;
                array.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| DataFusionError::Internal(name.into()))
            };
            let (trace, kind, model) = (text("trace_id")?, text("span_type")?, text("model")?);
            let (has_error, flagged, passed, has_usage) = (flag("has_error")?, flag("flagged")?, flag("passed")?, flag("has_usage")?);
            let (input, output, cached, reasoning, cost) =
                (int("input_tokens")?, int("output_tokens")?, int("cached_tokens")?, int("reasoning_tokens")?, int("cost_nanos")?);
            let string = |array: &StringArray, row: usize| (!array.is_null(row)).then(|| array.value(row).to_string());
            let boolean = |array: &BooleanArray, row: usize| (!array.is_null(row)).then(|| array.value(row));
            let number = |array: &Int64Array, row: usize| (!array.is_null(row)).then(|| array.value(row));
            for row in 0..batch.num_rows() {
                let typed = Typed {
                    span_type: string(&kind, row),
                    has_error: boolean(&has_error, row),
                    flagged: boolean(&flagged, row),
                    passed: boolean(&passed, row),
                    has_usage: boolean(&has_usage, row),
                    model: string(&model, row),
                    input_tokens: number(&input, row),
                    output_tokens: number(&output, row),
                    cached_tokens: number(&cached, row),
                    reasoning_tokens: number(&reasoning, row),
                    cost_nanos: number(&cost, row),
                    ..Typed::default()
                };
                rows.push((trace.value(row).to_string(), typed));
            }
        }
    }
    Ok(rows)
}
