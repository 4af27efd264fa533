//! User tokens and organization API keys. Both are stored only as hashes;
//! callers hash the presented secret and look the hash up.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::accounts::user_from_row;
use super::{ApiKey, ControlPlane, Page, User};
use crate::StoreError;

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

const KEY_COLUMNS: &str = "id, organization_id, name, prefix, created_at, last_used_at";

impl ControlPlane {
    pub async fn insert_token(&self, token_hash: &str, user_id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO user_tokens (token_hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user_id)
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM user_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Returns the user a token belongs to, if the token is live.
    pub async fn user_by_token(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.organization_id, u.email, u.name, u.password_hash, u.role, u.is_admin, u.created_at \
             FROM user_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|row| user_from_row(&row)).transpose()?)
    }

    /// Returns the live (unrevoked) API key with this hash.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL");
        let row = sqlx::query(&sql).bind(key_hash).fetch_optional(self.pool()).await?;
        Ok(row.map(|row| api_key_from_row(&row)).transpose()?)
    }

    pub async fn touch_api_key(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        key: &ApiKey,
        key_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.organization_id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key_hash)
        .bind(key.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn api_keys(&self, org_id: &str, limit: i64, offset: i64) -> Result<Page<ApiKey>, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE organization_id = $1 AND revoked_at IS NULL",
        )
        .bind(org_id)
        .fetch_one(self.pool())
        .await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND revoked_at IS NULL \
             ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql).bind(org_id).bind(limit).bind(offset).fetch_all(self.pool()).await?;
        let rows = rows.iter().map(api_key_from_row).collect::<Result<_, _>>()?;
        Ok(Page { count, rows })
    }

    pub async fn api_key(&self, org_id: &str, id: &str) -> Result<ApiKey, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND id = $2 AND revoked_at IS NULL"
        );
        match sqlx::query(&sql).bind(org_id).bind(id).fetch_optional(self.pool()).await? {
            Some(row) => Ok(api_key_from_row(&row)?),
            None => Err(StoreError::NotFound),
        }
    }

    pub async fn rename_api_key(&self, org_id: &str, id: &str, name: &str) -> Result<ApiKey, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET name = $1 WHERE organization_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(org_id)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.api_key(org_id, id).await
    }

    /// Revokes a key: it stops authenticating and disappears from listings.
    pub async fn revoke_api_key(&self, org_id: &str, id: &str, now: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE organization_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(org_id)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
