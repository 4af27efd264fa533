//! The write path: validation of trace and span writes, and the durable
//! pipeline that logs, applies and flushes them.

pub mod pipeline;
pub mod validate;

pub use pipeline::{IngestConfig, IngestError, Ingestor};
