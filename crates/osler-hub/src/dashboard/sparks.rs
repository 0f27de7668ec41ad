//! The worklist's sparklines, cached: a point per hour (the newest reading of that hour), of
//! which only the current hour's changes as data arrives. Each viewer's worklist is drawn
//! again at every alert change, so the 23 finished hours of every series are kept for up to
//! ten minutes (a reading arriving late into a finished hour shows within ten minutes) and the
//! current hour is read every time: one descent of the index per series instead of 24.

use std::collections::HashMap;
use std::sync::Mutex;

use osler_store::{Store, StoreError};

const HOUR: i64 = 3_600_000;
/// How long the finished hours of a series are trusted.
const KEEP_MS: i64 = 10 * 60_000;
/// Past this many series the cache starts again (a hub of 50,000 wearers is far past it).
const MAX_SERIES: usize = 100_000;

struct Finished {
    /// The first of the 23 finished hours (hours since 1970).
    first_hour: i64,
    read_ms: i64,
    points: Vec<(i64, f64)>,
}

#[derive(Default)]
pub(crate) struct SparkCache {
    series: Mutex<HashMap<i64, Finished>>,
}

impl SparkCache {
    /// Each series' points over the 23 finished hours and the current one, oldest first.
    pub(crate) fn points(
        &self,
        store: &Store,
        series: &[i64],
        now: i64,
    ) -> Result<HashMap<i64, Vec<(i64, f64)>>, StoreError> {
        let this_hour = now.div_euclid(HOUR);
        let first_hour = this_hour - 23;
        let mut out: HashMap<i64, Vec<(i64, f64)>> = HashMap::with_capacity(series.len());
        let mut missing = Vec::new();
        {
            let cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
            for s in series {
                match cache.get(s) {
                    Some(f) if f.first_hour == first_hour && now - f.read_ms < KEEP_MS => {
                        out.insert(*s, f.points.clone());
                    }
                    _ => missing.push(*s),
                }
            }
        }
        if !missing.is_empty() {
            let read = store.samples(&missing, first_hour * HOUR, this_hour * HOUR, 23)?;
            let mut cache = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > MAX_SERIES {
                cache.clear();
            }
            for (s, points) in missing.into_iter().zip(read) {
                cache.insert(
                    s,
                    Finished {
                        first_hour,
                        read_ms: now,
                        points: points.clone(),
                    },
                );
                out.insert(s, points);
            }
        }
        let current = store.samples(series, this_hour * HOUR, now + 1, 1)?;
        for (s, points) in series.iter().zip(current) {
            out.entry(*s).or_default().extend(points);
        }
        Ok(out)
    }
}
