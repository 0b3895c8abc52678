//! Every row of every table, MariaDB: zero dates in keys, every key type, values at the edges
//! of their types (TIME beyond ±24 h, fractions of every precision, JSON numbers longer than a
//! double), text and blobs at the lengths the binary log encodes differently, multi-byte
//! charsets, and servers whose time zone is not UTC. Dump and stream are compared byte for byte
//! through twin tables (see `common/twins.rs`).
//!
//! The time zone test changes the global time zone of the faults server; no other test in this
//! file uses that server, and test files run one after the other.

mod common;

use std::time::Duration;

use common::{World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

const KEYS: &str = "
CREATE TABLE keys_d (
  dt datetime, d date, ts timestamp NOT NULL DEFAULT '0000-00-00 00:00:00', t time(3), y year,
  i bigint unsigned, n decimal(10,2), f double, c char(4), v varchar(20), b varbinary(8),
  bn binary(2), e enum('a','b'), s set('x','y'), bt bit(4),
  PRIMARY KEY (dt, d, ts, t, y, i, n, f, c, v, b, bn, e, s, bt)
);
CREATE TABLE keys_s LIKE keys_d;
INSERT INTO keys_d VALUES
 ('0000-00-00 00:00:00', '0000-00-00', '0000-00-00 00:00:00', '-838:59:59.000', 0,
  18446744073709551615, -1.50, -0.5, 'ab', 'a/b%', 0x00ff, 0x0102, 'a', 'x,y', b'1010'),
 ('2024-00-10 10:00:00', '2024-00-10', '2024-05-01 10:00:00', '838:59:59.999', 2155,
  0, 0.00, 1e300, '', '', '', 0x0000, 'b', '', b'0'),
 ('2024-05-01 10:00:00.4', '2024-05-01', '1970-01-01 00:00:01', '00:00:00.000', 1901,
  1, 99999999.99, 0.1, 'é', '✓', 0x2f, 0xffff, 'a', 'y', b'1111');";

/// Zero dates in key columns give the row a key (MySQL's digits) and `null` in the value;
/// every key type gives the same key from the dump and the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dates_and_every_key_type() {
    let world = World::new_mysql("keys").await;
    // Zero dates need a sql_mode without NO_ZERO_DATE; one connection runs it all.
    world
        .sql(&format!(
            "SET SESSION sql_mode = ''; {}",
            KEYS.replace('\n', " ")
        ))
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let rows = world.table_rows("keys_d").await;
    let (zero_key, zero_value) = rows
        .iter()
        .find(|(key, _)| key.starts_with("0000-00-00T00:00:00/0000-00-00/0000-00-00T00:00:00Z/"))
        .unwrap_or_else(|| panic!("no zero-date key in {rows:#?}"));
    assert!(
        zero_key.ends_with("/-838:59:59.000/0/18446744073709551615/-1.50/-0.5/ab/a%2Fb%25/AP8=/AQI=/a/[\"x\",\"y\"]/10"),
        "{zero_key}"
    );
    assert!(
        zero_value.starts_with(r#"{"dt":null,"d":null,"ts":null,"t":"-838:59:59.000","#),
        "{zero_value}"
    );
    assert!(
        rows.keys()
            .any(|k| k.starts_with("2024-00-10T10:00:00/2024-00-10/")),
        "{rows:#?}"
    );

    world
        .sql("SET SESSION sql_mode = ''; INSERT INTO keys_s SELECT * FROM keys_d")
        .await;
    world.assert_twins("keys_d", "keys_s", 3).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

const EDGE_VALUES: &str = "
CREATE TABLE vals_d (
  id int PRIMARY KEY, js json, t0 time, t6 time(6), dt1 datetime(1), dt6 datetime(6),
  ts6 timestamp(6) NULL, tb tinyblob, b blob, mb mediumblob, tt tinytext, tx text,
  v300 varchar(300) CHARACTER SET utf8mb4, vlat varchar(255) CHARACTER SET latin1,
  c1 char(1) CHARACTER SET utf8mb4
);
CREATE TABLE vals_s LIKE vals_d;
INSERT INTO vals_d VALUES
 (1, '{\"n\": 18446744073709551616, \"d\": 1.50, \"e\": 1.0E+30, \"a\": [-0.0, 1e-7], \"s\": \"\\\\u00e9\"}',
  '-838:59:59', '838:59:59.999999', '2024-05-01 10:00:00.5', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.999999', REPEAT('a', 252), REPEAT('b', 65535), REPEAT('m', 65536),
  REPEAT('t', 253), REPEAT('é', 30000), REPEAT('😀', 300), CONCAT('€', REPEAT('é', 254)), '😀'),
 (2, '[123456789012345678901234567890.123456789, -1E-300]', '-24:00:01', '-00:00:00.5',
  '1000-01-01 00:00:00.0', '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01.000001',
  REPEAT('a', 253), REPEAT('b', 65534), REPEAT('m', 70000), REPEAT('t', 255), '', REPEAT('✓', 300),
  REPEAT('€', 255), ''),
 (3, '{}', '00:00:00', '00:00:00.000000', NULL, NULL, NULL, REPEAT('a', 255), REPEAT('b', 251),
  REPEAT('m', 65535), REPEAT('t', 252), REPEAT('x', 65535), REPEAT('a', 300), REPEAT('ÿ', 255), 'x');";

/// The forms the README's type table promises, as they appear in the JSON of row `id`.
fn edge_forms(id: i32) -> &'static [&'static str] {
    match id {
        1 => &[
            r#""js":{"a":[-0.0,1e-7],"d":1.50,"e":1.0E+30,"n":18446744073709551616,"s":"é"}"#,
            r#""t0":"-838:59:59""#,
            r#""t6":"838:59:59.999999""#,
            r#""dt1":"2024-05-01T10:00:00.5""#,
            r#""dt6":"9999-12-31T23:59:59.999999""#,
            r#""ts6":"2038-01-19T03:14:07.999999Z""#,
            r#""c1":"😀""#,
        ],
        2 => &[
            r#""js":[123456789012345678901234567890.123456789,-1E-300]"#,
            r#""t0":"-24:00:01""#,
            r#""t6":"-00:00:00.500000""#,
            r#""dt1":"1000-01-01T00:00:00.0""#,
            r#""ts6":"1970-01-01T00:00:01.000001Z""#,
        ],
        _ => &[r#""js":{}"#, r#""dt1":null"#],
    }
}

/// Values at the edges of their types and at the lengths where the binary log's encoding
/// changes (1-, 2- and 3-byte lengths; 1- and 2-byte VARCHAR lengths) come through the dump
/// and the stream byte-identical, in the documented forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_long_text_and_blobs() {
    let world = World::new_mysql("edges").await;
    world
        .sql(&format!(
            "SET SESSION time_zone = '+00:00'; {}",
            EDGE_VALUES.replace('\n', " ")
        ))
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    for id in 1..=3 {
        world
            .assert_forms(&format!("vals_d/{id}"), edge_forms(id))
            .await;
    }
    // Lengths and charsets: each value decoded and measured.
    let row: serde_json::Value =
        serde_json::from_str(&world.etcd_value("vals_d/1").await.unwrap()).unwrap();
    let base64_len = |name: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(row[name].as_str().unwrap())
            .unwrap()
            .len()
    };
    assert_eq!(base64_len("tb"), 252);
    assert_eq!(base64_len("b"), 65535);
    assert_eq!(base64_len("mb"), 65536);
    assert_eq!(row["tx"].as_str().unwrap().chars().count(), 30000);
    assert_eq!(row["v300"].as_str().unwrap().len(), 1200);
    let latin1 = row["vlat"].as_str().unwrap();
    assert!(latin1.starts_with("€é") && latin1.chars().count() == 255);

    world.sql("INSERT INTO vals_s SELECT * FROM vals_d").await;
    world.assert_twins("vals_d", "vals_s", 3).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}

const ZONED: &str = "
CREATE TABLE tz_d (id int PRIMARY KEY, ts timestamp(3) NULL, dt datetime(3));
CREATE TABLE tz_s LIKE tz_d;
CREATE TABLE tz_s2 LIKE tz_d;
SET SESSION time_zone = '+00:00';
INSERT INTO tz_d VALUES (1, '2024-05-01 10:00:00.500', '2024-05-01 10:00:00.500'),
  (2, '1970-01-01 00:00:01.000', '1000-01-01 00:00:00.000'),
  (3, '2038-01-19 03:14:07.999', '9999-12-31 23:59:59.999');";

/// A server on time_zone = SYSTEM in a non-UTC system zone (the faults server runs in
/// Asia/Kolkata), then one on time_zone = '+08:00': TIMESTAMP values are the same UTC instants,
/// DATETIME values stay as written, in the dump and the stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_do_not_depend_on_the_server_time_zone() {
    let world = World::new_mysql_on_faults_server("zones").await;
    world.mysql_admin("SET GLOBAL time_zone = 'SYSTEM'").await;
    let zone = world
        .mysql_admin_query("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) + 0")
        .await;
    assert_eq!(
        zone,
        vec![19_800],
        "the faults server should run in Asia/Kolkata: run `make testenv`"
    );
    world.sql(&ZONED.replace('\n', " ")).await;
    let expected = r#"{"id":1,"ts":"2024-05-01T10:00:00.500Z","dt":"2024-05-01T10:00:00.500"}"#;

    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert_eq!(world.etcd_value("tz_d/1").await.as_deref(), Some(expected));
    world.sql("INSERT INTO tz_s SELECT * FROM tz_d").await;
    world.assert_twins("tz_d", "tz_s", 3).await;
    let before = world.etcd_data().await;
    assert!(agent.terminate(Duration::from_secs(10)).success());

    // The same server on '+08:00': a new dump gives the same bytes, and so does the stream.
    world.mysql_admin("SET GLOBAL time_zone = '+08:00'").await;
    world.lose_position().await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert_eq!(world.etcd_data().await, before);
    world.sql("INSERT INTO tz_s2 SELECT * FROM tz_d").await;
    world.assert_twins("tz_d", "tz_s2", 3).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    world.mysql_admin("SET GLOBAL time_zone = 'SYSTEM'").await;
    drop(agent);
    world.cleanup().await;
}

/// Rows past 16 MiB take more than one MySQL protocol packet in the dump and in the binary
/// log. Too large for etcd's default request limit, they are skipped (`oversized_rows: skip`)
/// while every row around them arrives; one just under etcd's limit arrives byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_across_the_16_mib_packet_boundary() {
    let mut world = World::new_mysql("big").await;
    // Before the test's first connection, which takes the global value.
    world
        .mysql_admin("SET GLOBAL max_allowed_packet = 67108864")
        .await;
    world.etcd_extra_config = "  oversized_rows: skip\n".into();
    let rows = "(1, REPEAT('x', 16777216), NULL), (2, NULL, REPEAT('y', 16777215)), \
                (3, 'small', 'small'), (4, REPEAT('z', 700000), NULL)";
    world
        .sql(&format!(
            "CREATE TABLE big_d (id int PRIMARY KEY, lb longblob, mb mediumblob); \
             CREATE TABLE big_s LIKE big_d; INSERT INTO big_d VALUES {rows}"
        ))
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    let dumped = world.table_rows("big_d").await;
    assert_eq!(
        dumped.keys().collect::<Vec<_>>(),
        vec!["3", "4"],
        "{}",
        agent.log()
    );
    assert_eq!(
        dumped["4"].len(),
        r#"{"id":4,"lb":"","mb":null}"#.len() + 933_336
    );

    world
        .sql("INSERT INTO big_s SELECT * FROM big_d WHERE id IN (1, 2); INSERT INTO big_s SELECT * FROM big_d WHERE id IN (3, 4)")
        .await;
    world.assert_twins("big_d", "big_s", 2).await;
    assert!(
        agent.log().contains("big_s/1 size=22369685"),
        "{}",
        agent.log()
    );
    // `verify` counts the rows left out as missing; without them, etcd equals the database.
    world
        .sql("DELETE FROM big_d WHERE id < 3; DELETE FROM big_s WHERE id < 3")
        .await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}
