//! The canonical reading and the validation that produces it.
//!
//! Whatever a reading arrived as (FHIR JSON, a gateway batch, a vendor payload), it becomes a
//! [`Reading`]: patient, device, metric, value in the metric's canonical unit, time taken and
//! time received. [`ReadingInput::validate`] is the one gate: it converts units and rejects
//! what cannot be true, saying exactly why.

use crate::metric::{Metric, MetricInfo};
use crate::time::Timestamp;

/// How far in the future a reading's time may lie before it is refused: device clocks drift,
/// and five minutes covers ordinary drift while still catching a wrong year or time zone.
pub const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The earliest time a reading may carry (2000-01-01T00:00:00Z): nothing Osler ingests was
/// measured by a connected device before then, and a 1970 time is a device with no clock set.
pub const EARLIEST_MS: i64 = 946_684_800_000;

/// A FHIR-compatible resource id: `[A-Za-z0-9\-\.]{1,64}`. Patients and devices are named by
/// these, so that they can be referenced as `Patient/{id}` without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    pub fn parse(text: &str) -> Option<Id> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        ok.then(|| Id(text.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sender's own identifier for a reading (FHIR `Identifier.system` + `value`), used to make
/// resends idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identifier {
    pub system: String,
    pub value: String,
}

impl Identifier {
    /// The `system|value` token form used in search and conditional create.
    pub fn token(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// Where a reading stands (a subset of FHIR's observation status: the ones a measurement can
/// have when it is stored). The discriminant is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Final = 0,
    Preliminary = 1,
    Amended = 2,
    Corrected = 3,
    /// The reading should never have been: kept, with its history, and judged by no rule.
    EnteredInError = 4,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Final => "final",
            Status::Preliminary => "preliminary",
            Status::Amended => "amended",
            Status::Corrected => "corrected",
            Status::EnteredInError => "entered-in-error",
        }
    }
    pub fn from_code(code: &str) -> Option<Status> {
        [
            Status::Final,
            Status::Preliminary,
            Status::Amended,
            Status::Corrected,
            Status::EnteredInError,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
    /// A correction of a reading sent before (amended, corrected, entered in error).
    pub fn is_correction(self) -> bool {
        matches!(
            self,
            Status::Amended | Status::Corrected | Status::EnteredInError
        )
    }
    pub fn from_u8(n: u8) -> Option<Status> {
        [
            Status::Final,
            Status::Preliminary,
            Status::Amended,
            Status::Corrected,
            Status::EnteredInError,
        ]
        .into_iter()
        .find(|s| *s as u8 == n)
    }
}

/// A reading's value in the metric's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Scalar(f64),
    /// A two-part panel: blood pressure's systolic and diastolic, in that order.
    Pair(f64, f64),
}

/// One canonical, validated reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub patient: Id,
    /// The device that took it; absent for a manual entry.
    pub device: Option<Id>,
    pub metric: Metric,
    pub value: Value,
    pub taken: Timestamp,
    /// When Osler first received it (UTC milliseconds).
    pub received_ms: i64,
    pub status: Status,
    pub identifier: Option<Identifier>,
}

/// A value as the sender wrote it, before unit conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum InputValue {
    Scalar {
        value: f64,
        unit: String,
    },
    Pair {
        first: (f64, String),
        second: (f64, String),
    },
}

/// A reading as a wire format parsed it, not yet validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingInput {
    pub patient: String,
    pub device: Option<String>,
    pub metric: Metric,
    pub value: InputValue,
    pub taken: Timestamp,
    pub received_ms: i64,
    pub status: Status,
    pub identifier: Option<Identifier>,
}

/// What is wrong with a reading. Each message says what was found and what was expected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadingError {
    #[error("{what} id {value:?} is not valid: use 1-64 letters, digits, '-' or '.'")]
    InvalidId { what: &'static str, value: String },
    #[error("unit {unit:?} is not accepted for {metric}; accepted UCUM units: {accepted}")]
    UnknownUnit {
        metric: Metric,
        unit: String,
        accepted: String,
    },
    #[error(
        "{metric}{part} value {value} {unit} is outside the plausible range {min}..={max} {unit}"
    )]
    Implausible {
        metric: Metric,
        part: &'static str,
        value: f64,
        unit: &'static str,
        min: f64,
        max: f64,
    },
    #[error("{metric} value is not a finite number")]
    NotFinite { metric: Metric },
    #[error("{metric} needs {expected}")]
    WrongShape {
        metric: Metric,
        expected: &'static str,
    },
    #[error(
        "systolic pressure {systolic} mm[Hg] is not above diastolic pressure {diastolic} mm[Hg]"
    )]
    SystolicNotAboveDiastolic { systolic: f64, diastolic: f64 },
    #[error(
        "time taken {taken} is {ahead_s} s in the future (tolerance {} s); check the device clock and time zone",
        FUTURE_TOLERANCE_MS / 1000
    )]
    InFuture { taken: String, ahead_s: i64 },
    #[error("time taken {taken} is before 2000-01-01; the device clock is probably not set")]
    TooOld { taken: String },
}

impl ReadingInput {
    /// Validates and normalizes the reading against the catalog, with `now_ms` as the present
    /// (the core does no IO, so the caller reads the clock).
    pub fn validate(self, now_ms: i64) -> Result<Reading, ReadingError> {
        let patient = Id::parse(&self.patient).ok_or(ReadingError::InvalidId {
            what: "patient",
            value: self.patient.clone(),
        })?;
        let device = match self.device {
            None => None,
            Some(d) => Some(Id::parse(&d).ok_or(ReadingError::InvalidId {
                what: "device",
                value: d,
            })?),
        };
        let info = self.metric.info();
        let value = match (self.value, info.parts) {
            (InputValue::Scalar { value, unit }, None) => {
                let v = convert(info, value, &unit)?;
                check_range(info, "", v, info.range)?;
                Value::Scalar(v)
            }
            (InputValue::Pair { first, second }, Some(parts)) => {
                let sys = convert(info, first.0, &first.1)?;
                let dia = convert(info, second.0, &second.1)?;
                check_range(info, " systolic", sys, parts[0].range)?;
                check_range(info, " diastolic", dia, parts[1].range)?;
                if sys <= dia {
                    return Err(ReadingError::SystolicNotAboveDiastolic {
                        systolic: sys,
                        diastolic: dia,
                    });
                }
                Value::Pair(sys, dia)
            }
            (_, Some(_)) => {
                return Err(ReadingError::WrongShape {
                    metric: self.metric,
                    expected: "two parts (systolic and diastolic), not a single value",
                });
            }
            (_, None) => {
                return Err(ReadingError::WrongShape {
                    metric: self.metric,
                    expected: "a single value, not parts",
                });
            }
        };
        let reading = Reading {
            patient,
            device,
            metric: self.metric,
            value,
            taken: self.taken,
            received_ms: self.received_ms,
            status: self.status,
            identifier: self.identifier,
        };
        check_time(&reading, now_ms)?;
        Ok(reading)
    }
}

impl Reading {
    /// Checks a reading that is already in canonical units (from a gateway batch, say): the
    /// same ranges and time rules as [`ReadingInput::validate`], without unit conversion.
    pub fn check(&self, now_ms: i64) -> Result<(), ReadingError> {
        let info = self.metric.info();
        match (self.value, info.parts) {
            (Value::Scalar(v), None) => {
                finite(info, v)?;
                check_range(info, "", v, info.range)?;
            }
            (Value::Pair(sys, dia), Some(parts)) => {
                finite(info, sys)?;
                finite(info, dia)?;
                check_range(info, " systolic", sys, parts[0].range)?;
                check_range(info, " diastolic", dia, parts[1].range)?;
                if sys <= dia {
                    return Err(ReadingError::SystolicNotAboveDiastolic {
                        systolic: sys,
                        diastolic: dia,
                    });
                }
            }
            (Value::Scalar(_), Some(_)) => {
                return Err(ReadingError::WrongShape {
                    metric: self.metric,
                    expected: "two parts (systolic and diastolic), not a single value",
                });
            }
            (Value::Pair(..), None) => {
                return Err(ReadingError::WrongShape {
                    metric: self.metric,
                    expected: "a single value, not parts",
                });
            }
        }
        check_time(self, now_ms)
    }
}

fn finite(info: &MetricInfo, v: f64) -> Result<(), ReadingError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(ReadingError::NotFinite {
            metric: info.metric,
        })
    }
}

fn check_time(r: &Reading, now_ms: i64) -> Result<(), ReadingError> {
    let ahead = r.taken.utc_ms - now_ms;
    if ahead > FUTURE_TOLERANCE_MS {
        return Err(ReadingError::InFuture {
            taken: r.taken.to_string(),
            ahead_s: ahead / 1000,
        });
    }
    if r.taken.utc_ms < EARLIEST_MS {
        return Err(ReadingError::TooOld {
            taken: r.taken.to_string(),
        });
    }
    Ok(())
}

fn convert(info: &MetricInfo, value: f64, unit: &str) -> Result<f64, ReadingError> {
    finite(info, value)?;
    let input = info
        .input_unit(unit)
        .ok_or_else(|| ReadingError::UnknownUnit {
            metric: info.metric,
            unit: unit.chars().take(40).collect(),
            accepted: info.accepted_units().join(", "),
        })?;
    Ok(input.conversion.apply(value))
}

fn check_range(
    info: &MetricInfo,
    part: &'static str,
    v: f64,
    (min, max): (f64, f64),
) -> Result<(), ReadingError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(ReadingError::Implausible {
            metric: info.metric,
            part,
            value: v,
            unit: info.unit,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    fn input(metric: Metric, value: InputValue) -> ReadingInput {
        ReadingInput {
            patient: "p-1".into(),
            device: Some("watch.7".into()),
            metric,
            value,
            taken: Timestamp::utc(NOW - 1000),
            received_ms: NOW,
            status: Status::Final,
            identifier: None,
        }
    }
    fn scalar(v: f64, unit: &str) -> InputValue {
        InputValue::Scalar {
            value: v,
            unit: unit.into(),
        }
    }

    #[test]
    fn converts_to_the_canonical_unit() {
        let r = input(Metric::BodyWeight, scalar(150.0, "[lb_av]"))
            .validate(NOW)
            .unwrap();
        assert_eq!(r.value, Value::Scalar(68.038856));
        let r = input(Metric::CgmGlucose, scalar(3.0, "mmol/L"))
            .validate(NOW)
            .unwrap();
        assert_eq!(r.value, Value::Scalar(54.0468));
    }

    #[test]
    fn says_exactly_what_is_wrong() {
        let e = input(Metric::HeartRate, scalar(72.0, "bpm"))
            .validate(NOW)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit \"bpm\" is not accepted for heart-rate; accepted UCUM units: /min, {beats}/min, 1/min"
        );
        let e = input(Metric::Spo2, scalar(140.0, "%"))
            .validate(NOW)
            .unwrap_err();
        assert!(matches!(e, ReadingError::Implausible { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("outside the plausible range 50..=100 %")
        );
        let e = input(Metric::HeartRate, scalar(f64::NAN, "/min"))
            .validate(NOW)
            .unwrap_err();
        assert_eq!(
            e,
            ReadingError::NotFinite {
                metric: Metric::HeartRate
            }
        );
        let mut future = input(Metric::HeartRate, scalar(72.0, "/min"));
        future.taken = Timestamp::utc(NOW + FUTURE_TOLERANCE_MS + 60_000);
        assert!(matches!(
            future.validate(NOW),
            Err(ReadingError::InFuture { ahead_s: 360, .. })
        ));
        let mut drift = input(Metric::HeartRate, scalar(72.0, "/min"));
        drift.taken = Timestamp::utc(NOW + FUTURE_TOLERANCE_MS);
        assert!(
            drift.validate(NOW).is_ok(),
            "drift within tolerance is accepted"
        );
        let mut old = input(Metric::HeartRate, scalar(72.0, "/min"));
        old.taken = Timestamp::utc(0);
        assert!(matches!(
            old.validate(NOW),
            Err(ReadingError::TooOld { .. })
        ));
        let mut bad_id = input(Metric::HeartRate, scalar(72.0, "/min"));
        bad_id.patient = "x' OR 1=1 --".into();
        assert!(matches!(
            bad_id.validate(NOW),
            Err(ReadingError::InvalidId {
                what: "patient",
                ..
            })
        ));
    }

    #[test]
    fn blood_pressure_is_a_pair() {
        let pair = |s: f64, d: f64| InputValue::Pair {
            first: (s, "mm[Hg]".into()),
            second: (d, "mm[Hg]".into()),
        };
        let r = input(Metric::BloodPressure, pair(120.0, 80.0))
            .validate(NOW)
            .unwrap();
        assert_eq!(r.value, Value::Pair(120.0, 80.0));
        let e = input(Metric::BloodPressure, pair(80.0, 120.0))
            .validate(NOW)
            .unwrap_err();
        assert!(matches!(e, ReadingError::SystolicNotAboveDiastolic { .. }));
        let e = input(Metric::BloodPressure, scalar(120.0, "mm[Hg]"))
            .validate(NOW)
            .unwrap_err();
        assert!(matches!(e, ReadingError::WrongShape { .. }));
        let e = input(Metric::HeartRate, pair(120.0, 80.0))
            .validate(NOW)
            .unwrap_err();
        assert!(matches!(e, ReadingError::WrongShape { .. }));
    }

    #[test]
    fn canonical_readings_are_checked_the_same_way() {
        let r = input(
            Metric::BloodPressure,
            InputValue::Pair {
                first: (120.0, "mm[Hg]".into()),
                second: (80.0, "mm[Hg]".into()),
            },
        )
        .validate(NOW)
        .unwrap();
        assert_eq!(r.check(NOW), Ok(()));
        let mut bad = r.clone();
        bad.value = Value::Pair(80.0, 120.0);
        assert!(matches!(
            bad.check(NOW),
            Err(ReadingError::SystolicNotAboveDiastolic { .. })
        ));
        bad.value = Value::Scalar(120.0);
        assert!(matches!(
            bad.check(NOW),
            Err(ReadingError::WrongShape { .. })
        ));
        bad.value = Value::Pair(400.0, 80.0);
        assert!(matches!(
            bad.check(NOW),
            Err(ReadingError::Implausible { .. })
        ));
        let mut late = r.clone();
        late.taken = Timestamp::utc(NOW + FUTURE_TOLERANCE_MS + 1000);
        assert!(matches!(
            late.check(NOW),
            Err(ReadingError::InFuture { .. })
        ));
    }

    #[test]
    fn ids_are_fhir_ids() {
        assert!(Id::parse("abc-123.X").is_some());
        assert!(Id::parse(&"a".repeat(64)).is_some());
        for bad in ["", "a b", "a/b", "a|b", "é", &"a".repeat(65)] {
            assert!(Id::parse(bad).is_none(), "{bad}");
        }
    }
}
