//! Load generator: drives a running bedrock server over HTTP with the
//! traffic of real agent harnesses, and reports throughput, latency
//! percentiles (from an HDR histogram) and errors by status.
//!
//! Each client runs agent sessions one after another, as the Python harness
//! does: open a trace, a `run_agent` root span, then per turn a `turn_N`
//! span with an `llm` span (closed with `metadata.llm_cost`) and a `tool`
//! span, closing every span with a PATCH and the trace with a PATCH. Eval
//! sessions (a share set by `--eval-share`) add `checkpoint` spans, each in
//! its own trace. Every span is one POST and one PATCH, on keep-alive
//! connections.
//!
//! With `--batch-size N`, the same writes go to /api/tracing/ingest/ in
//! batches of about N events, and spans count as stored or closed by the
//! per-event results.
//!
//! It stops by itself after `--duration-seconds` or `--spans`, whichever
//! comes first, or on Ctrl-C (SIGINT), and prints a text report, or JSON
//! with `--json`.
//!
//! With `--otlp`, clients export the same sessions as OpenTelemetry spans
//! in OTLP protobuf to /v1/traces, `--batch-size` spans per request (100 by
//! default), with OpenInference attributes: an AGENT root, CHAIN turns, LLM
//! spans with token counts and TOOL spans. Each span is sent once, closed,
//! as exporters do, and counts as stored unless `partial_success` rejects it.
//!
//! With `--query-rounds N`, it then runs each analytic query N times one
//! after another and reports each one's latency percentiles. The queries are
//! the trace list (unfiltered, by agent and by a metadata key), the usage
//! list, and the usage summary by model and day over 30 days. `--clients 0`
//! skips the load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "bedrock-loadgen", about = "Drives a bedrock server with realistic agent-harness traffic.")]
struct Settings {
    /// Base URL of the server.
    #[arg(long, env = "BEDROCK_URL", default_value = "http://127.0.0.1:8000")]
    url: String,

    /// Organization API key; when unset, a new organization and key are created through sign-up.
    #[arg(long, env = "BEDROCK_API_KEY", hide_env_values = true)]
    key: Option<String>,

    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,

    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30)]
    duration_seconds: u64,

    /// Stop after this many spans have been opened (0: no limit).
    #[arg(long, default_value_t = 0)]
    spans: u64,

    /// Cap on requests per second over all clients (0: as fast as the server answers).
    #[arg(long, default_value_t = 0)]
    rps: u64,

    /// Seed of the random generator, for repeatable traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Share of sessions that are evaluation runs with checkpoints, from 0 to 1.
    #[arg(long, default_value_t = 0.2)]
    eval_share: f64,

    /// Typical size of an llm span's input text, in bytes.
    #[arg(long, default_value_t = 2048)]
    text_bytes: usize,

    /// Send the harness's writes in batches of this many events through
    /// /api/tracing/ingest/ instead of one request each (0: one request each).
    #[arg(long, default_value_t = 0)]
    batch_size: usize,

    /// Export spans in OTLP protobuf to /v1/traces instead of the REST harness protocol.
    #[arg(long)]
    otlp: bool,

    /// Times each analytic query this many times after the load (0: none).
    #[arg(long, default_value_t = 0)]
    query_rounds: u64,

    /// Seconds an analytic query may take before it counts as an error.
    #[arg(long, default_value_t = 300)]
    query_timeout_seconds: u64,

    /// Names of the analytic queries to time, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How long one load request may take before it counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Lists the analytic queries that `--query-rounds` times, by name.
fn analytic_queries() -> Vec<(&'static str, String)> {
    let month_ago = chrono::Utc::now() - chrono::Duration::days(30);
    let start = month_ago.format("%Y-%m-%dT%H:%M:%SZ");
    vec![
        ("traces_list", "/api/tracing/traces/list/?page_size=50".to_string()),
        ("traces_list_by_agent", "/api/tracing/traces/list/?page_size=50&agent=agent-3".to_string()),
        ("traces_list_by_metadata", "/api/tracing/traces/list/?page_size=50&metadata__scenario=group_lunch".to_string()),
        ("usage_list", "/api/cloud/usage/?page_size=50".to_string()),
        ("usage_summary_by_model_day", format!("/api/cloud/usage/summary/?group_by=model,day&start={start}")),
        ("checkpoint_summary_by_git_sha_day", format!("/api/tracing/checkpoints/summary/?group_by=agent_tag:git-sha,day&start={start}")),
        ("review_summary_by_scenario", "/api/tracing/reviews/summary/?group_by=scenario&agent_purpose=eval".to_string()),
    ]
}

/// Runs each analytic query `rounds` times in sequence and returns, per
/// query, its latency percentiles in milliseconds and its failed responses.
async fn time_queries(http: &reqwest::Client, base: &str, key: &str, rounds: u64, only: &[String]) -> anyhow::Result<Value> {
    let mut report = serde_json::Map::new();
    let known: Vec<&str> = analytic_queries().iter().map(|(name, _)| *name).collect();
    if let Some(unknown) = only.iter().find(|name| !known.contains(&name.as_str())) {
        anyhow::bail!("unknown query {unknown:?}; the queries are {}", known.join(", "));
    }
    for (name, path) in analytic_queries() {
        if !only.is_empty() && !only.iter().any(|wanted| wanted == name) {
            continue;
        }
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut errors = 0u64;
        for _ in 0..rounds {
            let sent = Instant::now();
            let ok = match http.get(format!("{base}{path}")).header("Authorization", key).send().await {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            histogram.saturating_record(sent.elapsed().as_micros() as u64);
            errors += u64::from(!ok);
        }
        let millis = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        report.insert(
            name.to_string(),
            json!({"path": path, "rounds": rounds, "p50": millis(0.5), "p99": millis(0.99), "max": histogram.max() as f64 / 1000.0, "errors": errors}),
        );
    }
    Ok(Value::Object(report))
}

struct Counters {
    requests: AtomicU64,
    spans_opened: AtomicU64,
    /// Span creates that the server acknowledged: the spans it stores.
    spans_stored: AtomicU64,
    spans_closed: AtomicU64,
    traces: AtomicU64,
    stop: AtomicBool,
}

/// Latencies and response counts by status of one client. Each client keeps
/// its own, so recording takes no lock, and the tallies are added up at the
/// end.
struct Tally {
    statuses: BTreeMap<String, u64>,
    latencies: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally { statuses: BTreeMap::new(), latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds") }
    }

    fn record(&mut self, status: &str, started: Instant) {
        let _ = self.latencies.record((started.elapsed().as_micros() as u64).max(1));
        match self.statuses.get_mut(status) {
            Some(count) => *count += 1,
            None => {
                self.statuses.insert(status.to_string(), 1);
            }
        }
    }

    fn add(&mut self, other: &Tally) {
        let _ = self.latencies.add(&other.latencies);
        for (status, count) in &other.statuses {
            *self.statuses.entry(status.clone()).or_default() += count;
        }
    }
}

/// One keep-alive HTTP/1.1 connection, opened again after an error.
///
/// The load generator shares the server's two cores, so each client drives
/// its own connection through hyper's connection API instead of a pooled
/// client: no pool lock, no URL parsing, fewer allocations per request.
struct Connection {
    /// `host:port` of the server, to connect to and to send as `Host`.
    authority: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

/// A response: its status, its `Retry-After` in seconds if any, and its body.
struct Response {
    status: u16,
    retry_after: Option<u64>,
    body: Bytes,
}

impl Connection {
    fn new(base: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(base)?;
        anyhow::ensure!(url.scheme() == "http", "unsupported URL scheme {}: the load generator supports only http", url.scheme());
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("invalid URL {base}: missing host"))?.to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Connection { authority: format!("{host}:{port}"), sender: None })
    }

    async fn open(&mut self) -> anyhow::Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.authority).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connection opened above"))
    }

    /// Sends one request and reads the whole response, within `timeout`.
    async fn send(
        &mut self,
        method: &reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Response, &'static str> {
        let exchange = async {
            let mut request = hyper::Request::builder().method(method.as_str()).uri(path).header("Host", &self.authority);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::from(body))).map_err(|_| "invalid request")?;
            let sender = self.open().await.map_err(|_| "connection error")?;
            sender.ready().await.map_err(|_| "connection error")?;
            let response = sender.send_request(request).await.map_err(|_| "connection error")?;
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            let body = response.into_body().collect().await.map_err(|_| "connection error")?.to_bytes();
            Ok(Response { status, retry_after, body })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err("timeout"),
        };
        if result.is_err() {
            // The connection may hold half an exchange, so the next request opens a new one.
            self.sender = None;
        }
        result
    }
}

struct Client {
    connection: Connection,
    key: String,
    counters: Arc<Counters>,
    tally: Tally,
    rng: StdRng,
    limiter: Option<Arc<RateLimiter>>,
    text: String,
    span_limit: u64,
    /// Events per batch request; 0 sends every write as its own request.
    batch_size: usize,
    pending: Vec<Value>,
    /// Spans waiting for the next OTLP export.
    otlp_pending: Vec<otlp::Span>,
}

/// OTLP message types, as the OpenTelemetry protobuf definitions generate them.
mod otlp {
    pub use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    pub use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    pub use opentelemetry_proto::tonic::resource::v1::Resource;
    pub use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    pub fn text(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }), ..Default::default() }
    }

    pub fn int(key: &str, value: i64) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }), ..Default::default() }
    }
}

/// Spreads `rps` requests per second over all clients.
struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap();
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

impl Client {
    fn stopped(&self) -> bool {
        self.counters.stop.load(Ordering::Relaxed)
            || (self.span_limit > 0 && self.counters.spans_opened.load(Ordering::Relaxed) >= self.span_limit)
    }

    /// Sends one write, or queues it as a batch event in batch mode. Returns
    /// whether the server acknowledged it (always true once queued).
    async fn send(&mut self, method: reqwest::Method, path: &str, body: Value) -> bool {
        if self.batch_size > 0 {
            self.pending.push(batch_event(&method, path, body));
            return true;
        }
        self.request(method, path, body).await.0
    }

    /// Sends the queued batch events as one request and counts the spans
    /// that the per-event results acknowledge.
    async fn flush_batch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.pending);
        let (_, results) = self.request(reqwest::Method::POST, "/api/tracing/ingest/", json!({ "events": events })).await;
        let results = results.as_ref().and_then(|r| r["results"].as_array());
        for result in results.into_iter().flatten() {
            match (result["type"].as_str(), result["status"].as_u64()) {
                (Some("span.create"), Some(201)) => self.counters.spans_stored.fetch_add(1, Ordering::Relaxed),
                (Some("span.update"), Some(200)) => self.counters.spans_closed.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
    }

    /// Sends one request and records its latency and status. Returns whether
    /// it succeeded, and its JSON body in batch mode.
    async fn request(&mut self, method: reqwest::Method, path: &str, body: Value) -> (bool, Option<Value>) {
        if let Some(limiter) = &self.limiter {
            limiter.wait().await;
        }
        let body = serde_json::to_vec(&body).expect("a JSON value serializes");
        let headers = [("Authorization", self.key.as_str()), ("Content-Type", "application/json")];
        let started = Instant::now();
        let result = self.connection.send(&method, path, &headers, body, REQUEST_TIMEOUT).await;
        let mut parsed = None;
        let status = match &result {
            Ok(response) => {
                if self.batch_size > 0 {
                    parsed = serde_json::from_slice(&response.body).ok();
                }
                status_name(response.status)
            }
            Err(reason) => reason,
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.tally.record(status, started);
        (status.starts_with('2'), parsed)
    }

    async fn open_span(&mut self, span: Value) -> bool {
        self.counters.spans_opened.fetch_add(1, Ordering::Relaxed);
        let ok = self.send(reqwest::Method::POST, "/api/tracing/spans/", span).await;
        if ok && self.batch_size == 0 {
            self.counters.spans_stored.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    async fn close_span(&mut self, id: &str, body: Value) {
        let ok = self.send(reqwest::Method::PATCH, &format!("/api/tracing/spans/{id}/"), body).await;
        if ok && self.batch_size == 0 {
            self.counters.spans_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One agent session: a trace with a root span, turns, llm and tool spans.
    async fn session(&mut self, agent: &str) {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let run_id = format!("run-{}", self.rng.gen::<u32>());
        self.counters.traces.fetch_add(1, Ordering::Relaxed);
        self.send(reqwest::Method::POST, "/api/tracing/traces/",
            json!({"id": trace_id, "name": "run_agent", "started_at": timestamp(), "agent_id": agent, "metadata": {}}))
            .await;
        let root = uuid::Uuid::new_v4().to_string();
        self.open_span(json!({"id": root, "trace_id": trace_id, "parent_id": null, "name": "run_agent", "span_type": "text",
            "started_at": timestamp(), "input_text": null, "metadata": {"agent_id": agent, "run_id": run_id}}))
            .await;

        let turns = self.rng.gen_range(1..=4);
        let (mut input_total, mut output_total) = (0u64, 0u64);
        for turn in 0..turns {
            if self.stopped() {
                break;
            }
            let turn_id = uuid::Uuid::new_v4().to_string();
            self.open_span(json!({"id": turn_id, "trace_id": trace_id, "parent_id": root, "name": format!("turn_{turn}"),
                "span_type": "text", "started_at": timestamp(), "input_text": null, "metadata": {}}))
                .await;

            let llm = uuid::Uuid::new_v4().to_string();
            let input_tokens = self.rng.gen_range(500..4000u64);
            let output_tokens = self.rng.gen_range(10..400u64);
            let cached = self.rng.gen_range(0..input_tokens / 2);
            input_total += input_tokens;
            output_total += output_tokens;
            self.open_span(json!({"id": llm, "trace_id": trace_id, "parent_id": turn_id, "name": "openrouter_api_call",
                "span_type": "llm", "started_at": timestamp(), "input_text": null,
                "metadata": {"model": "openai/gpt-4o-mini", "provider": "openrouter"}}))
                .await;
            let cost = (input_tokens as f64 * 0.15 + output_tokens as f64 * 0.6) / 1_000_000.0;
            let text = self.text.clone();
            self.close_span(&llm, json!({"ended_at": timestamp(), "input_text": text, "output_text": "I will check the forecast.",
                "error": "", "metadata": {"model": "openai/gpt-4o-mini", "provider": "openrouter", "llm_cost": {
                    "model": "openai/gpt-4o-mini", "input_tokens": input_tokens, "output_tokens": output_tokens,
                    "cached_tokens": cached, "reasoning_tokens": 0, "total_cost_usd": cost, "cache_hit_rate": 0.0}}}))
                .await;

            let tool = uuid::Uuid::new_v4().to_string();
            self.open_span(json!({"id": tool, "trace_id": trace_id, "parent_id": turn_id, "name": "get_forecast",
                "span_type": "tool", "started_at": timestamp(), "input_text": "{\"args\": {\"city\": \"Lisbon\"}}", "metadata": {}}))
                .await;
            let failed = self.rng.gen_bool(0.05);
            self.close_span(&tool, json!({"ended_at": timestamp(), "input_text": "", "output_text": if failed { "" } else { "Sunny, 21 C." },
                "error": if failed { "tool timed out" } else { "" }, "metadata": {}}))
                .await;
            self.close_span(&turn_id, json!({"ended_at": timestamp(), "input_text": "", "output_text": "", "error": "",
                "metadata": {"usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}}))
                .await;
        }
        let usage = json!({"usage": {"input_tokens": input_total, "output_tokens": output_total, "llm_calls": turns}});
        self.close_span(&root, json!({"ended_at": timestamp(), "input_text": "", "output_text": "", "error": "",
            "metadata": {"agent_id": agent, "run_id": run_id, "usage": usage["usage"].clone()}}))
            .await;
        self.send(reqwest::Method::PATCH, &format!("/api/tracing/traces/{trace_id}/"),
            json!({"ended_at": timestamp(), "error": "", "metadata": usage}))
            .await;
    }

    /// One evaluation checkpoint, sent as its own trace like `emit_completed_span`.
    async fn checkpoint(&mut self, agent: &str, n: u32) {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let span_id = uuid::Uuid::new_v4().to_string();
        let at = timestamp();
        let passed = self.rng.gen_bool(0.7);
        let name = format!("checkpoint_{n}");
        let metadata = json!({"passed": passed, "description": "Restaurant has vegetarian options", "scenario": "group_lunch",
            "agent_id": agent, "assertions": [{"passed": passed, "description": "vegetarian"}], "assertions_passed": passed as u8,
            "assertions_total": 1, "cumulative_cost_usd": "0.00038", "cumulative_wall_seconds": 2.5});
        self.counters.traces.fetch_add(1, Ordering::Relaxed);
        self.send(reqwest::Method::POST, "/api/tracing/traces/",
            json!({"id": trace_id, "name": name, "started_at": at, "agent_id": agent, "metadata": {}}))
            .await;
        self.open_span(json!({"id": span_id, "trace_id": trace_id, "parent_id": null, "name": name, "span_type": "checkpoint",
            "started_at": at, "input_text": null, "metadata": metadata}))
            .await;
        self.close_span(&span_id, json!({"ended_at": at, "input_text": "", "output_text": "", "error": "", "metadata": metadata}))
            .await;
        self.send(reqwest::Method::PATCH, &format!("/api/tracing/traces/{trace_id}/"),
            json!({"ended_at": at, "error": "", "metadata": metadata}))
            .await;
    }

    /// Queues one span for OTLP export, and exports when a batch is full.
    async fn export_span(&mut self, span: otlp::Span) {
        self.counters.spans_opened.fetch_add(1, Ordering::Relaxed);
        self.otlp_pending.push(span);
        if self.otlp_pending.len() >= self.batch_size.max(1) {
            self.flush_otlp().await;
        }
    }

    /// Exports the queued spans as one protobuf request and counts the ones
    /// the server accepted. Like OpenTelemetry exporters, it retries a 503
    /// after its `Retry-After`, up to `MAX_OTLP_RETRIES` times.
    async fn flush_otlp(&mut self) {
        const MAX_OTLP_RETRIES: u32 = 5;
        for _ in 0..=MAX_OTLP_RETRIES {
            match self.export_once().await {
                Some(wait) if !self.counters.stop.load(Ordering::Relaxed) => tokio::time::sleep(wait).await,
                _ => break,
            }
        }
        self.otlp_pending.clear();
    }

    /// Sends the queued spans once. Returns how long to wait before a retry
    /// when the server returned 503.
    async fn export_once(&mut self) -> Option<Duration> {
        if self.otlp_pending.is_empty() {
            return None;
        }
        let spans = self.otlp_pending.clone();
        let sent = spans.len() as u64;
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(otlp::Resource {
                    attributes: vec![otlp::text("service.name", "bedrock-loadgen")],
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        let body = prost::Message::encode_to_vec(&request);
        if let Some(limiter) = &self.limiter {
            limiter.wait().await;
        }
        let headers = [("Authorization", self.key.as_str()), ("Content-Type", "application/x-protobuf")];
        let started = Instant::now();
        let result = self.connection.send(&reqwest::Method::POST, "/v1/traces", &headers, body, REQUEST_TIMEOUT).await;
        let mut retry = None;
        let status = match &result {
            Ok(response) => {
                if response.status == 503 {
                    retry = Some(Duration::from_secs(response.retry_after.unwrap_or(1)));
                }
                if (200..300).contains(&response.status) {
                    let rejected = <otlp::ExportTraceServiceResponse as prost::Message>::decode(response.body.as_ref())
                        .ok()
                        .and_then(|reply| reply.partial_success)
                        .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                    let stored = sent.saturating_sub(rejected);
                    self.counters.spans_stored.fetch_add(stored, Ordering::Relaxed);
                    self.counters.spans_closed.fetch_add(stored, Ordering::Relaxed);
                }
                status_name(response.status)
            }
            Err(reason) => reason,
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.tally.record(status, started);
        retry
    }

    /// Exports one agent session as OTLP spans: the run's root, then per turn a
    /// turn, an LLM call and a tool call, each exported once, closed.
    async fn otlp_session(&mut self, agent: &str) {
        let trace_id: [u8; 16] = self.rng.gen();
        let span_id = |rng: &mut StdRng| -> Vec<u8> { rng.gen::<[u8; 8]>().to_vec() };
        let root_id = span_id(&mut self.rng);
        let nanos = |at: chrono::DateTime<chrono::Utc>| at.timestamp_nanos_opt().unwrap_or_default() as u64;
        let start = chrono::Utc::now();
        let turns = self.rng.gen_range(1..=4);
        self.counters.traces.fetch_add(1, Ordering::Relaxed);
        let mut spans = Vec::new();
        let mut at = start;
        for turn in 0..turns {
            let turn_id = span_id(&mut self.rng);
            let turn_start = at;
            let llm_start = turn_start + chrono::Duration::milliseconds(1);
            let llm_end = llm_start + chrono::Duration::milliseconds(self.rng.gen_range(200..2500));
            let tool_end = llm_end + chrono::Duration::milliseconds(self.rng.gen_range(10..300));
            let input_tokens = self.rng.gen_range(500..4000i64);
            let output_tokens = self.rng.gen_range(10..400i64);
            let failed = self.rng.gen_bool(0.05);
            spans.push(otlp::Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id(&mut self.rng),
                parent_span_id: turn_id.clone(),
                name: "openrouter_api_call".into(),
                start_time_unix_nano: nanos(llm_start),
                end_time_unix_nano: nanos(llm_end),
                attributes: vec![
                    otlp::text("openinference.span.kind", "LLM"),
                    otlp::text("llm.model_name", "openai/gpt-4o-mini"),
                    otlp::int("llm.token_count.prompt", input_tokens),
                    otlp::int("llm.token_count.completion", output_tokens),
                    otlp::text("input.value", &self.text),
                    otlp::text("output.value", "I will check the forecast."),
                    otlp::text("agent.id", agent),
                ],
                ..Default::default()
            });
            spans.push(otlp::Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id(&mut self.rng),
                parent_span_id: turn_id.clone(),
                name: "get_forecast".into(),
                start_time_unix_nano: nanos(llm_end),
                end_time_unix_nano: nanos(tool_end),
                attributes: vec![
                    otlp::text("openinference.span.kind", "TOOL"),
                    otlp::text("input.value", "{\"city\": \"Lisbon\"}"),
                    otlp::text("output.value", if failed { "" } else { "Sunny, 21 C." }),
                ],
                status: failed.then(|| otlp::Status { code: 2, message: "tool timed out".into() }),
                ..Default::default()
            });
            spans.push(otlp::Span {
                trace_id: trace_id.to_vec(),
                span_id: turn_id,
                parent_span_id: root_id.clone(),
                name: format!("turn_{turn}"),
                start_time_unix_nano: nanos(turn_start),
                end_time_unix_nano: nanos(tool_end),
                attributes: vec![otlp::text("openinference.span.kind", "CHAIN")],
                ..Default::default()
            });
            at = tool_end;
        }
        spans.push(otlp::Span {
            trace_id: trace_id.to_vec(),
            span_id: root_id,
            name: "run_agent".into(),
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(at),
            attributes: vec![otlp::text("openinference.span.kind", "AGENT"), otlp::text("agent.id", agent)],
            ..Default::default()
        });
        for span in spans {
            self.export_span(span).await;
        }
    }

    /// Runs sessions until the load stops, and returns what this client saw.
    async fn run(mut self, eval_share: f64, client_index: usize, otlp: bool) -> Tally {
        let agent = format!("agent-{}", client_index % 16);
        if otlp {
            while !self.stopped() {
                self.otlp_session(&agent).await;
            }
            self.flush_otlp().await;
            return self.tally;
        }
        while !self.stopped() {
            if self.rng.gen_bool(eval_share.clamp(0.0, 1.0)) {
                for n in 0..3 {
                    self.checkpoint(&agent, n).await;
                }
            } else {
                self.session(&agent).await;
            }
            if self.batch_size > 0 && self.pending.len() >= self.batch_size {
                self.flush_batch().await;
            }
        }
        self.flush_batch().await;
        self.tally
    }
}

/// Converts one single-endpoint write into its batch event: a POST creates, a PATCH of
/// `/<kind>/<id>/` updates and names the id in the body.
fn batch_event(method: &reqwest::Method, path: &str, mut body: Value) -> Value {
    let kind = if path.starts_with("/api/tracing/traces/") { "trace" } else { "span" };
    if *method == reqwest::Method::POST {
        return json!({"type": format!("{kind}.create"), "body": body});
    }
    let id = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    body["id"] = json!(id);
    json!({"type": format!("{kind}.update"), "body": body})
}

async fn create_key(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let email = format!("loadgen-{}@example.com", uuid::Uuid::new_v4().simple());
    let session: Value = http
        .post(format!("{base}/api/organizations/auth/signup/"))
        .json(&json!({"email": email, "password": "load generator password"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = session["token"].as_str().ok_or_else(|| anyhow::anyhow!("sign-up returned no token"))?;
    let key: Value = http
        .post(format!("{base}/api/organizations/api-keys/"))
        .header("Authorization", format!("Token {token}"))
        .json(&json!({"name": "loadgen"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = key["key"].as_str().ok_or_else(|| anyhow::anyhow!("key creation returned no key"))?;
    Ok(format!("Bearer {key}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let base = settings.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(settings.clients)
        .build()?;
    let key = match &settings.key {
        Some(key) if key.starts_with("Bearer ") || key.starts_with("Token ") => key.clone(),
        Some(key) => format!("Bearer {key}"),
        None => create_key(&http, &base).await?,
    };

    let counters = Arc::new(Counters {
        requests: AtomicU64::new(0),
        spans_opened: AtomicU64::new(0),
        spans_stored: AtomicU64::new(0),
        spans_closed: AtomicU64::new(0),
        traces: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let limiter = (settings.rps > 0).then(|| {
        Arc::new(RateLimiter { interval: Duration::from_secs_f64(1.0 / settings.rps as f64), next: Mutex::new(Instant::now()) })
    });
    let mut seed_rng = StdRng::seed_from_u64(settings.seed);
    let text: String = (0..settings.text_bytes).map(|i| if i % 7 == 6 { ' ' } else { 'a' }).collect();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..settings.clients {
        let client = Client {
            connection: Connection::new(&base)?,
            key: key.clone(),
            counters: counters.clone(),
            tally: Tally::new(),
            rng: StdRng::seed_from_u64(seed_rng.gen()),
            limiter: limiter.clone(),
            text: text.clone(),
            span_limit: settings.spans,
            batch_size: if settings.otlp && settings.batch_size == 0 { 100 } else { settings.batch_size },
            pending: Vec::new(),
            otlp_pending: Vec::new(),
        };
        tasks.push(tokio::spawn(client.run(settings.eval_share, index, settings.otlp)));
    }
    let deadline = tokio::time::sleep(Duration::from_secs(settings.duration_seconds));
    tokio::pin!(deadline);
    let all_done = futures_join(tasks);
    tokio::pin!(all_done);
    // Ctrl-C (SIGINT) ends the load early like the deadline does, so the
    // report still covers what was sent.
    let tally = tokio::select! {
        _ = &mut deadline => {
            counters.stop.store(true, Ordering::Relaxed);
            (&mut all_done).await
        }
        _ = tokio::signal::ctrl_c() => {
            counters.stop.store(true, Ordering::Relaxed);
            (&mut all_done).await
        }
        tally = &mut all_done => tally,
    };
    let elapsed = started.elapsed().as_secs_f64();

    let (histogram, statuses) = (tally.latencies, tally.statuses);
    let requests = counters.requests.load(Ordering::Relaxed);
    let spans_closed = counters.spans_closed.load(Ordering::Relaxed);
    let errors: u64 = statuses.iter().filter(|(status, _)| !status.starts_with('2')).map(|(_, n)| n).sum();
    let millis = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let queries = if settings.query_rounds > 0 {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(settings.query_timeout_seconds)).build()?;
        Some(time_queries(&http, &base, &key, settings.query_rounds, &settings.queries).await?)
    } else {
        None
    };
    let report = json!({
        "url": base,
        "clients": settings.clients,
        "seconds": elapsed,
        "requests": requests,
        "requests_per_second": requests as f64 / elapsed,
        "traces": counters.traces.load(Ordering::Relaxed),
        "batch_size": settings.batch_size,
        "otlp": settings.otlp,
        "spans_opened": counters.spans_opened.load(Ordering::Relaxed),
        "spans_stored": counters.spans_stored.load(Ordering::Relaxed),
        "spans_acknowledged": spans_closed,
        "spans_per_second": spans_closed as f64 / elapsed,
        "latency_ms": {"p50": millis(0.50), "p90": millis(0.90), "p99": millis(0.99), "max": histogram.max() as f64 / 1000.0},
        "errors": errors,
        "statuses": statuses,
        "queries": queries,
    });
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} requests in {:.1} s from {} clients: {:.0} requests/s", requests, elapsed, settings.clients, requests as f64 / elapsed);
        println!("{} spans closed and acknowledged: {:.0} spans/s", spans_closed, spans_closed as f64 / elapsed);
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            millis(0.50), millis(0.90), millis(0.99), histogram.max() as f64 / 1000.0
        );
        println!("statuses: {}", serde_json::to_string(&report["statuses"])?);
        if let Some(Value::Object(queries)) = &queries {
            for (name, q) in queries {
                println!("{name}: p50 {} ms  p99 {} ms  max {} ms  errors {}", q["p50"], q["p99"], q["max"], q["errors"]);
            }
        }
    }
    Ok(())
}

/// Waits for every client and adds up what they saw.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.add(&tally);
        }
    }
    total
}

/// Names a status as the report counts it.
fn status_name(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        207 => "207",
        400 => "400",
        401 => "401",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
