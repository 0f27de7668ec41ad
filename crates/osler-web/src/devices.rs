//! Devices and gateways: when each last gave data, against how often it should.

use maud::html;

use crate::patient::DeviceView;
use crate::{Nav, Page, age, clock, label};

/// A gateway as the hub knows it.
#[derive(Clone, Debug)]
pub struct GatewayView {
    pub id: String,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    /// When its last signed batch arrived.
    pub last_batch_ms: Option<i64>,
}

/// A gateway whose devices report uploads at least every few minutes (the edge sends a
/// heartbeat reading per stream); ten minutes without a batch means the gateway, its network
/// or its devices are silent. Osler's choice (no standard sets it).
const SILENT_MS: i64 = 10 * 60_000;

/// Patients' devices (grouped by patient) and, for administrators, the gateways.
pub fn page(
    patients: &[(String, Vec<DeviceView>)],
    gateways: Option<&[GatewayView]>,
    now_ms: i64,
) -> Page {
    let main = html! {
        h1 { "Devices and gateways" }
        h2 { "Devices" }
        @if patients.is_empty() { p { "No device of your patients has given data." } }
        @else {
            table {
                thead { tr {
                    th scope="col" { "Patient" } th scope="col" { "Device" } th scope="col" { "Measures" }
                    th scope="col" { "Last contact" } th scope="col" { "Expected every" } th scope="col" { "State" }
                } }
                tbody {
                    @for (p, ds) in patients {
                        @for d in ds {
                            tr {
                                td { a href={"/ui/patients/" (p)} { (p) } }
                                td { (if d.device.is_empty() { "(entered by hand)" } else { &d.device }) }
                                td { (label(d.metric)) }
                                td { (age(now_ms, d.last_ms)) }
                                td { (crate::fmt::every(d.expected_min)) }
                                td { @if d.stale { span.stale { "silent" } } @else { span.fine { "reporting" } } }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(gs) = gateways {
            h2 { "Gateways" }
            p.hint { "Battery, outbox depth and software version are not reported by gateways of this release; the last signed batch is the gateway's contact." }
            table {
                thead { tr { th scope="col" { "Gateway" } th scope="col" { "Enrolled" } th scope="col" { "Last batch" } th scope="col" { "State" } } }
                tbody {
                    @for g in gs {
                        tr {
                            td { (g.id) }
                            td { (clock(g.enrolled_ms)) }
                            td { @match g.last_batch_ms { Some(t) => { (age(now_ms, t)) }, None => { "never" } } }
                            td {
                                @if g.revoked_ms.is_some() { span.stale { "revoked" } }
                                @else if g.last_batch_ms.is_some_and(|t| now_ms - t > SILENT_MS) { span.stale { "silent" } " (no batch for over 10 min)" }
                                @else if g.last_batch_ms.is_some() { span.fine { "uploading" } }
                                @else { "enrolled, nothing sent yet" }
                            }
                        }
                    }
                }
            }
        }
    };
    Page {
        title: "Devices".into(),
        nav: Nav::Devices,
        live: false,
        main,
    }
}
