//! Crash safety of the real binary: every write acknowledged before a
//! `kill -9` is there after a restart, on SQLite and on Postgres.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Backend;
use reqwest::StatusCode;
use serde_json::json;

/// A server process that is killed when the test ends, even on a failed assertion.
struct ServerProcess(Child);

impl ServerProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_binary(data_dir: &Path, database_url: Option<&str>, clickhouse_url: Option<&str>, port: u16) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bedrock"));
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--flush-interval-ms")
        .arg("200")
        .arg("--compact-segments")
        .arg("4")
        .env("BEDROCK_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("CLICKHOUSE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        command.arg("--database-url").arg(url);
    }
    if let Some(url) = clickhouse_url {
        command.arg("--clickhouse-url").arg(url);
    }
    ServerProcess(command.spawn().expect("the bedrock binary starts"))
}

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres | Backend::ClickHouse => Some(common::fresh_postgres_database().await),
    };
    let clickhouse_url = match backend {
        Backend::ClickHouse => Some(common::fresh_clickhouse_database().await),
        _ => None,
    };
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut child = start_binary(temp.path(), database_url.as_deref(), clickhouse_url.as_deref(), port);
    common::wait_ready(&client, &base).await;

    let (_, session) = {
        let response = client
            .post(format!("{base}/api/organizations/auth/signup/"))
            .json(&json!({"email": "crash@example.com", "password": "crash test password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        ((), response.json::<serde_json::Value>().await.unwrap())
    };
    let token = format!("Token {}", session["token"].as_str().unwrap());
    let key: serde_json::Value = client
        .post(format!("{base}/api/organizations/api-keys/"))
        .header("Authorization", &token)
        .json(&json!({"name": "crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = format!("Bearer {}", key["key"].as_str().unwrap());

    // 32 clients open and close spans until the server dies under them.
    let acknowledged: Arc<Mutex<Vec<(String, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..32 {
        let (client, base, key, acknowledged, stop) =
            (client.clone(), base.clone(), key.clone(), acknowledged.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for n in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{worker}-s{n}");
                let open = client
                    .post(format!("{base}/api/tracing/spans/"))
                    .header("Authorization", &key)
                    .json(&json!({"id": id, "trace_id": format!("trace-{worker}"), "name": "step", "span_type": "tool",
                        "started_at": "2026-03-01T09:30:00.123456+00:00", "metadata": {"n": n}}))
                    .send()
                    .await;
                match open {
                    Ok(response) if response.status() == StatusCode::CREATED => {
                        acknowledged.lock().unwrap().push((id.clone(), false))
                    }
                    _ => break,
                }
                let close = client
                    .patch(format!("{base}/api/tracing/spans/{id}/"))
                    .header("Authorization", &key)
                    .json(&json!({"ended_at": "2026-03-01T09:30:01+00:00", "output_text": "done", "error": "", "metadata": {"closed": true}}))
                    .send()
                    .await;
                match close {
                    Ok(response) if response.status() == StatusCode::OK => {
                        acknowledged.lock().unwrap().push((id, true))
                    }
                    _ => break,
                }
            }
        }));
    }

    // Let segments be flushed and compacted while writes continue, then kill.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Child::kill sends SIGKILL.
    child.kill();
    stop.store(true, Ordering::Relaxed);
    for handle in clients {
        handle.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "only {} writes were acknowledged before the kill", acknowledged.len());

    let _restarted = start_binary(temp.path(), database_url.as_deref(), clickhouse_url.as_deref(), port);
    common::wait_ready(&client, &base).await;
    let mut checked = 0;
    for (id, closed) in &acknowledged {
        let response = client
            .get(format!("{base}/api/tracing/spans/{id}/"))
            .header("Authorization", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "acknowledged span {id} is missing after kill -9");
        let span: serde_json::Value = response.json().await.unwrap();
        assert_eq!(span["name"], "step");
        assert_eq!(span["started_at"], "2026-03-01T09:30:00.123456Z");
        if *closed {
            assert_eq!(span["output_text"], "done", "acknowledged close of {id} is missing");
            assert_eq!(span["metadata"]["closed"], true);
        }
        checked += 1;
    }
    assert_eq!(checked, acknowledged.len());
}

on_every_deployment!(acknowledged_writes_survive_kill_9);
