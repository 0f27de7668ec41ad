//! The writer thread: takes every job waiting in the queue, applies each inside its own
//! savepoint, commits them together (one fsync for the group), then answers each job.
//!
//! Group commit happens by itself: while one commit waits on the disk, new jobs queue up and
//! are all taken by the next round, so the fsync rate stays bounded by the disk and the
//! per-reading cost falls as load rises, with no added wait at low load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use osler_core::{Id, Metric, Reading, Value};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use crate::query::{load_reading_row, matches_ident};
use crate::{
    BatchMark, Job, ReadingId, StoreError, StoreStats, StoredReading, WriteOp, WriteOutcome,
    WriteResult, ident_hash, ident_text,
};

type SeriesKey = (Id, Metric, Option<Id>);

/// The readings a job left stored, for its rules: the stored reading of what was created or
/// found already there, the op's own of what a gateway's earlier batch committed; not what
/// conflicted or was dead-lettered.
fn stored_readings<'a>(ops: &'a [WriteOp], outcomes: &'a [WriteOutcome]) -> Vec<&'a Reading> {
    ops.iter()
        .zip(outcomes)
        .filter_map(|(op, o)| match o {
            WriteOutcome::Created(s) | WriteOutcome::Existing(s) | WriteOutcome::Corrected(s) => {
                Some(&s.reading)
            }
            WriteOutcome::AlreadyCommitted => Some(&op.reading),
            _ => None,
        })
        .collect()
}

pub(crate) struct Writer {
    conn: Connection,
    stats: Arc<StoreStats>,
    max_group: usize,
    patient_stub: Option<osler_registry::Stub>,
    audit_key: Option<ed25519_dalek::SigningKey>,
    series: HashMap<SeriesKey, i64>,
    /// The gateway batch being applied, named on the readings it stores.
    batch: Option<i64>,
    /// The (series, local day) pairs already in `data_day`, so that a reading costs a hash
    /// lookup rather than a write there; forgotten whenever a transaction is undone.
    days: HashSet<(i64, i64)>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        stats: Arc<StoreStats>,
        max_group: usize,
        patient_stub: Option<osler_registry::Stub>,
        audit_key: Option<ed25519_dalek::SigningKey>,
    ) -> Result<Writer, StoreError> {
        let mut series = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT id, patient, metric, device FROM series")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (key, id) = series_row(row)?;
                series.insert(key, id);
            }
        }
        Ok(Writer {
            conn,
            stats,
            max_group,
            patient_stub,
            audit_key,
            series,
            batch: None,
            days: HashSet::new(),
        })
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut n = first.ops.len();
            let mut jobs = vec![first];
            while n < self.max_group {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.ops.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
        }
        tracing::debug!("store writer stopped: every handle is closed");
    }

    fn commit_group(&mut self, mut jobs: Vec<Job>) {
        let mut new_series = Vec::new();
        let result = self.apply_group(&mut jobs, &mut new_series);
        match result {
            Ok((results, stored)) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.readings.fetch_add(stored, Ordering::Relaxed);
                self.stats
                    .committed_readings
                    .fetch_add(stored, Ordering::Relaxed);
                for (job, r) in jobs.into_iter().zip(results) {
                    // The requester may have gone (client hung up); the data is stored anyway.
                    let _ = job.reply.send(Ok(r));
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.days.clear();
                for key in new_series {
                    self.series.remove(&key);
                }
                tracing::error!(error = %e, jobs = jobs.len(), "group commit failed; nothing of it was stored");
                for job in jobs {
                    let _ = job.reply.send(Err(e.for_requester()));
                }
            }
        }
    }

    fn apply_group(
        &mut self,
        jobs: &mut [Job],
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<(Vec<WriteResult>, u64), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut results = Vec::with_capacity(jobs.len());
        let mut stored = 0u64;
        for job in jobs.iter_mut() {
            self.conn.execute_batch("SAVEPOINT job")?;
            let mark = new_series.len();
            // Registry writes first: a Bundle that enrols a patient and posts their readings
            // creates the Patient as written, not a minimal one that the readings would make.
            let mut resources = Vec::with_capacity(job.resources.len());
            let mut released = Vec::new();
            for w in &job.resources {
                let outcome = crate::registry::apply(&self.conn, w)?;
                if let Some(device) = crate::registry::device_of(w, &outcome) {
                    self.release(&device, &mut released, new_series)?;
                }
                resources.push(outcome);
            }
            let outcomes = match &job.batch {
                None => {
                    let mut outcomes = Vec::with_capacity(job.ops.len());
                    for op in &job.ops {
                        outcomes.push(self.apply(op, new_series)?);
                    }
                    outcomes
                }
                Some(batch) => self.apply_batch(&job.ops, batch, new_series)?,
            };
            let failed = outcomes.iter().any(|o| !o.is_ok())
                || resources.iter().any(|o| o.stored().is_none());
            if job.atomic && failed {
                self.conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                self.days.clear();
                for key in new_series.drain(mark..) {
                    self.series.remove(&key);
                }
                results.push(WriteResult {
                    committed: false,
                    outcomes,
                    alerts: Vec::new(),
                    resources,
                });
            } else {
                self.conn.execute_batch("RELEASE job")?;
                stored += outcomes
                    .iter()
                    .filter(|o| matches!(o, WriteOutcome::Created(_)))
                    .count() as u64;
                let mut writes = std::mem::take(&mut job.alerts);
                if let Some(rules) = job.rules.take() {
                    let mut judged = stored_readings(&job.ops, &outcomes);
                    judged.extend(released.iter());
                    writes.extend(rules(&judged));
                }
                let mut changed = Vec::with_capacity(writes.len());
                for w in &writes {
                    changed.push(crate::alerts::apply(&self.conn, w)?);
                }
                // What the job changed and its audit entries are one commit: no audit, no
                // change. A job whose every write was refused changed nothing: its entries
                // (written as successes) are not appended, and the caller records the refusal
                // instead, as it does for a job undone above.
                let wrote = job.ops.is_empty() && job.resources.is_empty()
                    || outcomes.iter().any(WriteOutcome::is_ok)
                    || resources.iter().any(|o| o.stored().is_some());
                if wrote && !job.audit.is_empty() {
                    let key = self.audit_key.as_ref().ok_or(StoreError::NoAuditKey)?;
                    crate::security::append(&self.conn, key, &job.audit)?;
                }
                results.push(WriteResult {
                    committed: true,
                    outcomes,
                    alerts: changed,
                    resources,
                });
            }
        }
        if stored > 0 {
            self.conn.execute(
                "UPDATE meta SET value = value + ?1 WHERE key='readings'",
                [stored as i64],
            )?;
        }
        self.conn.execute_batch("COMMIT")?;
        Ok((results, stored))
    }

    /// Stores the held readings that the assignments of `device` now cover, each under its
    /// patient, and removes them from the held table (in the caller's transaction).
    fn release(
        &mut self,
        device: &str,
        released: &mut Vec<Reading>,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<(), StoreError> {
        let Some(device_id) = Id::parse(device) else {
            return Ok(());
        };
        let names = crate::registry::device_names(&self.conn, device)?;
        for a in crate::registry::assignments_of(&self.conn, device)? {
            let Some(patient) = Id::parse(&a.patient) else {
                continue;
            };
            for h in crate::held::covered(&self.conn, &names, a.start_ms, a.end_ms)? {
                let mut reading = h.reading;
                reading.patient = patient.clone();
                reading.device = Some(device_id.clone());
                let op = WriteOp {
                    reading,
                    if_none_exist: None,
                    by_device: false,
                    correction: None,
                };
                let outcome = self.apply(&op, new_series)?;
                crate::held::remove(&self.conn, h.id)?;
                match outcome {
                    WriteOutcome::Created(s) => {
                        self.stats.readings.fetch_add(1, Ordering::Relaxed);
                        self.conn.execute(
                            "UPDATE meta SET value = value + 1 WHERE key='readings'",
                            [],
                        )?;
                        released.push(s.reading);
                    }
                    WriteOutcome::Existing(s) => released.push(s.reading),
                    // The same reading sent twice while held, or one that now conflicts
                    // with a stored one: kept as a dead letter, never overwriting.
                    _ => {
                        self.conn
                            .prepare_cached(
                                "INSERT INTO dead_letter(received_ms, source, payload, reason) VALUES (?1, ?2, ?3, ?4)",
                            )?
                            .execute(params![
                                op.reading.received_ms,
                                format!("held reading {}", h.id),
                                format!("{:?}", op.reading),
                                "released by an assignment but a different reading is stored under the same identity"
                            ])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The patient and Device id a device-attributed reading belongs to, by the assignments
    /// in force at its time; `None` to hold it.
    fn attribute(&self, device: &str, t_ms: i64) -> Result<Option<(Id, Id)>, StoreError> {
        let resolved = crate::registry::resolve_device(&self.conn, device)?;
        let Some(patient) = crate::registry::patient_at(&self.conn, &resolved, t_ms)? else {
            return Ok(None);
        };
        Ok(Id::parse(&patient).zip(Id::parse(&resolved)))
    }

    /// A gateway batch: skip what this gateway's lane committed before, dead-letter what cannot
    /// be stored, and move the high-water mark, inside the job's savepoint.
    fn apply_batch(
        &mut self,
        ops: &[WriteOp],
        batch: &BatchMark,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let hwm: Option<i64> = self
            .conn
            .query_row(
                "SELECT committed FROM gateway_seq WHERE gateway=?1 AND lane=?2",
                params![batch.gateway, batch.lane],
                |r| r.get(0),
            )
            .optional()?;
        let hwm = hwm.unwrap_or(0).max(0) as u64;
        if batch.first_seq > hwm + 1 {
            self.stats.sequence_gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(gateway = %batch.gateway, lane = batch.lane, expected = hwm + 1, got = batch.first_seq, "gateway batch does not follow the last one committed");
        }
        let source = format!("gateway {} lane {}", batch.gateway, batch.lane);
        let now = batch.received_ms;
        let dead = |conn: &Connection,
                    seq: u64,
                    payload: &str,
                    reason: &str|
         -> Result<(), StoreError> {
            conn.prepare_cached(
                "INSERT INTO dead_letter(received_ms, source, payload, reason) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![now, format!("{source} seq {seq}"), payload, reason])?;
            Ok(())
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        // The readings this batch stores name it: their provenance.
        self.batch = if ops.is_empty() || batch.last_seq <= hwm {
            None
        } else {
            Some(crate::security::record_batch(&self.conn, batch)?)
        };
        for (i, op) in ops.iter().enumerate() {
            let seq = batch.op_seqs.get(i).copied().unwrap_or(0);
            if seq <= hwm {
                outcomes.push(WriteOutcome::AlreadyCommitted);
                continue;
            }
            let outcome = self.apply(op, new_series);
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    self.batch = None;
                    return Err(e);
                }
            };
            if let WriteOutcome::Conflict { existing } = &outcome {
                let raw = batch.op_raw.get(i).map_or("", String::as_str);
                let reason = format!(
                    "a different reading is stored under the same identity (reading {}); kept here instead of overwriting it",
                    existing.id
                );
                dead(&self.conn, seq, raw, &reason)?;
                outcomes.push(WriteOutcome::DeadLettered);
            } else {
                outcomes.push(outcome);
            }
        }
        self.batch = None;
        for (seq, raw, reason) in &batch.rejected {
            if *seq > hwm {
                dead(&self.conn, *seq, raw, reason)?;
            }
        }
        for (seq, summary) in &batch.summaries {
            if *seq > hwm {
                self.insert_summary(summary, new_series)?;
            }
        }
        if let Some(r) = &batch.report {
            crate::technical::report(&self.conn, r)?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO gateway_seq(gateway, lane, committed) VALUES (?1, ?2, ?3)
                 ON CONFLICT(gateway, lane) DO UPDATE SET committed = max(committed, excluded.committed)",
            )?
            .execute(params![batch.gateway, batch.lane, batch.last_seq as i64])?;
        Ok(outcomes)
    }

    fn apply(
        &mut self,
        op: &WriteOp,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<WriteOutcome, StoreError> {
        let attributed;
        let r = if op.by_device {
            let device = op.reading.device.as_ref().map_or("", Id::as_str);
            match self.attribute(device, op.reading.taken.utc_ms)? {
                Some((patient, device_id)) => {
                    attributed = Reading {
                        patient,
                        device: Some(device_id),
                        ..op.reading.clone()
                    };
                    &attributed
                }
                None => {
                    let reason = format!(
                        "no DeviceUseStatement assigns device {device:?} to a patient at {}; held until one does",
                        op.reading.taken
                    );
                    crate::held::insert(&self.conn, &op.reading, device, &reason)?;
                    return Ok(WriteOutcome::Held);
                }
            }
        } else {
            &op.reading
        };
        if let Some(cond) = &op.if_none_exist {
            let found = matches_ident(&self.conn, cond)?;
            match found.len() {
                0 => {}
                1 => {
                    let existing = found.into_iter().next().expect("one element");
                    return Ok(WriteOutcome::Existing(existing));
                }
                count => return Ok(WriteOutcome::MultipleMatches { count }),
            }
        }
        let series = self.series_id_of(r, new_series)?;
        let id = ReadingId {
            series,
            t_ms: r.taken.utc_ms,
        };
        let (v, v2) = match r.value {
            Value::Scalar(v) => (v, None),
            Value::Pair(a, b) => (a, Some(b)),
        };
        let ident = r.identifier.as_ref().map(ident_text);
        // Insert first and look only when the identity was taken: new readings, the common
        // case, cost one B-tree descent instead of two.
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO reading(series, t, v, v2, tz, rx, status, ident, b)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(series, t) DO NOTHING",
            )?
            .execute(params![
                series,
                r.taken.utc_ms,
                v,
                v2,
                r.taken.offset_min,
                r.received_ms - r.taken.utc_ms,
                r.status as u8,
                ident,
                self.batch
            ])?;
        if inserted == 0 {
            let existing = load_reading_row(&self.conn, id, r)?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "reading {id} conflicted on insert but cannot be read"
                ))
            })?;
            let same = existing.value == r.value
                && existing.status == r.status
                && existing.taken.offset_min == r.taken.offset_min
                && (r.identifier.is_none() || existing.identifier == r.identifier);
            if let Some(c) = op.correction {
                return self.correct(id, existing, r, c, same);
            }
            let stored = StoredReading {
                id,
                reading: existing,
                summary: None,
            };
            return Ok(if same {
                WriteOutcome::Existing(stored)
            } else {
                WriteOutcome::Conflict { existing: stored }
            });
        }
        // Only a device's reading makes a data day (a manual entry does not: see `care`).
        if r.device.is_some() {
            self.note_day(
                series,
                r.patient.as_str(),
                r.taken.utc_ms,
                r.taken.offset_min,
            )?;
        }
        if let Some(i) = &r.identifier {
            self.conn
                .prepare_cached("INSERT INTO ident(h, series, t) VALUES (?1, ?2, ?3)")?
                .execute(params![
                    ident_hash(&i.system, &i.value),
                    series,
                    r.taken.utc_ms
                ])?;
        }
        Ok(WriteOutcome::Created(StoredReading {
            id,
            reading: r.clone(),
            summary: None,
        }))
    }

    /// Replaces the stored reading `existing` by its correction `r`, keeping `existing` as the
    /// previous version; the same reading again changes nothing.
    fn correct(
        &mut self,
        id: ReadingId,
        existing: Reading,
        r: &Reading,
        c: crate::Correction,
        same: bool,
    ) -> Result<WriteOutcome, StoreError> {
        let earlier: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM reading_version WHERE series=?1 AND t=?2")?
            .query_row(params![id.series, id.t_ms], |row| row.get(0))?;
        let current = earlier as u64 + 1;
        if let Some(v) = c.if_match
            && v != current
        {
            return Ok(WriteOutcome::VersionConflict { current });
        }
        if same {
            return Ok(WriteOutcome::Existing(StoredReading {
                id,
                reading: existing,
                summary: None,
            }));
        }
        let parts = |v: &Value| match *v {
            Value::Scalar(a) => (a, None),
            Value::Pair(a, b) => (a, Some(b)),
        };
        let (v, v2) = parts(&existing.value);
        self.conn
            .prepare_cached(
                "INSERT INTO reading_version(series, t, vid, v, v2, tz, rx, status, ident, replaced_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id.series,
                id.t_ms,
                current as i64,
                v,
                v2,
                existing.taken.offset_min,
                existing.received_ms - existing.taken.utc_ms,
                existing.status as u8,
                existing.identifier.as_ref().map(ident_text),
                r.received_ms
            ])?;
        let (v, v2) = parts(&r.value);
        let identifier = r.identifier.as_ref().or(existing.identifier.as_ref());
        self.conn
            .prepare_cached(
                // A correction is the corrector's, not the batch's: its provenance goes.
                "UPDATE reading SET v=?3, v2=?4, tz=?5, rx=?6, status=?7, ident=?8, b=NULL WHERE series=?1 AND t=?2",
            )?
            .execute(params![
                id.series,
                id.t_ms,
                v,
                v2,
                r.taken.offset_min,
                r.received_ms - r.taken.utc_ms,
                r.status as u8,
                identifier.map(ident_text)
            ])?;
        if let Some(i) = &r.identifier
            && existing.identifier.as_ref() != Some(i)
        {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO ident(h, series, t) VALUES (?1, ?2, ?3)")?
                .execute(params![ident_hash(&i.system, &i.value), id.series, id.t_ms])?;
        }
        let mut now = r.clone();
        now.identifier = identifier.cloned();
        Ok(WriteOutcome::Corrected(StoredReading {
            id,
            reading: now,
            summary: None,
        }))
    }

    /// Stores a summary once (a resend of the same window is ignored).
    fn insert_summary(
        &mut self,
        s: &crate::Summary,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<(), StoreError> {
        let key = (s.patient.clone(), s.metric, s.device.clone());
        let series = self.series_id(key, s.stats.end_ms, new_series)?;
        let parts = |v: &Value| match *v {
            Value::Scalar(a) => (a, None),
            Value::Pair(a, b) => (a, Some(b)),
        };
        let st = &s.stats;
        let (mean, mean2) = parts(&s.mean);
        let (mn, mn2) = parts(&st.min);
        let (mx, mx2) = parts(&st.max);
        let (last, last2) = parts(&st.last);
        self.conn
            .prepare_cached(
                "INSERT INTO summary(series, t, t1, n, v, v2, mn, mn2, mx, mx2, last, last2, tz, spikes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT(series, t) DO NOTHING",
            )?
            .execute(params![
                series,
                s.start.utc_ms,
                st.end_ms,
                st.count,
                mean,
                mean2,
                mn,
                mn2,
                mx,
                mx2,
                last,
                last2,
                s.start.offset_min,
                st.spikes
            ])?;
        self.note_day(
            series,
            s.patient.as_str(),
            s.start.utc_ms,
            s.start.offset_min,
        )?;
        Ok(())
    }

    /// Counts the local day of a stored reading or summary as a data day of its patient.
    fn note_day(
        &mut self,
        series: i64,
        patient: &str,
        utc_ms: i64,
        offset_min: i16,
    ) -> Result<(), StoreError> {
        let day = crate::care::local_day(utc_ms, offset_min);
        // Bounded: a year of 500 patients' series would be some 700,000 pairs; forgetting
        // them costs one idempotent insert each the next time.
        if self.days.len() > 100_000 {
            self.days.clear();
        }
        if self.days.insert((series, day)) {
            crate::care::note_day(&self.conn, patient, day)?;
        }
        Ok(())
    }

    fn series_id_of(
        &mut self,
        r: &Reading,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<i64, StoreError> {
        let key = (r.patient.clone(), r.metric, r.device.clone());
        self.series_id(key, r.received_ms, new_series)
    }

    fn series_id(
        &mut self,
        key: SeriesKey,
        now: i64,
        new_series: &mut Vec<SeriesKey>,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.series.get(&key) {
            return Ok(*id);
        }
        let r_patient = key.0.clone();
        let r_metric = key.1;
        let device = key.2.as_ref().map_or("", Id::as_str).to_owned();
        let device = device.as_str();
        let new_patient = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO patient(id, created_ms) VALUES (?1, ?2)")?
            .execute(params![r_patient.as_str(), now])?;
        if new_patient == 1
            && let Some(stub) = &self.patient_stub
        {
            crate::registry::insert_stub(&self.conn, r_patient.as_str(), stub, now)?;
        }
        if !device.is_empty() {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO device(id, created_ms) VALUES (?1, ?2)")?
                .execute(params![device, now])?;
        }
        let existing: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM series WHERE patient=?1 AND metric=?2 AND device=?3",
                params![r_patient.as_str(), r_metric as u8, device],
                |row| row.get(0),
            )
            .optional()?;
        let id = match existing {
            Some(id) => id,
            None => {
                self.conn.execute(
                    "INSERT INTO series(patient, metric, device) VALUES (?1, ?2, ?3)",
                    params![r_patient.as_str(), r_metric as u8, device],
                )?;
                self.conn.last_insert_rowid()
            }
        };
        self.series.insert(key.clone(), id);
        new_series.push(key);
        Ok(id)
    }
}

/// Decodes a `series` row (id, patient, metric, device).
pub(crate) fn series_row(row: &rusqlite::Row<'_>) -> Result<(SeriesKey, i64), StoreError> {
    let id: i64 = row.get(0)?;
    let patient: String = row.get(1)?;
    let metric: u8 = row.get(2)?;
    let device: String = row.get(3)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("series {id}: {what}"));
    let patient = Id::parse(&patient).ok_or_else(|| corrupt("bad patient id"))?;
    let metric = Metric::from_u8(metric).ok_or_else(|| corrupt("unknown metric"))?;
    let device = if device.is_empty() {
        None
    } else {
        Some(Id::parse(&device).ok_or_else(|| corrupt("bad device id"))?)
    };
    Ok(((patient, metric, device), id))
}
