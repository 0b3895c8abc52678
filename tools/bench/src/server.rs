//! The bench's own etcd servers: a fresh data dir each, so that nothing left by tests or an
//! earlier scenario (history, tombstones) slows the next measurement down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::Client as Etcd;
use tokio::process::{Child, Command};

/// An etcd version the bench runs against, and the binary that serves it.
#[derive(Debug, Clone)]
pub struct EtcdVersion {
    /// "3.4" or "3.5".
    pub label: String,
    pub binary: PathBuf,
}

pub struct EtcdServer {
    child: Child,
    data: PathBuf,
    pub url: String,
    pub client: Etcd,
}

impl EtcdServer {
    /// Starts `version` on `port` with a new data dir under `dir`.
    pub async fn start(dir: &Path, version: &EtcdVersion, port: u16) -> Result<Self> {
        let data = dir.join(format!("etcd-{}-{port}-data", version.label));
        let _ = std::fs::remove_dir_all(&data);
        let url = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let child = Command::new(&version.binary)
            .args(["--name", "bench", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args(["--quota-backend-bytes", "8589934592"])
            // Per-method gRPC handling times: what etcd spends on a txn, apart from the client.
            .args(["--metrics", "extensive"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                dir.join(format!("etcd-{}-{port}.log", version.label)),
            )?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (make testenv installs it)",
                    version.binary.display()
                )
            })?;
        for _ in 0..100 {
            if let Ok(mut client) = Etcd::connect([url.as_str()], None).await {
                if client.status().await.is_ok() {
                    return Ok(Self {
                        child,
                        data,
                        url,
                        client,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the bench's etcd {} did not start; see target/bench/etcd-*.log",
            version.label
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it and removes its data: the kernel then drops the pages it had not written back
    /// yet instead of writing them during the next scenario (a 1M-key etcd killed just
    /// before a re-dump left it 1.3–1.5× slower than in runs without).
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        let _ = std::fs::remove_dir_all(&self.data);
        Ok(())
    }
}

/// Txns etcd handled at `url` and the seconds it spent on them (from receiving a request to
/// sending its response), from its `/metrics`.
pub async fn txn_handling(url: &str) -> Result<(f64, f64)> {
    let text = http_get(url, "/metrics").await?;
    Ok((
        metric(
            &text,
            "grpc_server_handling_seconds_count",
            "grpc_method=\"Txn\"",
        ),
        metric(
            &text,
            "grpc_server_handling_seconds_sum",
            "grpc_method=\"Txn\"",
        ),
    ))
}

/// What etcd's disk took so far, from its `/metrics`: WAL fsyncs (one per batch of raft
/// entries it makes durable) and backend commits (bbolt's, every 100 ms or 10,000 writes),
/// each a count and their seconds. On a virtual disk their latency drifts; a round whose etcd
/// was slow for its disk shows it here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk {
    pub fsyncs: f64,
    pub fsync_seconds: f64,
    pub commits: f64,
    pub commit_seconds: f64,
}

impl Disk {
    pub async fn of(url: &str) -> Result<Self> {
        let text = http_get(url, "/metrics").await?;
        Ok(Disk {
            fsyncs: metric(&text, "etcd_disk_wal_fsync_duration_seconds_count", ""),
            fsync_seconds: metric(&text, "etcd_disk_wal_fsync_duration_seconds_sum", ""),
            commits: metric(&text, "etcd_disk_backend_commit_duration_seconds_count", ""),
            commit_seconds: metric(&text, "etcd_disk_backend_commit_duration_seconds_sum", ""),
        })
    }

    /// The counts of the bench's results between `before` and now.
    pub fn counts_since(&self, before: &Disk) -> Vec<(String, f64)> {
        let fsyncs = self.fsyncs - before.fsyncs;
        let commits = self.commits - before.commits;
        let fsync_seconds = self.fsync_seconds - before.fsync_seconds;
        let commit_seconds = self.commit_seconds - before.commit_seconds;
        let per = |s: f64, n: f64| if n > 0.0 { s * 1e3 / n } else { 0.0 };
        vec![
            ("etcd WAL fsyncs".into(), fsyncs),
            ("etcd WAL fsync s".into(), fsync_seconds),
            ("etcd ms per WAL fsync".into(), per(fsync_seconds, fsyncs)),
            ("etcd backend commit s".into(), commit_seconds),
            (
                "etcd ms per backend commit".into(),
                per(commit_seconds, commits),
            ),
        ]
    }
}

/// The sum of the samples of `name` whose labels contain `label`.
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.0 GET: enough for a `/metrics` page without an HTTP client crate.
pub async fn http_get(url: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The pid of the first process whose command line contains every one of `parts`.
pub fn find_process(parts: &[&str]) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    parts.iter().all(|p| c.contains(p))
                })
                .unwrap_or(false)
        })
}
