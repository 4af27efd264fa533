//! The embedded event store: an in-memory buffer of partial object states in
//! front of immutable Parquet segments.
//!
//! Writes are applied to the buffer after the write-ahead log has made them
//! durable (the `ingest` crate does that), so reads see them at once. A flush
//! moves the whole buffer into a new segment; compaction merges segments so
//! each object has one row. Reads merge, per object and in write order, the
//! rows of every segment, the generation being flushed and the live buffer.
//! The generation last flushed stays in memory until the next flush, and
//! reads take it from there in place of its segment file.
//!
//! Segments are scanned with DataFusion, filtered by organization, trace or id
//! so row-group statistics and bloom filters skip what a read does not need.

pub mod bloom;
pub mod bulk;
pub mod clickhouse;
pub mod merge_patch;
pub mod model;
pub mod pricing;
pub mod segment;
pub mod typed;
pub mod usage;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::prelude::{col, lit, Expr, ParquetReadOptions, SessionConfig, SessionContext};
use serde::de::DeserializeOwned;

use self::clickhouse::{ClickHouseTier, RowFilter, TypedObject};
use self::model::{Batch, Fields, Layered, SpanState, TraceState, UsageState, Write};
use self::segment::{Applied, ObjectKey, SegmentFile, SegmentRow, KIND_SPAN, KIND_TRACE, KIND_USAGE};
use self::typed::Typed;
use crate::StoreError;

type Key = (String, String);

/// Hasher of the buffer's maps, which every write probes several times.
/// SipHash took 3% of the server's CPU under OTLP load.
/// NOTE: foldhash is not as resistant to crafted colliding ids as SipHash.
/// Its random per-map seeds only make such ids harder to find.
type FastHasher = foldhash::fast::RandomState;
type FastMap<K, V> = HashMap<K, V, FastHasher>;
type FastSet<K> = HashSet<K, FastHasher>;

/// The longest `IN` list by which segment scans prune files and row groups
/// by their statistics: the max objects of a list page.
/// NOTE: DataFusion 55 ignores this for page pruning, which stops at 20 values.
pub const MAX_PRUNING_IN_LIST: usize = 1000;

/// Maximum rows that one compaction merges; larger runs stay as they are.
pub const MAX_COMPACTION_ROWS: u64 = 5_000_000;

/// Segments whose row counts differ by more than this factor are not merged
/// together, so a small new segment does not rewrite a large old one.
const SIMILAR_SIZE_RATIO: u64 = 4;

/// Picks the segments to compact: the newest run of adjacent segments with
/// at least `min_segments` peers, segments whose row counts are within
/// [`SIMILAR_SIZE_RATIO`] of each other, and at most [`MAX_COMPACTION_ROWS`]
/// rows in all. Each run is grown from its newest segment towards older ones,
/// and runs ending at older segments are tried when the newest ones are too
/// short, so a run left behind by newer segments of another size is still
/// merged. Only adjacent segments merge because reads apply segments in
/// write order.
///
/// A segment much smaller than the peers around it joins their run without
/// counting as a peer: it costs the merge little, and left alone it would
/// keep its neighbours from ever being adjacent.
fn compaction_run(rows: &[u64], min_segments: usize) -> Option<std::ops::Range<usize>> {
    for end in (0..rows.len()).rev() {
        let (mut smallest, mut largest, mut total) = (rows[end].max(1), rows[end], rows[end]);
        let mut peers = 1;
        let mut start = end;
        while start > 0 {
            let next = rows[start - 1];
            if total + next > MAX_COMPACTION_ROWS {
                break;
            }
            if next.max(1).saturating_mul(SIMILAR_SIZE_RATIO) < smallest {
                total += next;
                start -= 1;
                continue;
            }
            let (low, high) = (smallest.min(next.max(1)), largest.max(next));
            if high > low.saturating_mul(SIMILAR_SIZE_RATIO) {
                break;
            }
            (smallest, largest, total, peers) = (low, high, total + next, peers + 1);
            start -= 1;
        }
        if peers >= min_segments {
            return Some(start..end + 1);
        }
    }
    None
}

/// Merges the rows of `paths` (oldest first) into `writer`, one row per object.
///
/// A first pass reads only the key columns and counts the rows of each key
/// hash. A second pass copies the rows of keys that occur once to the writer
/// as Arrow data, one batch at a time, and merges the rows of repeated keys in
/// memory until the last of them is read. So memory contains a hash per row and
/// the objects whose rows span the inputs being read, never a whole segment,
/// and each input is read twice.
fn compact_files(paths: &[PathBuf], writer: &mut segment::SegmentWriter) -> Result<(), StoreError> {
    use datafusion::arrow::array::BooleanArray;
    use datafusion::arrow::compute::filter_record_batch;

    // Columns 0..=2 are organization_id, kind and id.
    let mut hashes: Vec<u64> = Vec::new();
    for path in paths {
        segment::for_each_record_batch(path, Some(&[0, 1, 2]), |batch| {
            hashes.extend(segment::key_hashes(batch)?);
            Ok(())
        })?;
    }
    hashes.sort_unstable();
    // Rows still to come for each hash shared by several rows.
    let mut remaining: HashMap<u64, usize> = HashMap::new();
    for run in hashes.chunk_by(|a, b| a == b) {
        if run.len() > 1 {
            remaining.insert(run[0], run.len());
        }
    }
    drop(hashes);

    // The rows of repeated keys, merged, grouped by hash (keys of different
    // objects may share one). A group is written once its last row is read,
    // so memory keeps only the objects whose rows span the inputs being read.
    let mut pending: HashMap<u64, HashMap<(String, &'static str, String), SegmentRow>> = HashMap::new();
    let mut complete: Vec<SegmentRow> = Vec::new();
    for path in paths {
        segment::for_each_record_batch(path, None, |batch| {
            let batch_hashes = segment::key_hashes(batch)?;
            let is_repeated: Vec<bool> = batch_hashes.iter().map(|hash| remaining.contains_key(hash)).collect();
            if !is_repeated.contains(&true) {
                return writer.write_batch(batch);
            }
            let unique = BooleanArray::from(is_repeated.iter().map(|r| !r).collect::<Vec<bool>>());
            writer.write_batch(&filter_record_batch(batch, &unique).map_err(StoreError::internal)?)?;
            let repeated_hashes = batch_hashes.iter().zip(&is_repeated).filter(|(_, r)| **r).map(|(hash, _)| *hash);
            let others = filter_record_batch(batch, &BooleanArray::from(is_repeated.clone())).map_err(StoreError::internal)?;
            for (hash, row) in repeated_hashes.zip(segment::rows_of_batch(&others)?) {
                let group = pending.entry(hash).or_default();
                let key = (row.organization_id.clone(), row.kind, row.id.clone());
                match group.get_mut(&key) {
                    Some(existing) => merge_rows(existing, row)?,
                    None => {
                        group.insert(key, row);
                    }
                }
                let left = remaining.get_mut(&hash).map_or(0, |left| {
                    *left -= 1;
                    *left
                });
                if left == 0 {
                    complete.extend(pending.remove(&hash).into_iter().flat_map(HashMap::into_values));
                }
            }
            if complete.len() >= segment::WRITE_CHUNK_ROWS {
                segment::sort_rows(&mut complete)?;
                writer.write_sorted(&complete)?;
                complete.clear();
            }
            Ok(())
        })?;
    }
    // Every group completes when the inputs are read as counted; this only
    // guards against a file that changed between the two passes.
    complete.extend(pending.into_values().flat_map(HashMap::into_values));
    segment::sort_rows(&mut complete)?;
    writer.write_sorted(&complete)
}

/// Every object of one organization, merged, by id.
#[derive(Debug, Default)]
pub struct Objects {
    pub traces: HashMap<String, TraceState>,
    pub spans: HashMap<String, SpanState>,
    pub usage: HashMap<String, UsageState>,
}

/// Merges the in-memory states of one organization into `merged`.
fn merge_memory<F: Fields>(merged: &mut HashMap<String, Layered<F>>, memory: &FastMap<Key, Layered<F>>, organization_id: &str) {
    for ((org, id), newer) in memory {
        if org == organization_id {
            let mut state = merged.remove(id);
            merge_into(&mut state, newer);
            merged.extend(state.map(|s| (id.clone(), s)));
        }
    }
}

/// Merges states newer than those of `older` into it, object by object.
fn merge_newer_states<F: Fields>(older: &mut HashMap<String, Layered<F>>, newer: HashMap<String, Layered<F>>) {
    for (id, state) in newer {
        match older.get_mut(&id) {
            Some(existing) => existing.merge_newer(&state),
            None => {
                older.insert(id, state);
            }
        }
    }
}

/// A read of an organization's objects prepared by [`EventStore::fast_scan`].
pub struct FastScan {
    /// Segment files whose rows describe whole objects through their typed
    /// columns, except the rows of the objects in `slow`.
    pub paths: Vec<String>,
    /// The filters of keys `[organization, trace id]` of each file of `paths`.
    pub trace_blooms: Vec<Arc<bloom::Bloom>>,
    /// The high metadata keys of each file of `paths` (see
    /// [`typed::MetaSplit`]); `None` for all keys.
    pub meta_high: Vec<Option<Arc<std::collections::BTreeSet<String>>>>,
    /// The exact merged state of every object in memory or with rows in
    /// several segments.
    pub slow: Objects,
    /// On ClickHouse, in place of `paths`: the tier whose `objects` table
    /// contains the typed columns of every flushed object, except those in `slow`.
    pub clickhouse: Option<ClickHouseTier>,
    /// On ClickHouse, whether some stored object of the organization has
    /// rows merged from several flushes, which reads must then pick among.
    /// An object flushed after the scan began is in `slow`.
    pub merged: bool,
    _files: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl FastScan {
    /// Reports whether file `index` of `paths` may hold rows of the trace
    /// whose key `[organization, trace id]` gave `probe`.
    pub fn may_hold_trace(&self, index: usize, probe: bloom::Probe) -> bool {
        self.trace_blooms[index].may_contain_probe(probe)
    }

    /// Reports whether a filter on the metadata key `key` (as
    /// [`typed::metadata_key`] spells it) must read the `meta` column of file
    /// `index` of `paths`, rather than `meta_low`.
    pub fn meta_is_high(&self, index: usize, key: &str) -> bool {
        self.meta_high[index].as_ref().is_none_or(|keys| keys.contains(key))
    }
}

/// Objects written since the last flush.
#[derive(Default)]
struct Generation {
    traces: FastMap<Key, TraceState>,
    spans: FastMap<Key, SpanState>,
    usage: FastMap<Key, UsageState>,
    /// Span ids by (organization, trace id), for reads of one trace.
    spans_by_trace: FastMap<Key, FastSet<String>>,
    /// Objects first written in this generation, when no segment and no
    /// older generation contained rows of them.
    born: Born,
    bytes: usize,
    writes: usize,
}

/// Keys that no segment and no older generation contained when this
/// generation first saw them. While the generation is in memory, all their
/// rows are too, because segments gain rows only from generations in memory.
/// Point reads of these keys skip the segments and their Bloom filters.
/// Never filled on ClickHouse, which other instances also write to.
#[derive(Default, Clone)]
struct Born {
    traces: FastSet<Key>,
    spans: FastSet<Key>,
    usage: FastSet<Key>,
    /// Traces none of whose spans any segment held.
    trace_spans: FastSet<Key>,
}

impl Born {
    fn extend(&mut self, newer: Born) {
        self.traces.extend(newer.traces);
        self.spans.extend(newer.spans);
        self.usage.extend(newer.usage);
        self.trace_spans.extend(newer.trace_spans);
    }
}

impl Generation {
    fn with_capacity_of(other: &Generation) -> Generation {
        Generation {
            traces: FastMap::with_capacity_and_hasher(other.traces.len(), FastHasher::default()),
            spans: FastMap::with_capacity_and_hasher(other.spans.len(), FastHasher::default()),
            usage: FastMap::with_capacity_and_hasher(other.usage.len(), FastHasher::default()),
            spans_by_trace: FastMap::with_capacity_and_hasher(other.spans_by_trace.len(), FastHasher::default()),
            born: Born::default(),
            bytes: 0,
            writes: 0,
        }
    }

    /// Reports whether this generation mentions trace `key`, as an object or
    /// as the trace of a span.
    fn mentions_trace(&self, key: &Key) -> bool {
        self.traces.contains_key(key) || self.spans_by_trace.contains_key(key)
    }

    fn is_empty(&self) -> bool {
        self.traces.is_empty() && self.spans.is_empty() && self.usage.is_empty()
    }

    fn apply(&mut self, organization_id: &str, write: Write, seq: u64, now: i64) {
        match write {
            Write::Trace { id, op, fields } => {
                let key = (organization_id.to_string(), id);
                apply_to(&mut self.traces, &mut self.bytes, key, op, fields, seq, now);
            }
            Write::Span { id, op, fields } => {
                if let Some(trace_id) = &fields.trace_id {
                    self.spans_by_trace
                        .entry((organization_id.to_string(), trace_id.clone()))
                        .or_default()
                        .insert(id.clone());
                }
                let key = (organization_id.to_string(), id);
                apply_to(&mut self.spans, &mut self.bytes, key, op, fields, seq, now);
            }
            Write::Usage { id, op, fields } => {
                let key = (organization_id.to_string(), id);
                apply_to(&mut self.usage, &mut self.bytes, key, op, fields, seq, now);
            }
        }
        self.writes += 1;
    }
}

fn apply_to<F: Fields>(
    map: &mut FastMap<Key, Layered<F>>,
    bytes: &mut usize,
    key: Key,
    op: model::Op,
    fields: F,
    seq: u64,
    now: i64,
) {
    let key_bytes = key.0.len() + key.1.len() + 64;
    match map.get_mut(&key) {
        Some(state) => {
            let before = state.heap_bytes();
            state.apply(op, fields, seq);
            *bytes = (*bytes + state.heap_bytes()).saturating_sub(before);
        }
        None => {
            let state = Layered::from_write(op, fields, seq, now);
            *bytes += state.heap_bytes() + key_bytes;
            map.insert(key, state);
        }
    }
}

/// Tracks which log records have been applied, when they finish out of order.
#[derive(Default)]
struct AppliedTracker {
    through: u64,
    pending: BTreeSet<u64>,
}

impl AppliedTracker {
    fn mark(&mut self, lsn: u64) {
        if lsn <= self.through {
            return;
        }
        self.pending.insert(lsn);
        while self.pending.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }

    fn snapshot(&self) -> Applied {
        Applied { through: self.through, extra: self.pending.iter().copied().collect() }
    }
}

struct Inner {
    buffer: Generation,
    flushing: Option<Arc<Generation>>,
    /// The generation last flushed to a segment, with that segment's number.
    /// Reads take its objects from memory and skip the file, so reading back
    /// an object written a moment ago rarely scans Parquet. Dropped when
    /// compaction replaces the segment.
    recent: Option<(u64, Arc<Generation>)>,
    segments: Vec<SegmentFile>,
    /// Objects with rows in more than one segment, whose typed columns
    /// therefore describe only part of them (see [`EventStore::fast_scan`]).
    /// Bloom filter false positives add a few objects that need not be here.
    multi: HashSet<ObjectKey>,
    next_segment: u64,
    tracker: AppliedTracker,
}

/// Counters for readiness checks, logs and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub buffer_objects: usize,
    pub buffer_writes: usize,
    pub buffer_bytes: usize,
    pub segments: usize,
    pub segment_rows: u64,
    pub segment_bytes: u64,
}

pub struct EventStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// One flush at a time.
    flush_lock: tokio::sync::Mutex<()>,
    /// One compaction at a time. Flushes run beside it: they only append
    /// segments, and it only replaces a run of older ones.
    compaction_lock: tokio::sync::Mutex<()>,
    /// Held by reads from their segment scan until they have read memory,
    /// and exclusively by a flush while it moves a generation into a segment
    /// and by compaction while it deletes the files it replaced.
    files: Arc<tokio::sync::RwLock<()>>,
    context: SessionContext,
    /// The flush target used in place of Parquet segments, when set.
    clickhouse: Option<ClickHouseTier>,
    /// Version of the last flush into ClickHouse, in microseconds, strictly increasing.
    last_version: Mutex<u64>,
    /// On ClickHouse, the typed columns of a flush whose rows were inserted
    /// but whose columns were not, with what the flush applied and its number.
    pending_objects: Mutex<Option<(Vec<TypedObject>, Applied, u64)>>,
}

impl EventStore {
    /// Opens the store in `dir`, loading its segments.
    pub fn open(dir: &Path) -> Result<EventStore, StoreError> {
        let segments_dir = dir.join("segments");
        let (segments, multi) = segment::load_segments(&segments_dir)?;
        let next_segment = segments.last().map_or(1, |s| s.last + 1);
        let mut tracker = AppliedTracker::default();
        for file in &segments {
            tracker.through = tracker.through.max(file.applied.through);
            tracker.pending.extend(file.applied.extra.iter().copied());
        }
        let tracker_through = tracker.through;
        tracker.pending.retain(|lsn| *lsn > tracker_through);
        tracing::info!(segments = segments.len(), split_objects = multi.len(), applied_through = tracker.through, "event store opened");
        let mut config = SessionConfig::new().with_target_partitions(2);
        // Read text columns as plain Utf8, the type the segment writer uses.
        config.options_mut().execution.parquet.schema_force_view_types = false;
        // Evaluate filters inside the Parquet decoder, so a point read decodes
        // the `state` pages containing its rows rather than the whole row group.
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        // Row group statistics prune by `IN` lists of up to this many values
        // (20 by default), so reading the objects of a whole list page prunes too.
        config.options_mut().execution.parquet.max_in_list_size = MAX_PRUNING_IN_LIST;
        Ok(EventStore {
            dir: segments_dir,
            inner: Mutex::new(Inner {
                buffer: Generation::default(),
                flushing: None,
                recent: None,
                segments,
                multi,
                next_segment,
                tracker,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            compaction_lock: tokio::sync::Mutex::new(()),
            files: Arc::new(tokio::sync::RwLock::new(())),
            context: SessionContext::new_with_config_rt(config, point_read_runtime()?),
            clickhouse: None,
            last_version: Mutex::new(0),
            pending_objects: Mutex::new(None),
        })
    }

    /// Opens a store whose flushes go to ClickHouse at `url`, as the instance
    /// `instance` (the owner of one write-ahead log), instead of to segments.
    pub async fn open_clickhouse(url: &str, instance: &str) -> Result<EventStore, StoreError> {
        let (tier, backfills) = ClickHouseTier::open(url, instance).await?;
        let applied = tier.applied().await?;
        let mut tracker = AppliedTracker { through: applied.through, ..Default::default() };
        tracker.pending.extend(applied.extra.iter().copied().filter(|lsn| *lsn > applied.through));
        if !backfills.is_empty() {
            for organization_id in tier.organizations().await? {
                let rows = tier.rows(&RowFilter::Organization(&organization_id)).await?;
                for kind in [KIND_TRACE, KIND_SPAN, KIND_USAGE] {
                    let rows: Vec<SegmentRow> = rows.iter().filter(|row| row.kind == kind).cloned().collect();
                    let stored = tier.merged_rows(&organization_id, kind, None).await?;
                    tier.insert_objects(&newer_than_stored(typed_objects(&organization_id, kind, &rows)?, &stored)).await?;
                }
                tracing::info!(organization_id, rows = rows.len(), "typed columns of stored objects computed");
            }
            for version in backfills {
                tier.record_migration(version).await?;
            }
        }
        // A crash may have come between the last flush's rows and their
        // typed columns: compute those again.
        let mut last: HashMap<(String, &'static str), Vec<String>> = HashMap::new();
        for (organization_id, kind, id) in tier.last_flush_objects().await? {
            last.entry((organization_id, kind)).or_default().push(id);
        }
        for ((organization_id, kind), ids) in &last {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let stored = tier.merged_rows(organization_id, kind, Some(&ids)).await?;
            let rows = tier.rows(&RowFilter::Objects { organization_id, kind, ids }).await?;
            tier.insert_objects(&newer_than_stored(typed_objects(organization_id, kind, &rows)?, &stored)).await?;
        }
        tracing::info!(instance, applied_through = tracker.through, "event store opened on ClickHouse");
        Ok(EventStore {
            dir: PathBuf::new(),
            inner: Mutex::new(Inner {
                buffer: Generation::default(),
                flushing: None,
                recent: None,
                segments: Vec::new(),
                multi: HashSet::new(),
                next_segment: 1,
                tracker,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            compaction_lock: tokio::sync::Mutex::new(()),
            files: Arc::new(tokio::sync::RwLock::new(())),
            context: SessionContext::new(),
            clickhouse: Some(tier),
            last_version: Mutex::new(0),
            pending_objects: Mutex::new(None),
        })
    }

    /// Returns a flush version above every earlier one of this instance.
    fn next_version(&self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last_version.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = now.max(*last + 1);
        *last
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reports whether the segments already contain log record `lsn`, which
    /// recovery then skips.
    pub fn contains(&self, lsn: u64) -> bool {
        let inner = self.lock();
        lsn <= inner.tracker.through || inner.tracker.pending.contains(&lsn)
    }

    /// Applies a durable batch of writes, logged as record `lsn`.
    pub fn apply(&self, lsn: u64, batch: &Batch) {
        self.apply_owned(lsn, batch.clone());
    }

    /// Applies a durable batch as [`EventStore::apply`] does, taking
    /// ownership so its fields move into the buffer without a copy.
    pub fn apply_owned(&self, lsn: u64, batch: Batch) {
        let mut inner = self.lock();
        for write in batch.writes {
            if self.clickhouse.is_none() {
                note_born(&mut inner, &batch.organization_id, &write);
            }
            inner.buffer.apply(&batch.organization_id, write, lsn, batch.received_at);
        }
        inner.tracker.mark(lsn);
    }

    /// Declares every record up to `lsn` applied; recovery calls this after
    /// replaying the log, whose truncated records are all in segments.
    pub fn mark_applied_through(&self, lsn: u64) {
        let mut inner = self.lock();
        if lsn > inner.tracker.through {
            inner.tracker.through = lsn;
            inner.tracker.pending.retain(|pending| *pending > lsn);
        }
    }

    /// Bytes held in memory by unflushed writes (buffer plus the generation being flushed).
    pub fn buffered_bytes(&self) -> usize {
        let inner = self.lock();
        inner.buffer.bytes + inner.flushing.as_ref().map_or(0, |g| g.bytes)
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            buffer_objects: inner.buffer.traces.len() + inner.buffer.spans.len() + inner.buffer.usage.len(),
            buffer_writes: inner.buffer.writes,
            buffer_bytes: inner.buffer.bytes + inner.flushing.as_ref().map_or(0, |g| g.bytes),
            segments: inner.segments.len(),
            segment_rows: inner.segments.iter().map(|s| s.rows).sum(),
            segment_bytes: inner.segments.iter().map(|s| s.bytes).sum(),
        }
    }

    /// Writes the buffer to a new segment. Returns the log position through
    /// which every record is now in segments (so the log may be truncated
    /// there), or `None` when there was nothing to flush.
    pub async fn flush(&self) -> Result<Option<u64>, StoreError> {
        let _flush = self.flush_lock.lock().await;
        if let Some(tier) = &self.clickhouse {
            // A flush whose rows are in ClickHouse but whose typed columns
            // are not completes first; its generation is still in memory.
            let pending = self.pending_objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            if let Some((objects, applied, number)) = pending {
                if let Err(err) = refresh_objects(tier, &objects, true).await {
                    *self.pending_objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((objects, applied, number));
                    return Err(err);
                }
                let _files = self.files.write().await;
                tracing::info!(flush = number, "typed columns of a flush written to ClickHouse");
                self.lock().flushing = None;
                return Ok(Some(applied.through));
            }
        }
        let (generation, applied, number) = {
            let mut inner = self.lock();
            if inner.buffer.is_empty() {
                return Ok(None);
            }
            // The next generation likely grows as large: reserving that much
            // spares its maps from rehashing as they fill.
            let next = Generation::with_capacity_of(&inner.buffer);
            let generation = Arc::new(std::mem::replace(&mut inner.buffer, next));
            inner.flushing = Some(generation.clone());
            let number = inner.next_segment;
            inner.next_segment += 1;
            (generation, inner.tracker.snapshot(), number)
        };

        if let Some(tier) = &self.clickhouse {
            // Serializing tens of thousands of states takes about a tenth of
            // a second, so it runs off the async workers that serve requests.
            let shared = generation.clone();
            let rows = tokio::task::spawn_blocking(move || generation_rows(&shared))
                .await
                .map_err(StoreError::internal)
                .and_then(|rows| rows);
            let (rows, objects) = match rows {
                Ok(parts) => parts,
                Err(err) => {
                    let _files = self.files.write().await;
                    restore_generation(&mut self.lock(), generation);
                    return Err(err);
                }
            };
            let count = rows.len();
            if let Err(err) = tier.insert(rows, &applied, self.next_version()).await {
                let _files = self.files.write().await;
                restore_generation(&mut self.lock(), generation);
                return Err(err);
            }
            // The rows are in ClickHouse with their marker, so they must not
            // be inserted again: when the typed columns fail, the generation
            // stays in memory and the next flush retries only them.
            if let Err(err) = refresh_objects(tier, &objects, false).await {
                *self.pending_objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((objects, applied, number));
                return Err(err);
            }
            let _files = self.files.write().await;
            tracing::info!(flush = number, rows = count, "buffer flushed to ClickHouse");
            self.lock().flushing = None;
            return Ok(Some(applied.through));
        }

        let dir = self.dir.clone();
        // A compaction may replace some of these segments meanwhile. The
        // merged segment contains the same keys, so the keys found are still
        // in older segments.
        let older: Vec<Arc<bloom::Bloom>> = self.lock().segments.iter().map(|s| s.ids.clone()).collect();
        let written = {
            let generation = generation.clone();
            let applied = applied.clone();
            tokio::task::spawn_blocking(move || {
                let file = write_generation(&dir, number, &generation, &applied)?;
                Ok::<_, StoreError>((file, keys_in_older_segments(&generation, &older)))
            })
            .await
            .map_err(StoreError::internal)?
        };

        // Readers hold `files` from their segment scan until they have read
        // memory, so the generation never moves from memory to a new segment
        // between the two and a read never misses it.
        let files = self.files.write().await;
        let mut inner = self.lock();
        let previous = match written {
            Ok((file, multi)) => {
                tracing::info!(segment = number, rows = file.rows, bytes = file.bytes, "buffer flushed");
                inner.segments.push(file);
                inner.multi.extend(multi);
                inner.flushing = None;
                inner.recent.replace((number, generation))
            }
            Err(err) => {
                restore_generation(&mut inner, generation);
                return Err(err);
            }
        };
        drop(inner);
        drop(files);
        // Freeing a generation's objects takes milliseconds: do it off the
        // locks and the async workers.
        if let Some(previous) = previous {
            tokio::task::spawn_blocking(move || drop(previous));
        }
        Ok(Some(applied.through))
    }

    /// Merges the newest run of at least `min_segments` adjacent segments of
    /// similar size (size-tiered compaction). Merged segments are about
    /// `min_segments` times larger than their inputs, so every row is
    /// rewritten about once per size tier, and the number of segments stays
    /// logarithmic in the data. Runs are never longer than
    /// [`MAX_COMPACTION_ROWS`] rows, which bounds the segment size.
    pub async fn compact(&self, min_segments: usize) -> Result<bool, StoreError> {
        if self.clickhouse.is_some() {
            return Ok(false);
        }
        let _compaction = self.compaction_lock.lock().await;
        let (start, victims): (usize, Vec<SegmentFile>) = {
            let inner = self.lock();
            let rows: Vec<u64> = inner.segments.iter().map(|s| s.rows).collect();
            let Some(run) = compaction_run(&rows, min_segments.max(2)) else {
                return Ok(false);
            };
            (run.start, inner.segments[run].to_vec())
        };
        let first = victims.first().map_or(0, |s| s.first);
        let last = victims.last().map_or(0, |s| s.last);
        let mut applied = victims.last().map(|s| s.applied.clone()).unwrap_or_default();
        let dir = self.dir.clone();
        let paths: Vec<PathBuf> = victims.iter().map(|s| s.path.clone()).collect();
        let expected_rows: u64 = victims.iter().map(|s| s.rows).sum();
        let file = tokio::task::spawn_blocking(move || {
            applied.extra.retain(|lsn| *lsn > applied.through);
            let mut writer = segment::SegmentWriter::create(&dir, first, last, &applied, expected_rows as usize)?;
            compact_files(&paths, &mut writer)?;
            writer.finish()
        })
        .await
        .map_err(StoreError::internal)??;

        let mut replaced_recent = None;
        let files = self.files.write().await;
        {
            let mut inner = self.lock();
            let replaced = victims.len();
            // Flushes since the run was picked only appended segments after
            // it, so it is still at `start`.
            debug_assert!(inner.segments[start..start + replaced].iter().zip(&victims).all(|(s, v)| s.path == v.path));
            inner.segments.splice(start..start + replaced, [file.clone()]);
            // Objects whose rows were all in the merged segments now have one row.
            let Inner { multi, segments, .. } = &mut *inner;
            multi.retain(|(organization, kind, id)| {
                let probe = bloom::Probe::of(&[organization, kind, id]);
                segments.iter().filter(|s| s.ids.may_contain_probe(probe)).count() > 1
            });
            if inner.recent.as_ref().is_some_and(|(number, _)| victims.iter().any(|v| v.first == *number && v.last == *number)) {
                replaced_recent = inner.recent.take();
            }
        }
        for victim in &victims {
            if let Err(err) = std::fs::remove_file(&victim.path) {
                tracing::warn!(file = %victim.path.display(), error = %err, "could not remove compacted segment");
            }
        }
        drop(files);
        if let Some(recent) = replaced_recent {
            tokio::task::spawn_blocking(move || drop(recent));
        }
        segment::sync_dir(&self.dir)?;
        tracing::info!(segments = victims.len(), rows = file.rows, bytes = file.bytes, "segments compacted");
        Ok(true)
    }

    /// Returns the merged state of one trace.
    pub async fn trace(&self, organization_id: &str, id: &str) -> Result<Option<TraceState>, StoreError> {
        let key = (organization_id.to_string(), id.to_string());
        if let Some(state) = whole_in_memory(&self.lock(), &key, |g| (&g.traces, &g.born.traces)) {
            return Ok(Some(state));
        }
        let _files = self.files.read().await;
        let rows = self.rows(RowFilter::Object { organization_id, kind: KIND_TRACE, id }).await?;
        let mut state = merge_segment_rows::<model::TraceFields>(&rows)?.remove(id);
        self.with_memory(|generation| {
            if let Some(newer) = generation.traces.get(&key) {
                merge_into(&mut state, newer);
            }
        });
        Ok(state)
    }

    /// Returns the merged state of one span.
    pub async fn span(&self, organization_id: &str, id: &str) -> Result<Option<SpanState>, StoreError> {
        let key = (organization_id.to_string(), id.to_string());
        if let Some(state) = whole_in_memory(&self.lock(), &key, |g| (&g.spans, &g.born.spans)) {
            return Ok(Some(state));
        }
        let _files = self.files.read().await;
        let rows = self.rows(RowFilter::Object { organization_id, kind: KIND_SPAN, id }).await?;
        let mut state = merge_segment_rows::<model::SpanFields>(&rows)?.remove(id);
        self.with_memory(|generation| {
            if let Some(newer) = generation.spans.get(&key) {
                merge_into(&mut state, newer);
            }
        });
        Ok(state)
    }

    /// Returns the merged states of the spans of a trace, by span id.
    pub async fn spans_of_trace(
        &self,
        organization_id: &str,
        trace_id: &str,
    ) -> Result<HashMap<String, SpanState>, StoreError> {
        let mut by_trace = self.spans_of_traces(organization_id, &[trace_id]).await?;
        Ok(by_trace.remove(trace_id).unwrap_or_default())
    }

    /// Returns the merged states of the spans of several traces, by trace id
    /// and span id, in one read of each segment that may hold them.
    pub async fn spans_of_traces(
        &self,
        organization_id: &str,
        trace_ids: &[&str],
    ) -> Result<HashMap<String, HashMap<String, SpanState>>, StoreError> {
        if let Some(by_trace) = trace_spans_in_memory(&self.lock(), organization_id, trace_ids) {
            return Ok(by_trace);
        }
        let _files = self.files.read().await;

        // Span ids known to belong to the traces, from memory and segments.
        let mut ids: HashSet<String> = HashSet::new();
        self.with_memory(|generation| {
            for trace_id in trace_ids {
                if let Some(known) = generation.spans_by_trace.get(&(organization_id.to_string(), trace_id.to_string())) {
                    ids.extend(known.iter().cloned());
                }
            }
        });
        let by_trace_rows = self.rows(RowFilter::SpansOfTraces { organization_id, trace_ids: trace_ids.to_vec() }).await?;
        let memory_ids = ids.clone();
        ids.extend(by_trace_rows.iter().map(|row| row.id.clone()));

        // Every row of those spans, in segment order, including partial rows
        // that do not name the trace (a close stored before its open arrived).
        // A span with one segment row, found above, has no other: only spans
        // with rows in several segments, or in memory, are read again by id.
        // On ClickHouse, the read above returned every row of the spans it
        // found, so only the other spans in memory are read by id.
        let reread: HashSet<String> = if self.clickhouse.is_some() {
            let found: HashSet<&str> = by_trace_rows.iter().map(|row| row.id.as_str()).collect();
            memory_ids.iter().filter(|id| !found.contains(id.as_str())).cloned().collect()
        } else {
            let inner = self.lock();
            let in_segments = |id: &String| {
                let probe = bloom::Probe::of(&[organization_id, KIND_SPAN, id]);
                inner.segments.iter().any(|s| s.may_hold_object(probe))
            };
            ids.iter()
                .filter(|id| {
                    inner.multi.contains(&(organization_id.to_string(), KIND_SPAN, id.to_string()))
                        || (memory_ids.contains(*id) && in_segments(id))
                })
                .cloned()
                .collect()
        };
        let mut rows: Vec<SegmentRow> = by_trace_rows.into_iter().filter(|row| !reread.contains(&row.id)).collect();
        if !reread.is_empty() {
            let reread: Vec<&str> = reread.iter().map(String::as_str).collect();
            rows.extend(self.rows(RowFilter::Objects { organization_id, kind: KIND_SPAN, ids: reread }).await?);
        }

        let mut states = merge_segment_rows::<model::SpanFields>(&rows)?;
        self.with_memory(|generation| {
            for id in &ids {
                if let Some(newer) = generation.spans.get(&(organization_id.to_string(), id.clone())) {
                    let mut state = states.remove(id);
                    merge_into(&mut state, newer);
                    if let Some(state) = state {
                        states.insert(id.clone(), state);
                    }
                }
            }
        });
        // A span belongs to the trace its merged state names, which may be
        // none of those asked for: it moved.
        let mut by_trace: HashMap<String, HashMap<String, SpanState>> = HashMap::new();
        for (id, state) in states {
            if let Some(trace_id) = state.resolve().trace_id.filter(|trace| trace_ids.contains(&trace.as_str())) {
                by_trace.entry(trace_id).or_default().insert(id, state);
            }
        }
        Ok(by_trace)
    }

    /// Returns the merged states of several traces, by id, in one read of
    /// each segment that may hold them.
    pub async fn traces(&self, organization_id: &str, ids: &[&str]) -> Result<HashMap<String, TraceState>, StoreError> {
        self.objects_by_id(organization_id, KIND_TRACE, ids, |generation| &generation.traces).await
    }

    /// Returns the merged states of several spans, by id, as
    /// [`EventStore::traces`] does for traces.
    pub async fn spans(&self, organization_id: &str, ids: &[&str]) -> Result<HashMap<String, SpanState>, StoreError> {
        self.objects_by_id(organization_id, KIND_SPAN, ids, |generation| &generation.spans).await
    }

    /// Returns the merged states of several traces as [`EventStore::traces`]
    /// does, from the segment files that `scan` holds, so they are the files
    /// the scan read.
    pub async fn traces_in_scan(&self, _scan: &FastScan, organization_id: &str, ids: &[&str]) -> Result<HashMap<String, TraceState>, StoreError> {
        self.objects_by_id_locked(organization_id, KIND_TRACE, ids, |generation| &generation.traces).await
    }

    async fn objects_by_id<F: Fields + DeserializeOwned>(
        &self,
        organization_id: &str,
        kind: &'static str,
        ids: &[&str],
        pick: impl Fn(&Generation) -> &FastMap<Key, Layered<F>>,
    ) -> Result<HashMap<String, Layered<F>>, StoreError> {
        let _files = self.files.read().await;
        self.objects_by_id_locked(organization_id, kind, ids, pick).await
    }

    /// Reads objects as [`EventStore::objects_by_id`] does, while the caller
    /// keeps the segment files locked for reading.
    async fn objects_by_id_locked<F: Fields + DeserializeOwned>(
        &self,
        organization_id: &str,
        kind: &'static str,
        ids: &[&str],
        pick: impl Fn(&Generation) -> &FastMap<Key, Layered<F>>,
    ) -> Result<HashMap<String, Layered<F>>, StoreError> {
        let rows = self.rows(RowFilter::Objects { organization_id, kind, ids: ids.to_vec() }).await?;
        let mut states = merge_segment_rows::<F>(&rows)?;
        self.with_memory(|generation| {
            for id in ids {
                if let Some(newer) = pick(generation).get(&(organization_id.to_string(), id.to_string())) {
                    let mut state = states.remove(*id);
                    merge_into(&mut state, newer);
                    states.extend(state.map(|state| (id.to_string(), state)));
                }
            }
        });
        Ok(states)
    }

    /// Returns every trace, span and usage record of an organization, merged.
    pub async fn all(&self, organization_id: &str) -> Result<Objects, StoreError> {
        let _files = self.files.read().await;
        let rows = self.rows(RowFilter::Organization(organization_id)).await?;
        let mut trace_rows = Vec::new();
        let mut span_rows = Vec::new();
        let mut usage_rows = Vec::new();
        for row in rows {
            match row.kind {
                KIND_TRACE => trace_rows.push(row),
                KIND_USAGE => usage_rows.push(row),
                _ => span_rows.push(row),
            }
        }
        let mut objects = Objects {
            traces: merge_segment_rows(&trace_rows)?,
            spans: merge_segment_rows(&span_rows)?,
            usage: merge_segment_rows(&usage_rows)?,
        };
        self.with_memory(|generation| {
            merge_memory(&mut objects.traces, &generation.traces, organization_id);
            merge_memory(&mut objects.spans, &generation.spans, organization_id);
            merge_memory(&mut objects.usage, &generation.usage, organization_id);
        });
        Ok(objects)
    }

    /// Prepares a read of every object of an organization in which most rows
    /// need no merge. It lists the segment files to read through their typed
    /// columns, and merges every object that is in memory or has rows in
    /// several segments; the reader skips those objects' rows in the files.
    /// On ClickHouse, the scan names the tier instead, and every object in
    /// memory is merged.
    ///
    /// NOTE: on ClickHouse this reads the stored rows of every object in
    /// memory by id, up to the buffer's tens of thousands under heavy
    /// ingest, for each query. Noting which objects were new when buffered
    /// would spare most of those reads.
    ///
    /// The scan holds the segment files until it is dropped, so they are
    /// neither replaced by compaction nor superseded by a flush meanwhile.
    pub async fn fast_scan(&self, organization_id: &str) -> Result<Option<FastScan>, StoreError> {
        let files = self.files.clone().read_owned().await;
        if let Some(tier) = &self.clickhouse {
            let mut memory = Objects::default();
            self.with_memory(|generation| {
                merge_memory(&mut memory.traces, &generation.traces, organization_id);
                merge_memory(&mut memory.spans, &generation.spans, organization_id);
                merge_memory(&mut memory.usage, &generation.usage, organization_id);
            });
            let mut slow = Objects::default();
            if !memory.traces.is_empty() {
                let rows = tier.rows(&RowFilter::Objects { organization_id, kind: KIND_TRACE, ids: memory.traces.keys().map(String::as_str).collect() }).await?;
                slow.traces = merge_segment_rows(&rows)?;
            }
            if !memory.spans.is_empty() {
                let rows = tier.rows(&RowFilter::Objects { organization_id, kind: KIND_SPAN, ids: memory.spans.keys().map(String::as_str).collect() }).await?;
                slow.spans = merge_segment_rows(&rows)?;
            }
            if !memory.usage.is_empty() {
                let rows = tier.rows(&RowFilter::Objects { organization_id, kind: KIND_USAGE, ids: memory.usage.keys().map(String::as_str).collect() }).await?;
                slow.usage = merge_segment_rows(&rows)?;
            }
            merge_newer_states(&mut slow.traces, memory.traces);
            merge_newer_states(&mut slow.spans, memory.spans);
            merge_newer_states(&mut slow.usage, memory.usage);
            return Ok(Some(FastScan {
                paths: Vec::new(),
                trace_blooms: Vec::new(),
                meta_high: Vec::new(),
                slow,
                clickhouse: Some(tier.clone()),
                merged: tier.has_merged_objects(organization_id).await?,
                _files: files,
            }));
        }
        let (paths, blooms, trace_blooms, meta_high, mut multi) = {
            let inner = self.lock();
            let recent = inner.recent.as_ref().map(|(number, _)| *number);
            let live: Vec<&SegmentFile> = inner.segments.iter().filter(|s| !(Some(s.first) == recent && s.last == s.first)).collect();
            let paths: Vec<String> = live.iter().map(|s| s.path.to_string_lossy().to_string()).collect();
            let blooms: Vec<Arc<bloom::Bloom>> = live.iter().map(|s| s.ids.clone()).collect();
            let trace_blooms: Vec<Arc<bloom::Bloom>> = live.iter().map(|s| s.traces.clone()).collect();
            let meta_high: Vec<_> = live.iter().map(|s| s.meta_high.clone()).collect();
            let multi: Vec<(&'static str, String)> =
                inner.multi.iter().filter(|(org, _, _)| org == organization_id).map(|(_, kind, id)| (*kind, id.clone())).collect();
            (paths, blooms, trace_blooms, meta_high, multi)
        };

        // Memory first: its states are newer than any segment row.
        let mut memory = Objects::default();
        self.with_memory(|generation| {
            merge_memory(&mut memory.traces, &generation.traces, organization_id);
            merge_memory(&mut memory.spans, &generation.spans, organization_id);
            merge_memory(&mut memory.usage, &generation.usage, organization_id);
        });
        let in_segments = |kind: &'static str, id: &str| {
            let probe = bloom::Probe::of(&[organization_id, kind, id]);
            blooms.iter().any(|bloom| bloom.may_contain_probe(probe))
        };
        multi.extend(memory.traces.keys().filter(|id| in_segments(KIND_TRACE, id)).map(|id| (KIND_TRACE, id.clone())));
        multi.extend(memory.spans.keys().filter(|id| in_segments(KIND_SPAN, id)).map(|id| (KIND_SPAN, id.clone())));
        multi.extend(memory.usage.keys().filter(|id| in_segments(KIND_USAGE, id)).map(|id| (KIND_USAGE, id.clone())));
        multi.sort_unstable();
        multi.dedup();

        let ids_of = |wanted: &'static str| -> Vec<&str> {
            multi.iter().filter(|(kind, _)| *kind == wanted).map(|(_, id)| id.as_str()).collect()
        };
        let mut slow = Objects::default();
        for kind in [KIND_TRACE, KIND_SPAN, KIND_USAGE] {
            let ids = ids_of(kind);
            if ids.is_empty() {
                continue;
            }
            let rows = self.rows(RowFilter::Objects { organization_id, kind, ids }).await?;
            match kind {
                KIND_TRACE => slow.traces = merge_segment_rows(&rows)?,
                KIND_SPAN => slow.spans = merge_segment_rows(&rows)?,
                _ => slow.usage = merge_segment_rows(&rows)?,
            }
        }
        merge_newer_states(&mut slow.traces, memory.traces);
        merge_newer_states(&mut slow.spans, memory.spans);
        merge_newer_states(&mut slow.usage, memory.usage);
        Ok(Some(FastScan { paths, trace_blooms, meta_high, slow, clickhouse: None, merged: false, _files: files }))
    }

    /// Returns the merged state of one usage record posted by a client.
    pub async fn usage(&self, organization_id: &str, id: &str) -> Result<Option<UsageState>, StoreError> {
        let key = (organization_id.to_string(), id.to_string());
        if let Some(state) = whole_in_memory(&self.lock(), &key, |g| (&g.usage, &g.born.usage)) {
            return Ok(Some(state));
        }
        let _files = self.files.read().await;
        let rows = self.rows(RowFilter::Object { organization_id, kind: KIND_USAGE, id }).await?;
        let mut state = merge_segment_rows::<model::UsageFields>(&rows)?.remove(id);
        self.with_memory(|generation| {
            if let Some(newer) = generation.usage.get(&key) {
                merge_into(&mut state, newer);
            }
        });
        Ok(state)
    }

    /// Merges one object's states in memory alone: the generation being
    /// flushed, then the buffer.
    fn buffered<F: Fields>(&self, pick: impl Fn(&Generation) -> Option<&Layered<F>>) -> Option<Layered<F>> {
        let mut state = None;
        self.with_memory(|generation| {
            if let Some(newer) = pick(generation) {
                merge_into(&mut state, newer);
            }
        });
        state
    }

    /// Returns the merged state of one trace, or, when the flushed tier is
    /// unreachable, what this instance has of it in memory. Write
    /// responses use this, so a write that is durable is acknowledged even
    /// while ClickHouse is down.
    pub async fn trace_or_buffered(&self, organization_id: &str, id: &str) -> Result<Option<TraceState>, StoreError> {
        match self.trace(organization_id, id).await {
            Err(StoreError::Unavailable(_)) => {
                let key = (organization_id.to_string(), id.to_string());
                Ok(self.buffered(|generation| generation.traces.get(&key)))
            }
            other => other,
        }
    }

    /// Like [`EventStore::trace_or_buffered`], for one span.
    pub async fn span_or_buffered(&self, organization_id: &str, id: &str) -> Result<Option<SpanState>, StoreError> {
        match self.span(organization_id, id).await {
            Err(StoreError::Unavailable(_)) => {
                let key = (organization_id.to_string(), id.to_string());
                Ok(self.buffered(|generation| generation.spans.get(&key)))
            }
            other => other,
        }
    }

    /// Like [`EventStore::trace_or_buffered`], for one posted usage record.
    pub async fn usage_or_buffered(&self, organization_id: &str, id: &str) -> Result<Option<UsageState>, StoreError> {
        match self.usage(organization_id, id).await {
            Err(StoreError::Unavailable(_)) => {
                let key = (organization_id.to_string(), id.to_string());
                Ok(self.buffered(|generation| generation.usage.get(&key)))
            }
            other => other,
        }
    }

    /// Like [`EventStore::trace_or_buffered`], for the spans of one trace.
    pub async fn spans_of_trace_or_buffered(
        &self,
        organization_id: &str,
        trace_id: &str,
    ) -> Result<HashMap<String, SpanState>, StoreError> {
        match self.spans_of_trace(organization_id, trace_id).await {
            Err(StoreError::Unavailable(_)) => {
                let trace_key = (organization_id.to_string(), trace_id.to_string());
                let mut ids: HashSet<String> = HashSet::new();
                self.with_memory(|generation| {
                    if let Some(known) = generation.spans_by_trace.get(&trace_key) {
                        ids.extend(known.iter().cloned());
                    }
                });
                let mut states = HashMap::new();
                for id in ids {
                    let key = (organization_id.to_string(), id.clone());
                    if let Some(state) = self.buffered(|generation| generation.spans.get(&key)) {
                        if state.resolve().trace_id.as_deref() == Some(trace_id) {
                            states.insert(id, state);
                        }
                    }
                }
                Ok(states)
            }
            other => other,
        }
    }

    /// Runs `visit` on the recently flushed generation, the generation being
    /// flushed, then the live buffer: the write order.
    fn with_memory(&self, mut visit: impl FnMut(&Generation)) {
        let inner = self.lock();
        if let Some((_, recent)) = &inner.recent {
            visit(recent);
        }
        if let Some(flushing) = &inner.flushing {
            visit(flushing);
        }
        visit(&inner.buffer);
    }

    /// Scans each segment for the rows that `filter` selects there, in
    /// segment order, skipping segments for which it returns `None`. The
    /// caller keeps `files` locked for reading.
    async fn scan_where(&self, filter: impl Fn(&SegmentFile) -> Option<Expr>) -> Result<Vec<SegmentRow>, StoreError> {
        let scans: Vec<(String, Expr)> = {
            let inner = self.lock();
            // The recent generation's segment is read from memory by `with_memory`.
            let recent = inner.recent.as_ref().map(|(number, _)| *number);
            inner
                .segments
                .iter()
                .filter(|s| !(Some(s.first) == recent && s.last == s.first))
                .filter_map(|s| filter(s).map(|expr| (s.path.to_string_lossy().to_string(), expr)))
                .collect()
        };
        if scans.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        // Every segment has this schema (older ones are rewritten at start-up),
        // so no scan reads a footer to infer it.
        let schema = segment::schema();
        // Each file is read on its own task, so the files decode in parallel,
        // and their rows are kept in segment order, which the merge needs.
        let mut reads = Vec::with_capacity(scans.len());
        for (path, filter) in scans {
            let frame = self
                .context
                .read_parquet(path.as_str(), ParquetReadOptions::default().schema(&schema))
                .await
                .map_err(datafusion_error)?
                .filter(filter)
                .map_err(datafusion_error)?
                // The typed columns are derived from `state`: reading them would
                // decompress their pages for nothing.
                .select_columns(&segment::STORED_COLUMNS)
                .map_err(datafusion_error)?;
            reads.push(tokio::spawn(async move {
                let batches: Vec<RecordBatch> = frame.collect().await.map_err(datafusion_error)?;
                let mut rows = Vec::new();
                for batch in &batches {
                    rows.extend(segment::rows_of_batch(batch)?);
                }
                Ok::<_, StoreError>(rows)
            }));
        }
        for read in reads {
            rows.extend(read.await.map_err(StoreError::internal)??);
        }
        Ok(rows)
    }
}

impl EventStore {
    /// Reads the flushed rows that `filter` selects, in flush order: from
    /// ClickHouse when the store uses it, else from the segments whose Bloom
    /// filters may contain them. The caller keeps `files` locked for reading.
    async fn rows(&self, filter: RowFilter<'_>) -> Result<Vec<SegmentRow>, StoreError> {
        if let Some(tier) = &self.clickhouse {
            return tier.rows(&filter).await;
        }
        match filter {
            RowFilter::Organization(organization_id) => {
                self.scan_where(|_| Some(col("organization_id").eq(lit(organization_id)))).await
            }
            RowFilter::Object { organization_id, kind, id } => {
                let probe = bloom::Probe::of(&[organization_id, kind, id]);
                self.scan_where(|s| {
                    s.may_hold_object(probe)
                        .then(|| col("organization_id").eq(lit(organization_id)).and(col("kind").eq(lit(kind))).and(col("id").eq(lit(id))))
                })
                .await
            }
            // Each segment is asked only for the ids its Bloom filter may
            // hold: short lists let page statistics prune the scan, which
            // DataFusion does for lists of up to 20 values.
            RowFilter::Objects { organization_id, kind, ids } => {
                let probes: Vec<bloom::Probe> = ids.iter().map(|id| bloom::Probe::of(&[organization_id, kind, id])).collect();
                self.scan_where(|s| {
                    let list: Vec<Expr> =
                        ids.iter().zip(&probes).filter(|(_, probe)| s.may_hold_object(**probe)).map(|(id, _)| lit(*id)).collect();
                    (!list.is_empty()).then(|| {
                        col("organization_id").eq(lit(organization_id)).and(col("kind").eq(lit(kind))).and(col("id").in_list(list, false))
                    })
                })
                .await
            }
            RowFilter::SpansOfTraces { organization_id, trace_ids } => {
                let probes: Vec<bloom::Probe> = trace_ids.iter().map(|id| bloom::Probe::of(&[organization_id, id])).collect();
                self.scan_where(|s| {
                    let list: Vec<Expr> =
                        trace_ids.iter().zip(&probes).filter(|(_, probe)| s.may_hold_trace(**probe)).map(|(id, _)| lit(*id)).collect();
                    (!list.is_empty()).then(|| {
                        col("organization_id").eq(lit(organization_id)).and(col("kind").eq(lit(KIND_SPAN))).and(col("trace_id").in_list(list, false))
                    })
                })
                .await
            }
        }
    }
}

/// Builds the runtime of the store's long-lived session, which serves point reads.
///
/// DataFusion keeps Parquet footers and file statistics for every file it
/// read, up to 50 MiB and 20 MiB by default. Segments are few and their
/// footers small, except for the page indexes of large ones, so smaller
/// caches keep the footers that point reads need without letting the
/// server's memory grow by 70 MiB as the data does.
fn point_read_runtime() -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>, StoreError> {
    datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_metadata_cache_limit(16 * 1024 * 1024)
        .with_file_statistics_cache_limit(4 * 1024 * 1024)
        .build_arc()
        .map_err(datafusion_error)
}

fn datafusion_error(err: datafusion::error::DataFusionError) -> StoreError {
    StoreError::Internal(format!("segment scan failed: {err}"))
}

fn merge_into<F: Fields>(state: &mut Option<Layered<F>>, newer: &Layered<F>) {
    match state {
        Some(existing) => existing.merge_newer(newer),
        None => *state = Some(newer.clone()),
    }
}

fn decode_state<T: DeserializeOwned>(row: &SegmentRow) -> Result<T, StoreError> {
    serde_json::from_str(&row.state)
        .map_err(|err| StoreError::Internal(format!("corrupt state of {} {}: {err}", row.kind, row.id)))
}

/// Merges segment rows (already in write order) by object id.
fn merge_segment_rows<F>(rows: &[SegmentRow]) -> Result<HashMap<String, Layered<F>>, StoreError>
where
    F: Fields + DeserializeOwned,
{
    let mut states: HashMap<String, Layered<F>> = HashMap::new();
    for row in rows {
        let state: Layered<F> = decode_state(row)?;
        match states.get_mut(&row.id) {
            Some(existing) => existing.merge_newer(&state),
            None => {
                states.insert(row.id.clone(), state);
            }
        }
    }
    Ok(states)
}

fn merge_rows(existing: &mut SegmentRow, newer: SegmentRow) -> Result<(), StoreError> {
    let state = if existing.kind == KIND_TRACE {
        let mut merged: TraceState = decode_state(existing)?;
        merged.merge_newer(&decode_state(&newer)?);
        existing.trace_id = Some(existing.id.clone());
        serde_json::to_string(&merged)
    } else if existing.kind == KIND_USAGE {
        let mut merged: UsageState = decode_state(existing)?;
        merged.merge_newer(&decode_state(&newer)?);
        existing.trace_id = merged.resolve().trace_id;
        serde_json::to_string(&merged)
    } else {
        let mut merged: SpanState = decode_state(existing)?;
        merged.merge_newer(&decode_state(&newer)?);
        existing.trace_id = merged.resolve().trace_id;
        serde_json::to_string(&merged)
    };
    existing.state = state.map_err(StoreError::internal)?;
    existing.seq = existing.seq.max(newer.seq);
    Ok(())
}

/// Records in the buffer which keys of `write`, about to be applied, no
/// segment and no older generation contains (see [`Born`]).
fn note_born(inner: &mut Inner, organization_id: &str, write: &Write) {
    let Inner { buffer, flushing, segments, .. } = inner;
    // The recent generation is skipped because its segment is already in
    // `segments`, whose Bloom filters contain all of its keys.
    let older = [flushing.as_deref()];
    let unseen_object = |kind: &'static str, id: &str, seen: &dyn Fn(&Generation) -> bool| {
        !seen(buffer) && !older.iter().flatten().any(|g| seen(g)) && {
            let probe = bloom::Probe::of(&[organization_id, kind, id]);
            !segments.iter().any(|s| s.may_hold_object(probe))
        }
    };
    let (kind, id, trace_id) = match write {
        Write::Trace { id, .. } => (KIND_TRACE, id, Some(id)),
        Write::Span { id, fields, .. } => (KIND_SPAN, id, fields.trace_id.as_ref()),
        Write::Usage { id, .. } => (KIND_USAGE, id, None),
    };
    let key = (organization_id.to_string(), id.clone());
    let unseen = match kind {
        KIND_TRACE => unseen_object(kind, id, &|g| g.traces.contains_key(&key)),
        KIND_SPAN => unseen_object(kind, id, &|g| g.spans.contains_key(&key)),
        _ => unseen_object(kind, id, &|g| g.usage.contains_key(&key)),
    };
    let born_trace_spans = trace_id.map(|trace_id| (organization_id.to_string(), trace_id.clone())).filter(|trace| {
        !buffer.mentions_trace(trace) && !older.iter().flatten().any(|g| g.mentions_trace(trace)) && {
            let probe = bloom::Probe::of(&[organization_id, &trace.1]);
            !segments.iter().any(|s| s.may_hold_trace(probe))
        }
    });
    if unseen {
        match kind {
            KIND_TRACE => buffer.born.traces.insert(key),
            KIND_SPAN => buffer.born.spans.insert(key),
            _ => buffer.born.usage.insert(key),
        };
    }
    buffer.born.trace_spans.extend(born_trace_spans);
}

/// Returns the generations in memory, oldest first: the recent one, the
/// one being flushed, then the buffer.
fn memory_generations(inner: &Inner) -> impl Iterator<Item = &Generation> {
    inner.recent.iter().map(|(_, g)| &**g).chain(inner.flushing.as_deref()).chain(std::iter::once(&inner.buffer))
}

/// Merges the state of one object from memory alone when its rows are all
/// there: `Some(state)`. `None` when segments may hold rows of it.
fn whole_in_memory<F: Fields>(
    inner: &Inner,
    key: &Key,
    pick: impl Fn(&Generation) -> (&FastMap<Key, Layered<F>>, &FastSet<Key>),
) -> Option<Layered<F>> {
    let mut state: Option<Layered<F>> = None;
    for generation in memory_generations(inner) {
        let (states, born) = pick(generation);
        if let Some(newer) = states.get(key) {
            // The oldest generation holding the object decides.
            if state.is_none() && !born.contains(key) {
                return None;
            }
            merge_into(&mut state, newer);
        }
    }
    state
}

/// Merges the spans of traces from memory alone when all their rows are
/// there, like [`whole_in_memory`]: by trace id and span id.
fn trace_spans_in_memory(
    inner: &Inner,
    organization_id: &str,
    trace_ids: &[&str],
) -> Option<HashMap<String, HashMap<String, SpanState>>> {
    let mut by_trace: HashMap<String, HashMap<String, SpanState>> = HashMap::new();
    for trace_id in trace_ids {
        let trace = (organization_id.to_string(), trace_id.to_string());
        let oldest = memory_generations(inner).find(|g| g.mentions_trace(&trace))?;
        if !oldest.born.trace_spans.contains(&trace) {
            return None;
        }
        let ids: HashSet<&String> = memory_generations(inner).filter_map(|g| g.spans_by_trace.get(&trace)).flatten().collect();
        for id in ids {
            let key = (organization_id.to_string(), id.clone());
            let state = whole_in_memory(inner, &key, |g| (&g.spans, &g.born.spans))?;
            // A span belongs to the trace its merged state names: it may have moved.
            if state.update.trace_id.as_deref().or(state.create.trace_id.as_deref()) == Some(*trace_id) {
                by_trace.entry(trace_id.to_string()).or_default().insert(id.clone(), state);
            }
        }
    }
    Some(by_trace)
}

/// Merges a generation that failed to flush back into the buffer, under the
/// newer writes, so the next flush retries it.
fn restore_generation(inner: &mut Inner, generation: Arc<Generation>) {
    let newer = std::mem::take(&mut inner.buffer);
    let mut restored = Arc::try_unwrap(generation).unwrap_or_else(|shared| clone_generation(&shared));
    merge_generation(&mut restored, newer);
    inner.buffer = restored;
    inner.flushing = None;
}

/// A buffered object's state, borrowed, for writing a generation.
enum Buffered<'a> {
    Trace(&'a TraceState),
    Span(&'a SpanState),
    Usage(&'a UsageState),
}

/// A buffered object with the key columns of its segment row.
struct BufferedObject<'a> {
    organization_id: &'a str,
    kind: &'static str,
    id: &'a str,
    trace_id: Option<&'a str>,
    state: Buffered<'a>,
}

impl<'a> BufferedObject<'a> {
    fn seq(&self) -> u64 {
        match self.state {
            Buffered::Trace(state) => state.seq,
            Buffered::Span(state) => state.seq,
            Buffered::Usage(state) => state.seq,
        }
    }

    /// Appends the object's state as JSON. sonic-rs escapes strings with
    /// vector instructions, and escaping with serde_json took a tenth of the
    /// CPU under OTLP load.
    fn write_state(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        match self.state {
            Buffered::Trace(state) => sonic_rs::to_writer(out, state),
            Buffered::Span(state) => sonic_rs::to_writer(out, state),
            Buffered::Usage(state) => sonic_rs::to_writer(out, state),
        }
        .map_err(StoreError::internal)
    }

    fn typed(&self) -> Typed {
        match self.state {
            Buffered::Trace(state) => Typed::of_trace(state),
            Buffered::Span(state) => Typed::of_span(state),
            Buffered::Usage(state) => Typed::of_usage(state),
        }
    }

    /// Reports whether the object's row is a usage record (see [`Typed`]).
    fn has_usage(&self) -> bool {
        match self.state {
            Buffered::Trace(_) => false,
            Buffered::Span(state) => Typed::span_has_usage(state),
            Buffered::Usage(_) => true,
        }
    }

    fn keys(&self) -> segment::RowKeys<'a> {
        segment::RowKeys {
            organization_id: self.organization_id,
            kind: self.kind,
            id: self.id,
            trace_id: self.trace_id,
            seq: self.seq(),
        }
    }

    /// Returns the row of this object for ClickHouse, its state serialized
    /// as JSON. ClickHouse keeps typed columns in another table, so none are
    /// computed here.
    fn row(&self) -> Result<SegmentRow, StoreError> {
        let mut state = Vec::new();
        self.write_state(&mut state)?;
        Ok(SegmentRow {
            organization_id: self.organization_id.to_string(),
            kind: self.kind,
            id: self.id.to_string(),
            trace_id: self.trace_id.map(str::to_string),
            seq: self.seq(),
            // sonic-rs writes UTF-8 only.
            state: String::from_utf8(state).map_err(StoreError::internal)?,
            typed: None,
        })
    }
}

/// Returns the keys of a generation's objects that the older segments may
/// already hold.
fn keys_in_older_segments(generation: &Generation, older: &[Arc<bloom::Bloom>]) -> Vec<ObjectKey> {
    if older.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut check = |organization: &str, kind: &'static str, id: &str| {
        let probe = bloom::Probe::of(&[organization, kind, id]);
        if older.iter().any(|bloom| bloom.may_contain_probe(probe)) {
            found.push((organization.to_string(), kind, id.to_string()));
        }
    };
    for (organization, id) in generation.traces.keys() {
        check(organization, KIND_TRACE, id);
    }
    for (organization, id) in generation.spans.keys() {
        check(organization, KIND_SPAN, id);
    }
    for (organization, id) in generation.usage.keys() {
        check(organization, KIND_USAGE, id);
    }
    found
}

/// Lists every object of a generation, unordered.
fn generation_objects(generation: &Generation) -> Vec<BufferedObject<'_>> {
    let mut objects = Vec::with_capacity(generation.traces.len() + generation.spans.len() + generation.usage.len());
    for ((org, id), state) in &generation.traces {
        objects.push(BufferedObject { organization_id: org, kind: KIND_TRACE, id, trace_id: Some(id), state: Buffered::Trace(state) });
    }
    for ((org, id), state) in &generation.spans {
        let trace_id = state.update.trace_id.as_deref().or(state.create.trace_id.as_deref());
        objects.push(BufferedObject { organization_id: org, kind: KIND_SPAN, id, trace_id, state: Buffered::Span(state) });
    }
    for ((org, id), state) in &generation.usage {
        let trace_id = state.update.trace_id.as_deref().or(state.create.trace_id.as_deref());
        objects.push(BufferedObject { organization_id: org, kind: KIND_USAGE, id, trace_id, state: Buffered::Usage(state) });
    }
    objects
}

/// Maximum bytes of JSON states in one Arrow batch of a flush, far below
/// the 2 GiB that the batch's 32-bit offsets can address.
const WRITE_CHUNK_STATE_BYTES: usize = 64 << 20;

/// Writes a generation to segment `number`, serializing the states of one
/// chunk of rows at a time, so the flush never keeps every state as JSON.
/// The states of a chunk go straight into the one buffer of its Arrow
/// column, sized from the chunk before, and the other columns borrow from
/// the buffered objects, so no state is copied or grown twice.
fn write_generation(dir: &Path, number: u64, generation: &Generation, applied: &Applied) -> Result<SegmentFile, StoreError> {
    // In the order of `segment::sort_key`.
    let mut keyed: Vec<(bool, BufferedObject)> = generation_objects(generation).into_iter().map(|o| (o.has_usage(), o)).collect();
    keyed.sort_unstable_by(|(a_usage, a), (b_usage, b)| {
        (a.organization_id, a.kind, a_usage, a.trace_id, a.id).cmp(&(b.organization_id, b.kind, b_usage, b.trace_id, b.id))
    });
    let objects: Vec<BufferedObject> = keyed.into_iter().map(|(_, object)| object).collect();

    let mut writer = segment::SegmentWriter::create(dir, number, number, applied, objects.len())?;
    let mut capacity = 0;
    let mut rest = &objects[..];
    while !rest.is_empty() {
        let mut states = Vec::with_capacity(capacity);
        let mut offsets = Vec::with_capacity(rest.len().min(segment::WRITE_CHUNK_ROWS) + 1);
        offsets.push(0i32);
        let mut typed = Vec::with_capacity(offsets.capacity());
        for object in rest.iter().take(segment::WRITE_CHUNK_ROWS) {
            object.write_state(&mut states)?;
            // The chunk ends at the first state past the bound, so only a
            // single state near 2 GiB could overflow, and try_from rejects it.
            offsets.push(i32::try_from(states.len()).map_err(StoreError::internal)?);
            typed.push(object.typed());
            if states.len() >= WRITE_CHUNK_STATE_BYTES {
                break;
            }
        }
        let (chunk, after) = rest.split_at(typed.len());
        rest = after;
        capacity = states.len() + states.len() / 8;
        let keys: Vec<segment::RowKeys> = chunk.iter().map(BufferedObject::keys).collect();
        let states = StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(states),
            None,
        )
        .map_err(StoreError::internal)?;
        writer.write_parts(&keys, states, &typed.iter().collect::<Vec<_>>())?;
    }
    writer.finish()
}

/// Returns the ClickHouse rows of every object of a generation, unordered,
/// and the typed columns of each object as if its row were its only one.
fn generation_rows(generation: &Generation) -> Result<(Vec<SegmentRow>, Vec<TypedObject>), StoreError> {
    let objects = generation_objects(generation);
    let mut rows = Vec::with_capacity(objects.len());
    let mut typed = Vec::with_capacity(objects.len());
    for object in &objects {
        rows.push(object.row()?);
        typed.push(TypedObject {
            organization_id: object.organization_id.to_string(),
            kind: object.kind,
            id: object.id.to_string(),
            trace_id: object.trace_id.map(str::to_string),
            merged_rows: 1,
            typed: object.typed(),
        });
    }
    Ok((rows, typed))
}

/// Writes the typed columns of the objects a flush just inserted. An object
/// whose one row is that flush's keeps the columns computed from the buffer;
/// the others are resolved from all their rows. A `retry` writes only what
/// `objects` does not have yet, since an attempt that failed may have
/// written some of it.
///
/// NOTE: counting the rows right after the insert finds those of another
/// instance's flush of the same object whenever that insert came first, so
/// of two concurrent flushes the later one writes the merged columns. That
/// holds on one ClickHouse server; replicas that lag would need the count
/// to read from the replica that took the insert.
async fn refresh_objects(tier: &ClickHouseTier, flushed: &[TypedObject], retry: bool) -> Result<(), StoreError> {
    let mut groups: HashMap<(&str, &'static str), Vec<&TypedObject>> = HashMap::new();
    for object in flushed {
        groups.entry((object.organization_id.as_str(), object.kind)).or_default().push(object);
    }
    let mut single: Vec<&TypedObject> = Vec::new();
    let mut merged: Vec<TypedObject> = Vec::new();
    for ((organization_id, kind), objects) in groups {
        let ids: Vec<&str> = objects.iter().map(|object| object.id.as_str()).collect();
        let counts = tier.row_counts(organization_id, kind, &ids).await?;
        let stored = if retry { Some(tier.merged_rows(organization_id, kind, Some(&ids)).await?) } else { None };
        let keep = |object: &TypedObject| stored.as_ref().is_none_or(|stored| is_newer_than_stored(object, stored));

        let mut several = Vec::new();
        for object in objects {
            if counts.get(&object.id) != Some(&1) {
                several.push(object.id.as_str());
            } else if keep(object) {
                single.push(object);
            }
        }
        if !several.is_empty() {
            let rows = tier.rows(&RowFilter::Objects { organization_id, kind, ids: several }).await?;
            merged.extend(typed_objects(organization_id, kind, &rows)?.into_iter().filter(|object| keep(object)));
        }
    }
    tier.insert_objects(single.into_iter().chain(merged.iter())).await
}

/// Keeps the objects merged from more rows than `objects` already has for
/// them. Readers take an object's single row with `merged_rows = 1` as it
/// is, so that row must never be written twice.
fn newer_than_stored(objects: Vec<TypedObject>, stored: &HashMap<String, u64>) -> Vec<TypedObject> {
    objects.into_iter().filter(|object| is_newer_than_stored(object, stored)).collect()
}

fn is_newer_than_stored(object: &TypedObject, stored: &HashMap<String, u64>) -> bool {
    stored.get(&object.id).is_none_or(|rows| *rows < object.merged_rows)
}

/// Resolves the typed columns of the objects of one kind from all their
/// rows, given in flush order.
fn typed_objects(organization_id: &str, kind: &'static str, rows: &[SegmentRow]) -> Result<Vec<TypedObject>, StoreError> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        *counts.entry(row.id.as_str()).or_default() += 1;
    }
    let object = |id: String, trace_id: Option<String>, typed: Typed| TypedObject {
        organization_id: organization_id.to_string(),
        kind,
        merged_rows: counts.get(id.as_str()).copied().unwrap_or(1),
        id,
        trace_id,
        typed,
    };
    Ok(match kind {
        KIND_TRACE => merge_segment_rows::<model::TraceFields>(rows)?
            .into_iter()
            .map(|(id, state)| object(id.clone(), Some(id), Typed::of_trace(&state)))
            .collect(),
        KIND_SPAN => merge_segment_rows::<model::SpanFields>(rows)?
            .into_iter()
            .map(|(id, state)| object(id, state.resolve().trace_id, Typed::of_span(&state)))
            .collect(),
        _ => merge_segment_rows::<model::UsageFields>(rows)?
            .into_iter()
            .map(|(id, state)| object(id, state.resolve().trace_id, Typed::of_usage(&state)))
            .collect(),
    })
}

fn clone_generation(shared: &Generation) -> Generation {
    Generation {
        traces: shared.traces.clone(),
        spans: shared.spans.clone(),
        usage: shared.usage.clone(),
        spans_by_trace: shared.spans_by_trace.clone(),
        born: shared.born.clone(),
        bytes: shared.bytes,
        writes: shared.writes,
    }
}

/// Merges `newer` into `older`, object by object.
fn merge_generation(older: &mut Generation, newer: Generation) {
    for (key, state) in newer.traces {
        let mut slot = older.traces.remove(&key);
        merge_into(&mut slot, &state);
        older.traces.extend(slot.map(|s| (key, s)));
    }
    for (key, state) in newer.spans {
        let mut slot = older.spans.remove(&key);
        merge_into(&mut slot, &state);
        older.spans.extend(slot.map(|s| (key, s)));
    }
    for (key, state) in newer.usage {
        let mut slot = older.usage.remove(&key);
        merge_into(&mut slot, &state);
        older.usage.extend(slot.map(|s| (key, s)));
    }
    for (key, ids) in newer.spans_by_trace {
        older.spans_by_trace.entry(key).or_default().extend(ids);
    }
    // A key born in the newer generation was in no older one.
    older.born.extend(newer.born);
    older.bytes += newer.bytes;
    older.writes += newer.writes;
}

#[cfg(test)]
mod tests {
    use super::compaction_run;

    #[test]
    fn compaction_run_picks_similar_adjacent_segments() {
        assert_eq!(compaction_run(&[], 8), None);
        assert_eq!(compaction_run(&[10_000; 7], 8), None, "too few segments");
        assert_eq!(compaction_run(&[10_000; 8], 8), Some(0..8));
        assert_eq!(compaction_run(&[0; 8], 8), Some(0..8), "empty segments");

        // A large old segment is not rewritten with small new ones.
        let mut rows = vec![1_000_000];
        rows.extend([10_000; 10]);
        assert_eq!(compaction_run(&rows, 8), Some(1..11));

        // Sizes on both sides of a power of ten still merge.
        let alternating: Vec<u64> = (0..8).map(|n| if n % 2 == 0 { 9_000 } else { 11_000 }).collect();
        assert_eq!(compaction_run(&alternating, 8), Some(0..8));
    }

    #[test]
    fn compaction_run_reaches_runs_left_behind() {
        // Nine small segments sit between larger ones, and the newest run is
        // too short: the older run is merged.
        let mut rows = vec![80_000; 3];
        rows.extend([10_000; 9]);
        rows.extend([80_000; 2]);
        rows.extend([10_000; 3]);
        assert_eq!(compaction_run(&rows, 8), Some(3..12));
    }

    #[test]
    fn compaction_run_takes_small_segments_between_peers() {
        // Small flushes left between merged segments of a million rows do
        // not keep those from merging, and do not count as their peers.
        let rows = [1_000_000, 40_000, 900_000, 30_000, 30_000, 1_100_000, 1_000_000];
        assert_eq!(compaction_run(&rows, 4), Some(0..7));
        assert_eq!(compaction_run(&rows, 5), None);
        // A small segment is never a reason to rewrite a large one.
        assert_eq!(compaction_run(&[600_000, 50_000, 40_000], 2), Some(1..3));
        assert_eq!(compaction_run(&[600_000, 50_000], 2), None);
    }

    #[test]
    fn compaction_run_respects_row_limit() {
        // Eight segments of a million rows exceed the limit of five million.
        assert_eq!(compaction_run(&[1_000_000; 8], 8), None);
        assert_eq!(compaction_run(&[600_000; 8], 8), Some(0..8));
    }
}
