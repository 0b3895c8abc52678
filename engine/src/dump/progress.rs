//! How far the dump has got: log lines, and bars on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use etcd_sync_api::TableId;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::info;

use super::PROGRESS_EVERY;

/// Per-table dump progress: log lines, and bars when stderr is a terminal.
pub(super) struct Progress {
    tables: HashMap<TableId, TableProgress>,
    last_log: Option<Instant>,
    bars: Option<MultiProgress>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            tables: HashMap::new(),
            last_log: None,
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }
}

struct TableProgress {
    rows: u64,
    estimate: Option<u64>,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub(super) fn started(&mut self, table: &TableId, estimate: Option<u64>) {
        match estimate {
            Some(rows) => info!(%table, estimated_rows = rows, "dumping table"),
            // PostgreSQL before the first ANALYZE, for one.
            None => info!(%table, "dumping table (no row estimate: never analysed)"),
        }
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(estimate.unwrap_or(0).max(1)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {bar:30} {human_pos}/~{human_len} rows, {elapsed} elapsed, eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(table.to_string());
            bar
        });
        self.tables.insert(
            table.clone(),
            TableProgress {
                rows: 0,
                estimate,
                started: Instant::now(),
                bar,
            },
        );
    }

    pub(super) fn rows(&mut self, table: &TableId, rows: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            t.rows += rows;
            if let Some(bar) = &t.bar {
                if t.rows > bar.length().unwrap_or(0) {
                    bar.set_length(t.rows);
                }
                bar.set_position(t.rows);
            }
        }
        let now = Instant::now();
        if self.bars.is_none() && self.last_log.is_none_or(|at| now - at >= PROGRESS_EVERY) {
            self.last_log = Some(now);
            if let Some(t) = self.tables.get(table) {
                let secs = t.started.elapsed().as_secs_f64().max(0.001);
                let estimated = t
                    .estimate
                    .map_or_else(|| "unknown".to_string(), |e| e.to_string());
                info!(
                    %table,
                    rows = t.rows,
                    estimated_rows = %estimated,
                    rows_per_sec = (t.rows as f64 / secs) as u64,
                    "dump progress"
                );
            }
        }
    }

    pub(super) fn done(&mut self, table: &TableId, rows: u64) {
        if let Some(bar) = self.tables.get(table).and_then(|t| t.bar.as_ref()) {
            bar.set_length(rows.max(1));
            bar.finish();
        }
        let secs = self
            .tables
            .get(table)
            .map_or(0.0, |t| t.started.elapsed().as_secs_f64());
        info!(%table, rows, seconds = format!("{secs:.1}"), "table dumped");
    }

    pub(super) fn total(&self) -> u64 {
        self.tables.values().map(|t| t.rows).sum()
    }
}
