//! Templates, agents, their tags and their lifecycle transitions.
//!
//! The HTTP layer validates and merges a whole row before it writes it; the
//! functions here only persist rows, scoped to one organization. A lifecycle
//! transition is one compare-and-set on the agent's stored status plus the
//! row that records it, in one transaction, so two concurrent transitions of
//! one agent never both succeed from the same state.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::{delete_one, json_column, organization_conditions, select_one, select_page, Bind};
use super::{ControlPlane, Page};
use crate::StoreError;

#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: String,
    pub model: String,
    pub system_prompt: String,
    pub reasoning_effort: Option<String>,
    pub max_tokens: Option<i64>,
    pub config: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub purpose: String,
    pub template_id: Option<String>,
    pub model: String,
    pub system_prompt: String,
    pub reasoning_effort: Option<String>,
    pub max_tokens: Option<i64>,
    pub config: Value,
    /// The adapter snapshot: a JSON list of `{"adapter", "name", "config", "secrets"}`.
    pub adapters: Value,
    /// The stored status: `idle`, `running`, `sleeping` or `stopped`.
    pub status: String,
    pub sleep_until: Option<i64>,
    pub sleep_reason: Option<String>,
    pub last_run_id: Option<String>,
    pub last_run_at: Option<i64>,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One recorded lifecycle transition.
#[derive(Debug, Clone)]
pub struct Transition {
    pub seq: i64,
    pub action: String,
    pub from_status: String,
    pub to_status: String,
    pub reason: Option<String>,
    pub run_id: Option<String>,
    pub sleep_until: Option<i64>,
    pub at: i64,
}

/// A lifecycle change to apply when the agent's stored status is one of `from`.
#[derive(Debug, Clone)]
pub struct TransitionRequest<'a> {
    pub action: &'a str,
    pub from: &'a [&'a str],
    pub to: &'a str,
    pub reason: Option<String>,
    /// Recorded as the agent's last run when the action starts a run.
    pub run_id: Option<String>,
    pub sleep_until: Option<i64>,
    pub now: i64,
}

#[derive(Debug)]
pub enum TransitionOutcome {
    Done(Agent),
    /// The agent exists but its stored status allows no such transition.
    Refused { status: String },
}

/// Filters of the agent list; every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct AgentFilter {
    pub purpose: Option<String>,
    /// A status as the API shows it, including the derived `due_to_wake`.
    pub status: Option<String>,
    pub tags: Vec<String>,
    pub template_id: Option<String>,
    pub name: Option<String>,
}

fn template_from_row(row: &AnyRow) -> Result<Template, StoreError> {
    Ok(Template {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        model: row.try_get("model")?,
        system_prompt: row.try_get("system_prompt")?,
        reasoning_effort: row.try_get("reasoning_effort")?,
        max_tokens: row.try_get("max_tokens")?,
        config: json_column(row, "config")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn agent_from_row(row: &AnyRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        purpose: row.try_get("purpose")?,
        template_id: row.try_get("template_id")?,
        model: row.try_get("model")?,
        system_prompt: row.try_get("system_prompt")?,
        reasoning_effort: row.try_get("reasoning_effort")?,
        max_tokens: row.try_get("max_tokens")?,
        config: json_column(row, "config")?,
        adapters: json_column(row, "adapters")?,
        status: row.try_get("status")?,
        sleep_until: row.try_get("sleep_until")?,
        sleep_reason: row.try_get("sleep_reason")?,
        last_run_id: row.try_get("last_run_id")?,
        last_run_at: row.try_get("last_run_at")?,
        tags: Vec::new(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn transition_from_row(row: &AnyRow) -> Result<Transition, sqlx::Error> {
    Ok(Transition {
        seq: row.try_get("seq")?,
        action: row.try_get("action")?,
        from_status: row.try_get("from_status")?,
        to_status: row.try_get("to_status")?,
        reason: row.try_get("reason")?,
        run_id: row.try_get("run_id")?,
        sleep_until: row.try_get("sleep_until")?,
        at: row.try_get("at")?,
    })
}

const TEMPLATE_COLUMNS: &str = "id, organization_id, name, description, model, system_prompt, reasoning_effort, \
     max_tokens, config, created_at, updated_at";
const AGENT_COLUMNS: &str = "id, organization_id, name, purpose, template_id, model, system_prompt, \
     reasoning_effort, max_tokens, config, adapters, status, sleep_until, sleep_reason, last_run_id, \
     last_run_at, created_at, updated_at";

impl ControlPlane {
    // ---- templates ----

    pub async fn insert_template(&self, template: &Template) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO templates (id, organization_id, name, description, model, system_prompt, reasoning_effort, \
             max_tokens, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&template.id)
        .bind(&template.organization_id)
        .bind(&template.name)
        .bind(&template.description)
        .bind(&template.model)
        .bind(&template.system_prompt)
        .bind(template.reasoning_effort.as_deref())
        .bind(template.max_tokens)
        .bind(template.config.to_string())
        .bind(template.created_at)
        .bind(template.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Writes every editable column of an existing template.
    pub async fn update_template(&self, template: &Template) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE templates SET name = $1, description = $2, model = $3, system_prompt = $4, reasoning_effort = $5, \
             max_tokens = $6, config = $7, updated_at = $8 WHERE organization_id = $9 AND id = $10",
        )
        .bind(&template.name)
        .bind(&template.description)
        .bind(&template.model)
        .bind(&template.system_prompt)
        .bind(template.reasoning_effort.as_deref())
        .bind(template.max_tokens)
        .bind(template.config.to_string())
        .bind(template.updated_at)
        .bind(&template.organization_id)
        .bind(&template.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn template(&self, org_id: &str, id: &str) -> Result<Template, StoreError> {
        select_one(self, "templates", TEMPLATE_COLUMNS, org_id, id, template_from_row).await
    }

    pub async fn template_by_name(&self, org_id: &str, name: &str) -> Result<Option<Template>, StoreError> {
        let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE organization_id = $1 AND name = $2");
        let row = sqlx::query(&sql).bind(org_id).bind(name).fetch_optional(self.pool()).await?;
        row.map(|row| template_from_row(&row)).transpose()
    }

    pub async fn templates(
        &self,
        org_id: &str,
        name: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Template>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        if let Some(name) = name {
            conditions.push("name = ?", [Bind::Text(name.into())]);
        }
        select_page(self, "templates", TEMPLATE_COLUMNS, &conditions, limit, offset, template_from_row).await
    }

    pub async fn delete_template(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "templates", org_id, id).await
    }

    // ---- agents ----

    /// Inserts an agent with its tags and the transition that created it.
    pub async fn insert_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO agents (id, organization_id, name, purpose, template_id, model, system_prompt, \
             reasoning_effort, max_tokens, config, adapters, status, sleep_until, sleep_reason, last_run_id, \
             last_run_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(&agent.id)
        .bind(&agent.organization_id)
        .bind(&agent.name)
        .bind(&agent.purpose)
        .bind(agent.template_id.as_deref())
        .bind(&agent.model)
        .bind(&agent.system_prompt)
        .bind(agent.reasoning_effort.as_deref())
        .bind(agent.max_tokens)
        .bind(agent.config.to_string())
        .bind(agent.adapters.to_string())
        .bind(&agent.status)
        .bind(agent.sleep_until)
        .bind(agent.sleep_reason.as_deref())
        .bind(agent.last_run_id.as_deref())
        .bind(agent.last_run_at)
        .bind(agent.created_at)
        .bind(agent.updated_at)
        .execute(&mut *tx)
        .await?;

        replace_tags(&mut tx, &agent.id, &agent.tags, agent.created_at).await?;

        sqlx::query(
            "INSERT INTO agent_transitions (agent_id, seq, action, from_status, to_status, at) \
             VALUES ($1, 1, 'create', '', $2, $3)",
        )
        .bind(&agent.id)
        .bind(&agent.status)
        .bind(agent.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the editable columns and the tag set of an existing agent; the
    /// lifecycle columns change only through [`ControlPlane::transition_agent`].
    pub async fn update_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE agents SET name = $1, purpose = $2, template_id = $3, model = $4, system_prompt = $5, \
             reasoning_effort = $6, max_tokens = $7, config = $8, adapters = $9, updated_at = $10 \
             WHERE organization_id = $11 AND id = $12",
        )
        .bind(&agent.name)
        .bind(&agent.purpose)
        .bind(agent.template_id.as_deref())
        .bind(&agent.model)
        .bind(&agent.system_prompt)
        .bind(agent.reasoning_effort.as_deref())
        .bind(agent.max_tokens)
        .bind(agent.config.to_string())
        .bind(agent.adapters.to_string())
        .bind(agent.updated_at)
        .bind(&agent.organization_id)
        .bind(&agent.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        replace_tags(&mut tx, &agent.id, &agent.tags, agent.updated_at).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn agent(&self, org_id: &str, id: &str) -> Result<Agent, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE organization_id = $1 AND id = $2");
        let row = sqlx::query(&sql).bind(org_id).bind(id).fetch_optional(self.pool()).await?;
        let mut agent = match row {
            Some(row) => agent_from_row(&row)?,
            None => return Err(StoreError::NotFound),
        };
        agent.tags = sqlx::query_scalar("SELECT tag FROM agent_tags WHERE agent_id = $1 ORDER BY tag")
            .bind(id)
            .fetch_all(self.pool())
            .await?;
        Ok(agent)
    }

    /// Lists agents, oldest first. `now` decides which sleepers are due to wake.
    pub async fn agents(
        &self,
        org_id: &str,
        filter: &AgentFilter,
        now: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Agent>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        if let Some(purpose) = &filter.purpose {
            conditions.push("purpose = ?", [Bind::Text(purpose.clone())]);
        }
        match filter.status.as_deref() {
            None => {}
            Some("sleeping") => conditions.push(
                "status = 'sleeping' AND (sleep_until IS NULL OR sleep_until > ?)",
                [Bind::Int(now)],
            ),
            Some("due_to_wake") => {
                conditions.push("status = 'sleeping' AND sleep_until <= ?", [Bind::Int(now)])
            }
            Some(status) => conditions.push("status = ?", [Bind::Text(status.into())]),
        }
        for tag in &filter.tags {
            conditions.push("id IN (SELECT agent_id FROM agent_tags WHERE tag = ?)", [Bind::Text(tag.clone())]);
        }
        if let Some(template_id) = &filter.template_id {
            conditions.push("template_id = ?", [Bind::Text(template_id.clone())]);
        }
        if let Some(name) = &filter.name {
            conditions.push("name = ?", [Bind::Text(name.clone())]);
        }

        let mut page = select_page(self, "agents", AGENT_COLUMNS, &conditions, limit, offset, agent_from_row).await?;
        self.fill_tags(&mut page.rows).await?;
        Ok(page)
    }

    async fn fill_tags(&self, agents: &mut [Agent]) -> Result<(), StoreError> {
        if agents.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=agents.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT agent_id, tag FROM agent_tags WHERE agent_id IN ({}) ORDER BY agent_id, tag",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for agent in agents.iter() {
            query = query.bind(agent.id.as_str());
        }
        for row in query.fetch_all(self.pool()).await? {
            let agent_id: String = row.try_get("agent_id")?;
            let tag: String = row.try_get("tag")?;
            if let Some(agent) = agents.iter_mut().find(|a| a.id == agent_id) {
                agent.tags.push(tag);
            }
        }
        Ok(())
    }

    pub async fn delete_agent(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "agents", org_id, id).await
    }

    /// Attaches a tag; attaching one the agent already has changes nothing.
    pub async fn add_agent_tag(&self, org_id: &str, id: &str, tag: &str, now: i64) -> Result<(), StoreError> {
        self.agent_exists(org_id, id).await?;
        sqlx::query(
            "INSERT INTO agent_tags (agent_id, tag, created_at) VALUES ($1, $2, $3) ON CONFLICT (agent_id, tag) DO NOTHING",
        )
        .bind(id)
        .bind(tag)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Detaches a tag; detaching one the agent does not have changes nothing.
    pub async fn remove_agent_tag(&self, org_id: &str, id: &str, tag: &str) -> Result<(), StoreError> {
        self.agent_exists(org_id, id).await?;
        sqlx::query("DELETE FROM agent_tags WHERE agent_id = $1 AND tag = $2")
            .bind(id)
            .bind(tag)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn agent_exists(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM agents WHERE organization_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        found.map(|_| ()).ok_or(StoreError::NotFound)
    }

    /// Moves an agent to `request.to` if its stored status is one of
    /// `request.from`, and records the transition.
    pub async fn transition_agent(
        &self,
        org_id: &str,
        id: &str,
        request: TransitionRequest<'_>,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT status FROM agents WHERE organization_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = current else {
            return Err(StoreError::NotFound);
        };
        if !request.from.contains(&current.as_str()) {
            return Ok(TransitionOutcome::Refused { status: current });
        }

        // The status in the WHERE clause makes this a compare-and-set: a
        // concurrent transition that committed first leaves no row to update.
        let starts_run = request.run_id.is_some();
        let done = sqlx::query(
            "UPDATE agents SET status = $1, sleep_until = $2, sleep_reason = $3, \
             last_run_id = CASE WHEN $4 = 1 THEN $5 ELSE last_run_id END, \
             last_run_at = CASE WHEN $4 = 1 THEN $6 ELSE last_run_at END, updated_at = $6 \
             WHERE organization_id = $7 AND id = $8 AND status = $9",
        )
        .bind(request.to)
        .bind(request.sleep_until)
        .bind(request.reason.as_deref().filter(|_| request.to == "sleeping"))
        .bind(i64::from(starts_run))
        .bind(request.run_id.as_deref())
        .bind(request.now)
        .bind(org_id)
        .bind(id)
        .bind(&current)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict("the agent changed state during the request".into()));
        }
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_transitions WHERE agent_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO agent_transitions (agent_id, seq, action, from_status, to_status, reason, run_id, sleep_until, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(seq)
        .bind(request.action)
        .bind(&current)
        .bind(request.to)
        .bind(request.reason.as_deref())
        .bind(request.run_id.as_deref())
        .bind(request.sleep_until)
        .bind(request.now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(TransitionOutcome::Done(self.agent(org_id, id).await?))
    }

    /// Returns an agent's transitions, newest first.
    pub async fn agent_transitions(
        &self,
        org_id: &str,
        id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Transition>, StoreError> {
        self.agent_exists(org_id, id).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agent_transitions WHERE agent_id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        let rows = sqlx::query(
            "SELECT seq, action, from_status, to_status, reason, run_id, sleep_until, at FROM agent_transitions \
             WHERE agent_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
        )
        .bind(id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let rows = rows.iter().map(transition_from_row).collect::<Result<_, _>>()?;
        Ok(Page { count, rows })
    }
}

async fn replace_tags(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    agent_id: &str,
    tags: &[String],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM agent_tags WHERE agent_id = $1").bind(agent_id).execute(&mut **tx).await?;
    for tag in tags {
        sqlx::query(
            "INSERT INTO agent_tags (agent_id, tag, created_at) VALUES ($1, $2, $3) ON CONFLICT (agent_id, tag) DO NOTHING",
        )
        .bind(agent_id)
        .bind(tag)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
