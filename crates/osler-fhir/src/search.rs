//! FHIR search parameters for Observation, parsed strictly.
//!
//! FHIR lets a server ignore parameters it does not know; Osler refuses them instead (as if
//! every request carried `Prefer: handling=strict`), because a nurse who mistypes `dat=` would
//! otherwise get every reading back and believe it was the day she asked for.

use osler_core::metric::{LOINC, MDC};
use osler_core::time::parse_span;
use osler_core::{Category, Id, Identifier, Metric};

use crate::observation::CATEGORY_SYSTEM;
use crate::outcome::{ErrorKind, FhirError};

/// Page size when `_count` is not given, and the largest page served.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

pub(crate) fn bad(param: &str, msg: impl Into<String>) -> FhirError {
    FhirError::at(ErrorKind::BadParameter, param, msg)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes one query component. `+` is kept as `+`, not read as a space: FHIR dates
/// carry `+hh:mm` zones, and clients often forget to escape them.
fn decode(s: &str) -> Result<String, FhirError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(FhirError::new(
                    ErrorKind::BadParameter,
                    "malformed percent-encoding in the query string",
                ));
            };
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| FhirError::new(ErrorKind::BadParameter, "the query string is not UTF-8"))
}

/// Splits and decodes a raw query string into (name, value) pairs, in order.
pub fn parse_query(raw: &str) -> Result<Vec<(String, String)>, FhirError> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Encodes (name, value) pairs as a query string, escaping what a URL cannot carry raw.
pub fn encode_query(params: &[(String, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~:/|,".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// A parsed Observation search (or `$lastn`).
#[derive(Clone, Debug, PartialEq)]
pub struct ObservationSearch {
    pub patient: Option<Id>,
    /// `None`: any metric. `Some(empty)`: the codes asked for match no metric, so nothing matches.
    pub metrics: Option<Vec<Metric>>,
    pub device: Option<Id>,
    pub identifier: Option<Identifier>,
    /// Time taken, inclusive lower and exclusive upper bounds (UTC ms).
    pub from_ms: i64,
    pub to_ms: i64,
    pub count: usize,
    pub descending: bool,
    /// `_summary=count` (or `_count=0`): only the total.
    pub summary_count: bool,
    /// Where the page starts: the (time, series) of the previous page's last entry.
    pub cursor: Option<(i64, i64)>,
    /// `$lastn`'s `max`.
    pub max: usize,
    /// `_include=Observation:patient` (or `:subject`): the page's patients too.
    pub include_patient: bool,
    /// `_include=Observation:device`: the page's devices too.
    pub include_device: bool,
}

fn reference_id(param: &str, value: &str, kind: &str) -> Result<Id, FhirError> {
    // `p1`, `Patient/p1` or an absolute URL ending in `/Patient/p1`.
    let tail = match value.rfind(&format!("{kind}/")) {
        Some(i) if i == 0 || value[..i].ends_with('/') => &value[i + kind.len() + 1..],
        _ => value,
    };
    Id::parse(tail).ok_or_else(|| {
        bad(
            param,
            format!(
                "{:?} is not a {kind} reference: use an id of 1-64 letters, digits, '-' or '.'",
                truncate(value)
            ),
        )
    })
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn metrics_for_code(token: &str) -> Vec<Metric> {
    let (system, code) = match token.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, token),
    };
    let by_loinc = || Metric::from_loinc(code);
    let by_mdc = || Metric::from_mdc(code);
    let m = match system {
        Some(LOINC) => by_loinc(),
        Some(MDC) => by_mdc(),
        // `|code` means "code with no system", which no Osler coding has.
        Some(_) => None,
        None => by_loinc().or_else(by_mdc),
    };
    m.into_iter().collect()
}

fn metrics_for_category(token: &str) -> Vec<Metric> {
    let (system, code) = match token.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, token),
    };
    if system.is_some_and(|s| s != CATEGORY_SYSTEM) {
        return Vec::new();
    }
    match Category::from_code(code) {
        Some(cat) => Metric::all().filter(|m| m.info().category == cat).collect(),
        None => Vec::new(),
    }
}

fn intersect(current: Option<Vec<Metric>>, with: Vec<Metric>) -> Option<Vec<Metric>> {
    Some(match current {
        None => with,
        Some(cur) => cur.into_iter().filter(|m| with.contains(m)).collect(),
    })
}

pub(crate) fn parse_usize(
    param: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<usize, FhirError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            bad(
                param,
                format!(
                    "must be a whole number from {min} to {max}, found {:?}",
                    truncate(value)
                ),
            )
        })
}

/// Parses Observation search parameters. With `lastn`, also `max`, and the `$lastn` rules.
pub fn parse_observation_search(
    params: &[(String, String)],
    lastn: bool,
) -> Result<ObservationSearch, FhirError> {
    let mut s = ObservationSearch {
        patient: None,
        metrics: None,
        device: None,
        identifier: None,
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        count: DEFAULT_COUNT,
        descending: false,
        summary_count: false,
        cursor: None,
        max: 1,
        include_patient: false,
        include_device: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut has_code_or_category = false;
    for (name, value) in params {
        let name = name.as_str();
        let single = [
            "patient",
            "subject",
            "device",
            "identifier",
            "_count",
            "_sort",
            "_summary",
            "_cursor",
            "max",
            "_format",
        ];
        if single.contains(&name) {
            if seen.contains(&name) {
                return Err(bad(name, "may be given only once"));
            }
            seen.push(name);
        }
        match name {
            "patient" | "subject" => {
                let id = reference_id(name, value, "Patient")?;
                if s.patient.as_ref().is_some_and(|p| *p != id) {
                    return Err(bad(name, "patient and subject name different patients"));
                }
                s.patient = Some(id);
            }
            "code" => {
                has_code_or_category = true;
                let ms: Vec<Metric> = value.split(',').flat_map(metrics_for_code).collect();
                s.metrics = intersect(s.metrics.take(), ms);
            }
            "category" => {
                has_code_or_category = true;
                let ms: Vec<Metric> = value.split(',').flat_map(metrics_for_category).collect();
                s.metrics = intersect(s.metrics.take(), ms);
            }
            "date" => {
                let (prefix, text) = match value.get(..2) {
                    Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
                        (p, &value[2..])
                    }
                    _ => ("eq", value.as_str()),
                };
                // A '+' zone that arrived unescaped was turned into a space by some client.
                let text = text.replace(' ', "+");
                let span = parse_span(&text).map_err(|e| bad("date", e.to_string()))?;
                let (lo, hi) = match prefix {
                    "eq" => (span.start_ms, span.end_ms),
                    "ge" => (span.start_ms, i64::MAX),
                    "gt" => (span.end_ms, i64::MAX),
                    "le" => (i64::MIN, span.end_ms),
                    "lt" => (i64::MIN, span.start_ms),
                    other => {
                        return Err(FhirError::at(
                            ErrorKind::BadParameter,
                            "date",
                            format!(
                                "the '{other}' prefix is not supported; use eq, ge, gt, le or lt"
                            ),
                        ));
                    }
                };
                s.from_ms = s.from_ms.max(lo);
                s.to_ms = s.to_ms.min(hi);
            }
            "device" => s.device = Some(reference_id(name, value, "Device")?),
            "identifier" => {
                let (system, v) = value
                    .split_once('|')
                    .filter(|(sy, v)| !sy.is_empty() && !v.is_empty())
                    .ok_or_else(|| bad("identifier", "use system|value"))?;
                s.identifier = Some(Identifier {
                    system: system.to_owned(),
                    value: v.to_owned(),
                });
            }
            "_count" => {
                let n = parse_usize(name, value, 0, MAX_COUNT)?;
                if n == 0 {
                    s.summary_count = true;
                } else {
                    s.count = n;
                }
            }
            "_sort" => {
                s.descending = match value.as_str() {
                    "date" => false,
                    "-date" => true,
                    _ => return Err(bad("_sort", "only date and -date are supported")),
                }
            }
            "_summary" => match value.as_str() {
                "count" => s.summary_count = true,
                // Subsets of each resource: cut by the hub on the way out (osler_fhir::shape).
                "false" | "true" | "text" | "data" => {}
                _ => return Err(bad("_summary", "one of true, text, data, count, false")),
            },
            "_elements" | "_pretty" => {}
            "_cursor" => {
                let (t, series) = value
                    .split_once('.')
                    .and_then(|(t, sr)| Some((t.parse().ok()?, sr.parse().ok()?)))
                    .ok_or_else(|| bad("_cursor", "is not a paging token this server issued"))?;
                s.cursor = Some((t, series));
            }
            "max" if lastn => s.max = parse_usize(name, value, 1, MAX_COUNT)?,
            "_include" => match value.as_str() {
                "Observation:patient" | "Observation:subject" => s.include_patient = true,
                "Observation:device" => s.include_device = true,
                _ => {
                    return Err(bad(
                        name,
                        "supported: Observation:patient, Observation:subject, Observation:device",
                    ));
                }
            },
            "_format" => {
                if !["json", "application/json", "application/fhir+json"].contains(&value.as_str())
                {
                    return Err(bad("_format", "only JSON is served"));
                }
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unsupported search parameter {:?}; supported: patient, subject, code, category, date, device, identifier, _count, _sort, _summary, _elements, _include, _pretty{}",
                        truncate(other),
                        if lastn { ", max" } else { "" }
                    ),
                ));
            }
        }
    }
    if lastn {
        if s.patient.is_none() || !has_code_or_category {
            return Err(FhirError::new(
                ErrorKind::BadParameter,
                "$lastn needs patient (or subject) and code and/or category",
            ));
        }
    } else if s.patient.is_none() && s.identifier.is_none() && !has_code_or_category {
        return Err(FhirError::new(
            ErrorKind::BadParameter,
            "an Observation search needs patient (or subject), identifier, or code or category (a search across patients); Osler does not scan every reading",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ObservationSearch, FhirError> {
        parse_observation_search(&parse_query(q).unwrap(), false)
    }

    #[test]
    fn codes_categories_and_dates() {
        let s = parse("patient=Patient/p1&code=http://loinc.org|8867-4,2708-6&date=ge2025-01-01&date=lt2025-01-02T00:00:00%2B01:00").unwrap();
        assert_eq!(s.patient.unwrap().as_str(), "p1");
        assert_eq!(s.metrics, Some(vec![Metric::HeartRate, Metric::Spo2]));
        assert_eq!(s.from_ms, 1_735_689_600_000);
        assert_eq!(s.to_ms, 1_735_689_600_000 + 86_400_000 - 3_600_000);
        // An unescaped '+' survives (it is not read as a space).
        let s2 = parse("patient=p1&date=lt2025-01-02T00:00:00+01:00").unwrap();
        assert_eq!(s2.to_ms, s.to_ms);
        let s = parse("subject=p1&category=laboratory&code=99504-3").unwrap();
        assert_eq!(s.metrics, Some(vec![Metric::CgmGlucose]));
        let s = parse("patient=p1&category=activity&code=8867-4").unwrap();
        assert_eq!(s.metrics, Some(vec![]), "heart rate is not an activity");
        let s = parse("patient=p1&code=http://example.org|8867-4").unwrap();
        assert_eq!(s.metrics, Some(vec![]));
        let s = parse("patient=p1&date=2025-01").unwrap();
        assert_eq!(s.to_ms - s.from_ms, 31 * 86_400_000);
        let s = parse("patient=p1&date=gt2025-01-01&_sort=-date&_count=10").unwrap();
        assert_eq!(s.from_ms, 1_735_689_600_000 + 86_400_000);
        assert!(s.descending);
        assert_eq!(s.count, 10);
        assert!(parse("patient=p1&_summary=count").unwrap().summary_count);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (q, param) in [
            ("patient=p1&dat=2025", "dat"),
            ("patient=p1' OR 1=1 --", "patient"),
            ("patient=p1&date=ge2025-13-01", "date"),
            ("patient=p1&date=ap2025-01-01", "date"),
            ("patient=p1&_count=5000", "_count"),
            ("patient=p1&_sort=value", "_sort"),
            ("patient=p1&patient=p2", "patient"),
            ("patient=p1&subject=p2", "subject"),
            ("patient=p1&_cursor=abc", "_cursor"),
            ("patient=p1&code:text=heart", "code:text"),
            ("patient=p1&identifier=abc", "identifier"),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadParameter, "{q}");
            assert_eq!(e.expression.as_deref(), Some(param), "{q}: {e}");
        }
        let e = parse("date=ge2025").unwrap_err();
        assert!(e.message.contains("needs patient"));
        // Across patients: a code (or category) is enough.
        let s = parse("code=8867-4&date=ge2025-01-01").unwrap();
        assert_eq!(
            (s.patient.clone(), s.metrics.clone()),
            (None, Some(vec![Metric::HeartRate]))
        );
        assert!(parse_query("a=%zz").is_err());
        let e = parse_observation_search(&parse_query("patient=p1").unwrap(), true).unwrap_err();
        assert!(e.message.contains("$lastn needs"));
    }

    #[test]
    fn query_strings_round_trip() {
        let params = vec![
            ("code".to_owned(), "http://loinc.org|8867-4".to_owned()),
            ("date".to_owned(), "ge2025-01-01T00:00:00+01:00".to_owned()),
            ("x y".to_owned(), "a&b=c%".to_owned()),
        ];
        let enc = encode_query(&params);
        assert_eq!(parse_query(&enc).unwrap(), params);
    }
}
