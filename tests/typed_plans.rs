//! The typed plans read trace lists and usage summaries from the typed
//! columns of the segments. They return exactly what the general plans, which
//! merge every object, return. The store's objects are split between
//! segments, compacted segments, the recent generation and the buffer, and
//! the comparison runs again after the store is reopened. On ClickHouse,
//! the objects are split between its `objects` table, the generation being
//! flushed and the buffer.

mod common;

use std::sync::Arc;

use bedrock_query::trace_list::{Paging, SortField, TraceCursor, TraceFilter};
use bedrock_query::{Prices, TraceQueries, UsageFilter, UsageQueries};
use bedrock_store::control::ControlPlane;
use bedrock_store::events::model::{Batch, Flag, Op, SpanFields, TraceFields, UsageFields, Write};
use bedrock_store::events::EventStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const ORGANIZATION: &str = "org-a";
const OTHER: &str = "org-b";
const BASE: i64 = 1_780_000_000_000_000;
const HOUR: i64 = 3_600_000_000;

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// Writes of one trace, in an order that the random source shuffles a little:
/// creates, closes and patches, some sent twice, some before what they update.
fn trace_writes(rng: &mut StdRng, n: usize) -> Vec<Write> {
    let trace = format!("t{n:04}");
    let started = BASE + rng.gen_range(0..72) * HOUR + rng.gen_range(0..HOUR);
    let agent = format!("agent-{}", rng.gen_range(0..4));
    let scenario = ["lunch", "travel", "100%_off", "naïve \"quote\""][rng.gen_range(0..4)];
    let mut writes = vec![Write::Trace {
        id: trace.clone(),
        op: Op::Create,
        fields: TraceFields {
            name: Some(["run_agent", "checkpoint", "eval_run"][rng.gen_range(0..3)].into()),
            agent_id: Some(agent),
            started_at: Some(started),
            // `run` takes more values than a segment keeps in `meta_low`, and
            // `note` is sometimes too long for it, so filters on them read
            // `meta` in the larger segments and `meta_low` in the smaller.
            metadata: Some(object(json!({
                "scenario": scenario,
                "attempt": rng.gen_range(0..3),
                "run": format!("run-{}", n % 97),
                "note": if n % 7 == 3 { format!("{}{}", "long ".repeat(20), n % 2) } else { "short".to_string() },
            }))),
            ..TraceFields::default()
        },
    }];
    for s in 0..rng.gen_range(0..5) {
        let span = format!("{trace}-s{s}");
        let kind = ["llm", "tool", "checkpoint", "text"][rng.gen_range(0..4)];
        let span_start = started + s as i64 * 1_000_000;
        let mut metadata = Map::new();
        if kind == "checkpoint" {
            metadata.insert("passed".into(), json!(rng.gen_bool(0.6)));
        }
        writes.push(Write::Span {
            id: span.clone(),
            op: Op::Create,
            fields: SpanFields {
                trace_id: Some(trace.clone()),
                parent_id: Some(None),
                name: Some(format!("step {s}")),
                span_type: Some(kind.into()),
                started_at: Some(span_start),
                metadata: Some(metadata),
                ..SpanFields::default()
            },
        });
        let mut close = SpanFields { ended_at: Some(span_start + rng.gen_range(0..5_000_000)), ..SpanFields::default() };
        if kind == "llm" {
            let model = ["openai/gpt-4o-mini", "gpt-4o-2024-08-06", "claude-3-5-haiku", "in-house-model"][rng.gen_range(0..4)];
            let cost = match rng.gen_range(0..3) {
                0 => json!(0.0),
                1 => json!(rng.gen_range(1..100_000) as f64 / 1e7),
                _ => Value::Null,
            };
            let mut llm = object(json!({"model": model, "input_tokens": rng.gen_range(0..5000),
                "output_tokens": rng.gen_range(0..500), "cached_tokens": rng.gen_range(0..1000)}));
            if !cost.is_null() {
                llm.insert("total_cost_usd".into(), cost);
            }
            close.metadata = Some(object(json!({ "llm_cost": llm })));
        }
        if rng.gen_bool(0.1) {
            close.error = Some("tool failed".into());
        }
        if rng.gen_bool(0.1) {
            close.flag = Some(Flag { flagged: true, reason: Some("look".into()), at: Some(span_start) });
        }
        writes.push(Write::Span { id: span.clone(), op: Op::Update, fields: close });
        if rng.gen_bool(0.15) {
            // A posted record that names the span replaces the span's own.
            writes.push(Write::Usage {
                id: format!("{span}-posted"),
                op: Op::Create,
                fields: UsageFields {
                    trace_id: Some(trace.clone()),
                    span_id: Some(span.clone()),
                    model: Some("gpt-4o".into()),
                    input_tokens: Some(100),
                    output_tokens: Some(10),
                    timestamp: Some(span_start),
                    ..UsageFields::default()
                },
            });
        }
    }
    if rng.gen_bool(0.8) {
        let error = if rng.gen_bool(0.2) { "boom" } else { "" };
        writes.push(Write::Trace {
            id: trace.clone(),
            op: Op::Update,
            fields: TraceFields {
                ended_at: Some(started + rng.gen_range(0..60_000_000)),
                error: Some(error.into()),
                metadata: Some(object(json!({"attempt": null, "outcome": "done"}))),
                ..TraceFields::default()
            },
        });
    }
    if rng.gen_bool(0.1) {
        // A re-sent create, as a retrying client sends it.
        writes.push(writes[0].clone());
    }
    if rng.gen_bool(0.2) {
        // An update that arrived before its create.
        let last = writes.pop().unwrap();
        writes.insert(0, last);
    }
    writes
}

fn filters() -> Vec<TraceFilter> {
    let mut filters = vec![
        TraceFilter::default(),
        TraceFilter { agent: Some("agent-1".into()), ..TraceFilter::default() },
        TraceFilter { name: Some("checkpoint".into()), ..TraceFilter::default() },
        TraceFilter { name_contains: Some("_r".into()), ..TraceFilter::default() },
        TraceFilter { started_after: Some(BASE + 24 * HOUR), started_before: Some(BASE + 48 * HOUR), ..TraceFilter::default() },
        TraceFilter { min_duration_ms: Some(20_000.0), max_duration_ms: Some(40_000.0), ..TraceFilter::default() },
        TraceFilter { agent: Some("agent-2".into()), name: Some("run_agent".into()), ..TraceFilter::default() },
    ];
    for status in ["running", "ok", "error"] {
        filters.push(TraceFilter { status: Some(status.into()), ..TraceFilter::default() });
    }
    let long_note = format!("{}1", "long ".repeat(20));
    for (key, value) in [("scenario", "travel"), ("scenario", "100%_off"), ("scenario", "naïve \"quote\""), ("outcome", "done"), ("attempt", "1"), ("run", "run-5"), ("run", "run-90"), ("note", "short"), ("note", long_note.as_str())] {
        filters.push(TraceFilter { metadata: vec![(key.into(), value.into())], ..TraceFilter::default() });
    }
    let both = vec![("scenario".to_string(), "travel".to_string()), ("run".to_string(), "run-5".to_string())];
    filters.push(TraceFilter { metadata: both, ..TraceFilter::default() });
    filters
}

/// Walks every page of a list with a cursor, returning the pages' rows and counts.
async fn walk(queries: &TraceQueries, filter: &TraceFilter, sort: (SortField, bool)) -> Vec<(usize, Vec<Value>)> {
    let mut pages = Vec::new();
    let mut cursor: Option<TraceCursor> = None;
    loop {
        let (page, next) = queries.list_filtered(ORGANIZATION, filter, sort, Paging::After(cursor.as_ref()), 40).await.unwrap();
        pages.push((page.count, page.results));
        match next {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 1000, "the cursor never ends");
    }
}

async fn compare(typed: &(TraceQueries, UsageQueries), general: &(TraceQueries, UsageQueries), stage: &str) {
    for offset in [0, 10] {
        let fast = typed.0.list_traces(ORGANIZATION, offset, 25).await.unwrap();
        let slow = general.0.list_traces(ORGANIZATION, offset, 25).await.unwrap();
        assert_eq!((fast.count, &fast.results), (slow.count, &slow.results), "{stage}: /traces/ at offset {offset}");
    }
    let spans: [(Option<&str>, Option<bool>); 4] = [(None, None), (Some("llm"), None), (None, Some(true)), (Some("checkpoint"), Some(false))];
    for (kind, flagged) in spans {
        for offset in [0, 7] {
            let fast = typed.0.list_spans(ORGANIZATION, None, kind, flagged, offset, 30).await.unwrap();
            let slow = general.0.list_spans(ORGANIZATION, None, kind, flagged, offset, 30).await.unwrap();
            assert_eq!((fast.count, &fast.results), (slow.count, &slow.results), "{stage}: /spans/ {kind:?} {flagged:?} at {offset}");
        }
    }
    if stage == "all written" {
        let flagged = typed.0.list_spans(ORGANIZATION, None, None, Some(true), 0, 30).await.unwrap();
        assert!(flagged.count > 0, "some spans should be flagged");
    }

    // Usage records by id: posted ones, those of spans, the spans that a
    // posted record replaces, and an unknown id.
    let (records, _) = general.1.list(ORGANIZATION, &UsageFilter::default(), None, 1000).await.unwrap();
    let mut ids: Vec<String> = vec!["no-such-record".into()];
    for record in records.results.iter().take(60) {
        ids.push(record["id"].as_str().unwrap().to_string());
        if record["id"] != record["span_id"] {
            ids.extend(record["span_id"].as_str().map(str::to_string));
        }
    }
    for id in &ids {
        let fast = typed.1.get(ORGANIZATION, id).await.unwrap();
        let slow = general.1.get(ORGANIZATION, id).await.unwrap();
        assert_eq!(fast, slow, "{stage}: /usage/{id}/");
    }

    let mut listed = 0;
    for filter in filters() {
        for sort in [(SortField::StartedAt, true), (SortField::DurationMs, false)] {
            let fast = walk(&typed.0, &filter, sort).await;
            let slow = walk(&general.0, &filter, sort).await;
            assert_eq!(fast, slow, "{stage}: {filter:?} sorted by {sort:?}");
            listed += fast[0].0;
        }
        for sort in [(SortField::StartedAt, false), (SortField::DurationMs, true)] {
            let page = typed.0.list_filtered(ORGANIZATION, &filter, sort, Paging::Offset(5), 4).await.unwrap();
            let reference = general.0.list_filtered(ORGANIZATION, &filter, sort, Paging::Offset(5), 4).await.unwrap();
            assert_eq!((page.0.count, page.0.results), (reference.0.count, reference.0.results), "{stage}: {filter:?} by {sort:?} at offset 5");
        }
    }
    assert!(listed > 60, "{stage}: the filters should select traces");

    let usage_filters = [
        UsageFilter::default(),
        UsageFilter { model: Some("claude-3-5-haiku".into()), ..UsageFilter::default() },
        UsageFilter { trace: Some("t0007".into()), ..UsageFilter::default() },
        UsageFilter { start: Some(BASE + 12 * HOUR), end: Some(BASE + 50 * HOUR), ..UsageFilter::default() },
    ];
    let groupings: [&[&str]; 7] = [&[], &["model", "day"], &["day", "model"], &["hour"], &["trace"], &["trace", "hour"], &["model"]];
    for filter in &usage_filters {
        for group_by in groupings {
            let fast = typed.1.summary(ORGANIZATION, filter, group_by).await.unwrap();
            let slow = general.1.summary(ORGANIZATION, filter, group_by).await.unwrap();
            assert_eq!(fast, slow, "{stage}: usage summary {filter:?} by {group_by:?}");
        }
    }
    let totals = typed.1.summary(ORGANIZATION, &UsageFilter::default(), &[]).await.unwrap();
    assert!(totals["totals"]["record_count"].as_i64().unwrap() > 50, "{stage}: {totals}");
    assert!(totals["totals"]["unpriced_count"].as_i64().unwrap() > 0, "{stage}: an unpriced model is in the data");
}

/// Where the store flushes to.
enum Tier {
    Segments,
    ClickHouse(String),
}

async fn open(
    dir: &std::path::Path,
    control: &ControlPlane,
    tier: &Tier,
) -> (Arc<EventStore>, (TraceQueries, UsageQueries), (TraceQueries, UsageQueries)) {
    let store = match tier {
        Tier::Segments => EventStore::open(&dir.join("events")).unwrap(),
        Tier::ClickHouse(url) => EventStore::open_clickhouse(url, "typed-plans").await.unwrap(),
    };
    let store = Arc::new(store);
    let prices = Prices::new(control.clone());
    let typed = (TraceQueries::new(store.clone(), prices.clone()), UsageQueries::new(store.clone(), prices.clone()));
    let general = (
        TraceQueries::new(store.clone(), prices.clone()).general_plans_only(),
        UsageQueries::new(store.clone(), prices).general_plans_only(),
    );
    (store, typed, general)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_plans_answer_as_the_general_plans() {
    typed_plans_match(Tier::Segments).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_plans_match_on_clickhouse() {
    typed_plans_match(Tier::ClickHouse(common::fresh_clickhouse_database().await)).await;
}

async fn typed_plans_match(tier: Tier) {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::open_sqlite(dir.path(), 2).await.unwrap();
    control.migrate().await.unwrap();
    for id in [ORGANIZATION, OTHER] {
        control
            .execute_admin(&format!("INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('{id}', '{id}', 0, 0)"))
            .await
            .unwrap();
    }
    let (store, typed, general) = open(dir.path(), &control, &tier).await;

    let mut rng = StdRng::seed_from_u64(7);
    let mut pending: Vec<Write> = Vec::new();
    for n in 0..250 {
        pending.extend(trace_writes(&mut rng, n));
    }
    // The writes go out in batches of random size, and each batch's writes
    // in a slightly shuffled order, so a trace's writes straddle flushes.
    let mut lsn = 0;
    let mut stage = 0;
    while !pending.is_empty() {
        let take = rng.gen_range(1..20).min(pending.len());
        let mut writes: Vec<Write> = pending.drain(..take).collect();
        if writes.len() > 2 && rng.gen_bool(0.3) {
            let last = writes.len() - 1;
            writes.swap(0, last);
        }
        lsn += 1;
        let organization = if rng.gen_bool(0.1) { OTHER } else { ORGANIZATION };
        store.apply(lsn, &Batch { organization_id: organization.into(), received_at: BASE + lsn as i64, writes });
        if rng.gen_bool(0.15) {
            store.flush().await.unwrap();
        }
        if rng.gen_bool(0.04) {
            store.compact(2).await.unwrap();
        }
        if lsn % 50 == 0 {
            stage += 1;
            compare(&typed, &general, &format!("stage {stage}")).await;
        }
    }
    compare(&typed, &general, "all written").await;
    if matches!(tier, Tier::Segments) {
        assert!(store.stats().segments > 1, "the data should span several segments");
    }

    // Reopened, the store rebuilds which objects span segments from the files.
    // A price of a fraction of a nano-dollar per token makes each record's
    // cost round on its own, which ClickHouse then computes record by record.
    store.flush().await.unwrap();
    control
        .execute_admin(&format!(
            "INSERT INTO model_prices (id, organization_id, model, input_per_million, cached_input_per_million, \
             output_per_million, created_at, updated_at) VALUES ('p1', '{ORGANIZATION}', 'claude-3-5-haiku', \
             '0.800000123', '0.080000007', '4.000000001', 0, 0)"
        ))
        .await
        .unwrap();
    drop((store, typed, general));
    let (store, typed, general) = open(dir.path(), &control, &tier).await;
    compare(&typed, &general, "reopened").await;
    if matches!(tier, Tier::Segments) {
        let before = store.stats().segments;
        while store.compact(2).await.unwrap() {}
        assert!(store.stats().segments < before, "compaction should merge segments");
        compare(&typed, &general, "compacted").await;
    }
}

/// Rewrites a segment file as the previous format wrote it: the columns that
/// are now dictionaries as plain text, with the same footer metadata.
fn write_previous_format(path: &std::path::Path) {
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let metadata = builder.metadata().file_metadata().key_value_metadata().cloned();
    let plain = |field: &Arc<Field>| match field.data_type() {
        DataType::Dictionary(_, _) => Field::new(field.name(), DataType::Utf8, field.is_nullable()),
        _ => field.as_ref().clone(),
    };
    let schema = Arc::new(Schema::new(builder.schema().fields().iter().map(plain).collect::<Vec<_>>()));
    assert_ne!(schema.as_ref(), builder.schema().as_ref(), "the current format should have dictionary columns");
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    let temporary = path.with_extension("previous");
    let properties = WriterProperties::builder().set_key_value_metadata(metadata).build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&temporary).unwrap(), schema.clone(), Some(properties)).unwrap();
    for batch in batches {
        let columns = schema.fields().iter().zip(batch.columns()).map(|(field, column)| cast(column, field.data_type()).unwrap()).collect();
        writer.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    writer.close().unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(segment_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "parquet") {
            files.push(path);
        }
    }
    files
}

fn organization_column_type(path: &std::path::Path) -> datafusion::arrow::datatypes::DataType {
    let builder =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    builder.schema().field_with_name("organization_id").unwrap().data_type().clone()
}

/// Writes `traces` traces of `trace_writes(seed)` into segments on SQLite,
/// flushing after every `per_flush`, and returns the directory and control plane.
async fn segments_of_traces(seed: u64, traces: usize, per_flush: usize) -> (tempfile::TempDir, ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlPlane::open_sqlite(dir.path(), 2).await.unwrap();
    control.migrate().await.unwrap();
    control
        .execute_admin(&format!("INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('{ORGANIZATION}', 'a', 0, 0)"))
        .await
        .unwrap();
    let (store, _typed, _general) = open(dir.path(), &control, &Tier::Segments).await;
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..traces {
        let writes = trace_writes(&mut rng, n);
        store.apply(n as u64 + 1, &Batch { organization_id: ORGANIZATION.into(), received_at: BASE + n as i64, writes });
        if n % per_flush == per_flush - 1 {
            store.flush().await.unwrap();
        }
    }
    store.flush().await.unwrap();
    (dir, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_format_segments_rewritten() {
    let (dir, control) = segments_of_traces(11, 60, 20).await;
    let (store, typed, _general) = open(dir.path(), &control, &Tier::Segments).await;
    let grouping: &[&str] = &["model", "day"];
    let summary = typed.1.summary(ORGANIZATION, &UsageFilter::default(), grouping).await.unwrap();
    let listed = walk(&typed.0, &TraceFilter::default(), (SortField::StartedAt, true)).await;
    drop((store, typed, _general));

    let files = segment_files(&dir.path().join("events"));
    assert!(files.len() >= 3, "the flushes should have written segments: {files:?}");
    for file in &files {
        write_previous_format(file);
        assert_eq!(organization_column_type(file), datafusion::arrow::datatypes::DataType::Utf8);
    }

    let (_store, typed, general) = open(dir.path(), &control, &Tier::Segments).await;
    for file in segment_files(&dir.path().join("events")) {
        assert!(
            matches!(organization_column_type(&file), datafusion::arrow::datatypes::DataType::Dictionary(_, _)),
            "{} should have been rewritten",
            file.display()
        );
    }
    assert_eq!(typed.1.summary(ORGANIZATION, &UsageFilter::default(), grouping).await.unwrap(), summary);
    assert_eq!(walk(&typed.0, &TraceFilter::default(), (SortField::StartedAt, true)).await, listed);
    compare_summaries(&typed, &general).await;
}

/// Segments written before `meta_low` existed are read as they are, with
/// every metadata filter searching `meta`.
#[tokio::test]
async fn segments_without_meta_low_kept() {
    let (dir, control) = segments_of_traces(13, 150, 50).await;
    let files = segment_files(&dir.path().join("events"));
    assert!(files.len() >= 3, "the flushes should have written segments: {files:?}");
    for file in &files {
        write_without_meta_low(file);
    }

    let (_store, typed, general) = open(dir.path(), &control, &Tier::Segments).await;
    for file in segment_files(&dir.path().join("events")) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        assert!(builder.schema().field_with_name("meta_low").is_err(), "{} should not have been rewritten", file.display());
    }
    for filter in filters().into_iter().filter(|filter| !filter.metadata.is_empty()) {
        let sort = (SortField::StartedAt, true);
        assert_eq!(walk(&typed.0, &filter, sort).await, walk(&general.0, &filter, sort).await, "{filter:?}");
    }
}

/// Rewrites a segment file without its `meta_low` column and without the
/// footer's list of high metadata keys, as files were written before them.
fn write_without_meta_low(path: &std::path::Path) {
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let metadata: Vec<_> = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    let listed = metadata.len();
    let metadata: Vec<_> = metadata.into_iter().filter(|pair| pair.key != "bedrock.meta_high_keys").collect();
    assert_eq!(metadata.len(), listed - 1, "the footer should list the high metadata keys");
    let index = builder.schema().index_of("meta_low").unwrap();
    let fields: Vec<_> = builder.schema().fields().iter().filter(|field| field.name() != "meta_low").cloned().collect();
    let schema = Arc::new(Schema::new(fields));
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    let temporary = path.with_extension("previous");
    let properties = WriterProperties::builder().set_key_value_metadata(Some(metadata)).build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&temporary).unwrap(), schema.clone(), Some(properties)).unwrap();
    for mut batch in batches {
        batch.remove_column(index);
        writer.write(&RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).unwrap()).unwrap();
    }
    writer.close().unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Compares the summaries of the typed and general plans over all records, in four groupings.
async fn compare_summaries(typed: &(TraceQueries, UsageQueries), general: &(TraceQueries, UsageQueries)) {
    for group_by in [&["model", "day"][..], &["day", "model"], &["trace", "hour"], &[]] {
        let fast = typed.1.summary(ORGANIZATION, &UsageFilter::default(), group_by).await.unwrap();
        let slow = general.1.summary(ORGANIZATION, &UsageFilter::default(), group_by).await.unwrap();
        assert_eq!(fast, slow, "usage summary by {group_by:?}");
    }
}
