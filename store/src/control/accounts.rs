//! Organizations, users and memberships.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ControlPlane, Organization, Page, User};
use crate::StoreError;

pub struct NewOrganization {
    pub id: String,
    pub name: String,
    pub now: i64,
}

pub struct NewUser {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears a secret.
#[derive(Default)]
pub struct OrganizationUpdate {
    pub name: Option<String>,
    pub openai_api_key_enc: Option<Option<String>>,
    pub anthropic_api_key_enc: Option<Option<String>>,
}

pub(super) fn organization_from_row(row: &AnyRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        openai_api_key_enc: row.try_get("openai_api_key_enc")?,
        anthropic_api_key_enc: row.try_get("anthropic_api_key_enc")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: row.try_get("role")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

const ORG_COLUMNS: &str =
    "id, name, openai_api_key_enc, anthropic_api_key_enc, created_at, updated_at";
const USER_COLUMNS: &str =
    "id, organization_id, email, name, password_hash, role, is_admin, created_at";

impl ControlPlane {
    /// Creates an organization, its owner and the owner's first token in one transaction.
    pub async fn sign_up(
        &self,
        org: NewOrganization,
        user: NewUser,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(org.now)
        .execute(&mut *tx)
        .await?;
        insert_user(&mut tx, &org.id, &user, org.now).await?;
        sqlx::query("INSERT INTO user_tokens (token_hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(&user.id)
            .bind(org.now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
        let row = sqlx::query(&sql).bind(email).fetch_optional(self.pool()).await?;
        Ok(row.map(|row| user_from_row(&row)).transpose()?)
    }

    /// Sets or clears the site-wide administrator flag of a user.
    pub async fn set_admin(&self, email: &str, is_admin: bool) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET is_admin = $1 WHERE email = $2")
            .bind(i64::from(is_admin))
            .bind(email)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn organization(&self, id: &str) -> Result<Organization, StoreError> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(self.pool()).await?;
        match row {
            Some(row) => Ok(organization_from_row(&row)?),
            None => Err(StoreError::NotFound),
        }
    }

    /// Lists organizations by creation time: every one when `only` is `None`.
    pub async fn organizations(
        &self,
        only: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Organization>, StoreError> {
        let (count, rows) = match only {
            Some(id) => {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations WHERE id = $1")
                    .bind(id)
                    .fetch_one(self.pool())
                    .await?;
                let sql = format!(
                    "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
                );
                let rows = sqlx::query(&sql).bind(id).bind(limit).bind(offset).fetch_all(self.pool()).await?;
                (count, rows)
            }
            None => {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
                    .fetch_one(self.pool())
                    .await?;
                let sql = format!(
                    "SELECT {ORG_COLUMNS} FROM organizations ORDER BY created_at, id LIMIT $1 OFFSET $2"
                );
                let rows = sqlx::query(&sql).bind(limit).bind(offset).fetch_all(self.pool()).await?;
                (count, rows)
            }
        };
        let rows = rows.iter().map(organization_from_row).collect::<Result<_, _>>()?;
        Ok(Page { count, rows })
    }

    pub async fn update_organization(
        &self,
        id: &str,
        update: OrganizationUpdate,
        now: i64,
    ) -> Result<Organization, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = {
            let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1");
            match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
                Some(row) => organization_from_row(&row)?,
                None => return Err(StoreError::NotFound),
            }
        };
        let name = update.name.unwrap_or(current.name);
        let openai = update.openai_api_key_enc.unwrap_or(current.openai_api_key_enc);
        let anthropic = update.anthropic_api_key_enc.unwrap_or(current.anthropic_api_key_enc);
        sqlx::query(
            "UPDATE organizations SET name = $1, openai_api_key_enc = $2, anthropic_api_key_enc = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(&name)
        .bind(&openai)
        .bind(&anthropic)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.organization(id).await
    }

    /// Deletes an organization with its users, tokens, keys and invites.
    pub async fn delete_organization(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Explicit deletes rather than relying on ON DELETE CASCADE alone, so the
        // outcome does not depend on SQLite's foreign_keys pragma.
        sqlx::query("DELETE FROM user_tokens WHERE user_id IN (SELECT id FROM users WHERE organization_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for table in ["api_keys", "invites", "users"] {
            let sql = format!("DELETE FROM {table} WHERE organization_id = $1");
            sqlx::query(&sql).bind(id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn members(&self, org_id: &str, limit: i64, offset: i64) -> Result<Page<User>, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE organization_id = $1")
            .bind(org_id)
            .fetch_one(self.pool())
            .await?;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql).bind(org_id).bind(limit).bind(offset).fetch_all(self.pool()).await?;
        let rows = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page { count, rows })
    }

    pub async fn member(&self, org_id: &str, user_id: &str) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 AND id = $2");
        match sqlx::query(&sql).bind(org_id).bind(user_id).fetch_optional(self.pool()).await? {
            Some(row) => Ok(user_from_row(&row)?),
            None => Err(StoreError::NotFound),
        }
    }

    /// Removes a member and their tokens. Refuses with [`StoreError::Conflict`]
    /// when the member is the organization's last owner.
    pub async fn remove_member(&self, org_id: &str, user_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 AND id = $2");
        let user = match sqlx::query(&sql).bind(org_id).bind(user_id).fetch_optional(&mut *tx).await? {
            Some(row) => user_from_row(&row)?,
            None => return Err(StoreError::NotFound),
        };
        if user.role == "owner" {
            let owners: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM users WHERE organization_id = $1 AND role = 'owner'",
            )
            .bind(org_id)
            .fetch_one(&mut *tx)
            .await?;
            if owners <= 1 {
                return Err(StoreError::Conflict(
                    "an organization must keep at least one owner".into(),
                ));
            }
        }
        sqlx::query("DELETE FROM user_tokens WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn insert_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    org_id: &str,
    user: &NewUser,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (id, organization_id, email, name, password_hash, role, is_admin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&user.id)
    .bind(org_id)
    .bind(&user.email)
    .bind(&user.name)
    .bind(&user.password_hash)
    .bind(&user.role)
    .bind(0i64)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|err| match StoreError::from(err) {
        StoreError::Conflict(_) => StoreError::Conflict("a user with this email already exists".into()),
        other => other,
    })?;
    Ok(())
}
