//! The dump's reads: COPY of every selected table inside the replication slot's exported
//! snapshot, over several connections sharing it, rows sent to the engine in batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use etcd_sync_api::{DriverError, DumpEvent, Row};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, PgTable};
use crate::conn::{quote_ident, quote_literal};
use crate::error::pg_error;
use crate::{partitions, types, PostgresDriver, DUMP_BATCH_ROWS};

impl PostgresDriver {
    /// Opens a connection inside the exported snapshot (or a fresh REPEATABLE READ one).
    pub(crate) async fn snapshot_client(
        &self,
        snapshot: Option<&str>,
    ) -> Result<Client, DriverError> {
        let client = self.query_client().await?;
        let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;");
        if let Some(name) = snapshot {
            sql.push_str(&format!(
                "SET TRANSACTION SNAPSHOT {};",
                quote_literal(name)
            ));
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_error("opening the snapshot transaction", e))?;
        Ok(client)
    }

    /// The partitions fingerprint as of `snapshot`, so that it describes what the dump copies.
    pub(crate) async fn snapshot_fingerprint(
        &self,
        snapshot: &str,
        tables: &[&PgTable],
    ) -> Result<Option<String>, DriverError> {
        if !tables.iter().any(|t| t.partitioned) {
            return Ok(None);
        }
        let client = self.snapshot_client(Some(snapshot)).await?;
        let fingerprint = partitions::fingerprint(&client, tables).await?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error("ending the snapshot transaction", e))?;
        Ok(fingerprint)
    }

    /// COPYs `tables` over `connections` connections sharing `snapshot`, biggest first.
    pub(crate) async fn copy_tables(
        &self,
        tables: Vec<PgTable>,
        snapshot: Option<&str>,
        connections: usize,
        out: &mpsc::Sender<DumpEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let mut queue: Vec<PgTable> = tables;
        queue.sort_by_key(|t| std::cmp::Reverse(t.estimated_rows.unwrap_or(0)));
        let queue = Arc::new(Mutex::new(VecDeque::from(queue)));
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            clients.push(self.snapshot_client(snapshot).await?);
        }
        let workers = clients.into_iter().map(|client| {
            let queue = Arc::clone(&queue);
            let out = out.clone();
            let cancel = cancel.clone();
            async move {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some(table) = next else { break };
                    copy_table(&client, &table, &out, &cancel).await?;
                }
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| pg_error("ending the snapshot transaction", e))
            }
        });
        futures_util::future::try_join_all(workers).await?;
        Ok(())
    }
}

/// Sends one table's rows, read with COPY in text format.
async fn copy_table(
    client: &Client,
    table: &PgTable,
    out: &mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<(), DriverError> {
    let schema = &table.schema;
    send(
        out,
        DumpEvent::TableStarted {
            table: Arc::clone(schema),
            estimated_rows: table.estimated_rows,
        },
    )
    .await?;
    let columns = schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    // COPY cannot read a partitioned table directly; a query over it reads every partition.
    let sql = if let Some(pushdown) = &table.pushdown {
        format!(
            "COPY ({}) TO STDOUT",
            crate::pushdown::dump_query(table, pushdown)
        )
    } else if table.partitioned {
        format!(
            "COPY (SELECT {columns} FROM {}) TO STDOUT",
            catalog::qualified_name(&schema.id)
        )
    } else {
        format!(
            "COPY {} ({columns}) TO STDOUT",
            catalog::qualified_name(&schema.id)
        )
    };
    let context = format!("copying table {}", schema.id);
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| pg_error(&context, e))?;
    futures_util::pin_mut!(stream);
    let mut pending = BytesMut::new();
    let mut batch: Vec<Row> = Vec::with_capacity(DUMP_BATCH_ROWS);
    let mut total = 0u64;
    loop {
        let chunk: Option<Bytes> = tokio::select! {
            _ = cancel.cancelled() => return Err(DriverError::Stopped),
            chunk = stream.next() => chunk.transpose().map_err(|e| pg_error(&context, e))?,
        };
        let Some(chunk) = chunk else { break };
        for_each_line(&mut pending, &chunk, |line| {
            batch.push(text_row(line, &table.types, &schema.id, &context)?);
            Ok(())
        })?;
        if batch.len() >= DUMP_BATCH_ROWS {
            total += batch.len() as u64;
            let rows = std::mem::replace(&mut batch, Vec::with_capacity(DUMP_BATCH_ROWS));
            send(
                out,
                DumpEvent::Rows {
                    table: Arc::clone(schema),
                    rows,
                },
            )
            .await?;
        }
    }
    if !pending.is_empty() {
        return Err(DriverError::Protocol(format!(
            "{context}: COPY ended inside a row"
        )));
    }
    total += batch.len() as u64;
    if !batch.is_empty() {
        send(
            out,
            DumpEvent::Rows {
                table: Arc::clone(schema),
                rows: batch,
            },
        )
        .await?;
    }
    send(
        out,
        DumpEvent::TableDone {
            table: Arc::clone(schema),
            rows: total,
        },
    )
    .await
}

/// Calls `line` for every complete line `chunk` ends (without its newline); keeps a line cut
/// between chunks in `pending`. The server sends one row per CopyData message, so rows are
/// read from the chunk itself, and `pending` is the rare case.
fn for_each_line(
    pending: &mut BytesMut,
    chunk: &[u8],
    mut line: impl FnMut(&[u8]) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    let mut rest = chunk;
    if !pending.is_empty() {
        let Some(newline) = memchr::memchr(b'\n', rest) else {
            pending.extend_from_slice(rest);
            return Ok(());
        };
        pending.extend_from_slice(&rest[..newline]);
        rest = &rest[newline + 1..];
        line(&std::mem::take(pending))?;
    }
    while let Some(newline) = memchr::memchr(b'\n', rest) {
        line(&rest[..newline])?;
        rest = &rest[newline + 1..];
    }
    pending.extend_from_slice(rest);
    Ok(())
}

async fn send<T>(out: &mpsc::Sender<T>, event: T) -> Result<(), DriverError> {
    out.send(event).await.map_err(|_| DriverError::Stopped)
}

fn text_row(
    line: &[u8],
    types: &[types::PgType],
    table: &etcd_sync_api::TableId,
    context: &str,
) -> Result<Row, DriverError> {
    let mut row = Vec::with_capacity(types.len());
    let mut columns = 0;
    types::copy_fields(line, |field| {
        columns += 1;
        let Some(ty) = types.get(columns - 1) else {
            return Ok(());
        };
        row.push(match field {
            None => etcd_sync_api::Value::Null,
            Some(text) => ty
                .to_value(text)
                .map_err(|e| format!("table {table}: {e}"))?,
        });
        Ok(())
    })
    .map_err(|e| DriverError::Protocol(format!("{context}: {e}")))?;
    if columns != types.len() {
        return Err(DriverError::Protocol(format!(
            "table {table}: a row has {columns} columns, expected {}",
            types.len()
        )));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows come out whole and in order however the text is cut into chunks.
    #[test]
    fn lines_cut_between_chunks_are_put_together() {
        let text = b"1\tone\n22\ttwo\n\n333\tthree\n";
        let want: Vec<&[u8]> = vec![b"1\tone", b"22\ttwo", b"", b"333\tthree"];
        for first in 0..=text.len() {
            for second in first..=text.len() {
                let mut pending = BytesMut::new();
                let mut got: Vec<Vec<u8>> = Vec::new();
                for chunk in [&text[..first], &text[first..second], &text[second..]] {
                    for_each_line(&mut pending, chunk, |line| {
                        got.push(line.to_vec());
                        Ok(())
                    })
                    .unwrap();
                }
                assert_eq!(got, want, "cut at {first} and {second}");
                assert!(pending.is_empty());
            }
        }
    }
}
