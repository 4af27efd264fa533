//! Request extractors that turn every malformed input into a DRF-style 400
//! naming the field, instead of axum's plain-text rejections.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{ApiError, FieldErrors};
use crate::time::parse_timestamp;

/// A JSON body deserialized into `T`. Unknown fields are ignored, as Django
/// REST Framework does.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = JsonValue::from_request(req, state).await?.0;
        Ok(JsonBody(from_value(value)?))
    }
}

/// A JSON body kept as a [`Value`], for handlers that validate by hand.
pub struct JsonValue(pub Value);

impl<S> FromRequest<S> for JsonValue
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        Ok(JsonValue(parse_json(&bytes)?))
    }
}

/// A JSON body that may be absent (an empty body), for action endpoints
/// such as `end/` and `flag/`.
pub struct OptionalJson(pub Option<Value>);

impl<S> FromRequest<S> for OptionalJson
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        Ok(OptionalJson(Some(parse_json(&bytes)?)))
    }
}

fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(json!({
            "detail": "Request body is larger than the server's limit (setting --max-body-bytes)."
        }))
    } else {
        ApiError::BadRequest(format!("Could not read the request body: {rejection}"))
    }
}

/// Parses a JSON document. Invalid UTF-8 is reported on the fields that hold it.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("JSON parse error - the request body is empty.".into()));
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(invalid_utf8_error(bytes));
    }
    serde_json::from_slice(bytes).map_err(|err| {
        let named = if err.to_string().starts_with("number out of range") {
            out_of_range_number_error(bytes)
        } else {
            non_finite_number_error(bytes)
        };
        named.unwrap_or_else(|| ApiError::BadRequest(format!("JSON parse error - {err}")))
    })
}

/// Most numbers too large for a double that one error report names.
const MAX_NAMED_NUMBERS: usize = 100;

/// Finds the fields that hold numbers too large for a double, such as
/// `1e400`, so the 400 names them.
fn out_of_range_number_error(bytes: &[u8]) -> Option<ApiError> {
    let mut text = std::str::from_utf8(bytes).ok()?.to_string();
    let is_number_byte = |b: u8| b.is_ascii_digit() || matches!(b, b'e' | b'E' | b'+' | b'-' | b'.');
    for _ in 0..MAX_NAMED_NUMBERS {
        let err = match serde_json::from_str::<Value>(&text) {
            Ok(value) => {
                let mut paths = Vec::new();
                find_strings(&value, String::new(), &|s| s == "\u{0}bedrock-out-of-range\u{0}", &mut paths);
                if paths.is_empty() {
                    return None;
                }
                let mut fields = BTreeMap::new();
                for path in paths {
                    fields.insert(path, vec!["This number is too large: send a finite number within the range of a double.".to_string()]);
                }
                return Some(ApiError::Validation(fields));
            }
            Err(err) if err.to_string().starts_with("number out of range") => err,
            Err(_) => return None,
        };
        // The error's line and column point into the number; widen to the whole token.
        let line_start: usize = text.split_inclusive('\n').take(err.line().saturating_sub(1)).map(str::len).sum();
        let position = (line_start + err.column().saturating_sub(1)).min(text.len().saturating_sub(1));
        let raw = text.as_bytes();
        let mut start = position;
        while start > 0 && is_number_byte(raw[start - 1]) {
            start -= 1;
        }
        let mut end = position;
        while end < raw.len() && is_number_byte(raw[end]) {
            end += 1;
        }
        if start >= end {
            return None;
        }
        text.replace_range(start..end, "\"\\u0000bedrock-out-of-range\\u0000\"");
    }
    None
}

const NON_FINITE_MARKER: &str = "\\u0000bedrock-non-finite\\u0000";

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity`, which JSON
/// does not allow. Finds the fields that hold them, so the 400 names them.
fn non_finite_number_error(bytes: &[u8]) -> Option<ApiError> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut rewritten = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    let mut found = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            rewritten.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|token| rest.starts_with(token));
        if let Some(token) = token {
            rewritten.push('"');
            rewritten.push_str(NON_FINITE_MARKER);
            rewritten.push('"');
            rest = &rest[token.len()..];
            found = true;
            continue;
        }
        rewritten.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !found {
        return None;
    }
    let value: Value = serde_json::from_str(&rewritten).ok()?;
    let mut paths = Vec::new();
    find_strings(&value, String::new(), &|s| s == "\u{0}bedrock-non-finite\u{0}", &mut paths);
    if paths.is_empty() {
        return None;
    }
    let mut fields = BTreeMap::new();
    for path in paths {
        fields.insert(path, vec!["NaN and Infinity are not valid JSON numbers; send a finite number or null.".to_string()]);
    }
    Some(ApiError::Validation(fields))
}

fn invalid_utf8_error(bytes: &[u8]) -> ApiError {
    let lossy = String::from_utf8_lossy(bytes);
    let mut fields = BTreeMap::new();
    if let Ok(value) = serde_json::from_str::<Value>(&lossy) {
        let mut paths = Vec::new();
        find_strings(&value, String::new(), &|s| s.contains('\u{FFFD}'), &mut paths);
        for path in paths {
            fields.insert(path, vec!["Invalid UTF-8: this field must be valid Unicode text.".to_string()]);
        }
    }
    if fields.is_empty() {
        return ApiError::BadRequest("JSON parse error - the request body is not valid UTF-8.".into());
    }
    ApiError::Validation(fields)
}

/// Collects the dotted paths of the strings (values or keys) that `matches`.
fn find_strings(value: &Value, path: String, matches: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match value {
        Value::String(text) if matches(text) => {
            out.push(if path.is_empty() { "non_field_errors".into() } else { path })
        }
        Value::Object(map) => {
            for (key, item) in map {
                let key_path = join(key);
                if matches(key) {
                    out.push(key_path.clone());
                }
                find_strings(item, key_path, matches, out);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                find_strings(item, join(&index.to_string()), matches, out);
            }
        }
        _ => {}
    }
}

/// Deserializes a value into `T`, naming the failing field the way DRF does.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::field(
            "non_field_errors",
            format!("Invalid data. Expected a JSON object, but got {}.", json_type_name(&value)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        // serde reports a missing field on the parent path with the field name in backticks.
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.trim_end_matches('`');
            let field = if path == "." { name.to_string() } else { format!("{path}.{name}") };
            return ApiError::required(field);
        }
        let field = if path == "." { "non_field_errors".to_string() } else { path };
        ApiError::field(field, describe_serde_error(&message))
    })
}

fn describe_serde_error(message: &str) -> String {
    // "invalid type: integer `5`, expected a string" reads fine; only strip serde's
    // position suffix, which refers to a re-serialized value, not the request.
    let message = message.split(" at line ").next().unwrap_or(message);
    let mut text = message.to_string();
    if let Some(first) = text.get(0..1) {
        text.replace_range(0..1, &first.to_uppercase());
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// The query string as ordered key/value pairs. Repeated keys are kept.
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
            .map(QueryPairs)
            .map_err(|err| ApiError::BadRequest(format!("Invalid query string: {err}")))
    }
}

/// Adds an error for each query parameter outside `allowed`.
pub fn reject_unknown_parameters(query: &QueryPairs, allowed: &[&str], errors: &mut FieldErrors) {
    for (key, _) in &query.0 {
        if !allowed.contains(&key.as_str()) {
            errors.add(key.clone(), format!("Unknown filter. Use one of: {}.", allowed.join(", ")));
        }
    }
}

/// Reads a non-empty text parameter.
pub fn text_parameter(query: &QueryPairs, key: &str) -> Option<String> {
    query.get(key).filter(|v| !v.is_empty()).map(str::to_string)
}

/// Reads an ISO 8601 time parameter as microseconds, adding an error when it
/// is not one.
pub fn time_parameter(query: &QueryPairs, key: &str, errors: &mut FieldErrors) -> Option<i64> {
    let raw = query.get(key).filter(|v| !v.is_empty())?;
    let micros = parse_timestamp(raw);
    if micros.is_none() {
        errors.add(key, "Datetime has wrong format. Use ISO 8601, e.g. 2026-03-01T00:00:00Z.");
    }
    micros
}

/// Page-number pagination as in DRF: `page` (from 1) and `page_size` (max 1000).
#[derive(Debug, Clone, Copy)]
pub struct PageParams {
    pub page: i64,
    pub page_size: i64,
}

pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 1000;

impl PageParams {
    pub fn from_query(query: &QueryPairs) -> Result<Self, ApiError> {
        let page = match query.get("page") {
            None | Some("") => 1,
            Some(raw) => match raw.parse::<i64>() {
                Ok(page) if page >= 1 => page,
                _ => return Err(ApiError::field("page", "A valid integer of 1 or more is required.")),
            },
        };
        let page_size = match query.get("page_size") {
            None | Some("") => DEFAULT_PAGE_SIZE,
            Some(raw) => match raw.parse::<i64>() {
                Ok(size) if (1..=MAX_PAGE_SIZE).contains(&size) => size,
                _ => {
                    return Err(ApiError::field(
                        "page_size",
                        format!("A valid integer between 1 and {MAX_PAGE_SIZE} is required."),
                    ))
                }
            },
        };
        Ok(PageParams { page, page_size })
    }

    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.page_size)
    }
}

/// Where a request was addressed, to build absolute `next` and `previous` links.
#[derive(Debug, Clone)]
pub struct RequestUrl {
    pub base: String,
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let query = serde_urlencoded::from_str::<Vec<(String, String)>>(parts.uri.query().unwrap_or(""))
            .unwrap_or_default();
        Ok(RequestUrl { base: format!("http://{host}"), path: parts.uri.path().to_string(), query })
    }
}

impl RequestUrl {
    /// This URL with `key` set to `value` (or removed when `value` is `None`).
    pub fn with(&self, key: &str, value: Option<String>) -> String {
        let mut query: Vec<(String, String)> = self.query.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(value) = value {
            query.push((key.to_string(), value));
        }
        let encoded = serde_urlencoded::to_string(&query).unwrap_or_default();
        if encoded.is_empty() {
            format!("{}{}", self.base, self.path)
        } else {
            format!("{}{}?{}", self.base, self.path, encoded)
        }
    }

    /// The `{count, next, previous, results}` envelope of a page-number list.
    /// A page past the last one is a 404, as in DRF.
    pub fn page(&self, params: PageParams, count: i64, results: Vec<Value>) -> Result<Value, ApiError> {
        let last_page = if count == 0 { 1 } else { (count + params.page_size - 1) / params.page_size };
        if params.page > last_page {
            return Err(ApiError::NotFoundDetail("Invalid page.".into()));
        }
        let next = (params.page < last_page).then(|| self.with("page", Some((params.page + 1).to_string())));
        let previous = (params.page > 1).then(|| {
            if params.page == 2 {
                self.with("page", None)
            } else {
                self.with("page", Some((params.page - 1).to_string()))
            }
        });
        Ok(json!({ "count": count, "next": next, "previous": previous, "results": results }))
    }
}

/// Deserializes a field that may be absent (`None`), null (`Some(None)`) or set.
pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Some)
}
