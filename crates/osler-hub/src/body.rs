//! Reading request bodies within a size limit.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit.
    TooLarge,
    /// The connection failed mid-body.
    Unreadable,
}

/// Reads the whole body if it is at most `max` bytes.
///
/// An oversized body is still read and thrown away up to a bound (four times the limit, at
/// least 64 MiB), so that the client, which is usually still sending, gets to read the error
/// instead of a connection reset.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let drain_limit = (max as u64).saturating_mul(4).max(64 << 20);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(max as u64) as usize);
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > max as u64 {
                bytes = Vec::new();
                if seen > drain_limit {
                    break;
                }
            } else {
                bytes.extend_from_slice(&data);
            }
        }
    }
    if seen > max as u64 {
        return Err(BodyError::TooLarge);
    }
    Ok(bytes)
}

/// The fields of an `application/x-www-form-urlencoded` body (the token endpoint's, the
/// dashboard's forms), in order: `+` is a space there, as browsers and OAuth clients send it,
/// and `%2B` a plus. Unreadable pairs leave an empty list.
pub(crate) fn form_fields(bytes: &[u8]) -> Vec<(String, String)> {
    osler_fhir::parse_query(&String::from_utf8_lossy(bytes).replace('+', "%20")).unwrap_or_default()
}

#[cfg(test)]
mod form_tests {
    #[test]
    fn a_plus_is_a_space_and_an_encoded_plus_a_plus() {
        assert_eq!(
            super::form_fields(b"scope=system%2FObservation.rs+system%2FFlag.s&note=a%2Bb"),
            vec![
                (
                    "scope".to_owned(),
                    "system/Observation.rs system/Flag.s".to_owned()
                ),
                ("note".to_owned(), "a+b".to_owned()),
            ]
        );
    }
}
