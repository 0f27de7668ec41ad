//! Bundles: `transaction` and `batch` requests in, their responses and `searchset`s out.

use osler_core::{Identifier, ReadingInput};
use serde_json::{Value as Json, json};

use crate::observation::parse_observation;
use crate::outcome::{ErrorKind, FhirError};
use crate::search::parse_query;

/// Entries in one Bundle at most: a bound on the work one request can ask for.
pub const MAX_ENTRIES: usize = 10_000;

/// How a request Bundle is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    /// All entries succeed together or none is stored.
    Transaction,
    /// Each entry succeeds or fails alone.
    Batch,
}

impl BundleKind {
    pub fn response_type(self) -> &'static str {
        match self {
            BundleKind::Transaction => "transaction-response",
            BundleKind::Batch => "batch-response",
        }
    }
}

/// One entry's request: a reading to create, conditionally on an identifier.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryRequest {
    pub input: ReadingInput,
    pub if_none_exist: Option<Identifier>,
}

/// One entry of a request Bundle.
#[derive(Clone, Debug, PartialEq)]
// Creates are nearly every entry of a Bundle; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum BundleEntry {
    /// POST an Observation.
    Create(EntryRequest),
    /// GET a URL relative to the base (`Patient/anna`, `Observation?patient=anna&code=...`):
    /// clients batch their reads. Batch Bundles only.
    Read { url: String },
    /// POST or PUT a registry resource (Patient, Practitioner, ...), checked by the caller with
    /// [`crate::registry::prepare`].
    Resource(ResourceEntry),
}

/// A registry write inside a Bundle, as the entry's request gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceEntry {
    pub kind: osler_registry::Kind,
    pub resource: Json,
    /// `PUT Kind/{id}`: the id; `None` for a POST or a conditional PUT.
    pub id: Option<String>,
    /// `PUT Kind?search`: the search parameters of a conditional update.
    pub condition: Option<Vec<(String, String)>>,
    /// `request.ifNoneExist` of a POST.
    pub if_none_exist: Option<Vec<(String, String)>>,
    /// `request.ifMatch`.
    pub if_match: Option<String>,
}

/// A parsed request Bundle; each entry parsed on its own so that one bad entry in a batch
/// fails alone.
#[derive(Clone, Debug)]
pub struct RequestBundle {
    pub kind: BundleKind,
    pub entries: Vec<Result<BundleEntry, FhirError>>,
}

/// Parses `If-None-Exist` (or `entry.request.ifNoneExist`): only `identifier=system|value`.
pub fn parse_if_none_exist(text: &str) -> Result<Identifier, FhirError> {
    let bad = || {
        FhirError::new(
            ErrorKind::BadParameter,
            format!(
                "If-None-Exist must be identifier=system|value, found {:?}",
                text.chars().take(80).collect::<String>()
            ),
        )
    };
    let params = parse_query(text.trim_start_matches('?'))?;
    match params.as_slice() {
        [(name, value)] if name == "identifier" => {
            let (system, v) = value.split_once('|').ok_or_else(bad)?;
            if system.is_empty() || v.is_empty() {
                return Err(bad());
            }
            Ok(Identifier {
                system: system.to_owned(),
                value: v.to_owned(),
            })
        }
        _ => Err(bad()),
    }
}

/// Resolves the names a transaction's entries give each other before the server has given them
/// ids: each registry resource created by `POST Kind` with a `urn:uuid:` (or `urn:oid:`)
/// `fullUrl` gets the id `new_id` makes (its request becomes `PUT Kind/{id}`: the same create,
/// with the id chosen), a `PUT Kind/{id}` entry's `fullUrl` stands for `Kind/{id}`, and every
/// `reference` in the Bundle to such a `fullUrl` is rewritten to `Kind/{id}`. A conditional create
/// (`ifNoneExist`) keeps its placeholder: which resource it stands for is known only when the
/// store runs it, and a reference to it is refused by the checks like any unknown reference.
/// Batches are left alone: their entries do not depend on each other.
pub fn resolve_placeholders<E>(
    bundle: &mut Json,
    mut new_id: impl FnMut() -> Result<String, E>,
) -> Result<(), E> {
    if bundle.get("type").and_then(Json::as_str) != Some("transaction") {
        return Ok(());
    }
    let Some(entries) = bundle.get_mut("entry").and_then(Json::as_array_mut) else {
        return Ok(());
    };
    let mut names: std::collections::HashMap<String, String> = Default::default();
    for e in entries.iter_mut() {
        let Some(full) = e.get("fullUrl").and_then(Json::as_str) else {
            continue;
        };
        if !(full.starts_with("urn:uuid:") || full.starts_with("urn:oid:")) {
            continue;
        }
        let full = full.to_owned();
        let Some(req) = e.get_mut("request").and_then(Json::as_object_mut) else {
            continue;
        };
        let method = req.get("method").and_then(Json::as_str).unwrap_or("");
        let url = req
            .get("url")
            .and_then(Json::as_str)
            .unwrap_or("")
            .trim_end_matches('/');
        let kind = url
            .split(['/', '?'])
            .next()
            .and_then(osler_registry::Kind::parse);
        let Some(kind) = kind else { continue };
        match method {
            "POST" if url == kind.as_str() && !req.contains_key("ifNoneExist") => {
                let id = new_id()?;
                req.insert("method".into(), json!("PUT"));
                req.insert("url".into(), json!(format!("{kind}/{id}")));
                names.insert(full, format!("{kind}/{id}"));
            }
            "PUT" if url.len() > kind.as_str().len() + 1 && !url.contains('?') => {
                names.insert(full, url.to_owned());
            }
            _ => {}
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    fn rewrite(v: &mut Json, names: &std::collections::HashMap<String, String>) {
        match v {
            Json::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if k == "reference"
                        && let Some(to) = x.as_str().and_then(|r| names.get(r))
                    {
                        *x = json!(to);
                    } else {
                        rewrite(x, names);
                    }
                }
            }
            Json::Array(a) => a.iter_mut().for_each(|x| rewrite(x, names)),
            _ => {}
        }
    }
    for e in entries.iter_mut() {
        if let Some(r) = e.get_mut("resource") {
            rewrite(r, &names);
        }
    }
    Ok(())
}

/// Parses a `transaction` or `batch` Bundle of Observation creates.
pub fn parse_bundle(v: &Json, received_ms: i64) -> Result<RequestBundle, FhirError> {
    let o = v.as_object().ok_or_else(|| {
        FhirError::new(
            ErrorKind::Malformed,
            "the body must be a JSON object (a FHIR Bundle)",
        )
    })?;
    match o.get("resourceType").and_then(Json::as_str) {
        Some("Bundle") => {}
        other => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "resourceType",
                format!("POST to the base URL takes a Bundle, found {other:?}"),
            ));
        }
    }
    let kind = match o.get("type").and_then(Json::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        other => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "Bundle.type",
                format!("must be \"transaction\" or \"batch\", found {other:?}"),
            ));
        }
    };
    let entries = match o.get("entry") {
        None => &Vec::new(),
        Some(Json::Array(e)) => e,
        Some(_) => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "Bundle.entry",
                "must be an array",
            ));
        }
    };
    if entries.len() > MAX_ENTRIES {
        return Err(FhirError::at(
            ErrorKind::TooLarge,
            "Bundle.entry",
            format!(
                "{} entries; at most {MAX_ENTRIES} per Bundle",
                entries.len()
            ),
        ));
    }
    let entries = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            parse_entry(e, kind, received_ms)
                .map_err(|err| err.within(&format!("Bundle.entry[{i}]")))
        })
        .collect();
    Ok(RequestBundle { kind, entries })
}

fn parse_entry(e: &Json, kind: BundleKind, received_ms: i64) -> Result<BundleEntry, FhirError> {
    let invalid = |path: &str, msg: &str| FhirError::at(ErrorKind::Invalid, path, msg);
    let req = e
        .get("request")
        .ok_or_else(|| invalid("request", "is required in a transaction or batch"))?;
    let method = req.get("method").and_then(Json::as_str);
    let url = req.get("url").and_then(Json::as_str).unwrap_or("");
    if method == Some("GET") {
        if kind == BundleKind::Transaction {
            return Err(FhirError::at(
                ErrorKind::NotSupported,
                "request.method",
                "GET entries are supported in batch Bundles; a transaction holds writes only",
            ));
        }
        let relative = !url.is_empty() && !url.contains("://") && !url.starts_with('/');
        if !relative {
            return Err(invalid(
                "request.url",
                "a read is a URL relative to the base: Patient/anna or Observation?patient=anna",
            ));
        }
        return Ok(BundleEntry::Read {
            url: url.to_owned(),
        });
    }
    let target = url.split(['/', '?']).next().unwrap_or("");
    if let Some(kind) = osler_registry::Kind::parse(target) {
        return resource_entry(e, req, kind, method, url);
    }
    if method != Some("POST") || url.trim_end_matches('/').rsplit('/').next() != Some("Observation")
    {
        return Err(FhirError::at(
            ErrorKind::NotSupported,
            "request",
            format!(
                "a Bundle may POST Observations (and, in a batch, GET); found {} {url:?}",
                method.unwrap_or("no method")
            ),
        ));
    }
    let if_none_exist = match req.get("ifNoneExist") {
        None => None,
        Some(Json::String(s)) => {
            Some(parse_if_none_exist(s).map_err(|e| e.within("request.ifNoneExist"))?)
        }
        Some(_) => return Err(invalid("request.ifNoneExist", "must be a string")),
    };
    let resource = e
        .get("resource")
        .ok_or_else(|| invalid("resource", "is required for a POST"))?;
    let input = parse_observation(resource, received_ms).map_err(|mut err| {
        // "Observation.valueQuantity" inside an entry reads "resource.valueQuantity".
        err.expression = Some(match err.expression.take() {
            Some(x) => match x.strip_prefix("Observation") {
                Some(rest) => format!("resource{rest}"),
                None => format!("resource.{x}"),
            },
            None => "resource".to_owned(),
        });
        if err.kind == ErrorKind::Malformed {
            err.kind = ErrorKind::Invalid;
        }
        err
    })?;
    Ok(BundleEntry::Create(EntryRequest {
        input,
        if_none_exist,
    }))
}

/// A registry entry: `POST Kind` (with `ifNoneExist`), `PUT Kind/{id}` (with `ifMatch`) or
/// `PUT Kind?search`.
fn resource_entry(
    e: &Json,
    req: &Json,
    kind: osler_registry::Kind,
    method: Option<&str>,
    url: &str,
) -> Result<BundleEntry, FhirError> {
    let invalid = |path: &str, msg: String| FhirError::at(ErrorKind::Invalid, path, msg);
    let resource = e
        .get("resource")
        .ok_or_else(|| invalid("resource", format!("is required to write a {kind}")))?
        .clone();
    let text = |k: &str| -> Result<Option<String>, FhirError> {
        match req.get(k) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("request.{k}"), "must be a string".into())),
        }
    };
    let rest = &url[kind.as_str().len()..];
    let mut entry = ResourceEntry {
        kind,
        resource,
        id: None,
        condition: None,
        if_none_exist: None,
        if_match: text("ifMatch")?,
    };
    match (method, rest) {
        (Some("POST"), "" | "/") => {
            if let Some(q) = text("ifNoneExist")? {
                entry.if_none_exist = Some(
                    parse_query(q.trim_start_matches('?'))
                        .map_err(|e| e.within("request.ifNoneExist"))?,
                );
            }
        }
        (Some("PUT"), r) if r.starts_with('/') && r.len() > 1 && !r[1..].contains(['/', '?']) => {
            entry.id = Some(r[1..].to_owned());
        }
        (Some("PUT"), r) if r.starts_with('?') && r.len() > 1 => {
            entry.condition = Some(parse_query(&r[1..]).map_err(|e| e.within("request.url"))?);
        }
        _ => {
            return Err(FhirError::at(
                ErrorKind::NotSupported,
                "request",
                format!(
                    "a Bundle may POST {kind}, PUT {kind}/{{id}} or PUT {kind}?search; found {} {:?}",
                    method.unwrap_or("no method"),
                    url.chars().take(80).collect::<String>()
                ),
            ));
        }
    }
    Ok(BundleEntry::Resource(entry))
}

/// One entry of a transaction or batch response.
pub fn response_entry(
    status: &str,
    location: Option<&str>,
    resource: Option<Json>,
    outcome: Option<Json>,
) -> Json {
    let mut response = json!({ "status": status });
    if let Some(l) = location {
        response["location"] = json!(l);
        response["etag"] = json!("W/\"1\"");
    }
    if let Some(o) = outcome {
        response["outcome"] = o;
    }
    let mut entry = json!({ "response": response });
    if let Some(r) = resource {
        entry["resource"] = r;
    }
    entry
}

/// A transaction-response or batch-response Bundle.
pub fn response_bundle(kind: BundleKind, entries: Vec<Json>) -> Json {
    json!({
        "resourceType": "Bundle",
        "type": kind.response_type(),
        "entry": entries,
    })
}

/// A searchset Bundle. `links` are (relation, url) pairs; entries are (fullUrl, resource).
pub fn searchset(
    total: Option<u64>,
    links: &[(&str, String)],
    entries: Vec<(String, Json)>,
) -> Json {
    searchset_with(total, links, entries, Vec::new())
}

/// A searchset Bundle with resources `_include` brought in (search mode `include`) after the
/// matches.
pub fn searchset_with(
    total: Option<u64>,
    links: &[(&str, String)],
    entries: Vec<(String, Json)>,
    included: Vec<(String, Json)>,
) -> Json {
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
    });
    if let Some(t) = total {
        b["total"] = json!(t);
    }
    b["link"] = json!(
        links
            .iter()
            .map(|(rel, url)| json!({ "relation": rel, "url": url }))
            .collect::<Vec<_>>()
    );
    if !entries.is_empty() || !included.is_empty() {
        let mode = |m: &'static str| {
            move |(full_url, resource): (String, Json)| {
                json!({
                    "fullUrl": full_url,
                    "resource": resource,
                    "search": { "mode": m },
                })
            }
        };
        b["entry"] = json!(
            entries
                .into_iter()
                .map(mode("match"))
                .chain(included.into_iter().map(mode("include")))
                .collect::<Vec<_>>()
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(resource: Json, if_none_exist: Option<&str>) -> Json {
        let mut req = json!({"method": "POST", "url": "Observation"});
        if let Some(c) = if_none_exist {
            req["ifNoneExist"] = json!(c);
        }
        json!({"fullUrl": "urn:uuid:1", "resource": resource, "request": req})
    }

    fn hr(v: f64) -> Json {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2025-06-15T10:00:00Z",
            "valueQuantity": {"value": v, "system": "http://unitsofmeasure.org", "code": "/min"},
        })
    }

    #[test]
    fn entries_fail_alone_with_their_location() {
        let mut bad = hr(70.0);
        bad["valueQuantity"]["value"] = json!("x");
        let b = json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                entry(hr(70.0), Some("identifier=urn:x|1")),
                entry(bad, None),
                {"request": {"method": "DELETE", "url": "Observation/1"}},
                {"request": {"method": "GET", "url": "Patient/anna"}},
                {"request": {"method": "GET", "url": "http://elsewhere/Patient/anna"}},
            ],
        });
        let parsed = parse_bundle(&b, 0).unwrap();
        assert_eq!(parsed.kind, BundleKind::Batch);
        let Ok(BundleEntry::Create(first)) = &parsed.entries[0] else {
            panic!("{:?}", parsed.entries[0]);
        };
        assert_eq!(first.if_none_exist.as_ref().unwrap().value, "1");
        assert_eq!(
            parsed.entries[3],
            Ok(BundleEntry::Read {
                url: "Patient/anna".into()
            })
        );
        assert!(parsed.entries[4].is_err());
        let e = parsed.entries[1].as_ref().unwrap_err();
        assert_eq!(
            e.expression.as_deref(),
            Some("Bundle.entry[1].resource.valueQuantity.value")
        );
        let e = parsed.entries[2].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotSupported);
    }

    #[test]
    fn if_none_exist_takes_only_an_identifier() {
        let i = parse_if_none_exist("identifier=urn%3Aosler%7Ca|b").unwrap();
        assert_eq!((i.system.as_str(), i.value.as_str()), ("urn:osler", "a|b"));
        assert!(parse_if_none_exist("identifier=abc").is_err());
        assert!(parse_if_none_exist("code=123").is_err());
        assert!(parse_if_none_exist("identifier=a|b&code=1").is_err());
    }

    #[test]
    fn rejects_what_is_not_a_request_bundle() {
        assert_eq!(
            parse_bundle(&json!("x"), 0).unwrap_err().kind,
            ErrorKind::Malformed
        );
        let e =
            parse_bundle(&json!({"resourceType": "Bundle", "type": "collection"}), 0).unwrap_err();
        assert_eq!(e.expression.as_deref(), Some("Bundle.type"));
        let e = parse_bundle(&json!({"resourceType": "Observation"}), 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
    }
}
