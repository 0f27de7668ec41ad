//! Strict parsing of registry search parameters (`GET /fhir/Patient?family=...`): every
//! parameter is one the kind has, with a modifier Osler supports, or the search is refused
//! with the parameter named (a silently ignored parameter returns the wrong patients).

use osler_core::time::parse_span;
use osler_registry::{Kind, Match, ParamCond, ParamType, ResourceQuery, Sort, SortKey, fold};

use crate::FhirError;
use crate::search::{DEFAULT_COUNT, MAX_COUNT, bad, parse_usize, truncate};

/// A parsed registry search.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistrySearch {
    pub query: ResourceQuery,
    /// `_summary=count` or `_count=0`: only the total.
    pub summary_count: bool,
}

/// Token parameters stored as the bare code (a fixed value set, no system).
const PLAIN_CODES: &[&str] = &["gender", "active", "status"];

/// The parameters every search accepts that are not conditions.
const CONTROL: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_format",
    "_pretty",
    "_total",
    "_elements",
];

pub fn parse_registry_search(
    kind: Kind,
    params: &[(String, String)],
) -> Result<RegistrySearch, FhirError> {
    let mut q = ResourceQuery::all(kind, DEFAULT_COUNT);
    let mut summary_count = false;
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        let name = name.as_str();
        if CONTROL.contains(&name) || name == "_id" {
            if seen.contains(&name) {
                return Err(bad(name, "may be given only once"));
            }
            seen.push(name);
        }
        match name {
            "_count" => {
                q.limit = parse_usize(name, value, 0, MAX_COUNT)?;
                summary_count |= q.limit == 0;
            }
            "_offset" => q.offset = parse_usize(name, value, 0, usize::MAX >> 1)?,
            "_summary" => match value.as_str() {
                "count" => summary_count = true,
                // Subsets of each resource: cut by the hub on the way out (crate::shape).
                "false" | "true" | "text" | "data" => {}
                _ => return Err(bad(name, "one of true, text, data, count, false")),
            },
            "_format" => {
                if !matches!(
                    value.as_str(),
                    "json" | "application/fhir+json" | "application/json"
                ) {
                    return Err(bad(name, "only JSON is served"));
                }
            }
            // Handled on the way out (crate::shape) or not applicable (the total is always given).
            "_pretty" | "_total" | "_elements" => {}
            "_sort" => q.sort = sort(kind, value)?,
            "_id" => {
                q.ids = Some(value.split(',').map(str::to_owned).collect());
            }
            "_lastUpdated" => {
                let (lo, hi) = instant_range(name, value)?;
                q.updated_from = max_opt(q.updated_from, lo);
                q.updated_to = min_opt(q.updated_to, hi);
            }
            _ => q.conds.push(condition(kind, name, value)?),
        }
    }
    if summary_count {
        q.limit = 0;
    }
    Ok(RegistrySearch {
        query: q,
        summary_count,
    })
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn split_prefix(value: &str) -> (&str, &str) {
    match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb" | "ap")) => {
            (p, &value[2..])
        }
        _ => ("eq", value),
    }
}

/// `_lastUpdated=ge2026-01-01` as `[lo, hi)` in UTC ms.
fn instant_range(name: &str, value: &str) -> Result<(Option<i64>, Option<i64>), FhirError> {
    let (prefix, text) = split_prefix(value);
    let text = text.replace(' ', "+");
    let span = parse_span(&text).map_err(|e| bad(name, e.to_string()))?;
    Ok(match prefix {
        "eq" => (Some(span.start_ms), Some(span.end_ms)),
        "ge" => (Some(span.start_ms), None),
        "gt" => (Some(span.end_ms), None),
        "le" => (None, Some(span.end_ms)),
        "lt" => (None, Some(span.start_ms)),
        p => {
            return Err(bad(
                name,
                format!("the prefix {p} is not supported; use eq, ge, gt, le or lt"),
            ));
        }
    })
}

/// A date parameter as a range of ISO 8601 text: dates compare as text when written to the
/// same precision or finer, so `1980` covers `["1980", "1981")`.
fn date_range(name: &str, value: &str) -> Result<Match, FhirError> {
    let (prefix, text) = split_prefix(value);
    if !matches!(text.len(), 4 | 7 | 10) || text.contains('T') {
        return Err(bad(
            name,
            format!(
                "{:?} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)",
                truncate(text)
            ),
        ));
    }
    let span = parse_span(text).map_err(|e| bad(name, e.to_string()))?;
    let next = osler_core::Timestamp::utc(span.end_ms).to_string()[..text.len()].to_owned();
    let lo = text.to_owned();
    Ok(match prefix {
        "eq" => Match::Range {
            lo: Some(lo),
            hi: Some(next),
        },
        "ge" => Match::Range {
            lo: Some(lo),
            hi: None,
        },
        "gt" => Match::Range {
            lo: Some(next),
            hi: None,
        },
        "le" => Match::Range {
            lo: None,
            hi: Some(next),
        },
        "lt" => Match::Range {
            lo: None,
            hi: Some(lo),
        },
        p => {
            return Err(bad(
                name,
                format!("the prefix {p} is not supported; use eq, ge, gt, le or lt"),
            ));
        }
    })
}

fn condition(kind: Kind, name: &str, value: &str) -> Result<ParamCond, FhirError> {
    let (base, modifier) = match name.split_once(':') {
        Some((b, m)) => (b, Some(m)),
        None => (name, None),
    };
    let def = kind.param(base).ok_or_else(|| {
        let known: Vec<&str> = kind.params().iter().map(|p| p.name).collect();
        bad(
            name,
            format!(
                "is not a search parameter Osler supports for {kind}; supported: _id, _lastUpdated, {}",
                known.join(", ")
            ),
        )
    })?;
    if value.is_empty() {
        return Err(bad(name, "needs a value"));
    }
    let mut param = base.to_owned();
    let mut any = Vec::new();
    for v in value.split(',') {
        let m = match (def.ty, modifier) {
            (ParamType::String, None) => Match::Prefix(fold(v)),
            (ParamType::String, Some("contains")) => Match::Contains(fold(v)),
            (ParamType::String, Some("exact")) => {
                param = format!("{base}:exact");
                Match::Exact(v.to_owned())
            }
            (ParamType::Token, None) if PLAIN_CODES.contains(&base) => {
                Match::Exact(v.rsplit('|').next().unwrap_or(v).to_owned())
            }
            (ParamType::Token, None) => match v.split_once('|') {
                Some((system, "")) if !system.is_empty() => Match::Prefix(format!("{system}|")),
                _ => Match::Exact(v.to_owned()),
            },
            (ParamType::Reference, None) => Match::Exact(reference(name, v, def.targets)?),
            (ParamType::Date, None) => date_range(name, v)?,
            (_, Some(m)) => {
                return Err(bad(
                    name,
                    format!("the modifier :{m} is not supported on this parameter"),
                ));
            }
        };
        any.push(m);
    }
    Ok(ParamCond { param, any })
}

/// `Practitioner/x`, an absolute URL ending in `Practitioner/x`, or a bare `x` when the
/// parameter can point to one kind only.
fn reference(name: &str, v: &str, targets: &[Kind]) -> Result<String, FhirError> {
    let parts: Vec<&str> = v.rsplitn(3, '/').collect();
    let (ty, id) = match parts.as_slice() {
        [id] => match targets {
            [only] => (only.as_str(), *id),
            _ => {
                let names: Vec<&str> = targets.iter().map(|k| k.as_str()).collect();
                return Err(bad(
                    name,
                    format!(
                        "write Type/id: this parameter may point to {}",
                        names.join(", ")
                    ),
                ));
            }
        },
        [id, ty, ..] => (*ty, *id),
        [] => return Err(bad(name, "needs a value")),
    };
    let kind = Kind::parse(ty)
        .filter(|k| targets.contains(k))
        .ok_or_else(|| {
            bad(
                name,
                format!("{:?} is not a reference this parameter takes", truncate(v)),
            )
        })?;
    if osler_core::Id::parse(id).is_none() {
        return Err(bad(name, format!("{:?} is not a valid id", truncate(id))));
    }
    Ok(format!("{kind}/{id}"))
}

fn sort(kind: Kind, value: &str) -> Result<Vec<Sort>, FhirError> {
    value
        .split(',')
        .map(|s| {
            let (descending, key) = match s.strip_prefix('-') {
                Some(k) => (true, k),
                None => (false, s),
            };
            let key = match key {
                "_id" => SortKey::Id,
                "_lastUpdated" => SortKey::LastUpdated,
                k => match kind.param(k) {
                    Some(p) if p.ty != ParamType::Reference => SortKey::Term(k.to_owned()),
                    _ => {
                        return Err(bad(
                            "_sort",
                            format!("cannot sort {kind} by {:?}", truncate(k)),
                        ));
                    }
                },
            };
            Ok(Sort { key, descending })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: Kind, q: &str) -> Result<RegistrySearch, FhirError> {
        parse_registry_search(kind, &crate::parse_query(q).unwrap())
    }

    #[test]
    fn parameters_become_conditions() {
        let s = parse(
            Kind::Patient,
            "family=Müll&birthdate=ge1980&gender=male&identifier=urn:mrn|42",
        )
        .unwrap();
        assert_eq!(
            s.query.conds[0],
            ParamCond {
                param: "family".into(),
                any: vec![Match::Prefix("mull".into())]
            }
        );
        assert_eq!(
            s.query.conds[1].any,
            vec![Match::Range {
                lo: Some("1980".into()),
                hi: None
            }]
        );
        assert_eq!(s.query.conds[2].any, vec![Match::Exact("male".into())]);
        assert_eq!(
            s.query.conds[3].any,
            vec![Match::Exact("urn:mrn|42".into())]
        );
        let s = parse(
            Kind::Patient,
            "birthdate=1980-12&general-practitioner=Practitioner/dr-a,Organization/o",
        )
        .unwrap();
        assert_eq!(
            s.query.conds[0].any,
            vec![Match::Range {
                lo: Some("1980-12".into()),
                hi: Some("1981-01".into())
            }]
        );
        assert_eq!(
            s.query.conds[1].any,
            vec![
                Match::Exact("Practitioner/dr-a".into()),
                Match::Exact("Organization/o".into())
            ]
        );
        let s = parse(Kind::CareTeam, "patient=anna&_sort=-_lastUpdated&_count=0").unwrap();
        assert_eq!(
            s.query.conds[0].any,
            vec![Match::Exact("Patient/anna".into())]
        );
        assert!(s.summary_count);
    }

    #[test]
    fn what_is_not_supported_is_refused_by_name() {
        for (kind, q, named) in [
            (Kind::Patient, "nickname=x", "nickname"),
            (Kind::Patient, "family:fuzzy=x", "family:fuzzy"),
            (Kind::Patient, "birthdate=1980-02-30", "birthdate"),
            (
                Kind::Patient,
                "general-practitioner=dr-a",
                "general-practitioner",
            ),
            (Kind::Patient, "_sort=general-practitioner", "_sort"),
            (Kind::Device, "_count=5&_count=6", "_count"),
            (Kind::Device, "patient=Device/x", "patient"),
        ] {
            let e = parse(kind, q).unwrap_err();
            assert_eq!(e.expression.as_deref(), Some(named), "{q}: {e}");
        }
    }
}
