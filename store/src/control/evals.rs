//! Eval cases and trace reviews, and the agent facts the eval dashboards
//! join them with.
//!
//! Scores and rubrics are stored as the client sent them (validated); the
//! weighted score and pass rate are computed on read by the `evals` rules.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::{json_column, organization_conditions, select_one, select_page, Bind};
use super::{ControlPlane, Page};
use crate::StoreError;

#[derive(Debug, Clone)]
pub struct EvalCase {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub input: Value,
    pub expected: Value,
    /// A list of `{"criterion", "weight", "max", "description"}`.
    pub rubric: Value,
    pub metadata: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Review {
    pub id: String,
    pub organization_id: String,
    pub trace_id: String,
    /// The user who wrote it; `None` for an API key, or once the user is removed.
    pub reviewer_id: Option<String>,
    /// `human` or `automated`.
    pub source: String,
    pub criterion_scores: Map<String, Value>,
    pub comment: String,
    pub eval_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The facts about one agent that the eval dashboards need.
#[derive(Debug, Clone)]
pub struct AgentFacts {
    pub id: String,
    pub purpose: String,
    pub tags: Vec<String>,
}

fn eval_case_from_row(row: &AnyRow) -> Result<EvalCase, StoreError> {
    let metadata = match json_column(row, "metadata")? {
        Value::Object(map) => map,
        _ => return Err(StoreError::Internal("eval_cases.metadata contains JSON that is not an object".into())),
    };
    Ok(EvalCase {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        input: json_column(row, "input")?,
        expected: json_column(row, "expected")?,
        rubric: json_column(row, "rubric")?,
        metadata,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn review_from_row(row: &AnyRow) -> Result<Review, StoreError> {
    let criterion_scores = match json_column(row, "criterion_scores")? {
        Value::Object(map) => map,
        _ => return Err(StoreError::Internal("trace_reviews.criterion_scores contains JSON that is not an object".into())),
    };
    Ok(Review {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        trace_id: row.try_get("trace_id")?,
        reviewer_id: row.try_get("reviewer_id")?,
        source: row.try_get("source")?,
        criterion_scores,
        comment: row.try_get("comment")?,
        eval_id: row.try_get("eval_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const EVAL_CASE_COLUMNS: &str = "id, organization_id, name, input, expected, rubric, metadata, created_at, updated_at";
const REVIEW_COLUMNS: &str =
    "id, organization_id, trace_id, reviewer_id, source, criterion_scores, comment, eval_id, created_at, updated_at";

impl ControlPlane {
    // ---- eval cases ----

    pub async fn insert_eval_case(&self, case: &EvalCase) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO eval_cases (id, organization_id, name, input, expected, rubric, metadata, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&case.id)
        .bind(&case.organization_id)
        .bind(&case.name)
        .bind(case.input.to_string())
        .bind(case.expected.to_string())
        .bind(case.rubric.to_string())
        .bind(Value::Object(case.metadata.clone()).to_string())
        .bind(case.created_at)
        .bind(case.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn update_eval_case(&self, case: &EvalCase) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE eval_cases SET name = $1, input = $2, expected = $3, rubric = $4, metadata = $5, updated_at = $6 \
             WHERE organization_id = $7 AND id = $8",
        )
        .bind(&case.name)
        .bind(case.input.to_string())
        .bind(case.expected.to_string())
        .bind(case.rubric.to_string())
        .bind(Value::Object(case.metadata.clone()).to_string())
        .bind(case.updated_at)
        .bind(&case.organization_id)
        .bind(&case.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn eval_case(&self, org_id: &str, id: &str) -> Result<EvalCase, StoreError> {
        select_one(self, "eval_cases", EVAL_CASE_COLUMNS, org_id, id, eval_case_from_row).await
    }

    /// Lists eval cases, oldest first, optionally only those named `name`.
    pub async fn eval_cases(&self, org_id: &str, name: Option<&str>, limit: i64, offset: i64) -> Result<Page<EvalCase>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        if let Some(name) = name {
            conditions.push("name = ?", [Bind::Text(name.into())]);
        }
        select_page(self, "eval_cases", EVAL_CASE_COLUMNS, &conditions, limit, offset, eval_case_from_row).await
    }

    /// Returns every eval case of an organization.
    pub async fn all_eval_cases(&self, org_id: &str) -> Result<Vec<EvalCase>, StoreError> {
        let sql = format!("SELECT {EVAL_CASE_COLUMNS} FROM eval_cases WHERE organization_id = $1");
        let rows = sqlx::query(&sql).bind(org_id).fetch_all(self.pool()).await?;
        rows.iter().map(eval_case_from_row).collect()
    }

    /// Deletes an eval case. Reviews that named it keep their scores and
    /// lose the reference (`eval` becomes null).
    pub async fn delete_eval_case(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE trace_reviews SET eval_id = NULL WHERE organization_id = $1 AND eval_id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM eval_cases WHERE organization_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- reviews ----

    pub async fn insert_review(&self, review: &Review) -> Result<(), StoreError> {
        self.insert_reviews(std::slice::from_ref(review)).await
    }

    /// Inserts many reviews in one transaction, for bulk loads.
    pub async fn insert_reviews(&self, reviews: &[Review]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for review in reviews {
            sqlx::query(
                "INSERT INTO trace_reviews (id, organization_id, trace_id, reviewer_id, source, criterion_scores, \
                 comment, eval_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&review.id)
            .bind(&review.organization_id)
            .bind(&review.trace_id)
            .bind(review.reviewer_id.as_deref())
            .bind(&review.source)
            .bind(Value::Object(review.criterion_scores.clone()).to_string())
            .bind(&review.comment)
            .bind(review.eval_id.as_deref())
            .bind(review.created_at)
            .bind(review.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn update_review(&self, review: &Review) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE trace_reviews SET source = $1, criterion_scores = $2, comment = $3, eval_id = $4, updated_at = $5 \
             WHERE organization_id = $6 AND id = $7",
        )
        .bind(&review.source)
        .bind(Value::Object(review.criterion_scores.clone()).to_string())
        .bind(&review.comment)
        .bind(review.eval_id.as_deref())
        .bind(review.updated_at)
        .bind(&review.organization_id)
        .bind(&review.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn review(&self, org_id: &str, id: &str) -> Result<Review, StoreError> {
        select_one(self, "trace_reviews", REVIEW_COLUMNS, org_id, id, review_from_row).await
    }

    /// Lists the reviews of one trace, oldest first.
    pub async fn trace_reviews(&self, org_id: &str, trace_id: &str, limit: i64, offset: i64) -> Result<Page<Review>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        conditions.push("trace_id = ?", [Bind::Text(trace_id.into())]);
        select_page(self, "trace_reviews", REVIEW_COLUMNS, &conditions, limit, offset, review_from_row).await
    }

    /// Returns every review of an organization.
    pub async fn all_reviews(&self, org_id: &str) -> Result<Vec<Review>, StoreError> {
        let sql = format!("SELECT {REVIEW_COLUMNS} FROM trace_reviews WHERE organization_id = $1");
        let rows = sqlx::query(&sql).bind(org_id).fetch_all(self.pool()).await?;
        rows.iter().map(review_from_row).collect()
    }

    /// Returns every agent of an organization with its purpose and tags.
    pub async fn agent_facts(&self, org_id: &str) -> Result<Vec<AgentFacts>, StoreError> {
        let rows = sqlx::query("SELECT id, purpose FROM agents WHERE organization_id = $1")
            .bind(org_id)
            .fetch_all(self.pool())
            .await?;
        let mut agents: Vec<AgentFacts> = rows
            .iter()
            .map(|row| Ok(AgentFacts { id: row.try_get("id")?, purpose: row.try_get("purpose")?, tags: Vec::new() }))
            .collect::<Result<_, StoreError>>()?;
        let tags = sqlx::query(
            "SELECT t.agent_id, t.tag FROM agent_tags t JOIN agents a ON a.id = t.agent_id \
             WHERE a.organization_id = $1 ORDER BY t.agent_id, t.tag",
        )
        .bind(org_id)
        .fetch_all(self.pool())
        .await?;
        let index: HashMap<String, usize> = agents.iter().enumerate().map(|(i, agent)| (agent.id.clone(), i)).collect();
        for row in tags {
            let agent_id: String = row.try_get("agent_id")?;
            let tag: String = row.try_get("tag")?;
            if let Some(&i) = index.get(&agent_id) {
                agents[i].tags.push(tag);
            }
        }
        Ok(agents)
    }
}
