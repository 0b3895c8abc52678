//! Tables, keys and column types from `information_schema`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use etcd_sync_api::{Column, DriverError, Selection, TableFilter, TableId, TableSchema};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::my_error;
use crate::types::MyType;

/// A selected table with the types the driver needs for its values.
#[derive(Debug, Clone)]
pub struct MyTable {
    pub database: String,
    pub name: String,
    pub schema: Arc<TableSchema>,
    pub types: Vec<MyType>,
    pub estimated_rows: Option<u64>,
}

impl etcd_sync_api::SourceTable for MyTable {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }
}

pub fn table_id(default_db: &str, database: &str, name: &str) -> TableId {
    TableId {
        schema: (database != default_db).then(|| database.to_owned()),
        name: name.to_owned(),
    }
}

/// `table` (in the default database) or `db.table`.
pub fn parse_table_name(default_db: &str, name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((db, table)) => (db.to_owned(), table.to_owned()),
        None => (default_db.to_owned(), name.to_owned()),
    }
}

pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The databases the selection may touch: the default one and any named in `include`.
pub fn databases(default_db: &str, filter: &TableFilter) -> Vec<String> {
    let mut dbs = vec![default_db.to_owned()];
    for name in &filter.include {
        let (db, _) = parse_table_name(default_db, name);
        if !dbs.contains(&db) {
            dbs.push(db);
        }
    }
    dbs
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// What information_schema says of the databases a selection can reach.
struct Catalog {
    /// Base tables with their estimated row counts, in name order.
    tables: Vec<(String, String, Option<u64>)>,
    primary_keys: HashMap<(String, String), Vec<String>>,
    columns: BTreeMap<(String, String), Vec<(String, MyType)>>,
}

type ColumnRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

impl Catalog {
    async fn read(conn: &mut Conn, dbs: &[String], is_mariadb: bool) -> Result<Self, DriverError> {
        let params: Vec<mysql_async::Value> = dbs.iter().map(|d| d.as_str().into()).collect();
        let marks = placeholders(dbs.len());
        let tables: Vec<(String, String, Option<u64>)> = conn
            .exec(
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES \
                     WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ({marks}) \
                     ORDER BY TABLE_SCHEMA, TABLE_NAME"
                ),
                params.clone(),
            )
            .await
            .map_err(|e| my_error("listing tables", e))?;
        let keys: Vec<(String, String, String)> = conn
            .exec(
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                     WHERE CONSTRAINT_NAME = 'PRIMARY' AND TABLE_SCHEMA IN ({marks}) \
                     ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
                ),
                params.clone(),
            )
            .await
            .map_err(|e| my_error("listing primary keys", e))?;
        let columns: Vec<ColumnRow> = conn
            .exec(
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, \
                            DATETIME_PRECISION, CHARACTER_MAXIMUM_LENGTH \
                       FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN ({marks}) \
                      ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
                ),
                params.clone(),
            )
            .await
            .map_err(|e| my_error("listing columns", e))?;
        let json_columns = if is_mariadb {
            mariadb_json_columns(conn, &marks, params).await?
        } else {
            HashSet::new()
        };

        let mut primary_keys: HashMap<(String, String), Vec<String>> = HashMap::new();
        for (db, table, column) in keys {
            primary_keys.entry((db, table)).or_default().push(column);
        }
        let mut column_map: BTreeMap<(String, String), Vec<(String, MyType)>> = BTreeMap::new();
        for (db, table, column, data_type, column_type, charset, precision, max_len) in columns {
            let is_json = json_columns.contains(&(db.clone(), table.clone(), column.clone()));
            let ty = MyType::from_columns(
                &data_type,
                &column_type,
                charset.as_deref(),
                precision,
                max_len,
                is_json,
            );
            column_map
                .entry((db, table))
                .or_default()
                .push((column, ty));
        }
        Ok(Self {
            tables,
            primary_keys,
            columns: column_map,
        })
    }
}

/// MariaDB's JSON is LONGTEXT with a json_valid() check: the columns that have one.
async fn mariadb_json_columns(
    conn: &mut Conn,
    marks: &str,
    params: Vec<mysql_async::Value>,
) -> Result<HashSet<(String, String, String)>, DriverError> {
    let checks: Vec<(String, String, String)> = conn
        .exec(
            format!(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA IN ({marks})"
            ),
            params,
        )
        .await
        .map_err(|e| my_error("listing check constraints", e))?;
    Ok(checks
        .into_iter()
        .filter_map(|(db, table, clause)| {
            let column = clause
                .strip_prefix("json_valid(`")
                .and_then(|rest| rest.strip_suffix("`)"))?;
            Some((db, table, column.replace("``", "`")))
        })
        .collect())
}

/// Loads the tables the filter can reach and applies it; every problem at once.
pub async fn select_tables(
    conn: &mut Conn,
    default_db: &str,
    filter: &TableFilter,
    is_mariadb: bool,
) -> Result<Selection<MyTable>, DriverError> {
    let dbs = databases(default_db, filter);
    let mut catalog = Catalog::read(conn, &dbs, is_mariadb).await?;
    let included: Vec<(String, String)> = filter
        .include
        .iter()
        .map(|n| parse_table_name(default_db, n))
        .collect();
    let excluded: Vec<(String, String)> = filter
        .exclude
        .iter()
        .map(|n| parse_table_name(default_db, n))
        .collect();
    let mut problems = missing_includes(&catalog, default_db, &included);
    let mut selection = Selection::default();
    for (db, table, rows) in std::mem::take(&mut catalog.tables) {
        let key = (db.clone(), table.clone());
        let named = included.contains(&key);
        if (default_db != db && !named)
            || excluded.contains(&key)
            || (!included.is_empty() && !named)
        {
            continue;
        }
        let id = table_id(default_db, &db, &table);
        let Some(primary_key) = catalog.primary_keys.get(&key) else {
            let reason = format!(
                "has no primary key: add one (ALTER TABLE {}.{} ADD PRIMARY KEY (...)) or exclude the table",
                quote(&db),
                quote(&table)
            );
            if named {
                problems.push(format!("table {id} named in tables.include {reason}"));
            } else {
                selection.skipped.push((id, reason));
            }
            continue;
        };
        let cols = catalog.columns.remove(&key).unwrap_or_default();
        selection
            .tables
            .push(build_table(id, db, table, cols, primary_key, rows)?);
    }
    if !problems.is_empty() {
        return Err(DriverError::Misconfigured(problems.join("; ")));
    }
    Ok(selection)
}

/// A problem for each table `tables.include` names that is not a base table here.
fn missing_includes(
    catalog: &Catalog,
    default_db: &str,
    included: &[(String, String)],
) -> Vec<String> {
    let names: Vec<String> = catalog
        .tables
        .iter()
        .map(|(d, t, _)| table_id(default_db, d, t).to_string())
        .collect();
    included
        .iter()
        .filter(|(db, table)| !catalog.tables.iter().any(|(d, t, _)| d == db && t == table))
        .map(|(db, table)| {
            let name = table_id(default_db, db, table).to_string();
            format!(
                "tables.include names {name}, which does not exist (or is not a base table){}",
                etcd_sync_api::did_you_mean(&name, names.iter().map(String::as_str))
            )
        })
        .collect()
}

fn build_table(
    id: TableId,
    database: String,
    name: String,
    columns: Vec<(String, MyType)>,
    primary_key: &[String],
    estimated_rows: Option<u64>,
) -> Result<MyTable, DriverError> {
    let key = primary_key
        .iter()
        .map(|k| {
            columns.iter().position(|(c, _)| c == k).ok_or_else(|| {
                DriverError::Protocol(format!(
                    "primary-key column {k} of {id} is not among its columns"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MyTable {
        database,
        name,
        schema: Arc::new(TableSchema {
            id,
            columns: columns
                .iter()
                .map(|(name, ty)| Column {
                    name: name.clone(),
                    type_name: format!("{ty:?}"),
                })
                .collect(),
            key,
        }),
        types: columns.into_iter().map(|(_, ty)| ty).collect(),
        estimated_rows,
    })
}
