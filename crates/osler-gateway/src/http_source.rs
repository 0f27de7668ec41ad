//! The HTTP source and the gateway's own endpoints:
//! `POST /readings` (one reading or an array, format in [`crate::input`]), `GET /status`,
//! `GET /quarantine`, `GET /healthz`.
//!
//! A reading is answered only after it is in the outbox on disk. Invalid readings fail alone:
//! the answer lists what was accepted and why each rejected one was rejected.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::{Shared, now_ms};

pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/readings", post(readings))
        .route("/status", get(status))
        .route("/quarantine", get(quarantine))
        .route("/alerts", get(alerts))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
        .with_state(shared)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn readings(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let now = now_ms();
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let device = match shared.devices.authenticate(auth) {
        Ok(d) => d,
        Err(why) => {
            let mut r = answer(
                StatusCode::UNAUTHORIZED,
                json!({ "error": match why {
                    crate::devices::Unauthenticated::Missing => "a device sends its own token: Authorization: Bearer … (osler gateway --add-device ID makes one)",
                    crate::devices::Unauthenticated::Unknown => "this device token is not enrolled at this gateway",
                }, "accepted": 0 }),
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"osler-gateway\""),
            );
            return r;
        }
    };
    let items = match crate::input::parse_message(&body, now) {
        Ok(items) => items,
        Err(reason) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({ "error": reason, "accepted": 0 }),
            );
        }
    };
    let mut readings = Vec::with_capacity(items.len());
    let mut by_device = Vec::new();
    let mut alerts = Vec::new();
    let mut rejected = Vec::new();
    let mut quarantine = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let admitted = item
            .map_err(|reason| crate::items::Refusal {
                reason,
                quarantine: false,
            })
            .and_then(|item| {
                crate::items::admit(item, device.as_deref(), now, &shared.assignments)
            });
        match admitted {
            Ok(crate::items::Admitted::Reading(r)) => readings.push(r),
            Ok(crate::items::Admitted::ByDevice(r)) => by_device.push(r),
            Ok(crate::items::Admitted::Alert(a)) => alerts.push(a),
            // An item its device may not send (another device's, another patient's) is kept
            // in quarantine with the reason, not stored.
            Err(r) if r.quarantine => {
                quarantine.push(crate::outbox::Quarantined {
                    id: 0,
                    received_ms: now,
                    source: format!("http device {}", device.as_deref().unwrap_or("?")),
                    payload: crate::input::element(&body, index).unwrap_or_else(|| body.to_vec()),
                    reason: r.reason.clone(),
                });
                rejected.push(json!({ "index": index, "reason": r.reason, "quarantined": true }));
            }
            Err(r) => rejected.push(json!({ "index": index, "reason": r.reason })),
        }
    }
    shared.status.received.fetch_add(
        (readings.len() + by_device.len() + alerts.len() + rejected.len()) as u64,
        Ordering::Relaxed,
    );
    shared
        .status
        .rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    let accepted = readings.len() + by_device.len() + alerts.len();
    let unit = crate::intake::Unit {
        readings,
        by_device,
        alerts,
        quarantine,
        request: Some(crate::request_key(&[&body])),
    };
    let outcome = if unit.is_empty() {
        Ok(())
    } else {
        shared.intake.ingest_one(unit, now).await
    };
    match outcome {
        Ok(()) => {}
        Err(e) if e.is_full() => {
            return answer(
                StatusCode::INSUFFICIENT_STORAGE,
                json!({ "error": e.to_string(), "accepted": 0 }),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "outbox ingest failed");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": e.to_string(), "accepted": 0 }),
            );
        }
    }
    let status = if accepted == 0 && !rejected.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    answer(
        status,
        json!({ "accepted": accepted, "rejected": rejected }),
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || {
        let mut report = s.status.report(&s.gateway, &s.intake, &s.edge, now_ms());
        // How many device assignments (one per name a device goes by) the gateway knows.
        report["assignments"] = json!(
            s.assignments
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len()
        );
        report
    })
    .await
    {
        Ok(report) => answer(StatusCode::OK, report),
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "status failed" }),
        ),
    }
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn quarantine(State(shared): State<Arc<Shared>>, Query(q): Query<Limit>) -> Response {
    let s = shared.clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    match tokio::task::spawn_blocking(move || s.outbox().quarantined(limit)).await {
        Ok(Ok(items)) => answer(StatusCode::OK, json!({ "items": items })),
        _ => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "cannot read the quarantine" }),
        ),
    }
}

async fn alerts(State(shared): State<Arc<Shared>>) -> Response {
    answer(StatusCode::OK, json!({ "alerts": shared.alerts.recent() }))
}
