//! Bad input, table-driven: each case gives a one-line error naming the cause and the fix, a
//! non-zero exit, and nothing written to etcd.

mod common;

use common::{check_cases, Case, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_inputs() {
    let world = World::new("badinput").await;
    world
        .sql("CREATE TABLE ok_table (id int PRIMARY KEY); CREATE TABLE nokey (v int);")
        .await;
    let replica_port = world.env.get("PG_REPLICA_PORT");
    world.create_database_on(&replica_port).await;
    world
        .pg_admin(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'norepl') THEN
                 CREATE ROLE norepl LOGIN PASSWORD 'norepl';
               END IF;
             END $$;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO norepl;",
        )
        .await;
    let base = world.config_text(None);
    let port = world.env.get("PG_PORT");
    let with = |from: &str, to: &str| {
        assert!(base.contains(from), "{from:?} not in the config");
        base.replacen(from, to, 1)
    };
    let etcd = world.env.etcd_endpoint();
    let cases = vec![
        Case {
            name: "malformed YAML",
            config: "database: [\n  driver".into(),
            expect: &["config file", "line"],
        },
        Case {
            name: "unknown field",
            config: with("  prefix:", "  prefx:"),
            expect: &["etcd.prefx: unknown field `prefx`"],
        },
        Case {
            name: "wrong type",
            config: with(&format!("port: {port}"), "port: abc"),
            expect: &["database.port: invalid type"],
        },
        Case {
            name: "missing field",
            config: with("  user: sync\n", ""),
            expect: &["database.user: required"],
        },
        Case {
            name: "unknown driver",
            config: with("driver: postgres", "driver: oracle"),
            expect: &["database.driver: unknown variant `oracle`"],
        },
        Case {
            name: "endpoint without scheme",
            config: with(&format!("[{etcd}]"), "[127.0.0.1:2379]"),
            expect: &["etcd.endpoints", "http://host:2379"],
        },
        Case {
            name: "endpoint with another scheme",
            config: with(&format!("[{etcd}]"), "[ftp://127.0.0.1:2379]"),
            expect: &["etcd.endpoints", "use http:// or https://"],
        },
        Case {
            name: "environment variable not set",
            config: with("${TEST_DB_PASSWORD}", "${ETCD_SYNC_NOT_SET_ANYWHERE}"),
            expect: &["database.password", "ETCD_SYNC_NOT_SET_ANYWHERE is not set"],
        },
        Case {
            name: "two required fields missing: both named",
            config: with("  user: sync\n", "").replace(&format!("  name: {}\n", world.name), ""),
            expect: &["has 2 problems"],
        },
        Case {
            name: "invalid slot name",
            config: with(&format!("slot: {}", world.name), "slot: Bad-Slot"),
            expect: &["database.postgres.slot"],
        },
        Case {
            name: "root prefix",
            config: with(&format!("prefix: {}", world.prefix()), "prefix: /"),
            expect: &["etcd.prefix: must not be empty"],
        },
        Case {
            name: "state prefix inside the data prefix",
            config: with(
                &format!("state_prefix: {}", world.state_prefix()),
                &format!("state_prefix: {}/state", world.prefix()),
            ),
            expect: &["etcd.state_prefix", "overlaps etcd.prefix"],
        },
        Case {
            name: "bad start LSN",
            config: format!("{base}start:\n  lsn: yesterday\n"),
            expect: &["start.lsn"],
        },
        Case {
            name: "wrong password",
            config: with("${TEST_DB_PASSWORD}", "wrong"),
            expect: &[
                "password authentication failed",
                "check database.user and database.password",
            ],
        },
        Case {
            name: "unknown database",
            config: with(
                &format!("name: {}", world.name),
                "name: no_such_database_here",
            ),
            expect: &["does not exist", "check database.name"],
        },
        Case {
            name: "included table missing",
            config: with("etcd:\n", "tables:\n  include: [ghost]\netcd:\n"),
            expect: &["tables.include names ghost, which does not exist"],
        },
        Case {
            name: "table options: every problem of the config at once",
            config: with(
                "etcd:\n",
                "tables:\n  include: [ok_table]\n  options:\n    ok_table:\n      where: \"id LIKE 'a%'\"\n      columns: {include: [id], exclude: [id]}\n      value: {column: id, format: raw}\netcd:\n",
            ),
            expect: &["tables.options.ok_table.value.format: unknown field `format`"],
        },
        Case {
            name: "table options: a filter outside the subset, both columns lists",
            config: with(
                "etcd:\n",
                "tables:\n  include: [ok_table]\n  options:\n    ok_table:\n      where: \"id LIKE 'a%'\"\n      columns: {include: [id], exclude: [id]}\netcd:\n",
            ),
            expect: &["has 2 problems"],
        },
        Case {
            name: "table options: a table not selected, a column the table lacks",
            config: with(
                "etcd:\n",
                "tables:\n  include: [ok_table]\n  options:\n    ok_tabel:\n      where: \"id = 1\"\n    ok_table:\n      columns: {exclude: [idd]}\netcd:\n",
            ),
            expect: &[
                "tables.options.ok_tabel: no such table is selected; did you mean ok_table?",
                "tables.options.ok_table.columns.exclude: table ok_table has no column idd",
            ],
        },
        Case {
            name: "included table misspelt",
            config: with("etcd:\n", "tables:\n  include: [nokye]\netcd:\n"),
            expect: &["tables.include names nokye", "did you mean nokey?"],
        },
        Case {
            name: "included table without primary key",
            config: with("etcd:\n", "tables:\n  include: [nokey]\netcd:\n"),
            expect: &[
                "table nokey named in tables.include has no primary key",
                "ADD PRIMARY KEY",
            ],
        },
        Case {
            name: "max_txn_ops above the server's",
            config: format!("{base}  max_txn_ops: 100000\n"),
            expect: &["etcd.max_txn_ops is 100000", "--max-txn-ops"],
        },
        Case {
            name: "wal_level=replica",
            config: with(&format!("port: {port}"), &format!("port: {replica_port}")),
            expect: &["wal_level is 'replica'", "wal_level = logical"],
        },
        Case {
            name: "no REPLICATION attribute",
            config: with("user: sync", "user: norepl").replacen("${TEST_DB_PASSWORD}", "norepl", 1),
            expect: &["lacks the REPLICATION attribute", "ALTER ROLE"],
        },
    ];
    check_cases(&world, &cases).await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_bad_inputs() {
    let world = World::new_mysql("badinput").await;
    world
        .sql("CREATE TABLE ok_table (id int PRIMARY KEY)")
        .await;
    for port in [
        world.env.get("MYSQL_STATEMENT_PORT"),
        world.env.get("MYSQL_MINIMAL_PORT"),
    ] {
        world.create_mysql_database_on(&port).await;
    }
    world
        .mysql_admin(&format!(
            "CREATE USER IF NOT EXISTS 'norepl'@'127.0.0.1' IDENTIFIED BY 'norepl';
             GRANT SELECT ON {}.* TO 'norepl'@'127.0.0.1';",
            world.name
        ))
        .await;
    let base = world.config_text(None);
    let port = format!("port: {}", world.env.get("MYSQL_PORT"));
    let with = |from: &str, to: &str| {
        assert!(base.contains(from), "{from:?} not in the config");
        base.replacen(from, to, 1)
    };
    let cases = vec![
        Case {
            name: "binlog_format=STATEMENT",
            config: with(
                &port,
                &format!("port: {}", world.env.get("MYSQL_STATEMENT_PORT")),
            ),
            expect: &["binlog_format is STATEMENT", "binlog_format = ROW"],
        },
        Case {
            name: "binlog_row_image=MINIMAL",
            config: with(
                &port,
                &format!("port: {}", world.env.get("MYSQL_MINIMAL_PORT")),
            ),
            expect: &["binlog_row_image is MINIMAL", "binlog_row_image = FULL"],
        },
        Case {
            name: "no REPLICATION SLAVE",
            config: with("user: sync", "user: norepl").replacen("${TEST_DB_PASSWORD}", "norepl", 1),
            expect: &["lacks REPLICATION SLAVE", "GRANT REPLICATION SLAVE ON *.*"],
        },
        Case {
            name: "mysqldump not found",
            config: with(
                "  name:",
                "  mysql:\n    mysqldump: /nonexistent/mysqldump\n  name:",
            ),
            expect: &["cannot run mysqldump", "database.mysql.mysqldump"],
        },
        Case {
            name: "wrong password",
            config: with("${TEST_DB_PASSWORD}", "wrong"),
            expect: &["Access denied", "check database.user and database.password"],
        },
        Case {
            name: "start without a position",
            config: format!("{base}start:\n  file: binlog.000001\n"),
            expect: &["start: MySQL needs start.file and start.position"],
        },
    ];
    check_cases(&world, &cases).await;
    world.cleanup().await;
}
