//! PostgreSQL driver for etcd-sync: a snapshot with COPY inside an exported replication-slot
//! snapshot, then the slot's pgoutput stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_sync_api::{
    error_chain, CheckItem, DriverError, DumpEvent, Position, Selection, StreamEvent, TableFilter,
    TlsMode,
};
use tokio::sync::{mpsc, watch};
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

mod catalog;
mod catchup;
mod conn;
mod error;
pub mod lsn;
mod partitions;
pub mod pgoutput;
mod pushdown;
mod server;
mod snapshot;
mod stream;
mod tls;
pub mod types;

pub use catalog::PgTable;
use catalog::TypeCatalog;
pub use conn::ConnectParams;
use conn::{quote_ident, quote_literal, ReplicationConnection, SESSION_SETTINGS};
use error::{conn_error, pg_error};
pub use lsn::Lsn;

/// Rows per batch handed to the engine during the dump.
const DUMP_BATCH_ROWS: usize = 512;

/// What the PostgreSQL driver needs from the config.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub connect: ConnectParams,
    pub slot: String,
    pub publication: String,
    pub filter: TableFilter,
    /// Connections that COPY tables in parallel during the dump, sharing one snapshot.
    pub dump_connections: usize,
    /// Table options the server may apply (columns read, row filters), by table name.
    pub pushdown: std::collections::BTreeMap<String, etcd_sync_api::Pushdown>,
    /// Read a large backlog through logical decoding's SQL interface (see [`catchup`]).
    pub sql_catch_up: bool,
}

pub struct PostgresDriver {
    config: PostgresConfig,
    /// The query connections' tasks, joined by [`Driver::close`].
    connections: TaskTracker,
}

/// Where a stream resumes: the end of the last transaction applied.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PgPosition {
    lsn: String,
    /// The partitions of the selected partitioned tables as the dump saw them (see
    /// [`partitions`]); absent when none is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partitions: Option<String>,
}

pub(crate) fn position_of(lsn: Lsn, partitions: Option<&str>) -> Position {
    Position(match partitions {
        None => serde_json::json!({ "lsn": lsn.to_string() }),
        Some(p) => serde_json::json!({ "lsn": lsn.to_string(), "partitions": p }),
    })
}

/// The position a configured `start.lsn` names, in this driver's format; the error says why
/// the text is not an LSN.
pub fn start_position(lsn: &str) -> Result<Position, String> {
    let lsn: Lsn = lsn
        .parse()
        .map_err(|_| format!("{lsn:?} is not an LSN (e.g. 0/16B3748)"))?;
    Ok(position_of(lsn, None))
}

fn parse_position(position: &Position) -> Result<(Lsn, Option<String>), DriverError> {
    let parsed: PgPosition = serde_json::from_value(position.0.clone()).map_err(|e| {
        DriverError::Misconfigured(format!(
            "the stored position {} is not a PostgreSQL position ({e}); was the state written \
             by another driver? Delete the state to start over",
            position.0
        ))
    })?;
    let lsn = parsed.lsn.parse().map_err(DriverError::Misconfigured)?;
    Ok((lsn, parsed.partitions))
}

fn lsn_of(position: &Position) -> Result<Lsn, DriverError> {
    parse_position(position).map(|(lsn, _)| lsn)
}

pub(crate) fn system_time(pg_micros: i64) -> SystemTime {
    let unix_micros = pg_micros + pgoutput::PG_EPOCH_OFFSET_MICROS;
    UNIX_EPOCH + Duration::from_micros(unix_micros.max(0) as u64)
}

/// Drives a query connection in a task of `tasks` and returns its client; the task ends when
/// the client is dropped.
fn spawn_connection<S, T>(
    tasks: &TaskTracker,
    connected: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
) -> Result<Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected?;
    tasks.spawn(async move {
        if let Err(e) = connection.await {
            debug!("PostgreSQL query connection ended: {e}");
        }
    });
    Ok(client)
}

/// How long [`Driver::close`] waits for the query connections to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl PostgresDriver {
    pub fn new(config: PostgresConfig) -> Self {
        Self {
            config,
            connections: TaskTracker::new(),
        }
    }

    async fn query_client(&self) -> Result<Client, DriverError> {
        let p = &self.config.connect;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&p.host)
            .port(p.port)
            .user(&p.user)
            .dbname(&p.database)
            .application_name(&p.application_name)
            .connect_timeout(Duration::from_secs(10))
            .options(
                SESSION_SETTINGS
                    .iter()
                    .map(|(name, value)| format!("-c {name}={value}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        if let Some(password) = &p.password {
            config.password(password);
        }
        let context = format!("connecting to PostgreSQL at {}:{}", p.host, p.port);
        config.ssl_mode(match p.tls.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        let tls_config = tls::client_config(&p.tls)
            .map_err(|e| DriverError::Misconfigured(format!("{context}: {e}")))?;
        match tls_config {
            None => spawn_connection(
                &self.connections,
                config.connect(tokio_postgres::NoTls).await,
            ),
            Some(tls_config) => spawn_connection(
                &self.connections,
                config.connect(tls::MakeRustlsConnect(tls_config)).await,
            ),
        }
        .map_err(|e| pg_error(&context, e))
    }

    async fn replication_connection(&self) -> Result<ReplicationConnection, DriverError> {
        let p = &self.config.connect;
        ReplicationConnection::connect(p).await.map_err(|e| {
            conn_error(
                &format!("opening a replication connection to {}:{}", p.host, p.port),
                e,
            )
        })
    }

    async fn selected(&self, client: &Client) -> Result<Selection<PgTable>, DriverError> {
        let types = TypeCatalog::load(client).await?;
        catalog::select_tables(client, &types, &self.config.filter, &self.config.pushdown).await
    }
}

async fn query_one(client: &Client, sql: &str) -> Result<String, DriverError> {
    let rows = client
        .simple_query(sql)
        .await
        .map_err(|e| pg_error(sql, e))?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| DriverError::Protocol(format!("{sql} returned no row")))
}

impl etcd_sync_api::Driver for PostgresDriver {
    type Table = PgTable;

    async fn check(&self) -> Vec<CheckItem> {
        let p = &self.config.connect;
        let client = match self.query_client().await {
            Ok(client) => client,
            Err(e) => return vec![CheckItem::cannot_connect(&p.host, p.port, &p.user, &e)],
        };
        let mut items = vec![CheckItem::connected(&p.host, p.port, &p.database, &p.user)];
        let tls_version: Option<String> = client
            .query_opt(
                "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                &[],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get(0));
        items.push(CheckItem::tls(p.tls.mode, tls_version.as_deref()));
        match self.prerequisites(&client).await {
            Ok(more) => items.extend(more),
            Err(e) => items.push(CheckItem::fail("prerequisites", error_chain(&e))),
        }
        let selection = self.selected(&client).await;
        if let Ok(selection) = &selection {
            items.extend(selection.tables.iter().filter_map(pushdown::check_item));
        }
        items.extend(Selection::check_items(selection));
        items
    }

    async fn select_tables(&self) -> Result<Selection<PgTable>, DriverError> {
        let client = self.query_client().await?;
        // The engine calls this first in every session, before writing anything: a server
        // that cannot replicate is refused here, with nothing written to etcd, and the calls
        // that follow in the session need not check again.
        self.require_prerequisites(&client).await?;
        self.selected(&client).await
    }

    async fn dump(
        &self,
        tables: &[PgTable],
        out: mpsc::Sender<DumpEvent>,
        cancel: CancellationToken,
    ) -> Result<Position, DriverError> {
        let client = self.query_client().await?;
        let tables = tables.to_vec();
        let refs: Vec<&PgTable> = tables.iter().collect();
        // Before the slot: decoding looks the publication up as of each change's time.
        self.ensure_publication(&client, &refs).await?;

        let slot = &self.config.slot;
        let mut repl = self.replication_connection().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .map_err(|e| pg_error("reading replication slots", e))?
            .is_some();
        if exists {
            self.take_over_slot(&client).await?;
            // A new snapshot needs a new slot: only its creation exports one.
            info!(%slot, "dropping the replication slot to take a new snapshot");
            repl.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(slot)))
                .await
                .map_err(|e| conn_error(&format!("dropping replication slot {slot}"), e))?;
        }
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(slot)
            ))
            .await
            .map_err(|e| conn_error(&format!("creating replication slot {slot}"), e))?;
        let (consistent_point, snapshot) = match rows.first().map(|r| r.as_slice()) {
            Some([_, Some(lsn), Some(snapshot), ..]) => (lsn.clone(), snapshot.clone()),
            _ => {
                return Err(DriverError::Protocol(
                    "CREATE_REPLICATION_SLOT returned no snapshot".into(),
                ))
            }
        };
        let lsn: Lsn = consistent_point.parse().map_err(DriverError::Protocol)?;
        info!(%slot, %lsn, %snapshot, "replication slot created; copying tables in its snapshot");

        // The exporting connection must stay open and idle until every COPY connection has
        // imported the snapshot; it is kept until the copy ends.
        let fingerprint = self.snapshot_fingerprint(&snapshot, &refs).await;
        let fingerprint = match fingerprint {
            Ok(f) => f,
            Err(e) => {
                repl.terminate().await;
                return Err(e);
            }
        };
        let copied = self
            .copy_tables(
                tables,
                Some(&snapshot),
                self.config.dump_connections,
                &out,
                &cancel,
            )
            .await;
        repl.terminate().await;
        copied?;
        Ok(position_of(lsn, fingerprint.as_deref()))
    }

    async fn stream(
        &self,
        from: Position,
        tables: &[PgTable],
        out: mpsc::Sender<StreamEvent>,
        acks: watch::Receiver<Position>,
        cancel: CancellationToken,
    ) -> Result<(), DriverError> {
        let (start, dumped_partitions) = parse_position(&from)?;
        let client = self.query_client().await?;
        let slot = &self.config.slot;
        let row = client
            .query_opt(
                "SELECT wal_status::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .map_err(|e| pg_error("reading replication slots", e))?;
        match row {
            None => {
                return Err(DriverError::PositionLost(format!(
                    "replication slot {slot} does not exist (dropped, or a failover to a server without it)"
                )))
            }
            Some(row) if row.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
                return Err(DriverError::PositionLost(format!(
                    "replication slot {slot} was invalidated (wal_status = lost): the server removed WAL it \
                     still needed; consider raising max_slot_wal_keep_size"
                )))
            }
            Some(_) => {}
        }
        // Type ids of columns the stream announces; the tables' own types came with them.
        let types = TypeCatalog::load(&client).await?;
        let tables = tables.to_vec();
        // Partitions that changed while the agent was away are caught here, before streaming.
        let refs: Vec<&PgTable> = tables.iter().collect();
        let current = partitions::fingerprint(&client, &refs).await?;
        let partitions = match (dumped_partitions, current) {
            (Some(dumped), current) => {
                if let Some(e) = partitions::changed(&dumped, current.as_deref()) {
                    return Err(e);
                }
                Some(dumped)
            }
            // A start position from the config carries none: the catalog as it is now counts.
            (None, current) => current,
        };
        self.take_over_slot(&client).await?;
        let start = stream::Start {
            lsn: start,
            partitions,
        };
        let mut decoder = stream::Decoder::new(client, types, tables, start, out);
        let mut acks = acks;
        if self.config.sql_catch_up {
            let sql = self.query_client().await?;
            let target = catchup::Target {
                slot,
                publication: &self.config.publication,
            };
            let outcome = catchup::run(&sql, target, &mut decoder, &mut acks, &cancel).await?;
            drop(sql);
            if let catchup::Outcome::Stopped = outcome {
                return Ok(());
            }
        }
        let resume = decoder.resume_lsn();
        let mut repl = self.replication_connection().await?;
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {resume} (proto_version '1', publication_names {})",
            quote_ident(slot),
            quote_literal(&quote_ident(&self.config.publication)),
        );
        repl.start_replication(&sql)
            .await
            .map_err(|e| match e.code() {
                Some("42704") => DriverError::PositionLost(format!(
                    "replication slot {slot} does not exist: {e}"
                )),
                _ => conn_error("starting replication", e),
            })?;
        info!(%slot, from = %resume, "streaming changes");
        let session = stream::Session::new(repl, decoder, acks);
        session.run(cancel).await
    }

    async fn prepare_start(
        &self,
        position: &Position,
        tables: &[PgTable],
    ) -> Result<(), DriverError> {
        let start = lsn_of(position)?;
        let client = self.query_client().await?;
        let tables: Vec<&PgTable> = tables.iter().collect();
        self.ensure_publication(&client, &tables).await?;
        let current: String = query_one(&client, "SELECT pg_current_wal_lsn()::text").await?;
        let current: Lsn = current.parse().map_err(DriverError::Protocol)?;
        if start > current {
            return Err(DriverError::Misconfigured(format!(
                "start.lsn {start} lies beyond the server's current WAL position {current}"
            )));
        }
        let slot = &self.config.slot;
        let confirmed = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await
            .map_err(|e| pg_error("reading replication slots", e))?;
        match confirmed {
            None => {
                let mut repl = self.replication_connection().await?;
                repl.simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                    quote_ident(slot)
                ))
                .await
                .map_err(|e| conn_error(&format!("creating replication slot {slot}"), e))?;
                repl.terminate().await;
                info!(%slot, "replication slot created for the configured start position");
                Ok(())
            }
            Some(row) => {
                let confirmed: Option<String> = row.get(0);
                if let Some(confirmed) = confirmed.and_then(|c| c.parse::<Lsn>().ok()) {
                    if start < confirmed {
                        tracing::warn!(
                            %start, %confirmed,
                            "start.lsn is before what slot {slot} has confirmed: the server \
                             streams from {confirmed}; changes in between are not replayed"
                        );
                    }
                }
                Ok(())
            }
        }
    }

    async fn lag_bytes(&self, position: &Position) -> Result<Option<u64>, DriverError> {
        let lsn = lsn_of(position)?;
        let client = self.query_client().await?;
        let current: String = query_one(&client, "SELECT pg_current_wal_lsn()::text").await?;
        let current: Lsn = current.parse().map_err(DriverError::Protocol)?;
        Ok(Some(current.0.saturating_sub(lsn.0)))
    }

    fn position_number(&self, position: &Position) -> Option<u64> {
        lsn_of(position).ok().map(|lsn| lsn.0)
    }

    async fn close(&self) {
        self.connections.close();
        // Every client is dropped by now, so each connection says goodbye and ends; a server
        // that does not answer is not waited for long.
        if tokio::time::timeout(CLOSE_WAIT, self.connections.wait())
            .await
            .is_err()
        {
            debug!(
                "{} query connections still open after {CLOSE_WAIT:?}",
                self.connections.len()
            );
        }
    }

    async fn snapshot_joining(
        &self,
        tables: &[PgTable],
        out: mpsc::Sender<DumpEvent>,
    ) -> Result<(), DriverError> {
        // Joined before the snapshot is taken: decoding looks the publication up as of each
        // change, so every change after the snapshot is sent.
        let client = self.query_client().await?;
        let refs: Vec<&PgTable> = tables.iter().collect();
        self.ensure_publication(&client, &refs).await?;
        drop(client);
        self.read_snapshot(tables, out).await
    }

    async fn read_snapshot(
        &self,
        tables: &[PgTable],
        out: mpsc::Sender<DumpEvent>,
    ) -> Result<(), DriverError> {
        self.copy_tables(tables.to_vec(), None, 1, &out, &CancellationToken::new())
            .await
    }
}
