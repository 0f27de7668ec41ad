//! Every kind of resource the hub serves, validated by an independent FHIR library
//! (Python `fhir.resources`, R4B models, installed by `scripts/test` into `.venv`) and by the
//! vital-signs profile rules restated in `scripts/validate_fhir.py`.

mod common;

use std::process::Command;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[test]
fn everything_served_is_valid_fhir_r4() {
    let dir = TempDir::new("validate");
    let hub = Hub::start(&dir.0);
    let t = |m: i64| minutes_ago(m);
    // One reading of every metric, some in units that the hub converts.
    let mut observations = vec![
        observation("val", "8867-4", 72.0, "/min", &t(60)),
        observation("val", "40443-4", 55.0, "{beats}/min", &t(59)),
        observation("val", "2708-6", 97.0, "%", &t(58)),
        observation("val", "59408-5", 96.0, "%", &t(57)),
        blood_pressure("val", 142.0, 91.0, &t(56)),
        observation("val", "29463-7", 181.5, "[lb_av]", &t(55)),
        observation("val", "8310-5", 38.2, "Cel", &t(54)),
        observation("val", "8310-5", 99.1, "[degF]", &t(53)),
        observation("val", "9279-1", 18.0, "/min", &t(52)),
        observation("val", "99504-3", 143.0, "mg/dL", &t(51)),
        observation("val", "105272-9", 4.2, "mmol/L", &t(50)),
        observation("val", "41653-7", 6.1, "mmol/L", &t(49)),
        observation("val", "55423-8", 412.0, "{steps}", &t(48)),
        observation("val", "41982-0", 23.4, "%", &t(47)),
        observation("val", "80404-7", 48.0, "ms", &t(46)),
    ];
    // An identifier and a time zone other than UTC survive the round trip.
    observations[0]["identifier"] = json!([{"system": "urn:osler:test", "value": "v-1"}]);
    observations[2]["effectiveDateTime"] = json!("2025-03-01T08:15:30.250-05:00");
    let mut served: Vec<Value> = Vec::new();
    for o in &observations {
        let a = post(&format!("{}/Observation", hub.base), &o.to_string());
        assert_eq!(a.status, 201, "{}", a.text);
        let created = a.json();
        let read = get(&format!(
            "{}/Observation/{}",
            hub.base,
            created["id"].as_str().unwrap()
        ))
        .json();
        assert_eq!(read, created);
        served.push(read);
    }
    assert_eq!(
        served[2]["effectiveDateTime"],
        "2025-03-01T08:15:30.250-05:00"
    );
    assert_eq!(served[0]["identifier"][0]["value"], "v-1");

    // Bundles: transaction-response with representations, batch-response with a failure,
    // searchsets (paged, counted, $lastn).
    let more = [
        observation("val", "8867-4", 80.0, "/min", &t(30)),
        observation("val", "8867-4", 81.0, "/min", &t(29)),
    ];
    let tx = post_with(
        &hub.base,
        &bundle("transaction", &more, &[]).to_string(),
        &[("Prefer", "return=representation")],
    );
    assert_eq!(tx.status, 200, "{}", tx.text);
    served.push(tx.json());
    let batch = [
        observation("val", "8867-4", 82.0, "/min", &t(28)),
        observation("val", "8867-4", 999.0, "/min", &t(27)),
    ];
    served.push(post(&hub.base, &bundle("batch", &batch, &[]).to_string()).json());
    served.push(get(&format!("{}/Observation?patient=val&_count=5", hub.base)).json());
    served.push(
        get(&format!(
            "{}/Observation?patient=val&_summary=count",
            hub.base
        ))
        .json(),
    );
    served.push(
        get(&format!(
            "{}/Observation/$lastn?patient=val&category=vital-signs,laboratory,activity",
            hub.base
        ))
        .json(),
    );
    // An alert as a FHIR Flag (a hypertensive crisis raises one), alone and in a searchset.
    let crisis = post(
        &format!("{}/Observation", hub.base),
        &blood_pressure("val", 196.0, 110.0, &t(10)).to_string(),
    );
    assert_eq!(crisis.status, 201);
    let flags = get(&format!("{}/Flag?patient=val", hub.base)).json();
    let flag_id = flags["entry"][0]["resource"]["id"]
        .as_str()
        .expect("a Flag for the crisis")
        .to_owned();
    served.push(flags);
    served.push(get(&format!("{}/Flag/{flag_id}", hub.base)).json());
    // The other resources.
    served.push(get(&format!("{}/metadata", hub.base)).json());
    served.push(get(&format!("{}/Patient/val", hub.base)).json());
    served.push(get(&format!("{}/Device/dev-1", hub.base)).json());
    served.push(get(&format!("{}/Observation/0-0", hub.base)).json());
    served.push(post(&format!("{}/Observation", hub.base), "{").json());
    served.push(get(&format!("{}/Observation?patient=val&bogus=1", hub.base)).json());
    // Refusals for security: 401 and 403.
    served.push(
        send(
            "GET",
            &format!("{}/Patient", hub.base),
            "",
            &[("Authorization", "")],
        )
        .json(),
    );
    served.push(get(&format!("{}/AuditEvent", hub.base)).json());

    // The audit log as an administrator reads it: AuditEvents of every kind so far.
    let admin = enrol_person(&hub, &dir.0, "val-admin", "admin", None);
    let token = login(&hub, &admin)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = send(
        "GET",
        &format!("{}/AuditEvent?_count=200", hub.base),
        "",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .json();
    assert!(log["entry"].as_array().unwrap().len() > 20, "{log}");
    served.push(log);

    // A reading from a gateway, and its provenance: the signed batch that carried it.
    let gw_dir = dir.0.join("gw");
    enrol(&dir.0, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    let r = json!({"patient": "val-gw", "device": "w", "metric": "heart-rate", "value": 70,
        "unit": "/min", "time": minutes_ago(3)});
    assert_eq!(
        post(&format!("{}/readings", gw.url), &r.to_string()).status,
        200
    );
    let id = wait_for(Duration::from_secs(30), || {
        let s = get(&format!("{}/Observation?patient=val-gw", hub.base)).json();
        s["entry"][0]["resource"]["id"].as_str().map(str::to_owned)
    })
    .expect("the gateway's reading arrives");
    let prov = get(&format!("{}/Provenance?target=Observation/{id}", hub.base)).json();
    assert_eq!(prov["total"], 1, "{prov}");
    let p = &prov["entry"][0]["resource"];
    assert_eq!(
        p["agent"][0]["who"]["identifier"]["value"]
            .as_str()
            .unwrap()
            .len(),
        15,
        "{p}"
    );
    assert_eq!(
        p["signature"][0]["data"].as_str().unwrap().len(),
        88,
        "an Ed25519 signature, base64"
    );
    served.push(prov);
    // A reading posted through FHIR has none (its record is the audit log's).
    let none = get(&format!(
        "{}/Provenance?target={}",
        hub.base,
        served[0]["id"]
            .as_str()
            .map(|i| format!("Observation/{i}"))
            .unwrap_or_default()
    ))
    .json();
    assert_eq!(none["total"], 0, "{none}");

    assert_valid_fhir(&dir.0, &served);
}

/// The validator itself must be able to fail: a resource with a diastolic pressure coded as
/// heart rate (the mistake in public sample mappings), a CGM coded as capillary glucose, and a
/// structurally broken Observation are each reported.
#[test]
fn the_validator_catches_wrong_codes() {
    let dir = TempDir::new("validator");
    let hub = Hub::start(&dir.0);
    let a = post(
        &format!("{}/Observation", hub.base),
        &blood_pressure("v2", 130.0, 85.0, &minutes_ago(5)).to_string(),
    );
    let good = a.json();
    let mut wrong_component = good.clone();
    wrong_component["component"][1]["code"]["coding"][0]["code"] = json!("8867-4");
    let mut wrong_category = good.clone();
    wrong_category["category"][0]["coding"][0]["code"] = json!("laboratory");
    let mut broken = good.clone();
    broken["component"][0]["valueQuantity"]["value"] = json!("high");
    let file = dir.0.join("wrong.json");
    std::fs::write(
        &file,
        json!([good, wrong_component, wrong_category, broken]).to_string(),
    )
    .unwrap();
    let out = Command::new(python())
        .arg(workspace().join("scripts/validate_fhir.py"))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[1] Observation") && stdout.contains("component[1] code ['8867-4']"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[2] Observation") && stdout.contains("category ['laboratory']"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[3] Observation") && stdout.contains("fhir.resources R4B"),
        "{stdout}"
    );
    assert!(!stdout.contains("[0] Observation"), "{stdout}");
}
