//! The durable write path.
//!
//! 1. The caller has validated a [`Batch`] of writes.
//! 2. Back-pressure: when the in-memory buffer is over its bound, or the log
//!    is full or its queue long, the batch is refused with
//!    [`IngestError::Overloaded`] (HTTP 503 with `Retry-After`) and nothing
//!    is written.
//! 3. The batch is appended to the write-ahead log as one JSON record and
//!    fsynced together with concurrent batches (group commit).
//! 4. It is applied to the event store's buffer, so reads see it, and only
//!    then acknowledged.
//! 5. A background task flushes the buffer to a Parquet segment by size and
//!    age and truncates the log behind it; another compacts segments.
//!
//! Steps 3 and 4 run in a spawned task, so a client that disconnects cannot
//! leave a logged record unapplied. At start-up, log records that no segment
//! contains are replayed in log order before the server accepts requests.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bedrock_store::events::model::Batch;
use bedrock_store::events::EventStore;
use bedrock_store::wal::{Wal, WalConfig, WalError};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub wal_max_bytes: u64,
    pub wal_segment_bytes: u64,
    pub wal_max_pending: usize,
    pub buffer_max_bytes: usize,
    pub flush_events: usize,
    pub flush_interval: Duration,
    pub compact_segments: usize,
    /// ClickHouse to flush events to, in place of Parquet segments.
    pub clickhouse_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Buffers or the log are full; retry after the given seconds.
    #[error("ingest is overloaded: {reason}")]
    Overloaded { reason: &'static str, retry_after_secs: u32 },
    /// The log cannot be written; the batch was not acknowledged.
    #[error("write-ahead log failed: {0}")]
    Log(String),
}

pub struct Ingestor {
    wal: Wal,
    store: Arc<EventStore>,
    config: IngestConfig,
    wake_flusher: Notify,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Returns the id that names this data directory's write-ahead log in a
/// shared event store, created at the first start.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::create_dir_all(data_dir)?;
            let temporary = data_dir.join("instance-id.tmp");
            std::fs::write(&temporary, &id)?;
            std::fs::File::open(&temporary)?.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            Ok(id)
        }
    }
}

impl Ingestor {
    /// Opens the store and the log under `data_dir`, replays the log, and
    /// starts the background flusher.
    pub async fn open(data_dir: &Path, config: IngestConfig) -> anyhow::Result<Arc<Ingestor>> {
        let store = match &config.clickhouse_url {
            Some(url) => Arc::new(EventStore::open_clickhouse(url, &instance_id(data_dir)?).await?),
            None => Arc::new(EventStore::open(&data_dir.join("events"))?),
        };
        let wal_config = WalConfig {
            dir: data_dir.join("wal"),
            segment_bytes: config.wal_segment_bytes,
            max_bytes: config.wal_max_bytes,
            max_pending: config.wal_max_pending,
        };
        let (wal, records) = tokio::task::spawn_blocking(move || Wal::open(wal_config)).await??;

        let started = Instant::now();
        let mut replayed = 0usize;
        for (lsn, bytes) in &records {
            if store.contains(*lsn) {
                continue;
            }
            let batch: Batch = serde_json::from_slice(bytes)
                .map_err(|err| anyhow::anyhow!("write-ahead log record {lsn} is not a valid batch: {err}"))?;
            store.apply_owned(*lsn, batch);
            replayed += 1;
        }
        store.mark_applied_through(wal.last_lsn());
        tracing::info!(
            records = records.len(),
            replayed,
            millis = started.elapsed().as_millis() as u64,
            "write-ahead log replayed"
        );
        drop(records);

        let (stopping, _) = tokio::sync::watch::channel(false);
        let ingestor = Arc::new(Ingestor { wal, store, config, wake_flusher: Notify::new(), stopping });
        if replayed > 0 {
            ingestor.flush_once().await;
        }
        tokio::spawn(flush_loop(ingestor.clone()));
        Ok(ingestor)
    }

    pub fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    /// Makes a batch durable and visible; returns once both hold.
    pub async fn write(&self, batch: Batch) -> Result<(), IngestError> {
        if self.store.buffered_bytes() >= self.config.buffer_max_bytes {
            self.wake_flusher.notify_one();
            return Err(IngestError::Overloaded { reason: "the event buffer is full", retry_after_secs: 1 });
        }
        let record = batch.to_log_record().map_err(IngestError::Log)?;
        let wal = self.wal.clone();
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let lsn = wal.append(record).await?;
            store.apply_owned(lsn, batch);
            Ok::<_, WalError>(lsn)
        });
        let outcome = task.await.map_err(|err| IngestError::Log(err.to_string()))?;
        match outcome {
            Ok(_) => {
                if self.flush_due() {
                    self.wake_flusher.notify_one();
                }
                Ok(())
            }
            Err(WalError::Full) => {
                self.wake_flusher.notify_one();
                Err(IngestError::Overloaded { reason: "the write-ahead log is full", retry_after_secs: 2 })
            }
            Err(WalError::Busy) => {
                Err(IngestError::Overloaded { reason: "the write-ahead log queue is full", retry_after_secs: 1 })
            }
            Err(err) => {
                tracing::error!(error = %err, "write-ahead log append failed");
                Err(IngestError::Log(err.to_string()))
            }
        }
    }

    /// Reports whether the buffer is large enough to flush before the flush
    /// interval ends: by count, or by size, so that a flush never has to
    /// write (and hold twice) more than a quarter of the buffer bound.
    fn flush_due(&self) -> bool {
        let stats = self.store.stats();
        stats.buffer_writes >= self.config.flush_events || stats.buffer_bytes >= self.config.buffer_max_bytes / 4
    }

    /// Flushes the buffer and truncates the log; logs and swallows errors,
    /// which leave the data in the buffer and the log for the next attempt.
    pub async fn flush_once(&self) -> bool {
        match self.store.flush().await {
            Ok(Some(through)) => {
                // Truncation deletes files and syncs the directory: keep it off the async workers.
                let wal = self.wal.clone();
                match tokio::task::spawn_blocking(move || wal.truncate_through(through)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, through, "could not truncate the write-ahead log"),
                    Err(err) => tracing::warn!(error = %err, through, "write-ahead log truncation task failed"),
                }
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::error!(error = %err, "flush failed; retrying later");
                false
            }
        }
    }

    /// Flushes what is buffered and closes the log; called once at shutdown.
    pub async fn shutdown(&self) {
        let _ = self.stopping.send(true);
        self.flush_once().await;
        let wal = self.wal.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || wal.close()).await {
            tracing::warn!(error = %err, "closing the write-ahead log failed");
        }
        tracing::info!("ingest stopped");
    }
}

async fn flush_loop(ingestor: Arc<Ingestor>) {
    let mut stopping = ingestor.stopping.subscribe();
    let interval = ingestor.config.flush_interval;
    let compacting = Arc::new(AtomicBool::new(false));
    let mut next_flush = tokio::time::Instant::now() + interval;
    loop {
        let woken = tokio::select! {
            _ = tokio::time::sleep_until(next_flush) => false,
            _ = ingestor.wake_flusher.notified() => true,
            _ = stopping.changed() => return,
        };
        if *stopping.borrow() {
            return;
        }
        // Writes wake this loop while a flush is running too, and the wake-up
        // waits for the flush to end, when the buffer holds only what came
        // since. Flushing that at once made segments a tenth of the usual
        // size, which compaction could not merge with their neighbours.
        if woken && !ingestor.flush_due() {
            continue;
        }
        next_flush = tokio::time::Instant::now() + interval;
        if ingestor.flush_once().await && !compacting.swap(true, Ordering::AcqRel) {
            tokio::spawn(compact_while_due(ingestor.clone(), compacting.clone()));
        }
    }
}

/// Compacts until no run of segments is due, beside the flush loop: merging
/// large segments takes tens of seconds, and flushes that waited for it let
/// the buffer fill and writes get 503. Clears `compacting` when done.
async fn compact_while_due(ingestor: Arc<Ingestor>, compacting: Arc<AtomicBool>) {
    while !*ingestor.stopping.borrow() {
        match ingestor.store.compact(ingestor.config.compact_segments).await {
            Ok(true) => continue,
            Ok(false) => break,
            Err(err) => {
                tracing::error!(error = %err, "compaction failed; retrying after the next flush");
                break;
            }
        }
    }
    compacting.store(false, Ordering::Release);
}
