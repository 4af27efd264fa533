//! The typed columns of ClickHouse's `objects` table as a DataFusion table,
//! so the plans of [`crate::fast`] run on ClickHouse as they run on segments.
//!
//! The table sends its projection, its limit and every filter it can
//! translate to ClickHouse as SQL, and DataFusion applies the rest to the
//! rows that come back. Sorts and aggregations are not table-provider
//! operations in DataFusion: the queries that need them on ClickHouse send
//! their own SQL (see [`crate::usage`]'s summary).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bedrock_store::events::clickhouse::{object_schema, ClickHouseTier, ObjectSelect, SqlValue, OBJECT_COLUMNS};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

/// The objects of one kind of one organization in ClickHouse, minus the
/// `skipped` ids, whose merged states the caller holds.
pub struct ObjectsTable {
    tier: ClickHouseTier,
    organization_id: String,
    kind: &'static str,
    skipped: Vec<String>,
    traces: Option<Vec<String>>,
    merged: bool,
    schema: SchemaRef,
}

impl fmt::Debug for ObjectsTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectsTable").field("organization_id", &self.organization_id).field("kind", &self.kind).finish()
    }
}

/// The columns the table exposes.
const COLUMNS: &[&str] = &OBJECT_COLUMNS;

impl ObjectsTable {
    /// Creates the table. `merged` is whether some object has rows merged
    /// from several flushes, as in [`bedrock_store::events::FastScan::merged`].
    pub fn new(tier: ClickHouseTier, organization_id: &str, kind: &'static str, skipped: Vec<String>, merged: bool) -> ObjectsTable {
        ObjectsTable {
            tier,
            organization_id: organization_id.to_string(),
            kind,
            skipped,
            traces: None,
            merged,
            schema: object_schema(COLUMNS),
        }
    }

    /// Keeps only the spans of `trace_ids`, found through ClickHouse's
    /// `trace_spans` table rather than by reading every span's trace id.
    pub fn of_traces(mut self, trace_ids: &[&str]) -> ObjectsTable {
        self.traces = Some(trace_ids.iter().map(|id| id.to_string()).collect());
        self
    }
}

/// Translates a filter to ClickHouse SQL over the table's columns, with a
/// `?` for each value pushed to `params`. Returns `None` for anything it does
/// not translate with the same meaning, which DataFusion then evaluates.
/// Column names come from the table's own list, never from the request.
fn to_sql(expr: &Expr, params: &mut Vec<SqlValue>) -> Option<String> {
    match expr {
        Expr::Column(column) => COLUMNS.iter().find(|name| **name == column.name).map(|name| name.to_string()),
        Expr::Literal(value, _) => {
            params.push(literal(value)?);
            Some("?".to_string())
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let op = match op {
                Operator::Eq => "=",
                Operator::NotEq => "!=",
                Operator::Lt => "<",
                Operator::LtEq => "<=",
                Operator::Gt => ">",
                Operator::GtEq => ">=",
                Operator::And => "AND",
                Operator::Or => "OR",
                _ => return None,
            };
            // A flag compares as ClickHouse's 0 or 1, since `literal` binds booleans as integers.
            let left = to_sql(left, params)?;
            let right = to_sql(right, params)?;
            Some(format!("({left} {op} {right})"))
        }
        Expr::Not(inner) => Some(format!("(NOT {})", to_sql(inner, params)?)),
        Expr::IsNull(inner) => Some(format!("isNull({})", to_sql(inner, params)?)),
        Expr::IsNotNull(inner) => Some(format!("isNotNull({})", to_sql(inner, params)?)),
        // A null flag is neither true nor false, as in DataFusion.
        Expr::IsTrue(inner) => Some(format!("({} = 1)", to_sql(inner, params)?)),
        Expr::IsFalse(inner) => Some(format!("({} = 0)", to_sql(inner, params)?)),
        Expr::Cast(cast) if is_text(cast.field.data_type()) => to_sql(&cast.expr, params),
        Expr::InList(list) => {
            let column = to_sql(&list.expr, params)?;
            let mut texts = Vec::with_capacity(list.list.len());
            for item in &list.list {
                match item {
                    Expr::Literal(value, _) => match literal(value)? {
                        SqlValue::Text(text) => texts.push(text),
                        _ => return None,
                    },
                    _ => return None,
                }
            }
            if texts.is_empty() {
                return None;
            }
            params.push(SqlValue::Texts(texts));
            let not = if list.negated { "NOT " } else { "" };
            Some(format!("({column} {not}IN (SELECT arrayJoin(?)))"))
        }
        // ClickHouse's LIKE escapes `%`, `_` and `\` with a backslash, as the
        // patterns of the trace list do.
        Expr::Like(like) if !like.case_insensitive && like.escape_char == Some('\\') => {
            let column = to_sql(&like.expr, params)?;
            let pattern = to_sql(&like.pattern, params)?;
            let not = if like.negated { "NOT " } else { "" };
            Some(format!("({column} {not}LIKE {pattern})"))
        }
        _ => None,
    }
}

fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => is_text(value),
        _ => false,
    }
}

fn literal(value: &ScalarValue) -> Option<SqlValue> {
    match value {
        ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)) => {
            Some(SqlValue::Text(text.clone()))
        }
        ScalarValue::Dictionary(_, inner) => literal(inner),
        ScalarValue::Int64(Some(v)) => Some(SqlValue::Int(*v)),
        ScalarValue::Int32(Some(v)) => Some(SqlValue::Int(i64::from(*v))),
        ScalarValue::UInt32(Some(v)) => Some(SqlValue::Int(i64::from(*v))),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok().map(SqlValue::Int),
        ScalarValue::Boolean(Some(v)) => Some(SqlValue::Int(i64::from(*v))),
        ScalarValue::Float64(Some(v)) if v.is_finite() => Some(SqlValue::Float(*v)),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for ObjectsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                if to_sql(filter, &mut Vec::new()).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    /// Runs the query in ClickHouse and serves its rows from memory.
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<&'static str> = match projection {
            Some(indexes) => indexes.iter().map(|index| COLUMNS[*index]).collect(),
            None => COLUMNS.to_vec(),
        };
        let mut params = Vec::new();
        let conditions: Vec<String> = filters.iter().filter_map(|filter| to_sql(filter, &mut params)).collect();
        let select = ObjectSelect {
            organization_id: self.organization_id.clone(),
            kind: self.kind,
            columns: columns.clone(),
            condition: (!conditions.is_empty()).then(|| conditions.join(" AND ")),
            params,
            skipped: self.skipped.clone(),
            traces: self.traces.clone(),
            merged: self.merged,
            limit,
        };
        let batch = self.tier.select_objects(&select).await.map_err(|err| DataFusionError::External(Box::new(err)))?;
        let schema = batch.schema();
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn filters_translate_with_bound_values() {
        let mut params = Vec::new();
        let expr = col("agent_id").eq(lit("a'b")).and(col("started_at").gt(lit(5i64)));
        assert_eq!(to_sql(&expr, &mut params).unwrap(), "((agent_id = ?) AND (started_at > ?))");
        assert_eq!(params, vec![SqlValue::Text("a'b".into()), SqlValue::Int(5)]);

        let mut params = Vec::new();
        let expr = col("trace_id").in_list(vec![lit("x"), lit("y")], true);
        assert_eq!(to_sql(&expr, &mut params).unwrap(), "(trace_id NOT IN (SELECT arrayJoin(?)))");
        assert_eq!(params, vec![SqlValue::Texts(vec!["x".into(), "y".into()])]);
    }

    #[test]
    fn unknown_columns_and_functions_stay_in_datafusion() {
        assert!(to_sql(&col("state").eq(lit("x")), &mut Vec::new()).is_none());
        assert!(to_sql(&(col("started_at") + lit(1i64)).gt(lit(5i64)), &mut Vec::new()).is_none());
        assert!(to_sql(&col("started_at").eq(lit(f64::NAN)), &mut Vec::new()).is_none());
    }
}
