//! What a remote-monitoring programme counts each month and what a clinician sees at a
//! glance: the days a patient's devices gave data, the notes and calls of their care (with the
//! minutes spent), each series' latest value, and series downsampled for charts.
//!
//! Data days are kept as they arrive (one row per patient and local day, written by the store's
//! writer beside the reading) because counting them from the readings would read a month of
//! every patient's data on every page. US remote-monitoring billing counts data days (16–30 in
//! 30 for CPT 99454, 2–15 for 99445 from 2026) and minutes of management (20 for 99457, 10 for
//! 99470 from 2026, each further 20 for 99458): `../shared/reference/dashboard.md`. Only what a
//! device gave counts (the same source: patient-entered manual readings are not data days), so
//! a reading without a device (typed in, or posted with no `device`) is stored and shown but
//! makes no data day; summaries always come from a gateway's devices.

use rusqlite::{Connection, params};

use crate::StoreError;

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS data_day(
    patient TEXT NOT NULL,
    day INTEGER NOT NULL,
    PRIMARY KEY(patient, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS care_note(
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    author TEXT NOT NULL,
    kind TEXT NOT NULL,
    minutes INTEGER NOT NULL,
    text TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS care_note_of ON care_note(patient, at_ms);
";

/// Fills `data_day` from the readings and summaries stored before it existed (schema 4 → 5),
/// and again from scratch for schema 5 → 6, which stopped counting readings without a device.
pub(crate) const BACKFILL: &str = "
INSERT OR IGNORE INTO data_day(patient, day)
  SELECT DISTINCT s.patient, (r.t + r.tz * 60000) / 86400000 FROM reading r JOIN series s ON s.id = r.series
  WHERE s.device != '';
INSERT OR IGNORE INTO data_day(patient, day)
  SELECT DISTINCT s.patient, (m.t + m.tz * 60000) / 86400000 FROM summary m JOIN series s ON s.id = m.series;
";

/// The local day (days since 1970-01-01 in the reading's own offset) a time falls on: a
/// patient's "day" is theirs, not the hub's.
pub fn local_day(utc_ms: i64, offset_min: i16) -> i64 {
    (utc_ms + i64::from(offset_min) * 60_000).div_euclid(86_400_000)
}

/// Every patient the hub knows (from the registry or their readings), sorted.
pub(crate) fn patients(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM patient UNION SELECT id FROM resource WHERE kind = 'Patient' ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records that `patient` gave data on `day` (in the writer's transaction).
pub(crate) fn note_day(c: &Connection, patient: &str, day: i64) -> Result<(), StoreError> {
    c.prepare_cached("INSERT OR IGNORE INTO data_day(patient, day) VALUES (?1, ?2)")?
        .execute(params![patient, day])?;
    Ok(())
}

/// The patients a query covers: every one, or these (narrowed before the query runs).
pub type Patients<'a> = Option<&'a [String]>;

/// Where a query narrowed to `only` names its patients: `?1`, bound to them as a JSON array.
pub(crate) const IN_PATIENTS: &str = "IN (SELECT value FROM json_each(?1))";

/// Runs `narrowed` (its patient column `IN_PATIENTS`, the other parameters from `?2`) for the
/// patients of `only`, or `all` (its parameters from `?1`) when the caller may see everyone:
/// one statement either way, narrowed before it runs.
pub(crate) fn per_patient<T>(
    c: &Connection,
    only: Patients<'_>,
    all: &str,
    narrowed: &str,
    tail: &[&dyn rusqlite::ToSql],
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    match only {
        None => {
            let mut stmt = c.prepare_cached(all)?;
            for r in stmt.query_map(tail, &row)? {
                out.push(r?);
            }
        }
        Some(patients) => {
            let list = json_strings(patients);
            let mut stmt = c.prepare_cached(narrowed)?;
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&list];
            args.extend_from_slice(tail);
            for r in stmt.query_map(args.as_slice(), &row)? {
                out.push(r?);
            }
        }
    }
    Ok(out)
}

/// A JSON array of strings (for `json_each`), each escaped as JSON asks.
fn json_strings(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// How many days in `[from_day, to_day)` each patient gave data: (patient, days), only
/// patients with at least one.
pub(crate) fn data_days(
    c: &Connection,
    only: Patients<'_>,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<(String, u32)>, StoreError> {
    per_patient(
        c,
        only,
        "SELECT patient, COUNT(*) FROM data_day WHERE day >= ?1 AND day < ?2 GROUP BY patient",
        &format!(
            "SELECT patient, COUNT(*) FROM data_day WHERE patient {IN_PATIENTS}
             AND day >= ?2 AND day < ?3 GROUP BY patient"
        ),
        &[&from_day, &to_day],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What a note records: a written note, or a call (an interactive communication, which the
/// billing codes ask for once a month).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    Note,
    Call,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::Note => "note",
            NoteKind::Call => "call",
        }
    }

    pub fn parse(s: &str) -> Option<NoteKind> {
        match s {
            "note" => Some(NoteKind::Note),
            "call" => Some(NoteKind::Call),
            _ => None,
        }
    }
}

/// One entry of a patient's care timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct CareNote {
    pub id: i64,
    pub patient: String,
    pub author: String,
    pub kind: NoteKind,
    /// Minutes of care the entry logs (0 for a note that logs none).
    pub minutes: u32,
    pub text: String,
    pub at_ms: i64,
}

pub(crate) fn add_note(c: &Connection, n: &CareNote) -> Result<i64, StoreError> {
    c.prepare_cached(
        "INSERT INTO care_note(patient, author, kind, minutes, text, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        n.patient,
        n.author,
        n.kind.as_str(),
        n.minutes,
        n.text,
        n.at_ms
    ])?;
    Ok(c.last_insert_rowid())
}

/// A patient's notes and calls in `[from_ms, to_ms)`, newest first.
pub(crate) fn notes(
    c: &Connection,
    patient: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<CareNote>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, patient, author, kind, minutes, text, at_ms FROM care_note
         WHERE patient = ?1 AND at_ms >= ?2 AND at_ms < ?3 ORDER BY at_ms DESC, id DESC",
    )?;
    let rows = stmt.query_map(params![patient, from_ms, to_ms], |r| {
        let kind: String = r.get(3)?;
        Ok(CareNote {
            id: r.get(0)?,
            patient: r.get(1)?,
            author: r.get(2)?,
            // Only the two kinds are ever written (add_note takes a NoteKind).
            kind: NoteKind::parse(&kind).unwrap_or(NoteKind::Note),
            minutes: r.get(4)?,
            text: r.get(5)?,
            at_ms: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Minutes of care logged per patient in `[from_ms, to_ms)`, and whether a call was among
/// them: (patient, minutes, calls).
pub(crate) fn minutes(
    c: &Connection,
    only: Patients<'_>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(String, u32, u32)>, StoreError> {
    per_patient(
        c,
        only,
        "SELECT patient, SUM(minutes), SUM(kind = 'call') FROM care_note
         WHERE at_ms >= ?1 AND at_ms < ?2 GROUP BY patient",
        &format!(
            "SELECT patient, SUM(minutes), SUM(kind = 'call') FROM care_note
             WHERE patient {IN_PATIENTS} AND at_ms >= ?2 AND at_ms < ?3 GROUP BY patient"
        ),
        &[&from_ms, &to_ms],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// A series and its newest reading: what a worklist row shows per measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Latest {
    pub series: i64,
    pub patient: String,
    pub metric: osler_core::Metric,
    pub device: String,
    /// When the newest reading was taken (UTC ms), and its value (the second part for a
    /// panel such as blood pressure).
    pub t_ms: i64,
    pub v: f64,
    pub v2: Option<f64>,
}

/// The newest reading of every series of the patients.
pub(crate) fn latest(c: &Connection, only: Patients<'_>) -> Result<Vec<Latest>, StoreError> {
    // One descent of the (series, t) key per series: the cost is the number of series, not
    // of readings.
    const PICK: &str = "SELECT s.id, s.patient, s.metric, s.device, r.t, r.v, r.v2 FROM series s
         JOIN reading r ON r.series = s.id
          AND r.t = (SELECT MAX(t) FROM reading WHERE series = s.id)";
    let rows = per_patient(
        c,
        only,
        PICK,
        &format!("{PICK} WHERE s.patient {IN_PATIENTS}"),
        &[],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u8>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, Option<f64>>(6)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for (series, patient, m, device, t_ms, v, v2) in rows {
        if let Some(metric) = osler_core::Metric::from_u8(m) {
            out.push(Latest {
                series,
                patient,
                metric,
                device,
                t_ms,
                v,
                v2,
            });
        }
    }
    Ok(out)
}

/// One bucket of a downsampled series: its start, the readings in it, their mean, least and
/// greatest (of the first part; `mean2` is the second part's mean for a panel).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub t_ms: i64,
    pub n: u32,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub mean2: Option<f64>,
}

/// The readings of `series` in `[from_ms, to_ms)` in buckets of `width_ms`, oldest first
/// (empty buckets left out: a gap in the data stays a gap in the chart).
pub(crate) fn buckets(
    c: &Connection,
    series: &[i64],
    from_ms: i64,
    to_ms: i64,
    width_ms: i64,
) -> Result<Vec<Bucket>, StoreError> {
    let width = width_ms.max(1);
    let mut stmt = c.prepare_cached(
        "SELECT (t - ?2) / ?4, COUNT(*), AVG(v), MIN(v), MAX(v), AVG(v2) FROM reading
         WHERE series = ?1 AND t >= ?2 AND t < ?3 GROUP BY 1 ORDER BY 1",
    )?;
    let mut out: Vec<Bucket> = Vec::new();
    for s in series {
        let rows = stmt.query_map(params![s, from_ms, to_ms, width], |r| {
            Ok(Bucket {
                t_ms: from_ms + r.get::<_, i64>(0)? * width,
                n: r.get(1)?,
                mean: r.get(2)?,
                min: r.get(3)?,
                max: r.get(4)?,
                mean2: r.get(5)?,
            })
        })?;
        for b in rows {
            out.push(b?);
        }
    }
    if series.len() > 1 {
        // Two devices measuring the same thing: one chart, their buckets merged by time.
        out.sort_by_key(|b| b.t_ms);
        out = merge_same_bucket(out);
    }
    Ok(out)
}

/// A sparkline's points: for each of `n` equal slices of `[from_ms, to_ms)`, the newest
/// reading of `series` in it (slices without one are left out). One descent of the
/// (series, t) key per slice, whatever the data's density: a worklist of 500 patients draws
/// its sparklines without reading a day of every patient's data.
pub(crate) fn samples(
    c: &Connection,
    series: i64,
    from_ms: i64,
    to_ms: i64,
    n: u32,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT t, v FROM reading WHERE series = ?1 AND t >= ?2 AND t < ?3
         ORDER BY t DESC LIMIT 1",
    )?;
    let n = i64::from(n.max(1));
    let width = ((to_ms - from_ms) / n).max(1);
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (a, b) = (from_ms + i * width, from_ms + (i + 1) * width);
        let mut rows = stmt.query(params![series, a, b])?;
        if let Some(r) = rows.next()? {
            out.push((r.get(0)?, r.get(1)?));
        }
    }
    Ok(out)
}

fn merge_same_bucket(sorted: Vec<Bucket>) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::with_capacity(sorted.len());
    for b in sorted {
        match out.last_mut() {
            Some(a) if a.t_ms == b.t_ms => {
                let n = a.n + b.n;
                let mix = |x: f64, y: f64| (x * f64::from(a.n) + y * f64::from(b.n)) / f64::from(n);
                a.mean = mix(a.mean, b.mean);
                a.mean2 = match (a.mean2, b.mean2) {
                    (Some(x), Some(y)) => Some(mix(x, y)),
                    (x, y) => x.or(y),
                };
                a.min = a.min.min(b.min);
                a.max = a.max.max(b.max);
                a.n = n;
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_day_is_the_patients_own() {
        // 2026-12-01T23:30Z is 1 December in London and 2 December in Tokyo (+09:00).
        let t = 1_796_167_800_000; // 2026-12-01T23:30:00Z
        assert_eq!(local_day(t, 0), 20_788);
        assert_eq!(local_day(t, 9 * 60), 20_789);
        assert_eq!(local_day(t, -5 * 60), 20_788);
        // Before 1970 the day still counts down, not towards zero.
        assert_eq!(local_day(-1, 0), -1);
    }

    #[test]
    fn a_narrowed_count_sees_only_its_patients() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(CREATE).unwrap();
        for (p, day) in [("p1", 10), ("p1", 11), ("p2", 10), ("p3", 12), ("p3", 40)] {
            note_day(&c, p, day).unwrap();
        }
        note_day(&c, "p1", 10).unwrap(); // again: still one day
        let mut all = data_days(&c, None, 10, 31).unwrap();
        all.sort();
        assert_eq!(all, [("p1".into(), 2), ("p2".into(), 1), ("p3".into(), 1)]);
        let only = ["p1".to_owned(), "p3".to_owned(), "nobody".to_owned()];
        let mut some = data_days(&c, Some(&only), 10, 31).unwrap();
        some.sort();
        assert_eq!(some, [("p1".into(), 2), ("p3".into(), 1)]);
        assert!(data_days(&c, Some(&[]), 0, 100).unwrap().is_empty());
        // An id that needs escaping is matched as itself.
        note_day(&c, "a\"b\\c", 10).unwrap();
        let odd = ["a\"b\\c".to_owned()];
        assert_eq!(data_days(&c, Some(&odd), 0, 100).unwrap()[0].1, 1);
    }

    #[test]
    fn buckets_of_two_devices_merge_by_time() {
        let b = |t, n, mean, min, max| Bucket {
            t_ms: t,
            n,
            mean,
            min,
            max,
            mean2: None,
        };
        let merged = merge_same_bucket(vec![
            b(0, 1, 60.0, 60.0, 60.0),
            b(0, 3, 80.0, 70.0, 90.0),
            b(10, 2, 50.0, 40.0, 60.0),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].n, 4);
        assert_eq!(merged[0].mean, 75.0);
        assert_eq!((merged[0].min, merged[0].max), (60.0, 90.0));
        assert_eq!(merged[1], b(10, 2, 50.0, 40.0, 60.0));
    }
}
