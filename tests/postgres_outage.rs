//! A Postgres outage under a running server. Every request that needs the
//! control plane gets a 503 with a JSON `detail` and `Retry-After`, never a
//! 500. Once Postgres is back, the server recovers with the data of before
//! the outage intact.
//!
//! The test starts a private Postgres server of its own (the PostgreSQL 15
//! programs that scripts/test uses) so it can stop and restart it without
//! disturbing the other tests. As root, the Postgres programs run as the
//! `postgres` user, as in scripts/test, because they refuse to run as root.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{fresh_clickhouse_database, test_settings, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Time allowed for the server to serve requests again once Postgres is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the directory of the Postgres server programs: `PG_BINDIR`, as
/// scripts/test reads it, else Debian's path.
fn postgres_bindir() -> PathBuf {
    let dir = std::env::var_os("PG_BINDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(dir.join("initdb").exists(), "initdb not found in {}: install postgresql-15 or set PG_BINDIR", dir.display());
    dir
}

fn output_text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Runs `id ARGS` and returns its output line.
fn id(args: &[&str]) -> Option<String> {
    let output = Command::new("id").args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A Postgres server of this test alone on a loopback port, with its data in
/// a temporary directory. Stopped with `-m immediate` when dropped.
struct PrivatePostgres {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// The user that runs the Postgres programs when the test runs as root.
    run_as: Option<String>,
    /// The database superuser that initdb creates.
    role: String,
    running: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_path_buf();
        let is_root = id(&["-u"]).as_deref() == Some("0");
        let run_as = if is_root {
            // The same choice as scripts/test: `postgres`, else the user it creates.
            let user = ["postgres", "bedrock-test"]
                .into_iter()
                .find(|user| id(&["-u", user]).is_some())
                .expect("as root, the test needs a `postgres` or `bedrock-test` user to run Postgres");
            let uid: u32 = id(&["-u", user]).unwrap().parse().unwrap();
            let gid: u32 = id(&["-g", user]).unwrap().parse().unwrap();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("hand the temporary directory to the Postgres user");
            Some(user.to_string())
        } else {
            None
        };
        let role = run_as.clone().or_else(|| id(&["-un"])).expect("the name of the current user");
        let mut server =
            PrivatePostgres { _temp: temp, dir, bindir: postgres_bindir(), port: common::free_port(), run_as, role, running: false };

        let data = server.data_dir();
        let output = server.run("initdb", &[
            "-D",
            data.to_str().unwrap(),
            &format!("--username={}", server.role),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        assert!(output.status.success(), "initdb failed: {}", output_text(&output));
        // The data is thrown away at the end, so fsync is off for speed. A
        // commit still reaches the operating system before it returns
        // (synchronous_commit stays on), so it survives the immediate stop,
        // which kills the server processes but not the host.
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n",
            server.port,
            server.dir.display()
        );
        let config = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&config).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&config, text).expect("write postgresql.conf");
        server.start_again();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one Postgres program from the data directory's parent, which the
    /// Postgres user can read (the test's working directory may not be).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        command.args(args).current_dir(&self.dir).output().unwrap_or_else(|err| panic!("could not run {}: {err}", path.display()))
    }

    /// Starts the server on the same port and data directory, waiting up to 60 s.
    fn start_again(&mut self) {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let output = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        assert!(output.status.success(), "pg_ctl start failed: {}\n{}", output_text(&output), std::fs::read_to_string(&log).unwrap_or_default());
        self.running = true;
    }

    /// Stops the server at once, as a crash or a lost host would: no
    /// checkpoint, and every client connection is cut.
    fn stop_immediately(&mut self) {
        let data = self.data_dir();
        let output = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "-t", "30", "stop"]);
        assert!(output.status.success(), "pg_ctl stop failed: {}", output_text(&output));
        self.running = false;
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{database}", self.role, self.port)
    }

    /// Creates a database and returns its URL. Connecting is retried for up
    /// to 10 s, in case the server is not yet accepting TCP connections when
    /// `pg_ctl -w` returns.
    async fn create_database(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let control = loop {
            match bedrock_store::control::ControlPlane::connect(&self.url("postgres"), 1).await {
                Ok(control) => break control,
                Err(err) if Instant::now() < deadline => {
                    println!("connecting to the private Postgres failed, retrying: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("could not connect to the private Postgres at {}: {err}", self.url("postgres")),
            }
        };
        control.execute_admin(&format!("CREATE DATABASE {name}")).await.expect("create the database");
        control.close().await;
        self.url(name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "-t", "30", "stop"]);
        }
    }
}

/// A response with the headers a 503 must carry.
struct Response {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
    elapsed: Duration,
}

async fn send(server: &TestServer, method: Method, path: &str, auth: Option<&str>, body: Option<Value>) -> Response {
    send_to(server.client.clone(), server.base.clone(), method, path.to_string(), auth.map(str::to_string), body).await
}

async fn send_to(client: reqwest::Client, base: String, method: Method, path: String, auth: Option<String>, body: Option<Value>) -> Response {
    let started = Instant::now();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.unwrap_or_else(|err| panic!("{path}: the request failed: {err}"));
    let status = reply.status();
    let retry_after = reply.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let bytes = reply.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    Response { status, retry_after, body, elapsed: started.elapsed() }
}

/// One request sent while Postgres is down: method, path, `Authorization` and body.
type Request = (Method, String, Option<String>, Option<Value>);

/// Sends the requests concurrently and returns their responses in order. Each
/// request that needs the database waits for the connection pool's acquire
/// timeout (5 s), so one after another they would take minutes.
async fn send_concurrently(server: &TestServer, requests: &[Request]) -> Vec<Response> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (method, path, auth, body)) in requests.iter().cloned().enumerate() {
        let (client, base) = (server.client.clone(), server.base.clone());
        tasks.spawn(async move { (index, send_to(client, base, method, path, auth, body).await) });
    }
    let mut responses: Vec<Option<Response>> = requests.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (index, response) = joined.expect("request task");
        responses[index] = Some(response);
    }
    responses.into_iter().map(Option::unwrap).collect()
}

/// Asserts a 503 with a JSON `detail` that names the database and a `Retry-After`, as clients retry on.
fn assert_unavailable(context: &str, response: &Response) {
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{context} while Postgres is down: {}", response.body);
    let detail = response.body["detail"].as_str().unwrap_or_else(|| panic!("{context}: a 503 without a JSON detail: {}", response.body));
    assert!(detail.contains("database"), "{context}: the detail names the database: {detail}");
    assert!(response.retry_after.is_some(), "{context}: a 503 without Retry-After");
}

fn span(id: &str, trace_id: &str, span_type: &str, metadata: Value) -> Value {
    json!({"id": id, "trace_id": trace_id, "parent_id": null, "name": id, "span_type": span_type,
        "started_at": "2026-03-01T09:30:00.000001Z", "input_text": "in", "metadata": metadata})
}

/// Which event store the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    Embedded,
    ClickHouse,
}

async fn check_outage_and_recovery(events: Events) {
    let mut postgres = PrivatePostgres::start();
    let database_url = postgres.create_database("bedrock_outage").await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = test_settings(data.path(), Some(database_url));
    if events == Events::ClickHouse {
        settings.storage.clickhouse_url = Some(fresh_clickhouse_database().await);
    }
    // Long enough that every credential used before the outage stays cached
    // through it; the test takes far less.
    settings.auth_cache_seconds = 600;
    let server = TestServer::start_settings(settings).await;

    // Before the outage: an organization, an agent, two API keys of which one
    // is used (so cached) and one never is, and some traced work.
    let (token, _) = server.sign_up("outage-owner@example.com").await;
    let (status, created) = server.post("/api/organizations/api-keys/", &token, json!({"name": "harness"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let cached_key = format!("Bearer {}", created["key"].as_str().unwrap());
    let (status, created) = server.post("/api/organizations/api-keys/", &token, json!({"name": "spare"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let uncached_key = format!("Bearer {}", created["key"].as_str().unwrap());
    let (status, agent) = server.post("/api/cloud/agents/", &token, json!({"name": "planner", "model": "gpt-4o"})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent_id = agent["id"].as_str().unwrap().to_string();

    let (status, body) = server
        .post("/api/tracing/traces/", &cached_key, json!({"id": "before", "name": "run_agent", "agent_id": agent_id,
            "started_at": "2026-03-01T09:30:00Z", "metadata": {"run_id": "r1"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let llm_cost = json!({"llm_cost": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100, "cached_tokens": 0, "total_cost_usd": 0.25}});
    let (status, body) = server.post("/api/tracing/spans/", &cached_key, span("before-llm", "before", "llm", llm_cost)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .patch("/api/tracing/traces/before/", &cached_key, json!({"ended_at": "2026-03-01T09:31:00Z", "error": "", "metadata": {"done": true}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, before_trace) = server.get("/api/tracing/traces/before/", &cached_key).await;
    assert_eq!(before_trace["span_count"], 1);
    assert_eq!(before_trace["cost_usd"], json!(0.25));
    let (_, me) = server.get("/api/organizations/auth/me/", &token).await;
    assert_eq!(me["user"]["email"], "outage-owner@example.com", "the user token is cached: {me}");

    postgres.stop_immediately();

    // The process is alive but not ready.
    let health = send(&server, Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = send(&server, Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.body);
    assert_eq!(ready.body["control_plane"], "unreachable");

    // Span ingestion with a cached key needs no control plane: it is
    // acknowledged from the write-ahead log and readable at once.
    let (status, body) = server.post("/api/tracing/spans/", &cached_key, span("during-tool", "before", "tool", json!({"n": 1}))).await;
    assert_eq!(status, StatusCode::CREATED, "span ingestion with a cached key while Postgres is down: {body}");
    let (status, body) = server.patch("/api/tracing/spans/during-tool/", &cached_key, json!({"ended_at": "2026-03-01T09:30:02Z", "output_text": "ok"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.get("/api/tracing/spans/during-tool/", &cached_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output_text"], "ok");

    // Control-plane reads and writes with cached credentials, then
    // credentials that are not cached and so cannot be checked, whatever they
    // are: a real key, a key that does not exist, a sign-up and a log-in.
    let token = token.as_str();
    let cached = cached_key.as_str();
    let request = |method: Method, path: &str, auth: Option<&str>, body: Option<Value>| -> Request {
        (method, path.to_string(), auth.map(str::to_string), body)
    };
    let requests = vec![
        request(Method::GET, "/api/cloud/agents/", Some(token), None),
        request(Method::GET, "/api/cloud/agents/", Some(cached), None),
        request(Method::GET, &format!("/api/cloud/agents/{agent_id}/"), Some(cached), None),
        request(Method::POST, "/api/cloud/agents/", Some(token), Some(json!({"name": "lost", "model": "m"}))),
        request(Method::PATCH, &format!("/api/cloud/agents/{agent_id}/"), Some(cached), Some(json!({"name": "renamed"}))),
        request(Method::GET, "/api/organizations/api-keys/", Some(token), None),
        request(Method::POST, "/api/organizations/api-keys/", Some(cached), Some(json!({"name": "lost"}))),
        request(Method::GET, "/api/organizations/auth/me/", Some(token), None),
        request(Method::GET, "/api/tracing/evals/", Some(cached), None),
        request(Method::GET, "/api/tracing/checkpoints/summary/?group_by=agent", Some(cached), None),
        request(Method::GET, "/api/tracing/traces/before/reviews/", Some(cached), None),
        request(Method::POST, "/api/tracing/traces/before/reviews/", Some(cached), Some(json!({"comment": "lost"}))),
        request(Method::GET, "/api/cloud/agents/", Some(&uncached_key), None),
        request(Method::POST, "/api/tracing/spans/", Some(&uncached_key), Some(span("never", "before", "tool", json!({})))),
        request(Method::GET, "/api/tracing/spans/during-tool/", Some("Bearer bk_no_such_key"), None),
        request(Method::POST, "/api/organizations/auth/signup/", None, Some(json!({"email": "late@example.com", "password": "correct horse battery"}))),
        request(
            Method::POST,
            "/api/organizations/auth/login/",
            None,
            Some(json!({"email": "outage-owner@example.com", "password": "correct horse battery"})),
        ),
    ];
    let started = Instant::now();
    let responses = send_concurrently(&server, &requests).await;
    for ((method, path, auth, _), response) in requests.iter().zip(&responses) {
        let credential = match auth.as_deref() {
            Some(auth) if auth == token || auth == cached => "a cached credential",
            Some(_) => "an uncached credential",
            None => "no credential",
        };
        assert_unavailable(&format!("{method} {path} with {credential}"), response);
    }
    let slowest = responses.iter().map(|a| a.elapsed).max().unwrap();
    println!("{} requests got a 503 within {:?} (slowest {slowest:?})", responses.len(), started.elapsed());

    // A request without credentials needs no database to be refused.
    let anonymous = send(&server, Method::GET, "/api/cloud/agents/", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.body);

    // Reads of a trace price its usage, and the price book comes from the
    // control plane, cached for 5 s. Once the cached book expires, trace
    // reads are 503 too; until then they are 200. Never 500.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut polls = 0;
    loop {
        let response = send(&server, Method::GET, "/api/tracing/traces/before/", Some(cached), None).await;
        polls += 1;
        match response.status {
            StatusCode::OK => {
                assert_eq!(response.body["span_count"], 2, "{}", response.body);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.body["detail"].is_string(), "{}", response.body);
                break;
            }
            other => panic!("GET a trace while Postgres is down: {other} {}", response.body),
        }
        assert!(Instant::now() < deadline, "trace reads still succeed 15 s into the outage, after {polls} polls");
        assert!(polls < 200, "trace reads still succeed after {polls} polls");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Trace and usage writes are made durable first, and the response then
    // carries the priced trace or record. With Postgres down, the response is
    // priced from the last price book loaded, so the write is acknowledged.
    // The README defines a 503 as "the request was not stored; retry it", so
    // after the outage each write must be stored exactly when it got a 2xx.
    let trace_create = send(&server, Method::POST, "/api/tracing/traces/", Some(cached), Some(json!({"id": "during", "name": "run_agent",
        "agent_id": agent_id, "started_at": "2026-03-01T09:40:00Z"}))).await;
    let trace_close = send(&server, Method::PATCH, "/api/tracing/traces/before/", Some(cached), Some(json!({"metadata": {"closed_during_outage": true}}))).await;
    let usage_post = send(&server, Method::POST, "/api/cloud/usage/", Some(cached), Some(json!({"id": "during-usage", "agent_id": agent_id,
        "model": "m", "input_tokens": 5, "cost_usd": "0.5", "timestamp": "2026-03-01T09:40:00Z"}))).await;
    for (what, response) in [("POST trace", &trace_create), ("PATCH trace", &trace_close), ("POST usage", &usage_post)] {
        assert!(response.status.is_success(), "{what} while Postgres is down: {} {}", response.status, response.body);
    }

    // Postgres returns on the same port and data directory; the server
    // reconnects by itself.
    postgres.start_again();
    let restarted = Instant::now();
    let mut polls = 0;
    loop {
        let response = send(&server, Method::GET, "/api/cloud/agents/", Some(token), None).await;
        polls += 1;
        if response.status == StatusCode::OK {
            break;
        }
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "while Postgres restarts: {}", response.body);
        assert!(restarted.elapsed() < RECOVERY_TIMEOUT, "no recovery within {RECOVERY_TIMEOUT:?}: {}", response.body);
        assert!(polls < 300, "no recovery after {polls} polls: {}", response.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("recovered {:?} after Postgres restarted", restarted.elapsed());
    let ready = send(&server, Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    // The control plane contains what it did before, and nothing of the writes that got a 503.
    let (status, agents) = server.get("/api/cloud/agents/", token).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = agents["results"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["planner"], "the agent create and rename that got a 503 are not stored");
    let (_, keys) = server.get("/api/organizations/api-keys/", token).await;
    let mut key_names: Vec<&str> = keys["results"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    key_names.sort();
    assert_eq!(key_names, vec!["harness", "spare"], "the key create that got a 503 is not stored");
    let (_, reviews) = server.get("/api/tracing/traces/before/reviews/", cached).await;
    assert_eq!(reviews["count"], 0, "the review that got a 503 is not stored");
    let (status, _) = server.get("/api/organizations/auth/me/", &uncached_key).await;
    assert_eq!(status, StatusCode::OK, "the key that could not be checked during the outage works again");
    let (status, _) = server.get("/api/tracing/spans/never/", cached).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the span sent with an unchecked key is not stored");
    let login = send(
        &server,
        Method::POST,
        "/api/organizations/auth/login/",
        None,
        Some(json!({"email": "outage-owner@example.com", "password": "correct horse battery"})),
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);

    // Events of before and during the outage are intact.
    let (status, trace) = server.get("/api/tracing/traces/before/", cached).await;
    assert_eq!(status, StatusCode::OK, "{trace}");
    assert_eq!(trace["span_count"], 2);
    assert_eq!(trace["cost_usd"], json!(0.25));
    assert_eq!(trace["input_tokens"], 1000);
    assert_eq!(trace["status"], "ok");
    assert_eq!(trace["agent_id"], agent_id.as_str());
    assert_eq!(trace["metadata"]["done"], true);
    assert_eq!(trace["metadata"]["run_id"], "r1");
    let (_, spans) = server.get("/api/tracing/spans/?trace=before", cached).await;
    let ids: Vec<&str> = spans["results"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["before-llm", "during-tool"]);
    let (_, tool) = server.get("/api/tracing/spans/during-tool/", cached).await;
    assert_eq!(tool["output_text"], "ok");
    assert_eq!(tool["duration_ms"], json!(1999.999));

    // Each write of the outage is stored exactly when it was acknowledged.
    println!(
        "during the outage: POST trace {}, PATCH trace {}, POST usage {}",
        trace_create.status, trace_close.status, usage_post.status
    );
    let (status, during) = server.get("/api/tracing/traces/during/", cached).await;
    assert_eq!(
        status == StatusCode::OK,
        trace_create.status.is_success(),
        "POST trace got {} during the outage, yet GET now returns {status} {during}",
        trace_create.status
    );
    assert_eq!(
        trace["metadata"].get("closed_during_outage").is_some(),
        trace_close.status.is_success(),
        "PATCH trace got {} during the outage, yet the trace now reads {trace}",
        trace_close.status
    );
    let (status, record) = server.get("/api/cloud/usage/during-usage/", cached).await;
    assert_eq!(
        status == StatusCode::OK,
        usage_post.status.is_success(),
        "POST usage got {} during the outage, yet GET now returns {status} {record}",
        usage_post.status
    );
    let (_, usage) = server.get(&format!("/api/cloud/agents/{agent_id}/usage/"), cached).await;
    let expected_records = if usage_post.status.is_success() { 2 } else { 1 };
    assert_eq!(usage["totals"]["record_count"], expected_records, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_embedded_events() {
    check_outage_and_recovery(Events::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_clickhouse_events() {
    check_outage_and_recovery(Events::ClickHouse).await;
}
