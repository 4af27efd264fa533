//! Trace and span reads: one trace with its spans, one span, and the default
//! lists of `/traces/` and `/spans/`.
//!
//! NOTE: the span list, and the trace list on ClickHouse, merge every object
//! of the organization on each call, which is linear in its data. The trace
//! list on the embedded store reads the typed segment columns instead.

use std::sync::Arc;

use bedrock_store::events::model::SpanFields;
use bedrock_store::events::EventStore;
use bedrock_store::StoreError;
use datafusion::arrow::array::StringArray;
use datafusion::prelude::{col, lit, SessionContext};
use serde_json::Value;

use crate::prices::Prices;
use crate::table::TracesTable;
use crate::views::{SpanTotals, SpanView, TraceView};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("query failed: {0}")]
    DataFusion(datafusion::error::DataFusionError),
    #[error("query failed: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("query failed: {0}")]
    Internal(String),
    /// A request value, named here, that the query cannot use.
    #[error("invalid {0}")]
    Invalid(String),
}

/// Keeps a store error that a table provider raised inside DataFusion a
/// store error, so an unreachable event store is a 503 and not a 500.
impl From<datafusion::error::DataFusionError> for QueryError {
    fn from(err: datafusion::error::DataFusionError) -> Self {
        match err {
            datafusion::error::DataFusionError::External(inner) => match inner.downcast::<StoreError>() {
                Ok(store) => QueryError::Store(*store),
                Err(other) => QueryError::DataFusion(datafusion::error::DataFusionError::External(other)),
            },
            other => QueryError::DataFusion(other),
        }
    }
}

/// One page of a list with the number of rows behind it.
pub struct ListPage {
    pub count: usize,
    pub results: Vec<Value>,
}

#[derive(Clone)]
pub struct TraceQueries {
    store: Arc<EventStore>,
    prices: Prices,
    /// Whether lists may read the typed columns of the segments.
    typed: bool,
}

/// Returns the order of the default trace list: newest start first, then
/// newest first write, then id, with nulls last.
fn newest_first() -> Vec<datafusion::logical_expr::SortExpr> {
    vec![col("started_at").sort(false, false), col("first_seen").sort(false, false), col("id").sort(false, false)]
}

/// Returns the ids in the first column of `batches`, as text.
fn first_column_text(batches: &[datafusion::arrow::array::RecordBatch]) -> Result<Vec<String>, QueryError> {
    let mut ids = Vec::new();
    for batch in batches {
        let column = datafusion::arrow::compute::cast(batch.column(0), &datafusion::arrow::datatypes::DataType::Utf8)?;
        let column = column.as_any().downcast_ref::<StringArray>().ok_or_else(|| QueryError::Internal("id".into()))?;
        ids.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(ids)
}

fn span_order(a: &SpanView, b: &SpanView) -> std::cmp::Ordering {
    (a.started_at().unwrap_or(i64::MAX), a.first_seen, &a.id).cmp(&(b.started_at().unwrap_or(i64::MAX), b.first_seen, &b.id))
}

impl TraceQueries {
    pub fn new(store: Arc<EventStore>, prices: Prices) -> Self {
        TraceQueries { store, prices, typed: true }
    }

    /// Makes every list merge all objects and never read the typed
    /// columns: the reference that tests compare the typed plans with.
    pub fn general_plans_only(mut self) -> Self {
        self.typed = false;
        self
    }

    pub(crate) fn typed(&self) -> bool {
        self.typed
    }

    pub(crate) fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    pub(crate) fn prices(&self) -> &Prices {
        &self.prices
    }

    /// A trace with its spans in start order, or `None` when no write (create
    /// or update) has arrived for it.
    pub async fn trace_detail(&self, organization_id: &str, id: &str) -> Result<Option<Value>, QueryError> {
        let Some(state) = self.store.trace(organization_id, id).await? else {
            return Ok(None);
        };
        let spans = self.store.spans_of_trace(organization_id, id).await?;
        let mut views: Vec<SpanView> = spans.iter().map(|(span_id, s)| SpanView::new(span_id, s)).collect();
        views.sort_by(span_order);
        let prices = self.prices.book(organization_id).await?;
        let trace = TraceView::new(id, &state, views.iter().map(|v| &v.fields), &prices);
        let mut json = trace.to_json();
        if let Value::Object(map) = &mut json {
            map.insert("spans".into(), Value::Array(views.iter().map(SpanView::to_json).collect()));
        }
        Ok(Some(json))
    }

    /// Whether a trace exists (a create or an update has arrived for it).
    pub async fn trace_exists(&self, organization_id: &str, id: &str) -> Result<bool, QueryError> {
        Ok(self.store.trace(organization_id, id).await?.is_some())
    }

    /// A trace without its spans, as create and update responses return it.
    /// While the event store is unreachable, it is built from what this
    /// instance has in memory, and while the control plane is, priced
    /// without fresh overrides.
    pub async fn written_trace(&self, organization_id: &str, id: &str) -> Result<Option<Value>, QueryError> {
        let Some(state) = self.store.trace_or_buffered(organization_id, id).await? else {
            return Ok(None);
        };
        let spans = self.store.spans_of_trace_or_buffered(organization_id, id).await?;
        let fields: Vec<SpanFields> = spans.values().map(|s| s.resolve()).collect();
        let prices = self.prices.book_for_write(organization_id).await?;
        Ok(Some(TraceView::new(id, &state, fields.iter(), &prices).to_json()))
    }

    /// A span as a write response returns it, like [`TraceQueries::written_trace`].
    pub async fn written_span(&self, organization_id: &str, id: &str) -> Result<Option<Value>, QueryError> {
        let state = self.store.span_or_buffered(organization_id, id).await?;
        Ok(state.map(|state| SpanView::new(id, &state).to_json()))
    }

    pub async fn span(&self, organization_id: &str, id: &str) -> Result<Option<Value>, QueryError> {
        let state = self.store.span(organization_id, id).await?;
        Ok(state.map(|state| SpanView::new(id, &state).to_json()))
    }

    /// Spans, optionally of one trace and one type, in start order.
    pub async fn list_spans(
        &self,
        organization_id: &str,
        trace_id: Option<&str>,
        span_type: Option<&str>,
        flagged: Option<bool>,
        offset: usize,
        limit: usize,
    ) -> Result<ListPage, QueryError> {
        let states = match trace_id {
            Some(trace_id) => self.store.spans_of_trace(organization_id, trace_id).await?,
            None => {
                if let Some(page) = self.list_spans_fast(organization_id, span_type, flagged, offset, limit).await? {
                    return Ok(page);
                }
                self.store.all(organization_id).await?.spans
            }
        };
        let mut views: Vec<SpanView> = states
            .iter()
            .map(|(id, state)| SpanView::new(id, state))
            .filter(|view| span_type.is_none_or(|kind| view.fields.span_type.as_deref() == Some(kind)))
            .filter(|view| {
                flagged.is_none_or(|wanted| view.fields.flag.as_ref().is_some_and(|f| f.flagged) == wanted)
            })
            .collect();
        views.sort_by(span_order);
        let count = views.len();
        let results = views.iter().skip(offset).take(limit).map(SpanView::to_json).collect();
        Ok(ListPage { count, results })
    }

    /// Lists spans of every trace from the typed columns, in the order of
    /// [`span_order`]; only the spans of the page are read whole. `None`
    /// when the store has neither segment files nor ClickHouse.
    async fn list_spans_fast(
        &self,
        organization_id: &str,
        span_type: Option<&str>,
        flagged: Option<bool>,
        offset: usize,
        limit: usize,
    ) -> Result<Option<ListPage>, QueryError> {
        if !self.typed {
            return Ok(None);
        }
        let Some(scan) = self.store.fast_scan(organization_id).await? else {
            return Ok(None);
        };
        let context = crate::fast::session();
        let mut frame = crate::fast::spans(&context, &scan, organization_id).await?;
        if let Some(kind) = span_type {
            frame = frame.filter(col("span_type").eq(lit(kind)))?;
        }
        if let Some(wanted) = flagged {
            frame = frame.filter(col("flagged").eq(lit(wanted)))?;
        }
        let count = frame.clone().count().await?;

        // A span without a start sorts as if it started at the last instant.
        let start = datafusion::functions::expr_fn::coalesce(vec![col("started_at"), lit(i64::MAX)]);
        let batches = frame
            .sort(vec![start.sort(true, false), col("first_seen").sort(true, false), col("id").sort(true, false)])?
            .limit(offset, Some(limit))?
            .select_columns(&["id"])?
            .collect()
            .await?;
        let ids = first_column_text(&batches)?;
        drop(scan);

        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let states = self.store.spans(organization_id, &ids).await?;
        let results = ids.iter().filter_map(|id| states.get(*id).map(|state| SpanView::new(id, state).to_json())).collect();
        Ok(Some(ListPage { count, results }))
    }

    /// Returns the traces `ids` as lists show them, in the order given, with
    /// span totals summed from the typed columns of `scan`, and the traces
    /// read from the files that `scan` holds.
    pub(crate) async fn typed_trace_summaries(
        &self,
        context: &SessionContext,
        scan: bedrock_store::events::FastScan,
        organization_id: &str,
        ids: &[&str],
    ) -> Result<Vec<Value>, QueryError> {
        let prices = self.prices.book(organization_id).await?;
        let started = std::time::Instant::now();
        let mut totals: std::collections::HashMap<String, SpanTotals> = std::collections::HashMap::new();
        // Reading the spans and the traces side by side was no faster on 2 cores.
        let span_rows = crate::fast::span_rows_of_traces(context, &scan, organization_id, ids).await?;
        let traces = self.store.traces_in_scan(&scan, organization_id, ids).await?;
        for (trace_id, typed) in span_rows {
            totals.entry(trace_id).or_default().add_typed(&typed, &prices);
        }
        for state in scan.slow.spans.values() {
            let fields = state.resolve();
            if let Some(trace_id) = fields.trace_id.as_deref().filter(|trace| ids.contains(trace)) {
                totals.entry(trace_id.to_string()).or_default().add(&fields, &prices);
            }
        }
        tracing::debug!(traces = ids.len(), elapsed = ?started.elapsed(), "read the traces of a list page");
        Ok(ids
            .iter()
            .filter_map(|id| {
                let state = traces.get(*id)?;
                Some(TraceView::with_totals(id, state, totals.remove(*id).unwrap_or_default()).to_json())
            })
            .collect())
    }

    /// Traces newest first, from the typed columns of the segments when the
    /// store has them.
    async fn list_traces_fast(&self, organization_id: &str, offset: usize, limit: usize) -> Result<Option<ListPage>, QueryError> {
        if !self.typed {
            return Ok(None);
        }
        let Some(scan) = self.store.fast_scan(organization_id).await? else {
            return Ok(None);
        };
        let context = crate::fast::session();
        let frame = crate::fast::traces(&context, &scan, organization_id, &[]).await?;
        let count = frame.clone().count().await?;
        let batches = frame
            .sort(newest_first())?
            .limit(offset, Some(limit))?
            .select_columns(&["id"])?
            .collect()
            .await?;
        let ids = first_column_text(&batches)?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ok(Some(ListPage { count, results: self.typed_trace_summaries(&context, scan, organization_id, &ids).await? }))
    }

    /// Traces newest first, read through the DataFusion `traces` table.
    pub async fn list_traces(&self, organization_id: &str, offset: usize, limit: usize) -> Result<ListPage, QueryError> {
        if let Some(page) = self.list_traces_fast(organization_id, offset, limit).await? {
            return Ok(page);
        }
        let context = SessionContext::new();
        let prices = self.prices.book(organization_id).await?;
        let table = context.read_table(Arc::new(TracesTable::new(self.store.clone(), organization_id, prices)))?;
        let count = table.clone().count().await?;
        let page = table
            .sort(newest_first())?
            .limit(offset, Some(limit))?
            .select_columns(&["view"])?
            .collect()
            .await?;
        let mut results = Vec::with_capacity(limit.min(count));
        for batch in &page {
            let views = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| QueryError::Internal("the view column is not text".into()))?;
            for view in views.iter().flatten() {
                results.push(serde_json::from_str(view).map_err(|err| QueryError::Internal(err.to_string()))?);
            }
        }
        Ok(ListPage { count, results })
    }
}
