//! `bedrock-datagen`: bulk-loads a deterministic data set straight into the
//! stores of a stopped server, for query benchmarks.
//!
//! It creates one organization with an owner and an API key, agents with
//! purposes and tags, an eval case, traces and reviews. Each trace is shaped
//! like a harness run: a `run_agent` root, then per turn a turn span, an
//! `llm` span with `llm_cost` and a `tool` span. Eval agents end their last
//! turn with a checkpoint in place of the tool. Events go into new Parquet
//! segments of the embedded event store, or into the ClickHouse of
//! `--clickhouse-url`. The control plane is SQLite in the data directory or
//! the Postgres of `--database-url`. The same seed and `--end` give the same
//! data.

use std::path::PathBuf;
use std::time::Instant;

use bedrock::config::StorageSettings;
use bedrock::crypto::{generate_api_key, hash_password, hash_secret};
use bedrock_store::control::{
    Agent, ApiKey, ControlPlane, EvalCase, NewOrganization, NewUser, Review,
};
use bedrock_store::events::bulk::{create_row, BulkWriter};
use bedrock_store::events::clickhouse::{ClickHouseTier, TypedObject};
use bedrock_store::events::typed::Typed;
use bedrock_store::events::EventStore;
use bedrock_store::StoreError;
use bedrock_store::events::segment::{Applied, SegmentRow};
use bedrock_store::events::model::{Op, SpanFields, TraceFields, Write};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "bedrock-datagen",
    about = "Bulk-load a deterministic data set into a stopped bedrock's stores"
)]
struct Settings {
    /// Data directory of the server (its event store, and SQLite without --database-url).
    #[arg(long, env = "BEDROCK_DATA_DIR", default_value = "./bedrock-data")]
    data_dir: PathBuf,

    /// Postgres control plane, as the server's DATABASE_URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,

    /// ClickHouse event store, as the server's CLICKHOUSE_URL; without it,
    /// events go to Parquet segments in the data directory.
    #[arg(long, env = "CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,

    /// Traces to generate.
    #[arg(long, default_value_t = 10_000)]
    traces: u64,

    /// Turns per trace; a trace has 1 + 3 × turns spans and `turns` usage records.
    #[arg(long, default_value_t = 3)]
    turns: u64,

    /// Agents, `agent-0` to `agent-<n-1>`; every fourth is an eval agent.
    #[arg(long, default_value_t = 100)]
    agents: u64,

    /// Reviews, on traces picked at random.
    #[arg(long, default_value_t = 1_000)]
    reviews: u64,

    /// Days the traces spread over, ending at --end.
    #[arg(long, default_value_t = 30)]
    days: u64,

    /// End of the time range (RFC 3339); by default the start of the current UTC day.
    #[arg(long)]
    end: Option<String>,

    /// Bytes of input text on each llm span.
    #[arg(long, default_value_t = 256)]
    text_bytes: usize,

    /// Spread the traces' start times at random over the range, so every
    /// segment contains traces of every day. By default later traces start
    /// later, as on a live server, where each flush covers a short time.
    #[arg(long)]
    random_start_times: bool,

    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Email of the organization's owner; must not exist yet.
    #[arg(long, default_value = "datagen@example.com")]
    email: String,

    /// Rows per segment file.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_segment: u64,
}

const TRACES_PER_CHUNK: u64 = 20_000;
const REVIEWS_PER_TRANSACTION: usize = 5_000;
const MODELS: [&str; 4] = [
    "openai/gpt-4o-mini",
    "anthropic/claude-3-5-haiku",
    "openai/gpt-4.1",
    "local/unpriced-model",
];
const SCENARIOS: [&str; 3] = ["group_lunch", "travel", "support"];
const TRACE_IDS: u64 = 0x7472_6163_6573;
const SPAN_IDS: u64 = 0x7370_616e_7321;

fn trace_id(seed: u64, index: u64) -> String {
    uuid::Uuid::from_u64_pair(seed ^ TRACE_IDS, index).to_string()
}

fn span_id(seed: u64, trace: u64, index: u64) -> String {
    uuid::Uuid::from_u64_pair(seed ^ SPAN_IDS, trace * 64 + index).to_string()
}

fn is_eval_agent(agent: u64) -> bool {
    agent % 4 == 0
}

fn agent_tags(agent: u64) -> Vec<String> {
    let sha = (agent % 16).wrapping_mul(0x9e37_79b9) & 0x0fff_ffff;
    let env = if is_eval_agent(agent) { "ci" } else { "prod" };
    vec![
        format!("git-sha:{sha:07x}"),
        format!("team:{}", agent % 8),
        format!("env:{env}"),
    ]
}

/// Start time of trace `index`, in microseconds: random within the range
/// when `settings.random_start_times`, else random within the trace's own
/// share of it, so later traces start later.
fn trace_start(settings: &Settings, rng: &mut StdRng, index: u64, end: i64) -> i64 {
    let range = (settings.days.max(1) * 86_400_000_000) as i64;
    if settings.random_start_times {
        return end - rng.gen_range(0..range);
    }
    let traces = settings.traces.max(1) as i64;
    let share = (range / traces).max(1);
    let slot_end = end - (range / traces) * (traces - 1 - index as i64);
    slot_end - rng.gen_range(0..share)
}

/// Builds the writes of one trace, each with the time the server would have first seen it.
fn trace_writes(
    settings: &Settings,
    index: u64,
    end: i64,
    text: &str,
    rng: &mut StdRng,
) -> Vec<(Write, i64)> {
    let seed = settings.seed;
    let agent = rng.gen_range(0..settings.agents.max(1));
    let agent_id = format!("agent-{agent}");
    let eval = is_eval_agent(agent);
    let scenario = SCENARIOS[rng.gen_range(0..SCENARIOS.len())];
    let trace = trace_id(seed, index);
    let start = trace_start(settings, rng, index, end);
    let mut at = start;
    // Span 0 is the root, written last because it closes last.
    let mut next_span = 1;
    let mut writes = Vec::with_capacity(2 + 3 * settings.turns as usize);
    let mut span = |writes: &mut Vec<(Write, i64)>, fields: SpanFields| -> String {
        let id = span_id(seed, index, next_span);
        next_span += 1;
        let first_seen = fields.started_at.unwrap_or(start);
        writes.push((
            Write::Span {
                id: id.clone(),
                op: Op::Create,
                fields,
            },
            first_seen,
        ));
        id
    };
    let object = |value: Value| -> Option<Map<String, Value>> { value.as_object().cloned() };

    let root_start = at;
    let root = span_id(seed, index, 0);
    let (mut input_total, mut output_total) = (0u64, 0u64);
    for turn in 0..settings.turns {
        let turn_start = at;
        let turn_id = span(
            &mut writes,
            SpanFields {
                trace_id: Some(trace.clone()),
                parent_id: Some(Some(root.clone())),
                name: Some(format!("turn_{turn}")),
                span_type: Some("text".into()),
                started_at: Some(turn_start),
                ended_at: Some(turn_start + 3_000_000),
                metadata: object(json!({})),
                ..Default::default()
            },
        );

        let model = MODELS[rng.gen_range(0..MODELS.len())];
        let input_tokens = rng.gen_range(500..4000u64);
        let output_tokens = rng.gen_range(10..400u64);
        let cached = rng.gen_range(0..input_tokens / 2);
        input_total += input_tokens;
        output_total += output_tokens;
        // A third of the calls report no cost, so they are priced on read.
        let cost = if rng.gen_bool(2.0 / 3.0) {
            (input_tokens as f64 * 0.15 + output_tokens as f64 * 0.6) / 1e6
        } else {
            0.0
        };
        let llm_start = turn_start + rng.gen_range(1_000..50_000);
        span(
            &mut writes,
            SpanFields {
                trace_id: Some(trace.clone()),
                parent_id: Some(Some(turn_id.clone())),
                name: Some("openrouter_api_call".into()),
                span_type: Some("llm".into()),
                started_at: Some(llm_start),
                ended_at: Some(llm_start + rng.gen_range(200_000..2_500_000)),
                input_text: Some(text.to_string()),
                output_text: Some("I will check the forecast.".into()),
                metadata: object(
                    json!({"model": model, "provider": "openrouter", "llm_cost": {
                "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens, "cached_tokens": cached,
                "reasoning_tokens": 0, "total_cost_usd": cost, "cache_hit_rate": cached as f64 / input_tokens as f64}}),
                ),
                ..Default::default()
            },
        );

        let tool_start = llm_start + 2_600_000;
        if eval && turn + 1 == settings.turns {
            let passed = rng.gen_bool(0.7);
            span(
                &mut writes,
                SpanFields {
                    trace_id: Some(trace.clone()),
                    parent_id: Some(Some(turn_id.clone())),
                    name: Some(format!("checkpoint_{}", rng.gen_range(0..5))),
                    span_type: Some("checkpoint".into()),
                    started_at: Some(tool_start),
                    ended_at: Some(tool_start),
                    metadata: object(
                        json!({"passed": passed, "description": "Goal reached", "scenario": scenario,
                    "agent_id": agent_id, "assertions_passed": u8::from(passed), "assertions_total": 1}),
                    ),
                    ..Default::default()
                },
            );
        } else {
            let failed = rng.gen_bool(0.05);
            span(
                &mut writes,
                SpanFields {
                    trace_id: Some(trace.clone()),
                    parent_id: Some(Some(turn_id)),
                    name: Some("get_forecast".into()),
                    span_type: Some("tool".into()),
                    started_at: Some(tool_start),
                    ended_at: Some(tool_start + rng.gen_range(10_000..300_000)),
                    input_text: Some("{\"args\": {\"city\": \"Lisbon\"}}".into()),
                    output_text: Some(if failed {
                        String::new()
                    } else {
                        "Sunny, 21 C.".into()
                    }),
                    error: failed.then(|| "tool timed out".to_string()),
                    metadata: object(json!({})),
                    ..Default::default()
                },
            );
        }
        at = turn_start + 3_000_000;
    }

    let usage = json!({"input_tokens": input_total, "output_tokens": output_total, "llm_calls": settings.turns});
    let mut trace_metadata = json!({"run_id": format!("run-{index}"), "usage": usage});
    if eval {
        trace_metadata["scenario"] = json!(scenario);
    }
    writes.insert(
        0,
        (
        Write::Span {
            id: root.clone(),
            op: Op::Create,
            fields: SpanFields {
                trace_id: Some(trace.clone()),
                parent_id: Some(None),
                name: Some("run_agent".into()),
                span_type: Some("text".into()),
                started_at: Some(root_start),
                ended_at: Some(at),
                metadata: object(json!({"agent_id": agent_id, "run_id": format!("run-{index}"), "usage": usage})),
                ..Default::default()
            },
        },
        root_start,
        ),
    );
    writes.push((
        Write::Trace {
            id: trace,
            op: Op::Create,
            fields: TraceFields {
                name: Some("run_agent".into()),
                agent_id: Some(agent_id),
                started_at: Some(start),
                ended_at: Some(at),
                metadata: object(trace_metadata),
                ..Default::default()
            },
        },
        start,
    ));
    writes
}

/// The destination of the generated events.
// One value exists per run, so the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Sink {
    Segments(BulkWriter),
    /// ClickHouse, written as an instance of its own, so the flush markers
    /// of the servers' instances stay as they are.
    ClickHouse { tier: ClickHouseTier, inserts: u64 },
}

impl Sink {
    async fn write(&mut self, rows: Vec<SegmentRow>) -> anyhow::Result<()> {
        match self {
            Sink::Segments(writer) => writer.write(rows)?,
            Sink::ClickHouse { tier, inserts } => {
                *inserts += 1;
                // Every object is written once, whole, so its row alone gives its typed columns.
                let objects = rows
                    .iter()
                    .map(|row| {
                        Ok(TypedObject {
                            organization_id: row.organization_id.clone(),
                            kind: row.kind,
                            id: row.id.clone(),
                            trace_id: row.trace_id.clone(),
                            merged_rows: 1,
                            typed: match &row.typed {
                                Some(typed) => typed.clone(),
                                None => Typed::of_json(row.kind, &row.state)?,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                tier.insert(rows, &Applied::default(), *inserts).await?;
                tier.insert_objects(&objects).await?;
            }
        }
        Ok(())
    }

    /// Completes the load; returns the number of files or inserts written
    /// and their bytes (0 for ClickHouse).
    fn finish(self) -> anyhow::Result<(u64, u64)> {
        match self {
            Sink::Segments(writer) => {
                let segments = writer.finish()?;
                Ok((segments.len() as u64, segments.iter().map(|s| s.bytes).sum()))
            }
            Sink::ClickHouse { inserts, .. } => Ok((inserts, 0)),
        }
    }
}

fn review_scores(rng: &mut StdRng) -> (Map<String, Value>, bool) {
    let against_rubric = rng.gen_bool(0.5);
    let scores = if against_rubric {
        json!({"accuracy": rng.gen_range(0..=10), "tone": rng.gen_range(1..=5), "helpful": rng.gen_range(0..=1)})
    } else {
        json!({"overall": {"score": rng.gen_range(0..=100), "max": 100, "weight": 2}, "style": (rng.gen_range(0..=4) as f64) / 4.0})
    };
    (
        scores.as_object().cloned().unwrap_or_default(),
        against_rubric,
    )
}

fn parse_end(settings: &Settings) -> anyhow::Result<i64> {
    match &settings.end {
        Some(text) => bedrock_store::time::parse_timestamp(text)
            .ok_or_else(|| anyhow::anyhow!("--end is not an RFC 3339 time: {text}")),
        None => {
            let day = 86_400_000_000i64;
            Ok(bedrock::time::now_micros() / day * day)
        }
    }
}

async fn create_organization(
    control: &ControlPlane,
    settings: &Settings,
    now: i64,
) -> anyhow::Result<(String, String)> {
    if control.user_by_email(&settings.email).await?.is_some() {
        anyhow::bail!(
            "a user with email {} exists already; pass another --email",
            settings.email
        );
    }
    let organization_id = uuid::Uuid::new_v4().to_string();
    let password_hash = hash_password("datagen password").map_err(|err| anyhow::anyhow!(err))?;
    let org = NewOrganization {
        id: organization_id.clone(),
        name: "datagen".into(),
        now,
    };
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        email: settings.email.clone(),
        name: "Data Generator".into(),
        password_hash,
        role: "owner".into(),
    };
    control
        .sign_up(org, user, &hash_secret(&uuid::Uuid::new_v4().to_string()))
        .await?;
    let (secret, prefix) = generate_api_key();
    let key = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: organization_id.clone(),
        name: "datagen".into(),
        prefix,
        created_at: now,
        last_used_at: None,
    };
    control.create_api_key(&key, &hash_secret(&secret)).await?;
    Ok((organization_id, secret))
}

async fn create_agents(
    control: &ControlPlane,
    settings: &Settings,
    organization_id: &str,
    now: i64,
) -> anyhow::Result<()> {
    for n in 0..settings.agents {
        let agent = Agent {
            id: format!("agent-{n}"),
            organization_id: organization_id.to_string(),
            name: format!("agent-{n}"),
            purpose: if is_eval_agent(n) {
                "eval".into()
            } else {
                "prod".into()
            },
            template_id: None,
            model: MODELS[(n % 3) as usize].into(),
            system_prompt: "You plan lunches.".into(),
            reasoning_effort: None,
            max_tokens: None,
            config: json!({}),
            adapters: json!([]),
            status: "idle".into(),
            sleep_until: None,
            sleep_reason: None,
            last_run_id: None,
            last_run_at: None,
            tags: agent_tags(n),
            created_at: now,
            updated_at: now,
        };
        control.insert_agent(&agent).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bedrock::init_logging(bedrock::config::LogFormat::Text, "warn");
    let settings = Settings::parse();
    let end = parse_end(&settings)?;
    let now = bedrock::time::now_micros();
    let started = Instant::now();

    let storage = StorageSettings {
        data_dir: settings.data_dir.clone(),
        database_url: settings.database_url.clone(),
        db_max_connections: 4,
        clickhouse_url: None,
    };
    let control = bedrock::open_control_plane(&storage).await?;
    let (organization_id, api_key) = create_organization(&control, &settings, now).await?;
    create_agents(&control, &settings, &organization_id, now).await?;
    let rubric = json!([
        {"criterion": "accuracy", "weight": 3.0, "max": 10.0, "description": "Is the answer right?"},
        {"criterion": "tone", "weight": 1.0, "max": 5.0, "description": "Is it polite?"},
        {"criterion": "helpful", "weight": 2.0, "max": 1.0, "description": "Does it help?"},
    ]);
    let eval_case = EvalCase {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: organization_id.clone(),
        name: "datagen".into(),
        input: json!("Plan a lunch for six"),
        expected: json!({"place": "vegetarian friendly"}),
        rubric,
        metadata: Map::new(),
        created_at: now,
        updated_at: now,
    };
    control.insert_eval_case(&eval_case).await?;
    let control_seconds = started.elapsed().as_secs_f64();

    // Events, chunk by chunk: every chunk's rows are built, then appended to the segment.
    let events_started = Instant::now();
    let mut sink = match &settings.clickhouse_url {
        Some(url) => {
            let instance = format!("datagen-{}", uuid::Uuid::new_v4());
            // Opening a store first applies the schema files and computes
            // the typed columns of any objects stored before them.
            drop(EventStore::open_clickhouse(url, &instance).await?);
            Sink::ClickHouse { tier: ClickHouseTier::open(url, &instance).await?.0, inserts: 0 }
        }
        None => Sink::Segments(BulkWriter::open(&settings.data_dir.join("events"), settings.rows_per_segment)?),
    };
    let text: String = "The user asks for a lunch place for six people with vegetarian options. "
        .chars()
        .cycle()
        .take(settings.text_bytes)
        .collect();
    let (mut spans, mut traces, mut usage) = (0u64, 0u64, 0u64);
    let mut chunk_start = 0;
    while chunk_start < settings.traces {
        let chunk_end = (chunk_start + TRACES_PER_CHUNK).min(settings.traces);
        let mut rows =
            Vec::with_capacity(((chunk_end - chunk_start) * (2 + 3 * settings.turns)) as usize);
        for index in chunk_start..chunk_end {
            // One generator per trace, so any trace can be regenerated on its own.
            let mut rng =
                StdRng::seed_from_u64(settings.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index);
            for (write, first_seen) in trace_writes(&settings, index, end, &text, &mut rng) {
                match &write {
                    Write::Trace { .. } => traces += 1,
                    Write::Span { fields, .. } => {
                        spans += 1;
                        usage += u64::from(fields.span_type.as_deref() == Some("llm"));
                    }
                    Write::Usage { .. } => {}
                }
                rows.push(create_row(&organization_id, &write, 0, first_seen)?);
            }
        }
        sink.write(rows).await?;
        chunk_start = chunk_end;
    }
    let (segments, segment_bytes) = sink.finish()?;
    let event_seconds = events_started.elapsed().as_secs_f64();

    let reviews_started = Instant::now();
    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x7265_7669_6577);
    let mut batch = Vec::with_capacity(REVIEWS_PER_TRANSACTION);
    for n in 0..settings.reviews {
        let trace = rng.gen_range(0..settings.traces.max(1));
        let (criterion_scores, against_rubric) = review_scores(&mut rng);
        batch.push(Review {
            id: uuid::Uuid::from_u64_pair(settings.seed, n).to_string(),
            organization_id: organization_id.clone(),
            trace_id: trace_id(settings.seed, trace),
            reviewer_id: None,
            source: if n % 3 == 0 {
                "human".into()
            } else {
                "automated".into()
            },
            criterion_scores,
            comment: String::new(),
            eval_id: against_rubric.then(|| eval_case.id.clone()),
            created_at: now,
            updated_at: now,
        });
        if batch.len() == REVIEWS_PER_TRANSACTION {
            control.insert_reviews(&batch).await?;
            batch.clear();
        }
    }
    control.insert_reviews(&batch).await?;
    let review_seconds = reviews_started.elapsed().as_secs_f64();

    let report = json!({
        "organization_id": organization_id,
        "api_key": api_key,
        "owner_email": settings.email,
        "owner_password": "datagen password",
        "traces": traces,
        "spans": spans,
        "usage_records": usage,
        "agents": settings.agents,
        "reviews": settings.reviews,
        "segments": segments,
        "segment_bytes": segment_bytes,
        "seconds": {"control_plane": control_seconds, "events": event_seconds, "reviews": review_seconds,
                    "total": started.elapsed().as_secs_f64()},
        "spans_per_second": spans as f64 / event_seconds.max(1e-9),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
