//! `make soak`: a nemesis, after Jepsen's bank test. For `SOAK_SECONDS` (600 by default) a
//! transfer workload runs on PostgreSQL and on MariaDB, each synced by its own agent into one
//! three-member etcd 3.4 cluster, while a nemesis injects one or two faults at a time, picked at
//! random: an agent killed -9, the etcd leader killed -9, a member stopped, no quorum, a
//! database restarted, the agent's replication connection cut. Afterwards etcd equals each
//! database, and at every revision of etcd's history since the sync phase began the balances
//! of each bank sum to their total (replayed from the watch history). Not part of `make test`.
//!
//! `SOAK_SEED` replays a sequence of faults.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    restart_server, Agent, EtcdCluster, Rng, Source, World, CONVERGE_TIMEOUT, SYNC_TIMEOUT,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    AgentKill(usize),
    LeaderKill,
    MemberStop,
    NoQuorum,
    DatabaseRestart(usize),
    ReplicationCut(usize),
}

impl Fault {
    fn touches_etcd(self) -> bool {
        matches!(
            self,
            Fault::LeaderKill | Fault::MemberStop | Fault::NoQuorum
        )
    }

    fn database(self) -> Option<usize> {
        match self {
            Fault::AgentKill(db) | Fault::DatabaseRestart(db) | Fault::ReplicationCut(db) => {
                Some(db)
            }
            _ => None,
        }
    }

    fn random(rng: &mut Rng) -> Fault {
        let db = rng.below(2) as usize;
        match rng.below(6) {
            0 => Fault::AgentKill(db),
            1 => Fault::LeaderKill,
            2 => Fault::MemberStop,
            3 => Fault::NoQuorum,
            4 => Fault::DatabaseRestart(db),
            _ => Fault::ReplicationCut(db),
        }
    }
}

struct Bank {
    world: World,
    agent: Option<Agent>,
    server: &'static str,
    from: i64,
}

impl Bank {
    async fn start(world: World, server: &'static str, endpoints: &[String]) -> Bank {
        let mut world = world;
        world.use_etcd_cluster(endpoints).await;
        world.create_bank().await;
        let mut agent = world.start_agent();
        world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
        let key = format!("{}/state", world.state_prefix());
        let response = world.etcd.kv_client().get(key, None).await.unwrap();
        let from = response.kvs()[0].mod_revision();
        Bank {
            world,
            agent: Some(agent),
            server,
            from,
        }
    }

    /// Cuts the agent's replication connection from the database's side.
    async fn cut_replication(&self) {
        match &self.world.source {
            Source::Postgres(_) => {
                self.world
                    .pg_admin(&format!(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = '{}' AND active_pid IS NOT NULL",
                        self.world.name
                    ))
                    .await;
            }
            Source::Mysql(_) => {
                let port = self.world.env.get("MYSQL_PORT");
                let ids = self
                    .world
                    .admin_query_on(
                        &port,
                        "SELECT CAST(GROUP_CONCAT(ID) AS CHAR) FROM information_schema.PROCESSLIST \
                         WHERE COMMAND LIKE 'Binlog Dump%'",
                    )
                    .await;
                for id in ids.split(',').filter(|id| !id.is_empty()) {
                    // Gone already is fine: the agent may be reconnecting.
                    let _ = self
                        .world
                        .new_source_connection()
                        .await
                        .execute(&format!("KILL {id}"))
                        .await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of SOAK_SECONDS (600 by default): make soak"]
async fn nemesis_soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("soak: {seconds} s, SOAK_SEED={seed}");
    let mut rng = Rng::new(seed);
    // etcd 3.4: 3.5.0 to 3.5.2 can corrupt a member killed -9 under load (see tests/cluster.rs).
    let mut cluster = EtcdCluster::start("soak", 3, "3.4").await;
    let endpoints = cluster.endpoints();
    let mut banks = vec![
        Bank::start(
            World::new_on_faults_server("soak").await,
            "pg-faults",
            &endpoints,
        )
        .await,
        Bank::start(
            World::new_mysql_on_faults_server("soak").await,
            "mariadb-faults",
            &endpoints,
        )
        .await,
    ];
    let mut transfers = Vec::new();
    for (i, bank) in banks.iter().enumerate() {
        transfers.push(bank.world.start_transfers(seed + i as u64, 100).await);
    }

    let mut injected: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rounds = 0;
    while Instant::now() < deadline {
        rounds += 1;
        // One or two faults, never two on etcd's members or on one database at once.
        let mut faults = vec![Fault::random(&mut rng)];
        if rng.below(3) == 0 {
            let second = Fault::random(&mut rng);
            let clash = (second.touches_etcd() && faults[0].touches_etcd())
                || (second.database().is_some() && second.database() == faults[0].database());
            if !clash {
                faults.push(second);
            }
        }
        let hold = Duration::from_millis(2_000 + rng.below(6_000));
        eprintln!("soak round {rounds}: {faults:?} for {hold:?}");
        let mut down = Vec::new();
        for &fault in &faults {
            *injected.entry(format!("{fault:?}")).or_default() += 1;
            match fault {
                Fault::AgentKill(db) => {
                    if let Some(agent) = banks[db].agent.take() {
                        agent.kill9();
                    }
                }
                Fault::LeaderKill => {
                    let leader = cluster.leader().await;
                    cluster.kill(leader);
                    down.push(leader);
                }
                Fault::MemberStop => {
                    let member = rng.below(3) as usize;
                    cluster.kill(member);
                    down.push(member);
                }
                Fault::NoQuorum => {
                    let spared = rng.below(3) as usize;
                    for member in (0..3).filter(|&m| m != spared) {
                        cluster.kill(member);
                        down.push(member);
                    }
                }
                Fault::DatabaseRestart(db) => {
                    let server = banks[db].server;
                    tokio::task::spawn_blocking(move || restart_server(server))
                        .await
                        .unwrap();
                }
                Fault::ReplicationCut(db) => banks[db].cut_replication().await,
            }
        }
        tokio::time::sleep(hold).await;
        for member in down {
            cluster.restart(member).await;
        }
        for bank in &mut banks {
            match &mut bank.agent {
                None => bank.agent = Some(bank.world.start_agent()),
                Some(agent) => {
                    if let Some(status) = agent.exited() {
                        panic!(
                            "soak round {rounds}: the agent for {} exited ({status}):\n{}",
                            bank.server,
                            agent.log()
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(3_000))).await;
    }

    let mut moved = Vec::new();
    for t in transfers {
        moved.push(t.stop().await);
    }
    let mut report = vec![format!(
        "soak: {seconds} s, seed {seed}, {rounds} rounds; faults injected: {injected:?}"
    )];
    for (bank, (committed, failed)) in banks.iter().zip(moved) {
        let agent = bank.agent.as_ref().unwrap();
        bank.world
            .wait_converged(Some(agent), CONVERGE_TIMEOUT)
            .await;
        let revisions = bank.world.check_bank_history(bank.from).await;
        let dumps = agent.log().matches("dump finished").count();
        report.push(format!(
            "{}: {committed} transfers committed ({failed} failed while the database was \
             away), {revisions} etcd revisions checked, {dumps} dump(s), etcd equals the \
             database",
            bank.server
        ));
        assert_eq!(dumps, 1, "{}: the agent dumped again", bank.server);
    }
    eprintln!("{}", report.join("\n"));
    for bank in banks {
        drop(bank.agent);
        bank.world.cleanup().await;
    }
}
