//! The firmware catalogue's records and download accounting. The
//! download server hands its [`DownloadRecord`]s to the store writer; the
//! type lives here so the store needs nothing from the download server.

use std::net::SocketAddr;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_ms};
use crate::error::{Error, Result};

/// One download request, as the download server accounts it.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadRecord {
    pub ts: i64,
    pub firmware_id: i64,
    /// Inclusive byte range served, for 206.
    pub range: Option<(u64, u64)>,
    pub status: u16,
    pub bytes: u64,
    pub duration_us: u64,
    pub peer: SocketAddr,
    /// The device the download token was issued to.
    pub device: Option<String>,
    /// A resume at offset == size: the nRF "FOTA doom loop".
    pub doom_loop: bool,
    /// Over CoAP(S) Block2 (`status` is then a CoAP code, 2.05 as 205),
    /// else HTTPS.
    pub coap: bool,
}

/// A firmware catalogue record.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FirmwareRow {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub image_type: String,
    pub uploaded_at: i64,
    pub uploader: String,
    pub notes: String,
    pub deleted_at: Option<i64>,
    /// A modem delta's base: the modem version it applies to.
    pub base_version: Option<String>,
}

/// A new catalogue record, before it has an id.
pub struct NewFirmware<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub size: u64,
    pub image_type: &'a str,
    pub uploader: &'a str,
    pub notes: &'a str,
}

const FIRMWARE_SQL: &str = "SELECT id, name, version, sha256, size, image_type, uploaded_at, uploader, notes, deleted_at, base_version FROM firmware";

fn firmware_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FirmwareRow> {
    Ok(FirmwareRow {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        sha256: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        image_type: r.get(5)?,
        uploaded_at: r.get(6)?,
        uploader: r.get(7)?,
        notes: r.get(8)?,
        deleted_at: r.get(9)?,
        base_version: r.get(10)?,
    })
}

impl Store {
    /// Add a catalogue record. A live image with the same content is
    /// returned instead (`false`): the same image is stored once.
    pub fn insert_firmware(&mut self, f: &NewFirmware<'_>) -> Result<(FirmwareRow, bool)> {
        let tx = self.write_tx()?;
        let existing = tx
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE sha256 = ?1 AND deleted_at IS NULL"),
                [f.sha256],
                firmware_row,
            )
            .optional()?;
        if let Some(row) = existing {
            return Ok((row, false));
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM firmware WHERE name = ?1 AND deleted_at IS NULL)",
            [f.name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(Error::AlreadyExists(format!("a live firmware image named {}", f.name)));
        }
        tx.execute(
            "INSERT INTO firmware (name, version, sha256, size, image_type, uploaded_at, uploader, notes, base_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                f.name,
                f.version,
                f.sha256,
                f.size as i64,
                f.image_type,
                now_ms(),
                f.uploader,
                f.notes,
                // A modem delta says its base in its name, as Nordic names
                // them; without that it is offered to every modem.
                (f.image_type == "modem-delta")
                    .then(|| crate::firmware::image::modem_delta_versions(f.name).map(|v| v.0))
                    .flatten()
            ],
        )?;
        let id = tx.last_insert_rowid();
        let row = tx.query_row(&format!("{FIRMWARE_SQL} WHERE id = ?1"), [id], firmware_row)?;
        tx.commit()?;
        Ok((row, true))
    }

    /// Catalogue records, newest first; soft-deleted ones only if asked.
    pub fn firmware_list(&self, include_deleted: bool) -> Result<Vec<FirmwareRow>> {
        let filter = if include_deleted {
            ""
        } else {
            " WHERE deleted_at IS NULL"
        };
        let mut st = self.conn.prepare(&format!("{FIRMWARE_SQL}{filter} ORDER BY id DESC"))?;
        let rows = st.query_map([], firmware_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A record by id, or the live record by name.
    pub fn firmware(&self, id_or_name: &str) -> Result<FirmwareRow> {
        let row = match id_or_name.parse::<i64>() {
            Ok(id) => self
                .conn
                .query_row(&format!("{FIRMWARE_SQL} WHERE id = ?1"), [id], firmware_row)
                .optional()?,
            Err(_) => self
                .conn
                .query_row(
                    &format!("{FIRMWARE_SQL} WHERE name = ?1 AND deleted_at IS NULL"),
                    [id_or_name],
                    firmware_row,
                )
                .optional()?,
        };
        row.ok_or_else(|| Error::NotFound(format!("firmware {id_or_name}")))
    }

    /// The live record with this download name.
    pub fn live_firmware_by_name(&self, name: &str) -> Result<Option<FirmwareRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE name = ?1 AND deleted_at IS NULL"),
                [name],
                firmware_row,
            )
            .optional()?)
    }

    /// The live record with this content.
    pub fn live_firmware_by_sha(&self, sha256: &str) -> Result<Option<FirmwareRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{FIRMWARE_SQL} WHERE sha256 = ?1 AND deleted_at IS NULL"),
                [sha256],
                firmware_row,
            )
            .optional()?)
    }

    /// Soft delete: the record stays for audit, the image is no longer served.
    pub fn remove_firmware(&self, id: i64) -> Result<FirmwareRow> {
        let n = self.conn.execute(
            "UPDATE firmware SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("live firmware {id}")));
        }
        self.firmware(&id.to_string())
    }

    /// Download counts of an image: requests, bytes, devices, doom loops.
    pub fn download_stats(&self, firmware_id: i64) -> Result<serde_json::Value> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COUNT(DISTINCT device), COALESCE(SUM(doom_loop), 0), MAX(ts)
             FROM downloads WHERE firmware_id = ?1",
            [firmware_id],
            |r| {
                Ok(serde_json::json!({
                    "requests": r.get::<_, i64>(0)?,
                    "bytes": r.get::<_, i64>(1)?,
                    "devices": r.get::<_, i64>(2)?,
                    "doom_loops": r.get::<_, i64>(3)?,
                    "last": r.get::<_, Option<i64>>(4)?,
                }))
            },
        )?)
    }

    /// Content hashes of live records: the image files that must stay.
    pub fn firmware_hashes(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT DISTINCT sha256 FROM firmware WHERE deleted_at IS NULL")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
