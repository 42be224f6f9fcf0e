//! The firmware catalogue: images stored content-addressed by SHA-256 in
//! the data directory, with their records in the store.
//!
//! An image is written to a temporary file, fsynced and renamed into
//! place, and only then recorded; a crash or a full disk at any point
//! leaves no visible image and no record.

pub mod image;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::digest;

use crate::error::{Error, Result};
use crate::store::{FirmwareRow, NewFirmware, Store};
pub use image::ImageType;

/// What an uploader says about an image.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// The download name, `/binaries/NAME`.
    pub name: &'a str,
    /// The version the operator gives; `None` takes the one the image
    /// states (`image::stated_version`). Given and stated must agree.
    pub version: Option<&'a str>,
    pub notes: &'a str,
    pub uploader: &'a str,
}

/// Where images live: `<data_dir>/firmware/images/<sha256>.bin`, with
/// uploads in progress under `<data_dir>/firmware/tmp/`.
#[derive(Debug, Clone)]
pub struct Catalogue {
    dir: PathBuf,
    max_size: u64,
}

/// A name as it appears in `/binaries/NAME`: no path separators, no
/// dotfiles, nothing that needs escaping in a URL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        cause: source,
    }
}

/// Make a rename or unlink in `dir` durable (the directory entry itself).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

pub fn sha256_hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Catalogue {
    pub fn new(data_dir: &Path, max_size: u64) -> Catalogue {
        Catalogue {
            dir: data_dir.join("firmware"),
            max_size,
        }
    }

    fn images(&self) -> PathBuf {
        self.dir.join("images")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub fn image_path(&self, sha256: &str) -> PathBuf {
        self.images().join(format!("{sha256}.bin"))
    }

    /// Copy `source` into the catalogue as `name`/`version`. Returns the
    /// record and whether it is new (an identical live image is reused).
    pub fn add(
        &self,
        store: &mut Store,
        source: &mut dyn Read,
        upload: &Upload<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(FirmwareRow, bool)> {
        let Upload {
            name,
            version,
            notes,
            uploader,
        } = *upload;
        if !valid_name(name) {
            return Err(Error::Invalid {
                what: "firmware name",
                reason: format!("`{name}`: use 1–128 of A–Z a–z 0–9 . _ + -, not starting with a dot"),
            });
        }
        let given = version.map(str::trim);
        if let Some(v) = given
            && (v.is_empty() || v.len() > 64 || v.chars().any(char::is_control))
        {
            return Err(Error::Invalid {
                what: "firmware version",
                reason: "1 to 64 printable characters".into(),
            });
        }
        for d in [self.images(), self.tmp()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let tmp_path = self.tmp().join(format!("{:016x}.part", fastrand::u64(..)));
        // Removes the partial file on every early return.
        let mut guard = TempFile(Some(tmp_path.clone()));
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(io(&tmp_path))?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut head = Vec::with_capacity(32);
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        path: PathBuf::from("<source>"),
                        cause: e,
                    });
                }
            };
            size += n as u64;
            if size > self.max_size {
                return Err(Error::TooLarge {
                    what: format!("firmware image {name}"),
                    limit: self.max_size,
                });
            }
            if head.len() < 32 {
                head.extend_from_slice(&buf[..n.min(32 - head.len())]);
            }
            ctx.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&tmp_path))?;
            progress(size);
        }
        if size == 0 {
            return Err(Error::Invalid {
                what: "firmware image",
                reason: "empty file".into(),
            });
        }
        let image_type = ImageType::detect(&head);
        // Decided before the image takes its name, so a refusal leaves nothing.
        let version = match (given, image::stated_version(image_type, &head, name)) {
            (Some(g), Some(stated)) if !image::version_agrees(g, &stated) => {
                return Err(Error::Invalid {
                    what: "firmware version",
                    reason: format!("`{g}` was given, but the {} image states {stated}", image_type.as_str()),
                });
            }
            (Some(g), _) => g.to_string(),
            (None, Some(stated)) => stated,
            (None, None) => {
                return Err(Error::Invalid {
                    what: "firmware version",
                    reason: format!(
                        "the {} image states no version (no MCUboot header, no Nordic modem file name): give one",
                        image_type.as_str()
                    ),
                });
            }
        };
        out.sync_all().map_err(io(&tmp_path))?;
        drop(out);
        let sha = sha256_hex(ctx.finish().as_ref());
        let final_path = self.image_path(&sha);
        if final_path.exists() {
            // Same content already stored: keep one copy.
            drop(guard);
        } else {
            std::fs::rename(&tmp_path, &final_path).map_err(io(&final_path))?;
            guard.0 = None;
            sync_dir(&self.images())?;
        }
        store.insert_firmware(&NewFirmware {
            name,
            version: &version,
            sha256: &sha,
            size,
            image_type: image_type.as_str(),
            uploader,
            notes,
        })
    }

    /// Soft-delete a record; its file goes once no live record uses it.
    pub fn remove(&self, store: &Store, id: i64) -> Result<FirmwareRow> {
        let row = store.remove_firmware(id)?;
        if store.live_firmware_by_sha(&row.sha256)?.is_none() {
            let path = self.image_path(&row.sha256);
            match std::fs::remove_file(&path) {
                Ok(()) => sync_dir(&self.images())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(row)
    }

    /// Start-up clean-up: partial uploads left by a crash, and image files
    /// no live record refers to (a crash between rename and record).
    pub fn clean(&self, store: &Store) -> Result<usize> {
        let keep: std::collections::HashSet<String> = store.firmware_hashes()?.into_iter().collect();
        let mut removed = 0;
        for (dir, is_orphan) in [
            (self.tmp(), Box::new(|_: &str| true) as Box<dyn Fn(&str) -> bool>),
            (self.images(), Box::new(|stem: &str| !keep.contains(stem))),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if is_orphan(stem) {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A temporary file deleted on drop unless taken.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Store, Catalogue) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let cat = Catalogue::new(dir.path(), 1 << 20);
        (dir, store, cat)
    }

    fn add(cat: &Catalogue, store: &mut Store, bytes: &[u8], name: &str, version: &str) -> Result<(FirmwareRow, bool)> {
        let upload = Upload {
            name,
            version: Some(version),
            notes: "",
            uploader: "test",
        };
        cat.add(store, &mut &bytes[..], &upload, &mut |_| {})
    }

    #[test]
    fn add_dedupes_and_removal_is_soft() {
        let (_d, mut store, cat) = setup();
        let img = vec![7u8; 5000];
        let (a, new) = add(&cat, &mut store, &img, "app.bin", "1.0.0").unwrap();
        assert!(new);
        assert_eq!(a.size, 5000);
        assert!(cat.image_path(&a.sha256).exists());
        let (b, new) = add(&cat, &mut store, &img, "copy.bin", "1.0.1").unwrap();
        assert!(!new, "the same image is stored once");
        assert_eq!(a.id, b.id);
        assert!(matches!(
            add(&cat, &mut store, &[8u8; 10], "app.bin", "2"),
            Err(Error::AlreadyExists(_))
        ));
        let gone = cat.remove(&store, a.id).unwrap();
        assert!(gone.deleted_at.is_some());
        assert!(!cat.image_path(&a.sha256).exists());
        assert!(store.firmware("app.bin").is_err(), "no live record by name");
        assert_eq!(
            store.firmware(&a.id.to_string()).unwrap().id,
            a.id,
            "the record stays for audit"
        );
        assert_eq!(std::fs::read_dir(cat.tmp()).unwrap().count(), 0);
    }

    #[test]
    fn bad_input_leaves_nothing() {
        let (_d, mut store, cat) = setup();
        let e = add(&cat, &mut store, &vec![0u8; (1 << 20) + 1], "big.bin", "1").unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        for bad in ["", ".hidden", "a/b", "../x", "x y", "é"] {
            assert!(add(&cat, &mut store, b"x", bad, "1").is_err(), "{bad}");
        }
        assert!(add(&cat, &mut store, b"", "empty.bin", "1").is_err());
        assert!(add(&cat, &mut store, b"x", "v.bin", " ").is_err());
        assert!(store.firmware_list(true).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(cat.tmp()).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(cat.images()).unwrap().count(), 0);
    }

    #[test]
    fn clean_removes_orphans() {
        let (_d, mut store, cat) = setup();
        let (a, _) = add(&cat, &mut store, b"keep me", "k.bin", "1").unwrap();
        std::fs::write(cat.tmp().join("dead.part"), b"partial").unwrap();
        std::fs::write(cat.image_path(&"0".repeat(64)), b"no record").unwrap();
        assert_eq!(cat.clean(&store).unwrap(), 2);
        assert!(cat.image_path(&a.sha256).exists());
    }
}
