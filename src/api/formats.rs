//! Tabular responses for dashboards that load data frames directly: the rows of
//! a list or summary as Arrow IPC (`Accept: application/vnd.apache.arrow.stream`)
//! or as CSV (`?format=csv`), instead of the JSON envelope.
//!
//! Each column's type comes from its values: text, 64-bit integers, 64-bit
//! floats or booleans; objects and lists become their JSON text. A column
//! whose values are all null is text.

use std::sync::Arc;

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::extract::QueryPairs;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The representation a request selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    /// Reads `?format=` (json, csv or arrow), then the `Accept` header.
    pub fn of(query: &QueryPairs, headers: &HeaderMap) -> ApiResult<Format> {
        match query.get("format").unwrap_or_default() {
            "csv" => return Ok(Format::Csv),
            "arrow" => return Ok(Format::Arrow),
            "json" => return Ok(Format::Json),
            "" => {}
            other => {
                return Err(ApiError::field("format", format!("\"{other}\" is not a valid choice. Use json, csv or arrow.")))
            }
        }
        let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if accept.contains(ARROW_STREAM) {
            return Ok(Format::Arrow);
        }
        if accept.contains("text/csv") {
            return Ok(Format::Csv);
        }
        Ok(Format::Json)
    }
}

fn column_type(values: &[&Value]) -> DataType {
    let mut kind = DataType::Null;
    for value in values {
        let this = match value {
            Value::Null => continue,
            Value::Bool(_) => DataType::Boolean,
            Value::Number(n) if n.is_i64() => DataType::Int64,
            Value::Number(_) => DataType::Float64,
            _ => DataType::Utf8,
        };
        kind = match (&kind, &this) {
            (DataType::Null, _) => this,
            (a, b) if a == b => kind,
            (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64) => DataType::Float64,
            _ => DataType::Utf8,
        };
    }
    if kind == DataType::Null {
        DataType::Utf8
    } else {
        kind
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Builds one record batch from JSON objects, with `columns` in order.
pub fn to_batch(rows: &[Value], columns: &[&str]) -> ApiResult<RecordBatch> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for name in columns {
        let values: Vec<&Value> = rows.iter().map(|row| row.get(*name).unwrap_or(&Value::Null)).collect();
        let kind = column_type(&values);
        let array: ArrayRef = match kind {
            DataType::Boolean => Arc::new(values.iter().map(|v| v.as_bool()).collect::<BooleanArray>()),
            DataType::Int64 => Arc::new(values.iter().map(|v| v.as_i64()).collect::<Int64Array>()),
            DataType::Float64 => Arc::new(values.iter().map(|v| v.as_f64()).collect::<Float64Array>()),
            _ => Arc::new(values.iter().map(|v| text_of(v)).collect::<StringArray>()),
        };
        fields.push(Field::new(*name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|err| ApiError::Internal(err.to_string()))
}

/// Writes `rows` as CSV with a header line, or as an Arrow IPC stream.
pub fn tabular(format: Format, rows: &[Value], columns: &[&str]) -> ApiResult<Response> {
    let batch = to_batch(rows, columns)?;
    let mut body = Vec::new();
    let content_type = match format {
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut body);
            writer.write(&batch).map_err(|err| ApiError::Internal(err.to_string()))?;
            drop(writer);
            "text/csv; charset=utf-8"
        }
        Format::Arrow | Format::Json => {
            let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut body, &batch.schema())
                .map_err(|err| ApiError::Internal(err.to_string()))?;
            writer.write(&batch).map_err(|err| ApiError::Internal(err.to_string()))?;
            writer.finish().map_err(|err| ApiError::Internal(err.to_string()))?;
            drop(writer);
            ARROW_STREAM
        }
    };
    let mut response = body.into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// The columns of a trace in tabular responses.
pub const TRACE_COLUMNS: &[&str] = &[
    "id", "name", "agent_id", "started_at", "ended_at", "duration_ms", "status", "error", "span_count",
    "flagged_span_count", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "total_tokens",
    "cost_usd", "checkpoint_pass_rate", "created_at",
];

/// The columns of a usage record in tabular responses.
pub const USAGE_COLUMNS: &[&str] = &[
    "id", "agent_id", "trace_id", "span_id", "model", "input_tokens", "output_tokens", "cached_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "cost_usd_decimal", "cost_source", "timestamp", "source",
];

/// The total columns of a usage summary row.
pub const USAGE_TOTAL_COLUMNS: &[&str] = &[
    "record_count", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "total_tokens", "cost_usd",
    "cost_usd_decimal", "unpriced_count",
];
