//! Prometheus metrics, and the health state `/readyz` reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use etcd_sync_api::TableSchema;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub table: String,
    /// insert, update, delete, truncate
    pub op: &'static str,
}

/// Entries [`ChangeCounters`] keeps before it starts over (each schema a table had counts).
const CHANGE_COUNTERS_KEPT: usize = 4096;

/// The `changes_applied` counters the stream has used, by table schema and operation: a
/// lookup in the family formats and hashes the table's name, and the stream counts every
/// change.
#[derive(Default)]
pub struct ChangeCounters {
    /// By the schema's address; the schema is kept so that the address is not reused.
    known: std::collections::HashMap<(usize, &'static str), (Arc<TableSchema>, Counter)>,
}

impl ChangeCounters {
    pub fn inc(&mut self, metrics: &Metrics, table: &Arc<TableSchema>, op: &'static str) {
        let at = (Arc::as_ptr(table) as usize, op);
        if let Some((_, counter)) = self.known.get(&at) {
            counter.inc();
            return;
        }
        if self.known.len() >= CHANGE_COUNTERS_KEPT {
            self.known.clear();
        }
        let labels = ChangeLabels {
            table: table.id.to_string(),
            op,
        };
        let counter = metrics.changes_applied.get_or_create(&labels).clone();
        counter.inc();
        self.known.insert(at, (Arc::clone(table), counter));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

/// Log lines that could not be written (the binary's log writer counts them here).
pub static LOG_WRITE_ERRORS: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// Every metric the agent exports, registered once.
pub struct Metrics {
    registry: Registry,
    phase: Family<PhaseLabels, Gauge>,
    pub rows_dumped: Family<TableLabels, Counter>,
    pub rows_estimated: Family<TableLabels, Gauge>,
    pub changes_applied: Family<ChangeLabels, Counter>,
    pub source_transactions: Counter,
    etcd_txns: Counter,
    etcd_txn_seconds: Histogram,
    lag_seconds: Gauge<f64, AtomicU64>,
    pub lag_bytes: Gauge,
    pub retries: Family<KindLabels, Counter>,
    pub errors: Family<KindLabels, Counter>,
    pub position: Gauge,
    /// 1 while this agent holds the lock (or the leadership, with `ha`) and may write.
    pub leader: Gauge,
    in_sync: AtomicBool,
    /// The failure being retried, until something succeeds again.
    failing: Mutex<Option<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("etcd_sync");
        let m = Metrics {
            phase: Family::default(),
            rows_dumped: Family::default(),
            rows_estimated: Family::default(),
            changes_applied: Family::default(),
            source_transactions: Counter::default(),
            etcd_txns: Counter::default(),
            etcd_txn_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            lag_seconds: Gauge::default(),
            lag_bytes: Gauge::default(),
            retries: Family::default(),
            errors: Family::default(),
            position: Gauge::default(),
            leader: Gauge::default(),
            in_sync: AtomicBool::new(false),
            failing: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "phase",
            "1 for the phase the agent is in (dump or sync)",
            m.phase.clone(),
        );
        registry.register(
            "rows_dumped",
            "Rows written to etcd by the dump, per table",
            m.rows_dumped.clone(),
        );
        registry.register(
            "rows_estimated",
            "The source's estimate of each table's rows at the dump's start",
            m.rows_estimated.clone(),
        );
        registry.register(
            "changes_applied",
            "Row changes applied from the stream, per table and operation",
            m.changes_applied.clone(),
        );
        registry.register(
            "source_transactions",
            "Source transactions applied from the stream",
            m.source_transactions.clone(),
        );
        registry.register(
            "etcd_txns",
            "etcd transactions written",
            m.etcd_txns.clone(),
        );
        registry.register(
            "etcd_txn_duration_seconds",
            "Latency of etcd write transactions",
            m.etcd_txn_seconds.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Source commit time to etcd commit, for the last transaction applied",
            m.lag_seconds.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Bytes of the source's log (WAL, binary log) past the last committed position",
            m.lag_bytes.clone(),
        );
        registry.register(
            "retries",
            "Retries after transient errors, by kind",
            m.retries.clone(),
        );
        registry.register("errors", "Errors, by kind", m.errors.clone());
        for kind in crate::EngineError::KINDS {
            let _ = m.retries.get_or_create(&KindLabels { kind });
            let _ = m.errors.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "log_write_errors",
            "Log lines that could not be written (the log's reader went away)",
            LOG_WRITE_ERRORS.clone(),
        );
        registry.register(
            "position",
            "The last committed position as a number (PostgreSQL LSN, MySQL binary-log offset)",
            m.position.clone(),
        );
        registry.register(
            "leader",
            "1 while this agent holds the lock (or, with ha, the leadership) and writes to etcd",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn set_phase(&self, phase: crate::sink::Phase) {
        let sync = phase == crate::sink::Phase::Sync;
        self.in_sync.store(sync, Ordering::Relaxed);
        self.phase
            .get_or_create(&PhaseLabels { phase: "dump" })
            .set(i64::from(!sync));
        self.phase
            .get_or_create(&PhaseLabels { phase: "sync" })
            .set(i64::from(sync));
    }

    /// A txn written: etcd is reachable again.
    pub fn etcd_txn(&self, took: Duration) {
        self.etcd_txns.inc();
        self.etcd_txn_seconds.observe(took.as_secs_f64());
        self.set_failing(None);
    }

    /// The last transaction's replication lag, in seconds.
    pub fn lag_seconds(&self) -> f64 {
        self.lag_seconds.get()
    }

    pub fn set_lag(&self, lag: Duration) {
        self.lag_seconds.set(lag.as_secs_f64());
    }

    /// Ready: in the sync phase, and the last transaction applied was recent enough.
    /// Gives every per-table series a value (zero) so that the families show from the start.
    pub fn declare_tables(&self, tables: impl Iterator<Item = String>) {
        for table in tables {
            let labels = TableLabels {
                table: table.clone(),
            };
            let _ = self.rows_dumped.get_or_create(&labels);
            let _ = self.rows_estimated.get_or_create(&labels);
            for op in ["insert", "update", "delete", "truncate"] {
                let _ = self.changes_applied.get_or_create(&ChangeLabels {
                    table: table.clone(),
                    op,
                });
            }
        }
    }

    /// Records the failure being retried (`None`: things work again); `/readyz` reports it.
    pub fn set_failing(&self, failure: Option<String>) {
        if let Ok(mut failing) = self.failing.lock() {
            *failing = failure;
        }
    }

    pub fn readiness(&self, max_lag_seconds: f64) -> Result<(), String> {
        if let Some(failure) = self.failing.lock().ok().and_then(|f| f.clone()) {
            return Err(format!("retrying: {failure}"));
        }
        if !self.in_sync.load(Ordering::Relaxed) {
            return Err("not in the sync phase yet".into());
        }
        let lag = self.lag_seconds.get();
        if lag > max_lag_seconds {
            return Err(format!(
                "replication lag {lag:.1}s above {max_lag_seconds}s"
            ));
        }
        Ok(())
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    ready_lag_seconds: f64,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let for_metrics = std::sync::Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = for_metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let result = metrics.readiness(ready_lag_seconds);
                async move {
                    match result {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_shows_from_the_start() {
        let m = Metrics::default();
        m.declare_tables(["t".to_string()].into_iter());
        let text = m.encode();
        for line in [
            "# TYPE etcd_sync_rows_dumped counter",
            "etcd_sync_rows_dumped_total{table=\"t\"} 0",
            "etcd_sync_rows_estimated{table=\"t\"} 0",
            "etcd_sync_changes_applied_total{table=\"t\",op=\"truncate\"} 0",
            "etcd_sync_retries_total{kind=\"etcd\"} 0",
            "etcd_sync_errors_total{kind=\"misconfigured\"} 0",
            "etcd_sync_log_write_errors_total",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn exposes_and_reports_readiness() {
        let m = Metrics::default();
        assert!(m.readiness(10.0).is_err());
        m.set_phase(crate::sink::Phase::Sync);
        m.source_transactions.inc();
        m.set_lag(Duration::from_millis(1500));
        assert!(m.readiness(10.0).is_ok());
        assert!(m.readiness(1.0).is_err());
        let text = m.encode();
        assert!(
            text.contains("etcd_sync_source_transactions_total 1"),
            "{text}"
        );
        assert!(text.contains("etcd_sync_phase{phase=\"sync\"} 1"), "{text}");
        assert!(
            text.contains("etcd_sync_replication_lag_seconds 1.5"),
            "{text}"
        );
    }
}
