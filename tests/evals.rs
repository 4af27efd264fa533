//! Evaluations through HTTP: trace reviews with weighted scores, eval cases
//! and their rubrics, and the checkpoint and review summaries, whose every
//! figure is checked against the spans and reviews the list endpoints return.
//! The review queue (flagged spans) is tested with the span endpoints.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/harness-run.jsonl");

async fn trace(server: &TestServer, key: &str, id: &str, agent: Option<&str>, name: &str, started_at: &str, metadata: Value) {
    let body = json!({"id": id, "name": name, "agent_id": agent, "started_at": started_at, "metadata": metadata});
    let (status, body) = server.post("/api/tracing/traces/", key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn checkpoint(server: &TestServer, key: &str, trace_id: &str, name: &str, at: &str, metadata: Value) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": id, "trace_id": trace_id, "name": name, "span_type": "checkpoint", "started_at": at, "metadata": metadata});
    let (status, body) = server.post("/api/tracing/spans/", key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post(&format!("/api/tracing/spans/{id}/end/"), key, json!({"ended_at": at})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

async fn agent(server: &TestServer, key: &str, name: &str, purpose: &str, tags: &[&str]) -> String {
    let (status, body) = server.post("/api/cloud/agents/", key, json!({"name": name, "model": "m", "purpose": purpose, "tags": tags})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn approx(actual: &Value, expected: Option<f64>, context: &str) {
    match expected {
        None => assert_eq!(actual, &Value::Null, "{context}"),
        Some(expected) => {
            let actual = actual.as_f64().unwrap_or_else(|| panic!("{context}: expected a number, got {actual}"));
            let tolerance = 1e-12 * expected.abs().max(1.0);
            assert!((actual - expected).abs() <= tolerance, "{context}: {actual} != {expected}");
        }
    }
}

// ---- reviews and eval cases ----

async fn reviews_are_scored_on_read(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, signup) = server.sign_up("reviews-user@example.com").await;
    let key = {
        let (status, body) = server.post("/api/organizations/api-keys/", &token, json!({"name": "k"})).await;
        assert_eq!(status, StatusCode::CREATED);
        format!("Bearer {}", body["key"].as_str().unwrap())
    };

    trace(&server, &key, "run-1", Some("agent-1"), "run_agent", "2026-03-02T12:00:00Z", json!({})).await;
    checkpoint(&server, &key, "run-1", "a", "2026-03-02T12:00:01Z", json!({"passed": true})).await;
    checkpoint(&server, &key, "run-1", "b", "2026-03-02T12:00:02Z", json!({"passed": false})).await;
    checkpoint(&server, &key, "run-1", "c", "2026-03-02T12:00:03Z", json!({"passed": true})).await;

    let (status, case) = server
        .post(
            "/api/tracing/evals/",
            &key,
            json!({"name": "lunch", "input": "Plan lunch", "expected": {"place": "veggie"},
                   "rubric": [{"criterion": "accuracy", "weight": 3, "max": 10, "description": "Right place?"},
                              {"criterion": "tone"}],
                   "metadata": {"suite": "smoke"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{case}");
    assert_eq!(case["rubric"][1], json!({"criterion": "tone", "weight": 1.0, "max": 1.0, "description": ""}));
    let case_id = case["id"].as_str().unwrap();

    // accuracy: 3 * 8/10 from the rubric; tone: own weight 2 and rubric max 1.
    let (status, review) = server
        .post(
            "/api/tracing/traces/run-1/reviews/",
            &key,
            json!({"criterion_scores": {"accuracy": 8, "tone": {"score": 0.6, "weight": 2}}, "comment": "fine", "eval": case_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert_eq!(review["weighted_score"], json!(0.72), "(2.4 + 1.2) / 5, exactly");
    assert_eq!(review["checkpoint_pass_rate"], json!(2.0 / 3.0));
    assert_eq!(review["reviewer"], Value::Null, "an API key is no user");
    assert_eq!(review["source"], "automated");
    assert_eq!(review["eval"], case_id);
    assert_eq!(review["trace_id"], "run-1");
    assert_eq!(review["comment"], "fine");
    let review_url = format!("/api/tracing/reviews/{}/", review["id"].as_str().unwrap());

    // A user's review names the user and is human by default.
    let (status, by_user) = server.post("/api/tracing/traces/run-1/reviews/", &token, json!({"criterion_scores": {"x": 1, "y": 0}})).await;
    assert_eq!(status, StatusCode::CREATED, "{by_user}");
    assert_eq!(by_user["reviewer"], signup["user"]["id"]);
    assert_eq!(by_user["source"], "human");
    assert_eq!(by_user["weighted_score"], json!(0.5));
    let (_, by_key) = server.post("/api/tracing/traces/run-1/reviews/", &key, json!({"source": "human"})).await;
    assert_eq!(by_key["source"], "human");
    assert_eq!(by_key["weighted_score"], Value::Null, "no criteria, no score");

    let (status, listed) = server.get("/api/tracing/traces/run-1/reviews/", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["count"], 3);
    assert_eq!(listed["results"][0]["id"], review["id"], "oldest first");

    // A late checkpoint and a rubric edit change the computed fields on read.
    checkpoint(&server, &key, "run-1", "d", "2026-03-02T12:00:04Z", json!({"passed": "yes"})).await;
    let (status, _) = server.patch(&format!("/api/tracing/evals/{case_id}/"), &key, json!({"rubric": [{"criterion": "accuracy", "max": 8}, {"criterion": "tone"}]})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = server.get(&review_url, &key).await;
    assert_eq!(again["checkpoint_pass_rate"], json!(0.5), "a non-boolean `passed` counts as failed");
    assert_eq!(again["weighted_score"], json!(11.0 / 15.0), "(1 * 8/8 + 2 * 0.6) / 3 = 11/15, rounded once");

    // PATCH replaces the scores and keeps what it does not name.
    let (status, patched) = server.patch(&review_url, &key, json!({"criterion_scores": {"accuracy": 4}})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["weighted_score"], json!(0.5));
    assert_eq!(patched["comment"], "fine");
    assert_eq!(patched["eval"], case_id);
    assert!(patched["updated_at"].as_str().unwrap() > review["updated_at"].as_str().unwrap());
    let (_, detached) = server.patch(&review_url, &key, json!({"eval": null})).await;
    assert_eq!(detached["eval"], Value::Null);
    assert_eq!(detached["weighted_score"], json!(4.0), "without the rubric, max is 1");

    // A trace without checkpoints has no pass rate.
    trace(&server, &key, "run-2", Some("agent-1"), "run_agent", "2026-03-02T13:00:00Z", json!({})).await;
    let (_, plain) = server.post("/api/tracing/traces/run-2/reviews/", &key, json!({"criterion_scores": {"a": {"score": 2, "max": 4}}})).await;
    assert_eq!(plain["checkpoint_pass_rate"], Value::Null);
    assert_eq!(plain["weighted_score"], json!(0.5));

    // Deleting the eval case keeps its reviews, without the reference.
    let (_, second) = server.post("/api/tracing/traces/run-2/reviews/", &key, json!({"criterion_scores": {"accuracy": 4}, "eval": case_id})).await;
    assert_eq!(second["weighted_score"], json!(0.5), "4 of the rubric's max 8");
    let (status, _) = server.delete(&format!("/api/tracing/evals/{case_id}/"), &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, orphan) = server.get(&format!("/api/tracing/reviews/{}/", second["id"].as_str().unwrap()), &key).await;
    assert_eq!(orphan["eval"], Value::Null);
    assert_eq!(orphan["criterion_scores"], json!({"accuracy": 4}));
    assert_eq!(orphan["weighted_score"], json!(4.0));
    let (status, _) = server.get(&format!("/api/tracing/evals/{case_id}/"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn bad_reviews_name_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("bad-reviews@example.com").await;
    let other = server.api_key("bad-reviews-other@example.com").await;
    trace(&server, &key, "t1", None, "run", "2026-03-02T12:00:00Z", json!({})).await;
    trace(&server, &other, "t-other", None, "run", "2026-03-02T12:00:00Z", json!({})).await;
    let (_, case) = server.post("/api/tracing/evals/", &key, json!({"name": "c", "rubric": [{"criterion": "accuracy"}]})).await;
    let case_id = case["id"].as_str().unwrap().to_string();
    let (_, other_case) = server.post("/api/tracing/evals/", &other, json!({"name": "c"})).await;

    let url = "/api/tracing/traces/t1/reviews/";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"criterion_scores": {"a": "0.5"}}), "criterion_scores.a"),
        (json!({"criterion_scores": {"a": true}}), "criterion_scores.a"),
        (json!({"criterion_scores": {"a": {"score": "1"}}}), "criterion_scores.a.score"),
        (json!({"criterion_scores": {"a": {"weight": 1}}}), "criterion_scores.a.score"),
        (json!({"criterion_scores": {"a": {"score": 1, "weight": -1}}}), "criterion_scores.a.weight"),
        (json!({"criterion_scores": {"a": {"score": 1, "max": 0}}}), "criterion_scores.a.max"),
        (json!({"criterion_scores": {"a": {"score": 1, "bonus": 2}}}), "criterion_scores.a.bonus"),
        (json!({"criterion_scores": [1, 2]}), "criterion_scores"),
        (json!({"criterion_scores": {"": 1}}), "criterion_scores."),
        (json!({"criterion_scores": {"speed": 1}, "eval": case_id}), "criterion_scores.speed"),
        (json!({"source": "robot"}), "source"),
        (json!({"comment": 5}), "comment"),
        (json!({"score": 5}), "score"),
    ];
    for (body, field) in cases {
        let (status, response) = server.post(url, &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert!(response.get(field).is_some(), "{body}: expected an error on {field}, got {response}");
    }
    // Python's json.dumps writes NaN and Infinity; each is named.
    for raw in [r#"{"criterion_scores": {"a": NaN}}"#, r#"{"criterion_scores": {"a": {"score": 1, "weight": Infinity}}}"#] {
        let (status, response) = server.call_raw(Method::POST, url, Some(&key), raw.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw}: {response}");
        let field = response.as_object().unwrap().keys().next().unwrap().clone();
        assert!(field.starts_with("criterion_scores.a"), "{raw}: {response}");
    }
    let (status, response) = server.call_raw(Method::POST, url, Some(&key), br#"{"criterion_scores": {"a": 1e999}}"#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a number out of range: {response}");
    assert!(response.get("criterion_scores.a").is_some(), "{response}");
    let raw = b"{\"criterion_scores\": {\"a\": 1, \"b\": {\"score\": -2e400}},\n \"comment\": \"x\"}";
    let (status, response) = server.call_raw(Method::POST, url, Some(&key), raw.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("criterion_scores.b.score").is_some(), "{response}");
    let (status, response) = server.call_raw(Method::POST, url, Some(&key), b"{\"comment\": \"\xff\"}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("comment").is_some(), "{response}");

    // Unknown and other organizations' ids are 404s; a body reference names its field.
    let (status, _) = server.post("/api/tracing/traces/nope/reviews/", &key, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.post("/api/tracing/traces/t-other/reviews/", &key, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/api/tracing/traces/t-other/reviews/", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, response) = server.post(url, &key, json!({"eval": other_case["id"]})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(response.get("eval").is_some(), "{response}");
    let (_, theirs) = server.post("/api/tracing/traces/t-other/reviews/", &other, json!({"comment": "x"})).await;
    let their_url = format!("/api/tracing/reviews/{}/", theirs["id"].as_str().unwrap());
    let (status, _) = server.get(&their_url, &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.patch(&their_url, &key, json!({"comment": "mine"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, still) = server.get(&their_url, &other).await;
    assert_eq!(still["comment"], "x");
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let (status, _) = server.call(method.clone(), &format!("/api/tracing/evals/{}/", other_case["id"].as_str().unwrap()), Some(&key), Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}");
    }

    // Nothing invalid was written.
    let (_, listed) = server.get(url, &key).await;
    assert_eq!(listed["count"], 0);

    // A PATCH is checked the same way and changes nothing when it fails.
    let (_, good) = server.post(url, &key, json!({"criterion_scores": {"accuracy": 1}, "eval": case_id})).await;
    let good_url = format!("/api/tracing/reviews/{}/", good["id"].as_str().unwrap());
    let (status, response) = server.patch(&good_url, &key, json!({"criterion_scores": {"speed": 1}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(response.get("criterion_scores.speed").is_some(), "{response}");
    let (_, unchanged) = server.get(&good_url, &key).await;
    assert_eq!(unchanged["criterion_scores"], json!({"accuracy": 1}));
}

async fn eval_cases_are_checked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("cases@example.com").await;
    let invalid: Vec<(Value, &str)> = vec![
        (json!({}), "name"),
        (json!({"name": "  "}), "name"),
        (json!({"name": "x", "rubric": {"criterion": "a"}}), "rubric"),
        (json!({"name": "x", "rubric": [{"criterion": "a", "weight": -1}]}), "rubric.0.weight"),
        (json!({"name": "x", "rubric": [{"criterion": "a", "max": 0}]}), "rubric.0.max"),
        (json!({"name": "x", "rubric": [{"criterion": "a"}, {"criterion": "a"}]}), "rubric.1.criterion"),
        (json!({"name": "x", "rubric": [{"weight": 1}]}), "rubric.0.criterion"),
        (json!({"name": "x", "rubric": [{"criterion": "a", "weight": "2"}]}), "rubric.0.weight"),
        (json!({"name": "x", "metadata": [1]}), "metadata"),
        (json!({"name": "x", "expected_output": 1}), "expected_output"),
    ];
    for (body, field) in invalid {
        let (status, response) = server.post("/api/tracing/evals/", &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert!(response.get(field).is_some(), "{body}: expected an error on {field}, got {response}");
    }
    let (_, listed) = server.get("/api/tracing/evals/", &key).await;
    assert_eq!(listed["count"], 0, "nothing invalid was written");

    let (status, case) = server.post("/api/tracing/evals/", &key, json!({"name": "first", "input": {"q": "2+2"}, "expected": "4"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(case["rubric"], json!([]));
    assert_eq!(case["metadata"], json!({}));
    assert_eq!(case["input"], json!({"q": "2+2"}));
    server.post("/api/tracing/evals/", &key, json!({"name": "second"})).await;
    let (_, by_name) = server.get("/api/tracing/evals/?name=second", &key).await;
    assert_eq!(by_name["count"], 1);
    assert_eq!(by_name["results"][0]["name"], "second");
    let url = format!("/api/tracing/evals/{}/", case["id"].as_str().unwrap());
    let (status, patched) = server.patch(&url, &key, json!({"metadata": {"suite": "math"}, "rubric": [{"criterion": "right", "weight": 2}]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["name"], "first");
    assert_eq!(patched["expected"], "4");
    assert_eq!(patched["rubric"], json!([{"criterion": "right", "weight": 2.0, "max": 1.0, "description": ""}]));
    let (_, read) = server.get(&url, &key).await;
    assert_eq!(read, patched);
}

// ---- summaries ----

/// Returns every row of a paginated list.
async fn list_all(server: &TestServer, key: &str, path: &str) -> Vec<Value> {
    let (status, body) = server.get(path, key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next"].is_null(), "one page holds the test data");
    body["results"].as_array().unwrap().clone()
}

/// What the summaries join: agent facts by id.
struct Agents(BTreeMap<String, (String, Vec<String>)>);

impl Agents {
    async fn load(server: &TestServer, key: &str) -> Agents {
        let agents = list_all(server, key, "/api/cloud/agents/?page_size=1000").await;
        Agents(
            agents
                .iter()
                .map(|a| {
                    let tags = a["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
                    (a["id"].as_str().unwrap().to_string(), (a["purpose"].as_str().unwrap().to_string(), tags))
                })
                .collect(),
        )
    }

    fn tags(&self, agent: Option<&str>) -> Vec<String> {
        agent.and_then(|a| self.0.get(a)).map(|(_, tags)| tags.clone()).unwrap_or_default()
    }

    fn purpose(&self, agent: Option<&str>) -> Option<String> {
        agent.and_then(|a| self.0.get(a)).map(|(purpose, _)| purpose.clone())
    }
}

/// A row of either summary as the test derives it from listed objects.
#[derive(Debug, Clone)]
struct Row {
    agent: Option<String>,
    name: Option<String>,
    scenario: Option<String>,
    at: String,
    passed: bool,
    score: Option<f64>,
    /// `(criterion, score, fraction of max)`.
    criteria: Vec<(String, f64, f64)>,
}

/// Reports whether a row passes the summary filters given as query parameters.
fn matches(row: &Row, agents: &Agents, params: &[(&str, &str)]) -> bool {
    params.iter().all(|(key, value)| match *key {
        "agent" => row.agent.as_deref() == Some(*value),
        "agent_tag" => agents.tags(row.agent.as_deref()).iter().any(|t| t == value),
        "agent_purpose" => agents.purpose(row.agent.as_deref()).as_deref() == Some(*value),
        "scenario" => row.scenario.as_deref() == Some(*value),
        "name" => row.name.as_deref() == Some(*value),
        "start" => row.at.as_str() >= *value,
        "end" => row.at.as_str() < *value,
        other => panic!("no filter {other}"),
    })
}

/// Returns the group keys a row falls in: one per combination of its values.
fn group_keys(row: &Row, agents: &Agents, group_by: &[&str]) -> Vec<Vec<Value>> {
    let mut keys: Vec<Vec<Value>> = vec![Vec::new()];
    for dimension in group_by {
        let values: Vec<Value> = match *dimension {
            "agent" => vec![json!(row.agent)],
            "scenario" => vec![json!(row.scenario)],
            "name" => vec![json!(row.name)],
            "day" => vec![json!(row.at[..10])],
            tag => {
                let prefix = format!("{}:", tag.strip_prefix("agent_tag:").unwrap());
                let found: Vec<Value> = agents
                    .tags(row.agent.as_deref())
                    .iter()
                    .filter_map(|t| t.strip_prefix(&prefix).map(|v| json!(v)))
                    .collect();
                if found.is_empty() { vec![Value::Null] } else { found }
            }
        };
        keys = keys.into_iter().flat_map(|key| values.iter().map(move |v| [key.clone(), vec![v.clone()]].concat())).collect();
    }
    keys
}

fn group_key_of(group: &Value, group_by: &[&str]) -> Vec<Value> {
    group_by.iter().map(|d| group[*d].clone()).collect()
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let position = q * (sorted.len() - 1) as f64;
    let (lower, upper) = (position.floor() as usize, position.ceil() as usize);
    Some(sorted[lower] + (sorted[upper] - sorted[lower]) * (position - lower as f64))
}

fn check_checkpoint_stats(actual: &Value, rows: &[&Row], context: &str) {
    let passed = rows.iter().filter(|r| r.passed).count();
    assert_eq!(actual["total"], rows.len(), "{context}");
    assert_eq!(actual["passed"], passed, "{context}");
    let rate = if rows.is_empty() { Value::Null } else { json!(passed as f64 / rows.len() as f64) };
    assert_eq!(actual["pass_rate"], rate, "{context}");
}

fn check_review_stats(actual: &Value, rows: &[&Row], context: &str) {
    let mut scores: Vec<f64> = rows.iter().filter_map(|r| r.score).collect();
    scores.sort_by(f64::total_cmp);
    assert_eq!(actual["review_count"], rows.len(), "{context}");
    assert_eq!(actual["scored_count"], scores.len(), "{context}");
    let mean = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    approx(&actual["mean_weighted_score"], mean, &format!("{context} mean"));
    approx(&actual["min"], scores.first().copied(), &format!("{context} min"));
    approx(&actual["max"], scores.last().copied(), &format!("{context} max"));
    for (name, q) in [("q1", 0.25), ("median", 0.5), ("q3", 0.75)] {
        approx(&actual[name], quantile(&scores, q), &format!("{context} {name}"));
    }
    let mut criteria: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows {
        for (criterion, score, fraction) in &row.criteria {
            criteria.entry(criterion).or_default().push((*score, *fraction));
        }
    }
    let listed = actual["criteria"].as_object().unwrap();
    assert_eq!(listed.keys().map(String::as_str).collect::<Vec<_>>(), criteria.keys().copied().collect::<Vec<_>>(), "{context}");
    for (criterion, values) in criteria {
        let n = values.len() as f64;
        assert_eq!(listed[criterion]["count"], values.len(), "{context} {criterion}");
        approx(&listed[criterion]["mean_score"], Some(values.iter().map(|v| v.0).sum::<f64>() / n), &format!("{context} {criterion}"));
        approx(&listed[criterion]["mean_normalized"], Some(values.iter().map(|v| v.1).sum::<f64>() / n), &format!("{context} {criterion}"));
    }
}

/// Compares a summary with the rows it covers, overall and per group.
async fn check_summary(
    server: &TestServer,
    key: &str,
    path: &str,
    rows: &[Row],
    agents: &Agents,
    check: fn(&Value, &[&Row], &str),
) -> usize {
    let filters: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("agent_purpose", "eval")],
        vec![("agent_tag", "git-sha:aaa")],
        vec![("agent_tag", "git-sha:aaa"), ("agent_tag", "env:ci")],
        vec![("scenario", "lunch")],
        vec![("name", "paid")],
        vec![("start", "2026-03-02T00:00:00.000000Z"), ("end", "2026-03-03T00:00:00.000000Z")],
        vec![("agent_purpose", "eval"), ("scenario", "travel"), ("start", "2026-03-02T00:00:00.000000Z")],
    ];
    let groupings: Vec<Vec<&str>> = vec![
        vec!["agent"],
        vec!["agent_tag:git-sha"],
        vec!["scenario"],
        vec!["name"],
        vec!["day"],
        vec!["agent_tag:git-sha", "day"],
        vec!["agent", "scenario", "name"],
    ];
    let mut checked_groups = 0;
    for filter in &filters {
        let query: Vec<String> = filter.iter().map(|(k, v)| format!("{k}={}", v.replace(':', "%3A"))).collect();
        let selected: Vec<&Row> = rows.iter().filter(|r| matches(r, agents, filter)).collect();
        let (status, summary) = server.get(&format!("{path}?{}", query.join("&")), key).await;
        assert_eq!(status, StatusCode::OK, "{summary}");
        check(&summary["totals"], &selected, &format!("{query:?} totals"));
        assert!(summary.get("groups").is_none());

        for group_by in &groupings {
            let url = format!("{path}?group_by={}&{}", group_by.join(","), query.join("&"));
            let (status, summary) = server.get(&url, key).await;
            assert_eq!(status, StatusCode::OK, "{url}: {summary}");
            check(&summary["totals"], &selected, &format!("{url} totals"));
            assert_eq!(summary["group_by"], json!(group_by));
            let mut expected: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
            for row in &selected {
                for key in group_keys(row, agents, group_by) {
                    expected.entry(Value::Array(key).to_string()).or_default().push(row);
                }
            }
            let groups = summary["groups"].as_array().unwrap();
            let seen: BTreeSet<String> = groups.iter().map(|g| Value::Array(group_key_of(g, group_by)).to_string()).collect();
            assert_eq!(seen, expected.keys().cloned().collect(), "{url}");
            assert_eq!(seen.len(), groups.len(), "{url}: one entry per group");
            for group in groups {
                let key = Value::Array(group_key_of(group, group_by)).to_string();
                check(group, &expected[&key], &format!("{url} {key}"));
                checked_groups += 1;
            }
        }
    }
    checked_groups
}

/// Generates a deterministic data set: agents with tags and purposes, checkpoints one
/// per trace as the harness sends them plus traces with several, some
/// without an agent row, and reviews of many shapes on the same traces.
async fn generate(server: &TestServer, key: &str) -> Vec<String> {
    let a = agent(server, key, "a", "eval", &["git-sha:aaa", "env:ci"]).await;
    let b = agent(server, key, "b", "eval", &["git-sha:bbb"]).await;
    let c = agent(server, key, "c", "prod", &["git-sha:aaa", "git-sha:ccc"]).await;
    let d = agent(server, key, "d", "eval", &[]).await;
    let owners: Vec<Option<String>> = vec![Some(a), Some(b), Some(c), Some(d), Some("no-agent-row".into()), None];
    let names = ["booked", "paid", "confirmed"];
    let scenarios = [json!("lunch"), json!("travel"), Value::Null];
    let outcomes = [json!(true), json!(false), Value::Null, json!("true"), json!(true)];
    let mut traces = Vec::new();
    for i in 0..48usize {
        let owner = owners[i % owners.len()].clone();
        let trace_id = format!("trace-{i:02}");
        let day = 1 + (i / 7) % 3;
        let at = format!("2026-03-0{day}T{:02}:{:02}:00Z", 8 + i % 10, i % 60);
        let name = names[i % 3];
        let scenario = &scenarios[(i / 3) % 3];
        let mut trace_metadata = json!({});
        // Some traces carry the scenario themselves; reviews read it from there.
        if i % 5 == 0 {
            trace_metadata = json!({"scenario": "from-trace"});
        }
        trace(server, key, &trace_id, owner.as_deref(), name, &at, trace_metadata).await;
        let checkpoints = if i % 8 == 0 { 3 } else { 1 };
        for k in 0..checkpoints {
            let mut metadata = json!({"description": "d", "scenario": scenario});
            let outcome = &outcomes[(i + k) % outcomes.len()];
            if !outcome.is_null() {
                metadata["passed"] = outcome.clone();
            }
            if owner.is_none() {
                // Without an agent on the trace, the checkpoint's own `agent_id` counts.
                metadata["agent_id"] = json!("from-metadata");
            }
            checkpoint(server, key, &trace_id, name, &at, metadata).await;
        }
        traces.push(trace_id);
    }
    traces
}

async fn checkpoint_summary_matches_listed_spans(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("checkpoint-summary@example.com").await;
    generate(&server, &key).await;
    let agents = Agents::load(&server, &key).await;

    let traces = list_all(&server, &key, "/api/tracing/traces/?page_size=1000").await;
    let trace_agents: BTreeMap<&str, Option<&str>> = traces.iter().map(|t| (t["id"].as_str().unwrap(), t["agent_id"].as_str())).collect();
    let spans = list_all(&server, &key, "/api/tracing/spans/?span_type=checkpoint&page_size=1000").await;
    assert_eq!(spans.len(), 48 + 6 * 2);
    let rows: Vec<Row> = spans
        .iter()
        .map(|span| Row {
            agent: trace_agents[span["trace_id"].as_str().unwrap()]
                .or(span["metadata"]["agent_id"].as_str())
                .map(str::to_string),
            name: span["name"].as_str().map(str::to_string),
            scenario: span["metadata"]["scenario"].as_str().map(str::to_string),
            at: span["started_at"].as_str().unwrap().to_string(),
            passed: span["metadata"]["passed"] == json!(true),
            score: None,
            criteria: Vec::new(),
        })
        .collect();
    assert!(rows.iter().any(|r| r.agent.as_deref() == Some("from-metadata")));
    let checked = check_summary(&server, &key, "/api/tracing/checkpoints/summary/", &rows, &agents, check_checkpoint_stats).await;
    assert!(checked > 100, "{checked} groups checked");

    // A checkpoint of an agent with two `git-sha:` tags is in both groups.
    let (_, by_sha) = server.get("/api/tracing/checkpoints/summary/?group_by=agent_tag:git-sha", &key).await;
    let values: Vec<&Value> = by_sha["groups"].as_array().unwrap().iter().map(|g| &g["agent_tag:git-sha"]).collect();
    assert_eq!(values, vec![&Value::Null, &json!("aaa"), &json!("bbb"), &json!("ccc")], "sorted, nulls first");
}

async fn review_summary_matches_listed_reviews(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("review-summary@example.com").await;
    let traces = generate(&server, &key).await;
    let agents = Agents::load(&server, &key).await;
    let (_, case) = server
        .post("/api/tracing/evals/", &key, json!({"name": "c", "rubric": [{"criterion": "accuracy", "weight": 3, "max": 10}, {"criterion": "tone", "max": 5}]}))
        .await;
    let case_id = case["id"].as_str().unwrap();
    let (_, unrelated) = server.get("/api/tracing/reviews/summary/", &key).await;
    assert_eq!(unrelated["totals"]["review_count"], 0);
    assert_eq!(unrelated["totals"]["mean_weighted_score"], Value::Null);

    let shapes = [
        json!({"criterion_scores": {"accuracy": 7, "tone": 4}, "eval": case_id}),
        json!({"criterion_scores": {"accuracy": {"score": 9, "weight": 1}}, "eval": case_id}),
        json!({"criterion_scores": {"helpful": 0.25, "tone": {"score": 3, "max": 4, "weight": 2}}}),
        json!({"criterion_scores": {}}),
        json!({"criterion_scores": {"helpful": {"score": 1, "weight": 0}}}),
        json!({"criterion_scores": {"helpful": -0.5, "accuracy": 0.1}}),
        json!({"criterion_scores": {"accuracy": 0.1, "helpful": 0.2, "tone": 0.3}}),
    ];
    for (i, trace_id) in traces.iter().enumerate().filter(|(i, _)| i % 4 != 3) {
        for k in 0..(1 + i % 3) {
            let body = shapes[(i + k) % shapes.len()].clone();
            let (status, review) = server.post(&format!("/api/tracing/traces/{trace_id}/reviews/"), &key, body).await;
            assert_eq!(status, StatusCode::CREATED, "{review}");
        }
    }

    // The rows, from the listed traces, spans and reviews.
    let listed_traces = list_all(&server, &key, "/api/tracing/traces/?page_size=1000").await;
    let mut rows = Vec::new();
    for t in &listed_traces {
        let trace_id = t["id"].as_str().unwrap();
        let detail = server.get(&format!("/api/tracing/traces/{trace_id}/"), &key).await.1;
        let first_checkpoint = detail["spans"].as_array().unwrap().iter().find(|s| s["span_type"] == "checkpoint").cloned();
        let scenario = t["metadata"]["scenario"]
            .as_str()
            .or_else(|| first_checkpoint.as_ref().and_then(|s| s["metadata"]["scenario"].as_str()))
            .map(str::to_string);
        let agent = t["agent_id"].as_str().or_else(|| first_checkpoint.as_ref().and_then(|s| s["metadata"]["agent_id"].as_str()));
        for review in list_all(&server, &key, &format!("/api/tracing/traces/{trace_id}/reviews/")).await {
            let rubric = |criterion: &str| -> Option<(f64, f64)> {
                (review["eval"] == case_id).then_some(match criterion {
                    "accuracy" => Some((3.0, 10.0)),
                    "tone" => Some((1.0, 5.0)),
                    _ => None,
                })?
            };
            let criteria: Vec<(String, f64, f64)> = review["criterion_scores"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(criterion, given)| {
                    let score = given.as_f64().or_else(|| given["score"].as_f64()).unwrap();
                    let max = given["max"].as_f64().or(rubric(criterion).map(|r| r.1)).unwrap_or(1.0);
                    (criterion.clone(), score, score / max)
                })
                .collect();
            rows.push(Row {
                agent: agent.map(str::to_string),
                name: t["name"].as_str().map(str::to_string),
                scenario: scenario.clone(),
                at: t["started_at"].as_str().unwrap().to_string(),
                passed: false,
                score: review["weighted_score"].as_f64(),
                criteria,
            });
        }
    }
    assert_eq!(rows.len(), (0..48).filter(|i| i % 4 != 3).map(|i| 1 + i % 3).sum::<usize>());
    assert!(rows.iter().any(|r| r.score.is_none()), "reviews without a score are counted but not scored");
    assert!(rows.iter().any(|r| r.score.is_some_and(|s| s < 0.0)), "negative scores are kept");
    let checked = check_summary(&server, &key, "/api/tracing/reviews/summary/", &rows, &agents, check_review_stats).await;
    assert!(checked > 100, "{checked} groups checked");
}

async fn harness_checkpoints_rate_across_traces(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("harness-evals@example.com").await;
    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).unwrap();
        let path = request["path"].as_str().unwrap();
        if !path.starts_with("/api/tracing/") {
            continue;
        }
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let (status, body) = server.call_raw(method, path, Some(&key), serde_json::to_vec(&request["body"]).unwrap()).await;
        assert!(status.is_success(), "{path}: {body}");
    }
    // Each checkpoint sits alone in its own trace: 1.0, 0.0 and 1.0 per trace,
    // 2/3 across the agent's traces.
    let (status, summary) = server.get("/api/tracing/checkpoints/summary/?group_by=agent,scenario,name", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["totals"], json!({"passed": 2, "total": 3, "pass_rate": 2.0 / 3.0}));
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[1]["agent"], "00000000-0000-0000-0000-00005eed0001");
    assert_eq!(groups[1]["scenario"], "group_lunch");
    assert_eq!(groups[1]["name"], "picked_vegetarian_place_1");
    assert_eq!(groups[1]["pass_rate"], json!(0.0));
    let (_, by_agent) = server.get("/api/tracing/checkpoints/summary/?agent=00000000-0000-0000-0000-00005eed0001&group_by=day", &key).await;
    assert_eq!(by_agent["groups"], json!([{"day": "2026-03-02", "passed": 2, "total": 3, "pass_rate": 2.0 / 3.0}]));
    let (_, other) = server.get("/api/tracing/checkpoints/summary/?agent=someone-else", &key).await;
    assert_eq!(other["totals"], json!({"passed": 0, "total": 0, "pass_rate": null}));
}

async fn summaries_reject_unknown_parameters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("summary-params@example.com").await;
    let other = server.api_key("summary-params-other@example.com").await;
    for path in ["/api/tracing/checkpoints/summary/", "/api/tracing/reviews/summary/"] {
        for (query, field) in [
            ("agnet=x", "agnet"),
            ("group_by=model", "group_by"),
            ("group_by=agent_tag:", "group_by"),
            ("start=yesterday", "start"),
            ("end=2026-13-01", "end"),
            ("agent_purpose=test", "agent_purpose"),
        ] {
            let (status, body) = server.get(&format!("{path}?{query}"), &key).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {body}");
            assert!(body.get(field).is_some(), "{path}?{query}: {body}");
        }
        // Literal matching of odd values, and no rows of another organization.
        let (status, body) = server.get(&format!("{path}?name=%25&scenario=%27%22%5C&agent_tag=%E2%9C%93"), &key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let count = if path.contains("checkpoints") { &body["totals"]["total"] } else { &body["totals"]["review_count"] };
        assert_eq!(count, 0);
    }
    trace(&server, &other, "theirs", Some("x"), "n", "2026-03-02T12:00:00Z", json!({})).await;
    checkpoint(&server, &other, "theirs", "n", "2026-03-02T12:00:00Z", json!({"passed": true, "scenario": "%"})).await;
    server.post("/api/tracing/traces/theirs/reviews/", &other, json!({"criterion_scores": {"a": 1}})).await;
    let (_, mine) = server.get("/api/tracing/checkpoints/summary/?group_by=agent", &key).await;
    assert_eq!(mine["totals"]["total"], 0);
    assert_eq!(mine["groups"], json!([]));
    let (_, mine) = server.get("/api/tracing/reviews/summary/", &key).await;
    assert_eq!(mine["totals"]["review_count"], 0);
    let (_, theirs) = server.get("/api/tracing/checkpoints/summary/?scenario=%25", &other).await;
    assert_eq!(theirs["totals"]["total"], 1, "`%` is matched literally");
    let (_, none) = server.get("/api/tracing/checkpoints/summary/?scenario=_", &other).await;
    assert_eq!(none["totals"]["total"], 0, "`_` is no wildcard");
}

on_every_deployment!(
    reviews_are_scored_on_read,
    bad_reviews_name_the_field,
    eval_cases_are_checked,
    checkpoint_summary_matches_listed_spans,
    review_summary_matches_listed_reviews,
    harness_checkpoints_rate_across_traces,
    summaries_reject_unknown_parameters,
);
