//! This agent's right to write: a lock (one agent) or an election (`ha`), each a key held
//! under a lease whose create revision every write compares.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{client_error, Leadership, SinkError, Store};

impl Store {
    pub(super) fn lock_key(&self) -> String {
        format!("{}lock", self.state_key.trim_end_matches("state"))
    }

    pub(super) fn election_name(&self) -> String {
        format!("{}election", self.state_key.trim_end_matches("state"))
    }

    pub(super) async fn grant_lease(&self, ttl: Duration) -> Result<i64, SinkError> {
        let response = self
            .retrying("granting a lease", |_| {
                let mut leases = self.client.lease_client();
                async move { leases.grant(ttl.as_secs().max(1) as i64, None).await }
            })
            .await?;
        Ok(response.id())
    }

    /// Takes `<state_prefix>/lock` for this agent. A holder that crashed on this host is
    /// replaced at once; any other holder's lease is given `ttl` to expire before refusing.
    pub async fn lock(&mut self, ttl: Duration) -> Result<(), SinkError> {
        let key = self.lock_key();
        let deadline = std::time::Instant::now() + ttl + Duration::from_secs(2);
        loop {
            // A lease per attempt: one granted before a wait would expire during it.
            let lease = self.grant_lease(ttl).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    self.agent.as_str(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            // A lost answer to an applied attempt makes the retry find our own name there,
            // which the branch below clears and takes again.
            let response = self
                .retrying("taking the lock", |_| {
                    let mut kv = self.kv();
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                self.leadership = Some(Leadership {
                    key,
                    revision,
                    lease,
                });
                return Ok(());
            }
            let holder = response
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.mod_revision(),
                        )
                    }),
                    _ => None,
                })
                .unwrap_or_default();
            let _ = self.client.lease_client().revoke(lease).await;
            // Our own earlier session (its release failed while etcd was away), or an agent
            // that crashed on this host: nobody is renewing that lease.
            if holder.0 == self.agent || self.holder_is_dead_here(&holder.0) {
                // Crashed on this machine (kill -9): its lease has not expired yet, but no
                // process can be renewing it.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        holder.1,
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                self.retrying("clearing a dead agent's lock", |_| {
                    let mut kv = self.kv();
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
                continue;
            }
            if std::time::Instant::now() > deadline {
                return Err(SinkError::Locked {
                    key,
                    holder: holder.0,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether `holder` (`host:pid`) names a process of this host that no longer exists.
    pub(super) fn holder_is_dead_here(&self, holder: &str) -> bool {
        let ours = self.agent.rsplit_once(':').map(|(host, _)| host);
        match holder.rsplit_once(':') {
            Some((host, pid)) if Some(host) == ours => pid
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()),
            _ => false,
        }
    }

    /// With `ha`: waits to be elected leader under `<state_prefix>/election`.
    pub async fn campaign(&mut self, ttl: Duration) -> Result<(), SinkError> {
        let name = self.election_name();
        let lease = self.grant_lease(ttl).await?;
        // The lease must live while we wait to be elected.
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(|e| client_error("keeping the lease alive", e))?;
        let mut election = self.client.election_client();
        let campaign = election.campaign(name.as_str(), self.agent.as_str(), lease);
        tokio::pin!(campaign);
        let mut tick = tokio::time::interval(ttl / 3);
        let response = loop {
            tokio::select! {
                response = &mut campaign => break response.map_err(|e| client_error("campaigning", e))?,
                _ = tick.tick() => {
                    keeper.keep_alive().await.map_err(|e| client_error("keeping the lease alive", e))?;
                    let _ = responses.message().await;
                }
            }
        };
        let leader = response
            .leader()
            .ok_or_else(|| SinkError::LostLeadership { key: name.clone() })?;
        self.leadership = Some(Leadership {
            key: String::from_utf8_lossy(leader.key()).into_owned(),
            revision: leader.rev(),
            lease,
        });
        Ok(())
    }

    /// Who holds the leadership or the lock, for `status`.
    pub async fn holder(&self) -> Result<Option<String>, SinkError> {
        let mut election = self.client.election_client();
        if let Ok(response) = election.leader(self.election_name()).await {
            if let Some(kv) = response.kv() {
                return Ok(Some(String::from_utf8_lossy(kv.value()).into_owned()));
            }
        }
        let response = self
            .kv()
            .get(self.lock_key(), None)
            .await
            .map_err(|e| client_error("reading the lock", e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Gives the leadership up (the lease and the key under it go), so a standby takes over
    /// at once. Best effort: an unreachable etcd lets the lease expire instead.
    pub async fn release(&mut self) {
        if let Some(leadership) = self.leadership.take() {
            let _ = self.client.lease_client().revoke(leadership.lease).await;
        }
    }

    /// Renews the leadership's lease until etcd says it expired; then the leadership is gone
    /// and `lost` and `leading` fire. (The compare on the key fences writes meanwhile.)
    /// Runs as a task of its own: the future owns what it needs.
    pub fn keep_leadership(
        &self,
        ttl: Duration,
        lost: CancellationToken,
        leading: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let client = self.client.clone();
        let leadership = self.leadership.clone();
        async move {
            let Some(leadership) = leadership else {
                lost.cancel();
                leading.cancel();
                return;
            };
            keep_lease(client, leadership, ttl, lost, leading).await;
        }
    }
}

/// Renews the lease until etcd says it is gone (expired or revoked); then the leadership is
/// gone and `lost` and `leading` fire. Not renewing for a while is not enough to give up:
/// etcd expires no lease while it has no leader, and extends every lease when a new leader is
/// elected, so after an outage (no quorum, a partition) the lease is usually still there; and
/// if it is not, every write's compare on the key has fenced this agent already.
async fn keep_lease(
    client: Client,
    leadership: Leadership,
    ttl: Duration,
    lost: CancellationToken,
    leading: CancellationToken,
) {
    let mut last_renewed = std::time::Instant::now();
    let mut warned = false;
    let mut tick = tokio::time::interval(ttl / 3);
    'reconnect: loop {
        if !warned && last_renewed.elapsed() > ttl {
            warn!(key = %leadership.key, "the lease has not been renewed for {ttl:?} (etcd unreachable or without quorum?); going on if etcd kept it");
            warned = true;
        }
        let Ok((mut keeper, mut responses)) =
            client.lease_client().keep_alive(leadership.lease).await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        loop {
            tick.tick().await;
            if keeper.keep_alive().await.is_err() {
                continue 'reconnect;
            }
            match responses.message().await {
                Ok(Some(response)) if response.ttl() > 0 => {
                    last_renewed = std::time::Instant::now();
                    warned = false;
                }
                // Expired (ttl 0): etcd already removed the key.
                Ok(Some(_)) => break 'reconnect,
                _ => continue 'reconnect,
            }
        }
    }
    warn!(key = %leadership.key, "etcd says the lease expired: giving up the leadership");
    lost.cancel();
    leading.cancel();
}
