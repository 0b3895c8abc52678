//! The table options PostgreSQL applies itself: the dump reads only the columns the engine
//! needs, with the row filter in its query; the publication gets a column list and a row
//! filter where the table's replica identity allows them (15+). The engine applies the options
//! to every row again, so whatever is not left to the server stays correct, only costlier.
//!
//! PostgreSQL refuses an UPDATE or DELETE of a published table (the application's, not ours)
//! when a publication's row filter reads columns outside the replica identity, or when its
//! column list does not cover the replica identity. So a row filter goes into the publication
//! only when the replica identity covers it (REPLICA IDENTITY FULL, or a filter on key columns
//! alone), and a column list only when the replica identity is the primary key.

use etcd_sync_api::{CheckItem, DriverError, Pushdown};
use tokio_postgres::Client;
use tracing::debug;

use crate::catalog::{qualified_name, PgTable};
use crate::conn::quote_ident;

/// PostgreSQL 15: the first with publication column lists and row filters.
pub const PUBLICATION_OPTIONS_VERSION: i32 = 150_000;

/// What of a table's options PostgreSQL applies.
#[derive(Debug, Clone, PartialEq)]
pub struct PgPushdown {
    /// Per column of the table: read by the dump (the others come as NULL, and the engine
    /// leaves them out).
    pub read: Vec<bool>,
    /// The row filter as SQL, in the dump's query.
    pub filter_sql: Option<String>,
    /// The publication's column list, when it has one.
    pub publish_columns: Option<Vec<String>>,
    /// The publication's row filter, when it has one.
    pub publish_filter: Option<String>,
    /// What is not left to the server and why, for `check`.
    pub notes: Vec<String>,
}

/// Plans the pushdown of `options` for `table` (replica identity `identity`: `d`, `f`, `i`).
pub async fn plan(
    client: &Client,
    table: &PgTable,
    identity: u8,
    options: &Pushdown,
    server_version: i32,
) -> Result<PgPushdown, DriverError> {
    let schema = &table.schema;
    let read: Vec<bool> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| options.reads(&c.name, schema.key.contains(&i)))
        .collect();
    let mut notes = Vec::new();
    let quote = |c: &str| quote_ident(c);
    let filter_sql = match &options.filter {
        None => None,
        Some(filter) if filter.orders_text() => {
            notes.push(
                "the filter orders text (<, > ...), which PostgreSQL compares by collation and \
                 the agent by code point: the agent alone evaluates it"
                    .to_owned(),
            );
            None
        }
        Some(filter) => {
            let sql = filter.to_sql(&quote);
            let probe = format!(
                "SELECT 1 FROM {} WHERE {sql} LIMIT 0",
                qualified_name(&schema.id)
            );
            match client.batch_execute(&probe).await {
                Ok(()) => Some(sql),
                Err(e) => {
                    notes.push(format!(
                        "PostgreSQL does not accept the filter as SQL ({}): the agent alone \
                         evaluates it",
                        e.as_db_error()
                            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                    ));
                    None
                }
            }
        }
    };
    let has_options_in_publication = server_version >= PUBLICATION_OPTIONS_VERSION;
    let reads_all = read.iter().all(|r| *r);
    let publish_columns = if reads_all {
        None
    } else if !has_options_in_publication {
        notes.push(
            "PostgreSQL before 15 has no publication column lists: the columns left out reach \
             the agent in the stream (never etcd)"
                .to_owned(),
        );
        None
    } else if identity == b'f' {
        notes.push(
            "REPLICA IDENTITY FULL rules out a publication column list: the columns left out \
             reach the agent in the stream (never etcd)"
                .to_owned(),
        );
        None
    } else {
        Some(
            schema
                .columns
                .iter()
                .zip(&read)
                .filter(|(_, read)| **read)
                .map(|(c, _)| c.name.clone())
                .collect(),
        )
    };
    let publish_filter = match (&filter_sql, &options.filter) {
        (Some(sql), Some(filter)) => {
            let key_names = schema.key_column_names();
            let on_key_only = filter.columns().iter().all(|c| key_names.contains(c));
            if !has_options_in_publication {
                notes.push(
                    "PostgreSQL before 15 has no publication row filters: every row's changes \
                     reach the agent, which filters them"
                        .to_owned(),
                );
                None
            } else if identity == b'f' || on_key_only {
                Some(sql.clone())
            } else {
                notes.push(format!(
                    "the filter reads columns outside the replica identity: every row's changes \
                     reach the agent, which filters them (PostgreSQL filters them itself with \
                     ALTER TABLE {} REPLICA IDENTITY FULL, which also lets the agent judge an \
                     UPDATE that leaves a TOASTed column out; it rules out a column list)",
                    qualified_name(&schema.id)
                ));
                None
            }
        }
        _ => None,
    };
    let plan = PgPushdown {
        read,
        filter_sql,
        publish_columns,
        publish_filter,
        notes,
    };
    debug!(table = %schema.id, ?plan, "pushdown");
    Ok(plan)
}

/// The dump's query for `table`: the columns it reads (NULL for the others), the filter.
pub fn dump_query(table: &PgTable, pushdown: &PgPushdown) -> String {
    let columns: Vec<String> = table
        .schema
        .columns
        .iter()
        .zip(&pushdown.read)
        .map(|(c, read)| {
            if *read {
                quote_ident(&c.name)
            } else {
                "NULL".to_owned()
            }
        })
        .collect();
    let filter = pushdown
        .filter_sql
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {}{filter}",
        columns.join(", "),
        qualified_name(&table.schema.id)
    )
}

/// The publication's entry for `table`: `name (columns) WHERE (filter)`.
pub fn publication_entry(table: &PgTable) -> String {
    let mut entry = qualified_name(&table.schema.id);
    if let Some(pushdown) = &table.pushdown {
        if let Some(columns) = &pushdown.publish_columns {
            let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            entry.push_str(&format!(" ({})", quoted.join(", ")));
        }
        if let Some(filter) = &pushdown.publish_filter {
            entry.push_str(&format!(" WHERE ({filter})"));
        }
    }
    entry
}

/// Whether the publication's entry for a table (its column names and row filter, as
/// `pg_publication_tables` shows them) differs from what `table` wants.
pub fn entry_differs(
    table: &PgTable,
    columns: Option<Vec<String>>,
    row_filter: Option<String>,
) -> bool {
    let wanted = table.pushdown.as_deref();
    let wanted_columns = wanted.and_then(|p| p.publish_columns.clone());
    let all_columns = || -> Vec<String> {
        table
            .schema
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    // The view lists every column when there is no column list.
    let columns_differ =
        wanted_columns.unwrap_or_else(all_columns) != columns.unwrap_or_else(all_columns);
    let normalize = |f: &str| -> String {
        f.chars()
            .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')' && *c != '"')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted_filter = wanted.and_then(|p| p.publish_filter.as_deref());
    let filters_differ = match (wanted_filter, row_filter.as_deref()) {
        (None, None) => false,
        (Some(a), Some(b)) => normalize(a) != normalize(b),
        _ => true,
    };
    columns_differ || filters_differ
}

/// `check`'s line on what of a table's options PostgreSQL applies; a warning when part of it
/// is left to the agent.
pub fn check_item(table: &PgTable) -> Option<CheckItem> {
    let pushdown = table.pushdown.as_deref()?;
    let mut done = Vec::new();
    if pushdown.read.iter().any(|r| !r) {
        done.push(match pushdown.publish_columns {
            Some(_) => "the columns left out are neither dumped nor published",
            None => "the columns left out are not dumped",
        });
    }
    match (&pushdown.filter_sql, &pushdown.publish_filter) {
        (Some(_), Some(_)) => done.push("PostgreSQL filters the rows (dump and publication)"),
        (Some(_), None) => done.push("PostgreSQL filters the dumped rows"),
        _ => {}
    }
    let what = format!("table {} options", table.schema.id);
    let summary = if done.is_empty() {
        "applied by the agent".to_owned()
    } else {
        done.join("; ")
    };
    Some(if pushdown.notes.is_empty() {
        CheckItem::ok(what, summary)
    } else {
        CheckItem::warn(what, format!("{summary}; {}", pushdown.notes.join("; ")))
    })
}
