//! What an outside FHIR client relies on, over HTTP with a real hub: content negotiation,
//! subsets and pretty printing, refusals that name the element, every search paged (Flag
//! too), batches that read, `$everything`, and CORS for browser apps.

mod common;

use common::*;
use serde_json::{Value, json};

fn next_link(page: &Value) -> Option<String> {
    page["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

#[test]
fn negotiation_subsets_and_refusals_that_name_the_element() {
    let dir = TempDir::new("behaviour");
    let hub = Hub::start(&dir.0);
    let b = &hub.base;
    let put = |path: &str, body: Value| send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]);
    assert_eq!(put("Patient/anna", json!({"resourceType": "Patient", "name": [{"family": "Müller"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Anna</div>"},
        "generalPractitioner": [], "gender": "female"})).status, 422, "an empty array is refused");
    assert_eq!(put("Patient/anna", json!({"resourceType": "Patient", "name": [{"family": "Müller"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Anna</div>"},
        "gender": "female", "maritalStatus": {"text": "married"}})).status, 201);

    // A client that takes only XML is told so; a body that is not JSON is refused.
    let a = send(
        "GET",
        &format!("{b}/Patient/anna"),
        "",
        &[("Accept", "application/fhir+xml")],
    );
    assert_eq!(a.outcome(406)["code"], "not-supported");
    assert_eq!(
        send("GET", &format!("{b}/Patient/anna?_format=xml"), "", &[]).status,
        406
    );
    assert_eq!(
        send(
            "GET",
            &format!("{b}/Patient/anna"),
            "",
            &[("Accept", "application/fhir+json, */*;q=0.1")]
        )
        .status,
        200
    );
    let a = req("PUT", &format!("{b}/Patient/anna"))
        .set("Content-Type", "text/plain")
        .send_string("{}");
    let status = match a {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, 415);

    // Subsets keep what identifies the resource and say they are subsets.
    let s = get(&format!("{b}/Patient/anna?_summary=true")).json();
    assert!(
        s.get("text").is_none() && s.get("maritalStatus").is_none(),
        "{s}"
    );
    assert_eq!(s["name"][0]["family"], "Müller");
    assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
    let d = get(&format!("{b}/Patient/anna?_summary=data")).json();
    assert!(
        d.get("text").is_none() && d.get("maritalStatus").is_some(),
        "{d}"
    );
    let e = get(&format!("{b}/Patient?_elements=gender")).json();
    let r = &e["entry"][0]["resource"];
    assert_eq!(
        (r["gender"].clone(), r.get("name").is_none()),
        (json!("female"), true),
        "{e}"
    );
    let pretty = get(&format!("{b}/Patient/anna?_pretty=true")).text;
    assert!(pretty.contains("\n  \"resourceType\""), "{pretty}");
    assert_eq!(
        get(&format!("{b}/Patient/anna?_summary=maybe")).outcome(400)["expression"][0],
        "_summary"
    );

    // A refused reading names the element at fault, alone and inside a Bundle.
    let url = format!("{b}/Observation");
    let o = observation("anna", "8867-4", 72.0, "m/s", &minutes_ago(1));
    assert_eq!(
        post(&url, &o.to_string()).outcome(422)["expression"][0],
        "Observation.valueQuantity.code"
    );
    let o = observation("anna", "8867-4", 720.0, "/min", &minutes_ago(1));
    assert_eq!(
        post(&url, &o.to_string()).outcome(422)["expression"][0],
        "Observation.valueQuantity.value"
    );
    let o = observation("anna", "8867-4", 72.0, "/min", "2999-01-01T00:00:00Z");
    assert_eq!(
        post(&url, &o.to_string()).outcome(422)["expression"][0],
        "Observation.effectiveDateTime"
    );
    let bp = blood_pressure("anna", 120.0, 400.0, &minutes_ago(1));
    let issue = post(&url, &bp.to_string()).outcome(422);
    assert_eq!(
        issue["expression"][0], "Observation.component[1].valueQuantity.value",
        "{issue}"
    );
    let batch = bundle(
        "batch",
        &[observation("anna", "8867-4", 72.0, "m/s", &minutes_ago(2))],
        &[],
    );
    let r = post(b, &batch.to_string()).json();
    assert_eq!(
        r["entry"][0]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[0].resource.valueQuantity.code",
        "{r}"
    );
}

#[test]
fn batches_read_flags_page_and_everything_comes_in_pages() {
    let dir = TempDir::new("behaviour-pages");
    let hub = Hub::start(&dir.0);
    let b = &hub.base;
    let put = |path: &str, body: Value| {
        let a = send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]);
        assert!(a.status < 300, "{path}: {}", a.text);
    };
    put(
        "Practitioner/kim",
        json!({"resourceType": "Practitioner", "name": [{"family": "Kim"}]}),
    );
    put(
        "Patient/anna",
        json!({"resourceType": "Patient", "name": [{"family": "Müller"}],
        "generalPractitioner": [{"reference": "Practitioner/kim"}]}),
    );
    put(
        "Device/watch-1",
        json!({"resourceType": "Device", "serialNumber": "SN-1"}),
    );
    put(
        "DeviceUseStatement/u1",
        json!({"resourceType": "DeviceUseStatement", "status": "active",
        "subject": {"reference": "Patient/anna"}, "device": {"reference": "Device/watch-1"},
        "timingPeriod": {"start": "2026-01-01T00:00:00Z"}}),
    );
    put(
        "CareTeam/t1",
        json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/anna"},
        "participant": [{"member": {"reference": "Practitioner/kim"}}]}),
    );

    // A batch with writes and reads: the reads run after the writes and see them.
    let o = observation("anna", "8867-4", 71.0, "/min", &minutes_ago(30));
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": o, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/anna"}},
        {"request": {"method": "GET", "url": "Observation?patient=anna&code=8867-4"}},
        {"request": {"method": "GET", "url": "Patient/nobody"}},
    ]});
    let r = post(b, &batch.to_string()).json();
    let mut served = vec![r.clone()];
    let e = r["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "201 Created", "{r}");
    assert_eq!(
        (
            e[1]["response"]["status"].clone(),
            e[1]["resource"]["id"].clone()
        ),
        (json!("200 OK"), json!("anna"))
    );
    assert_eq!(e[1]["response"]["etag"], "W/\"1\"");
    assert_eq!(e[2]["resource"]["total"], 1, "{r}");
    assert_eq!(e[3]["response"]["status"], "404 Not Found");
    assert_eq!(
        e[3]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    let t = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET", "url": "Patient/anna"}}]});
    post(b, &t.to_string()).outcome(422);

    // Alerts: 12 SpO2 lows of 12 patients; Flags page across them, newest first, no repeats.
    let lows: Vec<Value> = (0..12)
        .flat_map(|p| {
            (0..3).map(move |i| {
                observation(&format!("f{p}"), "59408-5", 85.0, "%", &minutes_ago(20 - i))
            })
        })
        .collect();
    assert_eq!(
        post(b, &bundle("batch", &lows, &[]).to_string()).status,
        200
    );
    let mut ids = Vec::new();
    let mut url = Some(format!("{b}/Flag?status=active&_count=5"));
    let mut pages = 0;
    while let Some(u) = url {
        let page = get(&u).json();
        pages += 1;
        ids.extend(
            page["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        url = next_link(&page);
    }
    assert_eq!((ids.len(), pages), (12, 3), "{ids:?}");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 12);

    // $everything: the Patient and what is about them first, then every Observation, paged.
    for i in 0..7 {
        let o = observation("anna", "2708-6", 97.0, "%", &minutes_ago(10 - i));
        assert_eq!(
            post(&format!("{b}/Observation"), &o.to_string()).status,
            201
        );
    }
    let mut kinds = Vec::new();
    let mut observations = 0;
    let mut url = Some(format!("{b}/Patient/anna/$everything?_count=3"));
    while let Some(u) = url {
        let page = get(&u).json();
        for e in page["entry"].as_array().into_iter().flatten() {
            let ty = e["resource"]["resourceType"].as_str().unwrap().to_owned();
            if ty == "Observation" {
                observations += 1;
            } else {
                kinds.push(format!("{ty}/{}", e["resource"]["id"].as_str().unwrap()));
            }
        }
        url = next_link(&page);
        served.push(page);
    }
    assert_eq!(kinds[0], "Patient/anna");
    for k in [
        "CareTeam/t1",
        "DeviceUseStatement/u1",
        "Device/watch-1",
        "Practitioner/kim",
    ] {
        assert!(kinds.contains(&k.to_owned()), "{k} in {kinds:?}");
    }
    assert_eq!(observations, 8, "every Observation of Anna's, across pages");
    assert_eq!(get(&format!("{b}/Patient/nobody/$everything")).status, 404);
    assert_valid_fhir(&dir.0, &served);
}

#[test]
fn cors_lets_configured_origins_in_and_no_others() {
    let dir = TempDir::new("cors");
    let hub = Hub::start_with(&dir.0, &["--cors-origin", "https://dash.example.org"]);
    let url = format!("{}/Patient?_count=1", hub.base);
    let a = send("GET", &url, "", &[("Origin", "https://dash.example.org")]);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://dash.example.org")
    );
    assert!(
        a.header("access-control-expose-headers")
            .unwrap()
            .contains("ETag")
    );
    let a = send("GET", &url, "", &[("Origin", "https://evil.example.com")]);
    assert_eq!(a.header("access-control-allow-origin"), None);
    let pre = send(
        "OPTIONS",
        &format!("{}/Patient/anna", hub.base),
        "",
        &[
            ("Origin", "https://dash.example.org"),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "content-type, if-match"),
        ],
    );
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("If-Match")
    );
    // The alert stream too.
    let stream = req("GET", &format!("{}/alerts/stream", hub.root()))
        .set("Origin", "https://dash.example.org")
        .call()
        .unwrap();
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("https://dash.example.org")
    );
}
