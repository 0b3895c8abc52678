//! What of a table reaches etcd: its per-table options (`tables.options` in the config) and
//! the [`RowShape`] they make of a table's rows. Every write of a row, dumped or streamed, and
//! `verify` and `preview`, go through [`RowShape::value`].

pub use etcd_sync_api::filter;

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_sync_api::{did_you_mean, TableId, TableSchema, Value};
use serde::{Deserialize, Serialize};

use crate::encode::{encode_columns, raw_value, row_key, EncodeError};
use filter::Expr;

/// Which columns a table's values hold (key columns always): `include` or `exclude`, one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// What a key's value is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValue {
    /// The column whose text (bytes as they are for binary columns) is the value.
    pub column: String,
}

/// One table's options, as the config gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Columns>,
    /// Rows the filter does not keep are not in etcd.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<RawValue>,
}

impl TableOptions {
    /// Problems found without the table's columns (every one, for the config's report), each
    /// prefixed with `field`.
    pub fn problems(&self, field: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(text) = &self.filter {
            if let Err(e) = filter::parse(text) {
                problems.push(format!("{field}.where: {e}"));
            }
        }
        match &self.columns {
            Some(Columns {
                include: Some(_),
                exclude: Some(_),
            }) => problems.push(format!(
                "{field}.columns: give include or exclude, not both"
            )),
            Some(Columns {
                include: None,
                exclude: None,
            }) => problems.push(format!("{field}.columns: give include or exclude")),
            Some(Columns {
                include: Some(names),
                ..
            }) if names.is_empty() => problems.push(format!(
                "{field}.columns.include: empty (list the columns to keep; key columns are always kept)"
            )),
            _ => {}
        }
        if self.value.is_some() && self.columns.is_some() {
            problems.push(format!(
                "{field}: value.column and columns exclude each other (a raw value is one column)"
            ));
        }
        problems
    }

    /// What a driver may leave to the server (None: nothing to leave).
    pub fn pushdown(&self) -> Option<etcd_sync_api::Pushdown> {
        let filter = self.filter.as_deref().and_then(|f| filter::parse(f).ok());
        let needed = filter
            .as_ref()
            .map(|f| f.columns().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        let columns = self.columns.clone().unwrap_or_default();
        let include = match &self.value {
            Some(raw) => Some(vec![raw.column.clone()]),
            None => columns.include,
        };
        let pushdown = etcd_sync_api::Pushdown {
            include,
            exclude: columns.exclude.unwrap_or_default(),
            needed,
            filter,
        };
        (pushdown != etcd_sync_api::Pushdown::default()).then_some(pushdown)
    }

    /// A stable text of the options: a different one at start-up means the table's keys must be
    /// written again.
    pub fn fingerprint(&self) -> String {
        if *self == TableOptions::default() {
            return String::new();
        }
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the engine does with the keys of a table no longer selected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRemove {
    #[default]
    Delete,
    Keep,
}

/// Options per table, by the table's name as `include` writes it (`users`, `billing.invoices`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tables: BTreeMap<String, TableOptions>,
    pub on_remove: OnRemove,
}

impl Options {
    pub fn for_table(&self, table: &TableId) -> Option<&TableOptions> {
        self.tables.get(&table.to_string())
    }

    /// Options naming a table that is not selected: a typo, most likely.
    pub fn unknown_tables(&self, selected: &[Arc<TableSchema>]) -> Vec<String> {
        let names: Vec<String> = selected.iter().map(|t| t.id.to_string()).collect();
        self.tables
            .keys()
            .filter(|name| !names.contains(name))
            .map(|name| {
                format!(
                    "tables.options.{name}: no such table is selected{}",
                    did_you_mean(name, names.iter().map(String::as_str))
                )
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapeError {
    #[error("tables.options.{table}.{field}: table {table} has no column {column}{hint}")]
    NoSuchColumn {
        table: TableId,
        field: &'static str,
        column: String,
        hint: String,
    },
    #[error("tables.options.{table}.where: {message}")]
    Filter { table: TableId, message: String },
}

/// A table's rows as its options shape them.
#[derive(Debug, Clone)]
pub struct RowShape {
    pub schema: Arc<TableSchema>,
    /// Columns the JSON value holds, in table order.
    pub kept: Vec<usize>,
    pub filter: Option<Expr<usize>>,
    /// The raw value's column.
    pub value_column: Option<usize>,
}

impl RowShape {
    /// The shape of `schema` under `options`. `strict`: every named column must exist (at
    /// start-up); otherwise (a schema changed in the stream) excluded columns may be gone.
    pub fn new(
        schema: &Arc<TableSchema>,
        options: Option<&TableOptions>,
        strict: bool,
    ) -> Result<RowShape, ShapeError> {
        let default = TableOptions::default();
        let options = options.unwrap_or(&default);
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let find = |field: &'static str, column: &str| {
            names
                .iter()
                .position(|n| *n == column)
                .ok_or_else(|| ShapeError::NoSuchColumn {
                    table: schema.id.clone(),
                    field,
                    column: column.to_owned(),
                    hint: did_you_mean(column, names.iter().copied()),
                })
        };
        let columns = options.columns.clone().unwrap_or_default();
        let kept: Vec<usize> = match (&columns.include, &columns.exclude) {
            (None, None) => (0..names.len()).collect(),
            (Some(include), _) => {
                let mut wanted: Vec<usize> = schema.key.clone();
                for column in include {
                    wanted.push(find("columns.include", column)?);
                }
                (0..names.len()).filter(|i| wanted.contains(i)).collect()
            }
            (None, Some(exclude)) => {
                let mut dropped = Vec::new();
                for column in exclude {
                    match find("columns.exclude", column) {
                        Ok(i) if !schema.key.contains(&i) => dropped.push(i),
                        Ok(_) => {}
                        Err(e) if strict => return Err(e),
                        Err(_) => {}
                    }
                }
                (0..names.len()).filter(|i| !dropped.contains(i)).collect()
            }
        };
        let filter = match &options.filter {
            None => None,
            Some(text) => {
                let parsed = filter::parse(text).map_err(|e| ShapeError::Filter {
                    table: schema.id.clone(),
                    message: e.to_string(),
                })?;
                Some(parsed.resolve(&mut |column: &str| find("where", column))?)
            }
        };
        let value_column = match &options.value {
            None => None,
            Some(raw) => Some(find("value.column", &raw.column)?),
        };
        Ok(RowShape {
            schema: Arc::clone(schema),
            kept,
            filter,
            value_column,
        })
    }

    /// Whether values are raw (a column's bytes) rather than JSON.
    pub fn is_raw(&self) -> bool {
        self.value_column.is_some()
    }

    /// The columns a filter reads, for rows whose values the source may leave out.
    pub fn filter_columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(filter) = &self.filter {
            filter.visit_columns(&mut |c: &usize| out.push(*c));
        }
        out
    }

    pub fn key(&self, prefix: &str, row: &[Value]) -> Result<String, EncodeError> {
        row_key(prefix, &self.schema, row)
    }

    /// The value the row's key holds, or `None` when the key must not exist (the filter does
    /// not keep the row, or a raw value is NULL). `base` is the key's current value, for
    /// columns the source sent as unchanged.
    pub fn value(
        &self,
        row: &[Value],
        base: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, EncodeError> {
        if let Some(filter) = &self.filter {
            if let Some(&column) = self
                .filter_columns()
                .iter()
                .find(|&&c| matches!(row.get(c), Some(Value::Unchanged)))
            {
                return Err(EncodeError::UnchangedInFilter {
                    table: self.schema.id.clone(),
                    column: self.schema.columns[column].name.clone(),
                });
            }
            if !filter.keeps(row) {
                return Ok(None);
            }
        }
        match self.value_column {
            Some(column) => raw_value(&self.schema, row, column, base),
            None => {
                let base = base.and_then(|b| std::str::from_utf8(b).ok());
                encode_columns(&self.schema, row, &self.kept, base).map(|v| Some(v.into_bytes()))
            }
        }
    }
}

/// Shapes by table, rebuilt when a table's schema changes in the stream.
#[derive(Debug, Clone, Default)]
pub struct Shapes {
    options: Arc<Options>,
    by_table: std::collections::HashMap<TableId, Arc<RowShape>>,
    /// The last shape asked for: a stream's changes mostly come table by table, and this
    /// spares hashing the table's name for each of them.
    last: Option<Arc<RowShape>>,
}

impl Shapes {
    pub fn new(options: Arc<Options>) -> Self {
        Self {
            options,
            by_table: Default::default(),
            last: None,
        }
    }

    /// The shape of rows of `schema` (the same table may come with a new schema mid-stream).
    pub fn get(&mut self, schema: &Arc<TableSchema>) -> Result<Arc<RowShape>, ShapeError> {
        if let Some(last) = &self.last {
            if Arc::ptr_eq(&last.schema, schema) {
                return Ok(Arc::clone(last));
            }
        }
        if let Some(shape) = self.by_table.get(&schema.id) {
            if Arc::ptr_eq(&shape.schema, schema) || *shape.schema == **schema {
                self.last = Some(Arc::clone(shape));
                return Ok(Arc::clone(shape));
            }
        }
        // Names were checked against the catalog at start-up; a stream's schema may lack the
        // columns a server-side column list leaves out.
        let shape = Arc::new(RowShape::new(
            schema,
            self.options.for_table(&schema.id),
            false,
        )?);
        self.by_table.insert(schema.id.clone(), Arc::clone(&shape));
        self.last = Some(Arc::clone(&shape));
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_sync_api::Column;

    fn users() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            id: TableId {
                schema: None,
                name: "users".into(),
            },
            columns: ["id", "email", "password_hash", "active", "tenant_id"]
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    type_name: "text".into(),
                })
                .collect(),
            key: vec![0],
        })
    }

    fn options(yaml: &str) -> TableOptions {
        serde_json::from_str(yaml).unwrap()
    }

    fn row(active: bool, tenant: i64) -> Vec<Value> {
        vec![
            Value::Int(1),
            Value::Text("a@b".into()),
            Value::Text("x".into()),
            Value::Bool(active),
            Value::Int(tenant),
        ]
    }

    #[test]
    fn excluded_columns_are_left_out_and_the_key_kept() {
        let o = options(r#"{"columns": {"exclude": ["password_hash", "email", "id"]}}"#);
        let shape = RowShape::new(&users(), Some(&o), true).unwrap();
        let value = shape.value(&row(true, 7), None).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"id":1,"active":true,"tenant_id":7}"#
        );
        let o = options(r#"{"columns": {"include": ["tenant_id"]}}"#);
        let shape = RowShape::new(&users(), Some(&o), true).unwrap();
        let value = shape.value(&row(true, 7), None).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"id":1,"tenant_id":7}"#
        );
    }

    #[test]
    fn filtered_out_rows_have_no_value() {
        let o = options(r#"{"where": "active AND tenant_id = 7"}"#);
        let shape = RowShape::new(&users(), Some(&o), true).unwrap();
        assert!(shape.value(&row(true, 7), None).unwrap().is_some());
        assert_eq!(shape.value(&row(false, 7), None).unwrap(), None);
        let mut unchanged = row(true, 7);
        unchanged[3] = Value::Unchanged;
        assert!(matches!(
            shape.value(&unchanged, None),
            Err(EncodeError::UnchangedInFilter { .. })
        ));
    }

    #[test]
    fn raw_values_are_the_column_itself() {
        let o = options(r#"{"value": {"column": "email"}}"#);
        let shape = RowShape::new(&users(), Some(&o), true).unwrap();
        assert_eq!(shape.value(&row(true, 7), None).unwrap().unwrap(), b"a@b");
        let mut r = row(true, 7);
        r[1] = Value::Bytes(vec![0, 255, 10]);
        assert_eq!(shape.value(&r, None).unwrap().unwrap(), vec![0, 255, 10]);
        r[1] = Value::Null;
        assert_eq!(shape.value(&r, None).unwrap(), None);
        r[1] = Value::Unchanged;
        assert_eq!(shape.value(&r, Some(b"old")).unwrap().unwrap(), b"old");
        r[1] = Value::Int(-3);
        assert_eq!(shape.value(&r, None).unwrap().unwrap(), b"-3");
    }

    #[test]
    fn unknown_columns_are_named_with_a_suggestion() {
        let o = options(r#"{"columns": {"exclude": ["pasword_hash"]}, "where": "x = 1"}"#);
        let err = RowShape::new(&users(), Some(&o), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tables.options.users.columns.exclude: table users has no column pasword_hash; did you mean password_hash?"
        );
        // Mid-stream, a dropped excluded column is no error.
        let o = options(r#"{"columns": {"exclude": ["gone"]}}"#);
        assert!(RowShape::new(&users(), Some(&o), false).is_ok());
        let o = options(r#"{"where": "tenant = 1"}"#);
        let err = RowShape::new(&users(), Some(&o), true).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("tables.options.users.where: table users has no column tenant"),
            "{err}"
        );
    }

    #[test]
    fn config_problems_are_all_reported() {
        let o = options(
            r#"{"columns": {"include": []}, "where": "a LIKE 'b'", "value": {"column": "v"}}"#,
        );
        let problems = o.problems("tables.options.t");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("tables.options.t.where: LIKE is not supported"));
    }

    #[test]
    fn fingerprints_change_with_the_options() {
        assert_eq!(TableOptions::default().fingerprint(), "");
        let a = options(r#"{"where": "a = 1"}"#);
        let b = options(r#"{"where": "a = 2"}"#);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
