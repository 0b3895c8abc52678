//! Partitioned tables change rows without change events: attaching a partition brings its rows
//! into the parent, detaching or dropping one takes them out, and with
//! `publish_via_partition_root` a TRUNCATE of one partition is not published at all. None of
//! these reach the stream, but each shows in the catalog: the set of leaf partitions, or a
//! leaf's new relfilenode (TRUNCATE, VACUUM FULL and CLUSTER give a table a new file). The
//! driver keeps a fingerprint of both, taken in the dump's snapshot and carried in every
//! position, and asks for a new dump when the catalog no longer matches it.

use std::time::Duration;

use tokio_postgres::Client;

use crate::catalog::{qualified_name, PgTable};
use crate::error::pg_error;
use etcd_sync_api::DriverError;

/// How often the stream compares the catalog with the dump's fingerprint: the longest time a
/// partition change stays unnoticed while the agent runs.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The fingerprint of the partitions of `tables`' partitioned tables, `None` when there are
/// none. Read in a snapshot, it describes that snapshot.
pub async fn fingerprint(
    client: &Client,
    tables: &[&PgTable],
) -> Result<Option<String>, DriverError> {
    let roots: Vec<String> = tables
        .iter()
        .filter(|t| t.partitioned)
        .map(|t| qualified_name(&t.schema.id))
        .collect();
    if roots.is_empty() {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT md5(COALESCE(string_agg(r.name || '=' || t.relid::text || ':' || \
                    l.relfilenode::text, ',' ORDER BY r.name, t.relid), '')) \
               FROM unnest($1::text[]) AS r(name) \
              CROSS JOIN LATERAL pg_partition_tree(r.name::regclass) t \
               JOIN pg_class l ON l.oid = t.relid \
              WHERE t.isleaf",
            &[&roots],
        )
        .await
        .map_err(|e| pg_error("reading the partitions of partitioned tables", e))?;
    Ok(Some(row.get(0)))
}

/// The error that makes the engine dump again, once the catalog has moved from `expected`.
pub fn changed(expected: &str, now: Option<&str>) -> Option<DriverError> {
    (now != Some(expected)).then(|| {
        DriverError::Resnapshot(
            "the partitions of a synced partitioned table changed (a partition attached, \
             detached, dropped or created, or one truncated or rewritten): its rows changed \
             without change events"
                .into(),
        )
    })
}
