//! The filtered, sorted and paginated trace list of `/traces/list/`, as one
//! DataFusion query over the `traces` table.
//!
//! Rows sort by the chosen column, then by id in the same direction, with
//! nulls (a running trace has no duration) last. A cursor is the sort value
//! and id of the last row of a page, so the next page starts right after it:
//! ties are ordered by id, and rows added meanwhile never shift the pages.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::expr::Like;
use datafusion::prelude::{col, lit, DataFrame, Expr, SessionContext};
use bedrock_store::events::typed::metadata_entry;
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

    /// Converts a cursor value to a literal of the column's type.
    fn literal(self, value: &Value) -> Option<Expr> {
        match self {
            SortField::DurationMs => value.as_f64().map(lit),
            SortField::SpanCount => value.as_u64().map(lit),
            SortField::StartedAt | SortField::CostUsd => value.as_i64().map(lit),
        }
    }
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
fn like_literal(text: &str) -> String {
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
    let (field, descending) = sort;
    let (frame, offset) = match paging {
        Paging::Offset(offset) => (frame, *offset),
        Paging::After(Some(cursor)) => (frame.filter(after_cursor(field, descending, cursor)?)?, 0),
        Paging::After(None) => (frame, 0),
    };
    let sorted = frame.sort(vec![col(field.column()).sort(!descending, false), col("id").sort(!descending, false)])?;
    Ok(sorted.limit(offset, Some(limit + 1))?)
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
    /// Lists a page from the typed columns of the segments when the filters
    /// and the sort use only fields of the trace itself. Returns `None` when
    /// they use span totals (span types, span errors, cost, span count) or
    /// the store has no segment files (ClickHouse): the general plan then
    /// merges every object. Only the traces of the page are read whole.
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
        let mut frame = fast::traces(&context, &scan, organization_id).await?;
        for expr in filter_exprs(filter) {
            frame = frame.filter(expr)?;
        }
        for (key, value) in &filter.metadata {
            frame = frame.filter(like("meta", format!("%{}%", like_literal(&metadata_entry(key, value)))))?;
        }
        let count = frame.clone().count().await?;
        let batches = page_of(frame, sort, paging, limit)?
            .select_columns(&[field.column(), "id"])?
            .collect()
            .await?;

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
