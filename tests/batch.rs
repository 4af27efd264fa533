//! Behaviour of `POST /api/tracing/ingest/`. The recorded harness session
//! sent as one batch reads back exactly as when sent request by request, and
//! invalid events are reported one by one without blocking the rest.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/harness-run.jsonl");

fn tracing_requests() -> Vec<Value> {
    FIXTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["path"].as_str().unwrap().starts_with("/api/tracing/"))
        .collect()
}

/// Converts one recorded request into its batch event.
fn as_event(request: &Value) -> Value {
    let path = request["path"].as_str().unwrap();
    let mut body = request["body"].clone();
    let kind = match (request["method"].as_str().unwrap(), path) {
        ("POST", "/api/tracing/traces/") => "trace.create",
        ("POST", "/api/tracing/spans/") => "span.create",
        ("PATCH", p) => {
            let id = p.trim_end_matches('/').rsplit('/').next().unwrap();
            body["id"] = json!(id);
            if p.starts_with("/api/tracing/traces/") { "trace.update" } else { "span.update" }
        }
        other => panic!("no batch event for {other:?}"),
    };
    json!({"type": kind, "body": body})
}

/// Drops the fields that hold the server's receive time.
fn without_server_times(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.remove("created_at");
        for (_, child) in map.iter_mut() {
            *child = without_server_times(child.take());
        }
    } else if let Value::Array(items) = &mut value {
        for item in items.iter_mut() {
            *item = without_server_times(item.take());
        }
    }
    value
}

async fn batch_equals_single_requests(backend: Backend) {
    let server = TestServer::start(backend).await;
    let single = server.api_key("batch-single@example.com").await;
    let batched = server.api_key("batch-batched@example.com").await;
    let requests = tracing_requests();

    for request in &requests {
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let (status, body) = server.call(method, request["path"].as_str().unwrap(), Some(&single), Some(request["body"].clone())).await;
        assert!(status.is_success(), "{body}");
    }
    let events: Vec<Value> = requests.iter().map(as_event).collect();
    let (status, body) = server.post("/api/tracing/ingest/", &batched, json!({ "events": events })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), requests.len());
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], index);
        let expected = if requests[index]["method"] == "POST" { 201 } else { 200 };
        assert_eq!(result["status"], expected, "{result}");
    }

    let (_, traces) = server.get("/api/tracing/traces/?page_size=100", &single).await;
    let ids: Vec<&str> = traces["results"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5);
    for id in ids {
        let (_, one) = server.get(&format!("/api/tracing/traces/{id}/"), &single).await;
        let (status, other) = server.get(&format!("/api/tracing/traces/{id}/"), &batched).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(without_server_times(other), without_server_times(one), "trace {id}");
    }
    let (_, usage_single) = server.get("/api/cloud/usage/summary/", &single).await;
    let (_, usage_batched) = server.get("/api/cloud/usage/summary/", &batched).await;
    assert_eq!(usage_batched, usage_single);
    assert_eq!(usage_batched["totals"]["record_count"], 2);
}

async fn invalid_events_are_reported_each(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("batch-invalid@example.com").await;
    let events = json!([
        {"type": "trace.create", "body": {"id": "t1", "name": "run"}},
        {"type": "span.create", "body": {"id": "s1", "trace_id": "t1", "name": "step", "span_type": "video"}},
        {"type": "span.update", "body": {"ended_at": "2026-03-01T00:00:00Z"}},
        {"type": "trace.delete", "body": {"id": "t1"}},
        {"type": "usage.create", "body": {"id": "u1", "model": "gpt-4o", "input_tokens": 100}},
        {"type": "usage.create", "body": {"input_tokens": -1}},
        "not an object",
        {"type": "trace.update", "body": {"id": "t1", "ended_at": "2026-03-01T00:00:01Z", "metadata": {"done": true}}},
        {"type": "span.create", "body": []},
    ]);
    let (status, body) = server.post("/api/tracing/ingest/", &key, json!({ "events": events })).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<i64> = results.iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [201, 400, 400, 400, 201, 400, 400, 200, 400]);
    assert!(results[1]["errors"]["span_type"].is_array(), "{}", results[1]);
    assert!(results[2]["errors"]["id"].is_array(), "{}", results[2]);
    assert!(results[3]["errors"]["type"].is_array(), "{}", results[3]);
    assert!(results[5]["errors"]["input_tokens"].is_array(), "{}", results[5]);
    assert!(results[6]["errors"]["non_field_errors"].is_array(), "{}", results[6]);
    assert!(results[8]["errors"]["body"].is_array(), "{}", results[8]);
    assert_eq!(results[0]["id"], "t1");

    // The valid events were stored, in order; the invalid ones were not.
    let (_, trace) = server.get("/api/tracing/traces/t1/", &key).await;
    assert_eq!(trace["status"], "ok");
    assert_eq!(trace["metadata"]["done"], true);
    assert_eq!(trace["span_count"], 0);
    let (_, usage) = server.get("/api/cloud/usage/u1/", &key).await;
    assert_eq!(usage["cost_source"], "computed");
    let (_, list) = server.get("/api/cloud/usage/", &key).await;
    assert_eq!(list["count"], 1);
}

async fn batch_limits_name_the_field(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.batch_max_events = 10).await;
    let key = server.api_key("batch-limits@example.com").await;
    let event = json!({"type": "trace.create", "body": {"name": "n"}});
    for (body, what) in [
        (json!({}), "no events"),
        (json!({"events": []}), "empty events"),
        (json!({"events": {"type": "trace.create"}}), "events not a list"),
        (json!({"events": vec![event.clone(); 11]}), "too many events"),
    ] {
        let (status, response) = server.post("/api/tracing/ingest/", &key, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {response}");
        assert!(response["events"].is_array(), "{what}: {response}");
    }
    let (status, body) = server.post("/api/tracing/ingest/", &key, json!({"events": vec![event; 10]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, traces) = server.get("/api/tracing/traces/", &key).await;
    assert_eq!(traces["count"], 10, "creates without an id each make a trace");
    let (status, _) = server.post("/api/tracing/ingest/", "Bearer nope", json!({"events": []})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_every_deployment!(batch_equals_single_requests, invalid_events_are_reported_each, batch_limits_name_the_field);
