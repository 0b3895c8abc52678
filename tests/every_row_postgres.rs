//! Every row of every table, PostgreSQL: partitioned tables, values at the edges of their
//! types (years outside 1–9999, infinities, NaN, numbers longer than a double), every key
//! type, and a server whose time zone is not UTC. Dump and stream are compared byte for byte
//! through twin tables (see `common/twins.rs`).

mod common;

use std::time::Duration;

use common::{World, CONVERGE_TIMEOUT, SYNC_TIMEOUT};

const PARTITIONED: &str = "
CREATE TABLE events (id int, region text, payload text, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu') PARTITION BY RANGE (id);
CREATE TABLE events_eu_low PARTITION OF events_eu FOR VALUES FROM (0) TO (100);
CREATE TABLE events_eu_high PARTITION OF events_eu FOR VALUES FROM (100) TO (1000);
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
CREATE TABLE plain (id int PRIMARY KEY);
INSERT INTO events SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, 'p' || i
  FROM generate_series(1, 30) i;
INSERT INTO events VALUES (150, 'eu', 'high');
INSERT INTO plain VALUES (1);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_are_synced_under_their_root() {
    let mut world = World::new("partitioned").await;
    world.sql(PARTITIONED).await;

    // A partition named in the config: refused, naming the table to name instead.
    world.extra_config = "tables:\n  include: [events_us]\n".into();
    let output = world.run_command(&world.config(), &["run"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("names events_us, a partition of events")
            && stderr.contains("name events instead"),
        "{stderr}"
    );

    // The dump: one table under the root's name, whatever the depth; no partition of its own.
    world.extra_config = "tables:\n  include: [events, plain]\n".into();
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert_eq!(world.table_rows("events").await.len(), 31);
    let keys = world.etcd_data().await;
    assert_eq!(keys.len(), 32, "{keys:#?}");
    assert_eq!(
        world.etcd_value("events/150/eu").await.as_deref(),
        Some(r#"{"id":150,"region":"eu","payload":"high"}"#)
    );

    // The stream: changes in any partition, rows moving between partitions.
    world
        .sql(
            "INSERT INTO events VALUES (200, 'eu', 'new');
             UPDATE events SET id = 120 WHERE id = 4 AND region = 'eu';
             UPDATE events SET region = 'us' WHERE id = 6;
             DELETE FROM events WHERE id = 1;",
        )
        .await;
    world
        .wait_for_value(
            "events/200/eu",
            Some(r#"{"id":200,"region":"eu","payload":"new"}"#),
        )
        .await;
    world
        .wait_for_value(
            "events/6/us",
            Some(r#"{"id":6,"region":"us","payload":"p6"}"#),
        )
        .await;
    world.wait_for_value("events/4/eu", None).await;
    world.wait_for_value("events/1/us", None).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(!agent.log().contains("dumping again"), "{}", agent.log());

    // Rows that arrive or leave without a change event: the agent notices and dumps again.
    world
        .sql(
            "CREATE TABLE events_ap (id int NOT NULL, region text NOT NULL, payload text);
             INSERT INTO events_ap VALUES (7, 'ap', 'attached');
             ALTER TABLE events ATTACH PARTITION events_ap FOR VALUES IN ('ap');",
        )
        .await;
    world
        .wait_for_value(
            "events/7/ap",
            Some(r#"{"id":7,"region":"ap","payload":"attached"}"#),
        )
        .await;
    assert!(
        agent
            .log()
            .contains("partitions of a synced partitioned table changed"),
        "{}",
        agent.log()
    );
    world
        .sql("ALTER TABLE events DETACH PARTITION events_us")
        .await;
    world.wait_for_value("events/3/us", None).await;
    world.sql("TRUNCATE events_eu_low").await;
    world.wait_for_value("events/2/eu", None).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert!(world.table_rows("events_us").await.is_empty());

    // A partition dropped while the agent is stopped is noticed when it starts again.
    assert!(agent.terminate(Duration::from_secs(10)).success());
    world.sql("DROP TABLE events_eu_high").await;
    let agent = world.start_agent();
    world.wait_for_value("events/150/eu", None).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    assert_eq!(
        world.table_rows("events").await.keys().collect::<Vec<_>>(),
        vec!["7/ap"]
    );
    drop(agent);
    world.cleanup().await;
}

const EDGE_VALUES: &str = "
CREATE TYPE pair AS (x float8, y numeric);
CREATE TABLE vals_d (
  id int PRIMARY KEY, d date, ts timestamp(6), tstz timestamptz, t time(6),
  tarr timestamptz[], darr date[], f8 float8[], p pair, j json, jb jsonb, n numeric
);
CREATE TABLE vals_s (LIKE vals_d INCLUDING ALL);
INSERT INTO vals_d VALUES
 (1, '0044-03-15 BC', '0044-03-15 10:00:00.25 BC', '4714-11-24 00:00:00+00 BC', '24:00:00',
  '{\"0001-01-01 00:00:00+00 BC\"}', '{\"0001-01-01 BC\",infinity}', '{NaN,Infinity,-Infinity,1.5}',
  '(NaN,1.5)', '{\"n\": 18446744073709551616, \"d\": 1.50}',
  '{\"n\": 18446744073709551616, \"d\": 1.50, \"e\": 1e3}', 123456789012345678901234567890.123456789),
 (2, '10000-01-01', '10000-01-01 00:00:00', '294276-12-31 23:59:59.999999+00', '23:59:59.999999',
  '{}', NULL, '{}', '(Infinity,NaN)', '[1e400, -0.0]', '[1e400, -0.0]', 'NaN'),
 (3, 'infinity', '-infinity', 'infinity', '00:00:00', NULL, NULL, NULL, NULL, 'null', 'null', -0.5),
 (4, '2024-05-01', '2024-05-01 10:00:00.1', '2024-05-01 12:00:00.123+02', '10:00:00.5',
  '{\"2024-05-01 12:00:00+02\"}', '{2024-05-01}', '{0.1}', '(0.1,0.10)', '1', '1', 0.10);
CREATE TABLE keys_d (
  d date, ts timestamptz, n numeric, u uuid, b bool, by bytea, i int8, t text,
  PRIMARY KEY (d, ts, n, u, b, by, i, t)
);
CREATE TABLE keys_s (LIKE keys_d INCLUDING ALL);
INSERT INTO keys_d VALUES
 ('0044-03-15 BC', 'infinity', 1.50, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, '\\x00ff', -1, 'a/b'),
 ('10000-01-01', '2024-05-01 12:00:00+02', 'NaN', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', false, '', 0, ''),
 ('2024-05-01', '-infinity', -0.000001, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', true, '\\x2f', 9223372036854775807, '%');
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE keys2_d (
  f float8, ts timestamp, tm time, iv interval, ip inet, c char(3), arr int[], jb jsonb, i2 int2,
  vc varchar(5), m mood, PRIMARY KEY (f, ts, tm, iv, ip, c, arr, jb, i2, vc, m)
);
CREATE TABLE keys2_s (LIKE keys2_d INCLUDING ALL);
INSERT INTO keys2_d VALUES
 ('NaN', '-infinity', '24:00:00', '1 day', '::1', 'a', '{1,NULL}', '{\"a\": [1, 2.50]}', -32768, 'x/y', 'sad'),
 ('-Infinity', '0044-03-15 10:00:00 BC', '00:00:00', '-1 mon', '10.0.0.0/8', 'abc', '{}', 'null', 0, '', 'happy'),
 (1e-300, '2024-05-01 10:00:00.000001', '23:59:59.999999', '00:00:00', '192.168.0.1', '  ', '{{1,2},{3,4}}', '\"s\"', 32767, '%', 'sad');";

/// The forms the README's type table promises, as they appear in the JSON of row `id`.
fn edge_forms(id: i32) -> &'static [&'static str] {
    match id {
        1 => &[
            r#""d":"-000043-03-15""#,
            r#""ts":"-000043-03-15T10:00:00.25""#,
            r#""tstz":"-004713-11-24T00:00:00Z""#,
            r#""t":"24:00:00""#,
            r#""tarr":["0000-01-01T00:00:00Z"]"#,
            r#""darr":["0000-01-01","infinity"]"#,
            r#""f8":["NaN","Infinity","-Infinity",1.5]"#,
            r#""p":"(NaN,1.5)""#,
            r#""j":{"n":18446744073709551616,"d":1.50}"#,
            r#""jb":{"d":1.50,"e":1000,"n":18446744073709551616}"#,
            r#""n":"123456789012345678901234567890.123456789""#,
        ],
        2 => &[
            r#""d":"+010000-01-01""#,
            r#""ts":"+010000-01-01T00:00:00""#,
            r#""tstz":"+294276-12-31T23:59:59.999999Z""#,
            r#""t":"23:59:59.999999""#,
            r#""p":"(Infinity,NaN)""#,
            r#""j":[1e400,-0.0]"#,
            r#""n":"NaN""#,
        ],
        3 => &[
            r#""d":"infinity""#,
            r#""ts":"-infinity""#,
            r#""tstz":"infinity""#,
            r#""j":null"#,
        ],
        _ => &[
            r#""ts":"2024-05-01T10:00:00.1""#,
            r#""tstz":"2024-05-01T10:00:00.123Z""#,
            r#""tarr":["2024-05-01T10:00:00Z"]"#,
            r#""t":"10:00:00.5""#,
            r#""n":"0.10""#,
        ],
    }
}

/// Values at the edges of their types, in a database whose sessions default to a non-UTC
/// time zone: the dump and the stream give the documented forms, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_and_every_key_type_in_a_non_utc_zone() {
    let world = World::new("edges").await;
    world.sql(EDGE_VALUES).await;
    world
        .pg_admin(&format!(
            "ALTER DATABASE {} SET timezone = 'Asia/Kolkata'",
            world.name
        ))
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    for id in 1..=4 {
        world
            .assert_forms(&format!("vals_d/{id}"), edge_forms(id))
            .await;
    }
    assert!(world
        .etcd_value("keys_d/-000043-03-15/infinity/1.50/a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11/true/AP8=/-1/a%2Fb")
        .await
        .is_some());
    assert!(world
        .etcd_value("keys_d/+010000-01-01/2024-05-01T10:00:00Z/NaN/a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12/false//0/")
        .await
        .is_some());

    assert!(world
        .etcd_value("keys2_d/NaN/-infinity/24:00:00/1 day/::1/a  /[1,null]/{\"a\":[1,2.50]}/-32768/x%2Fy/sad")
        .await
        .is_some());
    world
        .sql(
            "INSERT INTO vals_s SELECT * FROM vals_d; INSERT INTO keys_s SELECT * FROM keys_d;
             INSERT INTO keys2_s SELECT * FROM keys2_d;",
        )
        .await;
    world.assert_twins("vals_d", "vals_s", 4).await;
    world.assert_twins("keys_d", "keys_s", 3).await;
    world.assert_twins("keys2_d", "keys2_s", 3).await;
    world.wait_converged(Some(&agent), CONVERGE_TIMEOUT).await;
    drop(agent);
    world.cleanup().await;
}
