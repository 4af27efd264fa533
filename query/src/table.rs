//! DataFusion table provider over the event store: every trace of one
//! organization, merged from segments and the in-memory buffer and resolved
//! with its span totals, as columns that queries filter, sort and page.
//!
//! NOTE: a scan merges the organization's whole event data in Rust before
//! DataFusion sees it, so filters and limits are applied after the merge, not
//! pushed into the segment scans or into ClickHouse. Lists that use only the
//! trace's own fields read the typed columns instead (see [`crate::fast`]).
//! This table serves the filters and sorts on span totals (span types, span
//! errors, cost, span count).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bedrock_store::events::model::SpanFields;
use bedrock_store::events::pricing::PriceBook;
use bedrock_store::events::EventStore;
use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::views::TraceView;

/// The `traces` table of one organization.
pub struct TracesTable {
    store: Arc<EventStore>,
    organization_id: String,
    prices: Arc<PriceBook>,
    /// `(key, value)` pairs that a trace's top-level metadata must match.
    metadata_filters: Vec<(String, String)>,
    schema: SchemaRef,
}

impl fmt::Debug for TracesTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracesTable").field("organization_id", &self.organization_id).finish()
    }
}

impl TracesTable {
    pub fn new(store: Arc<EventStore>, organization_id: &str, prices: Arc<PriceBook>) -> Self {
        TracesTable {
            store,
            organization_id: organization_id.to_string(),
            prices,
            metadata_filters: Vec::new(),
            schema: Self::table_schema(),
        }
    }

    /// Keeps only traces whose metadata has each `key` with `value`, compared
    /// as strings: a string value by its text, any other by its JSON.
    /// NOTE: this filter runs in Rust while the table is built, because the
    /// metadata keys are not columns.
    pub fn with_metadata_filters(mut self, filters: Vec<(String, String)>) -> Self {
        self.metadata_filters = filters;
        self
    }

    /// Columns: ids and times (microseconds since the epoch), computed
    /// fields, cost in nano-dollars, and `view`, the API JSON of the trace.
    pub fn table_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("agent_id", DataType::Utf8, true),
            Field::new("started_at", DataType::Int64, true),
            Field::new("ended_at", DataType::Int64, true),
            Field::new("first_seen", DataType::Int64, false),
            Field::new("duration_ms", DataType::Float64, true),
            Field::new("status", DataType::Utf8, false),
            Field::new("span_count", DataType::UInt64, false),
            Field::new("cost_nanos", DataType::Int64, false),
            Field::new("has_error", DataType::Boolean, false),
            // The distinct span types between commas, such as `,text,llm,`.
            Field::new("span_types", DataType::Utf8, false),
            Field::new("view", DataType::Utf8, false),
        ]))
    }

    async fn views(&self) -> Result<Vec<TraceView>> {
        let objects = self
            .store
            .all(&self.organization_id)
            .await
            .map_err(|err| DataFusionError::External(Box::new(err)))?;
        let (traces, spans) = (objects.traces, objects.spans);
        let mut by_trace: HashMap<String, Vec<SpanFields>> = HashMap::new();
        for state in spans.values() {
            let fields = state.resolve();
            if let Some(trace_id) = &fields.trace_id {
                by_trace.entry(trace_id.clone()).or_default().push(fields);
            }
        }
        let empty = Vec::new();
        Ok(traces
            .iter()
            .map(|(id, state)| TraceView::new(id, state, by_trace.get(id).unwrap_or(&empty).iter(), &self.prices))
            .filter(|view| self.metadata_filters.iter().all(|(key, value)| metadata_matches(view, key, value)))
            .collect())
    }

    fn batch(&self, views: &[TraceView]) -> Result<RecordBatch> {
        let cost = |v: &TraceView| i64::try_from(v.totals.cost.0).unwrap_or(i64::MAX);
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(views.iter().map(|v| v.id.as_str()))),
                Arc::new(StringArray::from_iter(views.iter().map(|v| v.fields.name.as_deref()))),
                Arc::new(StringArray::from_iter(views.iter().map(|v| v.fields.agent_id.as_deref()))),
                Arc::new(Int64Array::from_iter(views.iter().map(|v| v.fields.started_at))),
                Arc::new(Int64Array::from_iter(views.iter().map(|v| v.fields.ended_at))),
                Arc::new(Int64Array::from_iter_values(views.iter().map(|v| v.first_seen))),
                Arc::new(Float64Array::from_iter(views.iter().map(TraceView::duration_ms))),
                Arc::new(StringArray::from_iter_values(views.iter().map(TraceView::status))),
                Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| v.totals.span_count))),
                Arc::new(Int64Array::from_iter_values(views.iter().map(cost))),
                Arc::new(BooleanArray::from_iter(views.iter().map(|v| Some(v.has_error())))),
                Arc::new(StringArray::from_iter_values(views.iter().map(|v| format!(",{},", v.totals.span_types.join(","))))),
                Arc::new(StringArray::from_iter_values(views.iter().map(|v| v.to_json().to_string()))),
            ],
        )?;
        Ok(batch)
    }
}

fn metadata_matches(view: &TraceView, key: &str, wanted: &str) -> bool {
    match view.fields.metadata.as_ref().and_then(|m| m.get(key)) {
        Some(serde_json::Value::String(text)) => text == wanted,
        Some(other) => other.to_string() == wanted,
        None => false,
    }
}

#[async_trait]
impl TableProvider for TracesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let views = self.views().await?;
        let batch = self.batch(&views)?;
        let plan = MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())?;
        Ok(plan)
    }
}
