//! Persistence for bedrock.
//!
//! - [`control`]: the control plane (organizations, users, credentials, invites)
//!   on SQLite or Postgres through one set of SQL statements.
//! - [`wal`]: the write-ahead log that makes acknowledged events durable.
//! - [`events`]: the embedded event store (in-memory buffer plus Parquet segments).

pub mod control;
pub mod error;
pub mod events;
pub mod time;
pub mod wal;

pub use error::StoreError;
