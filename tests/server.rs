//! The server as a whole: health checks, routing conventions, the OpenAPI
//! document and its pages, JSON logs without secrets, and graceful shutdown.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn health_and_routing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["control_plane"], "ok");

    let (status, body) = server.call(Method::GET, "/api/nothing-here/", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["detail"], "Not found.");
    let (status, body) = server.call(Method::DELETE, "/api/organizations/auth/login/", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["detail"].is_string());

    // A path without its trailing slash reaches the same handler.
    let (token, _) = server.sign_up("slash@example.com").await;
    let (status, me) = server.get("/api/organizations/auth/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["email"], "slash@example.com");
}

async fn openapi_covers_every_route(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, schema) = server.call(Method::GET, "/api/schema/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(schema["openapi"].as_str().unwrap().starts_with("3."));
    let paths = schema["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/api/organizations/auth/signup/", &["post"]),
        ("/api/organizations/auth/login/", &["post"]),
        ("/api/organizations/auth/me/", &["get"]),
        ("/api/organizations/auth/logout/", &["post"]),
        ("/api/organizations/organizations/", &["get"]),
        ("/api/organizations/organizations/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/organizations/api-keys/", &["get", "post"]),
        ("/api/organizations/api-keys/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/organizations/members/", &["get"]),
        ("/api/organizations/members/{user_id}/", &["get", "delete"]),
        ("/api/organizations/invites/", &["get", "post"]),
        ("/api/organizations/invites/{id}/", &["delete"]),
        ("/api/organizations/invites/{id}/accept/", &["post"]),
        ("/api/tracing/traces/", &["get", "post"]),
        ("/api/tracing/traces/list/", &["get"]),
        ("/api/tracing/ingest/", &["post"]),
        ("/v1/traces", &["post"]),
        ("/api/tracing/traces/{trace_id}/", &["get", "patch"]),
        ("/api/tracing/traces/{trace_id}/end/", &["post"]),
        ("/api/tracing/spans/", &["get", "post"]),
        ("/api/tracing/spans/{span_id}/", &["get", "patch"]),
        ("/api/tracing/spans/{span_id}/end/", &["post"]),
        ("/api/tracing/spans/{span_id}/flag/", &["post"]),
        ("/api/tracing/spans/{span_id}/unflag/", &["post"]),
        ("/api/templates/", &["get", "post"]),
        ("/api/templates/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/cloud/agents/", &["get", "post"]),
        ("/api/cloud/agents/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/cloud/agents/{id}/run/", &["post"]),
        ("/api/cloud/agents/{id}/stop/", &["post"]),
        ("/api/cloud/agents/{id}/sleep/", &["post"]),
        ("/api/cloud/agents/{id}/harness-config/", &["get"]),
        ("/api/cloud/agents/{id}/transitions/", &["get"]),
        ("/api/cloud/agents/{id}/tags/", &["post"]),
        ("/api/cloud/agents/{id}/tags/{tag}/", &["delete"]),
        ("/api/toolbox/adapters/", &["get", "post"]),
        ("/api/toolbox/adapters/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/toolbox/tools/", &["get", "post"]),
        ("/api/toolbox/tools/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/toolbox/adapter-configs/", &["get", "post"]),
        ("/api/toolbox/adapter-configs/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/cloud/usage/", &["get", "post"]),
        ("/api/cloud/usage/{id}/", &["get"]),
        ("/api/cloud/usage/summary/", &["get"]),
        ("/api/cloud/agents/{id}/usage/", &["get"]),
        ("/api/cloud/model-prices/", &["get", "post"]),
        ("/api/cloud/model-prices/{id}/", &["get", "put", "patch", "delete"]),
        ("/api/tracing/traces/{trace_id}/reviews/", &["get", "post"]),
        ("/api/tracing/reviews/{review_id}/", &["get", "patch"]),
        ("/api/tracing/reviews/summary/", &["get"]),
        ("/api/tracing/evals/", &["get", "post"]),
        ("/api/tracing/evals/{eval_id}/", &["get", "patch", "delete"]),
        ("/api/tracing/checkpoints/summary/", &["get"]),
    ];
    for (path, methods) in expected {
        let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for method in *methods {
            assert!(item.get(*method).is_some(), "{method} {path} missing from the OpenAPI document");
        }
    }
    assert_eq!(paths.len(), expected.len(), "undocumented or unexpected paths: {:?}", paths.keys().collect::<Vec<_>>());

    // The documentation pages and their assets come from the server itself.
    for (page, asset) in [
        ("/api/docs/", "/api/docs/assets/swagger-ui-bundle.js"),
        ("/api/docs/", "/api/docs/assets/swagger-ui.css"),
        ("/api/redoc/", "/api/redoc/assets/redoc.standalone.js"),
    ] {
        let html = server.client.get(format!("{}{page}", server.base)).send().await.unwrap();
        assert_eq!(html.status(), StatusCode::OK);
        assert!(html.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let html = html.text().await.unwrap();
        assert!(html.contains(asset), "{page} must load {asset}");
        assert!(!html.contains("https://"), "{page} must not load anything from the internet");
        let response = server.client.get(format!("{}{asset}", server.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 10_000, "{asset} is served whole");
    }
}

on_both_backends!(health_and_routing, openapi_covers_every_route);

/// Runs the binary with debug JSON logs, exercises every kind of secret, stops
/// it with SIGTERM, and checks the logs and responses for the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_responses_or_logs_and_sigterm_stops_cleanly() {
    let temp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bedrock"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json", "--log", "debug"])
        .arg("--data-dir")
        .arg(temp.path())
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    common::wait_ready(&client, &base).await;

    let password = "PASSWORD-sentinel-8812";
    let provider_key = "sk-PROVIDER-sentinel-4471";
    let mut responses = String::new();
    let signup: Value = client
        .post(format!("{base}/api/organizations/auth/signup/"))
        .json(&json!({"email": "logs@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["token"].as_str().unwrap().to_string();
    let org = signup["organization"]["id"].as_str().unwrap().to_string();
    let key_response: Value = client
        .post(format!("{base}/api/organizations/api-keys/"))
        .header("Authorization", format!("Token {token}"))
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_key = key_response["key"].as_str().unwrap().to_string();
    for (method, path, body) in [
        (Method::PATCH, format!("/api/organizations/organizations/{org}/"), json!({"openai_api_key": provider_key})),
        (Method::GET, format!("/api/organizations/organizations/{org}/"), Value::Null),
        (Method::GET, "/api/organizations/api-keys/".to_string(), Value::Null),
        (Method::GET, "/api/organizations/auth/me/".to_string(), Value::Null),
        (Method::POST, "/api/tracing/traces/".to_string(), json!({"id": "t1", "name": "run"})),
    ] {
        let mut request = client.request(method, format!("{base}{path}")).header("Authorization", format!("Bearer {api_key}"));
        if !body.is_null() {
            request = request.json(&body);
        }
        responses.push_str(&request.send().await.unwrap().text().await.unwrap());
    }
    let adapter_secret = "ADAPTER-sentinel-9035";
    let call = |method: Method, path: &str, body: Value| {
        let request = client.request(method, format!("{base}{path}")).header("Authorization", format!("Bearer {api_key}"));
        async move {
            let response = request.json(&body).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let schema = json!({"type": "object", "properties": {"token": {"type": "string", "writeOnly": true}}});
    let (_, adapter) = call(Method::POST, "/api/toolbox/adapters/", json!({"name": "sms", "config_schema": schema})).await;
    let (_, template) = call(Method::POST, "/api/templates/", json!({"name": "t", "model": "m"})).await;
    let (status, config) = call(
        Method::POST,
        "/api/toolbox/adapter-configs/",
        json!({"template": template["id"], "adapter": adapter["id"], "config": {"token": adapter_secret}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{config}");
    responses.push_str(&config.to_string());
    let (_, agent) = call(Method::POST, "/api/cloud/agents/", json!({"name": "a", "template": "t"})).await;
    responses.push_str(&agent.to_string());

    let login = client
        .post(format!("{base}/api/organizations/auth/login/"))
        .json(&json!({"email": "logs@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    responses.push_str(&login.text().await.unwrap());

    // SIGTERM: the server drains, flushes and exits 0.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "server did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "server exited with {exit}");
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();

    assert!(logs.contains("\"shutdown signal received\""), "logs are JSON lines: {logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON log line: {line}");
    }
    for secret in [password, provider_key, adapter_secret, api_key.as_str(), token.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    // Secrets are stored encrypted or hashed: no file of the data directory contains one.
    for entry in std::fs::read_dir(temp.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for secret in [password, provider_key, adapter_secret, api_key.as_str(), token.as_str()] {
                let found = bytes.windows(secret.len()).any(|window| window == secret.as_bytes());
                assert!(!found, "{} contains a secret in plain text", path.display());
            }
        }
    }
    for secret in [password, provider_key, adapter_secret] {
        assert!(!responses.contains(secret), "a secret reached a response");
    }
    assert!(!responses.contains(&api_key), "the API key secret is shown only at creation");

    // The graceful stop flushed the buffer: a segment exists.
    let segments = std::fs::read_dir(temp.path().join("events/segments")).unwrap().count();
    assert_eq!(segments, 1, "the buffered trace was flushed at shutdown");
}

#[test]
fn migrate_command_creates_the_control_plane() {
    let temp = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_bedrock"))
            .arg("migrate")
            .arg("--data-dir")
            .arg(temp.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(temp.path().join("control.db").exists());
    // Running it again finds nothing to apply and still succeeds.
    let second = run();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
}

#[test]
fn help_documents_every_setting_with_its_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_bedrock")).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, variable) in [
        ("--listen", "BEDROCK_LISTEN"),
        ("--data-dir", "BEDROCK_DATA_DIR"),
        ("--database-url", "DATABASE_URL"),
        ("--log-format", "BEDROCK_LOG_FORMAT"),
        ("--max-body-bytes", "BEDROCK_MAX_BODY_BYTES"),
        ("--max-text-field-bytes", "BEDROCK_MAX_TEXT_FIELD_BYTES"),
        ("--otlp-agent-attributes", "BEDROCK_OTLP_AGENT_ATTRIBUTES"),
        ("--wal-max-bytes", "BEDROCK_WAL_MAX_BYTES"),
        ("--buffer-max-bytes", "BEDROCK_BUFFER_MAX_BYTES"),
        ("--flush-interval-ms", "BEDROCK_FLUSH_INTERVAL_MS"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}
