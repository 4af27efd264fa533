//! Test harness: a real bedrock server on a loopback port, on SQLite in a
//! temporary directory or on a fresh database of the Postgres server named by
//! `BEDROCK_TEST_DATABASE_URL` (which `scripts/test` starts).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bedrock::config::{EventSettings, LogFormat, ServeSettings, StorageSettings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Postgres for the control plane, ClickHouse for events.
    ClickHouse,
}

/// Creates an empty ClickHouse database for one test and returns the URL
/// that selects it.
pub async fn fresh_clickhouse_database() -> String {
    let base = std::env::var("BEDROCK_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| {
        panic!("BEDROCK_TEST_CLICKHOUSE_URL is not set: run the tests through scripts/test with ClickHouse installed")
    });
    let name = format!("bedrock_test_{}", uuid::Uuid::new_v4().simple());
    let response = reqwest::Client::new()
        .post(format!("{base}/"))
        .body(format!("CREATE DATABASE {name}"))
        .send()
        .await
        .expect("the test ClickHouse server answers");
    assert!(response.status().is_success(), "CREATE DATABASE failed: {}", response.text().await.unwrap_or_default());
    format!("{base}?database={name}")
}

/// Creates an empty Postgres database for one test and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin_url = std::env::var("BEDROCK_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("BEDROCK_TEST_DATABASE_URL is not set: run the tests through scripts/test, which starts Postgres")
    });
    let name = format!("bedrock_test_{}", uuid::Uuid::new_v4().simple());
    let control = bedrock_store::control::ControlPlane::connect(&admin_url, 1)
        .await
        .expect("connect to the test Postgres server");
    control.execute_admin(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    control.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

pub fn test_settings(data_dir: &Path, database_url: Option<String>) -> ServeSettings {
    ServeSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        storage: StorageSettings { data_dir: data_dir.to_path_buf(), database_url, db_max_connections: 8, clickhouse_url: None },
        log_format: LogFormat::Text,
        log: "warn".into(),
        secret_key: None,
        max_body_bytes: 4 * 1024 * 1024,
        max_text_field_bytes: 256 * 1024,
        batch_max_events: 1000,
        otlp_agent_attributes: bedrock_ingest::otlp::DEFAULT_AGENT_ATTRIBUTES.map(String::from).to_vec(),
        auth_cache_seconds: 5,
        invite_ttl_hours: 168,
        shutdown_timeout_seconds: 5,
        events: EventSettings {
            wal_max_bytes: 256 * 1024 * 1024,
            wal_segment_bytes: 8 * 1024 * 1024,
            wal_max_pending: 65536,
            buffer_max_bytes: 64 * 1024 * 1024,
            flush_events: 50_000,
            flush_interval_ms: 60_000,
            compact_segments: 8,
        },
    }
}

/// An in-process server with its own data directory.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// The ClickHouse event store, when the server uses one.
    pub clickhouse_url: Option<String>,
    _temp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut ServeSettings)) -> TestServer {
        let temp = tempfile::tempdir().expect("temporary directory");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres | Backend::ClickHouse => Some(fresh_postgres_database().await),
        };
        let mut settings = test_settings(temp.path(), database_url);
        if backend == Backend::ClickHouse {
            settings.storage.clickhouse_url = Some(fresh_clickhouse_database().await);
        }
        adjust(&mut settings);
        let mut server = Self::start_settings(settings).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_settings(settings: ServeSettings) -> TestServer {
        let data_dir = settings.storage.data_dir.clone();
        let database_url = settings.storage.control_plane_url();
        let clickhouse_url = settings.storage.clickhouse_url.clone();
        let server = bedrock::Server::bind(settings).await.expect("server starts");
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            data_dir,
            database_url,
            clickhouse_url,
            _temp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Grants the site-wide administrator flag, as `bedrock make-admin` does.
    /// Cached credentials keep the old flag for up to `--auth-cache-seconds`.
    pub async fn grant_admin(&self, email: &str) {
        let control = bedrock_store::control::ControlPlane::connect(&self.database_url, 1).await.unwrap();
        control.set_admin(email, true).await.unwrap();
        control.close().await;
    }

    /// Sends a request with an optional `Authorization` header value and JSON body.
    pub async fn call(&self, method: Method, path: &str, auth: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)})) };
        (status, value)
    }

    /// Sends raw bytes as the body, with a content type.
    pub async fn call_raw(&self, method: Method, path: &str, auth: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn get(&self, path: &str, auth: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(auth), None).await
    }

    pub async fn post(&self, path: &str, auth: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(auth), Some(body)).await
    }

    pub async fn patch(&self, path: &str, auth: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(auth), Some(body)).await
    }

    pub async fn put(&self, path: &str, auth: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(auth), Some(body)).await
    }

    pub async fn delete(&self, path: &str, auth: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(auth), None).await
    }

    /// Signs up a new organization; returns `Token <token>` and the response.
    pub async fn sign_up(&self, email: &str) -> (String, Value) {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/organizations/auth/signup/",
                None,
                Some(json!({"email": email, "password": "correct horse battery", "name": "Test User"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "signup failed: {body}");
        (format!("Token {}", body["token"].as_str().unwrap()), body)
    }

    /// Signs up a new organization and creates an API key; returns `Bearer <key>`.
    pub async fn api_key(&self, email: &str) -> String {
        let (token, _) = self.sign_up(email).await;
        let (status, body) = self.post("/api/organizations/api-keys/", &token, json!({"name": "test"})).await;
        assert_eq!(status, StatusCode::CREATED, "key creation failed: {body}");
        format!("Bearer {}", body["key"].as_str().unwrap())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Instantiates each listed async test once per control-plane backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Postgres).await
                }
            )+
        }
    };
}

/// Instantiates each listed async test once per deployment: SQLite and
/// Postgres with the embedded event store, and Postgres with ClickHouse.
#[macro_export]
macro_rules! on_every_deployment {
    ($($test:ident),+ $(,)?) => {
        $crate::on_both_backends!($($test),+);
        mod clickhouse {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::ClickHouse).await
                }
            )+
        }
    };
}

/// Returns a loopback port that was free a moment ago, for a server started as a separate process.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits up to 60 s for `/readyz` at `base` to return 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {base} did not become ready within 60 s");
}
