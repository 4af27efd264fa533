//! Per-organization model price overrides.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::{delete_one, organization_conditions, select_one, select_page};
use super::{ControlPlane, Page};
use crate::events::pricing::{ModelPrice, Price};
use crate::events::usage::Money;
use crate::StoreError;

#[derive(Debug, Clone)]
pub struct PriceOverride {
    pub id: String,
    pub organization_id: String,
    pub model: String,
    pub price: Price,
    pub created_at: i64,
    pub updated_at: i64,
}

fn money_column(row: &AnyRow, column: &str) -> Result<Money, StoreError> {
    let text: String = row.try_get(column)?;
    Money::parse_decimal(&text).ok_or_else(|| StoreError::Internal(format!("column {column} contains an invalid decimal")))
}

fn override_from_row(row: &AnyRow) -> Result<PriceOverride, StoreError> {
    Ok(PriceOverride {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        model: row.try_get("model")?,
        price: Price {
            input: money_column(row, "input_per_million")?,
            cached_input: money_column(row, "cached_input_per_million")?,
            output: money_column(row, "output_per_million")?,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const COLUMNS: &str = "id, organization_id, model, input_per_million, cached_input_per_million, output_per_million, \
     created_at, updated_at";

impl ControlPlane {
    pub async fn insert_price(&self, row: &PriceOverride) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO model_prices (id, organization_id, model, input_per_million, cached_input_per_million, \
             output_per_million, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(&row.model)
        .bind(row.price.input.to_decimal_string())
        .bind(row.price.cached_input.to_decimal_string())
        .bind(row.price.output.to_decimal_string())
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn update_price(&self, row: &PriceOverride) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE model_prices SET model = $1, input_per_million = $2, cached_input_per_million = $3, \
             output_per_million = $4, updated_at = $5 WHERE organization_id = $6 AND id = $7",
        )
        .bind(&row.model)
        .bind(row.price.input.to_decimal_string())
        .bind(row.price.cached_input.to_decimal_string())
        .bind(row.price.output.to_decimal_string())
        .bind(row.updated_at)
        .bind(&row.organization_id)
        .bind(&row.id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn price(&self, org_id: &str, id: &str) -> Result<PriceOverride, StoreError> {
        select_one(self, "model_prices", COLUMNS, org_id, id, override_from_row).await
    }

    pub async fn prices(&self, org_id: &str, limit: i64, offset: i64) -> Result<Page<PriceOverride>, StoreError> {
        select_page(self, "model_prices", COLUMNS, &organization_conditions(org_id), limit, offset, override_from_row).await
    }

    /// Returns every override of an organization, for pricing usage.
    pub async fn price_overrides(&self, org_id: &str) -> Result<Vec<ModelPrice>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM model_prices WHERE organization_id = $1 ORDER BY created_at, id");
        let rows = sqlx::query(&sql).bind(org_id).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| override_from_row(row).map(|o| ModelPrice { model: o.model, price: o.price }))
            .collect()
    }

    pub async fn delete_price(&self, org_id: &str, id: &str) -> Result<(), StoreError> {
        delete_one(self, "model_prices", org_id, id).await
    }
}
