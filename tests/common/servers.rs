//! Servers the tests start or restart themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client as Etcd;

use super::free_port;

/// An etcd of the test's own (fresh data dir, free ports), for tests that break it.
pub struct OwnEtcd {
    child: Child,
    pub endpoint: String,
    dir: PathBuf,
    args: Vec<String>,
}

impl OwnEtcd {
    pub async fn start(name: &str, extra_args: &[&str]) -> OwnEtcd {
        let dir = std::env::temp_dir().join(format!("etcd-sync-test-etcd-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut args = etcd_member_args(
            name,
            &dir.join("data"),
            &endpoint,
            &peer_url,
            &format!("{name}={peer_url}"),
        );
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let child = Self::spawn(&dir, &args);
        let etcd = OwnEtcd {
            child,
            endpoint,
            dir,
            args,
        };
        etcd.wait_ready().await;
        etcd
    }

    fn spawn(dir: &Path, args: &[String]) -> Child {
        spawn_etcd(
            &super::TestEnv::load().etcd_binary(),
            args,
            &dir.join("etcd.log"),
        )
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Etcd::connect([self.endpoint.as_str()], None).await {
                if c.status().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the test's etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills etcd (SIGKILL) and keeps it down for `down`.
    pub async fn crash_for(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = Self::spawn(&self.dir, &self.args);
        self.wait_ready().await;
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of one etcd member on loopback: its name, data dir, client and peer URLs, and
/// the cluster it starts in (`name=peer_url,...`).
pub fn etcd_member_args(
    name: &str,
    data: &Path,
    endpoint: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        endpoint,
        "--advertise-client-urls",
        endpoint,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        initial_cluster,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts an etcd process, its log appended to `log`.
pub fn spawn_etcd(binary: &str, args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd: run `make testenv`")
}

/// Restarts a server of the test environment: `pg-faults` or `mariadb-faults`.
pub fn restart_server(name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/testenv.sh");
    let status = Command::new(script)
        .args(["restart", name])
        .status()
        .unwrap();
    assert!(status.success(), "restarting {name} failed");
}

/// Starts a server of the test environment that is not running (a test killed it), or sets
/// up again a failover target a test promoted: `pg-faults`, `mariadb-faults`,
/// `pg-faults-standby` (a new base backup if promoted), `mariadb-faults-replica` (replicating
/// again from its primary's current position).
pub fn start_server(name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/testenv.sh");
    let status = Command::new(script).args(["start", name]).status().unwrap();
    assert!(status.success(), "starting {name} failed");
}

/// `kill -9` of a server of the test environment (its pid from its pid file).
pub fn kill_server(name: &str) {
    let dir = Path::new(super::ENV_FILE).parent().unwrap();
    let pid_file = if name.starts_with("pg") {
        dir.join(name).join("postmaster.pid")
    } else {
        dir.join(format!("{name}-run")).join("mysqld.pid")
    };
    let text = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid = text.lines().next().unwrap().trim().to_owned();
    let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(status.success(), "kill -9 {pid} ({name})");
    // Until it is gone: the next start must not find it running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
