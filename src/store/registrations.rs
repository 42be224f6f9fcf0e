//! Registrations as persisted, for restoring the server core.

use super::Store;
use crate::error::Result;
use crate::lwm2m::registration::{Registration, RegistrationId};

impl Store {
    /// All persisted registrations, for restoring the server core.
    pub fn registrations(&self) -> Result<Vec<Registration<String>>> {
        self.registrations_where("1", [])
    }

    /// When each of `endpoints` that is registered last registered, in one
    /// query.
    pub fn registered_at(&self, endpoints: &[&str]) -> Result<std::collections::HashMap<String, i64>> {
        let endpoints: Vec<rusqlite::types::Value> = endpoints.iter().map(|&e| e.to_string().into()).collect();
        let mut st = self.conn.prepare_cached(
            "SELECT d.endpoint, r.registered_at FROM registrations r JOIN devices d ON d.id = r.device_id
             WHERE d.endpoint IN rarray(?1)",
        )?;
        let rows = st.query_map([std::rc::Rc::new(endpoints)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(super) fn registrations_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Registration<String>>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT r.reg_id, d.endpoint, r.peer, r.lifetime, r.version, r.binding, r.queue_mode, r.sms, r.object_links,
                    r.root_path, r.announced_format, r.registered_at, r.updated_at, r.last_seen
             FROM registrations r JOIN devices d ON d.id = r.device_id WHERE {filter}"
        ))?;
        let rows = st.query_map(args, |r| {
            let id: String = r.get(0)?;
            Ok(Registration {
                id: RegistrationId::parse(&id).unwrap_or(RegistrationId(0)),
                endpoint: r.get(1)?,
                peer: r.get(2)?,
                lifetime: r.get(3)?,
                version: r.get(4)?,
                binding: r.get(5)?,
                queue_mode: r.get(6)?,
                sms: r.get(7)?,
                object_links: r.get(8)?,
                root_path: r.get(9)?,
                announced_format: r.get(10)?,
                registered_at: r.get(11)?,
                updated_at: r.get(12)?,
                last_seen: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
