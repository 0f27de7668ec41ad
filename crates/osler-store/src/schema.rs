//! The schema and connection settings. See the crate docs for the format and its invariants.

use rusqlite::{Connection, OptionalExtension};

use crate::StoreError;

/// Bumped whenever the on-disk format changes; a newer file is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 6;

/// What each older schema needs to become the current one, after the CREATE statements
/// below have made any table it lacks. Version 2 added the registry (resources, their versions
/// and search terms, device assignments, readings held for want of an assignment) and the
/// monitoring plans' history and the earlier versions of corrected readings: new tables only, so nobody's readings or alerts move; the
/// thresholds set before are recorded as plan changes by an unknown author at upgrade time
/// (their real time and author were never kept).
///
/// Version 3 added access tokens, accounts, the audit log and gateway batches (their
/// signatures, the provenance of what they stored): new tables, and a column `b` on readings
/// naming the batch that carried each (absent, so no bytes, on readings stored before).
///
/// Version 4 added what people do about alerts (their timeline, each recipient's response,
/// snoozes, escalation policies and timers, webhook endpoints and their delivery queue): new
/// tables only; alerts raised before have an empty timeline and no recipients
/// (anyone who may see one can still answer it).
///
/// Version 5 added the days each patient gave data and the notes and calls of their care: new
/// tables, the days filled from the readings and summaries already stored.
///
/// Version 6 added technical alerts and what gateways say of themselves: new tables, and an
/// index of batches by gateway and time; and data days count only readings a device gave (a
/// manual entry is not one), so they are counted again from the readings.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "INSERT INTO plan_change(patient, rule, value, author, reason, at_ms)
     SELECT patient, rule, value, 'unknown',
            'set before this hub recorded plan changes (schema 1); the time is when it was upgraded',
            CAST(strftime('%s', 'now') AS INTEGER) * 1000
     FROM threshold_override;",
    ),
    (2, "ALTER TABLE reading ADD COLUMN b INTEGER;"),
    (3, ""),
    (4, crate::care::BACKFILL),
    (5, "DELETE FROM data_day;"),
    (5, crate::care::BACKFILL),
];

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS patient(id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device(id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    metric INTEGER NOT NULL,
    device TEXT NOT NULL,
    UNIQUE(patient, metric, device)
);
CREATE INDEX IF NOT EXISTS series_metric ON series(metric);
CREATE TABLE IF NOT EXISTS reading(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v REAL NOT NULL,
    v2 REAL,
    tz INTEGER NOT NULL,
    rx INTEGER NOT NULL,
    status INTEGER NOT NULL,
    ident TEXT,
    b INTEGER,
    PRIMARY KEY(series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateway(
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateway_seq(
    gateway TEXT NOT NULL,
    lane INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY(gateway, lane)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter(
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert(
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_reading_ms INTEGER NOT NULL,
    raised_at_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    threshold REAL NOT NULL,
    late INTEGER NOT NULL,
    source TEXT NOT NULL,
    resolved_reading_ms INTEGER,
    resolved_at_ms INTEGER,
    UNIQUE(patient, rule, raised_reading_ms)
);
CREATE INDEX IF NOT EXISTS alert_open ON alert(patient, rule) WHERE state='raised';
CREATE TABLE IF NOT EXISTS alert_event(
    seq INTEGER PRIMARY KEY,
    alert INTEGER NOT NULL,
    patient TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    who TEXT,
    note TEXT,
    value REAL,
    reading_ms INTEGER
);
CREATE INDEX IF NOT EXISTS alert_event_of ON alert_event(alert, seq);
CREATE TABLE IF NOT EXISTS alert_response(
    alert INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    state TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY(alert, recipient)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snooze(
    id INTEGER PRIMARY KEY,
    alert INTEGER NOT NULL,
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    recipient TEXT,
    who TEXT NOT NULL,
    reason TEXT,
    from_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    ended_why TEXT
);
CREATE INDEX IF NOT EXISTS snooze_of ON snooze(alert);
CREATE TABLE IF NOT EXISTS escalation_policy(
    team TEXT PRIMARY KEY,
    repeat INTEGER NOT NULL,
    author TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS escalation_step(
    team TEXT NOT NULL,
    n INTEGER NOT NULL,
    targets TEXT NOT NULL,
    wait_ms INTEGER NOT NULL,
    PRIMARY KEY(team, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS escalation(
    alert INTEGER PRIMARY KEY,
    team TEXT,
    step INTEGER NOT NULL,
    round INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    ended_why TEXT
);
CREATE INDEX IF NOT EXISTS escalation_due ON escalation(due_ms) WHERE ended_ms IS NULL;
CREATE TABLE IF NOT EXISTS webhook_endpoint(
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    team TEXT,
    created_ms INTEGER NOT NULL,
    disabled_ms INTEGER,
    disabled_why TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_delivery(
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    msg_id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    critical INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    payload TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    done_ms INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_delivery(next_ms) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS threshold_override(
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY(patient, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plan_change(
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    value REAL,
    author TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_change_of ON plan_change(patient, at_ms);
CREATE TABLE IF NOT EXISTS reading_version(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    vid INTEGER NOT NULL,
    v REAL NOT NULL,
    v2 REAL,
    tz INTEGER NOT NULL,
    rx INTEGER NOT NULL,
    status INTEGER NOT NULL,
    ident TEXT,
    replaced_ms INTEGER NOT NULL,
    PRIMARY KEY(series, t, vid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS summary(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    t1 INTEGER NOT NULL,
    n INTEGER NOT NULL,
    v REAL NOT NULL,
    v2 REAL,
    mn REAL NOT NULL,
    mn2 REAL,
    mx REAL NOT NULL,
    mx2 REAL,
    last REAL NOT NULL,
    last2 REAL,
    tz INTEGER NOT NULL,
    spikes INTEGER NOT NULL,
    PRIMARY KEY(series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ident(
    h INTEGER NOT NULL,
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    PRIMARY KEY(h, series, t)
) WITHOUT ROWID;
";

/// Settings and schema for the one writing connection.
pub(crate) fn prepare_writer(conn: &Connection) -> Result<(), StoreError> {
    // WAL lets readers run beside the writer; synchronous=FULL makes each commit durable
    // (in WAL mode NORMAL would survive a process crash but not a power cut, and the hub
    // acknowledges only what survives both). The cache is sized for inserts into many series.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA journal_size_limit=67108864;
         PRAGMA wal_autocheckpoint=0;
         PRAGMA cache_size=-65536;
         PRAGMA foreign_keys=OFF;",
    )?;
    conn.busy_handler(Some(wait_a_little))?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;{CREATE}{}{}{}{}{}",
        crate::care::CREATE,
        crate::registry::CREATE,
        crate::held::CREATE,
        crate::security::CREATE,
        crate::technical::CREATE
    ))?;
    let version: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key='schema'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?1), ('readings', 0)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) if v < SCHEMA_VERSION => {
            for (from, sql) in MIGRATIONS.iter().filter(|(from, _)| *from >= v) {
                conn.execute_batch(sql)?;
                tracing::info!(from, to = from + 1, "store schema migrated");
            }
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) => {
            conn.execute_batch("ROLLBACK")?;
            return Err(StoreError::Corrupt(format!(
                "schema version {v}, this build reads {SCHEMA_VERSION}"
            )));
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// While another connection holds the write lock: 1 ms naps, for up to 10 s. SQLite's own
/// busy timeout naps up to 100 ms at a time, so a writer waiting on a short transaction of the
/// other (the group commit, an answer to an alert) could wait a hundred times longer than it.
fn wait_a_little(attempt: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(1));
    attempt < 10_000
}

/// Settings for the hub's second writing connection, which runs small transactions beside the
/// writer thread (answers to alerts, security changes, webhook attempts); the schema is the
/// writer's to prepare.
pub(crate) fn prepare_side_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=OFF;",
    )?;
    conn.busy_handler(Some(wait_a_little))?;
    Ok(())
}

/// Settings for a reading connection.
pub(crate) fn prepare_reader(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA query_only=ON;
         PRAGMA cache_size=-16384;
         PRAGMA mmap_size=268435456;",
    )?;
    Ok(())
}

/// The reading count kept in `meta` (counting 10 million rows at start-up would take seconds).
pub(crate) fn reading_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT value FROM meta WHERE key='readings'", [], |r| {
        r.get(0)
    })?;
    Ok(n.max(0) as u64)
}

/// Checkpoints the WAL every half second from its own connection, so that copying pages into
/// the database file (and its fsync) never lands on a commit that someone is waiting for: with
/// SQLite's automatic checkpoint, the unlucky commit that crosses 1,000 pages pays for it.
/// PASSIVE never blocks the writer; a final checkpoint runs at shutdown.
pub(crate) fn checkpoint_loop(path: &std::path::Path, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the checkpoint connection; the WAL will grow until restart");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(1));
    let mut ticks = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ticks += 1;
        if ticks.is_multiple_of(10)
            && let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}
