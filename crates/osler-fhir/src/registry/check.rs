//! Small checkers for the elements registry resources share (identifiers, names, codeable
//! concepts, references, periods), each collecting search terms as it goes and naming the
//! element at fault when it refuses.

use osler_core::Id;
use osler_core::time::parse_span;
use osler_registry::{Kind, Ref, Term, fold};
use serde_json::{Map, Value as Json};

use crate::{ErrorKind, FhirError};

pub(super) fn invalid(path: &str, msg: impl Into<String>) -> FhirError {
    FhirError::at(ErrorKind::Invalid, path, msg)
}

/// What a resource yields besides its body: terms, references and unique terms.
#[derive(Default)]
pub(super) struct Found {
    pub terms: Vec<Term>,
    pub refs: Vec<Ref>,
    pub unique: Vec<Term>,
}

impl Found {
    pub fn term(&mut self, param: &str, value: impl Into<String>) {
        self.terms.push(Term::new(param, value));
    }

    /// A string search term: folded, and each word of it too, so that "van der Berg" is found
    /// by "berg".
    pub fn string(&mut self, param: &str, text: &str) {
        let exact = text.trim();
        if !exact.is_empty() {
            self.term(&format!("{param}:exact"), exact);
        }
        let f = fold(text);
        if f.is_empty() {
            return;
        }
        for w in f.split(' ').skip(1) {
            self.term(param, w);
        }
        self.term(param, f);
    }

    /// A token: stored as `system|code` and as `code` (the code alone, when the system is
    /// known, and `|code` when it is not, as FHIR's token forms need).
    pub fn token(&mut self, param: &str, system: Option<&str>, code: &str) {
        match system {
            Some(s) => self.term(param, format!("{s}|{code}")),
            None => self.term(param, format!("|{code}")),
        }
        self.term(param, code);
    }
}

pub(super) fn string<'a>(v: &'a Json, path: &str) -> Result<&'a str, FhirError> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(invalid(
            path,
            "must not be empty (leave the element out instead)",
        )),
        None => Err(invalid(path, "must be a string")),
    }
}

pub(super) fn array<'a>(v: &'a Json, path: &str) -> Result<&'a Vec<Json>, FhirError> {
    match v.as_array() {
        Some(a) if !a.is_empty() => Ok(a),
        Some(_) => Err(invalid(
            path,
            "must not be an empty array (leave the element out)",
        )),
        None => Err(invalid(path, "must be an array")),
    }
}

pub(super) fn object<'a>(v: &'a Json, path: &str) -> Result<&'a Map<String, Json>, FhirError> {
    v.as_object()
        .ok_or_else(|| invalid(path, "must be an object"))
}

pub(super) fn boolean(v: &Json, path: &str) -> Result<bool, FhirError> {
    v.as_bool()
        .ok_or_else(|| invalid(path, "must be true or false"))
}

/// A code from a fixed value set.
pub(super) fn code<'a>(v: &'a Json, path: &str, allowed: &[&str]) -> Result<&'a str, FhirError> {
    let s = string(v, path)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(invalid(
            path,
            format!("{s:?} is not one of: {}", allowed.join(", ")),
        ))
    }
}

/// Elements of `obj` not in `known` are refused: Osler keeps a resource faithfully or refuses
/// it, and never drops what it does not understand.
pub(super) fn only_known(
    obj: &Map<String, Json>,
    path: &str,
    known: &[&str],
) -> Result<(), FhirError> {
    for k in obj.keys() {
        if k == "modifierExtension" {
            return Err(FhirError::at(
                ErrorKind::NotSupported,
                format!("{path}.{k}"),
                "modifier extensions change the meaning of a resource and Osler does not know them",
            ));
        }
        if !known.contains(&k.as_str()) && k != "extension" && k != "id" {
            return Err(invalid(
                &format!("{path}.{k}"),
                format!(
                    "{k:?} is not an element Osler stores on {path}; refused rather than dropped"
                ),
            ));
        }
    }
    Ok(())
}

/// `Identifier[]`: each needs a value; yields `identifier` tokens, and, with `unique`, the
/// `system|value` forms that no other resource of the kind may hold.
pub(super) fn identifiers(
    v: &Json,
    path: &str,
    found: &mut Found,
    unique: bool,
) -> Result<(), FhirError> {
    for (i, id) in array(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let o = object(id, &p)?;
        only_known(
            o,
            &p,
            &["use", "type", "system", "value", "period", "assigner"],
        )?;
        let value = string(
            o.get("value")
                .ok_or_else(|| invalid(&format!("{p}.value"), "an identifier needs a value"))?,
            &format!("{p}.value"),
        )?;
        let system = match o.get("system") {
            Some(s) => Some(string(s, &format!("{p}.system"))?),
            None => None,
        };
        if let Some(t) = o.get("type") {
            codeable(t, &format!("{p}.type"), None, found)?;
        }
        found.token("identifier", system, value);
        if unique {
            let form = format!("{}|{value}", system.unwrap_or(""));
            found.unique.push(Term::new("identifier", form));
        }
    }
    Ok(())
}

/// `CodeableConcept`: codings with system and code, or text. Yields `param` tokens when given.
pub(super) fn codeable(
    v: &Json,
    path: &str,
    param: Option<&str>,
    found: &mut Found,
) -> Result<(), FhirError> {
    let o = object(v, path)?;
    only_known(o, path, &["coding", "text"])?;
    if let Some(c) = o.get("coding") {
        for (i, coding) in array(c, &format!("{path}.coding"))?.iter().enumerate() {
            let p = format!("{path}.coding[{i}]");
            let co = object(coding, &p)?;
            only_known(
                co,
                &p,
                &["system", "version", "code", "display", "userSelected"],
            )?;
            let system = co
                .get("system")
                .map(|s| string(s, &format!("{p}.system")))
                .transpose()?;
            let code = co
                .get("code")
                .map(|s| string(s, &format!("{p}.code")))
                .transpose()?;
            if let (Some(param), Some(code)) = (param, code) {
                found.token(param, system, code);
            }
        }
    }
    if let Some(t) = o.get("text") {
        string(t, &format!("{path}.text"))?;
    }
    Ok(())
}

/// `HumanName[]`: yields `name` (every part), `family` and `given` terms.
pub(super) fn names(v: &Json, path: &str, found: &mut Found) -> Result<(), FhirError> {
    for (i, n) in array(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let o = object(n, &p)?;
        only_known(
            o,
            &p,
            &[
                "use", "text", "family", "given", "prefix", "suffix", "period",
            ],
        )?;
        if let Some(u) = o.get("use") {
            code(
                u,
                &format!("{p}.use"),
                &[
                    "usual",
                    "official",
                    "temp",
                    "nickname",
                    "anonymous",
                    "old",
                    "maiden",
                ],
            )?;
        }
        if let Some(t) = o.get("text") {
            found.string("name", string(t, &format!("{p}.text"))?);
        }
        if let Some(f) = o.get("family") {
            let f = string(f, &format!("{p}.family"))?;
            found.string("family", f);
            found.string("name", f);
        }
        for part in ["given", "prefix", "suffix"] {
            if let Some(list) = o.get(part) {
                for (j, g) in array(list, &format!("{p}.{part}"))?.iter().enumerate() {
                    let g = string(g, &format!("{p}.{part}[{j}]"))?;
                    if part == "given" {
                        found.string("given", g);
                    }
                    found.string("name", g);
                }
            }
        }
        if let Some(per) = o.get("period") {
            period(per, &format!("{p}.period"))?;
        }
    }
    Ok(())
}

/// `ContactPoint[]` (telecom): system and value checked, kept as written.
pub(super) fn telecoms(v: &Json, path: &str) -> Result<(), FhirError> {
    for (i, t) in array(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let o = object(t, &p)?;
        only_known(o, &p, &["system", "value", "use", "rank", "period"])?;
        if let Some(s) = o.get("system") {
            code(
                s,
                &format!("{p}.system"),
                &["phone", "fax", "email", "pager", "url", "sms", "other"],
            )?;
        }
        if let Some(s) = o.get("value") {
            string(s, &format!("{p}.value"))?;
        }
        if let Some(u) = o.get("use") {
            code(
                u,
                &format!("{p}.use"),
                &["home", "work", "temp", "old", "mobile"],
            )?;
        }
    }
    Ok(())
}

/// `Address[]`: the shape checked, kept as written.
pub(super) fn addresses(v: &Json, path: &str) -> Result<(), FhirError> {
    for (i, a) in array(v, path)?.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let o = object(a, &p)?;
        only_known(
            o,
            &p,
            &[
                "use",
                "type",
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
                "period",
            ],
        )?;
        for (k, val) in o {
            match k.as_str() {
                "line" => {
                    for (j, l) in array(val, &format!("{p}.line"))?.iter().enumerate() {
                        string(l, &format!("{p}.line[{j}]"))?;
                    }
                }
                "period" => {
                    period(val, &format!("{p}.period"))?;
                }
                "extension" => {}
                _ => {
                    string(val, &format!("{p}.{k}"))?;
                }
            }
        }
    }
    Ok(())
}

/// A `Reference` to one of `targets`: `Type/id` (relative; absolute URLs to other servers are
/// refused, since Osler could not check them). Returns (kind, id) and records the reference.
pub(super) fn reference(
    v: &Json,
    path: &str,
    targets: &[Kind],
    param: Option<&str>,
    found: &mut Found,
) -> Result<(Kind, String), FhirError> {
    let o = object(v, path)?;
    only_known(o, path, &["reference", "display", "type", "identifier"])?;
    let p = format!("{path}.reference");
    let text = string(
        o.get("reference")
            .ok_or_else(|| invalid(&p, "a reference to a resource on this server is needed"))?,
        &p,
    )?;
    let names: Vec<&str> = targets.iter().map(|k| k.as_str()).collect();
    let bad = || {
        invalid(
            &p,
            format!(
                "{:?} is not a reference to {} on this server (write Type/id)",
                text.chars().take(80).collect::<String>(),
                names.join(" or ")
            ),
        )
    };
    let (ty, id) = text.split_once('/').ok_or_else(bad)?;
    let kind = Kind::parse(ty)
        .filter(|k| targets.contains(k))
        .ok_or_else(bad)?;
    let id = Id::parse(id).ok_or_else(bad)?;
    if let Some(param) = param {
        found.term(param, format!("{ty}/{id}"));
    }
    found.refs.push(Ref {
        kind,
        id: id.to_string(),
        path: p,
    });
    Ok((kind, id.to_string()))
}

/// A FHIR `date` (YYYY, YYYY-MM or YYYY-MM-DD).
pub(super) fn date<'a>(v: &'a Json, path: &str) -> Result<(&'a str, i64), FhirError> {
    let s = string(v, path)?;
    let ok = matches!(s.len(), 4 | 7 | 10) && !s.contains('T');
    let span = parse_span(s).ok().filter(|_| ok).ok_or_else(|| {
        invalid(
            path,
            format!("{s:?} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)"),
        )
    })?;
    Ok((s, span.start_ms))
}

/// A `Period`: start and end as FHIR dateTimes, start not after end. Returns the half-open
/// `[start, end)` in UTC ms: a full instant ends there; a date ends at the end of its span.
pub(super) fn period(v: &Json, path: &str) -> Result<(Option<i64>, Option<i64>), FhirError> {
    let o = object(v, path)?;
    only_known(o, path, &["start", "end"])?;
    let when = |k: &str, end: bool| -> Result<Option<i64>, FhirError> {
        let Some(t) = o.get(k) else { return Ok(None) };
        let p = format!("{path}.{k}");
        let s = string(t, &p)?;
        let span = parse_span(s).map_err(|e| invalid(&p, e.to_string()))?;
        let instant = s.contains('T');
        Ok(Some(if end && !instant {
            span.end_ms
        } else {
            span.start_ms
        }))
    };
    let (start, end) = (when("start", false)?, when("end", true)?);
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(invalid(
            &format!("{path}.end"),
            "the period ends before it starts",
        ));
    }
    Ok((start, end))
}
