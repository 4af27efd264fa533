//! HTTP handlers, one module per part of the API.

pub mod agents;
pub mod batch;
pub mod evals;
pub mod formats;
pub mod organizations;
pub mod otlp;
pub mod toolbox;
pub mod trace_list;
pub mod tracing;
pub mod usage;
