//! `sync preview`: what each selected table would put in etcd (key columns, the columns kept,
//! the filter, a few keys and values exactly as they would be written), read from the database
//! alone. Nothing is written anywhere.

use std::fmt::Write as _;
use std::sync::Arc;

use etcd_sync_api::{Driver, DumpEvent, SourceTable};
use tokio::sync::mpsc;

use crate::engine::shape::{RowShape, Shapes};
use crate::engine::{EngineError, Settings};

/// One table's preview.
pub struct TablePreview {
    pub table: String,
    pub key_columns: Vec<String>,
    pub kept: Vec<String>,
    pub excluded: Vec<String>,
    pub filter: Option<String>,
    pub raw_value: Option<String>,
    /// Keys and values of the first rows the filter keeps.
    pub samples: Vec<(String, Vec<u8>)>,
    /// Rows read to find them (the filter may leave many out).
    pub rows_read: u64,
}

/// Previews the selected tables (or the one named `only`), `limit` rows each.
pub async fn preview<D: Driver>(
    driver: &D,
    settings: &Settings,
    only: Option<&str>,
    limit: usize,
) -> Result<Vec<TablePreview>, EngineError> {
    let selection = driver.select_tables().await?;
    if selection.tables.is_empty() {
        return Err(EngineError::NothingSelected);
    }
    let schemas: Vec<_> = selection
        .tables
        .iter()
        .map(|t| Arc::clone(t.schema()))
        .collect();
    let unknown = settings.options.unknown_tables(&schemas);
    if !unknown.is_empty() {
        return Err(EngineError::Options(unknown));
    }
    let tables: Vec<D::Table> = selection
        .tables
        .into_iter()
        .filter(|t| only.is_none_or(|name| t.schema().id.to_string() == name))
        .collect();
    if let (Some(name), true) = (only, tables.is_empty()) {
        let names: Vec<String> = schemas.iter().map(|s| s.id.to_string()).collect();
        return Err(EngineError::Options(vec![format!(
            "--table {name}: no such table is selected{}",
            etcd_sync_api::did_you_mean(name, names.iter().map(String::as_str))
        )]));
    }
    let mut previews = Vec::new();
    for table in &tables {
        let schema = table.schema();
        let options = settings.options.for_table(&schema.id);
        let shape = RowShape::new(schema, options, true)?;
        let mut preview = TablePreview {
            table: schema.id.to_string(),
            key_columns: schema
                .key_column_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            kept: shape
                .kept
                .iter()
                .map(|&i| schema.columns[i].name.clone())
                .collect(),
            excluded: (0..schema.columns.len())
                .filter(|i| !shape.kept.contains(i))
                .map(|i| schema.columns[i].name.clone())
                .collect(),
            filter: options.and_then(|o| o.filter.clone()),
            raw_value: options
                .and_then(|o| o.value.as_ref())
                .map(|v| v.column.clone()),
            samples: Vec::new(),
            rows_read: 0,
        };
        sample(driver, table, settings, limit, &mut preview).await?;
        previews.push(preview);
    }
    Ok(previews)
}

/// Reads rows of `table` until `limit` of them are kept; the read stops there.
async fn sample<D: Driver>(
    driver: &D,
    table: &D::Table,
    settings: &Settings,
    limit: usize,
    preview: &mut TablePreview,
) -> Result<(), EngineError> {
    if limit == 0 {
        return Ok(());
    }
    let mut shapes = Shapes::new(Arc::clone(&settings.options));
    let (tx, mut rx) = mpsc::channel::<DumpEvent>(4);
    let read = driver.read_snapshot(std::slice::from_ref(table), tx);
    let prefix = settings.prefix.as_str();
    // Owns the receiver: returning drops it, which stops the read.
    let consume = async move {
        while let Some(event) = rx.recv().await {
            let DumpEvent::Rows { table, rows } = event else {
                continue;
            };
            let shape = shapes.get(&table)?;
            for row in &rows {
                preview.rows_read += 1;
                if let Some(value) = shape.value(row, None)? {
                    preview.samples.push((shape.key(prefix, row)?, value));
                    if preview.samples.len() >= limit {
                        return Ok::<_, EngineError>(true);
                    }
                }
            }
        }
        Ok(false)
    };
    let (read, consumed) = tokio::join!(read, consume);
    let stopped_early = consumed?;
    if !stopped_early {
        read?;
    }
    Ok(())
}

/// A value as text: as it is when it is UTF-8, otherwise its bytes in hex.
pub fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let mut out = format!("<{} bytes, hex> ", value.len());
            for b in value {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
    }
}

impl std::fmt::Display for TablePreview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "table {}", self.table)?;
        writeln!(f, "  key columns: {}", self.key_columns.join(", "))?;
        match &self.raw_value {
            Some(column) => writeln!(f, "  value: column {column}, raw (NULL: no key)")?,
            None => {
                writeln!(f, "  columns kept: {}", self.kept.join(", "))?;
                if !self.excluded.is_empty() {
                    writeln!(f, "  columns left out: {}", self.excluded.join(", "))?;
                }
            }
        }
        match &self.filter {
            Some(filter) => writeln!(f, "  where: {filter}")?,
            None => writeln!(f, "  where: (every row)")?,
        }
        if self.samples.is_empty() {
            writeln!(f, "  no row to write ({} read)", self.rows_read)?;
        }
        for (key, value) in &self.samples {
            writeln!(f, "  {key} = {}", printable(value))?;
        }
        Ok(())
    }
}
