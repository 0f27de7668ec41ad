//! Turning results into HTTP responses: FHIR JSON with the right content type, and every error
//! as an OperationOutcome with the status its kind calls for.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use osler_fhir::{ErrorKind, FhirError};
use serde_json::Value;

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A FHIR JSON response.
pub(crate) fn fhir(status: StatusCode, body: &Value) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    (status, headers, body.to_string()).into_response()
}

/// An error the API answers with an OperationOutcome.
#[derive(Debug)]
pub(crate) struct ApiError(pub FhirError);

impl From<FhirError> for ApiError {
    fn from(e: FhirError) -> Self {
        ApiError(e)
    }
}

impl From<osler_store::StoreError> for ApiError {
    fn from(e: osler_store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError(match e {
            osler_store::StoreError::DiskFull => FhirError::new(
                ErrorKind::InsufficientStorage,
                "the hub's disk is full; nothing from this request was stored, please retry later",
            ),
            _ => FhirError::new(
                ErrorKind::Internal,
                "the store failed; nothing from this request was acknowledged, please retry",
            ),
        })
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        tracing::error!(error = %e, "blocking task failed");
        ApiError(FhirError::new(ErrorKind::Internal, "internal error"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        fhir(status, &self.0.to_outcome())
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError(FhirError::new(
        ErrorKind::NotFound,
        "no such endpoint; the FHIR API is under /fhir (see /fhir/metadata)",
    ))
}

pub(crate) async fn method_not_allowed() -> Response {
    let outcome = osler_fhir::outcome::outcome(
        "error",
        "not-supported",
        "this method is not supported on this endpoint (see /fhir/metadata)",
        None,
    );
    fhir(StatusCode::METHOD_NOT_ALLOWED, &outcome)
}
