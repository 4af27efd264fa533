//! Eval dashboards: checkpoint pass rates and review scores, filtered and
//! grouped by agent, agent tag, scenario, name and day.
//!
//! Each query joins events (checkpoint spans, traces) with the control plane
//! (agents, their tags, reviews, eval cases) in DataFusion. The rows are
//! prepared in Rust first: a checkpoint's outcome and a review's weighted
//! score follow the `evals` rules, and a tag grouping becomes a table of
//! `(agent, value)` pairs. Filtering, joining and aggregation are DataFusion's.
//!
//! NOTE: the event rows come from merging every object of the organization,
//! which is linear in the organization's data, as for the other lists.

use std::collections::HashMap;
use std::sync::Arc;

use bedrock_evals::{checkpoint_passed, checkpoint_scenario, pass_rate, tag_value};
use bedrock_store::control::{AgentFacts, ControlPlane, EvalCase, Review};
use bedrock_store::events::model::SpanFields;
use bedrock_store::events::EventStore;
use bedrock_store::time::format_micros;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, min, percentile_cont, sum};
use datafusion::prelude::{col, lit, DataFrame, Expr, SessionContext};
use serde_json::{json, Map, Value};

use crate::traces::QueryError;

/// Filters of both summaries; every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct EvalFilter {
    pub agent: Option<String>,
    /// Tags the agent must all have.
    pub agent_tags: Vec<String>,
    pub agent_purpose: Option<String>,
    pub scenario: Option<String>,
    /// The checkpoint's name; for reviews, the reviewed trace's name.
    pub name: Option<String>,
    /// Inclusive lower bound of the row's time, in microseconds.
    pub start: Option<i64>,
    /// Exclusive upper bound of the row's time, in microseconds.
    pub end: Option<i64>,
}

/// One dimension of a summary's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalGroup {
    Agent,
    /// Groups by the text after `<prefix>:` in the agent's tags.
    AgentTag(String),
    Scenario,
    Name,
    Day,
}

impl EvalGroup {
    /// Reads a `group_by` item: `agent`, `agent_tag:<prefix>`, `scenario`, `name` or `day`.
    pub fn parse(text: &str) -> Option<EvalGroup> {
        match text {
            "agent" => Some(EvalGroup::Agent),
            "scenario" => Some(EvalGroup::Scenario),
            "name" => Some(EvalGroup::Name),
            "day" => Some(EvalGroup::Day),
            _ => text.strip_prefix("agent_tag:").filter(|prefix| !prefix.is_empty()).map(|p| EvalGroup::AgentTag(p.into())),
        }
    }

    /// Returns the key of this dimension in a group's JSON.
    pub fn label(&self) -> String {
        match self {
            EvalGroup::Agent => "agent".into(),
            EvalGroup::AgentTag(prefix) => format!("agent_tag:{prefix}"),
            EvalGroup::Scenario => "scenario".into(),
            EvalGroup::Name => "name".into(),
            EvalGroup::Day => "day".into(),
        }
    }
}

/// A checkpoint span as the summary reads it.
#[derive(Debug, Clone)]
struct CheckpointRow {
    agent_id: Option<String>,
    name: Option<String>,
    scenario: Option<String>,
    at: i64,
    passed: bool,
}

/// A review with what the summary needs of its trace.
#[derive(Debug, Clone)]
struct ReviewRow {
    id: String,
    agent_id: Option<String>,
    name: Option<String>,
    scenario: Option<String>,
    at: i64,
    weighted_score: Option<f64>,
    /// `(criterion, score, score / max)`.
    criteria: Vec<(String, f64, f64)>,
}

fn day_of(micros: i64) -> String {
    format_micros(micros).chars().take(10).collect()
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let column = cast(column, &DataType::Utf8)?;
    column.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| QueryError::Internal(format!("{name} is not text")))
}

fn int_column(batch: &RecordBatch, name: &str) -> Result<Int64Array, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let column = cast(column, &DataType::Int64)?;
    column.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| QueryError::Internal(format!("{name} is not an integer")))
}

fn float_column(batch: &RecordBatch, name: &str) -> Result<Float64Array, QueryError> {
    let column = batch.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("no column {name}")))?;
    let column = cast(column, &DataType::Float64)?;
    column.as_any().downcast_ref::<Float64Array>().cloned().ok_or_else(|| QueryError::Internal(format!("{name} is not a number")))
}

fn optional_float(values: &Float64Array, row: usize) -> Value {
    if values.is_null(row) {
        Value::Null
    } else {
        json!(values.value(row))
    }
}

fn text_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

/// Returns the agent of a trace: its `agent_id`, else the `agent_id` in its
/// checkpoint's metadata.
fn span_agent(trace_agent: Option<&String>, span: &SpanFields) -> Option<String> {
    trace_agent.cloned().or_else(|| match span.metadata.as_ref().and_then(|m| m.get("agent_id")) {
        Some(Value::String(agent)) if !agent.is_empty() => Some(agent.clone()),
        _ => None,
    })
}

/// Returns the column a group dimension reads, by its position in `group_by`.
fn group_column(group: &EvalGroup, index: usize) -> String {
    match group {
        EvalGroup::Agent => "agent_id".into(),
        EvalGroup::AgentTag(_) => format!("tag_group_{index}"),
        EvalGroup::Scenario => "scenario".into(),
        EvalGroup::Name => "name".into(),
        EvalGroup::Day => "day".into(),
    }
}

#[derive(Clone)]
pub struct EvalQueries {
    store: Arc<EventStore>,
    control: ControlPlane,
}

/// The review view's computed fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewScores {
    pub checkpoint_pass_rate: Option<f64>,
    pub weighted_score: Option<f64>,
}

/// Weighted score of a review, with the rubric of its eval case when it names one.
pub fn review_weighted_score(review: &Review, eval_case: Option<&EvalCase>) -> Option<f64> {
    let scores = bedrock_evals::parse_criterion_scores(&Value::Object(review.criterion_scores.clone())).ok()?;
    let rubric = eval_case.and_then(|case| bedrock_evals::parse_rubric(&case.rubric).ok()).unwrap_or_default();
    bedrock_evals::weighted_score(&bedrock_evals::resolve_scores(&scores, &rubric))
}

impl EvalQueries {
    pub fn new(store: Arc<EventStore>, control: ControlPlane) -> EvalQueries {
        EvalQueries { store, control }
    }

    /// Returns the pass rate of one trace's checkpoint spans, `None` without any.
    pub async fn trace_pass_rate(&self, organization_id: &str, trace_id: &str) -> Result<Option<f64>, QueryError> {
        let spans = self.store.spans_of_trace(organization_id, trace_id).await?;
        let (mut passed, mut total) = (0, 0);
        for state in spans.values() {
            let span = state.resolve();
            if span.span_type.as_deref() == Some("checkpoint") {
                total += 1;
                if span.metadata.as_ref().is_some_and(checkpoint_passed) {
                    passed += 1;
                }
            }
        }
        Ok(pass_rate(passed, total))
    }

    /// Returns the computed fields of a review.
    pub async fn review_scores(&self, review: &Review, eval_case: Option<&EvalCase>) -> Result<ReviewScores, QueryError> {
        Ok(ReviewScores {
            checkpoint_pass_rate: self.trace_pass_rate(&review.organization_id, &review.trace_id).await?,
            weighted_score: review_weighted_score(review, eval_case),
        })
    }

    /// NOTE: not pushed down: the scenario and checkpoint name are read from
    /// each span's merged metadata, so every object of the organization is
    /// merged here, from segments or from ClickHouse's `events`.
    async fn checkpoint_rows(&self, organization_id: &str) -> Result<Vec<CheckpointRow>, QueryError> {
        let objects = self.store.all(organization_id).await?;
        let trace_agents: HashMap<&str, String> = objects
            .traces
            .iter()
            .filter_map(|(id, state)| state.resolve().agent_id.map(|agent| (id.as_str(), agent)))
            .collect();
        let mut rows = Vec::new();
        for state in objects.spans.values() {
            let span = state.resolve();
            if span.span_type.as_deref() != Some("checkpoint") {
                continue;
            }
            let trace_agent = span.trace_id.as_deref().and_then(|trace| trace_agents.get(trace));
            let empty = Map::new();
            let metadata = span.metadata.as_ref().unwrap_or(&empty);
            rows.push(CheckpointRow {
                agent_id: span_agent(trace_agent, &span),
                name: span.name.clone(),
                scenario: checkpoint_scenario(metadata).map(str::to_string),
                at: span.started_at.unwrap_or(state.first_seen),
                passed: checkpoint_passed(metadata),
            });
        }
        Ok(rows)
    }

    async fn review_rows(&self, organization_id: &str) -> Result<Vec<ReviewRow>, QueryError> {
        let reviews = self.control.all_reviews(organization_id).await?;
        if reviews.is_empty() {
            return Ok(Vec::new());
        }
        let cases: HashMap<String, EvalCase> =
            self.control.all_eval_cases(organization_id).await?.into_iter().map(|case| (case.id.clone(), case)).collect();
        // NOTE: not pushed down, as in `checkpoint_rows`.
        let objects = self.store.all(organization_id).await?;
        // The first checkpoint of each trace, for traces without a scenario of their own.
        let mut first_checkpoints: HashMap<String, (i64, String, SpanFields)> = HashMap::new();
        for (id, state) in &objects.spans {
            let span = state.resolve();
            let Some(trace_id) = span.trace_id.clone() else { continue };
            if span.span_type.as_deref() != Some("checkpoint") {
                continue;
            }
            let key = (span.started_at.unwrap_or(state.first_seen), id.clone());
            let earlier = first_checkpoints.get(&trace_id).is_none_or(|(at, known, _)| key < (*at, known.clone()));
            if earlier {
                first_checkpoints.insert(trace_id, (key.0, key.1, span));
            }
        }
        let mut rows = Vec::with_capacity(reviews.len());
        for review in &reviews {
            let trace = objects.traces.get(&review.trace_id).map(|state| state.resolve());
            let checkpoint = first_checkpoints.get(&review.trace_id).map(|(_, _, span)| span);
            let trace_scenario = trace
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| checkpoint_scenario(m).map(str::to_string));
            let scenario = trace_scenario.or_else(|| {
                checkpoint.and_then(|span| span.metadata.as_ref()).and_then(|m| checkpoint_scenario(m).map(str::to_string))
            });
            let agent_id = trace
                .as_ref()
                .and_then(|t| t.agent_id.clone())
                .or_else(|| checkpoint.and_then(|span| span_agent(None, span)));
            let case = review.eval_id.as_ref().and_then(|id| cases.get(id));
            let rubric = case.and_then(|case| bedrock_evals::parse_rubric(&case.rubric).ok()).unwrap_or_default();
            let scores = bedrock_evals::parse_criterion_scores(&Value::Object(review.criterion_scores.clone())).unwrap_or_default();
            let resolved = bedrock_evals::resolve_scores(&scores, &rubric);
            rows.push(ReviewRow {
                id: review.id.clone(),
                agent_id,
                name: trace.as_ref().and_then(|t| t.name.clone()),
                scenario,
                at: trace.as_ref().and_then(|t| t.started_at).unwrap_or(review.created_at),
                weighted_score: bedrock_evals::weighted_score(&resolved),
                criteria: resolved.iter().map(|r| (r.criterion.clone(), r.score, r.normalized())).collect(),
            });
        }
        Ok(rows)
    }

    /// Registers `agents(agent_key, purpose)`, `agent_tags(tag_agent, tag)`
    /// and one `tag_groups_<i>` table per tag dimension of `groups`.
    fn register_agents(&self, context: &SessionContext, agents: &[AgentFacts], groups: &[EvalGroup]) -> Result<(), QueryError> {
        let schema = Arc::new(Schema::new(vec![Field::new("agent_key", DataType::Utf8, false), Field::new("purpose", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text_array(agents.iter().map(|a| Some(a.id.as_str()))),
                text_array(agents.iter().map(|a| Some(a.purpose.as_str()))),
            ],
        )?;
        context.register_table("agents", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;

        let pairs: Vec<(&str, &str)> = agents.iter().flat_map(|a| a.tags.iter().map(|t| (a.id.as_str(), t.as_str()))).collect();
        let schema = Arc::new(Schema::new(vec![Field::new("tag_agent", DataType::Utf8, false), Field::new("tag", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![text_array(pairs.iter().map(|(a, _)| Some(*a))), text_array(pairs.iter().map(|(_, t)| Some(*t)))],
        )?;
        context.register_table("agent_tags", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;

        for (index, group) in groups.iter().enumerate() {
            let EvalGroup::AgentTag(prefix) = group else { continue };
            let values: Vec<(&str, &str)> =
                pairs.iter().filter_map(|(agent, tag)| tag_value(tag, prefix).map(|value| (*agent, value))).collect();
            let agent_column = format!("tag_group_agent_{index}");
            let schema = Arc::new(Schema::new(vec![
                Field::new(&agent_column, DataType::Utf8, false),
                Field::new(group_column(group, index), DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![text_array(values.iter().map(|(a, _)| Some(*a))), text_array(values.iter().map(|(_, v)| Some(*v)))],
            )?;
            context.register_table(format!("tag_groups_{index}"), Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
        }
        Ok(())
    }

    /// Applies the filters to `frame`, whose rows have `agent_id`,
    /// `scenario`, `name` and `at` columns.
    async fn filtered(&self, context: &SessionContext, mut frame: DataFrame, filter: &EvalFilter) -> Result<DataFrame, QueryError> {
        let mut conditions: Vec<Expr> = Vec::new();
        if let Some(agent) = &filter.agent {
            conditions.push(col("agent_id").eq(lit(agent.as_str())));
        }
        if let Some(scenario) = &filter.scenario {
            conditions.push(col("scenario").eq(lit(scenario.as_str())));
        }
        if let Some(name) = &filter.name {
            conditions.push(col("name").eq(lit(name.as_str())));
        }
        if let Some(start) = filter.start {
            conditions.push(col("at").gt_eq(lit(start)));
        }
        if let Some(end) = filter.end {
            conditions.push(col("at").lt(lit(end)));
        }
        if let Some(condition) = conditions.into_iter().reduce(Expr::and) {
            frame = frame.filter(condition)?;
        }
        if let Some(purpose) = &filter.agent_purpose {
            let agents = context.table("agents").await?.filter(col("purpose").eq(lit(purpose.as_str())))?.select_columns(&["agent_key"])?;
            frame = frame.join(agents, JoinType::LeftSemi, &["agent_id"], &["agent_key"], None)?;
        }
        if !filter.agent_tags.is_empty() {
            let mut required = filter.agent_tags.clone();
            required.sort();
            required.dedup();
            let tags: Vec<Expr> = required.iter().map(|tag| lit(tag.as_str())).collect();
            let agents = context
                .table("agent_tags")
                .await?
                .filter(col("tag").in_list(tags, false))?
                .aggregate(vec![col("tag_agent")], vec![count_distinct(col("tag")).alias("matched")])?
                .filter(col("matched").eq(lit(required.len() as i64)))?
                .select_columns(&["tag_agent"])?;
            frame = frame.join(agents, JoinType::LeftSemi, &["agent_id"], &["tag_agent"], None)?;
        }
        Ok(frame)
    }

    /// Adds the columns of tag dimensions. An agent with several tags of one
    /// prefix is in each of their groups, and one with none is in the null group.
    async fn with_tag_groups(&self, context: &SessionContext, mut frame: DataFrame, groups: &[EvalGroup]) -> Result<DataFrame, QueryError> {
        for (index, group) in groups.iter().enumerate() {
            if let EvalGroup::AgentTag(_) = group {
                let table = context.table(format!("tag_groups_{index}").as_str()).await?;
                let agent_column = format!("tag_group_agent_{index}");
                frame = frame.join(table, JoinType::Left, &["agent_id"], &[agent_column.as_str()], None)?;
            }
        }
        Ok(frame)
    }

    /// Runs `aggregates` overall and per group; returns the overall row and
    /// the grouped batches.
    async fn aggregate(
        &self,
        context: &SessionContext,
        filtered: DataFrame,
        groups: &[EvalGroup],
        aggregates: Vec<Expr>,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), QueryError> {
        let totals = filtered.clone().aggregate(vec![], aggregates.clone())?.collect().await?;
        if groups.is_empty() {
            return Ok((totals, Vec::new()));
        }
        let grouped = self.with_tag_groups(context, filtered, groups).await?;
        let columns: Vec<String> = groups.iter().enumerate().map(|(i, g)| group_column(g, i)).collect();
        let sort = columns.iter().map(|c| col(c.as_str()).sort(true, true)).collect();
        let batches = grouped.aggregate(columns.iter().map(|c| col(c.as_str())).collect(), aggregates)?.sort(sort)?.collect().await?;
        Ok((totals, batches))
    }

    /// Checkpoint pass rates: `{totals, group_by, groups}`, where the totals
    /// and each group have `passed`, `total` and `pass_rate`.
    pub async fn checkpoint_summary(&self, organization_id: &str, filter: &EvalFilter, groups: &[EvalGroup]) -> Result<Value, QueryError> {
        let rows = self.checkpoint_rows(organization_id).await?;
        let agents = self.control.agent_facts(organization_id).await?;
        let context = SessionContext::new();
        self.register_agents(&context, &agents, groups)?;

        let schema = Arc::new(Schema::new(vec![
            Field::new("agent_id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("scenario", DataType::Utf8, true),
            Field::new("at", DataType::Int64, false),
            Field::new("day", DataType::Utf8, false),
            Field::new("passed", DataType::Boolean, false),
        ]));
        let days: Vec<String> = rows.iter().map(|r| day_of(r.at)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text_array(rows.iter().map(|r| r.agent_id.as_deref())),
                text_array(rows.iter().map(|r| r.name.as_deref())),
                text_array(rows.iter().map(|r| r.scenario.as_deref())),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.at))),
                text_array(days.iter().map(|d| Some(d.as_str()))),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.passed)))),
            ],
        )?;
        context.register_table("checkpoints", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
        let frame = self.filtered(&context, context.table("checkpoints").await?, filter).await?;

        let passed = sum(datafusion::logical_expr::cast(col("passed"), DataType::Int64)).alias("passed");
        let aggregates = vec![passed, count(lit(1i64)).alias("total")];
        let (totals, batches) = self.aggregate(&context, frame, groups, aggregates).await?;

        let rates = |batch: &RecordBatch, row: usize| -> Result<Map<String, Value>, QueryError> {
            let passed = int_column(batch, "passed")?;
            let total = int_column(batch, "total")?;
            let passed = if passed.is_null(row) { 0 } else { passed.value(row) } as u64;
            let total = total.value(row) as u64;
            let mut out = Map::new();
            out.insert("passed".into(), json!(passed));
            out.insert("total".into(), json!(total));
            out.insert("pass_rate".into(), json!(pass_rate(passed, total)));
            Ok(out)
        };
        let totals = match totals.iter().find(|b| b.num_rows() > 0) {
            Some(batch) => Value::Object(rates(batch, 0)?),
            None => return Err(QueryError::Internal("an ungrouped aggregate returned no row".into())),
        };
        let mut groups_json = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let mut group = group_keys(batch, groups, row)?;
                group.extend(rates(batch, row)?);
                groups_json.push(Value::Object(group));
            }
        }
        Ok(summary_json(totals, groups, groups_json))
    }

    /// Review scores: `{totals, group_by, groups}`, where the totals and each
    /// group have `review_count`, `scored_count`, `mean_weighted_score`,
    /// `min`, `q1`, `median`, `q3`, `max` and `criteria`, the mean score and
    /// mean fraction of its max of each criterion.
    pub async fn review_summary(&self, organization_id: &str, filter: &EvalFilter, groups: &[EvalGroup]) -> Result<Value, QueryError> {
        let rows = self.review_rows(organization_id).await?;
        let agents = self.control.agent_facts(organization_id).await?;
        let context = SessionContext::new();
        self.register_agents(&context, &agents, groups)?;

        let schema = Arc::new(Schema::new(vec![
            Field::new("review_id", DataType::Utf8, false),
            Field::new("agent_id", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("scenario", DataType::Utf8, true),
            Field::new("at", DataType::Int64, false),
            Field::new("day", DataType::Utf8, false),
            Field::new("weighted_score", DataType::Float64, true),
        ]));
        let days: Vec<String> = rows.iter().map(|r| day_of(r.at)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text_array(rows.iter().map(|r| Some(r.id.as_str()))),
                text_array(rows.iter().map(|r| r.agent_id.as_deref())),
                text_array(rows.iter().map(|r| r.name.as_deref())),
                text_array(rows.iter().map(|r| r.scenario.as_deref())),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.at))),
                text_array(days.iter().map(|d| Some(d.as_str()))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.weighted_score))),
            ],
        )?;
        context.register_table("reviews", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;

        let criteria: Vec<(&str, &(String, f64, f64))> = rows.iter().flat_map(|r| r.criteria.iter().map(|c| (r.id.as_str(), c))).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("criterion_review", DataType::Utf8, false),
            Field::new("criterion", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("normalized", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text_array(criteria.iter().map(|(review, _)| Some(*review))),
                text_array(criteria.iter().map(|(_, c)| Some(c.0.as_str()))),
                Arc::new(Float64Array::from_iter_values(criteria.iter().map(|(_, c)| c.1))),
                Arc::new(Float64Array::from_iter_values(criteria.iter().map(|(_, c)| c.2))),
            ],
        )?;
        context.register_table("criteria", Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;

        let filtered = self.filtered(&context, context.table("reviews").await?, filter).await?;
        let score = || col("weighted_score");
        let quartile = |q: f64, name: &str| percentile_cont(score().sort(true, false), lit(q)).alias(name);
        let aggregates = vec![
            count(lit(1i64)).alias("review_count"),
            count(score()).alias("scored_count"),
            avg(score()).alias("mean_weighted_score"),
            min(score()).alias("min"),
            quartile(0.25, "q1"),
            quartile(0.5, "median"),
            quartile(0.75, "q3"),
            max(score()).alias("max"),
        ];
        let (totals, batches) = self.aggregate(&context, filtered.clone(), groups, aggregates).await?;

        // Criterion means per group: the criteria of the filtered reviews.
        let with_criteria = filtered.join(context.table("criteria").await?, JoinType::Inner, &["review_id"], &["criterion_review"], None)?;
        let criterion_aggregates = vec![
            count(lit(1i64)).alias("count"),
            avg(col("score")).alias("mean_score"),
            avg(col("normalized")).alias("mean_normalized"),
        ];
        let (criterion_totals, criterion_batches) = {
            let overall = with_criteria
                .clone()
                .aggregate(vec![col("criterion")], criterion_aggregates.clone())?
                .sort(vec![col("criterion").sort(true, true)])?
                .collect()
                .await?;
            let grouped = if groups.is_empty() {
                Vec::new()
            } else {
                let grouped = self.with_tag_groups(&context, with_criteria, groups).await?;
                let mut columns: Vec<Expr> = groups.iter().enumerate().map(|(i, g)| col(group_column(g, i).as_str())).collect();
                columns.push(col("criterion"));
                grouped.aggregate(columns, criterion_aggregates)?.collect().await?
            };
            (overall, grouped)
        };

        let stats = |batch: &RecordBatch, row: usize| -> Result<Map<String, Value>, QueryError> {
            let mut out = Map::new();
            out.insert("review_count".into(), json!(int_column(batch, "review_count")?.value(row)));
            out.insert("scored_count".into(), json!(int_column(batch, "scored_count")?.value(row)));
            for name in ["mean_weighted_score", "min", "q1", "median", "q3", "max"] {
                out.insert(name.into(), optional_float(&float_column(batch, name)?, row));
            }
            Ok(out)
        };
        let criterion_json = |batch: &RecordBatch, row: usize| -> Result<(String, Value), QueryError> {
            let name = text_column(batch, "criterion")?.value(row).to_string();
            let value = json!({
                "count": int_column(batch, "count")?.value(row),
                "mean_score": optional_float(&float_column(batch, "mean_score")?, row),
                "mean_normalized": optional_float(&float_column(batch, "mean_normalized")?, row),
            });
            Ok((name, value))
        };

        let mut totals = match totals.iter().find(|b| b.num_rows() > 0) {
            Some(batch) => stats(batch, 0)?,
            None => return Err(QueryError::Internal("an ungrouped aggregate returned no row".into())),
        };
        let mut overall_criteria = Map::new();
        for batch in &criterion_totals {
            for row in 0..batch.num_rows() {
                let (name, value) = criterion_json(batch, row)?;
                overall_criteria.insert(name, value);
            }
        }
        totals.insert("criteria".into(), Value::Object(overall_criteria));

        // Criterion means by group key, then by criterion name.
        let mut by_group: HashMap<String, Map<String, Value>> = HashMap::new();
        for batch in &criterion_batches {
            for row in 0..batch.num_rows() {
                let keys = Value::Object(group_keys(batch, groups, row)?).to_string();
                let (name, value) = criterion_json(batch, row)?;
                by_group.entry(keys).or_default().insert(name, value);
            }
        }
        let mut groups_json = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let mut group = group_keys(batch, groups, row)?;
                let keys = Value::Object(group.clone()).to_string();
                group.extend(stats(batch, row)?);
                let mut criteria = by_group.remove(&keys).unwrap_or_default();
                criteria.sort_keys();
                group.insert("criteria".into(), Value::Object(criteria));
                groups_json.push(Value::Object(group));
            }
        }
        Ok(summary_json(Value::Object(totals), groups, groups_json))
    }
}

/// Returns the group's keys, labelled as in `group_by`.
fn group_keys(batch: &RecordBatch, groups: &[EvalGroup], row: usize) -> Result<Map<String, Value>, QueryError> {
    let mut keys = Map::new();
    for (index, group) in groups.iter().enumerate() {
        let values = text_column(batch, &group_column(group, index))?;
        let value = if values.is_null(row) { Value::Null } else { json!(values.value(row)) };
        keys.insert(group.label(), value);
    }
    Ok(keys)
}

fn summary_json(totals: Value, groups: &[EvalGroup], groups_json: Vec<Value>) -> Value {
    let mut summary = json!({ "totals": totals });
    if !groups.is_empty() {
        summary["group_by"] = json!(groups.iter().map(EvalGroup::label).collect::<Vec<_>>());
        summary["groups"] = Value::Array(groups_json);
    }
    summary
}
