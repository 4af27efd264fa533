//! Hot paths of the write path on fixed inputs: validating a harness span
//! close, merging metadata, applying writes to the in-memory buffer, and
//! flushing the buffer to a Parquet segment.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};

use bedrock_ingest::validate::{span_write, Limits};
use bedrock_store::events::merge_patch::{apply_merge_patch, compose_merge_patches};
use bedrock_store::events::model::{Batch, Op, Write};
use bedrock_store::events::EventStore;

fn llm_close() -> Value {
    json!({
        "ended_at": "2026-12-04T20:05:15.636764+00:00",
        "input_text": "x".repeat(2048),
        "output_text": "I will check the forecast.",
        "error": "",
        "metadata": {"model": "openai/gpt-4o-mini", "provider": "openrouter", "llm_cost": {
            "model": "openai/gpt-4o-mini", "input_tokens": 1200, "output_tokens": 35, "cached_tokens": 0,
            "reasoning_tokens": 0, "total_cost_usd": 0.00021, "cache_hit_rate": 0.0}}
    })
}

fn validation(c: &mut Criterion) {
    let body = llm_close();
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_and_validate_llm_close", |b| {
        b.iter(|| {
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            span_write(&value, Op::Update, Limits::default()).unwrap()
        })
    });
    group.finish();
}

fn metadata_merge(c: &mut Criterion) {
    let base = json!({"agent_id": "a", "run_id": "r", "model": "m", "usage": {"input_tokens": 1, "model_breakdown": {"m": {"x": 1}}}});
    let patch = json!({"usage": {"input_tokens": 3050, "output_tokens": 63, "model_breakdown": {"m": {"x": 2, "y": null}}}, "extra": [1, 2, 3]});
    let base = base.as_object().unwrap().clone();
    let patch = patch.as_object().unwrap().clone();
    c.bench_function("merge_patch/apply", |b| b.iter(|| apply_merge_patch(base.clone(), &patch)));
    c.bench_function("merge_patch/compose", |b| b.iter(|| compose_merge_patches(&base, &patch)));
}

fn span_batch(n: u64) -> Batch {
    let (_, fields) = span_write(&llm_close(), Op::Update, Limits::default()).unwrap();
    Batch {
        organization_id: "org".into(),
        received_at: 1_780_000_000_000_000,
        writes: vec![Write::Span { id: format!("span-{n}"), op: Op::Update, fields }],
    }
}

fn buffer_and_flush(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("event_store");
    group.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let batches: Vec<Batch> = (0..10_000).map(span_batch).collect();
    let mut lsn = 0u64;
    group.bench_function("apply_span_close", |b| {
        b.iter(|| {
            lsn += 1;
            store.apply(lsn, &batches[(lsn % 10_000) as usize]);
        })
    });

    group.throughput(Throughput::Elements(10_000));
    group.sample_size(10);
    group.bench_function("flush_10000_spans", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = EventStore::open(dir.path()).unwrap();
                for (n, batch) in batches.iter().enumerate() {
                    store.apply(n as u64 + 1, batch);
                }
                (dir, store)
            },
            |(dir, store)| {
                runtime.block_on(store.flush()).unwrap();
                drop(dir);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, validation, metadata_merge, buffer_and_flush);
criterion_main!(benches);
