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
        Images {
            layout: self,
            table,
            data: ParseBuf(rows.rows_data()),
            before: rows.columns_before_image().map(|c| c.count_ones()),
            after: rows.columns_after_image().map(|c| c.count_ones()),
            shared_image: matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)),
        }
    }
}

/// The row images of one rows event, in order.
pub struct Images<'a> {
    layout: &'a Layout,
    table: &'a MyTable,
    data: ParseBuf<'a>,
    /// Columns in each row's before and after image, for the events that have one.
    before: Option<usize>,
    after: Option<usize>,
    /// A partial update: the after image starts with its value options.
    shared_image: bool,
}

impl Iterator for Images<'_> {
    type Item = Result<(Option<Row>, Option<Row>), DriverError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let pair = (|| {
            let before = match self.before {
                Some(present) => Some(self.image(present, false)?),
                None => None,
            };
            let after = match self.after {
                Some(present) => Some(self.image(present, self.shared_image)?),
                None => None,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use etcd_sync_api::{Column, TableId, TableSchema};
    use mysql_async::binlog::events::{
        DeleteRowsEvent, PartialUpdateRowsEvent, UpdateRowsEvent, WriteRowsEvent,
    };
    use mysql_async::binlog::row::BinlogRow;
    use mysql_async::binlog::BinlogVersion;
    use mysql_common::binlog::events::FormatDescriptionEvent;
    use mysql_common::binlog::BinlogCtx;
    use mysql_common::proto::MyDeserialize;

    use super::*;
    use crate::types::{Charset, MyType};

    const LONG: u8 = 3;
    const DOUBLE: u8 = 5;
    const LONGLONG: u8 = 8;
    const VARCHAR: u8 = 15;
    const JSON: u8 = 245;

    /// A table map event's body: `columns` as (type, metadata), `optional` metadata after.
    fn table_map(columns: &[(u8, &[u8])], optional: &[u8]) -> Vec<u8> {
        let mut b = vec![7, 0, 0, 0, 0, 0, 0, 0];
        b.extend([1, b'd', 0, 1, b't', 0, columns.len() as u8]);
        b.extend(columns.iter().map(|(ty, _)| *ty));
        let meta: Vec<u8> = columns
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        b.push(meta.len() as u8);
        b.extend(meta);
        b.extend(vec![0xff; columns.len().div_ceil(8)]);
        b.extend(optional);
        b
    }

    /// A rows event's body with every column in its images, then `rows`.
    fn rows_event(columns: usize, images: usize, rows: &[u8]) -> Vec<u8> {
        let mut b = vec![7, 0, 0, 0, 0, 0, 0, 0, 2, 0, columns as u8];
        for _ in 0..images {
            b.extend(vec![0xff; columns.div_ceil(8)]);
        }
        b.extend(rows);
        b
    }

    fn parse<'a, T: MyDeserialize<'a, Ctx = BinlogCtx<'a>>>(
        bytes: &'a [u8],
        fde: &'a FormatDescriptionEvent<'a>,
        event_type: u8,
    ) -> T {
        ParseBuf(bytes)
            .parse(BinlogCtx::new(bytes.len(), fde, event_type))
            .unwrap()
    }

    fn my_table(types: Vec<MyType>) -> MyTable {
        let columns = (0..types.len())
            .map(|i| Column {
                name: format!("c{i}"),
                type_name: String::new(),
            })
            .collect();
        MyTable {
            database: "d".into(),
            name: "t".into(),
            schema: Arc::new(TableSchema {
                id: TableId {
                    schema: None,
                    name: "t".into(),
                },
                columns,
                key: vec![0],
            }),
            types,
            estimated_rows: None,
        }
    }

    /// What `mysql_common`'s own row iterator and the same conversion give: the oracle.
    fn oracle(table: &MyTable, row: Option<BinlogRow>) -> Option<Row> {
        row.map(|row| {
            row.unwrap()
                .into_iter()
                .zip(&table.types)
                .map(|(value, ty)| match value {
                    BinlogValue::Value(v) => ty.binlog_value(v).unwrap(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        })
    }

    fn one_row(values: &[&[u8]], nulls: u8) -> Vec<u8> {
        let mut b = vec![nulls];
        for v in values {
            b.extend(*v);
        }
        b
    }

    #[test]
    fn images_decode_as_mysql_common_decodes_them() {
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        // int, bigint unsigned (the optional metadata's signedness), varchar(20), double, a
        // nullable int; numeric columns' signedness bits, most significant first.
        let columns: &[(u8, &[u8])] = &[
            (LONG, &[]),
            (LONGLONG, &[]),
            (VARCHAR, &[80, 0]),
            (DOUBLE, &[8]),
            (LONG, &[]),
        ];
        let tme_bytes = table_map(columns, &[1, 1, 0b0100_0000]);
        let tme: TableMapEvent<'_> = parse(&tme_bytes, &fde, 19);
        let table = my_table(vec![
            MyType::Int {
                unsigned: false,
                bits: 32,
            },
            MyType::Int {
                unsigned: true,
                bits: 64,
            },
            MyType::Text {
                charset: Charset::Utf8,
            },
            MyType::Double,
            MyType::Int {
                unsigned: false,
                bits: 32,
            },
        ]);
        let layout = Layout::of(&tme).unwrap();
        let text = "héllo".as_bytes();
        let mut varchar = vec![text.len() as u8];
        varchar.extend(text);
        let a = one_row(
            &[
                &(-5i32).to_le_bytes(),
                &u64::MAX.to_le_bytes(),
                &varchar,
                &1.5f64.to_le_bytes(),
                &7i32.to_le_bytes(),
            ],
            0,
        );
        let b = one_row(
            &[
                &i32::MIN.to_le_bytes(),
                &0u64.to_le_bytes(),
                &[0],
                &(-0.25f64).to_le_bytes(),
            ],
            0b1_0000,
        );
        let events: Vec<(u8, Vec<u8>)> = vec![
            (30, rows_event(5, 1, &[a.clone(), b.clone()].concat())),
            (31, rows_event(5, 2, &[a.clone(), b.clone()].concat())),
            (32, rows_event(5, 1, &b)),
        ];
        for (event_type, bytes) in &events {
            let rows = match event_type {
                30 => RowsEventData::WriteRowsEvent(parse::<WriteRowsEvent>(bytes, &fde, 30)),
                31 => RowsEventData::UpdateRowsEvent(parse::<UpdateRowsEvent>(bytes, &fde, 31)),
                _ => RowsEventData::DeleteRowsEvent(parse::<DeleteRowsEvent>(bytes, &fde, 32)),
            };
            let ours: Vec<_> = layout
                .rows(&table, &rows)
                .collect::<Result<_, _>>()
                .unwrap();
            let theirs: Vec<_> = rows
                .rows(&tme)
                .map(|pair| {
                    let (before, after) = pair.unwrap();
                    (oracle(&table, before), oracle(&table, after))
                })
                .collect();
            assert_eq!(ours, theirs, "event type {event_type}");
            assert!(!ours.is_empty());
        }
        let ours: Vec<_> = layout
            .rows(
                &table,
                &RowsEventData::WriteRowsEvent(parse(&events[0].1, &fde, 30)),
            )
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ours[1],
            (
                None,
                Some(vec![
                    Value::Int(i64::from(i32::MIN)),
                    Value::Int(0),
                    Value::Text(String::new()),
                    Value::Float(-0.25),
                    Value::Null,
                ])
            )
        );
    }

    #[test]
    fn partial_json_updates_are_refused_and_whole_ones_decoded() {
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        let tme_bytes = table_map(&[(LONG, &[]), (JSON, &[4])], &[]);
        let tme: TableMapEvent<'_> = parse(&tme_bytes, &fde, 19);
        let table = my_table(vec![
            MyType::Int {
                unsigned: false,
                bits: 32,
            },
            MyType::Json,
        ]);
        let layout = Layout::of(&tme).unwrap();
        // The JSON literal true: a 2-byte binary value.
        let json: &[u8] = &[2, 0, 0, 0, 4, 1];
        let before = one_row(&[&1i32.to_le_bytes(), json], 0);
        let image = |options: &[u8]| {
            let mut after = options.to_vec();
            after.extend(one_row(&[&1i32.to_le_bytes(), json], 0));
            rows_event(2, 2, &[before.clone(), after].concat())
        };
        // Value options 0: whole values.
        let whole = image(&[0]);
        let rows = RowsEventData::PartialUpdateRowsEvent(parse::<PartialUpdateRowsEvent>(
            &whole, &fde, 39,
        ));
        let decoded: Vec<_> = layout
            .rows(&table, &rows)
            .collect::<Result<_, _>>()
            .unwrap();
        let row = vec![Value::Int(1), json_value(serde_json::Value::Bool(true))];
        assert_eq!(decoded, vec![(Some(row.clone()), Some(row))]);
        // PARTIAL_JSON_UPDATES with the JSON column's bit set: a diff the agent cannot apply.
        let partial = image(&[1, 1]);
        let rows = RowsEventData::PartialUpdateRowsEvent(parse::<PartialUpdateRowsEvent>(
            &partial, &fde, 39,
        ));
        let refused = layout.rows(&table, &rows).next().unwrap();
        assert!(
            matches!(&refused, Err(DriverError::Misconfigured(m)) if m.contains("binlog_row_value_options")),
            "{refused:?}"
        );
    }
}
