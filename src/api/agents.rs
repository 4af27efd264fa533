//! `/api/templates/` and `/api/cloud/agents/`: the templates that blueprint
//! agents, the agents themselves, their tags, their lifecycle and the
//! configuration a harness boots with.
//!
//! An agent is a snapshot: at creation it copies its template's settings and
//! the template's adapter configs, and later edits of the template change
//! nothing on it. The tools listed in its harness-config are read live from
//! the adapters of that snapshot.
//!
//! The lifecycle, as the README documents it:
//!
//! | action | allowed from                  | to         |
//! |--------|-------------------------------|------------|
//! | run    | idle, sleeping, stopped       | running    |
//! | sleep  | idle, running, sleeping       | sleeping   |
//! | stop   | running, sleeping             | stopped    |
//!
//! A new agent is `idle`. A sleeping agent whose `sleep_until` has passed
//! reads as `due_to_wake` and moves as a sleeping one. Anything else is a 409.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_query::UsageFilter;
use bedrock_store::control::{Agent, AgentFilter, Template, Transition, TransitionOutcome, TransitionRequest};
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
use crate::extract::{double_option, from_value, JsonBody, OptionalJson, PageParams, QueryPairs, RequestUrl};
use crate::time::{format_micros, now_micros, parse_timestamp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates, create_template))
        .routes(routes!(get_template, replace_template, update_template, delete_template))
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, replace_agent, update_agent, delete_agent))
        .routes(routes!(run_agent))
        .routes(routes!(stop_agent))
        .routes(routes!(sleep_agent))
        .routes(routes!(harness_config))
        .routes(routes!(list_transitions))
        .routes(routes!(add_tag))
        .routes(routes!(remove_tag))
}

pub const PURPOSES: [&str; 3] = ["prod", "dev", "eval"];
pub const REASONING_EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
pub const MAX_TOKENS_LIMIT: i64 = 10_000_000;
const MAX_TAG_CHARS: usize = 255;
const MAX_MODEL_CHARS: usize = 255;
/// Transitions shown on an agent's detail; the rest are at `/transitions/`.
const RECENT_TRANSITIONS: i64 = 20;

// ---- shared field rules ----

/// The settings a template and an agent share, each as given in a request:
/// `None` when absent. `reasoning_effort` and `max_tokens` may also be null.
#[derive(Default)]
struct SettingsIn {
    model: Option<String>,
    system_prompt: Option<String>,
    reasoning_effort: Option<Option<String>>,
    max_tokens: Option<Option<i64>>,
    config: Option<Value>,
}

/// Moves the shared settings fields out of a request body struct.
macro_rules! take_settings {
    ($input:expr) => {
        SettingsIn {
            model: $input.model.take(),
            system_prompt: $input.system_prompt.take(),
            reasoning_effort: $input.reasoning_effort.take(),
            max_tokens: $input.max_tokens.take(),
            config: $input.config.take(),
        }
    };
}

/// Resolved settings, as stored on a template or an agent.
#[derive(Clone, Default)]
struct Settings {
    model: String,
    system_prompt: String,
    reasoning_effort: Option<String>,
    max_tokens: Option<i64>,
    config: Value,
}

impl SettingsIn {
    fn check(&self, errors: &mut FieldErrors, max_text_bytes: usize) {
        if let Some(model) = &self.model {
            if model.chars().count() > MAX_MODEL_CHARS {
                errors.add("model", format!("Ensure this field has no more than {MAX_MODEL_CHARS} characters."));
            }
        }
        if let Some(prompt) = &self.system_prompt {
            if prompt.len() > max_text_bytes {
                errors.add("system_prompt", format!("Ensure this field has no more than {max_text_bytes} bytes."));
            }
        }
        if let Some(Some(effort)) = &self.reasoning_effort {
            if !REASONING_EFFORTS.contains(&effort.as_str()) {
                errors.add(
                    "reasoning_effort",
                    format!("\"{}\" is not a valid choice; choose one of {}, or null.", clip(effort), REASONING_EFFORTS.join(", ")),
                );
            }
        }
        if let Some(Some(tokens)) = self.max_tokens {
            if !(1..=MAX_TOKENS_LIMIT).contains(&tokens) {
                errors.add("max_tokens", format!("Ensure this value is between 1 and {MAX_TOKENS_LIMIT}, or null."));
            }
        }
        if let Some(config) = &self.config {
            if !config.is_object() {
                errors.add("config", "Expected a JSON object.");
            } else if config.to_string().len() > max_text_bytes {
                errors.add("config", format!("Ensure this object serializes to no more than {max_text_bytes} bytes."));
            }
        }
    }

    /// `base` with every given field replaced; absent fields keep `base`'s value.
    fn apply(self, base: &Settings) -> Settings {
        Settings {
            model: self.model.map(|m| m.trim().to_string()).unwrap_or_else(|| base.model.clone()),
            system_prompt: self.system_prompt.unwrap_or_else(|| base.system_prompt.clone()),
            reasoning_effort: self.reasoning_effort.unwrap_or_else(|| base.reasoning_effort.clone()),
            max_tokens: self.max_tokens.unwrap_or(base.max_tokens),
            config: self.config.unwrap_or_else(|| base.config.clone()),
        }
    }
}

impl Settings {
    fn empty() -> Settings {
        Settings { config: json!({}), ..Settings::default() }
    }
}

/// Cuts a value quoted in an error message to a readable length.
fn clip(text: &str) -> String {
    let mut clipped: String = text.chars().take(64).collect();
    if clipped.len() < text.len() {
        clipped.push('…');
    }
    clipped
}

/// Reads a JSON body into `T`, naming the failing field.
fn body<T: serde::de::DeserializeOwned>(value: Value) -> ApiResult<T> {
    from_value(value)
}

fn page_filter<'a>(query: &'a QueryPairs, key: &str) -> Option<&'a str> {
    query.get(key).filter(|v| !v.is_empty())
}

// ---- templates ----

#[derive(Serialize, ToSchema)]
pub struct TemplateOut {
    id: String,
    name: String,
    description: String,
    model: String,
    system_prompt: String,
    reasoning_effort: Option<String>,
    max_tokens: Option<i64>,
    #[schema(value_type = Object)]
    config: Value,
    created_at: String,
    updated_at: String,
}

impl From<&Template> for TemplateOut {
    fn from(t: &Template) -> Self {
        TemplateOut {
            id: t.id.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            model: t.model.clone(),
            system_prompt: t.system_prompt.clone(),
            reasoning_effort: t.reasoning_effort.clone(),
            max_tokens: t.max_tokens,
            config: t.config.clone(),
            created_at: format_micros(t.created_at),
            updated_at: format_micros(t.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct TemplateIn {
    name: Option<String>,
    description: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    reasoning_effort: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    max_tokens: Option<Option<i64>>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
}

fn template_settings(t: &Template) -> Settings {
    Settings {
        model: t.model.clone(),
        system_prompt: t.system_prompt.clone(),
        reasoning_effort: t.reasoning_effort.clone(),
        max_tokens: t.max_tokens,
        config: t.config.clone(),
    }
}

/// Checks a template body; `partial` is PATCH, where nothing is required.
fn check_template(state: &AppState, input: &TemplateIn, settings: &SettingsIn, partial: bool) -> ApiResult<()> {
    let max_text = state.settings.max_text_field_bytes;
    let mut errors = FieldErrors::default();
    match &input.name {
        Some(name) => check_name(&mut errors, "name", name, true),
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    if let Some(description) = &input.description {
        if description.len() > max_text {
            errors.add("description", format!("Ensure this field has no more than {max_text} bytes."));
        }
    }
    settings.check(&mut errors, max_text);
    errors.finish()
}

/// List templates, oldest first; `?name=` finds one by its exact name.
#[utoipa::path(get, path = "/api/templates/", tag = "templates",
    params(("name" = Option<String>, Query), ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of templates")))]
async fn list_templates(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let name = page_filter(&query, "name");
    let page = state.control.templates(&principal.organization_id, name, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|t| to_json(TemplateOut::from(t))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Create a template. Names are unique within the organization.
#[utoipa::path(post, path = "/api/templates/", tag = "templates", request_body = TemplateIn,
    responses((status = 201, body = TemplateOut), (status = 400, description = "Validation error")))]
async fn create_template(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(mut input): JsonBody<TemplateIn>,
) -> ApiResult<Response> {
    let settings = take_settings!(input);
    check_template(&state, &input, &settings, false)?;
    let now = now_micros();
    let settings = settings.apply(&Settings::empty());
    let template = Template {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        name: input.name.unwrap_or_default().trim().to_string(),
        description: input.description.unwrap_or_default(),
        model: settings.model,
        system_prompt: settings.system_prompt,
        reasoning_effort: settings.reasoning_effort,
        max_tokens: settings.max_tokens,
        config: settings.config,
        created_at: now,
        updated_at: now,
    };
    state.control.insert_template(&template).await.map_err(ApiError::unique_field("name", "A template with this name already exists."))?;
    tracing::info!(template_id = %template.id, "template created");
    Ok((StatusCode::CREATED, Json(to_json(TemplateOut::from(&template)))).into_response())
}

/// Get a template.
#[utoipa::path(get, path = "/api/templates/{id}/", tag = "templates", params(("id" = String, Path)),
    responses((status = 200, body = TemplateOut), (status = 404)))]
async fn get_template(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let template = state.control.template(&principal.organization_id, &id).await?;
    Ok(Json(to_json(TemplateOut::from(&template))))
}

async fn write_template(state: &AppState, principal: &Principal, id: &str, mut input: TemplateIn, partial: bool) -> ApiResult<Json<Value>> {
    let current = state.control.template(&principal.organization_id, id).await?;
    let settings = take_settings!(input);
    check_template(state, &input, &settings, partial)?;
    // PUT replaces: absent fields go back to their defaults.
    let base = if partial { template_settings(&current) } else { Settings::empty() };
    let settings = settings.apply(&base);
    let description = match (input.description, partial) {
        (Some(description), _) => description,
        (None, true) => current.description.clone(),
        (None, false) => String::new(),
    };
    let template = Template {
        name: input.name.map(|n| n.trim().to_string()).unwrap_or(current.name.clone()),
        description,
        model: settings.model,
        system_prompt: settings.system_prompt,
        reasoning_effort: settings.reasoning_effort,
        max_tokens: settings.max_tokens,
        config: settings.config,
        updated_at: now_micros(),
        ..current
    };
    state.control.update_template(&template).await.map_err(ApiError::unique_field("name", "A template with this name already exists."))?;
    Ok(Json(to_json(TemplateOut::from(&template))))
}

/// Replace a template. Agents created from it keep their own copy.
#[utoipa::path(put, path = "/api/templates/{id}/", tag = "templates", params(("id" = String, Path)), request_body = TemplateIn,
    responses((status = 200, body = TemplateOut), (status = 400), (status = 404)))]
async fn replace_template(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<TemplateIn>,
) -> ApiResult<Json<Value>> {
    write_template(&state, &principal, &id, input, false).await
}

/// Update some fields of a template. Agents created from it keep their own copy.
#[utoipa::path(patch, path = "/api/templates/{id}/", tag = "templates", params(("id" = String, Path)), request_body = TemplateIn,
    responses((status = 200, body = TemplateOut), (status = 400), (status = 404)))]
async fn update_template(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<TemplateIn>,
) -> ApiResult<Json<Value>> {
    write_template(&state, &principal, &id, input, true).await
}

/// Delete a template with its adapter configs. Its agents keep their snapshot
/// and show `template: null`.
#[utoipa::path(delete, path = "/api/templates/{id}/", tag = "templates", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_template(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_template(&principal.organization_id, &id).await?;
    tracing::info!(template_id = %id, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- agents ----

#[derive(Serialize, ToSchema)]
pub struct AgentAdapterOut {
    /// The adapter's id.
    adapter: String,
    name: String,
    /// The adapter config's plain values; secrets are never returned.
    #[schema(value_type = Object)]
    config: Value,
    /// The names of the secret values that are set.
    secrets_set: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TransitionOut {
    action: String,
    from_status: String,
    to_status: String,
    reason: Option<String>,
    run_id: Option<String>,
    sleep_until: Option<String>,
    at: String,
}

impl From<&Transition> for TransitionOut {
    fn from(t: &Transition) -> Self {
        TransitionOut {
            action: t.action.clone(),
            from_status: t.from_status.clone(),
            to_status: t.to_status.clone(),
            reason: t.reason.clone(),
            run_id: t.run_id.clone(),
            sleep_until: t.sleep_until.map(format_micros),
            at: format_micros(t.at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AgentOut {
    id: String,
    name: String,
    purpose: String,
    /// The template's id, or null when there was none or it was deleted.
    template: Option<String>,
    model: String,
    system_prompt: String,
    reasoning_effort: Option<String>,
    max_tokens: Option<i64>,
    #[schema(value_type = Object)]
    config: Value,
    tags: Vec<String>,
    /// `idle`, `running`, `sleeping`, `due_to_wake` or `stopped`.
    status: String,
    /// Null when not sleeping or sleeping indefinitely.
    sleep_until: Option<String>,
    sleep_reason: Option<String>,
    last_run_id: Option<String>,
    last_run_at: Option<String>,
    adapters: Vec<AgentAdapterOut>,
    created_at: String,
    updated_at: String,
    /// The latest transitions, newest first; only on the detail view.
    #[serde(skip_serializing_if = "Option::is_none")]
    recent_transitions: Option<Vec<TransitionOut>>,
}

/// Returns the status as the API shows it: a sleeper whose time has come is `due_to_wake`.
pub fn shown_status(agent: &Agent, now: i64) -> String {
    match (agent.status.as_str(), agent.sleep_until) {
        ("sleeping", Some(until)) if until <= now => "due_to_wake".into(),
        (status, _) => status.into(),
    }
}

fn snapshot_adapters(snapshot: &Value) -> Vec<AgentAdapterOut> {
    let entries = snapshot.as_array().map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .map(|entry| {
            let mut secrets_set: Vec<String> =
                entry["secrets"].as_object().map(|s| s.keys().cloned().collect()).unwrap_or_default();
            secrets_set.sort();
            AgentAdapterOut {
                adapter: entry["adapter"].as_str().unwrap_or_default().to_string(),
                name: entry["name"].as_str().unwrap_or_default().to_string(),
                config: entry.get("config").cloned().unwrap_or_else(|| json!({})),
                secrets_set,
            }
        })
        .collect()
}

fn agent_out(agent: &Agent, now: i64) -> AgentOut {
    AgentOut {
        id: agent.id.clone(),
        name: agent.name.clone(),
        purpose: agent.purpose.clone(),
        template: agent.template_id.clone(),
        model: agent.model.clone(),
        system_prompt: agent.system_prompt.clone(),
        reasoning_effort: agent.reasoning_effort.clone(),
        max_tokens: agent.max_tokens,
        config: agent.config.clone(),
        tags: agent.tags.clone(),
        status: shown_status(agent, now),
        sleep_until: agent.sleep_until.map(format_micros),
        sleep_reason: agent.sleep_reason.clone(),
        last_run_id: agent.last_run_id.clone(),
        last_run_at: agent.last_run_at.map(format_micros),
        adapters: snapshot_adapters(&agent.adapters),
        created_at: format_micros(agent.created_at),
        updated_at: format_micros(agent.updated_at),
        recent_transitions: None,
    }
}

async fn agent_detail(state: &AppState, agent: &Agent) -> ApiResult<Value> {
    let transitions =
        state.control.agent_transitions(&agent.organization_id, &agent.id, RECENT_TRANSITIONS, 0).await?;
    let mut out = agent_out(agent, now_micros());
    out.recent_transitions = Some(transitions.rows.iter().map(TransitionOut::from).collect());
    Ok(to_json(out))
}

#[derive(Deserialize, ToSchema)]
pub struct AgentIn {
    name: Option<String>,
    /// `prod` (the default), `dev` or `eval`.
    purpose: Option<String>,
    /// A template of the organization, by id or by exact name.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    template: Option<Option<String>>,
    tags: Option<Vec<String>>,
    model: Option<String>,
    system_prompt: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    reasoning_effort: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    max_tokens: Option<Option<i64>>,
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
}

fn check_tag(errors: &mut FieldErrors, field: &str, tag: &str) {
    if tag.trim().is_empty() {
        errors.add(field, "A tag may not be blank.");
    } else if tag.chars().count() > MAX_TAG_CHARS {
        errors.add(field, format!("Ensure a tag has no more than {MAX_TAG_CHARS} characters."));
    }
}

fn check_agent(state: &AppState, input: &AgentIn, settings: &SettingsIn, partial: bool) -> ApiResult<()> {
    let mut errors = FieldErrors::default();
    match &input.name {
        Some(name) => check_name(&mut errors, "name", name, true),
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    if let Some(purpose) = &input.purpose {
        if !PURPOSES.contains(&purpose.as_str()) {
            errors.add("purpose", format!("\"{}\" is not a valid choice; choose one of {}.", clip(purpose), PURPOSES.join(", ")));
        }
    }
    if let Some(tags) = &input.tags {
        if tags.len() > 1000 {
            errors.add("tags", "Ensure this list has no more than 1000 tags.");
        }
        for (i, tag) in tags.iter().enumerate() {
            check_tag(&mut errors, &format!("tags.{i}"), tag);
        }
    }
    settings.check(&mut errors, state.settings.max_text_field_bytes);
    errors.finish()
}

/// Finds a template of the caller's organization by id, then by exact name.
/// One that is not visible is a 404 that names the field.
async fn resolve_template(state: &AppState, org_id: &str, reference: &str) -> ApiResult<Template> {
    match state.control.template(org_id, reference).await {
        Ok(template) => return Ok(template),
        Err(StoreError::NotFound) => {}
        Err(err) => return Err(err.into()),
    }
    match state.control.template_by_name(org_id, reference).await? {
        Some(template) => Ok(template),
        None => Err(ApiError::unknown_reference(
            "template",
            format!("No template with id or name \"{}\" in this organization.", clip(reference)),
        )),
    }
}

/// Copies the template's adapter configs into an agent's snapshot.
async fn adapter_snapshot(state: &AppState, template: &Template) -> ApiResult<Value> {
    let enabled = state.control.template_adapters(&template.organization_id, &template.id).await?;
    let entries = enabled
        .into_iter()
        .map(|a| json!({ "adapter": a.adapter_id, "name": a.name, "config": a.config, "secrets": a.secrets }))
        .collect();
    Ok(Value::Array(entries))
}

fn dedup_tags(tags: Vec<String>) -> Vec<String> {
    let mut tags: Vec<String> = tags.into_iter().map(|t| t.trim().to_string()).collect();
    tags.sort();
    tags.dedup();
    tags
}

fn require_model(settings: &Settings) -> ApiResult<()> {
    if settings.model.is_empty() {
        return Err(ApiError::field("model", "This field is required when the template sets no model."));
    }
    Ok(())
}

/// List agents, oldest first. Filters: `purpose`, `status`, `tag` (repeat it:
/// every tag must be present), `template` (id) and `name` (exact).
#[utoipa::path(get, path = "/api/cloud/agents/", tag = "agents",
    params(("purpose" = Option<String>, Query), ("status" = Option<String>, Query), ("tag" = Option<Vec<String>>, Query),
        ("template" = Option<String>, Query), ("name" = Option<String>, Query),
        ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of agents"), (status = 400)))]
async fn list_agents(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let filter = AgentFilter {
        purpose: page_filter(&query, "purpose").map(str::to_string),
        status: page_filter(&query, "status").map(str::to_string),
        tags: query.all("tag").filter(|t| !t.is_empty()).map(str::to_string).collect(),
        template_id: page_filter(&query, "template").map(str::to_string),
        name: page_filter(&query, "name").map(str::to_string),
    };
    let mut errors = FieldErrors::default();
    if let Some(purpose) = &filter.purpose {
        if !PURPOSES.contains(&purpose.as_str()) {
            errors.add("purpose", format!("Choose one of {}.", PURPOSES.join(", ")));
        }
    }
    if let Some(status) = &filter.status {
        if !STATUSES.contains(&status.as_str()) {
            errors.add("status", format!("Choose one of {}.", STATUSES.join(", ")));
        }
    }
    errors.finish()?;

    let now = now_micros();
    let page = state.control.agents(&principal.organization_id, &filter, now, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|agent| to_json(agent_out(agent, now))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

const STATUSES: [&str; 5] = ["idle", "running", "sleeping", "due_to_wake", "stopped"];

/// Create an agent. With a `template`, the template's settings and adapter
/// configs are copied onto the agent; fields in the body win over the template's.
#[utoipa::path(post, path = "/api/cloud/agents/", tag = "agents", request_body = AgentIn,
    responses((status = 201, body = AgentOut), (status = 400), (status = 404, description = "The template is not visible")))]
async fn create_agent(State(state): State<AppState>, principal: Principal, JsonBody(mut input): JsonBody<AgentIn>) -> ApiResult<Response> {
    let settings_in = take_settings!(input);
    check_agent(&state, &input, &settings_in, false)?;
    let org_id = principal.organization_id.clone();
    let template = match input.template.clone().flatten().filter(|t| !t.is_empty()) {
        Some(reference) => Some(resolve_template(&state, &org_id, &reference).await?),
        None => None,
    };
    let base = template.as_ref().map(template_settings).unwrap_or_else(Settings::empty);
    let settings = settings_in.apply(&base);
    require_model(&settings)?;
    let adapters = match &template {
        Some(template) => adapter_snapshot(&state, template).await?,
        None => json!([]),
    };

    let now = now_micros();
    let agent = Agent {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org_id,
        name: input.name.unwrap_or_default().trim().to_string(),
        purpose: input.purpose.unwrap_or_else(|| "prod".into()),
        template_id: template.map(|t| t.id),
        model: settings.model,
        system_prompt: settings.system_prompt,
        reasoning_effort: settings.reasoning_effort,
        max_tokens: settings.max_tokens,
        config: settings.config,
        adapters,
        status: "idle".into(),
        sleep_until: None,
        sleep_reason: None,
        last_run_id: None,
        last_run_at: None,
        tags: dedup_tags(input.tags.unwrap_or_default()),
        created_at: now,
        updated_at: now,
    };
    state.control.insert_agent(&agent).await?;
    tracing::info!(agent_id = %agent.id, "agent created");
    let agent = state.control.agent(&agent.organization_id, &agent.id).await?;
    Ok((StatusCode::CREATED, Json(agent_detail(&state, &agent).await?)).into_response())
}

/// Get an agent with its latest transitions and its usage totals.
#[utoipa::path(get, path = "/api/cloud/agents/{id}/", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentOut), (status = 404)))]
async fn get_agent(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let agent = state.control.agent(&principal.organization_id, &id).await?;
    let mut detail = agent_detail(&state, &agent).await?;
    let filter = UsageFilter { agent: Some(agent.id.clone()), ..UsageFilter::default() };
    let summary = state.usage.summary(&agent.organization_id, &filter, &[]).await?;
    detail["usage"] = summary["totals"].clone();
    Ok(Json(detail))
}

async fn write_agent(state: &AppState, principal: &Principal, id: &str, mut input: AgentIn, partial: bool) -> ApiResult<Json<Value>> {
    let current = state.control.agent(&principal.organization_id, id).await?;
    let settings_in = take_settings!(input);
    check_agent(state, &input, &settings_in, partial)?;

    // A new template brings its adapter set; the other settings come from the body.
    let (template_id, adapters) = match input.template.clone() {
        Some(Some(reference)) if !reference.is_empty() => {
            let template = resolve_template(state, &current.organization_id, &reference).await?;
            if Some(&template.id) == current.template_id.as_ref() {
                (current.template_id.clone(), current.adapters.clone())
            } else {
                let adapters = adapter_snapshot(state, &template).await?;
                (Some(template.id), adapters)
            }
        }
        Some(_) => (None, json!([])),
        None if partial => (current.template_id.clone(), current.adapters.clone()),
        None => (None, json!([])),
    };
    let base = if partial {
        Settings {
            model: current.model.clone(),
            system_prompt: current.system_prompt.clone(),
            reasoning_effort: current.reasoning_effort.clone(),
            max_tokens: current.max_tokens,
            config: current.config.clone(),
        }
    } else {
        Settings::empty()
    };
    let settings = settings_in.apply(&base);
    require_model(&settings)?;
    let tags = match (input.tags, partial) {
        (Some(tags), _) => dedup_tags(tags),
        (None, true) => current.tags.clone(),
        (None, false) => Vec::new(),
    };
    let purpose = match (input.purpose, partial) {
        (Some(purpose), _) => purpose,
        (None, true) => current.purpose.clone(),
        (None, false) => "prod".into(),
    };

    let agent = Agent {
        name: input.name.map(|n| n.trim().to_string()).unwrap_or(current.name.clone()),
        purpose,
        template_id,
        model: settings.model,
        system_prompt: settings.system_prompt,
        reasoning_effort: settings.reasoning_effort,
        max_tokens: settings.max_tokens,
        config: settings.config,
        adapters,
        tags,
        updated_at: now_micros(),
        ..current
    };
    state.control.update_agent(&agent).await?;
    let agent = state.control.agent(&agent.organization_id, &agent.id).await?;
    Ok(Json(agent_detail(state, &agent).await?))
}

/// Replace an agent's settings. Absent fields return to their defaults; the
/// lifecycle fields change only through run, stop and sleep.
#[utoipa::path(put, path = "/api/cloud/agents/{id}/", tag = "agents", params(("id" = String, Path)), request_body = AgentIn,
    responses((status = 200, body = AgentOut), (status = 400), (status = 404)))]
async fn replace_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AgentIn>,
) -> ApiResult<Json<Value>> {
    write_agent(&state, &principal, &id, input, false).await
}

/// Update some of an agent's settings.
#[utoipa::path(patch, path = "/api/cloud/agents/{id}/", tag = "agents", params(("id" = String, Path)), request_body = AgentIn,
    responses((status = 200, body = AgentOut), (status = 400), (status = 404)))]
async fn update_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<AgentIn>,
) -> ApiResult<Json<Value>> {
    write_agent(&state, &principal, &id, input, true).await
}

/// Delete an agent with its tags and transitions. Its traces stay.
#[utoipa::path(delete, path = "/api/cloud/agents/{id}/", tag = "agents", params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_agent(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_agent(&principal.organization_id, &id).await?;
    tracing::info!(agent_id = %id, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- lifecycle ----

const RUN_FROM: &[&str] = &["idle", "sleeping", "stopped"];
const SLEEP_FROM: &[&str] = &["idle", "running", "sleeping"];
const STOP_FROM: &[&str] = &["running", "sleeping"];

async fn transition(
    state: &AppState,
    principal: &Principal,
    id: &str,
    request: TransitionRequest<'_>,
) -> ApiResult<Agent> {
    let action = request.action;
    let allowed = request.from.join(", ");
    match state.control.transition_agent(&principal.organization_id, id, request).await {
        Ok(TransitionOutcome::Done(agent)) => {
            tracing::info!(agent_id = %id, action, status = %agent.status, "agent transition");
            Ok(agent)
        }
        Ok(TransitionOutcome::Refused { status }) => Err(ApiError::Conflict(format!(
            "Cannot {action} an agent that is {status}: {action} is allowed only from {allowed}."
        ))),
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(
            "The agent changed state during this request; read it again and retry.".into(),
        )),
        Err(err) => Err(err.into()),
    }
}

#[derive(Deserialize, ToSchema, Default)]
pub struct RunIn {
    /// The run's id; a new UUID when absent.
    run_id: Option<String>,
}

/// Run (or wake) an agent: it becomes `running` with a new run id.
#[utoipa::path(post, path = "/api/cloud/agents/{id}/run/", tag = "agents", params(("id" = String, Path)), request_body = Option<RunIn>,
    responses((status = 202, body = AgentOut), (status = 404), (status = 409, description = "Already running")))]
async fn run_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    OptionalJson(input): OptionalJson,
) -> ApiResult<Response> {
    let input: RunIn = match input {
        Some(value) if !value.is_null() => body(value)?,
        _ => RunIn::default(),
    };
    let run_id = match input.run_id.filter(|r| !r.is_empty()) {
        Some(run_id) if run_id.len() > 255 => return Err(ApiError::field("run_id", "Ensure this field has no more than 255 bytes.")),
        Some(run_id) => run_id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let request = TransitionRequest {
        action: "run",
        from: RUN_FROM,
        to: "running",
        reason: None,
        run_id: Some(run_id.clone()),
        sleep_until: None,
        now: now_micros(),
    };
    let agent = transition(&state, &principal, &id, request).await?;
    let mut out = agent_detail(&state, &agent).await?;
    out["run_id"] = Value::String(run_id);
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}

/// Stop an agent that is running or sleeping.
#[utoipa::path(post, path = "/api/cloud/agents/{id}/stop/", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentOut), (status = 404), (status = 409, description = "Not running or sleeping")))]
async fn stop_agent(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let request = TransitionRequest {
        action: "stop",
        from: STOP_FROM,
        to: "stopped",
        reason: None,
        run_id: None,
        sleep_until: None,
        now: now_micros(),
    };
    let agent = transition(&state, &principal, &id, request).await?;
    Ok(Json(agent_detail(&state, &agent).await?))
}

#[derive(Deserialize, ToSchema)]
pub struct SleepIn {
    /// A future ISO 8601 time, or `"indefinite"` to sleep until something wakes the agent.
    until: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Put an agent to sleep until a time or indefinitely. The harness calls this.
#[utoipa::path(post, path = "/api/cloud/agents/{id}/sleep/", tag = "agents", params(("id" = String, Path)), request_body = SleepIn,
    responses((status = 200, body = AgentOut), (status = 400), (status = 404), (status = 409, description = "The agent is stopped")))]
async fn sleep_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<SleepIn>,
) -> ApiResult<Json<Value>> {
    let now = now_micros();
    let sleep_until = match input.until.as_deref().map(str::trim) {
        None | Some("") => return Err(ApiError::required("until")),
        Some(text) if text.eq_ignore_ascii_case("indefinite") => None,
        Some(text) => match parse_timestamp(text) {
            Some(at) if at > now => Some(at),
            Some(_) => return Err(ApiError::field("until", "The time must be in the future, or \"indefinite\".")),
            None => return Err(ApiError::field("until", "Expected an ISO 8601 time or \"indefinite\".")),
        },
    };
    let reason = input.reason.filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.len() > state.settings.max_text_field_bytes) {
        return Err(ApiError::field(
            "reason",
            format!("Ensure this field has no more than {} bytes.", state.settings.max_text_field_bytes),
        ));
    }
    let request = TransitionRequest { action: "sleep", from: SLEEP_FROM, to: "sleeping", reason, run_id: None, sleep_until, now };
    let agent = transition(&state, &principal, &id, request).await?;
    Ok(Json(agent_detail(&state, &agent).await?))
}

/// An agent's transitions, newest first.
#[utoipa::path(get, path = "/api/cloud/agents/{id}/transitions/", tag = "agents", params(("id" = String, Path),
    ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of transitions"), (status = 404)))]
async fn list_transitions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let page = state.control.agent_transitions(&principal.organization_id, &id, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|t| to_json(TransitionOut::from(t))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

// ---- harness-config ----

/// Get the configuration a harness boots with: the agent's snapshot and, per adapter, its enabled tools.
#[utoipa::path(get, path = "/api/cloud/agents/{id}/harness-config/", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, description = "`{id, model, system_prompt, reasoning_effort?, max_tokens?, adapters: [{name, tools}]}`"),
        (status = 404)))]
async fn harness_config(State(state): State<AppState>, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let agent = state.control.agent(&principal.organization_id, &id).await?;
    let snapshot = snapshot_adapters(&agent.adapters);
    let adapter_ids: Vec<String> = snapshot.iter().map(|a| a.adapter.clone()).collect();
    let tools = state.control.enabled_tools(&agent.organization_id, &adapter_ids).await?;

    let adapters: Vec<Value> = snapshot
        .iter()
        .map(|adapter| {
            let tools: Vec<Value> = tools
                .iter()
                .filter(|tool| tool.adapter_id == adapter.adapter)
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                        "url": tool.url,
                        "timeout_seconds": tool.timeout_seconds,
                    })
                })
                .collect();
            json!({ "name": adapter.name, "tools": tools })
        })
        .collect();

    let mut config = Map::new();
    config.insert("id".into(), json!(agent.id));
    config.insert("model".into(), json!(agent.model));
    config.insert("system_prompt".into(), json!(agent.system_prompt));
    if let Some(effort) = &agent.reasoning_effort {
        config.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(max_tokens) = agent.max_tokens {
        config.insert("max_tokens".into(), json!(max_tokens));
    }
    config.insert("adapters".into(), Value::Array(adapters));
    Ok(Json(Value::Object(config)))
}

// ---- tags ----

#[derive(Deserialize, ToSchema)]
pub struct TagIn {
    tag: String,
}

/// Attach a tag. Attaching one the agent already has changes nothing.
#[utoipa::path(post, path = "/api/cloud/agents/{id}/tags/", tag = "agents", params(("id" = String, Path)), request_body = TagIn,
    responses((status = 200, body = AgentOut), (status = 400), (status = 404)))]
async fn add_tag(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<TagIn>,
) -> ApiResult<Json<Value>> {
    let mut errors = FieldErrors::default();
    check_tag(&mut errors, "tag", &input.tag);
    errors.finish()?;
    state.control.add_agent_tag(&principal.organization_id, &id, input.tag.trim(), now_micros()).await?;
    let agent = state.control.agent(&principal.organization_id, &id).await?;
    Ok(Json(agent_detail(&state, &agent).await?))
}

/// Detach a tag (URL-encode `/` and other reserved characters in it).
/// Detaching one the agent does not have changes nothing.
#[utoipa::path(delete, path = "/api/cloud/agents/{id}/tags/{tag}/", tag = "agents", params(("id" = String, Path), ("tag" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn remove_tag(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.control.remove_agent_tag(&principal.organization_id, &id, tag.trim()).await?;
    Ok(StatusCode::NO_CONTENT)
}
