//! HTTP handlers, one module per part of the API.

pub mod agents;
pub mod organizations;
pub mod toolbox;
pub mod tracing;
pub mod usage;
