//! A three-member etcd cluster of the test's own (free ports, fresh data dirs), for the tests
//! that kill and stop its members; and which of them the agent is connected to.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use etcd_client::Client as Etcd;

use super::{free_port, TestEnv};

struct Member {
    name: String,
    endpoint: String,
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    /// Stopped with SIGSTOP: the process lives but answers nothing.
    frozen: bool,
}

impl Member {
    fn is_up(&self) -> bool {
        self.child.is_some() && !self.frozen
    }

    fn spawn(&mut self, binary: &str) {
        let log = self.dir.join(format!("{}.log", self.name));
        self.child = Some(super::servers::spawn_etcd(binary, &self.args, &log));
    }
}

pub struct EtcdCluster {
    members: Vec<Member>,
    binary: String,
}

impl EtcdCluster {
    /// Starts `size` members of etcd `version` ("3.4" or "3.5") and waits for a leader.
    pub async fn start(name: &str, size: usize, version: &str) -> EtcdCluster {
        let env = TestEnv::load();
        let binary = match version {
            "3.4" => "etcd".to_owned(),
            "3.5" => env.get("ETCD35_BIN"),
            other => panic!("no etcd {other} in the test environment"),
        };
        let dir = std::env::temp_dir().join(format!("etcd-sync-test-cluster-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let endpoint = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let data = dir.join(format!("m{i}"));
                let mut args = super::servers::etcd_member_args(
                    &format!("m{i}"),
                    &data,
                    &endpoint,
                    &peer_url,
                    &initial.join(","),
                );
                args.extend(["--initial-cluster-token".to_owned(), name.to_owned()]);
                Member {
                    name: format!("m{i}"),
                    endpoint,
                    port: *client,
                    args,
                    dir: dir.clone(),
                    child: None,
                    frozen: false,
                }
            })
            .collect();
        let mut cluster = EtcdCluster { members, binary };
        for i in 0..size {
            cluster.members[i].spawn(&cluster.binary);
        }
        cluster.wait_healthy().await;
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    pub fn endpoint(&self, member: usize) -> &str {
        &self.members[member].endpoint
    }

    /// The member that serves `port` (a client port), if any.
    pub fn member_on_port(&self, port: u16) -> Option<usize> {
        self.members.iter().position(|m| m.port == port)
    }

    /// Waits until every running member answers and the cluster has a leader.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut healthy = true;
            for member in self.members.iter().filter(|m| m.is_up()) {
                healthy &= member_status(&member.endpoint).await.is_some_and(|s| s.1);
            }
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test's etcd cluster did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The raft leader's index, asked of the running members.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if !member.is_up() {
                    continue;
                }
                if let Some((true, _)) = member_status(&member.endpoint).await {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "the etcd cluster has no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running member reports the same revision (writes have stopped), and
    /// fails if they keep disagreeing: a member whose data diverged from the others'.
    pub async fn assert_members_agree(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut revisions = Vec::new();
            for member in self.members.iter().filter(|m| m.is_up()) {
                revisions.push((member.name.clone(), member_revision(&member.endpoint).await));
            }
            if revisions
                .windows(2)
                .all(|w| w[0].1 == w[1].1 && w[0].1.is_some())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd's members disagree on the revision: {revisions:?} (a member killed -9 \
                 under load comes back diverged on etcd 3.5.0–3.5.2, etcd-io/etcd#13766)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9` of one member.
    pub fn kill(&mut self, member: usize) {
        if self.members[member].frozen {
            self.signal(member, "-CONT");
            self.members[member].frozen = false;
        }
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes one member (SIGSTOP): its connections stay open, nothing answers on them.
    pub fn freeze(&mut self, member: usize) {
        self.signal(member, "-STOP");
        self.members[member].frozen = true;
    }

    /// Thaws a frozen member (SIGCONT) and waits until the cluster is healthy.
    pub async fn thaw(&mut self, member: usize) {
        self.signal(member, "-CONT");
        self.members[member].frozen = false;
        self.wait_healthy().await;
    }

    fn signal(&self, member: usize, signal: &str) {
        let pid = self.members[member].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts a killed member again and waits until it answers with the cluster's leader.
    pub async fn restart(&mut self, member: usize) {
        let binary = self.binary.clone();
        self.members[member].spawn(&binary);
        self.wait_healthy().await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// (whether the member leads, whether it knows a leader), or `None` if it does not answer.
async fn member_status(endpoint: &str) -> Option<(bool, bool)> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let client = Etcd::connect([endpoint], Some(options)).await.ok()?;
    let status = client.maintenance_client().status().await.ok()?;
    let me = status.header()?.member_id();
    Some((status.leader() == me, status.leader() != 0))
}

/// A member's own revision (a serializable read: its store, not the leader's).
async fn member_revision(endpoint: &str) -> Option<i64> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let client = Etcd::connect([endpoint], Some(options)).await.ok()?;
    let response = client
        .kv_client()
        .get(
            "/",
            Some(
                etcd_client::GetOptions::new()
                    .with_serializable()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .ok()?;
    Some(response.header()?.revision())
}

/// The remote TCP ports of `pid`'s established connections (from /proc: its socket inodes
/// looked up in the network namespace's tables), to find which etcd members an agent uses.
pub fn connected_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.display().to_string();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01: established), …, inode at 9.
            if fields.len() > 9 && fields[3] == "01" && inodes.contains(fields[9]) {
                if let Some(port) = fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}
