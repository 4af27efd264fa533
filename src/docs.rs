//! The OpenAPI document at `/api/schema/` and the documentation pages at
//! `/api/docs/` (Swagger UI) and `/api/redoc/` (ReDoc), whose scripts and
//! styles are compiled into the binary so they render without internet access.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::OpenApi;

use crate::app::AppState;

const SWAGGER_HTML: &str = include_str!("../assets/swagger.html");
const REDOC_HTML: &str = include_str!("../assets/redoc.html");
const SWAGGER_JS: &str = include_str!("../assets/swagger-ui-bundle.js");
const SWAGGER_CSS: &str = include_str!("../assets/swagger-ui.css");
const REDOC_JS: &str = include_str!("../assets/redoc.standalone.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub fn router(openapi: Arc<OpenApi>) -> Router<AppState> {
    Router::new()
        .route("/api/schema/", get(move || async move { Json(openapi.as_ref().clone()) }))
        .route("/api/docs/", get(|| async { ([(CONTENT_TYPE, HTML)], SWAGGER_HTML).into_response() }))
        .route(
            "/api/docs/assets/swagger-ui-bundle.js",
            get(|| async { ([(CONTENT_TYPE, JAVASCRIPT)], SWAGGER_JS).into_response() }),
        )
        .route(
            "/api/docs/assets/swagger-ui.css",
            get(|| async { ([(CONTENT_TYPE, CSS)], SWAGGER_CSS).into_response() }),
        )
        .route("/api/redoc/", get(|| async { ([(CONTENT_TYPE, HTML)], REDOC_HTML).into_response() }))
        .route(
            "/api/redoc/assets/redoc.standalone.js",
            get(|| async { ([(CONTENT_TYPE, JAVASCRIPT)], REDOC_JS).into_response() }),
        )
}
