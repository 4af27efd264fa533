//! The load generator's own accounting: the spans it reports as stored are
//! exactly the spans the server stores, sending one request per write,
//! sending batches, and exporting OTLP.

mod common;

use std::process::Command;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

async fn run_loadgen(server: &TestServer, key: &str, batch_size: usize, otlp: bool) -> Value {
    let mut args: Vec<String> = [
        "--url", &server.base, "--key", key, "--clients", "4", "--spans", "300", "--duration-seconds", "120",
        "--text-bytes", "64", "--json", "--batch-size", &batch_size.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if otlp {
        args.push("--otlp".to_string());
    }
    let output = tokio::task::spawn_blocking(move || Command::new(env!("CARGO_BIN_EXE_bedrock-loadgen")).args(&args).output())
        .await
        .unwrap()
        .expect("the load generator runs");
    assert!(output.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the report is JSON")
}

async fn stored_spans(server: &TestServer, key: &str) -> u64 {
    let (status, page) = server.get("/api/tracing/spans/?page_size=1", key).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["count"].as_u64().unwrap()
}

async fn reported_spans_equal_stored_spans(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (batch_size, otlp) in [(0, false), (40, false), (100, true)] {
        let key = server.api_key(&format!("loadgen-{batch_size}@example.com")).await;
        let report = run_loadgen(&server, &key, batch_size, otlp).await;
        assert_eq!(report["errors"], 0, "{report}");
        let stored = report["spans_stored"].as_u64().unwrap();
        assert!(stored >= 300, "the run stops only after 300 spans: {report}");
        assert_eq!(stored_spans(&server, &key).await, stored, "batch size {batch_size}: {report}");
        let closed = report["spans_acknowledged"].as_u64().unwrap();
        assert!(closed <= stored, "{report}");
        assert!(closed > 0, "{report}");
    }
}

on_every_deployment!(reported_spans_equal_stored_spans);
