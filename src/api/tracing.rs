//! `/api/tracing/`: trace and span ingestion and reads.
//!
//! Writes go through the durable ingest pipeline: a 201 or 200 means the
//! write is in the fsynced log and visible to reads. Creates are upserts on
//! the client's id. Updates never fail for ordering, because a close may
//! arrive before its open, so an update of an unknown id stores a partial
//! object.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_ingest::validate::{self, Invalid, Limits};
use bedrock_ingest::IngestError;
use bedrock_query::QueryError;
use bedrock_store::events::model::{Batch, Op, SpanFields, TraceFields, Write, SPAN_TYPES};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonValue, OptionalJson, PageParams, QueryPairs, RequestUrl};
use crate::time::now_micros;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_traces, create_trace))
        .routes(routes!(get_trace, update_trace))
        .routes(routes!(end_trace))
        .routes(routes!(list_spans, create_span))
        .routes(routes!(get_span, update_span))
        .routes(routes!(end_span))
        .routes(routes!(flag_span))
        .routes(routes!(unflag_span))
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Validation(invalid.0)
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Overloaded { reason, retry_after_secs } => ApiError::Unavailable {
                detail: format!("The server is busy ({reason}); retry after {retry_after_secs} s."),
                retry_after_secs,
            },
            IngestError::Log(cause) => {
                tracing::error!(error = %cause, "write not acknowledged");
                ApiError::Unavailable {
                    detail: "The write-ahead log could not be written; the write was not stored.".into(),
                    retry_after_secs: 5,
                }
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Store(store) => store.into(),
            QueryError::Invalid(field) => ApiError::field(field, "This value is not valid."),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub(crate) fn limits(state: &AppState) -> Limits {
    Limits { max_text_bytes: state.settings.max_text_field_bytes }
}

fn check_path_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > validate::MAX_ID_BYTES {
        return Err(ApiError::field("id", format!("Ids are 1 to {} bytes long.", validate::MAX_ID_BYTES)));
    }
    Ok(())
}

async fn write(state: &AppState, principal: &Principal, write: Write) -> ApiResult<()> {
    let batch = Batch { organization_id: principal.organization_id.clone(), received_at: now_micros(), writes: vec![write] };
    state.ingest.write(batch).await?;
    Ok(())
}

async fn trace_response(state: &AppState, principal: &Principal, id: &str, status: StatusCode) -> ApiResult<Response> {
    let trace = state.queries.written_trace(&principal.organization_id, id).await?;
    Ok((status, Json(trace.unwrap_or(Value::Null))).into_response())
}

async fn span_response(state: &AppState, principal: &Principal, id: &str, status: StatusCode) -> ApiResult<Response> {
    let span = state.queries.written_span(&principal.organization_id, id).await?;
    Ok((status, Json(span.unwrap_or(Value::Null))).into_response())
}

// ---- traces ----

/// List traces, newest first.
#[utoipa::path(get, path = "/api/tracing/traces/", tag = "tracing",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of traces")))]
async fn list_traces(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let page = state
        .queries
        .list_traces(&principal.organization_id, params.offset() as usize, params.page_size as usize)
        .await?;
    Ok(Json(url.page(params, page.count as i64, page.results)?))
}

/// Create a trace, or re-send a create (an upsert on the client's `id`).
#[utoipa::path(post, path = "/api/tracing/traces/", tag = "tracing",
    request_body(content = Object, description = "`id`, `name`, `started_at`, `agent_id`, `metadata`, optional `ended_at`, `error`"),
    responses((status = 201, description = "The trace"), (status = 400, description = "Invalid field"), (status = 503, description = "Busy; retry")))]
async fn create_trace(State(state): State<AppState>, principal: Principal, JsonValue(body): JsonValue) -> ApiResult<Response> {
    let (id, mut fields) = validate::trace_write(&body, Op::Create, limits(&state))?;
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    fields.started_at = fields.started_at.or_else(|| Some(now_micros()));
    write(&state, &principal, Write::Trace { id: id.clone(), op: Op::Create, fields }).await?;
    trace_response(&state, &principal, &id, StatusCode::CREATED).await
}

/// Get a trace with its spans.
#[utoipa::path(get, path = "/api/tracing/traces/{trace_id}/", tag = "tracing",
    params(("trace_id" = String, Path)), responses((status = 200, description = "The trace with `spans`"), (status = 404)))]
async fn get_trace(State(state): State<AppState>, principal: Principal, Path(trace_id): Path<String>) -> ApiResult<Json<Value>> {
    check_path_id(&trace_id).map_err(|_| ApiError::NotFound)?;
    match state.queries.trace_detail(&principal.organization_id, &trace_id).await? {
        Some(trace) => Ok(Json(trace)),
        None => Err(ApiError::NotFound),
    }
}

/// Update a trace: `ended_at`, `error`, and `metadata` merged as a JSON Merge Patch.
#[utoipa::path(patch, path = "/api/tracing/traces/{trace_id}/", tag = "tracing",
    params(("trace_id" = String, Path)), request_body(content = Object, description = "Any trace field"),
    responses((status = 200, description = "The trace"), (status = 400)))]
async fn update_trace(
    State(state): State<AppState>,
    principal: Principal,
    Path(trace_id): Path<String>,
    JsonValue(body): JsonValue,
) -> ApiResult<Response> {
    check_path_id(&trace_id)?;
    let (_, fields) = validate::trace_write(&body, Op::Update, limits(&state))?;
    write(&state, &principal, Write::Trace { id: trace_id.clone(), op: Op::Update, fields }).await?;
    trace_response(&state, &principal, &trace_id, StatusCode::OK).await
}

/// End a trace: `ended_at` defaults to now; `error` and `metadata` are optional.
#[utoipa::path(post, path = "/api/tracing/traces/{trace_id}/end/", tag = "tracing",
    params(("trace_id" = String, Path)), request_body(content = Option<Object>, description = "Optional `ended_at`, `error`, `metadata`"),
    responses((status = 200, description = "The trace"), (status = 400)))]
async fn end_trace(
    State(state): State<AppState>,
    principal: Principal,
    Path(trace_id): Path<String>,
    OptionalJson(body): OptionalJson,
) -> ApiResult<Response> {
    check_path_id(&trace_id)?;
    let body = body.unwrap_or_else(|| Value::Object(Default::default()));
    let (_, mut fields): (_, TraceFields) = validate::trace_write(&body, Op::Update, limits(&state))?;
    fields.ended_at = fields.ended_at.or_else(|| Some(now_micros()));
    write(&state, &principal, Write::Trace { id: trace_id.clone(), op: Op::Update, fields }).await?;
    trace_response(&state, &principal, &trace_id, StatusCode::OK).await
}

// ---- spans ----

/// List spans, filtered by `trace`, `span_type` and `flagged`.
#[utoipa::path(get, path = "/api/tracing/spans/", tag = "tracing",
    params(("trace" = Option<String>, Query), ("span_type" = Option<String>, Query), ("flagged" = Option<bool>, Query),
        ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of spans"), (status = 400)))]
async fn list_spans(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let span_type = query.get("span_type").filter(|kind| !kind.is_empty());
    if let Some(kind) = span_type {
        if !SPAN_TYPES.contains(&kind) {
            return Err(ApiError::field(
                "span_type",
                format!("\"{kind}\" is not a valid choice. Use one of: {}.", SPAN_TYPES.join(", ")),
            ));
        }
    }
    let flagged = match query.get("flagged") {
        None | Some("") => None,
        Some("true" | "True" | "1") => Some(true),
        Some("false" | "False" | "0") => Some(false),
        Some(_) => return Err(ApiError::field("flagged", "Must be true or false.")),
    };
    let trace = query.get("trace").filter(|id| !id.is_empty());
    let page = state
        .queries
        .list_spans(&principal.organization_id, trace, span_type, flagged, params.offset() as usize, params.page_size as usize)
        .await?;
    Ok(Json(url.page(params, page.count as i64, page.results)?))
}

/// Create a span, or re-send a create (an upsert on the client's `id`).
#[utoipa::path(post, path = "/api/tracing/spans/", tag = "tracing",
    request_body(content = Object, description = "`id`, `trace_id`, `parent_id`, `name`, `span_type`, `started_at`, `input_text`, `metadata`, ..."),
    responses((status = 201, description = "The span"), (status = 400), (status = 503)))]
async fn create_span(State(state): State<AppState>, principal: Principal, JsonValue(body): JsonValue) -> ApiResult<Response> {
    let (id, mut fields) = validate::span_write(&body, Op::Create, limits(&state))?;
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    fields.started_at = fields.started_at.or_else(|| Some(now_micros()));
    write(&state, &principal, Write::Span { id: id.clone(), op: Op::Create, fields }).await?;
    span_response(&state, &principal, &id, StatusCode::CREATED).await
}

/// Get a span.
#[utoipa::path(get, path = "/api/tracing/spans/{span_id}/", tag = "tracing",
    params(("span_id" = String, Path)), responses((status = 200, description = "The span"), (status = 404)))]
async fn get_span(State(state): State<AppState>, principal: Principal, Path(span_id): Path<String>) -> ApiResult<Json<Value>> {
    check_path_id(&span_id).map_err(|_| ApiError::NotFound)?;
    match state.queries.span(&principal.organization_id, &span_id).await? {
        Some(span) => Ok(Json(span)),
        None => Err(ApiError::NotFound),
    }
}

/// Update (usually close) a span; `metadata` is merged as a JSON Merge Patch.
#[utoipa::path(patch, path = "/api/tracing/spans/{span_id}/", tag = "tracing",
    params(("span_id" = String, Path)), request_body(content = Object, description = "`ended_at`, `input_text`, `output_text`, `error`, `metadata`, ..."),
    responses((status = 200, description = "The span"), (status = 400)))]
async fn update_span(
    State(state): State<AppState>,
    principal: Principal,
    Path(span_id): Path<String>,
    JsonValue(body): JsonValue,
) -> ApiResult<Response> {
    check_path_id(&span_id)?;
    let (_, fields) = validate::span_write(&body, Op::Update, limits(&state))?;
    write(&state, &principal, Write::Span { id: span_id.clone(), op: Op::Update, fields }).await?;
    span_response(&state, &principal, &span_id, StatusCode::OK).await
}

/// End a span: `ended_at` defaults to now.
#[utoipa::path(post, path = "/api/tracing/spans/{span_id}/end/", tag = "tracing",
    params(("span_id" = String, Path)), request_body(content = Option<Object>, description = "Optional `ended_at`, `output_text`, `error`, `metadata`"),
    responses((status = 200, description = "The span"), (status = 400)))]
async fn end_span(
    State(state): State<AppState>,
    principal: Principal,
    Path(span_id): Path<String>,
    OptionalJson(body): OptionalJson,
) -> ApiResult<Response> {
    check_path_id(&span_id)?;
    let body = body.unwrap_or_else(|| Value::Object(Default::default()));
    let (_, mut fields): (_, SpanFields) = validate::span_write(&body, Op::Update, limits(&state))?;
    fields.ended_at = fields.ended_at.or_else(|| Some(now_micros()));
    write(&state, &principal, Write::Span { id: span_id.clone(), op: Op::Update, fields }).await?;
    span_response(&state, &principal, &span_id, StatusCode::OK).await
}

async fn existing_span(state: &AppState, principal: &Principal, span_id: &str) -> ApiResult<()> {
    check_path_id(span_id).map_err(|_| ApiError::NotFound)?;
    match state.queries.span(&principal.organization_id, span_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound),
    }
}

/// Flag a span for review, with an optional `reason`.
#[utoipa::path(post, path = "/api/tracing/spans/{span_id}/flag/", tag = "tracing",
    params(("span_id" = String, Path)), request_body(content = Option<Object>, description = "Optional `reason`"),
    responses((status = 200, description = "The span"), (status = 404)))]
async fn flag_span(
    State(state): State<AppState>,
    principal: Principal,
    Path(span_id): Path<String>,
    OptionalJson(body): OptionalJson,
) -> ApiResult<Response> {
    existing_span(&state, &principal, &span_id).await?;
    let fields = validate::flag(body.as_ref(), now_micros(), limits(&state))?;
    write(&state, &principal, Write::Span { id: span_id.clone(), op: Op::Update, fields }).await?;
    span_response(&state, &principal, &span_id, StatusCode::OK).await
}

/// Remove a span's review flag.
#[utoipa::path(post, path = "/api/tracing/spans/{span_id}/unflag/", tag = "tracing",
    params(("span_id" = String, Path)), responses((status = 200, description = "The span"), (status = 404)))]
async fn unflag_span(State(state): State<AppState>, principal: Principal, Path(span_id): Path<String>) -> ApiResult<Response> {
    existing_span(&state, &principal, &span_id).await?;
    write(&state, &principal, Write::Span { id: span_id.clone(), op: Op::Update, fields: validate::unflag() }).await?;
    span_response(&state, &principal, &span_id, StatusCode::OK).await
}
