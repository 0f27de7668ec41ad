//! The registry over HTTP with a real hub: every kind created, read, updated, searched,
//! versioned, deleted and refused where it should be, and everything served validated by the
//! independent FHIR library.

mod common;

use common::*;
use serde_json::{Value, json};

struct Api {
    base: String,
    served: Vec<Value>,
}

impl Api {
    fn send(&mut self, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let a = send(method, &format!("{}/{path}", self.base), &text, headers);
        if a.status < 300 && !a.text.is_empty() {
            self.served.push(a.json());
        }
        a
    }
    fn put(&mut self, path: &str, body: Value) -> Value {
        let a = self.send("PUT", path, &body, &[]);
        assert!(a.status == 200 || a.status == 201, "PUT {path}: {}", a.text);
        a.json()
    }
    fn post(&mut self, path: &str, body: Value) -> Value {
        let a = self.send("POST", path, &body, &[]);
        assert_eq!(a.status, 201, "POST {path}: {}", a.text);
        a.json()
    }
    fn get(&mut self, path: &str) -> Value {
        let a = self.send("GET", path, &Value::Null, &[]);
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json()
    }
    /// Every id a search finds, following `next` links.
    fn search_ids(&mut self, query: &str) -> Vec<String> {
        let mut ids = Vec::new();
        let mut url = format!("{}/{query}", self.base);
        loop {
            let page = get(&url).json();
            self.served.push(page.clone());
            for e in page["entry"].as_array().into_iter().flatten() {
                ids.push(e["resource"]["id"].as_str().unwrap().to_owned());
            }
            let next = page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_owned());
            match next {
                Some(n) => url = n,
                None => return ids,
            }
        }
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn anna() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:clinic:mrn", "value": "M-1001"}],
        "active": true,
        "name": [{"use": "official", "family": "Müller", "given": ["Anna", "Zoë"]}],
        "telecom": [{"system": "phone", "value": "+41 44 555 01 01", "use": "mobile"}],
        "gender": "female",
        "birthDate": "1950-03-04",
        "address": [{"line": ["Bahnhofstrasse 1"], "city": "Zürich", "postalCode": "8001", "country": "CH"}],
    })
}

#[test]
fn patients_practitioners_and_organisations() {
    let dir = TempDir::new("registry");
    let hub = Hub::start(&dir.0);
    let mut api = Api {
        base: hub.base.clone(),
        served: Vec::new(),
    };

    let clinic = api.post(
        "Organization",
        json!({"resourceType": "Organization", "name": "Lakeside Remote Monitoring", "active": true,
               "identifier": [{"system": "urn:oid:2.51.1.3", "value": "7601000000001"}]}),
    );
    let ada = api.post(
        "Practitioner",
        json!({"resourceType": "Practitioner", "active": true,
               "name": [{"family": "Okafor", "given": ["Ada"], "prefix": ["Dr"]}]}),
    );

    // Created with PUT at a chosen id: everything kept as written, versioned, with headers.
    let mut p = anna();
    p["generalPractitioner"] = json!([{"reference": format!("Practitioner/{}", id_of(&ada))}]);
    p["managingOrganization"] = json!({"reference": format!("Organization/{}", id_of(&clinic))});
    let a = api.send("PUT", "Patient/anna", &p, &[]);
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("etag"), Some("W/\"1\""));
    assert!(
        a.header("location")
            .unwrap()
            .ends_with("/Patient/anna/_history/1")
    );
    let read = get(&format!("{}/Patient/anna", hub.base));
    assert!(read.header("last-modified").unwrap().ends_with(" GMT"));
    let r = read.json();
    for k in [
        "identifier",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "address",
        "generalPractitioner",
        "managingOrganization",
    ] {
        assert_eq!(r[k], p[k], "{k} kept faithfully");
    }
    assert_eq!(r["meta"]["versionId"], "1");
    // A client with the current version is told nothing changed.
    let same = send(
        "GET",
        &format!("{}/Patient/anna", hub.base),
        "",
        &[("If-None-Match", "W/\"1\"")],
    );
    assert_eq!(same.status, 304);

    // Update with If-Match; a stale If-Match is refused and changes nothing.
    p["telecom"][0]["value"] = json!("+41 44 555 02 02");
    let a = api.send("PUT", "Patient/anna", &p, &[("If-Match", "W/\"1\"")]);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["meta"]["versionId"], "2");
    p["gender"] = json!("other");
    api.send("PUT", "Patient/anna", &p, &[("If-Match", "W/\"1\"")])
        .outcome(412);
    assert_eq!(api.get("Patient/anna")["gender"], "female");
    let v1 = api.get("Patient/anna/_history/1");
    assert_eq!(v1["telecom"][0]["value"], "+41 44 555 01 01");
    let hist = api.get("Patient/anna/_history");
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["entry"].as_array().unwrap().len(), 2);
    // The same body again makes no new version.
    p["gender"] = json!("female");
    assert_eq!(api.put("Patient/anna", p.clone())["meta"]["versionId"], "2");
    // Nor does the resource as read (its id and meta included): a client's round trip.
    let as_read = api.get("Patient/anna");
    assert_eq!(api.put("Patient/anna", as_read)["meta"]["versionId"], "2");

    // Conditional create on the MRN finds Anna instead of making a second her.
    let a = api.send(
        "POST",
        "Patient",
        &anna(),
        &[("If-None-Exist", "identifier=urn:clinic:mrn|M-1001")],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["id"], "anna");
    // Conditional update on another MRN creates, then updates the one it finds.
    let mut ben = json!({"resourceType": "Patient", "identifier": [{"system": "urn:clinic:mrn", "value": "M-1002"}],
                         "name": [{"family": "Berg", "given": ["Ben"]}], "birthDate": "1961", "gender": "male", "active": true});
    let a = api.send("PUT", "Patient?identifier=urn:clinic:mrn|M-1002", &ben, &[]);
    assert_eq!(a.status, 201, "{}", a.text);
    let ben_id = id_of(&a.json());
    ben["birthDate"] = json!("1961-07-01");
    let a = api.send("PUT", "Patient?identifier=urn:clinic:mrn|M-1002", &ben, &[]);
    assert_eq!(
        (a.status, id_of(&a.json())),
        (200, ben_id.clone()),
        "{}",
        a.text
    );
    assert_eq!(a.json()["meta"]["versionId"], "2");

    // Refusals name the element at fault and store nothing.
    let mut twin = anna();
    twin["name"] = json!([{"family": "Other"}]);
    let issue = api.send("PUT", "Patient/twin", &twin, &[]).outcome(409);
    assert_eq!(issue["expression"][0], "Patient.identifier", "{issue}");
    for (body, status, at) in [
        (
            json!({"resourceType": "Patient", "birthDate": "2999-01-01"}),
            422,
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": "1950-02-30"}),
            422,
            "Patient.birthDate",
        ),
        (
            json!({"resourceType": "Patient", "gender": "f"}),
            422,
            "Patient.gender",
        ),
        (
            json!({"resourceType": "Patient", "nickname": "x"}),
            422,
            "Patient.nickname",
        ),
        (
            json!({"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/nobody"}]}),
            422,
            "Patient.generalPractitioner[0].reference",
        ),
        (json!({"resourceType": "Practitioner"}), 422, "resourceType"),
        (
            json!({"resourceType": "Patient", "id": "other"}),
            400,
            "Patient.id",
        ),
    ] {
        let issue = api.send("PUT", "Patient/bad", &body, &[]).outcome(status);
        assert_eq!(issue["expression"][0], at, "{body}: {issue}");
    }
    assert_eq!(get(&format!("{}/Patient/bad", hub.base)).status, 404);

    // Search: each parameter, accents and case folded, paging and sorting.
    let names: &[(&str, &str)] = &[
        ("Page", "1941-01-01"),
        ("Page", "1942-01-01"),
        ("Pagel", "1943-01-01"),
        ("Pagé", "1944-01-01"),
        ("Paget", "1945-01-01"),
        ("Pages", "1946-01-01"),
        ("Pagett", "1947-01-01"),
    ];
    for (family, born) in names {
        api.post("Patient", json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": born, "active": false}));
    }
    assert_eq!(api.search_ids("Patient?family=mull"), vec!["anna"]);
    assert_eq!(api.search_ids("Patient?name=ZOE"), vec!["anna"]);
    assert_eq!(api.search_ids("Patient?given=ben"), vec![ben_id.clone()]);
    assert_eq!(api.search_ids("Patient?name:exact=Müller"), vec!["anna"]);
    assert!(api.search_ids("Patient?name:exact=muller").is_empty());
    assert_eq!(api.search_ids("Patient?identifier=M-1001"), vec!["anna"]);
    assert_eq!(
        api.search_ids("Patient?identifier=urn:clinic:mrn|M-1002"),
        vec![ben_id.clone()]
    );
    assert_eq!(
        api.search_ids("Patient?identifier=urn:clinic:mrn|").len(),
        2
    );
    assert_eq!(api.search_ids("Patient?birthdate=1950"), vec!["anna"]);
    assert_eq!(
        api.search_ids("Patient?birthdate=ge1961-07&birthdate=lt1961-08"),
        vec![ben_id.clone()]
    );
    assert_eq!(api.search_ids("Patient?gender=male"), vec![ben_id.clone()]);
    assert_eq!(api.search_ids("Patient?active=true&_sort=_id").len(), 2);
    assert_eq!(
        api.search_ids(&format!(
            "Patient?general-practitioner=Practitioner/{}",
            id_of(&ada)
        )),
        vec!["anna"]
    );
    assert_eq!(
        api.search_ids(&format!("Patient?_id=anna,{ben_id}")).len(),
        2
    );
    assert_eq!(api.search_ids("Patient?_lastUpdated=ge2000-01-01").len(), 9);
    assert!(
        api.search_ids("Patient?_lastUpdated=lt2000-01-01")
            .is_empty()
    );
    let paged = api.search_ids("Patient?family=page&_count=3&_sort=-birthdate");
    assert_eq!(paged.len(), 7, "every page followed: {paged:?}");
    let births: Vec<String> = paged
        .iter()
        .map(|id| {
            api.get(&format!("Patient/{id}"))["birthDate"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = births.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(births, sorted, "sorted by birth date, newest first");
    let count = api.get("Patient?family=page&_summary=count");
    assert_eq!(count["total"], 7);
    assert!(count.get("entry").is_none());
    let issue = get(&format!("{}/Patient?nickname=x", hub.base)).outcome(400);
    assert_eq!(issue["expression"][0], "nickname");
    assert_eq!(
        api.search_ids("Organization?name=lakeside"),
        vec![id_of(&clinic)]
    );
    assert_eq!(
        api.search_ids("Practitioner?name=okafor"),
        vec![id_of(&ada)]
    );

    // A patient known only from readings is a minimal Patient until enrolled; enrolling keeps
    // the readings.
    let o = observation("walk-in", "8867-4", 71.0, "/min", &minutes_ago(5));
    assert_eq!(
        post(&format!("{}/Observation", hub.base), &o.to_string()).status,
        201
    );
    let stub = api.get("Patient/walk-in");
    assert_eq!(
        (stub["active"].clone(), stub["meta"]["versionId"].clone()),
        (json!(true), json!("1")),
        "{stub}"
    );
    assert_eq!(
        api.search_ids("Patient?_id=walk-in&active=true"),
        vec!["walk-in"],
        "found by search as any Patient"
    );
    api.put(
        "Patient/walk-in",
        json!({"resourceType": "Patient", "name": [{"family": "Walker"}], "active": true}),
    );
    let enrolled = api.get("Patient/walk-in");
    assert_eq!(
        (
            enrolled["name"][0]["family"].clone(),
            enrolled["meta"]["versionId"].clone()
        ),
        (json!("Walker"), json!("2"))
    );
    assert_eq!(count_for(&hub, "walk-in"), 1);

    // Delete marks, never erases: the resource stays, inactive, with its history.
    let a = api.send("DELETE", &format!("Patient/{ben_id}"), &Value::Null, &[]);
    assert_eq!(a.status, 200, "{}", a.text);
    let gone = api.get(&format!("Patient/{ben_id}"));
    assert_eq!(
        (gone["active"].clone(), gone["meta"]["versionId"].clone()),
        (json!(false), json!("3"))
    );
    assert_eq!(gone["name"], ben["name"]);
    assert_eq!(api.get(&format!("Patient/{ben_id}/_history"))["total"], 3);

    assert_valid_fhir(&dir.0, &api.served);
}

#[test]
fn care_teams_devices_and_assignments() {
    let dir = TempDir::new("registry-teams");
    let hub = Hub::start(&dir.0);
    let mut api = Api {
        base: hub.base.clone(),
        served: Vec::new(),
    };
    api.put("Patient/anna", anna());
    api.put(
        "Patient/ben",
        json!({"resourceType": "Patient", "name": [{"family": "Berg"}]}),
    );
    api.put(
        "Practitioner/nurse-kim",
        json!({"resourceType": "Practitioner", "name": [{"family": "Kim"}]}),
    );
    api.put(
        "Practitioner/dr-ade",
        json!({"resourceType": "Practitioner", "name": [{"family": "Ade"}]}),
    );

    let role = |code: &str, display: &str| json!([{"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}]);
    let team = json!({
        "resourceType": "CareTeam", "status": "active", "name": "Anna's remote monitoring team",
        "subject": {"reference": "Patient/anna"},
        "period": {"start": "2026-01-01"},
        "participant": [
            {"role": role("224535009", "Registered nurse"), "member": {"reference": "Practitioner/nurse-kim"}},
            {"role": role("309343006", "Physician"), "member": {"reference": "Practitioner/dr-ade"},
             "period": {"start": "2026-01-01", "end": "2026-06-30"}},
        ],
    });
    let t = api.put("CareTeam/anna-team", team.clone());
    assert_eq!(t["participant"], team["participant"]);
    assert_eq!(api.search_ids("CareTeam?patient=anna"), vec!["anna-team"]);
    assert_eq!(
        api.search_ids("CareTeam?participant=Practitioner/dr-ade&status=active"),
        vec!["anna-team"]
    );
    assert!(api.search_ids("CareTeam?patient=ben").is_empty());
    let mut bad = team.clone();
    bad["participant"][1]["member"]["reference"] = json!("Practitioner/nobody");
    let issue = api
        .send("PUT", "CareTeam/anna-team", &bad, &[])
        .outcome(422);
    assert_eq!(
        issue["expression"][0], "CareTeam.participant[1].member.reference",
        "{issue}"
    );
    bad["participant"][1]["member"]["reference"] = json!("RelatedPerson/x");
    api.send("PUT", "CareTeam/anna-team", &bad, &[])
        .outcome(422);

    let watch = json!({
        "resourceType": "Device", "status": "active",
        "identifier": [{"system": "urn:ieee:eui-64", "value": "00-1B-C5-0C-50-00-00-01"}],
        "serialNumber": "SN-4711", "manufacturer": "Acme Wearables", "modelNumber": "PulseBand 2",
        "deviceName": [{"name": "PulseBand", "type": "user-friendly-name"}],
        "type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "528391", "display": "MDC_DEV_SPEC_PROFILE_PULS_OXIM"}]},
    });
    api.put("Device/watch-1", watch.clone());
    assert_eq!(api.search_ids("Device?identifier=SN-4711"), vec!["watch-1"]);
    assert_eq!(
        api.search_ids("Device?identifier=urn:ieee:eui-64|00-1B-C5-0C-50-00-00-01"),
        vec!["watch-1"]
    );
    assert_eq!(
        api.search_ids("Device?type=urn:iso:std:iso:11073:10101|528391&status=active"),
        vec!["watch-1"]
    );
    assert_eq!(
        api.search_ids("Device?manufacturer=acme&model=pulse"),
        vec!["watch-1"]
    );
    let mut clone = watch.clone();
    clone["serialNumber"] = json!("SN-9");
    let issue = api.send("PUT", "Device/watch-2", &clone, &[]).outcome(409);
    assert_eq!(issue["expression"][0], "Device.identifier", "{issue}");

    // The watch goes to Anna, then at T to Ben; an assignment overlapping either is refused.
    let usage = |patient: &str, start: &str, end: Option<&str>, status: &str| {
        let mut period = json!({"start": start});
        if let Some(e) = end {
            period["end"] = json!(e);
        }
        json!({"resourceType": "DeviceUseStatement", "status": status,
               "subject": {"reference": format!("Patient/{patient}")},
               "device": {"reference": "Device/watch-1"}, "timingPeriod": period})
    };
    api.put(
        "DeviceUseStatement/u1",
        usage(
            "anna",
            "2026-11-01T00:00:00Z",
            Some("2026-11-20T08:00:00Z"),
            "completed",
        ),
    );
    api.put(
        "DeviceUseStatement/u2",
        usage("ben", "2026-11-20T08:00:00Z", None, "active"),
    );
    let issue = api
        .send(
            "PUT",
            "DeviceUseStatement/u3",
            &usage("anna", "2026-11-25T00:00:00Z", None, "active"),
            &[],
        )
        .outcome(409);
    assert_eq!(
        issue["expression"][0], "DeviceUseStatement.timingPeriod",
        "{issue}"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("DeviceUseStatement/u2"),
        "{issue}"
    );
    api.send(
        "PUT",
        "DeviceUseStatement/u3",
        &usage(
            "anna",
            "2026-11-19T00:00:00Z",
            Some("2026-11-20T00:00:00Z"),
            "completed",
        ),
        &[],
    )
    .outcome(409);
    let issue = api
        .send(
            "PUT",
            "DeviceUseStatement/u3",
            &usage(
                "anna",
                "2026-11-25T00:00:00Z",
                Some("2026-11-24T00:00:00Z"),
                "completed",
            ),
            &[],
        )
        .outcome(422);
    assert_eq!(
        issue["expression"][0], "DeviceUseStatement.timingPeriod.end",
        "{issue}"
    );
    // Only "intended" is not in force, so it may overlap.
    api.put(
        "DeviceUseStatement/u3",
        usage("anna", "2026-12-24T00:00:00Z", None, "intended"),
    );
    assert_eq!(
        api.search_ids("DeviceUseStatement?device=watch-1&_sort=_id"),
        vec!["u1", "u2", "u3"]
    );
    assert_eq!(api.search_ids("DeviceUseStatement?patient=ben"), vec!["u2"]);
    assert_eq!(
        api.search_ids("DeviceUseStatement?subject=Patient/anna&status=completed"),
        vec!["u1"]
    );

    // Deleting a device or a statement marks it entered-in-error.
    assert_eq!(
        api.send("DELETE", "DeviceUseStatement/u3", &Value::Null, &[])
            .status,
        200
    );
    assert_eq!(
        api.get("DeviceUseStatement/u3")["status"],
        "entered-in-error"
    );
    assert_eq!(
        api.send("DELETE", "CareTeam/anna-team", &Value::Null, &[])
            .status,
        200
    );
    assert_eq!(
        api.search_ids("CareTeam?status=entered-in-error"),
        vec!["anna-team"]
    );
    assert_eq!(
        api.send("DELETE", "Device/nothing", &Value::Null, &[])
            .status,
        404
    );

    assert_valid_fhir(&dir.0, &api.served);
}

#[test]
fn observations_across_patients_with_their_patients_and_devices() {
    let dir = TempDir::new("registry-population");
    let hub = Hub::start(&dir.0);
    let mut api = Api {
        base: hub.base.clone(),
        served: Vec::new(),
    };
    api.put("Patient/anna", anna());
    api.put(
        "Device/watch-1",
        json!({"resourceType": "Device", "serialNumber": "SN-1", "status": "active"}),
    );
    // Heart rate of three patients, interleaved in time, and SpO2 that must not match.
    let mut sent = Vec::new();
    for i in 0..9i64 {
        let patient = ["anna", "ben", "cleo"][i as usize % 3];
        let when = minutes_ago(60 - i);
        let mut o = observation(patient, "8867-4", 60.0 + i as f64, "/min", &when);
        if patient == "anna" {
            o["device"] = json!({"reference": "Device/watch-1"});
        }
        assert_eq!(
            post(&format!("{}/Observation", hub.base), &o.to_string()).status,
            201
        );
        let spo2 = observation(patient, "59408-5", 97.0, "%", &when);
        assert_eq!(
            post(&format!("{}/Observation", hub.base), &spo2.to_string()).status,
            201
        );
        sent.push((patient, osler_core::Timestamp::parse(&when).unwrap().utc_ms));
    }
    let since = minutes_ago(90);
    let query = format!("Observation?code=http://loinc.org|8867-4&date=ge{since}&_count=2");
    let mut got = Vec::new();
    let mut url = format!("{}/{query}", hub.base);
    loop {
        let page = get(&url).json();
        api.served.push(page.clone());
        for e in page["entry"].as_array().into_iter().flatten() {
            let o = &e["resource"];
            assert_eq!(o["code"]["coding"][0]["code"], "8867-4", "{o}");
            let patient = o["subject"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_owned();
            let t = osler_core::Timestamp::parse(o["effectiveDateTime"].as_str().unwrap())
                .unwrap()
                .utc_ms;
            got.push((patient, t));
        }
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(n) => url = n["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    let want: Vec<(String, i64)> = sent.iter().map(|(p, t)| (p.to_string(), *t)).collect();
    assert_eq!(
        got, want,
        "every patient's heart rate, in time order, across pages"
    );
    let count = get(&format!(
        "{}/Observation?code=8867-4&date=ge{since}&_summary=count",
        hub.base
    ))
    .json();
    assert_eq!(count["total"], 9);
    let newest = get(&format!(
        "{}/Observation?code=8867-4&_sort=-date&_count=1",
        hub.base
    ))
    .json();
    assert_eq!(
        newest["entry"][0]["resource"]["subject"]["reference"],
        "Patient/cleo"
    );

    // The page's patients and devices come along once each, marked as included.
    let page = get(&format!(
        "{}/Observation?code=8867-4&_count=6&_include=Observation:patient&_include=Observation:device",
        hub.base
    ))
    .json();
    api.served.push(page.clone());
    let entries = page["entry"].as_array().unwrap();
    let included: Vec<String> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    // dev-1 is the test helpers' device, known only from readings: a minimal Device.
    assert_eq!(
        included,
        [
            "Patient/anna",
            "Patient/ben",
            "Patient/cleo",
            "Device/dev-1",
            "Device/watch-1"
        ]
    );
    let anna = entries
        .iter()
        .find(|e| e["resource"]["id"] == "anna")
        .unwrap();
    assert_eq!(
        anna["resource"]["name"][0]["family"], "Müller",
        "the enrolled Patient, not a stub"
    );
    assert_eq!(
        get(&format!(
            "{}/Observation?_include=Observation:encounter&code=8867-4",
            hub.base
        ))
        .outcome(400)["expression"][0],
        "_include"
    );

    assert_valid_fhir(&dir.0, &api.served);
}

#[test]
fn registry_writes_in_bundles_are_whole_or_entry_by_entry() {
    let dir = TempDir::new("registry-bundles");
    let hub = Hub::start(&dir.0);
    let mut api = Api {
        base: hub.base.clone(),
        served: Vec::new(),
    };
    let put = |url: &str, resource: Value| json!({"resource": resource, "request": {"method": "PUT", "url": url}});
    let obs = observation("b1", "8867-4", 64.0, "/min", &minutes_ago(5));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        put("Practitioner/p1", json!({"resourceType": "Practitioner", "name": [{"family": "Ade"}]})),
        put("Patient/b1", json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "B-1"}],
            "generalPractitioner": [{"reference": "Practitioner/p1"}]})),
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        put("Device/d1", json!({"resourceType": "Device", "serialNumber": "SN-B1"})),
        put("DeviceUseStatement/u1", json!({"resourceType": "DeviceUseStatement", "status": "active",
            "subject": {"reference": "Patient/b1"}, "device": {"reference": "Device/d1"},
            "timingPeriod": {"start": "2026-01-01T00:00:00Z"}})),
    ]});
    let r = api.send("POST", "", &tx, &[("Prefer", "return=representation")]);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    let statuses: Vec<&str> = r["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201 Created"; 5], "{r}");
    assert_eq!(r["entry"][1]["response"]["etag"], "W/\"1\"");
    // The Observation created in the Bundle names its version too.
    assert!(
        r["entry"][2]["response"]["location"]
            .as_str()
            .unwrap()
            .ends_with("/_history/1"),
        "{r}"
    );
    assert_eq!(r["entry"][2]["resource"]["meta"]["versionId"], "1");
    assert!(
        r["entry"][1]["response"]["location"]
            .as_str()
            .unwrap()
            .ends_with("/Patient/b1/_history/1")
    );
    assert_eq!(
        api.get("DeviceUseStatement/u1")["device"]["reference"],
        "Device/d1"
    );

    // A transaction with one entry the store refuses (an MRN that is b1's) stores nothing.
    let obs2 = observation("b2", "8867-4", 65.0, "/min", &minutes_ago(4));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        put("Practitioner/p2", json!({"resourceType": "Practitioner"})),
        {"resource": obs2, "request": {"method": "POST", "url": "Observation"}},
        put("Patient/b2", json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "B-1"}]})),
    ]});
    let issue = api.send("POST", "", &tx, &[]).outcome(409);
    assert_eq!(
        issue["expression"][0], "Bundle.entry[2].resource.identifier",
        "{issue}"
    );
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nothing was stored")
    );
    assert_eq!(get(&format!("{}/Practitioner/p2", hub.base)).status, 404);
    assert_eq!(count_for(&hub, "b2"), 0);
    // One the checks refuse before the store names its element too.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        put("Practitioner/p3", json!({"resourceType": "Practitioner"})),
        put("Patient/b3", json!({"resourceType": "Patient", "birthDate": "2999-01-01"})),
    ]});
    let issue = api.send("POST", "", &tx, &[]).outcome(422);
    assert_eq!(
        issue["expression"][0], "Bundle.entry[1].resource.birthDate",
        "{issue}"
    );
    assert_eq!(get(&format!("{}/Practitioner/p3", hub.base)).status, 404);

    // A batch: each entry on its own; conditional update and create by search.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        put("Patient?identifier=urn:mrn|B-1", json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "B-1"}],
            "name": [{"family": "Berg"}], "generalPractitioner": [{"reference": "Practitioner/p1"}]})),
        put("Patient/b4", json!({"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/nobody"}]})),
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "B-1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|B-1"}},
        put("Patient/b1", json!({"resourceType": "Patient"})),
    ]});
    let mut b = batch.clone();
    b["entry"][3]["request"]["ifMatch"] = json!("W/\"1\"");
    let r = api.send("POST", "", &b, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    let e = r["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "200 OK", "{r}");
    assert!(
        e[0]["response"]["location"]
            .as_str()
            .unwrap()
            .contains("/Patient/b1/_history/2"),
        "{r}"
    );
    assert_eq!(e[1]["response"]["status"], "422 Unprocessable Entity");
    assert_eq!(
        e[1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.generalPractitioner[0].reference",
        "{r}"
    );
    assert_eq!(
        e[2]["response"]["status"], "200 OK",
        "the conditional create found b1: {r}"
    );
    assert_eq!(
        e[3]["response"]["status"], "412 Precondition Failed",
        "b1 is at version 2 now: {r}"
    );
    assert_eq!(api.get("Patient/b1")["name"][0]["family"], "Berg");
    assert_valid_fhir(&dir.0, &api.served);
}

#[test]
fn a_transaction_names_its_new_resources_by_urn_uuid() {
    let dir = TempDir::new("registry-uuid");
    let hub = Hub::start(&dir.0);
    let mut api = Api {
        base: hub.base.clone(),
        served: Vec::new(),
    };
    let (p, d) = (
        "urn:uuid:5e0a6d3c-1b3e-4c55-9f1e-2a7c1d1e0001",
        "urn:uuid:5e0a6d3c-1b3e-4c55-9f1e-2a7c1d1e0002",
    );
    let mut obs = observation("x", "8867-4", 66.0, "/min", &minutes_ago(3));
    obs["subject"] = json!({"reference": p});
    obs["device"] = json!({"reference": d});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "resource": {"resourceType": "Patient", "name": [{"family": "Neu"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": d, "resource": {"resourceType": "Device", "serialNumber": "SN-NEU"},
         "request": {"method": "POST", "url": "Device"}},
        {"resource": {"resourceType": "DeviceUseStatement", "status": "active",
            "subject": {"reference": p}, "device": {"reference": d},
            "timingPeriod": {"start": minutes_ago(60)}},
         "request": {"method": "POST", "url": "DeviceUseStatement"}},
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
    ]});
    let r = api.send("POST", "", &tx, &[("Prefer", "return=representation")]);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    let e = r["entry"].as_array().unwrap();
    let patient = e[0]["resource"]["id"].as_str().unwrap().to_owned();
    let device = e[1]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(e[0]["response"]["status"], "201 Created", "{r}");
    assert_eq!(
        e[2]["resource"]["subject"]["reference"],
        format!("Patient/{patient}"),
        "{r}"
    );
    assert_eq!(
        e[2]["resource"]["device"]["reference"],
        format!("Device/{device}")
    );
    assert_eq!(
        e[3]["resource"]["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(count_for(&hub, &patient), 1);
    // A placeholder nothing in the Bundle names is refused, naming the element.
    let mut lost = observation("x", "8867-4", 67.0, "/min", &minutes_ago(2));
    lost["subject"] = json!({"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": lost, "request": {"method": "POST", "url": "Observation"}}]});
    let issue = api.send("POST", "", &tx, &[]).outcome(422);
    assert_eq!(
        issue["expression"][0], "Bundle.entry[0].resource.subject.reference",
        "{issue}"
    );
    assert_valid_fhir(&dir.0, &api.served);
}
