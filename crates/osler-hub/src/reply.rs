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

/// An HTTP date (RFC 9110 IMF-fixdate: `Tue, 01 Dec 2026 12:00:00 GMT`) for `Last-Modified`.
pub(crate) fn http_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.rem_euclid(86_400_000) / 1000;
    let (y, m, d) = osler_core::time::civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m as usize).saturating_sub(1) % 12];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(super::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // 2026-12-01T12:34:56Z
        assert_eq!(
            super::http_date(1_796_128_496_000),
            "Tue, 01 Dec 2026 12:34:56 GMT"
        );
    }
}
