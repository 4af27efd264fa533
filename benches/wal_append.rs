//! Append throughput of the write-ahead log (`bedrock_store::wal`).
//!
//! `64_appenders_1KiB` runs 64 tasks that each append 1 KiB records back to back, which is the
//! ingest hot path under load: group commit lets them share each `fdatasync`. One iteration is
//! one record from each task, so criterion reports records per second. `1_appender_1KiB` appends
//! one record at a time, so it measures the latency of one write plus one sync.
//!
//! The log lives in a temporary directory under `CARGO_TARGET_TMPDIR`, which is on the same
//! file system as `target/`, because a tmpfs `/tmp` would make every sync free. Run with
//! `cargo bench --bench wal_append`.

use std::time::{Duration, Instant};

use bedrock_store::wal::{Wal, WalConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const APPENDERS: u64 = 64;
const RECORD_BYTES: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// Appends `rounds` records from each of `appenders` concurrent tasks and returns the time
/// until the last one is durable.
async fn append_concurrently(wal: &Wal, appenders: u64, rounds: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                wal.append(vec![0xA5; RECORD_BYTES])
                    .await
                    .expect("append to the write-ahead log");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender task");
    }
    start.elapsed()
}

fn wal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let temp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("create temp dir");
    let (wal, _) = Wal::open(WalConfig {
        dir: temp.path().join("wal"),
        segment_bytes: 64 * MIB,
        max_bytes: 4096 * MIB,
        max_pending: 4096,
    })
    .expect("open write-ahead log");

    let mut group = c.benchmark_group("wal_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));

    for (appenders, name) in [(APPENDERS, "64_appenders_1KiB"), (1, "1_appender_1KiB")] {
        group.throughput(Throughput::Elements(appenders));
        group.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                let elapsed = runtime.block_on(append_concurrently(&wal, appenders, rounds));
                // Keep the log from reaching max_bytes over many samples.
                wal.truncate_through(wal.last_lsn())
                    .expect("truncate the write-ahead log");
                elapsed
            });
        });
    }
    group.finish();

    eprintln!(
        "wal_append: {} records in {} synced groups",
        wal.last_lsn(),
        wal.synced_groups()
    );
    wal.close();
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
