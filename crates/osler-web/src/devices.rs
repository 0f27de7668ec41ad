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
    /// What its last batch said of it: outbox bytes and limit, software version.
    pub outbox: Option<(u64, u64)>,
    pub version: Option<String>,
}

/// An open technical alert (the hub's `technical` watch decides them).
#[derive(Clone, Debug)]
pub struct TechnicalView {
    /// `gateway:ID`, `webhook:ID`.
    pub subject: String,
    pub rule: String,
    pub detail: String,
    pub raised_ms: i64,
}

/// Patients' devices (grouped by patient) and, for administrators, the gateways and the open
/// technical alerts.
pub fn page(
    patients: &[(String, Vec<DeviceView>)],
    gateways: Option<(&[GatewayView], &[TechnicalView])>,
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
        @if let Some((gs, technical)) = gateways {
            h2 { "Technical alerts" }
            @if technical.is_empty() { p { "None open: every gateway uploads, no outbox is filling, every webhook endpoint answers." } }
            @else {
                ul.technical {
                    @for t in technical {
                        li { strong { "Technical: " (t.rule) } " " (t.subject) ": " (t.detail) " (since " (age(now_ms, t.raised_ms)) ")" }
                    }
                }
            }
            h2 { "Gateways" }
            p.hint { "Each signed batch says how full the gateway's outbox is and its version. Battery is not reported by the devices of this release." }
            table {
                thead { tr {
                    th scope="col" { "Gateway" } th scope="col" { "Enrolled" } th scope="col" { "Last batch" }
                    th scope="col" { "Outbox" } th scope="col" { "Version" } th scope="col" { "State" }
                } }
                tbody {
                    @for g in gs {
                        @let open = |rule: &str| technical.iter().any(|t| t.rule == rule && t.subject == format!("gateway:{}", g.id));
                        tr {
                            td { (g.id) }
                            td { (clock(g.enrolled_ms)) }
                            td { @match g.last_batch_ms { Some(t) => { (age(now_ms, t)) }, None => { "never" } } }
                            td { @match g.outbox { Some((used, limit)) => { (used * 100 / limit.max(1)) "% of " (limit / 1_000_000) " MB" }, None => { "not reported" } } }
                            td { (g.version.as_deref().unwrap_or("not reported")) }
                            td {
                                @if g.revoked_ms.is_some() { span.stale { "revoked" } }
                                @else if open("gateway-silent") { span.stale { "silent" } }
                                @else if open("gateway-outbox-filling") { span.stale { "outbox filling" } }
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
