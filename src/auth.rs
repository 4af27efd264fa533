//! Authentication: `Authorization: Bearer <API key>` or `Token <user token>`,
//! resolved through a short-lived cache so the ingest hot path does not query
//! the database on every request.
//!
//! The cache is cleared on this instance whenever a credential is revoked;
//! other instances sharing the database see a revocation once their entry
//! expires (setting `--auth-cache-seconds`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::crypto::hash_secret;
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    User { user_id: String, role: Role, is_admin: bool },
    ApiKey { key_id: String },
}

/// The authenticated caller: which organization it acts for, and as whom.
#[derive(Debug, Clone)]
pub struct Principal {
    pub organization_id: String,
    pub credential: Credential,
    /// Hash of the presented secret, to log out a user token.
    pub secret_hash: String,
}

impl Principal {
    /// Owners, admins and API keys may manage keys, invites, members and settings.
    pub fn require_manager(&self) -> Result<(), ApiError> {
        match &self.credential {
            Credential::ApiKey { .. } => Ok(()),
            Credential::User { role: Role::Owner | Role::Admin, .. } => Ok(()),
            Credential::User { .. } => Err(ApiError::forbidden()),
        }
    }

    /// Only an owner may delete the organization.
    pub fn require_owner(&self) -> Result<(), ApiError> {
        match &self.credential {
            Credential::User { role: Role::Owner, .. } => Ok(()),
            _ => Err(ApiError::forbidden()),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::User { user_id, .. } => Some(user_id),
            Credential::ApiKey { .. } => None,
        }
    }

    pub fn is_site_admin(&self) -> bool {
        matches!(self.credential, Credential::User { is_admin: true, .. })
    }
}

/// Resolved credentials by secret hash, each valid for a fixed time.
pub struct CredentialCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        CredentialCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(principal, _)| principal.clone())
    }

    fn insert(&self, hash: String, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the cache: drop expired entries when it grows large.
        if entries.len() > 100_000 {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// Forgets every cached credential; called on any revocation.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

const MISSING: &str = "Authentication credentials were not provided.";
const INVALID: &str = "Invalid token.";

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(MISSING))?
            .to_str()
            .map_err(|_| ApiError::Unauthorized(INVALID))?;
        let (scheme, secret) = header.trim().split_once(' ').ok_or(ApiError::Unauthorized(INVALID))?;
        let secret = secret.trim();
        if secret.is_empty() || !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) {
            return Err(ApiError::Unauthorized(INVALID));
        }
        resolve(state, secret).await?.ok_or(ApiError::Unauthorized(INVALID))
    }
}

/// Looks a secret up as an API key, then as a user token. Both schemes accept
/// both kinds of secret, so a client that picked the wrong word still works.
async fn resolve(state: &AppState, secret: &str) -> Result<Option<Principal>, ApiError> {
    let hash = hash_secret(secret);
    if let Some(principal) = state.auth_cache.get(&hash) {
        return Ok(Some(principal));
    }

    let control = &state.control;
    let principal = if let Some(key) = control.api_key_by_hash(&hash).await? {
        let now = crate::time::now_micros();
        let touch = control.clone();
        let key_id = key.id.clone();
        // last_used_at is refreshed on cache misses only, so at most once per cache period.
        tokio::spawn(async move {
            if let Err(err) = touch.touch_api_key(&key_id, now).await {
                tracing::warn!(api_key_id = %key_id, error = %err, "could not record API key use");
            }
        });
        Principal {
            organization_id: key.organization_id,
            credential: Credential::ApiKey { key_id: key.id },
            secret_hash: hash.clone(),
        }
    } else if let Some(user) = control.user_by_token(&hash).await? {
        Principal {
            organization_id: user.organization_id,
            credential: Credential::User {
                user_id: user.id,
                role: Role::parse(&user.role).unwrap_or(Role::Member),
                is_admin: user.is_admin,
            },
            secret_hash: hash.clone(),
        }
    } else {
        return Ok(None);
    };

    state.auth_cache.insert(hash, principal.clone());
    Ok(Some(principal))
}
