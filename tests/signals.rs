//! Stopping when asked, whatever happened to the log's reader: a log pipe whose reader went
//! away must neither kill the agent nor make it deaf to SIGTERM and SIGINT, and a second SIGINT
//! exits at once.

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Agent, OwnEtcd, World, SYNC_TIMEOUT};

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');";

fn kill(signal: &str, target: &str) {
    let status = Command::new("kill")
        .args([signal, "--", target])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {target}");
}

/// Some lines of log after the reader is gone: a change, applied and logged at debug level.
async fn make_it_log(world: &World, agent: &mut Agent) {
    world.sql("INSERT INTO t VALUES (2, 'b')").await;
    world
        .wait_for_value("t/2", Some(r#"{"id":2,"v":"b"}"#))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agent.exited().is_none(),
        "the agent died with its log reader"
    );
}

fn assert_clean(status: ExitStatus) {
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_obeyed_after_the_log_fifo_reader_exits() {
    let world = World::new("sig_fifo").await;
    world.sql(SCHEMA).await;
    let fifo = world.dir.join("log.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut reader = Command::new("cat")
        .arg(&fifo)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let child = world
        .command(&world.config(), &["run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = Agent::from_child(child, world.dir.join("no.log"));
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    reader.kill().unwrap();
    reader.wait().unwrap();
    make_it_log(&world, &mut agent).await;
    assert_clean(agent.terminate(Duration::from_secs(15)));
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_pipe_neither_kills_nor_deafens_the_agent() {
    let world = World::new("sig_pipe").await;
    world.sql(SCHEMA).await;
    // As `sync run 2>&1 | head -c 100`.
    let mut head = Command::new("head")
        .args(["-c", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pipe: OwnedFd = head.stdin.take().unwrap().into();
    let child = world
        .command(&world.config(), &["run"])
        .stdout(pipe.try_clone().unwrap())
        .stderr(pipe)
        .spawn()
        .unwrap();
    let mut agent = Agent::from_child(child, world.dir.join("no.log"));
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    assert!(head.wait().unwrap().success());
    make_it_log(&world, &mut agent).await;
    assert_clean(agent.terminate(Duration::from_secs(15)));

    // A report command whose reader goes away ends with its own status, not a panic.
    let config = world.config();
    let mut gone = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let pipe: OwnedFd = gone.stdin.take().unwrap().into();
    gone.wait().unwrap();
    let status = world
        .command(&config, &["verify"])
        .stdout(pipe)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "verify: {status}");
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_tee_pipeline_stops_cleanly() {
    let world = World::new("sig_tee").await;
    world.sql(SCHEMA).await;
    // `sync run 2>&1 | tee run.log`, and Ctrl-C: SIGINT to the whole process group.
    let mut tee = Command::new("tee")
        .arg(world.dir.join("run.log"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = tee.id();
    let pipe: OwnedFd = tee.stdin.take().unwrap().into();
    let child = world
        .command(&world.config(), &["run"])
        .stdout(pipe.try_clone().unwrap())
        .stderr(pipe)
        .process_group(group as i32)
        .spawn()
        .unwrap();
    let mut agent = Agent::from_child(child, world.dir.join("run.log"));
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    kill("-INT", &format!("-{group}"));
    assert_clean(agent.wait_exit(Duration::from_secs(15)));
    tee.wait().unwrap();
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once() {
    let mut world = World::new("sig_twice").await;
    world.sql(SCHEMA).await;
    let etcd = OwnEtcd::start("sig_twice", &[]).await;
    world.use_etcd(&etcd.endpoint).await;
    let mut agent = world.start_agent();
    world.wait_for_sync_phase(&mut agent, SYNC_TIMEOUT).await;
    // etcd frozen with a change in flight: the clean stop cannot finish.
    kill("-STOP", &etcd.pid().to_string());
    world.sql("INSERT INTO t VALUES (2, 'b')").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = agent.pid().to_string();
    kill("-INT", &pid);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        agent.exited().is_none(),
        "the clean stop should wait for etcd"
    );
    kill("-INT", &pid);
    let status = agent.wait_exit(Duration::from_secs(5));
    kill("-CONT", &etcd.pid().to_string());
    assert_eq!(status.code(), Some(130), "{}", agent.log());
    assert!(
        agent.log().contains("second SIGINT: exiting now"),
        "{}",
        agent.log()
    );
    world.cleanup().await;
}
