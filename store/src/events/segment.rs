//! Parquet segments: the flushed, immutable part of the embedded event store.
//!
//! A segment file `segment-<first>-<last>.parquet` (zero-padded flush numbers)
//! holds the partial states of the objects written during flushes `first`
//! through `last`. A flush writes `first == last`; compaction merges a run of
//! segments into one that covers their whole range, and a segment whose range
//! lies inside another's is obsolete (left over by a crash during compaction)
//! and is deleted at start-up.
//!
//! Columns: `organization_id`, `kind` (`trace`, `span` or `usage`), `id`,
//! `trace_id` (the span's or usage record's trace, or the trace's own id), `seq` (newest log sequence
//! number merged in) and `state` (the [`Layered`](super::model::Layered)
//! partial state as JSON), then the typed columns of [`Typed`], and last
//! `meta_low`, the entries of `meta` whose key has few values in the segment
//! (see [`MetaSplit`]). The footer lists the other keys. A flush
//! writes its rows sorted by [`sort_key`] (organization, kind, usage, trace
//! and id), so page statistics prune the reads of one kind, of the usage
//! records, or of one trace. Compaction writes the sorted runs of its inputs
//! one after another, so a trace's rows lie in at most two ranges of pages
//! per input (one with the usage records, one without).
//!
//! The pages of the columns that point reads select by (`id`, `trace_id`)
//! and read (`state`) are small, so a read of a few objects decompresses
//! little beyond their rows.
//!
//! The footer's key-value metadata records `bedrock.applied_through` and
//! `bedrock.applied_extra`: the write-ahead log records whose effects the
//! segment contains, so recovery replays only the rest.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use super::bloom::{Bloom, Probe};
use super::typed::MetaSplit;
use super::typed::{key_hash, Typed};
use crate::StoreError;

pub const KIND_TRACE: &str = "trace";
pub const KIND_SPAN: &str = "span";
pub const KIND_USAGE: &str = "usage";

/// Maps a kind read back from a segment to its static name.
fn kind_of(text: &str) -> Result<&'static str, StoreError> {
    match text {
        KIND_TRACE => Ok(KIND_TRACE),
        KIND_SPAN => Ok(KIND_SPAN),
        KIND_USAGE => Ok(KIND_USAGE),
        other => Err(StoreError::Internal(format!("segment row of unknown kind {other:?}"))),
    }
}

/// One row of a segment.
#[derive(Debug, Clone)]
pub struct SegmentRow {
    pub organization_id: String,
    pub kind: &'static str,
    pub id: String,
    pub trace_id: Option<String>,
    pub seq: u64,
    pub state: String,
    /// The typed columns, computed from `state` when the writer gets `None`.
    pub typed: Option<Typed>,
}

/// Which log records a segment (and every segment before it) contains.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Every record with a sequence number up to this one.
    pub through: u64,
    /// Records above `through` that were applied out of order.
    pub extra: Vec<u64>,
}

impl Applied {
    pub fn contains(&self, lsn: u64) -> bool {
        lsn <= self.through || self.extra.binary_search(&lsn).is_ok()
    }
}

#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
    pub applied: Applied,
    pub rows: u64,
    pub bytes: u64,
    /// Keys `[organization, kind, id]` of the rows.
    pub ids: Arc<Bloom>,
    /// Keys `[organization, trace id]` of the rows.
    pub traces: Arc<Bloom>,
    /// The metadata keys whose filters read `meta` rather than `meta_low`
    /// (see [`MetaSplit`]), or `None` when all keys do.
    pub meta_high: Option<Arc<BTreeSet<String>>>,
}

impl SegmentFile {
    /// Reports whether the segment may hold rows of the object whose key
    /// `[organization, kind, id]` gave `probe`.
    pub fn may_hold_object(&self, probe: Probe) -> bool {
        self.ids.may_contain_probe(probe)
    }

    /// Reports whether the segment may hold spans of the trace whose key
    /// `[organization, trace id]` gave `probe`.
    pub fn may_hold_trace(&self, probe: Probe) -> bool {
        self.traces.may_contain_probe(probe)
    }
}

fn blooms<'a>(keys: impl Iterator<Item = (&'a str, &'a str, &'a str, Option<&'a str>)> + Clone) -> (Bloom, Bloom) {
    let count = keys.clone().count();
    let mut ids = Bloom::precise_with_capacity(count);
    let mut traces = Bloom::with_capacity(count);
    for (organization, kind, id, trace) in keys {
        ids.insert(&[organization, kind, id]);
        if let Some(trace) = trace {
            traces.insert(&[organization, trace]);
        }
    }
    (ids, traces)
}

pub fn schema() -> SchemaRef {
    // Built once: point reads ask for it on every request.
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(build_schema).clone()
}

/// Returns the type of the text columns with few distinct values
/// (organizations, kinds, agents, span types, models). The file records it,
/// so readers get dictionary arrays: filters compare each distinct value
/// once, and no scan copies the text of every row.
pub fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Builds a dictionary column of [`dictionary_type`].
pub fn dictionary_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<DictionaryArray<Int32Type>>())
}

fn build_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("organization_id", dictionary_type(), false),
        Field::new("kind", dictionary_type(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("seq", DataType::UInt64, false),
        Field::new("state", DataType::Utf8, false),
        // The typed columns of `typed::Typed`, after the stored ones.
        Field::new("key_hash", DataType::UInt64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("agent_id", dictionary_type(), true),
        Field::new("started_at", DataType::Int64, true),
        Field::new("ended_at", DataType::Int64, true),
        Field::new("first_seen", DataType::Int64, true),
        Field::new("has_error", DataType::Boolean, true),
        Field::new("span_type", dictionary_type(), true),
        Field::new("flagged", DataType::Boolean, true),
        Field::new("passed", DataType::Boolean, true),
        Field::new("meta", DataType::Utf8, true),
        Field::new("has_usage", DataType::Boolean, true),
        Field::new("model", dictionary_type(), true),
        Field::new("input_tokens", DataType::Int64, true),
        Field::new("output_tokens", DataType::Int64, true),
        Field::new("cached_tokens", DataType::Int64, true),
        Field::new("reasoning_tokens", DataType::Int64, true),
        Field::new("cost_nanos", DataType::Int64, true),
        Field::new("usage_at", DataType::Int64, true),
        Field::new("span_id", DataType::Utf8, true),
        // The entries of `meta` whose key has few distinct values in the
        // segment (see `MetaSplit`), as a dictionary.
        Field::new("meta_low", dictionary_type(), true),
    ]))
}

/// The key columns of one row, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RowKeys<'a> {
    pub organization_id: &'a str,
    pub kind: &'static str,
    pub id: &'a str,
    pub trace_id: Option<&'a str>,
    pub seq: u64,
}

impl<'a> RowKeys<'a> {
    fn of(row: &'a SegmentRow) -> Self {
        RowKeys {
            organization_id: &row.organization_id,
            kind: row.kind,
            id: &row.id,
            trace_id: row.trace_id.as_deref(),
            seq: row.seq,
        }
    }
}

/// Builds the `key_hash` column and the typed columns of rows.
fn typed_columns(keys: &[RowKeys<'_>], typed: &[&Typed]) -> Vec<ArrayRef> {
    let text = |get: fn(&Typed) -> Option<&str>| -> ArrayRef { Arc::new(typed.iter().map(|t| get(t)).collect::<StringArray>()) };
    let int = |get: fn(&Typed) -> Option<i64>| -> ArrayRef { Arc::new(typed.iter().map(|t| get(t)).collect::<Int64Array>()) };
    let flag = |get: fn(&Typed) -> Option<bool>| -> ArrayRef { Arc::new(typed.iter().map(|t| get(t)).collect::<BooleanArray>()) };
    let few = |get: fn(&Typed) -> Option<&str>| -> ArrayRef { dictionary_array(typed.iter().map(|t| get(t))) };
    vec![
        Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| key_hash(k.organization_id, k.kind, k.id)))),
        text(|t| t.name.as_deref()),
        few(|t| t.agent_id.as_deref()),
        int(|t| t.started_at),
        int(|t| t.ended_at),
        int(|t| t.first_seen),
        flag(|t| t.has_error),
        few(|t| t.span_type.as_deref()),
        flag(|t| t.flagged),
        flag(|t| t.passed),
        text(|t| t.meta.as_deref()),
        flag(|t| t.has_usage),
        few(|t| t.model.as_deref()),
        int(|t| t.input_tokens),
        int(|t| t.output_tokens),
        int(|t| t.cached_tokens),
        int(|t| t.reasoning_tokens),
        int(|t| t.cost_nanos),
        int(|t| t.usage_at),
        text(|t| t.span_id.as_deref()),
        // Filled in by `SegmentWriter::write_batch`, which receives every row of
        // the segment.
        dictionary_array(typed.iter().map(|_| None)),
    ]
}

/// Rows per Arrow batch handed to the Parquet writer: small enough that the
/// batch's buffers are reused from the allocator rather than grown anew.
pub const WRITE_CHUNK_ROWS: usize = 4096;

/// Returns the key that orders the rows of a segment: organization, kind,
/// whether the row is a usage record, trace and id, so statistics prune
/// reads by kind, by usage and by trace. Rows without typed columns sort as
/// rows without usage, so [`sort_rows`] computes those columns first.
pub fn sort_key(row: &SegmentRow) -> (&str, &str, bool, Option<&str>, &str) {
    let usage = row.typed.as_ref().is_some_and(|typed| typed.has_usage == Some(true));
    (row.organization_id.as_str(), row.kind, usage, row.trace_id.as_deref(), row.id.as_str())
}

/// Computes the typed columns of the rows that carry none, then sorts the
/// rows by [`sort_key`].
pub fn sort_rows(rows: &mut [SegmentRow]) -> Result<(), StoreError> {
    for row in rows.iter_mut().filter(|row| row.typed.is_none()) {
        row.typed = Some(Typed::of_json(row.kind, &row.state)?);
    }
    rows.sort_unstable_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    Ok(())
}

pub fn file_name(first: u64, last: u64) -> String {
    format!("segment-{first:020}-{last:020}.parquet")
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix("segment-")?.strip_suffix(".parquet")?;
    let (first, last) = stem.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The footer key that lists a segment's high metadata keys as a JSON array,
/// or contains [`ALL_KEYS_HIGH`].
const META_HIGH_KEYS: &str = "bedrock.meta_high_keys";
const ALL_KEYS_HIGH: &str = "*";

/// The column of the metadata entries of keys with few values.
const META_LOW: &str = "meta_low";

/// Page size of the `state` column: reading one object's state
/// decompresses at most this much besides it.
const STATE_PAGE_BYTES: usize = 64 * 1024;

/// The columns a segment stores for merging, before the typed ones.
pub const STORED_COLUMNS: [&str; 6] = ["organization_id", "kind", "id", "trace_id", "seq", "state"];

/// Page size of the `id` and `trace_id` columns: about 500 ids of 36
/// characters, so 10 million rows give 20,000 pages to the page index.
const KEY_PAGE_BYTES: usize = 16 * 1024;

/// Writes a segment in parts, so compaction never holds all of its rows.
pub struct SegmentWriter {
    dir: PathBuf,
    first: u64,
    last: u64,
    applied: Applied,
    temporary: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
    ids: Bloom,
    traces: Bloom,
    /// The kind of the last row written. Each row group contains one kind, so
    /// scans of one kind skip the others' row groups by their statistics.
    kind: Option<&'static str>,
    meta: MetaSplit,
}

impl SegmentWriter {
    /// Starts a segment of about `expected_rows` rows (which sizes its Bloom filters).
    pub fn create(dir: &Path, first: u64, last: u64, applied: &Applied, expected_rows: usize) -> Result<Self, StoreError> {
        let extra = serde_json::to_string(&applied.extra).map_err(StoreError::internal)?;
        let properties = WriterProperties::builder()
            // LZ4 decompresses faster than zstd: queries at 1 million traces
            // used 17% to 36% less CPU time, and files are about 1.6 times
            // larger (BENCHMARKS.md, "Dictionary columns, LZ4 pages").
            .set_compression(Compression::LZ4_RAW)
            .set_max_row_group_row_count(Some(64 * 1024))
            .set_write_batch_size(256)
            // Bloom filters only where point reads filter: on the JSON states they
            // would cost flush time and space and never prune anything.
            .set_column_bloom_filter_enabled(ColumnPath::from("id"), true)
            .set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true)
            // The states are unique and long: a dictionary would never pay,
            // and min and max of JSON text prune nothing.
            .set_column_dictionary_enabled(ColumnPath::from("state"), false)
            .set_column_statistics_enabled(ColumnPath::from("state"), EnabledStatistics::None)
            .set_column_data_page_size_limit(ColumnPath::from("state"), STATE_PAGE_BYTES)
            // Plain pages of a few hundred ids each, so the page index narrows
            // a read of some objects or traces to their pages. A dictionary
            // page would have to be read whole for any of them.
            .set_column_dictionary_enabled(ColumnPath::from("id"), false)
            .set_column_data_page_size_limit(ColumnPath::from("id"), KEY_PAGE_BYTES)
            .set_column_dictionary_enabled(ColumnPath::from("trace_id"), false)
            .set_column_data_page_size_limit(ColumnPath::from("trace_id"), KEY_PAGE_BYTES)
            .set_column_dictionary_enabled(ColumnPath::from("meta"), false)
            .set_column_statistics_enabled(ColumnPath::from("meta"), EnabledStatistics::None)
            .set_column_statistics_enabled(ColumnPath::from("meta_low"), EnabledStatistics::None)
            .set_column_dictionary_enabled(ColumnPath::from("key_hash"), false)
            .set_column_statistics_enabled(ColumnPath::from("key_hash"), EnabledStatistics::None)
            .set_key_value_metadata(Some(vec![
                KeyValue::new("bedrock.applied_through".into(), applied.through.to_string()),
                KeyValue::new("bedrock.applied_extra".into(), extra),
            ]))
            .build();
        let temporary = dir.join(format!("{}.tmp", file_name(first, last)));
        let file = File::create(&temporary).map_err(StoreError::internal)?;
        let writer = ArrowWriter::try_new(file, schema(), Some(properties)).map_err(StoreError::internal)?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            first,
            last,
            applied: applied.clone(),
            temporary,
            writer,
            rows: 0,
            ids: Bloom::precise_with_capacity(expected_rows),
            traces: Bloom::with_capacity(expected_rows),
            kind: None,
            meta: MetaSplit::default(),
        })
    }

    /// Returns the number of rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends rows, sorted here by [`sort_key`], and ends the row group, so
    /// memory stays bounded by what one call passes.
    pub fn write(&mut self, mut rows: Vec<SegmentRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        sort_rows(&mut rows)?;
        for chunk in rows.chunks(WRITE_CHUNK_ROWS) {
            self.write_sorted(chunk)?;
        }
        self.writer.flush().map_err(StoreError::internal)
    }

    /// Appends rows in the order given, computing the typed columns from
    /// the JSON state of rows that carry none.
    pub fn write_sorted(&mut self, rows: &[SegmentRow]) -> Result<(), StoreError> {
        let computed: Vec<Option<Typed>> = rows
            .iter()
            .map(|row| match row.typed {
                Some(_) => Ok(None),
                None => Typed::of_json(row.kind, &row.state).map(Some),
            })
            .collect::<Result<_, _>>()?;
        let typed: Vec<&Typed> =
            rows.iter().zip(&computed).map(|(row, own)| row.typed.as_ref().or(own.as_ref()).expect("typed")).collect();
        let keys: Vec<RowKeys> = rows.iter().map(RowKeys::of).collect();
        let states = StringArray::from_iter_values(rows.iter().map(|r| r.state.as_str()));
        self.write_parts(&keys, states, &typed)
    }

    /// Appends rows in the order given: their key columns, their JSON states
    /// and their typed columns, all of one length.
    pub fn write_parts(&mut self, keys: &[RowKeys<'_>], states: StringArray, typed: &[&Typed]) -> Result<(), StoreError> {
        let mut columns: Vec<ArrayRef> = vec![
            dictionary_array(keys.iter().map(|k| Some(k.organization_id))),
            dictionary_array(keys.iter().map(|k| Some(k.kind))),
            Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.id))),
            Arc::new(StringArray::from_iter(keys.iter().map(|k| k.trace_id))),
            Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| k.seq))),
            Arc::new(states),
        ];
        columns.extend(typed_columns(keys, typed));
        let batch = RecordBatch::try_new(schema(), columns).map_err(StoreError::internal)?;
        self.write_batch(&batch)
    }

    /// Appends a batch with the segment schema as it is, unsorted. Row groups
    /// are written as they reach their size, so memory stays bounded by one.
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let conformed = self.with_meta_low(conform(batch)?)?;
        let batch = &conformed;
        let kind = string_column(batch, "kind")?;
        let mut start = 0;
        while start < batch.num_rows() {
            let run_kind = kind_of(kind.value(start))?;
            let mut end = start + 1;
            while end < batch.num_rows() && kind.value(end) == run_kind {
                end += 1;
            }
            if self.kind.is_some_and(|last| last != run_kind) {
                // Ends the row group, even below its size limit.
                self.writer.flush().map_err(StoreError::internal)?;
            }
            self.kind = Some(run_kind);
            self.writer.write(&batch.slice(start, end - start)).map_err(StoreError::internal)?;
            start = end;
        }
        let organization = string_column(batch, "organization_id")?;
        let id = string_column(batch, "id")?;
        let trace = string_column(batch, "trace_id")?;
        for i in 0..batch.num_rows() {
            self.ids.insert(&[organization.value(i), kind.value(i), id.value(i)]);
            if !trace.is_null(i) {
                self.traces.insert(&[organization.value(i), trace.value(i)]);
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Replaces the `meta_low` column of a batch with the split of its
    /// `meta` column by this segment's key cardinalities.
    fn with_meta_low(&mut self, batch: RecordBatch) -> Result<RecordBatch, StoreError> {
        let meta = batch
            .column_by_name("meta")
            .and_then(|column| column.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| StoreError::Internal("segment column meta is missing".into()))?;
        let low: Vec<Option<String>> = meta.iter().map(|meta| meta.map(|meta| self.meta.low_entries(meta))).collect();
        let index = batch.schema().index_of(META_LOW).map_err(StoreError::internal)?;
        let mut columns = batch.columns().to_vec();
        columns[index] = dictionary_array(low.iter().map(Option::as_deref));
        RecordBatch::try_new(batch.schema(), columns).map_err(StoreError::internal)
    }

    /// Completes the file: syncs it, renames it into place and syncs the directory.
    pub fn finish(mut self) -> Result<SegmentFile, StoreError> {
        let meta_high = self.meta.high_keys().map(|keys| Arc::new(keys.clone()));
        let listed = match &meta_high {
            Some(keys) => serde_json::to_string(&**keys).map_err(StoreError::internal)?,
            None => ALL_KEYS_HIGH.to_string(),
        };
        self.writer.append_key_value_metadata(KeyValue::new(META_HIGH_KEYS.into(), listed));
        let file = self.writer.into_inner().map_err(StoreError::internal)?;
        file.sync_all().map_err(StoreError::internal)?;
        let bytes = file.metadata().map_err(StoreError::internal)?.len();
        drop(file);
        let path = self.dir.join(file_name(self.first, self.last));
        std::fs::rename(&self.temporary, &path).map_err(StoreError::internal)?;
        sync_dir(&self.dir)?;
        Ok(SegmentFile {
            first: self.first,
            last: self.last,
            path,
            applied: self.applied,
            rows: self.rows,
            bytes,
            ids: Arc::new(self.ids),
            traces: Arc::new(self.traces),
            meta_high,
        })
    }
}

/// Calls `visit` with each record batch of a segment, reading only the
/// columns `projection` lists (all when `None`).
pub fn for_each_record_batch(
    path: &Path,
    projection: Option<&[usize]>,
    mut visit: impl FnMut(&RecordBatch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let file = File::open(path).map_err(StoreError::internal)?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|err| StoreError::Internal(format!("{}: {err}", path.display())))?;
    if let Some(columns) = projection {
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    let reader = builder
        .with_batch_size(4096)
        .build()
        .map_err(|err| StoreError::Internal(format!("{}: {err}", path.display())))?;
    for batch in reader {
        visit(&batch.map_err(StoreError::internal)?)?;
    }
    Ok(())
}

/// Returns a hash of the key `(organization, kind, id)` of each row of a
/// batch that has at least those three columns.
pub fn key_hashes(batch: &RecordBatch) -> Result<Vec<u64>, StoreError> {
    use std::hash::{Hash, Hasher};
    let organization = string_column(batch, "organization_id")?;
    let kind = string_column(batch, "kind")?;
    let id = string_column(batch, "id")?;
    Ok((0..batch.num_rows())
        .map(|i| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (organization.value(i), kind.value(i), id.value(i)).hash(&mut hasher);
            hasher.finish()
        })
        .collect())
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::internal)
}

/// The key of an object: organization, kind and id.
pub type ObjectKey = (String, &'static str, String);

/// Lists the live segments in order, deleting temporary files and segments
/// made obsolete by a compaction that finished writing, and rewriting
/// segments of earlier versions that lack the typed columns. Also returns
/// the keys of the objects that have rows in more than one segment (or that
/// the Bloom filters cannot tell apart from such objects).
pub fn load_segments(dir: &Path) -> Result<(Vec<SegmentFile>, std::collections::HashSet<ObjectKey>), StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::internal)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StoreError::internal)? {
        let entry = entry.map_err(StoreError::internal)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            tracing::info!(file = %name, "removing unfinished segment file");
            std::fs::remove_file(entry.path()).map_err(StoreError::internal)?;
            continue;
        }
        if let Some((first, last)) = parse_file_name(&name) {
            found.push((first, last, entry.path()));
        }
    }
    // Widest ranges first, so a compacted segment hides what it replaced.
    found.sort_by_key(|(first, last, _)| (*first, std::cmp::Reverse(*last)));
    let mut live: Vec<SegmentFile> = Vec::new();
    let mut multi = std::collections::HashSet::new();
    // The sorted key hashes of each live segment, kept while loading only.
    let mut key_hashes_of: Vec<Vec<u64>> = Vec::new();
    for (first, last, path) in found {
        if let Some(previous) = live.last() {
            if last <= previous.last {
                tracing::info!(file = %path.display(), "removing segment replaced by compaction");
                std::fs::remove_file(&path).map_err(StoreError::internal)?;
                continue;
            }
        }
        let (applied, rows, bytes, current, mut meta_high) = read_footer(&path)?;
        if !current {
            tracing::info!(file = %path.display(), "rewriting a segment of an earlier format");
            meta_high = rewrite_with_typed_columns(dir, first, last, &applied, rows, &path)?;
        }
        let keys = read_keys(&path)?;
        let mut hashes: Vec<u64> = Vec::with_capacity(keys.len());
        for (organization, kind, id, _) in &keys {
            let parts = [organization.as_str(), kind, id.as_str()];
            let probe = Probe::of(&parts);
            let hash = key_hash(organization, kind, id);
            hashes.push(hash);
            // The Bloom filters narrow the candidates; the sorted hashes of
            // the earlier segments then drop their false positives.
            let contains = |older: usize| live[older].ids.may_contain_probe(probe) && key_hashes_of[older].binary_search(&hash).is_ok();
            if (0..live.len()).any(contains) {
                multi.insert((organization.clone(), *kind, id.clone()));
            }
        }
        hashes.sort_unstable();
        key_hashes_of.push(hashes);
        let (ids, traces) = blooms(keys.iter().map(|(o, k, i, t)| (o.as_str(), *k, i.as_str(), t.as_deref())));
        let bytes = if current { bytes } else { std::fs::metadata(&path).map_err(StoreError::internal)?.len() };
        live.push(SegmentFile { first, last, path, applied, rows, bytes, ids: Arc::new(ids), traces: Arc::new(traces), meta_high });
    }
    Ok((live, multi))
}

/// Rewrites a segment in place with the current schema, computing the typed
/// columns from the states. Returns the new file's high metadata keys.
fn rewrite_with_typed_columns(
    dir: &Path,
    first: u64,
    last: u64,
    applied: &Applied,
    rows: u64,
    path: &Path,
) -> Result<Option<Arc<BTreeSet<String>>>, StoreError> {
    let mut writer = SegmentWriter::create(dir, first, last, applied, rows as usize)?;
    // Columns 0..=5 are the stored ones of every version.
    for_each_record_batch(path, Some(&[0, 1, 2, 3, 4, 5]), |batch| writer.write_sorted(&rows_of_batch(batch)?))?;
    writer.finish().map(|segment| segment.meta_high)
}

/// The contents of a segment's footer: the log records applied, the row and
/// byte counts, whether the file has the current schema, and its high
/// metadata keys.
type Footer = (Applied, u64, u64, bool, Option<Arc<BTreeSet<String>>>);

/// Reads what a segment's footer records.
fn read_footer(path: &Path) -> Result<Footer, StoreError> {
    let file = File::open(path).map_err(StoreError::internal)?;
    let bytes = file.metadata().map_err(StoreError::internal)?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|err| StoreError::Internal(format!("{}: {err}", path.display())))?;
    // A file of an older format (without typed columns, or with plain text
    // where dictionaries now are) is rewritten at start-up.
    // A file without `meta_low` needs no rewrite: its footer lists no high
    // metadata keys, so every metadata filter reads its `meta` column.
    let current = schema().fields().iter().filter(|field| field.name() != META_LOW).all(|field| {
        builder.schema().field_with_name(field.name()).is_ok_and(|found| found.data_type() == field.data_type())
    });
    let metadata = builder.metadata().file_metadata();
    let mut applied = Applied::default();
    let mut meta_high = None;
    for pair in metadata.key_value_metadata().into_iter().flatten() {
        match (pair.key.as_str(), pair.value.as_deref()) {
            ("bedrock.applied_through", Some(value)) => applied.through = value.parse().unwrap_or(0),
            ("bedrock.applied_extra", Some(value)) => applied.extra = serde_json::from_str(value).unwrap_or_default(),
            // An unreadable list counts as "all keys high", which is always exact.
            (META_HIGH_KEYS, Some(value)) if value != ALL_KEYS_HIGH => {
                meta_high = serde_json::from_str::<BTreeSet<String>>(value)
                    .inspect_err(|err| tracing::warn!(file = %path.display(), %err, "unreadable list of high metadata keys; reading meta for every key"))
                    .ok()
                    .map(Arc::new);
            }
            _ => {}
        }
    }
    Ok((applied, metadata.num_rows() as u64, bytes, current, meta_high))
}

type Keys = Vec<(String, &'static str, String, Option<String>)>;

/// Reads the key columns of a segment (not the states), to rebuild its Bloom filters.
fn read_keys(path: &Path) -> Result<Keys, StoreError> {
    let file = File::open(path).map_err(StoreError::internal)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|err| StoreError::Internal(format!("{}: {err}", path.display())))?;
    // Columns 0..=3 are organization_id, kind, id and trace_id.
    let mask = ProjectionMask::roots(builder.parquet_schema(), [0, 1, 2, 3]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|err| StoreError::Internal(format!("{}: {err}", path.display())))?;
    let mut keys = Vec::new();
    for batch in reader {
        let batch = batch.map_err(StoreError::internal)?;
        let organization = string_column(&batch, "organization_id")?;
        let kind = string_column(&batch, "kind")?;
        let id = string_column(&batch, "id")?;
        let trace = string_column(&batch, "trace_id")?;
        for i in 0..batch.num_rows() {
            keys.push((
                organization.value(i).to_string(),
                kind_of(kind.value(i))?,
                id.value(i).to_string(),
                (!trace.is_null(i)).then(|| trace.value(i).to_string()),
            ));
        }
    }
    Ok(keys)
}

/// Gives a batch read from a segment the current segment schema: files
/// written before a column became a dictionary have it as plain text.
fn conform(batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let target = schema();
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone());
    }
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let Some(column) = batch.column_by_name(field.name()) else {
                // Files written before `meta_low` lack it, and the writer computes it.
                if field.name() == META_LOW {
                    return Ok(datafusion::arrow::array::new_null_array(field.data_type(), batch.num_rows()));
                }
                return Err(StoreError::Internal(format!("segment column {} is missing", field.name())));
            };
            datafusion::arrow::compute::cast(column, field.data_type()).map_err(StoreError::internal)
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target, columns).map_err(StoreError::internal)
}

/// A text column of a segment batch, plain or a dictionary.
enum TextColumn<'a> {
    Plain(&'a StringArray),
    Dictionary { keys: &'a Int32Array, values: &'a StringArray },
}

impl TextColumn<'_> {
    pub fn value(&self, row: usize) -> &str {
        match self {
            TextColumn::Plain(array) => array.value(row),
            TextColumn::Dictionary { keys, values } => values.value(keys.value(row) as usize),
        }
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self {
            TextColumn::Plain(array) => array.is_null(row),
            TextColumn::Dictionary { keys, .. } => keys.is_null(row),
        }
    }
}

/// Reads a text column of a segment batch, whether plain or a dictionary.
fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<TextColumn<'a>, StoreError> {
    let column = batch.column_by_name(name).ok_or_else(|| StoreError::Internal(format!("segment column {name} is missing")))?;
    if let Some(array) = column.as_any().downcast_ref::<StringArray>() {
        return Ok(TextColumn::Plain(array));
    }
    column
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .and_then(|array| {
            let values = array.values().as_any().downcast_ref::<StringArray>()?;
            Some(TextColumn::Dictionary { keys: array.keys(), values })
        })
        .ok_or_else(|| StoreError::Internal(format!("segment column {name} is not text")))
}

/// Converts a batch with the segment schema back into rows.
pub fn rows_of_batch(batch: &RecordBatch) -> Result<Vec<SegmentRow>, StoreError> {
    let organization = string_column(batch, "organization_id")?;
    let kind = string_column(batch, "kind")?;
    let id = string_column(batch, "id")?;
    let trace = string_column(batch, "trace_id")?;
    let state = string_column(batch, "state")?;
    let seq = batch
        .column_by_name("seq")
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .ok_or_else(|| StoreError::Internal("segment column seq is missing".into()))?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        rows.push(SegmentRow {
            organization_id: organization.value(i).to_string(),
            kind: kind_of(kind.value(i))?,
            id: id.value(i).to_string(),
            trace_id: (!trace.is_null(i)).then(|| trace.value(i).to_string()),
            seq: seq.value(i),
            state: state.value(i).to_string(),
            typed: None,
        });
    }
    Ok(rows)
}
