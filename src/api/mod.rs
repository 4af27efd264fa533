//! HTTP handlers, one module per part of the API.

pub mod organizations;
pub mod tracing;
