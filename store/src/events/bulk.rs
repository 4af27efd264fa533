//! Bulk loading: objects written straight into new segments, bypassing the
//! write-ahead log and the buffer, for data generators and imports.
//!
//! The server must be stopped while a bulk load runs, because it reads the
//! list of segments only when it starts. Each object is stored as if one
//! create had arrived for it, so the ids must be new: a bulk row for an id
//! that exists merges with the existing rows in segment order.

use std::path::{Path, PathBuf};

use super::model::{Layered, Op, Write};
use super::segment::{
    self, Applied, SegmentFile, SegmentRow, SegmentWriter, KIND_SPAN, KIND_TRACE, KIND_USAGE,
};
use crate::StoreError;

/// Writes objects into segments of about `rows_per_segment` rows each.
pub struct BulkWriter {
    dir: PathBuf,
    applied: Applied,
    seq: u64,
    next_segment: u64,
    rows_per_segment: u64,
    writer: Option<SegmentWriter>,
    written: Vec<SegmentFile>,
}

impl BulkWriter {
    /// Opens the event store directory `dir` (the one `EventStore::open`
    /// takes) for a bulk load after its existing segments.
    pub fn open(dir: &Path, rows_per_segment: u64) -> Result<BulkWriter, StoreError> {
        let segments_dir = dir.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(StoreError::internal)?;
        let (existing, _) = segment::load_segments(&segments_dir)?;
        // The new segments claim exactly the log records the existing ones
        // contain, so recovery still replays every record not yet in a segment.
        let applied = existing
            .iter()
            .map(|s| s.applied.clone())
            .max_by_key(|a| a.through)
            .unwrap_or_default();
        Ok(BulkWriter {
            dir: segments_dir,
            seq: applied.through,
            applied,
            next_segment: existing.last().map_or(1, |s| s.last + 1),
            rows_per_segment: rows_per_segment.max(1),
            writer: None,
            written: Vec::new(),
        })
    }

    /// Turns a create into its segment row; `first_seen` becomes the
    /// object's `created_at`.
    pub fn row(&self, organization_id: &str, write: &Write, first_seen: i64) -> Result<SegmentRow, StoreError> {
        create_row(organization_id, write, self.seq, first_seen)
    }

    /// Appends rows made by [`BulkWriter::row`], starting a new segment
    /// when the current one is full.
    pub fn write(&mut self, rows: Vec<SegmentRow>) -> Result<(), StoreError> {
        let mut rows = rows;
        while !rows.is_empty() {
            if self.writer.is_none() {
                let number = self.next_segment;
                self.next_segment += 1;
                let writer = SegmentWriter::create(
                    &self.dir,
                    number,
                    number,
                    &self.applied,
                    self.rows_per_segment as usize,
                )?;
                self.writer = Some(writer);
            }
            let writer = self.writer.as_mut().expect("a writer was just created");
            let room = (self.rows_per_segment - writer.rows()).min(rows.len() as u64) as usize;
            let rest = rows.split_off(room);
            writer.write(rows)?;
            rows = rest;
            if writer.rows() >= self.rows_per_segment {
                self.finish_segment()?;
            }
        }
        Ok(())
    }

    fn finish_segment(&mut self) -> Result<(), StoreError> {
        if let Some(writer) = self.writer.take() {
            let file = writer.finish()?;
            tracing::info!(
                segment = file.first,
                rows = file.rows,
                bytes = file.bytes,
                "bulk segment written"
            );
            self.written.push(file);
        }
        Ok(())
    }

    /// Completes the last segment and returns every segment written.
    pub fn finish(mut self) -> Result<Vec<SegmentFile>, StoreError> {
        self.finish_segment()?;
        Ok(self.written)
    }
}

/// Turns a create into the row of an object stored as if that one create
/// had arrived, as log record `seq`; `first_seen` becomes its `created_at`.
pub fn create_row(organization_id: &str, write: &Write, seq: u64, first_seen: i64) -> Result<SegmentRow, StoreError> {
    let (kind, id, trace_id, state) = match write {
        Write::Trace { id, fields, .. } => {
            let state = Layered::from_write(Op::Create, fields.clone(), seq, first_seen);
            (
                KIND_TRACE,
                id,
                Some(id.clone()),
                serde_json::to_string(&state).map_err(StoreError::internal)?,
            )
        }
        Write::Span { id, fields, .. } => {
            let state = Layered::from_write(Op::Create, fields.clone(), seq, first_seen);
            (
                KIND_SPAN,
                id,
                fields.trace_id.clone(),
                serde_json::to_string(&state).map_err(StoreError::internal)?,
            )
        }
        Write::Usage { id, fields, .. } => {
            let state = Layered::from_write(Op::Create, fields.clone(), seq, first_seen);
            (
                KIND_USAGE,
                id,
                fields.trace_id.clone(),
                serde_json::to_string(&state).map_err(StoreError::internal)?,
            )
        }
    };
    Ok(SegmentRow {
        organization_id: organization_id.to_string(),
        kind,
        id: id.clone(),
        trace_id,
        seq,
        state,
        typed: None,
    })
}
