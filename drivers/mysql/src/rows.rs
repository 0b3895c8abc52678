//! A rows event's row images, decoded straight into the engine's rows.
//!
//! `mysql_common`'s own row iterator builds, for every column of every row image, a `Column`
//! with copies of the schema, table and column names, and walks the table map's metadata from
//! its start for each column: half the agent's CPU in a catch-up of single-row transactions.
//! Here what a table map says of its columns is worked out once ([`Layout`]) and the values are
//! read with `mysql_common`'s own value decoder.

use std::io;

use etcd_sync_api::{DriverError, Row, Value};
use mysql_async::binlog::events::{OptionalMetaExtractor, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_common::io::ParseBuf;

use crate::schema::MyTable;
use crate::types::json_value;

/// `binlog_row_value_options` bit of a partial update's after image: JSON columns may hold diffs.
const PARTIAL_JSON_UPDATES: u64 = 1;

/// A table map's columns as the value decoder needs them.
#[derive(Debug)]
pub struct Layout {
    columns: Vec<ColumnLayout>,
    json_columns: usize,
}

#[derive(Debug)]
struct ColumnLayout {
    ty: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
}

impl Layout {
    pub fn of(tme: &TableMapEvent<'_>) -> io::Result<Self> {
        let optional = OptionalMetaExtractor::new(tme.iter_optional_meta())?;
        // Signedness comes with the optional metadata (binlog_row_metadata), one per numeric
        // column; without it integers decode as signed and the column's type reinterprets them.
        let mut signedness = optional.iter_signedness();
        let columns = (0..tme.columns_count() as usize)
            .map(|i| {
                let ty = match tme.get_column_type(i) {
                    Ok(Some(ty)) => ty,
                    Ok(None) => return Err(invalid(format!("column {i} has no type"))),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
                let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
                let unsigned = ty.is_numeric_type() && signedness.next().unwrap_or(false);
                Ok(ColumnLayout { ty, meta, unsigned })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            columns,
            json_columns: tme.json_column_count(),
        })
    }

    /// The (before, after) images of each row of `rows`, a table map of `table`.
    pub fn rows<'a>(&'a self, table: &'a MyTable, rows: &'a RowsEventData<'a>) -> Images<'a> {
        let present = |image: Option<usize>| image.unwrap_or(self.columns.len());
        Images {
            layout: self,
            table,
            data: ParseBuf(rows.rows_data()),
            before: rows.columns_before_image().is_some(),
            after: rows.columns_after_image().is_some(),
            shared_image: matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)),
            before_columns: present(rows.columns_before_image().map(|c| c.count_ones())),
            after_columns: present(rows.columns_after_image().map(|c| c.count_ones())),
        }
    }
}

/// The row images of one rows event, in order.
pub struct Images<'a> {
    layout: &'a Layout,
    table: &'a MyTable,
    data: ParseBuf<'a>,
    before: bool,
    after: bool,
    /// A partial update: the after image starts with its value options.
    shared_image: bool,
    before_columns: usize,
    after_columns: usize,
}

impl Iterator for Images<'_> {
    type Item = Result<(Option<Row>, Option<Row>), DriverError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let pair = (|| {
            let before = match self.before {
                true => Some(self.image(self.before_columns, false)?),
                false => None,
            };
            let after = match self.after {
                true => Some(self.image(self.after_columns, self.shared_image)?),
                false => None,
            };
            Ok((before, after))
        })();
        if pair.is_err() {
            // Nothing after a bad image can be read in step.
            self.data = ParseBuf(&[]);
        }
        Some(pair)
    }
}

impl Images<'_> {
    fn image(&mut self, present: usize, shared_image: bool) -> Result<Row, DriverError> {
        let id = &self.table.schema.id;
        let layout = self.layout;
        if shared_image {
            let options: mysql_common::misc::raw::int::RawInt<
                mysql_common::misc::raw::int::LenEnc,
            > = self.data.parse(()).map_err(|e| decode_error(id, e))?;
            if *options & PARTIAL_JSON_UPDATES != 0 {
                let partial: &[u8] = self
                    .data
                    .parse(layout.json_columns.div_ceil(8))
                    .map_err(|e| decode_error(id, e))?;
                if partial.iter().any(|&bits| bits != 0) {
                    return Err(DriverError::Misconfigured(format!(
                        "table {id}: the binary log holds partial JSON updates: set binlog_row_value_options = '' on the server"
                    )));
                }
            }
        }
        // binlog_row_image=FULL (the driver's check) puts every column in every image.
        if present != layout.columns.len() || present != self.table.types.len() {
            return Err(DriverError::Protocol(format!(
                "table {id}: a row has {present} values for {} columns",
                self.table.types.len()
            )));
        }
        let nulls: &[u8] = self
            .data
            .parse(present.div_ceil(8))
            .map_err(|e| decode_error(id, e))?;
        layout
            .columns
            .iter()
            .zip(&self.table.types)
            .enumerate()
            .map(|(i, (column, ty))| {
                if nulls[i / 8] & (1 << (i % 8)) != 0 {
                    return Ok(Value::Null);
                }
                let value: BinlogValue<'_> = self
                    .data
                    .parse((column.ty, column.meta.as_slice(), column.unsigned, false))
                    .map_err(|e| decode_error(id, e))?;
                match value {
                    BinlogValue::Value(v) => ty
                        .binlog_value(v)
                        .map_err(|e| DriverError::Protocol(format!("table {id}: {e}"))),
                    BinlogValue::Jsonb(j) => serde_json::Value::try_from(j)
                        .map(json_value)
                        .map_err(|e| DriverError::Protocol(format!("table {id}: JSON value: {e}"))),
                    BinlogValue::JsonDiff(_) => Err(DriverError::Protocol(format!(
                        "table {id}: a JSON diff outside a partial update"
                    ))),
                }
            })
            .collect()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn decode_error(table: &impl std::fmt::Display, e: io::Error) -> DriverError {
    DriverError::Protocol(format!("table {table}: decoding rows: {e}"))
}
