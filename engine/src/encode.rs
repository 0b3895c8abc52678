//! Keys and values: the contract consumers read. Both phases and both drivers go through these
//! functions, which is what makes a dumped and a streamed row byte-identical.

use std::collections::HashMap;

use base64::Engine as _;
use etcd_sync_api::{TableId, TableSchema, Value};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error(
        "table {table}: column {column} is unchanged and no previous row is known to take it from"
    )]
    UnchangedWithoutBase { table: TableId, column: String },
    #[error(
        "table {table}: column {column}, which its `where` filter reads, was sent unchanged \
         (a TOASTed value PostgreSQL leaves out of an UPDATE); set REPLICA IDENTITY FULL on the \
         table so that the old row carries it"
    )]
    UnchangedInFilter { table: TableId, column: String },
    #[error("table {table}: key column {column} is NULL")]
    NullKey { table: TableId, column: String },
    #[error("table {table}: a row has {got} values for {want} columns")]
    Arity {
        table: TableId,
        got: usize,
        want: usize,
    },
}

/// Percent-encodes `%` and `/`, the two characters that would make a key segment ambiguous.
pub fn escape_segment(segment: &str, out: &mut String) {
    let mut start = 0;
    for (i, byte) in segment.bytes().enumerate() {
        let escaped = match byte {
            b'%' => "%25",
            b'/' => "%2F",
            _ => continue,
        };
        // `byte` is ASCII, so `i` is a character boundary.
        out.push_str(&segment[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&segment[start..]);
}

/// The table's segment of its keys: `schema.table` or `table`, escaped.
fn push_table_segment(table: &TableId, out: &mut String) {
    if let Some(schema) = &table.schema {
        escape_segment(schema, out);
        out.push('.');
    }
    escape_segment(&table.name, out);
}

/// `<prefix>/<table>/`: every key of the table starts with it.
pub fn table_prefix(prefix: &str, table: &TableId) -> String {
    let mut out = String::with_capacity(prefix.len() + table.name.len() + 2);
    push_table_prefix(prefix, table, &mut out);
    out
}

fn push_table_prefix(prefix: &str, table: &TableId, out: &mut String) {
    out.push_str(prefix);
    out.push('/');
    push_table_segment(table, out);
    out.push('/');
}

/// [`table_prefix`] for a table named as it is printed (`table` or `schema.table`).
pub fn table_name_prefix(prefix: &str, table: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + table.len() + 2);
    out.push_str(prefix);
    out.push('/');
    escape_segment(table, &mut out);
    out.push('/');
    out
}

/// `<prefix>/<table>/<pk>[/<pk2>...]`. Built in one buffer: the dump makes one per row.
pub fn row_key(prefix: &str, table: &TableSchema, row: &[Value]) -> Result<String, EncodeError> {
    let mut key = String::with_capacity(prefix.len() + table.id.name.len() + 24 * table.key.len());
    push_table_prefix(prefix, &table.id, &mut key);
    for (n, &index) in table.key.iter().enumerate() {
        if n > 0 {
            key.push('/');
        }
        let value = &row[index];
        if matches!(value, Value::Null | Value::Unchanged) {
            return Err(EncodeError::NullKey {
                table: table.id.clone(),
                column: table.columns[index].name.clone(),
            });
        }
        push_key_text(value, &mut key);
    }
    Ok(key)
}

/// A key value's canonical text, escaped.
fn push_key_text(value: &Value, out: &mut String) {
    match value {
        Value::Text(s) | Value::Number(s) | Value::Json(s) | Value::ZeroDate(s) => {
            escape_segment(s, out)
        }
        // Digits, a sign, `true` or `false`: nothing to escape, nothing to allocate.
        Value::Int(_) | Value::UInt(_) | Value::Bool(_) => write_value(value, out),
        other => escape_segment(&key_text(other), out),
    }
}

/// A key value's canonical text: strings as they are, everything else as in its JSON form.
fn key_text(value: &Value) -> String {
    match value {
        Value::Text(s) | Value::Number(s) | Value::Json(s) | Value::ZeroDate(s) => s.clone(),
        Value::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b),
        other => {
            let mut out = String::new();
            write_value(other, &mut out);
            // A value whose JSON form is a string (a float's "NaN") goes in without quotes.
            match serde_json::from_str::<String>(&out) {
                Ok(unquoted) => unquoted,
                Err(_) => out,
            }
        }
    }
}

/// Encodes a row as a compact JSON object in column order. Columns the source left out
/// ([`Value::Unchanged`]) are taken, byte for byte, from `base`: the row's previous JSON.
pub fn encode_row(
    table: &TableSchema,
    row: &[Value],
    base: Option<&str>,
) -> Result<String, EncodeError> {
    let all: Vec<usize> = (0..table.columns.len()).collect();
    encode_columns(table, row, &all, base)
}

/// [`encode_row`] of the columns at `columns` (indices in table order) only.
pub fn encode_columns(
    table: &TableSchema,
    row: &[Value],
    columns: &[usize],
    base: Option<&str>,
) -> Result<String, EncodeError> {
    if row.len() != table.columns.len() {
        return Err(EncodeError::Arity {
            table: table.id.clone(),
            got: row.len(),
            want: table.columns.len(),
        });
    }
    let previous: Option<HashMap<String, &RawValue>> =
        base.and_then(|text| serde_json::from_str(text).ok());
    let mut out = String::with_capacity(encoded_len_hint(table, row, columns));
    out.push('{');
    for (i, &index) in columns.iter().enumerate() {
        let (column, value) = (&table.columns[index], &row[index]);
        if i > 0 {
            out.push(',');
        }
        write_string(&column.name, &mut out);
        out.push(':');
        if let Value::Unchanged = value {
            let raw = previous
                .as_ref()
                .and_then(|p| p.get(&column.name))
                .ok_or_else(|| EncodeError::UnchangedWithoutBase {
                    table: table.id.clone(),
                    column: column.name.clone(),
                })?;
            out.push_str(raw.get());
        } else {
            write_value(value, &mut out);
        }
    }
    out.push('}');
    Ok(out)
}

/// A raw value: column `column` as text (bytes as they are), or `None` for NULL (no key).
/// An unchanged value is the key's current value, `base`.
pub fn raw_value(
    table: &TableSchema,
    row: &[Value],
    column: usize,
    base: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, EncodeError> {
    if row.len() != table.columns.len() {
        return Err(EncodeError::Arity {
            table: table.id.clone(),
            got: row.len(),
            want: table.columns.len(),
        });
    }
    Ok(match &row[column] {
        Value::Null => None,
        Value::Unchanged => Some(
            base.ok_or_else(|| EncodeError::UnchangedWithoutBase {
                table: table.id.clone(),
                column: table.columns[column].name.clone(),
            })?
            .to_vec(),
        ),
        Value::Bytes(b) => Some(b.clone()),
        Value::Text(s) | Value::Number(s) | Value::Json(s) | Value::ZeroDate(s) => {
            Some(s.clone().into_bytes())
        }
        other => Some(key_text(other).into_bytes()),
    })
}

/// About the length of the row's JSON, so that its buffer is allocated once.
fn encoded_len_hint(table: &TableSchema, row: &[Value], columns: &[usize]) -> usize {
    columns
        .iter()
        .map(|&i| {
            let value = match &row[i] {
                Value::Text(s) => s.len() + 8,
                Value::Number(s) | Value::Json(s) => s.len(),
                Value::Bytes(b) => b.len() / 3 * 4 + 6,
                Value::Array(items) => 24 * items.len() + 2,
                _ => 24,
            };
            table.columns[i].name.len() + 4 + value
        })
        .sum::<usize>()
        + 2
}

/// Whether a row needs its previous version to be encoded.
pub fn has_unchanged(row: &[Value]) -> bool {
    row.iter().any(|v| matches!(v, Value::Unchanged))
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Unchanged | Value::ZeroDate(_) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        Value::UInt(u) => out.push_str(itoa::Buffer::new().format(*u)),
        Value::Float(f) => {
            if f.is_nan() {
                out.push_str("\"NaN\"");
            } else if f.is_infinite() {
                out.push_str(if *f > 0.0 {
                    "\"Infinity\""
                } else {
                    "\"-Infinity\""
                });
            } else {
                // serde_json prints the shortest text that reads back as the same f64.
                out.push_str(
                    &serde_json::Number::from_f64(*f)
                        .map_or_else(|| "null".into(), |n| n.to_string()),
                );
            }
        }
        Value::Number(n) => out.push_str(n),
        Value::Text(s) => write_string(s, out),
        Value::Bytes(b) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        Value::Json(j) => out.push_str(j),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
    }
}

/// A JSON string, escaped exactly as serde_json escapes it (a test checks every ASCII
/// character), without the String serde_json allocates per call (one per column name and one
/// per text value, in every row).
fn write_string(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs escaping: most text has nothing to escape.
        if let Some(word) = bytes[i..].first_chunk::<8>() {
            if !any_byte_needs_escape(u64::from_ne_bytes(*word)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let byte = bytes[i];
            i += 1;
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // `byte` is ASCII, so both ends are character boundaries.
            out.push_str(&s[start..i - 1]);
            if escape.is_empty() {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            } else {
                out.push_str(escape);
            }
            start = i;
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes in `word` is a control character, `"` or `\` (the
/// zero-byte test of "Bit Twiddling Hacks", exact for the word as a whole; bytes of UTF-8
/// sequences, 0x80 and above, never match).
fn any_byte_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_sync_api::Column;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend(
            [
                "",
                "plain",
                "a\"b\\c\u{1}\u{7f}é\u{2028}😀\n",
                "\u{1f}x\u{0}",
            ]
            .map(String::from),
        );
        for sample in samples {
            let mut ours = String::new();
            write_string(&sample, &mut ours);
            assert_eq!(ours, serde_json::to_string(&sample).unwrap(), "{sample:?}");
        }
    }

    /// Every character that needs escaping, at every offset of strings long enough to take the
    /// eight-byte path, beside multi-byte characters.
    #[test]
    fn long_strings_are_escaped_at_every_offset() {
        let specials = ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '\u{7f}', 'é', '😀'];
        for special in specials {
            for len in 0..40 {
                for at in 0..len {
                    let sample: String = (0..len)
                        .map(|i| if i == at { special } else { 'a' })
                        .collect();
                    let mut ours = String::new();
                    write_string(&sample, &mut ours);
                    assert_eq!(ours, serde_json::to_string(&sample).unwrap(), "{sample:?}");
                }
            }
        }
    }

    #[test]
    fn any_byte_needs_escape_matches_each_byte() {
        for byte in 0u8..=255 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = byte;
                let want = byte < 0x20 || byte == b'"' || byte == b'\\';
                assert_eq!(
                    any_byte_needs_escape(u64::from_ne_bytes(word)),
                    want,
                    "{byte:#x} at {at}"
                );
            }
        }
    }

    fn table(columns: &[&str], key: Vec<usize>) -> TableSchema {
        TableSchema {
            id: TableId {
                schema: None,
                name: "t".into(),
            },
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    type_name: "text".into(),
                })
                .collect(),
            key,
        }
    }

    #[test]
    fn keys_escape_percent_and_slash() {
        let t = table(&["a", "b"], vec![0, 1]);
        let row = vec![Value::Text("x/y%z".into()), Value::Number("3".into())];
        assert_eq!(row_key("/sync", &t, &row).unwrap(), "/sync/t/x%2Fy%25z/3");
        let schema_table = TableId {
            schema: Some("billing".into()),
            name: "in/voices".into(),
        };
        assert_eq!(table_prefix("/p", &schema_table), "/p/billing.in%2Fvoices/");
        let t = TableSchema {
            id: schema_table,
            ..table(&["a", "b"], vec![0, 1])
        };
        let row = vec![Value::Int(-7), Value::UInt(u64::MAX)];
        assert_eq!(
            row_key("/p", &t, &row).unwrap(),
            "/p/billing.in%2Fvoices/-7/18446744073709551615"
        );
    }

    /// The README's contract: a key segment is the JSON form without quotes.
    #[test]
    fn key_segments_are_unquoted() {
        let t = table(&["b", "f", "z", "d"], vec![0, 1, 2, 3]);
        let row = vec![
            Value::Bytes(vec![0, 0xff]),
            Value::Float(f64::NAN),
            Value::ZeroDate("0000-00-00".into()),
            Value::Bool(true),
        ];
        assert_eq!(
            row_key("/p", &t, &row).unwrap(),
            "/p/t/AP8=/NaN/0000-00-00/true"
        );
        assert_eq!(
            encode_row(&t, &row, None).unwrap(),
            r#"{"b":"AP8=","f":"NaN","z":null,"d":true}"#
        );
    }

    #[test]
    fn null_key_is_an_error() {
        let t = table(&["a"], vec![0]);
        assert!(matches!(
            row_key("/p", &t, &[Value::Null]),
            Err(EncodeError::NullKey { .. })
        ));
    }

    #[test]
    fn values_map_to_json() {
        let t = table(
            &["i", "u", "f", "nan", "n", "s", "b", "j", "a", "z", "t"],
            vec![0],
        );
        let row = vec![
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Float(0.1),
            Value::Float(f64::NAN),
            Value::Number("1e+30".into()),
            Value::Text("q\"\n".into()),
            Value::Bytes(vec![0, 1, 255]),
            Value::Json("{\"k\":[1,2]}".into()),
            Value::Array(vec![Value::Null, Value::Text("x".into())]),
            Value::Null,
            Value::Bool(true),
        ];
        assert_eq!(
            encode_row(&t, &row, None).unwrap(),
            r#"{"i":-5,"u":18446744073709551615,"f":0.1,"nan":"NaN","n":1e+30,"s":"q\"\n","b":"AAH/","j":{"k":[1,2]},"a":[null,"x"],"z":null,"t":true}"#
        );
    }

    #[test]
    fn unchanged_columns_come_from_the_previous_row_verbatim() {
        let t = table(&["id", "big", "small"], vec![0]);
        let row = vec![
            Value::Number("1".into()),
            Value::Unchanged,
            Value::Text("new".into()),
        ];
        let base = r#"{"id":1,"big":{"deep":[1.50,"x"]},"small":"old"}"#;
        assert_eq!(
            encode_row(&t, &row, Some(base)).unwrap(),
            r#"{"id":1,"big":{"deep":[1.50,"x"]},"small":"new"}"#
        );
        assert!(matches!(
            encode_row(&t, &row, None),
            Err(EncodeError::UnchangedWithoutBase { .. })
        ));
    }
}
