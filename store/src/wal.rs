//! Write-ahead log that makes ingested records durable before they are acknowledged.
//!
//! Every ingest write request appends one record (or one batch with [`Wal::append_many`]) and
//! is acknowledged only after its bytes are written and `fdatasync`ed. A single writer thread
//! drains everything queued, writes it with one `write`, syncs once and then resolves every
//! waiter, so concurrent requests share one sync (group commit). Once the event store has
//! applied records, [`Wal::truncate_through`] deletes the segment files that hold only applied
//! records. Records are opaque bytes, and this module never logs their contents.
//!
//! # On-disk format
//!
//! The log is a directory of segment files, each named by the LSN (log sequence number) of its
//! first record, zero-padded to 20 digits, such as `00000000000000000001.wal`. A segment contains
//! records back to back. Each record is a 16-byte header followed by its payload, with every
//! integer little-endian:
//!
//! ```text
//! offset  size  field
//!  0       4    payload length in bytes (u32)
//!  4       4    CRC-32 (IEEE, as computed by crc32fast) of the 8 LSN bytes followed by the payload (u32)
//!  8       8    LSN (u64)
//! 16     len    payload
//! ```
//!
//! The active segment is zero-filled ahead of its records (see *Durability*), so a segment may
//! end in zero bytes after its last record. These bytes are free space, not records.
//!
//! LSNs start at 1 and increase by one per record across the whole log. The first record of a
//! segment has the LSN in the file name. An empty segment is named by the next LSN to assign,
//! which is how the LSN sequence survives a truncation that removes every record. The file
//! `wal.lock` carries an exclusive advisory lock (`flock`) while a [`Wal`] has the directory open.
//!
//! # Recovery
//!
//! [`Wal::open`] reads the segments in LSN order. A torn or corrupt record in the last segment
//! is what a crash during a group write leaves behind, because none of that write was
//! acknowledged, so the file is truncated at the first such record and appends continue after
//! it. A checksum cannot tell a torn write from a flipped bit, so a corrupt record in the last
//! segment also drops every record after it. Non-last segments were fully synced before the
//! next one was created, so any damage there fails the open with [`WalError::Corrupt`].
//!
//! # Durability
//!
//! The writer calls `sync_data` on the segment after each group write, and syncs the directory
//! after creating or deleting a segment file. Groups overwrite zeros written ahead of them, in
//! extensions that double with the segment's size, so most syncs carry data blocks only. A sync
//! that also grows the file commits the file system's journal, which took about twice the time
//! and CPU on ext4 when measured on a 2-core test machine. Recovery treats zeros after the last
//! record as free space in any segment, and a clean close or a rotation cuts them off.
//!
//! After a failed write or sync the writer truncates
//! the segment back to its last synced length. If that truncation also fails, or a new
//! segment's directory entry cannot be synced, the log stops: every later append fails with
//! [`WalError::Io`], and the process has to reopen the log to recover.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

/// Log sequence number of a record.
///
/// LSNs start at 1, increase by one per record, survive restarts and are never reused after a
/// truncation. Two exceptions assign an LSN again, both for records that were never
/// acknowledged: a record dropped at a torn tail during recovery, and the records of a group
/// write that failed and was cut off the file.
pub type Lsn = u64;

/// Records that [`Wal::open`] returns for replay, in LSN order.
pub type ReplayRecords = Vec<(Lsn, Vec<u8>)>;

/// Bytes of the header written in front of every payload.
pub const RECORD_HEADER_BYTES: u64 = 16;

/// Largest payload the format can store, because the length field is a `u32`.
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize;

const SEGMENT_EXTENSION: &str = "wal";
const SEGMENT_NAME_DIGITS: usize = 20;
const LOCK_FILE_NAME: &str = "wal.lock";

/// Settings for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory of the segment files and the lock file, created if missing.
    pub dir: PathBuf,
    /// Segment size in bytes past which the writer starts a new segment file. A segment exceeds
    /// it only when a single `append` or `append_many` request is larger.
    pub segment_bytes: u64,
    /// Maximum bytes of live segment files plus queued records, headers included. Appends
    /// beyond it fail with [`WalError::Full`] until [`Wal::truncate_through`] frees space.
    pub max_bytes: u64,
    /// Maximum records queued for or being written by the writer. Appends beyond it fail with
    /// [`WalError::Busy`], except that a batch larger than the limit is accepted into an empty
    /// queue, so that it can make progress.
    pub max_pending: usize,
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "write-ahead log is full: the record does not fit in max_bytes next to the live and queued records; \
         retry after applied records are truncated"
    )]
    Full,
    #[error("write-ahead log queue has max_pending records waiting; retry later")]
    Busy,
    #[error("write-ahead log I/O failed: {0}")]
    Io(std::io::Error),
    #[error("write-ahead log is closed")]
    Closed,
    #[error("corrupt write-ahead log record in {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "write-ahead log directory {} is already open: another log holds the lock on {}",
        dir.display(),
        LOCK_FILE_NAME
    )]
    Locked { dir: PathBuf },
    #[error(
        "record of {len} bytes exceeds the maximum of {} bytes that the format can store",
        MAX_RECORD_BYTES
    )]
    RecordTooLarge { len: usize },
}

impl WalError {
    /// Builds an equal error for another waiter of the same failed group, because
    /// `io::Error` is not `Clone`.
    fn duplicate(&self) -> WalError {
        match self {
            WalError::Full => WalError::Full,
            WalError::Busy => WalError::Busy,
            WalError::Io(e) => WalError::Io(io::Error::new(e.kind(), e.to_string())),
            WalError::Closed => WalError::Closed,
            WalError::Corrupt {
                path,
                offset,
                reason,
            } => WalError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::Locked { dir } => WalError::Locked { dir: dir.clone() },
            WalError::RecordTooLarge { len } => WalError::RecordTooLarge { len: *len },
        }
    }
}

fn io_error(action: &str, path: &Path, source: io::Error) -> WalError {
    WalError::Io(io::Error::new(
        source.kind(),
        format!("failed to {action} {}: {source}", path.display()),
    ))
}

/// Reason the writer stopped accepting appends after an I/O failure it could not undo.
#[derive(Debug, Clone)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn to_error(&self) -> WalError {
        WalError::Io(io::Error::new(
            self.kind,
            format!(
                "write-ahead log stopped after an earlier failure ({}); reopen the log to recover",
                self.message
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Record encoding
// ---------------------------------------------------------------------------------------------

struct RecordHeader {
    len: u32,
    crc: u32,
    lsn: Lsn,
}

impl RecordHeader {
    /// Decodes the header at the start of `bytes`, or returns `None` when fewer than
    /// [`RECORD_HEADER_BYTES`] bytes remain.
    fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let (crc, rest) = rest.split_first_chunk::<4>()?;
        let (lsn, _) = rest.split_first_chunk::<8>()?;
        Some(RecordHeader {
            len: u32::from_le_bytes(*len),
            crc: u32::from_le_bytes(*crc),
            lsn: u64::from_le_bytes(*lsn),
        })
    }
}

fn record_checksum(lsn: Lsn, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Bytes a payload of `len` bytes takes on disk.
fn framed_len(len: usize) -> u64 {
    RECORD_HEADER_BYTES.saturating_add(len as u64)
}

/// Appends the framed record to `out`. The caller has checked `payload.len() <= MAX_RECORD_BYTES`.
fn encode_record(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_checksum(lsn, payload).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

// ---------------------------------------------------------------------------------------------
// Segment files and recovery
// ---------------------------------------------------------------------------------------------

/// A segment file that is still part of the log.
#[derive(Debug)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
    /// Valid bytes in the file. Recovery truncates anything after them.
    bytes: u64,
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!(
        "{first_lsn:0width$}.{SEGMENT_EXTENSION}",
        width = SEGMENT_NAME_DIGITS
    ))
}

/// Parses a segment file name into its first LSN, or returns `None` for any other file.
fn parse_segment_name(name: &str) -> Option<Lsn> {
    let stem = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if stem.len() != SEGMENT_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Syncs a directory so that file creations and deletions in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

/// Lists the segment files in `dir`, sorted by first LSN.
fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|e| io_error("list directory", dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list directory", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(first_lsn) = name.to_str().and_then(parse_segment_name) else {
            if path.extension().is_some_and(|ext| ext == SEGMENT_EXTENSION) {
                warn!(path = %path.display(), "ignoring file with a segment extension but no 20-digit LSN name");
            }
            continue;
        };
        let file_type = entry
            .file_type()
            .map_err(|e| io_error("read file type of", &path, e))?;
        if !file_type.is_file() {
            warn!(path = %path.display(), "ignoring a segment path that is not a regular file");
            continue;
        }
        if first_lsn == 0 {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: "segment name has LSN 0, but LSNs start at 1".to_string(),
            });
        }
        segments.push((first_lsn, path));
    }
    segments.sort_unstable_by_key(|(first_lsn, _)| *first_lsn);
    Ok(segments)
}

/// End of the valid records of a segment that stops short of the end of its file.
#[derive(Debug)]
struct TornTail {
    offset: u64,
    reason: &'static str,
}

#[derive(Debug)]
struct SegmentScan {
    records: Vec<(Lsn, Vec<u8>)>,
    valid_bytes: u64,
    next_lsn: Lsn,
    torn_tail: Option<TornTail>,
}

/// Parses the records of one segment file.
///
/// Stops at the first record that is incomplete or fails its checksum and reports it as a torn
/// tail, leaving the decision to the caller. A record whose checksum matches but whose LSN is
/// out of sequence cannot come from a torn write, so it is always [`WalError::Corrupt`].
fn scan_segment(data: &[u8], first_lsn: Lsn, path: &Path) -> Result<SegmentScan, WalError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut expected_lsn = first_lsn;
    let torn_tail = loop {
        let Some(rest) = data.get(offset..).filter(|rest| !rest.is_empty()) else {
            break None;
        };
        let Some(header) = RecordHeader::decode(rest) else {
            break Some(TornTail {
                offset: offset as u64,
                reason: "incomplete record header",
            });
        };
        let payload_start = offset.saturating_add(RECORD_HEADER_BYTES as usize);
        let payload_end = usize::try_from(header.len)
            .ok()
            .and_then(|len| payload_start.checked_add(len));
        let Some((payload, payload_end)) =
            payload_end.and_then(|end| Some((data.get(payload_start..end)?, end)))
        else {
            break Some(TornTail {
                offset: offset as u64,
                reason: "record length extends past the end of the file",
            });
        };
        if record_checksum(header.lsn, payload) != header.crc {
            break Some(TornTail {
                offset: offset as u64,
                reason: "record checksum mismatch",
            });
        }
        if header.lsn != expected_lsn {
            return Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason: format!(
                    "record has LSN {} but the sequence expects {expected_lsn}",
                    header.lsn
                ),
            });
        }
        records.push((header.lsn, payload.to_vec()));
        offset = payload_end;
        expected_lsn = expected_lsn
            .checked_add(1)
            .ok_or_else(|| WalError::Corrupt {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason: "LSN overflows u64".to_string(),
            })?;
    };
    Ok(SegmentScan {
        records,
        valid_bytes: offset as u64,
        next_lsn: expected_lsn,
        torn_tail,
    })
}

/// Cuts a torn tail off the last segment so that new records follow the last valid one.
fn truncate_torn_tail(path: &Path, tail: &TornTail, file_len: u64) -> Result<(), WalError> {
    warn!(
        path = %path.display(),
        offset = tail.offset,
        dropped_bytes = file_len.saturating_sub(tail.offset),
        reason = tail.reason,
        "truncating torn tail of the last write-ahead log segment"
    );
    cut_segment(path, tail.offset)
}

/// Returns whether every byte of `data` from `offset` on is zero: space the writer zero-filled
/// ahead of its records. A torn group write cannot look like this, because a record header
/// of zeros never passes its checksum and the writer writes whole records.
fn is_zero_fill(data: &[u8], offset: u64) -> bool {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    data.get(start..).is_some_and(|rest| rest.iter().all(|&b| b == 0))
}

/// Cuts a segment file to `len` bytes and syncs it.
fn cut_segment(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error("open segment", path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("truncate segment", path, e))
}

/// Segments and records found by [`recover`].
struct Recovered {
    segments: VecDeque<Segment>,
    records: Vec<(Lsn, Vec<u8>)>,
    next_lsn: Lsn,
}

/// Reads every segment in `dir`, truncates a torn tail of the last one and returns the records.
fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let found = list_segments(dir)?;
    let mut segments = VecDeque::with_capacity(found.len());
    let mut records = Vec::new();
    let mut next_lsn: Option<Lsn> = None;
    let last_index = found.len().saturating_sub(1);

    for (index, (first_lsn, path)) in found.into_iter().enumerate() {
        if let Some(expected) = next_lsn {
            if first_lsn < expected {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "segment starts at LSN {first_lsn}, but the previous segment reaches LSN {}",
                        expected.saturating_sub(1)
                    ),
                });
            }
            if first_lsn > expected {
                // A crash while truncation deleted segments can leave a later one on disk
                // without an earlier one; every deleted record was applied already.
                warn!(
                    path = %path.display(),
                    expected_lsn = expected,
                    first_lsn,
                    "write-ahead log has a gap in LSNs before this segment"
                );
            }
        }

        let data = fs::read(&path).map_err(|e| io_error("read segment", &path, e))?;
        let scan = scan_segment(&data, first_lsn, &path)?;
        if let Some(tail) = &scan.torn_tail {
            if is_zero_fill(&data, tail.offset) {
                // Zeros written ahead of the records and never used. A crash or a rotation
                // left them before they were cut off.
                debug!(path = %path.display(), offset = tail.offset, "cutting zero-filled space off a write-ahead log segment");
                cut_segment(&path, tail.offset)?;
            } else if index != last_index {
                return Err(WalError::Corrupt {
                    path,
                    offset: tail.offset,
                    reason: format!("{} in a segment that is not the last", tail.reason),
                });
            } else {
                truncate_torn_tail(&path, tail, data.len() as u64)?;
            }
        }

        next_lsn = Some(scan.next_lsn);
        records.extend(scan.records);
        segments.push_back(Segment {
            first_lsn,
            path,
            bytes: scan.valid_bytes,
        });
    }

    Ok(Recovered {
        segments,
        records,
        next_lsn: next_lsn.unwrap_or(1),
    })
}

/// Takes the advisory lock that keeps two logs from writing to one directory.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(io_error("lock", &path, e)),
    }
}

fn open_segment_for_writes(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error("open segment", path, e))
}

/// Smallest and largest zero-fill extension of the active segment, in bytes. An extension
/// doubles with the segment's size between the two, so a quiet log writes little ahead of
/// itself and a busy one grows its file, and commits the journal, a few times per segment.
const MIN_ZERO_FILL_BYTES: u64 = 64 * 1024;
const MAX_ZERO_FILL_BYTES: u64 = 8 * 1024 * 1024;

/// Zero-fills the active segment so that `needed` bytes fit, if they do not already.
fn zero_fill_to(file: &File, filled: &mut u64, needed: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    if needed <= *filled {
        return Ok(());
    }
    let step = (*filled).clamp(MIN_ZERO_FILL_BYTES, MAX_ZERO_FILL_BYTES);
    let end = needed.div_ceil(step).saturating_mul(step);
    let mut at = *filled;
    while at < end {
        let len = (end - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..len], at)?;
        at += len as u64;
    }
    *filled = end;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// Records of one `append` or `append_many` call, waiting for the writer.
struct Pending {
    records: Vec<Vec<u8>>,
    framed_bytes: u64,
    /// Receives the LSN of the first record; the others follow consecutively.
    reply: oneshot::Sender<Result<Lsn, WalError>>,
}

struct Queue {
    waiting: VecDeque<Pending>,
    /// Records waiting or being written. The writer subtracts a group only after writing it,
    /// so that `max_pending` bounds the memory held by both.
    pending_records: usize,
    closed: bool,
}

/// The files of the log. The writer holds this lock for a whole group write and sync, and
/// truncation holds it while it rotates and deletes segments.
struct LogFiles {
    dir: PathBuf,
    /// Live segments in LSN order. The last one is the active segment that receives appends.
    segments: VecDeque<Segment>,
    /// Handle of the active segment, written at offsets. `None` after [`Wal::close`].
    active: Option<File>,
    /// Length of the active segment file: its records, then zeros written ahead of them.
    filled: u64,
    /// Lock file kept open to hold the directory lock. `None` after [`Wal::close`].
    lock_file: Option<File>,
    next_lsn: Lsn,
}

struct Shared {
    cfg: WalConfig,
    queue: Mutex<Queue>,
    queue_ready: Condvar,
    log: Mutex<LogFiles>,
    /// Set once when the writer hits an I/O failure that it could not undo.
    failure: OnceLock<Failure>,
    /// Bytes of live segments plus bytes reserved by queued records, checked against max_bytes.
    used_bytes: AtomicU64,
    live_bytes: AtomicU64,
    last_lsn: AtomicU64,
    synced_groups: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Locks a mutex even if a thread panicked while holding it. Every critical section here
/// leaves the data consistent at each step, so the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Marks the log as stopped after an I/O failure it could not undo.
    fn stop(&self, failure: Failure) -> WalError {
        error!(
            dir = %self.cfg.dir.display(),
            error = %failure.message,
            "write-ahead log stopped; appends fail until the log is reopened"
        );
        let error = failure.to_error();
        // A second failure keeps the first reason, which is the root cause.
        let _ = self.failure.set(failure);
        error
    }

    fn signal_close(&self) {
        lock(&self.queue).closed = true;
        self.queue_ready.notify_all();
    }
}

/// Starts a new active segment named by the next LSN.
///
/// The caller makes sure the current active segment is synced, which every group write does
/// before it returns, so that only the last segment can ever have a torn tail.
fn rotate(shared: &Shared, log: &mut LogFiles) -> Result<(), WalError> {
    cut_zero_fill(log);
    let path = segment_path(&log.dir, log.next_lsn);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error("create segment", &path, e))?;
    // The new file exists but may vanish in a crash, so records acknowledged from it could be
    // lost. Removing it could fail the same way, so the log stops instead.
    sync_dir(&log.dir).map_err(|e| {
        shared.stop(Failure {
            kind: io::ErrorKind::Other,
            message: format!("after creating {}: {e}", path.display()),
        })
    })?;
    debug!(path = %path.display(), first_lsn = log.next_lsn, "started write-ahead log segment");
    log.active = Some(file);
    log.filled = 0;
    log.segments.push_back(Segment {
        first_lsn: log.next_lsn,
        path,
        bytes: 0,
    });
    Ok(())
}

/// Cuts the zeros written ahead of the records off the active segment. Recovery accepts them
/// if the cut does not reach the disk, so it is not synced, and a failure only costs space.
fn cut_zero_fill(log: &mut LogFiles) {
    let (Some(file), Some(segment)) = (log.active.as_ref(), log.segments.back()) else {
        return;
    };
    if log.filled > segment.bytes {
        match file.set_len(segment.bytes) {
            Ok(()) => log.filled = segment.bytes,
            Err(e) => warn!(
                path = %segment.path.display(),
                error = %e,
                "failed to truncate the zero-filled space of a write-ahead log segment; recovery will cut it"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer thread
// ---------------------------------------------------------------------------------------------

/// Waits for queued records and takes a group of them, or returns `None` once the log is
/// closed and the queue is empty.
///
/// A group stops before it would exceed `segment_bytes`, but always contains at least one
/// request, so that segments stay near their configured size.
fn next_group(shared: &Shared) -> Option<Vec<Pending>> {
    let mut queue = lock(&shared.queue);
    while queue.waiting.is_empty() {
        if queue.closed {
            return None;
        }
        queue = shared
            .queue_ready
            .wait(queue)
            .unwrap_or_else(PoisonError::into_inner);
    }

    let mut group = Vec::new();
    let mut group_bytes = 0u64;
    while let Some(pending) = queue.waiting.pop_front() {
        let bytes = group_bytes.saturating_add(pending.framed_bytes);
        if !group.is_empty() && bytes > shared.cfg.segment_bytes {
            queue.waiting.push_front(pending);
            break;
        }
        group_bytes = bytes;
        group.push(pending);
    }
    Some(group)
}

/// Writes a group to the active segment and syncs it. Returns the LSN of its first record.
fn write_group(shared: &Shared, log: &mut LogFiles, group: &[Pending]) -> Result<Lsn, WalError> {
    if let Some(failure) = shared.failure.get() {
        return Err(failure.to_error());
    }
    if log.active.is_none() {
        return Err(WalError::Closed);
    }

    let group_bytes: u64 = group.iter().map(|p| p.framed_bytes).sum();
    let record_count: u64 = group.iter().map(|p| p.records.len() as u64).sum();
    let first_lsn = log.next_lsn;
    let Some(next_lsn) = first_lsn.checked_add(record_count) else {
        return Err(WalError::Io(io::Error::other(
            "write-ahead log has used every LSN up to u64::MAX",
        )));
    };

    let active_bytes = log.segments.back().map_or(0, |s| s.bytes);
    if active_bytes > 0 && active_bytes.saturating_add(group_bytes) > shared.cfg.segment_bytes {
        rotate(shared, log)?;
    }

    let mut buffer = Vec::with_capacity(usize::try_from(group_bytes).unwrap_or(0));
    let payloads = group.iter().flat_map(|p| p.records.iter());
    for (lsn, payload) in (first_lsn..).zip(payloads) {
        encode_record(&mut buffer, lsn, payload);
    }

    let (Some(file), Some(segment)) = (log.active.as_mut(), log.segments.back_mut()) else {
        return Err(WalError::Closed);
    };
    let written = zero_fill_to(file, &mut log.filled, segment.bytes.saturating_add(group_bytes))
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&*file, &buffer, segment.bytes))
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        let error = io_error("write and sync segment", &segment.path, e);
        log.filled = segment.bytes;
        // Cut off whatever part of the group reached the file, so that the segment ends at
        // its last synced record and the LSNs of this group can be assigned again.
        if let Err(undo) = file
            .set_len(segment.bytes)
            .and_then(|()| file.sync_data())
        {
            return Err(shared.stop(Failure {
                kind: undo.kind(),
                message: format!(
                    "{error}; truncating {} back to {} bytes also failed: {undo}",
                    segment.path.display(),
                    segment.bytes
                ),
            }));
        }
        return Err(error);
    }

    segment.bytes += group_bytes;
    log.next_lsn = next_lsn;
    shared.live_bytes.fetch_add(group_bytes, Ordering::SeqCst);
    shared.last_lsn.store(next_lsn.saturating_sub(1), Ordering::SeqCst);
    shared.synced_groups.fetch_add(1, Ordering::Relaxed);
    Ok(first_lsn)
}

/// Releases the queue slots of a written group and resolves its waiters.
fn finish_group(shared: &Shared, group: Vec<Pending>, result: Result<Lsn, WalError>) {
    let record_count: usize = group.iter().map(|p| p.records.len()).sum();
    if result.is_err() {
        let group_bytes: u64 = group.iter().map(|p| p.framed_bytes).sum();
        shared.used_bytes.fetch_sub(group_bytes, Ordering::SeqCst);
    }
    // Free the slots before replying, so that a waiter appending again right away is not
    // rejected as Busy because of its own finished request.
    {
        let mut queue = lock(&shared.queue);
        queue.pending_records = queue.pending_records.saturating_sub(record_count);
    }

    match result {
        Ok(first_lsn) => {
            let mut lsn = first_lsn;
            for pending in group {
                let count = pending.records.len() as u64;
                // A dropped receiver means the request was cancelled; its records stay durable.
                let _ = pending.reply.send(Ok(lsn));
                lsn += count;
            }
        }
        Err(error) => {
            error!(
                dir = %shared.cfg.dir.display(),
                records = record_count,
                error = %error,
                "write-ahead log group write failed"
            );
            for pending in group {
                let _ = pending.reply.send(Err(error.duplicate()));
            }
        }
    }
}

fn run_writer(shared: Arc<Shared>) {
    debug!(dir = %shared.cfg.dir.display(), "write-ahead log writer started");
    while let Some(group) = next_group(&shared) {
        let result = {
            let mut log = lock(&shared.log);
            write_group(&shared, &mut log, &group)
        };
        finish_group(&shared, group, result);
    }
    info!(
        dir = %shared.cfg.dir.display(),
        last_lsn = shared.last_lsn.load(Ordering::SeqCst),
        "write-ahead log writer stopped"
    );
}

// ---------------------------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------------------------

/// Handle to an open write-ahead log. Clones share one log and one writer thread.
#[derive(Clone)]
pub struct Wal {
    handle: Arc<WalHandle>,
}

/// Owner of the shared state on the caller side. Dropping the last handle closes the queue,
/// so that the writer thread exits after writing what is queued, instead of waiting forever.
struct WalHandle {
    shared: Arc<Shared>,
}

impl Drop for WalHandle {
    fn drop(&mut self) {
        self.shared.signal_close();
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.handle.shared.cfg.dir)
            .field("last_lsn", &self.last_lsn())
            .field("live_bytes", &self.live_bytes())
            .finish()
    }
}

impl Wal {
    /// Opens the log in `cfg.dir`, creating the directory and the first segment if missing,
    /// and starts the writer thread.
    ///
    /// Returns the log together with every record still in it, in LSN order, for replay.
    /// Truncates a torn tail of the last segment (see the module documentation). Blocks on
    /// disk I/O, so async callers should run it in `spawn_blocking` or before serving.
    pub fn open(cfg: WalConfig) -> Result<(Wal, ReplayRecords), WalError> {
        let dir = cfg.dir.clone();
        let dir_existed = dir.is_dir();
        fs::create_dir_all(&dir).map_err(|e| io_error("create directory", &dir, e))?;
        if !dir_existed {
            if let Some(parent) = dir.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                sync_dir(parent)?;
            }
        }
        let lock_file = lock_dir(&dir)?;

        let Recovered {
            mut segments,
            records,
            next_lsn,
        } = recover(&dir)?;

        let active = match segments.back() {
            Some(last) => open_segment_for_writes(&last.path)?,
            None => {
                let path = segment_path(&dir, next_lsn);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| io_error("create segment", &path, e))?;
                sync_dir(&dir)?;
                segments.push_back(Segment {
                    first_lsn: next_lsn,
                    path,
                    bytes: 0,
                });
                file
            }
        };

        let live_bytes: u64 = segments.iter().map(|s| s.bytes).sum();
        // Recovery cut every segment to its records.
        let filled = segments.back().map_or(0, |s| s.bytes);
        info!(
            dir = %dir.display(),
            segments = segments.len(),
            records = records.len(),
            next_lsn,
            live_bytes,
            "opened write-ahead log"
        );

        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                pending_records: 0,
                closed: false,
            }),
            queue_ready: Condvar::new(),
            log: Mutex::new(LogFiles {
                dir: dir.clone(),
                segments,
                active: Some(active),
                filled,
                lock_file: Some(lock_file),
                next_lsn,
            }),
            failure: OnceLock::new(),
            used_bytes: AtomicU64::new(live_bytes),
            live_bytes: AtomicU64::new(live_bytes),
            last_lsn: AtomicU64::new(next_lsn.saturating_sub(1)),
            synced_groups: AtomicU64::new(0),
            writer: Mutex::new(None),
            cfg,
        });

        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("wal-writer".to_string())
            .spawn(move || run_writer(writer_shared))
            .map_err(|e| io_error("start writer thread for", &dir, e))?;
        *lock(&shared.writer) = Some(writer);

        let wal = Wal {
            handle: Arc::new(WalHandle { shared }),
        };
        Ok((wal, records))
    }

    /// Appends a record and resolves once it is written and synced. Returns its LSN.
    ///
    /// Fails fast, without waiting for the writer, with [`WalError::Full`],
    /// [`WalError::Busy`], [`WalError::Closed`] or [`WalError::RecordTooLarge`]. If the
    /// returned future is dropped early, the record is still written.
    pub async fn append(&self, record: Vec<u8>) -> Result<Lsn, WalError> {
        let receiver = self.enqueue(vec![record])?;
        receiver.await.unwrap_or(Err(WalError::Closed))
    }

    /// Appends several records in one group write, so that they become durable together.
    /// Returns their LSNs, which are consecutive. An empty batch returns no LSNs and writes
    /// nothing.
    pub async fn append_many(&self, records: Vec<Vec<u8>>) -> Result<Vec<Lsn>, WalError> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(Vec::new());
        }
        let receiver = self.enqueue(records)?;
        let first_lsn = receiver.await.unwrap_or(Err(WalError::Closed))?;
        Ok((first_lsn..first_lsn + count).collect())
    }

    /// Checks the bounds, reserves space and queues the records for the writer.
    fn enqueue(
        &self,
        records: Vec<Vec<u8>>,
    ) -> Result<oneshot::Receiver<Result<Lsn, WalError>>, WalError> {
        let shared = &self.handle.shared;
        let mut framed_bytes = 0u64;
        for record in &records {
            if record.len() > MAX_RECORD_BYTES {
                return Err(WalError::RecordTooLarge { len: record.len() });
            }
            framed_bytes = framed_bytes.saturating_add(framed_len(record.len()));
        }
        if framed_bytes > shared.cfg.max_bytes {
            return Err(WalError::Full);
        }

        let mut queue = lock(&shared.queue);
        if queue.closed {
            return Err(WalError::Closed);
        }
        if let Some(failure) = shared.failure.get() {
            return Err(failure.to_error());
        }
        if queue.pending_records > 0
            && queue.pending_records.saturating_add(records.len()) > shared.cfg.max_pending
        {
            return Err(WalError::Busy);
        }
        // Only this function adds to used_bytes, under the queue lock, and everything else
        // only subtracts, so the check and the add cannot race past max_bytes.
        let used_bytes = shared.used_bytes.load(Ordering::SeqCst);
        if used_bytes.saturating_add(framed_bytes) > shared.cfg.max_bytes {
            return Err(WalError::Full);
        }
        shared.used_bytes.fetch_add(framed_bytes, Ordering::SeqCst);
        queue.pending_records = queue.pending_records.saturating_add(records.len());

        let (reply, receiver) = oneshot::channel();
        queue.waiting.push_back(Pending {
            records,
            framed_bytes,
            reply,
        });
        drop(queue);
        shared.queue_ready.notify_one();
        Ok(receiver)
    }

    /// Declares every record with `lsn <= through` applied to the event store, and deletes the
    /// segment files that hold only such records.
    ///
    /// If `through` covers the whole active segment, a new active segment is started first,
    /// so the active segment is never deleted. `through` beyond [`Wal::last_lsn`] is treated
    /// as `last_lsn`. Blocks on file deletion and a directory sync, and waits for a group
    /// write under way, so async callers should run it in `spawn_blocking`.
    pub fn truncate_through(&self, through: Lsn) -> Result<(), WalError> {
        let shared = &self.handle.shared;
        let mut guard = lock(&shared.log);
        let log = &mut *guard;
        if let Some(failure) = shared.failure.get() {
            return Err(failure.to_error());
        }
        if log.active.is_none() {
            return Err(WalError::Closed);
        }

        let last_lsn = log.next_lsn.saturating_sub(1);
        let through = through.min(last_lsn);
        let active_bytes = log.segments.back().map_or(0, |s| s.bytes);
        if through == last_lsn && active_bytes > 0 {
            // Every record is durable here, because the writer holds this lock while it
            // writes, so the active segment is synced as rotate expects.
            rotate(shared, log)?;
        }

        let mut deleted_segments = 0usize;
        let mut deleted_bytes = 0u64;
        let mut result = Ok(());
        // A segment's last LSN is at most one below the next segment's first LSN (less after a
        // gap), so this never deletes a record beyond `through`.
        while log.segments.len() > 1
            && log
                .segments
                .get(1)
                .is_some_and(|next| next.first_lsn.saturating_sub(1) <= through)
        {
            let Some(segment) = log.segments.front() else {
                break;
            };
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    result = Err(io_error("delete segment", &segment.path, e));
                    break;
                }
            }
            let bytes = segment.bytes;
            log.segments.pop_front();
            shared.live_bytes.fetch_sub(bytes, Ordering::SeqCst);
            shared.used_bytes.fetch_sub(bytes, Ordering::SeqCst);
            deleted_segments += 1;
            deleted_bytes += bytes;
        }

        if deleted_segments > 0 {
            let synced = sync_dir(&log.dir);
            info!(
                dir = %log.dir.display(),
                through,
                deleted_segments,
                deleted_bytes,
                live_bytes = shared.live_bytes.load(Ordering::SeqCst),
                "truncated write-ahead log"
            );
            result = result.and(synced);
        }
        result
    }

    /// Returns the bytes of live segment files, headers included. Records still queued are not
    /// counted, although they do count against `max_bytes`.
    pub fn live_bytes(&self) -> u64 {
        self.handle.shared.live_bytes.load(Ordering::SeqCst)
    }

    /// Returns the LSN of the last durable record, or the LSN before the next one to assign
    /// when the log is empty (0 for a new log).
    pub fn last_lsn(&self) -> Lsn {
        self.handle.shared.last_lsn.load(Ordering::SeqCst)
    }

    /// Returns the number of group writes synced since open. Records appended since open
    /// divided by this is the mean group size.
    pub fn synced_groups(&self) -> u64 {
        self.handle.shared.synced_groups.load(Ordering::Relaxed)
    }

    /// Stops the writer after it has written and synced every queued record, then closes the
    /// files and releases the directory lock.
    ///
    /// Later appends and truncations fail with [`WalError::Closed`]. Blocks until the queue is
    /// flushed, so async callers should run it in `spawn_blocking`. Calling it again does
    /// nothing.
    pub fn close(&self) {
        let shared = &self.handle.shared;
        shared.signal_close();
        // Holding the lock while joining makes a concurrent second call wait for the flush too.
        let mut writer = lock(&shared.writer);
        if let Some(handle) = writer.take() {
            if handle.join().is_err() {
                error!(dir = %shared.cfg.dir.display(), "write-ahead log writer thread panicked");
            }
        }
        drop(writer);

        let mut log = lock(&shared.log);
        cut_zero_fill(&mut log);
        log.active = None;
        log.lock_file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1024 * 1024;

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.join("wal"),
            segment_bytes: 64 * MIB,
            max_bytes: 256 * MIB,
            max_pending: 4096,
        }
    }

    fn open(cfg: &WalConfig) -> (Wal, Vec<(Lsn, Vec<u8>)>) {
        match Wal::open(cfg.clone()) {
            Ok(opened) => opened,
            Err(e) => panic!("opening the log in {} failed: {e}", cfg.dir.display()),
        }
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read wal dir")
            .map(|entry| {
                entry
                    .expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".wal"))
            .collect();
        names.sort();
        names
    }

    fn payload(index: u64) -> Vec<u8> {
        format!("record {index}").into_bytes()
    }

    /// Appends `count` records one at a time, so each lands in its own group.
    async fn append_sequential(wal: &Wal, first_index: u64, count: u64) -> Vec<Lsn> {
        let mut lsns = Vec::new();
        for index in first_index..first_index + count {
            lsns.push(wal.append(payload(index)).await.expect("append"));
        }
        lsns
    }

    #[tokio::test]
    async fn reopen_returns_records_in_order() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, recovered) = open(&cfg);
        assert!(recovered.is_empty());
        assert_eq!(wal.last_lsn(), 0);

        let lsns = append_sequential(&wal, 1, 10).await;
        assert_eq!(lsns, (1..=10).collect::<Vec<Lsn>>());
        assert_eq!(wal.last_lsn(), 10);
        let expected_bytes: u64 = (1..=10).map(|i| framed_len(payload(i).len())).sum();
        assert_eq!(wal.live_bytes(), expected_bytes);
        wal.close();

        let (wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (1..=10).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
        assert_eq!(wal.last_lsn(), 10);
        assert_eq!(wal.live_bytes(), expected_bytes);
        assert_eq!(wal.append(payload(11)).await.expect("append"), 11);
        wal.close();

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered.len(), 11);
        assert_eq!(recovered[10], (11, payload(11)));
    }

    #[tokio::test]
    async fn segment_file_layout_matches_format() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);
        assert_eq!(wal.append(b"abc".to_vec()).await.expect("append"), 1);
        wal.close();

        let data = fs::read(cfg.dir.join("00000000000000000001.wal")).expect("read segment");
        let mut expected = Vec::new();
        expected.extend_from_slice(&3u32.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&1u64.to_le_bytes());
        hasher.update(b"abc");
        expected.extend_from_slice(&hasher.finalize().to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"abc");
        assert_eq!(data, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_distinct_lsns() {
        const TASKS: u64 = 64;
        const PER_TASK: u64 = 20;
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);

        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                let mut appended = Vec::new();
                for i in 0..PER_TASK {
                    let record = format!("task {task} record {i}").into_bytes();
                    let lsn = wal.append(record.clone()).await.expect("append");
                    appended.push((lsn, record));
                }
                appended
            }));
        }
        let mut appended = Vec::new();
        for task in tasks {
            appended.extend(task.await.expect("append task"));
        }
        appended.sort();

        let lsns: Vec<Lsn> = appended.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..=TASKS * PER_TASK).collect::<Vec<Lsn>>());
        assert_eq!(wal.last_lsn(), TASKS * PER_TASK);
        wal.close();

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered, appended);
    }

    #[tokio::test]
    async fn queued_records_share_one_sync() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);

        // Holding the file lock stalls the writer, so every record queues up behind it.
        let log = lock(&wal.handle.shared.log);
        let receivers: Vec<_> = (1..=10)
            .map(|i| wal.enqueue(vec![payload(i)]).expect("enqueue"))
            .collect();
        drop(log);

        let mut lsns = Vec::new();
        for receiver in receivers {
            lsns.push(receiver.await.expect("reply").expect("append"));
        }
        assert_eq!(lsns, (1..=10).collect::<Vec<Lsn>>());
        // The writer may have taken the first record before the lock stalled it.
        assert!(wal.synced_groups() <= 2, "{} groups", wal.synced_groups());
    }

    #[tokio::test]
    async fn append_many_returns_consecutive_lsns() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);

        assert_eq!(wal.append(payload(1)).await.expect("append"), 1);
        let batch = vec![payload(2), payload(3), payload(4)];
        assert_eq!(wal.append_many(batch).await.expect("append_many"), vec![2, 3, 4]);
        assert_eq!(wal.append_many(Vec::new()).await.expect("empty"), Vec::<Lsn>::new());
        assert_eq!(wal.last_lsn(), 4);
        wal.close();

        let (_wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (1..=4).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
    }

    #[tokio::test]
    async fn torn_tail_is_dropped_and_lsns_continue() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 5).await;
        wal.close();

        let segment = cfg.dir.join("00000000000000000001.wal");
        let full_len = fs::metadata(&segment).expect("stat").len();
        let last_record_len = framed_len(payload(5).len());
        let file = OpenOptions::new().write(true).open(&segment).expect("open");
        file.set_len(full_len - 3).expect("cut tail");
        drop(file);

        let (wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (1..=4).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
        assert_eq!(wal.last_lsn(), 4);
        assert_eq!(fs::metadata(&segment).expect("stat").len(), full_len - last_record_len);
        assert_eq!(wal.live_bytes(), full_len - last_record_len);

        assert_eq!(wal.append(b"after tear".to_vec()).await.expect("append"), 5);
        wal.close();

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered.len(), 5);
        assert_eq!(recovered[3], (4, payload(4)));
        assert_eq!(recovered[4], (5, b"after tear".to_vec()));
    }

    #[tokio::test]
    async fn trailing_garbage_is_dropped() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 3).await;
        wal.close();

        let segment = cfg.dir.join("00000000000000000001.wal");
        let clean_len = fs::metadata(&segment).expect("stat").len();
        let garbage_cases: [&[u8]; 3] = [
            // Shorter than a header.
            &[0xAB; 7],
            // A header whose length runs past the end of the file.
            &[0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 2],
            // A complete record of zeros, whose checksum cannot match.
            &[0; 40],
        ];
        for garbage in garbage_cases {
            let mut file = OpenOptions::new().append(true).open(&segment).expect("open");
            file.write_all(garbage).expect("append garbage");
            drop(file);

            let (wal, recovered) = open(&cfg);
            let expected: Vec<(Lsn, Vec<u8>)> = (1..=3).map(|i| (i, payload(i))).collect();
            assert_eq!(recovered, expected, "garbage of {} bytes", garbage.len());
            assert_eq!(fs::metadata(&segment).expect("stat").len(), clean_len);
            assert_eq!(wal.last_lsn(), 3);
            wal.close();
        }

        let (wal, _) = open(&cfg);
        assert_eq!(wal.append(payload(4)).await.expect("append"), 4);
    }

    #[tokio::test]
    async fn zero_fill_cut_on_close() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 3).await;
        let segment = cfg.dir.join("00000000000000000001.wal");
        let open_len = fs::metadata(&segment).expect("stat").len();
        assert_eq!(open_len, MIN_ZERO_FILL_BYTES, "the first extension is the smallest");
        let data = fs::read(&segment).expect("read");
        let live = wal.live_bytes() as usize;
        assert!(data[live..].iter().all(|&b| b == 0), "space after the records is zeros");

        // A record larger than the space left grows the file to a multiple of the extension.
        let big = vec![7u8; MIN_ZERO_FILL_BYTES as usize];
        assert_eq!(wal.append(big.clone()).await.expect("append"), 4);
        let grown_len = fs::metadata(&segment).expect("stat").len();
        assert!(grown_len >= wal.live_bytes(), "grown to {grown_len}");
        assert_eq!(grown_len % MIN_ZERO_FILL_BYTES, 0, "grown to {grown_len}");
        wal.close();
        assert_eq!(fs::metadata(&segment).expect("stat").len(), live as u64 + framed_len(big.len()));

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered.len(), 4);
        assert_eq!(recovered[3], (4, big));
    }

    #[tokio::test]
    async fn crash_zero_fill_is_free_space() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        cfg.segment_bytes = 2 * framed_len(payload(1).len());
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 5).await;
        wal.close();
        let files = segment_files(&cfg.dir);
        assert_eq!(files.len(), 3);

        // What a crash leaves: zeros after the records of a full segment and of the last one.
        for name in [&files[0], &files[2]] {
            let mut file = OpenOptions::new().append(true).open(cfg.dir.join(name)).expect("open");
            file.write_all(&[0; 5000]).expect("append zeros");
        }
        let lens: Vec<u64> = files.iter().map(|name| fs::metadata(cfg.dir.join(name)).expect("stat").len()).collect();

        let (wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (1..=5).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
        for (name, len) in files.iter().zip(&lens) {
            let cut = fs::metadata(cfg.dir.join(name)).expect("stat").len();
            assert!(cut < *len || name == &files[1], "{name} keeps its zeros: {cut} bytes");
        }
        assert_eq!(wal.append(payload(6)).await.expect("append"), 6);
        wal.close();
        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered.last(), Some(&(6, payload(6))));
    }

    #[tokio::test]
    async fn flipped_byte_in_last_record_is_detected() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let segment = cfg.dir.join("00000000000000000001.wal");
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 4).await;
        wal.close();
        let clean = fs::read(&segment).expect("read");
        let last_start = clean.len() - framed_len(payload(4).len()) as usize;

        // Payload byte, LSN byte and checksum byte of the last record.
        for flip_at in [clean.len() - 1, last_start + 8, last_start + 4] {
            let mut damaged = clean.clone();
            damaged[flip_at] ^= 0x01;
            fs::write(&segment, &damaged).expect("write damaged segment");

            let (wal, recovered) = open(&cfg);
            let expected: Vec<(Lsn, Vec<u8>)> = (1..=3).map(|i| (i, payload(i))).collect();
            assert_eq!(recovered, expected, "byte {flip_at} flipped");
            assert_eq!(wal.last_lsn(), 3);
            assert_eq!(fs::metadata(&segment).expect("stat").len(), last_start as u64);
            wal.close();
        }
    }

    #[tokio::test]
    async fn corrupt_non_last_segment_fails_open() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        let record_bytes = framed_len(payload(1).len());
        cfg.segment_bytes = 2 * record_bytes;
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 5).await;
        wal.close();
        assert_eq!(
            segment_files(&cfg.dir),
            vec![
                "00000000000000000001.wal",
                "00000000000000000003.wal",
                "00000000000000000005.wal",
            ]
        );

        let first = cfg.dir.join("00000000000000000001.wal");
        let mut data = fs::read(&first).expect("read");
        let second_record_payload = record_bytes as usize + RECORD_HEADER_BYTES as usize;
        data[second_record_payload] ^= 0x80;
        fs::write(&first, &data).expect("write damaged segment");

        match Wal::open(cfg.clone()) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, first);
                assert_eq!(offset, record_bytes);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn out_of_sequence_lsn_is_corrupt() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        fs::create_dir_all(&cfg.dir).expect("create dir");
        let mut data = Vec::new();
        encode_record(&mut data, 1, b"one");
        encode_record(&mut data, 3, b"three");
        let segment = cfg.dir.join("00000000000000000001.wal");
        fs::write(&segment, &data).expect("write segment");

        match Wal::open(cfg.clone()) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment);
                assert_eq!(offset, framed_len(3));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncate_deletes_whole_old_segments() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        let record_bytes = framed_len(payload(1).len());
        cfg.segment_bytes = 3 * record_bytes;
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 10).await;
        assert_eq!(
            segment_files(&cfg.dir),
            vec![
                "00000000000000000001.wal",
                "00000000000000000004.wal",
                "00000000000000000007.wal",
                "00000000000000000010.wal",
            ]
        );
        let payload_10_bytes = framed_len(payload(10).len());
        assert_eq!(wal.live_bytes(), 9 * record_bytes + payload_10_bytes);

        // Segment 4..=6 still holds LSN 6, so only the first segment goes.
        wal.truncate_through(5).expect("truncate");
        assert_eq!(
            segment_files(&cfg.dir),
            vec![
                "00000000000000000004.wal",
                "00000000000000000007.wal",
                "00000000000000000010.wal",
            ]
        );
        assert_eq!(wal.live_bytes(), 6 * record_bytes + payload_10_bytes);
        wal.close();

        let (wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (4..=10).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
        assert_eq!(wal.live_bytes(), 6 * record_bytes + payload_10_bytes);

        // Covering the active segment rotates to an empty one named by the next LSN.
        wal.truncate_through(10).expect("truncate all");
        assert_eq!(segment_files(&cfg.dir), vec!["00000000000000000011.wal"]);
        assert_eq!(wal.live_bytes(), 0);
        assert_eq!(wal.last_lsn(), 10);
        wal.close();

        let (wal, recovered) = open(&cfg);
        assert!(recovered.is_empty());
        assert_eq!(wal.last_lsn(), 10);
        assert_eq!(wal.append(payload(11)).await.expect("append"), 11);
        wal.close();

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered, vec![(11, payload(11))]);
    }

    #[tokio::test]
    async fn truncate_beyond_last_lsn_keeps_active_segment() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);
        append_sequential(&wal, 1, 2).await;

        wal.truncate_through(1_000).expect("truncate");
        assert_eq!(segment_files(&cfg.dir), vec!["00000000000000000003.wal"]);
        assert_eq!(wal.live_bytes(), 0);
        assert_eq!(wal.append(payload(3)).await.expect("append"), 3);

        // Truncating again while the active segment is empty deletes nothing.
        wal.truncate_through(0).expect("truncate nothing");
        assert_eq!(segment_files(&cfg.dir), vec!["00000000000000000003.wal"]);
    }

    #[tokio::test]
    async fn full_at_max_bytes() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        let record_bytes = framed_len(payload(1).len());
        cfg.max_bytes = 3 * record_bytes;
        let (wal, _) = open(&cfg);

        // Exactly reaching max_bytes is allowed; one byte more is not.
        assert_eq!(append_sequential(&wal, 1, 3).await, vec![1, 2, 3]);
        assert_eq!(wal.live_bytes(), cfg.max_bytes);
        assert!(matches!(wal.append(payload(4)).await, Err(WalError::Full)));
        assert!(matches!(wal.append(Vec::new()).await, Err(WalError::Full)));

        wal.truncate_through(3).expect("truncate");
        assert_eq!(wal.live_bytes(), 0);
        assert_eq!(wal.append(payload(4)).await.expect("append"), 4);

        // A record larger than max_bytes is rejected even though the log has room for others.
        let oversized = vec![7u8; (cfg.max_bytes - RECORD_HEADER_BYTES + 1) as usize];
        assert!(matches!(wal.append(oversized).await, Err(WalError::Full)));
        let batch = vec![payload(5), payload(6), payload(7)];
        assert!(matches!(wal.append_many(batch).await, Err(WalError::Full)));
        assert_eq!(wal.last_lsn(), 4);
        assert_eq!(wal.live_bytes(), record_bytes);
    }

    #[tokio::test]
    async fn full_counts_queued_records() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        let record_bytes = framed_len(payload(1).len());
        cfg.max_bytes = 2 * record_bytes;
        let (wal, _) = open(&cfg);

        let log = lock(&wal.handle.shared.log);
        let first = wal.enqueue(vec![payload(1)]).expect("enqueue");
        let second = wal.enqueue(vec![payload(2)]).expect("enqueue");
        assert!(matches!(wal.enqueue(vec![payload(3)]), Err(WalError::Full)));
        drop(log);

        assert_eq!(first.await.expect("reply").expect("append"), 1);
        assert_eq!(second.await.expect("reply").expect("append"), 2);
        assert_eq!(wal.live_bytes(), 2 * record_bytes);
    }

    #[tokio::test]
    async fn busy_at_max_pending() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        cfg.max_pending = 4;
        let (wal, _) = open(&cfg);

        let log = lock(&wal.handle.shared.log);
        let mut receivers: Vec<_> = (1..=4)
            .map(|i| wal.enqueue(vec![payload(i)]).expect("enqueue"))
            .collect();
        assert!(matches!(wal.enqueue(vec![payload(5)]), Err(WalError::Busy)));
        drop(log);

        let mut lsns = Vec::new();
        for receiver in receivers.drain(..) {
            lsns.push(receiver.await.expect("reply").expect("append"));
        }
        assert_eq!(lsns, vec![1, 2, 3, 4]);

        // Once the queue drains, a batch larger than max_pending is still accepted.
        let batch: Vec<Vec<u8>> = (5..=10).map(payload).collect();
        assert_eq!(
            wal.append_many(batch).await.expect("append_many"),
            (5..=10).collect::<Vec<Lsn>>()
        );
    }

    #[tokio::test]
    async fn empty_and_multi_mib_records_round_trip() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(temp.path());
        cfg.segment_bytes = MIB;
        let (wal, _) = open(&cfg);

        let large: Vec<u8> = (0..5 * MIB).map(|i| (i % 251) as u8).collect();
        let medium = vec![0x5Au8; (3 * MIB + 17) as usize];
        assert_eq!(wal.append(Vec::new()).await.expect("append empty"), 1);
        assert_eq!(wal.append(large.clone()).await.expect("append large"), 2);
        assert_eq!(wal.append(Vec::new()).await.expect("append empty"), 3);
        assert_eq!(wal.append(medium.clone()).await.expect("append medium"), 4);
        assert_eq!(
            wal.live_bytes(),
            4 * RECORD_HEADER_BYTES + large.len() as u64 + medium.len() as u64
        );
        wal.close();

        let (_wal, recovered) = open(&cfg);
        assert_eq!(recovered.len(), 4);
        assert_eq!(recovered[0], (1, Vec::new()));
        assert_eq!(recovered[1].0, 2);
        assert!(recovered[1].1 == large, "large record changed");
        assert_eq!(recovered[2], (3, Vec::new()));
        assert_eq!(recovered[3].0, 4);
        assert!(recovered[3].1 == medium, "medium record changed");
        // A segment already past segment_bytes takes no further record, so every record
        // after the first large one starts a new segment.
        assert_eq!(
            segment_files(&cfg.dir),
            vec![
                "00000000000000000001.wal",
                "00000000000000000002.wal",
                "00000000000000000003.wal",
                "00000000000000000004.wal",
            ]
        );
    }

    #[tokio::test]
    async fn close_flushes_queue_and_rejects_appends() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);

        let log = lock(&wal.handle.shared.log);
        let receivers: Vec<_> = (1..=5)
            .map(|i| wal.enqueue(vec![payload(i)]).expect("enqueue"))
            .collect();
        wal.handle.shared.signal_close();
        drop(log);
        wal.close();

        let mut lsns = Vec::new();
        for receiver in receivers {
            lsns.push(receiver.await.expect("reply").expect("append"));
        }
        assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
        assert!(matches!(wal.append(payload(6)).await, Err(WalError::Closed)));
        assert!(matches!(wal.truncate_through(5), Err(WalError::Closed)));
        wal.close();

        let (_wal, recovered) = open(&cfg);
        let expected: Vec<(Lsn, Vec<u8>)> = (1..=5).map(|i| (i, payload(i))).collect();
        assert_eq!(recovered, expected);
    }

    #[tokio::test]
    async fn second_open_of_same_dir_is_locked() {
        let temp = tempfile::tempdir().expect("tempdir");
        let cfg = config(temp.path());
        let (wal, _) = open(&cfg);

        match Wal::open(cfg.clone()) {
            Err(WalError::Locked { dir }) => assert_eq!(dir, cfg.dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        wal.close();
        let (_wal, recovered) = open(&cfg);
        assert!(recovered.is_empty());
    }

    #[test]
    fn wal_handle_is_send_sync_clone() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Wal>();
    }

    #[test]
    fn segment_names_parse_only_twenty_digits() {
        assert_eq!(parse_segment_name("00000000000000000001.wal"), Some(1));
        assert_eq!(parse_segment_name("18446744073709551615.wal"), Some(u64::MAX));
        assert_eq!(parse_segment_name("99999999999999999999.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000001.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000001.tmp"), None);
        assert_eq!(parse_segment_name("wal.lock"), None);
        assert_eq!(
            segment_path(Path::new("d"), 42),
            Path::new("d").join("00000000000000000042.wal")
        );
    }
}
