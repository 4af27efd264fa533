//! The HTTP error type and the one place where errors become status codes and
//! Django REST Framework style bodies: `{"detail": "..."}`, or for validation
//! errors a map from field name to a list of messages.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bedrock_store::events::clickhouse::UNREACHABLE as CLICKHOUSE_UNREACHABLE;
use bedrock_store::StoreError;
use serde_json::{json, Value};

#[derive(Debug)]
pub enum ApiError {
    /// 400 with a map from field name to messages.
    Validation(BTreeMap<String, Vec<String>>),
    /// 400 with a `detail` message.
    BadRequest(String),
    /// 401: no credential, or one that is not valid.
    Unauthorized(&'static str),
    /// 403: a valid credential without the permission.
    Forbidden(String),
    /// 404: absent, or not visible to the caller.
    NotFound,
    /// 404 with a specific message, such as DRF's "Invalid page."
    NotFoundDetail(String),
    /// 404 for a field that refers to an object the caller cannot see, with
    /// the same body shape as a validation error.
    NotFoundFields(BTreeMap<String, Vec<String>>),
    /// 405 for a path that exists with another method.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict(String),
    /// 413: the body, or one field of it, is too large.
    PayloadTooLarge(Value),
    /// 503 with `Retry-After` in seconds: buffers full or a backend down.
    Unavailable { detail: String, retry_after_secs: u32 },
    /// 500: a bug. The cause is logged and never sent to the client.
    Internal(String),
}

impl ApiError {
    /// A validation error on one field.
    pub fn field(name: impl Into<String>, message: impl Into<String>) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(name.into(), vec![message.into()]);
        ApiError::Validation(fields)
    }

    pub fn required(name: impl Into<String>) -> Self {
        Self::field(name, "This field is required.")
    }

    /// Builds a 404 naming the field whose reference the caller cannot see.
    pub fn unknown_reference(name: impl Into<String>, message: impl Into<String>) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(name.into(), vec![message.into()]);
        ApiError::NotFoundFields(fields)
    }

    /// Maps a uniqueness conflict of the store to a validation error on
    /// `field`, and any other store error as usual.
    pub fn unique_field(field: &'static str, message: &'static str) -> impl Fn(StoreError) -> ApiError {
        move |err| match err {
            StoreError::Conflict(_) => ApiError::field(field, message),
            other => other.into(),
        }
    }

    pub fn forbidden() -> Self {
        ApiError::Forbidden("You do not have permission to perform this action.".into())
    }
}

/// Collects validation errors over several fields before failing once.
#[derive(Default, Debug)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reports whether `field` already has an error.
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// Fails with every collected error, or succeeds when there is none.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Unavailable(message) if message.starts_with(CLICKHOUSE_UNREACHABLE) => {
                tracing::warn!(error = %message, "event store unavailable");
                ApiError::Unavailable {
                    detail: "The event store (ClickHouse) is unreachable; retry shortly. Writes are still accepted until the server's buffer is full.".into(),
                    retry_after_secs: 5,
                }
            }
            StoreError::Unavailable(message) => {
                tracing::warn!(error = %message, "control-plane database unavailable");
                ApiError::Unavailable {
                    detail: "The database is unavailable; retry shortly.".into(),
                    retry_after_secs: 5,
                }
            }
            StoreError::Internal(message) => ApiError::Internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Validation(fields) => (StatusCode::BAD_REQUEST, json!(fields)),
            ApiError::BadRequest(detail) => (StatusCode::BAD_REQUEST, json!({ "detail": detail })),
            ApiError::Unauthorized(detail) => (StatusCode::UNAUTHORIZED, json!({ "detail": detail })),
            ApiError::Forbidden(detail) => (StatusCode::FORBIDDEN, json!({ "detail": detail })),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({ "detail": "Not found." })),
            ApiError::NotFoundDetail(detail) => (StatusCode::NOT_FOUND, json!({ "detail": detail })),
            ApiError::NotFoundFields(fields) => (StatusCode::NOT_FOUND, json!(fields)),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "detail": "Method not allowed on this path." }),
            ),
            ApiError::Conflict(detail) => (StatusCode::CONFLICT, json!({ "detail": detail })),
            ApiError::PayloadTooLarge(body) => {
                let mut response = (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
                // The rest of the body was never read, so the connection cannot
                // carry another request; saying so keeps clients off it.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            ApiError::Unavailable { detail, retry_after_secs } => {
                let mut response =
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "detail": detail }))).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return response;
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "detail": "Internal server error." }),
                )
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
