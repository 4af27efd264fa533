//! `GET /api/tracing/traces/list/`: the trace list with filters, sorting and
//! cursor pagination that dashboards page through.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bedrock_query::trace_list::{Paging, SortField, TraceCursor, TraceFilter};
use bedrock_store::events::model::SPAN_TYPES;
use bedrock_store::events::usage::Money;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::formats::{tabular, Format, TRACE_COLUMNS};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::extract::{PageParams, QueryPairs, RequestUrl};
use crate::time::parse_timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_traces_filtered))
}

const FILTERS: [&str; 16] = [
    "agent", "name", "name__contains", "started_after", "started_before", "status", "has_error", "span_type",
    "min_duration_ms", "max_duration_ms", "min_cost_usd", "sort", "page", "page_size", "cursor", "format",
];
const STATUSES: [&str; 3] = ["running", "ok", "error"];
const METADATA_PREFIX: &str = "metadata__";

fn read_number(errors: &mut FieldErrors, key: &str, raw: Option<&str>) -> Option<f64> {
    let raw = raw.filter(|r| !r.is_empty())?;
    match raw.parse::<f64>() {
        Ok(number) if number.is_finite() => Some(number),
        _ => {
            errors.add(key, "A valid finite number is required.");
            None
        }
    }
}

fn read_filter(query: &QueryPairs) -> ApiResult<TraceFilter> {
    let mut errors = FieldErrors::default();
    let mut filter = TraceFilter::default();
    for (key, value) in &query.0 {
        if let Some(name) = key.strip_prefix(METADATA_PREFIX) {
            if name.is_empty() {
                errors.add(key.clone(), "Name a metadata key after metadata__.");
            } else {
                filter.metadata.push((name.to_string(), value.clone()));
            }
        } else if !FILTERS.contains(&key.as_str()) {
            errors.add(key.clone(), format!("Unknown filter. Use metadata__<key> or one of: {}.", FILTERS.join(", ")));
        }
    }
    let text = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(str::to_string);
    filter.agent = text("agent");
    filter.name = text("name");
    filter.name_contains = text("name__contains");
    for (key, slot) in [("started_after", &mut filter.started_after), ("started_before", &mut filter.started_before)] {
        if let Some(raw) = query.get(key).filter(|v| !v.is_empty()) {
            match parse_timestamp(raw) {
                Some(micros) => *slot = Some(micros),
                None => errors.add(key, "Datetime has wrong format. Use ISO 8601, e.g. 2026-03-01T00:00:00Z."),
            }
        }
    }
    filter.status = text("status");
    if let Some(status) = &filter.status {
        if !STATUSES.contains(&status.as_str()) {
            errors.add("status", format!("Use one of: {}.", STATUSES.join(", ")));
        }
    }
    filter.has_error = match query.get("has_error").unwrap_or_default() {
        "" => None,
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => {
            errors.add("has_error", "Use true or false.");
            None
        }
    };
    filter.span_type = text("span_type");
    if let Some(kind) = &filter.span_type {
        if !SPAN_TYPES.contains(&kind.as_str()) {
            errors.add("span_type", format!("Use one of: {}.", SPAN_TYPES.join(", ")));
        }
    }
    filter.min_duration_ms = read_number(&mut errors, "min_duration_ms", query.get("min_duration_ms"));
    filter.max_duration_ms = read_number(&mut errors, "max_duration_ms", query.get("max_duration_ms"));
    if let Some(raw) = query.get("min_cost_usd").filter(|v| !v.is_empty()) {
        match Money::parse_decimal(raw) {
            Some(money) => filter.min_cost_nanos = Some(i64::try_from(money.0).unwrap_or(if money.0 < 0 { i64::MIN } else { i64::MAX })),
            None => errors.add("min_cost_usd", "A valid decimal number is required."),
        }
    }
    errors.finish()?;
    Ok(filter)
}

fn read_sort(query: &QueryPairs) -> ApiResult<(String, SortField, bool)> {
    let raw = query.get("sort").filter(|s| !s.is_empty()).unwrap_or("-started_at");
    let (descending, name) = match raw.strip_prefix('-') {
        Some(name) => (true, name),
        None => (false, raw),
    };
    match SortField::parse(name) {
        Some(field) => Ok((raw.to_string(), field, descending)),
        None => Err(ApiError::field(
            "sort",
            format!("Sort by one of {}, with - for descending.", SortField::NAMES.join(", ")),
        )),
    }
}

fn encode_cursor(sort: &str, cursor: &TraceCursor) -> String {
    let text = json!([sort, cursor.value, cursor.id]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(sort: &str, text: &str) -> ApiResult<TraceCursor> {
    let invalid = || ApiError::field("cursor", "Invalid cursor: use the next link of a list with the same sort.");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let parts: Vec<Value> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    match parts.as_slice() {
        [Value::String(s), value, Value::String(id)] if s == sort => Ok(TraceCursor { value: value.clone(), id: id.clone() }),
        _ => Err(invalid()),
    }
}

/// List traces with filters. Filters: `agent`, `name` (exact),
/// `name__contains` (literal), `started_after`, `started_before`, `status`,
/// `has_error`, `span_type` (traces that contain one), `min_duration_ms`,
/// `max_duration_ms`, `min_cost_usd` and `metadata__<key>=<value>`. `sort` by
/// started_at, duration_ms, cost_usd or span_count (`-` for descending,
/// default `-started_at`). Follow `next` (a cursor) to page, or use `page`.
/// `?format=csv` or `Accept: application/vnd.apache.arrow.stream` return the
/// page's rows as CSV or Arrow.
#[utoipa::path(get, path = "/api/tracing/traces/list/", tag = "tracing",
    params(("agent" = Option<String>, Query), ("name" = Option<String>, Query), ("name__contains" = Option<String>, Query),
        ("started_after" = Option<String>, Query), ("started_before" = Option<String>, Query),
        ("status" = Option<String>, Query), ("has_error" = Option<bool>, Query), ("span_type" = Option<String>, Query),
        ("min_duration_ms" = Option<f64>, Query), ("max_duration_ms" = Option<f64>, Query),
        ("min_cost_usd" = Option<f64>, Query), ("sort" = Option<String>, Query), ("cursor" = Option<String>, Query),
        ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query), ("format" = Option<String>, Query)),
    responses((status = 200, description = "`{count, next, previous, results}`, or CSV or Arrow rows"), (status = 400)))]
async fn list_traces_filtered(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let filter = read_filter(&query)?;
    let (sort_text, field, descending) = read_sort(&query)?;
    let params = PageParams::from_query(&query)?;
    let format = Format::of(&query, &headers)?;
    let cursor = query.get("cursor").filter(|c| !c.is_empty()).map(|c| decode_cursor(&sort_text, c)).transpose()?;
    let by_page = cursor.is_none() && query.get("page").is_some_and(|p| !p.is_empty());
    let paging = if by_page { Paging::Offset(params.offset() as usize) } else { Paging::After(cursor.as_ref()) };

    let (page, next_cursor) = state
        .queries
        .list_filtered(&principal.organization_id, &filter, (field, descending), paging, params.page_size as usize)
        .await?;
    if format != Format::Json {
        return tabular(format, &page.results, TRACE_COLUMNS);
    }
    let body = if by_page {
        url.page(params, page.count as i64, page.results)?
    } else {
        let next = next_cursor.map(|cursor| url.with("cursor", Some(encode_cursor(&sort_text, &cursor))));
        json!({ "count": page.count, "next": next, "previous": Value::Null, "results": page.results })
    };
    Ok(Json(body).into_response())
}
