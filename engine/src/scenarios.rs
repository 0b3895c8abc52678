//! The engine without servers: a scripted driver (a table in memory and a list of source
//! transactions) against the in-memory sink, which keeps etcd's txn semantics. Each test ends
//! in the convergence check the end-to-end tests make: the sink's prefix equals the source.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_sync_api::{
    CheckItem, Column, Driver, DriverError, DumpEvent, Position, Row, Selection, StreamEvent,
    TableId, TableSchema, Value,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{run, EngineError, Settings};
use crate::apply::PIPELINE_DEPTH;
use crate::metrics::Metrics;
use crate::shape::{OnRemove, Options, RowShape, TableOptions};
use crate::sink::memory::MemoryEtcd;
use crate::sink::SinkError;

const PREFIX: &str = "/p";
const STATE_PREFIX: &str = "/s";

fn users() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId {
            schema: None,
            name: "users".into(),
        },
        columns: ["id", "name"]
            .iter()
            .map(|c| Column {
                name: (*c).into(),
                type_name: "text".into(),
            })
            .collect(),
        key: vec![0],
    })
}

fn row(id: i64, name: &str) -> Row {
    vec![Value::Int(id), Value::Text(name.into())]
}

fn insert(id: i64, name: &str) -> etcd_sync_api::Change {
    etcd_sync_api::Change::Insert {
        table: users(),
        row: row(id, name),
    }
}

/// A source: rows as of the start, then transactions a test appends while the engine runs.
/// Positions are `{"n": k}`: after the first `k` transactions.
#[derive(Default)]
struct Script {
    initial: Mutex<BTreeMap<i64, String>>,
    txns: Mutex<Vec<Vec<etcd_sync_api::Change>>>,
    /// The next `stream` call says the position is gone (as a dropped slot would).
    lose_position: AtomicBool,
}

impl Script {
    fn with_rows(n: i64) -> Arc<Self> {
        let script = Script::default();
        script
            .initial
            .lock()
            .unwrap()
            .extend((1..=n).map(|i| (i, format!("u{i}"))));
        Arc::new(script)
    }

    fn push(&self, txn: Vec<etcd_sync_api::Change>) {
        self.txns.lock().unwrap().push(txn);
    }

    /// The table after the initial rows and the first `k` transactions.
    fn rows_after(&self, k: usize) -> BTreeMap<i64, String> {
        let mut rows = self.initial.lock().unwrap().clone();
        for txn in self.txns.lock().unwrap().iter().take(k) {
            for change in txn {
                match change {
                    etcd_sync_api::Change::Insert { row, .. }
                    | etcd_sync_api::Change::Update { row, .. } => {
                        if let (Value::Int(id), Value::Text(name)) = (&row[0], &row[1]) {
                            rows.insert(*id, name.clone());
                        }
                    }
                    etcd_sync_api::Change::Delete { old, .. } => {
                        if let Value::Int(id) = &old[0] {
                            rows.remove(id);
                        }
                    }
                    etcd_sync_api::Change::Truncate { .. } => rows.clear(),
                }
            }
        }
        rows
    }

    /// What etcd must hold once everything is applied, under the table's options.
    fn expected_with(&self, options: Option<&TableOptions>) -> BTreeMap<String, String> {
        let shape = RowShape::new(&users(), options, true).unwrap();
        let k = self.txns.lock().unwrap().len();
        self.rows_after(k)
            .into_iter()
            .filter_map(|(id, name)| {
                let r = row(id, &name);
                let value = shape.value(&r, None).unwrap()?;
                Some((
                    shape.key(PREFIX, &r).unwrap(),
                    String::from_utf8(value).unwrap(),
                ))
            })
            .collect()
    }
}

/// The driver side of a [`Script`].
#[derive(Clone)]
struct ScriptedDriver(Arc<Script>);

fn position(n: usize) -> Position {
    Position(serde_json::json!({ "n": n }))
}

impl ScriptedDriver {
    /// Every row as of now, and the position after the transactions they include.
    async fn snapshot(
        &self,
        tables: &[Arc<TableSchema>],
        out: mpsc::Sender<DumpEvent>,
    ) -> Result<Position, DriverError> {
        let k = self.0.txns.lock().unwrap().len();
        let table = Arc::clone(&tables[0]);
        let rows: Vec<Row> = self
            .0
            .rows_after(k)
            .into_iter()
            .map(|(id, name)| row(id, &name))
            .collect();
        let send = |e| out.send(e);
        send(DumpEvent::TableStarted {
            table: Arc::clone(&table),
            estimated_rows: Some(rows.len() as u64),
        })
        .await
        .map_err(|_| DriverError::Stopped)?;
        let n = rows.len() as u64;
        for chunk in rows.chunks(5) {
            send(DumpEvent::Rows {
                table: Arc::clone(&table),
                rows: chunk.to_vec(),
            })
            .await
            .map_err(|_| DriverError::Stopped)?;
        }
        send(DumpEvent::TableDone { table, rows: n })
            .await
            .map_err(|_| DriverError::Stopped)?;
        Ok(position(k))
    }
}

impl Driver for ScriptedDriver {
    type Table = Arc<TableSchema>;

    async fn check(&self) -> Vec<CheckItem> {
        Vec::new()
    }

    async fn select_tables(&self) -> Result<Selection, DriverError> {
        Ok(Selection {
            tables: vec![users()],
            skipped: Vec::new(),
        })
    }

    async fn dump(
        &self,
        tables: &[Arc<TableSchema>],
        out: mpsc::Sender<DumpEvent>,
        _cancel: CancellationToken,
    ) -> Result<Position, DriverError> {
        self.snapshot(tables, out).await
    }

    async fn stream(
        &self,
        from: Position,
        _tables: &[Arc<TableSchema>],
        out: mpsc::Sender<StreamEvent>,
        _acks: watch::Receiver<Position>,
        cancel: CancellationToken,
    ) -> Result<(), DriverError> {
        if self.0.lose_position.swap(false, Ordering::SeqCst) {
            return Err(DriverError::PositionLost("the script lost it".into()));
        }
        let mut next = from.0["n"].as_u64().unwrap_or(0) as usize;
        loop {
            let txn = self.0.txns.lock().unwrap().get(next).cloned();
            match txn {
                Some(changes) => {
                    next += 1;
                    for piece in changes.chunks(3) {
                        out.send(StreamEvent::Changes(piece.to_vec()))
                            .await
                            .map_err(|_| DriverError::Stopped)?;
                    }
                    out.send(StreamEvent::Commit {
                        position: position(next),
                        committed_at: None,
                    })
                    .await
                    .map_err(|_| DriverError::Stopped)?;
                }
                None => {
                    if self.0.lose_position.load(Ordering::SeqCst) {
                        return Err(DriverError::PositionLost("the script lost it".into()));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    }
                }
            }
        }
    }

    async fn prepare_start(
        &self,
        _position: &Position,
        _tables: &[Arc<TableSchema>],
    ) -> Result<(), DriverError> {
        Ok(())
    }

    async fn lag_bytes(&self, _position: &Position) -> Result<Option<u64>, DriverError> {
        Ok(None)
    }

    fn position_number(&self, position: &Position) -> Option<u64> {
        position.0["n"].as_u64()
    }

    async fn read_snapshot(
        &self,
        tables: &[Arc<TableSchema>],
        out: mpsc::Sender<DumpEvent>,
    ) -> Result<(), DriverError> {
        self.snapshot(tables, out).await.map(|_| ())
    }
}

pub(crate) fn settings(max_txn_ops: usize) -> Settings {
    Settings {
        prefix: PREFIX.into(),
        state_prefix: STATE_PREFIX.into(),
        max_txn_ops,
        max_txn_bytes: 1 << 20,
        dump_txns_in_flight: 4,
        skip_oversized: false,
        metrics: Arc::new(Metrics::default()),
        metrics_served: false,
        start: None,
        ha: false,
        lease_ttl: Duration::from_secs(10),
        options: Arc::default(),
    }
}

/// An engine running on `etcd` against `script`, until the test cancels it.
struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

fn start(script: &Arc<Script>, etcd: &MemoryEtcd, max_txn_ops: usize) -> Running {
    start_with(script, etcd, settings(max_txn_ops))
}

fn start_with(script: &Arc<Script>, etcd: &MemoryEtcd, settings: Settings) -> Running {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(
        ScriptedDriver(Arc::clone(script)),
        etcd.connector(STATE_PREFIX, "agent-1"),
        settings,
        cancel.clone(),
    ));
    Running { cancel, task }
}

impl Running {
    async fn stop(self) -> Result<(), EngineError> {
        self.cancel.cancel();
        self.task.await.expect("the engine task panicked")
    }
}

/// The stored state's position, `n` of `{"n": n}`, once in the sync phase.
fn synced_to(etcd: &MemoryEtcd) -> Option<u64> {
    let state = etcd.data(STATE_PREFIX).remove("/s/state")?;
    let state: serde_json::Value = serde_json::from_str(&state).ok()?;
    (state["phase"] == "sync").then(|| state["position"]["n"].as_u64())?
}

/// Waits until the state says everything in the script is applied, then checks convergence.
async fn converges(script: &Script, etcd: &MemoryEtcd) {
    converges_with(script, etcd, None).await
}

/// [`converges`] to the table under `options`, once no table is being snapshotted.
async fn converges_with(script: &Script, etcd: &MemoryEtcd, options: Option<&TableOptions>) {
    let want = script.txns.lock().unwrap().len() as u64;
    for _ in 0..2000 {
        if synced_to(etcd) == Some(want) && snapshotting(etcd).is_empty() {
            assert_eq!(
                etcd.data(&format!("{PREFIX}/")),
                script.expected_with(options)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "no convergence: state at {:?}, {want} transactions; etcd {:#?}",
        synced_to(etcd),
        etcd.data("")
    );
}

/// The tables the state lists as snapshotting.
fn snapshotting(etcd: &MemoryEtcd) -> Vec<String> {
    let state = etcd
        .data(STATE_PREFIX)
        .remove("/s/state")
        .unwrap_or_default();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
    serde_json::from_value(state["snapshotting"].clone()).unwrap_or_default()
}

/// How many times the state said a dump began.
fn dumps_begun(etcd: &MemoryEtcd) -> usize {
    etcd.history()
        .iter()
        .flat_map(|(_, writes)| writes)
        .filter(|(k, v)| {
            k == "/s/state"
                && v.as_deref()
                    .is_some_and(|v| String::from_utf8_lossy(v).contains(r#""phase":"dump""#))
        })
        .count()
}

/// A script of `rows` rows and an engine that has dumped it (txns of at most `max_txn_ops`).
async fn dumped(rows: i64, max_txn_ops: usize) -> (Arc<Script>, MemoryEtcd, Running) {
    let script = Script::with_rows(rows);
    let etcd = MemoryEtcd::new(max_txn_ops);
    let engine = start(&script, &etcd, max_txn_ops);
    converges(&script, &etcd).await;
    (script, etcd, engine)
}

#[tokio::test]
async fn dump_then_stream_converges() {
    let (script, etcd, engine) = dumped(23, 128).await;
    script.push(vec![insert(100, "new"), insert(2, "renamed")]);
    script.push(vec![etcd_sync_api::Change::Delete {
        table: users(),
        old: row(3, ""),
    }]);
    converges(&script, &etcd).await;
    engine.stop().await.unwrap();
}

/// Transactions that arrive together are written together (group commit), and a watcher
/// never sees a source transaction split across revisions.
#[tokio::test]
async fn group_commit_keeps_transactions_whole() {
    let (script, etcd, engine) = dumped(3, 128).await;
    let before = etcd.history().len();
    for i in 0..200 {
        script.push(vec![insert(1000 + i, "a"), insert(2000 + i, "b")]);
    }
    converges(&script, &etcd).await;
    let written = &etcd.history()[before..];
    assert!(
        written.len() < 200,
        "{} txns for 200 transactions",
        written.len()
    );
    for (_, writes) in written {
        let ids: Vec<&String> = writes.iter().map(|(k, _)| k).collect();
        for i in 0..200 {
            let a = ids.contains(&&format!("{PREFIX}/users/{}", 1000 + i));
            let b = ids.contains(&&format!("{PREFIX}/users/{}", 2000 + i));
            assert_eq!(a, b, "transaction {i} split across revisions");
        }
    }
    engine.stop().await.unwrap();
}

/// A backlog (transactions arriving faster than etcd takes them) goes out in full txns,
/// several in flight at a time (each chained to the one before), in source order.
#[tokio::test]
async fn a_backlog_is_written_in_full_txns_in_source_order() {
    let (script, etcd, engine) = dumped(3, 128).await;
    etcd.set_commit_latency(Duration::from_millis(3));
    let before = etcd.history().len();
    let n = 2000;
    for i in 0..n {
        script.push(vec![insert(10_000 + i, "x")]);
    }
    converges(&script, &etcd).await;
    let written = &etcd.history()[before..];
    // 127 transactions per txn (one operation is the state's); a few partial ones where the
    // stream paused for longer than the linger.
    let full = (n as usize).div_ceil(127);
    assert!(
        written.len() <= full + 3,
        "{} txns for {n} transactions ({full} full ones would do)",
        written.len()
    );
    assert_eq!(etcd.max_commits_in_flight(), PIPELINE_DEPTH);
    let positions = positions_written(written);
    assert_eq!(
        positions.len(),
        written.len(),
        "every txn carries the state"
    );
    assert_in_order(&positions);
    engine.stop().await.unwrap();
}

/// The positions the txns of `written` stored with the state, in revision order.
fn positions_written(written: &[crate::sink::memory::Revision]) -> Vec<u64> {
    written
        .iter()
        .filter_map(|(_, writes)| {
            let (_, state) = writes.iter().find(|(k, _)| k == "/s/state")?;
            let state: serde_json::Value = serde_json::from_slice(state.as_deref()?).ok()?;
            state["position"]["n"].as_u64()
        })
        .collect()
}

fn assert_in_order(positions: &[u64]) {
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions out of order: {positions:?}"
    );
}

/// A chained commit that reaches etcd before the one before it has landed (every second one
/// here) waits for it: the txns land in source order all the same.
#[tokio::test]
async fn a_chained_commit_that_arrives_first_lands_second() {
    let (script, etcd, engine) = dumped(3, 128).await;
    etcd.set_commit_latencies(&[Duration::from_millis(6), Duration::from_millis(1)]);
    let before = etcd.history().len();
    for i in 0..2000 {
        script.push(vec![insert(10_000 + i, "x")]);
    }
    converges(&script, &etcd).await;
    assert_eq!(etcd.max_commits_in_flight(), PIPELINE_DEPTH);
    assert_in_order(&positions_written(&etcd.history()[before..]));
    engine.stop().await.unwrap();
}

/// A group commit that fails (applied or not: the client cannot tell) while the next is in
/// flight behind it: the session ends, the next replays from the stored position, and etcd
/// converges with every txn in source order.
#[tokio::test]
async fn a_failed_commit_with_another_chained_behind_it_is_replayed() {
    for applied in [false, true] {
        let (script, etcd, engine) = dumped(3, 128).await;
        etcd.set_commit_latency(Duration::from_millis(3));
        let before = etcd.history().len();
        for i in 0..4000 {
            script.push(vec![insert(10_000 + i, "x")]);
        }
        // Into the backlog, with two in flight.
        while etcd.history().len() < before + 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        etcd.fail_next_txn(
            SinkError::NoSpace {
                context: "injected".into(),
            },
            applied,
        );
        converges(&script, &etcd).await;
        assert_eq!(etcd.max_commits_in_flight(), PIPELINE_DEPTH);
        assert_in_order(&positions_written(&etcd.history()[before..]));
        engine.stop().await.unwrap();
    }
}

/// A transaction larger than one txn is written in chunks, the state only with the last; a
/// chunk whose outcome is unknown (applied, but the client saw an error) is replayed from the
/// stored position and the result converges.
#[tokio::test]
async fn a_large_transaction_is_chunked_and_replayed_after_an_unknown_outcome() {
    let (script, etcd, engine) = dumped(3, 8).await;
    etcd.fail_next_txn(
        SinkError::NoSpace {
            context: "injected".into(),
        },
        true,
    );
    script.push((0..30).map(|i| insert(500 + i, "big")).collect());
    converges(&script, &etcd).await;
    let history = etcd.history();
    let chunks: Vec<bool> = history
        .iter()
        .filter(|(_, w)| w.iter().any(|(k, _)| k.starts_with("/p/users/5")))
        .map(|(_, w)| w.iter().any(|(k, _)| k == "/s/state"))
        .collect();
    // 30 rows in txns of at most 8 operations: four chunks, the first one twice (replayed).
    assert!(chunks.len() >= 5, "{chunks:?}");
    assert!(
        chunks.iter().filter(|with_state| !**with_state).count() >= 3,
        "{chunks:?}"
    );
    assert_eq!(chunks.last(), Some(&true), "{chunks:?}");
    engine.stop().await.unwrap();
}

/// Another agent writing the state fences this one: its next txn fails, nothing of it
/// lands, and the engine stops with the reason.
#[tokio::test]
async fn a_second_writer_fences_the_agent() {
    let (script, etcd, engine) = dumped(3, 128).await;
    let theirs = etcd.data(STATE_PREFIX)["/s/state"].replace("agent-1", "agent-2");
    etcd.put("/s/state", &theirs);
    script.push(vec![insert(77, "late")]);
    let result = tokio::time::timeout(Duration::from_secs(10), engine.task)
        .await
        .expect("the engine kept running after being fenced")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "fenced", "{err}");
    assert!(!etcd.data(PREFIX).contains_key("/p/users/77"));
}

/// A lost position leads to a new dump, which deletes the keys of rows that went away
/// without a change event.
#[tokio::test]
async fn a_lost_position_is_dumped_again_and_stale_keys_go() {
    let (script, etcd, engine) = dumped(10, 128).await;
    script.initial.lock().unwrap().remove(&4);
    script.lose_position.store(true, Ordering::SeqCst);
    script.push(vec![insert(11, "after")]);
    converges(&script, &etcd).await;
    assert!(!etcd.data(PREFIX).contains_key("/p/users/4"));
    engine.stop().await.unwrap();
}

/// A re-dump over a table large enough to be listed in parts at once: stale keys spread
/// over every part, and a run of them as long as a part, all go.
#[tokio::test]
async fn a_re_dump_listed_in_parts_deletes_every_stale_key() {
    let (script, etcd, engine) = dumped(1000, 128).await;
    script
        .initial
        .lock()
        .unwrap()
        .retain(|id, _| id % 10 != 0 && !(200..450).contains(id));
    script.lose_position.store(true, Ordering::SeqCst);
    script.push(vec![insert(5000, "after")]);
    converges(&script, &etcd).await;
    assert_eq!(etcd.data(PREFIX).len(), 1000 - 100 - 225 + 1);
    engine.stop().await.unwrap();
}

/// Cancelling (SIGTERM) stops the engine cleanly with what was applied committed.
#[tokio::test]
async fn shutdown_is_clean() {
    let (script, etcd, engine) = dumped(5, 128).await;
    script.push(vec![insert(6, "x")]);
    converges(&script, &etcd).await;
    engine.stop().await.unwrap();
    assert_eq!(synced_to(&etcd), Some(1));
    assert!(!etcd.data(STATE_PREFIX).contains_key("/s/lock"));
}

/// A state written before the key/value format was recorded (or in an older one) leads to a
/// new dump, which deletes the keys written in the old form.
#[tokio::test]
async fn an_older_key_format_is_dumped_again() {
    let script = Script::with_rows(4);
    let etcd = MemoryEtcd::default();
    etcd.put(
        "/s/state",
        r#"{"phase":"sync","position":{"n":0},"updated_at":"2025-01-01T00:00:00Z","agent":"old:1","tables":["users"]}"#,
    );
    etcd.put("/p/users/\"AP8=\"", r#"{"id":"AP8=","name":"old form"}"#);
    let engine = start(&script, &etcd, 128);
    let current = format!("\"format\":{}", crate::sink::FORMAT);
    for _ in 0..2000 {
        let state = etcd.data(STATE_PREFIX)["/s/state"].clone();
        if state.contains(&current) && state.contains("\"phase\":\"sync\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    converges(&script, &etcd).await;
    assert!(!etcd.data(PREFIX).contains_key("/p/users/\"AP8=\""));
    engine.stop().await.unwrap();
}

/// New options for a table: its keys are rewritten by a snapshot of that table alone, taken
/// while the stream runs; rows updated out of the filter lose their key, rows updated into it
/// gain one, and no full dump happens.
#[tokio::test]
async fn changed_options_rewrite_the_table_while_the_stream_goes_on() {
    let (script, etcd, engine) = dumped(23, 8).await;
    engine.stop().await.unwrap();
    script.push(vec![insert(5, "five"), insert(30, "thirty")]);
    let options: TableOptions = serde_json::from_str(
        r#"{"where": "id > 10 AND name <> 'hidden'", "columns": {"exclude": ["name"]}}"#,
    )
    .unwrap();
    let mut with_options = settings(8);
    with_options.options = Arc::new(Options {
        tables: [("users".to_string(), options.clone())].into(),
        on_remove: OnRemove::Delete,
    });
    let engine = start_with(&script, &etcd, with_options);
    for i in 0..60 {
        // Ids 0..40 move in and out of the filter while the table's snapshot runs.
        let name = if i % 3 == 0 { "hidden" } else { "shown" };
        script.push(vec![insert(i % 40, name)]);
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    script.push(vec![etcd_sync_api::Change::Delete {
        table: users(),
        old: row(20, ""),
    }]);
    converges_with(&script, &etcd, Some(&options)).await;
    assert_eq!(dumps_begun(&etcd), 1, "a full dump ran again");
    engine.stop().await.unwrap();
}

/// A join stopped half-way leaves the table listed as snapshotting; the next start takes it
/// again, alone, before the stream resumes, and etcd converges without a full dump.
#[tokio::test]
async fn an_interrupted_join_is_taken_again_before_the_stream() {
    let (script, etcd, engine) = dumped(3_000, 8).await;
    engine.stop().await.unwrap();
    let options: TableOptions = serde_json::from_str(r#"{"where": "id > 1500"}"#).unwrap();
    let with_options = || {
        let mut s = settings(8);
        s.options = Arc::new(Options {
            tables: [("users".to_string(), options.clone())].into(),
            on_remove: OnRemove::Delete,
        });
        s
    };
    let engine = start_with(&script, &etcd, with_options());
    for _ in 0..2000 {
        if !snapshotting(&etcd).is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    engine.stop().await.unwrap();
    script.push(vec![insert(2_999, "changed while stopped")]);
    let engine = start_with(&script, &etcd, with_options());
    converges_with(&script, &etcd, Some(&options)).await;
    assert_eq!(dumps_begun(&etcd), 1, "a full dump ran again");
    engine.stop().await.unwrap();
}
