//! The data generator: what it reports loading is what a server started on
//! its stores then lists, counts and summarizes, and the same seed gives the
//! same data.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fresh_clickhouse_database, fresh_postgres_database, test_settings, Backend, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

const TRACES: u64 = 300;
const TURNS: u64 = 2;
const AGENTS: u64 = 12;
const REVIEWS: u64 = 90;

async fn run_datagen(data_dir: &Path, database_url: Option<String>, clickhouse_url: Option<String>, email: &str) -> Value {
    let mut args: Vec<String> = [
        "--data-dir", data_dir.to_str().unwrap(), "--traces", &TRACES.to_string(), "--turns", &TURNS.to_string(),
        "--agents", &AGENTS.to_string(), "--reviews", &REVIEWS.to_string(), "--seed", "7", "--end",
        "2026-11-01T00:00:00Z", "--rows-per-segment", "1000", "--email", email,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = database_url {
        args.extend(["--database-url".to_string(), url]);
    }
    if let Some(url) = clickhouse_url {
        args.extend(["--clickhouse-url".to_string(), url]);
    }
    let output = tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_bedrock-datagen")).args(&args).output())
        .await
        .unwrap()
        .expect("the data generator runs");
    assert!(output.status.success(), "datagen failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the report is JSON")
}

async fn count(server: &TestServer, key: &str, path: &str) -> u64 {
    let (status, page) = server.get(path, key).await;
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    page["count"].as_u64().unwrap()
}

async fn loaded_data_reads_back(backend: Backend) {
    let temp = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres | Backend::ClickHouse => Some(fresh_postgres_database().await),
    };
    let clickhouse_url = match backend {
        Backend::ClickHouse => Some(fresh_clickhouse_database().await),
        _ => None,
    };
    let report = run_datagen(temp.path(), database_url.clone(), clickhouse_url.clone(), "datagen-a@example.com").await;
    let spans = TRACES * (1 + 3 * TURNS);
    assert_eq!(report["traces"], TRACES);
    assert_eq!(report["spans"], spans);
    assert_eq!(report["usage_records"], TRACES * TURNS);
    let expected_files = if backend == Backend::ClickHouse { 1 } else { (spans + TRACES).div_ceil(1000) };
    assert_eq!(report["segments"], expected_files, "segment files, or ClickHouse inserts: {report}");

    let mut settings = test_settings(temp.path(), database_url.clone());
    settings.storage.clickhouse_url = clickhouse_url;
    let server = TestServer::start_settings(settings).await;
    let key = format!("Bearer {}", report["api_key"].as_str().unwrap());
    assert_eq!(count(&server, &key, "/api/tracing/traces/?page_size=1").await, TRACES);
    assert_eq!(count(&server, &key, "/api/tracing/spans/?page_size=1").await, spans);
    assert_eq!(count(&server, &key, "/api/cloud/agents/?page_size=1").await, AGENTS);
    assert_eq!(count(&server, &key, "/api/cloud/agents/?purpose=eval&page_size=1").await, AGENTS / 4);
    assert_eq!(count(&server, &key, "/api/tracing/evals/").await, 1);

    let (_, usage) = server.get("/api/cloud/usage/summary/", &key).await;
    assert_eq!(usage["totals"]["record_count"], TRACES * TURNS);
    assert!(usage["totals"]["unpriced_count"].as_u64().unwrap() > 0, "one model has no price: {usage}");
    let (_, reviews) = server.get("/api/tracing/reviews/summary/", &key).await;
    assert_eq!(reviews["totals"]["review_count"], REVIEWS);
    assert_eq!(reviews["totals"]["scored_count"], REVIEWS);

    // Eval agents end each run with a checkpoint, so checkpoints = their traces.
    let (_, checkpoints) = server.get("/api/tracing/checkpoints/summary/", &key).await;
    let eval_traces = count(&server, &key, "/api/tracing/spans/?span_type=checkpoint&page_size=1").await;
    assert!(eval_traces > 0);
    assert_eq!(checkpoints["totals"]["total"], eval_traces);
    let (_, listed) = server.get("/api/tracing/traces/list/?agent=agent-4&page_size=1", &key).await;
    assert_eq!(listed["results"][0]["span_count"], 1 + 3 * TURNS);
    assert!(listed["results"][0]["started_at"].as_str().unwrap() < "2026-11-01T00:00:00Z");
    let (_, checkpoint_of_agent) = server.get("/api/tracing/checkpoints/summary/?agent=agent-4", &key).await;
    assert_eq!(checkpoint_of_agent["totals"]["total"], listed["count"], "agent-4 is an eval agent");

    // The same seed in a second organization gives the same data.
    let first = server.get("/api/tracing/traces/list/?sort=cost_usd&page_size=5", &key).await.1;
    let mut server = server;
    server.stop().await;
    let second_dir = tempfile::tempdir().unwrap();
    let second_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres | Backend::ClickHouse => Some(fresh_postgres_database().await),
    };
    let second_clickhouse = match backend {
        Backend::ClickHouse => Some(fresh_clickhouse_database().await),
        _ => None,
    };
    let again = run_datagen(second_dir.path(), second_url.clone(), second_clickhouse.clone(), "datagen-b@example.com").await;
    let mut settings = test_settings(second_dir.path(), second_url);
    settings.storage.clickhouse_url = second_clickhouse;
    let server = TestServer::start_settings(settings).await;
    let key = format!("Bearer {}", again["api_key"].as_str().unwrap());
    let second = server.get("/api/tracing/traces/list/?sort=cost_usd&page_size=5", &key).await.1;
    let strip = |page: &Value| -> Vec<Value> {
        page["results"].as_array().unwrap().iter().map(|t| {
            let mut t = t.clone();
            t.as_object_mut().unwrap().remove("created_at");
            t
        }).collect()
    };
    assert_eq!(strip(&first), strip(&second));
}

on_every_deployment!(loaded_data_reads_back);
