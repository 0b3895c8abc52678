//! `sync verify`: compares the database with etcd, key for key and byte for byte.
//!
//! Reads every selected table in one snapshot and each table's etcd prefix, and reports rows
//! missing from etcd, keys etcd has that the database does not, and values that differ.
//! This version holds one table's expected keys in memory at a time and is exact when the
//! agent is caught up and the source is quiet.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_sync_api::{Driver, DumpEvent, TableId, TableSchema};
use tokio::sync::mpsc;

use crate::encode::{encode_row, row_key, table_prefix};
use crate::engine::{EngineError, Settings};
use crate::etcd::Store;

/// Examples kept per kind of difference.
const EXAMPLES: usize = 5;

#[derive(Debug, Default)]
pub struct TableReport {
    pub table: String,
    pub rows: u64,
    pub keys: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub examples: Vec<String>,
}

impl TableReport {
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES * 3 {
            self.examples.push(text);
        }
    }
}

pub async fn verify<D: Driver>(
    driver: D,
    settings: &Settings,
) -> Result<Vec<TableReport>, EngineError> {
    let store = Store::connect(&settings.endpoints, &settings.state_prefix).await?;
    let selection = driver.select_tables().await?;
    let tables: Vec<Arc<TableSchema>> = selection.tables;
    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::spawn({
        let tables = tables.clone();
        async move { driver.read_snapshot(&tables, tx).await }
    });
    let mut expected: HashMap<TableId, HashMap<String, String>> = HashMap::new();
    let mut reports = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            DumpEvent::TableStarted { table, .. } => {
                expected.insert(table.id.clone(), HashMap::new());
            }
            DumpEvent::Rows { table, rows } => {
                let map = expected.entry(table.id.clone()).or_default();
                for row in &rows {
                    map.insert(
                        row_key(&settings.prefix, &table, row)?,
                        encode_row(&table, row, None)?,
                    );
                }
            }
            DumpEvent::TableDone { table, .. } => {
                let rows = expected.remove(&table.id).unwrap_or_default();
                reports.push(compare(&store, settings, &table.id, rows).await?);
            }
        }
    }
    match reader.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(EngineError::Driver(etcd_sync_api::DriverError::Protocol(
                format!("the snapshot task failed: {join}"),
            )))
        }
    }
    reports.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(reports)
}

async fn compare(
    store: &Store,
    settings: &Settings,
    table: &TableId,
    mut expected: HashMap<String, String>,
) -> Result<TableReport, EngineError> {
    let mut report = TableReport {
        table: table.to_string(),
        rows: expected.len() as u64,
        ..Default::default()
    };
    let prefix = table_prefix(&settings.prefix, table);
    let mut pager = store.pager(&prefix, true);
    loop {
        let page = pager.next().await?;
        if page.is_empty() {
            break;
        }
        for (listed, value) in page {
            report.keys += 1;
            let value = value.unwrap_or_default();
            match expected.remove(&listed.key) {
                None => {
                    report.extra += 1;
                    report.example(format!("extra key {}", listed.key));
                }
                Some(want) if want != value => {
                    report.different += 1;
                    report.example(format!(
                        "different {}: etcd has {value}, the database {want}",
                        listed.key
                    ));
                }
                Some(_) => {}
            }
        }
    }
    report.missing = expected.len() as u64;
    let mut missing: Vec<&String> = expected.keys().collect();
    missing.sort();
    for key in missing.into_iter().take(EXAMPLES) {
        report.example(format!("missing key {key}"));
    }
    Ok(report)
}
