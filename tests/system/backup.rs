//! `flownexus backup` while the server runs under write load, and
//! `flownexus restore`, refused while a server holds the data directory and
//! then giving back exactly the backup's rows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flownexus::lwm2m::Models;
use flownexus::lwm2m::operation::OperationKind;
use flownexus::sim::Fleet;
use flownexus::store::now_ms;

use super::{Restartable, device, flownexus_cli, store, wait_for};

/// Every table's rows, in rowid order, as text: two databases with the
/// same digest hold the same rows.
fn rows(db: &Path) -> Vec<(String, usize, String)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables
        .into_iter()
        .filter(|t| {
            // Virtual tables' shadow tables and the like have no rowid order to compare.
            conn.prepare(&format!("SELECT rowid FROM \"{t}\" LIMIT 1")).is_ok()
        })
        .map(|t| {
            let mut st = conn.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid")).unwrap();
            let n = st.column_count();
            let mut text = String::new();
            let mut count = 0;
            let mut q = st.query([]).unwrap();
            while let Some(r) = q.next().unwrap() {
                count += 1;
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i).unwrap();
                    text.push_str(&format!("{v:?}|"));
                }
                text.push('\n');
            }
            (t, count, format!("{:x}", fnv1a(&text)))
        })
        .collect()
}

/// A 64-bit FNV-1a digest (enough to tell two tables apart in a test).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_and_restore_only_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Restartable::new(&data);
    let child = server.serve_up().await;
    let data_s = data.to_str().unwrap();

    // Write load: 20 devices notifying every 300 ms, and Reads queued.
    let devices: Vec<_> = (0..20).map(|i| device(&format!("bk-{i}"))).collect();
    let fleet = Fleet::spawn(devices, server.coap, Arc::new(Models::embedded()), false)
        .await
        .unwrap();
    let s = store(&data);
    wait_for("registrations", Duration::from_secs(15), || {
        s.registrations().unwrap().len() == 20
    })
    .await;
    let load = tokio::spawn({
        let data = data.clone();
        async move {
            let s = store(&data);
            for i in 0..40 {
                let ep = format!("bk-{}", i % 20);
                let read = OperationKind::Read {
                    path: "/3303/0/5700".parse().unwrap(),
                };
                s.queue_operation(&ep, &read, now_ms() + 60_000, 3).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Backups while the writer commits, each checked and complete.
    let mut backups = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let file = dir.path().join(format!("backup-{i}.sqlite3"));
        let (ok, out, err) = flownexus_cli(data_s, &["backup", file.to_str().unwrap()], "");
        assert!(ok, "{out}{err}");
        assert!(out.contains("integrity ok") && out.contains("20 devices"), "{out}");
        backups.push(file);
    }
    load.await.unwrap();
    let (ok, _, err) = flownexus_cli(data_s, &["backup", backups[0].to_str().unwrap()], "");
    assert!(!ok && err.contains("never overwrites"), "{err}");

    // Neither a restore nor a second server while this one runs.
    let (ok, _, err) = flownexus_cli(data_s, &["restore", backups[1].to_str().unwrap()], "");
    assert!(!ok, "restore must be refused while serving");
    assert!(err.contains("is running on"), "{err}");
    let second = super::serve_command(&data, &[])
        .env("FLOWNEXUS_COAPS_ENABLED", "false")
        .env("FLOWNEXUS_HTTP_ENABLED", "false")
        .env("FLOWNEXUS_FW_ENABLED", "false")
        .env("FLOWNEXUS_METRICS_ENABLED", "false")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("is running on"));

    let values_at_backup = rows(&backups[1]);
    assert!(
        values_at_backup.iter().any(|(t, n, _)| t == "operations" && *n > 0),
        "the backup holds the queued operations: {values_at_backup:?}"
    );
    fleet.stop().await;
    drop(child); // kill -9: the lock goes with the process
    drop(s);

    let before = rows(&data.join("flownexus.sqlite3"));
    let (ok, out, err) = flownexus_cli(data_s, &["restore", backups[1].to_str().unwrap()], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("(20 devices)"), "{out}");
    let restored = rows(&data.join("flownexus.sqlite3"));
    assert_eq!(
        restored, values_at_backup,
        "the restore holds exactly the backup's rows"
    );
    assert_ne!(before, restored, "the load went on after the backup");
    // What it replaced is kept, whole.
    let kept: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(rows(&kept[0]), before);

    // A damaged backup is refused and changes nothing.
    let torn = dir.path().join("torn.sqlite3");
    let bytes = std::fs::read(&backups[2]).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() / 3]).unwrap();
    let (ok, _, err) = flownexus_cli(data_s, &["restore", torn.to_str().unwrap()], "");
    assert!(!ok, "{err}");
    assert_eq!(rows(&data.join("flownexus.sqlite3")), restored);

    // The restored store serves again.
    let child = server.serve_up().await;
    let s = store(&data);
    assert_eq!(s.endpoints().unwrap().len(), 20);
    drop(child);
}
