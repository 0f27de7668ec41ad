//! What every `/fhir` request and response agree on before any handler runs: the client must
//! take JSON (`Accept`, `_format`: else 406), a body must be FHIR JSON (`Content-Type`: else
//! 415), and the response is cut down (`_summary=true|text|data`, `_elements`) and pretty-printed
//! (`_pretty=true`) as asked, the same way for every interaction.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use osler_fhir::shape::{Subset, accepts_json, apply_subset, is_json_content, subset_of};
use osler_fhir::{ErrorKind, FhirError, parse_query};

use crate::reply::ApiError;

/// Largest response body re-shaped in memory (a page of 1,000 Observations is far below).
const MAX_SHAPED: usize = 256 << 20;

pub(crate) async fn fhir_negotiation(req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/fhir") {
        return next.run(req).await;
    }
    let params = parse_query(req.uri().query().unwrap_or("")).unwrap_or_default();
    let format = params
        .iter()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.as_str());
    let takes_json = match format {
        Some(f) => matches!(f, "json" | "application/json" | "application/fhir+json"),
        None => req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(accepts_json),
    };
    if !takes_json {
        return ApiError(FhirError::new(
            ErrorKind::NotAcceptable,
            "Osler serves FHIR JSON only (application/fhir+json); ask for it in Accept or _format",
        ))
        .into_response();
    }
    let writes = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|n| n != "0");
    if writes && has_body {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !ct.is_some_and(is_json_content) {
            return ApiError(FhirError::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "the body must be FHIR JSON: Content-Type application/fhir+json (got {})",
                    ct.map_or("none".to_owned(), |c| format!(
                        "{:?}",
                        c.chars().take(60).collect::<String>()
                    ))
                ),
            ))
            .into_response();
        }
    }
    let subset = match subset_of(&params) {
        Ok(s) => s,
        Err(e) => return ApiError(e).into_response(),
    };
    let pretty = params.iter().any(|(k, v)| k == "_pretty" && v == "true");
    let response = next.run(req).await;
    if subset == Subset::Whole && !pretty {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_SHAPED).await else {
        return ApiError(FhirError::new(
            ErrorKind::Internal,
            "the response could not be shaped",
        ))
        .into_response();
    };
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        // Not JSON (a 304 has no body): as it was.
        return Response::from_parts(parts, Body::from(bytes));
    };
    apply_subset(&mut json, &subset);
    let text = if pretty {
        serde_json::to_string_pretty(&json)
    } else {
        serde_json::to_string(&json)
    };
    let Ok(text) = text else {
        return ApiError(FhirError::new(
            ErrorKind::Internal,
            "the response could not be shaped",
        ))
        .into_response();
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(text))
}
