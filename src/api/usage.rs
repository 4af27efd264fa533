//! `/api/cloud/usage/`, `/api/cloud/agents/{id}/usage/` and
//! `/api/cloud/model-prices/`: usage records, their summaries, and the
//! per-organization price overrides that cost them.
//!
//! Records come from `llm` spans (`metadata.llm_cost`) and from direct posts.
//! A post with a client `id` is an upsert: sending it again replaces the
//! fields it carries and never adds a second record.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bedrock_ingest::validate;
use bedrock_query::usage::GROUP_KEYS;
use bedrock_query::{UsageCursor, UsageFilter};
use bedrock_store::control::PriceOverride;
use bedrock_store::events::model::{Batch, Op, Write};
use bedrock_store::events::pricing::Price;
use bedrock_store::events::usage::Money;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::formats::{tabular, Format, USAGE_COLUMNS, USAGE_TOTAL_COLUMNS};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::extract::{json_type_name, reject_unknown_parameters, text_parameter, time_parameter, JsonBody, JsonValue, PageParams, QueryPairs, RequestUrl};
use crate::time::{format_micros, now_micros};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_usage, create_usage))
        .routes(routes!(usage_summary))
        .routes(routes!(get_usage))
        .routes(routes!(agent_usage))
        .routes(routes!(list_prices, create_price))
        .routes(routes!(get_price, replace_price, update_price, delete_price))
}

/// Records one request may post.
pub const MAX_RECORDS_PER_REQUEST: usize = 1000;

// ---- filters ----

/// Reads the usage filters, rejecting query parameters outside `allowed`.
fn usage_filter(query: &QueryPairs, allowed: &[&str]) -> ApiResult<UsageFilter> {
    let mut errors = FieldErrors::default();
    reject_unknown_parameters(query, allowed, &mut errors);
    let start = time_parameter(query, "start", &mut errors);
    let end = time_parameter(query, "end", &mut errors);
    errors.finish()?;
    let text = |key: &str| text_parameter(query, key);
    Ok(UsageFilter { agent: text("agent"), model: text("model"), trace: text("trace"), start, end })
}

/// Reads `group_by`: comma-separated names from the summary's dimensions.
fn group_by(query: &QueryPairs) -> ApiResult<Vec<&'static str>> {
    let mut keys = Vec::new();
    for raw in query.get("group_by").unwrap_or_default().split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match GROUP_KEYS.iter().find(|(name, _)| *name == raw) {
            Some((name, _)) if !keys.contains(name) => keys.push(*name),
            Some(_) => {}
            None => {
                let names: Vec<&str> = GROUP_KEYS.iter().map(|(name, _)| *name).collect();
                return Err(ApiError::field("group_by", format!("\"{raw}\" is not a valid choice. Use any of: {}.", names.join(", "))));
            }
        }
    }
    Ok(keys)
}

fn encode_cursor(cursor: &UsageCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", cursor.timestamp, cursor.id))
}

fn decode_cursor(text: &str) -> ApiResult<UsageCursor> {
    let invalid = || ApiError::NotFoundDetail("Invalid cursor.".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (timestamp, id) = text.split_once(':').ok_or_else(invalid)?;
    Ok(UsageCursor { timestamp: timestamp.parse().map_err(|_| invalid())?, id: id.to_string() })
}

fn query_error(err: bedrock_query::QueryError) -> ApiError {
    err.into()
}

// ---- usage records ----

/// List usage records newest first. Filters: `agent`, `model`, `trace`,
/// `start` (inclusive) and `end` (exclusive). Follow `next` to page with a
/// cursor that neither skips nor repeats records while new ones arrive.
#[utoipa::path(get, path = "/api/cloud/usage/", tag = "usage",
    params(("agent" = Option<String>, Query), ("model" = Option<String>, Query), ("trace" = Option<String>, Query),
        ("start" = Option<String>, Query), ("end" = Option<String>, Query), ("cursor" = Option<String>, Query),
        ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "`{count, next, previous, results}`"), (status = 400)))]
async fn list_usage(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let filter = usage_filter(&query, &["agent", "model", "trace", "start", "end", "cursor", "page_size", "format"])?;
    let format = Format::of(&query, &headers)?;
    let page_size = PageParams::from_query(&query)?.page_size;
    let cursor = query.get("cursor").filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let (page, next) = state
        .usage
        .list(&principal.organization_id, &filter, cursor.as_ref(), page_size as usize)
        .await
        .map_err(query_error)?;
    if format != Format::Json {
        return tabular(format, &page.results, USAGE_COLUMNS);
    }
    let next = next.map(|cursor| url.with("cursor", Some(encode_cursor(&cursor))));
    Ok(Json(json!({ "count": page.count, "next": next, "previous": Value::Null, "results": page.results })).into_response())
}

/// Post one usage record, or `{"records": [...]}` for up to 1000. A record
/// without `cost_usd` is priced from the model price table.
#[utoipa::path(post, path = "/api/cloud/usage/", tag = "usage",
    request_body(content = Object, description = "One record, or `{\"records\": [...]}`"),
    responses((status = 201, description = "The record, or `{\"records\": [...]}`"), (status = 400)))]
async fn create_usage(State(state): State<AppState>, principal: Principal, JsonValue(mut body): JsonValue) -> ApiResult<Response> {
    let limits = validate::Limits { max_text_bytes: state.settings.max_text_field_bytes };
    let many = body.get("records").is_some();
    let items = match body.get_mut("records").map(Value::take) {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::field("records", format!("Expected a list of records, but got {}.", json_type_name(&other))))
        }
        None => vec![body],
    };
    if items.is_empty() || items.len() > MAX_RECORDS_PER_REQUEST {
        return Err(ApiError::field("records", format!("Send 1 to {MAX_RECORDS_PER_REQUEST} records per request.")));
    }

    let mut errors = FieldErrors::default();
    let mut writes = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        match validate::usage_write(item, limits) {
            Ok((id, fields)) => {
                let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                ids.push(id.clone());
                writes.push(Write::Usage { id, op: Op::Create, fields });
            }
            Err(invalid) => {
                for (field, messages) in invalid.0 {
                    let name = if many { format!("records.{index}.{field}") } else { field };
                    for message in messages {
                        errors.add(name.clone(), message);
                    }
                }
            }
        }
    }
    errors.finish()?;

    let batch = Batch { organization_id: principal.organization_id.clone(), received_at: now_micros(), writes };
    state.ingest.write(batch).await?;
    let written = state.usage.posted(&principal.organization_id, &ids).await.map_err(query_error)?;
    let body = if many { json!({ "records": written }) } else { written.into_iter().next().unwrap_or(Value::Null) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Get one usage record; a record derived from a span has the span's id.
#[utoipa::path(get, path = "/api/cloud/usage/{id}/", tag = "usage", params(("id" = String, Path)),
    responses((status = 200, description = "The record"), (status = 404)))]
async fn get_usage(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    match state.usage.get(&principal.organization_id, &id).await.map_err(query_error)? {
        Some(record) => Ok(Json(record)),
        None => Err(ApiError::NotFound),
    }
}

/// Totals of the filtered records (count, tokens by kind, cost) and, with
/// `group_by` (any of agent, model, day, hour, trace, comma-separated), the
/// same per group. Days and hours are UTC.
#[utoipa::path(get, path = "/api/cloud/usage/summary/", tag = "usage",
    params(("agent" = Option<String>, Query), ("model" = Option<String>, Query), ("trace" = Option<String>, Query),
        ("start" = Option<String>, Query), ("end" = Option<String>, Query), ("group_by" = Option<String>, Query)),
    responses((status = 200, description = "`{totals, group_by, groups}`"), (status = 400)))]
async fn usage_summary(State(state): State<AppState>, principal: Principal, query: QueryPairs, headers: HeaderMap) -> ApiResult<Response> {
    let filter = usage_filter(&query, &["agent", "model", "trace", "start", "end", "group_by", "format"])?;
    let format = Format::of(&query, &headers)?;
    let keys = group_by(&query)?;
    let summary = state.usage.summary(&principal.organization_id, &filter, &keys).await.map_err(query_error)?;
    if format == Format::Json {
        return Ok(Json(summary).into_response());
    }
    // One row per group, or one row of totals without group_by.
    let rows = match summary["groups"].as_array() {
        Some(groups) => groups.clone(),
        None => vec![summary["totals"].clone()],
    };
    let mut columns: Vec<&str> = keys.clone();
    columns.extend_from_slice(USAGE_TOTAL_COLUMNS);
    tabular(format, &rows, &columns)
}

/// The usage summary of one agent id, whether or not an agent row exists for it.
#[utoipa::path(get, path = "/api/cloud/agents/{id}/usage/", tag = "agents", params(("id" = String, Path),
        ("start" = Option<String>, Query), ("end" = Option<String>, Query), ("model" = Option<String>, Query),
        ("group_by" = Option<String>, Query)),
    responses((status = 200, description = "`{agent_id, totals, group_by, groups}`"), (status = 400)))]
async fn agent_usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: QueryPairs,
) -> ApiResult<Json<Value>> {
    let mut filter = usage_filter(&query, &["model", "start", "end", "group_by"])?;
    filter.agent = Some(id.clone());
    let keys = group_by(&query)?;
    let mut summary = state.usage.summary(&principal.organization_id, &filter, &keys).await.map_err(query_error)?;
    summary["agent_id"] = json!(id);
    Ok(Json(summary))
}

// ---- model prices ----

#[derive(Serialize, ToSchema)]
pub struct PriceOut {
    id: String,
    model: String,
    /// USD per million uncached input tokens.
    input_per_million: f64,
    /// USD per million cached input tokens.
    cached_input_per_million: f64,
    /// USD per million output tokens.
    output_per_million: f64,
    created_at: String,
    updated_at: String,
}

fn price_out(row: &PriceOverride) -> Value {
    json!({
        "id": row.id,
        "model": row.model,
        "input_per_million": row.price.input.to_json(),
        "cached_input_per_million": row.price.cached_input.to_json(),
        "output_per_million": row.price.output.to_json(),
        "created_at": format_micros(row.created_at),
        "updated_at": format_micros(row.updated_at),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct PriceIn {
    /// The model name as clients send it; it also matches in normalised form.
    model: Option<String>,
    #[schema(value_type = Option<f64>)]
    input_per_million: Option<Value>,
    /// Defaults to `input_per_million`.
    #[schema(value_type = Option<f64>)]
    cached_input_per_million: Option<Value>,
    #[schema(value_type = Option<f64>)]
    output_per_million: Option<Value>,
}

/// Reads a price in USD per million tokens: a non-negative decimal number.
fn read_price(errors: &mut FieldErrors, field: &str, value: Option<&Value>) -> Option<Money> {
    let value = value?;
    match Money::from_json(value) {
        Some(money) if money.0 >= 0 && money.0 <= 1_000_000 * Money::NANOS_PER_DOLLAR => Some(money),
        Some(_) => {
            errors.add(field, "Ensure this value is between 0 and 1000000.");
            None
        }
        None => {
            errors.add(field, "A valid decimal number is required.");
            None
        }
    }
}

fn build_price(input: PriceIn, current: Option<&PriceOverride>) -> ApiResult<(String, Price)> {
    let mut errors = FieldErrors::default();
    let model = input.model.map(|m| m.trim().to_string());
    match &model {
        Some(m) if m.is_empty() || m.len() > 255 => errors.add("model", "Enter a model name of 1 to 255 bytes."),
        None if current.is_none() => errors.add("model", "This field is required."),
        _ => {}
    }
    let input_price = read_price(&mut errors, "input_per_million", input.input_per_million.as_ref());
    let cached_price = read_price(&mut errors, "cached_input_per_million", input.cached_input_per_million.as_ref());
    let output_price = read_price(&mut errors, "output_per_million", input.output_per_million.as_ref());
    if current.is_none() {
        for (field, value) in [("input_per_million", &input_price), ("output_per_million", &output_price)] {
            if value.is_none() && !errors.has(field) {
                errors.add(field, "This field is required.");
            }
        }
    }
    errors.finish()?;

    let input_money = input_price.or(current.map(|c| c.price.input)).unwrap_or_default();
    let price = Price {
        input: input_money,
        cached_input: cached_price.or(current.map(|c| c.price.cached_input)).unwrap_or(input_money),
        output: output_price.or(current.map(|c| c.price.output)).unwrap_or_default(),
    };
    let model = model.or(current.map(|c| c.model.clone())).unwrap_or_default();
    Ok((model, price))
}

/// List this organization's price overrides.
#[utoipa::path(get, path = "/api/cloud/model-prices/", tag = "usage",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of price overrides")))]
async fn list_prices(State(state): State<AppState>, principal: Principal, query: QueryPairs, url: RequestUrl) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let page = state.control.prices(&principal.organization_id, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(price_out).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Override the price of a model for this organization.
#[utoipa::path(post, path = "/api/cloud/model-prices/", tag = "usage", request_body = PriceIn,
    responses((status = 201, body = PriceOut), (status = 400)))]
async fn create_price(State(state): State<AppState>, principal: Principal, JsonBody(input): JsonBody<PriceIn>) -> ApiResult<Response> {
    principal.require_manager()?;
    let (model, price) = build_price(input, None)?;
    let now = now_micros();
    let row = PriceOverride {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        model,
        price,
        created_at: now,
        updated_at: now,
    };
    state.control.insert_price(&row).await.map_err(ApiError::unique_field("model", "This organization already has a price for this model."))?;
    state.prices.invalidate(&principal.organization_id);
    tracing::info!(price_id = %row.id, "model price override created");
    Ok((StatusCode::CREATED, Json(price_out(&row))).into_response())
}

/// Get a price override.
#[utoipa::path(get, path = "/api/cloud/model-prices/{id}/", tag = "usage", params(("id" = String, Path)),
    responses((status = 200, body = PriceOut), (status = 404)))]
async fn get_price(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(price_out(&state.control.price(&principal.organization_id, &id).await?)))
}

async fn write_price(state: &AppState, principal: &Principal, id: &str, input: PriceIn, partial: bool) -> ApiResult<Json<Value>> {
    principal.require_manager()?;
    let current = state.control.price(&principal.organization_id, id).await?;
    let (model, price) = build_price(input, partial.then_some(&current))?;
    let row = PriceOverride { model, price, updated_at: now_micros(), ..current };
    state.control.update_price(&row).await.map_err(ApiError::unique_field("model", "This organization already has a price for this model."))?;
    state.prices.invalidate(&principal.organization_id);
    Ok(Json(price_out(&row)))
}

/// Replace a price override.
#[utoipa::path(put, path = "/api/cloud/model-prices/{id}/", tag = "usage", params(("id" = String, Path)), request_body = PriceIn,
    responses((status = 200, body = PriceOut), (status = 400), (status = 404)))]
async fn replace_price(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<PriceIn>,
) -> ApiResult<Json<Value>> {
    write_price(&state, &principal, &id, input, false).await
}

/// Update some fields of a price override.
#[utoipa::path(patch, path = "/api/cloud/model-prices/{id}/", tag = "usage", params(("id" = String, Path)), request_body = PriceIn,
    responses((status = 200, body = PriceOut), (status = 400), (status = 404)))]
async fn update_price(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<PriceIn>,
) -> ApiResult<Json<Value>> {
    write_price(&state, &principal, &id, input, true).await
}

/// Delete a price override; the built-in price applies again.
#[utoipa::path(delete, path = "/api/cloud/model-prices/{id}/", tag = "usage", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_price(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    principal.require_manager()?;
    state.control.delete_price(&principal.organization_id, &id).await?;
    state.prices.invalidate(&principal.organization_id);
    Ok(StatusCode::NO_CONTENT)
}
