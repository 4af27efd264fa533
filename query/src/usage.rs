//! Usage records and their summaries, through DataFusion.
//!
//! The records of an organization are those its clients posted plus one per
//! `llm` span that reports `metadata.llm_cost`. A posted record that names a
//! span replaces that span's derived record, so no call is counted twice.
//! Costs the client did not send are priced when read, from the built-in
//! table and the organization's overrides (cached for up to five seconds),
//! so a new override applies to past records too. Money is a `Decimal128(38, 9)` column of dollars, so sums are
//! exact and do not depend on grouping.
//!
//! NOTE: the list, the record by id, summaries by agent and every query on
//! ClickHouse merge all objects of the organization first, which is linear
//! in the organization's data. Other summaries on the embedded store read the
//! typed segment columns (see [`crate::fast`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bedrock_store::events::usage::{Money, UsageRecord};
use bedrock_store::events::clickhouse::{ClickHouseTier, UsageSums, MAX_PUSHED_PRICE};
use bedrock_store::events::pricing::{Price, PriceBook};
use bedrock_store::events::{EventStore, FastScan};
use bedrock_store::time::format_micros;
use datafusion::arrow::array::{Array, ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::{col, lit, DataFrame, Expr, SessionContext};
use serde_json::{json, Map, Value};

use crate::fast;
use crate::usage_sums;
use crate::prices::Prices;
use crate::traces::{ListPage, QueryError};

/// The dimensions a summary can group by, with their column names.
pub const GROUP_KEYS: [(&str, &str); 5] =
    [("agent", "agent_id"), ("model", "model"), ("day", "day"), ("hour", "hour"), ("trace", "trace_id")];

/// Filters of usage lists and summaries; every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct UsageFilter {
    pub agent: Option<String>,
    pub model: Option<String>,
    pub trace: Option<String>,
    /// Inclusive lower bound of `timestamp`, in microseconds.
    pub start: Option<i64>,
    /// Exclusive upper bound of `timestamp`, in microseconds.
    pub end: Option<i64>,
}

/// The position of the last row of a page: rows sort by timestamp, then id, both descending.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageCursor {
    pub timestamp: i64,
    pub id: String,
}

#[derive(Clone)]
pub struct UsageQueries {
    store: Arc<EventStore>,
    prices: Prices,
    /// Whether summaries may read the typed columns of the segments.
    typed: bool,
}

const COST_PRECISION: u8 = 38;
const COST_SCALE: i8 = 9;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("span_id", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("input_tokens", DataType::Int64, false),
        Field::new("output_tokens", DataType::Int64, false),
        Field::new("cached_tokens", DataType::Int64, false),
        Field::new("reasoning_tokens", DataType::Int64, false),
        Field::new("total_tokens", DataType::Int64, false),
        Field::new("cost", DataType::Decimal128(COST_PRECISION, COST_SCALE), true),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("day", DataType::Utf8, false),
        Field::new("hour", DataType::Utf8, false),
    ]))
}

fn to_batch(records: &[UsageRecord]) -> Result<RecordBatch, QueryError> {
    let text = |get: fn(&UsageRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(records.iter().map(get).collect::<StringArray>())
    };
    let number = |get: fn(&UsageRecord) -> i64| -> ArrayRef { Arc::new(records.iter().map(get).collect::<Int64Array>()) };
    let cost = records
        .iter()
        .map(|r| r.cost.map(|money| money.0))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(COST_PRECISION, COST_SCALE)?;
    let stamps: Vec<String> = records.iter().map(|r| format_micros(r.timestamp)).collect();
    let columns: Vec<ArrayRef> = vec![
        text(|r| Some(r.id.as_str())),
        text(|r| r.agent_id.as_deref()),
        text(|r| r.trace_id.as_deref()),
        text(|r| r.span_id.as_deref()),
        text(|r| r.model.as_deref()),
        number(|r| r.input_tokens),
        number(|r| r.output_tokens),
        number(|r| r.cached_tokens),
        number(|r| r.reasoning_tokens),
        number(|r| r.total_tokens()),
        Arc::new(cost),
        number(|r| r.timestamp),
        // `2026-03-01T09:30:12.123456Z`: the day is the first 10 characters, the hour the first 13.
        Arc::new(stamps.iter().map(|s| Some(s.get(..10).unwrap_or(s))).collect::<StringArray>()),
        Arc::new(stamps.iter().map(|s| Some(format!("{}:00:00Z", s.get(..13).unwrap_or(s)))).collect::<StringArray>()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn filter_exprs(filter: &UsageFilter) -> Vec<Expr> {
    let mut exprs = Vec::new();
    if let Some(agent) = &filter.agent {
        exprs.push(col("agent_id").eq(lit(agent.as_str())));
    }
    if let Some(model) = &filter.model {
        exprs.push(col("model").eq(lit(model.as_str())));
    }
    if let Some(trace) = &filter.trace {
        exprs.push(col("trace_id").eq(lit(trace.as_str())));
    }
    if let Some(start) = filter.start {
        exprs.push(col("timestamp").gt_eq(lit(start)));
    }
    if let Some(end) = filter.end {
        exprs.push(col("timestamp").lt(lit(end)));
    }
    exprs
}

fn apply(frame: DataFrame, exprs: Vec<Expr>) -> Result<DataFrame, QueryError> {
    let mut frame = frame;
    for expr in exprs {
        frame = frame.filter(expr)?;
    }
    Ok(frame)
}

/// Reads column `name` of `batch` as text, whatever string type DataFusion chose.
fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let text = cast(column, &DataType::Utf8)?;
    Ok(text.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| QueryError::Internal(format!("{name} is not text")))?)
}

/// Formats the start of a `day` or `hour` bucket as the general plan's text.
fn bucket_text(name: &str, micros: i64) -> String {
    let stamp = format_micros(micros);
    match name {
        "day" => stamp.get(..10).unwrap_or(&stamp).to_string(),
        _ => format!("{}:00:00Z", stamp.get(..13).unwrap_or(&stamp)),
    }
}

fn int_value(batch: &RecordBatch, name: &str, row: usize) -> Result<i64, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let column = cast(column, &DataType::Int64)?;
    let values = column.as_any().downcast_ref::<Int64Array>().ok_or_else(|| QueryError::Internal(format!("{name} is not an integer")))?;
    Ok(if values.is_null(row) { 0 } else { values.value(row) })
}

fn money_value(batch: &RecordBatch, name: &str, row: usize) -> Result<Money, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let column = cast(column, &DataType::Decimal128(COST_PRECISION, COST_SCALE))?;
    let values = column.as_any().downcast_ref::<Decimal128Array>().ok_or_else(|| QueryError::Internal(format!("{name} is not a decimal")))?;
    Ok(Money(if values.is_null(row) { 0 } else { values.value(row) }))
}

/// Reads the totals of one summary row as JSON fields.
fn totals_json(batch: &RecordBatch, row: usize) -> Result<Map<String, Value>, QueryError> {
    let mut tokens = [0; 5];
    for (slot, name) in tokens.iter_mut().zip(TOKEN_COLUMNS) {
        *slot = int_value(batch, name, row)?;
    }
    Ok(totals_of(
        int_value(batch, "record_count", row)?,
        tokens,
        money_value(batch, "cost", row)?,
        int_value(batch, "priced_count", row)?,
    ))
}

const TOKEN_COLUMNS: [&str; 5] = ["input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"];

/// Returns the JSON totals of `record_count` records, of which `priced_count` have a cost.
fn totals_of(record_count: i64, tokens: [i64; 5], cost: Money, priced_count: i64) -> Map<String, Value> {
    let mut totals = Map::new();
    totals.insert("record_count".into(), json!(record_count));
    for (name, value) in TOKEN_COLUMNS.iter().zip(tokens) {
        totals.insert((*name).into(), json!(value));
    }
    totals.insert("cost_usd".into(), cost.to_json());
    // JSON numbers pass through binary floating point in most clients; the
    // decimal string is exact to the nano-dollar.
    totals.insert("cost_usd_decimal".into(), json!(cost.to_decimal_string()));
    totals.insert("unpriced_count".into(), json!(record_count - priced_count));
    totals
}

fn aggregates() -> Vec<Expr> {
    let mut exprs = vec![count(lit(1i64)).alias("record_count")];
    for name in TOKEN_COLUMNS {
        exprs.push(sum(col(name)).alias(name));
    }
    exprs.push(sum(col("cost")).alias("cost"));
    exprs.push(count(col("cost")).alias("priced_count"));
    exprs
}

/// Adds up the rows of [`aggregates`] into one, with the same columns.
fn sums_of_groups() -> Vec<Expr> {
    ["record_count", "cost", "priced_count"].into_iter().chain(TOKEN_COLUMNS).map(|name| sum(col(name)).alias(name)).collect()
}

/// Reads the totals of an ungrouped aggregate, which returns one row.
fn single_row(batches: &[RecordBatch]) -> Result<Map<String, Value>, QueryError> {
    match batches.iter().find(|b| b.num_rows() > 0) {
        Some(batch) => totals_json(batch, 0),
        None => Err(QueryError::Internal("an ungrouped aggregate returned no row".into())),
    }
}

impl UsageQueries {
    pub fn new(store: Arc<EventStore>, prices: Prices) -> UsageQueries {
        UsageQueries { store, prices, typed: true }
    }

    /// Makes every summary merge all objects and never read the typed
    /// columns: the reference that tests compare the typed plans with.
    pub fn general_plans_only(mut self) -> Self {
        self.typed = false;
        self
    }

    /// Collects every usage record of an organization, priced.
    pub async fn records(&self, organization_id: &str) -> Result<Vec<UsageRecord>, QueryError> {
        let objects = self.store.all(organization_id).await?;
        let prices = self.prices.book(organization_id).await?;

        let mut records: Vec<UsageRecord> = objects
            .usage
            .iter()
            .map(|(id, state)| UsageRecord::from_posted(id, &state.resolve(), state.first_seen))
            .collect();
        let posted_spans: HashSet<String> = records.iter().filter_map(|r| r.span_id.clone()).collect();
        let trace_agents: HashMap<&str, String> = objects
            .traces
            .iter()
            .filter_map(|(id, state)| state.resolve().agent_id.map(|agent| (id.as_str(), agent)))
            .collect();
        for (id, state) in &objects.spans {
            if posted_spans.contains(id) {
                continue;
            }
            let span = state.resolve();
            let agent = span.trace_id.as_deref().and_then(|trace| trace_agents.get(trace)).map(String::as_str);
            records.extend(UsageRecord::from_span(id, &span, agent, state.first_seen));
        }
        for record in &mut records {
            record.price(&prices);
        }
        Ok(records)
    }

    async fn frame(&self, records: &[UsageRecord]) -> Result<DataFrame, QueryError> {
        let batch = to_batch(records)?;
        let table = MemTable::try_new(schema(), vec![vec![batch]])?;
        Ok(SessionContext::new().read_table(Arc::new(table))?)
    }

    /// Reads back posted records by id, merged and priced, in the order of
    /// `ids`. Each lookup goes to the buffer and the segments whose Bloom
    /// filters may hold the id, not to every record of the organization.
    /// While the event store is unreachable, it reads memory alone, and
    /// while the control plane is, it prices without fresh overrides, so a
    /// durable post is still acknowledged.
    pub async fn posted(&self, organization_id: &str, ids: &[String]) -> Result<Vec<Value>, QueryError> {
        let prices = self.prices.book_for_write(organization_id).await?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(state) = self.store.usage_or_buffered(organization_id, id).await? {
                let mut record = UsageRecord::from_posted(id, &state.resolve(), state.first_seen);
                record.price(&prices);
                records.push(record.to_json());
            }
        }
        Ok(records)
    }

    /// Finds one record by id: a posted record, or else the record of the
    /// `llm` span with that id when no posted record names the span.
    pub async fn get(&self, organization_id: &str, id: &str) -> Result<Option<Value>, QueryError> {
        if self.typed {
            if let Some(found) = self.get_by_reads(organization_id, id).await? {
                return Ok(found);
            }
        }
        let records = self.records(organization_id).await?;
        Ok(records.iter().find(|r| r.id == id).map(UsageRecord::to_json))
    }

    /// Finds one record through point reads and the typed `span_id` column
    /// of posted records, instead of merging every object. `None` when the
    /// store has neither segment files nor ClickHouse.
    async fn get_by_reads(&self, organization_id: &str, id: &str) -> Result<Option<Option<Value>>, QueryError> {
        let prices = self.prices.book(organization_id).await?;
        if let Some(state) = self.store.usage(organization_id, id).await? {
            let mut record = UsageRecord::from_posted(id, &state.resolve(), state.first_seen);
            record.price(&prices);
            return Ok(Some(Some(record.to_json())));
        }
        let Some(span) = self.store.span(organization_id, id).await? else {
            return Ok(Some(None));
        };
        let fields = span.resolve();
        if fields.span_type.as_deref() != Some("llm") {
            return Ok(Some(None));
        }

        // A posted record that names the span replaces the span's record.
        let Some(scan) = self.store.fast_scan(organization_id).await? else {
            return Ok(None);
        };
        if fast::posted_record_names(&fast::session(), &scan, organization_id, id).await? {
            return Ok(Some(None));
        }
        drop(scan);

        let trace = match fields.trace_id.as_deref() {
            Some(trace_id) => self.store.trace(organization_id, trace_id).await?,
            None => None,
        };
        let agent = trace.and_then(|trace| trace.resolve().agent_id);
        let record = UsageRecord::from_span(id, &fields, agent.as_deref(), span.first_seen).map(|mut record| {
            record.price(&prices);
            record.to_json()
        });
        Ok(Some(record))
    }

    /// Records newest first, after `cursor` when given. Returns the page and
    /// the cursor of its last row when more rows follow.
    pub async fn list(
        &self,
        organization_id: &str,
        filter: &UsageFilter,
        cursor: Option<&UsageCursor>,
        limit: usize,
    ) -> Result<(ListPage, Option<UsageCursor>), QueryError> {
        let records = self.records(organization_id).await?;
        let filtered = apply(self.frame(&records).await?, filter_exprs(filter))?;
        let count = filtered.clone().count().await?;

        let mut page = filtered;
        if let Some(cursor) = cursor {
            let before = col("timestamp")
                .lt(lit(cursor.timestamp))
                .or(col("timestamp").eq(lit(cursor.timestamp)).and(col("id").lt(lit(cursor.id.as_str()))));
            page = page.filter(before)?;
        }
        let batches = page
            .sort(vec![col("timestamp").sort(false, false), col("id").sort(false, false)])?
            .limit(0, Some(limit + 1))?
            .select_columns(&["id"])?
            .collect()
            .await?;
        let by_id: HashMap<&str, &UsageRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut rows: Vec<&UsageRecord> = Vec::new();
        for batch in &batches {
            let ids = text_column(batch, "id")?;
            rows.extend(ids.iter().flatten().filter_map(|id| by_id.get(id).copied()));
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| UsageCursor { timestamp: last.timestamp, id: last.id.clone() })
        } else {
            None
        };
        let results = rows.iter().map(|r| r.to_json()).collect();
        Ok((ListPage { count, results }, next))
    }

    /// Returns the groups of a summary from the typed columns, or `None`
    /// when the summary needs each record's agent (which comes from its
    /// trace) or the store has neither segment files nor ClickHouse.
    async fn fast_groups(
        &self,
        organization_id: &str,
        filter: &UsageFilter,
        group_by: &[&str],
    ) -> Result<Option<Vec<usage_sums::Group>>, QueryError> {
        if !self.typed || filter.agent.is_some() || group_by.contains(&"agent") {
            return Ok(None);
        }
        let Some(scan) = self.store.fast_scan(organization_id).await? else {
            return Ok(None);
        };
        let prices = self.prices.book(organization_id).await?;
        let dimensions = usage_sums::Dimensions {
            model: group_by.contains(&"model"),
            day: group_by.contains(&"day"),
            hour: group_by.contains(&"hour"),
            trace: group_by.contains(&"trace"),
        };
        let context = fast::scan_session();
        let parts = fast::usage_parts(&context, &scan, organization_id).await?;
        let summed = |records: DataFrame| -> Result<DataFrame, QueryError> {
            let records = records.select(vec![
                col("model"),
                col("trace_id"),
                col("input_tokens"),
                col("output_tokens"),
                col("cached_tokens"),
                col("reasoning_tokens"),
                col("cost_nanos"),
                col("usage_at").alias("timestamp"),
            ])?;
            apply(records, filter_exprs(filter))
        };
        if let Some(tier) = &scan.clickhouse {
            if let Some(stored) = clickhouse_groups(tier, organization_id, &scan, &parts, filter, dimensions, &prices).await? {
                let mut groups = usage_sums::sum_groups(summed(parts.memory)?, prices, dimensions).await?;
                groups.extend(stored);
                return Ok(Some(usage_sums::merge_groups(groups)));
            }
        }
        let mut records = parts.memory;
        if let Some(posted) = parts.posted {
            records = posted.union(records)?;
        }
        if let Some(spans) = parts.spans {
            records = spans.union(records)?;
        }
        Ok(Some(usage_sums::sum_groups(summed(records)?, prices, dimensions).await?))
    }

    /// Returns the summary from the typed columns, or `None` when it needs the general plan.
    async fn fast_summary(&self, organization_id: &str, filter: &UsageFilter, group_by: &[&str]) -> Result<Option<Value>, QueryError> {
        let Some(mut groups) = self.fast_groups(organization_id, filter, group_by).await? else {
            return Ok(None);
        };
        let mut totals = usage_sums::Sums::default();
        for group in &groups {
            totals.add(&group.sums);
        }
        let sums_json = |sums: &usage_sums::Sums| totals_of(sums.records, sums.tokens, Money(sums.cost), sums.priced);
        let mut summary = json!({ "totals": Value::Object(sums_json(&totals)) });
        if group_by.is_empty() {
            return Ok(Some(summary));
        }

        usage_sums::sort_groups(&mut groups, group_by);
        let groups: Vec<Value> = groups
            .iter()
            .map(|group| {
                let mut object = Map::new();
                for name in group_by {
                    let value = match *name {
                        "model" => json!(group.model),
                        "day" => json!(group.day.map(|micros| bucket_text("day", micros))),
                        "hour" => json!(group.hour.map(|micros| bucket_text("hour", micros))),
                        // `trace`: summaries grouped by `agent` take the general plan.
                        _ => json!(group.trace),
                    };
                    object.insert((*name).to_string(), value);
                }
                object.extend(sums_json(&group.sums));
                Value::Object(object)
            })
            .collect();

        summary["group_by"] = json!(group_by);
        summary["groups"] = Value::Array(groups);
        Ok(Some(summary))
    }

    /// Sums the filtered records overall and, per group of `group_by` columns
    /// (names from [`GROUP_KEYS`]), the same totals per group.
    pub async fn summary(&self, organization_id: &str, filter: &UsageFilter, group_by: &[&str]) -> Result<Value, QueryError> {
        if let Some(summary) = self.fast_summary(organization_id, filter, group_by).await? {
            return Ok(summary);
        }
        let records = self.records(organization_id).await?;
        let filtered = apply(self.frame(&records).await?, filter_exprs(filter))?;

        if group_by.is_empty() {
            let totals = filtered.aggregate(vec![], aggregates())?.collect().await?;
            return Ok(json!({ "totals": Value::Object(single_row(&totals)?) }));
        }

        let columns: Vec<(&str, &str)> = group_by
            .iter()
            .map(|key| GROUP_KEYS.iter().find(|(name, _)| name == key).copied().ok_or_else(|| QueryError::Internal(format!("unknown group {key}"))))
            .collect::<Result<_, _>>()?;
        let group_exprs: Vec<Expr> = columns.iter().map(|(_, column)| col(*column)).collect();
        let sort: Vec<_> = columns.iter().map(|(_, column)| col(*column).sort(true, true)).collect();
        let batches = filtered.aggregate(group_exprs, aggregates())?.sort(sort)?.collect().await?;
        // The records are read once: the totals add up the groups, which is
        // exact, since counts and tokens are integers and costs fixed-point.
        let totals = if batches.iter().any(|batch| batch.num_rows() > 0) {
            let grouped = SessionContext::new().read_batches(batches.iter().filter(|batch| batch.num_rows() > 0).cloned())?;
            single_row(&grouped.aggregate(vec![], sums_of_groups())?.collect().await?)?
        } else {
            totals_of(0, [0; 5], Money(0), 0)
        };
        let mut summary = json!({ "totals": Value::Object(totals) });
        let mut groups = Vec::new();
        for batch in &batches {
            let keys: Vec<StringArray> = columns.iter().map(|(_, column)| text_column(batch, column)).collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let mut group = Map::new();
                for ((name, _), values) in columns.iter().zip(&keys) {
                    let value = if values.is_null(row) { Value::Null } else { json!(values.value(row)) };
                    group.insert((*name).to_string(), value);
                }
                group.extend(totals_json(batch, row)?);
                groups.push(Value::Object(group));
            }
        }
        summary["group_by"] = json!(group_by);
        summary["groups"] = Value::Array(groups);
        Ok(summary)
    }
}

/// Returns the token sums of a group in the order of [`usage_sums::Sums`],
/// with the total of input and output last.
fn token_sums(input: i64, output: i64, cached: i64, reasoning: i64) -> [i64; 5] {
    [input, output, cached, reasoning, input.wrapping_add(output)]
}

/// Sums the stored records of a summary in ClickHouse, or returns `None`
/// when a price or a token count is too large for its 64-bit arithmetic.
///
/// Most prices are whole nano-dollars per token, and then ClickHouse only
/// sums tokens: the costs follow from the sums exactly. Otherwise each
/// record's cost is rounded on its own, so ClickHouse prices each record.
async fn clickhouse_groups(
    tier: &ClickHouseTier,
    organization_id: &str,
    scan: &FastScan,
    parts: &fast::UsageParts,
    filter: &UsageFilter,
    dimensions: usage_sums::Dimensions,
    book: &PriceBook,
) -> Result<Option<Vec<usage_sums::Group>>, QueryError> {
    let mut sums = UsageSums {
        organization_id: organization_id.to_string(),
        skipped_usage: parts.skipped_usage.clone(),
        skipped_spans: parts.skipped_spans.clone(),
        model: filter.model.clone(),
        trace: filter.trace.clone(),
        start: filter.start,
        end: filter.end,
        by_model: dimensions.model,
        by_day: dimensions.day,
        by_hour: dimensions.hour,
        by_trace: dimensions.trace,
        prices: Vec::new(),
        merged: scan.merged,
    };
    let rows = tier.sum_usage_tokens(&sums).await?;
    let mut prices: HashMap<Option<String>, Option<Price>> = HashMap::new();
    let mut per_token = true;
    for row in &rows {
        let price = prices.entry(row.model.clone()).or_insert_with(|| row.model.as_deref().and_then(|model| book.lookup(model)));
        let whole = |price: &Price| [price.input, price.cached_input, price.output].iter().all(|part| part.0 % 1_000_000 == 0);
        if row.without_cost > 0 && price.as_ref().is_some_and(|price| !whole(price)) {
            per_token = false;
        }
    }
    let split = |high: i64, low: i64| i128::from(high) * (1 << 32) + i128::from(low);
    let group = |model: Option<String>, day: i64, hour: i64, trace: String, sums: usage_sums::Sums| usage_sums::Group {
        model: if dimensions.model { model } else { None },
        day: dimensions.day.then_some(day),
        hour: dimensions.hour.then_some(hour),
        trace: (!trace.is_empty()).then_some(trace),
        sums,
    };
    if per_token {
        let groups = rows
            .into_iter()
            .map(|row| {
                let mut cost = split(row.cost_high, row.cost_low);
                let mut priced = row.with_cost as i64;
                if let Some(Some(price)) = prices.get(&row.model) {
                    cost += split(row.uncached_high, row.uncached_low) * (price.input.0 / 1_000_000)
                        + split(row.cached_high, row.cached_low) * (price.cached_input.0 / 1_000_000)
                        + split(row.output_high, row.output_low) * (price.output.0 / 1_000_000);
                    priced += row.without_cost as i64;
                }
                let tokens = token_sums(row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens);
                group(row.model, row.day, row.hour, row.trace, usage_sums::Sums { records: row.records as i64, tokens, cost, priced })
            })
            .collect();
        return Ok(Some(usage_sums::merge_groups(groups)));
    }

    for (model, price) in prices {
        let (Some(model), Some(price)) = (model, price) else { continue };
        let parts = [price.input.0, price.cached_input.0, price.output.0];
        if model.is_empty() || parts.iter().any(|part| !(0..i128::from(MAX_PUSHED_PRICE)).contains(part)) {
            return Ok(None);
        }
        sums.prices.push((model, parts.map(|part| part as i64)));
    }
    let rows = tier.sum_usage(&sums).await?;
    if rows.iter().any(|row| row.oversized > 0) {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|row| {
                let tokens = token_sums(row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens);
                let cost = split(row.cost_high, row.cost_low);
                group(row.model, row.day, row.hour, row.trace, usage_sums::Sums { records: row.records as i64, tokens, cost, priced: row.priced as i64 })
            })
            .collect(),
    ))
}
