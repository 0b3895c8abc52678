//! MySQL column types and the two ways their values arrive: as SQL literals in mysqldump's
//! output, and as decoded binary-log values. Both land in the same [`Value`] for the same row.
//!
//! The mapping is under 500 lines; the rest is its unit tests.

use etcd_sync_api::json::canonical_json;
use etcd_sync_api::Value;
use mysql_async::Value as MyValue;

/// How a column maps to JSON, from `information_schema.COLUMNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MyType {
    /// `bits`: the column's width, to undo a decoder's wrong guess at signedness.
    Int {
        unsigned: bool,
        bits: u32,
    },
    Decimal,
    Float,
    Double,
    Date,
    Time {
        fsp: usize,
    },
    Datetime {
        fsp: usize,
    },
    Timestamp {
        fsp: usize,
    },
    Year,
    /// CHAR: trailing spaces are not part of the value (MySQL strips them on read).
    Char {
        charset: Charset,
    },
    Text {
        charset: Charset,
    },
    /// BINARY(n): right-padded with zero bytes to `len`.
    Binary {
        len: usize,
    },
    Bytes,
    Enum(Vec<String>),
    Set(Vec<String>),
    Bit,
    /// MySQL's JSON type: the server keeps a binary form whose numbers are already int64,
    /// uint64 or double, so both paths go through serde_json's numbers.
    Json,
    /// MariaDB's JSON (LONGTEXT with a `json_valid` check): the server keeps the text, so its
    /// numbers are kept digit for digit.
    JsonText,
    Geometry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    /// MySQL's latin1 is Windows-1252.
    Latin1,
    Other,
}

impl Charset {
    pub fn from_name(name: Option<&str>) -> Charset {
        match name {
            Some(n) if n.starts_with("utf8") || n == "ascii" => Charset::Utf8,
            Some("latin1") => Charset::Latin1,
            _ => Charset::Other,
        }
    }

    fn decode(self, bytes: &[u8]) -> String {
        match self {
            Charset::Latin1 => bytes.iter().map(|&b| cp1252(b)).collect(),
            Charset::Utf8 | Charset::Other => String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// Windows-1252, which MySQL calls latin1.
fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    match b {
        0x80..=0x9F => HIGH[(b - 0x80) as usize],
        _ => b as char,
    }
}

/// A literal of mysqldump's `INSERT` statements.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    /// An unquoted number, as printed.
    Number(String),
    /// A quoted string, unescaped; the dump is UTF-8 (`--default-character-set=utf8mb4`).
    String(Vec<u8>),
    /// `0x...` (`--hex-blob`).
    Hex(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} as {ty:?}")]
pub struct ValueError {
    pub what: String,
    pub ty: MyType,
}

impl MyType {
    /// Parses `information_schema.COLUMNS` fields.
    pub fn from_columns(
        data_type: &str,
        column_type: &str,
        charset: Option<&str>,
        datetime_precision: Option<u64>,
        max_length: Option<u64>,
        is_json_check: bool,
    ) -> MyType {
        let fsp = datetime_precision.unwrap_or(0) as usize;
        let charset_of = || Charset::from_name(charset);
        match data_type {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => MyType::Int {
                unsigned: column_type.contains("unsigned"),
                bits: match data_type {
                    "tinyint" => 8,
                    "smallint" => 16,
                    "mediumint" => 24,
                    "bigint" => 64,
                    _ => 32,
                },
            },
            "decimal" | "numeric" => MyType::Decimal,
            "float" => MyType::Float,
            "double" | "real" => MyType::Double,
            "date" => MyType::Date,
            "time" => MyType::Time { fsp },
            "datetime" => MyType::Datetime { fsp },
            "timestamp" => MyType::Timestamp { fsp },
            "year" => MyType::Year,
            "char" => MyType::Char {
                charset: charset_of(),
            },
            "json" => MyType::Json,
            "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if is_json_check => {
                MyType::JsonText
            }
            "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => MyType::Text {
                charset: charset_of(),
            },
            "binary" => MyType::Binary {
                len: max_length.unwrap_or(0) as usize,
            },
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => MyType::Bytes,
            "enum" => MyType::Enum(parse_labels(column_type)),
            "set" => MyType::Set(parse_labels(column_type)),
            "bit" => MyType::Bit,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" | "geomcollection" => MyType::Geometry,
            _ => MyType::Text {
                charset: charset_of(),
            },
        }
    }

    fn error(&self, what: impl std::fmt::Debug) -> ValueError {
        ValueError {
            what: format!("{what:?}").chars().take(100).collect(),
            ty: self.clone(),
        }
    }

    /// A dump literal to a value.
    pub fn literal_value(&self, literal: Literal) -> Result<Value, ValueError> {
        let text = match literal {
            Literal::Null => return Ok(Value::Null),
            Literal::Hex(bytes) => return self.bytes_value(bytes),
            Literal::Number(n) => n,
            Literal::String(bytes) => match self {
                MyType::Bytes | MyType::Binary { .. } | MyType::Geometry | MyType::Bit => {
                    return self.bytes_value(bytes)
                }
                _ => String::from_utf8(bytes).map_err(|e| self.error(e.as_bytes().to_vec()))?,
            },
        };
        Ok(match self {
            MyType::Int { .. } | MyType::Year => {
                int_value(&text).ok_or_else(|| self.error(&text))?
            }
            MyType::Decimal => Value::Text(text),
            MyType::Float => {
                let f: f32 = text.parse().map_err(|_| self.error(&text))?;
                float32(f)
            }
            MyType::Double => Value::Float(text.parse().map_err(|_| self.error(&text))?),
            MyType::Date => date_text(&text),
            MyType::Time { .. } => Value::Text(text),
            MyType::Datetime { .. } => datetime_text(&text, false),
            MyType::Timestamp { .. } => datetime_text(&text, true),
            MyType::Char { .. } => Value::Text(text.trim_end_matches(' ').to_owned()),
            MyType::Text { .. } | MyType::Enum(_) => Value::Text(text),
            MyType::Set(_) => set_from_text(&text),
            MyType::Json => json(&text).ok_or_else(|| self.error(&text))?,
            MyType::JsonText => json_text(&text).ok_or_else(|| self.error(&text))?,
            MyType::Bytes | MyType::Binary { .. } | MyType::Geometry | MyType::Bit => {
                return self.bytes_value(text.into_bytes())
            }
        })
    }

    /// Raw bytes (hex literals, blobs) to a value.
    fn bytes_value(&self, bytes: Vec<u8>) -> Result<Value, ValueError> {
        Ok(match self {
            MyType::Binary { len } => {
                let mut bytes = bytes;
                if bytes.len() < *len {
                    bytes.resize(*len, 0);
                }
                Value::Bytes(bytes)
            }
            MyType::Bytes => Value::Bytes(bytes),
            // MySQL's geometry is a 4-byte SRID followed by WKB.
            MyType::Geometry => Value::Bytes(bytes.get(4..).unwrap_or_default().to_vec()),
            MyType::Bit => {
                if bytes.len() > 8 {
                    return Err(self.error(bytes));
                }
                uint(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
            }
            MyType::Char { charset } => {
                Value::Text(charset.decode(&bytes).trim_end_matches(' ').to_owned())
            }
            MyType::Text { charset } => Value::Text(charset.decode(&bytes)),
            MyType::Json => {
                let text = String::from_utf8_lossy(&bytes);
                json(&text).ok_or_else(|| self.error(&text))?
            }
            MyType::JsonText => {
                let text = String::from_utf8_lossy(&bytes);
                json_text(&text).ok_or_else(|| self.error(&text))?
            }
            other => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                return other.literal_value(Literal::String(text.into_bytes()));
            }
        })
    }

    /// A binary-log value (as `mysql_common` decodes it) to a value.
    pub fn binlog_value(&self, value: MyValue) -> Result<Value, ValueError> {
        Ok(match (self, value) {
            (_, MyValue::NULL) => Value::Null,
            (MyType::Int { unsigned, bits }, MyValue::Int(i)) => {
                int_of_width(i128::from(i), *unsigned, *bits)
            }
            (MyType::Int { unsigned, bits }, MyValue::UInt(u)) => {
                int_of_width(i128::from(u), *unsigned, *bits)
            }
            (MyType::Float, MyValue::Float(f)) => float32(f),
            (MyType::Double, MyValue::Double(d)) => Value::Float(d),
            (MyType::Double, MyValue::Float(f)) => Value::Float(f64::from(f)),
            (MyType::Date, MyValue::Date(y, m, d, ..)) => {
                date_text(&format!("{y:04}-{m:02}-{d:02}"))
            }
            (MyType::Datetime { fsp }, MyValue::Date(y, mo, d, h, mi, s, us)) => {
                let text = format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}",
                    fraction(us, *fsp)
                );
                if y == 0 || mo == 0 || d == 0 {
                    Value::ZeroDate(text)
                } else {
                    Value::Text(text)
                }
            }
            (MyType::Timestamp { fsp }, MyValue::Bytes(b)) => {
                let text = String::from_utf8_lossy(&b);
                let (secs, micros) = match text.split_once('.') {
                    Some((s, us)) => (s.parse::<i64>(), us.parse::<u32>()),
                    None => (text.parse::<i64>(), Ok(0)),
                };
                match (secs, micros) {
                    (Ok(0), Ok(us)) => zero_timestamp(us, *fsp),
                    (Ok(secs), Ok(us)) => {
                        Value::Text(format!("{}{}Z", unix_to_civil(secs), fraction(us, *fsp)))
                    }
                    _ => return Err(self.error(&text)),
                }
            }
            (MyType::Timestamp { fsp }, MyValue::Int(0)) => zero_timestamp(0, *fsp),
            (MyType::Timestamp { .. }, MyValue::Int(secs)) => {
                Value::Text(format!("{}Z", unix_to_civil(secs)))
            }
            (MyType::Time { fsp }, MyValue::Time(neg, days, h, m, s, us)) => {
                let hours = days * 24 + u32::from(h);
                Value::Text(format!(
                    "{}{hours:02}:{m:02}:{s:02}{}",
                    if neg { "-" } else { "" },
                    fraction(us, *fsp)
                ))
            }
            (MyType::Year, MyValue::Bytes(b)) => {
                // A stored 0 (the year 0000) decodes as 1900, which YEAR cannot hold.
                let year: u64 = String::from_utf8_lossy(&b)
                    .parse()
                    .map_err(|_| self.error(&b))?;
                uint(if year == 1900 { 0 } else { year })
            }
            (MyType::Year, MyValue::Int(y)) => Value::Int(y),
            (MyType::Decimal, MyValue::Bytes(b)) => {
                Value::Text(String::from_utf8_lossy(&b).into_owned())
            }
            (MyType::Enum(labels), MyValue::Int(index)) => Value::Text(
                usize::try_from(index - 1)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .cloned()
                    .unwrap_or_default(),
            ),
            (MyType::Set(labels), MyValue::Bytes(mask)) => Value::Array(
                labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        mask.get(i / 8)
                            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
                    })
                    .map(|(_, label)| Value::Text(label.clone()))
                    .collect(),
            ),
            (_, MyValue::Bytes(bytes)) => self.bytes_value(bytes)?,
            (ty, other) => return Err(ty.error(other)),
        })
    }
}

/// MySQL integers, signed or not, in one form: `Int` when it fits.
fn int_value(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Int(i));
    }
    text.parse::<u64>().ok().map(uint)
}

/// The column's value from a decoded integer whose signedness may be wrong: the low `bits`
/// bits, read as the column declares them.
fn int_of_width(value: i128, unsigned: bool, bits: u32) -> Value {
    let modulus = 1i128 << bits;
    let raw = value.rem_euclid(modulus);
    let value = if !unsigned && raw >= modulus / 2 {
        raw - modulus
    } else {
        raw
    };
    i64::try_from(value).map_or_else(|_| Value::UInt(value as u64), Value::Int)
}

fn uint(u: u64) -> Value {
    i64::try_from(u).map_or(Value::UInt(u), Value::Int)
}

/// FLOAT values keep their single precision: printed in the shortest form that reads back as
/// the same `f32`.
fn float32(f: f32) -> Value {
    Value::Number(format!("{f:?}"))
}

fn fraction(micros: u32, fsp: usize) -> String {
    if fsp == 0 {
        return String::new();
    }
    let digits = format!("{micros:06}");
    format!(".{}", &digits[..fsp.min(6)])
}

/// A date; MySQL's zero dates (`0000-00-00`, `2024-00-10`) are null in values, their text in keys.
fn date_text(text: &str) -> Value {
    if is_zero_date(text) {
        Value::ZeroDate(text.to_owned())
    } else {
        Value::Text(text.to_owned())
    }
}

fn is_zero_date(text: &str) -> bool {
    let mut parts = text.get(..10).unwrap_or(text).split('-');
    parts.any(|p| p.chars().all(|c| c == '0'))
}

fn datetime_text(text: &str, utc: bool) -> Value {
    let iso = text.replacen(' ', "T", 1);
    let iso = if utc { format!("{iso}Z") } else { iso };
    if is_zero_date(text) {
        Value::ZeroDate(iso)
    } else {
        Value::Text(iso)
    }
}

/// TIMESTAMP's zero value, in the form [`datetime_text`] gives the dumped one.
fn zero_timestamp(micros: u32, fsp: usize) -> Value {
    Value::ZeroDate(format!("0000-00-00T00:00:00{}Z", fraction(micros, fsp)))
}

fn set_from_text(text: &str) -> Value {
    if text.is_empty() {
        return Value::Array(Vec::new());
    }
    Value::Array(text.split(',').map(|s| Value::Text(s.to_owned())).collect())
}

/// JSON text in one canonical form (compact, keys sorted) whichever way it arrived.
fn json(text: &str) -> Option<Value> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(Value::Json(value.to_string()))
}

/// JSON kept as text by the server in the canonical form of [`canonical_json`], numbers as written.
fn json_text(text: &str) -> Option<Value> {
    canonical_json(text).map(Value::Json)
}

/// A binary JSON value to the same canonical form.
pub fn json_value(value: serde_json::Value) -> Value {
    Value::Json(value.to_string())
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC for seconds since the Unix epoch.
fn unix_to_civil(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The labels of `enum('a','b''c')` or `set(...)`.
fn parse_labels(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let body = column_type[start + 1..].trim_end_matches(')');
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(next) = chars.next() {
                        label.push(next);
                    }
                }
                c => label.push(c),
            }
        }
        labels.push(label);
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        assert_eq!(unix_to_civil(0), "1970-01-01T00:00:00");
        assert_eq!(unix_to_civil(1_714_557_600), "2024-05-01T10:00:00");
        assert_eq!(unix_to_civil(951_782_400), "2000-02-29T00:00:00");
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_labels("enum('x','y z','it''s')"),
            vec!["x", "y z", "it's"]
        );
        assert_eq!(parse_labels("set('a','b')"), vec!["a", "b"]);
    }

    #[test]
    fn dump_and_binlog_agree() {
        let cases: Vec<(MyType, Literal, MyValue)> = vec![
            (
                MyType::Int {
                    unsigned: true,
                    bits: 64,
                },
                Literal::Number("18446744073709551615".into()),
                MyValue::Int(-1),
            ),
            (
                MyType::Int {
                    unsigned: false,
                    bits: 24,
                },
                Literal::Number("-8388608".into()),
                MyValue::Int(8_388_608),
            ),
            (
                MyType::Int {
                    unsigned: true,
                    bits: 24,
                },
                Literal::Number("16777215".into()),
                MyValue::Int(-1),
            ),
            (
                MyType::Int {
                    unsigned: false,
                    bits: 8,
                },
                Literal::Number("-1".into()),
                MyValue::UInt(255),
            ),
            (
                MyType::Int {
                    unsigned: false,
                    bits: 8,
                },
                Literal::Number("-128".into()),
                MyValue::Int(-128),
            ),
            (
                MyType::Int {
                    unsigned: false,
                    bits: 32,
                },
                Literal::Number("5".into()),
                MyValue::Int(5),
            ),
            (
                MyType::Float,
                Literal::Number("0.1".into()),
                MyValue::Float(0.1),
            ),
            (
                MyType::Double,
                Literal::Number("0.1".into()),
                MyValue::Double(0.1),
            ),
            (
                MyType::Decimal,
                Literal::Number("12.500".into()),
                MyValue::Bytes(b"12.500".to_vec()),
            ),
            (
                MyType::Date,
                Literal::String(b"2024-05-01".to_vec()),
                MyValue::Date(2024, 5, 1, 0, 0, 0, 0),
            ),
            (
                MyType::Date,
                Literal::String(b"0000-00-00".to_vec()),
                MyValue::Date(0, 0, 0, 0, 0, 0, 0),
            ),
            (
                MyType::Datetime { fsp: 0 },
                Literal::String(b"0000-00-00 00:00:00".to_vec()),
                MyValue::Date(0, 0, 0, 0, 0, 0, 0),
            ),
            (
                MyType::Datetime { fsp: 2 },
                Literal::String(b"2024-00-10 10:00:00.50".to_vec()),
                MyValue::Date(2024, 0, 10, 10, 0, 0, 500_000),
            ),
            (
                MyType::Timestamp { fsp: 0 },
                Literal::String(b"0000-00-00 00:00:00".to_vec()),
                MyValue::Int(0),
            ),
            (
                MyType::Timestamp { fsp: 3 },
                Literal::String(b"0000-00-00 00:00:00.000".to_vec()),
                MyValue::Bytes(b"0.000000".to_vec()),
            ),
            (
                MyType::JsonText,
                Literal::String(br#"{"n": 18446744073709551616, "d": 1.50}"#.to_vec()),
                MyValue::Bytes(br#"{"n":18446744073709551616,"d":1.50}"#.to_vec()),
            ),
            (
                MyType::Datetime { fsp: 6 },
                Literal::String(b"2024-05-01 10:00:00.123456".to_vec()),
                MyValue::Date(2024, 5, 1, 10, 0, 0, 123_456),
            ),
            (
                MyType::Timestamp { fsp: 3 },
                Literal::String(b"2024-05-01 10:00:00.500".to_vec()),
                MyValue::Bytes(b"1714557600.500000".to_vec()),
            ),
            (
                MyType::Time { fsp: 3 },
                Literal::String(b"-838:59:59.500".to_vec()),
                MyValue::Time(true, 34, 22, 59, 59, 500_000),
            ),
            (
                MyType::Year,
                Literal::Number("2024".into()),
                MyValue::Bytes(b"2024".to_vec()),
            ),
            (
                MyType::Char {
                    charset: Charset::Utf8,
                },
                Literal::String(b"ab".to_vec()),
                MyValue::Bytes(b"ab   ".to_vec()),
            ),
            (
                MyType::Text {
                    charset: Charset::Latin1,
                },
                Literal::String("café".as_bytes().to_vec()),
                MyValue::Bytes(vec![b'c', b'a', b'f', 0xE9]),
            ),
            (
                MyType::Binary { len: 4 },
                Literal::Hex(vec![0x61, 0x62, 0, 0]),
                MyValue::Bytes(b"ab".to_vec()),
            ),
            (
                MyType::Bytes,
                Literal::String(Vec::new()),
                MyValue::Bytes(Vec::new()),
            ),
            (
                MyType::Enum(vec!["x".into(), "y z".into()]),
                Literal::String(b"y z".to_vec()),
                MyValue::Int(2),
            ),
            (
                MyType::Set(vec!["a".into(), "b".into(), "c".into()]),
                Literal::String(b"a,c".to_vec()),
                MyValue::Bytes(vec![0b101]),
            ),
            (
                MyType::Bit,
                Literal::Hex(vec![0, 5]),
                MyValue::Bytes(vec![0, 5]),
            ),
            (
                MyType::Json,
                Literal::String(br#"{"b": 1, "a": [1, 2.5]}"#.to_vec()),
                MyValue::Bytes(br#"{"b":1,"a":[1,2.5]}"#.to_vec()),
            ),
        ];
        for (ty, literal, binlog) in cases {
            let from_dump = ty.literal_value(literal.clone()).unwrap();
            let binlog_value = ty.binlog_value(binlog.clone()).unwrap();
            assert_eq!(from_dump, binlog_value, "{ty:?}: {literal:?} vs {binlog:?}");
        }
    }

    /// MySQL's binary JSON (as the binary log carries it) for `{"a": 1, "b": [true, "x"]}`,
    /// built to the format's layout, gives the same text as the dumped `{"a": 1, "b": [true, "x"]}`.
    #[test]
    fn binary_json_matches_the_dumped_text() {
        use mysql_common::binlog::jsonb;
        use mysql_common::io::ParseBuf;
        // Array [true, "x"]: count, size, two value entries, then the string "x".
        let array: Vec<u8> = vec![2, 0, 12, 0, 0x04, 1, 0, 0x0c, 10, 0, 1, b'x'];
        // Object: count, size, two key entries, two value entries, keys, then the array.
        let mut object: Vec<u8> = vec![2, 0];
        let size = 2 + 2 + 4 * 2 + 3 * 2 + 2 + array.len();
        object.extend_from_slice(&(size as u16).to_le_bytes());
        object.extend_from_slice(&[18, 0, 1, 0, 19, 0, 1, 0]);
        object.extend_from_slice(&[0x05, 1, 0]); // int16 1, inlined
        object.extend_from_slice(&[0x02, 20, 0]); // small array at offset 20
        object.extend_from_slice(b"ab");
        object.extend_from_slice(&array);
        let mut bytes = vec![0x00]; // small object
        bytes.extend_from_slice(&object);
        let parsed: jsonb::Value<'_> = ParseBuf(&bytes).parse(()).unwrap();
        let from_binlog = json_value(serde_json::Value::try_from(parsed).unwrap());
        let from_dump = MyType::Json
            .literal_value(Literal::String(br#"{"a": 1, "b": [true, "x"]}"#.to_vec()))
            .unwrap();
        assert_eq!(from_binlog, from_dump);
        assert_eq!(from_dump, Value::Json(r#"{"a":1,"b":[true,"x"]}"#.into()));
    }

    /// Zero dates are null in the JSON value but keep MySQL's digits for keys.
    #[test]
    fn zero_dates_have_key_text() {
        let cases = [
            (MyType::Date, "0000-00-00", "0000-00-00"),
            (
                MyType::Datetime { fsp: 0 },
                "0000-00-00 00:00:00",
                "0000-00-00T00:00:00",
            ),
            (
                MyType::Timestamp { fsp: 0 },
                "0000-00-00 00:00:00",
                "0000-00-00T00:00:00Z",
            ),
            (MyType::Date, "2024-00-10", "2024-00-10"),
        ];
        for (ty, dumped, key) in cases {
            assert_eq!(
                ty.literal_value(Literal::String(dumped.as_bytes().to_vec()))
                    .unwrap(),
                Value::ZeroDate(key.into()),
                "{ty:?}"
            );
        }
    }

    #[test]
    fn mapped_forms() {
        let ts = MyType::Timestamp { fsp: 0 };
        assert_eq!(
            ts.literal_value(Literal::String(b"2024-05-01 10:00:00".to_vec()))
                .unwrap(),
            Value::Text("2024-05-01T10:00:00Z".into())
        );
        assert_eq!(
            MyType::Float.binlog_value(MyValue::Float(0.1)).unwrap(),
            Value::Number("0.1".into())
        );
        assert_eq!(
            MyType::Geometry
                .literal_value(Literal::Hex(vec![0, 0, 0, 0, 1, 2]))
                .unwrap(),
            Value::Bytes(vec![1, 2])
        );
    }
}
