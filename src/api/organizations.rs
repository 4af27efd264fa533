//! `/api/organizations/`: sign-up and log-in, organizations, API keys,
//! members and invites.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bedrock_store::control::{ApiKey, Invite, InviteAcceptance, NewOrganization, NewUser, Organization, OrganizationUpdate, User};
use bedrock_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Credential, Principal, Role};
use crate::crypto::{generate_api_key, generate_token, hash_password, hash_secret, verify_password};
use crate::error::{ApiError, ApiResult, FieldErrors};
use crate::extract::{JsonBody, PageParams, QueryPairs, RequestUrl};
use crate::time::{format_micros, now_micros};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(logout))
        .routes(routes!(list_organizations))
        .routes(routes!(get_organization, replace_organization, update_organization, delete_organization))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(get_api_key, replace_api_key, update_api_key, delete_api_key))
        .routes(routes!(list_members))
        .routes(routes!(get_member, delete_member))
        .routes(routes!(list_invites, create_invite))
        .routes(routes!(revoke_invite))
        .routes(routes!(accept_invite))
}

// ---- response shapes ----

#[derive(Serialize, ToSchema)]
pub struct OrganizationOut {
    id: String,
    name: String,
    has_openai_api_key: bool,
    has_anthropic_api_key: bool,
    created_at: String,
    updated_at: String,
}

impl From<&Organization> for OrganizationOut {
    fn from(org: &Organization) -> Self {
        OrganizationOut {
            id: org.id.clone(),
            name: org.name.clone(),
            has_openai_api_key: org.openai_api_key_enc.is_some(),
            has_anthropic_api_key: org.anthropic_api_key_enc.is_some(),
            created_at: format_micros(org.created_at),
            updated_at: format_micros(org.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    id: String,
    email: String,
    name: String,
    role: String,
    is_admin: bool,
    organization_id: String,
    created_at: String,
}

impl From<&User> for UserOut {
    fn from(user: &User) -> Self {
        UserOut {
            id: user.id.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role.clone(),
            is_admin: user.is_admin,
            organization_id: user.organization_id.clone(),
            created_at: format_micros(user.created_at),
        }
    }
}

/// A session: the token to send as `Authorization: Token <token>`.
#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    token: String,
    user: UserOut,
    organization: OrganizationOut,
}

#[derive(Serialize, ToSchema)]
pub struct MeOut {
    /// Null when the caller authenticated with an API key.
    user: Option<UserOut>,
    organization: OrganizationOut,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyOut {
    id: String,
    name: String,
    prefix: String,
    created_at: String,
    last_used_at: Option<String>,
    /// The whole secret; present only in the create response.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl From<&ApiKey> for ApiKeyOut {
    fn from(key: &ApiKey) -> Self {
        ApiKeyOut {
            id: key.id.clone(),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            created_at: format_micros(key.created_at),
            last_used_at: key.last_used_at.map(format_micros),
            key: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct InviteOut {
    id: String,
    email: String,
    role: String,
    status: String,
    invited_by: Option<String>,
    created_at: String,
    expires_at: String,
}

fn invite_out(invite: &Invite, now: i64) -> InviteOut {
    let status = if invite.revoked_at.is_some() {
        "revoked"
    } else if invite.accepted_at.is_some() {
        "accepted"
    } else if invite.expires_at <= now {
        "expired"
    } else {
        "pending"
    };
    InviteOut {
        id: invite.id.clone(),
        email: invite.email.clone(),
        role: invite.role.clone(),
        status: status.into(),
        invited_by: invite.invited_by.clone(),
        created_at: format_micros(invite.created_at),
        expires_at: format_micros(invite.expires_at),
    }
}

pub(crate) fn to_json<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

// ---- request shapes and checks ----

#[derive(Deserialize, ToSchema)]
pub struct SignupIn {
    email: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
    /// Defaults to "<email>'s organization".
    #[serde(default)]
    organization_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginIn {
    email: String,
    password: String,
}

const MAX_NAME_CHARS: usize = 255;

fn normalize_email(errors: &mut FieldErrors, email: &str) -> String {
    let email = email.trim().to_lowercase();
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if !valid || email.len() > 254 {
        errors.add("email", "Enter a valid email address.");
    }
    email
}

fn check_password(errors: &mut FieldErrors, password: &str) {
    if password.chars().count() < 8 {
        errors.add("password", "Ensure this field has at least 8 characters.");
    }
    if password.len() > 1024 {
        errors.add("password", "Ensure this field has no more than 1024 bytes.");
    }
}

pub(crate) fn check_name(errors: &mut FieldErrors, field: &str, name: &str, required: bool) {
    if required && name.trim().is_empty() {
        errors.add(field, "This field may not be blank.");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        errors.add(field, format!("Ensure this field has no more than {MAX_NAME_CHARS} characters."));
    }
}

async fn hash_password_blocking(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|err| ApiError::Internal(err.to_string()))?
        .map_err(ApiError::Internal)
}

fn session(token: String, user: &User, org: &Organization) -> Value {
    to_json(SessionOut { token, user: user.into(), organization: org.into() })
}

// ---- auth ----

/// Create an organization, its owner and a user token.
#[utoipa::path(post, path = "/api/organizations/auth/signup/", tag = "organizations",
    request_body = SignupIn, responses((status = 201, body = SessionOut), (status = 400, description = "Validation error")))]
async fn signup(State(state): State<AppState>, JsonBody(body): JsonBody<SignupIn>) -> ApiResult<Response> {
    let mut errors = FieldErrors::default();
    let email = normalize_email(&mut errors, &body.email);
    check_password(&mut errors, &body.password);
    let name = body.name.unwrap_or_default();
    check_name(&mut errors, "name", &name, false);
    let org_name = body.organization_name.unwrap_or_else(|| format!("{email}'s organization"));
    check_name(&mut errors, "organization_name", &org_name, true);
    errors.finish()?;

    if state.control.user_by_email(&email).await?.is_some() {
        return Err(ApiError::field("email", "A user with this email already exists."));
    }
    let password_hash = hash_password_blocking(body.password).await?;
    let now = now_micros();
    let token = generate_token();
    let org = NewOrganization { id: uuid::Uuid::new_v4().to_string(), name: org_name, now };
    let org_id = org.id.clone();
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        email,
        name,
        password_hash,
        role: "owner".into(),
    };
    let user_id = user.id.clone();
    match state.control.sign_up(org, user, &hash_secret(&token)).await {
        Ok(()) => {}
        // Two sign-ups racing for one email: the database's unique index decides.
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::field("email", "A user with this email already exists."))
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(organization_id = %org_id, user_id = %user_id, "organization signed up");

    let user = state.control.member(&org_id, &user_id).await?;
    let org = state.control.organization(&org_id).await?;
    Ok((StatusCode::CREATED, Json(session(token, &user, &org))).into_response())
}

/// Log in with email and password and receive a new user token.
#[utoipa::path(post, path = "/api/organizations/auth/login/", tag = "organizations",
    request_body = LoginIn, responses((status = 200, body = SessionOut), (status = 400, description = "Wrong email or password")))]
async fn login(State(state): State<AppState>, JsonBody(body): JsonBody<LoginIn>) -> ApiResult<Json<Value>> {
    let email = body.email.trim().to_lowercase();
    let user = state.control.user_by_email(&email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let password = body.password;
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify_password(&password, &stored),
        None => {
            // Spend the same time on unknown emails so timing does not reveal which exist.
            let _ = hash_password(&password);
            false
        }
    })
    .await
    .map_err(|err| ApiError::Internal(err.to_string()))?;
    let user = match (user, matches) {
        (Some(user), true) => user,
        _ => {
            return Err(ApiError::field(
                "non_field_errors",
                "Unable to log in with provided credentials.",
            ))
        }
    };

    let token = generate_token();
    state.control.insert_token(&hash_secret(&token), &user.id, now_micros()).await?;
    let org = state.control.organization(&user.organization_id).await?;
    tracing::info!(user_id = %user.id, "user logged in");
    Ok(Json(session(token, &user, &org)))
}

/// The current user and organization.
#[utoipa::path(get, path = "/api/organizations/auth/me/", tag = "organizations",
    responses((status = 200, body = MeOut), (status = 401, description = "No valid credential")))]
async fn me(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    let org = state.control.organization(&principal.organization_id).await?;
    let user = match principal.user_id() {
        Some(user_id) => Some(UserOut::from(&state.control.member(&org.id, user_id).await?)),
        None => None,
    };
    Ok(Json(to_json(MeOut { user, organization: (&org).into() })))
}

/// Invalidate the user token of this request.
#[utoipa::path(post, path = "/api/organizations/auth/logout/", tag = "organizations",
    responses((status = 204, description = "Token invalidated"), (status = 400, description = "Not a user token")))]
async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<StatusCode> {
    if principal.user_id().is_none() {
        return Err(ApiError::BadRequest(
            "Log out applies to user tokens; revoke API keys through /api/organizations/api-keys/.".into(),
        ));
    }
    state.control.delete_token(&principal.secret_hash).await?;
    state.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

// ---- organizations ----

/// The organization of `id` if the caller may see it: its own, or any for a site administrator.
async fn visible_organization(state: &AppState, principal: &Principal, id: &str) -> ApiResult<Organization> {
    if id != principal.organization_id && !principal.is_site_admin() {
        return Err(ApiError::NotFound);
    }
    Ok(state.control.organization(id).await?)
}

/// List organizations: the caller's own, or all of them for a site administrator.
#[utoipa::path(get, path = "/api/organizations/organizations/", tag = "organizations",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of organizations")))]
async fn list_organizations(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let only = (!principal.is_site_admin()).then_some(principal.organization_id.as_str());
    let page = state.control.organizations(only, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|org| to_json(OrganizationOut::from(org))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Get an organization.
#[utoipa::path(get, path = "/api/organizations/organizations/{id}/", tag = "organizations",
    params(("id" = String, Path)), responses((status = 200, body = OrganizationOut), (status = 404)))]
async fn get_organization(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let org = visible_organization(&state, &principal, &id).await?;
    Ok(Json(to_json(OrganizationOut::from(&org))))
}

/// Body of an organization update. The provider keys are write-only: send a
/// string to set one, `null` or `""` to remove it.
#[derive(Deserialize, ToSchema, Default)]
pub struct OrganizationIn {
    name: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>)]
    openai_api_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>)]
    anthropic_api_key: Option<Option<String>>,
}

async fn write_organization(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: OrganizationIn,
    partial: bool,
) -> ApiResult<Json<Value>> {
    visible_organization(state, principal, id).await?;
    if !principal.is_site_admin() {
        principal.require_manager()?;
    }
    let mut errors = FieldErrors::default();
    match &body.name {
        Some(name) => check_name(&mut errors, "name", name, true),
        None if !partial => errors.add("name", "This field is required."),
        None => {}
    }
    for (field, value) in [("openai_api_key", &body.openai_api_key), ("anthropic_api_key", &body.anthropic_api_key)] {
        if let Some(Some(secret)) = value {
            if secret.len() > 4096 {
                errors.add(field, "Ensure this field has no more than 4096 bytes.");
            }
        }
    }
    errors.finish()?;

    let seal = |value: Option<Option<String>>| {
        value.map(|secret| secret.filter(|s| !s.is_empty()).map(|s| state.secret_box.encrypt(&s)))
    };
    let update = OrganizationUpdate {
        name: body.name.map(|n| n.trim().to_string()),
        openai_api_key_enc: seal(body.openai_api_key),
        anthropic_api_key_enc: seal(body.anthropic_api_key),
    };
    let org = state.control.update_organization(id, update, now_micros()).await?;
    tracing::info!(organization_id = %org.id, "organization updated");
    Ok(Json(to_json(OrganizationOut::from(&org))))
}

/// Replace an organization's settings.
#[utoipa::path(put, path = "/api/organizations/organizations/{id}/", tag = "organizations",
    params(("id" = String, Path)), request_body = OrganizationIn,
    responses((status = 200, body = OrganizationOut), (status = 400), (status = 403), (status = 404)))]
async fn replace_organization(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OrganizationIn>,
) -> ApiResult<Json<Value>> {
    write_organization(&state, &principal, &id, body, false).await
}

/// Update some of an organization's settings.
#[utoipa::path(patch, path = "/api/organizations/organizations/{id}/", tag = "organizations",
    params(("id" = String, Path)), request_body = OrganizationIn,
    responses((status = 200, body = OrganizationOut), (status = 400), (status = 403), (status = 404)))]
async fn update_organization(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OrganizationIn>,
) -> ApiResult<Json<Value>> {
    write_organization(&state, &principal, &id, body, true).await
}

/// Delete an organization with its users, keys and invites. Owners only.
#[utoipa::path(delete, path = "/api/organizations/organizations/{id}/", tag = "organizations",
    params(("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
async fn delete_organization(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    visible_organization(&state, &principal, &id).await?;
    if !principal.is_site_admin() {
        principal.require_owner()?;
    }
    state.control.delete_organization(&id).await?;
    state.auth_cache.clear();
    tracing::info!(organization_id = %id, "organization deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- API keys ----

#[derive(Deserialize, ToSchema)]
pub struct ApiKeyIn {
    name: Option<String>,
}

fn check_key_name(name: Option<String>, required: bool) -> ApiResult<Option<String>> {
    let mut errors = FieldErrors::default();
    match &name {
        Some(name) => check_name(&mut errors, "name", name, true),
        None if required => errors.add("name", "This field is required."),
        None => {}
    }
    errors.finish()?;
    Ok(name.map(|n| n.trim().to_string()))
}

/// List the organization's API keys (never their secrets).
#[utoipa::path(get, path = "/api/organizations/api-keys/", tag = "organizations",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of API keys")))]
async fn list_api_keys(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    principal.require_manager()?;
    let params = PageParams::from_query(&query)?;
    let page = state.control.api_keys(&principal.organization_id, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|key| to_json(ApiKeyOut::from(key))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Create an API key. The secret `key` appears in this response only.
#[utoipa::path(post, path = "/api/organizations/api-keys/", tag = "organizations",
    request_body = ApiKeyIn, responses((status = 201, body = ApiKeyOut), (status = 400), (status = 403)))]
async fn create_api_key(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<ApiKeyIn>,
) -> ApiResult<Response> {
    principal.require_manager()?;
    let name = check_key_name(body.name, true)?.unwrap_or_default();
    let (secret, prefix) = generate_api_key();
    let key = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        name,
        prefix,
        created_at: now_micros(),
        last_used_at: None,
    };
    state.control.create_api_key(&key, &hash_secret(&secret)).await?;
    tracing::info!(organization_id = %key.organization_id, api_key_id = %key.id, "API key created");
    let mut out = ApiKeyOut::from(&key);
    out.key = Some(secret);
    Ok((StatusCode::CREATED, Json(to_json(out))).into_response())
}

/// Get an API key (without its secret).
#[utoipa::path(get, path = "/api/organizations/api-keys/{id}/", tag = "organizations",
    params(("id" = String, Path)), responses((status = 200, body = ApiKeyOut), (status = 404)))]
async fn get_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    principal.require_manager()?;
    let key = state.control.api_key(&principal.organization_id, &id).await?;
    Ok(Json(to_json(ApiKeyOut::from(&key))))
}

/// Rename an API key.
#[utoipa::path(put, path = "/api/organizations/api-keys/{id}/", tag = "organizations",
    params(("id" = String, Path)), request_body = ApiKeyIn, responses((status = 200, body = ApiKeyOut), (status = 400), (status = 404)))]
async fn replace_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ApiKeyIn>,
) -> ApiResult<Json<Value>> {
    rename_api_key(&state, &principal, &id, body, true).await
}

/// Rename an API key.
#[utoipa::path(patch, path = "/api/organizations/api-keys/{id}/", tag = "organizations",
    params(("id" = String, Path)), request_body = ApiKeyIn, responses((status = 200, body = ApiKeyOut), (status = 400), (status = 404)))]
async fn update_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ApiKeyIn>,
) -> ApiResult<Json<Value>> {
    rename_api_key(&state, &principal, &id, body, false).await
}

async fn rename_api_key(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: ApiKeyIn,
    required: bool,
) -> ApiResult<Json<Value>> {
    principal.require_manager()?;
    let key = match check_key_name(body.name, required)? {
        Some(name) => state.control.rename_api_key(&principal.organization_id, id, &name).await?,
        None => state.control.api_key(&principal.organization_id, id).await?,
    };
    Ok(Json(to_json(ApiKeyOut::from(&key))))
}

/// Revoke an API key: it stops authenticating at once on this instance.
#[utoipa::path(delete, path = "/api/organizations/api-keys/{id}/", tag = "organizations",
    params(("id" = String, Path)), responses((status = 204), (status = 404)))]
async fn delete_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require_manager()?;
    state.control.revoke_api_key(&principal.organization_id, &id, now_micros()).await?;
    state.auth_cache.clear();
    tracing::info!(organization_id = %principal.organization_id, api_key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

// ---- members ----

/// List the organization's members.
#[utoipa::path(get, path = "/api/organizations/members/", tag = "organizations",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of members")))]
async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let params = PageParams::from_query(&query)?;
    let page = state.control.members(&principal.organization_id, params.page_size, params.offset()).await?;
    let results = page.rows.iter().map(|user| to_json(UserOut::from(user))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Get a member.
#[utoipa::path(get, path = "/api/organizations/members/{user_id}/", tag = "organizations",
    params(("user_id" = String, Path)), responses((status = 200, body = UserOut), (status = 404)))]
async fn get_member(
    State(state): State<AppState>,
    principal: Principal,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let user = state.control.member(&principal.organization_id, &user_id).await?;
    Ok(Json(to_json(UserOut::from(&user))))
}

/// Remove a member. Nobody can remove themself, and the last owner stays.
#[utoipa::path(delete, path = "/api/organizations/members/{user_id}/", tag = "organizations",
    params(("user_id" = String, Path)), responses((status = 204), (status = 400), (status = 403), (status = 404), (status = 409)))]
async fn delete_member(
    State(state): State<AppState>,
    principal: Principal,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let target = state.control.member(&principal.organization_id, &user_id).await?;
    if principal.user_id() == Some(target.id.as_str()) {
        return Err(ApiError::BadRequest("You cannot remove yourself from the organization.".into()));
    }
    principal.require_manager()?;
    let caller_is_owner = matches!(principal.credential, Credential::User { role: Role::Owner, .. });
    if target.role == "owner" && !caller_is_owner {
        return Err(ApiError::Forbidden("Only an owner can remove another owner.".into()));
    }
    match state.control.remove_member(&principal.organization_id, &user_id).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict("The organization's last owner cannot be removed.".into()))
        }
        Err(err) => return Err(err.into()),
    }
    state.auth_cache.clear();
    tracing::info!(organization_id = %principal.organization_id, user_id = %user_id, "member removed");
    Ok(StatusCode::NO_CONTENT)
}

// ---- invites ----

#[derive(Deserialize, ToSchema)]
pub struct InviteIn {
    email: String,
    /// `owner`, `admin` or `member` (the default).
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct AcceptIn {
    password: String,
    #[serde(default)]
    name: Option<String>,
}

/// List pending invites.
#[utoipa::path(get, path = "/api/organizations/invites/", tag = "organizations",
    params(("page" = Option<i64>, Query), ("page_size" = Option<i64>, Query)),
    responses((status = 200, description = "Paginated list of pending invites")))]
async fn list_invites(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryPairs,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    principal.require_manager()?;
    let params = PageParams::from_query(&query)?;
    let now = now_micros();
    let page = state
        .control
        .pending_invites(&principal.organization_id, now, params.page_size, params.offset())
        .await?;
    let results = page.rows.iter().map(|invite| to_json(invite_out(invite, now))).collect();
    Ok(Json(url.page(params, page.count, results)?))
}

/// Invite an email address with a role. The invite's id is what the invitee
/// sends to the accept endpoint, so it is shared with them only.
#[utoipa::path(post, path = "/api/organizations/invites/", tag = "organizations",
    request_body = InviteIn, responses((status = 201, body = InviteOut), (status = 400), (status = 403)))]
async fn create_invite(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<InviteIn>,
) -> ApiResult<Response> {
    principal.require_manager()?;
    let mut errors = FieldErrors::default();
    let email = normalize_email(&mut errors, &body.email);
    let role = body.role.unwrap_or_else(|| "member".into());
    match Role::parse(&role) {
        None => errors.add("role", format!("\"{role}\" is not a valid choice: use owner, admin or member.")),
        Some(Role::Owner) if !matches!(principal.credential, Credential::User { role: Role::Owner, .. }) => {
            return Err(ApiError::Forbidden("Only an owner can invite another owner.".into()))
        }
        Some(_) => {}
    }
    errors.finish()?;
    if state.control.user_by_email(&email).await?.is_some() {
        return Err(ApiError::field("email", "A user with this email already exists."));
    }

    let now = now_micros();
    let invite = Invite {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: principal.organization_id.clone(),
        email,
        role,
        invited_by: principal.user_id().map(str::to_string),
        created_at: now,
        expires_at: now + state.settings.invite_ttl_hours.max(0) * 3_600_000_000,
        accepted_at: None,
        revoked_at: None,
    };
    state.control.create_invite(&invite).await?;
    tracing::info!(organization_id = %invite.organization_id, invite_id = %invite.id, "invite created");
    Ok((StatusCode::CREATED, Json(to_json(invite_out(&invite, now)))).into_response())
}

/// Revoke a pending invite.
#[utoipa::path(delete, path = "/api/organizations/invites/{id}/", tag = "organizations",
    params(("id" = String, Path)), responses((status = 204), (status = 404)))]
async fn revoke_invite(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require_manager()?;
    state.control.revoke_invite(&principal.organization_id, &id, now_micros()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invite: creates the account with the given password and returns
/// a user token. Needs no credential; the invite id is the proof.
#[utoipa::path(post, path = "/api/organizations/invites/{id}/accept/", tag = "organizations",
    params(("id" = String, Path)), request_body = AcceptIn,
    responses((status = 201, body = SessionOut), (status = 400), (status = 404)))]
async fn accept_invite(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AcceptIn>,
) -> ApiResult<Response> {
    let mut errors = FieldErrors::default();
    check_password(&mut errors, &body.password);
    let name = body.name.unwrap_or_default();
    check_name(&mut errors, "name", &name, false);
    errors.finish()?;

    let password_hash = hash_password_blocking(body.password).await?;
    let token = generate_token();
    let now = now_micros();
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        email: String::new(),
        name,
        password_hash,
        role: String::new(),
    };
    let user_id = user.id.clone();
    let outcome = match state.control.accept_invite(&id, user, &hash_secret(&token), now).await {
        Ok(outcome) => outcome,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::BadRequest("A user with this invite's email already exists.".into()))
        }
        Err(err) => return Err(err.into()),
    };
    let org_id = match outcome {
        InviteAcceptance::Accepted { organization_id } => organization_id,
        InviteAcceptance::Expired => return Err(ApiError::BadRequest("This invite has expired.".into())),
        InviteAcceptance::Revoked => return Err(ApiError::BadRequest("This invite has been revoked.".into())),
        InviteAcceptance::AlreadyUsed => {
            return Err(ApiError::BadRequest("This invite has already been used.".into()))
        }
    };
    tracing::info!(organization_id = %org_id, user_id = %user_id, invite_id = %id, "invite accepted");
    let user = state.control.member(&org_id, &user_id).await?;
    let org = state.control.organization(&org_id).await?;
    Ok((StatusCode::CREATED, Json(session(token, &user, &org))).into_response())
}
