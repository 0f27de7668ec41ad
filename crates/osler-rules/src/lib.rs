//! Alert rules and their state machines, shared by the gateway (critical rules at the edge) and
//! the hub (all rules). No IO: readings go in, alert events come out.
//!
//! Main types: [`Rule`] (a threshold, a duration condition, hysteresis, a cited source),
//! [`RULES`] (the defaults), [`Overrides`] (per-patient thresholds), [`Engine`] (one state
//! machine per patient and rule), [`AlertEvent`] (raised / updated / resolved).
//!
//! Everything is judged by the time a reading was **taken**: a reading that arrives late is
//! placed at its own time in the patient's history and evaluated there, and an alert it raises
//! is marked late rather than treated as news.

use std::collections::{HashMap, VecDeque};

use osler_core::{Metric, Reading, Value};

mod emergency;
mod staleness;
pub use emergency::{EMERGENCIES, EMERGENCY_PREFIX, Emergency};
pub use staleness::{STALENESS, Staleness};

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Urgent,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Urgent => "urgent",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Severity> {
        [Severity::Warning, Severity::Urgent, Severity::Critical]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Which side of the threshold breaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// value > threshold (or >= with `inclusive`)
    Above,
    /// value < threshold (or <= with `inclusive`)
    Below,
}

/// When a breach becomes an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The reading alone.
    Single,
    /// Every reading for at least this long (ms): one artefact spike cannot page a nurse.
    Sustained(i64),
    /// At least `n` of the last `of` readings.
    CountOf { n: usize, of: usize },
    /// A rise of more than the threshold within this window (ms), newest minus lowest.
    RiseWithin(i64),
}

/// One alert rule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub id: &'static str,
    pub metric: Metric,
    /// For panels: 0 = systolic, 1 = diastolic.
    pub part: usize,
    pub direction: Direction,
    pub inclusive: bool,
    pub threshold: f64,
    pub condition: Condition,
    /// Hysteresis: the alert resolves when `clear_count` consecutive readings are this far back
    /// on the safe side of the threshold.
    pub clear_margin: f64,
    pub clear_count: usize,
    pub severity: Severity,
    /// Evaluated at the edge too (the gateway raises it while the hub is unreachable).
    pub critical: bool,
    pub title: &'static str,
    /// Where the default comes from.
    pub source: &'static str,
    /// The thresholds a patient's monitoring plan may set for this rule, inclusive: past
    /// them the rule would alarm on normal values or stay silent where the guideline demands
    /// a response (an SpO2 threshold of 0 is no alarm at all).
    pub bounds: (f64, f64),
    /// Where the bounds come from.
    pub bounds_source: &'static str,
}

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;

/// The default rules. Thresholds from shared/reference/clinical.md, each with its source.
pub static RULES: &[Rule] = &[
    Rule {
        id: "hr-high",
        metric: Metric::HeartRate,
        part: 0,
        direction: Direction::Above,
        inclusive: false,
        threshold: 120.0,
        condition: Condition::Sustained(10 * MIN),
        clear_margin: 10.0,
        clear_count: 3,
        severity: Severity::Urgent,
        critical: true,
        title: "Heart rate above 120/min for 10 minutes",
        source: "Apple high heart rate notification default, 120 bpm for 10 min (support HT208931)",
        bounds: (100.0, 150.0),
        bounds_source: "Apple high heart rate notification: selectable 100-150 bpm (support HT208931)",
    },
    Rule {
        id: "hr-low",
        metric: Metric::HeartRate,
        part: 0,
        direction: Direction::Below,
        inclusive: false,
        threshold: 40.0,
        condition: Condition::Sustained(10 * MIN),
        clear_margin: 5.0,
        clear_count: 3,
        severity: Severity::Urgent,
        critical: true,
        title: "Heart rate below 40/min for 10 minutes",
        source: "Apple low heart rate notification, 40-50 bpm (support HT208931); NEWS2 scores <=40 as 3",
        bounds: (40.0, 50.0),
        bounds_source: "Apple low heart rate notification: selectable 40-50 bpm (support HT208931)",
    },
    Rule {
        id: "spo2-low",
        metric: Metric::Spo2,
        part: 0,
        direction: Direction::Below,
        inclusive: true,
        threshold: 92.0,
        condition: Condition::CountOf { n: 3, of: 5 },
        clear_margin: 2.0,
        clear_count: 3,
        severity: Severity::Urgent,
        critical: true,
        title: "SpO2 at or below 92% (3 of the last 5 readings)",
        source: "NHS England pulse oximetry at home: <=92% is severe",
        bounds: (85.0, 95.0),
        bounds_source: "NEWS2 (RCP 2017): scale 2 scores <=83% as 3 and 84-85% as 2, so a threshold below 85 waits past an urgent score; scale 1 scores >=96% as 0, so one at 96 or more alarms on normal",
    },
    Rule {
        id: "bp-crisis-systolic",
        metric: Metric::BloodPressure,
        part: 0,
        direction: Direction::Above,
        inclusive: false,
        threshold: 180.0,
        condition: Condition::Single,
        clear_margin: 20.0,
        clear_count: 1,
        severity: Severity::Critical,
        critical: true,
        title: "Systolic pressure above 180 mmHg",
        source: "ACC/AHA 2017 (Whelton 2018): hypertensive crisis >180 and/or >120",
        bounds: (140.0, 220.0),
        bounds_source: "ACC/AHA 2017 (Whelton 2018): stage 2 from 140 mmHg; NEWS2 (RCP 2017) scores >=220 mmHg as 3",
    },
    Rule {
        id: "bp-crisis-diastolic",
        metric: Metric::BloodPressure,
        part: 1,
        direction: Direction::Above,
        inclusive: false,
        threshold: 120.0,
        condition: Condition::Single,
        clear_margin: 20.0,
        clear_count: 1,
        severity: Severity::Critical,
        critical: true,
        title: "Diastolic pressure above 120 mmHg",
        source: "ACC/AHA 2017 (Whelton 2018): hypertensive crisis >180 and/or >120",
        bounds: (90.0, 120.0),
        bounds_source: "ACC/AHA 2017 (Whelton 2018): stage 2 from 90 mmHg, crisis above 120 mmHg",
    },
    Rule {
        id: "glucose-urgent-low",
        metric: Metric::CgmGlucose,
        part: 0,
        direction: Direction::Below,
        inclusive: false,
        threshold: 54.0,
        condition: Condition::Sustained(15 * MIN),
        clear_margin: 16.0,
        clear_count: 3,
        severity: Severity::Critical,
        critical: true,
        title: "Glucose below 54 mg/dL for 15 minutes (level 2 hypoglycaemia)",
        source: "Battelino 2019, Diabetes Care 42:1593: level 2 event, >=15 consecutive minutes <54 mg/dL",
        bounds: (54.0, 70.0),
        bounds_source: "Battelino 2019, Diabetes Care 42:1593: level 2 below 54, level 1 below 70 mg/dL",
    },
    Rule {
        id: "glucose-low",
        metric: Metric::CgmGlucose,
        part: 0,
        direction: Direction::Below,
        inclusive: false,
        threshold: 70.0,
        condition: Condition::Sustained(15 * MIN),
        clear_margin: 0.0,
        clear_count: 3,
        severity: Severity::Urgent,
        critical: false,
        title: "Glucose below 70 mg/dL for 15 minutes (level 1 hypoglycaemia)",
        source: "Battelino 2019, Diabetes Care 42:1593: level 1 event, >=15 consecutive minutes <70 mg/dL",
        bounds: (70.0, 100.0),
        bounds_source: "Battelino 2019: level 1 hypoglycaemia below 70 mg/dL; ADA Standards of Care: normal fasting glucose below 100 mg/dL",
    },
    Rule {
        id: "glucose-high",
        metric: Metric::CgmGlucose,
        part: 0,
        direction: Direction::Above,
        inclusive: false,
        threshold: 250.0,
        condition: Condition::Sustained(15 * MIN),
        clear_margin: 20.0,
        clear_count: 3,
        severity: Severity::Warning,
        critical: false,
        title: "Glucose above 250 mg/dL for 15 minutes",
        source: "Battelino 2019, Diabetes Care 42:1593: >250 mg/dL is level 2 hyperglycaemia (TAR >250)",
        bounds: (180.0, 400.0),
        bounds_source: "Battelino 2019: time above range from 180 mg/dL; CGM sensors report up to 400 mg/dL (Dexcom G6/G7 range 40-400)",
    },
    Rule {
        id: "fever",
        metric: Metric::BodyTemperature,
        part: 0,
        direction: Direction::Above,
        inclusive: true,
        threshold: 39.1,
        condition: Condition::Single,
        clear_margin: 1.1,
        clear_count: 1,
        severity: Severity::Urgent,
        critical: false,
        title: "Temperature at or above 39.1 C",
        source: "NEWS2 (Royal College of Physicians 2017): >=39.1 C scores 2",
        bounds: (38.1, 39.1),
        bounds_source: "NEWS2 (RCP 2017): 36.1-38.0 C scores 0, 38.1-39.0 scores 1, >=39.1 scores 2",
    },
    Rule {
        id: "weight-gain",
        metric: Metric::BodyWeight,
        part: 0,
        direction: Direction::Above,
        inclusive: false,
        threshold: 2.0,
        condition: Condition::RiseWithin(3 * DAY),
        clear_margin: 1.0,
        clear_count: 1,
        severity: Severity::Warning,
        critical: false,
        title: "Weight up more than 2 kg in 3 days",
        source: "ESC heart failure guidance (heartfailurematters.org): >2 kg in 3 days",
        bounds: (0.9, 2.3),
        bounds_source: "AAHFN: >0.9 kg (2 lb) in a day; >2.3 kg (5 lb) in a week; ESC: >2 kg in 3 days",
    },
];

/// Per-patient threshold overrides, by rule id.
pub type Overrides = HashMap<String, f64>;

impl Rule {
    pub fn by_id(id: &str) -> Option<&'static Rule> {
        RULES.iter().find(|r| r.id == id)
    }

    /// The threshold that switches this rule off for a patient whose plan says it does not
    /// apply: past every value (the largest finite number on the breaching side), so the rule
    /// never fires and an open alert resolves at the next reading. Finite, so that it travels
    /// in JSON to every gateway, old or new, and means the same there.
    pub fn off_threshold(&self) -> f64 {
        match self.direction {
            Direction::Above => f64::MAX,
            Direction::Below => f64::MIN,
        }
    }

    /// Whether a threshold is [`Rule::off_threshold`].
    pub fn is_off(&self, threshold: f64) -> bool {
        threshold == self.off_threshold()
    }

    /// Whether a monitoring plan may set this threshold; the reason, for a person, if not.
    pub fn check_threshold(&self, threshold: f64) -> Result<(), String> {
        let (lo, hi) = self.bounds;
        if threshold.is_finite() && (lo..=hi).contains(&threshold) {
            Ok(())
        } else {
            Err(format!(
                "{threshold} is outside what {} allows: {lo} to {hi} ({})",
                self.id, self.bounds_source
            ))
        }
    }

    fn part_value(&self, v: &Value) -> f64 {
        match (v, self.part) {
            (Value::Pair(a, _), 0) | (Value::Scalar(a), _) => *a,
            (Value::Pair(_, b), _) => *b,
        }
    }

    fn breaches(&self, v: f64, threshold: f64) -> bool {
        match (self.direction, self.inclusive) {
            (Direction::Above, false) => v > threshold,
            (Direction::Above, true) => v >= threshold,
            (Direction::Below, false) => v < threshold,
            (Direction::Below, true) => v <= threshold,
        }
    }

    fn clears(&self, v: f64, threshold: f64) -> bool {
        match self.direction {
            Direction::Above => v < threshold - self.clear_margin,
            Direction::Below => v > threshold + self.clear_margin,
        }
    }

    /// Whether an open alert got worse: a reading still past the threshold and further past the
    /// worst value so far by at least the hysteresis margin (1 unit at least), so that a
    /// drifting value does not flood the stream. Trends report no updates.
    fn worsened(&self, v: f64, worst: f64, threshold: f64) -> bool {
        if matches!(self.condition, Condition::RiseWithin(_)) || !self.breaches(v, threshold) {
            return false;
        }
        let step = self.clear_margin.max(1.0);
        match self.direction {
            Direction::Above => v >= worst + step,
            Direction::Below => v <= worst - step,
        }
    }

    /// How far back the rule needs history.
    fn window_ms(&self) -> i64 {
        match self.condition {
            Condition::Sustained(d) | Condition::RiseWithin(d) => d + MIN,
            _ => 60 * MIN,
        }
    }
}

/// What happened to an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Raised,
    Updated,
    Resolved,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Raised => "raised",
            Change::Updated => "updated",
            Change::Resolved => "resolved",
        }
    }
}

/// An alert event for one patient and rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub change: Change,
    pub patient: String,
    pub rule: &'static str,
    pub severity: Severity,
    /// The time the deciding reading was taken (UTC ms).
    pub reading_ms: i64,
    /// Its value (the rule's part for panels).
    pub value: f64,
    /// The threshold in force (after overrides).
    pub threshold: f64,
    /// The deciding reading arrived long after it was taken.
    pub late: bool,
}

/// A reading older than this when it arrives makes its alert "late" (two minutes: well beyond
/// normal gateway batching, well within any outage).
pub const LATE_AFTER_MS: i64 = 2 * MIN;

#[derive(Default)]
struct Stream {
    /// Readings sorted by time taken, with the value of each rule part (index 0 and 1). A
    /// deque because readings nearly always arrive in order: appending and dropping the oldest
    /// are O(1); a late reading is placed by binary search.
    points: VecDeque<(i64, [f64; 2])>,
}

impl Stream {
    fn insert(&mut self, t: i64, values: [f64; 2]) {
        match self.points.back() {
            Some((last, _)) if *last < t => self.points.push_back((t, values)),
            None => self.points.push_back((t, values)),
            _ => {
                let i = self.points.partition_point(|(ts, _)| *ts < t);
                if self.points.get(i).is_some_and(|(ts, _)| *ts == t) {
                    self.points[i].1 = values;
                } else {
                    self.points.insert(i, (t, values));
                }
            }
        }
    }

    /// Removes the reading at `t`, if there is one (a reading entered in error).
    fn remove(&mut self, t: i64) {
        let i = self.points.partition_point(|(ts, _)| *ts < t);
        if self.points.get(i).is_some_and(|(ts, _)| *ts == t) {
            self.points.remove(i);
        }
    }

    /// The history up to and including `t`, newest first, as (time, value of `part`).
    fn up_to(&self, t: i64, part: usize) -> impl Iterator<Item = (i64, f64)> + Clone + '_ {
        let end = self.points.partition_point(|(ts, _)| *ts <= t);
        self.points
            .range(..end)
            .rev()
            .map(move |(ts, v)| (*ts, v[part]))
    }
}

/// An open alert as the engine tracks it.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// The worst value seen while open (for `Updated` events).
    worst: f64,
    /// When the reading that raised it was taken: a correction of that reading re-judges it.
    raised_ms: i64,
}

/// One patient's history and open alerts.
#[derive(Default)]
struct PatientState {
    streams: HashMap<Metric, Stream>,
    open: HashMap<&'static str, Open>,
}

/// The rule engine: history per patient and metric, one open/closed state per patient and rule.
#[derive(Default)]
pub struct Engine {
    patients: HashMap<String, PatientState>,
    /// Only rules marked `critical` (the gateway's mode).
    critical_only: bool,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// An engine for the edge: only the critical rules.
    pub fn critical_only() -> Engine {
        Engine {
            critical_only: true,
            ..Engine::default()
        }
    }

    fn patient(&mut self, patient: &str) -> &mut PatientState {
        // Look up without allocating; allocate the key only for a new patient.
        if !self.patients.contains_key(patient) {
            self.patients
                .insert(patient.to_owned(), PatientState::default());
        }
        self.patients
            .get_mut(patient)
            .expect("inserted just above if it was missing")
    }

    /// Marks an alert as open with the worst value seen so far (restoring persisted state
    /// after a restart).
    pub fn restore_open(&mut self, patient: &str, rule: &str, worst: f64, raised_ms: i64) {
        if let Some(r) = Rule::by_id(rule) {
            self.patient(patient)
                .open
                .insert(r.id, Open { worst, raised_ms });
        }
    }

    /// Keeps only the open alerts for which `keep(patient, rule)` is true.
    pub fn retain_open(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        for (p, state) in &mut self.patients {
            state.open.retain(|r, _| keep(p, r));
        }
    }

    /// Whether an alert is open for this patient and rule.
    pub fn is_open(&self, patient: &str, rule: &str) -> bool {
        self.patients
            .get(patient)
            .is_some_and(|p| p.open.contains_key(rule))
    }

    /// Adds a reading at its own time and evaluates the metric's rules there.
    ///
    /// A correction (status amended, corrected or entered in error) replaces the reading at its
    /// time (entered in error removes it). An open alert that the corrected reading raised is
    /// judged again there: if the rule no longer holds at that reading, the alert resolves at
    /// it. A corrected value that now breaches raises as any reading does.
    pub fn observe(&mut self, r: &Reading, overrides: Option<&Overrides>) -> Vec<AlertEvent> {
        let critical_only = self.critical_only;
        let applies = move |rule: &&'static Rule| {
            rule.metric == r.metric && (!critical_only || rule.critical)
        };
        // Keep what the longest rule needs.
        let Some(keep) = RULES
            .iter()
            .filter(applies)
            .map(|rule| rule.window_ms())
            .max()
        else {
            return Vec::new();
        };
        let t = r.taken.utc_ms;
        let values = match r.value {
            Value::Scalar(v) => [v, v],
            Value::Pair(a, b) => [a, b],
        };
        let state = self.patient(r.patient.as_str());
        let stream = state.streams.entry(r.metric).or_default();
        let correction = r.status.is_correction();
        let withdrawn = r.status == osler_core::Status::EnteredInError;
        if withdrawn {
            stream.remove(t);
        } else {
            stream.insert(t, values);
        }
        // Measured from the newest reading, or from this one when it is older: a backlog
        // arriving after newer readings still builds its history.
        if let Some(&(newest, _)) = stream.points.back() {
            let cutoff = (newest - keep).min(t - keep);
            while stream
                .points
                .front()
                .is_some_and(|(oldest, _)| *oldest < cutoff)
            {
                stream.points.pop_front();
            }
        }
        let late = r.received_ms - t > LATE_AFTER_MS;
        let mut events = Vec::new();
        for rule in RULES.iter().filter(applies) {
            let threshold = overrides
                .and_then(|o| o.get(rule.id))
                .copied()
                .unwrap_or(rule.threshold);
            // History up to the reading's own time, newest first (walked lazily: most rules look
            // at a handful of readings, and a long window is only walked while it breaches).
            let hist = stream.up_to(t, rule.part);
            let value = rule.part_value(&r.value);
            let open = state.open.get(rule.id).copied();
            // The alert this very reading raised, now corrected: does the rule still hold here?
            let retracted = |o: &Open| {
                correction
                    && o.raised_ms == t
                    && (withdrawn || !fires(rule, threshold, stream.up_to(t, rule.part)))
            };
            let change = match open {
                None if withdrawn => continue,
                None if fires(rule, threshold, hist.clone()) => {
                    state.open.insert(
                        rule.id,
                        Open {
                            worst: value,
                            raised_ms: t,
                        },
                    );
                    Change::Raised
                }
                None => continue,
                Some(o) if retracted(&o) => {
                    state.open.remove(rule.id);
                    Change::Resolved
                }
                Some(_) if withdrawn => continue,
                Some(_) if clears(rule, threshold, hist) => {
                    state.open.remove(rule.id);
                    Change::Resolved
                }
                Some(o) if rule.worsened(value, o.worst, threshold) => {
                    state.open.insert(rule.id, Open { worst: value, ..o });
                    Change::Updated
                }
                Some(_) => continue,
            };
            events.push(AlertEvent {
                change,
                patient: r.patient.to_string(),
                rule: rule.id,
                severity: rule.severity,
                reading_ms: t,
                value,
                threshold,
                late,
            });
        }
        events
    }
}

/// Whether an open alert resolves at the newest entry of `hist` (newest first): the last
/// `clear_count` readings all back past the margin, or for a trend, the rise gone below the
/// threshold by the margin.
fn clears(rule: &Rule, threshold: f64, hist: impl Iterator<Item = (i64, f64)> + Clone) -> bool {
    match rule.condition {
        Condition::RiseWithin(_) => !fires(rule, threshold - rule.clear_margin, hist),
        _ => {
            let recent = hist.take(rule.clear_count);
            recent.clone().count() == rule.clear_count
                && recent.into_iter().all(|(_, v)| rule.clears(v, threshold))
        }
    }
}

/// Whether the rule's condition holds at the newest entry of `hist` (newest first).
fn fires(rule: &Rule, threshold: f64, mut hist: impl Iterator<Item = (i64, f64)> + Clone) -> bool {
    let Some((t, v)) = hist.clone().next() else {
        return false;
    };
    match rule.condition {
        Condition::Single => rule.breaches(v, threshold),
        Condition::CountOf { n, of } => {
            hist.take(of)
                .filter(|(_, v)| rule.breaches(*v, threshold))
                .count()
                >= n
        }
        Condition::Sustained(d) => {
            // The breach streak ending at the newest reading must reach back at least `d`;
            // stop at the first reading that does not breach, or once `d` is covered.
            hist.try_fold((), |(), (ts, v)| {
                if !rule.breaches(v, threshold) {
                    Err(false)
                } else if t - ts >= d {
                    Err(true)
                } else {
                    Ok(())
                }
            })
            .err()
            .unwrap_or(false)
        }
        Condition::RiseWithin(d) => {
            let lowest = hist
                .by_ref()
                .take_while(|(ts, _)| t - ts <= d)
                .map(|(_, v)| v)
                .fold(f64::INFINITY, f64::min);
            v - lowest > threshold
        }
    }
}

#[cfg(test)]
mod tests;
