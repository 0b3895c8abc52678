//! A TCP proxy on loopback that can cut its connections right after forwarding a request,
//! before any answer comes back: the request reaches the server (and is applied), its answer is
//! lost, and the client cannot know which.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct CuttingProxy {
    pub port: u16,
    cut_next: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl CuttingProxy {
    /// Forwards 127.0.0.1:`port` to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = CuttingProxy {
            port,
            cut_next: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
        };
        let (cut_next, cuts, stop) = (
            Arc::clone(&proxy.cut_next),
            Arc::clone(&proxy.cuts),
            proxy.stop.clone(),
        );
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(forward(
                    client,
                    server,
                    Arc::clone(&cut_next),
                    Arc::clone(&cuts),
                    stop.child_token(),
                ));
            }
        });
        proxy
    }

    /// The next chunk a client sends is forwarded, its answer dropped, and its connection cut.
    pub fn cut_after_next_request(&self) {
        self.cut_next.store(true, Ordering::SeqCst);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    cut_next: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    done: CancellationToken,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set before the cutting request goes up: nothing the server sends after it comes back.
    let deaf = Arc::new(AtomicBool::new(false));
    let up = {
        let (deaf, done) = (Arc::clone(&deaf), done.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let cut = cut_next.swap(false, Ordering::SeqCst);
                if cut {
                    deaf.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if cut {
                    // Time for the server to apply it; then the connection goes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    cuts.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            done.cancel();
        }
    };
    let down = {
        let done = done.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if deaf.load(Ordering::SeqCst) {
                    continue;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            done.cancel();
        }
    };
    tokio::select! {
        _ = done.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}
