//! The agent under test, run as a user runs it: the release binary with a config file, its log
//! kept for the per-phase timings.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::Client as Etcd;
use tokio::process::{Child, Command};

pub struct Agent {
    child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Agent {
    pub fn start(binary: &Path, config: &Path, log: PathBuf) -> Result<Self> {
        let child = Command::new(binary)
            .arg("--config-file")
            .arg(config)
            // BENCH_AGENT_LOG: the agent's RUST_LOG, for a closer look at one run.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self {
            child,
            log,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the state says `phase: sync`; returns the seconds since the start.
    pub async fn wait_for_sync(&mut self, etcd: &Etcd, state_prefix: &str) -> Result<f64> {
        let key = format!("{state_prefix}/state");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}); see {}", self.log.display());
            }
            let response = etcd.kv_client().get(key.as_str(), None).await?;
            if let Some(kv) = response.kvs().first() {
                let state: serde_json::Value = serde_json::from_slice(kv.value())?;
                if state["phase"] == "sync" {
                    return Ok(self.started.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `key` exists; returns the seconds since the start.
    pub async fn wait_for_key(&mut self, etcd: &Etcd, key: &str) -> Result<f64> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}); see {}", self.log.display());
            }
            let response = etcd.kv_client().get(key, None).await?;
            if !response.kvs().is_empty() {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory so far, in MB.
    pub fn peak_rss_mb(&self) -> Result<f64> {
        let pid = self.pid().context("agent exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM")?;
        Ok(kb / 1024.0)
    }

    /// Starts a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM).
    pub fn reset_peak_rss(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the agent did not stop within 30 s of SIGTERM")??;
        Ok(())
    }

    /// Seconds between the agent's start and each of its log lines that contain `needle`,
    /// read from the log's timestamps (RFC 3339, UTC) against the first line's.
    pub fn phase_seconds(&self, needle: &str) -> Option<f64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let first = text.lines().next().and_then(timestamp)?;
        text.lines()
            .rev()
            .filter(|l| l.contains(needle))
            .find_map(timestamp)
            .map(|at| at - first)
    }
}

/// Seconds of the day of a log line's leading timestamp (`2026-11-23T01:30:04.010234Z`).
fn timestamp(line: &str) -> Option<f64> {
    let time = line.get(11..26)?;
    let (h, rest) = time.split_once(':')?;
    let (m, s) = rest.split_once(':')?;
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}
