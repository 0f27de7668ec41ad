//! The schema and connection settings. See the crate docs for the format and its invariants.

use rusqlite::{Connection, OptionalExtension};

use crate::StoreError;

/// Bumped whenever the on-disk format changes; a newer file is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 1;

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
CREATE TABLE IF NOT EXISTS reading(
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v REAL NOT NULL,
    v2 REAL,
    tz INTEGER NOT NULL,
    rx INTEGER NOT NULL,
    status INTEGER NOT NULL,
    ident TEXT,
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
CREATE TABLE IF NOT EXISTS threshold_override(
    patient TEXT NOT NULL,
    rule TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY(patient, rule)
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
         PRAGMA cache_size=-65536;
         PRAGMA foreign_keys=OFF;",
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE;{CREATE}"))?;
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
