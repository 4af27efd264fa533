//! `/api/toolbox/`: adapters, their tools, and adapter configs, which enable
//! an adapter on a template with that template's settings.
//!
//! An adapter's `config_schema` is a JSON Schema for its configs. A property
//! marked `"writeOnly": true` (or `"secret": true`) is a secret: it is
//! stored encrypted under the server key, never returned, and listed by name
//! in `secrets_set`. Tools' `parameters` are JSON Schemas of `"type":
//! "object"`, checked against the JSON Schema meta-schema.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_store::control::{Adapter, AdapterConfig, Tool};
use bedrock_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::organizations::{check_name, to_json};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::extract::{JsonBody, PageParams, QueryPairs, RequestUrl};
use crate::time::{format_micros, now_micros};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_adapters, create_adapter))
        .routes(routes!(get_adapter, replace_adapter, update_adapter, delete_adapter))
        .routes(routes!(list_tools, create_tool))
        .routes(routes!(get_tool, replace_tool, update_tool, delete_tool))
        .routes(routes!(list_adapter_configs, create_adapter_config))
        .routes(routes!(get_adapter_config, replace_adapter_config, update_adapter_config, delete_adapter_config))
}

pub const DEFAULT_TOOL_TIMEOUT_SECONDS: f64 = 30.0;
pub const MAX_TOOL_TIMEOUT_SECONDS: f64 = 3600.0;
const MAX_TOOL_NAME_CHARS: usize = 64;
const MAX_URL_BYTES: usize = 2048;

fn empty_object_schema() -> Value {
    json!({ "type": "object", "properties": {} })
}

// ---- JSON Schema checks ----

/// Checks that `schema` is a JSON Schema: an object that its meta-schema
/// (draft 2020-12 unless `$schema` names another) accepts.
fn check_schema(errors: &mut FieldErrors, field: &str, schema: &Value, max_bytes: usize) -> bool {
    if !schema.is_object() {
        errors.add(field, "Expected a JSON Schema object.");
        return false;
    }
    if schema.to_string().len() > max_bytes {
        errors.add(field, format!("Ensure this schema serializes to no more than {max_bytes} bytes."));
        return false;
    }
    if let Err(err) = jsonschema::meta::validate(schema) {
        let location = err.instance_path().to_string();
        let at = if location.is_empty() { String::new() } else { format!(" at {location}") };
        errors.add(field, format!("Not a valid JSON Schema{at}: {err}."));
        return false;
    }
    if let Err(err) = jsonschema::validator_for(schema) {
        errors.add(field, format!("Not a usable JSON Schema: {err}."));
        return false;
    }
    true
}

/// Returns the property names that `config_schema` marks as secret.
fn secret_keys(config_schema: &Value) -> Vec<String> {
    let Some(properties) = config_schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .filter(|(_, property)| {
            property.get("writeOnly") == Some(&Value::Bool(true)) || property.get("secret") == Some(&Value::Bool(true))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Checks a whole config (plain values and decrypted secrets) against the
/// adapter's schema. Messages about secret values never quote them.
fn check_config(errors: &mut FieldErrors, config_schema: &Value, config: &Value, secrets: &[String]) {
    let Ok(validator) = jsonschema::validator_for(config_schema) else {
        errors.add("config", "The adapter's config_schema is not a usable JSON Schema.");
        return;
    };
    for err in validator.iter_errors(config) {
        let pointer = err.instance_path().to_string();
        let segments: Vec<&str> = pointer.split('/').filter(|s| !s.is_empty()).collect();
        let field = if segments.is_empty() { "config".to_string() } else { format!("config.{}", segments.join(".")) };
        let touches_secret = segments.first().is_some_and(|first| secrets.iter().any(|s| s == first));
        if touches_secret {
            errors.add(field, "This secret value does not match the adapter's config_schema.");
        } else {
            errors.add(field, format!("{err}."));
        }
    }
}

// ---- adapters ----

#[derive(Serialize, ToSchema)]
pub struct AdapterOut {
    id: String,
    name: String,
    description: String,
    #[schema(value_type = Object)]
    config_schema: Value,
    created_at: String,
    updated_at: String,
}

impl From<&Adapter> for AdapterOut {
    fn from(a: &Adapter) -> Self {
        AdapterOut {
            id: a.id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            config_schema: a.config_schema.clone(),
            created_at: format_micros(a.created_at),
            updated_at: format_micros(a.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct AdapterIn {
    name: Option<String>,
    description: Option<String>,
    /// A JSON Schema for the adapter's configs; `{"type": "object"}` by default.
    #[schema(value_type = Option<Object>)]
    config_schema: Option<Value>,
}

fn check_adapter(state: &AppState, input: &AdapterIn, partial: bool) -> ApiResult<()> {
    let max_text = state.settings.max_text_field_bytes;
    let mut errors = FieldErrors::default();
    match &input.name {
        Some(name) => check_name(&mut errors, "name", name, true),
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    if input.description.as_ref().is_some_and(|d| d.len() > max_text) {
        errors.add("description", format!("Ensure this field has no more than {max_text} bytes."));
    }
    if let Some(schema) = &input.config_schema {
        check_schema(&mut errors, "config_schema", schema, max_text);
    }
    errors.finish()
}

/// List adapters, oldest first.
#[utoipa::path(get, path = "/api/toolbox/adapters/", tag = "toolbox",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of adapters")))]
async fn list_adapters(State(state): State<AppState>, principal: Principal, query: QueryPairs, url: RequestUrl) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let page = state.control.adapters(&principal.organization_id, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|a| to_json(AdapterOut::from(a))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Create an adapter. Names are unique within the organization.
#[utoipa::path(post, path = "/api/toolbox/adapters/", tag = "toolbox", request_body = AdapterIn,
    responses((status = 201, body = AdapterOut), (status = 400)))]
async fn create_adapter(State(state): State<AppState>, principal: Principal, JsonBody(input): JsonBody<AdapterIn>) -> ApiResult<Response> {
    check_adapter(&state, &input, false)?;
    let now = now_micros();
    let adapter = Adapter {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        name: input.name.unwrap_or_default().trim().to_string(),
        description: input.description.unwrap_or_default(),
        config_schema: input.config_schema.unwrap_or_else(empty_object_schema),
        created_at: now,
        updated_at: now,
    };
    state.control.insert_adapter(&adapter).await.map_err(ApiError::unique_field("name", "An adapter with this name already exists."))?;
    tracing::info!(adapter_id = %adapter.id, "adapter created");
    Ok((StatusCode::CREATED, Json(to_json(AdapterOut::from(&adapter)))).into_response())
}

/// Get an adapter.
#[utoipa::path(get, path = "/api/toolbox/adapters/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 200, body = AdapterOut), (status = 404)))]
async fn get_adapter(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let adapter = state.control.adapter(&principal.organization_id, &id).await?;
    Ok(Json(to_json(AdapterOut::from(&adapter))))
}

async fn write_adapter(state: &AppState, principal: &Principal, id: &str, input: AdapterIn, partial: bool) -> ApiResult<Json<Value>> {
    let current = state.control.adapter(&principal.organization_id, id).await?;
    check_adapter(state, &input, partial)?;
    let adapter = Adapter {
        name: input.name.map(|n| n.trim().to_string()).unwrap_or(current.name.clone()),
        description: input.description.unwrap_or_else(|| if partial { current.description.clone() } else { String::new() }),
        config_schema: input
            .config_schema
            .unwrap_or_else(|| if partial { current.config_schema.clone() } else { empty_object_schema() }),
        updated_at: now_micros(),
        ..current
    };
    state.control.update_adapter(&adapter).await.map_err(ApiError::unique_field("name", "An adapter with this name already exists."))?;
    Ok(Json(to_json(AdapterOut::from(&adapter))))
}

/// Replace an adapter.
#[utoipa::path(put, path = "/api/toolbox/adapters/{id}/", tag = "toolbox", params(("id" = String, Path)), request_body = AdapterIn,
    responses((status = 200, body = AdapterOut), (status = 400), (status = 404)))]
async fn replace_adapter(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AdapterIn>,
) -> ApiResult<Json<Value>> {
    write_adapter(&state, &principal, &id, input, false).await
}

/// Update some fields of an adapter.
#[utoipa::path(patch, path = "/api/toolbox/adapters/{id}/", tag = "toolbox", params(("id" = String, Path)), request_body = AdapterIn,
    responses((status = 200, body = AdapterOut), (status = 400), (status = 404)))]
async fn update_adapter(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AdapterIn>,
) -> ApiResult<Json<Value>> {
    write_adapter(&state, &principal, &id, input, true).await
}

/// Delete an adapter with its tools and its configs on every template.
#[utoipa::path(delete, path = "/api/toolbox/adapters/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_adapter(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_adapter(&principal.organization_id, &id).await?;
    tracing::info!(adapter_id = %id, "adapter deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Resolves an adapter id from a request body; one the caller cannot see is a 404 naming the field.
async fn visible_adapter(state: &AppState, org_id: &str, id: &str) -> ApiResult<Adapter> {
    match state.control.adapter(org_id, id).await {
        Ok(adapter) => Ok(adapter),
        Err(StoreError::NotFound) => Err(ApiError::unknown_reference("adapter", "No adapter with this id in this organization.")),
        Err(err) => Err(err.into()),
    }
}

// ---- tools ----

#[derive(Serialize, ToSchema)]
pub struct ToolOut {
    id: String,
    /// The adapter's id.
    adapter: String,
    name: String,
    description: String,
    #[schema(value_type = Object)]
    parameters: Value,
    url: String,
    timeout_seconds: f64,
    enabled: bool,
    created_at: String,
    updated_at: String,
}

impl From<&Tool> for ToolOut {
    fn from(t: &Tool) -> Self {
        ToolOut {
            id: t.id.clone(),
            adapter: t.adapter_id.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
            url: t.url.clone(),
            timeout_seconds: t.timeout_seconds,
            enabled: t.enabled,
            created_at: format_micros(t.created_at),
            updated_at: format_micros(t.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct ToolIn {
    /// The adapter's id.
    adapter: Option<String>,
    /// Letters, digits, `_` and `-`, at most 64 characters, as LLM APIs require.
    name: Option<String>,
    description: Option<String>,
    /// A JSON Schema of `"type": "object"` for the tool's arguments.
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    /// The address the harness POSTs a call to: an http(s) URL or a path on this server.
    url: Option<String>,
    /// Seconds the harness waits for the tool; 30 by default, at most 3600.
    timeout_seconds: Option<f64>,
    /// Only enabled tools appear in harness-config; true by default.
    enabled: Option<bool>,
}

fn check_tool(state: &AppState, input: &ToolIn, partial: bool) -> ApiResult<()> {
    let max_text = state.settings.max_text_field_bytes;
    let mut errors = FieldErrors::default();
    if input.adapter.is_none() && !partial {
        errors.add("adapter", "This field is required.");
    }
    match &input.name {
        Some(name) => {
            let valid = !name.is_empty()
                && name.chars().count() <= MAX_TOOL_NAME_CHARS
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                errors.add(
                    "name",
                    format!("Use 1 to {MAX_TOOL_NAME_CHARS} letters, digits, underscores or hyphens."),
                );
            }
        }
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    if input.description.as_ref().is_some_and(|d| d.len() > max_text) {
        errors.add("description", format!("Ensure this field has no more than {max_text} bytes."));
    }
    if let Some(parameters) = &input.parameters {
        if check_schema(&mut errors, "parameters", parameters, max_text) && parameters.get("type") != Some(&json!("object")) {
            errors.add("parameters", "A tool's parameters must be a schema of \"type\": \"object\".");
        }
    }
    match &input.url {
        Some(url) => check_url(&mut errors, url),
        None if !partial => errors.add("url", "This field is required."),
        None => {}
    }
    if let Some(timeout) = input.timeout_seconds {
        if !(timeout > 0.0 && timeout <= MAX_TOOL_TIMEOUT_SECONDS) {
            errors.add(
                "timeout_seconds",
                format!("Ensure this value is greater than 0 and at most {MAX_TOOL_TIMEOUT_SECONDS}."),
            );
        }
    }
    errors.finish()
}

fn check_url(errors: &mut FieldErrors, url: &str) {
    if url.len() > MAX_URL_BYTES {
        errors.add("url", format!("Ensure this field has no more than {MAX_URL_BYTES} bytes."));
        return;
    }
    let valid = if url.starts_with('/') {
        !url.starts_with("//") && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    } else {
        match url::Url::parse(url) {
            Ok(parsed) => matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
            Err(_) => false,
        }
    };
    if !valid {
        errors.add("url", "Enter an http or https URL, or a path on this server starting with /.");
    }
}

/// List tools, oldest first; `?adapter=<id>` keeps one adapter's.
#[utoipa::path(get, path = "/api/toolbox/tools/", tag = "toolbox",
    params(("adapter" = Option<String>, Query), ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of tools")))]
async fn list_tools(State(state): State<AppState>, principal: Principal, query: QueryPairs, url: RequestUrl) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let adapter = query.get("adapter").filter(|a| !a.is_empty());
    let page = state.control.tools(&principal.organization_id, adapter, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|t| to_json(ToolOut::from(t))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Create a tool on an adapter.
#[utoipa::path(post, path = "/api/toolbox/tools/", tag = "toolbox", request_body = ToolIn,
    responses((status = 201, body = ToolOut), (status = 400), (status = 404, description = "The adapter is not visible")))]
async fn create_tool(State(state): State<AppState>, principal: Principal, JsonBody(input): JsonBody<ToolIn>) -> ApiResult<Response> {
    check_tool(&state, &input, false)?;
    let adapter = visible_adapter(&state, &principal.organization_id, input.adapter.as_deref().unwrap_or_default()).await?;
    let now = now_micros();
    let tool = Tool {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        adapter_id: adapter.id,
        name: input.name.unwrap_or_default(),
        description: input.description.unwrap_or_default(),
        parameters: input.parameters.unwrap_or_else(empty_object_schema),
        url: input.url.unwrap_or_default(),
        timeout_seconds: input.timeout_seconds.unwrap_or(DEFAULT_TOOL_TIMEOUT_SECONDS),
        enabled: input.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    state.control.insert_tool(&tool).await.map_err(ApiError::unique_field("name", "This adapter already has a tool with this name."))?;
    tracing::info!(tool_id = %tool.id, "tool created");
    Ok((StatusCode::CREATED, Json(to_json(ToolOut::from(&tool)))).into_response())
}

/// Get a tool.
#[utoipa::path(get, path = "/api/toolbox/tools/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 200, body = ToolOut), (status = 404)))]
async fn get_tool(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let tool = state.control.tool(&principal.organization_id, &id).await?;
    Ok(Json(to_json(ToolOut::from(&tool))))
}

async fn write_tool(state: &AppState, principal: &Principal, id: &str, input: ToolIn, partial: bool) -> ApiResult<Json<Value>> {
    let current = state.control.tool(&principal.organization_id, id).await?;
    check_tool(state, &input, partial)?;
    let adapter_id = match &input.adapter {
        Some(adapter) if *adapter != current.adapter_id => visible_adapter(state, &principal.organization_id, adapter).await?.id,
        _ => current.adapter_id.clone(),
    };
    let keep = |given: Option<String>, current: &str, default: &str| {
        given.unwrap_or_else(|| if partial { current.to_string() } else { default.to_string() })
    };
    let tool = Tool {
        adapter_id,
        name: keep(input.name, &current.name, ""),
        description: keep(input.description, &current.description, ""),
        parameters: input
            .parameters
            .unwrap_or_else(|| if partial { current.parameters.clone() } else { empty_object_schema() }),
        url: keep(input.url, &current.url, ""),
        timeout_seconds: input
            .timeout_seconds
            .unwrap_or(if partial { current.timeout_seconds } else { DEFAULT_TOOL_TIMEOUT_SECONDS }),
        enabled: input.enabled.unwrap_or(if partial { current.enabled } else { true }),
        updated_at: now_micros(),
        ..current
    };
    state.control.update_tool(&tool).await.map_err(ApiError::unique_field("name", "This adapter already has a tool with this name."))?;
    Ok(Json(to_json(ToolOut::from(&tool))))
}

/// Replace a tool.
#[utoipa::path(put, path = "/api/toolbox/tools/{id}/", tag = "toolbox", params(("id" = String, Path)), request_body = ToolIn,
    responses((status = 200, body = ToolOut), (status = 400), (status = 404)))]
async fn replace_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<ToolIn>,
) -> ApiResult<Json<Value>> {
    write_tool(&state, &principal, &id, input, false).await
}

/// Update some fields of a tool.
#[utoipa::path(patch, path = "/api/toolbox/tools/{id}/", tag = "toolbox", params(("id" = String, Path)), request_body = ToolIn,
    responses((status = 200, body = ToolOut), (status = 400), (status = 404)))]
async fn update_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<ToolIn>,
) -> ApiResult<Json<Value>> {
    write_tool(&state, &principal, &id, input, true).await
}

/// Delete a tool.
#[utoipa::path(delete, path = "/api/toolbox/tools/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_tool(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_tool(&principal.organization_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- adapter configs ----

#[derive(Serialize, ToSchema)]
pub struct AdapterConfigOut {
    id: String,
    /// The template's id.
    template: String,
    /// The adapter's id.
    adapter: String,
    /// The plain values; secret values are never returned.
    #[schema(value_type = Object)]
    config: Value,
    /// The names of the secret values that are set.
    secrets_set: Vec<String>,
    created_at: String,
    updated_at: String,
}

impl From<&AdapterConfig> for AdapterConfigOut {
    fn from(c: &AdapterConfig) -> Self {
        let mut secrets_set: Vec<String> = c.secrets.keys().cloned().collect();
        secrets_set.sort();
        AdapterConfigOut {
            id: c.id.clone(),
            template: c.template_id.clone(),
            adapter: c.adapter_id.clone(),
            config: Value::Object(c.config.clone()),
            secrets_set,
            created_at: format_micros(c.created_at),
            updated_at: format_micros(c.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct AdapterConfigIn {
    /// The template's id.
    template: Option<String>,
    /// The adapter's id.
    adapter: Option<String>,
    /// Values checked against the adapter's config_schema. A secret key that
    /// an update leaves out keeps its value; `null` removes it.
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
}

/// Splits the stored and the given values into the new plain config and
/// encrypted secrets, after checking the whole against the adapter's schema.
fn seal_config(
    state: &AppState,
    adapter: &Adapter,
    current: Option<&AdapterConfig>,
    given: Option<Value>,
    partial: bool,
) -> ApiResult<(Map<String, Value>, Map<String, Value>)> {
    let given = match given {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::field("config", "Expected a JSON object.")),
    };
    let max_text = state.settings.max_text_field_bytes;
    if Value::Object(given.clone()).to_string().len() > max_text {
        return Err(ApiError::field("config", format!("Ensure this object serializes to no more than {max_text} bytes.")));
    }
    let secret_names = secret_keys(&adapter.config_schema);

    // Start from what is stored: all of it for PATCH, only the secrets for PUT.
    let mut plain = match (current, partial) {
        (Some(current), true) => current.config.clone(),
        _ => Map::new(),
    };
    let mut secrets: Map<String, Value> = Map::new();
    if let Some(current) = current {
        for (key, sealed) in &current.secrets {
            let opened = sealed.as_str().and_then(|s| state.secret_box.decrypt(s));
            match opened {
                Some(value) => {
                    secrets.insert(key.clone(), Value::String(value));
                }
                None => tracing::warn!(adapter_config_id = %current.id, key = %key, "a stored secret could not be decrypted"),
            }
        }
    }
    for (key, value) in given {
        let target = if secret_names.contains(&key) { &mut secrets } else { &mut plain };
        if value.is_null() {
            target.remove(&key);
        } else {
            target.insert(key, value);
        }
    }
    // Plain values of keys the schema now calls secret move to the secrets.
    for name in &secret_names {
        if let Some(value) = plain.remove(name) {
            secrets.insert(name.clone(), value);
        }
    }

    let mut whole = plain.clone();
    whole.extend(secrets.clone());
    let mut errors = FieldErrors::default();
    check_config(&mut errors, &adapter.config_schema, &Value::Object(whole), &secret_names);
    errors.finish()?;

    let sealed = secrets
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            (key, Value::String(state.secret_box.encrypt(&text)))
        })
        .collect();
    Ok((plain, sealed))
}

async fn visible_template(state: &AppState, org_id: &str, id: &str) -> ApiResult<String> {
    match state.control.template(org_id, id).await {
        Ok(template) => Ok(template.id),
        Err(StoreError::NotFound) => Err(ApiError::unknown_reference("template", "No template with this id in this organization.")),
        Err(err) => Err(err.into()),
    }
}

/// List adapter configs, oldest first; filter by `?template=<id>` or `?adapter=<id>`.
#[utoipa::path(get, path = "/api/toolbox/adapter-configs/", tag = "toolbox",
    params(("template" = Option<String>, Query), ("adapter" = Option<String>, Query),
        ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of adapter configs")))]
async fn list_adapter_configs(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let template = query.get("template").filter(|t| !t.is_empty());
    let adapter = query.get("adapter").filter(|a| !a.is_empty());
    let page = state
        .control
        .adapter_configs(&principal.organization_id, template, adapter, params.page_size, params.offset())
        .await?;
    let results = page.rows.iter().map(|c| to_json(AdapterConfigOut::from(c))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Enable an adapter on a template with its config.
#[utoipa::path(post, path = "/api/toolbox/adapter-configs/", tag = "toolbox", request_body = AdapterConfigIn,
    responses((status = 201, body = AdapterConfigOut), (status = 400), (status = 404, description = "The template or adapter is not visible")))]
async fn create_adapter_config(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(input): JsonBody<AdapterConfigIn>,
) -> ApiResult<Response> {
    let mut errors = FieldErrors::default();
    if input.template.is_none() {
        errors.add("template", "This field is required.");
    }
    if input.adapter.is_none() {
        errors.add("adapter", "This field is required.");
    }
    errors.finish()?;
    let org_id = principal.organization_id.clone();
    let template_id = visible_template(&state, &org_id, input.template.as_deref().unwrap_or_default()).await?;
    let adapter = visible_adapter(&state, &org_id, input.adapter.as_deref().unwrap_or_default()).await?;
    let (config, secrets) = seal_config(&state, &adapter, None, input.config, false)?;

    let now = now_micros();
    let row = AdapterConfig {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org_id,
        template_id,
        adapter_id: adapter.id,
        config,
        secrets,
        created_at: now,
        updated_at: now,
    };
    state.control.insert_adapter_config(&row).await.map_err(ApiError::unique_field("non_field_errors", "This adapter is already enabled on this template."))?;
    tracing::info!(adapter_config_id = %row.id, "adapter config created");
    Ok((StatusCode::CREATED, Json(to_json(AdapterConfigOut::from(&row)))).into_response())
}

/// Get an adapter config (without its secret values).
#[utoipa::path(get, path = "/api/toolbox/adapter-configs/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 200, body = AdapterConfigOut), (status = 404)))]
async fn get_adapter_config(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = state.control.adapter_config(&principal.organization_id, &id).await?;
    Ok(Json(to_json(AdapterConfigOut::from(&row))))
}

async fn write_adapter_config(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: AdapterConfigIn,
    partial: bool,
) -> ApiResult<Json<Value>> {
    let org_id = &principal.organization_id;
    let current = state.control.adapter_config(org_id, id).await?;
    let template_id = match &input.template {
        Some(template) if *template != current.template_id => visible_template(state, org_id, template).await?,
        _ => current.template_id.clone(),
    };
    let adapter_id = input.adapter.clone().unwrap_or_else(|| current.adapter_id.clone());
    let adapter = visible_adapter(state, org_id, &adapter_id).await?;
    // Secrets of another adapter do not carry over.
    let keep = (adapter.id == current.adapter_id).then_some(&current);
    let (config, secrets) = seal_config(state, &adapter, keep, input.config, partial)?;
    let row = AdapterConfig { template_id, adapter_id: adapter.id, config, secrets, updated_at: now_micros(), ..current.clone() };
    state.control.update_adapter_config(&row).await.map_err(ApiError::unique_field("non_field_errors", "This adapter is already enabled on this template."))?;
    Ok(Json(to_json(AdapterConfigOut::from(&row))))
}

/// Replace an adapter config. Agents already created keep their copy.
#[utoipa::path(put, path = "/api/toolbox/adapter-configs/{id}/", tag = "toolbox", params(("id" = String, Path)),
    request_body = AdapterConfigIn, responses((status = 200, body = AdapterConfigOut), (status = 400), (status = 404)))]
async fn replace_adapter_config(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AdapterConfigIn>,
) -> ApiResult<Json<Value>> {
    write_adapter_config(&state, &principal, &id, input, false).await
}

/// Update an adapter config: given keys replace, `null` removes. Agents already created keep their copy.
#[utoipa::path(patch, path = "/api/toolbox/adapter-configs/{id}/", tag = "toolbox", params(("id" = String, Path)),
    request_body = AdapterConfigIn, responses((status = 200, body = AdapterConfigOut), (status = 400), (status = 404)))]
async fn update_adapter_config(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AdapterConfigIn>,
) -> ApiResult<Json<Value>> {
    write_adapter_config(&state, &principal, &id, input, true).await
}

/// Detach the adapter from the template. Agents already created keep their copy.
#[utoipa::path(delete, path = "/api/toolbox/adapter-configs/{id}/", tag = "toolbox", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_adapter_config(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_adapter_config(&principal.organization_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
