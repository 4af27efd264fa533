//! Behaviour of `/api/templates/`, `/api/cloud/agents/` and `/api/toolbox/`:
//! the harness's own calls from the recorded session, snapshot semantics,
//! the lifecycle state machine, tags, write-only secrets and bad input.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/harness-run.jsonl");

/// The id the recorded client used for its template and for the agent the
/// server created; the replay substitutes the ids of this server's objects.
const RECORDED_TEMPLATE_ID: &str = "00000000-0000-0000-0000-00005eed0002";
const RECORDED_AGENT_ID: &str = "00000000-0000-0000-0000-00005eed0001";

struct Toolbox {
    adapter: String,
    tool: String,
    template: String,
    adapter_config: String,
}

/// Creates a weather adapter with one tool and a secret, enabled on a template named `name`.
async fn weather_toolbox(server: &TestServer, key: &str, name: &str) -> Toolbox {
    let (status, adapter) = server
        .post(
            "/api/toolbox/adapters/",
            key,
            json!({
                "name": "weather",
                "description": "Forecasts",
                "config_schema": {
                    "type": "object",
                    "properties": {
                        "units": {"type": "string", "enum": ["metric", "imperial"]},
                        "api_key": {"type": "string", "writeOnly": true}
                    },
                    "required": ["units"]
                }
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{adapter}");
    let adapter_id = adapter["id"].as_str().unwrap().to_string();

    let (status, tool) = server
        .post(
            "/api/toolbox/tools/",
            key,
            json!({
                "adapter": adapter_id,
                "name": "get_forecast",
                "description": "The forecast for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "url": "/api/toolbox/run/weather/get_forecast/",
                "timeout_seconds": 20
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tool}");
    let (status, disabled) = server
        .post(
            "/api/toolbox/tools/",
            key,
            json!({"adapter": adapter_id, "name": "get_radar", "url": "https://weather.example.com/radar", "enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{disabled}");

    let (status, template) = server
        .post(
            "/api/templates/",
            key,
            json!({"name": name, "model": "openai/gpt-4o", "system_prompt": "Template prompt.", "reasoning_effort": "low", "max_tokens": 4096, "config": {"loop": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    let template_id = template["id"].as_str().unwrap().to_string();

    let (status, config) = server
        .post(
            "/api/toolbox/adapter-configs/",
            key,
            json!({"template": template_id, "adapter": adapter_id, "config": {"units": "metric", "api_key": "SECRET-weather-key-7731"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{config}");
    Toolbox {
        adapter: adapter_id,
        tool: tool["id"].as_str().unwrap().to_string(),
        template: template_id,
        adapter_config: config["id"].as_str().unwrap().to_string(),
    }
}

fn expected_harness_config(agent_id: &str, model: &str, system_prompt: &str) -> Value {
    json!({
        "id": agent_id,
        "model": model,
        "system_prompt": system_prompt,
        "reasoning_effort": "low",
        "max_tokens": 4096,
        "adapters": [{
            "name": "weather",
            "tools": [{
                "name": "get_forecast",
                "description": "The forecast for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "url": "/api/toolbox/run/weather/get_forecast/",
                "timeout_seconds": 20.0
            }]
        }]
    })
}

/// Replays every request of the recorded session except the tool call, whose
/// url points at a built-in adapter that bedrock does not implement.
async fn harness_session_agent_calls(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("harness-agents@example.com").await;
    let toolbox = weather_toolbox(&server, &key, "lunch-planner").await;
    let mut ids = HashMap::from([(RECORDED_TEMPLATE_ID.to_string(), toolbox.template.clone())]);
    let mut agent_id = None;

    for line in FIXTURE.lines().filter(|l| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).unwrap();
        let method = Method::from_bytes(request["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut path = request["path"].as_str().unwrap().to_string();
        let mut text = request["body"].to_string();
        if path.starts_with("/api/toolbox/run/") {
            continue;
        }
        for (recorded, actual) in &ids {
            path = path.replace(recorded.as_str(), actual);
            text = text.replace(recorded.as_str(), actual);
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        let (status, response) = server.call(method.clone(), &path, Some(&key), (!body.is_null()).then_some(body)).await;

        match (method.as_str(), path.as_str()) {
            ("GET", "/api/templates/") => {
                assert_eq!(status, StatusCode::OK, "{response}");
                // The harness resolves its template by name in the results.
                let found = response["results"].as_array().unwrap().iter().find(|t| t["name"] == "lunch-planner");
                assert_eq!(found.unwrap()["id"], toolbox.template.as_str());
            }
            ("POST", "/api/cloud/agents/") => {
                assert_eq!(status, StatusCode::CREATED, "{response}");
                let id = response["id"].as_str().unwrap().to_string();
                assert_eq!(response["name"], "eval-group_lunch");
                assert_eq!(response["purpose"], "eval");
                assert_eq!(response["template"], toolbox.template.as_str());
                assert_eq!(response["model"], "openai/gpt-4o-mini", "the body's model wins over the template's");
                assert_eq!(response["system_prompt"], "You plan lunches.");
                assert_eq!(response["reasoning_effort"], "low", "unset fields come from the template");
                assert_eq!(response["max_tokens"], 4096);
                assert_eq!(response["config"], json!({"loop": 3}));
                assert_eq!(response["tags"], json!(["git-ref:main", "git-sha:9f3c2ab", "scenario:group_lunch"]));
                assert_eq!(response["status"], "idle");
                ids.insert(RECORDED_AGENT_ID.to_string(), id.clone());
                agent_id = Some(id);
            }
            ("GET", p) if p.ends_with("/harness-config/") => {
                assert_eq!(status, StatusCode::OK, "{response}");
                let id = agent_id.as_deref().unwrap();
                assert_eq!(response, expected_harness_config(id, "openai/gpt-4o-mini", "You plan lunches."));
            }
            ("POST", p) if p.ends_with("/sleep/") => {
                assert_eq!(status, StatusCode::OK, "{response}");
                assert!(response.is_object());
                assert_eq!(response["status"], "sleeping");
                assert_eq!(response["sleep_until"], "2099-01-01T00:00:00.000000Z");
                assert_eq!(response["sleep_reason"], "lunch planned");
            }
            (m, p) => {
                assert!(p.starts_with("/api/tracing/"), "unexpected request {m} {p}");
                let expected = if m == "POST" { StatusCode::CREATED } else { StatusCode::OK };
                assert_eq!(status, expected, "{m} {p}: {response}");
            }
        }
    }

    let id = agent_id.expect("the session creates an agent");
    let (_, agent) = server.get(&format!("/api/cloud/agents/{id}/"), &key).await;
    assert_eq!(agent["status"], "sleeping");
    let actions: Vec<&str> = agent["recent_transitions"].as_array().unwrap().iter().map(|t| t["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["sleep", "create"]);
    // The agent's list is filtered by tag, purpose and template.
    let (_, list) = server
        .get(&format!("/api/cloud/agents/?tag=git-sha:9f3c2ab&tag=scenario:group_lunch&purpose=eval&template={}", toolbox.template), &key)
        .await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["results"][0]["id"], id.as_str());
}

async fn agents_keep_their_snapshot(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("snapshot@example.com").await;
    let toolbox = weather_toolbox(&server, &key, "planner").await;
    let (status, agent) = server.post("/api/cloud/agents/", &key, json!({"name": "a1", "template": "planner"})).await;
    assert_eq!(status, StatusCode::CREATED, "a template resolves by name too: {agent}");
    let id = agent["id"].as_str().unwrap();
    assert_eq!(agent["model"], "openai/gpt-4o");
    let config_path = format!("/api/cloud/agents/{id}/harness-config/");
    let (_, before) = server.get(&config_path, &key).await;
    assert_eq!(before, expected_harness_config(id, "openai/gpt-4o", "Template prompt."));

    // Edit the template, its adapter config, then detach the adapter and attach another.
    let (status, _) = server
        .patch(&format!("/api/templates/{}/", toolbox.template), &key, json!({"model": "anthropic/claude-x", "system_prompt": "New.", "max_tokens": null}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let config_url = format!("/api/toolbox/adapter-configs/{}/", toolbox.adapter_config);
    let (status, body) = server.patch(&config_url, &key, json!({"config": {"units": "imperial"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server.delete(&config_url, &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, other) = server.post("/api/toolbox/adapters/", &key, json!({"name": "calendar"})).await;
    let (status, body) = server
        .post("/api/toolbox/adapter-configs/", &key, json!({"template": toolbox.template, "adapter": other["id"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (_, after) = server.get(&config_path, &key).await;
    assert_eq!(after, before, "template edits do not reach existing agents");
    let (_, agent) = server.get(&format!("/api/cloud/agents/{id}/"), &key).await;
    assert_eq!(agent["adapters"][0]["config"], json!({"units": "metric"}));
    assert_eq!(agent["adapters"][0]["secrets_set"], json!(["api_key"]));

    // A new agent takes the template as it is now.
    let (_, fresh) = server.post("/api/cloud/agents/", &key, json!({"name": "a2", "template": toolbox.template})).await;
    let (_, fresh_config) = server.get(&format!("/api/cloud/agents/{}/harness-config/", fresh["id"].as_str().unwrap()), &key).await;
    assert_eq!(fresh_config["model"], "anthropic/claude-x");
    assert_eq!(fresh_config.get("max_tokens"), None, "an unset max_tokens is left out");
    assert_eq!(fresh_config["adapters"], json!([{"name": "calendar", "tools": []}]));

    let (_, tools) = server.get(&format!("/api/toolbox/tools/?adapter={}", toolbox.adapter), &key).await;
    assert_eq!(tools["count"], 2);
    assert_eq!(tools["results"][1]["enabled"], false);

    // Tools are the adapter's own: a tool edit shows in harness-config at once.
    let (status, _) = server
        .patch(&format!("/api/toolbox/tools/{}/", toolbox.tool), &key, json!({"timeout_seconds": 45.5}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, edited) = server.get(&config_path, &key).await;
    assert_eq!(edited["adapters"][0]["tools"][0]["timeout_seconds"], 45.5);

    // Deleting the template leaves the agent's snapshot; its link reads null.
    let (status, _) = server.delete(&format!("/api/templates/{}/", toolbox.template), &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, agent) = server.get(&format!("/api/cloud/agents/{id}/"), &key).await;
    assert_eq!(agent["template"], Value::Null);
    assert_eq!(agent["model"], "openai/gpt-4o");
    let (_, kept) = server.get(&config_path, &key).await;
    assert_eq!(kept["adapters"][0]["name"], "weather");
}

/// Asserts a 409 whose detail names the action and the current status.
fn assert_refused(status: StatusCode, body: &Value, action: &str, current: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("Cannot {action} an agent that is {current}")), "{detail}");
}

async fn lifecycle_transitions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("lifecycle@example.com").await;
    let (_, agent) = server.post("/api/cloud/agents/", &key, json!({"name": "worker", "model": "m"})).await;
    let id = agent["id"].as_str().unwrap().to_string();
    let action = |name: &str| format!("/api/cloud/agents/{id}/{name}/");

    // idle: stop is refused; sleep indefinitely is allowed.
    let (status, body) = server.post(&action("stop"), &key, json!({})).await;
    assert_refused(status, &body, "stop", "idle");
    let (status, body) = server.post(&action("sleep"), &key, json!({"until": "indefinite", "reason": ""})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "sleeping");
    assert_eq!(body["sleep_until"], Value::Null);
    assert_eq!(body["sleep_reason"], Value::Null);

    // sleeping → running, with a recorded run id; running again is refused.
    let (status, body) = server.post(&action("run"), &key, json!({"run_id": "run-42"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running");
    assert_eq!(body["run_id"], "run-42");
    assert_eq!(body["last_run_id"], "run-42");
    assert_eq!(body["sleep_until"], Value::Null);
    assert!(body["last_run_at"].as_str().unwrap().ends_with('Z'));
    let (status, body) = server.call(Method::POST, &action("run"), Some(&key), None).await;
    assert_refused(status, &body, "run", "running");

    // A past `until` is rejected; a near one makes the agent due to wake.
    let (status, body) = server.post(&action("sleep"), &key, json!({"until": "2001-01-01T00:00:00Z"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["until"][0].as_str().unwrap().contains("future"), "{body}");
    let (status, body) = server.post(&action("sleep"), &key, json!({"until": "tomorrow"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["until"].is_array(), "{body}");
    let (status, body) = server.post(&action("sleep"), &key, json!({"reason": "no until"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["until"][0], "This field is required.");
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (status, body) = server
        .post(&action("sleep"), &key, json!({"until": soon.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(), "reason": "nap"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "sleeping");
    assert_eq!(body["sleep_reason"], "nap");
    let (_, list) = server.get("/api/cloud/agents/?status=sleeping", &key).await;
    assert_eq!(list["count"], 1);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (_, body) = server.get(&format!("/api/cloud/agents/{id}/"), &key).await;
    assert_eq!(body["status"], "due_to_wake");
    let (_, list) = server.get("/api/cloud/agents/?status=due_to_wake", &key).await;
    assert_eq!(list["count"], 1);
    let (_, list) = server.get("/api/cloud/agents/?status=sleeping", &key).await;
    assert_eq!(list["count"], 0);

    // sleeping (due) → stopped; stopped refuses stop and sleep, accepts run.
    let (status, body) = server.post(&action("stop"), &key, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "stopped");
    assert_eq!(body["sleep_until"], Value::Null);
    let (status, body) = server.post(&action("stop"), &key, json!({})).await;
    assert_refused(status, &body, "stop", "stopped");
    let (status, body) = server.post(&action("sleep"), &key, json!({"until": "indefinite"})).await;
    assert_refused(status, &body, "sleep", "stopped");
    let (status, body) = server.post(&action("run"), &key, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["last_run_id"].as_str().unwrap().len(), 36, "a generated run id is a UUID");
    // running → sleeping → running (wake), and running → stopped.
    let (status, _) = server.post(&action("sleep"), &key, json!({"until": "indefinite"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post(&action("run"), &key, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = server.post(&action("stop"), &key, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // PATCH does not change the lifecycle.
    let (status, body) = server.patch(&format!("/api/cloud/agents/{id}/"), &key, json!({"status": "running"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "stopped");

    let (_, transitions) = server.get(&format!("/api/cloud/agents/{id}/transitions/?page_size=100"), &key).await;
    let steps: Vec<(String, String, String)> = transitions["results"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| (t["action"].as_str().unwrap().into(), t["from_status"].as_str().unwrap().into(), t["to_status"].as_str().unwrap().into()))
        .collect();
    let expected = [
        ("create", "", "idle"),
        ("sleep", "idle", "sleeping"),
        ("run", "sleeping", "running"),
        ("sleep", "running", "sleeping"),
        ("stop", "sleeping", "stopped"),
        ("run", "stopped", "running"),
        ("sleep", "running", "sleeping"),
        ("run", "sleeping", "running"),
        ("stop", "running", "stopped"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, f, t)| (a.to_string(), f.to_string(), t.to_string())).collect();
    assert_eq!(steps, expected, "every transition, and no refused one, is recorded");
    assert_eq!(transitions["results"][5]["reason"], "nap");
    assert_eq!(transitions["results"][6]["run_id"], "run-42");

    // idle → running directly, and sleeping → sleeping with a new time.
    let (_, second) = server.post("/api/cloud/agents/", &key, json!({"name": "second", "model": "m"})).await;
    let second = second["id"].as_str().unwrap().to_string();
    let (status, body) = server.post(&format!("/api/cloud/agents/{second}/run/"), &key, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running");
    let sleep = format!("/api/cloud/agents/{second}/sleep/");
    let (status, _) = server.post(&sleep, &key, json!({"until": "2099-01-01T00:00:00Z"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.post(&sleep, &key, json!({"until": "2098-06-01T12:00:00+02:00", "reason": "earlier"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sleep_until"], "2098-06-01T10:00:00.000000Z");
    assert_eq!(body["recent_transitions"][0]["from_status"], "sleeping");
    assert_eq!(body["recent_transitions"][0]["to_status"], "sleeping");

    // Unknown and other organizations' agents are 404 for every action.
    let other = server.api_key("lifecycle-other@example.com").await;
    for name in ["run", "stop"] {
        let (status, _) = server.post(&action(name), &other, json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = server.post(&action("sleep"), &other, json!({"until": "indefinite"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.post("/api/cloud/agents/no-such-agent/run/", &key, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn tags_are_idempotent_and_free_form(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("tags@example.com").await;
    let (_, agent) = server.post("/api/cloud/agents/", &key, json!({"name": "t", "model": "m", "tags": ["a", "a", " b "]})).await;
    assert_eq!(agent["tags"], json!(["a", "b"]));
    let id = agent["id"].as_str().unwrap();
    let tags = format!("/api/cloud/agents/{id}/tags/");

    let odd = "git-ref:feature/x y%z?#é";
    for _ in 0..2 {
        let (status, body) = server.post(&tags, &key, json!({"tag": odd})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["tags"], json!(["a", "b", odd]));
    }
    let encoded: String = percent_encode(odd);
    let (_, list) = server.get(&format!("/api/cloud/agents/?tag={encoded}"), &key).await;
    assert_eq!(list["count"], 1);
    for _ in 0..2 {
        let (status, _) = server.delete(&format!("{tags}{encoded}/"), &key).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, _) = server.delete(&format!("{tags}never-attached/"), &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, agent) = server.get(&format!("/api/cloud/agents/{id}/"), &key).await;
    assert_eq!(agent["tags"], json!(["a", "b"]));

    let (status, body) = server.post(&tags, &key, json!({"tag": "  "})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["tag"].is_array());
    let (status, body) = server.post(&tags, &key, json!({"tag": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["tag"].is_array(), "{body}");
    let other = server.api_key("tags-other@example.com").await;
    let (status, _) = server.post(&tags, &other, json!({"tag": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.delete(&format!("{tags}a/"), &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn secrets_are_write_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("secrets@example.com").await;
    let toolbox = weather_toolbox(&server, &key, "secretive").await;
    let url = format!("/api/toolbox/adapter-configs/{}/", toolbox.adapter_config);
    let (_, agent) = server.post("/api/cloud/agents/", &key, json!({"name": "s", "template": toolbox.template})).await;
    let agent_id = agent["id"].as_str().unwrap();

    let mut seen = Vec::new();
    seen.push(server.get(&url, &key).await.1);
    seen.push(server.get(&format!("/api/toolbox/adapter-configs/?template={}", toolbox.template), &key).await.1);
    seen.push(server.get(&format!("/api/cloud/agents/{agent_id}/"), &key).await.1);
    seen.push(server.get(&format!("/api/cloud/agents/{agent_id}/harness-config/"), &key).await.1);
    seen.push(server.get("/api/cloud/agents/", &key).await.1);
    assert_eq!(seen[0]["config"], json!({"units": "metric"}));
    assert_eq!(seen[0]["secrets_set"], json!(["api_key"]));
    for body in &seen {
        assert!(!body.to_string().contains("SECRET-weather-key-7731"), "a secret leaked: {body}");
    }

    // An update that leaves the secret out keeps it; null removes it.
    let (status, body) = server.patch(&url, &key, json!({"config": {"units": "imperial"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secrets_set"], json!(["api_key"]));
    let (status, body) = server.put(&url, &key, json!({"config": {"units": "metric"}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secrets_set"], json!(["api_key"]), "PUT keeps secrets it does not mention");
    let (status, body) = server.patch(&url, &key, json!({"config": {"api_key": null}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["secrets_set"], json!([]));
    assert_eq!(body["config"], json!({"units": "metric"}));

    // Configs are checked against the adapter's schema, without quoting secrets.
    let (status, body) = server.patch(&url, &key, json!({"config": {"units": "kelvin"}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["config.units"].is_array(), "{body}");
    let (status, body) = server.patch(&url, &key, json!({"config": {"api_key": 12345678}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.to_string().contains("12345678"), "{body}");
    assert!(body["config.api_key"].is_array(), "{body}");
    let (status, body) = server.put(&url, &key, json!({"config": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "units is required: {body}");
    assert!(body["config"][0].as_str().unwrap().contains("units"), "{body}");
}

async fn bad_input_names_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("bad-input@example.com").await;
    let other = server.api_key("bad-input-other@example.com").await;
    let (_, adapter) = server.post("/api/toolbox/adapters/", &key, json!({"name": "fs"})).await;
    let adapter_id = adapter["id"].as_str().unwrap();
    let (_, foreign_template) = server.post("/api/templates/", &other, json!({"name": "theirs", "model": "m"})).await;
    let foreign_template = foreign_template["id"].as_str().unwrap();

    let tool = |overrides: Value| {
        let mut body = json!({"adapter": adapter_id, "name": "read_file", "url": "https://tools.example.com/read"});
        body.as_object_mut().unwrap().extend(overrides.as_object().unwrap().clone());
        body
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/api/toolbox/tools/", tool(json!({"parameters": {"type": "objekt"}})), "parameters"),
        ("/api/toolbox/tools/", tool(json!({"parameters": {"type": "string"}})), "parameters"),
        ("/api/toolbox/tools/", tool(json!({"parameters": {"properties": {"a": {"minLength": -1}}, "type": "object"}})), "parameters"),
        ("/api/toolbox/tools/", tool(json!({"parameters": [1, 2]})), "parameters"),
        ("/api/toolbox/tools/", tool(json!({"timeout_seconds": -1})), "timeout_seconds"),
        ("/api/toolbox/tools/", tool(json!({"timeout_seconds": 0})), "timeout_seconds"),
        ("/api/toolbox/tools/", tool(json!({"timeout_seconds": 1e300})), "timeout_seconds"),
        ("/api/toolbox/tools/", tool(json!({"timeout_seconds": "10"})), "timeout_seconds"),
        ("/api/toolbox/tools/", tool(json!({"name": "read file"})), "name"),
        ("/api/toolbox/tools/", tool(json!({"url": "ftp://x.example.com/"})), "url"),
        ("/api/toolbox/tools/", tool(json!({"url": "//evil.example.com/"})), "url"),
        ("/api/toolbox/adapters/", json!({"name": "x", "config_schema": {"type": 5}}), "config_schema"),
        ("/api/toolbox/adapters/", json!({"name": ""}), "name"),
        ("/api/templates/", json!({"name": "t", "max_tokens": -5}), "max_tokens"),
        ("/api/templates/", json!({"name": "t", "max_tokens": 1.5}), "max_tokens"),
        ("/api/templates/", json!({"name": "t", "reasoning_effort": "extreme"}), "reasoning_effort"),
        ("/api/templates/", json!({"name": "t", "config": [1]}), "config"),
        ("/api/templates/", json!({"model": "m"}), "name"),
        ("/api/cloud/agents/", json!({"name": "a", "model": "m", "purpose": "fun"}), "purpose"),
        ("/api/cloud/agents/", json!({"name": "a"}), "model"),
        ("/api/cloud/agents/", json!({"name": "a", "model": "m", "tags": "x"}), "tags"),
        ("/api/cloud/agents/", json!({"name": "a", "model": "m", "tags": ["ok", ""]}), "tags.1"),
        ("/api/cloud/agents/", json!({"name": 7, "model": "m"}), "name"),
    ];
    for (path, body, field) in cases {
        let (status, response) = server.post(path, &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {response}");
        assert!(response[field].is_array(), "{path} {body}: expected an error on {field}, got {response}");
    }

    let raw = br#"{"name": "t", "max_tokens": 18446744073709551616}"#.to_vec();
    let (status, body) = server.call_raw(Method::POST, "/api/templates/", Some(&key), raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["max_tokens"].is_array(), "{body}");
    let raw = b"{\"name\": \"t\", \"model\": \"m\", \"description\": \"caf\xff\"}".to_vec();
    let (status, body) = server.call_raw(Method::POST, "/api/templates/", Some(&key), raw).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["description"].is_array(), "invalid UTF-8 names its field: {body}");

    // References to other organizations' objects are 404s naming the field.
    let (status, body) = server.post("/api/cloud/agents/", &key, json!({"name": "a", "model": "m", "template": foreign_template})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["template"].is_array(), "{body}");
    let (status, body) = server.post("/api/cloud/agents/", &key, json!({"name": "a", "model": "m", "template": "theirs"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.get(&format!("/api/templates/{foreign_template}/"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.patch(&format!("/api/templates/{foreign_template}/"), &key, json!({"name": "mine"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.delete(&format!("/api/templates/{foreign_template}/"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server.post("/api/toolbox/adapter-configs/", &key, json!({"template": foreign_template, "adapter": adapter_id})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["template"].is_array(), "{body}");
    let (status, body) = server.post("/api/toolbox/tools/", &other, json!({"adapter": adapter_id, "name": "x", "url": "/x/"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["adapter"].is_array(), "{body}");
    let (_, theirs) = server.get(&format!("/api/toolbox/adapters/{adapter_id}/"), &other).await;
    assert_eq!(theirs["detail"], "Not found.");

    // Duplicate names: templates and adapters per organization, tools per adapter.
    let (status, _) = server.post("/api/templates/", &key, json!({"name": "theirs", "model": "m"})).await;
    assert_eq!(status, StatusCode::CREATED, "another organization's name is free");
    let (status, body) = server.post("/api/templates/", &key, json!({"name": "theirs"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["name"][0], "A template with this name already exists.");
    let (status, body) = server.post("/api/toolbox/adapters/", &key, json!({"name": "fs"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["name"].is_array());
    let (status, _) = server.post("/api/toolbox/tools/", &key, tool(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server.post("/api/toolbox/tools/", &key, tool(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["name"].is_array());
    let (_, template) = server.get("/api/templates/?name=theirs", &key).await;
    let template_id = template["results"][0]["id"].as_str().unwrap();
    let (status, _) = server.post("/api/toolbox/adapter-configs/", &key, json!({"template": template_id, "adapter": adapter_id})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server.post("/api/toolbox/adapter-configs/", &key, json!({"template": template_id, "adapter": adapter_id})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["non_field_errors"].is_array(), "{body}");
    // Agent names may repeat: evaluation runs create one per run.
    for _ in 0..2 {
        let (status, _) = server.post("/api/cloud/agents/", &key, json!({"name": "eval-run", "model": "m"})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = server.get("/api/cloud/agents/?status=dreaming", &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["status"].is_array());
}

async fn templates_and_agents_crud(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = server.api_key("crud@example.com").await;
    let (token, _) = server.sign_up("crud-user@example.com").await;

    let (status, template) = server
        .post("/api/templates/", &token, json!({"name": "base", "description": "d", "model": "m1", "system_prompt": "p", "config": {"a": 1}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "user tokens work as well as API keys: {template}");
    let (_, template) = server.post("/api/templates/", &key, json!({"name": "base", "description": "d", "model": "m1", "system_prompt": "p", "config": {"a": 1}})).await;
    let url = format!("/api/templates/{}/", template["id"].as_str().unwrap());
    let (status, patched) = server.patch(&url, &key, json!({"system_prompt": "p2", "reasoning_effort": "high"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["description"], "d");
    assert_eq!(patched["system_prompt"], "p2");
    assert_eq!(patched["reasoning_effort"], "high");
    let (status, replaced) = server.put(&url, &key, json!({"name": "base2", "model": "m2"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["description"], "", "PUT resets what it does not mention");
    assert_eq!(replaced["reasoning_effort"], Value::Null);
    assert_eq!(replaced["config"], json!({}));
    let (status, body) = server.put(&url, &key, json!({"model": "m3"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "PUT requires the name: {body}");
    let (_, list) = server.get("/api/templates/", &key).await;
    assert_eq!(list["count"], 1, "each organization sees only its templates");

    let (_, agent) = server
        .post("/api/cloud/agents/", &key, json!({"name": "n", "model": "m", "purpose": "dev", "tags": ["x"], "max_tokens": 100}))
        .await;
    assert_eq!(agent["purpose"], "dev");
    let agent_url = format!("/api/cloud/agents/{}/", agent["id"].as_str().unwrap());
    let (_, patched) = server.patch(&agent_url, &key, json!({"name": "n2", "reasoning_effort": "minimal"})).await;
    assert_eq!(patched["name"], "n2");
    assert_eq!(patched["tags"], json!(["x"]), "PATCH keeps what it does not mention");
    assert_eq!(patched["max_tokens"], 100);
    let (status, replaced) = server.put(&agent_url, &key, json!({"name": "n3", "model": "m9", "template": "base2"})).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["tags"], json!([]));
    assert_eq!(replaced["purpose"], "prod");
    assert_eq!(replaced["max_tokens"], Value::Null);
    assert_eq!(replaced["template"], template["id"]);
    let (_, page) = server.get("/api/cloud/agents/?page_size=1&name=n3", &key).await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["results"][0]["id"], agent["id"]);
    let (status, _) = server.delete(&agent_url, &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get(&agent_url, &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.delete(&url, &key).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get("/api/cloud/agents/", "Bearer not-a-key").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_both_backends!(
    harness_session_agent_calls,
    agents_keep_their_snapshot,
    lifecycle_transitions,
    tags_are_idempotent_and_free_form,
    secrets_are_write_only,
    bad_input_names_the_field,
    templates_and_agents_crud,
);
