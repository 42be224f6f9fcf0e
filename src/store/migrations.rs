//! The schema: versioned migrations, applied in order by [`Store::open`](super::Store::open).

/// Versioned migrations, applied in order at start-up; never edit one that
/// has shipped, add a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: devices, registrations, values, events, operations
    r#"
    CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL UNIQUE,
        psk_identity TEXT UNIQUE,
        tags TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    );
    CREATE TABLE registrations (
        device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        reg_id TEXT NOT NULL UNIQUE,
        peer TEXT NOT NULL,
        lifetime INTEGER NOT NULL,
        version TEXT NOT NULL,
        binding TEXT NOT NULL,
        queue_mode INTEGER NOT NULL,
        sms TEXT,
        object_links TEXT NOT NULL,
        root_path TEXT NOT NULL,
        announced_format INTEGER,
        registered_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    -- Value history: one row per reported value; `value` keeps SQLite's
    -- own type (INTEGER, REAL, TEXT, BLOB), `vtype` the LwM2M type.
    CREATE TABLE resource_values (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY
    );
    CREATE INDEX resource_values_by_path ON resource_values(device_id, path, ts);
    CREATE INDEX resource_values_by_ts ON resource_values(ts);
    -- Latest value per resource, kept by upsert so reads never scan history.
    CREATE TABLE latest_values (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY,
        PRIMARY KEY (device_id, path)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        endpoint TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_by_endpoint ON events(endpoint, ts);
    CREATE INDEX events_by_ts ON events(ts);
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        kind TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        coap_code TEXT,
        result TEXT
    );
    CREATE INDEX operations_pending ON operations(state) WHERE state IN ('queued', 'sent');
    CREATE INDEX operations_by_endpoint ON operations(endpoint, id);
    "#,
    // 2: observations, so a restart keeps accepting their notifications
    r#"
    CREATE TABLE observations (
        token INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        request TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX observations_by_endpoint ON observations(endpoint);
    "#,
    // 3: the firmware catalogue and download accounting
    r#"
    CREATE TABLE firmware (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        image_type TEXT NOT NULL,
        uploaded_at INTEGER NOT NULL,
        uploader TEXT NOT NULL,
        notes TEXT NOT NULL DEFAULT '',
        deleted_at INTEGER
    );
    -- Names are unique among live images: /binaries/NAME must mean one file.
    CREATE UNIQUE INDEX firmware_live_name ON firmware(name) WHERE deleted_at IS NULL;
    CREATE INDEX firmware_by_sha ON firmware(sha256);
    CREATE TABLE downloads (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        firmware_id INTEGER NOT NULL,
        range_start INTEGER,
        range_end INTEGER,
        status INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        peer TEXT NOT NULL,
        device TEXT,
        doom_loop INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX downloads_by_firmware ON downloads(firmware_id, ts);
    CREATE INDEX downloads_by_device ON downloads(device, ts) WHERE device IS NOT NULL;
    "#,
    // 4: per-device PSK for CoAP over DTLS (the identity column exists since 1)
    r#"
    ALTER TABLE devices ADD COLUMN psk_key BLOB;
    "#,
    // 5: a counter bumped by every change to a device's key, whoever makes
    // it (server, CLI, API): the running server polls it and reloads its
    // in-memory key table when it moves.
    r#"
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('psk_generation', 0);
    CREATE TRIGGER psk_inserted AFTER INSERT ON devices WHEN NEW.psk_identity IS NOT NULL
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    CREATE TRIGGER psk_updated AFTER UPDATE OF psk_identity, psk_key ON devices
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    CREATE TRIGGER psk_deleted AFTER DELETE ON devices WHEN OLD.psk_identity IS NOT NULL
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'psk_generation'; END;
    "#,
    // 6: operators of the dashboard and API; the password as an argon2id
    // PHC string, never anything reversible.
    r#"
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        password_changed_at INTEGER NOT NULL
    );
    "#,
    // 7: dashboard sessions and API tokens. Only SHA-256 digests of the
    // bearer secrets are kept: a copy of the database opens nothing.
    r#"
    CREATE TABLE web_sessions (
        id_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        address TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX web_sessions_by_user ON web_sessions(user_id);
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX api_tokens_by_user ON api_tokens(user_id);
    CREATE INDEX devices_by_created ON devices(created_at);
    CREATE INDEX registrations_by_last_seen ON registrations(last_seen);
    -- Devices per firmware version (overview chart, list filter).
    CREATE INDEX latest_values_by_path ON latest_values(path, value);
    "#,
    // 8: values stored per hour, counted as they are written, so the
    // overview's chart reads 24 rows instead of counting the history.
    r#"
    CREATE TABLE values_per_hour (hour INTEGER PRIMARY KEY, count INTEGER NOT NULL);
    INSERT INTO values_per_hour (hour, count)
        SELECT ts / 3600000 * 3600000, COUNT(*) FROM resource_values GROUP BY 1;
    "#,
    // 9: when each device was last seen, on the device itself (0: never), so
    // the device list sorts by it from an index instead of sorting the fleet
    // through a join; both keyset sorts break ties by endpoint in the index.
    r#"
    ALTER TABLE devices ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET last_seen = COALESCE((SELECT last_seen FROM registrations WHERE device_id = devices.id), 0);
    CREATE INDEX devices_by_last_seen ON devices(last_seen, endpoint);
    DROP INDEX devices_by_created;
    CREATE INDEX devices_by_created ON devices(created_at, endpoint);
    "#,
    // 10: the device list no longer sorts by the registration's last_seen
    // (migration 9); its index only cost a write per Update.
    r#"
    DROP INDEX registrations_by_last_seen;
    "#,
    // 11: the value history as one B-tree clustered by device, resource and
    // time (it was a table and two indexes), fed through a journal in
    // arrival order (`store::journal` says why). `seq` is the value's
    // journal sequence number, unique, so a value moved twice is one row.
    r#"
    CREATE TABLE value_history (
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY,
        PRIMARY KEY (device_id, path, ts, seq)
    ) WITHOUT ROWID;
    INSERT INTO value_history (device_id, path, ts, seq, vtype, value)
        SELECT device_id, path, ts, rowid, vtype, value FROM resource_values ORDER BY device_id, path, ts, rowid;
    CREATE TABLE value_journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        ts INTEGER NOT NULL,
        vtype TEXT NOT NULL,
        value ANY
    );
    INSERT INTO sqlite_sequence (name, seq) SELECT 'value_journal', COALESCE(MAX(rowid), 0) FROM resource_values;
    DROP TABLE resource_values;
    -- Only the firmware version is looked up by value; indexing every
    -- resource cost a random write per latest value.
    DROP INDEX latest_values_by_path;
    CREATE INDEX latest_firmware_versions ON latest_values(value) WHERE path = '/3/0/3';
    "#,
    // 12: the device list's search ("endpoint or PSK identity contains")
    // from a trigram index instead of a scan of every device. External
    // content: the index holds no copy of the names. Case-sensitive, like
    // the scan that short searches still use.
    r#"
    CREATE VIRTUAL TABLE device_search USING fts5(
        endpoint, psk_identity, content = 'devices', content_rowid = 'id', tokenize = 'trigram case_sensitive 1'
    );
    CREATE TRIGGER device_search_insert AFTER INSERT ON devices BEGIN
        INSERT INTO device_search (rowid, endpoint, psk_identity) VALUES (new.id, new.endpoint, new.psk_identity);
    END;
    CREATE TRIGGER device_search_delete AFTER DELETE ON devices BEGIN
        INSERT INTO device_search (device_search, rowid, endpoint, psk_identity)
            VALUES ('delete', old.id, old.endpoint, old.psk_identity);
    END;
    CREATE TRIGGER device_search_update AFTER UPDATE OF endpoint, psk_identity ON devices BEGIN
        INSERT INTO device_search (device_search, rowid, endpoint, psk_identity)
            VALUES ('delete', old.id, old.endpoint, old.psk_identity);
        INSERT INTO device_search (rowid, endpoint, psk_identity) VALUES (new.id, new.endpoint, new.psk_identity);
    END;
    INSERT INTO device_search (device_search) VALUES ('rebuild');
    "#,
    // 13: Writes that an older flownexus queued with `replace: false` on a
    // resource path (its default, which went out as a POST: an Execute on
    // the device, LwM2M's operation-to-CoAP mapping) become plain Writes,
    // which go out as Write-Replace (PUT); see lwm2m::operation::write_method.
    r#"
    UPDATE operations SET request = json_remove(request, '$.replace')
     WHERE state IN ('queued', 'sent')
       AND json_extract(request, '$.op') = 'write'
       AND json_extract(request, '$.replace') = 0
       AND length(json_extract(request, '$.path')) - length(replace(json_extract(request, '$.path'), '/', '')) >= 3;
    "#,
    // 14: firmware updates, one row per device update; at most one active
    // update per device, enforced here by the schema, not by a check in
    // code whose error could be lost. `machine` is the fota::Update state as JSON;
    // `fota_steps` is each update's timeline.
    r#"
    CREATE TABLE fota_updates (
        id INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        firmware_id INTEGER NOT NULL REFERENCES firmware(id),
        phase TEXT NOT NULL,
        active INTEGER NOT NULL,
        machine TEXT NOT NULL,
        reason TEXT,
        -- set by an operator (CLI, API); the server's update task acts on it
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE UNIQUE INDEX fota_one_active_update ON fota_updates(endpoint) WHERE active = 1;
    CREATE INDEX fota_updates_by_endpoint ON fota_updates(endpoint, id);
    CREATE TABLE fota_steps (
        update_id INTEGER NOT NULL REFERENCES fota_updates(id) ON DELETE CASCADE,
        ts INTEGER NOT NULL,
        phase TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX fota_steps_by_update ON fota_steps(update_id, ts);
    "#,
    // 15: firmware campaigns. `campaign_devices` holds each target with
    // its wave (NULL: skipped, already on the version) and, once started,
    // its update; a campaign's update ends and its member's status is set
    // in the same transaction (store::fota), so the two never disagree.
    // `revision` lets the campaign task and an operator's command (pause,
    // cancel) change a campaign without losing either's change.
    r#"
    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        firmware_id INTEGER NOT NULL REFERENCES firmware(id),
        target TEXT NOT NULL,
        plan TEXT NOT NULL,
        state TEXT NOT NULL,
        wave INTEGER NOT NULL,
        reason TEXT,
        machine TEXT NOT NULL,
        revision INTEGER NOT NULL DEFAULT 0,
        -- the highest device id the late-joiner search has looked at
        joined_through INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE TABLE campaign_devices (
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        endpoint TEXT NOT NULL,
        wave INTEGER,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        update_id INTEGER REFERENCES fota_updates(id),
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (campaign_id, endpoint)
    );
    CREATE INDEX campaign_devices_by_status ON campaign_devices(campaign_id, status, wave, position);
    CREATE UNIQUE INDEX campaign_devices_by_update ON campaign_devices(update_id) WHERE update_id IS NOT NULL;
    CREATE TABLE campaign_steps (
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        ts INTEGER NOT NULL,
        state TEXT NOT NULL,
        wave INTEGER NOT NULL,
        detail TEXT
    );
    CREATE INDEX campaign_steps_by_campaign ON campaign_steps(campaign_id, ts);
    ALTER TABLE fota_updates ADD COLUMN campaign_id INTEGER REFERENCES campaigns(id);
    "#,
    // 16: multi-component updates (Object 33629). An update's machine holds
    // its images as `components`; the single image of an update made
    // before moves there. A modem delta records the modem version it
    // applies to (from Nordic's `…_from_A_to_B` file name).
    r#"
    UPDATE fota_updates SET machine = json_set(machine,
        '$.carrier', 'object5',
        '$.components', json_array(json_object(
            'kind', 'application',
            'package_uri', json_extract(machine, '$.package_uri'),
            'coap_uri', json_extract(machine, '$.coap_uri'),
            'target_version', json_extract(machine, '$.target_version'),
            'instance', 0)))
    WHERE json_extract(machine, '$.components') IS NULL;
    ALTER TABLE firmware ADD COLUMN base_version TEXT;
    "#,
    // 17: a counter bumped by every device removal, whoever makes it: the
    // running server reads new device rows by id as they come, and reloads
    // the whole list of endpoints it knows only when one was removed.
    r#"
    INSERT INTO counters VALUES ('devices_deleted', 0);
    CREATE TRIGGER device_deleted AFTER DELETE ON devices
    BEGIN UPDATE counters SET value = value + 1 WHERE name = 'devices_deleted'; END;
    "#,
    // 18: what operators keep between visits (a user's time zone and device
    // list columns, their saved device-list filters) and device profiles:
    // steps queued for every device of a tag (or all) at each registration.
    r#"
    CREATE TABLE user_settings (
        user_name TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (user_name, key)
    ) WITHOUT ROWID;
    CREATE TABLE saved_filters (
        id INTEGER PRIMARY KEY,
        user_name TEXT NOT NULL,
        name TEXT NOT NULL,
        query TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (user_name, name)
    );
    CREATE TABLE device_profiles (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        tag TEXT,
        steps TEXT NOT NULL,
        deadline_s INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // 19: devices listed in natural order (`urn:sim:2` before
    // `urn:sim:10`) from an index: `display::natural_key` of the endpoint,
    // written with every insert and filled for existing rows by
    // `fill_endpoint_order` right after this step. NULL only in rows
    // another tool inserted; they list first.
    r#"
    ALTER TABLE devices ADD COLUMN endpoint_order TEXT;
    CREATE INDEX devices_in_natural_order ON devices(endpoint_order, endpoint);
    "#,
    // 20: the onboarding profile every installation starts with, as the
    // old flownexus read /3 at every registration: the Device object
    // (model, versions, battery) read at each Register, its Firmware
    // Version observed (Core 1.1 E.3, /3/0/3) so the fleet's firmware
    // chart and `campaign create --from-version` see the truth from the
    // first minute. An ordinary profile: shown, editable and removable on
    // the profiles page; never added twice, never re-added once removed.
    r#"
    INSERT INTO device_profiles (name, tag, steps, deadline_s, created_by, created_at)
    SELECT 'onboarding', NULL, '[{"op":"read","path":"/3/0"},{"op":"observe","path":"/3/0/3"}]', 3600, 'flownexus',
           CAST(strftime('%s', 'now') AS INTEGER) * 1000
    WHERE NOT EXISTS (SELECT 1 FROM device_profiles WHERE name = 'onboarding');
    "#,
    // 21: setup links used: each creates the first admin once, even when
    // two requests race or every admin is later disabled (issue 32).
    r#"
    CREATE TABLE setup_links_used (
        digest BLOB PRIMARY KEY,
        used_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 22: device keys sealed at rest (`sealing::KeySeal`): no schema
    // change; `seal_device_keys` seals the keys stored in clear right
    // after this step.
    "-- device keys sealed at rest",
    // 23: the outbox (issue 26): events that leave the process, written in
    // the transaction of the change that causes them, and each sink's
    // cursor. A row goes once every sink has taken it; while no sink is
    // configured `outbox_sinks` is empty and no row is written.
    r#"
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        endpoint TEXT,
        state INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE outbox_sinks (
        name TEXT PRIMARY KEY,
        delivered INTEGER NOT NULL
    );
    "#,
    // 24: operations and firmware updates sent by Celery tasks (issue 26):
    // the task's id, unique, so a task taken twice (a crash between
    // committing and acknowledging it) makes one, and the result goes back
    // under its id.
    r#"
    ALTER TABLE operations ADD COLUMN celery_task_id TEXT;
    CREATE UNIQUE INDEX operations_celery_task ON operations (celery_task_id) WHERE celery_task_id IS NOT NULL;
    ALTER TABLE fota_updates ADD COLUMN celery_task_id TEXT;
    CREATE UNIQUE INDEX fota_updates_celery_task ON fota_updates (celery_task_id) WHERE celery_task_id IS NOT NULL;
    "#,
];

/// A database as a flownexus of schema `version` left it, for tests of
/// what later migrations do to old rows.
#[cfg(test)]
pub(super) fn database_at(path: &std::path::Path, version: usize) -> rusqlite::Connection {
    let old = rusqlite::Connection::open(path).unwrap();
    old.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .unwrap();
    for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
        old.execute_batch(sql).unwrap();
        old.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [i as i64 + 1])
            .unwrap();
    }
    old
}

/// The migration that added `devices.endpoint_order`, which SQL alone
/// cannot fill.
pub(super) const ENDPOINT_ORDER: usize = 19;

/// The step after which device keys written in clear are sealed.
pub(super) const SEAL_KEYS: usize = 22;

/// Seal every device key still stored in clear.
pub(super) fn seal_device_keys(
    tx: &rusqlite::Transaction<'_>,
    seal: &super::sealing::KeySeal,
) -> crate::error::Result<usize> {
    let clear: Vec<(i64, String, Vec<u8>)> = tx
        .prepare("SELECT id, endpoint, psk_key FROM devices WHERE psk_key IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .filter(|row| {
            row.as_ref().map_or(true, |(_, _, key): &(i64, String, Vec<u8>)| {
                !super::sealing::KeySeal::is_sealed(key)
            })
        })
        .collect::<rusqlite::Result<_>>()?;
    let mut set = tx.prepare("UPDATE devices SET psk_key = ?2 WHERE id = ?1")?;
    for (id, endpoint, key) in &clear {
        set.execute(rusqlite::params![id, seal.seal(endpoint, key)])?;
    }
    Ok(clear.len())
}

/// Fill `devices.endpoint_order` where it is missing.
pub(super) fn fill_endpoint_order(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<usize> {
    let missing: Vec<(i64, String)> = tx
        .prepare("SELECT id, endpoint FROM devices WHERE endpoint_order IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut set = tx.prepare("UPDATE devices SET endpoint_order = ?2 WHERE id = ?1")?;
    for (id, endpoint) in &missing {
        set.execute(rusqlite::params![id, crate::lwm2m::display::natural_key(endpoint)])?;
    }
    Ok(missing.len())
}
