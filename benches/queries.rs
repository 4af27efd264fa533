//! The analytic queries on a fixed data set in the embedded store: 2,000
//! traces with a root, an `llm` span and a checkpoint each, half flushed to a
//! segment and half in the buffer, 3 agents, 2 models and one review per
//! trace. Measures the usage summary by model and day, the first page of the
//! trace list, plain and filtered by agent and by a metadata key, and the
//! checkpoint and review summaries.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

use bedrock_ingest::validate::{span_write, trace_write, Limits};
use bedrock_query::trace_list::{Paging, SortField, TraceFilter};
use bedrock_query::{EvalFilter, EvalGroup, EvalQueries, Prices, TraceQueries, UsageFilter, UsageQueries};
use bedrock_store::control::{ControlPlane, Review};
use bedrock_store::events::model::{Batch, Op, Write};
use bedrock_store::events::EventStore;

const TRACES: usize = 2_000;
const ORGANIZATION: &str = "org";

fn write(id: String, kind: &str, op: Op, body: Value) -> Write {
    match kind {
        "trace" => Write::Trace { id, op, fields: trace_write(&body, op, Limits::default()).unwrap().1 },
        _ => Write::Span { id, op, fields: span_write(&body, op, Limits::default()).unwrap().1 },
    }
}

fn trace_writes(n: usize) -> Vec<Write> {
    let trace = format!("trace-{n}");
    let agent = format!("agent-{}", n % 3);
    let model = ["openai/gpt-4o-mini", "claude-3-5-haiku"][n % 2];
    let started = format!("2026-03-{:02}T10:00:{:02}Z", 1 + n % 28, n % 60);
    let scenario = ["lunch", "travel"][n % 2];
    vec![
        write(trace.clone(), "trace", Op::Create, json!({"name": "run_agent", "agent_id": agent, "started_at": started,
            "metadata": {"scenario": scenario}})),
        write(format!("{trace}-root"), "span", Op::Create, json!({"trace_id": trace, "name": "run_agent", "started_at": started})),
        write(format!("{trace}-llm"), "span", Op::Create, json!({"trace_id": trace, "name": "call", "span_type": "llm", "started_at": started})),
        write(format!("{trace}-llm"), "span", Op::Update, json!({"ended_at": started, "metadata": {"llm_cost": {
            "model": model, "input_tokens": 1200, "output_tokens": 40, "cached_tokens": 200, "total_cost_usd": 0.00021}}})),
        write(format!("{trace}-checkpoint"), "span", Op::Create, json!({"trace_id": trace, "name": "goal", "span_type": "checkpoint",
            "started_at": started, "metadata": {"passed": n % 3 != 0, "scenario": scenario}})),
        write(trace, "trace", Op::Update, json!({"ended_at": started, "error": ""})),
    ]
}

fn queries(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (traces, usage, evals) = runtime.block_on(async {
        let store = Arc::new(EventStore::open(&dir.path().join("events")).unwrap());
        for n in 0..TRACES {
            let batch = Batch { organization_id: ORGANIZATION.into(), received_at: 1_780_000_000_000_000, writes: trace_writes(n) };
            store.apply(n as u64 + 1, &batch);
            if n == TRACES / 2 {
                store.flush().await.unwrap();
            }
        }
        let control = ControlPlane::open_sqlite(dir.path(), 2).await.unwrap();
        control.migrate().await.unwrap();
        control.execute_admin("INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('org', 'org', 0, 0)").await.unwrap();
        let reviews: Vec<Review> = (0..TRACES)
            .map(|n| Review {
                id: format!("review-{n}"),
                organization_id: ORGANIZATION.into(),
                trace_id: format!("trace-{n}"),
                reviewer_id: None,
                source: "automated".into(),
                criterion_scores: json!({"accuracy": (n % 10) as f64 / 10.0, "tone": {"score": n % 5, "max": 4}}).as_object().unwrap().clone(),
                comment: String::new(),
                eval_id: None,
                created_at: 0,
                updated_at: 0,
            })
            .collect();
        control.insert_reviews(&reviews).await.unwrap();
        let prices = Prices::new(control.clone());
        (TraceQueries::new(store.clone(), prices.clone()), UsageQueries::new(store.clone(), prices), EvalQueries::new(store, control))
    });

    let mut group = c.benchmark_group("queries_2000_traces");
    group.sample_size(10);
    group.bench_function("usage_summary_by_model_day", |b| {
        b.iter(|| runtime.block_on(usage.summary(ORGANIZATION, &UsageFilter::default(), &["model", "day"])).unwrap())
    });
    let filters = [
        ("trace_list_first_page", TraceFilter::default()),
        ("trace_list_by_agent", TraceFilter { agent: Some("agent-1".into()), ..TraceFilter::default() }),
        ("trace_list_by_metadata", TraceFilter { metadata: vec![("scenario".into(), "travel".into())], ..TraceFilter::default() }),
    ];
    for (name, filter) in filters {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(traces.list_filtered(ORGANIZATION, &filter, (SortField::StartedAt, true), Paging::After(None), 50))
                    .unwrap()
            })
        });
    }
    let by_agent_scenario = [EvalGroup::Agent, EvalGroup::Scenario];
    group.bench_function("checkpoint_summary_by_agent_scenario", |b| {
        b.iter(|| runtime.block_on(evals.checkpoint_summary(ORGANIZATION, &EvalFilter::default(), &by_agent_scenario)).unwrap())
    });
    group.bench_function("review_summary_by_agent_scenario", |b| {
        b.iter(|| runtime.block_on(evals.review_summary(ORGANIZATION, &EvalFilter::default(), &by_agent_scenario)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
