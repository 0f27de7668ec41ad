//! The durable outbox: what must leave the gateway, kept on disk until the hub confirms it.
//!
//! Main types: [`Outbox`] (the read side: what the uploader and `/status` see, shared), and
//! [`Queue`] with its transaction [`Tx`] (the write side, owned by the one writer thread in
//! [`crate::intake`], which does group commit). An SQLite file in WAL mode with
//! `synchronous=FULL`: `outbox.db` for alerts, readings and summaries, and `emergencies.db`, the
//! same format, for the emergencies lane alone (its own writer commits a fall in its own small
//! transaction instead of after the readings commit in progress). The outbox is only a queue: it knows lanes, sequence numbers, the
//! quarantine, the requests it has committed, and opaque state rows written in the same
//! transaction as the entries; what the entries and states mean is the intake's business.
//!
//! # Format
//!
//! ```text
//! outbox(lane, seq, entry, enqueued_ms)   -- WITHOUT ROWID, PRIMARY KEY (lane, seq)
//! quarantine(id, received_ms, source, payload, reason)
//! meta(key, value)                        -- 'next_seq.N': the next sequence of lane N
//! edge_state(id, patient, metric, device, state) -- a state row per stream (bytes the outbox
//!                                                    does not read), updated by id
//! request(h, at_ms)                       -- devices' requests committed in the last hour (resends)
//! ```
//!
//! `entry` is wire JSON ready to batch: `lane` 0 alerts (`AlertEntry`), 1 readings (`Entry`),
//! 2 summaries (`SummaryEntry`), 3 emergencies (`AlertEntry`); readings and summaries wait while
//! alerts or emergencies are pending. `quarantine.payload` is the
//! message as received, byte for byte.
//!
//! # Invariants
//! - Nothing of a [`Tx`] is visible or durable before [`Tx::commit`] returns (with fsync); a
//!   `Tx` dropped without commit is rolled back. A source acknowledges its device only after
//!   the commit holding its readings.
//! - Sequence numbers per lane only grow, and the next one is stored in the same transaction as
//!   the entries, so they are never reused even when the outbox is empty; the hub relies on this
//!   to recognise resends.
//! - Rows leave only through [`Tx::ack`], after the hub confirmed the commit of everything up
//!   to a sequence number; what remains of a lane is therefore a contiguous range, oldest first.
//! - A torn tail (a write cut short by a crash) is SQLite's to recover: an incomplete WAL frame is
//!   ignored at open and only unacknowledged writes can be in it. A file damaged beyond that is
//!   moved aside (kept for forensics) and a fresh outbox started, so the gateway never crash-loops.
//!
//! # Full disk
//! The outbox reports how much of it is used ([`Queue::used_bytes`]: pages in use, so space
//! freed by acknowledged entries counts as free) and a disk that is full as
//! [`OutboxError::DiskFull`]; what is admitted at which size is decided in one place,
//! [`crate::intake::Room`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use osler_wire::Lane;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

pub const OUTBOX_FILE: &str = "outbox.db";
/// The emergencies lane's own file.
pub const EMERGENCIES_FILE: &str = "emergencies.db";

/// Lanes, one slot each.
const LANES: usize = Lane::ALL.len();

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
    #[error("the disk holding the outbox is full; nothing of this was stored")]
    DiskFull,
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

impl OutboxError {
    /// Whether the error means "no room" (the outbox's limit, or the disk): the sender should
    /// retry later, and nothing of its request was stored.
    pub fn is_full(&self) -> bool {
        match self {
            OutboxError::Full { .. } | OutboxError::DiskFull => true,
            OutboxError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == ErrorCode::DiskFull
            }
            _ => false,
        }
    }

    /// The same error for another requester of a failed group commit (rusqlite's errors do not
    /// clone; the kind is kept, the detail as text).
    pub fn for_requester(&self) -> OutboxError {
        if self.is_full() {
            OutboxError::DiskFull
        } else {
            OutboxError::Commit(self.to_string())
        }
    }
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
    /// The payload as received (bytes that are not UTF-8 are kept too: the quarantine
    /// listing shows them with replacement characters, the file keeps them exact).
    #[serde(serialize_with = "lossy")]
    pub payload: Vec<u8>,
    pub reason: String,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// A state row, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRow {
    pub id: i64,
    pub patient: String,
    pub metric: String,
    /// Empty for none.
    pub device: String,
    pub state: Vec<u8>,
}

/// Counts the uploader and `/status` read without touching the disk.
#[derive(Debug, Default)]
pub struct Depth {
    pub alerts: AtomicU64,
    pub readings: AtomicU64,
    pub summaries: AtomicU64,
    pub emergencies: AtomicU64,
}

impl Depth {
    pub fn lane(&self, lane: Lane) -> &AtomicU64 {
        match lane {
            Lane::Alerts => &self.alerts,
            Lane::Readings => &self.readings,
            Lane::Summaries => &self.summaries,
            Lane::Emergencies => &self.emergencies,
        }
    }
}

/// Rung whenever a commit appends or removes entries, so the uploaders wake without polling.
type Wake = Arc<(Mutex<u64>, Condvar)>;

/// The outbox's read side. Cheap to share behind an `Arc`.
pub struct Outbox {
    path: PathBuf,
    reader: Mutex<Connection>,
    depth: Arc<Depth>,
    wake: Wake,
    /// Set by a commit that appended readings which must not wait for a fuller batch.
    urgent: Arc<AtomicBool>,
    /// Set when a damaged file was moved aside at open.
    pub recovered_from: Option<PathBuf>,
}

/// The outbox's write side: one owner, the writer thread.
pub struct Queue {
    conn: Connection,
    /// The next sequence number of each lane, as stored.
    next: [u64; LANES],
    depth: Arc<Depth>,
    wake: Wake,
    urgent: Arc<AtomicBool>,
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

/// Moves a damaged outbox (and its WAL) aside; returns where.
fn move_aside(dir: &Path, path: &Path, file: &str) -> Result<PathBuf, OutboxError> {
    let aside = dir.join(format!(
        "{file}.damaged-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
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
    Ok(aside)
}

impl Outbox {
    /// Opens the outbox in `dir`, recovering from a damaged file by moving it aside: the read
    /// side, and the write side for the writer thread.
    pub fn open(dir: &Path) -> Result<(Outbox, Queue), OutboxError> {
        Outbox::open_file(dir, OUTBOX_FILE)
    }

    /// [`Outbox::open`] of the file `file` in `dir`.
    pub fn open_file(dir: &Path, file: &str) -> Result<(Outbox, Queue), OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(file);
        let mut recovered_from = None;
        let conn = match open_conn(&path) {
            Ok(c) => c,
            Err(e) if is_damage(&e) => {
                let aside = move_aside(dir, &path, file)?;
                tracing::error!(error = %e, moved_to = %aside.display(), "the outbox file is damaged beyond SQLite's recovery; moving it aside and starting a fresh outbox");
                recovered_from = Some(aside);
                open_conn(&path)?
            }
            Err(e) => return Err(e),
        };
        let depth = Arc::new(Depth::default());
        let mut next = [1u64; LANES];
        for lane in Lane::ALL {
            let i = lane.as_u8() as usize;
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM outbox WHERE lane=?1",
                [lane.as_u8()],
                |r| r.get(0),
            )?;
            depth.lane(lane).store(n as u64, Ordering::Relaxed);
            let stored: Option<i64> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key=?1",
                    [format!("next_seq.{i}")],
                    |r| r.get(0),
                )
                .optional()?;
            next[i] = stored.unwrap_or(1).max(1) as u64;
        }
        // A group commit of thousands of entries must not spill dirty pages into the WAL before
        // its commit (SQLite's default cache is 2 MB): 8 MB for the writer, which also bounds what
        // it adds to the gateway's memory.
        conn.execute_batch("PRAGMA cache_size=-8192")?;
        let reader = Connection::open(&path)?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        let wake: Wake = Arc::new((Mutex::new(0u64), Condvar::new()));
        let urgent = Arc::new(AtomicBool::new(false));
        let queue = Queue {
            conn,
            next,
            depth: depth.clone(),
            wake: wake.clone(),
            urgent: urgent.clone(),
        };
        let outbox = Outbox {
            path,
            reader: Mutex::new(reader),
            depth,
            wake,
            urgent,
            recovered_from,
        };
        Ok((outbox, queue))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn depth(&self) -> &Depth {
        &self.depth
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
            "SELECT id, received_ms, source, CAST(payload AS BLOB), reason FROM quarantine ORDER BY id DESC LIMIT ?1",
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

    /// Waits until a commit appends or removes entries after `seen` (a value from a previous
    /// call), or the timeout passes. Returns the new value.
    pub fn wait_for_append(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let (lock, cvar) = &*self.wake;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// Whether a commit since the last call appended readings that must leave at once (see
    /// [`Tx::urgent`]); clears it.
    pub fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::AcqRel)
    }

    /// The current append counter, for [`Outbox::wait_for_append`].
    pub fn appends(&self) -> u64 {
        *self.wake.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Queue {
    /// Bytes of data in the outbox (what the size limit is compared with).
    pub fn used_bytes(&self) -> Result<u64, OutboxError> {
        used_bytes(&self.conn)
    }

    /// Every state row.
    pub fn states(&self) -> Result<Vec<StateRow>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, patient, metric, device, state FROM edge_state")?;
        let rows = stmt.query_map([], |r| {
            Ok(StateRow {
                id: r.get(0)?,
                patient: r.get(1)?,
                metric: r.get(2)?,
                device: r.get(3)?,
                state: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The connection, for a one-time migration of an older outbox at start (before any
    /// transaction of the writer).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Starts a transaction. Dropped without [`Tx::commit`], it is rolled back.
    pub fn transaction(&mut self) -> Result<Tx<'_>, OutboxError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Tx {
            next: self.next,
            appended: [0; LANES],
            acked: [0; LANES],
            urgent: false,
            done: false,
            q: self,
        })
    }
}

/// One transaction of the queue.
pub struct Tx<'a> {
    q: &'a mut Queue,
    next: [u64; LANES],
    appended: [u64; LANES],
    acked: [u64; LANES],
    urgent: bool,
    done: bool,
}

impl Tx<'_> {
    /// Appends entries to a lane; returns the sequence number of the first (the rest follow).
    pub fn append(
        &mut self,
        lane: Lane,
        entries: &[String],
        now_ms: i64,
    ) -> Result<u64, OutboxError> {
        let i = lane.as_u8() as usize;
        let first = self.next[i];
        let mut stmt = self.q.conn.prepare_cached(
            "INSERT INTO outbox(lane, seq, entry, enqueued_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (k, e) in entries.iter().enumerate() {
            stmt.execute(params![lane.as_u8(), (first + k as u64) as i64, e, now_ms])?;
        }
        self.next[i] += entries.len() as u64;
        self.appended[i] += entries.len() as u64;
        Ok(first)
    }

    /// Marks what this transaction appends as not to wait for a fuller batch: the uploader
    /// sends it as soon as the commit is done (readings near an alert threshold, whose alert
    /// the hub decides).
    pub fn urgent(&mut self) {
        self.urgent = true;
    }

    /// Removes a lane's entries up to and including `through` (the hub committed them).
    pub fn ack(&mut self, lane: Lane, through: u64) -> Result<usize, OutboxError> {
        let n = self
            .q
            .conn
            .prepare_cached("DELETE FROM outbox WHERE lane=?1 AND seq<=?2")?
            .execute(params![lane.as_u8(), through as i64])?;
        self.acked[lane.as_u8() as usize] += n as u64;
        Ok(n)
    }

    /// Keeps an invalid item with the reason.
    pub fn quarantine(&mut self, item: &Quarantined) -> Result<(), OutboxError> {
        self.q
            .conn
            .prepare_cached(
                "INSERT INTO quarantine(received_ms, source, payload, reason) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                item.received_ms,
                item.source,
                item.payload,
                item.reason
            ])?;
        Ok(())
    }

    /// Whether a device's request with this key was committed (within the last hour).
    pub fn seen(&mut self, key: u64) -> Result<bool, OutboxError> {
        // Stored as i64: SQLite integers are signed.
        Ok(self
            .q
            .conn
            .prepare_cached("SELECT 1 FROM request WHERE h=?1")?
            .query_row([key as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some())
    }

    /// Remembers a device's request as committed with this transaction.
    pub fn remember(&mut self, key: u64, now_ms: i64) -> Result<(), OutboxError> {
        self.q
            .conn
            .prepare_cached("INSERT OR IGNORE INTO request(h, at_ms) VALUES (?1, ?2)")?
            .execute(params![key as i64, now_ms])?;
        Ok(())
    }

    /// Forgets requests committed before `before_ms`.
    pub fn forget_requests(&mut self, before_ms: i64) -> Result<(), OutboxError> {
        self.q
            .conn
            .prepare_cached("DELETE FROM request WHERE at_ms < ?1")?
            .execute([before_ms])?;
        Ok(())
    }

    /// Inserts a state row (`new` names it) or updates row `id`.
    pub fn put_state(
        &mut self,
        id: i64,
        new: Option<(&str, &str, &str)>,
        state: &[u8],
    ) -> Result<(), OutboxError> {
        match new {
            Some((patient, metric, device)) => self.q.conn.prepare_cached(
                "INSERT INTO edge_state(id, patient, metric, device, state) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, patient, metric, device, state])?,
            None => self
                .q
                .conn
                .prepare_cached("UPDATE edge_state SET state=?2 WHERE id=?1")?
                .execute(params![id, state])?,
        };
        Ok(())
    }

    /// Removes a state row.
    pub fn delete_state(&mut self, id: i64) -> Result<(), OutboxError> {
        self.q
            .conn
            .prepare_cached("DELETE FROM edge_state WHERE id=?1")?
            .execute([id])?;
        Ok(())
    }

    /// Commits with fsync. Only then are the appended and removed entries counted and the
    /// uploaders woken.
    pub fn commit(mut self) -> Result<(), OutboxError> {
        for lane in Lane::ALL {
            let i = lane.as_u8() as usize;
            if self.next[i] != self.q.next[i] {
                self.q
                    .conn
                    .prepare_cached(
                        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    )?
                    .execute(params![format!("next_seq.{i}"), self.next[i] as i64])?;
            }
        }
        self.q.conn.execute_batch("COMMIT")?;
        self.done = true;
        self.q.next = self.next;
        if self.urgent {
            self.q.urgent.store(true, Ordering::Release);
        }
        for lane in Lane::ALL {
            let i = lane.as_u8() as usize;
            let slot = self.q.depth.lane(lane);
            slot.fetch_add(self.appended[i], Ordering::Relaxed);
            slot.fetch_sub(
                self.acked[i].min(slot.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        if self.appended.iter().chain(&self.acked).any(|n| *n > 0) {
            let (lock, cvar) = &*self.q.wake;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            cvar.notify_all();
        }
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Nothing of it was committed; a rollback that fails leaves SQLite to roll back
            // when the connection next begins (it cannot commit what we never committed).
            let _ = self.q.conn.execute_batch("ROLLBACK");
        }
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
