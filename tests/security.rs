//! Security: TLS to PostgreSQL, MariaDB and etcd in every mode, client certificates, etcd auth
//! with a role limited to the agent's two prefixes, and exactly the documented privileges.
//!
//! The test environment's servers present a certificate for the name `localhost` only, so
//! connecting to 127.0.0.1 tells `verify-ca` (passes) from `verify-full` (refused).

mod common;

use std::time::Duration;

use common::{check_cases, secure_etcd_client, Case, World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};
use etcd_client::{Permission, PermissionType};

/// Inserts a `database.tls` section into a config made by [`World::config_text`].
fn with_tls(config: &str, host: &str, tls: &str) -> String {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("  tls:\n{tls}")
    };
    config
        .replace("  host: 127.0.0.1\n", &format!("  host: {host}\n"))
        .replacen("  name: ", &format!("{tls}  name: "), 1)
}

/// Runs the agent on `config` until a row inserted by `insert` reaches etcd, then stops it.
async fn syncs_with(world: &World, config: &str, insert: &str, key: &str) {
    let path = world.write_config(config);
    let mut agent = world.start_agent_with(&path);
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.admin_sql(insert).await;
    let mut seen = false;
    for _ in 0..200 {
        if world.etcd_value(key).await.is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "{key} never reached etcd:\n{}", agent.log());
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

/// Syncs a row in each of `modes` (host, `database.tls` lines) as `base`'s user, then one as
/// `cert_base`'s user with the test client certificate, and checks convergence.
async fn syncs_in_each_mode(world: &World, base: &str, modes: &[(&str, String)], cert_base: &str) {
    for (n, (host, tls_yaml)) in modes.iter().enumerate() {
        let id = n + 1;
        let insert = format!("INSERT INTO t VALUES ({id}, 'b')");
        syncs_with(
            world,
            &with_tls(base, host, tls_yaml),
            &insert,
            &format!("t/{id}"),
        )
        .await;
    }
    let tls = world.env.get("TLS_DIR");
    let cert_config = with_tls(
        cert_base,
        "localhost",
        &format!(
            "    mode: verify-full\n    ca_file: {tls}/ca.pem\n    cert_file: {tls}/client.pem\n    key_file: {tls}/client.key\n"
        ),
    );
    syncs_with(
        world,
        &cert_config,
        "INSERT INTO t VALUES (10, 'c')",
        "t/10",
    )
    .await;
    world.wait_converged(None, CONVERGE_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_on_query_and_replication_connections() {
    let world = World::new("tlspg").await;
    world
        .pg_admin(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t VALUES (0, 'a');
             CREATE PUBLICATION {0} FOR TABLE t;
             GRANT SELECT ON t TO tlspg, sync_cert, sync;",
            world.name
        ))
        .await;
    let tls = world.env.get("TLS_DIR");
    // tlspg may only log in over TLS (pg_hba.conf: hostssl, else reject).
    let base = world.config_as("tlspg", "tlspg");
    let ca = format!("    ca_file: {tls}/ca.pem\n");
    let good = [
        ("127.0.0.1", "    mode: prefer\n".to_owned()),
        ("127.0.0.1", "    mode: require\n".to_owned()),
        ("127.0.0.1", format!("    mode: verify-ca\n{ca}")),
        ("localhost", format!("    mode: verify-full\n{ca}")),
    ];
    // A client certificate instead of a password (pg_hba.conf: cert for sync_cert).
    let cert_base = base
        .replace("user: tlspg", "user: sync_cert")
        .replace("  password: tlspg\n", "");
    syncs_in_each_mode(&world, &base, &good, &cert_base).await;

    // Refusals: one line each, nothing written. A new world, so etcd starts empty.
    let world = {
        let name = world.name.clone();
        world.cleanup().await;
        let w = World::new(&format!("{}_bad", name.trim_start_matches("t_"))).await;
        w.pg_admin(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {0} FOR TABLE t; GRANT SELECT ON t TO tlspg;",
            w.name
        ))
        .await;
        w
    };
    let base = world.config_as("tlspg", "tlspg");
    let cases = [
        Case {
            name: "TLS disabled where the server demands it",
            config: with_tls(&base, "127.0.0.1", "    mode: disable\n"),
            expect: &["no encryption", "pg_hba.conf"],
        },
        Case {
            name: "verify-full against a certificate for another name",
            config: with_tls(&base, "127.0.0.1", &format!("    mode: verify-full\n{ca}")),
            expect: &["certificate", "not valid for name", "database.tls"],
        },
        Case {
            name: "a CA that did not sign the server's certificate",
            config: with_tls(
                &base,
                "localhost",
                &format!("    mode: verify-ca\n    ca_file: {tls}/other-ca.pem\n"),
            ),
            expect: &["certificate", "UnknownIssuer", "database.tls"],
        },
        Case {
            name: "verify-ca without a CA",
            config: with_tls(&base, "localhost", "    mode: verify-ca\n"),
            expect: &["database.tls.ca_file: required with mode verify-ca"],
        },
        Case {
            name: "an unknown mode",
            config: with_tls(&base, "localhost", "    mode: verify_identity\n"),
            expect: &["database.tls.mode", "verify-full"],
        },
    ];
    check_cases(&world, &cases).await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_require_when_the_server_has_no_tls() {
    // The replica-level server runs without ssl; `require` must not fall back to plain TCP.
    let world = World::new("tlsoff").await;
    let replica_port = world.env.get("PG_REPLICA_PORT");
    world.create_database_on(&replica_port).await;
    let config = with_tls(
        &world.config_text(Some(&replica_port)),
        "127.0.0.1",
        "    mode: require\n",
    );
    let cases = [Case {
        name: "require against a server without TLS",
        config,
        expect: &["does not accept TLS", "ssl = on"],
    }];
    check_cases(&world, &cases).await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tls_modes_with_exactly_the_documented_grants() {
    let world = World::new_mysql("tlsmy").await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (0, 'a');")
        .await;
    let tls = world.env.get("TLS_DIR");
    // tlsmy: REQUIRE SSL, and only SELECT, REPLICATION SLAVE, BINLOG MONITOR (tools/testenv.sh).
    let base = world.config_as("tlsmy", "tlsmy");
    let ca = format!("    ca_file: {tls}/ca.pem\n");
    let good = [
        ("127.0.0.1", "    mode: prefer\n".to_owned()),
        ("127.0.0.1", "    mode: require\n".to_owned()),
        ("localhost", format!("    mode: verify-full\n{ca}")),
    ];
    // certmy must present the test client certificate (REQUIRE SUBJECT).
    let cert_base = base
        .replace("user: tlsmy", "user: certmy")
        .replace("password: tlsmy", "password: certmy");
    syncs_in_each_mode(&world, &base, &good, &cert_base).await;
    let name = world.name.clone();
    world.cleanup().await;

    let world = World::new_mysql(&format!("{}_bad", name.trim_start_matches("m_"))).await;
    world.sql("CREATE TABLE t (id int PRIMARY KEY);").await;
    let base = world.config_as("tlsmy", "tlsmy");
    let cases = [
        Case {
            name: "TLS disabled for a user that requires it",
            config: with_tls(&base, "127.0.0.1", "    mode: disable\n"),
            expect: &["Access denied"],
        },
        Case {
            name: "verify-full against a certificate for another name",
            config: with_tls(&base, "127.0.0.1", &format!("    mode: verify-full\n{ca}")),
            expect: &["certificate", "not valid for name", "database.tls"],
        },
        Case {
            name: "a CA that did not sign the server's certificate",
            config: with_tls(
                &base,
                "localhost",
                &format!("    mode: verify-full\n    ca_file: {tls}/other-ca.pem\n"),
            ),
            expect: &["certificate", "UnknownIssuer", "database.tls"],
        },
        Case {
            name: "verify-ca, which the MySQL side cannot honour",
            config: with_tls(&base, "127.0.0.1", &format!("    mode: verify-ca\n{ca}")),
            expect: &["database.tls.mode", "use verify-full"],
        },
    ];
    check_cases(&world, &cases).await;
    world.cleanup().await;
}

/// Creates etcd user `user` whose role may read and write exactly `ranges` (key prefixes).
async fn etcd_user_with_prefixes(world: &World, user: &str, ranges: &[String]) {
    let mut auth = world.etcd.auth_client();
    let _ = auth.user_delete(user).await;
    let _ = auth.role_delete(user).await;
    auth.role_add(user).await.unwrap();
    for prefix in ranges {
        // The key's prefix range: `<prefix>/` up to (not including) `<prefix>0`.
        let permission = Permission::new(PermissionType::Readwrite, format!("{prefix}/"))
            .with_range_end(format!("{prefix}0"));
        auth.role_grant_permission(user, permission).await.unwrap();
    }
    auth.user_add(user, user, None).await.unwrap();
    auth.user_grant_role(user, user).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_tls_client_certificates_auth_and_a_prefix_role() {
    let mut world = World::new("etcdtls").await;
    world.use_secure_etcd().await;
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let user = world.name.clone();
    etcd_user_with_prefixes(&world, &user, &[world.prefix(), world.state_prefix()]).await;
    // The password from a file, as a secrets mount provides it.
    let password_file = world.dir.join("etcd-password");
    std::fs::write(&password_file, format!("{user}\n")).unwrap();
    world.etcd_extra_config.push_str(&format!(
        "  user: {user}\n  password_file: {}\n",
        password_file.display()
    ));
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // Idle past the auth token's TTL (2 s in the test environment): the agent renews it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    world
        .sql("INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'c' WHERE id = 1;")
        .await;
    world
        .wait_for_value("t/2", Some(r#"{"id":2,"v":"b"}"#))
        .await;
    // verify and status use the same connection settings.
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());

    // An endpoint by IP address: the certificate names localhost, which etcd.tls.server_name says.
    let by_ip = world
        .config_text(None)
        .replace("https://localhost:", "https://127.0.0.1:")
        .replace(
            "  tls:\n    ca_file:",
            "  tls:\n    server_name: localhost\n    ca_file:",
        );
    let status = world.run_command(&world.write_config(&by_ip), &["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // The role really is limited: the agent's user can't touch a key outside its prefixes.
    let limited = secure_etcd_client(&world.env, &user, &user).await;
    let denied = limited.kv_client().put("/elsewhere", "x", None).await;
    assert!(
        denied.is_err(),
        "the role allows writes outside its prefixes"
    );

    // Refusals with the fix in one line.
    let base = world.config_text(None);
    let narrow = format!("{user}_narrow");
    etcd_user_with_prefixes(&world, &narrow, &[world.prefix()]).await;
    let tls = world.env.get("TLS_DIR");
    let cases = [
        Case {
            name: "wrong etcd password",
            config: base.replace(
                &format!("  password_file: {}\n", password_file.display()),
                "  password: wrong\n",
            ),
            expect: &["authentication failed", "check etcd.user and etcd.password"],
        },
        Case {
            name: "a role without the state prefix",
            config: base
                .replace(&format!("  user: {user}\n"), &format!("  user: {narrow}\n"))
                .replace(
                    &format!("  password_file: {}\n", password_file.display()),
                    &format!("  password: {narrow}\n"),
                ),
            expect: &["permission denied", "etcd.prefix and etcd.state_prefix"],
        },
        Case {
            name: "etcd's certificate from another CA",
            config: base.replace(&format!("{tls}/ca.pem"), &format!("{tls}/other-ca.pem")),
            expect: &["etcd's certificate was refused", "etcd.tls.ca_file"],
        },
        Case {
            name: "an endpoint by IP address, which etcd's certificate does not name",
            config: base.replace("https://localhost:", "https://127.0.0.1:"),
            expect: &["etcd's certificate was refused", "etcd.tls.server_name"],
        },
        Case {
            name: "no client certificate for etcd's --client-cert-auth",
            config: base
                .replace(&format!("    cert_file: {tls}/client.pem\n"), "")
                .replace(&format!("    key_file: {tls}/client.key\n"), ""),
            expect: &["etcd refused the connection", "etcd.tls.cert_file"],
        },
        Case {
            name: "TLS settings for an http:// endpoint",
            config: base.replace("https://", "http://"),
            expect: &["etcd.tls", "https://"],
        },
    ];
    // check_cases asserts that nothing reaches etcd: start from empty prefixes.
    let mut kv = world.etcd.kv_client();
    for prefix in [world.prefix(), world.state_prefix()] {
        kv.delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    }
    check_cases(&world, &cases).await;
    world.cleanup().await;
}
