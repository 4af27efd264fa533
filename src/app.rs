//! Application state and the HTTP router: wires the control plane, the
//! ingest write path and the query layer to the handlers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bedrock_ingest::{IngestConfig, Ingestor};
use bedrock_query::{Prices, TraceQueries, UsageQueries};
use bedrock_store::control::ControlPlane;
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::CredentialCache;
use crate::config::ServeSettings;
use crate::crypto::SecretBox;
use crate::error::ApiError;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub control: ControlPlane,
    pub settings: ServeSettings,
    pub secret_box: SecretBox,
    pub auth_cache: CredentialCache,
    pub ingest: Arc<Ingestor>,
    pub queries: TraceQueries,
    pub usage: UsageQueries,
    pub prices: Prices,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Bedrock API", description = "Traces, spans, usage and evaluation analytics for AI agents."),
    tags(
        (name = "organizations", description = "Accounts, organizations, API keys, members and invites"),
        (name = "tracing", description = "Trace and span ingestion and reads"),
        (name = "templates", description = "Templates that blueprint agents"),
        (name = "agents", description = "Agents, their lifecycle, tags and harness configuration"),
        (name = "toolbox", description = "Adapters, tools and per-template adapter configs"),
        (name = "usage", description = "Usage records, summaries and model prices"),
        (name = "evaluations", description = "Trace reviews, eval cases, and checkpoint and review summaries"),
    ),
    modifiers(&SecuritySchemes),
    security(("api_key" = []), ("token" = []))
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Organization API key: `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "User token: `Authorization: Token <token>`",
            ))),
        );
    }
}

impl AppState {
    /// Opens the control plane (migrating it) and the event store.
    pub async fn open(settings: ServeSettings) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&settings.storage.data_dir)?;
        let control = crate::open_control_plane(&settings.storage).await?;
        let secret_box = load_secret_box(&settings)?;
        let auth_cache = CredentialCache::new(Duration::from_secs(settings.auth_cache_seconds));
        let events = &settings.events;
        let ingest_config = IngestConfig {
            wal_max_bytes: events.wal_max_bytes,
            wal_segment_bytes: events.wal_segment_bytes,
            wal_max_pending: events.wal_max_pending,
            buffer_max_bytes: events.buffer_max_bytes,
            flush_events: events.flush_events,
            flush_interval: Duration::from_millis(events.flush_interval_ms),
            compact_segments: events.compact_segments,
            clickhouse_url: settings.storage.clickhouse_url.clone().filter(|url| !url.is_empty()),
        };
        let ingest = Ingestor::open(&settings.storage.data_dir, ingest_config).await?;
        let prices = Prices::new(control.clone());
        let queries = TraceQueries::new(ingest.store().clone(), prices.clone());
        let usage = UsageQueries::new(ingest.store().clone(), prices.clone());
        Ok(AppState(Arc::new(Inner { control, settings, secret_box, auth_cache, ingest, queries, usage, prices })))
    }

    /// Flushes and closes everything; called once after the server stops.
    pub async fn shutdown(&self) {
        self.ingest.shutdown().await;
        self.control.close().await;
    }
}

fn load_secret_box(settings: &ServeSettings) -> anyhow::Result<SecretBox> {
    if let Some(key) = &settings.secret_key {
        return SecretBox::from_hex(key).map_err(|err| anyhow::anyhow!("--secret-key: {err}"));
    }
    let path = settings.storage.data_dir.join("secret.key");
    if path.exists() {
        let key = std::fs::read_to_string(&path)?;
        return SecretBox::from_hex(&key).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()));
    }
    if settings.storage.database_url.is_some() {
        tracing::warn!(
            path = %path.display(),
            "no --secret-key given: generating one in the data directory; instances sharing a database must share this key"
        );
    }
    let key = SecretBox::generate_hex();
    write_private_file(&path, &key)?;
    tracing::info!(path = %path.display(), "generated a secret key for provider and adapter secrets; back it up with the data directory");
    SecretBox::from_hex(&key).map_err(|err| anyhow::anyhow!(err))
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Builds the whole router with its OpenAPI document.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::api::organizations::router())
        .merge(crate::api::tracing::router())
        .merge(crate::api::trace_list::router())
        .merge(crate::api::batch::router())
        .merge(crate::api::otlp::router())
        .merge(crate::api::agents::router())
        .merge(crate::api::toolbox::router())
        .merge(crate::api::usage::router())
        .merge(crate::api::evals::router())
        .split_for_parts();
    let openapi = Arc::new(openapi);
    let max_body = state.settings.max_body_bytes;

    let router = api
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::docs::router(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(log_request))
        .with_state(state);
    router
}

/// Process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Backends reachable.
async fn readyz(State(state): State<AppState>) -> Response {
    let stats = state.ingest.store().stats();
    let events = json!({
        "buffer_objects": stats.buffer_objects,
        "buffer_bytes": stats.buffer_bytes,
        "segments": stats.segments,
        "segment_rows": stats.segment_rows,
    });
    match state.control.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "control_plane": "ok", "events": events })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "control_plane": "unreachable" })),
            )
                .into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Logs one line per request with method, route, status and latency; never
/// bodies or headers, which may carry secrets.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(%method, route, status, micros, "request failed");
    } else {
        tracing::debug!(%method, route, status, micros, "request");
    }
    response
}

/// Adds or removes a path's trailing slash to match its route: Django REST
/// Framework routes under `/api/` end with one, OTLP routes under `/v1/` do not. A
/// client that adds or leaves out the slash reaches the same handler instead
/// of a 404, which for an exporter would lose its spans for good.
pub fn normalize_slash(mut request: Request) -> Request {
    let path = request.uri().path();
    let rewritten = if path.starts_with("/v1/") && path.len() > "/v1/".len() && path.ends_with('/') {
        Some(path.trim_end_matches('/').to_string())
    } else if path.starts_with("/api/") && !path.ends_with('/') && !path.contains("/assets/") {
        Some(format!("{path}/"))
    } else {
        None
    };
    if let Some(mut rewritten) = rewritten {
        if let Some(query) = request.uri().query() {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        if let Ok(uri) = rewritten.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    request
}
