//! Edge processing per stream (a patient's readings of one metric from one device): denoise,
//! then send what matters and fold the rest into window summaries. No IO: readings go in,
//! [`Output`]s come out; the gateway persists each [`Stream`] in the same transaction as the
//! outputs, so that a crash never loses a reading that was received but not yet decided.
//!
//! Main types: [`EdgeConfig`] / [`Policy`] (per metric, TOML), [`Zone`] (where every reading
//! must be sent: near or past an alert threshold, from the same rule definitions as the hub),
//! [`Stream`] (the state of one stream), [`Summary`], [`Stage`] (every stream of a gateway, with
//! explicit commit and rollback around the gateway's transaction).
//!
//! # The decision, per reading
//! 1. **Zone:** a raw value near or past any threshold of the metric's rules (the defaults and
//!    the patient's overrides), including the hysteresis band in which an open alert stays open,
//!    is sent at once and unfiltered, and so are the next [`Zone::context`] readings. This is
//!    what keeps every alert of the raw stream: duration and n-of-m conditions, resolution after
//!    `clear_count` readings, see the readings they would see on the raw stream. The filter
//!    never hides a reading here: a filter that swallowed a real crisis would be worse than the
//!    artefact, and the rules have their own artefact defences (durations, n of m).
//! 2. **Filter:** otherwise the reading waits (durably) for the readings after it that its
//!    spike filter needs ([`Filter::lookahead`]), or at most `max_hold`.
//! 3. **Change or heartbeat:** it is sent when its filtered value moved more than the deadband
//!    from the filtered value at the last send, or when `heartbeat` passed since the last send.
//! 4. **Fold:** otherwise it goes into the open summary (count, min, max, mean, last of the raw
//!    values) of its window (windows are aligned to multiples of `window` in reading time),
//!    which is sent when a reading of a later window arrives, or when the stream has been quiet
//!    for `window` on the gateway's clock.
//!
//! Every raw reading is therefore either sent or counted in exactly one summary, and readings
//! of a stream are sent in the order they were taken.

pub mod config;
mod stage;
mod state;

use std::collections::VecDeque;

pub use config::{ConfigError, EdgeConfig, Filter, Policy};
use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_rules::{Condition, Direction, Overrides, RULES};
use serde::{Deserialize, Serialize};
pub use stage::{Stage, StateWrite, StreamKey};
pub use state::DecodeError;

/// Where, for one metric and patient, every reading must be sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    /// Per part: a value at or above this is in the zone (rules that breach upwards).
    above: [f64; 2],
    /// Per part: a value at or below this is in the zone.
    below: [f64; 2],
    /// A trend rule (weight gain) compares against every reading of its window.
    every: bool,
    /// Readings sent after each zone reading.
    pub context: usize,
}

impl Zone {
    /// The zone of a metric given the patient's overrides (`None`: the defaults alone). Both
    /// the default and the override threshold count, so a stale override cache errs towards
    /// sending more.
    pub fn for_metric(metric: Metric, near: f64, overrides: Option<&Overrides>) -> Zone {
        let mut zone = Zone {
            above: [f64::INFINITY; 2],
            below: [f64::NEG_INFINITY; 2],
            every: false,
            context: 1,
        };
        for rule in RULES.iter().filter(|r| r.metric == metric) {
            let own = overrides.and_then(|o| o.get(rule.id)).copied();
            for threshold in std::iter::once(rule.threshold).chain(own) {
                match rule.direction {
                    Direction::Above => {
                        let edge = threshold - rule.clear_margin - near;
                        zone.above[rule.part] = zone.above[rule.part].min(edge);
                    }
                    Direction::Below => {
                        let edge = threshold + rule.clear_margin + near;
                        zone.below[rule.part] = zone.below[rule.part].max(edge);
                    }
                }
            }
            let needs = match rule.condition {
                Condition::CountOf { of, .. } => of.saturating_sub(1),
                Condition::RiseWithin(_) => {
                    zone.every = true;
                    0
                }
                Condition::Single | Condition::Sustained(_) => 0,
            };
            zone.context = zone.context.max(needs).max(rule.clear_count);
        }
        zone
    }

    pub fn contains(&self, v: &[f64]) -> bool {
        self.every
            || v.iter()
                .enumerate()
                .any(|(i, x)| *x >= self.above[i.min(1)] || *x <= self.below[i.min(1)])
    }
}

/// One raw reading as a stream keeps it while its decision waits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: i64,
    /// UTC offset of the time taken, minutes.
    #[serde(default)]
    pub o: i16,
    /// Received by the gateway, UTC ms.
    pub r: i64,
    pub v: Vec<f64>,
    /// Decided (sent or folded) already; kept only as filter context.
    #[serde(default)]
    pub done: bool,
    /// Gateway clock when it arrived (bounds its wait for the filter window).
    #[serde(default)]
    pub a: i64,
}

/// Readings not sent one by one, summarised: per part, the raw values' statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    // The stream's key, filled in when the summary is sent (not repeated in the stored state).
    #[serde(skip)]
    pub patient: String,
    #[serde(skip)]
    pub metric: String,
    #[serde(skip)]
    pub device: Option<String>,
    /// First and last reading folded in (times taken, UTC ms).
    pub t0: i64,
    pub t1: i64,
    pub o: i16,
    pub n: u32,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub sum: Vec<f64>,
    pub last: Vec<f64>,
    /// Readings the spike filter judged artefacts (their raw values are in min/max/mean).
    #[serde(default)]
    pub spikes: u32,
    /// Gateway clock when the latest reading was folded in (a quiet stream's summary closes).
    pub touched_ms: i64,
}

impl Summary {
    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / f64::from(self.n)).collect()
    }

    fn add(&mut self, s: &Sample, spike: bool) {
        self.t1 = s.t;
        self.n += 1;
        for (i, v) in s.v.iter().enumerate() {
            self.min[i] = self.min[i].min(*v);
            self.max[i] = self.max[i].max(*v);
            self.sum[i] += v;
        }
        self.last = s.v.clone();
        self.spikes += u32::from(spike);
        self.touched_ms = self.touched_ms.max(s.a);
    }
}

/// What a stream gives the gateway to upload.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Forward(Reading),
    Summary(Summary),
}

/// Why a reading was sent (counted in the gateway's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Zone,
    Context,
    Change,
    Heartbeat,
    All,
}

/// The state of one stream: what the filter needs, what waits, what was last sent, the open
/// summary. Serialisable so that the gateway can keep it on disk with the decisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub patient: String,
    pub metric: String,
    pub device: Option<String>,
    /// Recent samples, oldest first: decided ones (filter context) then waiting ones.
    recent: VecDeque<Sample>,
    /// Time taken and filtered value of the last reading sent.
    last_sent: Option<(i64, Vec<f64>)>,
    /// Readings still to send after a zone reading.
    context_left: usize,
    summary: Option<Summary>,
    /// Times taken of the latest readings (newest last): a device that resends a request the
    /// gateway committed but could not acknowledge (a crash) is recognised, not counted twice.
    #[serde(default)]
    seen: VecDeque<i64>,
    /// Gateway clock at the two latest arrivals (older, newer): the stream's own pace.
    #[serde(default)]
    arrived: [i64; 2],
}

/// How many recent reading times a stream remembers to recognise resends.
const SEEN: usize = 16;

/// Counters of one call, for the gateway's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub zone: u64,
    pub context: u64,
    pub change: u64,
    pub heartbeat: u64,
    pub all: u64,
    pub folded: u64,
    pub spikes: u64,
    /// Readings sent because they arrived out of order.
    pub late: u64,
    /// Resent readings recognised and dropped (decided before).
    pub duplicates: u64,
    /// Of `all` (every-reading metrics), those near or past a threshold: with `zone` and
    /// `context`, what the gateway sends without waiting for a fuller batch.
    pub all_near: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.zone += o.zone;
        self.context += o.context;
        self.change += o.change;
        self.heartbeat += o.heartbeat;
        self.all += o.all;
        self.folded += o.folded;
        self.spikes += o.spikes;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.all_near += o.all_near;
    }

    /// Readings sent near or past a threshold (their alerts may be the hub's to decide).
    pub fn near(&self) -> u64 {
        self.zone + self.context + self.all_near
    }
    pub fn sent(&self) -> u64 {
        self.zone + self.context + self.change + self.heartbeat + self.all + self.late
    }
    fn count(&mut self, r: Reason) {
        *match r {
            Reason::Zone => &mut self.zone,
            Reason::Context => &mut self.context,
            Reason::Change => &mut self.change,
            Reason::Heartbeat => &mut self.heartbeat,
            Reason::All => &mut self.all,
        } += 1;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How long a stream must be quiet before its summary is sent on the gateway's clock: long
/// enough for a device's next reading of the same window to arrive (a replay or a burst), short
/// enough that the hub sees a stopped stream's last summary within seconds.
pub const QUIET_MS: i64 = 5_000;

/// A reading's value as its parts (one, or systolic and diastolic), as the zone reads them.
pub(crate) fn parts(v: &Value) -> Vec<f64> {
    match *v {
        Value::Scalar(a) => vec![a],
        Value::Pair(a, b) => vec![a, b],
    }
}

/// The MAD-to-standard-deviation factor for normal data (Hampel's scale estimate).
const MAD_SCALE: f64 = 1.4826;

impl Stream {
    /// The stream key of a reading: patient, metric, device.
    pub fn key(r: &Reading) -> (String, Metric, Option<String>) {
        (
            r.patient.to_string(),
            r.metric,
            r.device.as_ref().map(Id::to_string),
        )
    }

    pub fn new(r: &Reading) -> Stream {
        Stream {
            patient: r.patient.to_string(),
            metric: r.metric.info().key.to_owned(),
            device: r.device.as_ref().map(Id::to_string),
            recent: VecDeque::new(),
            last_sent: None,
            context_left: 0,
            summary: None,
            seen: VecDeque::new(),
            arrived: [i64::MIN; 2],
        }
    }

    /// Readings received and not decided yet.
    pub fn waiting(&self) -> usize {
        self.recent.iter().filter(|s| !s.done).count()
    }

    /// Takes in one reading (of this stream) at gateway time `now_ms`.
    pub fn observe(
        &mut self,
        policy: &Policy,
        zone: &Zone,
        r: &Reading,
        now_ms: i64,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        let v = parts(&r.value);
        let t = r.taken.utc_ms;
        if self.seen.contains(&t) {
            // The same reading again (a device resending after the gateway crashed between its
            // commit and its answer): decided already.
            tally.duplicates += 1;
            return;
        }
        let late = self.seen.back().is_some_and(|newest| t < *newest);
        self.arrived = [self.arrived[1], now_ms];
        self.seen.push_back(t);
        if self.seen.len() > SEEN {
            self.seen.pop_front();
        }
        let sample = Sample {
            t,
            o: r.taken.offset_min,
            r: r.received_ms,
            v,
            done: false,
            a: now_ms,
        };
        if policy.forward_all {
            self.send(&sample, sample.v.clone(), Reason::All, out, tally);
            return;
        }
        if late {
            // Out of order: sent as it is, outside the stream's filter and summary, which move
            // forward in time; the hub judges it at its own time.
            tally.late += 1;
            out.push(Output::Forward(self.reading(&sample)));
            return;
        }
        let in_zone = zone.contains(&sample.v);
        let immediate = in_zone || self.context_left > 0 || policy.filter.lookahead() == 0;
        self.recent.push_back(sample);
        if immediate {
            // Everything waiting is decided first (with the window it has), so that a stream's
            // readings leave in the order they were taken.
            let last = self.recent.len() - 1;
            self.decide_waiting(policy, last, out, tally);
            let reason = if in_zone {
                self.context_left = zone.context;
                Reason::Zone
            } else if self.context_left > 0 {
                self.context_left -= 1;
                Reason::Context
            } else {
                self.context_left = 0;
                // No filter: an ordinary decision on the raw value.
                let s = self.recent[last].clone();
                self.decide(policy, &s, s.v.clone(), false, out, tally);
                self.mark_done(last);
                self.trim(policy);
                return;
            };
            let s = self.recent[last].clone();
            self.send(&s, s.v.clone(), reason, out, tally);
            self.mark_done(last);
        } else {
            // Decide what now has its full window: `lookahead` readings after it.
            let ready = self.recent.len().saturating_sub(policy.filter.lookahead());
            self.decide_waiting(policy, ready, out, tally);
        }
        self.trim(policy);
    }

    /// Decides waiting samples with index below `end`.
    fn decide_waiting(
        &mut self,
        policy: &Policy,
        end: usize,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        for i in 0..end.min(self.recent.len()) {
            if self.recent[i].done {
                continue;
            }
            let (filtered, spike) = self.filtered(policy, i);
            let s = self.recent[i].clone();
            self.decide(policy, &s, filtered, spike, out, tally);
            self.mark_done(i);
        }
    }

    fn mark_done(&mut self, i: usize) {
        self.recent[i].done = true;
    }

    /// The filter's value for sample `i` (over the samples around it that the stream has) and
    /// whether the raw value was judged a spike.
    fn filtered(&self, policy: &Policy, i: usize) -> (Vec<f64>, bool) {
        let raw = &self.recent[i].v;
        let half = policy.filter.lookahead();
        if half == 0 {
            return (raw.clone(), false);
        }
        let lo = i.saturating_sub(half);
        let hi = (i + half).min(self.recent.len() - 1);
        let mut spike = false;
        let mut out = Vec::with_capacity(raw.len());
        for (p, x) in raw.iter().enumerate() {
            let mut w: Vec<f64> = (lo..=hi).map(|j| self.recent[j].v[p]).collect();
            let m = median(&mut w);
            let value = match policy.filter {
                Filter::Median { .. } => {
                    spike |= (x - m).abs() > policy.deadband.max(f64::EPSILON);
                    m
                }
                Filter::Hampel { k, .. } => {
                    let mut dev: Vec<f64> = w.iter().map(|y| (y - m).abs()).collect();
                    let mad = median(&mut dev);
                    if (x - m).abs() > (k * MAD_SCALE * mad).max(policy.deadband) {
                        spike = true;
                        m
                    } else {
                        *x
                    }
                }
                Filter::None => *x,
            };
            out.push(value);
        }
        (out, spike)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        policy: &Policy,
        s: &Sample,
        filtered: Vec<f64>,
        spike: bool,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        let reason = match &self.last_sent {
            None => Some(Reason::Heartbeat),
            Some((_, v))
                if v.iter()
                    .zip(&filtered)
                    .any(|(a, b)| (a - b).abs() > policy.deadband) =>
            {
                Some(Reason::Change)
            }
            Some((t, _)) if s.t - t >= policy.heartbeat_ms => Some(Reason::Heartbeat),
            _ => None,
        };
        tally.spikes += u64::from(spike);
        match reason {
            Some(reason) => self.send(s, filtered, reason, out, tally),
            None => self.fold(policy, s, spike, out, tally),
        }
    }

    fn send(
        &mut self,
        s: &Sample,
        reference: Vec<f64>,
        reason: Reason,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        tally.count(reason);
        self.last_sent = Some((s.t, reference));
        out.push(Output::Forward(self.reading(s)));
    }

    fn fold(
        &mut self,
        policy: &Policy,
        s: &Sample,
        spike: bool,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        tally.folded += 1;
        // Windows are aligned to multiples of `window` (10:05:00-10:06:00), so that summaries
        // line up across streams and a trend bucket holds whole summaries.
        let window = |t: i64| t.div_euclid(policy.window_ms.max(1));
        if self
            .summary
            .as_ref()
            .is_some_and(|sum| window(s.t) != window(sum.t0))
            && let Some(done) = self.take_summary()
        {
            out.push(Output::Summary(done));
        }
        let summary = self.summary.get_or_insert_with(|| Summary {
            // Filled in when it is sent (take_summary).
            patient: String::new(),
            metric: String::new(),
            device: None,
            t0: s.t,
            t1: s.t,
            o: s.o,
            n: 0,
            min: vec![f64::INFINITY; s.v.len()],
            max: vec![f64::NEG_INFINITY; s.v.len()],
            sum: vec![0.0; s.v.len()],
            last: s.v.clone(),
            spikes: 0,
            // The sample's arrival, not the decision's time: a reading decided late (after
            // max_hold) must not keep its window open longer.
            touched_ms: s.a,
        });
        summary.add(s, spike);
    }

    /// Keeps the decided samples the filter still needs as context.
    fn trim(&mut self, policy: &Policy) {
        let keep = policy.filter.lookahead();
        while self.recent.len() > keep
            && self.recent.front().is_some_and(|s| s.done)
            && self.recent.iter().take_while(|s| s.done).count() > keep
        {
            self.recent.pop_front();
        }
    }

    /// Time-driven work at gateway time `now_ms`, for a stream that went quiet: readings still
    /// waiting for their filter window are decided with what there is once nothing arrived for
    /// `max_hold`; the open summary is sent once its window has ended in reading time and
    /// nothing arrived for [`QUIET_MS`], or once the stream stopped (nothing for three of its
    /// own intervals, at least [`QUIET_MS`]: the end of a replay or of a device's session). A
    /// stream that keeps sending needs neither: its next readings decide and close.
    /// Returns whether the state changed (the gateway then stores it).
    pub fn tick(
        &mut self,
        policy: &Policy,
        now_ms: i64,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) -> bool {
        let mut changed = false;
        let quiet = now_ms.saturating_sub(self.arrived[1]);
        // Stopped: nothing arrived for three of the stream's own intervals (at least QUIET_MS).
        let pace = self.arrived[1].saturating_sub(self.arrived[0]).max(0);
        let stopped = quiet >= pace.saturating_mul(3).max(QUIET_MS);
        if self.waiting() > 0 && (stopped || quiet >= policy.max_hold_ms) {
            let end = self.recent.len();
            self.decide_waiting(policy, end, out, tally);
            self.trim(policy);
            changed = true;
        }
        let window = policy.window_ms.max(1);
        if self.summary.as_ref().is_some_and(|s| {
            let ends = (s.t0.div_euclid(window) + 1) * window;
            stopped || (now_ms >= ends && quiet >= QUIET_MS.min(window))
        }) && let Some(done) = self.take_summary()
        {
            out.push(Output::Summary(done));
            changed = true;
        }
        changed
    }

    /// Whether the stream holds nothing that must still be sent.
    pub fn is_idle(&self) -> bool {
        self.summary.is_none() && self.waiting() == 0
    }

    /// Decides everything waiting and closes the summary (shutdown of a benchmark run).
    pub fn flush(&mut self, policy: &Policy, out: &mut Vec<Output>, tally: &mut Tally) {
        let end = self.recent.len();
        self.decide_waiting(policy, end, out, tally);
        if let Some(done) = self.take_summary() {
            out.push(Output::Summary(done));
        }
    }

    /// The open summary, with the stream's key, to send.
    fn take_summary(&mut self) -> Option<Summary> {
        let mut done = self.summary.take()?;
        done.patient = self.patient.clone();
        done.metric = self.metric.clone();
        done.device = self.device.clone();
        Some(done)
    }

    fn reading(&self, s: &Sample) -> Reading {
        // The key was taken from a validated reading (Stream::new), so it parses again.
        let patient = Id::parse(&self.patient).expect("stream key from a validated reading");
        let metric = Metric::from_key(&self.metric).expect("stream key from a validated reading");
        Reading {
            patient,
            device: self.device.as_deref().and_then(Id::parse),
            metric,
            value: match s.v.as_slice() {
                [a, b] => Value::Pair(*a, *b),
                [a, ..] => Value::Scalar(*a),
                [] => Value::Scalar(f64::NAN),
            },
            taken: Timestamp {
                utc_ms: s.t,
                offset_min: s.o,
            },
            received_ms: s.r,
            status: Status::Final,
            identifier: None,
        }
    }
}

#[cfg(test)]
mod tests;
