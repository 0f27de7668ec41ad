//! The dashboard over HTTP as a browser speaks it (cookies, forms, redirects), without a
//! browser: the session's cookies and their renewal, the same-origin rule for changes made
//! with a cookie, and what the worklist shows (only the viewer's patients, riskiest first,
//! stale values marked, data days counted).

mod common;

use common::*;
use serde_json::json;

/// A cookie's value from a response's `Set-Cookie` headers.
fn set_cookie(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
}

fn page(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("Authorization", "")];
    all.extend_from_slice(headers);
    let req = request_on(&agent_without_redirects(), method, url, &all);
    answer(if method == "POST" {
        req.send_string(body)
    } else {
        req.call()
    })
}

struct Ward {
    _dir: TempDir,
    hub: Hub,
    nurse: Person,
}

fn ward() -> Ward {
    let dir = TempDir::new("dashboard-pages");
    let hub = Hub::start(&dir.0);
    let b = &hub.base;
    for (path, body) in [
        (
            "Patient/calm",
            json!({"resourceType": "Patient", "name": [{"given": ["Cal"], "family": "Mer"}]}),
        ),
        ("Patient/crisis", json!({"resourceType": "Patient"})),
        ("Patient/quiet", json!({"resourceType": "Patient"})),
        ("Patient/other", json!({"resourceType": "Patient"})),
        ("Practitioner/n1", json!({"resourceType": "Practitioner"})),
    ] {
        assert_eq!(
            send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]).status,
            201
        );
    }
    for p in ["calm", "crisis", "quiet"] {
        let team = json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": format!("Patient/{p}")},
            "participant": [{"member": {"reference": "Practitioner/n1"}}]});
        let a = send(
            "PUT",
            &format!("{b}/CareTeam/t-{p}"),
            &team.to_string(),
            &[],
        );
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let post_o = |o: serde_json::Value| {
        let a = post(&format!("{b}/Observation"), &o.to_string());
        assert_eq!(a.status, 201, "{}", a.text);
    };
    // calm: heart rate now and on two earlier days of this month; quiet: heart rate two hours
    // ago (stale: continuous sensors are expected every 15 minutes); crisis: a pressure of 195.
    post_o(observation(
        "calm",
        "8867-4",
        64.0,
        "/min",
        &seconds_ago(30),
    ));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day_of_month = osler_core::time::civil_from_days(now_s / 86_400).2 as i64;
    for back in 1..=2.min(day_of_month - 1) {
        post_o(observation(
            "calm",
            "8867-4",
            66.0,
            "/min",
            &seconds_ago(back * 86_400),
        ));
    }
    post_o(observation(
        "quiet",
        "8867-4",
        70.0,
        "/min",
        &minutes_ago(120),
    ));
    // quiet also typed in a weight yesterday: a manual entry (no device) is no data day.
    if day_of_month >= 2 {
        let mut typed = observation("quiet", "29463-7", 71.0, "kg", &seconds_ago(86_400));
        typed.as_object_mut().unwrap().remove("device");
        post_o(typed);
    }
    post_o(blood_pressure("crisis", 195.0, 90.0, &seconds_ago(5)));
    post_o(blood_pressure("other", 200.0, 90.0, &seconds_ago(5)));
    let nurse = enrol_person(&hub, &dir.0, "nurse", "clinician", Some("n1"));
    Ward {
        _dir: dir,
        hub,
        nurse,
    }
}

/// Signs in through the forms: the password, then the current TOTP code; the two cookies.
fn sign_in(w: &Ward) -> (String, String) {
    let root = w.hub.root();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let first = page(
        "POST",
        &format!("{root}/ui/login"),
        &format!(
            "name={}&password={}&next=%2Fui%2Finbox",
            w.nurse.name,
            w.nurse.password.replace(' ', "+")
        ),
        &form,
    );
    assert_eq!(first.status, 200, "{}", first.text);
    let mfa = first
        .text
        .split(r#"name="mfa_token" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the second step carries the login's mfa token")
        .to_owned();
    let code = totp(w.nurse.secret.as_ref().unwrap(), 0);
    let second = page(
        "POST",
        &format!("{root}/ui/second-factor"),
        &format!("mfa_token={mfa}&code={code}&next=%2Fui%2Finbox"),
        &form,
    );
    assert_eq!(second.status, 303, "{}", second.text);
    assert_eq!(second.location.as_deref(), Some("/ui/inbox"));
    let session = set_cookie(&second, "osler_session").expect("a session cookie");
    let refresh = set_cookie(&second, "osler_refresh").expect("a refresh cookie");
    let all: Vec<&String> = second
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v)
        .collect();
    for c in &all {
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"),
            "{c}"
        );
    }
    (session, refresh)
}

#[test]
fn a_session_is_two_cookies_renewed_by_refresh_and_changes_must_come_from_the_hubs_pages() {
    let w = ward();
    let root = w.hub.root();
    // Without a session a page sends the browser to sign in, and back.
    let a = page("GET", &format!("{root}/ui/worklist"), "", &[]);
    assert_eq!(a.status, 303);
    assert_eq!(a.location.as_deref(), Some("/ui/login?next=/ui/worklist"));
    // A wrong password: the form again, with why.
    let wrong = page(
        "POST",
        &format!("{root}/ui/login"),
        "name=nurse&password=not+it",
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(wrong.status, 200);
    assert!(wrong.text.contains("wrong name or password"));
    assert!(set_cookie(&wrong, "osler_session").is_none());

    let (session, refresh) = sign_in(&w);
    let cookie = format!("osler_session={session}; osler_refresh={refresh}");
    let inbox = page(
        "GET",
        &format!("{root}/ui/inbox"),
        "",
        &[("Cookie", &cookie)],
    );
    assert_eq!(inbox.status, 200, "{}", inbox.text);
    assert!(inbox.text.contains("Alert inbox"));

    // An answer made with the cookie from another site (or from nowhere) is refused; from
    // the hub's own page it is done.
    let crisis =
        get(&format!("{root}/alerts?patient=crisis&state=raised")).json()["alerts"][0]["id"]
            .as_i64()
            .unwrap();
    let ack = format!("{root}/alerts/{crisis}/ack");
    let json = ("Content-Type", "application/json");
    for origin in [None, Some("https://evil.example")] {
        let mut h = vec![("Cookie", cookie.as_str()), json];
        if let Some(o) = origin {
            h.push(("Origin", o));
        }
        let a = page("POST", &ack, "{}", &h);
        assert_eq!(a.status, 401, "{origin:?}: {}", a.text);
    }
    let ours = page(
        "POST",
        &ack,
        "{}",
        &[("Cookie", &cookie), json, ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(ours.status, 200, "{}", ours.text);

    // An access token that is no longer valid (here: unknown) with the refresh cookie: the
    // page renews the session through /ui/refresh and comes back.
    let stale = format!("osler_session=osl_at_gone; osler_refresh={refresh}");
    let a = page(
        "GET",
        &format!("{root}/ui/worklist"),
        "",
        &[("Cookie", &stale)],
    );
    assert_eq!(a.status, 303);
    let to = a.location.unwrap();
    assert!(to.starts_with("/ui/refresh?next="), "{to}");
    let renewed = page("GET", &format!("{root}{to}"), "", &[("Cookie", &stale)]);
    assert_eq!(renewed.status, 303, "{}", renewed.text);
    assert_eq!(renewed.location.as_deref(), Some("/ui/worklist"));
    let fresh = set_cookie(&renewed, "osler_session").expect("a new session");
    assert_ne!(fresh, session);
    // The refresh token rotated: the old one used again ends the whole login.
    let again = page("GET", &format!("{root}{to}"), "", &[("Cookie", &stale)]);
    assert_eq!(again.status, 303);
    assert!(again.location.unwrap().starts_with("/ui/login"));
    let after = page(
        "GET",
        &format!("{root}/ui/worklist"),
        "",
        &[("Cookie", &format!("osler_session={fresh}"))],
    );
    assert_eq!(
        after.status, 303,
        "the reuse revoked the renewed session too"
    );
}

#[test]
fn the_worklist_shows_only_the_viewers_patients_riskiest_first_with_stale_values_and_data_days() {
    let w = ward();
    let root = w.hub.root();
    let (session, _) = sign_in(&w);
    let cookie = format!("osler_session={session}");
    let a = page(
        "GET",
        &format!("{root}/ui/worklist"),
        "",
        &[("Cookie", &cookie)],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let html = a.text;
    assert!(!html.contains("row-other"), "another team's patient");
    let at = |id: &str| {
        html.find(&format!(r#"id="row-{id}""#))
            .unwrap_or_else(|| panic!("no row for {id}"))
    };
    // The crisis first, the silent heart rate next, the calm patient last.
    assert!(
        at("crisis") < at("quiet") && at("quiet") < at("calm"),
        "order"
    );
    let row = |id: &str| {
        let start = at(id);
        let end = html[start..].find("</tr>").unwrap() + start;
        html[start..end].to_owned()
    };
    assert!(row("crisis").contains("Critical") && row("crisis").contains("/ui/alerts/"));
    assert!(row("quiet").contains("stale: 2 h ago"), "{}", row("quiet"));
    assert!(row("calm").contains("Cal Mer"));
    assert!(
        row("calm").contains(r#"class="spark""#),
        "a heart-rate sparkline"
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = osler_core::time::civil_from_days(now_s / 86_400).2;
    let days = 3.min(day);
    assert!(
        row("calm").contains(&format!("{days} of {day}")),
        "{days} data days: {}",
        row("calm")
    );
    assert!(
        row("quiet").contains(&format!("1 of {day}")),
        "the typed-in weight is no data day: {}",
        row("quiet")
    );
    // The server says how long the page took.
    assert!(
        a.headers
            .iter()
            .any(|(k, v)| k == "server-timing" && v.contains("total;dur="))
    );
    // A patient of another team is not there for this nurse.
    let other = page(
        "GET",
        &format!("{root}/ui/patients/other"),
        "",
        &[("Cookie", &cookie)],
    );
    assert_eq!(other.status, 404);
}
