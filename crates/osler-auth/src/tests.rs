use super::*;

fn caller(role: Role, scopes: &str, compartment: Compartment) -> Caller {
    Caller {
        subject: "t".into(),
        role,
        scopes: Scopes::parse(scopes).unwrap(),
        compartment,
    }
}

#[test]
fn v2_scopes_parse_and_print_back() {
    for s in [
        "patient/Observation.rs",
        "user/*.cruds",
        "system/Observation.c",
        "openid",
        "launch/patient",
    ] {
        assert_eq!(Scope::parse(s).unwrap().to_string(), s);
    }
}

#[test]
fn v1_aliases_mean_their_v2_letters() {
    assert_eq!(
        Scope::parse("patient/Observation.read")
            .unwrap()
            .to_string(),
        "patient/Observation.rs"
    );
    assert_eq!(
        Scope::parse("user/Patient.write").unwrap().to_string(),
        "user/Patient.cud"
    );
    assert_eq!(
        Scope::parse("system/*.*").unwrap().to_string(),
        "system/*.cruds"
    );
}

#[test]
fn malformed_scopes_are_refused_with_the_reason() {
    assert!(matches!(
        Scope::parse("patient/Observation.sr"),
        Err(ScopeError::Letters(_))
    ));
    assert!(matches!(
        Scope::parse("patient/Observation.x"),
        Err(ScopeError::Letters(_))
    ));
    assert!(matches!(
        Scope::parse("patient/Observation.rr"),
        Err(ScopeError::Letters(_))
    ));
    assert!(matches!(
        Scope::parse("doctor/Observation.r"),
        Err(ScopeError::Shape(_))
    ));
    assert!(matches!(
        Scope::parse("patient/observation.r"),
        Err(ScopeError::Type(..))
    ));
    assert!(matches!(
        Scope::parse("patient/Observation.rs?category=vital-signs"),
        Err(ScopeError::Constraint(_))
    ));
}

#[test]
fn a_scope_grants_only_its_type_and_letters() {
    let c = caller(Role::Integration, "system/Observation.rs", Compartment::All);
    assert!(c.may("Observation", Interaction::Search).is_ok());
    assert!(c.may("Observation", Interaction::Read).is_ok());
    assert!(matches!(
        c.may("Observation", Interaction::Create),
        Err(Denied::Scope(_))
    ));
    assert!(matches!(
        c.may("Patient", Interaction::Read),
        Err(Denied::Scope(_))
    ));
    let wide = caller(Role::Integration, "system/*.cruds", Compartment::All);
    assert!(
        wide.decide(Policy::Everyone("CarePlan", Interaction::Search))
            .is_ok()
    );
    assert!(
        wide.decide(Policy::Resource(OPERATIONS, Interaction::Read))
            .is_ok()
    );
}

#[test]
fn the_role_caps_what_scopes_grant() {
    let p = caller(
        Role::Patient,
        "patient/*.cruds",
        Compartment::patients(vec!["p1".into()]),
    );
    assert!(p.may("Observation", Interaction::Create).is_ok());
    assert!(matches!(
        p.may("Patient", Interaction::Update),
        Err(Denied::Role { .. })
    ));
    assert!(matches!(
        p.may("CarePlan", Interaction::Update),
        Err(Denied::Role { .. })
    ));
    let clin = caller(
        Role::Clinician,
        "user/*.cruds",
        Compartment::patients(vec![]),
    );
    assert!(clin.may("CarePlan", Interaction::Update).is_ok());
    assert!(matches!(
        clin.may("Patient", Interaction::Delete),
        Err(Denied::Role { .. })
    ));
    // Nobody writes the audit log; only administrators read it.
    let admin = caller(Role::Admin, "user/*.cruds", Compartment::All);
    assert!(admin.may(AUDIT_EVENT, Interaction::Search).is_ok());
    assert!(admin.may(AUDIT_EVENT, Interaction::Create).is_err());
    let wide = caller(Role::Integration, "system/*.cruds", Compartment::All);
    assert!(wide.may(AUDIT_EVENT, Interaction::Search).is_err());
}

#[test]
fn routes_over_everyone_refuse_a_compartment() {
    let p = caller(
        Role::Integration,
        "patient/*.rs",
        Compartment::patients(vec!["p1".into()]),
    );
    assert!(
        p.decide(Policy::Resource("CarePlan", Interaction::Read))
            .is_ok()
    );
    assert!(matches!(
        p.decide(Policy::Everyone("CarePlan", Interaction::Search)),
        Err(Denied::Compartment(_))
    ));
}

#[test]
fn compartments_answer_membership() {
    let c = Compartment::patients(vec!["b".into(), "a".into(), "b".into()]);
    assert!(c.contains("a") && c.contains("b") && !c.contains("c"));
    assert!(Compartment::All.contains("anyone"));
}

#[test]
fn tokens_are_long_prefixed_and_hashed() {
    let s = token::secret(token::ACCESS_PREFIX, &[7u8; 32]);
    assert!(s.starts_with("osl_at_") && s.len() == 7 + 43, "{s}");
    assert_ne!(
        token::hash(&s),
        token::hash(&token::secret(token::ACCESS_PREFIX, &[8u8; 32]))
    );
    assert_eq!(token::parse_duration("15m"), Some(900_000));
    assert_eq!(token::parse_duration("2d"), Some(172_800_000));
    assert_eq!(token::parse_duration("0s"), None);
    assert_eq!(token::parse_duration("soon"), None);
}
