//! The audit log over HTTP: its signed checkpoint, inclusion and consistency proofs and its
//! verifier key for anyone (they carry hashes only), and its entries as FHIR AuditEvent for
//! administrators.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use osler_audit::merkle;
use osler_audit::note;
use osler_auth::{AUDIT_EVENT, Interaction, Policy};
use osler_fhir::{ErrorKind, FhirError, parse_query};
use serde_json::{Value, json};

use crate::AppState;
use crate::access::Routes;
use crate::fhir_api::base_url;
use crate::reply::{ApiError, fhir};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get("/audit/checkpoint", Policy::Public, checkpoint)
        .get("/audit/key", Policy::Public, key)
        .get("/audit/proof/inclusion", Policy::Public, inclusion)
        .get("/audit/proof/consistency", Policy::Public, consistency)
        .get(
            "/fhir/AuditEvent",
            Policy::Resource(AUDIT_EVENT, Interaction::Search),
            search,
        )
        .get(
            "/fhir/AuditEvent/{id}",
            Policy::Resource(AUDIT_EVENT, Interaction::Read),
            read,
        )
}

fn b64(h: &merkle::Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

fn text(body: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], body).into_response()
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(FhirError::new(ErrorKind::BadParameter, msg))
}

/// The head of the log as a signed note: what a third party keeps to check later that the
/// log only grew.
async fn checkpoint(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let leaves = tokio::task::spawn_blocking(move || {
        let size = store.audit_size()?;
        store.audit_leaves(size)
    })
    .await??;
    let origin = note::origin(&state.audit_key.verifying_key());
    let body = note::checkpoint_text(&origin, leaves.len() as u64, &merkle::root(&leaves));
    Ok(text(note::signed_note(&state.audit_key, &body)))
}

async fn key(State(state): State<Arc<AppState>>) -> Response {
    text(format!(
        "{}\n",
        note::verifier_key(&state.audit_key.verifying_key())
    ))
}

fn numbers(raw: Option<&str>, names: [&str; 2]) -> Result<[u64; 2], ApiError> {
    let params = parse_query(raw.unwrap_or(""))?;
    let mut out = [None, None];
    for (k, v) in &params {
        let i = names.iter().position(|n| n == k).ok_or_else(|| {
            bad(format!(
                "unknown parameter {k:?}; expected {} and {}",
                names[0], names[1]
            ))
        })?;
        out[i] = Some(
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k} must be a whole number")))?,
        );
    }
    match out {
        [Some(a), Some(b)] => Ok([a, b]),
        _ => Err(bad(format!("{} and {} are required", names[0], names[1]))),
    }
}

/// RFC 9162 §2.1.3 inclusion proof of entry `entry` (1-based) in the tree of `size` entries.
async fn inclusion(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let [entry, size] = numbers(raw.as_deref(), ["entry", "size"])?;
    let store = state.store.clone();
    let leaves = tokio::task::spawn_blocking(move || store.audit_leaves(size)).await??;
    if entry == 0 || entry > size || size > leaves.len() as u64 {
        return Err(bad(format!(
            "entry must be within 1..=size and size within the log's {} entries",
            leaves.len()
        )));
    }
    let index = (entry - 1) as usize;
    let proof = merkle::inclusion_proof(index, &leaves);
    Ok(axum::Json(json!({
        "entry": entry,
        "leaf_index": index,
        "tree_size": size,
        "leaf_hash": b64(&leaves[index]),
        "root_hash": b64(&merkle::root(&leaves)),
        "proof": proof.iter().map(b64).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// RFC 9162 §2.1.4 consistency proof between the trees of `from` and `to` entries.
async fn consistency(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let [from, to] = numbers(raw.as_deref(), ["from", "to"])?;
    let store = state.store.clone();
    let leaves = tokio::task::spawn_blocking(move || store.audit_leaves(to)).await??;
    if from == 0 || from > to || to > leaves.len() as u64 {
        return Err(bad(format!(
            "need 1 <= from <= to <= {} (the log's size)",
            leaves.len()
        )));
    }
    let proof = merkle::consistency_proof(from as usize, &leaves);
    Ok(axum::Json(json!({
        "from": from,
        "to": to,
        "from_root": b64(&merkle::root(&leaves[..from as usize])),
        "to_root": b64(&merkle::root(&leaves)),
        "proof": proof.iter().map(b64).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn read(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError(FhirError::new(
            ErrorKind::NotFound,
            format!(
                "AuditEvent/{} is not known",
                id.chars().take(24).collect::<String>()
            ),
        ))
    };
    let n: u64 = id.parse().map_err(|_| not_found())?;
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.audit_rows(n, n)).await??;
    let (seq, entry, _) = rows.into_iter().next().ok_or_else(not_found)?;
    let v = osler_fhir::audit::served(seq, &entry).ok_or_else(not_found)?;
    Ok(fhir(StatusCode::OK, &v))
}

/// Newest first; `_count` (default 50, at most 1000) and `_before` (an entry number, for the
/// next page).
async fn search(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let (mut count, mut before) = (50u64, None::<u64>);
    for (k, v) in &params {
        let n = v
            .parse::<u64>()
            .map_err(|_| bad(format!("{k} must be a whole number")))?;
        match k.as_str() {
            "_count" => count = n.min(1000),
            "_before" => before = Some(n),
            _ => {
                return Err(bad(format!(
                    "unknown parameter {k:?}; AuditEvent takes _count and _before"
                )));
            }
        }
    }
    let store = state.store.clone();
    let (size, rows) = tokio::task::spawn_blocking(move || {
        let size = store.audit_size()?;
        let top = before.map_or(size, |b| b.saturating_sub(1).min(size));
        let from = top.saturating_sub(count.max(1) - 1).max(1);
        let rows = if top == 0 || count == 0 {
            Vec::new()
        } else {
            store.audit_rows(from, top)?
        };
        Ok::<_, osler_store::StoreError>((size, rows))
    })
    .await??;
    let base = base_url(&state, &headers);
    let oldest = rows.first().map(|r| r.0);
    let entries: Vec<(String, Value)> = rows
        .iter()
        .rev()
        .filter_map(|(seq, e, _)| {
            Some((
                format!("{base}/AuditEvent/{seq}"),
                osler_fhir::audit::served(*seq, e)?,
            ))
        })
        .collect();
    let mut links = vec![("self", format!("{base}/AuditEvent?_count={count}"))];
    if let Some(o) = oldest.filter(|&o| o > 1) {
        links.push((
            "next",
            format!("{base}/AuditEvent?_count={count}&_before={o}"),
        ));
    }
    Ok(fhir(
        StatusCode::OK,
        &osler_fhir::bundle::searchset(Some(size), &links, entries),
    ))
}
