//! The PostgreSQL driver on its own, with no etcd: prints one table's snapshot, then its
//! change stream, to stdout, until Ctrl-C.
//!
//! ```sh
//! PGHOST=127.0.0.1 PGPORT=25432 PGUSER=sync PGPASSWORD=sync PGDATABASE=app \
//!   cargo run -p etcd-sync-postgres --example print_changes -- users
//! ```
//!
//! It creates (and leaves) the slot and publication `print_changes`; drop them with
//! `SELECT pg_drop_replication_slot('print_changes'); DROP PUBLICATION print_changes;`.

use std::sync::Arc;

use etcd_sync_api::{
    Change, Driver, DumpEvent, Position, StreamEvent, TableFilter, TableSchema, TlsSettings, Value,
};
use etcd_sync_postgres::{ConnectParams, PgTable, PostgresConfig, PostgresDriver};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A row as `column=value` pairs, values in their Rust form.
fn show(table: &TableSchema, row: &[Value]) -> String {
    table
        .columns
        .iter()
        .zip(row)
        .map(|(column, value)| format!("{}={value:?}", column.name))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = std::env::args()
        .nth(1)
        .ok_or("usage: print_changes TABLE")?;
    let driver = PostgresDriver::new(PostgresConfig {
        connect: ConnectParams {
            host: env("PGHOST", "127.0.0.1"),
            port: env("PGPORT", "5432").parse()?,
            user: env("PGUSER", "postgres"),
            password: std::env::var("PGPASSWORD").ok(),
            database: env("PGDATABASE", "postgres"),
            application_name: "print_changes".into(),
            tls: TlsSettings::default(),
        },
        slot: "print_changes".into(),
        publication: "print_changes".into(),
        sql_catch_up: true,
        filter: TableFilter {
            include: vec![table],
            exclude: Vec::new(),
        },
        dump_connections: 1,
        pushdown: Default::default(),
    });
    let tables: Vec<PgTable> = driver.select_tables().await?.tables;
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
        }
    });

    // The snapshot: every row, then the position the stream continues from.
    let (rows_tx, mut rows_rx) = mpsc::channel(16);
    let printer = tokio::spawn(async move {
        while let Some(event) = rows_rx.recv().await {
            if let DumpEvent::Rows { table, rows } = event {
                for row in rows {
                    println!("snapshot {}: {}", table.id, show(&table, &row));
                }
            }
        }
    });
    let position: Position = driver.dump(&tables, rows_tx, cancel.clone()).await?;
    printer.await?;
    println!("snapshot taken at {}", position.0);

    // The stream: each transaction's changes, then its commit, acknowledged once printed (a
    // real consumer acknowledges once what it printed is durable).
    let (events_tx, mut events_rx) = mpsc::channel(16);
    let (ack_tx, ack_rx) = watch::channel(position.clone());
    let stream = tokio::spawn({
        let driver = Arc::new(driver);
        let cancel = cancel.clone();
        async move {
            driver
                .stream(position, &tables, events_tx, ack_rx, cancel)
                .await
        }
    });
    while let Some(event) = events_rx.recv().await {
        match event {
            StreamEvent::Changes(changes) => {
                for change in changes {
                    match change {
                        Change::Insert { table, row } => {
                            println!("insert {}: {}", table.id, show(&table, &row))
                        }
                        Change::Update { table, row, .. } => {
                            println!("update {}: {}", table.id, show(&table, &row))
                        }
                        Change::Delete { table, old } => {
                            println!("delete {}: {}", table.id, show(&table, &old))
                        }
                        Change::Truncate { tables } => {
                            for table in tables {
                                println!("truncate {}", table.id);
                            }
                        }
                    }
                }
            }
            StreamEvent::Commit { position, .. } => {
                println!("commit at {}", position.0);
                let _ = ack_tx.send(position);
            }
        }
    }
    stream.await??;
    Ok(())
}
