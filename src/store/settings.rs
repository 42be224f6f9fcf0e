//! What an operator keeps between visits: settings (time zone, the device
//! list's columns) and saved device-list filters, per user.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::error::{Error, Result};

/// Most saved filters one user keeps.
pub const MAX_SAVED_FILTERS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedFilter {
    pub id: i64,
    pub name: String,
    /// The device list's query string (`tag=north&status=offline`).
    pub query: String,
}

impl Store {
    pub fn setting(&self, user: &str, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM user_settings WHERE user_name = ?1 AND key = ?2")?
            .query_row([user, key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_setting(&self, user: &str, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO user_settings (user_name, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_name, key) DO UPDATE SET value = excluded.value",
            params![user, key, value],
        )?;
        Ok(())
    }

    pub fn saved_filters(&self, user: &str) -> Result<Vec<SavedFilter>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, name, query FROM saved_filters WHERE user_name = ?1 ORDER BY name")?;
        let rows = st.query_map([user], |r| {
            Ok(SavedFilter {
                id: r.get(0)?,
                name: r.get(1)?,
                query: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Save (or, under a name already used, replace) a filter.
    pub fn save_filter(&self, user: &str, name: &str, query: &str) -> Result<()> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(Error::Invalid {
                what: "filter name",
                reason: "1 to 64 printable characters".into(),
            });
        }
        let saved = self.saved_filters(user)?;
        if saved.len() >= MAX_SAVED_FILTERS && !saved.iter().any(|f| f.name == name) {
            return Err(Error::Invalid {
                what: "saved filters",
                reason: format!("at most {MAX_SAVED_FILTERS}: remove one first"),
            });
        }
        self.conn.execute(
            "INSERT INTO saved_filters (user_name, name, query, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_name, name) DO UPDATE SET query = excluded.query",
            params![user, name, query, now_ms()],
        )?;
        Ok(())
    }

    /// Remove one of `user`'s saved filters (another user's is not found).
    pub fn remove_saved_filter(&self, user: &str, id: i64) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM saved_filters WHERE id = ?1 AND user_name = ?2",
            params![id, user],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("saved filter {id}")));
        }
        Ok(())
    }
}
