//! The bodies of Osler's fuzz targets: one function per parser of outside input. Each takes
//! arbitrary bytes and must never panic; where a parser has a writer, what it accepts must
//! survive a round trip through the writer and back.
//!
//! Two callers: the coverage-guided fuzzer (libFuzzer, `fuzz/`, run by `./scripts/fuzz`) and
//! `tests/regressions.rs`, which replays the committed seeds and every input a fuzzer ever
//! crashed on (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) in the normal test run.
//!
//! Targets: [`TARGETS`].

use osler_core::Timestamp;

/// Readings are judged against this clock (2025-06-15T00:00:00Z): inputs are about then.
pub const NOW_MS: i64 = 1_749_945_600_000;

/// A target's body: arbitrary bytes in, a panic if something is wrong.
pub type Target = fn(&[u8]);

/// Every target by name (the name is its folder under `fuzz/seeds` and `fuzz/regressions`).
pub const TARGETS: &[(&str, Target)] = &[
    ("device_reading", device_reading),
    ("fhir_observation", fhir_observation),
    ("fhir_bundle", fhir_bundle),
    ("fhir_search", fhir_search),
    ("time", time),
    ("batch_envelope", batch_envelope),
    ("edge_state", edge_state),
    ("edge_config", edge_config),
    ("fhir_registry", fhir_registry),
    ("hub_assignments", hub_assignments),
    ("auth_scopes", auth_scopes),
    ("jwt_assertion", jwt_assertion),
    ("audit_export", audit_export),
    ("gateway_request", gateway_request),
    ("hub_bodies", hub_bodies),
];

/// The gateway's device format, as HTTP bodies and MQTT payloads arrive.
pub fn device_reading(data: &[u8]) {
    let Ok(items) = osler_gateway::input::parse_message(data, NOW_MS) else {
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        // What the quarantine keeps of an element is the element's own bytes.
        if let Some(raw) = osler_gateway::input::element(data, i) {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&raw).is_ok(),
                "an element's bytes are JSON"
            );
        }
        match item {
            Ok(osler_gateway::input::Item::Reading(input)) => {
                let _ = input.validate(NOW_MS);
            }
            Ok(osler_gateway::input::Item::Emergency(e)) => {
                assert!(e.emergency.id.starts_with(osler_rules::EMERGENCY_PREFIX));
                assert!(
                    !e.patient.is_empty() || e.device.is_some(),
                    "someone to attribute it to"
                );
            }
            Err(_) => {}
        }
    }
}

/// A FHIR Observation as posted: what is accepted comes back from the Observation Osler serves
/// for it as the same reading.
pub fn fhir_observation(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(input) = osler_fhir::parse_observation(&v, NOW_MS) else {
        return;
    };
    let Ok(reading) = input.validate(NOW_MS) else {
        return;
    };
    let served = osler_fhir::observation_json("x", &reading);
    let again = osler_fhir::parse_observation(&served, NOW_MS)
        .unwrap_or_else(|e| panic!("a served Observation does not parse: {e}: {served}"))
        .validate(NOW_MS)
        .unwrap_or_else(|e| panic!("a served Observation is not valid: {e}: {served}"));
    assert_eq!(
        (again.patient, again.metric, again.taken, again.value),
        (
            reading.patient,
            reading.metric,
            reading.taken,
            reading.value
        ),
        "{served}"
    );
}

/// A request Bundle (transaction or batch).
pub fn fhir_bundle(data: &[u8]) {
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = osler_fhir::parse_bundle(&v, NOW_MS);
        // As the hub reads a transaction: placeholders resolved first.
        let mut n = 0;
        let _ = osler_fhir::bundle::resolve_placeholders(&mut v, || {
            n += 1;
            Ok::<_, ()>(format!("id{n}"))
        });
        let _ = osler_fhir::parse_bundle(&v, NOW_MS);
    }
}

/// A search's query string, as Observation search and `$lastn` read it.
pub fn fhir_search(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(params) = osler_fhir::search::parse_query(text) {
        let _ = osler_fhir::search::parse_observation_search(&params, false);
        let _ = osler_fhir::search::parse_observation_search(&params, true);
        for kind in osler_registry::Kind::ALL {
            let _ = osler_fhir::registry::parse_registry_search(kind, &params);
        }
        let _ = osler_fhir::shape::subset_of(&params);
        // The query written back reads as the same parameters.
        let again = osler_fhir::search::parse_query(&osler_fhir::search::encode_query(&params))
            .expect("an encoded query parses");
        assert_eq!(again, params);
    }
    let _ = osler_fhir::parse_if_none_exist(text);
}

/// ISO 8601 date-times and the spans of search dates: a parsed time, written, reads back the
/// same.
pub fn time(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Timestamp::parse(text) {
        let written = t.to_string();
        assert_eq!(
            Timestamp::parse(&written).as_ref(),
            Ok(&t),
            "{text:?} -> {written:?}"
        );
    }
    if let Ok(span) = osler_core::time::parse_span(text) {
        assert!(span.start_ms <= span.end_ms, "{text:?}: {span:?}");
    }
}

/// A gateway batch as the hub receives it, before and after the signature check.
pub fn batch_envelope(data: &[u8]) {
    let Ok(env) = osler_wire::Envelope::parse(data) else {
        return;
    };
    // A key that signed nothing here: the check must refuse, not crash.
    let key = osler_wire::GatewayKey::from_hex(&"07".repeat(32)).expect("64 hex digits");
    let public = osler_wire::parse_public_key(&key.public_hex()).expect("a key's own public key");
    let _ = env.verify(&public);
    if let Ok(entries) = env.entries() {
        for e in entries {
            let _ = e.to_reading();
        }
    }
    let _ = env.alert_entries();
    let _ = env.summary_entries();
}

/// A stored edge stream state: what decodes encodes to bytes that decode to the same stream.
pub fn edge_state(data: &[u8]) {
    let Ok(stream) = osler_edge::Stream::decode("p", "heart-rate", Some("d"), data) else {
        return;
    };
    let mut bytes = Vec::new();
    stream.encode(&mut bytes);
    let again = osler_edge::Stream::decode("p", "heart-rate", Some("d"), &bytes)
        .expect("an encoded state decodes");
    let mut twice = Vec::new();
    again.encode(&mut twice);
    assert_eq!(bytes, twice);
}

/// The gateway's edge configuration file: what is accepted, printed, reads back the same.
pub fn edge_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = osler_edge::EdgeConfig::from_toml(text) {
        let printed = config.to_toml();
        let again = osler_edge::EdgeConfig::from_toml(&printed)
            .unwrap_or_else(|e| panic!("the printed configuration does not read back: {e}"));
        assert_eq!(again, config, "{printed}");
    }
}

/// A registry resource as a client writes it (the first byte picks the kind): what is accepted,
/// served back and written again is the same resource with the same search terms, references
/// and assignment, and cutting it to a subset never panics.
pub fn fhir_registry(data: &[u8]) {
    use osler_registry::{Kind, StoredResource, WriteMode};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[pick as usize % Kind::ALL.len()];
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let Ok(w) = osler_fhir::registry::prepare(kind, &v, "x", WriteMode::Update, None, NOW_MS)
    else {
        return;
    };
    let stored = StoredResource {
        kind,
        id: "x".into(),
        version: 1,
        updated_ms: NOW_MS,
        body: w.body.clone(),
    };
    let mut served = osler_fhir::registry::resource_json(&stored);
    let again = osler_fhir::registry::prepare(kind, &served, "x", WriteMode::Update, None, NOW_MS)
        .unwrap_or_else(|e| panic!("a served {kind} does not check: {e}: {served}"));
    assert_eq!(
        (
            &again.body,
            &again.terms,
            &again.refs,
            &again.unique,
            &again.assignment
        ),
        (&w.body, &w.terms, &w.refs, &w.unique, &w.assignment),
        "{served}"
    );
    let deleted = osler_fhir::registry::deleted(&stored);
    let _ = osler_fhir::registry::prepare(kind, &deleted, "x", WriteMode::Update, None, NOW_MS);
    osler_fhir::shape::apply_subset(&mut served, &osler_fhir::shape::Subset::Summary);
}

/// The hub's device assignments as a gateway fetches them: never a panic, whatever arrives.
pub fn hub_assignments(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cache = osler_gateway::assignments::AssignmentCache::default();
    if let Ok(n) = osler_gateway::assignments::apply(&cache, text) {
        let a = cache.read().unwrap_or_else(|p| p.into_inner());
        assert_eq!(a.len(), n);
        for x in a.iter() {
            let _ = a.patient_at(&x.device, x.start_ms);
        }
    }
}

/// SMART scopes as a token request or the command line gives them: what parses prints back
/// and parses again to the same scopes.
pub fn auth_scopes(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = osler_auth::Scopes::parse(text) {
        let again = osler_auth::Scopes::parse(&s.to_string()).expect("printed scopes parse");
        assert_eq!(again, s);
    }
}

/// A client's JWT assertion at the token endpoint, against a fixed key set: never a panic,
/// never accepted unsigned.
pub fn jwt_assertion(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
    let _ = osler_auth::jwt::issuer(text);
    assert!(
        osler_auth::jwt::verify(text, JWKS, "https://hub/auth/token", NOW_MS / 1000).is_err(),
        "nothing verifies against keys nobody holds"
    );
}

/// An exported audit log as a third party reads it: never a panic; an untouched export of
/// a log written here verifies.
pub fn audit_export(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let vk = osler_audit::note::verifier_key(&key.verifying_key());
    let v = osler_audit::note::parse_verifier_key(&vk).expect("own key");
    let _ = osler_audit::verify::verify(text, &v, None);
    let _ = osler_audit::verify::verify(text, &v, Some(text));
    let _ = osler_audit::note::parse_verifier_key(text);
}

/// A gateway's signed-request header as the hub reads it: never a panic, never valid.
pub fn gateway_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = osler_wire::parse_public_key(&"11".repeat(32));
    let _ = osler_wire::request_gateway(text);
    if let Ok(k) = key {
        assert!(osler_wire::verify_request(text, &k, "GET", "/alerts/overrides", NOW_MS).is_err());
    }
}

/// The bodies people send the hub about alerts, as its routes read them: the first byte picks
/// the reader (an answer to an alert, a care team's escalation policy, a webhook endpoint).
/// Never a panic; what is accepted keeps the promises the routes make.
pub fn hub_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let caps = osler_hub::SnoozeCaps::default();
            for what in [
                "delivered",
                "seen",
                "ack",
                "accept",
                "snooze",
                "unsnooze",
                "comment",
                "resolve",
            ] {
                for severity in ["critical", "urgent", "warning"] {
                    let Ok((act, note)) =
                        osler_hub::parse_answer(what, body, severity, &caps, NOW_MS)
                    else {
                        continue;
                    };
                    if let osler_store::lifecycle::Act::Snooze { until_ms, team } = act {
                        let cap = (caps.minutes(severity) * 60_000.0) as i64;
                        assert!(
                            until_ms > NOW_MS && until_ms <= NOW_MS + cap,
                            "a snooze within its cap"
                        );
                        assert!(!team || note.is_some(), "a team snooze has its reason");
                    }
                    assert!(note.is_none_or(|n| !n.trim().is_empty() && n.chars().count() <= 2000));
                }
            }
        }
        1 => {
            if let Ok(p) = osler_hub::parse_policy(body) {
                assert!(
                    osler_store::escalation::check(&p).is_ok(),
                    "an accepted policy is valid"
                );
            }
        }
        3 => {
            // The dashboard's answer form: whatever it holds, the page it returns to is the
            // dashboard's, and what it asks is what the API would be asked.
            let (json, back) = match osler_hub::answer_form(body) {
                Ok((json, back)) => (Some(json), back),
                Err((_, back)) => (None, back),
            };
            assert!(back.starts_with("/ui/") && !back.starts_with("//") && !back.contains('\\'));
            if let Some(json) = json {
                let caps = osler_hub::SnoozeCaps::default();
                let _ = osler_hub::parse_answer("snooze", &json, "critical", &caps, NOW_MS);
            }
        }
        _ => {
            if let Ok(e) = osler_hub::parse_endpoint(body) {
                assert!(e.url.starts_with("https://") || e.url.starts_with("http://"));
            }
        }
    }
}
