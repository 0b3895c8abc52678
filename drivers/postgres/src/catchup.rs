//! Catching up on a large backlog through logical decoding's SQL interface instead of the
//! walsender.
//!
//! The walsender flushes every pgoutput message on its own (a `send`, and over TLS a record of
//! its own) and polls the client's socket for every WAL record it reads: on a backlog of small
//! transactions that is ~10 µs of the server's CPU per transaction. The SQL function
//! `pg_logical_slot_get_binary_changes` runs the same decoder and output plugin in an ordinary
//! backend and sends the messages as a result set, in full buffers: a third of that CPU.
//!
//! The slot is never consumed ahead of etcd: the changes are read from a temporary copy of it
//! (the server drops it when this session ends, however it ends), and the slot itself moves
//! with `pg_replication_slot_advance` to what the engine acknowledged, as the walsender's
//! status updates would move it. Once a read returns less than it asked for, the backlog is
//! gone and streaming starts where the reads ended.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_sync_api::{DriverError, Position};
use futures_util::{pin_mut, TryStreamExt};
use tokio::sync::watch;
use tokio_postgres::{Client, RowStream, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::pg_error;
use crate::lsn::Lsn;
use crate::stream::Decoder;

/// A backlog at least this large (bytes of WAL after the resume point) is read through SQL.
pub const MIN_BACKLOG_BYTES: i64 = 16 << 20;
/// Each read is sized to hold about this many bytes of messages: the server keeps a read's
/// whole result (past `work_mem`, in a temporary file) before sending its first row.
const READ_BYTES: u64 = 32 << 20;
/// Messages per read, at most and at first. Every read decodes from the copy's restart point,
/// so fewer, larger reads read less WAL twice.
const MAX_MESSAGES_PER_READ: i32 = 100_000;
const FIRST_MESSAGES_PER_READ: i32 = 10_000;
const MIN_MESSAGES_PER_READ: i32 = 1_000;
/// How often the slot itself moves to what the engine acknowledged.
const ADVANCE_INTERVAL: Duration = Duration::from_secs(1);
const READING: &str = "reading the backlog through SQL";

/// How a catch-up ended.
pub enum Outcome {
    /// The backlog went to the engine (or stays for the walsender): stream from the decoder's
    /// resume point.
    Stream,
    /// Cancelled: the engine finished, the slot moved to its last acknowledgement.
    Stopped,
}

/// The slot and publication a catch-up reads.
pub struct Target<'a> {
    pub slot: &'a str,
    pub publication: &'a str,
}

/// Catches up through SQL when the slot's backlog is large and the server offers what this
/// needs (PostgreSQL 12 or later, a free replication slot for the copy); otherwise leaves the
/// backlog to the walsender. `client` is a connection of its own: it has a read in flight
/// while the decoder's connection moves the slot and loads types.
pub async fn run(
    client: &Client,
    target: Target<'_>,
    decoder: &mut Decoder,
    acks: &mut watch::Receiver<Position>,
    cancel: &CancellationToken,
) -> Result<Outcome, DriverError> {
    let (statement, copy) = match prepare(client, &target, decoder.resume_lsn()).await {
        Ok(Some(prepared)) => prepared,
        Ok(None) => return Ok(Outcome::Stream),
        Err(reason) => {
            warn!("the backlog is left to the walsender: {reason}");
            return Ok(Outcome::Stream);
        }
    };
    let started = Instant::now();
    let publication = crate::conn::quote_ident(target.publication);
    let mut reads = Reads {
        client,
        statement: &statement,
        copy: &copy,
        publication: &publication,
        limit: FIRST_MESSAGES_PER_READ,
    };
    let mut slot = SlotAdvance {
        slot: target.slot,
        done: Lsn(0),
        at: Instant::now(),
    };
    let mut total = Handed::default();
    let mut next = Some(reads.start());
    while let Some(read) = next.take() {
        let (rows, limit) = match wait(read.0, cancel).await? {
            Some(rows) => (rows, read.1),
            None => return stop(decoder, acks, &mut slot).await,
        };
        // The server decoded this read before answering (the function returns its whole
        // result); asked for now, the next one is decoded while this one is handed over.
        let mut pending = reads.start();
        send_now(&mut pending.0).await?;
        let Some(handed) = hand_over(rows, decoder, acks, cancel).await? else {
            return stop(decoder, acks, &mut slot).await;
        };
        total.add(&handed);
        reads.size_after(&handed);
        slot.maybe(decoder).await?;
        if handed.messages < limit as u64 {
            // The backlog as of this read is handed over. The read asked for already holds
            // what came after it: handed over too, then streaming goes on from there.
            let rows = match wait(pending.0, cancel).await? {
                Some(rows) => rows,
                None => return stop(decoder, acks, &mut slot).await,
            };
            let Some(handed) = hand_over(rows, decoder, acks, cancel).await? else {
                return stop(decoder, acks, &mut slot).await;
            };
            total.add(&handed);
        } else {
            next = Some(pending);
        }
    }
    slot.now(decoder).await?;
    if let Err(e) = client
        .execute("SELECT pg_drop_replication_slot($1)", &[&copy])
        .await
    {
        // The server drops it when the session ends anyway.
        warn!(copy, "dropping the catch-up copy of the slot: {e}");
    }
    info!(
        messages = total.messages,
        mb = total.bytes >> 20,
        seconds = started.elapsed().as_secs_f64(),
        resume = %decoder.resume_lsn(),
        "caught up through SQL; streaming from here"
    );
    Ok(Outcome::Stream)
}

/// Measures the backlog and, when it is worth it, moves the slot to etcd's position, copies
/// it and prepares the read. `Ok(None)`: the backlog is small; `Err`: why SQL cannot be used.
async fn prepare(
    client: &Client,
    target: &Target<'_>,
    resume: Lsn,
) -> Result<Option<(Statement, String)>, String> {
    let failed = |what: &str, e: tokio_postgres::Error| {
        let reason = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        format!("{what}: {reason}")
    };
    let resume_text = resume.to_string();
    let backlog: Option<i64> = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(\
             pg_current_wal_lsn(), greatest(confirmed_flush_lsn, $2::text::pg_lsn))::bigint END \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&target.slot, &resume_text],
        )
        .await
        .map_err(|e| failed("measuring the backlog", e))?
        .get(0);
    let Some(backlog) = backlog.filter(|b| *b >= MIN_BACKLOG_BYTES) else {
        debug!(?backlog, "a small backlog: the walsender reads it");
        return Ok(None);
    };
    // A read may take longer than a statement_timeout meant for queries.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|e| failed("lifting statement_timeout", e))?;
    // The slot first moves to what etcd holds, so that the copy starts there too.
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, greatest(confirmed_flush_lsn, $2::text::pg_lsn)) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&target.slot, &resume_text],
        )
        .await
        .map_err(|e| failed("moving the slot to etcd's position", e))?;
    // Unique on the server while this session lives, and within NAMEDATALEN.
    let stem: String = target.slot.chars().take(40).collect();
    let copy: String = client
        .query_one(
            "SELECT slot_name::text FROM pg_copy_logical_replication_slot(\
             $1::text, $2::text || '_catchup_' || pg_backend_pid(), true)",
            &[&target.slot, &stem],
        )
        .await
        .map_err(|e| failed("copying the slot", e))?
        .get(0);
    let statement = client
        .prepare(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1::text::name, NULL, $3::int4, \
             'proto_version', '1', 'publication_names', $2::text)",
        )
        .await
        .map_err(|e| failed("preparing the read", e))?;
    info!(
        backlog_mb = backlog >> 20,
        copy, "reading the backlog through SQL"
    );
    Ok(Some((statement, copy)))
}

type ReadFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<RowStream, tokio_postgres::Error>> + Send + 'a>>;

/// The reads from the copy, each sized after the messages of the one before.
struct Reads<'a> {
    client: &'a Client,
    statement: &'a Statement,
    copy: &'a str,
    publication: &'a str,
    limit: i32,
}

impl<'a> Reads<'a> {
    /// Asks for the next read (sent when first polled) and says how many messages it asked for.
    fn start(&self) -> (ReadFuture<'a>, i32) {
        let Reads {
            client,
            statement,
            copy,
            publication,
            limit,
        } = *self;
        let read = async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&copy, &publication, &limit];
            client.query_raw(statement, params).await
        };
        (Box::pin(read), limit)
    }

    fn size_after(&mut self, handed: &Handed) {
        if let Some(per_message) = handed.bytes.checked_div(handed.messages) {
            let fits = (READ_BYTES / per_message.max(1)).min(MAX_MESSAGES_PER_READ as u64) as i32;
            self.limit = fits.max(MIN_MESSAGES_PER_READ);
        }
    }
}

/// Sends a read's request now, without waiting for its answer (which comes after the answer
/// being read).
async fn send_now(read: &mut ReadFuture<'_>) -> Result<(), DriverError> {
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
    match polled {
        std::task::Poll::Pending => Ok(()),
        std::task::Poll::Ready(Err(e)) => Err(pg_error(READING, e)),
        std::task::Poll::Ready(Ok(_)) => Err(DriverError::Protocol(
            "a catch-up read was answered before the one sent before it".into(),
        )),
    }
}

async fn wait(
    read: ReadFuture<'_>,
    cancel: &CancellationToken,
) -> Result<Option<RowStream>, DriverError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(None),
        rows = read => rows.map(Some).map_err(|e| pg_error(READING, e)),
    }
}

#[derive(Default)]
struct Handed {
    messages: u64,
    bytes: u64,
}

impl Handed {
    fn add(&mut self, other: &Handed) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// Hands every message of one read to the decoder; `None` if cancelled.
async fn hand_over(
    rows: RowStream,
    decoder: &mut Decoder,
    acks: &mut watch::Receiver<Position>,
    cancel: &CancellationToken,
) -> Result<Option<Handed>, DriverError> {
    pin_mut!(rows);
    let mut handed = Handed::default();
    loop {
        let row = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(None),
            row = rows.try_next() => row.map_err(|e| pg_error(READING, e))?,
        };
        let Some(row) = row else {
            return Ok(Some(handed));
        };
        let data: &[u8] = row.try_get(0).map_err(|e| pg_error(READING, e))?;
        handed.messages += 1;
        handed.bytes += data.len() as u64;
        decoder.handle_logical(Bytes::copy_from_slice(data)).await?;
        if acks.has_changed().unwrap_or(false) {
            decoder.take_ack(acks)?;
        }
    }
}

/// Moves the slot to what the engine acknowledged, as the walsender's status updates would.
/// On the decoder's connection: the catch-up's own has a read in flight whose rows are not
/// taken yet, and a query behind it would wait for them.
struct SlotAdvance<'a> {
    slot: &'a str,
    done: Lsn,
    at: Instant,
}

impl SlotAdvance<'_> {
    async fn maybe(&mut self, decoder: &mut Decoder) -> Result<(), DriverError> {
        if self.at.elapsed() < ADVANCE_INTERVAL {
            return Ok(());
        }
        self.now(decoder).await
    }

    async fn now(&mut self, decoder: &mut Decoder) -> Result<(), DriverError> {
        self.at = Instant::now();
        let Some(lsn) = decoder.take_confirmable() else {
            return Ok(());
        };
        if lsn <= self.done {
            return Ok(());
        }
        decoder
            .client()
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&self.slot, &lsn.to_string()],
            )
            .await
            .map_err(|e| pg_error("advancing the slot", e))?;
        self.done = lsn;
        debug!(%lsn, "slot advanced");
        Ok(())
    }
}

/// Cancelled: lets the engine finish, and moves the slot to its last acknowledgement. The
/// rest of the reads went with their dropped results; the copy goes with the session.
async fn stop(
    decoder: &mut Decoder,
    acks: &mut watch::Receiver<Position>,
    slot: &mut SlotAdvance<'_>,
) -> Result<Outcome, DriverError> {
    decoder.finish(acks).await?;
    slot.now(decoder).await?;
    Ok(Outcome::Stopped)
}
