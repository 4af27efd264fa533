//! The filtered, sorted and paginated trace list of `/traces/list/`, as one
//! DataFusion query over the `traces` table.
//!
//! Rows sort by the chosen column, then by id in the same direction, with
//! nulls (a running trace has no duration) last. A cursor is the sort value
//! and id of the last row of a page, so the next page starts right after it:
//! ties are ordered by id, and rows added meanwhile never shift the pages.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::expr::Like;
use datafusion::prelude::{col, lit, DataFrame, Expr, SessionContext};
use futures::StreamExt;
use serde_json::Value;

use crate::fast;
use crate::table::TracesTable;
use crate::traces::{ListPage, QueryError, TraceQueries};

/// The columns a trace list can sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    StartedAt,
    DurationMs,
    CostUsd,
    SpanCount,
}

impl SortField {
    pub const NAMES: [&'static str; 4] = ["started_at", "duration_ms", "cost_usd", "span_count"];

    pub fn parse(name: &str) -> Option<SortField> {
        match name {
            "started_at" => Some(SortField::StartedAt),
            "duration_ms" => Some(SortField::DurationMs),
            "cost_usd" => Some(SortField::CostUsd),
            "span_count" => Some(SortField::SpanCount),
            _ => None,
        }
    }

    fn column(self) -> &'static str {
        match self {
            SortField::StartedAt => "started_at",
            SortField::DurationMs => "duration_ms",
            SortField::CostUsd => "cost_nanos",
            SortField::SpanCount => "span_count",
        }
    }

    /// Appends the non-null values of `array`, the column's values, as keys
    /// whose integer order is the values' order.
    fn push_keys(self, array: &Arc<dyn Array>, keys: &mut Vec<i64>) -> Result<(), QueryError> {
        match self {
            SortField::DurationMs => {
                let values = cast(array, &DataType::Float64)?;
                let values = values.as_any().downcast_ref::<Float64Array>().ok_or_else(|| QueryError::Internal("duration".into()))?;
                keys.extend(values.iter().flatten().map(float_key));
            }
            _ => {
                let values = cast(array, &DataType::Int64)?;
                let values = values.as_any().downcast_ref::<Int64Array>().ok_or_else(|| QueryError::Internal("sort value".into()))?;
                keys.extend(values.iter().flatten());
            }
        }
        Ok(())
    }

    /// Converts a key of [`SortField::push_keys`] back to a literal of the column's type.
    fn key_literal(self, key: i64) -> Expr {
        match self {
            SortField::DurationMs => lit(f64::from_bits(float_key_bits(key))),
            _ => lit(key),
        }
    }

    /// Counts the keys that sort before the cursor's value or equal it: every
    /// row before the cursor has one. A null value sorts after all keys.
    fn keys_up_to(self, cursor: &TraceCursor, descending: bool, keys: &[i64]) -> usize {
        let key = match self {
            SortField::DurationMs => cursor.value.as_f64().map(float_key),
            _ => cursor.value.as_i64(),
        };
        match key {
            Some(key) => keys.iter().filter(|k| if descending { **k >= key } else { **k <= key }).count(),
            None => keys.len(),
        }
    }

    /// Converts a cursor value to a literal of the column's type.
    fn literal(self, value: &Value) -> Option<Expr> {
        match self {
            SortField::DurationMs => value.as_f64().map(lit),
            SortField::SpanCount => value.as_u64().map(lit),
            SortField::StartedAt | SortField::CostUsd => value.as_i64().map(lit),
        }
    }
}

/// Maps a float to an integer of the same order (IEEE 754 total order).
fn float_key(value: f64) -> i64 {
    let bits = value.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// Inverts [`float_key`], which is its own inverse.
fn float_key_bits(key: i64) -> u64 {
    float_key(f64::from_bits(key as u64)) as u64
}

/// Filters of the trace list; every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct TraceFilter {
    pub agent: Option<String>,
    pub name: Option<String>,
    /// A substring of the name, matched literally (no wildcards).
    pub name_contains: Option<String>,
    /// Exclusive bounds on `started_at`, in microseconds.
    pub started_after: Option<i64>,
    pub started_before: Option<i64>,
    pub status: Option<String>,
    pub has_error: Option<bool>,
    /// Top-level metadata keys and the values they must have, as strings.
    pub metadata: Vec<(String, String)>,
    /// A span type that the trace must contain.
    pub span_type: Option<String>,
    pub min_duration_ms: Option<f64>,
    pub max_duration_ms: Option<f64>,
    /// Inclusive lower bound of the cost, in nano-dollars.
    pub min_cost_nanos: Option<i64>,
}

/// The start of a page: the sort value and id of the previous page's last row.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceCursor {
    /// The sort column's value (null for a null value).
    pub value: Value,
    pub id: String,
}

/// How to page: by offset (page numbers) or after a cursor.
#[derive(Clone, Copy)]
pub enum Paging<'a> {
    Offset(usize),
    After(Option<&'a TraceCursor>),
}

/// Escapes `%`, `_` and `\` so that a LIKE pattern matches `text` literally.
pub(crate) fn like_literal(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn like(column: &str, pattern: String) -> Expr {
    Expr::Like(Like::new(false, Box::new(col(column)), Box::new(lit(pattern)), Some('\\'), false))
}

fn filter_exprs(filter: &TraceFilter) -> Vec<Expr> {
    let mut exprs = Vec::new();
    if let Some(agent) = &filter.agent {
        exprs.push(col("agent_id").eq(lit(agent.as_str())));
    }
    if let Some(name) = &filter.name {
        exprs.push(col("name").eq(lit(name.as_str())));
    }
    if let Some(part) = &filter.name_contains {
        exprs.push(like("name", format!("%{}%", like_literal(part))));
    }
    if let Some(after) = filter.started_after {
        exprs.push(col("started_at").gt(lit(after)));
    }
    if let Some(before) = filter.started_before {
        exprs.push(col("started_at").lt(lit(before)));
    }
    if let Some(status) = &filter.status {
        exprs.push(col("status").eq(lit(status.as_str())));
    }
    if let Some(has_error) = filter.has_error {
        exprs.push(col("has_error").eq(lit(has_error)));
    }
    if let Some(kind) = &filter.span_type {
        exprs.push(like("span_types", format!("%,{},%", like_literal(kind))));
    }
    if let Some(min) = filter.min_duration_ms {
        exprs.push(col("duration_ms").gt_eq(lit(min)));
    }
    if let Some(max) = filter.max_duration_ms {
        exprs.push(col("duration_ms").lt_eq(lit(max)));
    }
    if let Some(min) = filter.min_cost_nanos {
        exprs.push(col("cost_nanos").gt_eq(lit(min)));
    }
    exprs
}

/// Rows after `cursor` in the order (column, id), both descending or both
/// ascending, with nulls last.
fn after_cursor(field: SortField, descending: bool, cursor: &TraceCursor) -> Result<Expr, QueryError> {
    let column = col(field.column());
    let id = lit(cursor.id.as_str());
    let id_after = if descending { col("id").lt(id) } else { col("id").gt(id) };
    if cursor.value.is_null() {
        return Ok(column.is_null().and(id_after));
    }
    let value = field.literal(&cursor.value).ok_or_else(|| QueryError::Invalid("cursor".into()))?;
    let beyond = if descending { column.clone().lt(value.clone()) } else { column.clone().gt(value.clone()) };
    Ok(beyond.or(column.clone().eq(value).and(id_after)).or(column.is_null()))
}

/// Sorts `frame` by the sort column, then id, and keeps the page that
/// `paging` selects plus one row, which tells whether more rows follow.
fn page_of(frame: DataFrame, sort: (SortField, bool), paging: &Paging<'_>, limit: usize) -> Result<DataFrame, QueryError> {
    let (frame, offset) = after_paging(frame, sort, paging)?;
    sorted_page(frame, sort, offset, limit)
}

/// Applies a cursor's filter. Returns the rows and the offset still to skip.
fn after_paging(frame: DataFrame, sort: (SortField, bool), paging: &Paging<'_>) -> Result<(DataFrame, usize), QueryError> {
    let (field, descending) = sort;
    Ok(match paging {
        Paging::Offset(offset) => (frame, *offset),
        Paging::After(Some(cursor)) => (frame.filter(after_cursor(field, descending, cursor)?)?, 0),
        Paging::After(None) => (frame, 0),
    })
}

fn sorted_page(frame: DataFrame, sort: (SortField, bool), offset: usize, limit: usize) -> Result<DataFrame, QueryError> {
    let (field, descending) = sort;
    let sorted = frame.sort(vec![col(field.column()).sort(!descending, false), col("id").sort(!descending, false)])?;
    Ok(sorted.limit(offset, Some(limit + 1))?)
}

/// Counts the rows and finds the page as [`page_of`] does.
///
/// With `filtered`, the filters are costly to evaluate twice, so one scan
/// reads the sort column and id of each matching row, and the page is sorted
/// from those.
///
/// Otherwise a first scan reads the sort column alone, counts the rows and
/// selects the value of the page's last row. A second scan sorts by column
/// and id only the rows up to that value, ties included, so it decodes few
/// ids. DataFusion's top-k, which this replaces, took 66 ms of compute for
/// 333,000 trace rows in ascending order. When the page reaches null values,
/// the second scan sorts every row.
async fn count_and_page(
    frame: DataFrame,
    sort: (SortField, bool),
    paging: &Paging<'_>,
    limit: usize,
    filtered: bool,
) -> Result<(usize, Vec<RecordBatch>), QueryError> {
    if filtered {
        return collect_and_page(frame, sort, paging, limit).await;
    }
    let (field, descending) = sort;
    let column = field.column();

    let mut values = frame.clone().select_columns(&[column])?.execute_stream().await?;
    let mut count = 0;
    let mut keys: Vec<i64> = Vec::new();
    while let Some(batch) = values.next().await {
        let batch = batch?;
        count += batch.num_rows();
        field.push_keys(batch.column(0), &mut keys)?;
    }

    let (frame, offset) = after_paging(frame, sort, paging)?;
    // The keys include the rows before the cursor, so the page's last row
    // is at most this far down their order.
    let page_end = match paging {
        Paging::After(Some(cursor)) => field.keys_up_to(cursor, descending, &keys) + limit + 1,
        _ => offset + limit + 1,
    };
    let bounded = if page_end <= keys.len() {
        let bound = if descending {
            *keys.select_nth_unstable_by(page_end - 1, |a, b| b.cmp(a)).1
        } else {
            *keys.select_nth_unstable(page_end - 1).1
        };
        let bound = field.key_literal(bound);
        frame.filter(if descending { col(column).gt_eq(bound) } else { col(column).lt_eq(bound) })?
    } else {
        frame
    };

    let page = sorted_page(bounded, sort, offset, limit)?.select_columns(&[column, "id"])?.collect().await?;
    Ok((count, page))
}

/// Counts the rows and finds the page from the sort column and id of every
/// row, read in one scan.
async fn collect_and_page(
    frame: DataFrame,
    sort: (SortField, bool),
    paging: &Paging<'_>,
    limit: usize,
) -> Result<(usize, Vec<RecordBatch>), QueryError> {
    let rows = frame.select_columns(&[sort.0.column(), "id"])?.collect().await?;
    let count = rows.iter().map(RecordBatch::num_rows).sum();
    let rows: Vec<RecordBatch> = rows.into_iter().filter(|batch| batch.num_rows() > 0).collect();
    if rows.is_empty() {
        return Ok((0, Vec::new()));
    }

    let page = page_of(SessionContext::new().read_batches(rows)?, sort, paging, limit)?.collect().await?;
    Ok((count, page))
}

fn cursor_value(field: SortField, column: &Arc<dyn Array>, row: usize) -> Result<Value, QueryError> {
    if column.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match field {
        SortField::DurationMs => {
            let values = cast(column, &DataType::Float64)?;
            let values = values.as_any().downcast_ref::<Float64Array>().ok_or_else(|| QueryError::Internal("duration".into()))?;
            serde_json::json!(values.value(row))
        }
        _ => {
            let values = cast(column, &DataType::Int64)?;
            let values = values.as_any().downcast_ref::<Int64Array>().ok_or_else(|| QueryError::Internal("sort value".into()))?;
            serde_json::json!(values.value(row))
        }
    })
}

impl TraceQueries {
    /// Lists one page of the organization's traces. Returns the page and, when
    /// more rows follow, the cursor of its last row.
    pub async fn list_filtered(
        &self,
        organization_id: &str,
        filter: &TraceFilter,
        sort: (SortField, bool),
        paging: Paging<'_>,
        limit: usize,
    ) -> Result<(ListPage, Option<TraceCursor>), QueryError> {
        if let Some(page) = self.list_fast(organization_id, filter, sort, &paging, limit).await? {
            return Ok(page);
        }
        let field = sort.0;
        let prices = self.prices().book(organization_id).await?;
        let table = TracesTable::new(self.store().clone(), organization_id, prices).with_metadata_filters(filter.metadata.clone());
        let mut frame = SessionContext::new().read_table(Arc::new(table))?;
        for expr in filter_exprs(filter) {
            frame = frame.filter(expr)?;
        }
        let count = frame.clone().count().await?;

        let batches = page_of(frame, sort, &paging, limit)?
            .select_columns(&[field.column(), "id", "view"])?
            .collect()
            .await?;

        let mut rows: Vec<(Value, String, Value)> = Vec::new();
        for batch in &batches {
            let ids = batch.column(1).as_any().downcast_ref::<StringArray>().ok_or_else(|| QueryError::Internal("id".into()))?;
            let views = batch.column(2).as_any().downcast_ref::<StringArray>().ok_or_else(|| QueryError::Internal("view".into()))?;
            for row in 0..batch.num_rows() {
                let view = serde_json::from_str(views.value(row)).map_err(|err| QueryError::Internal(err.to_string()))?;
                rows.push((cursor_value(field, batch.column(0), row)?, ids.value(row).to_string(), view));
            }
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(value, id, _)| TraceCursor { value: value.clone(), id: id.clone() })
        } else {
            None
        };
        let results = rows.into_iter().map(|(_, _, view)| view).collect();
        Ok((ListPage { count, results }, next))
    }
}

impl TraceQueries {
    /// Lists a page from the typed columns of the segments or of ClickHouse
    /// when the filters and the sort use only fields of the trace itself.
    /// Returns `None` when they use span totals (span types, span errors,
    /// cost, span count): the general plan then merges every object (NOTE:
    /// not pushed down). Only the traces of the page are read whole.
    async fn list_fast(
        &self,
        organization_id: &str,
        filter: &TraceFilter,
        sort: (SortField, bool),
        paging: &Paging<'_>,
        limit: usize,
    ) -> Result<Option<(ListPage, Option<TraceCursor>)>, QueryError> {
        let field = sort.0;
        let span_totals = filter.span_type.is_some() || filter.has_error.is_some() || filter.min_cost_nanos.is_some();
        if !self.typed() || span_totals || !matches!(field, SortField::StartedAt | SortField::DurationMs) {
            return Ok(None);
        }
        let Some(scan) = self.store().fast_scan(organization_id).await? else {
            return Ok(None);
        };
        let context = fast::session();
        let mut frame = fast::traces(&context, &scan, organization_id, &filter.metadata).await?;
        for expr in filter_exprs(filter) {
            frame = frame.filter(expr)?;
        }
        // The name's text, the agent's large dictionaries and the full metadata
        // text cost the most to filter, so those filters run once. Others run
        // twice to skip reading ids.
        let filtered = filter.name.is_some()
            || filter.name_contains.is_some()
            || filter.agent.is_some()
            || filter.metadata.iter().any(|(key, _)| fast::metadata_reads_text(&scan, key));
        let (count, batches) = count_and_page(frame, sort, paging, limit, filtered).await?;

        let mut rows: Vec<(Value, String)> = Vec::new();
        for batch in &batches {
            let ids = cast(batch.column(1), &DataType::Utf8)?;
            let ids = ids.as_any().downcast_ref::<StringArray>().ok_or_else(|| QueryError::Internal("id".into()))?;
            for row in 0..batch.num_rows() {
                rows.push((cursor_value(field, batch.column(0), row)?, ids.value(row).to_string()));
            }
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(value, id)| TraceCursor { value: value.clone(), id: id.clone() })
        } else {
            None
        };
        let ids: Vec<&str> = rows.iter().map(|(_, id)| id.as_str()).collect();
        let results = self.typed_trace_summaries(&context, scan, organization_id, &ids).await?;
        Ok(Some((ListPage { count, results }, next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_keep_the_order_and_invert() {
        let values = [f64::NEG_INFINITY, -1e300, -2.5, -0.0, 0.0, 1e-300, 0.001, 1.0, 86_400_000.5, 1e300, f64::INFINITY];
        let keys: Vec<i64> = values.iter().map(|v| float_key(*v)).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{keys:?}");
        }
        for value in values {
            assert_eq!(f64::from_bits(float_key_bits(float_key(value))).to_bits(), value.to_bits());
        }
    }

    #[test]
    fn keys_up_to_cursor_count_ties() {
        let keys = [5, 3, 3, 9, 1];
        let cursor = |value: Value| TraceCursor { value, id: "t".into() };
        assert_eq!(SortField::StartedAt.keys_up_to(&cursor(serde_json::json!(3)), true, &keys), 4);
        assert_eq!(SortField::StartedAt.keys_up_to(&cursor(serde_json::json!(3)), false, &keys), 3);
        assert_eq!(SortField::StartedAt.keys_up_to(&cursor(Value::Null), true, &keys), 5);
        let durations: Vec<i64> = [0.5, 2.0, 2.0].iter().map(|v| float_key(*v)).collect();
        assert_eq!(SortField::DurationMs.keys_up_to(&cursor(serde_json::json!(2.0)), false, &durations), 3);
        assert_eq!(SortField::DurationMs.keys_up_to(&cursor(serde_json::json!(2.0)), true, &durations), 2);
    }
}
