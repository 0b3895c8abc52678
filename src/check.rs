//! `sync check`: connectivity and every prerequisite, as a readable report.

use etcd_sync_api::{CheckItem, CheckStatus, Driver};

use crate::engine::Settings;
use crate::etcd::{is_too_many_ops, Connection, Store};

/// Checks etcd: reachable, its version, the txn size the config asks for, the stored state.
pub async fn check_etcd(etcd: &Connection, settings: &Settings) -> Vec<CheckItem> {
    let endpoints = etcd.endpoints.join(",");
    let mut store = match Store::connect(etcd, &settings.state_prefix).await {
        Ok(store) => store,
        Err(e) => {
            return vec![CheckItem::fail(
                "etcd",
                etcd_sync_api::with_hint(crate::error_chain(&e), e.config_hint()),
            )]
        }
    };
    let mut items = Vec::new();
    match store.server_version().await {
        Ok(version) => items.push(CheckItem::ok(
            "etcd",
            format!("{endpoints} reachable, etcd {version}"),
        )),
        Err(e) => {
            items.push(CheckItem::fail(
                "etcd",
                format!(
                    "{endpoints}: {}",
                    etcd_sync_api::with_hint(crate::error_chain(&e), e.config_hint())
                ),
            ));
            return items;
        }
    }
    items.push(match store.probe_max_txn_ops(settings.max_txn_ops).await {
        Ok(()) => CheckItem::ok(
            "etcd.max_txn_ops",
            format!("a txn of {} operations is accepted", settings.max_txn_ops),
        ),
        Err(e) if is_too_many_ops(&e) => CheckItem::fail(
            "etcd.max_txn_ops",
            format!(
                "{} is above the server's --max-txn-ops: lower etcd.max_txn_ops or raise the flag",
                settings.max_txn_ops
            ),
        ),
        Err(e) => CheckItem::fail("etcd.max_txn_ops", crate::error_chain(&e)),
    });
    items.push(match store.load_state().await {
        Ok(None) => CheckItem::ok(
            "state",
            format!("no state at {} yet: the first run dumps", store.state_key()),
        ),
        Ok(Some(state)) => CheckItem::ok(
            "state",
            format!(
                "phase {} at {}, written {} by {}",
                state.phase,
                state
                    .position
                    .map(|p| p.0.to_string())
                    .unwrap_or_else(|| "-".into()),
                state.updated_at,
                state.agent
            ),
        ),
        Err(e) => CheckItem::fail("state", crate::error_chain(&e)),
    });
    items
}

/// Runs every check and prints the report; returns whether everything passed.
pub async fn run<D: Driver>(driver: &D, etcd: &Connection, settings: &Settings) -> bool {
    let mut items = driver.check().await;
    items.extend(check_etcd(etcd, settings).await);
    let mut ok = true;
    for item in &items {
        let label = match item.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => {
                ok = false;
                "FAIL"
            }
        };
        crate::logging::say(format_args!("[{label}] {}: {}", item.what, item.detail));
    }
    crate::logging::say(if ok {
        "all checks passed"
    } else {
        "some checks failed"
    });
    ok
}
