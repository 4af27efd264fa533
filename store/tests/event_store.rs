//! The embedded event store across flushes and compaction: every read merges
//! the segments, the generation last flushed (read from memory in place of
//! its segment) and the buffer, in write order.

use bedrock_store::events::model::{Batch, Op, SpanFields, TraceFields, Write};
use bedrock_store::events::EventStore;
use serde_json::{json, Map, Value};

const ORG: &str = "org-1";

fn metadata(value: Value) -> Option<Map<String, Value>> {
    value.as_object().cloned()
}

fn span_open(id: &str, trace_id: &str, started_at: i64) -> Write {
    Write::Span {
        id: id.into(),
        op: Op::Create,
        fields: SpanFields {
            trace_id: Some(trace_id.into()),
            parent_id: Some(None),
            name: Some(format!("open {id}")),
            span_type: Some("llm".into()),
            started_at: Some(started_at),
            metadata: metadata(json!({"step": "open", "model": "gpt-4o"})),
            ..Default::default()
        },
    }
}

fn span_close(id: &str, ended_at: i64) -> Write {
    Write::Span {
        id: id.into(),
        op: Op::Update,
        fields: SpanFields {
            ended_at: Some(ended_at),
            output_text: Some(format!("output of {id}")),
            metadata: metadata(json!({"step": "closed"})),
            ..Default::default()
        },
    }
}

fn trace_open(id: &str) -> Write {
    Write::Trace {
        id: id.into(),
        op: Op::Create,
        fields: TraceFields { name: Some("session".into()), started_at: Some(1), ..Default::default() },
    }
}

fn apply(store: &EventStore, lsn: u64, writes: Vec<Write>) {
    store.apply(lsn, &Batch { organization_id: ORG.into(), received_at: 1_000 + lsn as i64, writes });
}

async fn assert_closed(store: &EventStore, id: &str, trace_id: &str) {
    let state = store.span(ORG, id).await.unwrap().unwrap_or_else(|| panic!("span {id} is found"));
    let fields = state.resolve();
    assert_eq!(fields.trace_id.as_deref(), Some(trace_id), "{id}: trace");
    assert_eq!(fields.name, Some(format!("open {id}")), "{id}: name from the open");
    assert_eq!(fields.ended_at, Some(20), "{id}: end from the close");
    assert_eq!(fields.output_text, Some(format!("output of {id}")), "{id}: output from the close");
    let metadata = fields.metadata.unwrap();
    assert_eq!(metadata["step"], "closed", "{id}: the close's patch wins");
    assert_eq!(metadata["model"], "gpt-4o", "{id}: the open's key is kept");
}

#[tokio::test]
async fn reads_merge_segments_recent_and_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();

    // d takes an update in each tier; the newest patch must win, so the
    // tiers must be read oldest first.
    let update_span_d = |step: &str| Write::Span {
        id: "d".into(),
        op: Op::Update,
        fields: SpanFields { metadata: metadata(json!({"step": step})), ..Default::default() },
    };
    // Flush 1 contains the trace and the opens of a, b and d.
    apply(&store, 1, vec![trace_open("t1"), span_open("a", "t1", 10), span_open("b", "t1", 11), span_open("d", "t2", 13)]);
    assert_eq!(store.flush().await.unwrap(), Some(1));
    // Flush 2 contains the close of a, the open of c and an update of d.
    apply(&store, 2, vec![span_close("a", 20), span_open("c", "t1", 12), update_span_d("recent")]);
    assert_eq!(store.flush().await.unwrap(), Some(2));
    // The buffer contains the closes of b and c and the newest update of d.
    apply(&store, 3, vec![span_close("b", 20), span_close("c", 20), update_span_d("buffered")]);

    // a: open in a segment file, close in the recent generation.
    assert_closed(&store, "a", "t1").await;
    // b: open in a segment file, close in the buffer.
    assert_closed(&store, "b", "t1").await;
    // c: open in the recent generation, close in the buffer.
    assert_closed(&store, "c", "t1").await;
    let d = store.span(ORG, "d").await.unwrap().unwrap().resolve();
    assert_eq!(d.metadata.unwrap()["step"], "buffered");
    let spans = store.spans_of_trace(ORG, "t1").await.unwrap();
    let mut ids: Vec<&String> = spans.keys().collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    let everything = store.all(ORG).await.unwrap();
    assert_eq!(everything.spans.len(), 4);
    assert_eq!(everything.traces.len(), 1);
    assert_eq!(everything.spans["d"].resolve().metadata.unwrap()["step"], "buffered");

    // Compaction replaces every segment, the recent one included, so the reads
    // then come from the compacted file and give the same states.
    assert_eq!(store.flush().await.unwrap(), Some(3));
    assert!(store.compact(2).await.unwrap(), "three segments of one tier are compacted");
    assert_eq!(store.stats().segments, 1);
    assert_eq!(store.stats().segment_rows, 5, "one row per object after compaction");
    for id in ["a", "b", "c"] {
        assert_closed(&store, id, "t1").await;
    }
    assert_eq!(store.spans_of_trace(ORG, "t1").await.unwrap().len(), 3);
    assert_eq!(store.all(ORG).await.unwrap().spans.len(), 4);
    let d = store.span(ORG, "d").await.unwrap().unwrap().resolve();
    assert_eq!(d.metadata.unwrap()["step"], "buffered");

    // A store reopened from the files alone reads the same.
    drop(store);
    let reopened = EventStore::open(dir.path()).unwrap();
    for id in ["a", "b", "c"] {
        assert_closed(&reopened, id, "t1").await;
    }
}

/// Reads of objects written only to memory skip the segments. These objects
/// look new to memory but have older rows in a segment, which reads must
/// still merge.
#[tokio::test]
async fn memory_reads_merge_older_segment_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let closed_at_20 = |id: &str| span_close(id, 20);

    // Segment 1: closes that came before their opens, and trace t3.
    apply(&store, 1, vec![closed_at_20("late"), closed_at_20("late2"), trace_open("t3")]);
    assert_eq!(store.flush().await.unwrap(), Some(1));
    // Segment 2 replaces segment 1 as the generation kept in memory, so
    // segment 1 is read from its file only.
    apply(&store, 2, vec![span_open("other", "t9", 1)]);
    assert_eq!(store.flush().await.unwrap(), Some(2));

    // The opens arrive, each with a span that is new everywhere.
    apply(&store, 3, vec![span_open("late", "t3", 10), span_open("new", "t3", 11)]);
    apply(&store, 4, vec![trace_open("t4"), span_open("late2", "t4", 10), span_open("fresh", "t4", 11)]);

    for (id, trace) in [("late", "t3"), ("late2", "t4")] {
        assert_closed(&store, id, trace).await;
    }
    // t3 is in segment 1; t4 is in no segment, but its span late2 is.
    for (trace, late, new) in [("t3", "late", "new"), ("t4", "late2", "fresh")] {
        let spans = store.spans_of_trace(ORG, trace).await.unwrap();
        let mut ids: Vec<&str> = spans.keys().map(String::as_str).collect();
        ids.sort();
        let mut expected = vec![late, new];
        expected.sort();
        assert_eq!(ids, expected, "spans of {trace}");
        let late_state = spans[late].resolve();
        assert_eq!(late_state.ended_at, Some(20), "{late}: the close from segment 1");
        assert_eq!(late_state.started_at, Some(10), "{late}: the open from the buffer");
        assert_eq!(spans[new].resolve().ended_at, None, "{new} is open");
    }
    let t3 = store.trace(ORG, "t3").await.unwrap().expect("trace t3 from segment 1");
    assert_eq!(t3.resolve().name.as_deref(), Some("session"));

    // The same after the buffer is flushed and kept in memory as the
    // recent generation, and after compaction drops that.
    assert_eq!(store.flush().await.unwrap(), Some(4));
    for round in ["recent", "compacted"] {
        for (id, trace) in [("late", "t3"), ("late2", "t4")] {
            assert_closed(&store, id, trace).await;
        }
        assert_eq!(store.spans_of_trace(ORG, "t4").await.unwrap().len(), 2, "{round}");
        assert_eq!(store.spans_of_trace(ORG, "t3").await.unwrap().len(), 2, "{round}");
        store.compact(2).await.unwrap();
    }
    assert_eq!(store.stats().segments, 1);
}

#[tokio::test]
async fn other_organizations_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    apply(&store, 1, vec![span_open("a", "t1", 10)]);
    store.apply(2, &Batch { organization_id: "org-2".into(), received_at: 5, writes: vec![span_open("a", "t9", 30)] });
    store.flush().await.unwrap();

    let ours = store.span(ORG, "a").await.unwrap().unwrap().resolve();
    assert_eq!(ours.trace_id.as_deref(), Some("t1"));
    let theirs = store.span("org-2", "a").await.unwrap().unwrap().resolve();
    assert_eq!(theirs.trace_id.as_deref(), Some("t9"));
    assert!(store.spans_of_trace(ORG, "t9").await.unwrap().is_empty());
    assert_eq!(store.all(ORG).await.unwrap().spans.len(), 1);
}

#[tokio::test]
async fn compaction_keeps_one_row_per_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    const PER_FLUSH: usize = 3_000;
    // Each flush opens 3,000 new spans and closes the first 500 of the
    // flush before, so compaction meets both unique and repeated keys.
    for flush in 0..3usize {
        let mut writes: Vec<Write> =
            (0..PER_FLUSH).map(|n| span_open(&format!("s{flush}-{n}"), &format!("t{}", n % 97), 10)).collect();
        if flush > 0 {
            writes.extend((0..500).map(|n| span_close(&format!("s{}-{n}", flush - 1), 20)));
        }
        apply(&store, flush as u64 + 1, writes);
        store.flush().await.unwrap();
    }
    assert_eq!(store.stats().segments, 3);
    assert_eq!(store.stats().segment_rows, 3 * 3_000 + 2 * 500);

    assert!(store.compact(3).await.unwrap());
    assert_eq!(store.stats().segments, 1);
    assert_eq!(store.stats().segment_rows, 9_000, "the 1,000 repeated keys merged into their objects");

    let everything = store.all(ORG).await.unwrap();
    assert_eq!(everything.spans.len(), 9_000);
    let closed = everything.spans.values().filter(|state| state.resolve().ended_at == Some(20)).count();
    assert_eq!(closed, 1_000);
    for (id, trace_id) in [("s0-0", "t0"), ("s0-499", "t14"), ("s1-250", "t56")] {
        assert_closed(&store, id, trace_id).await;
    }
    let open = store.span(ORG, "s0-500").await.unwrap().unwrap().resolve();
    assert_eq!(open.ended_at, None);
    assert_eq!(open.metadata.unwrap()["step"], "open");
}

/// Returns the ids of the spans that a fast scan merges itself.
async fn merged_spans(store: &EventStore) -> Vec<String> {
    let scan = store.fast_scan(ORG).await.unwrap().expect("the embedded store has segment files");
    let mut ids: Vec<String> = scan.slow.spans.keys().cloned().collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn fast_scans_merge_only_split_and_buffered_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    apply(&store, 1, vec![trace_open("t1"), span_open("split", "t1", 10), span_open("whole", "t1", 11), span_close("whole", 12)]);
    store.flush().await.unwrap();
    assert_eq!(merged_spans(&store).await, ["split", "whole"], "the generation last flushed is read from memory");

    apply(&store, 2, vec![span_close("split", 20)]);
    store.flush().await.unwrap();
    apply(&store, 3, vec![span_open("buffered", "t1", 30)]);
    // `split` has a row in each of two segments, `buffered` is in memory,
    // and `whole` is one row of the first segment.
    store.flush().await.unwrap();
    assert_eq!(merged_spans(&store).await, ["buffered", "split"]);

    let scan = store.fast_scan(ORG).await.unwrap().unwrap();
    let split = scan.slow.spans["split"].resolve();
    assert_eq!((split.started_at, split.ended_at, split.trace_id.as_deref()), (Some(10), Some(20), Some("t1")), "merged from both segments");
    drop(scan);

    // The store finds the split object again from its files.
    drop(store);
    let store = EventStore::open(dir.path()).unwrap();
    assert_eq!(merged_spans(&store).await, ["split"]);

    // Once compaction puts both rows in one segment, no object needs merging.
    while store.compact(2).await.unwrap() {}
    assert_eq!(store.stats().segments, 1);
    assert!(merged_spans(&store).await.is_empty());
    drop(store);
    let store = EventStore::open(dir.path()).unwrap();
    assert!(merged_spans(&store).await.is_empty());
    assert_closed(&store, "split", "t1").await;
}

/// Returns the high metadata keys of each segment of a fast scan, sorted.
async fn high_keys(store: &EventStore) -> Vec<Vec<String>> {
    let scan = store.fast_scan(ORG).await.unwrap().expect("the embedded store has segment files");
    let listed = scan.meta_high.iter().map(|keys| keys.as_ref().expect("the segment lists its keys").iter().cloned().collect());
    listed.collect()
}

#[tokio::test]
async fn segments_list_the_metadata_keys_with_many_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();

    // 40 traces per flush: `run` has a value per trace, `env` 2 values.
    for flush in 0..2u64 {
        let writes = (0..40)
            .map(|n| (n, ["prod", "dev"][n as usize % 2]))
            .map(|(n, env)| Write::Trace {
                id: format!("t{flush}-{n}"),
                op: Op::Create,
                fields: TraceFields {
                    started_at: Some(n),
                    metadata: metadata(json!({"run": format!("{flush}-{n}"), "env": env})),
                    ..Default::default()
                },
            })
            .collect();
        apply(&store, flush + 1, writes);
        store.flush().await.unwrap();
    }
    // One more flush, so the first two are read from their files.
    apply(&store, 3, vec![trace_open("last")]);
    store.flush().await.unwrap();

    // 40 values of `run` fit in a segment's `meta_low`, and 80 do not.
    assert_eq!(high_keys(&store).await, [Vec::<String>::new(), Vec::new()]);
    while store.compact(2).await.unwrap() {}
    assert_eq!(high_keys(&store).await, [vec!["run".to_string()]]);

    drop(store);
    let store = EventStore::open(dir.path()).unwrap();
    // Reopened, the last flush's segment is read from its file too.
    assert_eq!(high_keys(&store).await, [vec!["run".to_string()], Vec::new()], "the footers keep the lists");
}
