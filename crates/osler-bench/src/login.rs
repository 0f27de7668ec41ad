//! `osler bench login`: what a login costs on a real hub over TLS, and that a wrong password
//! and an unknown name cost the same (so timing does not tell whether an account exists).
//!
//! Patient accounts (password only: the Argon2id verification is the cost) are enrolled, then
//! each is logged in `--logins` times in turn, sequentially, against wrong passwords and
//! unknown names from separate addresses' worth of attempts kept under the throttle (one
//! failure per name). Also: a bearer-token check's cost, as the difference between a public
//! route and a guarded one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::percentile;
use crate::process::{Server, agent, request_on};

#[derive(clap::Args, Debug)]
pub struct LoginBenchArgs {
    /// Accounts enrolled (each logged in once per round).
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// Rounds of logins.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
}

fn post(agent: &ureq::Agent, url: &str, body: serde_json::Value) -> (u16, f64) {
    let t = Instant::now();
    let status = match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(_) => 0,
    };
    (status, t.elapsed().as_secs_f64() * 1e3)
}

fn line(label: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label:<44} {:>8.2} {:>8.2} {:>8.2}",
        percentile(ms, 50.0),
        percentile(ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

pub fn run(args: LoginBenchArgs) -> anyhow::Result<()> {
    let (osler, data) = crate::process::setup(args.osler.as_deref(), None, "login")?;
    let hub_dir = data.join("hub");
    let hub_s = hub_dir.to_str().context("UTF-8 paths")?.to_owned();
    std::fs::create_dir_all(&data)?;
    let server = Server::spawn(
        &osler,
        &["serve", "--data", &hub_s, "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    )?;
    let root = server.base.trim_end_matches("/fhir").to_owned();
    let agent = agent(Duration::from_secs(30));
    let mut names = Vec::new();
    for i in 0..args.accounts {
        let name = format!("bench-{i}");
        let code = user_add(&osler, &hub_s, &name, "patient", &format!("p{i}"))?;
        let (s, _) = post(
            &agent,
            &format!("{root}/auth/enrol"),
            json!({"code": code, "password": "brass lantern harbour"}),
        );
        if s != 200 {
            bail!("enrolment answered {s}");
        }
        names.push(name);
    }
    let (mut ok, mut wrong, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for n in &names {
            let (s, ms) = post(
                &agent,
                &format!("{root}/auth/login"),
                json!({"name": n, "password": "brass lantern harbour"}),
            );
            if s != 200 {
                bail!("login answered {s}");
            }
            ok.push(ms);
            // One failure per name and round stays under the throttle (three in a row).
            if round < 2 {
                let (s, ms) = post(
                    &agent,
                    &format!("{root}/auth/login"),
                    json!({"name": n, "password": "not the right one"}),
                );
                if s != 401 {
                    bail!("a wrong password answered {s}");
                }
                wrong.push(ms);
                let (s, ms) = post(
                    &agent,
                    &format!("{root}/auth/login"),
                    json!({"name": format!("ghost-{round}-{n}"), "password": "not the right one"}),
                );
                if s != 401 {
                    bail!("an unknown name answered {s}");
                }
                unknown.push(ms);
            }
        }
    }
    // The guard's own cost: a guarded read against the public one beside it.
    let (mut public, mut guarded) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let t = Instant::now();
        agent.get(&format!("{root}/healthz")).call()?;
        public.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        request_on(&agent, "GET", &format!("{root}/fhir/Practitioner?_count=1")).call()?;
        guarded.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "osler bench login: {} accounts, {} rounds, over TLS (Argon2id m=19 MiB, t=2, p=1)",
        args.accounts, args.rounds
    );
    println!("{:<44} {:>8} {:>8} {:>8}", "ms", "p50", "p99", "max");
    line("login, right password (tokens issued)", &mut ok);
    line("login, wrong password", &mut wrong);
    line("login, unknown name", &mut unknown);
    line("GET /healthz (public, TLS, keep-alive)", &mut public);
    line(
        "GET /fhir/Practitioner (token checked, audited)",
        &mut guarded,
    );
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// `osler hub user add` for a patient (`of` their Patient) or a clinician (`of` their
/// Practitioner): the enrolment code it prints.
fn user_add(
    osler: &std::path::Path,
    hub_dir: &str,
    name: &str,
    role: &str,
    of: &str,
) -> anyhow::Result<String> {
    let link = if role == "patient" {
        "--patient"
    } else {
        "--practitioner"
    };
    let out = std::process::Command::new(osler)
        .args(["hub", "user", "add", "--data", hub_dir, "--name", name])
        .args(["--role", role, link, of])
        .output()?;
    if !out.status.success() {
        bail!(
            "osler hub user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Signs a clinician in as a person does (an account for `practitioner`, enrolment with a
/// password and TOTP, the password, then the current code) and returns their access token.
pub fn clinician_token(
    osler: &std::path::Path,
    hub_dir: &str,
    root: &str,
    agent: &ureq::Agent,
    practitioner: &str,
) -> anyhow::Result<String> {
    let code = user_add(osler, hub_dir, practitioner, "clinician", practitioner)?;
    let call = |path: &str, body: serde_json::Value| -> anyhow::Result<serde_json::Value> {
        let r = agent
            .post(&format!("{root}{path}"))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .with_context(|| format!("POST {path}"))?;
        Ok(serde_json::from_str(&r.into_string()?)?)
    };
    let password = "brass lantern harbour evening";
    let enrolled = call("/auth/enrol", json!({"code": code, "password": password}))?;
    let secret = enrolled["second_factor"]["secret"]
        .as_str()
        .and_then(osler_auth::totp::from_base32)
        .context("enrolment gave no TOTP secret")?;
    let first = call(
        "/auth/login",
        json!({"name": practitioner, "password": password}),
    )?;
    let mfa = first["mfa_token"]
        .as_str()
        .context("no second-factor step")?;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let totp = format!(
        "{:06}",
        osler_auth::totp::code_at(&secret, osler_auth::totp::step_of(now_s), 6)
    );
    let tokens = call(
        "/auth/second-factor",
        json!({"mfa_token": mfa, "code": totp}),
    )?;
    tokens["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access token")
}
