//! The store's error type, and the one place where sqlx errors are translated.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist, or is not visible to the caller.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the message names the value in plain words.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend cannot be reached right now; the request may be retried.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a broken invariant. Logged, never shown to callers.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn internal(err: impl fmt::Display) -> Self {
        StoreError::Internal(err.to_string())
    }
}

/// Translates a sqlx error by its kind and SQLSTATE: unique violations become
/// [`StoreError::Conflict`], connection failures [`StoreError::Unavailable`].
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                // 23505 is Postgres' unique_violation; SQLite reports 2067 (UNIQUE) or 1555 (PRIMARY KEY).
                let unique = db.is_unique_violation()
                    || matches!(db.code().as_deref(), Some("23505") | Some("2067") | Some("1555"));
                if unique {
                    return StoreError::Conflict(db.message().to_string());
                }
                // Class 08 is connection exceptions, 57P0x is admin shutdown,
                // 40001 and 40P01 are serialization failures and deadlocks.
                // SQLite's 5, 6 and 517 are SQLITE_BUSY, SQLITE_LOCKED and
                // SQLITE_BUSY_SNAPSHOT: all of them succeed when retried.
                if let Some(code) = db.code() {
                    let transient = code.starts_with("08")
                        || code.starts_with("57P")
                        || matches!(code.as_ref(), "40001" | "40P01" | "5" | "6" | "517");
                    if transient {
                        return StoreError::Unavailable(db.message().to_string());
                    }
                }
                StoreError::Internal(err.to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
            _ => StoreError::Internal(err.to_string()),
        }
    }
}
