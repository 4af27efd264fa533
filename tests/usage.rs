//! Behaviour of `/api/cloud/usage/` and `/api/cloud/model-prices/`: records
//! derived from the recorded harness session, posted records, exact money,
//! pricing, summaries against listings, cursors and bad input.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Backend, TestServer};
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/harness-run.jsonl");
const FIXTURE_AGENT: &str = "00000000-0000-0000-0000-00005eed0001";

async fn replay_tracing(server: &TestServer, key: &str) {
    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).unwrap();
        let path = request["path"].as_str().unwrap();
        if !path.starts_with("/api/tracing/") {
            continue;
        }
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let (status, body) = server.call(method, path, Some(key), Some(request["body"].clone())).await;
        assert!(status.is_success(), "{path}: {body}");
    }
}

/// Follows `next` links from `path` and returns every record listed.
async fn list_all(server: &TestServer, key: &str, path: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut next = Some(format!("{}{path}", server.base));
    while let Some(url) = next {
        let path = url.strip_prefix(&server.base).unwrap().to_string();
        let (status, page) = server.get(&path, key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        records.extend(page["results"].as_array().unwrap().iter().cloned());
        next = page["next"].as_str().map(str::to_string);
    }
    records
}

fn decimal(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a decimal string: {value}")).to_string()
}

async fn llm_spans_become_records(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("usage-fixture@example.com").await;
    replay_tracing(&server, &key).await;

    let records = list_all(&server, &key, "/api/cloud/usage/").await;
    assert_eq!(records.len(), 2, "one record per llm span: {records:?}");
    for record in &records {
        assert_eq!(record["agent_id"], FIXTURE_AGENT, "the agent comes from the trace");
        assert_eq!(record["model"], "openai/gpt-4o-mini");
        assert_eq!(record["cost_source"], "client");
        assert_eq!(record["source"], "span");
        assert_eq!(record["id"], record["span_id"]);
    }
    let (_, summary) = server.get("/api/cloud/usage/summary/", &key).await;
    let totals = &summary["totals"];
    assert_eq!(totals["record_count"], 2);
    assert_eq!(totals["input_tokens"], 3050);
    assert_eq!(totals["output_tokens"], 63);
    assert_eq!(totals["cached_tokens"], 1024);
    assert_eq!(totals["total_tokens"], 3113);
    assert_eq!(decimal(&totals["cost_usd_decimal"]), "0.000380000");

    // A duplicate close changes nothing; a corrected close replaces the record.
    let span_id = records[0]["span_id"].as_str().unwrap().to_string();
    let close = FIXTURE
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap().contains(&span_id) && r["body"]["metadata"]["llm_cost"].is_object())
        .unwrap();
    let path = close["path"].as_str().unwrap();
    let (status, _) = server.patch(path, &key, close["body"].clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = server.get("/api/cloud/usage/summary/", &key).await;
    assert_eq!(again["totals"], summary["totals"], "a re-sent close is not counted twice");
    let (status, _) = server
        .patch(path, &key, json!({"metadata": {"llm_cost": {"input_tokens": 10, "output_tokens": 5, "total_cost_usd": "0.5"}}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, record) = server.get(&format!("/api/cloud/usage/{span_id}/"), &key).await;
    assert_eq!(record["input_tokens"], 10);
    assert_eq!(decimal(&record["cost_usd_decimal"]), "0.500000000");
    let (_, summary) = server.get("/api/cloud/usage/summary/", &key).await;
    assert_eq!(summary["totals"]["record_count"], 2);

    // A posted record for the same span replaces the derived one.
    let (status, posted) = server
        .post("/api/cloud/usage/", &key, json!({"id": "direct-1", "span_id": span_id, "model": "m", "input_tokens": 1, "cost_usd": 2}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}");
    assert_eq!(posted["source"], "client");
    let (_, summary) = server.get("/api/cloud/usage/summary/", &key).await;
    assert_eq!(summary["totals"]["record_count"], 2);
    let (status, _) = server.get(&format!("/api/cloud/usage/{span_id}/"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The agent's usage, with and without an agent row.
    let (_, agent_usage) = server.get(&format!("/api/cloud/agents/{FIXTURE_AGENT}/usage/?group_by=model"), &key).await;
    assert_eq!(agent_usage["agent_id"], FIXTURE_AGENT);
    assert_eq!(agent_usage["totals"]["record_count"], 1, "the posted record names no agent");
    assert_eq!(agent_usage["groups"][0]["model"], "openai/gpt-4o-mini");
    let (_, agent) = server.post("/api/cloud/agents/", &key, json!({"name": "a", "model": "m"})).await;
    let agent_id = agent["id"].as_str().unwrap();
    server.post("/api/cloud/usage/", &key, json!({"agent_id": agent_id, "model": "m", "output_tokens": 7, "cost_usd": 0.25})).await;
    let (_, detail) = server.get(&format!("/api/cloud/agents/{agent_id}/"), &key).await;
    assert_eq!(detail["usage"]["output_tokens"], 7);
    assert_eq!(decimal(&detail["usage"]["cost_usd_decimal"]), "0.250000000");
}

async fn posted_costs_sum_exactly(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("usage-exact@example.com").await;
    for batch in 0..10 {
        let records: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let model = ["m1", "m2"][n % 2];
                json!({"id": format!("r{n}"), "agent_id": format!("agent-{}", n % 3), "model": model,
                    "input_tokens": 3, "cost_usd": 0.1, "timestamp": format!("2026-03-0{}T0{}:15:00Z", 1 + n % 3, n % 4)})
            })
            .collect();
        let (status, body) = server.post("/api/cloud/usage/", &key, json!({ "records": records })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["records"].as_array().unwrap().len(), 1000);
    }
    let (_, summary) = server.get("/api/cloud/usage/summary/?group_by=agent,model,day,hour", &key).await;
    assert_eq!(summary["totals"]["record_count"], 10_000);
    assert_eq!(decimal(&summary["totals"]["cost_usd_decimal"]), "1000.000000000");
    assert_eq!(summary["totals"]["cost_usd"].as_f64(), Some(1000.0));
    let groups = summary["groups"].as_array().unwrap();
    let mut nanos: i128 = 0;
    for group in groups {
        let text = decimal(&group["cost_usd_decimal"]).replace('.', "");
        nanos += text.parse::<i128>().unwrap();
    }
    assert_eq!(nanos, 1000 * 1_000_000_000, "the groups add up to the total exactly");

    // Re-sending records is an upsert, never a second record.
    let (status, _) = server.post("/api/cloud/usage/", &key, json!({"id": "r5", "agent_id": "agent-2", "model": "m2", "input_tokens": 3, "cost_usd": 0.1})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, again) = server.get("/api/cloud/usage/summary/", &key).await;
    assert_eq!(again["totals"]["record_count"], 10_000);

    // Tiny and huge amounts, sent as decimal strings, sum exactly.
    let other = server.api_key("usage-huge@example.com").await;
    let (status, body) = server
        .post("/api/cloud/usage/", &other, json!({"records": [
            {"model": "m", "cost_usd": "999999999.999999999"},
            {"model": "m", "cost_usd": "0.000000001"},
            {"model": "m", "cost_usd": 1e-9},
        ]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, summary) = server.get("/api/cloud/usage/summary/", &other).await;
    assert_eq!(decimal(&summary["totals"]["cost_usd_decimal"]), "1000000000.000000001");
}

async fn missing_costs_are_priced(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("pricing@example.com").await;
    let other = server.api_key("pricing-other@example.com").await;
    let record = json!({"id": "p1", "model": "gpt-4o", "input_tokens": 1000, "cached_tokens": 800, "output_tokens": 100});
    for k in [&key, &other] {
        let (status, body) = server.post("/api/cloud/usage/", k, record.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // 200 × 2.50/M + 800 × 1.25/M (cached, charged once) + 100 × 10/M = 0.0025 USD.
        assert_eq!(decimal(&body["cost_usd_decimal"]), "0.002500000");
        assert_eq!(body["cost_source"], "computed");
    }

    let (status, price) = server
        .post("/api/cloud/model-prices/", &key, json!({"model": "gpt-4o", "input_per_million": 10, "cached_input_per_million": "1", "output_per_million": 20}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{price}");
    let (_, mine) = server.get("/api/cloud/usage/p1/", &key).await;
    assert_eq!(decimal(&mine["cost_usd_decimal"]), "0.004800000", "200 × 10/M + 800 × 1/M + 100 × 20/M");
    let (_, theirs) = server.get("/api/cloud/usage/p1/", &other).await;
    assert_eq!(decimal(&theirs["cost_usd_decimal"]), "0.002500000", "an override changes only its organization");

    // Normalised names match; unknown models stay unpriced.
    let (_, dated) = server.post("/api/cloud/usage/", &other, json!({"model": "openai/gpt-4o-2024-08-06", "input_tokens": 1000000})).await;
    assert_eq!(decimal(&dated["cost_usd_decimal"]), "2.500000000");
    let (_, unknown) = server.post("/api/cloud/usage/", &other, json!({"model": "no-such-model", "input_tokens": 5})).await;
    assert_eq!(unknown["cost_usd"], Value::Null);
    assert_eq!(unknown["cost_source"], Value::Null);
    let (_, summary) = server.get("/api/cloud/usage/summary/", &other).await;
    assert_eq!(summary["totals"]["unpriced_count"], 1);

    // Price CRUD: duplicates and bad values are rejected; deleting restores the built-in price.
    let (status, body) = server.post("/api/cloud/model-prices/", &key, json!({"model": "gpt-4o", "input_per_million": 1, "output_per_million": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["model"].is_array());
    let (status, body) = server.post("/api/cloud/model-prices/", &key, json!({"model": "x", "input_per_million": -1, "output_per_million": "abc"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["input_per_million"].is_array(), "{body}");
    assert!(body["output_per_million"].is_array(), "{body}");
    let url = format!("/api/cloud/model-prices/{}/", price["id"].as_str().unwrap());
    let (status, patched) = server.patch(&url, &key, json!({"output_per_million": 0})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["input_per_million"].as_f64(), Some(10.0));
    let (status, _) = server.get(&url, &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.delete(&url, &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, restored) = server.get("/api/cloud/usage/p1/", &key).await;
    assert_eq!(decimal(&restored["cost_usd_decimal"]), "0.002500000");
}

async fn bad_usage_names_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("usage-bad@example.com").await;
    let cases = [
        (json!({"input_tokens": -1}), "input_tokens"),
        (json!({"output_tokens": 2.5}), "output_tokens"),
        (json!({"cached_tokens": "many", "input_tokens": 5}), "cached_tokens"),
        (json!({"reasoning_tokens": [1]}), "reasoning_tokens"),
        (json!({"cost_usd": "free"}), "cost_usd"),
        (json!({"cost_usd": -1}), "cost_usd"),
        (json!({"cost_usd": 1e15}), "cost_usd"),
        (json!({"input_tokens": 5, "cached_tokens": 6}), "cached_tokens"),
        (json!({"timestamp": "yesterday"}), "timestamp"),
        (json!({"id": ""}), "id"),
    ];
    for (body, field) in cases {
        let (status, response) = server.post("/api/cloud/usage/", &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert!(response[field].is_array(), "{body}: expected an error on {field}, got {response}");
    }
    for raw in [r#"{"cost_usd": NaN}"#, r#"{"input_tokens": 1e400}"#, r#"{"cost_usd": Infinity}"#] {
        let (status, response) = server.call_raw(Method::POST, "/api/cloud/usage/", Some(&key), raw.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw}: {response}");
    }

    // One bad record in a batch rejects the whole batch, naming its index.
    let records: Vec<Value> = (0..5).map(|i| json!({"id": format!("b{i}"), "input_tokens": if i == 3 { json!(-3) } else { json!(3) }})).collect();
    let (status, response) = server.post("/api/cloud/usage/", &key, json!({ "records": records })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response["records.3.input_tokens"].is_array(), "{response}");
    let (_, list) = server.get("/api/cloud/usage/", &key).await;
    assert_eq!(list["count"], 0, "nothing of a rejected batch is stored");
    let (status, _) = server.post("/api/cloud/usage/", &key, json!({"records": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = server.get("/api/cloud/usage/?colour=red", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["colour"].is_array());
    let (status, body) = server.get("/api/cloud/usage/summary/?group_by=model,planet", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["group_by"].is_array());
    let (status, _) = server.get("/api/cloud/usage/?cursor=%21%21", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/api/cloud/usage/?start=soon", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Filter values are matched literally.
    let odd = "a%_'\"ü\\";
    server.post("/api/cloud/usage/", &key, json!({"agent_id": odd, "model": "m"})).await;
    server.post("/api/cloud/usage/", &key, json!({"agent_id": "abc", "model": "m"})).await;
    for (value, expected) in [(odd.to_string(), 1), ("a%".to_string(), 0), ("a_c".to_string(), 0), ("x".repeat(10_000), 0)] {
        let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
        let (status, list) = server.get(&format!("/api/cloud/usage/?agent={encoded}"), &key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["count"], expected, "agent filter {value:.20}");
    }
    let other = server.api_key("usage-bad-other@example.com").await;
    let (_, mine) = server.post("/api/cloud/usage/", &key, json!({"id": "secret-record", "model": "m"})).await;
    assert_eq!(mine["id"], "secret-record");
    let (status, _) = server.get("/api/cloud/usage/secret-record/", &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn cursor_neither_skips_nor_repeats(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("usage-cursor@example.com").await;
    // 30 records share one timestamp, 10 more are older.
    let mut expected = HashSet::new();
    let mut records = Vec::new();
    for i in 0..40 {
        let stamp = if i < 30 { "2026-03-01T10:00:00Z".to_string() } else { format!("2026-02-01T10:00:{i:02}Z") };
        records.push(json!({"id": format!("c{i:02}"), "model": "m", "timestamp": stamp}));
        expected.insert(format!("c{i:02}"));
    }
    server.post("/api/cloud/usage/", &key, json!({ "records": records })).await;

    let mut seen = Vec::new();
    let mut next = Some("/api/cloud/usage/?page_size=7".to_string());
    let mut round = 0;
    while let Some(path) = next {
        let (status, page) = server.get(&path, &key).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        // New data arrives between pages, newer than everything listed.
        server.post("/api/cloud/usage/", &key, json!({"id": format!("new{round}"), "model": "m"})).await;
        round += 1;
        next = page["next"].as_str().map(|url| url.strip_prefix(&server.base).unwrap().to_string());
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no record is listed twice");
    assert_eq!(unique, expected, "every record is listed, and none that arrived after the first page");
    assert_eq!(round, 6);
}

/// Sums listed records the way the summary should.
fn sum_records(records: &[Value]) -> (i64, i64, i128) {
    let mut tokens = 0;
    let mut nanos = 0;
    for record in records {
        tokens += record["input_tokens"].as_i64().unwrap();
        if let Some(text) = record["cost_usd_decimal"].as_str() {
            nanos += text.replace('.', "").parse::<i128>().unwrap();
        }
    }
    (records.len() as i64, tokens, nanos)
}

fn nanos_of(value: &Value) -> i128 {
    decimal(value).replace('.', "").parse().unwrap()
}

async fn summary_matches_listed_records(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("usage-property@example.com").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let agents = ["alpha", "beta", "gamma"];
    let models = ["gpt-4o", "m-unpriced", "claude-3-5-haiku"];
    let records: Vec<Value> = (0..300)
        .map(|i| {
            let mut record = json!({
                "id": format!("g{i}"),
                "agent_id": agents[rng.gen_range(0..3)],
                "model": models[rng.gen_range(0..3)],
                "trace_id": format!("t{}", rng.gen_range(0..5)),
                "input_tokens": rng.gen_range(0..5000),
                "output_tokens": rng.gen_range(0..500),
                "timestamp": format!("2026-03-{:02}T{:02}:{:02}:00Z", rng.gen_range(1..4), rng.gen_range(0..24), rng.gen_range(0..60)),
            });
            if rng.gen_bool(0.5) {
                record["cost_usd"] = json!(format!("0.{:09}", rng.gen_range(0..1_000_000_000u64)));
            }
            record
        })
        .collect();
    let (status, body) = server.post("/api/cloud/usage/", &key, json!({ "records": records })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for _ in 0..12 {
        let mut params = Vec::new();
        if rng.gen_bool(0.5) {
            params.push(format!("agent={}", agents[rng.gen_range(0..3)]));
        }
        if rng.gen_bool(0.5) {
            params.push(format!("model={}", models[rng.gen_range(0..3)]));
        }
        if rng.gen_bool(0.3) {
            params.push(format!("trace=t{}", rng.gen_range(0..5)));
        }
        if rng.gen_bool(0.5) {
            params.push(format!("start=2026-03-{:02}T12:00:00Z", rng.gen_range(1..4)));
        }
        if rng.gen_bool(0.5) {
            params.push(format!("end=2026-03-{:02}T00:00:00Z", rng.gen_range(2..5)));
        }
        let filters = params.join("&");
        let listed = list_all(&server, &key, &format!("/api/cloud/usage/?page_size=50&{filters}")).await;
        let (count, tokens, nanos) = sum_records(&listed);
        let (_, summary) = server.get(&format!("/api/cloud/usage/summary/?{filters}"), &key).await;
        let totals = &summary["totals"];
        assert_eq!(totals["record_count"], count, "{filters}");
        assert_eq!(totals["input_tokens"], tokens, "{filters}");
        assert_eq!(nanos_of(&totals["cost_usd_decimal"]), nanos, "{filters}");

        for group_by in ["agent", "model", "day", "hour", "trace", "agent,model,day"] {
            let (_, grouped) = server.get(&format!("/api/cloud/usage/summary/?group_by={group_by}&{filters}"), &key).await;
            let groups = grouped["groups"].as_array().unwrap();
            let group_count: i64 = groups.iter().map(|g| g["record_count"].as_i64().unwrap()).sum();
            let group_nanos: i128 = groups.iter().map(|g| nanos_of(&g["cost_usd_decimal"])).sum();
            assert_eq!(group_count, count, "group_by={group_by}&{filters}");
            assert_eq!(group_nanos, nanos, "group_by={group_by}&{filters}");
            let keys: BTreeMap<String, ()> = groups.iter().map(|g| (g.to_string(), ())).collect();
            assert_eq!(keys.len(), groups.len());
        }
    }
}

on_every_deployment!(
    llm_spans_become_records,
    posted_costs_sum_exactly,
    missing_costs_are_priced,
    bad_usage_names_the_field,
    cursor_neither_skips_nor_repeats,
    summary_matches_listed_records,
);
