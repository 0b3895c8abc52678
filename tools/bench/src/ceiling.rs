//! etcd's own ingest ceiling: puts from one client connection with the agent's txn shape, as
//! fast as etcd takes them. Every figure of the bench is a ratio to a ceiling measured on the
//! same machine in the same run.

use std::time::Instant;

use anyhow::Result;
use etcd_client::{Client as Etcd, Txn, TxnOp};
use futures_util::StreamExt;

/// Puts per txn: etcd's default --max-txn-ops (128) less the one the agent keeps for its state.
pub const TXN_PUTS: u64 = 127;

/// A value of `bytes` bytes shaped like the agent's JSON.
pub fn value_of(n: u64, bytes: usize) -> String {
    let head = format!("{{\"id\":{n},\"payload\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Writes `keys` keys of `value_bytes` bytes under `prefix`, `TXN_PUTS` per txn with
/// `in_flight` txns outstanding; returns keys/s.
pub async fn measure(
    etcd: &Etcd,
    prefix: &str,
    keys: u64,
    in_flight: usize,
    value_bytes: usize,
) -> Result<f64> {
    let started = Instant::now();
    let mut batches =
        futures_util::stream::iter((0..keys).step_by(TXN_PUTS as usize).map(|start| {
            let mut kv = etcd.kv_client();
            async move {
                let ops: Vec<TxnOp> = (start..(start + TXN_PUTS).min(keys))
                    .map(|n| TxnOp::put(format!("{prefix}{n}"), value_of(n, value_bytes), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await
            }
        }))
        .buffer_unordered(in_flight);
    while let Some(result) = batches.next().await {
        result?;
    }
    Ok(keys as f64 / started.elapsed().as_secs_f64())
}
