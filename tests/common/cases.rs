//! Bad-input cases: a config, and the one error line it must give.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client as Etcd;

use super::{TestEnv, World};

/// A config, and what the error must say.
pub struct Case {
    pub name: &'static str,
    pub config: String,
    pub expect: &'static [&'static str],
}

/// A client of the TLS etcd as `user`.
pub async fn secure_etcd_client(env: &TestEnv, user: &str, password: &str) -> Etcd {
    let tls = env.get("TLS_DIR");
    let read = |file: &str| std::fs::read(format!("{tls}/{file}")).unwrap();
    let options = etcd_client::ConnectOptions::new()
        .with_user(user, password)
        .with_auto_token_refresh(true)
        .with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
                .identity(etcd_client::Identity::from_pem(
                    read("client.pem"),
                    read("client.key"),
                )),
        );
    Etcd::connect([env.get("ETCD_TLS")], Some(options))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the TLS etcd ({e}): run `make testenv`"))
}

/// Runs `sync run` with a time limit: a bad input must stop the agent by itself.
fn run_case(world: &World, case: &Case) -> (bool, String) {
    let path = world.write_config(&case.config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync"))
        .arg("--config-file")
        .arg(&path)
        .arg("run")
        .env("TEST_DB_PASSWORD", "sync")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("case {:?}: the agent did not stop by itself", case.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub async fn check_cases(world: &World, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let (success, stderr) = run_case(world, case);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        let ok = !success
            && errors.len() == 1
            && case.expect.iter().all(|want| errors[0].contains(want))
            && world.etcd_key_count(&world.state_prefix()).await == 0
            && world.etcd_key_count(&world.prefix()).await == 0;
        if !ok {
            failures.push(format!(
                "case {:?}: success={success}, expected {:?} in one ERROR line, got:\n{stderr}",
                case.name, case.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
