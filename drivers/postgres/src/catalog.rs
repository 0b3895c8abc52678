//! What the driver reads from PostgreSQL's catalogs: the tables to sync, their columns and
//! keys, and how each column type maps to JSON.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_sync_api::{Column, DriverError, Selection, TableFilter, TableId, TableSchema};
use tokio_postgres::Client;

use crate::error::pg_error;
use crate::types::PgType;

/// The default schema: its tables are named without a schema in keys and in the config.
pub const DEFAULT_SCHEMA: &str = "public";

pub fn table_id(namespace: &str, name: &str) -> TableId {
    TableId {
        schema: (namespace != DEFAULT_SCHEMA).then(|| namespace.to_owned()),
        name: name.to_owned(),
    }
}

/// The schema-qualified, quoted name for SQL.
pub fn qualified_name(id: &TableId) -> String {
    format!(
        "{}.{}",
        crate::conn::quote_ident(id.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)),
        crate::conn::quote_ident(&id.name)
    )
}

/// A selected table with what the driver needs beyond the engine's [`TableSchema`].
#[derive(Debug, Clone)]
pub struct PgTable {
    pub schema: Arc<TableSchema>,
    pub types: Vec<PgType>,
    pub estimated_rows: Option<u64>,
    /// A partitioned table: its rows live in its partitions, read and streamed through it.
    pub partitioned: bool,
    /// What of the table's options the server applies.
    pub pushdown: Option<Arc<crate::pushdown::PgPushdown>>,
}

impl etcd_sync_api::SourceTable for PgTable {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }
}

#[derive(Debug, Clone)]
struct RawType {
    name: String,
    kind: u8,
    element: u32,
    base: u32,
    delimiter: u8,
    category: u8,
}

/// Every type in `pg_type`, so that Relation messages of the stream can be mapped without a
/// round trip; reloaded when an unknown type (created after start-up) appears.
#[derive(Debug, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, RawType>,
}

impl TypeCatalog {
    pub async fn load(client: &Client) -> Result<Self, DriverError> {
        let rows = client
            .query(
                "SELECT oid, typname::text, typtype::text, typelem, typbasetype, typdelim::text, \
                 typcategory::text FROM pg_type",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading pg_type", e))?;
        let first_byte = |s: String| s.bytes().next().unwrap_or(b' ');
        let types = rows
            .into_iter()
            .map(|row| {
                (
                    row.get::<_, u32>(0),
                    RawType {
                        name: row.get(1),
                        kind: first_byte(row.get(2)),
                        element: row.get(3),
                        base: row.get(4),
                        delimiter: first_byte(row.get(5)),
                        category: first_byte(row.get(6)),
                    },
                )
            })
            .collect();
        Ok(Self { types })
    }

    pub fn knows(&self, oid: u32) -> bool {
        self.types.contains_key(&oid)
    }

    pub fn name(&self, oid: u32) -> String {
        self.types
            .get(&oid)
            .map(|t| t.name.clone())
            .unwrap_or_else(|| format!("oid {oid}"))
    }

    /// The JSON mapping of a type: domains map as their base type, arrays element-wise.
    pub fn resolve(&self, oid: u32) -> PgType {
        if let Some(t) = PgType::builtin(oid) {
            return t;
        }
        match self.types.get(&oid) {
            Some(raw) if raw.kind == b'd' && raw.base != 0 => self.resolve(raw.base),
            Some(raw) if raw.category == b'A' && raw.element != 0 => PgType::Array {
                element: Box::new(self.resolve(raw.element)),
                delimiter: raw.delimiter,
            },
            _ => PgType::Text,
        }
    }
}

/// One table as found in the catalog, before selection rules are applied.
struct Candidate {
    oid: u32,
    id: TableId,
    replica_identity: u8,
    replica_identity_is_key: bool,
    primary_key: Vec<String>,
    estimated_rows: Option<u64>,
    partitioned: bool,
    /// For a partition, the table at the top of its partition tree.
    partition_root: Option<TableId>,
}

/// Parses a table name as written in the config: `table` (default schema) or `schema.table`.
pub fn parse_table_name(name: &str) -> TableId {
    match name.split_once('.') {
        Some((schema, table)) => table_id(schema, table),
        None => table_id(DEFAULT_SCHEMA, name),
    }
}

/// Resolves `filter` against the database; see [`etcd_sync_api::Driver::select_tables`].
pub async fn select_tables(
    client: &Client,
    types: &TypeCatalog,
    filter: &TableFilter,
    pushdown: &std::collections::BTreeMap<String, etcd_sync_api::Pushdown>,
) -> Result<Selection<PgTable>, DriverError> {
    let server_version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| pg_error("reading the server version", e))?
        .get(0);
    let rows = client
        .query(
            // Partitions are listed only to explain that their rows are synced under their
            // root's name; a partitioned table's row estimate is the sum of its leaves'.
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, \
                    CASE WHEN c.relkind = 'p' THEN \
                      (SELECT COALESCE(sum(GREATEST(l.reltuples, 0)), 0)::float8 \
                         FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid \
                        WHERE t.isleaf) \
                    ELSE c.reltuples::float8 END, \
                    c.relkind = 'p', \
                    COALESCE((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                       FROM pg_index i \
                       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE i.indrelid = c.oid AND i.indisprimary), '{}'), \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                            AND i.indisreplident AND i.indisprimary), \
                    rn.nspname::text, r.relname::text \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) \
               LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
              WHERE c.relkind IN ('r', 'p') \
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
              ORDER BY n.nspname, c.relname",
            &[],
        )
        .await
        .map_err(|e| pg_error("listing tables", e))?;
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|row| {
            let namespace: String = row.get(1);
            let name: String = row.get(2);
            let reltuples: f64 = row.get(4);
            Candidate {
                oid: row.get(0),
                id: table_id(&namespace, &name),
                replica_identity: row.get::<_, String>(3).bytes().next().unwrap_or(b'd'),
                estimated_rows: (reltuples >= 0.0).then_some(reltuples as u64),
                partitioned: row.get(5),
                primary_key: row.get(6),
                replica_identity_is_key: row.get(7),
                partition_root: row
                    .get::<_, Option<String>>(8)
                    .zip(row.get::<_, Option<String>>(9))
                    .map(|(namespace, name)| table_id(&namespace, &name)),
            }
        })
        .collect();

    let included: Vec<TableId> = filter.include.iter().map(|n| parse_table_name(n)).collect();
    let excluded: Vec<TableId> = filter.exclude.iter().map(|n| parse_table_name(n)).collect();
    let mut problems = Vec::new();
    for id in &included {
        if !candidates.iter().any(|c| &c.id == id) {
            let names: Vec<String> = candidates.iter().map(|c| c.id.to_string()).collect();
            problems.push(format!(
                "tables.include names {id}, which does not exist in the database (or is not a table){}",
                etcd_sync_api::did_you_mean(&id.to_string(), names.iter().map(String::as_str))
            ));
        }
    }

    let mut selection = Selection::default();
    for candidate in candidates {
        let named = included.contains(&candidate.id);
        if let Some(root) = &candidate.partition_root {
            if named {
                problems.push(format!(
                    "tables.include names {}, a partition of {root}: a partitioned table is \
                     synced as one table under its root's name; name {root} instead",
                    candidate.id
                ));
            }
            continue;
        }
        if excluded.contains(&candidate.id) || (!included.is_empty() && !named) {
            continue;
        }
        if let Some(reason) = unsyncable(&candidate) {
            if named {
                problems.push(format!(
                    "table {} named in tables.include {reason}",
                    candidate.id
                ));
            } else {
                selection.skipped.push((candidate.id.clone(), reason));
            }
            continue;
        }
        let mut table = load_table(client, types, &candidate).await?;
        if let Some(options) = pushdown.get(&candidate.id.to_string()) {
            let plan = crate::pushdown::plan(
                client,
                &table,
                candidate.replica_identity,
                options,
                server_version,
            )
            .await?;
            table.pushdown = Some(Arc::new(plan));
        }
        selection.tables.push(table);
    }
    if !problems.is_empty() {
        return Err(DriverError::Misconfigured(problems.join("; ")));
    }
    Ok(selection)
}

/// Why a table cannot be synced, with what to change.
fn unsyncable(c: &Candidate) -> Option<String> {
    if c.primary_key.is_empty() {
        return Some(format!(
            "has no primary key: add one (ALTER TABLE {} ADD PRIMARY KEY (...)) or exclude the table; \
             etcd-sync never adds tables without a key to the publication, as that would make \
             their UPDATE and DELETE fail",
            qualified_name(&c.id)
        ));
    }
    let identity_ok = match c.replica_identity {
        b'd' | b'f' => true,
        b'i' => c.replica_identity_is_key,
        _ => false,
    };
    if !identity_ok {
        return Some(format!(
            "has REPLICA IDENTITY {} instead of the primary key: run ALTER TABLE {} REPLICA IDENTITY DEFAULT",
            match c.replica_identity {
                b'n' => "NOTHING",
                b'i' => "USING INDEX (another index)",
                _ => "?",
            },
            qualified_name(&c.id)
        ));
    }
    None
}

async fn load_table(
    client: &Client,
    types: &TypeCatalog,
    candidate: &Candidate,
) -> Result<PgTable, DriverError> {
    // Generated columns are left out: pgoutput does not send them, and the dump must match.
    let rows = client
        .query(
            "SELECT attname::text, atttypid FROM pg_attribute \
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
              ORDER BY attnum",
            &[&candidate.oid],
        )
        .await
        .map_err(|e| pg_error("listing columns", e))?;
    let columns: Vec<(String, u32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut table = build_table(
        candidate.id.clone(),
        &columns,
        &candidate.primary_key,
        types,
        candidate.estimated_rows,
    )?;
    table.partitioned = candidate.partitioned;
    Ok(table)
}

/// Builds a table from its columns (`name`, type oid) and primary-key column names.
pub fn build_table(
    id: TableId,
    columns: &[(String, u32)],
    primary_key: &[String],
    types: &TypeCatalog,
    estimated_rows: Option<u64>,
) -> Result<PgTable, DriverError> {
    let key = primary_key
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|(name, _)| name == k)
                .ok_or_else(|| {
                    DriverError::Misconfigured(format!(
                    "primary-key column {k} of table {id} is not replicated (a generated column?)"
                ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PgTable {
        schema: Arc::new(TableSchema {
            id,
            columns: columns
                .iter()
                .map(|(name, oid)| Column {
                    name: name.clone(),
                    type_name: types.name(*oid),
                })
                .collect(),
            key,
        }),
        types: columns.iter().map(|(_, oid)| types.resolve(*oid)).collect(),
        estimated_rows,
        partitioned: false,
        pushdown: None,
    })
}
