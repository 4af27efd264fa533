//! Behaviour of `GET /api/tracing/traces/list/`: every filter against a
//! generated data set, every sort, cursors under concurrent writes, bad
//! input, and the CSV and Arrow responses.

mod common;

use std::collections::HashSet;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::json;

/// One generated trace, as the test expects the server to see it.
#[derive(Debug, Clone)]
struct Expected {
    id: String,
    agent: String,
    name: String,
    started_at: i64,
    duration_ms: Option<i64>,
    error: bool,
    span_types: Vec<&'static str>,
    cost_nanos: i64,
    region: String,
}

fn stamp(seconds: i64) -> String {
    let at = chrono::DateTime::from_timestamp(1_772_000_000 + seconds, 0).unwrap();
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Creates 40 traces: three agents, names with LIKE wildcards, shared start
/// times, some running, some with errors, llm spans with costs, tool spans.
async fn generate(server: &TestServer, key: &str) -> Vec<Expected> {
    let mut expected = Vec::new();
    for i in 0..40i64 {
        let id = format!("trace-{i:02}");
        let agent = ["alpha", "beta", "gamma"][(i % 3) as usize].to_string();
        let name = ["plan_100%", "plan_1000", "search"][(i % 3) as usize].to_string();
        let started = (i / 4) * 10; // four traces share each start time
        let region = ["eu", "us"][(i % 2) as usize].to_string();
        let (status, body) = server
            .post("/api/tracing/traces/", key, json!({"id": id, "name": name, "agent_id": agent, "started_at": stamp(started),
                "metadata": {"region": region, "attempt": i % 4}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let mut span_types = Vec::new();
        let mut cost_nanos = 0;
        if i % 2 == 0 {
            let cost = format!("0.{:03}", i + 1);
            cost_nanos = (i + 1) * 1_000_000;
            server
                .post("/api/tracing/spans/", key, json!({"id": format!("{id}-llm"), "trace_id": id, "name": "call", "span_type": "llm",
                    "started_at": stamp(started), "metadata": {"llm_cost": {"model": "m", "input_tokens": 10, "output_tokens": 1, "total_cost_usd": cost}}}))
                .await;
            span_types.push("llm");
        }
        if i % 5 == 0 {
            server
                .post("/api/tracing/spans/", key, json!({"id": format!("{id}-tool"), "trace_id": id, "name": "fetch", "span_type": "tool",
                    "started_at": stamp(started), "error": if i % 10 == 0 { "timeout" } else { "" }}))
                .await;
            span_types.push("tool");
        }
        let duration_ms = if i % 7 == 6 {
            None // still running
        } else {
            let duration = (i * 37) % 50 * 100;
            let error = if i % 9 == 0 { "boom" } else { "" };
            let (status, body) = server
                .patch(&format!("/api/tracing/traces/{id}/"), key, json!({"ended_at": stamp_ms(started, duration), "error": error}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            Some(duration)
        };
        let error = (i % 9 == 0 && duration_ms.is_some()) || i % 10 == 0;
        expected.push(Expected { id, agent, name, started_at: started, duration_ms, error, span_types, cost_nanos, region });
    }
    expected
}

fn stamp_ms(seconds: i64, plus_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis((1_772_000_000 + seconds) * 1000 + plus_ms).unwrap();
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

async fn ids(server: &TestServer, key: &str, query: &str) -> Vec<String> {
    let (status, body) = server.get(&format!("/api/tracing/traces/list/?page_size=1000&{query}"), key).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(body["count"], results.len(), "{query}");
    results.iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn expect(data: &[Expected], keep: impl Fn(&Expected) -> bool) -> Vec<String> {
    sorted(data.iter().filter(|t| keep(t)).map(|t| t.id.clone()).collect())
}

async fn filters_match_the_data(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("trace-list@example.com").await;
    let data = generate(&server, &key).await;
    let other = server.api_key("trace-list-other@example.com").await;
    assert_eq!(ids(&server, &other, "").await.len(), 0, "another organization sees nothing");

    let cases: Vec<(&str, Vec<String>)> = vec![
        ("agent=beta", expect(&data, |t| t.agent == "beta")),
        ("name=plan_100%25", expect(&data, |t| t.name == "plan_100%")),
        ("name__contains=100%25", expect(&data, |t| t.name.contains("100%"))),
        ("name__contains=n_1", expect(&data, |t| t.name.contains("n_1"))),
        ("name__contains=plan%251", expect(&data, |_| false)),
        ("status=running", expect(&data, |t| t.duration_ms.is_none())),
        ("status=ok", expect(&data, |t| t.duration_ms.is_some() && !data_error_trace(t))),
        ("status=error", expect(&data, |t| t.duration_ms.is_some() && data_error_trace(t))),
        ("has_error=true", expect(&data, |t| t.error)),
        ("has_error=false", expect(&data, |t| !t.error)),
        ("span_type=llm", expect(&data, |t| t.span_types.contains(&"llm"))),
        ("span_type=tool", expect(&data, |t| t.span_types.contains(&"tool"))),
        ("span_type=checkpoint", Vec::new()),
        ("min_duration_ms=2000", expect(&data, |t| t.duration_ms.is_some_and(|d| d >= 2000))),
        ("max_duration_ms=1500", expect(&data, |t| t.duration_ms.is_some_and(|d| d <= 1500))),
        ("min_cost_usd=0.02", expect(&data, |t| t.cost_nanos >= 20_000_000)),
        ("metadata__region=eu", expect(&data, |t| t.region == "eu")),
        ("metadata__attempt=3", expect(&data, |t| t.id[6..].parse::<i64>().unwrap() % 4 == 3)),
        ("metadata__missing=x", Vec::new()),
        ("agent=alpha&span_type=llm&metadata__region=eu", expect(&data, |t| t.agent == "alpha" && t.span_types.contains(&"llm") && t.region == "eu")),
    ];
    for (query, wanted) in cases {
        assert_eq!(sorted(ids(&server, &key, query).await), wanted, "{query}");
    }
    let window = format!("started_after={}&started_before={}", stamp(50), stamp(80));
    assert_eq!(sorted(ids(&server, &key, &window).await), expect(&data, |t| t.started_at > 50 && t.started_at < 80));
}

/// Reports whether the generated trace carries its own error (`status` `error` once closed).
fn data_error_trace(t: &Expected) -> bool {
    let i: i64 = t.id[6..].parse().unwrap();
    i % 9 == 0
}

async fn sorts_order_rows_with_id_tiebreak(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("trace-sort@example.com").await;
    let data = generate(&server, &key).await;

    let key_of = |t: &Expected, field: &str| -> Option<i64> {
        match field {
            "started_at" => Some(t.started_at),
            "duration_ms" => t.duration_ms,
            "cost_usd" => Some(t.cost_nanos),
            _ => Some(t.span_types.len() as i64),
        }
    };
    for field in ["started_at", "duration_ms", "cost_usd", "span_count"] {
        for descending in [false, true] {
            let mut wanted = data.clone();
            wanted.sort_by(|a, b| {
                let (ka, kb) = (key_of(a, field), key_of(b, field));
                let by_value = match (ka, kb) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (Some(x), Some(y)) => if descending { y.cmp(&x) } else { x.cmp(&y) },
                };
                by_value.then_with(|| if descending { b.id.cmp(&a.id) } else { a.id.cmp(&b.id) })
            });
            let wanted: Vec<String> = wanted.iter().map(|t| t.id.clone()).collect();
            let sort = if descending { format!("-{field}") } else { field.to_string() };
            assert_eq!(ids(&server, &key, &format!("sort={sort}")).await, wanted, "sort={sort}");
        }
    }
    // The default is -started_at.
    assert_eq!(ids(&server, &key, "").await, ids(&server, &key, "sort=-started_at").await);
}

async fn cursor_pages_survive_new_traces(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("trace-cursor@example.com").await;
    let data = generate(&server, &key).await;
    let all: HashSet<String> = data.iter().map(|t| t.id.clone()).collect();

    for sort in ["-started_at", "duration_ms", "-cost_usd"] {
        let mut seen = Vec::new();
        let mut next = Some(format!("/api/tracing/traces/list/?page_size=6&sort={sort}"));
        let mut round = 0;
        while let Some(path) = next {
            let (status, page) = server.get(&path, &key).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            seen.extend(page["results"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()));
            // A new trace that sorts before everything already listed.
            let new_id = format!("new-{sort}-{round}");
            server
                .post("/api/tracing/traces/", &key, json!({"id": new_id, "name": "late", "started_at": stamp(10_000 + round)}))
                .await;
            round += 1;
            next = page["next"].as_str().map(|url| url.strip_prefix(&server.base).unwrap().to_string());
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "sort={sort}: a trace was listed twice");
        let old: HashSet<String> = unique.iter().filter(|id| id.starts_with("trace-")).cloned().collect();
        assert_eq!(old, all, "sort={sort}: every trace that existed is listed");
    }

    // Page numbers still work, with DRF links.
    let (_, page2) = server.get("/api/tracing/traces/list/?page=2&page_size=10", &key).await;
    assert_eq!(page2["results"].as_array().unwrap().len(), 10);
    assert!(page2["previous"].is_string());
}

async fn bad_queries_name_the_parameter(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("trace-bad@example.com").await;
    for (query, field) in [
        ("colour=red", "colour"),
        ("sort=name", "sort"),
        ("status=done", "status"),
        ("has_error=maybe", "has_error"),
        ("span_type=video", "span_type"),
        ("min_duration_ms=NaN", "min_duration_ms"),
        ("max_duration_ms=abc", "max_duration_ms"),
        ("min_cost_usd=lots", "min_cost_usd"),
        ("started_after=noon", "started_after"),
        ("cursor=bm90IGpzb24", "cursor"),
        ("metadata__=x", "metadata__"),
        ("format=xml", "format"),
    ] {
        let (status, body) = server.get(&format!("/api/tracing/traces/list/?{query}"), &key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body[field].is_array(), "{query}: expected an error on {field}, got {body}");
    }
    // A cursor from one sort is rejected under another.
    for i in 0..3 {
        server.post("/api/tracing/traces/", &key, json!({"id": format!("t{i}"), "name": "n", "started_at": stamp(i)})).await;
    }
    let (_, page) = server.get("/api/tracing/traces/list/?page_size=1", &key).await;
    let next = page["next"].as_str().unwrap();
    let cursor = next.split("cursor=").nth(1).unwrap();
    let (status, body) = server.get(&format!("/api/tracing/traces/list/?sort=span_count&cursor={cursor}"), &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn csv_and_arrow_answers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("trace-formats@example.com").await;
    for i in 0..3 {
        server.post("/api/tracing/traces/", &key, json!({"id": format!("t{i}"), "name": format!("run, \"{i}\""), "started_at": stamp(i)})).await;
    }
    server.post("/api/cloud/usage/", &key, json!({"id": "u1", "model": "gpt-4o", "input_tokens": 1000, "agent_id": "a"})).await;

    let csv = server.client.get(format!("{}/api/tracing/traces/list/?format=csv", server.base)).header("Authorization", &key).send().await.unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("id,name,agent_id,started_at"), "{text}");
    assert_eq!(lines.len(), 4, "a header and three rows: {text}");
    assert!(lines[1].starts_with("t2,\"run, \"\"2\"\"\""), "newest first, quoted as CSV: {text}");

    for path in ["/api/tracing/traces/list/", "/api/cloud/usage/", "/api/cloud/usage/summary/?group_by=model"] {
        let response = server
            .client
            .get(format!("{}{path}", server.base))
            .header("Authorization", &key)
            .header("Accept", "application/vnd.apache.arrow.stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], "application/vnd.apache.arrow.stream");
        let bytes = response.bytes().await.unwrap();
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None).unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let expected_rows = if path.starts_with("/api/tracing") { 3 } else { 1 };
        assert_eq!(rows, expected_rows, "{path}");
        if path.contains("summary") {
            let schema = batches[0].schema();
            assert_eq!(schema.field(0).name(), "model");
            assert!(schema.field_with_name("cost_usd_decimal").is_ok());
        }
    }
}

on_every_deployment!(
    filters_match_the_data,
    sorts_order_rows_with_id_tiebreak,
    cursor_pages_survive_new_traces,
    bad_queries_name_the_parameter,
    csv_and_arrow_answers,
);
