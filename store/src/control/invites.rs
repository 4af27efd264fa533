//! Invites: an owner or admin invites an email address with a role; the
//! invitee accepts with a password, which creates their user account.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::accounts::{insert_user, NewUser};
use super::{ControlPlane, Invite, Page};
use crate::StoreError;

/// Why an invite cannot be accepted, or the accepted user's organization.
pub enum InviteAcceptance {
    Accepted { organization_id: String },
    Expired,
    Revoked,
    AlreadyUsed,
}

fn invite_from_row(row: &AnyRow) -> Result<Invite, sqlx::Error> {
    Ok(Invite {
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        invited_by: row.try_get("invited_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        accepted_at: row.try_get("accepted_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const INVITE_COLUMNS: &str =
    "id, organization_id, email, role, invited_by, created_at, expires_at, accepted_at, revoked_at";

impl ControlPlane {
    pub async fn create_invite(&self, invite: &Invite) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invites (id, organization_id, email, role, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&invite.id)
        .bind(&invite.organization_id)
        .bind(&invite.email)
        .bind(&invite.role)
        .bind(&invite.invited_by)
        .bind(invite.created_at)
        .bind(invite.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Lists invites that are neither accepted, revoked nor expired at `now`.
    pub async fn pending_invites(
        &self,
        org_id: &str,
        now: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Page<Invite>, StoreError> {
        let filter = "organization_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2";
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM invites WHERE {filter}"))
            .bind(org_id)
            .bind(now)
            .fetch_one(self.pool())
            .await?;
        let sql = format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE {filter} ORDER BY created_at, id LIMIT $3 OFFSET $4"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id)
            .bind(now)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        let rows = rows.iter().map(invite_from_row).collect::<Result<_, _>>()?;
        Ok(Page { count, rows })
    }

    pub async fn invite(&self, id: &str) -> Result<Invite, StoreError> {
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = $1");
        match sqlx::query(&sql).bind(id).fetch_optional(self.pool()).await? {
            Some(row) => Ok(invite_from_row(&row)?),
            None => Err(StoreError::NotFound),
        }
    }

    pub async fn revoke_invite(&self, org_id: &str, id: &str, now: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE invites SET revoked_at = $1 WHERE organization_id = $2 AND id = $3 \
             AND revoked_at IS NULL AND accepted_at IS NULL",
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

    /// Accepts an invite: creates the user in the invite's organization with the
    /// invite's email and role, stores their first token, and marks the invite
    /// used, all in one transaction.
    pub async fn accept_invite(
        &self,
        id: &str,
        user: NewUser,
        token_hash: &str,
        now: i64,
    ) -> Result<InviteAcceptance, StoreError> {
        let mut tx = self.begin_write().await?;
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = $1");
        let invite = match sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? {
            Some(row) => invite_from_row(&row)?,
            None => return Err(StoreError::NotFound),
        };
        if invite.revoked_at.is_some() {
            return Ok(InviteAcceptance::Revoked);
        }
        if invite.accepted_at.is_some() {
            return Ok(InviteAcceptance::AlreadyUsed);
        }
        if invite.expires_at <= now {
            return Ok(InviteAcceptance::Expired);
        }
        // The guard on accepted_at makes two concurrent accepts of one invite
        // end with exactly one user.
        let done = sqlx::query("UPDATE invites SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(InviteAcceptance::AlreadyUsed);
        }
        let user = NewUser { email: invite.email.clone(), role: invite.role.clone(), ..user };
        insert_user(&mut tx, &invite.organization_id, &user, now).await?;
        sqlx::query("INSERT INTO user_tokens (token_hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(&user.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(InviteAcceptance::Accepted { organization_id: invite.organization_id })
    }

    /// Marks an invite as expired at `at`; for tests and administrators.
    pub async fn set_invite_expiry(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE invites SET expires_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
