//! Behaviour of `/api/tracing/` traces and spans: the recorded harness
//! session, ordering and retries, bad input and organization scoping.

mod common;

use std::collections::HashMap;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

/// Every request of one recorded session of the Python agent harness (method,
/// path and body per line): an eval agent's run with llm and tool spans,
/// three checkpoints, and a run killed mid-span.
const FIXTURE: &str = include_str!("fixtures/harness-run.jsonl");

fn fixture_requests() -> Vec<Value> {
    FIXTURE.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Replays the tracing requests of the recorded harness session.
async fn replay_fixture(server: &TestServer, key: &str) {
    for request in fixture_requests() {
        let path = request["path"].as_str().unwrap();
        if !path.starts_with("/api/tracing/") {
            continue;
        }
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let body = serde_json::to_vec(&request["body"]).unwrap();
        let (status, response) = server.call_raw(method.clone(), path, Some(key), body).await;
        let expected = if method == Method::POST { StatusCode::CREATED } else { StatusCode::OK };
        assert_eq!(status, expected, "{method} {path}: {response}");
    }
}

fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let entry = target.entry(key.clone()).or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                merge_patch(entry.as_object_mut().unwrap(), inner);
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Normalizes a client timestamp as the server returns it: UTC, microseconds, `Z`.
fn utc(text: &str) -> String {
    let micros = bedrock_store::time::parse_timestamp(text).unwrap();
    bedrock_store::time::format_micros(micros)
}

/// What every span of the fixture must read back as, folded from the requests
/// in order: creates set fields, closes overwrite them unless empty, and
/// metadata merges as RFC 7396.
fn expected_spans() -> HashMap<String, Map<String, Value>> {
    let mut spans: HashMap<String, Map<String, Value>> = HashMap::new();
    for request in fixture_requests() {
        let path = request["path"].as_str().unwrap();
        let body = &request["body"];
        if path == "/api/tracing/spans/" {
            let mut span = Map::new();
            for field in ["id", "trace_id", "parent_id", "name", "span_type"] {
                span.insert(field.into(), body[field].clone());
            }
            span.insert("started_at".into(), json!(utc(body["started_at"].as_str().unwrap())));
            span.insert("input_text".into(), body["input_text"].clone());
            span.insert("output_text".into(), Value::Null);
            span.insert("error".into(), Value::Null);
            span.insert("ended_at".into(), Value::Null);
            span.insert("metadata".into(), body["metadata"].clone());
            spans.insert(body["id"].as_str().unwrap().to_string(), span);
        } else if let Some(rest) = path.strip_prefix("/api/tracing/spans/") {
            let id = rest.trim_end_matches('/');
            let span = spans.get_mut(id).expect("fixture closes spans it opened");
            span.insert("ended_at".into(), json!(utc(body["ended_at"].as_str().unwrap())));
            for field in ["input_text", "output_text", "error"] {
                if let Some(text) = body[field].as_str() {
                    if !text.is_empty() {
                        span.insert(field.into(), json!(text));
                    }
                }
            }
            let mut metadata = span["metadata"].as_object().cloned().unwrap_or_default();
            merge_patch(&mut metadata, body["metadata"].as_object().unwrap());
            span.insert("metadata".into(), Value::Object(metadata));
        }
    }
    spans
}

async fn check_fixture_state(server: &TestServer, key: &str) {
    let expected = expected_spans();
    assert_eq!(expected.len(), 14, "9 spans of the run, 3 checkpoints, 2 of the killed run");
    for (id, fields) in &expected {
        let (status, span) = server.get(&format!("/api/tracing/spans/{id}/"), key).await;
        assert_eq!(status, StatusCode::OK, "span {id}");
        for (field, value) in fields {
            assert_eq!(&span[field], value, "span {id} field {field}");
        }
        assert_eq!(span["flagged"], false);
    }

    // The main run: usage totals of its two llm spans.
    let (status, run) = server.get("/api/tracing/traces/996313aa-f1e4-4475-b46f-a08ee8493699/", key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["name"], "run_agent");
    assert_eq!(run["agent_id"], "00000000-0000-0000-0000-00005eed0001");
    assert_eq!(run["started_at"], "2026-12-04T20:05:15.624896Z");
    assert_eq!(run["ended_at"], "2026-12-04T20:05:15.682171Z");
    assert_eq!(run["duration_ms"], json!(57.275));
    assert_eq!(run["status"], "ok");
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["span_count"], 9);
    assert_eq!(run["input_tokens"], 3050);
    assert_eq!(run["output_tokens"], 63);
    assert_eq!(run["cached_tokens"], 1024);
    assert_eq!(run["reasoning_tokens"], 0);
    assert_eq!(run["total_tokens"], 3113);
    assert_eq!(run["cost_usd"], json!(0.00038));
    assert_eq!(run["checkpoint_pass_rate"], Value::Null);
    assert_eq!(run["metadata"]["usage"]["llm_calls"], 2);
    assert_eq!(run["metadata"]["run_id"], "run-0001");
    let spans = run["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 9);
    assert_eq!(spans[0]["name"], "run_agent", "spans are in start order");
    assert_eq!(spans[8]["name"], "sleep");

    // Checkpoints, each alone in its own trace, with naive timestamps read as UTC.
    for (trace_id, rate) in [
        ("74458e92-a281-49df-9d1b-62c53c3ec06d", 1.0),
        ("5c1c391c-b8ad-4a25-9852-cda49309e1e3", 0.0),
        ("e8382709-e05b-4fa8-a640-2394c36f9557", 1.0),
    ] {
        let (status, trace) = server.get(&format!("/api/tracing/traces/{trace_id}/"), key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(trace["checkpoint_pass_rate"], json!(rate), "{trace_id}");
        assert_eq!(trace["span_count"], 1);
        assert_eq!(trace["duration_ms"], json!(0.0));
        assert!(trace["started_at"].as_str().unwrap().ends_with(":00:00.000000Z"));
        assert_eq!(trace["metadata"]["scenario"], "group_lunch");
        assert_eq!(trace["spans"][0]["metadata"]["cumulative_cost_usd"], "0.00038");
    }

    // The killed run: the first close's error survives the second close.
    let (_, killed) = server.get("/api/tracing/traces/3e9a891b-c987-46c3-9a13-5631c68073f7/", key).await;
    assert_eq!(killed["status"], "error");
    assert_eq!(killed["error"], "SIGTERM received");
    assert_eq!(killed["ended_at"], "2026-12-04T20:05:15.709895Z");
    let (_, turn) = server.get("/api/tracing/spans/f42c2269-edc0-4935-bd1c-f14162a2868d/", key).await;
    assert_eq!(turn["error"], "SIGTERM received");
    assert_eq!(turn["ended_at"], "2026-12-04T20:05:15.708600Z");

    // Span filters.
    let (_, llm) = server.get("/api/tracing/spans/?trace=996313aa-f1e4-4475-b46f-a08ee8493699&span_type=llm", key).await;
    assert_eq!(llm["count"], 2);
    let (_, checkpoints) = server.get("/api/tracing/spans/?span_type=checkpoint", key).await;
    assert_eq!(checkpoints["count"], 3);
    let (_, traces) = server.get("/api/tracing/traces/", key).await;
    assert_eq!(traces["count"], 5);
    assert_eq!(traces["results"][0]["id"], "3e9a891b-c987-46c3-9a13-5631c68073f7", "newest first");
}

async fn harness_session_round_trips(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("harness@example.com").await;
    replay_fixture(&server, &key).await;
    check_fixture_state(&server, &key).await;
}

async fn harness_session_survives_flushes_and_restart(backend: Backend) {
    // Flush every few milliseconds and compact often, so reads merge segments and memory.
    let mut server = TestServer::start_with(backend, |s| {
        s.events.flush_interval_ms = 5;
        s.events.compact_segments = 3;
    })
    .await;
    let key = server.api_key("restart@example.com").await;
    replay_fixture(&server, &key).await;
    check_fixture_state(&server, &key).await;

    // A graceful restart on the same data directory reads the same state.
    let settings = {
        let mut s = common::test_settings(&server.data_dir, (backend != Backend::Sqlite).then(|| server.database_url.clone()));
        s.storage.clickhouse_url = server.clickhouse_url.clone();
        s.events.flush_interval_ms = 5;
        s
    };
    server.stop().await;
    let restarted = TestServer::start_settings(settings).await;
    check_fixture_state(&restarted, &key).await;
}

/// A small trace's four requests, in the order given.
async fn send_in_order(server: &TestServer, key: &str, order: &[usize], trace_id: &str) {
    let span_id = format!("{trace_id}-span");
    for &step in order {
        let (status, body) = match step {
            0 => {
                server
                    .post("/api/tracing/traces/", key, json!({"id": trace_id, "name": "run", "started_at": "2026-03-01T09:00:00+01:00",
                        "agent_id": "agent-e2e", "metadata": {"a": 1, "keep": "create"}}))
                    .await
            }
            1 => {
                server
                    .post("/api/tracing/spans/", key, json!({"id": span_id, "trace_id": trace_id, "parent_id": null, "name": "tool",
                        "span_type": "tool", "started_at": "2026-03-01T08:00:00.000001", "input_text": "in", "metadata": {"x": 1}}))
                    .await
            }
            2 => {
                server
                    .patch(&format!("/api/tracing/spans/{span_id}/"), key, json!({"ended_at": "2026-03-01T08:00:02.5Z",
                        "input_text": "", "output_text": "out", "error": "", "metadata": {"x": 2, "y": true}}))
                    .await
            }
            _ => {
                server
                    .patch(&format!("/api/tracing/traces/{trace_id}/"), key, json!({"ended_at": "2026-03-01T08:00:03Z",
                        "error": "", "metadata": {"a": null, "b": 2}}))
                    .await
            }
        };
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "step {step}: {status} {body}");
    }
}

fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}

async fn every_order_ends_in_the_same_state(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("order@example.com").await;
    let orders = permutations(&[0, 1, 2, 3]);
    assert_eq!(orders.len(), 24);
    for (n, order) in orders.iter().enumerate() {
        let trace_id = format!("perm-{n}");
        send_in_order(&server, &key, order, &trace_id).await;
        // Re-sent creates are upserts: send both creates again.
        send_in_order(&server, &key, &[0, 1], &trace_id).await;

        let (status, trace) = server.get(&format!("/api/tracing/traces/{trace_id}/"), &key).await;
        assert_eq!(status, StatusCode::OK, "order {order:?}");
        assert_eq!(trace["name"], "run", "order {order:?}");
        assert_eq!(trace["started_at"], "2026-03-01T08:00:00.000000Z", "order {order:?}");
        assert_eq!(trace["ended_at"], "2026-03-01T08:00:03.000000Z", "order {order:?}");
        assert_eq!(trace["metadata"], json!({"keep": "create", "b": 2}), "order {order:?}");
        assert_eq!(trace["status"], "ok");
        assert_eq!(trace["span_count"], 1, "order {order:?}");
        let span = &trace["spans"][0];
        assert_eq!(span["input_text"], "in", "order {order:?}");
        assert_eq!(span["output_text"], "out", "order {order:?}");
        assert_eq!(span["error"], Value::Null);
        assert_eq!(span["started_at"], "2026-03-01T08:00:00.000001Z");
        assert_eq!(span["ended_at"], "2026-03-01T08:00:02.500000Z", "order {order:?}");
        assert_eq!(span["duration_ms"], json!(2499.999));
        assert_eq!(span["metadata"], json!({"x": 2, "y": true}), "order {order:?}");
        assert_eq!(span["span_type"], "tool");
    }
    let (_, spans) = server.get("/api/tracing/spans/", &key).await;
    assert_eq!(spans["count"], 24, "re-sent creates must not duplicate spans");
}

async fn end_and_flag_endpoints(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("flags@example.com").await;
    let (status, trace) = server.post("/api/tracing/traces/", &key, json!({"name": "no id"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let trace_id = trace["id"].as_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 36, "a UUID is generated");
    assert_eq!(trace["status"], "running");

    let (status, span) = server.post("/api/tracing/spans/", &key, json!({"trace_id": trace_id, "name": "step"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(span["span_type"], "text");
    let span_id = span["id"].as_str().unwrap().to_string();

    let (status, flagged) = server.post(&format!("/api/tracing/spans/{span_id}/flag/"), &key, json!({"reason": "looks wrong"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flagged["flagged"], true);
    assert_eq!(flagged["flag_reason"], "looks wrong");
    assert!(flagged["flagged_at"].is_string());
    let (_, queue) = server.get("/api/tracing/spans/?flagged=true", &key).await;
    assert_eq!(queue["count"], 1);
    let (_, trace_now) = server.get(&format!("/api/tracing/traces/{trace_id}/"), &key).await;
    assert_eq!(trace_now["flagged_span_count"], 1);

    let (status, unflagged) = server.call(Method::POST, &format!("/api/tracing/spans/{span_id}/unflag/"), Some(&key), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unflagged["flagged"], false);
    assert_eq!(unflagged["flag_reason"], Value::Null);
    let (_, queue) = server.get("/api/tracing/spans/?flagged=true", &key).await;
    assert_eq!(queue["count"], 0);

    let (status, ended) = server.call(Method::POST, &format!("/api/tracing/spans/{span_id}/end/"), Some(&key), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ended["ended_at"].is_string());
    let (status, ended) = server
        .post(&format!("/api/tracing/traces/{trace_id}/end/"), &key, json!({"error": "boom", "ended_at": "2030-01-01T00:00:00Z"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["status"], "error");
    assert_eq!(ended["ended_at"], "2030-01-01T00:00:00.000000Z");

    let (status, _) = server.call(Method::POST, "/api/tracing/spans/unknown-span/flag/", Some(&key), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn bad_input_names_the_field(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.max_text_field_bytes = 1000).await;
    let key = server.api_key("bad@example.com").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"trace_id": "t", "name": "n", "span_type": "video"}), "span_type"),
        (json!({"trace_id": "t", "name": "n", "metadata": "not an object"}), "metadata"),
        (json!({"trace_id": "t", "name": "n", "metadata": [1, 2]}), "metadata"),
        (json!({"trace_id": "t", "name": "n", "started_at": "yesterday"}), "started_at"),
        (json!({"trace_id": "t", "name": "n", "started_at": 1700000000}), "started_at"),
        (json!({"trace_id": "t", "name": "n", "ended_at": "2026-02-30T00:00:00Z"}), "ended_at"),
        (json!({"id": "x".repeat(256), "trace_id": "t", "name": "n"}), "id"),
        (json!({"trace_id": "t".repeat(256), "name": "n"}), "trace_id"),
        (json!({"trace_id": "t", "name": "n", "output_text": "o".repeat(1001)}), "output_text"),
        (json!({"trace_id": "t", "name": "n", "input_text": 42}), "input_text"),
        (json!({"trace_id": "t"}), "name"),
        (json!({"name": "n"}), "trace_id"),
    ];
    for (body, field) in cases {
        let (status, response) = server.post("/api/tracing/spans/", &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(response.get(field).is_some(), "error should name {field}: {response}");
    }

    // NaN and Infinity, as Python's json.dumps writes them.
    let (status, response) = server
        .call_raw(Method::POST, "/api/tracing/spans/", Some(&key),
            br#"{"trace_id": "t", "name": "n", "metadata": {"score": NaN, "list": [1, -Infinity]}}"#.to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("metadata.score").is_some(), "{response}");
    assert!(response.get("metadata.list.1").is_some(), "{response}");

    // Invalid UTF-8 inside a string.
    let mut body = br#"{"trace_id": "t", "name": "n", "input_text": "caf"#.to_vec();
    body.extend_from_slice(&[0xC3, 0x28]);
    body.extend_from_slice(br#""}"#);
    let (status, response) = server.call_raw(Method::POST, "/api/tracing/spans/", Some(&key), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("input_text").is_some(), "{response}");

    // A number too large for JSON's double.
    let (status, response) = server
        .call_raw(Method::POST, "/api/tracing/traces/", Some(&key), br#"{"name": "n", "metadata": {"n": 1e400}}"#.to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("metadata.n").is_some(), "the 400 names the field: {response}");

    // Nothing half-written: none of the rejected spans exists.
    let (_, spans) = server.get("/api/tracing/spans/", &key).await;
    assert_eq!(spans["count"], 0);

    // Unknown filter values.
    let (status, response) = server.get("/api/tracing/spans/?span_type=video", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("span_type").is_some());
}

async fn other_organizations_traces_are_404(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key_a = server.api_key("org-a@example.com").await;
    let key_b = server.api_key("org-b@example.com").await;
    server.post("/api/tracing/traces/", &key_a, json!({"id": "shared-id", "name": "a's trace"})).await;
    server.post("/api/tracing/spans/", &key_a, json!({"id": "span-a", "trace_id": "shared-id", "name": "a's span"})).await;

    let (status, _) = server.get("/api/tracing/traces/shared-id/", &key_b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/api/tracing/spans/span-a/", &key_b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call(Method::POST, "/api/tracing/spans/span-a/flag/", Some(&key_b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = server.get("/api/tracing/traces/", &key_b).await;
    assert_eq!(listed["count"], 0);

    // B writing the same ids stores B's own objects and leaves A's alone.
    server.patch("/api/tracing/spans/span-a/", &key_b, json!({"output_text": "b's close"})).await;
    let (_, span_a) = server.get("/api/tracing/spans/span-a/", &key_a).await;
    assert_eq!(span_a["name"], "a's span");
    assert_eq!(span_a["output_text"], Value::Null);

    let (status, _) = server.call(Method::GET, "/api/tracing/traces/", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn full_buffer_answers_503_and_loses_nothing(backend: Backend) {
    let server = TestServer::start_with(backend, |s| s.events.buffer_max_bytes = 1).await;
    let key = server.api_key("busy@example.com").await;
    let mut accepted = Vec::new();
    let mut rejected = 0;
    // Whether a request meets a full buffer depends on when the flusher runs,
    // so waves of 64 concurrent requests are sent until one is pushed back.
    const MAX_WAVES: usize = 20;
    for wave in 0..MAX_WAVES {
        let mut handles = Vec::new();
        for n in 0..64 {
            let i = wave * 64 + n;
            let client = server.client.clone();
            let url = format!("{}/api/tracing/spans/", server.base);
            let key = key.clone();
            handles.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("Authorization", key)
                    .json(&json!({"id": format!("busy-{i}"), "trace_id": "busy", "name": "s"}))
                    .send()
                    .await
                    .unwrap();
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (i, response.status(), retry_after)
            }));
        }
        for handle in handles {
            let (i, status, retry_after) = handle.await.unwrap();
            match status {
                StatusCode::CREATED => accepted.push(i),
                StatusCode::SERVICE_UNAVAILABLE => {
                    rejected += 1;
                    assert!(retry_after.is_some(), "503 must carry Retry-After");
                }
                other => panic!("unexpected status {other}"),
            }
        }
        if rejected > 0 {
            break;
        }
    }
    assert!(rejected > 0, "a one-byte buffer must push back");
    assert!(!accepted.is_empty());
    for i in accepted {
        let (status, _) = server.get(&format!("/api/tracing/spans/busy-{i}/"), &key).await;
        assert_eq!(status, StatusCode::OK, "acknowledged span busy-{i} must exist");
    }
}

on_every_deployment!(
    harness_session_round_trips,
    harness_session_survives_flushes_and_restart,
    every_order_ends_in_the_same_state,
    end_and_flag_endpoints,
    bad_input_names_the_field,
    other_organizations_traces_are_404,
    full_buffer_answers_503_and_loses_nothing,
);
