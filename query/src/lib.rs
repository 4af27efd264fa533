//! The read side: API views of traces and spans, and the queries over them.

pub mod clickhouse;
pub mod evals;
pub mod fast;
pub mod prices;
pub mod table;
pub mod trace_list;
pub mod traces;
pub mod usage;
pub mod usage_sums;
pub mod views;

pub use evals::{EvalFilter, EvalGroup, EvalQueries};
pub use prices::Prices;
pub use traces::{ListPage, QueryError, TraceQueries};
pub use usage::{UsageCursor, UsageFilter, UsageQueries};
