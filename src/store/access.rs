//! Who may act: operators, their dashboard sessions and their API tokens.
//!
//! Session ids and API tokens are bearer secrets; the store keeps only their
//! SHA-256 digests, so reading the database gives nobody a way in.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::error::{Error, Result};
use crate::users::{Principal, Role, User};

/// An API token as listed: never the secret.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ApiToken {
    pub id: i64,
    pub user: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// `last_seen` / `last_used_at` are written at most this often per session
/// or token, so reading pages does not turn into a write per request.
const TOUCH_MS: i64 = 60_000;

/// A UNIQUE or CHECK violation as `AlreadyExists(what)`.
pub(super) fn constraint(e: rusqlite::Error, what: impl FnOnce() -> String) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::AlreadyExists(what())
        }
        e => e.into(),
    }
}

impl Store {
    /// Add an operator; `password_hash` is a PHC string from
    /// [`crate::users::hash_password`].
    pub fn add_user(&self, name: &str, password_hash: &str, role: Role) -> Result<()> {
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO users (name, password_hash, role, created_at, password_changed_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, password_hash, role.as_str(), now],
            )
            .map_err(|e| constraint(e, || format!("user {name}")))?;
        Ok(())
    }

    /// The setup link's one use: in one write transaction, refuse a link
    /// used before or an installation that has an admin, else record the
    /// link (by `link_digest`) as used and create the admin. Two requests
    /// racing with one link create one admin.
    pub fn add_first_admin(&self, name: &str, password_hash: &str, link_digest: &[u8]) -> Result<()> {
        let tx = self.write_tx()?;
        let used: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM setup_links_used WHERE digest = ?1)",
            [link_digest],
            |r| r.get(0),
        )?;
        let admin: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0)",
            [],
            |r| r.get(0),
        )?;
        if used || admin {
            return Err(Error::Invalid {
                what: "setup link",
                reason: "it has been used: an admin exists; sign in, or use `flownexus user add`".into(),
            });
        }
        tx.execute(
            "INSERT INTO setup_links_used (digest, used_at) VALUES (?1, ?2)",
            params![link_digest, now_ms()],
        )?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO users (name, password_hash, role, created_at, password_changed_at) VALUES (?1, ?2, 'admin', ?3, ?3)",
            params![name, password_hash, now],
        )
        .map_err(|e| constraint(e, || format!("user {name}")))?;
        tx.commit()?;
        Ok(())
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, role, disabled, created_at FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, disabled, created_at) = row?;
            out.push(User {
                name,
                role: role.parse()?,
                disabled,
                created_at,
            });
        }
        Ok(out)
    }

    /// The user and its password hash, for a login.
    pub fn user_credentials(&self, name: &str) -> Result<Option<(User, String)>> {
        self.conn
            .query_row(
                "SELECT name, role, disabled, created_at, password_hash FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()?
            .map(|(name, role, disabled, created_at, hash)| {
                Ok((
                    User {
                        name,
                        role: role.parse()?,
                        disabled,
                        created_at,
                    },
                    hash,
                ))
            })
            .transpose()
    }

    fn update_user(&self, name: &str, sql: &str, values: impl rusqlite::Params) -> Result<()> {
        let n = self.conn.execute(sql, values)?;
        if n == 0 {
            return Err(Error::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    pub fn set_user_role(&self, name: &str, role: Role) -> Result<()> {
        self.update_user(
            name,
            "UPDATE users SET role = ?2 WHERE name = ?1",
            params![name, role.as_str()],
        )
    }

    pub fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        self.update_user(
            name,
            "UPDATE users SET disabled = ?2 WHERE name = ?1",
            params![name, disabled],
        )
    }

    pub fn set_user_password(&self, name: &str, password_hash: &str) -> Result<()> {
        self.update_user(
            name,
            "UPDATE users SET password_hash = ?2, password_changed_at = ?3 WHERE name = ?1",
            params![name, password_hash, now_ms()],
        )
    }

    /// Is there an enabled admin? Without one, `serve` offers a setup link.
    pub fn has_admin(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0)",
            [],
            |r| r.get(0),
        )?)
    }

    fn user_id(&self, name: &str) -> Result<i64> {
        self.conn
            .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("user {name}")))
    }

    // ---- dashboard sessions ------------------------------------------------------

    /// Start a session for `user` under the digest of its cookie value.
    pub fn create_session(&self, id_hash: &[u8], user: &str, address: &str) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO web_sessions (id_hash, user_id, created_at, last_seen, address)
             SELECT ?1, id, ?3, ?3, ?4 FROM users WHERE name = ?2 AND disabled = 0",
            params![id_hash, user, now, address],
        )?;
        Ok(())
    }

    /// The enabled user of a session that has been used within `idle_ms` and
    /// is younger than `max_age_ms`; refreshes its last use.
    pub fn session_principal(&self, id_hash: &[u8], idle_ms: i64, max_age_ms: i64) -> Result<Option<Principal>> {
        let now = now_ms();
        let row = self
            .conn
            .query_row(
                "SELECT u.id, u.name, u.role, s.last_seen FROM web_sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id_hash = ?1 AND u.disabled = 0 AND s.last_seen > ?2 AND s.created_at > ?3",
                params![id_hash, now - idle_ms, now - max_age_ms],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((user_id, name, role, last_seen)) = row else {
            return Ok(None);
        };
        if now - last_seen > TOUCH_MS {
            self.conn.execute(
                "UPDATE web_sessions SET last_seen = ?2 WHERE id_hash = ?1",
                params![id_hash, now],
            )?;
        }
        Ok(Some(Principal {
            user_id,
            name,
            role: role.parse()?,
            via_token: false,
        }))
    }

    pub fn end_session(&self, id_hash: &[u8]) -> Result<()> {
        self.conn
            .execute("DELETE FROM web_sessions WHERE id_hash = ?1", [id_hash])?;
        Ok(())
    }

    /// End every session of `user` except `keep` ("log out everywhere",
    /// and after a password change). Returns how many ended.
    pub fn end_sessions_of(&self, user: &str, keep: Option<&[u8]>) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM web_sessions WHERE user_id = (SELECT id FROM users WHERE name = ?1)
             AND (?2 IS NULL OR id_hash != ?2)",
            params![user, keep],
        )?)
    }

    /// Forget sessions that can no longer be used.
    pub fn prune_sessions(&self, idle_ms: i64, max_age_ms: i64) -> Result<usize> {
        let now = now_ms();
        Ok(self.conn.execute(
            "DELETE FROM web_sessions WHERE last_seen <= ?1 OR created_at <= ?2",
            params![now - idle_ms, now - max_age_ms],
        )?)
    }

    // ---- API tokens ---------------------------------------------------------------

    /// Record a token of `user`; `role` may not exceed the user's own.
    pub fn create_token(&self, user: &str, name: &str, role: Role, token_hash: &[u8]) -> Result<ApiToken> {
        let id = self.user_id(user)?;
        self.conn
            .execute(
                "INSERT INTO api_tokens (user_id, name, token_hash, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, token_hash, role.as_str(), now_ms()],
            )
            .map_err(|e| constraint(e, || "an identical token".into()))?;
        self.token(self.conn.last_insert_rowid())
    }

    const TOKEN_SQL: &'static str = "SELECT t.id, u.name, t.name, t.role, t.created_at, t.last_used_at, t.revoked_at
         FROM api_tokens t JOIN users u ON u.id = t.user_id";

    fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiToken, String)> {
        Ok((
            ApiToken {
                id: r.get(0)?,
                user: r.get(1)?,
                name: r.get(2)?,
                role: Role::Viewer,
                created_at: r.get(4)?,
                last_used_at: r.get(5)?,
                revoked_at: r.get(6)?,
            },
            r.get(3)?,
        ))
    }

    fn typed_tokens(rows: Vec<(ApiToken, String)>) -> Result<Vec<ApiToken>> {
        rows.into_iter()
            .map(|(mut t, role)| {
                t.role = role.parse()?;
                Ok(t)
            })
            .collect()
    }

    pub fn token(&self, id: i64) -> Result<ApiToken> {
        let row = self
            .conn
            .query_row(&format!("{} WHERE t.id = ?1", Self::TOKEN_SQL), [id], Self::token_row)
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("API token {id}")))?;
        Ok(Self::typed_tokens(vec![row])?.remove(0))
    }

    /// Tokens of one user, or of everyone; newest first.
    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<ApiToken>> {
        let mut st = self.conn.prepare(&format!(
            "{} WHERE (?1 IS NULL OR u.name = ?1) ORDER BY t.id DESC",
            Self::TOKEN_SQL
        ))?;
        let rows = st.query_map([user], Self::token_row)?;
        Self::typed_tokens(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revoke a token; `owner` restricts it to that user's tokens.
    pub fn revoke_token(&self, id: i64, owner: Option<&str>) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL
             AND (?3 IS NULL OR user_id = (SELECT id FROM users WHERE name = ?3))",
            params![id, now_ms(), owner],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("live API token {id}")));
        }
        Ok(())
    }

    /// Revoke every live token of `user` ("revoke all my tokens", and a
    /// password change); returns how many.
    pub fn revoke_tokens_of(&self, user: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE revoked_at IS NULL
             AND user_id = (SELECT id FROM users WHERE name = ?1)",
            params![user, now_ms()],
        )?)
    }

    /// The principal behind a bearer token: its user, if enabled, with the
    /// lesser of the token's and the user's role (a demoted user's old
    /// tokens lose the rights the user lost).
    pub fn token_principal(&self, token_hash: &[u8]) -> Result<Option<Principal>> {
        let now = now_ms();
        let row = self
            .conn
            .query_row(
                "SELECT t.id, u.id, u.name, u.role, t.role, t.last_used_at FROM api_tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.token_hash = ?1 AND t.revoked_at IS NULL AND u.disabled = 0",
                [token_hash],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((token_id, user_id, name, user_role, token_role, last_used)) = row else {
            return Ok(None);
        };
        if last_used.is_none_or(|t| now - t > TOUCH_MS) {
            self.conn.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![token_id, now],
            )?;
        }
        let role = user_role.parse::<Role>()?.min(token_role.parse()?);
        Ok(Some(Principal {
            user_id,
            name,
            role,
            via_token: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 32 item 3: two requests racing with one setup link create one
    /// admin, and the link stays used after that admin is disabled.
    #[test]
    fn a_setup_link_creates_one_admin_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite3");
        drop(Store::open(&db).unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = ["first", "second"]
            .into_iter()
            .map(|name| {
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let s = Store::open(&db).unwrap();
                    barrier.wait();
                    s.add_first_admin(name, "hash", b"link").is_ok()
                })
            })
            .collect();
        let won: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let s = Store::open(&db).unwrap();
        assert_eq!(s.users().unwrap().len(), 1);
        let admin = s.users().unwrap().remove(0).name;
        s.set_user_disabled(&admin, true).unwrap();
        assert!(!s.has_admin().unwrap());
        let err = s.add_first_admin("third", "hash", b"link").unwrap_err().to_string();
        assert!(err.contains("has been used"), "{err}");
        // A new link (a restart prints one while no admin is enabled) works.
        s.add_first_admin("third", "hash", b"another link").unwrap();
    }
}
