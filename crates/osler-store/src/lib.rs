//! The hub's storage of readings, alerts, monitoring plans and the registry: one SQLite file in
//! WAL mode, written by one thread with group commit, read by a small pool of connections.
//!
//! Main types: [`Store`] (open, write, query), [`WriteOp`] / [`WriteOutcome`] (what a write
//! asked for and what happened), [`Query`] and [`Page`] (time-range search), [`ReadingId`],
//! [`HeldReading`]; registry writes and reads take `osler_registry` types.
//!
//! # On-disk format (schema version 2)
//!
//! Readings below; alerts and plans in [`alerts`]; the registry (`resource`,
//! `resource_version`, `resource_term`, `assignment`) in `registry.rs`; readings held for want
//! of an assignment in `held.rs`. A database of an older schema is migrated in place when the
//! store opens (`schema.rs`); a newer one is refused.
//!
//! ```text
//! series(id INTEGER PRIMARY KEY, patient, metric, device)  -- one row per patient × metric × device
//! reading(series, t, v, v2, tz, rx, status, ident)          -- WITHOUT ROWID, PRIMARY KEY (series, t)
//! ident(h, series, t)                                       -- WITHOUT ROWID, only for sender identifiers
//! summary(series, t, t1, n, v, v2, mn, mn2, mx, mx2, last, last2, tz, spikes)
//!                                                           -- WITHOUT ROWID, PRIMARY KEY (series, t): edge window summaries
//! patient(id), device(id), meta(key, value)
//! ```
//!
//! `t` is the time taken in UTC milliseconds; `tz` the sender's offset in minutes; `rx` the
//! delay from taken to received in milliseconds; `v`/`v2` the canonical value(s). Everything
//! that repeats for a stream (patient, metric, device) lives once in `series`, so a reading row
//! is a handful of small integers: SQLite stores 0 and 1 in no bytes at all, integral REALs as
//! small integers and NULLs in none. The main query (one patient, one metric, a time range) is
//! a range scan of the primary key.
//!
//! # Invariants
//! - A write is acknowledged (its future resolves `Ok`) only after its transaction committed
//!   with `synchronous=FULL`, so an acknowledged reading survives a crash or power loss.
//! - One writer thread: check-then-insert (identity, conditional create) is never raced.
//! - A reading's identity is (patient, metric, device, time taken to the millisecond): the same
//!   reading sent twice is stored once; a different value under the same identity is refused as
//!   a conflict, never silently overwritten.
//! - An atomic job (a FHIR transaction) is stored whole or not at all (one savepoint per job).

pub mod admin;
pub mod alerts;
pub mod care;
pub mod escalation;
mod held;
pub mod lifecycle;
mod query;
mod registry;

pub use held::HeldReading;
mod schema;
mod security;
pub mod technical;
pub mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use osler_core::{Identifier, Reading};
use osler_registry::{Assignment, Kind, ResourceQuery, ResourceWrite, StoredResource};
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{mpsc, oneshot};

pub use query::{Cursor, Page, Query};
pub use security::{Account, AuditRow, Client, Enrolled, Spent, TokenRecord};

/// The name of the database file inside the hub's data directory.
pub const DB_FILE: &str = "hub.db";

/// Errors from the store. Client mistakes never appear here: those are [`WriteOutcome`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    Closed,
    #[error("the database holds data this version cannot read: {0}")]
    Corrupt(String),
    #[error("the disk holding the store is full; nothing of this was stored")]
    DiskFull,
    #[error("the commit failed, nothing of it was stored: {0}")]
    Commit(String),
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this store has no audit key, so it cannot record what must be audited")]
    NoAuditKey,
}

/// When a series' devices were last heard from (SQL over series `s`): the later of when its
/// newest reading was taken and when it was received (`rx` is stored as received minus taken),
/// or the end of its newest window summary; each one seek down a primary key.
const LAST_CONTACT: &str = "MAX(
    COALESCE((SELECT r.t + MAX(r.rx, 0) FROM reading r WHERE r.series = s.id
              ORDER BY r.t DESC LIMIT 1), 0),
    COALESCE((SELECT m.t1 FROM summary m WHERE m.series = s.id
              ORDER BY m.t DESC LIMIT 1), 0))";

/// The stable identity of a stored reading: its series and its time taken. Written as
/// `{series}-{t}` it is a valid FHIR id. Summaries have the negated series and are written
/// `s{series}-{t}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadingId {
    pub series: i64,
    pub t_ms: i64,
}

impl std::fmt::Display for ReadingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.series < 0 {
            write!(f, "s{}-{}", -self.series, self.t_ms)
        } else {
            write!(f, "{}-{}", self.series, self.t_ms)
        }
    }
}

impl ReadingId {
    pub fn is_summary(&self) -> bool {
        self.series < 0
    }

    pub fn parse(text: &str) -> Option<ReadingId> {
        if let Some(rest) = text.strip_prefix('s') {
            let id = ReadingId::parse(rest)?;
            return (id.series > 0).then_some(ReadingId {
                series: -id.series,
                t_ms: id.t_ms,
            });
        }
        let (s, t) = text.split_once('-')?;
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 19 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(s) || !digits(t) {
            return None;
        }
        Some(ReadingId {
            series: s.parse().ok()?,
            t_ms: t.parse().ok()?,
        })
    }
}

/// A reading as stored, with its identity. A gateway's window summary is stored and served
/// like a reading (its mean as the value, its first reading's time as the time taken) with
/// `summary` set; its id has a negative series (written `s{series}-{t}`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReading {
    pub id: ReadingId,
    pub reading: Reading,
    pub summary: Option<SummaryStats>,
}

/// One reading to store.
#[derive(Clone, Debug)]
pub struct WriteOp {
    pub reading: Reading,
    /// Conditional create: store only if no reading carries this identifier.
    pub if_none_exist: Option<Identifier>,
    /// The reading's patient is not known to its sender (or was only guessed from the
    /// sender's copy of the assignments): the store attributes it by its own device
    /// assignments at the time the reading was taken, and `reading.patient` is ignored. The
    /// device (an id, or an identifier such as a serial number) must be given. With no
    /// assignment covering that time, the reading is held (`WriteOutcome::Held`) and stored
    /// when one is written.
    pub by_device: bool,
    /// A correction of the reading stored under the same identity: a different value or
    /// status replaces it, the old version is kept (`reading_version`), never overwritten
    /// silently. Without it, a different reading under a taken identity is a `Conflict`.
    pub correction: Option<Correction>,
}

/// How a correction may replace a stored reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    /// `If-Match`: the version the client corrects; another current version is a conflict.
    pub if_match: Option<u64>,
}

/// What became of one [`WriteOp`].
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    /// Stored now.
    Created(StoredReading),
    /// Already there: the same reading sent again, or a conditional create that matched.
    Existing(StoredReading),
    /// A different reading is stored under the same identity (patient, metric, device, time).
    Conflict { existing: StoredReading },
    /// A conditional create matched several readings.
    MultipleMatches { count: usize },
    /// Part of a gateway batch whose sequence number the hub had committed before (a resend).
    AlreadyCommitted,
    /// Part of a gateway batch that could not be stored as a reading (a conflict): kept in the
    /// dead-letter table with the reason instead.
    DeadLettered,
    /// Attributed by device, but no assignment covers its time: kept durably with the reason
    /// and stored under its patient as soon as an assignment covering it is written.
    Held,
    /// A correction replaced the stored reading; the previous version is kept.
    Corrected(StoredReading),
    /// A correction's `If-Match` named another version than the current one.
    VersionConflict { current: u64 },
}

impl WriteOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            WriteOutcome::Created(_)
                | WriteOutcome::Existing(_)
                | WriteOutcome::AlreadyCommitted
                | WriteOutcome::DeadLettered
                | WriteOutcome::Held
                | WriteOutcome::Corrected(_)
        )
    }
}

/// Where a gateway batch sits in its gateway's sequence, so that a resend is recognised.
/// Ops of a batch job are numbered by `op_seqs`; entries the hub could not accept at all
/// travel in `rejected` and are dead-lettered in the same commit.
#[derive(Clone, Debug)]
pub struct BatchMark {
    pub gateway: String,
    /// When the hub received the batch (recorded on dead letters).
    pub received_ms: i64,
    /// The batch's first sequence number: more than one past the high-water mark is a gap
    /// (the gateway sent out of order or lost entries), counted in `StoreStats::sequence_gaps`.
    pub first_seq: u64,
    pub lane: u8,
    pub last_seq: u64,
    /// The sequence number of each op, in order.
    pub op_seqs: Vec<u64>,
    /// The raw entry text of each op, kept if the op must be dead-lettered (a conflict).
    pub op_raw: Vec<String>,
    /// (sequence number, raw entry, reason) of entries refused before reaching the store.
    pub rejected: Vec<(u64, String, String)>,
    /// (sequence number, summary) of a summaries-lane batch.
    pub summaries: Vec<(u64, Summary)>,
    /// The batch's signature by its gateway: kept as the provenance of what it stored.
    pub signature: Vec<u8>,
    /// What the gateway said of itself in the batch's header, kept in the batch's commit.
    pub report: Option<technical::GatewayReport>,
}

/// Where a stored reading came from: the signed gateway batch that carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    pub gateway: String,
    pub lane: u8,
    pub first_seq: u64,
    pub last_seq: u64,
    pub received_ms: i64,
    pub signature: Vec<u8>,
}

/// A window summary from a gateway's edge: readings of one stream that were not sent one by
/// one, as count and per-part min, max, mean and last of their raw values.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub patient: osler_core::Id,
    pub metric: osler_core::Metric,
    pub device: Option<osler_core::Id>,
    /// First reading summarised (time taken, with the sender's offset).
    pub start: osler_core::Timestamp,
    pub mean: osler_core::Value,
    pub stats: SummaryStats,
}

/// A summary's statistics; `mean` is carried as the stored reading's value.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryStats {
    pub end_ms: i64,
    pub count: u32,
    pub min: osler_core::Value,
    pub max: osler_core::Value,
    pub last: osler_core::Value,
    pub spikes: u32,
}

/// An item the hub accepted from a gateway but could not store as a reading, kept with why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub received_ms: i64,
    pub source: String,
    pub payload: String,
    pub reason: String,
}

/// The result of one write job.
#[derive(Clone, Debug)]
pub struct WriteResult {
    /// False when the job was atomic and some op failed: then nothing of it was stored.
    pub committed: bool,
    pub outcomes: Vec<WriteOutcome>,
    /// For each alert write: the alert as it now stands, when the write changed it.
    pub alerts: Vec<Option<alerts::AlertRecord>>,
    /// For each resource write, in order: what became of it.
    pub resources: Vec<osler_registry::WriteOutcome>,
}

/// Tuning knobs, with defaults fit for a small machine.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Readings per group commit at most; more jobs wait for the next commit.
    pub max_group_readings: usize,
    /// Pending write jobs before writers wait (backpressure instead of unbounded memory).
    pub queue_depth: usize,
    /// The minimal Patient resource that a patient known only from readings is given (version
    /// 1, so that it is read, searched and included like any; enrolling it makes version 2).
    /// `None`: no registry resource for them.
    pub patient_stub: Option<osler_registry::Stub>,
    /// The audit log's signing key (its 32-byte seed). A job that carries audit entries is
    /// refused without one.
    pub audit_key: Option<[u8; 32]>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_group_readings: 50_000,
            queue_depth: 1024,
            patient_stub: None,
            audit_key: None,
        }
    }
}

/// Counters the hub exports as metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub readings: AtomicU64,
    pub commits: AtomicU64,
    pub committed_readings: AtomicU64,
    /// Gateway batches that did not start right after what the hub had committed.
    pub sequence_gaps: AtomicU64,
}

pub(crate) struct Job {
    ops: Vec<WriteOp>,
    atomic: bool,
    batch: Option<BatchMark>,
    alerts: Vec<alerts::AlertWrite>,
    resources: Vec<ResourceWrite>,
    rules: Option<Rules>,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
    audit: Vec<String>,
}

/// The alert rules as the store runs them: given the readings a job left stored (new ones,
/// and those already there), the alert changes to write. Called inside the job's commit, after
/// its readings are applied, so that readings and their alerts are one transaction (one fsync);
/// not called for a job that stored nothing (an atomic job that failed). The store knows
/// nothing of the rules themselves.
pub type Rules = Box<dyn FnOnce(&[&Reading]) -> Vec<alerts::AlertWrite> + Send>;

impl StoreError {
    /// A group commit's failure, for each of its requesters (rusqlite's errors do not clone:
    /// the kind is kept, the detail as text).
    pub(crate) fn for_requester(&self) -> StoreError {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull =>
            {
                StoreError::DiskFull
            }
            StoreError::DiskFull => StoreError::DiskFull,
            e => StoreError::Commit(e.to_string()),
        }
    }
}

/// The hub's store. Cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    readers: Mutex<Vec<Connection>>,
    /// The connection of the small transactions beside the writer (see [`Store::transact`]).
    side: Arc<Mutex<Option<Connection>>>,
    stats: Arc<StoreStats>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Copies the WAL into the database file off the writer's path (see `schema`).
    checkpointer: Option<std::thread::JoinHandle<()>>,
    checkpoint_stop: Arc<std::sync::atomic::AtomicBool>,
    audit_key: Option<ed25519_dalek::SigningKey>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, and starts its writer thread.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        schema::prepare_writer(&conn)?;
        let readings = schema::reading_count(&conn)?;
        let stats = Arc::new(StoreStats::default());
        stats.readings.store(readings, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(options.queue_depth);
        let audit_key = options
            .audit_key
            .map(|k| ed25519_dalek::SigningKey::from_bytes(&k));
        if let Some(stub) = &options.patient_stub {
            // Patients known from readings before (a database of an older release, or one
            // opened without stubs) get theirs now.
            registry::stub_missing_patients(&conn, stub)?;
        }
        let writer = writer::Writer::new(
            conn,
            stats.clone(),
            options.max_group_readings,
            options.patient_stub.clone(),
            audit_key.clone(),
        )?;
        let handle = std::thread::Builder::new()
            .name("osler-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        let checkpoint_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = {
            let (path, stop) = (path.clone(), checkpoint_stop.clone());
            std::thread::Builder::new()
                .name("osler-store-checkpoint".into())
                .spawn(move || schema::checkpoint_loop(&path, &stop))
                .map_err(|source| StoreError::Dir {
                    path: dir.to_owned(),
                    source,
                })?
        };
        Ok(Store {
            audit_key,
            checkpointer: Some(checkpointer),
            checkpoint_stop,
            path,
            jobs: Some(tx),
            readers: Mutex::new(Vec::new()),
            side: Arc::default(),
            stats,
            writer: Some(handle),
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>, StoreError> {
        self.jobs.as_ref().ok_or(StoreError::Closed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Stores `ops` and resolves once they are durable. With `atomic`, either every op
    /// succeeds and all are stored, or nothing is.
    pub async fn write(&self, ops: Vec<WriteOp>, atomic: bool) -> Result<WriteResult, StoreError> {
        self.submit(ops, atomic, None, Vec::new(), None, Vec::new())
            .await
    }

    /// Appends audit entries (FHIR AuditEvent JSON, one object each) on their own, and
    /// resolves once they are durable: for what changed nothing (a read, a refusal).
    pub async fn audit(&self, entries: Vec<String>) -> Result<(), StoreError> {
        self.submit(Vec::new(), false, None, Vec::new(), None, entries)
            .await
            .map(|_| ())
    }

    /// Writes registry resources, each on its own (one refused leaves the others), and
    /// resolves once they are durable. `WriteResult::resources` says what became of each.
    /// Readings held for want of an assignment that a write now covers are stored in the same
    /// commit, and `rules` judge them there.
    pub async fn write_resources(
        &self,
        writes: Vec<ResourceWrite>,
        rules: Option<Rules>,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit_all(Vec::new(), writes, false, None, Vec::new(), rules, audit)
            .await
    }

    /// Readings and registry resources in one job (a FHIR Bundle): with `atomic`, all of it is
    /// stored or none (a refused resource or a conflicting reading undoes the job); without, each
    /// fails alone. `rules` judge the readings stored, in the same commit.
    pub async fn write_all(
        &self,
        ops: Vec<WriteOp>,
        writes: Vec<ResourceWrite>,
        atomic: bool,
        rules: Rules,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit_all(ops, writes, atomic, None, Vec::new(), Some(rules), audit)
            .await
    }

    /// The current version of a registry resource.
    pub fn resource(&self, kind: Kind, id: &str) -> Result<Option<StoredResource>, StoreError> {
        self.read(|c| registry::current(c, kind, id))
    }

    /// One version of a registry resource.
    pub fn resource_version(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.read(|c| registry::version(c, kind, id, version))
    }

    /// Every version of a registry resource, newest first.
    pub fn resource_history(
        &self,
        kind: Kind,
        id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        self.read(|c| registry::history(c, kind, id))
    }

    /// One page of a registry search, and the total when `with_total`.
    pub fn search_resources(
        &self,
        q: &ResourceQuery,
        with_total: bool,
    ) -> Result<(Vec<StoredResource>, Option<u64>), StoreError> {
        self.read(|c| {
            let f = registry::filter(c, q)?;
            let total = if with_total {
                Some(registry::count(c, &f)?)
            } else {
                None
            };
            let page = if q.limit == 0 {
                Vec::new()
            } else {
                registry::search(c, q, &f)?
            };
            Ok((page, total))
        })
    }

    /// Readings held for want of a device assignment, oldest first.
    pub fn held(&self, limit: usize) -> Result<Vec<HeldReading>, StoreError> {
        self.read(|c| held::list(c, limit))
    }

    /// The patient a device (its id, or an identifier such as a serial number) was assigned
    /// to at `t_ms`, by the assignments in force.
    pub fn patient_at(&self, device: &str, t_ms: i64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            let resolved = registry::resolve_device(c, device)?;
            registry::patient_at(c, &resolved, t_ms)
        })
    }

    /// Every device assignment in force, each with every name its device goes by (its id and
    /// identifier values: what a device may report itself as).
    pub fn assignments(&self) -> Result<Vec<(Assignment, Vec<String>)>, StoreError> {
        self.read(|c| {
            registry::assignments(c)?
                .into_iter()
                .map(|a| {
                    let names = registry::device_names(c, &a.device)?;
                    Ok((a, names))
                })
                .collect()
        })
    }

    /// [`Store::write`] (or [`Store::write_batch`] with `batch`) with the alert rules run in
    /// the same commit: `WriteResult::alerts` holds, in order, the outcome of each alert write
    /// the rules returned.
    pub async fn write_with_rules(
        &self,
        ops: Vec<WriteOp>,
        atomic: bool,
        batch: Option<BatchMark>,
        rules: Rules,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit(ops, atomic, batch, Vec::new(), Some(rules), audit)
            .await
    }

    /// Queues one job for the writer and waits for its commit.
    async fn submit(
        &self,
        ops: Vec<WriteOp>,
        atomic: bool,
        batch: Option<BatchMark>,
        alerts: Vec<alerts::AlertWrite>,
        rules: Option<Rules>,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit_all(ops, Vec::new(), atomic, batch, alerts, rules, audit)
            .await
    }

    /// Queues one job for the writer and waits for its commit.
    #[allow(clippy::too_many_arguments)]
    async fn submit_all(
        &self,
        ops: Vec<WriteOp>,
        resources: Vec<ResourceWrite>,
        atomic: bool,
        batch: Option<BatchMark>,
        alerts: Vec<alerts::AlertWrite>,
        rules: Option<Rules>,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job {
                ops,
                atomic,
                batch,
                alerts,
                resources,
                rules,
                audit,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for callers outside an async runtime (benchmarks, tools).
    pub fn write_blocking(
        &self,
        ops: Vec<WriteOp>,
        atomic: bool,
    ) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Job {
                ops,
                atomic,
                batch: None,
                alerts: Vec::new(),
                resources: Vec::new(),
                rules: None,
                audit: Vec::new(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Stores a gateway batch: ops whose sequence number was committed before are skipped
    /// (`AlreadyCommitted`), conflicts and `rejected` entries are dead-lettered, and the
    /// gateway's high-water mark moves to `last_seq`, all in one commit.
    pub async fn write_batch(
        &self,
        ops: Vec<WriteOp>,
        mark: BatchMark,
        alerts: Vec<alerts::AlertWrite>,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit(ops, false, Some(mark), alerts, None, audit)
            .await
    }

    /// Records alert changes (and threshold overrides) durably; the result says, for each, the
    /// alert as it now stands when the write changed something.
    pub async fn write_alerts(
        &self,
        writes: Vec<alerts::AlertWrite>,
        audit: Vec<String>,
    ) -> Result<WriteResult, StoreError> {
        self.submit(Vec::new(), false, None, writes, None, audit)
            .await
    }

    /// The token with this hash (SHA-256 of its secret), revoked or expired ones included.
    pub fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|c| security::token_by_hash(c, hash))
    }

    /// Revokes a token by its hash, recording `audit` in the same transaction; returns the
    /// token when there was one.
    pub async fn revoke_token(
        &self,
        hash: [u8; 32],
        now_ms: i64,
        audit: Vec<String>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        // On a connection of its own, like the admin commands (SQLite serialises it with the
        // writer): the revocation and its audit entry are one transaction.
        let key = self.audit_key.clone().ok_or(StoreError::NoAuditKey)?;
        let dir = self.path.parent().map(Path::to_owned).unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            admin::in_transaction(&dir, &key, &audit, |c| {
                security::revoke_token(c, Some(&hash), None, now_ms)
            })
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs a security write on a connection of its own (SQLite serialises it with the
    /// writer): `f` does the change and says which audit entries record it, appended in the
    /// same transaction.
    async fn transact<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<(T, Vec<String>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let key = self.audit_key.clone().ok_or(StoreError::NoAuditKey)?;
        let (path, side) = (self.path.clone(), self.side.clone());
        tokio::task::spawn_blocking(move || {
            // One side connection, kept open: these transactions are short and few, and
            // opening a connection costs more than most of them.
            let mut slot = side.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let c = Connection::open(&path)?;
                schema::prepare_side_writer(&c)?;
                *slot = Some(c);
            }
            match slot.as_ref() {
                Some(c) => admin::transact_on(c, &key, f),
                None => Err(StoreError::Closed),
            }
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// The account a still-valid enrolment code is for.
    pub fn enrolling(
        &self,
        code_hash: &[u8; 32],
        now_ms: i64,
    ) -> Result<Option<Account>, StoreError> {
        self.read(|c| security::enrolling(c, code_hash, now_ms))
    }

    /// A person's account.
    pub fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        self.read(|c| security::account(c, name))
    }

    /// Enrols the account the one-time code is for; `audit(&outcome)` says what to record.
    pub async fn enrol(
        &self,
        code_hash: [u8; 32],
        password_phc: String,
        totp_secret: Option<Vec<u8>>,
        recovery: Vec<[u8; 32]>,
        now_ms: i64,
        audit: impl FnOnce(&Enrolled) -> Vec<String> + Send + 'static,
    ) -> Result<Enrolled, StoreError> {
        self.transact(move |c| {
            let e = security::enrol(
                c,
                &code_hash,
                &password_phc,
                totp_secret.as_deref(),
                &recovery,
                now_ms,
            )?;
            let a = audit(&e);
            Ok((e, a))
        })
        .await
    }

    /// Accepts a second-factor step for an account if it is after the last one used.
    pub async fn use_totp_step(
        &self,
        name: String,
        step: i64,
        audit: impl FnOnce(bool) -> Vec<String> + Send + 'static,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let ok = security::use_totp_step(c, &name, step)?;
            Ok((ok, audit(ok)))
        })
        .await
    }

    /// Spends one of an account's recovery codes.
    pub async fn use_recovery(
        &self,
        name: String,
        hash: [u8; 32],
        now_ms: i64,
        audit: impl FnOnce(bool) -> Vec<String> + Send + 'static,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let ok = security::use_recovery(c, &name, &hash, now_ms)?;
            Ok((ok, audit(ok)))
        })
        .await
    }

    /// Stores new tokens (their hashes) with the audit entries of their issue.
    pub async fn issue(
        &self,
        tokens: Vec<([u8; 32], TokenRecord)>,
        audit: Vec<String>,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            for (h, t) in &tokens {
                security::insert_token(c, h, t)?;
            }
            Ok(((), audit))
        })
        .await
    }

    /// Spends a single-use token (see [`Spent`]); `audit(&outcome)` says what to record, in
    /// the same transaction (a reuse revokes the family and is recorded with it).
    pub async fn spend(
        &self,
        hash: [u8; 32],
        now_ms: i64,
        audit: impl FnOnce(&Spent) -> Vec<String> + Send + 'static,
    ) -> Result<Spent, StoreError> {
        self.transact(move |c| {
            let s = security::spend(c, &hash, now_ms)?;
            let a = audit(&s);
            Ok((s, a))
        })
        .await
    }

    /// Whether a JWT assertion's id is seen for the first time (remembered until it expires).
    pub async fn first_jti(
        &self,
        issuer: String,
        jti: String,
        expires_ms: i64,
        now_ms: i64,
        audit: impl FnOnce(bool) -> Vec<String> + Send + 'static,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let first = security::first_jti(c, &issuer, &jti, expires_ms, now_ms)?;
            Ok((first, audit(first)))
        })
        .await
    }

    /// A registered backend client.
    pub fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        self.read(|c| security::client(c, id))
    }

    /// The patients of the active care teams the practitioner is a member of.
    pub fn care_team_patients(&self, practitioner: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| security::care_team_patients(c, practitioner))
    }

    /// The gateway batches that carried a stored reading (one, or none for a reading posted
    /// through FHIR).
    pub fn provenance(&self, id: ReadingId) -> Result<Vec<Provenance>, StoreError> {
        self.read(|c| security::provenance(c, id))
    }

    /// Does what a person asks about an alert, with its audit entry in the same transaction:
    /// the number of the event that records it, or why it was refused (nothing stored then).
    pub async fn act(
        &self,
        alert: i64,
        who: String,
        act: lifecycle::Act,
        note: Option<String>,
        at_ms: i64,
        audit: String,
    ) -> Result<Result<i64, lifecycle::Refused>, StoreError> {
        self.transact(move |c| {
            let done = lifecycle::act(c, alert, &who, &act, note.as_deref(), at_ms)?;
            // A refusal stores nothing, so it is not audited here (the hub records it).
            let entries = if done.is_ok() {
                vec![audit]
            } else {
                Vec::new()
            };
            Ok((done, entries))
        })
        .await
    }

    /// Sets a care team's escalation policy, with its audit entry.
    pub async fn set_escalation(
        &self,
        team: String,
        policy: escalation::EscalationPolicy,
        author: String,
        at_ms: i64,
        audit: String,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            escalation::set(c, &team, &policy, &author, at_ms)?;
            Ok(((), vec![audit]))
        })
        .await
    }

    /// A care team's own escalation policy.
    pub fn escalation_policy(
        &self,
        team: &str,
    ) -> Result<Option<escalation::EscalationPolicy>, StoreError> {
        self.read(|c| escalation::get(c, team))
    }

    /// An alert's escalation timer.
    pub fn escalation(&self, alert: i64) -> Result<Option<escalation::Escalation>, StoreError> {
        self.read(|c| escalation::of_alert(c, alert))
    }

    /// When the next escalation step is due.
    pub fn next_escalation_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(escalation::next_due)
    }

    /// Runs the escalation steps due at `now_ms` in one transaction, with an audit entry per
    /// alert (`audit` writes it): the alerts that had a step. An alert `muted` says why is
    /// not escalated now: its step waits another wait.
    pub async fn escalate_due(
        &self,
        now_ms: i64,
        audit: impl Fn(&alerts::AlertRecord) -> String + Send + 'static,
        muted: impl Fn(&alerts::AlertRecord) -> Option<String> + Send + 'static,
    ) -> Result<Vec<alerts::AlertRecord>, StoreError> {
        self.transact(move |c| {
            let touched = escalation::run_due(c, now_ms, &muted)?;
            let entries = touched.iter().map(&audit).collect();
            Ok((touched, entries))
        })
        .await
    }

    /// When each patient's devices last gave data of `metric`, where it is after `since_ms`:
    /// (patient, time). The time is the later of when the newest reading was taken and when it
    /// was received (so a backlog of old readings arriving now counts as contact now), or the
    /// end of the newest window summary.
    pub fn latest_data(
        &self,
        metric: osler_core::Metric,
        since_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT patient, MAX(last) FROM (
                   SELECT s.patient AS patient, {LAST_CONTACT} AS last
                   FROM series s WHERE s.metric = ?1)
                 WHERE last > ?2 GROUP BY patient"
            ))?;
            let rows = stmt.query_map(params![metric as u8, since_ms], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Adds a webhook endpoint, with its audit entry.
    pub async fn add_webhook(
        &self,
        e: webhooks::Endpoint,
        audit: String,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            webhooks::add(c, &e)?;
            Ok(((), vec![audit]))
        })
        .await
    }

    /// Disables a webhook endpoint (its pending deliveries are dead-lettered); false if there
    /// was no enabled one (nothing stored, nothing audited).
    pub async fn disable_webhook(
        &self,
        id: String,
        at_ms: i64,
        audit: String,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let done = webhooks::disable(c, &id, "removed by an operator", at_ms)?;
            Ok((done, if done { vec![audit] } else { Vec::new() }))
        })
        .await
    }

    /// Every webhook endpoint.
    pub fn webhooks(&self) -> Result<Vec<webhooks::Endpoint>, StoreError> {
        self.read(webhooks::endpoints)
    }

    /// One webhook endpoint.
    pub fn webhook(&self, id: &str) -> Result<Option<webhooks::Endpoint>, StoreError> {
        self.read(|c| webhooks::endpoint(c, id))
    }

    /// Webhook deliveries, newest first (only those in `state`, if given).
    pub fn webhook_deliveries(
        &self,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<webhooks::Delivery>, StoreError> {
        self.read(|c| webhooks::deliveries(c, state, limit))
    }

    /// Pending deliveries due now, oldest first.
    pub fn due_webhooks(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<webhooks::Delivery>, StoreError> {
        self.read(|c| webhooks::due(c, now_ms, limit))
    }

    /// When the next pending delivery is due.
    pub fn next_webhook_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(webhooks::next_due)
    }

    /// Records a delivery attempt; with `note`, the alert's timeline says (in the same
    /// transaction) that its delivery failed.
    pub async fn webhook_attempt(
        &self,
        id: i64,
        payload: String,
        attempt: webhooks::Attempt,
        at_ms: i64,
        seq: i64,
        note: Option<String>,
    ) -> Result<(), StoreError> {
        self.transact(move |c| {
            webhooks::record(c, id, &payload, &attempt, at_ms)?;
            if let Some(note) = note
                && let Some(e) = lifecycle::events_after(c, seq - 1, 1, None)?.0.first()
                && let Some(a) = alerts::get(c, e.alert)?
            {
                lifecycle::note_event(c, &a, at_ms, "delivery-failed", &note)?;
            }
            Ok(((), Vec::new()))
        })
        .await
    }

    /// Puts a dead delivery back in the queue, with its audit entry; false if it is not dead.
    pub async fn replay_webhook(
        &self,
        id: i64,
        at_ms: i64,
        audit: String,
    ) -> Result<bool, StoreError> {
        self.transact(move |c| {
            let done = webhooks::replay(c, id, at_ms)?;
            Ok((done, if done { vec![audit] } else { Vec::new() }))
        })
        .await
    }

    /// The alert burden over the `window_ms` before `now_ms`.
    pub fn alert_burden(
        &self,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<lifecycle::Burden, StoreError> {
        self.read(|c| lifecycle::burden(c, now_ms, window_ms))
    }

    /// When one patient's devices last gave data of each measurement (as [`Store::latest_data`]).
    pub fn latest_data_of(
        &self,
        patient: &str,
    ) -> Result<Vec<(osler_core::Metric, i64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT s.metric, MAX({LAST_CONTACT})
                 FROM series s WHERE s.patient = ?1 GROUP BY s.metric"
            ))?;
            let rows = stmt.query_map([patient], |r| Ok((r.get::<_, u8>(0)?, r.get(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (m, t) = row?;
                if let Some(m) = osler_core::Metric::from_u8(m) {
                    out.push((m, t));
                }
            }
            Ok(out)
        })
    }

    /// How many days in `[from_day, to_day)` (local days, [`care::local_day`]) each patient
    /// gave data; only those with any.
    pub fn data_days(
        &self,
        only: care::Patients<'_>,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        self.read(|c| care::data_days(c, only, from_day, to_day))
    }

    /// Adds a note or call to a patient's care timeline, with its audit entry: its id.
    pub async fn add_note(&self, note: care::CareNote, audit: String) -> Result<i64, StoreError> {
        self.transact(move |c| Ok((care::add_note(c, &note)?, vec![audit])))
            .await
    }

    /// A patient's notes and calls in `[from_ms, to_ms)`, newest first.
    pub fn notes(
        &self,
        patient: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<care::CareNote>, StoreError> {
        self.read(|c| care::notes(c, patient, from_ms, to_ms))
    }

    /// Minutes of care and calls logged per patient in `[from_ms, to_ms)`:
    /// (patient, minutes, calls).
    pub fn care_minutes(
        &self,
        only: care::Patients<'_>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, u32, u32)>, StoreError> {
        self.read(|c| care::minutes(c, only, from_ms, to_ms))
    }

    /// The newest reading of every series of these patients.
    pub fn latest_readings(
        &self,
        only: care::Patients<'_>,
    ) -> Result<Vec<care::Latest>, StoreError> {
        self.read(|c| care::latest(c, only))
    }

    /// The readings of these series (one measurement, perhaps from several devices) in
    /// `[from_ms, to_ms)`, in buckets of `width_ms`.
    pub fn buckets(
        &self,
        series: &[i64],
        from_ms: i64,
        to_ms: i64,
        width_ms: i64,
    ) -> Result<Vec<care::Bucket>, StoreError> {
        self.read(|c| care::buckets(c, series, from_ms, to_ms, width_ms))
    }

    /// Sparkline points of several series at once, each as [`care::samples`]: one reading
    /// connection for the lot.
    pub fn samples(
        &self,
        series: &[i64],
        from_ms: i64,
        to_ms: i64,
        n: u32,
    ) -> Result<Vec<Vec<(i64, f64)>>, StoreError> {
        // Two halves on two reading connections: a worklist's sparklines are thousands of
        // independent descents, and this machine has two cores.
        let half = series.len().div_ceil(2);
        let (a, b) = series.split_at(half);
        let run = |part: &[i64]| {
            self.read(|c| {
                part.iter()
                    .map(|s| care::samples(c, *s, from_ms, to_ms, n))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let (first, second) = std::thread::scope(|scope| {
            let other = scope.spawn(|| run(b));
            (run(a), other.join())
        });
        let mut out = first?;
        // The other half's thread panicked only if SQLite did: reported as a closed store.
        out.extend(second.map_err(|_| StoreError::Closed)??);
        Ok(out)
    }

    /// Every patient the hub knows, sorted.
    pub fn patients(&self) -> Result<Vec<String>, StoreError> {
        self.read(care::patients)
    }

    /// Makes the open technical alerts of `rules` exactly the conditions `now` (see
    /// [`technical`]), with an audit entry (`audit` writes it) for each one raised or resolved;
    /// returns those changes.
    pub async fn technical_sync(
        &self,
        rules: &'static [&'static str],
        now: Vec<technical::Condition>,
        at_ms: i64,
        audit: impl Fn(&technical::TechnicalAlert, &str) -> String + Send + 'static,
    ) -> Result<Vec<(technical::TechnicalAlert, &'static str)>, StoreError> {
        self.transact(move |c| {
            let changes = technical::sync(c, rules, &now, at_ms)?;
            let entries = changes.iter().map(|(a, what)| audit(a, what)).collect();
            Ok((changes, entries))
        })
        .await
    }

    /// The open technical alerts, then the `recent` last resolved.
    pub fn technical_alerts(
        &self,
        recent: usize,
    ) -> Result<Vec<technical::TechnicalAlert>, StoreError> {
        self.read(|c| technical::list(c, recent))
    }

    /// What each gateway last said of itself.
    pub fn gateway_reports(&self) -> Result<Vec<technical::GatewayReport>, StoreError> {
        self.read(technical::reports)
    }

    /// Webhook endpoints failing now, with why (see [`technical::failing_webhooks`]).
    pub fn failing_webhooks(
        &self,
        now_ms: i64,
        retrying: u32,
        window_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| technical::failing_webhooks(c, now_ms, retrying, window_ms))
    }

    /// Every enrolled gateway and when its last batch arrived.
    pub fn gateways(&self) -> Result<Vec<(admin::GatewayRecord, Option<i64>)>, StoreError> {
        self.read(admin::gateways)
    }

    /// Every person's account.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.read(security::accounts)
    }

    /// An alert's timeline, oldest first.
    pub fn alert_timeline(&self, alert: i64) -> Result<Vec<lifecycle::AlertEvent>, StoreError> {
        self.read(|c| lifecycle::timeline(c, alert))
    }

    /// Each recipient's response to an alert.
    pub fn alert_responses(&self, alert: i64) -> Result<Vec<lifecycle::Response>, StoreError> {
        self.read(|c| lifecycle::responses(c, alert))
    }

    /// An alert's snoozes, active or ended.
    pub fn alert_snoozes(&self, alert: i64) -> Result<Vec<lifecycle::Snooze>, StoreError> {
        self.read(|c| lifecycle::snoozes(c, alert))
    }

    /// Alert events after `seq` (the live stream's replay), at most `limit`, only `within`'s,
    /// and the number of the last event looked at (where to go on from).
    pub fn alert_events_after(
        &self,
        seq: i64,
        limit: usize,
        within: Option<&[String]>,
    ) -> Result<(Vec<lifecycle::AlertEvent>, i64), StoreError> {
        self.read(|c| lifecycle::events_after(c, seq, limit, within))
    }

    /// The number of the last alert event (0 before any).
    pub fn alert_last_seq(&self) -> Result<i64, StoreError> {
        self.read(lifecycle::last_seq)
    }

    /// The audit log's size (entries).
    pub fn audit_size(&self) -> Result<u64, StoreError> {
        self.read(security::audit_size)
    }

    /// Audit entries `from..=to` (1-based), with their checkpoint signatures.
    pub fn audit_rows(&self, from: u64, to: u64) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|c| security::audit_rows(c, from, to))
    }

    /// The leaf hashes of the first `size` audit entries (for proofs).
    pub fn audit_leaves(&self, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(|c| security::leaves(c, size))
    }

    /// Alerts, newest first.
    pub fn alerts(
        &self,
        filter: &alerts::AlertFilter,
    ) -> Result<Vec<alerts::AlertRecord>, StoreError> {
        self.read(|c| alerts::list(c, filter))
    }

    /// The open alerts of these patients (every patient's with `None`), in no order.
    pub fn open_alerts(
        &self,
        only: care::Patients<'_>,
    ) -> Result<Vec<alerts::AlertRecord>, StoreError> {
        self.read(|c| alerts::open_of(c, only))
    }

    /// One alert.
    pub fn alert(&self, id: i64) -> Result<Option<alerts::AlertRecord>, StoreError> {
        self.read(|c| alerts::get(c, id))
    }

    /// Readings taken at or after `since(metric)`, series by series in time order.
    pub fn recent(
        &self,
        since: &dyn Fn(osler_core::Metric) -> i64,
    ) -> Result<Vec<StoredReading>, StoreError> {
        self.read(|c| query::recent(c, since))
    }

    /// A patient's monitoring plan changes, oldest first; with `until` (UTC ms), those made at
    /// or before it: the plan as it stood then.
    pub fn plan_changes(
        &self,
        patient: &str,
        until: Option<i64>,
    ) -> Result<Vec<alerts::PlanChange>, StoreError> {
        self.read(|c| alerts::plan_changes(c, patient, until))
    }

    /// Every per-patient threshold override: (patient, rule, threshold).
    pub fn overrides(&self) -> Result<Vec<(String, String, f64)>, StoreError> {
        self.read(alerts::overrides)
    }

    /// The highest sequence number committed for a gateway's lane (0 if none).
    pub fn committed_through(&self, gateway: &str, lane: u8) -> Result<u64, StoreError> {
        self.read(|c| query::committed_through(c, gateway, lane))
    }

    /// The enrolled key of a gateway, if it was ever enrolled.
    pub fn gateway(&self, id: &str) -> Result<Option<admin::GatewayRecord>, StoreError> {
        self.read(|c| admin::gateway_record(c, id))
    }

    /// The most recent dead letters, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|c| query::dead_letters(c, limit))
    }

    /// Runs `f` with a read connection from the pool. Blocking: call from a blocking thread.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                schema::prepare_reader(&c)?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // Eight idle connections cover the blocking pool's steady state on a small machine.
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }

    /// The stored reading with this id.
    pub fn get(&self, id: ReadingId) -> Result<Option<StoredReading>, StoreError> {
        self.read(|c| query::get(c, id))
    }

    /// One page of a time-range search, plus the total when asked.
    pub fn search(&self, q: &Query) -> Result<Page, StoreError> {
        self.read(|c| query::search(c, q))
    }

    /// The number of readings a search matches.
    pub fn count(&self, q: &Query) -> Result<u64, StoreError> {
        self.read(|c| query::count(c, q))
    }

    /// Newest `max` readings per metric for a patient (FHIR `$lastn`).
    pub fn last_n(&self, q: &Query, max: usize) -> Result<Vec<StoredReading>, StoreError> {
        self.read(|c| query::last_n(c, q, max))
    }

    /// Every version of a stored reading, newest (the current one) first, each with its
    /// version number.
    pub fn reading_versions(&self, id: ReadingId) -> Result<Vec<(u64, StoredReading)>, StoreError> {
        self.read(|c| query::versions(c, id))
    }

    /// Readings that carry this sender identifier.
    pub fn by_identifier(&self, ident: &Identifier) -> Result<Vec<StoredReading>, StoreError> {
        self.read(|c| query::matches_ident(c, ident))
    }

    /// Whether a patient (or device) with this id was ever mentioned by a reading.
    /// Whether the hub knows the patient at all: registered, or known from their readings.
    pub fn patient_known(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(query::exists(c, "patient", id)?
                || c.prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM resource WHERE kind = 'Patient' AND id = ?1)",
                )?
                .query_row([id], |r| r.get::<_, bool>(0))?)
        })
    }

    pub fn patient_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|c| query::exists(c, "patient", id))
    }
    pub fn device_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|c| query::exists(c, "device", id))
    }
}

impl Drop for Store {
    /// Closes the job queue, lets the writer commit what it holds, and waits for it, so that a
    /// store reopened in the same process never meets the old writer.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        self.checkpoint_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }
}

/// FNV-1a, 64 bit: a stable hash of an identifier for the `ident` index (collisions are
/// resolved by comparing the stored text, so the hash need not be cryptographic).
pub(crate) fn ident_hash(system: &str, value: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in system.bytes().chain([0x1f]).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// The stored text of an identifier: system and value joined by the ASCII unit separator,
/// which neither a URI nor a FHIR token can contain unescaped.
pub(crate) fn ident_text(ident: &Identifier) -> String {
    format!("{}\u{1f}{}", ident.system, ident.value)
}
