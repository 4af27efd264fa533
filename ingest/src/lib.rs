//! The write path: validation of trace and span writes, the mapping of OTLP
//! trace exports to them, and the durable pipeline that logs, applies and
//! flushes them.

pub mod otlp;
pub mod pipeline;
pub mod validate;

pub use pipeline::{IngestConfig, IngestError, Ingestor};
