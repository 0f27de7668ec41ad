//! The FHIR R4 API of a real `osler serve`, over HTTP.

mod common;

use common::*;
use serde_json::{Value, json};

#[test]
fn metadata_tells_the_truth() {
    let dir = TempDir::new("metadata");
    let hub = Hub::start(&dir.0);
    let a = get(&format!("{}/metadata", hub.base));
    assert_eq!(a.status, 200);
    assert!(
        a.content_type
            .as_deref()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let cs = a.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let obs = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap();
    assert_eq!(obs["conditionalCreate"], true);
    let params: Vec<&str> = obs["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "patient", "code", "category", "date", "_count", "_sort", "_summary",
    ] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }
    // It does not claim what it does not do.
    let interactions: Vec<&str> = obs["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    // Corrections are updates; nothing clinical is deleted.
    assert!(interactions.contains(&"update") && !interactions.contains(&"delete"));
    assert_eq!(obs["operation"][0]["name"], "lastn");
    assert_eq!(
        obs["searchInclude"],
        json!([
            "Observation:patient",
            "Observation:subject",
            "Observation:device"
        ])
    );

    // Exactly the types served, and every search parameter it lists is one the hub takes.
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let mut types: Vec<&str> = resources
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "CareTeam",
            "Device",
            "DeviceUseStatement",
            "Flag",
            "Observation",
            "Organization",
            "Patient",
            "Practitioner"
        ]
    );
    for r in resources
        .iter()
        .filter(|r| r["type"] != "Observation" && r["type"] != "Flag")
    {
        let ty = r["type"].as_str().unwrap();
        for p in r["searchParam"].as_array().unwrap() {
            let (name, kind) = (p["name"].as_str().unwrap(), p["type"].as_str().unwrap());
            let value = match (name, kind) {
                ("_count", _) => "5".to_owned(),
                ("_sort", _) => "_id".to_owned(),
                ("_lastUpdated", _) | (_, "date") => "ge2020-01-01".to_owned(),
                ("general-practitioner" | "participant", _) => "Practitioner/x".to_owned(),
                ("organization", _) => "Organization/x".to_owned(),
                ("device", _) => "Device/x".to_owned(),
                (_, "reference") => "Patient/x".to_owned(),
                _ => "x".to_owned(),
            };
            let a = get(&format!("{}/{ty}?{name}={value}", hub.base));
            assert_eq!(a.status, 200, "{ty}?{name}={value}: {}", a.text);
        }
        let interactions: Vec<&str> = r["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert!(
            interactions.contains(&"vread") && interactions.contains(&"history-instance"),
            "{ty}"
        );
    }
}

#[test]
fn create_read_and_conditional_create() {
    let dir = TempDir::new("create");
    let hub = Hub::start(&dir.0);
    let when = minutes_ago(10);
    let mut body = observation("anna", "8867-4", 72.0, "/min", &when);
    body["identifier"] = json!([{"system": "urn:osler:test", "value": "hr-1"}]);
    let cond = [("If-None-Exist", "identifier=urn:osler:test|hr-1")];

    let a = post_with(
        &format!("{}/Observation", hub.base),
        &body.to_string(),
        &cond,
    );
    assert_eq!(a.status, 201, "{}", a.text);
    let created = a.json();
    let id = created["id"].as_str().unwrap().to_owned();
    // Location names the version created, which the ETag and meta.versionId name too.
    assert_eq!(
        a.location.as_deref(),
        Some(format!("{}/Observation/{id}/_history/1", hub.base).as_str())
    );
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(created["valueQuantity"]["value"], json!(72));
    assert_eq!(created["subject"]["reference"], "Patient/anna");

    // Read it back, exactly as created.
    let read = get(&format!("{}/Observation/{id}", hub.base));
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), created);

    // A resend with If-None-Exist: 200 and the same resource, nothing new.
    let again = post_with(
        &format!("{}/Observation", hub.base),
        &body.to_string(),
        &cond,
    );
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["id"], json!(id));
    // A resend of the same reading without the header is recognised by its identity too.
    let plain = post(&format!("{}/Observation", hub.base), &body.to_string());
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(count_for(&hub, "anna"), 1);

    // The same instant with another value is a conflict, not an overwrite.
    let mut changed = body.clone();
    changed["valueQuantity"]["value"] = json!(90);
    changed.as_object_mut().unwrap().remove("identifier");
    let c = post(&format!("{}/Observation", hub.base), &changed.to_string());
    c.outcome(409);
    assert_eq!(
        get(&format!("{}/Observation/{id}", hub.base)).json()["valueQuantity"]["value"],
        json!(72)
    );

    // Patient and Device named by the reading exist; others do not.
    assert_eq!(
        get(&format!("{}/Patient/anna", hub.base)).json()["id"],
        "anna"
    );
    assert_eq!(
        get(&format!("{}/Device/dev-1", hub.base)).json()["resourceType"],
        "Device"
    );
    get(&format!("{}/Patient/bob", hub.base)).outcome(404);
    get(&format!("{}/Device/nope", hub.base)).outcome(404);
    get(&format!("{}/Observation/999-1", hub.base)).outcome(404);
    get(&format!("{}/Observation/not-an-id", hub.base)).outcome(404);
}

#[test]
fn transactions_are_all_or_nothing_and_batches_are_not() {
    let dir = TempDir::new("bundles");
    let hub = Hub::start(&dir.0);
    let good1 = observation("tx", "8867-4", 61.0, "/min", &minutes_ago(30));
    let good2 = blood_pressure("tx", 128.0, 82.0, &minutes_ago(29));
    let bad = observation("tx", "59408-5", 150.0, "%", &minutes_ago(28));

    // Transaction with a bad entry: refused whole, with the entry's location.
    let t = bundle(
        "transaction",
        &[good1.clone(), bad.clone(), good2.clone()],
        &[],
    );
    let a = post(&hub.base, &t.to_string());
    let issue = a.outcome(422);
    assert_eq!(
        issue["expression"][0],
        "Bundle.entry[1].resource.valueQuantity.value"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("plausible range"),
        "{issue}"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nothing was stored")
    );
    assert_eq!(count_for(&hub, "tx"), 0);

    // The same as a batch: the bad entry fails alone.
    let b = bundle("batch", &[good1.clone(), bad, good2.clone()], &[]);
    let a = post(&hub.base, &b.to_string());
    assert_eq!(a.status, 200, "{}", a.text);
    let resp = a.json();
    assert_eq!(resp["type"], "batch-response");
    let statuses: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["201 Created", "422 Unprocessable Entity", "201 Created"]
    );
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(count_for(&hub, "tx"), 2);

    // A transaction whose resend carries ifNoneExist creates nothing twice.
    let ids = ["urn:osler:test|a", "urn:osler:test|b"];
    let mut o1 = observation("tx2", "8310-5", 98.6, "[degF]", &minutes_ago(20));
    o1["identifier"] = json!([{"system": "urn:osler:test", "value": "a"}]);
    let mut o2 = observation("tx2", "29463-7", 176.0, "[lb_av]", &minutes_ago(20));
    o2["identifier"] = json!([{"system": "urn:osler:test", "value": "b"}]);
    let conds = [
        Some(format!("identifier={}", ids[0])),
        Some(format!("identifier={}", ids[1])),
    ];
    let conds: Vec<Option<&str>> = conds.iter().map(|c| c.as_deref()).collect();
    let t = bundle("transaction", &[o1, o2], &conds);
    let first = post_with(
        &hub.base,
        &t.to_string(),
        &[("Prefer", "return=representation")],
    );
    assert_eq!(first.status, 200, "{}", first.text);
    let first = first.json();
    assert_eq!(first["type"], "transaction-response");
    assert_eq!(first["entry"][0]["response"]["status"], "201 Created");
    // Units were converted to the canonical ones, exactly.
    assert_eq!(
        first["entry"][0]["resource"]["valueQuantity"]["value"],
        json!(37)
    );
    assert_eq!(
        first["entry"][0]["resource"]["valueQuantity"]["code"],
        "Cel"
    );
    assert_eq!(
        first["entry"][1]["resource"]["valueQuantity"]["value"],
        json!(79.832257)
    );
    let second = post(&hub.base, &t.to_string()).json();
    assert_eq!(second["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        second["entry"][1]["response"]["location"],
        first["entry"][1]["response"]["location"]
    );
    assert_eq!(count_for(&hub, "tx2"), 2);
}

/// Every entry of every page, following `next` links.
fn all_pages(first_url: &str) -> (Vec<Value>, Option<u64>, usize) {
    let mut url = first_url.to_owned();
    let mut entries = Vec::new();
    let mut total = None;
    let mut pages = 0;
    loop {
        let a = get(&url);
        assert_eq!(a.status, 200, "{url}: {}", a.text);
        let b = a.json();
        assert_eq!(b["type"], "searchset");
        if pages == 0 {
            total = b["total"].as_u64();
        }
        pages += 1;
        entries.extend(b["entry"].as_array().cloned().unwrap_or_default());
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
        assert!(pages < 1000, "paging does not end");
    }
    (entries, total, pages)
}

#[test]
fn search_filters_sorts_and_pages() {
    let dir = TempDir::new("search");
    let hub = Hub::start(&dir.0);
    // 120 heart rates a minute apart, 40 SpO2, 10 CGM, and a neighbour's readings.
    let mut obs = Vec::new();
    let hr_times: Vec<String> = (0..120).map(|i| minutes_ago(200 - i)).collect();
    for (i, t) in hr_times.iter().enumerate() {
        obs.push(observation(
            "sue",
            "8867-4",
            60.0 + (i % 40) as f64,
            "/min",
            t,
        ));
    }
    for i in 0..40 {
        obs.push(observation(
            "sue",
            "2708-6",
            95.0,
            "%",
            &minutes_ago(200 - i * 3),
        ));
    }
    for i in 0..10 {
        obs.push(observation(
            "sue",
            "99504-3",
            100.0 + i as f64,
            "mg/dL",
            &minutes_ago(200 - i * 5),
        ));
    }
    obs.push(observation(
        "tom",
        "8867-4",
        70.0,
        "/min",
        &minutes_ago(100),
    ));
    let a = post(&hub.base, &bundle("batch", &obs, &[]).to_string());
    assert_eq!(a.status, 200);
    assert_eq!(count_for(&hub, "sue"), 170);

    // Paging through every heart rate, oldest first, 25 a page.
    let (entries, total, pages) = all_pages(&format!(
        "{}/Observation?patient=sue&code=http://loinc.org|8867-4&_count=25",
        hub.base
    ));
    assert_eq!(total, Some(120));
    assert_eq!(pages, 5);
    assert_eq!(entries.len(), 120);
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert!(
        entries
            .iter()
            .all(|e| e["resource"]["subject"]["reference"] == "Patient/sue")
    );
    assert!(
        entries
            .iter()
            .all(|e| e["fullUrl"].as_str().unwrap().starts_with(&hub.base))
    );

    // Newest first, and a date window with prefixes: readings 50..100 of the 120.
    let url = format!(
        "{}/Observation?subject=Patient/sue&code=8867-4&date=ge{}&date=lt{}&_sort=-date&_count=1000",
        hub.base, hr_times[50], hr_times[100]
    );
    let (entries, total, pages) = all_pages(&url);
    assert_eq!((total, pages), (Some(50), 1));
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap())
        .collect();
    let expect: Vec<&str> = hr_times[50..100].iter().rev().map(String::as_str).collect();
    assert_eq!(times, expect);
    // gt and le move the bounds by the precision written (here, one second).
    let url = format!(
        "{}/Observation?patient=sue&code=8867-4&date=gt{}&date=le{}&_summary=count",
        hub.base, hr_times[50], hr_times[100]
    );
    assert_eq!(get(&url).json()["total"], json!(50));

    // Category, MDC code and bare code forms.
    let lab = get(&format!(
        "{}/Observation?patient=sue&category=laboratory&_summary=count",
        hub.base
    ))
    .json();
    assert_eq!(lab["total"], json!(10));
    let mdc = get(&format!(
        "{}/Observation?patient=sue&code=urn:iso:std:iso:11073:10101|150456&_summary=count",
        hub.base
    ))
    .json();
    assert_eq!(mdc["total"], json!(40));
    let both = get(&format!(
        "{}/Observation?patient=sue&code=2708-6,99504-3&_summary=count",
        hub.base
    ))
    .json();
    assert_eq!(both["total"], json!(50));
    let none = get(&format!("{}/Observation?patient=sue&code=1234-5", hub.base)).json();
    assert_eq!(none["total"], json!(0));
    assert!(none.get("entry").is_none());

    // $lastn: the newest 3 per code.
    let last = get(&format!(
        "{}/Observation/$lastn?patient=sue&category=vital-signs&max=3",
        hub.base
    ))
    .json();
    let entries = last["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let hr: Vec<&str> = entries
        .iter()
        .filter(|e| e["resource"]["code"]["coding"][0]["code"] == "8867-4")
        .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap())
        .collect();
    assert_eq!(hr, [&hr_times[119], &hr_times[118], &hr_times[117]]);
    get(&format!("{}/Observation/$lastn?patient=sue", hub.base)).outcome(400);

    // Identifier search.
    let mut tagged = observation("sue", "9279-1", 16.0, "/min", &minutes_ago(5));
    tagged["identifier"] = json!([{"system": "urn:osler:test", "value": "rr-1"}]);
    assert_eq!(
        post(&format!("{}/Observation", hub.base), &tagged.to_string()).status,
        201
    );
    let found = get(&format!(
        "{}/Observation?identifier=urn:osler:test|rr-1",
        hub.base
    ))
    .json();
    assert_eq!(found["total"], json!(1));
    assert_eq!(
        found["entry"][0]["resource"]["code"]["coding"][0]["code"],
        "9279-1"
    );
}

#[test]
fn bad_input_is_refused_clearly_and_stores_nothing() {
    let dir = TempDir::new("bad");
    let hub = Hub::start_with(&dir.0, &["--max-body", "100000"]);
    let url = format!("{}/Observation", hub.base);
    let when = minutes_ago(1);
    let good = observation("eve", "8867-4", 70.0, "/min", &when);

    // Malformed JSON.
    let i = post(&url, "{\"resourceType\": \"Observation\",").outcome(400);
    assert!(
        i["diagnostics"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    post(&hub.base, "[1, 2").outcome(400);
    // Wrong resourceType.
    let mut wrong = good.clone();
    wrong["resourceType"] = json!("Patient");
    assert_eq!(
        post(&url, &wrong.to_string()).outcome(422)["expression"][0],
        "resourceType"
    );
    // Unknown code.
    let unknown = observation("eve", "1234-5", 70.0, "/min", &when);
    let i = post(&url, &unknown.to_string()).outcome(422);
    assert_eq!(i["expression"][0], "Observation.code");
    // Impossible value, and a unit that does not fit the metric.
    let i = post(
        &url,
        &observation("eve", "8867-4", 900.0, "/min", &when).to_string(),
    )
    .outcome(422);
    assert!(
        i["diagnostics"]
            .as_str()
            .unwrap()
            .contains("outside the plausible range")
    );
    let i = post(
        &url,
        &observation("eve", "8867-4", 70.0, "kg", &when).to_string(),
    )
    .outcome(422);
    assert!(i["diagnostics"].as_str().unwrap().contains("unit \"kg\""));
    // A reading from the future, and one without a time zone.
    let future = observation("eve", "8867-4", 70.0, "/min", &minutes_ago(-60));
    assert!(
        post(&url, &future.to_string()).outcome(422)["diagnostics"]
            .as_str()
            .unwrap()
            .contains("in the future")
    );
    let no_zone = observation("eve", "8867-4", 70.0, "/min", "2025-01-01T10:00:00");
    post(&url, &no_zone.to_string()).outcome(422);
    // Elements Osler would drop are refused, not dropped.
    let mut noted = good.clone();
    noted["note"] = json!([{"text": "after exercise"}]);
    assert_eq!(
        post(&url, &noted.to_string()).outcome(422)["expression"][0],
        "Observation.note"
    );
    // A body over the limit (declared and streamed).
    let huge = format!(
        "{{\"resourceType\":\"Observation\",\"pad\":\"{}\"}}",
        "x".repeat(200_000)
    );
    post(&url, &huge).outcome(413);
    post(&hub.base, &huge).outcome(413);
    // XML is not read.
    post_with(
        &url,
        "<Observation/>",
        &[("Content-Type", "application/fhir+xml")],
    )
    .outcome(415);
    // Wrong ids and SQL-ish strings in search parameters.
    let mut sneaky = good.clone();
    sneaky["subject"]["reference"] = json!("Patient/eve'; DROP TABLE reading; --");
    post(&url, &sneaky.to_string()).outcome(422);
    for q in [
        "patient=eve'%20OR%201=1%20--",
        "patient=eve&code=8867-4'%20OR%20'1'='1",
        "patient=eve&date=ge2025-01-01'%3B%20DROP%20TABLE%20reading",
        "patient=eve&_count=1;DELETE",
        "patient=eve&_sort=date;DROP",
        "patient=eve&unknown=1",
        "patient=eve&_cursor=1%20OR%201=1",
        // Neither a patient, an identifier nor a code: a scan of everything, refused.
        "date=ge2025-01-01",
    ] {
        let a = get(&format!("{url}?{q}"));
        if q.contains("code=8867-4'") {
            // A code no metric has matches nothing; it is a value, not SQL.
            assert_eq!(a.status, 200, "{q}: {}", a.text);
            assert_eq!(a.json()["total"], json!(0));
        } else {
            a.outcome(400);
        }
    }
    // Unsupported methods and endpoints answer with OperationOutcome too.
    let a = get(&format!("{}/nowhere", hub.root()));
    a.outcome(404);
    let a = post(&format!("{}/metadata", hub.base), "{}");
    assert_eq!(a.status, 405);

    // Nothing of the above was stored.
    assert_eq!(count_for(&hub, "eve"), 0);
    assert_eq!(metric(&hub, "osler_readings_stored"), 0.0);
    assert!(metric(&hub, "osler_readings_rejected_total{reason=\"invalid\"}") >= 8.0);

    // And the hub still works.
    assert_eq!(post(&url, &good.to_string()).status, 201);
    assert_eq!(count_for(&hub, "eve"), 1);
    assert_eq!(metric(&hub, "osler_readings_committed_total"), 1.0);
    let text = get(&format!("{}/metrics", hub.root())).text;
    assert!(text.contains(
        "osler_http_request_duration_seconds_bucket{route=\"/fhir/Observation\",le=\"+Inf\"}"
    ));
}
