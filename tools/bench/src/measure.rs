//! One measured figure of the bench, as printed and as written to the results JSON.

use serde_json::{json, Value};

use crate::cpu::Cores;

#[derive(Debug, Default, Clone)]
pub struct Measure {
    /// "3.4" or "3.5".
    pub etcd: String,
    /// "postgres", "mariadb", or "etcd" for the ceilings.
    pub source: String,
    pub scenario: String,
    pub rows: Option<u64>,
    /// What a user waits for, end to end.
    pub seconds: Option<f64>,
    pub rate: Option<f64>,
    /// `rate` over the ceiling named in `against`, measured in the same run.
    pub ratio: Option<f64>,
    pub against: Option<&'static str>,
    /// Seconds of each phase, in order.
    pub phases: Vec<(String, f64)>,
    /// Extra counts (keys counted by etcd, stale keys deleted, …).
    pub counts: Vec<(String, f64)>,
    pub lag_ms: Option<(f64, f64, f64)>,
    pub peak_rss_mb: Option<f64>,
    /// CPU cores used on average: agent, etcd, database server, the rest of the machine; and
    /// the threads of each waiting for a core.
    pub cores: Option<Cores>,
}

impl Measure {
    /// The fields the plot needs, read back from [`Measure::json`]'s output.
    pub fn from_json(v: &Value) -> Self {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Measure {
            etcd: text("etcd"),
            source: text("source"),
            scenario: text("scenario"),
            rows: v["rows"].as_u64(),
            seconds: v["seconds"].as_f64(),
            ..Default::default()
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "etcd": self.etcd,
            "source": self.source,
            "scenario": self.scenario,
            "rows": self.rows,
            "seconds": self.seconds,
            "rate": self.rate,
            "ratio": self.ratio,
            "ratio_against": self.against,
            "phases": self.phases.iter().map(|(k, v)| json!({"phase": k, "seconds": v})).collect::<Vec<_>>(),
            "counts": self.counts.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "lag_ms": self.lag_ms.map(|(a, b, c)| json!({"p50": a, "p99": b, "max": c})),
            "peak_rss_mb": self.peak_rss_mb,
            "cores": self.cores.map(|c| json!({"agent": c.agent, "etcd": c.etcd, "database": c.db, "other": c.other})),
            "waiting_for_a_core": self.cores.map(|c| json!({"agent": c.waiting.agent, "etcd": c.waiting.etcd, "database": c.waiting.db})),
            "machine": self.cores.map(|c| json!({
                "stolen_cores": c.stolen,
                "probe_us_per_piece": c.probe_us.map(|p| p.0),
                "probe_us_per_chase": c.probe_us.map(|p| p.1),
            })),
        })
    }
}
