//! The Prometheus alerting rules in `deploy/prometheus`: valid, firing on what they should
//! (`promtool test rules`), and written against metrics the agent exports under those names;
//! the Grafana dashboard in `deploy/grafana`: its queries valid PromQL, on exported metrics;
//! and the agent's `/metrics` as Prometheus's linter sees it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, World, SYNC_TIMEOUT};

const RULES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/etcd-sync.json");

/// Every query of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    queries
}

/// The `etcd_sync_*` metric names in `text`.
fn metric_names(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .match_indices("etcd_sync_")
        .map(|(at, _)| {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(RULES_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool ({e}): run `make testenv` (Debian's prometheus)"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_alerting_rules_are_valid_and_fire_on_what_they_should() {
    let (ok, text) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "{text}");
    let (ok, text) = promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(ok, "{text}");
}

#[test]
fn the_dashboards_queries_are_valid_promql() {
    // promtool parses PromQL in rule files: each query becomes a recording rule (JSON is YAML).
    let rules: Vec<serde_json::Value> = dashboard_queries()
        .iter()
        .enumerate()
        .map(
            |(i, expr)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}),
        )
        .collect();
    assert!(rules.len() >= 9, "{rules:?}");
    let file = std::env::temp_dir().join("etcd-sync-dashboard-rules.json");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).unwrap();
    let (ok, text) = promtool(&["check", "rules", &file.display().to_string()], None);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool_and_hold_every_series_the_alerts_use() {
    let mut world = World::new("alerts").await;
    let port = free_port();
    world.extra_config = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    world
        .sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    world.sql("INSERT INTO t VALUES (2)").await;
    world.wait_for_value("t/2", Some(r#"{"id":2}"#)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        match http_get(port, "/metrics") {
            Some((200, text)) if text.contains("etcd_sync_leader 1") => break text,
            other => assert!(Instant::now() < deadline, "/metrics: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // promtool lints the classic text format; the agent serves OpenMetrics (as its content
    // type says), where a counter's HELP names the family, without `_total`. That one finding
    // is the format's, not a fault; any other fails the test.
    let (_, lint) = promtool(&["check", "metrics"], Some(&text));
    let faults: Vec<&str> = lint
        .lines()
        .filter(|line| {
            let openmetrics_counter = line
                .strip_suffix(" no help text")
                .and_then(|name| name.strip_suffix("_total"))
                .is_some_and(|family| text.contains(&format!("# HELP {family} ")));
            !line.trim().is_empty() && !openmetrics_counter
        })
        .collect();
    assert!(faults.is_empty(), "promtool check metrics:\n{lint}\n{text}");

    let rules = std::fs::read_to_string(format!("{RULES_DIR}/alerts.yml")).unwrap();
    let queries = dashboard_queries().join("\n");
    let mut used = metric_names(&rules);
    used.extend(metric_names(&queries));
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&&str> = used
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|l| l.starts_with(**name) && l[name.len()..].starts_with(['{', ' ', '_']))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the alerts use {missing:?}, which /metrics lacks:\n{text}"
    );
    drop(agent);
    world.cleanup().await;
}
