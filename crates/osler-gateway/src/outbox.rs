//! The durable outbox: what must leave the gateway, kept on disk until the hub confirms it.
//!
//! Main type: [`Outbox`]. One SQLite file (`outbox.db`) in WAL mode with `synchronous=FULL`,
//! written by one thread with group commit (as the hub's store), read by the uploader.
//!
//! # Format
//!
//! ```text
//! outbox(lane, seq, entry, enqueued_ms)   -- WITHOUT ROWID, PRIMARY KEY (lane, seq)
//! quarantine(id, received_ms, source, payload, reason)
//! meta(key, value)                        -- 'next_seq.N': the next sequence of lane N
//! edge_state(id, patient, metric, device, state) -- each stream's edge state (osler-edge's
//!                                                    binary form), updated by id
//! request(h, at_ms)                       -- devices' requests committed in the last hour (resends)
//! ```
//!
//! `entry` is wire JSON ready to batch: `lane` 0 alerts (`AlertEntry`), 1 readings (`Entry`),
//! 2 summaries (`SummaryEntry`); the uploader empties lane 0 first.
//!
//! # Edge processing happens here
//! [`Outbox::ingest`] runs each reading through its stream's edge processing (`osler-edge`) in
//! the writer thread, and commits in one transaction: the alert events, the readings sent, the
//! summaries closed and every touched stream's state (which holds the readings still waiting for
//! their filter window and the open summary). A reading acknowledged to its device is therefore
//! on disk either as an entry to send, inside a stream's state, or counted in a summary; a
//! crash at any point leaves the outbox at the previous commit, and the device resends what was
//! not acknowledged. A failed commit puts the in-memory states back as they were.
//!
//! # Invariants
//! - [`Outbox::append`] returns only after the entries are committed with fsync: a source
//!   acknowledges its device only after that.
//! - Sequence numbers per lane only grow, and the next one is stored in the same transaction as
//!   the entries, so they are never reused even when the outbox is empty; the hub relies on this
//!   to recognise resends.
//! - Rows leave only through [`Outbox::ack`], after the hub confirmed the commit of everything up
//!   to a sequence number; what remains of a lane is therefore a contiguous range, oldest first.
//! - A torn tail (a write cut short by a crash) is SQLite's to recover: an incomplete WAL frame is
//!   ignored at open and only unacknowledged writes can be in it. A file damaged beyond that is
//!   moved aside (kept for forensics) and a fresh outbox started, so the gateway never crash-loops.
//!
//! # Full disk
//! Policy: **refuse new readings, never drop stored ones.** When the outbox's data (pages in use,
//! so space freed by acknowledged entries counts as free) reaches its size limit (or the disk
//! reports full), `append` of readings fails with [`OutboxError::Full`]; HTTP
//! sources answer 507 and MQTT leaves the message unacknowledged so the broker keeps it. Alerts
//! are still accepted until a hard limit 10% above it, because they are small and matter most.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use std::collections::HashMap;

use osler_core::{Metric, Reading};
use osler_edge::{EdgeConfig, Output, Stream, Tally, Zone};
use osler_rules::Overrides;
use osler_wire::{Entry, Lane, SummaryEntry};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

pub const OUTBOX_FILE: &str = "outbox.db";

/// Why the outbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the outbox is full ({bytes} bytes, limit {limit}); new readings are refused until the hub takes some"
    )]
    Full { bytes: u64, limit: u64 },
    #[error("the outbox writer has stopped")]
    Closed,
    #[error("the outbox commit failed, nothing of it was stored: {0}")]
    Commit(String),
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One stored entry, as the uploader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub entry: String,
    pub enqueued_ms: i64,
}

/// Something in quarantine: received, not valid, kept with the reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub id: i64,
    pub received_ms: i64,
    pub source: String,
    pub payload: String,
    pub reason: String,
}

enum Job {
    Append {
        lane: Lane,
        entries: Vec<String>,
        now_ms: i64,
        reply: oneshot::Sender<Result<Vec<u64>, OutboxError>>,
    },
    Quarantine {
        item: Quarantined,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
    Ack {
        lane: Lane,
        through: u64,
        reply: oneshot::Sender<Result<usize, OutboxError>>,
    },
    Ingest {
        readings: Vec<Reading>,
        alerts: Vec<String>,
        now_ms: i64,
        request: Option<u64>,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
    Tick {
        now_ms: i64,
    },
}

/// Per-patient threshold overrides as the gateway last fetched them from the hub.
pub type OverrideCache = Arc<std::sync::RwLock<HashMap<String, Overrides>>>;

/// The edge's counters (for `/status` and the benchmarks).
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub tally: Mutex<Tally>,
    pub summaries: AtomicU64,
    pub streams: AtomicU64,
    /// Streams holding readings not yet decided or an open summary.
    pub open: AtomicU64,
    /// Decision time per reading (zone, filter, decision; not the commit), log2 buckets of ns.
    pub decision_ns: [AtomicU64; 32],
}

impl EdgeStats {
    fn record(&self, ns: u64) {
        let bucket = (64 - ns.max(1).leading_zeros() as usize - 1).min(31);
        self.decision_ns[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile of decision time in microseconds (the upper edge of its bucket, so an
    /// overestimate by at most 2x).
    pub fn decision_quantile_us(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .decision_ns
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some((1u64 << (i + 1)) as f64 / 1000.0);
            }
        }
        None
    }
}

/// How the writer processes readings at the edge.
pub struct EdgeSetup {
    pub config: EdgeConfig,
    pub overrides: OverrideCache,
    pub stats: Arc<EdgeStats>,
}

impl Default for EdgeSetup {
    fn default() -> Self {
        EdgeSetup {
            config: EdgeConfig::default(),
            overrides: OverrideCache::default(),
            stats: Arc::new(EdgeStats::default()),
        }
    }
}

/// Counts the uploader and `/status` read without touching the disk.
#[derive(Debug, Default)]
pub struct Depth {
    pub alerts: AtomicU64,
    pub readings: AtomicU64,
    pub summaries: AtomicU64,
}

impl Depth {
    pub fn lane(&self, lane: Lane) -> &AtomicU64 {
        match lane {
            Lane::Alerts => &self.alerts,
            Lane::Readings => &self.readings,
            Lane::Summaries => &self.summaries,
        }
    }
}

/// The outbox. Cheap to share behind an `Arc`.
pub struct Outbox {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    reader: Mutex<Connection>,
    depth: Arc<Depth>,
    /// Rung whenever entries are appended, so the uploader wakes without polling.
    wake: Arc<(Mutex<u64>, Condvar)>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Set when a damaged file was moved aside at open.
    pub recovered_from: Option<PathBuf>,
}

fn prepare(conn: &Connection) -> Result<(), OutboxError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA journal_size_limit=67108864;
         PRAGMA wal_autocheckpoint=0;
         CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS outbox(
             lane INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             entry TEXT NOT NULL,
             enqueued_ms INTEGER NOT NULL,
             PRIMARY KEY(lane, seq)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS quarantine(
             id INTEGER PRIMARY KEY,
             received_ms INTEGER NOT NULL,
             source TEXT NOT NULL,
             payload TEXT NOT NULL,
             reason TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS request(h INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS request_at ON request(at_ms);
         CREATE TABLE IF NOT EXISTS edge_state(
             id INTEGER PRIMARY KEY,
             patient TEXT NOT NULL,
             metric TEXT NOT NULL,
             device TEXT NOT NULL,
             state BLOB NOT NULL,
             UNIQUE(patient, metric, device)
         );",
    )?;
    migrate_json_states(conn)?;
    // A damaged file can open fine and fail later; check it now, while moving it aside is safe.
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(OutboxError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(ok),
        )));
    }
    Ok(())
}

fn is_damage(e: &OutboxError) -> bool {
    matches!(e, OutboxError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

fn open_conn(path: &Path) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path)?;
    prepare(&conn)?;
    Ok(conn)
}

impl Outbox {
    /// Opens the outbox in `dir`, recovering from a damaged file by moving it aside.
    /// `limit_bytes` is the size at which new readings are refused.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<Outbox, OutboxError> {
        Outbox::open_with(dir, limit_bytes, EdgeSetup::default())
    }

    /// [`Outbox::open`] with the edge processing that [`Outbox::ingest`] applies.
    pub fn open_with(dir: &Path, limit_bytes: u64, edge: EdgeSetup) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(OUTBOX_FILE);
        let mut recovered_from = None;
        let conn = match open_conn(&path) {
            Ok(c) => c,
            Err(e) if is_damage(&e) => {
                let aside = dir.join(format!(
                    "{OUTBOX_FILE}.damaged-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                tracing::error!(error = %e, moved_to = %aside.display(), "the outbox file is damaged beyond SQLite's recovery; moving it aside and starting a fresh outbox");
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    if from.exists() {
                        std::fs::rename(&from, &to).map_err(|source| OutboxError::Io {
                            path: from.clone(),
                            source,
                        })?;
                    }
                }
                recovered_from = Some(aside);
                open_conn(&path)?
            }
            Err(e) => return Err(e),
        };
        let depth = Arc::new(Depth::default());
        for lane in Lane::ALL {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM outbox WHERE lane=?1",
                [lane.as_u8()],
                |r| r.get(0),
            )?;
            depth.lane(lane).store(n as u64, Ordering::Relaxed);
        }
        let streams = load_streams(&conn)?;
        edge.stats
            .streams
            .store(streams.slots.len() as u64, Ordering::Relaxed);
        let holding = streams.slots.iter().filter(|s| !s.stream.is_idle()).count() as u64;
        edge.stats.open.store(holding, Ordering::Relaxed);
        let reader = Connection::open(&path)?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        let wake = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            conn,
            limit: limit_bytes,
            depth: depth.clone(),
            wake: wake.clone(),
            holding,
            edge,
            streams,
        };
        let handle = std::thread::Builder::new()
            .name("osler-outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Outbox {
            path,
            jobs: Some(tx),
            reader: Mutex::new(reader),
            depth,
            wake,
            writer: Some(handle),
            recovered_from,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn depth(&self) -> &Depth {
        &self.depth
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>, OutboxError> {
        self.jobs.as_ref().ok_or(OutboxError::Closed)
    }

    /// Sends the writer the job `make` builds around a reply channel, and waits for its answer
    /// (given once the job's group is committed, or failed).
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Job,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(make(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// [`Outbox::call`] for callers outside the runtime.
    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Job,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(make(reply))
            .map_err(|_| OutboxError::Closed)?;
        rx.blocking_recv().map_err(|_| OutboxError::Closed)?
    }

    /// Appends entries to a lane; resolves with their sequence numbers once they are durable.
    pub async fn append(
        &self,
        lane: Lane,
        entries: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<u64>, OutboxError> {
        self.call(|reply| Job::Append {
            lane,
            entries,
            now_ms,
            reply,
        })
        .await
    }

    /// Takes in validated readings and the alert events they raised: the edge decides what to
    /// send and what to summarise, and everything (alerts, entries, stream states) is committed
    /// together. Resolves once durable.
    /// `request` identifies the device's request: one committed in the last hour is recognised
    /// when sent again and answered without being taken in twice.
    pub async fn ingest(
        &self,
        readings: Vec<Reading>,
        alerts: Vec<String>,
        now_ms: i64,
        request: Option<u64>,
    ) -> Result<(), OutboxError> {
        self.call(|reply| Job::Ingest {
            readings,
            alerts,
            now_ms,
            request,
            reply,
        })
        .await
    }

    /// Time-driven edge work: readings that waited long enough for their filter window are
    /// decided, idle summaries closed. The gateway calls this every second.
    pub fn tick_blocking(&self, now_ms: i64) -> Result<(), OutboxError> {
        self.sender()?
            .blocking_send(Job::Tick { now_ms })
            .map_err(|_| OutboxError::Closed)
    }

    /// Keeps an invalid item with the reason, durably.
    pub async fn quarantine(&self, item: Quarantined) -> Result<(), OutboxError> {
        self.call(|reply| Job::Quarantine { item, reply }).await
    }

    /// Removes a lane's entries up to and including `through` (the hub committed them).
    /// Blocking: for the uploader thread.
    pub fn ack_blocking(&self, lane: Lane, through: u64) -> Result<usize, OutboxError> {
        self.call_blocking(|reply| Job::Ack {
            lane,
            through,
            reply,
        })
    }

    /// [`Outbox::append`] for callers outside the runtime.
    pub fn append_blocking(
        &self,
        lane: Lane,
        entries: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<u64>, OutboxError> {
        self.call_blocking(|reply| Job::Append {
            lane,
            entries,
            now_ms,
            reply,
        })
    }

    /// Copies the WAL into the database file (PASSIVE: never blocks the writer). The uploader
    /// calls this between batches, so that the copy and its fsync never delay a device's
    /// acknowledgement, as SQLite's automatic checkpoint on a commit would.
    pub fn checkpoint(&self) -> Result<(), OutboxError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")?;
        Ok(())
    }

    /// Bytes of data in the outbox (what the size limit is compared with).
    pub fn used_bytes(&self) -> Result<u64, OutboxError> {
        used_bytes(&self.reader.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The oldest entries of a lane: at most `max_count`, and at most `max_bytes` of entry text
    /// (but always at least one entry, so that one huge entry cannot block the lane).
    pub fn peek(
        &self,
        lane: Lane,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, OutboxError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT seq, entry, enqueued_ms FROM outbox WHERE lane=?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![lane.as_u8(), max_count as i64])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let entry: String = row.get(1)?;
            bytes += entry.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(Stored {
                seq: row.get::<_, i64>(0)? as u64,
                entry,
                enqueued_ms: row.get(2)?,
            });
        }
        Ok(out)
    }

    /// The enqueue time of a lane's oldest entry.
    pub fn oldest_ms(&self, lane: Lane) -> Result<Option<i64>, OutboxError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn
            .query_row(
                "SELECT enqueued_ms FROM outbox WHERE lane=?1 ORDER BY seq LIMIT 1",
                [lane.as_u8()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The most recent quarantined items, newest first.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>, OutboxError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT id, received_ms, source, payload, reason FROM quarantine ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(Quarantined {
                id: r.get(0)?,
                received_ms: r.get(1)?,
                source: r.get(2)?,
                payload: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Waits until something is appended after `seen` (a value from a previous call), or the
    /// timeout passes. Returns the new value.
    pub fn wait_for_append(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let (lock, cvar) = &*self.wake;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// The current append counter, for [`Outbox::wait_for_append`].
    pub fn appends(&self) -> u64 {
        *self.wake.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// A job's answer, sent once the group's commit is known.
enum Reply {
    Append(oneshot::Sender<Result<Vec<u64>, OutboxError>>, Vec<u64>),
    Quarantine(oneshot::Sender<Result<(), OutboxError>>),
    Ack(oneshot::Sender<Result<usize, OutboxError>>, usize),
    Ingest(oneshot::Sender<Result<(), OutboxError>>),
}

impl Reply {
    /// Answers with the result, or with the commit's failure. A requester that went away
    /// (client hung up) is not an error: the outcome stands either way.
    fn finish(self, failure: Option<&str>) {
        let err = || OutboxError::Commit(failure.unwrap_or_default().to_owned());
        match self {
            Reply::Append(tx, seqs) => {
                let _ = tx.send(if failure.is_none() {
                    Ok(seqs)
                } else {
                    Err(err())
                });
            }
            Reply::Quarantine(tx) => {
                let _ = tx.send(if failure.is_none() {
                    Ok(())
                } else {
                    Err(err())
                });
            }
            Reply::Ack(tx, n) => {
                let _ = tx.send(if failure.is_none() { Ok(n) } else { Err(err()) });
            }
            Reply::Ingest(tx) => {
                let _ = tx.send(if failure.is_none() {
                    Ok(())
                } else {
                    Err(err())
                });
            }
        }
    }
}

type StreamKey = (String, Metric, Option<String>);

/// One stream as the writer keeps it.
struct Slot {
    /// Its row in `edge_state`.
    id: i64,
    key: StreamKey,
    stream: Stream,
    /// Its state as last committed (`None`: not stored yet). A failed commit restores the stream
    /// from it, and a state that encodes to the same bytes is not written again.
    saved: Option<Vec<u8>>,
    /// Touched in the group being committed, and whether it held anything before.
    touched: bool,
    was_holding: bool,
}

/// Every stream's edge state, the same as `edge_state` after each commit.
#[derive(Default)]
struct Streams {
    slots: Vec<Slot>,
    index: HashMap<StreamKey, usize>,
    next_id: i64,
    /// Slots touched in the group being committed.
    touched: Vec<usize>,
}

impl Streams {
    /// Marks slot `i` as touched by this group (its holding status is taken now, before the
    /// change).
    fn touch(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if !slot.touched {
            slot.touched = true;
            slot.was_holding = !slot.stream.is_idle();
            self.touched.push(i);
        }
    }

    /// The slot of a reading's stream, created (and touched) if new.
    fn slot_for(&mut self, r: &Reading) -> usize {
        let key = Stream::key(r);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                let i = self.slots.len();
                self.slots.push(Slot {
                    id: self.next_id,
                    key: key.clone(),
                    stream: Stream::new(r),
                    saved: None,
                    touched: false,
                    was_holding: false,
                });
                self.next_id += 1;
                self.index.insert(key, i);
                i
            }
        };
        self.touch(i);
        i
    }
}

struct Writer {
    conn: Connection,
    limit: u64,
    depth: Arc<Depth>,
    wake: Arc<(Mutex<u64>, Condvar)>,
    edge: EdgeSetup,
    streams: Streams,
    /// How many streams hold readings to decide or an open summary.
    holding: u64,
}

/// Outboxes written before the binary state kept it as JSON in `edge_stream`: carried over
/// once, in one transaction, so an upgrade loses no reading waiting at the edge.
fn migrate_json_states(conn: &Connection) -> Result<(), OutboxError> {
    let old: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='edge_stream'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_none() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| -> Result<usize, OutboxError> {
        let mut rows: Vec<(String, String, String, String)> = Vec::new();
        {
            let mut stmt =
                conn.prepare("SELECT patient, metric, device, state FROM edge_stream")?;
            let mut q = stmt.query([])?;
            while let Some(row) = q.next()? {
                rows.push((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
            }
        }
        let mut insert = conn.prepare(
            "INSERT INTO edge_state(patient, metric, device, state) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut moved = 0;
        for (patient, metric, device, state) in rows {
            match serde_json::from_str::<Stream>(&state) {
                Ok(stream) => {
                    let mut bytes = Vec::new();
                    stream.encode(&mut bytes);
                    insert.execute(params![patient, metric, device, bytes])?;
                    moved += 1;
                }
                Err(e) => {
                    tracing::error!(%patient, %metric, error = %e, "an edge stream state does not parse; starting it afresh")
                }
            }
        }
        conn.execute_batch("DROP TABLE edge_stream")?;
        Ok(moved)
    })();
    match moved {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            tracing::info!(
                streams = n,
                "edge stream states carried over to the binary form"
            );
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Loads every stream's edge state. A state that does not decode (damage, or a future
/// version) is logged, removed and started afresh: it held at most a filter window of readings
/// and an open summary.
fn load_streams(conn: &Connection) -> Result<Streams, OutboxError> {
    let mut out = Streams {
        next_id: 1,
        ..Streams::default()
    };
    let mut bad = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT id, patient, metric, device, state FROM edge_state")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (id, patient, metric, device, state): (i64, String, String, String, Vec<u8>) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            out.next_id = out.next_id.max(id + 1);
            let device = (!device.is_empty()).then_some(device);
            let decoded = Metric::from_key(&metric)
                .ok_or_else(|| format!("unknown metric {metric:?}"))
                .and_then(|m| {
                    Stream::decode(&patient, &metric, device.as_deref(), &state)
                        .map(|s| (m, s))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((m, stream)) => {
                    let key = (patient, m, device);
                    out.index.insert(key.clone(), out.slots.len());
                    out.slots.push(Slot {
                        id,
                        key,
                        stream,
                        saved: Some(state),
                        touched: false,
                        was_holding: false,
                    });
                }
                Err(error) => {
                    tracing::error!(%patient, %metric, %error, "an edge stream state does not decode; starting it afresh");
                    bad.push(id);
                }
            }
        }
    }
    for id in bad {
        conn.execute("DELETE FROM edge_state WHERE id=?1", [id])?;
    }
    Ok(out)
}

/// A closed summary as it travels (the summaries lane's entry).
pub fn summary_entry(s: &osler_edge::Summary) -> SummaryEntry {
    SummaryEntry {
        p: s.patient.clone(),
        d: s.device.clone(),
        m: s.metric.clone(),
        t0: s.t0,
        t1: s.t1,
        o: s.o,
        n: s.n,
        min: s.min.clone(),
        max: s.max.clone(),
        mean: s.mean(),
        last: s.last.clone(),
        spikes: s.spikes,
    }
}

/// Bytes the outbox's data occupies: pages in use, not the file's size, because SQLite reuses
/// the pages of acknowledged entries without shrinking the file.
fn used_bytes(conn: &Connection) -> Result<u64, OutboxError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < 512 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.commit(jobs);
        }
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        // Size is checked once per group: the outbox grows by at most one group past the limit.
        let bytes = used_bytes(&self.conn).unwrap_or(0);
        let mut replies: Vec<Reply> = Vec::with_capacity(jobs.len());
        let mut appended = [0u64; 3];
        let mut acked = [0u64; 3];
        // Streams created by this group start here (removed again if the commit fails).
        let created_from = self.streams.slots.len();
        let mut tally = Tally::default();
        let mut summaries = 0u64;
        let result = (|| -> Result<Vec<(usize, Vec<u8>)>, OutboxError> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for job in jobs {
                match job {
                    Job::Append {
                        lane,
                        entries,
                        now_ms,
                        reply,
                    } => {
                        let hard = self.limit + self.limit / 10;
                        let limit = if lane == Lane::Alerts {
                            hard
                        } else {
                            self.limit
                        };
                        if bytes >= limit {
                            let _ = reply.send(Err(OutboxError::Full { bytes, limit }));
                            continue;
                        }
                        let seqs = self.append(lane, &entries, now_ms)?;
                        appended[lane.as_u8() as usize] += seqs.len() as u64;
                        replies.push(Reply::Append(reply, seqs));
                    }
                    Job::Quarantine { item, reply } => {
                        self.conn
                            .prepare_cached("INSERT INTO quarantine(received_ms, source, payload, reason) VALUES (?1, ?2, ?3, ?4)")?
                            .execute(params![item.received_ms, item.source, item.payload, item.reason])?;
                        replies.push(Reply::Quarantine(reply));
                    }
                    Job::Ack {
                        lane,
                        through,
                        reply,
                    } => {
                        let n = self
                            .conn
                            .prepare_cached("DELETE FROM outbox WHERE lane=?1 AND seq<=?2")?
                            .execute(params![lane.as_u8(), through as i64])?;
                        acked[lane.as_u8() as usize] += n as u64;
                        replies.push(Reply::Ack(reply, n));
                    }
                    Job::Ingest {
                        readings,
                        alerts,
                        now_ms,
                        request,
                        reply,
                    } => {
                        if let Some(key) = request {
                            // Stored as i64: SQLite integers are signed.
                            let seen: Option<i64> = self
                                .conn
                                .prepare_cached("SELECT 1 FROM request WHERE h=?1")?
                                .query_row([key as i64], |r| r.get(0))
                                .optional()?;
                            if seen.is_some() {
                                replies.push(Reply::Ingest(reply));
                                continue;
                            }
                            self.conn
                                .prepare_cached(
                                    "INSERT OR IGNORE INTO request(h, at_ms) VALUES (?1, ?2)",
                                )?
                                .execute(params![key as i64, now_ms])?;
                        }
                        if bytes >= self.limit && !readings.is_empty() {
                            let _ = reply.send(Err(OutboxError::Full {
                                bytes,
                                limit: self.limit,
                            }));
                            continue;
                        }
                        if !alerts.is_empty() {
                            let seqs = self.append(Lane::Alerts, &alerts, now_ms)?;
                            appended[0] += seqs.len() as u64;
                        }
                        let mut out = Vec::new();
                        self.run_edge(&readings, now_ms, &mut tally, &mut out);
                        let (a, b) = self.append_outputs(out, now_ms)?;
                        appended[1] += a;
                        appended[2] += b;
                        summaries += b;
                        replies.push(Reply::Ingest(reply));
                    }
                    Job::Tick { now_ms } => {
                        // Requests are remembered for an hour: far longer than any device waits
                        // before resending.
                        self.conn
                            .prepare_cached("DELETE FROM request WHERE at_ms < ?1")?
                            .execute([now_ms - 3_600_000])?;
                        let mut out = Vec::new();
                        for i in 0..self.streams.slots.len() {
                            let slot = &mut self.streams.slots[i];
                            // Only a stream holding something has time-driven work, so one
                            // the tick changed held something before it.
                            if slot.stream.is_idle() {
                                continue;
                            }
                            let policy = self.edge.config.policy(slot.key.1);
                            if slot.stream.tick(policy, now_ms, &mut out, &mut tally)
                                && !slot.touched
                            {
                                slot.touched = true;
                                slot.was_holding = true;
                                self.streams.touched.push(i);
                            }
                        }
                        let (a, b) = self.append_outputs(out, now_ms)?;
                        appended[1] += a;
                        appended[2] += b;
                        summaries += b;
                    }
                }
            }
            let written = self.save_streams()?;
            self.conn.execute_batch("COMMIT")?;
            Ok(written)
        })();
        let touched = std::mem::take(&mut self.streams.touched);
        match result {
            Ok(written) => {
                for (i, bytes) in written {
                    self.streams.slots[i].saved = Some(bytes);
                }
                // Streams holding something, kept current from the streams this group touched
                // (a test or an operator waiting for "everything sent" must not see a stale 0).
                for i in touched {
                    let slot = &mut self.streams.slots[i];
                    slot.touched = false;
                    match (slot.was_holding, !slot.stream.is_idle()) {
                        (false, true) => self.holding += 1,
                        (true, false) => self.holding = self.holding.saturating_sub(1),
                        _ => {}
                    }
                }
                self.edge.stats.open.store(self.holding, Ordering::Relaxed);
                {
                    let mut t = self
                        .edge
                        .stats
                        .tally
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    t.add(&tally);
                }
                self.edge
                    .stats
                    .summaries
                    .fetch_add(summaries, Ordering::Relaxed);
                self.edge
                    .stats
                    .streams
                    .store(self.streams.slots.len() as u64, Ordering::Relaxed);
                for lane in Lane::ALL {
                    let i = lane.as_u8() as usize;
                    let slot = self.depth.lane(lane);
                    slot.fetch_add(appended[i], Ordering::Relaxed);
                    slot.fetch_sub(
                        acked[i].min(slot.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                for r in replies {
                    r.finish(None);
                }
                if appended.iter().any(|n| *n > 0) {
                    let (lock, cvar) = &*self.wake;
                    *lock.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    cvar.notify_all();
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.restore(&touched, created_from);
                let full = matches!(&e, OutboxError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::DiskFull);
                let msg = if full {
                    "the disk is full".to_owned()
                } else {
                    e.to_string()
                };
                tracing::error!(error = %e, "outbox commit failed; nothing of it was stored");
                for r in replies {
                    r.finish(Some(&msg));
                }
            }
        }
    }

    /// Runs readings through their streams' edge processing, marking each stream touched.
    fn run_edge(
        &mut self,
        readings: &[Reading],
        now_ms: i64,
        tally: &mut Tally,
        out: &mut Vec<Output>,
    ) {
        let overrides = self
            .edge
            .overrides
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for r in readings {
            let started = std::time::Instant::now();
            let policy = self.edge.config.policy(r.metric);
            if policy.forward_all {
                // Nothing to remember: sent as it is.
                tally.all += 1;
                out.push(Output::Forward(r.clone()));
                self.edge.stats.record(started.elapsed().as_nanos() as u64);
                continue;
            }
            let zone = Zone::for_metric(r.metric, policy.near, overrides.get(r.patient.as_str()));
            let i = self.streams.slot_for(r);
            self.streams.slots[i]
                .stream
                .observe(policy, &zone, r, now_ms, out, tally);
            self.edge.stats.record(started.elapsed().as_nanos() as u64);
        }
    }

    /// Appends the edge's outputs: readings to lane 1, summaries to lane 2. Returns the counts.
    fn append_outputs(&mut self, out: Vec<Output>, now_ms: i64) -> Result<(u64, u64), OutboxError> {
        let mut readings = Vec::new();
        let mut summaries = Vec::new();
        for o in out {
            match o {
                Output::Forward(r) => readings.push(Entry::from_reading(&r).to_json()),
                Output::Summary(s) => summaries.push(summary_entry(&s).to_json()),
            }
        }
        if !readings.is_empty() {
            self.append(Lane::Readings, &readings, now_ms)?;
        }
        if !summaries.is_empty() {
            self.append(Lane::Summaries, &summaries, now_ms)?;
        }
        Ok((readings.len() as u64, summaries.len() as u64))
    }

    /// Writes the state of the streams this group touched, where it changed. Returns what was
    /// written (slot, bytes), to become their saved state once the commit succeeds.
    fn save_streams(&mut self) -> Result<Vec<(usize, Vec<u8>)>, OutboxError> {
        let mut update = self
            .conn
            .prepare_cached("UPDATE edge_state SET state=?2 WHERE id=?1")?;
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO edge_state(id, patient, metric, device, state) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut written = Vec::with_capacity(self.streams.touched.len());
        for &i in &self.streams.touched {
            let slot = &self.streams.slots[i];
            let mut bytes = Vec::with_capacity(slot.saved.as_ref().map_or(64, |b| b.len() + 16));
            slot.stream.encode(&mut bytes);
            match &slot.saved {
                // A resend recognised, or a tick that changed nothing: the row already says it.
                Some(saved) if *saved == bytes => continue,
                Some(_) => update.execute(params![slot.id, bytes])?,
                None => insert.execute(params![
                    slot.id,
                    slot.key.0,
                    slot.key.1.info().key,
                    slot.key.2.as_deref().unwrap_or(""),
                    bytes
                ])?,
            };
            written.push((i, bytes));
        }
        Ok(written)
    }

    /// After a failed commit: the streams this group touched go back to their saved state, and
    /// the ones it created are forgotten, as the database is.
    fn restore(&mut self, touched: &[usize], created_from: usize) {
        for &i in touched {
            let slot = &mut self.streams.slots[i];
            slot.touched = false;
            let Some(saved) = &slot.saved else {
                continue;
            };
            let (patient, metric, device) = (&slot.key.0, slot.key.1.info().key, &slot.key.2);
            match Stream::decode(patient, metric, device.as_deref(), saved) {
                Ok(s) => slot.stream = s,
                // These bytes were encoded by this process; keep going with the stream as it
                // is rather than stop taking readings.
                Err(e) => {
                    tracing::error!(%patient, %metric, error = %e, "cannot restore an edge stream after a failed commit")
                }
            }
        }
        // Their ids are not reused: skipping a few is harmless.
        for slot in self.streams.slots.drain(created_from..) {
            self.streams.index.remove(&slot.key);
        }
    }

    fn append(
        &mut self,
        lane: Lane,
        entries: &[String],
        now_ms: i64,
    ) -> Result<Vec<u64>, OutboxError> {
        let key = format!("next_seq.{}", lane.as_u8());
        let next: i64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key=?1", [&key], |r| r.get(0))
            .optional()?
            .unwrap_or(1);
        let mut seqs = Vec::with_capacity(entries.len());
        {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO outbox(lane, seq, entry, enqueued_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (i, e) in entries.iter().enumerate() {
                let seq = next + i as i64;
                stmt.execute(params![lane.as_u8(), seq, e, now_ms])?;
                seqs.push(seq as u64);
            }
        }
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            params![key, next + entries.len() as i64],
        )?;
        Ok(seqs)
    }
}
