//! Differential test: the embedded deployment (SQLite and Parquet segments)
//! and the production one (Postgres and ClickHouse) return the same response
//! to every read of one data set.
//!
//! A deterministic generator produces what a fleet of agent harnesses sends:
//! nested runs with llm and tool spans, checkpoints, errors, killed runs,
//! requests out of order and retried, usage posts, flags, eval cases and
//! reviews. Both servers get the same requests in the same order. The first
//! half is flushed out of memory, every few dozen events and then by a
//! graceful restart. The second half stays in the buffer, so the final reads
//! merge flushed and buffered states. After each half, every read is compared
//! between the two servers, and a few totals are checked against the
//! generator, so two servers that are wrong the same way fail too.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use bedrock::config::ServeSettings;
use common::{fresh_clickhouse_database, fresh_postgres_database, test_settings, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Seed of the generator. Any value gives a valid data set.
const SEED: u64 = 0x5eed_2026_0301;

/// Traces generated, the first half before the restart and the rest after.
const TRACES: usize = 48;

/// Writes buffered before a flush while the first half is sent, so that half
/// is spread over many segments (and compactions) or ClickHouse inserts.
const FLUSH_EVENTS_FIRST_HALF: usize = 40;

/// A flush threshold that the second half never reaches, so it stays buffered.
const FLUSH_EVENTS_SECOND_HALF: usize = 1_000_000;

/// 2026-03-01T08:00:00Z, in microseconds since the Unix epoch.
const START: i64 = 1_772_352_000_000_000;
const MILLISECOND: i64 = 1_000;
const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;

/// The two agents that send free-string ids naming no agent row, as local and
/// evaluation runs do. Both start with a letter after `f`, so they sort after
/// every UUID, and lists sorted by agent order them alike on both servers.
const SIM_AGENT: &str = "sim-lunch-3fa2c1d0";
const LOCAL_AGENT: &str = "harness-local";

/// The agent rows: role, purpose and tags.
const AGENT_ROLES: [(&str, &str, &[&str]); 4] = [
    ("planner", "eval", &["git-sha:aaa", "env:ci"]),
    ("booker", "eval", &["git-sha:bbb"]),
    ("support", "prod", &["git-sha:aaa", "git-sha:ccc"]),
    ("scratch", "dev", &[]),
];

const MODELS: [&str; 4] = ["gpt-4o", "openai/gpt-4o-mini", "claude-3-5-sonnet", "mystery-model-7"];
const TOOLS: [&str; 3] = ["search_web", "send_sms", "read_calendar"];
const CHECKPOINTS: [&str; 3] = ["booked_table", "paid_deposit", "confirmed_time"];

/// Placeholder of the id a server assigns to the agent row of `role`.
fn agent(role: &str) -> String {
    format!("<agent:{role}>")
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants), so the
/// data set never changes with a dependency's version.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// Formats a time as a harness does, in one of four styles: Python's
/// `isoformat()` with `+00:00`, `Z`, an offset of +02:00, or no offset
/// (which the server reads as UTC).
fn stamp(micros: i64, style: u64) -> String {
    let utc = chrono::DateTime::from_timestamp_micros(micros).unwrap();
    match style % 4 {
        0 => utc.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
        1 => utc.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        2 => utc.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap()).format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string(),
        _ => utc.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
    }
}

/// Formats nano-dollars as the server's `cost_usd_decimal`.
fn decimal(nanos: i128) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

// ---- the data set ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    ApiKey,
    UserToken,
}

/// One request of the data set. Strings of the form `<kind:name>` in the path
/// or as a whole JSON string in the body stand for ids that each server
/// assigns (agents, eval cases, reviews, the user), and are replaced per
/// server before sending.
#[derive(Debug, Clone)]
struct Step {
    method: Method,
    path: String,
    body: Option<Value>,
    auth: Auth,
    expect: StatusCode,
    /// The placeholder for the `id` of the object this request creates.
    register: Option<String>,
}

fn create(path: &str, body: Value) -> Step {
    Step { method: Method::POST, path: path.into(), body: Some(body), auth: Auth::ApiKey, expect: StatusCode::CREATED, register: None }
}

fn update(path: &str, body: Value) -> Step {
    Step { method: Method::PATCH, path: path.into(), body: Some(body), auth: Auth::ApiKey, expect: StatusCode::OK, register: None }
}

/// A POST to an action endpoint (`flag/`, `unflag/`, the batch endpoint), which returns 200.
fn action(path: &str, body: Option<Value>) -> Step {
    Step { method: Method::POST, path: path.into(), body, auth: Auth::ApiKey, expect: StatusCode::OK, register: None }
}

/// What a step does to a trace, so the generator can reorder a trace's steps.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    TraceCreate,
    TraceClose,
    SpanOpen(String),
    SpanClose(String),
}

/// A usage record as the generator expects the server to hold it.
#[derive(Debug, Clone)]
struct ExpectedRecord {
    model: String,
    input: i64,
    cached: i64,
    output: i64,
    client_nanos: Option<i128>,
}

impl ExpectedRecord {
    /// Returns the cost in nano-dollars: the client's, else the model's
    /// built-in list price (`store/src/events/pricing.rs`), else none.
    fn cost_nanos(&self) -> Option<i128> {
        if self.client_nanos.is_some() {
            return self.client_nanos;
        }
        // Nano-dollars per token for uncached input, cached input and output.
        let (input, cached, output) = match self.model.as_str() {
            "gpt-4o" => (2_500, 1_250, 10_000),
            "openai/gpt-4o-mini" => (150, 75, 600),
            "claude-3-5-sonnet" => (3_000, 300, 15_000),
            _ => return None,
        };
        Some(((self.input - self.cached) * input + self.cached * cached + self.output * output) as i128)
    }
}

/// Figures the servers must report, derived from the generated requests.
#[derive(Debug, Clone, Default)]
struct Expected {
    /// Traces that the server holds: a create or an update has reached them.
    traces: BTreeSet<String>,
    spans: BTreeSet<String>,
    usage: BTreeMap<String, ExpectedRecord>,
    /// Usage record ids that no longer exist: derived records replaced by a post.
    replaced_usage: BTreeSet<String>,
    /// Checkpoint span id to whether it passed (`metadata.passed` is `true`).
    checkpoints: BTreeMap<String, bool>,
    reviews: usize,
}

struct DataSet {
    halves: [Vec<Step>; 2],
    /// What the servers hold after each half.
    expected: [Expected; 2],
    /// Every trace id that any request names, created or not.
    trace_ids: Vec<String>,
    span_ids: Vec<String>,
}

struct Generator {
    rng: Lcg,
    half: usize,
    halves: [Vec<Step>; 2],
    /// Closes held back from the first half to open the second.
    deferred: Vec<Step>,
    expected: Expected,
    trace_ids: Vec<String>,
    span_ids: Vec<String>,
    /// Spans flagged so far, to unflag some later.
    flagged: Vec<String>,
    /// llm spans with a usage record, for a post that replaces one.
    llm_spans: Vec<String>,
    /// Posted usage records as sent, for retries.
    posted: Vec<Value>,
}

impl Generator {
    fn push(&mut self, step: Step) {
        self.halves[self.half].push(step);
    }

    fn new_span(&mut self, id: &str) {
        self.span_ids.push(id.to_string());
        self.expected.spans.insert(id.to_string());
    }

    /// Picks the agent of a trace: one of the rows, a free string, or none.
    fn trace_agent(&mut self) -> Option<String> {
        let choices: Vec<Option<String>> = vec![
            Some(agent("planner")),
            Some(agent("planner")),
            Some(agent("booker")),
            Some(agent("support")),
            Some(agent("scratch")),
            Some(SIM_AGENT.to_string()),
            Some(LOCAL_AGENT.to_string()),
            None,
        ];
        self.rng.pick(&choices)
    }

    /// Generates one run of an agent: a `run_agent` root span, one to three
    /// turns, each with an llm call and maybe a tool call, then the closes.
    fn run(&mut self, i: usize, start: i64) {
        let trace_id = format!("run-{i:02}");
        let style = self.rng.below(4);
        let agent_id = self.trace_agent();
        let run_id = format!("r{i:02}");
        let killed = i % 7 == 5;
        let running = i % 11 == 6;
        let mut steps: Vec<(Role, Step)> = Vec::new();

        let mut metadata = json!({"run_id": run_id, "attempt": i % 3});
        if let Some(scenario) = self.rng.pick(&[Some("lunch"), Some("travel"), None]) {
            metadata["scenario"] = json!(scenario);
        }
        steps.push((
            Role::TraceCreate,
            create("/api/tracing/traces/", json!({"id": trace_id, "name": "run_agent", "started_at": stamp(start, style),
                "agent_id": agent_id, "metadata": metadata})),
        ));

        let root = format!("{trace_id}-root");
        self.new_span(&root);
        let input_text = if self.rng.chance(70) { json!("Plan a team lunch") } else { Value::Null };
        steps.push((
            Role::SpanOpen(root.clone()),
            create("/api/tracing/spans/", json!({"id": root, "trace_id": trace_id, "parent_id": null, "name": "run_agent",
                "span_type": "text", "started_at": stamp(start + MILLISECOND, style), "input_text": input_text,
                "metadata": {"agent_id": agent_id, "run_id": run_id}})),
        ));

        let mut at = start + 2 * MILLISECOND;
        let mut run_usage = (0i64, 0i64, 0i64);
        let turns = 1 + self.rng.below(3) as usize;
        let mut tool_spans = Vec::new();
        for turn in 0..turns {
            let turn_id = format!("{trace_id}-turn{turn}");
            self.new_span(&turn_id);
            steps.push((
                Role::SpanOpen(turn_id.clone()),
                create("/api/tracing/spans/", json!({"id": turn_id, "trace_id": trace_id, "parent_id": root, "name": format!("turn_{turn}"),
                    "span_type": "text", "started_at": stamp(at, style), "input_text": null, "metadata": {"turn": turn}})),
            ));

            // The model call, with usage on its close.
            let llm = format!("{trace_id}-llm{turn}");
            self.new_span(&llm);
            let model = self.rng.pick(&MODELS);
            let opened = at + self.rng.range(1, 50) * MILLISECOND;
            steps.push((
                Role::SpanOpen(llm.clone()),
                create("/api/tracing/spans/", json!({"id": llm, "trace_id": trace_id, "parent_id": turn_id, "name": "openrouter_api_call",
                    "span_type": "llm", "started_at": stamp(opened, style), "input_text": format!("prompt {turn}"),
                    "metadata": {"model": model, "provider": "openrouter"}})),
            ));
            let input = self.rng.range(200, 6000);
            let cached = self.rng.range(0, input / 2) / 64 * 64;
            let output = self.rng.range(10, 500);
            let reasoning = self.rng.range(0, output / 3);
            // Most calls report a cost (whole micro-dollars, exact as a double);
            // the others send 0.0, as the harness does when the provider gave none.
            let cost_micros = if self.rng.chance(60) { self.rng.range(1, 4000) } else { 0 };
            let closed = opened + self.rng.range(300, 9000) * MILLISECOND;
            steps.push((
                Role::SpanClose(llm.clone()),
                update(&format!("/api/tracing/spans/{llm}/"), json!({"ended_at": stamp(closed, style), "input_text": "",
                    "output_text": format!("answer {turn}"), "error": "",
                    "metadata": {"model": model, "provider": "openrouter", "llm_cost": {"model": model, "input_tokens": input,
                        "output_tokens": output, "cached_tokens": cached, "reasoning_tokens": reasoning,
                        "total_cost_usd": cost_micros as f64 / 1e6, "cache_hit_rate": cached as f64 / input as f64}}})),
            ));
            self.expected.usage.insert(
                llm.clone(),
                ExpectedRecord { model: model.to_string(), input, cached, output, client_nanos: (cost_micros > 0).then_some(cost_micros as i128 * 1000) },
            );
            self.llm_spans.push(llm.clone());
            run_usage = (run_usage.0 + input, run_usage.1 + output, run_usage.2 + cost_micros);
            at = closed;

            // A tool call in some turns; some fail.
            if self.rng.chance(60) {
                let tool_id = format!("{trace_id}-tool{turn}");
                self.new_span(&tool_id);
                let tool = self.rng.pick(&TOOLS);
                let failed = self.rng.chance(30);
                steps.push((
                    Role::SpanOpen(tool_id.clone()),
                    create("/api/tracing/spans/", json!({"id": tool_id, "trace_id": trace_id, "parent_id": turn_id, "name": tool,
                        "span_type": "tool", "started_at": stamp(at, style), "input_text": format!("{{\"turn\": {turn}}}"), "metadata": {}})),
                ));
                at += self.rng.range(5, 3000) * MILLISECOND;
                let (error, metadata) = if failed {
                    ("timeout after 10s", json!({"error": "timeout after 10s"}))
                } else {
                    ("", json!({"image_count": self.rng.below(3)}))
                };
                steps.push((
                    Role::SpanClose(tool_id.clone()),
                    update(&format!("/api/tracing/spans/{tool_id}/"), json!({"ended_at": stamp(at, style), "input_text": "",
                        "output_text": if failed { "" } else { "found 3 places" }, "error": error, "metadata": metadata})),
                ));
                tool_spans.push(tool_id);
            }

            if !(running && turn + 1 == turns) {
                at += self.rng.range(1, 20) * MILLISECOND;
                steps.push((
                    Role::SpanClose(turn_id.clone()),
                    update(&format!("/api/tracing/spans/{turn_id}/"), json!({"ended_at": stamp(at, style), "input_text": "", "output_text": "",
                        "error": "", "metadata": {"turn": turn, "usage": {"llm_calls": 1}}})),
                ));
            }
        }

        let usage = json!({"input_tokens": run_usage.0, "output_tokens": run_usage.1, "llm_calls": turns,
            "total_cost_usd": run_usage.2 as f64 / 1e6, "model_breakdown": {}});
        if !running {
            // A killed harness force-closes with an error first; its normal
            // close follows with an empty error and a later time.
            if killed {
                let kill_at = at + 5 * MILLISECOND;
                steps.push((
                    Role::SpanClose(root.clone()),
                    update(&format!("/api/tracing/spans/{root}/"), json!({"ended_at": stamp(kill_at, style), "error": "SIGTERM received",
                        "metadata": {"killed": true}})),
                ));
                steps.push((
                    Role::TraceClose,
                    update(&format!("/api/tracing/traces/{trace_id}/"), json!({"ended_at": stamp(kill_at, style), "error": "SIGTERM received",
                        "metadata": {"killed": true}})),
                ));
                at += SECOND;
            }
            let error = if !killed && self.rng.chance(15) { "budget exceeded" } else { "" };
            at += 10 * MILLISECOND;
            steps.push((
                Role::SpanClose(root.clone()),
                update(&format!("/api/tracing/spans/{root}/"), json!({"ended_at": stamp(at, style), "input_text": "", "output_text": "done",
                    "error": "", "metadata": {"agent_id": agent_id, "run_id": run_id, "usage": usage}})),
            ));
            // The trace close merges the run's metadata; `null` removes `attempt` from some.
            let attempt = if i % 4 == 0 { Value::Null } else { json!(i % 3) };
            steps.push((
                Role::TraceClose,
                update(&format!("/api/tracing/traces/{trace_id}/"), json!({"ended_at": stamp(at + MILLISECOND, style), "error": error,
                    "metadata": {"usage": usage, "outcome": "done", "attempt": attempt}})),
            ));
        }

        let steps = self.reorder(i, steps);
        self.expected.traces.insert(trace_id.clone());
        self.trace_ids.push(trace_id.clone());
        // Some traces of the first half are closed only in the second half,
        // so the close merges into a flushed state.
        for (role, step) in steps {
            let closes_run = role == Role::TraceClose || role == Role::SpanClose(root.clone());
            if self.half == 0 && i % 4 == 2 && closes_run {
                self.deferred.push(step);
            } else {
                self.push(step);
            }
        }

        // Review queue: flag a tool or llm span of some runs, with or without a reason.
        if let Some(tool) = tool_spans.first().filter(|_| i % 3 == 0) {
            self.push(action(&format!("/api/tracing/spans/{tool}/flag/"), Some(json!({"reason": "wrong tool"}))));
            self.flagged.push(tool.clone());
        } else if i % 3 == 1 {
            let llm = format!("{trace_id}-llm0");
            self.push(action(&format!("/api/tracing/spans/{llm}/flag/"), None));
            self.flagged.push(llm);
        }
    }

    /// Reorders and repeats a trace's requests as harnesses and networks do.
    fn reorder(&mut self, i: usize, mut steps: Vec<(Role, Step)>) -> Vec<(Role, Step)> {
        let position = |steps: &[(Role, Step)], role: &Role| steps.iter().position(|(r, _)| r == role);
        match i % 5 {
            // Spans before their trace: the trace create goes after every span request.
            1 => {
                let create = steps.remove(0);
                let at = position(&steps, &Role::TraceClose).unwrap_or(steps.len());
                steps.insert(at, create);
            }
            // Every llm span is closed before it is opened.
            2 => {
                let llm_opens: Vec<String> = steps
                    .iter()
                    .filter_map(|(role, step)| match role {
                        Role::SpanOpen(id) if step.body.as_ref().is_some_and(|b| b["span_type"] == "llm") => Some(id.clone()),
                        _ => None,
                    })
                    .collect();
                for id in llm_opens {
                    let open = position(&steps, &Role::SpanOpen(id.clone())).unwrap();
                    let close = position(&steps, &Role::SpanClose(id)).unwrap();
                    steps.swap(open, close);
                }
            }
            // The trace is closed before it is opened: its create goes last.
            3 => {
                let create = steps.remove(0);
                steps.push(create);
            }
            // Retries: the trace create and a span close are sent again after
            // everything, and the root span's open twice in a row.
            4 => {
                let create = steps[0].clone();
                let root_open = steps[1].clone();
                steps.insert(2, root_open);
                if let Some(close) = steps.iter().find(|(role, _)| matches!(role, Role::SpanClose(_))).cloned() {
                    steps.push(close);
                }
                steps.push(create);
            }
            _ => {}
        }
        steps
    }

    /// Generates a trace of checkpoints as an evaluation run sends them: each
    /// checkpoint opened and closed at one instant, in a trace named after the
    /// first, that has no other spans.
    fn checkpoints(&mut self, i: usize, start: i64) {
        let trace_id = format!("checks-{i:02}");
        let style = self.rng.below(4);
        let agent_id = self.trace_agent();
        let count = if i % 8 == 7 { 3 } else { 1 };
        let names: Vec<&str> = (0..count).map(|_| self.rng.pick(&CHECKPOINTS)).collect();
        let scenario = self.rng.pick(&[Some("lunch"), Some("travel"), None]);

        self.expected.traces.insert(trace_id.clone());
        self.trace_ids.push(trace_id.clone());
        self.push(create("/api/tracing/traces/", json!({"id": trace_id, "name": names[0], "started_at": stamp(start, style),
            "agent_id": agent_id, "metadata": {}})));

        for (k, name) in names.iter().enumerate() {
            let span_id = format!("{trace_id}-check{k}");
            self.new_span(&span_id);
            let at = stamp(start + k as i64 * SECOND, style);

            // `true` passes; `false`, the string "true" and a missing key fail.
            let outcome = self.rng.pick(&[json!(true), json!(true), json!(false), json!("true"), Value::Null]);
            let mut metadata = json!({"description": format!("{name} as asked"), "simulated_time": at,
                "agent_id": agent_id.clone().unwrap_or_else(|| SIM_AGENT.to_string()),
                "assertions": [{"passed": outcome == json!(true), "description": "the booking exists"}],
                "assertions_passed": u8::from(outcome == json!(true)), "assertions_total": 1,
                "cumulative_cost_usd": "0.00038", "cumulative_wall_seconds": 12.5 + k as f64});
            if !outcome.is_null() {
                metadata["passed"] = outcome.clone();
            }
            if let Some(scenario) = scenario {
                metadata["scenario"] = json!(scenario);
            }

            self.push(create("/api/tracing/spans/", json!({"id": span_id, "trace_id": trace_id, "parent_id": null, "name": name,
                "span_type": "checkpoint", "started_at": at, "input_text": null, "metadata": metadata})));
            self.push(update(&format!("/api/tracing/spans/{span_id}/"), json!({"ended_at": at, "input_text": "", "output_text": "",
                "error": "", "metadata": metadata})));
            self.expected.checkpoints.insert(span_id, outcome == json!(true));
        }

        let end = stamp(start + (count as i64 - 1) * SECOND, style);
        self.push(update(&format!("/api/tracing/traces/{trace_id}/"), json!({"ended_at": end, "error": "", "metadata": {}})));
    }

    /// Generates a usage record as a client posts it, and records what it should read back as.
    fn usage_record(&mut self, id: &str, at: i64) -> Value {
        let model = self.rng.pick(&MODELS);
        let input = self.rng.range(100, 10_000);
        let cached = self.rng.range(0, input / 2);
        let output = self.rng.range(10, 1_000);
        let agent_id = self.rng.pick(&[Some(agent("booker")), Some(agent("planner")), Some(LOCAL_AGENT.to_string()), None]);
        let mut record = json!({"id": id, "agent_id": agent_id, "model": model, "input_tokens": input, "cached_tokens": cached,
            "output_tokens": output, "reasoning_tokens": output / 4, "timestamp": stamp(at, self.rng.below(4))});
        let client_nanos = match self.rng.below(4) {
            // A decimal string keeps every nano-dollar.
            0 | 1 => {
                let nanos = self.rng.range(1, 90_000_000) as i128;
                record["cost_usd"] = json!(decimal(nanos));
                Some(nanos)
            }
            // A number with at most six decimals is exact too.
            2 => {
                let micros = self.rng.range(1, 500_000);
                record["cost_usd"] = json!(micros as f64 / 1e6);
                Some(micros as i128 * 1000)
            }
            // No cost: priced from the model, or unpriced for an unknown model.
            _ => None,
        };
        if self.rng.chance(40) {
            record["trace_id"] = json!(self.rng.pick(&self.trace_ids.clone()));
        }
        self.expected.usage.insert(id.to_string(), ExpectedRecord { model: model.to_string(), input, cached, output, client_nanos });
        record
    }

    /// Generates one review of each of `trace_ids`, in shapes that cover the
    /// weighted-score rules. Each registers a `<review:N>` placeholder.
    fn reviews(&mut self, trace_ids: &[String]) {
        let shapes = [
            json!({"criterion_scores": {"accuracy": 7, "tone": 4}, "eval": "<eval:lunch>", "comment": "good"}),
            json!({"criterion_scores": {"accuracy": {"score": 9, "weight": 1}}, "eval": "<eval:lunch>"}),
            json!({"criterion_scores": {"helpful": 0.25, "tone": {"score": 3, "max": 4, "weight": 2}}}),
            json!({"criterion_scores": {}}),
            json!({"criterion_scores": {"helpful": {"score": 1, "weight": 0}}, "source": "human"}),
            json!({"criterion_scores": {"helpful": -0.5, "accuracy": 0.1}, "eval": "<eval:plain>"}),
            json!({"criterion_scores": {"accuracy": 0.1, "helpful": 0.2, "tone": 0.3}}),
        ];
        for trace_id in trace_ids {
            let shape = self.rng.pick(&shapes);
            let mut step = create(&format!("/api/tracing/traces/{trace_id}/reviews/"), shape);
            step.register = Some(format!("<review:{}>", self.expected.reviews));
            self.push(step);
            self.expected.reviews += 1;
        }
    }
}

/// Builds the whole data set: two halves of traces, usage posts, flags, eval
/// cases and reviews, with the retries and reorderings harnesses produce.
fn generate() -> DataSet {
    let mut g = Generator {
        rng: Lcg(SEED),
        half: 0,
        halves: [Vec::new(), Vec::new()],
        deferred: Vec::new(),
        expected: Expected::default(),
        trace_ids: Vec::new(),
        span_ids: Vec::new(),
        flagged: Vec::new(),
        llm_spans: Vec::new(),
        posted: Vec::new(),
    };

    // Eval cases first; reviews refer to them.
    let mut lunch = create("/api/tracing/evals/", json!({"name": "lunch", "input": "Plan lunch", "expected": {"place": "veggie"},
        "rubric": [{"criterion": "accuracy", "weight": 3, "max": 10, "description": "Right place?"}, {"criterion": "tone", "max": 5}],
        "metadata": {"suite": "smoke"}}));
    lunch.register = Some("<eval:lunch>".into());
    g.push(lunch);
    let mut plain = create("/api/tracing/evals/", json!({"name": "plain", "input": {"q": "2+2"}, "expected": "4"}));
    plain.register = Some("<eval:plain>".into());
    g.push(plain);

    let mut expected = Vec::new();
    for half in 0..2 {
        g.half = half;
        if half == 1 {
            let deferred = std::mem::take(&mut g.deferred);
            g.halves[1].extend(deferred);
        }
        let traces = if half == 0 { 0..TRACES / 2 } else { TRACES / 2..TRACES };
        let first_trace = g.trace_ids.len();
        for i in traces {
            // Spread over about three days, so day and hour groups differ.
            let start = START + i as i64 * 83 * MINUTE + g.rng.range(0, 60) * SECOND + g.rng.range(0, 1_000_000);
            if i % 4 == 3 {
                g.checkpoints(i, start);
            } else {
                g.run(i, start);
            }
        }

        // Usage posted by clients: a batch, then single records.
        let base = START + half as i64 * 30 * 60 * MINUTE;
        let records: Vec<Value> = (0..8).map(|n| g.usage_record(&format!("usage-{half}-{n}"), base + n * 7 * MINUTE)).collect();
        g.posted.extend(records.iter().cloned());
        g.push(create("/api/cloud/usage/", json!({"records": records})));
        for n in 8..11 {
            let record = g.usage_record(&format!("usage-{half}-{n}"), base + n * 7 * MINUTE);
            g.posted.push(record.clone());
            g.push(create("/api/cloud/usage/", record));
        }

        let reviewed: Vec<String> = g.trace_ids[first_trace..].iter().step_by(3).cloned().collect();
        g.reviews(&reviewed);

        if half == 1 {
            second_half_changes(&mut g);
        }
        expected.push(g.expected.clone());
    }

    DataSet {
        halves: g.halves,
        expected: [expected[0].clone(), expected[1].clone()],
        trace_ids: g.trace_ids,
        span_ids: g.span_ids,
    }
}

/// Generates the second half's changes to first-half objects (retries,
/// replacements, unflags, edits of reviews and of a rubric), orphan requests
/// and a batch.
fn second_half_changes(g: &mut Generator) {
    // Usage retries: identical re-sends change nothing; a re-send with other
    // values (every field again) replaces the record.
    for record in g.posted.clone().iter().take(4) {
        g.push(create("/api/cloud/usage/", record.clone()));
    }
    let mut changed = g.posted[5].clone();
    changed["input_tokens"] = json!(4321);
    changed["cached_tokens"] = json!(321);
    changed["cost_usd"] = json!("1.000000001");
    let id = changed["id"].as_str().unwrap().to_string();
    g.expected.usage.get_mut(&id).unwrap().input = 4321;
    g.expected.usage.get_mut(&id).unwrap().cached = 321;
    g.expected.usage.get_mut(&id).unwrap().client_nanos = Some(1_000_000_001);
    g.push(create("/api/cloud/usage/", changed));

    // A posted record that names an llm span replaces the span's derived record.
    let span_id = g.llm_spans[3].clone();
    g.push(create("/api/cloud/usage/", json!({"id": "usage-for-span", "span_id": span_id, "agent_id": LOCAL_AGENT, "model": "gpt-4o",
        "input_tokens": 10, "output_tokens": 5, "cost_usd": "0.5", "timestamp": stamp(START + 10 * MINUTE, 1)})));
    g.expected.usage.remove(&span_id);
    g.expected.usage.insert("usage-for-span".into(), ExpectedRecord { model: "gpt-4o".into(), input: 10, cached: 0, output: 5, client_nanos: Some(500_000_000) });
    g.expected.replaced_usage.insert(span_id);

    // The review queue moves on: half of the flagged spans are unflagged.
    for span in g.flagged.clone().iter().step_by(2) {
        g.push(action(&format!("/api/tracing/spans/{span}/unflag/"), None));
    }

    // Reviews and a rubric are edited; one review comes from the user.
    g.push(update("/api/tracing/reviews/<review:0>/", json!({"criterion_scores": {"accuracy": 4}, "comment": "second look"})));
    g.push(update("/api/tracing/reviews/<review:2>/", json!({"eval": null})));
    g.push(update("/api/tracing/evals/<eval:lunch>/", json!({"rubric": [{"criterion": "accuracy", "max": 8}, {"criterion": "tone"}]})));
    let mut by_user = create("/api/tracing/traces/run-00/reviews/", json!({"criterion_scores": {"x": 1, "y": 0}, "comment": "by hand"}));
    by_user.auth = Auth::UserToken;
    by_user.register = Some(format!("<review:{}>", g.expected.reviews));
    g.push(by_user);
    g.expected.reviews += 1;

    // A close of a trace that never opens, which still makes a trace, and
    // spans of a trace that never opens, which do not (one has usage, whose
    // agent then comes from the span's metadata).
    g.trace_ids.push("orphan-close".into());
    g.expected.traces.insert("orphan-close".into());
    g.push(update("/api/tracing/traces/orphan-close/", json!({"ended_at": stamp(START + MINUTE, 1), "error": "lost", "metadata": {"x": 1}})));
    g.trace_ids.push("ghost".into());
    for (n, kind) in ["text", "llm"].iter().enumerate() {
        let span_id = format!("ghost-span{n}");
        g.new_span(&span_id);
        g.push(create("/api/tracing/spans/", json!({"id": span_id, "trace_id": "ghost", "parent_id": null, "name": kind,
            "span_type": kind, "started_at": stamp(START + 2 * MINUTE, 3), "metadata": {"agent_id": SIM_AGENT}})));
    }
    g.push(update("/api/tracing/spans/ghost-span1/", json!({"ended_at": stamp(START + 3 * MINUTE, 3),
        "metadata": {"llm_cost": {"model": "claude-3-5-sonnet", "input_tokens": 1000, "output_tokens": 100, "cached_tokens": 0, "total_cost_usd": 0.0}}})));
    g.expected.usage.insert("ghost-span1".into(), ExpectedRecord { model: "claude-3-5-sonnet".into(), input: 1000, cached: 0, output: 100, client_nanos: None });

    // One checkpoint trace through the batch endpoint, all events of one request.
    let at = stamp(START + 70 * 60 * MINUTE, 1);
    let metadata = json!({"passed": true, "scenario": "travel", "agent_id": agent("booker"), "description": "batched"});
    g.trace_ids.push("batched".into());
    g.new_span("batched-check");
    g.push(action("/api/tracing/ingest/", Some(json!({"events": [
        {"type": "span.create", "body": {"id": "batched-check", "trace_id": "batched", "name": "paid_deposit", "span_type": "checkpoint",
            "started_at": at, "metadata": metadata}},
        {"type": "trace.create", "body": {"id": "batched", "name": "paid_deposit", "started_at": at, "agent_id": agent("booker")}},
        {"type": "span.update", "body": {"id": "batched-check", "ended_at": at, "error": "", "metadata": metadata}},
        {"type": "trace.update", "body": {"id": "batched", "ended_at": at, "error": ""}},
    ]}))));
    g.expected.traces.insert("batched".into());
    g.expected.checkpoints.insert("batched-check".into(), true);
}

// ---- the two deployments ----

/// Server-assigned ids by placeholder, and back.
#[derive(Default)]
struct Ids {
    by_placeholder: BTreeMap<String, String>,
    by_id: HashMap<String, String>,
}

impl Ids {
    fn insert(&mut self, placeholder: &str, id: &str) {
        self.by_placeholder.insert(placeholder.to_string(), id.to_string());
        self.by_id.insert(id.to_string(), placeholder.to_string());
    }

    /// Replaces the placeholders in a path or query.
    fn fill_text(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (placeholder, id) in &self.by_placeholder {
            text = text.replace(placeholder, id);
        }
        text
    }

    /// Replaces every JSON string that is a placeholder.
    fn fill_json(&self, value: &Value) -> Value {
        match value {
            Value::String(text) => json!(self.by_placeholder.get(text).unwrap_or(text)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), self.fill_json(v))).collect()),
            other => other.clone(),
        }
    }

    /// Replaces every server-assigned id in a text with its placeholder.
    fn hide_in_text(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (id, placeholder) in &self.by_id {
            text = text.replace(id, placeholder);
        }
        text
    }
}

/// Fields that hold the time a server received something: objects' creation
/// and update times, a span's flag time and an agent transition's `at`. Each
/// server stamps its own clock, so only whether they are set is compared.
const SERVER_TIMES: [&str; 4] = ["created_at", "updated_at", "flagged_at", "at"];

/// Rewrites a response into the form both servers must share. Only values
/// that legitimately differ between two servers are changed:
/// - ids the server assigned (agents, eval cases, reviews, the user, the
///   organization) become their placeholders;
/// - server receive times (`SERVER_TIMES`) become a marker when set;
/// - `next` and `previous` links lose the server's own address, which
///   differs by port. The cursors inside them are compared as they are,
///   since they encode only the sort key and id of the last row.
fn normalize(value: &Value, ids: &Ids, base: &str) -> Value {
    match value {
        Value::String(text) => match ids.by_id.get(text) {
            Some(placeholder) => json!(placeholder),
            None => match text.strip_prefix(base) {
                Some(path) => json!(ids.hide_in_text(path)),
                None => value.clone(),
            },
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| normalize(v, ids, base)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| {
                    let v = if SERVER_TIMES.contains(&key.as_str()) && !v.is_null() { json!("<server time>") } else { normalize(v, ids, base) };
                    (key.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Returns where two JSON values first differ, as a JSON pointer with both values.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let pointer = format!("{at}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(found) = first_difference(u, v, &pointer) {
                            return Some(found);
                        }
                    }
                    (u, v) => return Some(format!("{pointer}: {u:?} against {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (n, (u, v)) in x.iter().zip(y).enumerate() {
                if let Some(found) = first_difference(u, v, &format!("{at}/{n}")) {
                    return Some(found);
                }
            }
            (x.len() != y.len()).then(|| format!("{at}: {} items against {}", x.len(), y.len()))
        }
        _ => (a != b).then(|| format!("{at}: {a} against {b}")),
    }
}

/// One deployment under test, with the credentials of its organization.
struct Deployment {
    name: &'static str,
    settings: ServeSettings,
    server: TestServer,
    key: String,
    token: String,
    ids: Ids,
    _data: tempfile::TempDir,
}

impl Deployment {
    async fn start(name: &'static str, production: bool) -> Deployment {
        let data = tempfile::tempdir().unwrap();
        let database_url = if production { Some(fresh_postgres_database().await) } else { None };
        let mut settings = test_settings(data.path(), database_url);
        if production {
            settings.storage.clickhouse_url = Some(fresh_clickhouse_database().await);
        }
        settings.events.flush_events = FLUSH_EVENTS_FIRST_HALF;
        // No flushes by age: what is flushed depends on the event count alone.
        settings.events.flush_interval_ms = 600_000;
        settings.events.compact_segments = 3;
        let server = TestServer::start_settings(settings.clone()).await;
        let (token, signup) = server.sign_up("differential@example.com").await;
        let (status, created) = server.post("/api/organizations/api-keys/", &token, json!({"name": "harness"})).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {created}");
        let key = format!("Bearer {}", created["key"].as_str().unwrap());
        let mut ids = Ids::default();
        ids.insert("<user>", signup["user"]["id"].as_str().unwrap());
        ids.insert("<organization>", signup["organization"]["id"].as_str().unwrap());
        let mut deployment = Deployment { name, settings, server, key, token, ids, _data: data };
        deployment.create_agents().await;
        deployment
    }

    /// Creates the agent rows and registers their placeholders. The agents
    /// are created alike and get their roles in the order of their ids, so a
    /// list sorted by agent id lists the roles in one order on both servers.
    async fn create_agents(&mut self) {
        let mut ids = Vec::new();
        for _ in AGENT_ROLES {
            let (status, body) = self.server.post("/api/cloud/agents/", &self.key, json!({"name": "agent", "model": "gpt-4o"})).await;
            assert_eq!(status, StatusCode::CREATED, "{}: {body}", self.name);
            ids.push(body["id"].as_str().unwrap().to_string());
        }
        ids.sort();
        for ((role, purpose, tags), id) in AGENT_ROLES.iter().zip(ids) {
            let (status, body) = self.server.patch(&format!("/api/cloud/agents/{id}/"), &self.key, json!({"name": role, "purpose": purpose})).await;
            assert_eq!(status, StatusCode::OK, "{}: {body}", self.name);
            for tag in *tags {
                let (status, body) = self.server.post(&format!("/api/cloud/agents/{id}/tags/"), &self.key, json!({"tag": tag})).await;
                assert_eq!(status, StatusCode::OK, "{}: {body}", self.name);
            }
            self.ids.insert(&agent(role), &id);
        }
    }

    /// Stops the server gracefully, which flushes its buffer, and starts it
    /// again on the same data with another flush threshold.
    async fn restart(&mut self, flush_events: usize) {
        self.server.stop().await;
        self.settings.events.flush_events = flush_events;
        self.server = TestServer::start_settings(self.settings.clone()).await;
    }

    async fn send(&self, step: &Step) -> (StatusCode, Value) {
        let auth = match step.auth {
            Auth::ApiKey => &self.key,
            Auth::UserToken => &self.token,
        };
        let body = step.body.as_ref().map(|b| self.ids.fill_json(b));
        self.server.call(step.method.clone(), &self.ids.fill_text(&step.path), Some(auth), body).await
    }

    /// GETs a path with its placeholders filled and returns the normalized response.
    async fn read(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.server.get(&self.ids.fill_text(path), &self.key).await;
        (status, normalize(&body, &self.ids, &self.server.base))
    }

    /// GETs a path as text, with server-assigned ids replaced by their placeholders.
    async fn read_text(&self, path: &str) -> (StatusCode, String) {
        let url = format!("{}{}", self.server.base, self.ids.fill_text(path));
        let response = self.server.client.get(url).header("Authorization", &self.key).send().await.unwrap();
        let status = response.status();
        (status, self.ids.hide_in_text(&response.text().await.unwrap()))
    }

    /// Returns the event store's counters from `/readyz`.
    async fn event_stats(&self) -> Value {
        let (status, body) = self.server.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", self.name);
        body["events"].clone()
    }

    /// Counts the rows of flushed events in ClickHouse, for the production deployment.
    async fn clickhouse_rows(&self) -> Option<u64> {
        let url = self.settings.storage.clickhouse_url.as_ref()?;
        let (base, database) = url.split_once("?database=").unwrap();
        let response = self
            .server
            .client
            .post(format!("{base}/?database={database}"))
            .body("SELECT count() FROM events WHERE kind != 'flush'")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        Some(response.text().await.unwrap().trim().parse().unwrap())
    }
}

/// Sends the steps to both deployments, one step to both before the next,
/// and compares the write responses too.
async fn send_all(pair: &mut [Deployment; 2], steps: &[Step]) {
    for step in steps {
        let mut responses = Vec::new();
        for deployment in pair.iter_mut() {
            let (status, body) = deployment.send(step).await;
            assert_eq!(status, step.expect, "{}: {} {}: {body}", deployment.name, step.method, step.path);
            if let Some(placeholder) = &step.register {
                deployment.ids.insert(placeholder, body["id"].as_str().unwrap());
            }
            responses.push(normalize(&body, &deployment.ids, &deployment.server.base));
        }
        let difference = first_difference(&responses[0], &responses[1], "").unwrap_or_default();
        assert_eq!(responses[0], responses[1], "{} {}: the responses differ at {difference}", step.method, step.path);
    }
}

/// GETs `path` from both deployments and asserts the same normalized
/// response with the status `expect`; returns the response.
async fn compare(pair: &[Deployment; 2], path: &str, expect: StatusCode) -> Value {
    let (status_a, a) = pair[0].read(path).await;
    let (status_b, b) = pair[1].read(path).await;
    assert_eq!(status_a, expect, "{}: GET {path}: {a}", pair[0].name);
    assert_eq!(status_b, expect, "{}: GET {path}: {b}", pair[1].name);
    let difference = first_difference(&a, &b, "").unwrap_or_default();
    assert_eq!(a, b, "GET {path}: the responses differ at {difference}");
    a
}

/// Follows `next` links from `path` on both deployments, each along its own
/// links, comparing every page; returns the rows of all pages.
async fn compare_pages(pair: &[Deployment; 2], path: &str) -> Vec<Value> {
    let mut paths = [pair[0].ids.fill_text(path), pair[1].ids.fill_text(path)];
    let mut rows = Vec::new();
    let mut count = None;
    for _page in 0..200 {
        let mut responses = Vec::new();
        let mut next = Vec::new();
        for (deployment, path) in pair.iter().zip(&paths) {
            // The links are this server's own, with its ids already in them.
            let (status, body) = deployment.server.get(path, &deployment.key).await;
            assert_eq!(status, StatusCode::OK, "{}: GET {path}: {body}", deployment.name);
            next.push(body["next"].as_str().map(|link| link.strip_prefix(&deployment.server.base).unwrap().to_string()));
            responses.push(normalize(&body, &deployment.ids, &deployment.server.base));
        }
        let difference = first_difference(&responses[0], &responses[1], "").unwrap_or_default();
        assert_eq!(responses[0], responses[1], "GET {} (paging from {path}): the pages differ at {difference}", paths[0]);
        count.get_or_insert(responses[0]["count"].clone());
        rows.extend(responses[0]["results"].as_array().unwrap().iter().cloned());
        match (next[0].take(), next[1].take()) {
            (Some(a), Some(b)) => paths = [a, b],
            _ => {
                assert_eq!(count, Some(json!(rows.len())), "{path}: the pages hold `count` rows");
                return rows;
            }
        }
    }
    panic!("{path}: more than 200 pages");
}

/// Lists every read compared after each half: the path (with placeholders)
/// and the status both servers must return.
fn reads(data: &DataSet, expected: &Expected) -> Vec<(String, StatusCode)> {
    let ok = |path: String| (path, StatusCode::OK);
    let mut reads = Vec::new();

    // Each trace and span, and the spans and reviews of each trace. A trace
    // exists once a create or an update arrived; until then it is a 404.
    for trace_id in &data.trace_ids {
        let created = if expected.traces.contains(trace_id) { StatusCode::OK } else { StatusCode::NOT_FOUND };
        reads.push((format!("/api/tracing/traces/{trace_id}/"), created));
        reads.push((format!("/api/tracing/traces/{trace_id}/reviews/"), created));
        reads.push(ok(format!("/api/tracing/spans/?trace={trace_id}&page_size=1000")));
    }
    reads.push(("/api/tracing/traces/no-such-trace/".into(), StatusCode::NOT_FOUND));
    for span_id in &data.span_ids {
        let exists = if expected.spans.contains(span_id) { StatusCode::OK } else { StatusCode::NOT_FOUND };
        reads.push((format!("/api/tracing/spans/{span_id}/"), exists));
    }
    reads.push(("/api/tracing/spans/no-such-span/".into(), StatusCode::NOT_FOUND));

    // The plain lists.
    for query in ["page_size=1000", "span_type=llm&page_size=1000", "span_type=checkpoint&page_size=1000", "flagged=true",
        "flagged=false&span_type=tool&page_size=1000", "page=3&page_size=9"]
    {
        reads.push(ok(format!("/api/tracing/spans/?{query}")));
    }
    reads.push(ok("/api/tracing/traces/?page_size=1000".into()));
    reads.push(ok("/api/tracing/traces/?page=2&page_size=10".into()));

    // The trace list, filtered and sorted.
    let agent_planner = format!("agent={}", agent("planner"));
    let agent_support = format!("agent={}&sort=cost_usd", agent("support"));
    let agent_booker = format!("agent={}&status=ok&span_type=llm", agent("booker"));
    let sim = format!("agent={SIM_AGENT}");
    let local = format!("agent={LOCAL_AGENT}");
    let filters = [
        "", "sort=started_at", "sort=duration_ms", "sort=-duration_ms", "sort=cost_usd", "sort=-cost_usd", "sort=span_count",
        "sort=-span_count", &agent_planner, &agent_support, &agent_booker, &sim, &local, "name=run_agent", "name__contains=paid",
        "name__contains=_", "name__contains=%25", "status=running", "status=ok", "status=error", "has_error=true",
        "has_error=false", "span_type=llm", "span_type=tool&sort=-span_count", "span_type=checkpoint", "span_type=audio",
        "metadata__scenario=lunch", "metadata__attempt=1", "metadata__outcome=done", "metadata__killed=true",
        "min_cost_usd=0.001", "min_cost_usd=0.0005&sort=-cost_usd", "min_duration_ms=20000", "max_duration_ms=0",
        "started_after=2026-03-02T00:00:00Z&started_before=2026-03-03T00:00:00Z", "page=2&page_size=5&sort=duration_ms",
    ];
    for filter in filters {
        reads.push(ok(format!("/api/tracing/traces/list/?page_size=1000&{filter}")));
    }

    // Usage: records, one by one, summaries in every grouping, per agent.
    let mut agents: Vec<String> = AGENT_ROLES.iter().map(|(role, _, _)| agent(role)).collect();
    agents.extend([SIM_AGENT.to_string(), LOCAL_AGENT.to_string(), "nobody".to_string()]);
    for query in [
        "page_size=1000".to_string(),
        format!("agent={}&page_size=1000", agent("booker")),
        "model=gpt-4o&page_size=1000".into(),
        "trace=run-01&page_size=1000".into(),
        "start=2026-03-02T00:00:00Z&end=2026-03-03T12:00:00Z&page_size=1000".into(),
    ] {
        reads.push(ok(format!("/api/cloud/usage/?{query}")));
    }
    for id in expected.usage.keys() {
        reads.push(ok(format!("/api/cloud/usage/{id}/")));
    }
    for id in &expected.replaced_usage {
        reads.push((format!("/api/cloud/usage/{id}/"), StatusCode::NOT_FOUND));
    }
    let usage_filters = ["".to_string(), format!("agent={}", agent("booker")), "model=claude-3-5-sonnet".into(),
        "start=2026-03-02T00:00:00Z".into(), format!("end=2026-03-02T00:00:00Z&agent={LOCAL_AGENT}")];
    for filter in &usage_filters {
        for group_by in ["", "agent", "model", "day", "hour", "trace", "agent,model", "model,day", "agent,model,day,hour,trace"] {
            reads.push(ok(format!("/api/cloud/usage/summary/?group_by={group_by}&{filter}")));
        }
    }
    for agent_id in &agents {
        reads.push(ok(format!("/api/cloud/agents/{agent_id}/usage/")));
        reads.push(ok(format!("/api/cloud/agents/{agent_id}/usage/?group_by=model,day")));
    }
    for (role, _, _) in AGENT_ROLES {
        reads.push(ok(format!("/api/cloud/agents/{}/", agent(role))));
    }

    // Evaluations: eval cases, reviews, and both dashboards.
    reads.push(ok("/api/tracing/evals/".into()));
    reads.push(ok("/api/tracing/evals/?name=lunch".into()));
    reads.push(ok("/api/tracing/evals/<eval:lunch>/".into()));
    reads.push(ok("/api/tracing/evals/<eval:plain>/".into()));
    for n in 0..expected.reviews {
        reads.push(ok(format!("/api/tracing/reviews/<review:{n}>/")));
    }
    let eval_filters = ["".to_string(), "agent_purpose=eval".into(), "agent_tag=git-sha%3Aaaa".into(),
        "agent_tag=git-sha%3Aaaa&agent_tag=env%3Aci".into(), "scenario=lunch".into(), "name=paid_deposit".into(),
        "start=2026-03-02T00:00:00Z&end=2026-03-03T00:00:00Z".into(), format!("agent={}", agent("planner"))];
    for summary in ["checkpoints", "reviews"] {
        for filter in &eval_filters {
            for group_by in ["", "agent", "agent_tag:git-sha", "scenario", "name", "day", "agent,scenario,name", "agent_tag:git-sha,day"] {
                reads.push(ok(format!("/api/tracing/{summary}/summary/?group_by={group_by}&{filter}")));
            }
        }
    }
    reads
}

/// Compares every read, the paged lists and the CSV responses of both deployments.
async fn compare_everything(pair: &[Deployment; 2], data: &DataSet, expected: &Expected) {
    let started = Instant::now();
    let reads = reads(data, expected);
    for (path, status) in &reads {
        compare(pair, path, *status).await;
    }

    // Cursor paging through every sort, in small pages.
    let mut paged = 0;
    for sort in ["started_at", "-started_at", "duration_ms", "-duration_ms", "cost_usd", "-cost_usd", "span_count", "-span_count"] {
        let rows = compare_pages(pair, &format!("/api/tracing/traces/list/?page_size=7&sort={sort}")).await;
        assert_eq!(rows.len(), expected.traces.len(), "sort={sort}: the pages list every trace");
        paged += 1;
    }
    let rows = compare_pages(pair, "/api/tracing/traces/list/?page_size=4&span_type=llm&has_error=false").await;
    assert!(!rows.is_empty(), "some runs have no error");
    let rows = compare_pages(pair, "/api/cloud/usage/?page_size=5").await;
    assert_eq!(rows.len(), expected.usage.len(), "the usage pages list every record");
    compare_pages(pair, &format!("/api/cloud/usage/?page_size=3&agent={}", agent("planner"))).await;
    paged += 3;

    // CSV: the usage list exactly, and the trace list without `created_at`,
    // its last column, which contains each server's receive time.
    let (status_a, a) = pair[0].read_text("/api/cloud/usage/?format=csv&page_size=1000").await;
    let (status_b, b) = pair[1].read_text("/api/cloud/usage/?format=csv&page_size=1000").await;
    assert_eq!((status_a, status_b), (StatusCode::OK, StatusCode::OK), "{a}\n{b}");
    assert_eq!(a.lines().count(), expected.usage.len() + 1, "a header and one line per record: {a}");
    assert_eq!(a, b, "GET /api/cloud/usage/?format=csv: the CSV differs");
    let without_created_at = |text: &str| -> Vec<String> {
        text.lines().map(|line| line.rsplit_once(',').expect("a CSV line with columns").0.to_string()).collect()
    };
    let path = "/api/tracing/traces/list/?format=csv&page_size=1000&sort=-cost_usd";
    let (status_a, a) = pair[0].read_text(path).await;
    let (status_b, b) = pair[1].read_text(path).await;
    assert_eq!((status_a, status_b), (StatusCode::OK, StatusCode::OK), "{a}\n{b}");
    assert!(a.lines().next().unwrap().ends_with(",created_at"), "created_at is the last column: {a}");
    assert_eq!(a.lines().count(), expected.traces.len() + 1, "a header and one line per trace: {a}");
    assert_eq!(without_created_at(&a), without_created_at(&b), "GET {path}: the CSV differs");

    println!("compared {} reads and {paged} paged lists in {:?}", reads.len(), started.elapsed());
}

/// Checks figures against the generator on one deployment.
async fn check_totals(deployment: &Deployment, expected: &Expected) {
    let name = deployment.name;
    let (_, usage) = deployment.read("/api/cloud/usage/summary/").await;
    let totals = &usage["totals"];
    let cost: i128 = expected.usage.values().filter_map(ExpectedRecord::cost_nanos).sum();
    let unpriced = expected.usage.values().filter(|r| r.cost_nanos().is_none()).count();
    let input: i64 = expected.usage.values().map(|r| r.input).sum();
    let output: i64 = expected.usage.values().map(|r| r.output).sum();
    assert_eq!(totals["record_count"], json!(expected.usage.len()), "{name}: usage records");
    assert_eq!(totals["cost_usd_decimal"], json!(decimal(cost)), "{name}: the cost of the priced records");
    assert_eq!(totals["unpriced_count"], json!(unpriced), "{name}: unpriced records");
    assert_eq!(totals["input_tokens"], json!(input), "{name}: input tokens");
    assert_eq!(totals["output_tokens"], json!(output), "{name}: output tokens");

    let (_, checkpoints) = deployment.read("/api/tracing/checkpoints/summary/").await;
    let passed = expected.checkpoints.values().filter(|passed| **passed).count();
    assert_eq!(checkpoints["totals"]["total"], json!(expected.checkpoints.len()), "{name}: checkpoints");
    assert_eq!(checkpoints["totals"]["passed"], json!(passed), "{name}: passed checkpoints");

    let (_, traces) = deployment.read("/api/tracing/traces/list/?page_size=1").await;
    assert_eq!(traces["count"], json!(expected.traces.len()), "{name}: traces");
    let (_, reviews) = deployment.read("/api/tracing/reviews/summary/").await;
    assert_eq!(reviews["totals"]["review_count"], json!(expected.reviews), "{name}: reviews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_return_same_responses() {
    let data = generate();
    let mut pair = [Deployment::start("embedded", false).await, Deployment::start("postgres+clickhouse", true).await];

    // First half, flushed every FLUSH_EVENTS_FIRST_HALF writes, then wholly by the restart.
    let started = Instant::now();
    send_all(&mut pair, &data.halves[0]).await;
    println!("sent {} requests of the first half in {:?}", data.halves[0].len(), started.elapsed());
    for deployment in pair.iter_mut() {
        deployment.restart(FLUSH_EVENTS_SECOND_HALF).await;
        let stats = deployment.event_stats().await;
        assert_eq!(stats["buffer_objects"], 0, "{}: the restart flushed the buffer: {stats}", deployment.name);
    }
    assert!(pair[0].event_stats().await["segments"].as_u64().unwrap() > 0, "the embedded store has segments");
    assert!(pair[1].clickhouse_rows().await.unwrap() > 0, "ClickHouse has rows");
    compare_everything(&pair, &data, &data.expected[0]).await;
    for deployment in &pair {
        check_totals(deployment, &data.expected[0]).await;
    }

    // Second half, left in the buffer, on top of the flushed first half.
    let started = Instant::now();
    send_all(&mut pair, &data.halves[1]).await;
    println!("sent {} requests of the second half in {:?}", data.halves[1].len(), started.elapsed());
    for deployment in &pair {
        let stats = deployment.event_stats().await;
        assert!(stats["buffer_objects"].as_u64().unwrap() > 0, "{}: the second half is buffered: {stats}", deployment.name);
        println!("{}: event store after the second half: {stats}", deployment.name);
    }
    compare_everything(&pair, &data, &data.expected[1]).await;
    for deployment in &pair {
        check_totals(deployment, &data.expected[1]).await;
    }
}
