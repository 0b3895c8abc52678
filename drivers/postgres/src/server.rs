//! What the driver asks of the server and sets up on it: the prerequisites (each failure says
//! what to change), the publication, and the replication slot's takeover.

use std::time::Duration;

use etcd_sync_api::{CheckItem, DriverError};
use tokio_postgres::Client;
use tracing::info;

use crate::catalog::{self, PgTable};
use crate::conn::quote_ident;
use crate::error::pg_error;
use crate::{query_one, PostgresDriver};

impl PostgresDriver {
    /// Server prerequisites; each failure says what to change.
    pub(crate) async fn prerequisites(
        &self,
        client: &Client,
    ) -> Result<Vec<CheckItem>, DriverError> {
        let mut items = Vec::new();
        let version: String = query_one(client, "SHOW server_version").await?;
        items.push(CheckItem::ok("server", format!("PostgreSQL {version}")));

        let wal_level: String = query_one(client, "SHOW wal_level").await?;
        items.push(if wal_level == "logical" {
            CheckItem::ok("wal_level", "logical")
        } else {
            CheckItem::fail(
                "wal_level",
                format!(
                    "wal_level is '{wal_level}' but logical replication needs 'logical': set \
                     wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) \
                     and restart PostgreSQL"
                ),
            )
        });

        let row = client
            .query_one(
                "SELECT rolreplication OR rolsuper, current_user::text FROM pg_roles \
                 WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading the role", e))?;
        let (can_replicate, user): (bool, String) = (row.get(0), row.get(1));
        items.push(if can_replicate {
            CheckItem::ok(
                "replication privilege",
                format!("user {user} has REPLICATION"),
            )
        } else {
            CheckItem::fail(
                "replication privilege",
                format!(
                    "user {user} lacks the REPLICATION attribute: run ALTER ROLE {} REPLICATION",
                    quote_ident(&user)
                ),
            )
        });

        let row = client
            .query_one(
                "SELECT current_setting('max_replication_slots')::int, \
                        (SELECT count(*)::int FROM pg_replication_slots), \
                        (SELECT count(*)::int FROM pg_replication_slots WHERE slot_name = $1), \
                        current_setting('max_wal_senders')::int, \
                        (SELECT count(*)::int FROM pg_stat_replication)",
                &[&self.config.slot],
            )
            .await
            .map_err(|e| pg_error("reading replication settings", e))?;
        let (max_slots, slots, ours, max_senders, senders): (i32, i32, i32, i32, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        items.push(if ours == 1 || slots < max_slots {
            CheckItem::ok(
                "replication slots",
                format!("{slots} of max_replication_slots = {max_slots} in use; slot {} {}", self.config.slot, if ours == 1 { "exists" } else { "will be created" }),
            )
        } else {
            CheckItem::fail(
                "replication slots",
                format!("all {max_slots} replication slots are in use: raise max_replication_slots in postgresql.conf and restart, or drop an unused slot"),
            )
        });
        // A large backlog is read from a temporary copy of the slot: one more slot, briefly.
        let with_ours = slots + i32::from(ours == 0);
        if self.config.sql_catch_up && with_ours == max_slots {
            items.push(CheckItem::warn(
                "SQL catch-up",
                format!("no replication slot would be free for the copy a large backlog is read from (max_replication_slots = {max_slots}): such a backlog goes to the walsender, using about twice the server's CPU; raise max_replication_slots by one"),
            ));
        }
        items.push(if senders < max_senders {
            CheckItem::ok(
                "WAL senders",
                format!("{senders} of max_wal_senders = {max_senders} in use"),
            )
        } else {
            CheckItem::fail(
                "WAL senders",
                format!("all {max_senders} WAL senders are in use: raise max_wal_senders in postgresql.conf and restart"),
            )
        });
        Ok(items)
    }

    /// Fails with the first failed prerequisite's explanation.
    pub(crate) async fn require_prerequisites(&self, client: &Client) -> Result<(), DriverError> {
        let items = self.prerequisites(client).await?;
        match items
            .into_iter()
            .find(|i| i.status == etcd_sync_api::CheckStatus::Fail)
        {
            Some(item) => Err(DriverError::Misconfigured(item.detail)),
            None => Ok(()),
        }
    }

    /// Creates the publication for the selected tables, or adds those it lacks.
    pub(crate) async fn ensure_publication(
        &self,
        client: &Client,
        tables: &[&PgTable],
    ) -> Result<(), DriverError> {
        let publication = &self.config.publication;
        let existing = client
            .query_opt(
                "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
                &[publication],
            )
            .await
            .map_err(|e| pg_error("reading the publication", e))?;
        if let Some(row) = &existing {
            if tables.iter().any(|t| t.partitioned) && !row.get::<_, bool>(1) {
                info!(%publication, "setting publish_via_partition_root: partitioned tables are synced");
                let sql = format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(publication)
                );
                client.batch_execute(&sql).await.map_err(|e| {
                    pg_error(
                        &format!("setting publish_via_partition_root on publication {publication}"),
                        e,
                    )
                })?;
            }
        }
        // Names with the column list and row filter each table's options leave to the server.
        let names = |ts: &[&PgTable]| {
            ts.iter()
                .map(|t| crate::pushdown::publication_entry(t))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A partitioned table's changes must arrive as its own, not as its partitions'.
        let via_root = tables.iter().any(|t| t.partitioned);
        match existing {
            None => {
                let sql = format!(
                    "CREATE PUBLICATION {} FOR TABLE {}{}",
                    quote_ident(publication),
                    names(tables),
                    if via_root {
                        " WITH (publish_via_partition_root = true)"
                    } else {
                        ""
                    }
                );
                info!(%publication, "creating the publication");
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error(&format!("creating publication {publication}"), e))?;
            }
            Some(row) if row.get::<_, bool>(0) => {}
            Some(_) => {
                let with_options = self.server_version(client).await?
                    >= crate::pushdown::PUBLICATION_OPTIONS_VERSION;
                let sql = if with_options {
                    "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter                        FROM pg_publication_tables WHERE pubname = $1"
                } else {
                    "SELECT schemaname::text, tablename::text, NULL::text[], NULL::text                        FROM pg_publication_tables WHERE pubname = $1"
                };
                let rows = client
                    .query(sql, &[publication])
                    .await
                    .map_err(|e| pg_error("reading the publication's tables", e))?;
                let published: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            catalog::table_id(r.get(0), r.get(1)),
                            r.get::<_, Option<Vec<String>>>(2),
                            r.get::<_, Option<String>>(3),
                        )
                    })
                    .collect();
                // A table whose column list or row filter is not what its options want now
                // is dropped and added again in one transaction: decoding sees the change at
                // its commit, with no gap.
                let changed: Vec<&PgTable> = tables
                    .iter()
                    .copied()
                    .filter(|t| {
                        published.iter().any(|(id, columns, filter)| {
                            *id == t.schema.id
                                && with_options
                                && crate::pushdown::entry_differs(
                                    t,
                                    columns.clone(),
                                    filter.clone(),
                                )
                        })
                    })
                    .collect();
                if !changed.is_empty() {
                    let sql = format!(
                        "BEGIN; ALTER PUBLICATION {p} DROP TABLE {}; ALTER PUBLICATION {p} ADD TABLE {}; COMMIT",
                        changed
                            .iter()
                            .map(|t| catalog::qualified_name(&t.schema.id))
                            .collect::<Vec<_>>()
                            .join(", "),
                        names(&changed),
                        p = quote_ident(publication),
                    );
                    info!(%publication, tables = %names(&changed), "setting the tables' column lists and row filters in the publication");
                    if let Err(e) = client.batch_execute(&sql).await {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(pg_error(&format!("altering publication {publication}"), e));
                    }
                }
                let missing: Vec<&PgTable> = tables
                    .iter()
                    .copied()
                    .filter(|t| !published.iter().any(|(id, _, _)| *id == t.schema.id))
                    .collect();
                if !missing.is_empty() {
                    let sql = format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        quote_ident(publication),
                        names(&missing)
                    );
                    info!(%publication, tables = %names(&missing), "adding tables to the publication");
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| pg_error(&format!("altering publication {publication}"), e))?;
                }
            }
        }
        Ok(())
    }

    async fn server_version(&self, client: &Client) -> Result<i32, DriverError> {
        Ok(client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| pg_error("reading the server version", e))?
            .get(0))
    }

    /// Makes the slot free for this agent: the engine calls the driver only while it holds the
    /// leadership, so whoever else holds the slot is a deposed leader (or a dead agent whose
    /// connection the server has not noticed yet), and waiting for wal_sender_timeout would
    /// stall the takeover.
    pub(crate) async fn take_over_slot(&self, client: &Client) -> Result<(), DriverError> {
        let slot = &self.config.slot;
        for attempt in 0..100 {
            let row = client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[slot],
                )
                .await
                .map_err(|e| pg_error("reading replication slots", e))?;
            let Some(row) = row else { return Ok(()) };
            let pid: i32 = row.get(0);
            if attempt == 0 {
                tracing::warn!(%slot, pid, "the slot is held by another connection (a previous leader?): terminating it");
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| pg_error("terminating the slot's previous holder", e))?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DriverError::transient(
            "taking over the replication slot",
            format!("slot {slot} is still held by another connection"),
        ))
    }
}
