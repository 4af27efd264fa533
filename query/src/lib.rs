//! The read side: API views of traces and spans, and the queries over them.

pub mod table;
pub mod traces;
pub mod usage;
pub mod views;

pub use traces::{ListPage, QueryError, TraceQueries};
pub use usage::{UsageCursor, UsageFilter, UsageQueries};
