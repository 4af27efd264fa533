//! The toolbox: adapters, the tools each adapter offers, and adapter configs,
//! which enable an adapter on a template with that template's settings.
//!
//! Secret config values arrive here already encrypted; this module never handles
//! a plaintext secret.

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::{delete_one, json_column, organization_conditions, select_one, select_page, Bind};
use super::{ControlPlane, Page};
use crate::StoreError;

#[derive(Debug, Clone)]
pub struct Adapter {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: String,
    pub config_schema: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct Tool {
    pub id: String,
    pub organization_id: String,
    pub adapter_id: String,
    pub name: String,
    pub description: String,
    pub parameters: Value,
    pub url: String,
    pub timeout_seconds: f64,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub id: String,
    pub organization_id: String,
    pub template_id: String,
    pub adapter_id: String,
    /// The plain (not secret) values.
    pub config: Map<String, Value>,
    /// Each secret key with its value encrypted under the server key.
    pub secrets: Map<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An adapter config joined with its adapter's name, as copied onto agents.
#[derive(Debug, Clone)]
pub struct EnabledAdapter {
    pub adapter_id: String,
    pub name: String,
    pub config: Map<String, Value>,
    pub secrets: Map<String, Value>,
}

fn json_object(row: &AnyRow, column: &str) -> Result<Map<String, Value>, StoreError> {
    match json_column(row, column)? {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Internal(format!("column {column} contains JSON that is not an object"))),
    }
}

fn adapter_from_row(row: &AnyRow) -> Result<Adapter, StoreError> {
    Ok(Adapter {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        config_schema: json_column(row, "config_schema")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn tool_from_row(row: &AnyRow) -> Result<Tool, StoreError> {
    Ok(Tool {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        adapter_id: row.try_get("adapter_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        parameters: json_column(row, "parameters")?,
        url: row.try_get("url")?,
        timeout_seconds: row.try_get("timeout_seconds")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn adapter_config_from_row(row: &AnyRow) -> Result<AdapterConfig, StoreError> {
    Ok(AdapterConfig {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        template_id: row.try_get("template_id")?,
        adapter_id: row.try_get("adapter_id")?,
        config: json_object(row, "config")?,
        secrets: json_object(row, "secrets")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const ADAPTER_COLUMNS: &str = "id, organization_id, name, description, config_schema, created_at, updated_at";
const TOOL_COLUMNS: &str = "id, organization_id, adapter_id, name, description, parameters, url, timeout_seconds, \
     enabled, created_at, updated_at";
const ADAPTER_CONFIG_COLUMNS: &str =
    "id, organization_id, template_id, adapter_id, config, secrets, created_at, updated_at";

impl ControlPlane {
    // ---- adapters ----

    pub async fn insert_adapter(&self, adapter: &Adapter) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO adapters (id, organization_id, name, description, config_schema, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&adapter.id)
        .bind(&adapter.organization_id)
        .bind(&adapter.name)
        .bind(&adapter.description)
        .bind(adapter.config_schema.to_string())
        .bind(adapter.created_at)
        .bind(adapter.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn update_adapter(&self, adapter: &Adapter) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE adapters SET name = $1, description = $2, config_schema = $3, updated_at = $4 \
             WHERE organization_id = $5 AND id = $6",
        )
        .bind(&adapter.name)
        .bind(&adapter.description)
        .bind(adapter.config_schema.to_string())
        .bind(adapter.updated_at)
        .bind(&adapter.organization_id)
        .bind(&adapter.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn adapter(&self, org_id: &str, id: &str) -> Result<Adapter, StoreError> {
        select_one(self, "adapters", ADAPTER_COLUMNS, org_id, id, adapter_from_row).await
    }

    pub async fn adapters(&self, org_id: &str, limit: i64, offset: i64) -> Result<Page<Adapter>, StoreError> {
        select_page(self, "adapters", ADAPTER_COLUMNS, &organization_conditions(org_id), limit, offset, adapter_from_row)
            .await
    }

    /// Deletes an adapter with its tools and its configs on every template.
    pub async fn delete_adapter(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "adapters", org_id, id).await
    }

    // ---- tools ----

    pub async fn insert_tool(&self, tool: &Tool) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tools (id, organization_id, adapter_id, name, description, parameters, url, timeout_seconds, \
             enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&tool.id)
        .bind(&tool.organization_id)
        .bind(&tool.adapter_id)
        .bind(&tool.name)
        .bind(&tool.description)
        .bind(tool.parameters.to_string())
        .bind(&tool.url)
        .bind(tool.timeout_seconds)
        .bind(i64::from(tool.enabled))
        .bind(tool.created_at)
        .bind(tool.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn update_tool(&self, tool: &Tool) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE tools SET adapter_id = $1, name = $2, description = $3, parameters = $4, url = $5, \
             timeout_seconds = $6, enabled = $7, updated_at = $8 WHERE organization_id = $9 AND id = $10",
        )
        .bind(&tool.adapter_id)
        .bind(&tool.name)
        .bind(&tool.description)
        .bind(tool.parameters.to_string())
        .bind(&tool.url)
        .bind(tool.timeout_seconds)
        .bind(i64::from(tool.enabled))
        .bind(tool.updated_at)
        .bind(&tool.organization_id)
        .bind(&tool.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn tool(&self, org_id: &str, id: &str) -> Result<Tool, StoreError> {
        select_one(self, "tools", TOOL_COLUMNS, org_id, id, tool_from_row).await
    }

    pub async fn tools(
        &self,
        org_id: &str,
        adapter_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Tool>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        if let Some(adapter_id) = adapter_id {
            conditions.push("adapter_id = ?", [Bind::Text(adapter_id.into())]);
        }
        select_page(self, "tools", TOOL_COLUMNS, &conditions, limit, offset, tool_from_row).await
    }

    /// Returns the enabled tools of the given adapters, in creation order.
    pub async fn enabled_tools(&self, org_id: &str, adapter_ids: &[String]) -> Result<Vec<Tool>, StoreError> {
        if adapter_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (2..adapter_ids.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT {TOOL_COLUMNS} FROM tools WHERE organization_id = $1 AND enabled = 1 AND adapter_id IN ({}) \
             ORDER BY created_at, id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(org_id);
        for id in adapter_ids {
            query = query.bind(id.as_str());
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(tool_from_row).collect()
    }

    pub async fn delete_tool(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "tools", org_id, id).await
    }

    // ---- adapter configs ----

    pub async fn insert_adapter_config(&self, config: &AdapterConfig) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO adapter_configs (id, organization_id, template_id, adapter_id, config, secrets, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&config.id)
        .bind(&config.organization_id)
        .bind(&config.template_id)
        .bind(&config.adapter_id)
        .bind(Value::Object(config.config.clone()).to_string())
        .bind(Value::Object(config.secrets.clone()).to_string())
        .bind(config.created_at)
        .bind(config.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn update_adapter_config(&self, config: &AdapterConfig) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE adapter_configs SET template_id = $1, adapter_id = $2, config = $3, secrets = $4, updated_at = $5 \
             WHERE organization_id = $6 AND id = $7",
        )
        .bind(&config.template_id)
        .bind(&config.adapter_id)
        .bind(Value::Object(config.config.clone()).to_string())
        .bind(Value::Object(config.secrets.clone()).to_string())
        .bind(config.updated_at)
        .bind(&config.organization_id)
        .bind(&config.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn adapter_config(&self, org_id: &str, id: &str) -> Result<AdapterConfig, StoreError> {
        select_one(self, "adapter_configs", ADAPTER_CONFIG_COLUMNS, org_id, id, adapter_config_from_row).await
    }

    pub async fn adapter_configs(
        &self,
        org_id: &str,
        template_id: Option<&str>,
        adapter_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<AdapterConfig>, StoreError> {
        let mut conditions = organization_conditions(org_id);
        if let Some(template_id) = template_id {
            conditions.push("template_id = ?", [Bind::Text(template_id.into())]);
        }
        if let Some(adapter_id) = adapter_id {
            conditions.push("adapter_id = ?", [Bind::Text(adapter_id.into())]);
        }
        select_page(self, "adapter_configs", ADAPTER_CONFIG_COLUMNS, &conditions, limit, offset, adapter_config_from_row)
            .await
    }

    pub async fn delete_adapter_config(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "adapter_configs", org_id, id).await
    }

    /// Returns the adapters enabled on a template, with their configs, in the order they were enabled.
    pub async fn template_adapters(&self, org_id: &str, template_id: &str) -> Result<Vec<EnabledAdapter>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.adapter_id, a.name, c.config, c.secrets FROM adapter_configs c \
             JOIN adapters a ON a.id = c.adapter_id \
             WHERE c.organization_id = $1 AND c.template_id = $2 ORDER BY c.created_at, c.id",
        )
        .bind(org_id)
        .bind(template_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EnabledAdapter {
                    adapter_id: row.try_get("adapter_id")?,
                    name: row.try_get("name")?,
                    config: json_object(row, "config")?,
                    secrets: json_object(row, "secrets")?,
                })
            })
            .collect()
    }
}
