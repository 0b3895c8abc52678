//! A TCP proxy that delays every byte by a fixed time each way: etcd at a distance (another
//! zone, another host) on a machine where `tc netem` is not available.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Listens on `port`, forwards to `upstream` with `one_way` added in each direction; stops
/// when dropped.
pub struct DelayProxy {
    pub url: String,
    _tasks: JoinSet<()>,
}

impl DelayProxy {
    pub async fn start(port: u16, upstream: &str, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(delayed(client_read, server_write, one_way));
                connections.spawn(delayed(server_read, client_write, one_way));
            }
        });
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            _tasks: tasks,
        })
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
