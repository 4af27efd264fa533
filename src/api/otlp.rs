//! `POST /v1/traces`: OTLP/HTTP trace export, so any OpenTelemetry exporter
//! can send spans without a bedrock client.
//!
//! The body is an `ExportTraceServiceRequest` in protobuf
//! (`application/x-protobuf`) or in OTLP's JSON encoding
//! (`application/json`), optionally with `Content-Encoding: gzip`. Its spans
//! are mapped by `bedrock_ingest::otlp` and written as one batch through the
//! same write-ahead log as the REST endpoints, so a 200 means they are
//! durable and visible. The response is an `ExportTraceServiceResponse` in
//! the request's encoding, with `partial_success` when spans were rejected.
//! Errors carry a `google.rpc.Status` in the request's encoding, as OTLP/HTTP
//! prescribes, and 503 keeps its `Retry-After`, which OTLP exporters honour.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bedrock_ingest::otlp::{self, Options};
use bedrock_store::events::model::Batch;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::tracing::limits;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::time::now_micros;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_traces))
}

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

// gRPC status codes for the `code` of a `google.rpc.Status` body.
const INVALID_ARGUMENT: i32 = 3;
const UNAUTHENTICATED: i32 = 16;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// A failed export: its HTTP status, message and optional `Retry-After`.
struct ExportError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u32>,
}

impl ExportError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ExportError { status, message: message.into(), retry_after_secs: None }
    }

    fn into_response(self, encoding: Encoding) -> Response {
        let code = match self.status {
            StatusCode::UNAUTHORIZED => UNAUTHENTICATED,
            StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE,
            status if status.is_server_error() => INTERNAL,
            _ => INVALID_ARGUMENT,
        };
        let mut response = match encoding {
            Encoding::Protobuf => protobuf_response(self.status, otlp::status_protobuf(code, &self.message)),
            Encoding::Json => {
                (self.status, axum::Json(json!({"code": code, "message": self.message}))).into_response()
            }
        };
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot
            // carry another request; saying so keeps clients off it.
            response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ApiError> for ExportError {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Unauthorized(detail) => ExportError::new(StatusCode::UNAUTHORIZED, detail),
            ApiError::Unavailable { detail, retry_after_secs } => ExportError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: detail,
                retry_after_secs: Some(retry_after_secs),
            },
            ApiError::BadRequest(detail) => ExportError::new(StatusCode::BAD_REQUEST, detail),
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                ExportError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
            }
            other => {
                tracing::error!(error = ?other, "unexpected error in an OTLP export");
                ExportError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
            }
        }
    }
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))], body).into_response()
}

/// Reads the encoding that `Content-Type` names. Parameters such as `charset` are ignored.
fn request_encoding(headers: &HeaderMap) -> Result<Encoding, ExportError> {
    let unsupported = |got: &str| {
        ExportError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {PROTOBUF} or {JSON}, got {got}."),
        )
    };
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported("none"));
    };
    let text = value.to_str().map_err(|_| unsupported("a value that is not ASCII"))?;
    let media_type = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media_type.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(unsupported(&format!("\"{text}\""))),
    }
}

/// Undoes the body's `Content-Encoding`. Gzip is inflated to at most
/// `limit` bytes, so a small compressed body cannot expand without bound.
fn decoded_body(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ExportError> {
    let encoding = match headers.get(CONTENT_ENCODING) {
        None => return Ok(body),
        Some(value) => value.to_str().unwrap_or_default().trim().to_ascii_lowercase(),
    };
    match encoding.as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut inflated = Vec::new();
            let mut decoder = flate2::read::MultiGzDecoder::new(body.as_ref()).take(limit as u64 + 1);
            decoder
                .read_to_end(&mut inflated)
                .map_err(|err| ExportError::new(StatusCode::BAD_REQUEST, format!("The body is not valid gzip: {err}.")))?;
            if inflated.len() > limit {
                return Err(ExportError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("The decompressed body is larger than the server's limit of {limit} bytes (setting --max-body-bytes)."),
                ));
            }
            Ok(Bytes::from(inflated))
        }
        other => Err(ExportError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding \"{other}\" is not supported; send gzip or no encoding."),
        )),
    }
}

fn body_error(rejection: BytesRejection) -> ExportError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ExportError::new(StatusCode::PAYLOAD_TOO_LARGE, "The request body is larger than the server's limit (setting --max-body-bytes).")
    } else {
        ExportError::new(StatusCode::BAD_REQUEST, format!("Could not read the request body: {rejection}"))
    }
}

/// A protobuf-encoded message, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct ProtobufMessage(Vec<u8>);

/// Export spans with OTLP/HTTP.
///
/// The body is an `ExportTraceServiceRequest` in protobuf or in OTLP's JSON
/// encoding, optionally gzip-compressed. Returns an
/// `ExportTraceServiceResponse` in the same encoding, with `partial_success`
/// counting the spans that were rejected and why.
#[utoipa::path(post, path = "/v1/traces", tag = "tracing",
    request_body(content(
        (ProtobufMessage = "application/x-protobuf"),
        (Object = "application/json"),
    ), description = "`ExportTraceServiceRequest`; `Content-Encoding: gzip` is accepted"),
    responses((status = 200, description = "`ExportTraceServiceResponse`, with `partial_success` when spans were rejected"),
        (status = 400, description = "The body cannot be decoded: `google.rpc.Status`"),
        (status = 401, description = "No or an invalid API key"),
        (status = 413, description = "The body, or its decompressed size, is over `--max-body-bytes`"),
        (status = 415, description = "Content-Type or Content-Encoding not supported"),
        (status = 503, description = "Busy; retry after `Retry-After` seconds")))]
async fn export_traces(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let encoding = request_encoding(&headers).unwrap_or(Encoding::Protobuf);
    match export(&state, principal, &headers, body).await {
        Ok(response) => match encoding {
            Encoding::Protobuf => protobuf_response(StatusCode::OK, otlp::response_protobuf(&response)),
            Encoding::Json => (StatusCode::OK, axum::Json(otlp::response_json(&response))).into_response(),
        },
        Err(err) => err.into_response(encoding),
    }
}

async fn export(
    state: &AppState,
    principal: Result<Principal, ApiError>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<otlp::ExportTraceServiceResponse, ExportError> {
    let principal = principal?;
    let encoding = request_encoding(headers)?;
    let body = decoded_body(headers, body.map_err(body_error)?, state.settings.max_body_bytes)?;
    let (request, mut rejections) = match encoding {
        Encoding::Protobuf => (otlp::decode_protobuf(&body), Vec::new()),
        Encoding::Json => match otlp::decode_json(&body) {
            Ok((request, rejections)) => (Ok(request), rejections),
            Err(message) => (Err(message), Vec::new()),
        },
    };
    let request = request.map_err(|message| ExportError::new(StatusCode::BAD_REQUEST, message))?;

    let received_at = now_micros();
    let options = Options { agent_attributes: state.settings.otlp_agent_attributes.clone(), limits: limits(state) };
    let conversion = otlp::convert(request, &options, received_at);
    rejections.extend(conversion.rejections);
    if !conversion.writes.is_empty() {
        let batch = Batch { organization_id: principal.organization_id.clone(), received_at, writes: conversion.writes };
        state.ingest.write(batch).await.map_err(ApiError::from)?;
    }
    tracing::debug!(
        organization_id = %principal.organization_id,
        spans = conversion.spans,
        traces = conversion.traces,
        rejected = rejections.len(),
        "OTLP export ingested"
    );
    Ok(otlp::response(&rejections))
}
