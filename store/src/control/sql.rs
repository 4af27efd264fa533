//! Helpers for statements assembled from fixed SQL fragments: numbered
//! placeholders, bound values and JSON columns stored as text.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ControlPlane, Page};
use crate::StoreError;

pub(super) fn json_column(row: &AnyRow, column: &str) -> Result<Value, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|err| StoreError::Internal(format!("column {column} contains invalid JSON: {err}")))
}

/// A value bound to a numbered placeholder of a statement assembled from
/// fixed fragments.
#[derive(Debug, Clone)]
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause assembled from fixed SQL fragments with numbered
/// placeholders; the values are always bound, never spliced into the text.
#[derive(Debug, Default)]
pub(super) struct Conditions {
    pub clauses: Vec<String>,
    pub binds: Vec<Bind>,
}

impl Conditions {
    /// Adds `fragment`, in which every `?` stands for the next of `values`.
    pub fn push(&mut self, fragment: &str, values: impl IntoIterator<Item = Bind>) {
        let mut text = String::new();
        let mut values = values.into_iter();
        for piece in fragment.split_inclusive('?') {
            match piece.strip_suffix('?') {
                Some(head) => {
                    let value = values.next().expect("one value per placeholder");
                    self.binds.push(value);
                    text.push_str(head);
                    text.push_str(&format!("${}", self.binds.len()));
                }
                None => text.push_str(piece),
            }
        }
        self.clauses.push(text);
    }

    pub fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }

    /// Returns the placeholder number of the next bound value.
    pub fn next_placeholder(&self) -> usize {
        self.binds.len() + 1
    }
}

pub(super) fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for value in binds {
        query = match value {
            Bind::Text(text) => query.bind(text.as_str()),
            Bind::Int(number) => query.bind(*number),
        };
    }
    query
}

pub(super) fn bind_all_scalar<'q, O>(
    mut query: sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    binds: &'q [Bind],
) -> sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    for value in binds {
        query = match value {
            Bind::Text(text) => query.bind(text.as_str()),
            Bind::Int(number) => query.bind(*number),
        };
    }
    query
}

/// Runs a counted, paginated `SELECT` of `columns` from `table` under `conditions`.
pub(super) async fn select_page<T>(
    control: &ControlPlane,
    table: &str,
    columns: &str,
    conditions: &Conditions,
    limit: i64,
    offset: i64,
    decode: fn(&AnyRow) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let count_sql = format!("SELECT COUNT(*) FROM {table} WHERE {}", conditions.sql());
    let count: i64 = bind_all_scalar(sqlx::query_scalar(&count_sql), &conditions.binds).fetch_one(control.pool()).await?;
    let n = conditions.next_placeholder();
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE {} ORDER BY created_at, id LIMIT ${} OFFSET ${}",
        conditions.sql(),
        n,
        n + 1
    );
    let rows = bind_all(sqlx::query(&sql), &conditions.binds).bind(limit).bind(offset).fetch_all(control.pool()).await?;
    let rows = rows.iter().map(decode).collect::<Result<_, _>>()?;
    Ok(Page { count, rows })
}

pub(super) async fn select_one<T>(
    control: &ControlPlane,
    table: &str,
    columns: &str,
    org_id: &str,
    id: &str,
    decode: fn(&AnyRow) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sql = format!("SELECT {columns} FROM {table} WHERE organization_id = $1 AND id = $2");
    match sqlx::query(&sql).bind(org_id).bind(id).fetch_optional(control.pool()).await? {
        Some(row) => decode(&row),
        None => Err(StoreError::NotFound),
    }
}

pub(super) async fn delete_one(control: &ControlPlane, table: &str, org_id: &str, id: &str) -> Result<(), StoreError> {
    let sql = format!("DELETE FROM {table} WHERE organization_id = $1 AND id = $2");
    let done = sqlx::query(&sql).bind(org_id).bind(id).execute(control.pool()).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) fn organization_conditions(org_id: &str) -> Conditions {
    let mut conditions = Conditions::default();
    conditions.push("organization_id = ?", [Bind::Text(org_id.into())]);
    conditions
}
