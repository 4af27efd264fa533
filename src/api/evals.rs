//! Evaluations: trace reviews, eval cases, and the dashboard summaries of
//! checkpoint pass rates and review scores.
//!
//! A review's `criterion_scores` maps criteria to a number or to
//! `{"score", "weight", "max"}`. When the review names an eval case, a
//! criterion without its own weight or max takes the rubric's, and every
//! scored criterion must be one of the rubric's (when the rubric lists any).
//! `weighted_score` and `checkpoint_pass_rate` are computed on each read, so
//! an edited rubric or a late checkpoint span changes them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_evals::FieldError;
use bedrock_query::evals::review_weighted_score;
use bedrock_query::{EvalFilter, EvalGroup, EvalQueries};
use bedrock_store::control::{EvalCase, Review};
use bedrock_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::agents::PURPOSES;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::extract::{double_option, reject_unknown_parameters, text_parameter, time_parameter, JsonBody, PageParams, QueryPairs, RequestUrl};
use crate::time::{format_micros, now_micros};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_reviews, create_review))
        .routes(routes!(review_summary))
        .routes(routes!(get_review, update_review))
        .routes(routes!(list_eval_cases, create_eval_case))
        .routes(routes!(get_eval_case, update_eval_case, delete_eval_case))
        .routes(routes!(checkpoint_summary))
}

pub const REVIEW_SOURCES: [&str; 2] = ["human", "automated"];
const MAX_NAME_BYTES: usize = 255;

fn add_errors(errors: &mut FieldErrors, found: Vec<FieldError>) {
    for error in found {
        errors.add(error.field, error.message);
    }
}

fn queries(state: &AppState) -> EvalQueries {
    EvalQueries::new(state.ingest.store().clone(), state.control.clone())
}

/// Loads the eval case a request body names. One the caller cannot see is a
/// 404 that names the `eval` field.
async fn visible_eval_case(state: &AppState, org_id: &str, id: &str) -> ApiResult<EvalCase> {
    match state.control.eval_case(org_id, id).await {
        Ok(case) => Ok(case),
        Err(StoreError::NotFound) => Err(ApiError::unknown_reference("eval", "No eval case with this id in this organization.")),
        Err(err) => Err(err.into()),
    }
}

// ---- reviews ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewIn {
    /// Criterion name to a number or to `{"score", "weight", "max"}`; weight and max default to 1.
    #[schema(value_type = Option<Object>)]
    criterion_scores: Option<Value>,
    comment: Option<String>,
    /// `human` or `automated`; by default `human` for a user and `automated` for an API key.
    source: Option<String>,
    /// The id of the eval case whose rubric applies, or null.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    eval: Option<Option<String>>,
}

async fn review_json(state: &AppState, review: &Review) -> ApiResult<Value> {
    let case = match &review.eval_id {
        Some(id) => match state.control.eval_case(&review.organization_id, id).await {
            Ok(case) => Some(case),
            Err(StoreError::NotFound) => None,
            Err(err) => return Err(err.into()),
        },
        None => None,
    };
    let checkpoint_pass_rate = queries(state).trace_pass_rate(&review.organization_id, &review.trace_id).await?;
    Ok(json!({
        "id": review.id,
        "trace_id": review.trace_id,
        "reviewer": review.reviewer_id,
        "source": review.source,
        "criterion_scores": review.criterion_scores,
        "comment": review.comment,
        "eval": review.eval_id,
        "checkpoint_pass_rate": checkpoint_pass_rate,
        "weighted_score": review_weighted_score(review, case.as_ref()),
        "created_at": format_micros(review.created_at),
        "updated_at": format_micros(review.updated_at),
    }))
}

/// Checks a review's input, with the rubric of the eval case it names, and
/// returns the scores to store.
fn check_review(state: &AppState, input: &ReviewIn, case: Option<&EvalCase>) -> ApiResult<Option<Map<String, Value>>> {
    let mut errors = FieldErrors::default();
    let max_text = state.settings.max_text_field_bytes;
    let scores = match &input.criterion_scores {
        None => None,
        Some(value) => match bedrock_evals::parse_criterion_scores(value) {
            Ok(parsed) => {
                let rubric = case.and_then(|case| bedrock_evals::parse_rubric(&case.rubric).ok()).unwrap_or_default();
                if !rubric.is_empty() {
                    if let Err(found) = bedrock_evals::check_against_rubric(&parsed, &rubric) {
                        add_errors(&mut errors, found);
                    }
                }
                Some(value.as_object().cloned().unwrap_or_default())
            }
            Err(found) => {
                add_errors(&mut errors, found);
                None
            }
        },
    };
    if value_bytes(input.criterion_scores.as_ref()) > max_text {
        errors.add("criterion_scores", format!("Ensure this object serializes to no more than {max_text} bytes."));
    }
    if input.comment.as_ref().is_some_and(|c| c.len() > max_text) {
        errors.add("comment", format!("Ensure this field has no more than {max_text} bytes."));
    }
    if let Some(source) = &input.source {
        if !REVIEW_SOURCES.contains(&source.as_str()) {
            errors.add("source", format!("\"{source}\" is not a valid choice. Use one of: {}.", REVIEW_SOURCES.join(", ")));
        }
    }
    errors.finish()?;
    Ok(scores)
}

fn value_bytes(value: Option<&Value>) -> usize {
    value.map_or(0, |v| v.to_string().len())
}

/// List the reviews of a trace, oldest first.
#[utoipa::path(get, path = "/api/tracing/traces/{trace_id}/reviews/", tag = "evaluations",
    params(("trace_id" = String, Path), ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of reviews"), (status = 404)))]
async fn list_reviews(
    State(state): State<AppState>,
    principal: Principal,
    Path(trace_id): Path<String>,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    if !state.queries.trace_exists(&principal.organization_id, &trace_id).await? {
        return Err(ApiError::NotFound);
    }
    let page = state.control.trace_reviews(&principal.organization_id, &trace_id, params.page_size, params.offset()).await?;
    let mut results = Vec::with_capacity(page.rows.len());
    for review in &page.rows {
        results.push(review_json(&state, review).await?);
    }
    Ok(Json(url.page(params, page.count, results)?))
}

/// Review a trace: criterion scores against an optional eval case's rubric, and a comment.
#[utoipa::path(post, path = "/api/tracing/traces/{trace_id}/reviews/", tag = "evaluations",
    params(("trace_id" = String, Path)), request_body = ReviewIn,
    responses((status = 201, description = "The review with `weighted_score` and `checkpoint_pass_rate`"), (status = 400), (status = 404)))]
async fn create_review(
    State(state): State<AppState>,
    principal: Principal,
    Path(trace_id): Path<String>,
    JsonBody(input): JsonBody<ReviewIn>,
) -> ApiResult<Response> {
    let org_id = &principal.organization_id;
    if !state.queries.trace_exists(org_id, &trace_id).await? {
        return Err(ApiError::NotFound);
    }
    let case = match input.eval.clone().flatten() {
        Some(id) => Some(visible_eval_case(&state, org_id, &id).await?),
        None => None,
    };
    let scores = check_review(&state, &input, case.as_ref())?;
    let now = now_micros();
    let reviewer = principal.user_id().map(str::to_string);
    let default_source = if reviewer.is_some() { "human" } else { "automated" };
    let review = Review {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org_id.clone(),
        trace_id,
        reviewer_id: reviewer,
        source: input.source.unwrap_or_else(|| default_source.to_string()),
        criterion_scores: scores.unwrap_or_default(),
        comment: input.comment.unwrap_or_default(),
        eval_id: case.map(|case| case.id),
        created_at: now,
        updated_at: now,
    };
    state.control.insert_review(&review).await?;
    tracing::info!(review_id = %review.id, trace_id = %review.trace_id, "review created");
    Ok((StatusCode::CREATED, Json(review_json(&state, &review).await?)).into_response())
}

/// Get a review.
#[utoipa::path(get, path = "/api/tracing/reviews/{review_id}/", tag = "evaluations",
    params(("review_id" = String, Path)), responses((status = 200, description = "The review"), (status = 404)))]
async fn get_review(State(state): State<AppState>, principal: Principal, Path(review_id): Path<String>) -> ApiResult<Json<Value>> {
    let review = state.control.review(&principal.organization_id, &review_id).await?;
    Ok(Json(review_json(&state, &review).await?))
}

/// Update a review's scores, comment, source or eval case.
#[utoipa::path(patch, path = "/api/tracing/reviews/{review_id}/", tag = "evaluations",
    params(("review_id" = String, Path)), request_body = ReviewIn,
    responses((status = 200, description = "The review"), (status = 400), (status = 404)))]
async fn update_review(
    State(state): State<AppState>,
    principal: Principal,
    Path(review_id): Path<String>,
    JsonBody(mut input): JsonBody<ReviewIn>,
) -> ApiResult<Json<Value>> {
    let org_id = &principal.organization_id;
    let current = state.control.review(org_id, &review_id).await?;
    let eval_id = match &input.eval {
        Some(named) => named.clone(),
        None => current.eval_id.clone(),
    };
    let case = match (&input.eval, &eval_id) {
        (Some(_), Some(id)) => Some(visible_eval_case(&state, org_id, id).await?),
        (None, Some(id)) => match state.control.eval_case(org_id, id).await {
            Ok(case) => Some(case),
            Err(StoreError::NotFound) => None,
            Err(err) => return Err(err.into()),
        },
        (_, None) => None,
    };
    // A new rubric applies to the scores the review keeps, too.
    if input.criterion_scores.is_none() && input.eval.is_some() {
        input.criterion_scores = Some(Value::Object(current.criterion_scores.clone()));
    }
    let scores = check_review(&state, &input, case.as_ref())?;
    let review = Review {
        source: input.source.unwrap_or(current.source.clone()),
        criterion_scores: scores.unwrap_or(current.criterion_scores.clone()),
        comment: input.comment.unwrap_or(current.comment.clone()),
        eval_id,
        updated_at: now_micros(),
        ..current
    };
    state.control.update_review(&review).await?;
    Ok(Json(review_json(&state, &review).await?))
}

// ---- eval cases ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalCaseIn {
    name: Option<String>,
    /// Any JSON: the input the agent is given.
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    /// Any JSON: what a good output contains.
    #[schema(value_type = Option<Object>)]
    expected: Option<Value>,
    /// A list of `{"criterion", "weight", "max", "description"}`; weight and max default to 1.
    #[schema(value_type = Option<Vec<Object>>)]
    rubric: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

fn eval_case_json(case: &EvalCase) -> Value {
    // Stored rubrics were checked on write; show them with their defaults filled in.
    let rubric = match bedrock_evals::parse_rubric(&case.rubric) {
        Ok(items) => Value::Array(items.iter().map(|item| item.to_json()).collect()),
        Err(_) => case.rubric.clone(),
    };
    json!({
        "id": case.id,
        "name": case.name,
        "input": case.input,
        "expected": case.expected,
        "rubric": rubric,
        "metadata": case.metadata,
        "created_at": format_micros(case.created_at),
        "updated_at": format_micros(case.updated_at),
    })
}

/// Checks an eval case's input and returns its metadata object when given.
fn check_eval_case(state: &AppState, input: &EvalCaseIn, partial: bool) -> ApiResult<Option<Map<String, Value>>> {
    let max_text = state.settings.max_text_field_bytes;
    let mut errors = FieldErrors::default();
    match &input.name {
        Some(name) if name.trim().is_empty() => errors.add("name", "This field may not be blank."),
        Some(name) if name.len() > MAX_NAME_BYTES => {
            errors.add("name", format!("Ensure this field has no more than {MAX_NAME_BYTES} bytes."))
        }
        Some(_) => {}
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    for (field, value) in [("input", &input.input), ("expected", &input.expected), ("rubric", &input.rubric), ("metadata", &input.metadata)] {
        if value_bytes(value.as_ref()) > max_text {
            errors.add(field, format!("Ensure this value serializes to no more than {max_text} bytes."));
        }
    }
    if let Some(rubric) = &input.rubric {
        if let Err(found) = bedrock_evals::parse_rubric(rubric) {
            add_errors(&mut errors, found);
        }
    }
    let metadata = match &input.metadata {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => {
            errors.add("metadata", "Expected an object.");
            None
        }
    };
    errors.finish()?;
    Ok(metadata)
}

/// Stores a rubric with its defaults filled in.
fn normalized_rubric(rubric: Option<Value>) -> Option<Value> {
    rubric.map(|rubric| match bedrock_evals::parse_rubric(&rubric) {
        Ok(items) => Value::Array(items.iter().map(|item| item.to_json()).collect()),
        Err(_) => rubric,
    })
}

/// List eval cases, oldest first, optionally only those with one `name`.
#[utoipa::path(get, path = "/api/tracing/evals/", tag = "evaluations",
    params(("name" = Option<String>, Query), ("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of eval cases")))]
async fn list_eval_cases(State(state): State<AppState>, principal: Principal, query: QueryPairs, url: RequestUrl) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let name = query.get("name").filter(|n| !n.is_empty());
    let page = state.control.eval_cases(&principal.organization_id, name, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(eval_case_json).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Create an eval case: a name, its input, the expected output and a rubric.
#[utoipa::path(post, path = "/api/tracing/evals/", tag = "evaluations", request_body = EvalCaseIn,
    responses((status = 201, description = "The eval case"), (status = 400)))]
async fn create_eval_case(State(state): State<AppState>, principal: Principal, JsonBody(input): JsonBody<EvalCaseIn>) -> ApiResult<Response> {
    let metadata = check_eval_case(&state, &input, false)?;
    let now = now_micros();
    let case = EvalCase {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        name: input.name.unwrap_or_default().trim().to_string(),
        input: input.input.unwrap_or(Value::Null),
        expected: input.expected.unwrap_or(Value::Null),
        rubric: normalized_rubric(input.rubric).filter(|r| !r.is_null()).unwrap_or_else(|| json!([])),
        metadata: metadata.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    state.control.insert_eval_case(&case).await?;
    tracing::info!(eval_id = %case.id, "eval case created");
    Ok((StatusCode::CREATED, Json(eval_case_json(&case))).into_response())
}

/// Get an eval case.
#[utoipa::path(get, path = "/api/tracing/evals/{eval_id}/", tag = "evaluations",
    params(("eval_id" = String, Path)), responses((status = 200, description = "The eval case"), (status = 404)))]
async fn get_eval_case(State(state): State<AppState>, principal: Principal, Path(eval_id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(eval_case_json(&state.control.eval_case(&principal.organization_id, &eval_id).await?)))
}

/// Update some fields of an eval case. A new rubric applies to its reviews' scores from then on.
#[utoipa::path(patch, path = "/api/tracing/evals/{eval_id}/", tag = "evaluations",
    params(("eval_id" = String, Path)), request_body = EvalCaseIn,
    responses((status = 200, description = "The eval case"), (status = 400), (status = 404)))]
async fn update_eval_case(
    State(state): State<AppState>,
    principal: Principal,
    Path(eval_id): Path<String>,
    JsonBody(input): JsonBody<EvalCaseIn>,
) -> ApiResult<Json<Value>> {
    let current = state.control.eval_case(&principal.organization_id, &eval_id).await?;
    let metadata = check_eval_case(&state, &input, true)?;
    let case = EvalCase {
        name: input.name.map(|n| n.trim().to_string()).unwrap_or(current.name.clone()),
        input: input.input.unwrap_or(current.input.clone()),
        expected: input.expected.unwrap_or(current.expected.clone()),
        rubric: normalized_rubric(input.rubric).map(|r| if r.is_null() { json!([]) } else { r }).unwrap_or(current.rubric.clone()),
        metadata: metadata.unwrap_or(current.metadata.clone()),
        updated_at: now_micros(),
        ..current
    };
    state.control.update_eval_case(&case).await?;
    Ok(Json(eval_case_json(&case)))
}

/// Delete an eval case. Its reviews stay, without an eval case.
#[utoipa::path(delete, path = "/api/tracing/evals/{eval_id}/", tag = "evaluations",
    params(("eval_id" = String, Path)), responses((status = 204), (status = 404)))]
async fn delete_eval_case(State(state): State<AppState>, principal: Principal, Path(eval_id): Path<String>) -> ApiResult<StatusCode> {
    state.control.delete_eval_case(&principal.organization_id, &eval_id).await?;
    tracing::info!(eval_id = %eval_id, "eval case deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- summaries ----

const SUMMARY_PARAMETERS: [&str; 8] = ["agent", "agent_tag", "agent_purpose", "scenario", "name", "start", "end", "group_by"];

/// Reads the summary filters and `group_by`, rejecting unknown parameters.
fn summary_request(query: &QueryPairs) -> ApiResult<(EvalFilter, Vec<EvalGroup>)> {
    let mut errors = FieldErrors::default();
    reject_unknown_parameters(query, &SUMMARY_PARAMETERS, &mut errors);
    let start = time_parameter(query, "start", &mut errors);
    let end = time_parameter(query, "end", &mut errors);
    let mut groups: Vec<EvalGroup> = Vec::new();
    for raw in query.all("group_by").flat_map(|v| v.split(',')).map(str::trim).filter(|k| !k.is_empty()) {
        match EvalGroup::parse(raw) {
            Some(group) if !groups.contains(&group) => groups.push(group),
            Some(_) => {}
            None => errors.add(
                "group_by",
                format!("\"{raw}\" is not a valid choice. Use any of: agent, agent_tag:<prefix>, scenario, name, day."),
            ),
        }
    }
    if let Some(purpose) = query.get("agent_purpose").filter(|p| !p.is_empty()) {
        if !PURPOSES.contains(&purpose) {
            errors.add("agent_purpose", format!("\"{purpose}\" is not a valid choice. Use one of: {}.", PURPOSES.join(", ")));
        }
    }
    errors.finish()?;
    let text = |key: &str| text_parameter(query, key);
    let filter = EvalFilter {
        agent: text("agent"),
        agent_tags: query.all("agent_tag").filter(|t| !t.is_empty()).map(str::to_string).collect(),
        agent_purpose: text("agent_purpose"),
        scenario: text("scenario"),
        name: text("name"),
        start,
        end,
    };
    Ok((filter, groups))
}

/// Checkpoint pass rates over any filter, overall and per group.
///
/// Filters: `agent`, `agent_tag` (repeatable, and the agent must have every
/// one), `agent_purpose`, `scenario` (checkpoint metadata) and `name` (the
/// checkpoint's name). `start` (inclusive) and `end` (exclusive) bound the
/// checkpoint's time. `group_by`: any of `agent`, `agent_tag:<prefix>`,
/// `scenario`, `name`, `day` (UTC), comma-separated.
#[utoipa::path(get, path = "/api/tracing/checkpoints/summary/", tag = "evaluations",
    params(("agent" = Option<String>, Query), ("agent_tag" = Option<Vec<String>>, Query), ("agent_purpose" = Option<String>, Query),
        ("scenario" = Option<String>, Query), ("name" = Option<String>, Query), ("start" = Option<String>, Query),
        ("end" = Option<String>, Query), ("group_by" = Option<String>, Query)),
    responses((status = 200, description = "`{totals, group_by, groups}`, each with `passed`, `total`, `pass_rate`"), (status = 400)))]
async fn checkpoint_summary(State(state): State<AppState>, principal: Principal, query: QueryPairs) -> ApiResult<Json<Value>> {
    let (filter, groups) = summary_request(&query)?;
    Ok(Json(queries(&state).checkpoint_summary(&principal.organization_id, &filter, &groups).await?))
}

/// Review scores over any filter, overall and per group.
///
/// It takes the filters and groups of the checkpoint summary. A review's
/// agent, name and time are those of the reviewed trace (its time is the
/// review's when the trace has none). Its scenario is the trace's
/// `metadata.scenario`, else its first checkpoint's. Each group has `review_count`,
/// `scored_count`, `mean_weighted_score`, `min`, `q1`, `median`, `q3`, `max`
/// and the mean of each criterion.
#[utoipa::path(get, path = "/api/tracing/reviews/summary/", tag = "evaluations",
    params(("agent" = Option<String>, Query), ("agent_tag" = Option<Vec<String>>, Query), ("agent_purpose" = Option<String>, Query),
        ("scenario" = Option<String>, Query), ("name" = Option<String>, Query), ("start" = Option<String>, Query),
        ("end" = Option<String>, Query), ("group_by" = Option<String>, Query)),
    responses((status = 200, description = "`{totals, group_by, groups}` of review scores"), (status = 400)))]
async fn review_summary(State(state): State<AppState>, principal: Principal, query: QueryPairs) -> ApiResult<Json<Value>> {
    let (filter, groups) = summary_request(&query)?;
    Ok(Json(queries(&state).review_summary(&principal.organization_id, &filter, &groups).await?))
}
