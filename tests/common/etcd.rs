//! What the tests read from etcd: keys and values, the state, and waits for the agent to reach
//! a phase or for etcd to converge with the database (`sync verify`).

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, KvClient};

use super::{Agent, World};

/// A read, retried for a while: the client balances over every member of a cluster, also
/// one a test has killed.
async fn read<T, F, Fut>(etcd: &etcd_client::Client, what: &str, mut request: F) -> T
where
    F: FnMut(KvClient) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match request(etcd.kv_client()).await {
            Ok(value) => return value,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    /// etcd's keys and values under the data prefix.
    pub async fn etcd_data(&self) -> Vec<(String, String)> {
        let prefix = self.prefix();
        let response = read(&self.etcd, "reading the data", |mut kv| {
            let prefix = prefix.clone();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await;
        response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    pub async fn etcd_value(&self, key_suffix: &str) -> Option<String> {
        let key = format!("{}/{key_suffix}", self.prefix());
        let response = read(&self.etcd, &key, |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await;
        response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    /// The value's bytes as they are.
    pub async fn etcd_raw(&self, key_suffix: &str) -> Option<Vec<u8>> {
        let key = format!("{}/{key_suffix}", self.prefix());
        let response = read(&self.etcd, &key, |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await;
        response.kvs().first().map(|kv| kv.value().to_vec())
    }

    pub async fn etcd_key_count(&self, prefix: &str) -> i64 {
        let response = read(&self.etcd, prefix, |mut kv| async move {
            kv.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        })
        .await;
        response.count()
    }

    /// Waits until `<prefix>/<key_suffix>` holds `want` (`None`: absent).
    pub async fn wait_for_value(&self, key_suffix: &str, want: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.etcd_value(key_suffix).await;
            if got.as_deref() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{key_suffix}: waited for {want:?}, etcd has {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored state, as JSON.
    pub async fn state(&self) -> Option<serde_json::Value> {
        let key = format!("{}/state", self.state_prefix());
        let response = read(&self.etcd, &key, |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await;
        response
            .kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).unwrap())
    }

    /// Waits until the stored phase is `sync`.
    pub async fn wait_for_sync_phase(&self, agent: &mut Agent, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(state) = self.state().await {
                if state["phase"] == "sync" {
                    return;
                }
            }
            if let Some(status) = agent.exited() {
                panic!(
                    "the agent exited ({status}) before reaching sync:\n{}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no sync phase after {timeout:?}:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the dump has written `keys` keys (to stop the agent in the middle of it).
    pub async fn wait_for_keys(&self, agent: &mut Agent, keys: i64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.etcd_key_count(&self.prefix()).await < keys {
            assert!(
                Instant::now() < deadline,
                "the dump wrote nothing:\n{}",
                agent.log()
            );
            assert!(
                agent.exited().is_none(),
                "the agent exited:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `sync verify` finds etcd equal to the database.
    pub async fn wait_converged(&self, agent: Option<&Agent>, timeout: Duration) {
        let config = self.config();
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.run_command(&config, &["verify"]);
            if output.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd did not converge within {timeout:?}:\n{}{}\nagent log:\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr),
                    agent.map(Agent::log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
