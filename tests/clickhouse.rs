//! The ClickHouse deployment under failure and at scale out: a ClickHouse
//! outage loses no acknowledged write and flushes each one exactly once, and
//! two instances sharing one Postgres and one ClickHouse serve one data set.
//!
//! The outage test starts a private ClickHouse server (the same
//! `clickhouse-server` program that scripts/test starts) so it can stop and
//! restart it without disturbing the other tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_clickhouse_database, fresh_postgres_database, test_settings, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A ClickHouse server of this test alone, on loopback ports, with its files
/// in a temporary directory. Killed when dropped.
struct PrivateClickHouse {
    dir: PathBuf,
    http_port: u16,
    tcp_port: u16,
    child: Option<Child>,
}

fn clickhouse_program() -> PathBuf {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("clickhouse-server is installed (scripts/test needs it too)")
}

impl PrivateClickHouse {
    fn start(dir: &Path) -> PrivateClickHouse {
        let mut server =
            PrivateClickHouse { dir: dir.to_path_buf(), http_port: common::free_port(), tcp_port: common::free_port(), child: None };
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>67108864</mark_cache_size>
</yandex>
"#,
                http = server.http_port,
                tcp = server.tcp_port
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn spawn(&mut self) {
        let child = Command::new(clickhouse_program())
            .arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ping = Command::new("curl").args(["-sS", "--max-time", "2", &format!("{}/ping", self.url())]).output();
            if ping.is_ok_and(|out| out.stdout.starts_with(b"Ok.")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the private ClickHouse did not answer /ping within 60 s; see {}/log", self.dir.display());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one query through the HTTP interface and returns its text output.
    fn query(&self, sql: &str) -> String {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("{}/", self.url()), "--data-binary", sql])
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn open_span(server: &TestServer, key: &str, id: &str) -> StatusCode {
    let body = json!({"id": id, "trace_id": "outage-trace", "name": "step", "span_type": "tool",
        "started_at": "2026-03-01T09:30:00Z", "metadata": {"id": id}});
    server.post("/api/tracing/spans/", key, body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_loses_nothing_and_flushes_once() {
    let temp = tempfile::tempdir().unwrap();
    let mut clickhouse = PrivateClickHouse::start(&temp.path().join("clickhouse"));
    let mut settings = test_settings(&temp.path().join("bedrock"), Some(fresh_postgres_database().await));
    settings.storage.clickhouse_url = Some(clickhouse.url());
    settings.events.flush_interval_ms = 50;
    settings.events.buffer_max_bytes = 64 * 1024;
    let server = TestServer::start_settings(settings).await;
    let key = server.api_key("outage@example.com").await;

    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let id = format!("before-{n}");
        assert_eq!(open_span(&server, &key, &id).await, StatusCode::CREATED);
        acknowledged.push(id);
    }
    let (status, _) = server.get("/api/tracing/spans/?trace=outage-trace", &key).await;
    assert_eq!(status, StatusCode::OK);

    // ClickHouse goes away: writes are still acknowledged into the log and
    // the buffer, until the buffer is full; reads of flushed data fail clearly.
    clickhouse.kill();
    let mut rejected = 0;
    for n in 0..2_000 {
        let id = format!("during-{n}");
        match open_span(&server, &key, &id).await {
            StatusCode::CREATED => acknowledged.push(id),
            StatusCode::SERVICE_UNAVAILABLE => {
                rejected += 1;
                if rejected > 20 {
                    break;
                }
            }
            other => panic!("unexpected status {other} while ClickHouse is down"),
        }
    }
    assert!(acknowledged.len() > 40, "writes kept being acknowledged: {}", acknowledged.len());
    assert!(rejected > 0, "a full buffer answers 503");
    let (status, body) = server.get("/api/tracing/spans/?trace=outage-trace", &key).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("ClickHouse"), "{body}");

    // ClickHouse returns: the buffer drains, and every acknowledged span is
    // stored once.
    clickhouse.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let (status, body) = server.get("/api/tracing/spans/?trace=outage-trace&page_size=1000", &key).await;
        if status == StatusCode::OK && open_span(&server, &key, "after").await == StatusCode::CREATED {
            break body;
        }
        assert!(Instant::now() < deadline, "no recovery within 60 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<&str> = listed["results"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    for id in &acknowledged {
        assert!(ids.contains(&id.as_str()), "acknowledged span {id} is missing");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: usize = clickhouse.query("SELECT count() FROM events WHERE kind = 'span'").parse().unwrap_or(0);
        if stored > acknowledged.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the buffer was not flushed: {stored} rows");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let duplicated = clickhouse.query("SELECT count() FROM (SELECT id FROM events WHERE kind = 'span' GROUP BY id HAVING count() > 1)");
    assert_eq!(duplicated, "0", "each span was written once, so it is stored once");
}

async fn count_spans(server: &TestServer, key: &str) -> Value {
    server.get("/api/tracing/spans/?trace=shared-trace", key).await.1["count"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_data_set() {
    let database_url = fresh_postgres_database().await;
    let clickhouse_url = fresh_clickhouse_database().await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &Path| {
        let mut settings = test_settings(dir, Some(database_url.clone()));
        settings.storage.clickhouse_url = Some(clickhouse_url.clone());
        settings.events.flush_interval_ms = 50;
        settings.auth_cache_seconds = 1;
        TestServer::start_settings(settings)
    };
    let first = start(first_dir.path()).await;
    let second = start(second_dir.path()).await;
    let (token, _) = first.sign_up("shared@example.com").await;
    let (_, created) = first.post("/api/organizations/api-keys/", &token, json!({"name": "k"})).await;
    let key = format!("Bearer {}", created["key"].as_str().unwrap());

    // A span opened through one instance and closed through the other ends merged.
    let (status, _) = first
        .post("/api/tracing/traces/", &key, json!({"id": "shared-trace", "name": "run", "started_at": "2026-03-01T09:00:00Z"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = first
        .post("/api/tracing/spans/", &key, json!({"id": "shared-span", "trace_id": "shared-trace", "name": "tool",
            "span_type": "tool", "started_at": "2026-03-01T09:00:01Z", "metadata": {"opened_by": "first"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = second
        .patch("/api/tracing/spans/shared-span/", &key, json!({"ended_at": "2026-03-01T09:00:03Z", "output_text": "done",
            "metadata": {"closed_by": "second"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let expected = json!({"opened_by": "first", "closed_by": "second"});
    let deadline = Instant::now() + Duration::from_secs(30);
    for server in [&first, &second] {
        loop {
            let (_, span) = server.get("/api/tracing/spans/shared-span/", &key).await;
            if span["metadata"] == expected && span["output_text"] == "done" && span["name"] == "tool" {
                assert_eq!(span["duration_ms"], json!(2000.0));
                break;
            }
            assert!(Instant::now() < deadline, "the span never merged: {span}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count_spans(server, &key).await, 1);
    }

    // A key revoked through one instance stops working on the other within
    // the credential cache time (here 1 s).
    let (_, keys) = first.get("/api/organizations/api-keys/", &token).await;
    let key_id = keys["results"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = second.get("/api/tracing/spans/shared-span/", &key).await;
    assert_eq!(status, StatusCode::OK, "the key is cached on the second instance");
    let (status, _) = first.delete(&format!("/api/organizations/api-keys/{key_id}/"), &token).await;
    assert!(status.is_success(), "{status}");
    let revoked_at = Instant::now();
    loop {
        let (status, _) = second.get("/api/tracing/spans/shared-span/", &key).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "the revoked key still works after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
