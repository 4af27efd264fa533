//! Time helpers, shared with the store.

pub use bedrock_store::time::{format_micros, now_micros, parse_timestamp};
