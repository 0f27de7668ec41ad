//! Reads: by id, by time range (keyset-paged), newest-n, by sender identifier.
//!
//! A patient's readings of one metric from one device form a series; the main query resolves
//! the patient's series first (a handful of rows), then scans each series' primary-key range
//! and merges the results in time order. No query ever scans readings of other patients.

use osler_core::{Id, Identifier, Metric, Reading, Status, Timestamp, Value};
use rusqlite::{Connection, OptionalExtension, params};

use crate::writer::series_row;
use crate::{ReadingId, StoreError, StoredReading, ident_hash, ident_text};

type SeriesKey = (Id, Metric, Option<Id>);

/// A time-range search over one patient's readings, or, without a patient, over every
/// patient's readings of some metrics (population work).
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// `None`: every patient; then `metrics` must name the metrics (an empty search otherwise:
    /// nothing scans every reading).
    pub patient: Option<Id>,
    /// Only these metrics; `None` for all.
    pub metrics: Option<Vec<Metric>>,
    /// Only readings from this device.
    pub device: Option<Id>,
    /// Time taken, inclusive lower bound (UTC ms).
    pub from_ms: i64,
    /// Time taken, exclusive upper bound (UTC ms).
    pub to_ms: i64,
    /// Newest first.
    pub descending: bool,
    /// Continue after this position (keyset paging: stable while new readings arrive).
    pub after: Option<Cursor>,
    /// Page size.
    pub limit: usize,
    /// Only these patients (the caller's compartment), applied when the series are chosen,
    /// before any reading is read; `None` for everyone the query otherwise selects.
    pub within: Option<Vec<Id>>,
}

impl Query {
    /// Every reading of a patient, oldest first, 50 a page.
    pub fn patient(patient: Id) -> Query {
        Query {
            patient: Some(patient),
            metrics: None,
            device: None,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            descending: false,
            after: None,
            limit: 50,
            within: None,
        }
    }
}

/// A position in a search's order: the last reading of the previous page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub t_ms: i64,
    pub series: i64,
}

/// One page of results and where the next one starts, if there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub readings: Vec<StoredReading>,
    pub next: Option<Cursor>,
}

impl Page {
    /// The first `limit` of `found` (in page order, read one past the limit to know whether
    /// a next page exists), and the cursor after them when there is more.
    fn of(mut found: Vec<StoredReading>, limit: usize) -> Page {
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|s| Cursor {
                t_ms: s.id.t_ms,
                series: s.id.series,
            })
        } else {
            None
        };
        Page {
            readings: found,
            next,
        }
    }
}

const COLUMNS: &str = "t, v, v2, tz, rx, status, ident";

fn decode(
    key: &SeriesKey,
    series: i64,
    row: &rusqlite::Row<'_>,
) -> Result<StoredReading, StoreError> {
    let t: i64 = row.get(0)?;
    let v: f64 = row.get(1)?;
    let v2: Option<f64> = row.get(2)?;
    let tz: i16 = row.get(3)?;
    let rx: i64 = row.get(4)?;
    let status: u8 = row.get(5)?;
    let ident: Option<String> = row.get(6)?;
    let id = ReadingId { series, t_ms: t };
    let corrupt = |what: &str| StoreError::Corrupt(format!("reading {id}: {what}"));
    let (patient, metric, device) = key.clone();
    let value = match (metric.info().parts.is_some(), v2) {
        (false, None) => Value::Scalar(v),
        (true, Some(v2)) => Value::Pair(v, v2),
        _ => return Err(corrupt("value shape does not match its metric")),
    };
    let identifier = match ident {
        None => None,
        Some(text) => {
            let (system, value) = text
                .split_once('\u{1f}')
                .ok_or_else(|| corrupt("identifier without separator"))?;
            Some(Identifier {
                system: system.to_owned(),
                value: value.to_owned(),
            })
        }
    };
    Ok(StoredReading {
        id,
        reading: Reading {
            patient,
            device,
            metric,
            value,
            taken: Timestamp {
                utc_ms: t,
                offset_min: tz,
            },
            received_ms: t + rx,
            status: Status::from_u8(status).ok_or_else(|| corrupt("unknown status"))?,
            identifier,
        },
        summary: None,
    })
}

const SUMMARY_COLUMNS: &str = "t, t1, n, v, v2, mn, mn2, mx, mx2, last, last2, tz, spikes";

/// Decodes a summary row of series `series` (positive); its id carries the negated series.
fn decode_summary(
    key: &SeriesKey,
    series: i64,
    row: &rusqlite::Row<'_>,
) -> Result<StoredReading, StoreError> {
    let t: i64 = row.get(0)?;
    let id = ReadingId {
        series: -series,
        t_ms: t,
    };
    let (patient, metric, device) = key.clone();
    let pair = metric.info().parts.is_some();
    let value = |a: usize| -> Result<Value, StoreError> {
        let v: f64 = row.get(a)?;
        let v2: Option<f64> = row.get(a + 1)?;
        match (pair, v2) {
            (false, None) => Ok(Value::Scalar(v)),
            (true, Some(v2)) => Ok(Value::Pair(v, v2)),
            _ => Err(StoreError::Corrupt(format!(
                "summary {id}: value shape does not match its metric"
            ))),
        }
    };
    let end_ms: i64 = row.get(1)?;
    let count: i64 = row.get(2)?;
    Ok(StoredReading {
        id,
        reading: Reading {
            patient,
            device,
            metric,
            value: value(3)?,
            taken: Timestamp {
                utc_ms: t,
                offset_min: row.get(11)?,
            },
            received_ms: end_ms,
            status: Status::Final,
            identifier: None,
        },
        summary: Some(crate::SummaryStats {
            end_ms,
            count: count.clamp(0, u32::MAX as i64) as u32,
            min: value(5)?,
            max: value(7)?,
            last: value(9)?,
            spikes: row.get::<_, i64>(12)?.clamp(0, u32::MAX as i64) as u32,
        }),
    })
}

fn series_by_id(conn: &Connection, id: i64) -> Result<Option<SeriesKey>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, patient, metric, device FROM series WHERE id=?1")?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(series_row(row)?.0)),
        None => Ok(None),
    }
}

/// The reading stored under `id`, given its series' key (the writer knows it already).
pub(crate) fn load_reading_row(
    conn: &Connection,
    id: ReadingId,
    like: &Reading,
) -> Result<Option<Reading>, StoreError> {
    let key = (like.patient.clone(), like.metric, like.device.clone());
    load(conn, id, &key).map(|o| o.map(|s| s.reading))
}

fn load(
    conn: &Connection,
    id: ReadingId,
    key: &SeriesKey,
) -> Result<Option<StoredReading>, StoreError> {
    if id.is_summary() {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summary WHERE series=?1 AND t=?2"
        ))?;
        let mut rows = stmt.query(params![-id.series, id.t_ms])?;
        return match rows.next()? {
            Some(row) => Ok(Some(decode_summary(key, -id.series, row)?)),
            None => Ok(None),
        };
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reading WHERE series=?1 AND t=?2"
    ))?;
    let mut rows = stmt.query(params![id.series, id.t_ms])?;
    match rows.next()? {
        Some(row) => Ok(Some(decode(key, id.series, row)?)),
        None => Ok(None),
    }
}

pub(crate) fn get(conn: &Connection, id: ReadingId) -> Result<Option<StoredReading>, StoreError> {
    match series_by_id(conn, id.series.abs())? {
        Some(key) => load(conn, id, &key),
        None => Ok(None),
    }
}

/// The series that the query selects: the patient's, or every patient's of its metrics.
fn series_for(conn: &Connection, q: &Query) -> Result<Vec<(i64, SeriesKey)>, StoreError> {
    let mut out = Vec::new();
    let Some(patient) = &q.patient else {
        let mut stmt =
            conn.prepare_cached("SELECT id, patient, metric, device FROM series WHERE metric=?1")?;
        for m in q.metrics.iter().flatten() {
            let mut rows = stmt.query([*m as u8])?;
            while let Some(row) = rows.next()? {
                let (key, id) = series_row(row)?;
                let inside = q.within.as_ref().is_none_or(|w| w.contains(&key.0));
                if inside && (q.device.is_none() || q.device == key.2) {
                    out.push((id, key));
                }
            }
        }
        return Ok(out);
    };
    if q.within.as_ref().is_some_and(|w| !w.contains(patient)) {
        return Ok(out);
    }
    let mut stmt =
        conn.prepare_cached("SELECT id, patient, metric, device FROM series WHERE patient=?1")?;
    let mut rows = stmt.query([patient.as_str()])?;
    while let Some(row) = rows.next()? {
        let (key, id) = series_row(row)?;
        let metric_ok = q.metrics.as_ref().is_none_or(|ms| ms.contains(&key.1));
        let device_ok = q.device.is_none() || q.device == key.2;
        if metric_ok && device_ok {
            out.push((id, key));
        }
    }
    Ok(out)
}

/// Bounds `[lo, hi)` on `t` for one series, after the cursor if there is one.
fn bounds(q: &Query, series: i64) -> (i64, i64) {
    let (mut lo, mut hi) = (q.from_ms, q.to_ms);
    if let Some(c) = q.after {
        if q.descending {
            // Order is (t desc, series desc): what follows (ct, cs) has t < ct, or t = ct
            // with a smaller series id.
            let limit = if series < c.series {
                c.t_ms.saturating_add(1)
            } else {
                c.t_ms
            };
            hi = hi.min(limit);
        } else {
            let limit = if series > c.series {
                c.t_ms
            } else {
                c.t_ms.saturating_add(1)
            };
            lo = lo.max(limit);
        }
    }
    (lo, hi)
}

pub(crate) fn search(conn: &Connection, q: &Query) -> Result<Page, StoreError> {
    if q.patient.is_none() {
        // One read transaction for the thousand small reads: one snapshot (the page is
        // consistent while readings arrive) and one WAL read lock instead of one per read.
        conn.execute_batch("BEGIN DEFERRED")?;
        let page = search_across(conn, q);
        let end = conn.execute_batch("COMMIT");
        let page = page?;
        end?;
        return Ok(page);
    }
    let mut found = Vec::new();
    let order = if q.descending { "DESC" } else { "ASC" };
    // No `LIMIT ?`: SQLite (3.50, built with STAT4) plans with a bound LIMIT's value, so a
    // statement with one is re-prepared at every run, which cost more than the reads
    // themselves; the rows are stepped up to the limit instead.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reading WHERE series=?1 AND t>=?2 AND t<?3 ORDER BY t {order}"
    ))?;
    let mut summaries = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM summary WHERE series=?1 AND t>=?2 AND t<?3 ORDER BY t {order}"
    ))?;
    let want = q.limit + 1;
    for (series, key) in series_for(conn, q)? {
        let (lo, hi) = bounds(q, series);
        if lo < hi {
            let mut rows = stmt.query(params![series, lo, hi])?;
            let mut n = 0;
            while n < want
                && let Some(row) = rows.next()?
            {
                found.push(decode(&key, series, row)?);
                n += 1;
            }
        }
        // The series' summaries, in the same order under the negated series id.
        let (lo, hi) = bounds(q, -series);
        if lo < hi {
            let mut rows = summaries.query(params![series, lo, hi])?;
            let mut n = 0;
            while n < want
                && let Some(row) = rows.next()?
            {
                found.push(decode_summary(&key, series, row)?);
                n += 1;
            }
        }
    }
    found.sort_by_key(|s| (s.id.t_ms, s.id.series));
    if q.descending {
        found.reverse();
    }
    Ok(Page::of(found, q.limit))
}

/// One source of a merge across series: a series' readings (`id` > 0) or its summaries
/// (`id` < 0), read a few at a time in the query's order.
struct Source {
    id: i64,
    key: SeriesKey,
    buffer: std::collections::VecDeque<StoredReading>,
    done: bool,
}

/// Rows fetched at a time from a source that reaches the page (its head is read alone): most
/// series contribute nothing or a row or two to a page, so small reads keep a thousand series
/// at a thousand cheap index descents.
const CHUNK: usize = 4;

impl Source {
    /// Reads the source's next rows after `after` (at most `n`), with `stmt` the prepared
    /// range query of its table.
    fn fill(
        &mut self,
        stmt: &mut rusqlite::Statement<'_>,
        q: &Query,
        after: Option<Cursor>,
        n: usize,
    ) -> Result<(), StoreError> {
        let sub = Query { after, ..q.clone() };
        let (lo, hi) = bounds(&sub, self.id);
        if lo >= hi {
            self.done = true;
            return Ok(());
        }
        let mut rows = stmt.query(params![self.id.abs(), lo, hi])?;
        let mut got = 0;
        while got < n
            && let Some(row) = rows.next()?
        {
            got += 1;
            self.buffer.push_back(if self.id > 0 {
                decode(&self.key, self.id, row)?
            } else {
                decode_summary(&self.key, -self.id, row)?
            });
        }
        self.done = got < n;
        Ok(())
    }
}

/// A search across patients: a k-way merge of every selected series (readings and
/// summaries), reading each a few rows at a time, so that a page costs one index descent per
/// series plus the rows it returns, never a scan of the range.
fn search_across(conn: &Connection, q: &Query) -> Result<Page, StoreError> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let order = if q.descending { "DESC" } else { "ASC" };
    // Stepped to the count wanted rather than `LIMIT ?` (see `search`).
    let range = |table: &str, cols: &str| {
        format!("SELECT {cols} FROM {table} WHERE series=?1 AND t>=?2 AND t<?3 ORDER BY t {order}")
    };
    let mut readings = conn.prepare_cached(&range("reading", COLUMNS))?;
    let mut summaries = conn.prepare_cached(&range("summary", SUMMARY_COLUMNS))?;
    let mut sources = Vec::new();
    for (series, key) in series_for(conn, q)? {
        for id in [series, -series] {
            let mut s = Source {
                id,
                key: key.clone(),
                buffer: Default::default(),
                done: false,
            };
            // The head of every source, to know where the page starts; only the few sources
            // that reach the page are read further.
            let stmt = if id > 0 {
                &mut readings
            } else {
                &mut summaries
            };
            s.fill(stmt, q, q.after, 1)?;
            if !s.buffer.is_empty() {
                sources.push(s);
            }
        }
    }
    // Heap of each source's next reading, by the page order: (t, series) ascending, or both
    // descending.
    let rank = |r: &StoredReading| {
        let k = (r.id.t_ms, r.id.series);
        if q.descending { (-k.0, -k.1) } else { k }
    };
    let mut heap: BinaryHeap<Reverse<((i64, i64), usize)>> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.buffer.front().map(|r| Reverse((rank(r), i))))
        .collect();
    let mut found = Vec::with_capacity(q.limit + 1);
    while found.len() <= q.limit {
        let Some(Reverse((_, i))) = heap.pop() else {
            break;
        };
        let s = &mut sources[i];
        let Some(r) = s.buffer.pop_front() else {
            continue;
        };
        let last = Cursor {
            t_ms: r.id.t_ms,
            series: r.id.series,
        };
        found.push(r);
        if s.buffer.is_empty() && !s.done {
            let stmt = if s.id > 0 {
                &mut readings
            } else {
                &mut summaries
            };
            s.fill(stmt, q, Some(last), CHUNK)?;
        }
        if let Some(next) = s.buffer.front() {
            heap.push(Reverse((rank(next), i)));
        }
    }
    Ok(Page::of(found, q.limit))
}

pub(crate) fn count(conn: &Connection, q: &Query) -> Result<u64, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT count(*) FROM reading WHERE series=?1 AND t>=?2 AND t<?3")?;
    let mut summaries =
        conn.prepare_cached("SELECT count(*) FROM summary WHERE series=?1 AND t>=?2 AND t<?3")?;
    let mut total = 0u64;
    for (series, _) in series_for(conn, q)? {
        let (lo, hi) = bounds(q, series);
        if lo < hi {
            let n: i64 = stmt.query_row(params![series, lo, hi], |r| r.get(0))?;
            total += n as u64;
        }
        let (lo, hi) = bounds(q, -series);
        if lo < hi {
            let n: i64 = summaries.query_row(params![series, lo, hi], |r| r.get(0))?;
            total += n as u64;
        }
    }
    Ok(total)
}

pub(crate) fn last_n(
    conn: &Connection,
    q: &Query,
    max: usize,
) -> Result<Vec<StoredReading>, StoreError> {
    let mut by_metric: Vec<(Metric, Vec<StoredReading>)> = Vec::new();
    // Stepped to `max` rather than `LIMIT ?` (see `search`).
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reading WHERE series=?1 AND t>=?2 AND t<?3 ORDER BY t DESC"
    ))?;
    for (series, key) in series_for(conn, q)? {
        let slot = match by_metric.iter().position(|(m, _)| *m == key.1) {
            Some(i) => i,
            None => {
                by_metric.push((key.1, Vec::new()));
                by_metric.len() - 1
            }
        };
        let mut rows = stmt.query(params![series, q.from_ms, q.to_ms])?;
        let mut n = 0;
        while n < max
            && let Some(row) = rows.next()?
        {
            by_metric[slot].1.push(decode(&key, series, row)?);
            n += 1;
        }
    }
    by_metric.sort_by_key(|(m, _)| *m);
    let mut out = Vec::new();
    for (_, mut readings) in by_metric {
        readings.sort_by_key(|s| std::cmp::Reverse((s.id.t_ms, s.id.series)));
        readings.truncate(max);
        out.extend(readings);
    }
    Ok(out)
}

/// Readings that carry exactly this identifier.
pub(crate) fn matches_ident(
    conn: &Connection,
    ident: &Identifier,
) -> Result<Vec<StoredReading>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT series, t FROM ident WHERE h=?1")?;
    let ids: Vec<ReadingId> = stmt
        .query_map([ident_hash(&ident.system, &ident.value)], |r| {
            Ok(ReadingId {
                series: r.get(0)?,
                t_ms: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let want = ident_text(ident);
    let mut out = Vec::new();
    for id in ids {
        if let Some(s) = get(conn, id)?
            && s.reading.identifier.as_ref().map(ident_text).as_deref() == Some(want.as_str())
        {
            out.push(s);
        }
    }
    Ok(out)
}

pub(crate) fn committed_through(
    conn: &Connection,
    gateway: &str,
    lane: u8,
) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT committed FROM gateway_seq WHERE gateway=?1 AND lane=?2",
            params![gateway, lane],
            |r| r.get(0),
        )
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

pub(crate) fn dead_letters(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<crate::DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, received_ms, source, payload, reason FROM dead_letter ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(crate::DeadLetter {
            id: r.get(0)?,
            received_ms: r.get(1)?,
            source: r.get(2)?,
            payload: r.get(3)?,
            reason: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn exists(conn: &Connection, table: &'static str, id: &str) -> Result<bool, StoreError> {
    // `table` is one of two literals chosen by the caller, never outside input.
    let found: Option<i64> = conn
        .query_row(&format!("SELECT 1 FROM {table} WHERE id=?1"), [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(found.is_some())
}

/// Every reading taken at or after `since(metric)`, per series in time order (to rebuild the
/// alert engine's short history after a restart).
pub(crate) fn recent(
    conn: &Connection,
    since: &dyn Fn(Metric) -> i64,
) -> Result<Vec<StoredReading>, StoreError> {
    let mut series = Vec::new();
    {
        let mut stmt = conn.prepare_cached("SELECT id, patient, metric, device FROM series")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (key, id) = series_row(row)?;
            series.push((id, key));
        }
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reading WHERE series=?1 AND t>=?2 ORDER BY t"
    ))?;
    let mut out = Vec::new();
    for (id, key) in series {
        let mut rows = stmt.query(params![id, since(key.1)])?;
        while let Some(row) = rows.next()? {
            out.push(decode(&key, id, row)?);
        }
    }
    Ok(out)
}

/// Every version of a reading, the current one first, each with its number.
pub(crate) fn versions(
    conn: &Connection,
    id: ReadingId,
) -> Result<Vec<(u64, StoredReading)>, StoreError> {
    let Some(current) = get(conn, id)? else {
        return Ok(Vec::new());
    };
    let key = (
        current.reading.patient.clone(),
        current.reading.metric,
        current.reading.device.clone(),
    );
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, vid FROM reading_version WHERE series=?1 AND t=?2 ORDER BY vid DESC"
    ))?;
    let mut rows = stmt.query(params![id.series, id.t_ms])?;
    let mut older = Vec::new();
    while let Some(row) = rows.next()? {
        let vid: i64 = row.get(7)?;
        older.push((vid.max(1) as u64, decode(&key, id.series, row)?));
    }
    let mut out = vec![(older.len() as u64 + 1, current)];
    out.extend(older);
    Ok(out)
}
