//! `POST /api/tracing/ingest/`: many trace, span and usage writes in one
//! request, for harnesses that buffer their events.
//!
//! Each event is `{"type", "body"}` with the body of the matching single
//! endpoint; updates carry the object's `id` in the body. Valid events are
//! applied in the order sent, through the same write-ahead log as single
//! requests and as one log record, so they are acknowledged together. An
//! invalid event is skipped and reported; it never blocks the others.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_ingest::validate::{self, Invalid, MAX_ID_BYTES};
use bedrock_store::events::model::{Batch, Op, Write};
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::tracing::limits;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json_type_name, JsonValue};
use crate::time::now_micros;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest_batch))
}

pub const EVENT_TYPES: [&str; 5] = ["trace.create", "trace.update", "span.create", "span.update", "usage.create"];

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    let mut errors = Invalid::default();
    errors.add(field, message);
    errors
}

/// Reads the `id` an update names in its body.
fn update_id(body: &Value) -> Result<String, Invalid> {
    match body.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id.clone()),
        Some(Value::String(_)) => Err(invalid("id", format!("Ids are 1 to {MAX_ID_BYTES} bytes long."))),
        None | Some(Value::Null) => Err(invalid("id", "This field is required: an update names its object.")),
        Some(other) => Err(invalid("id", format!("Not a valid string: got {}.", json_type_name(other)))),
    }
}

/// Turns one event into the write its single endpoint would make, with the
/// object's id and the status that endpoint would return.
fn event_write(event: &Value, limits: validate::Limits, now: i64) -> Result<(Write, String, &'static str, u16), Invalid> {
    let Value::Object(event) = event else {
        return Err(invalid("non_field_errors", format!("Expected an object, but got {}.", json_type_name(event))));
    };
    let kind = match event.get("type") {
        Some(Value::String(kind)) => match EVENT_TYPES.iter().find(|k| **k == kind) {
            Some(kind) => *kind,
            None => return Err(invalid("type", format!("\"{kind}\" is not a valid choice. Use one of: {}.", EVENT_TYPES.join(", ")))),
        },
        _ => return Err(invalid("type", format!("This field is required: one of {}.", EVENT_TYPES.join(", ")))),
    };
    let body = match event.get("body") {
        Some(body @ Value::Object(_)) => body,
        Some(other) => return Err(invalid("body", format!("Expected an object, but got {}.", json_type_name(other)))),
        None => return Err(invalid("body", "This field is required.")),
    };
    let new_id = || uuid::Uuid::new_v4().to_string();
    Ok(match kind {
        "trace.create" => {
            let (id, mut fields) = validate::trace_write(body, Op::Create, limits)?;
            let id = id.unwrap_or_else(new_id);
            fields.started_at = fields.started_at.or(Some(now));
            (Write::Trace { id: id.clone(), op: Op::Create, fields }, id, kind, 201)
        }
        "trace.update" => {
            let id = update_id(body)?;
            let (_, fields) = validate::trace_write(body, Op::Update, limits)?;
            (Write::Trace { id: id.clone(), op: Op::Update, fields }, id, kind, 200)
        }
        "span.create" => {
            let (id, mut fields) = validate::span_write(body, Op::Create, limits)?;
            let id = id.unwrap_or_else(new_id);
            fields.started_at = fields.started_at.or(Some(now));
            (Write::Span { id: id.clone(), op: Op::Create, fields }, id, kind, 201)
        }
        "span.update" => {
            let id = update_id(body)?;
            let (_, fields) = validate::span_write(body, Op::Update, limits)?;
            (Write::Span { id: id.clone(), op: Op::Update, fields }, id, kind, 200)
        }
        _ => {
            let (id, fields) = validate::usage_write(body, limits)?;
            let id = id.unwrap_or_else(new_id);
            (Write::Usage { id: id.clone(), op: Op::Create, fields }, id, kind, 201)
        }
    })
}

/// Ingest up to `--batch-max-events` events: `{"events": [{"type", "body"}, ...]}`
/// where `type` is trace.create, trace.update, span.create, span.update or
/// usage.create. Returns 200 when every event was stored, 207 when some were
/// invalid, with one result per event in `results`.
#[utoipa::path(post, path = "/api/tracing/ingest/", tag = "tracing",
    request_body(content = Object, description = "`{\"events\": [{\"type\", \"body\"}, ...]}`"),
    responses((status = 200, description = "Every event stored: `{results}`"),
        (status = 207, description = "Some events invalid: `{results}` with each one's status and errors"),
        (status = 400, description = "No `events` list, or too many events"), (status = 503, description = "Busy; retry")))]
async fn ingest_batch(State(state): State<AppState>, principal: Principal, JsonValue(mut body): JsonValue) -> ApiResult<Response> {
    let max_events = state.settings.batch_max_events;
    let events = match body.get_mut("events").map(Value::take) {
        Some(Value::Array(events)) => events,
        Some(other) => return Err(ApiError::field("events", format!("Expected a list, but got {}.", json_type_name(&other)))),
        None => return Err(ApiError::required("events")),
    };
    if events.is_empty() || events.len() > max_events {
        return Err(ApiError::field("events", format!("Send 1 to {max_events} events per request (got {}).", events.len())));
    }

    let now = now_micros();
    let limits = limits(&state);
    let mut writes = Vec::with_capacity(events.len());
    let mut results = Vec::with_capacity(events.len());
    let mut failed = 0usize;
    for (index, event) in events.iter().enumerate() {
        match event_write(event, limits, now) {
            Ok((write, id, kind, status)) => {
                writes.push(write);
                results.push(json!({"index": index, "type": kind, "id": id, "status": status}));
            }
            Err(errors) => {
                failed += 1;
                let errors: Map<String, Value> = errors.0.into_iter().map(|(field, messages)| (field, json!(messages))).collect();
                results.push(json!({"index": index, "type": event.get("type"), "status": 400, "errors": errors}));
            }
        }
    }
    if !writes.is_empty() {
        let stored = writes.len();
        state.ingest.write(Batch { organization_id: principal.organization_id.clone(), received_at: now, writes }).await?;
        tracing::debug!(organization_id = %principal.organization_id, stored, failed, "batch ingested");
    }
    let status = if failed == 0 { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    Ok((status, Json(json!({ "results": results }))).into_response())
}
