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
//! meta(key, value)                        -- 'next_seq.0', 'next_seq.1': the next sequence per lane
//! ```
//!
//! `entry` is the reading as wire JSON (`osler_wire::Entry`), ready to batch. `lane` 0 is alerts,
//! 1 readings; the uploader empties lane 0 first.
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

use osler_wire::Lane;
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
}

/// Counts the uploader and `/status` read without touching the disk.
#[derive(Debug, Default)]
pub struct Depth {
    pub alerts: AtomicU64,
    pub readings: AtomicU64,
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

impl Outbox {
    /// Opens the outbox in `dir`, recovering from a damaged file by moving it aside.
    /// `limit_bytes` is the size at which new readings are refused.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<Outbox, OutboxError> {
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
        for (lane, slot) in [
            (Lane::Alerts, &depth.alerts),
            (Lane::Readings, &depth.readings),
        ] {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM outbox WHERE lane=?1",
                [lane.as_u8()],
                |r| r.get(0),
            )?;
            slot.store(n as u64, Ordering::Relaxed);
        }
        let reader = Connection::open(&path)?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        let wake = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            conn,
            limit: limit_bytes,
            depth: depth.clone(),
            wake: wake.clone(),
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

    /// Appends entries to a lane; resolves with their sequence numbers once they are durable.
    pub async fn append(
        &self,
        lane: Lane,
        entries: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<u64>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Append {
                lane,
                entries,
                now_ms,
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Keeps an invalid item with the reason, durably.
    pub async fn quarantine(&self, item: Quarantined) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Quarantine { item, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Removes a lane's entries up to and including `through` (the hub committed them).
    /// Blocking: for the uploader thread.
    pub fn ack_blocking(&self, lane: Lane, through: u64) -> Result<usize, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Job::Ack {
                lane,
                through,
                reply,
            })
            .map_err(|_| OutboxError::Closed)?;
        rx.blocking_recv().map_err(|_| OutboxError::Closed)?
    }

    /// [`Outbox::append`] for callers outside the runtime.
    pub fn append_blocking(
        &self,
        lane: Lane,
        entries: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<u64>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Job::Append {
                lane,
                entries,
                now_ms,
                reply,
            })
            .map_err(|_| OutboxError::Closed)?;
        rx.blocking_recv().map_err(|_| OutboxError::Closed)?
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
        }
    }
}

struct Writer {
    conn: Connection,
    limit: u64,
    depth: Arc<Depth>,
    wake: Arc<(Mutex<u64>, Condvar)>,
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
        let mut appended = [0u64; 2];
        let mut acked = [0u64; 2];
        let result = (|| -> Result<(), OutboxError> {
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
                }
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (i, slot) in [&self.depth.alerts, &self.depth.readings]
                    .into_iter()
                    .enumerate()
                {
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
