//! PostgreSQL text forms to [`Value`]s.
//!
//! COPY's text format and pgoutput's text tuples both carry each value in its type's output
//! form (with the same session settings: ISO dates, UTC, hex bytea), so one function,
//! [`PgType::to_value`], serves the dump and the stream: that is what keeps them byte-identical.
//!
//! The code is under 400 lines; the rest is its unit tests, one per type and edge.

use base64::Engine as _;
use etcd_sync_api::json::is_json_number;
use etcd_sync_api::Value;

/// How a PostgreSQL type maps to JSON; domains are resolved to their base type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    /// int2, int4, int8, oid: printed as canonical JSON integers.
    Integer,
    /// float4, float8: JSON numbers, except NaN and the infinities.
    Float,
    Numeric,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Json,
    Array {
        element: Box<PgType>,
        delimiter: u8,
    },
    /// Everything else keeps its text form.
    Text,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {type_name} value {text:?}: {reason}")]
pub struct ValueError {
    pub type_name: &'static str,
    pub text: String,
    pub reason: String,
}

impl PgType {
    /// The mapping of a built-in type, or `None` when the catalog must be asked (arrays,
    /// domains, enums, extension types).
    pub fn builtin(oid: u32) -> Option<PgType> {
        Some(match oid {
            16 => PgType::Bool,
            20 | 21 | 23 | 26 => PgType::Integer,
            700 | 701 => PgType::Float,
            1700 => PgType::Numeric,
            17 => PgType::Bytea,
            1082 => PgType::Date,
            1114 => PgType::Timestamp,
            1184 => PgType::TimestampTz,
            114 | 3802 => PgType::Json,
            25 | 1043 | 1042 | 18 | 19 | 2950 | 1083 | 1266 | 1186 | 869 | 650 => PgType::Text,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            PgType::Bool => "boolean",
            PgType::Integer => "integer",
            PgType::Float => "float",
            PgType::Numeric => "numeric",
            PgType::Bytea => "bytea",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp",
            PgType::TimestampTz => "timestamptz",
            PgType::Json => "json",
            PgType::Array { .. } => "array",
            PgType::Text => "text",
        }
    }

    fn error(&self, text: &str, reason: impl Into<String>) -> ValueError {
        ValueError {
            type_name: self.name(),
            text: text.chars().take(100).collect(),
            reason: reason.into(),
        }
    }

    /// Converts a value's text output form into a [`Value`].
    pub fn to_value(&self, text: &str) -> Result<Value, ValueError> {
        Ok(match self {
            PgType::Bool => match text {
                "t" => Value::Bool(true),
                "f" => Value::Bool(false),
                _ => return Err(self.error(text, "expected t or f")),
            },
            PgType::Integer => {
                if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                    return Err(self.error(text, "not an integer"));
                }
                Value::Number(text.to_owned())
            }
            PgType::Float => {
                if is_json_number(text) {
                    Value::Number(text.to_owned())
                } else if matches!(text, "NaN" | "Infinity" | "-Infinity") {
                    Value::Text(text.to_owned())
                } else {
                    return Err(self.error(text, "not a number"));
                }
            }
            PgType::Bytea => {
                let hex = text
                    .strip_prefix("\\x")
                    .ok_or_else(|| self.error(text, "expected hex output (bytea_output = hex)"))?;
                Value::Bytes(decode_hex(hex).ok_or_else(|| self.error(text, "bad hex digits"))?)
            }
            PgType::Date | PgType::Timestamp => {
                Value::Text(iso_datetime(text, false).ok_or_else(|| self.error(text, "not ISO"))?)
            }
            PgType::TimestampTz => {
                Value::Text(iso_datetime(text, true).ok_or_else(|| self.error(text, "not ISO"))?)
            }
            PgType::Json => Value::Json(compact_json(text)),
            PgType::Array { element, delimiter } => {
                parse_array(text, *delimiter, element).map_err(|reason| self.error(text, reason))?
            }
            PgType::Numeric | PgType::Text => Value::Text(text.to_owned()),
        })
    }
}

/// A date or timestamp in ISO 8601 form from PostgreSQL's ISO output: `2024-05-01 10:00:00.5`
/// → `2024-05-01T10:00:00.5` (with `Z` when `utc`: the session's TimeZone is UTC, so the
/// offset is always `+00`). Years outside 0–9999 take ISO 8601's expanded form with a sign and
/// at least six digits, and BC years are numbered astronomically (1 BC is year 0000, 44 BC
/// `-000043`), as JavaScript's `Date` reads them. `infinity` and `-infinity` stay as they are.
fn iso_datetime(text: &str, utc: bool) -> Option<String> {
    if matches!(text, "infinity" | "-infinity") {
        return Some(text.to_owned());
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let body = if utc { body.strip_suffix("+00")? } else { body };
    let dash = body.find('-')?;
    let year: i64 = body[..dash].parse().ok()?;
    let year = if bc { 1 - year } else { year };
    let mut out = match year {
        0..=9999 => format!("{year:04}"),
        ..=-1 => format!("-{:06}", -year),
        _ => format!("+{year:06}"),
    };
    out.push_str(&body[dash..].replacen(' ', "T", 1));
    if utc {
        out.push('Z');
    }
    Some(out)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Drops the insignificant white space of valid JSON text, keeping every token byte for byte
/// (numbers and key order are the source's own).
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Parses an array's text form (`{1,2}`, `{{"a b",NULL},{c,d}}`, `[0:1]={x,y}`).
fn parse_array(text: &str, delimiter: u8, element: &PgType) -> Result<Value, String> {
    let body = match text.find("={") {
        Some(eq) if text.starts_with('[') => &text[eq + 1..],
        _ => text,
    };
    let mut parser = ArrayParser {
        input: body.as_bytes(),
        pos: 0,
        delimiter,
        element,
    };
    let value = parser.array()?;
    if parser.pos != parser.input.len() {
        return Err("trailing characters after the array".into());
    }
    Ok(value)
}

struct ArrayParser<'a> {
    input: &'a [u8],
    pos: usize,
    delimiter: u8,
    element: &'a PgType,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn array(&mut self) -> Result<Value, String> {
        if self.peek() != Some(b'{') {
            return Err("expected '{'".into());
        }
        self.pos += 1;
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(match self.peek() {
                Some(b'{') => self.array()?,
                Some(b'"') => {
                    let text = self.quoted()?;
                    self.element.to_value(&text).map_err(|e| e.to_string())?
                }
                Some(_) => {
                    let text = self.unquoted()?;
                    if text.eq_ignore_ascii_case("NULL") {
                        Value::Null
                    } else {
                        self.element.to_value(&text).map_err(|e| e.to_string())?
                    }
                }
                None => return Err("unterminated array".into()),
            });
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(c) if c == self.delimiter => self.pos += 1,
                _ => return Err("expected a delimiter or '}'".into()),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.push(self.peek().ok_or("unterminated escape")?);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
                None => return Err("unterminated quoted element".into()),
            }
        }
        String::from_utf8(out).map_err(|_| "element is not UTF-8".into())
    }

    fn unquoted(&mut self) -> Result<String, String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == self.delimiter || c == b'}' {
                break;
            }
            self.pos += 1;
        }
        std::str::from_utf8(&self.input[start..self.pos])
            .map(|s| s.trim().to_owned())
            .map_err(|_| "element is not UTF-8".into())
    }
}

/// Calls `each` with the fields of one line of COPY's text format (`None` for `\N`), its
/// backslash escapes undone. `line` excludes the newline.
pub fn copy_fields(
    line: &[u8],
    mut each: impl FnMut(Option<&str>) -> Result<(), String>,
) -> Result<(), String> {
    // Borrowed from the line unless escaped: a String per field was a fifth of the dump's
    // allocations.
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len()));
    for end in ends {
        let raw = &line[start..end];
        start = end + 1;
        if raw == b"\\N" {
            each(None)?;
        } else if memchr::memchr(b'\\', raw).is_some() {
            each(Some(&unescape_copy(raw)?))?;
        } else {
            each(Some(
                std::str::from_utf8(raw).map_err(|_| "COPY field is not UTF-8".to_string())?,
            ))?;
        }
    }
    Ok(())
}

fn unescape_copy(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = raw.get(i) else {
            return Err("COPY field ends in a backslash".into());
        };
        i += 1;
        out.push(match e {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'0'..=b'7' => {
                let mut value = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                value as u8
            }
            b'x' => {
                let mut value = 0u8;
                let mut seen = 0;
                while seen < 2 {
                    match raw.get(i).and_then(|&d| (d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d as u8;
                            i += 1;
                            seen += 1;
                        }
                        None => break,
                    }
                }
                if seen == 0 {
                    b'x'
                } else {
                    value
                }
            }
            other => other,
        });
    }
    String::from_utf8(out).map_err(|_| "COPY field is not UTF-8".into())
}

/// Base64 as used for bytea values in keys and JSON.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ty: PgType, text: &str) -> Value {
        ty.to_value(text).unwrap()
    }

    #[test]
    fn scalars() {
        assert_eq!(v(PgType::Bool, "t"), Value::Bool(true));
        assert_eq!(v(PgType::Integer, "-42"), Value::Number("-42".into()));
        assert_eq!(v(PgType::Float, "1e+30"), Value::Number("1e+30".into()));
        assert_eq!(v(PgType::Float, "-0"), Value::Number("-0".into()));
        assert_eq!(v(PgType::Float, "NaN"), Value::Text("NaN".into()));
        assert_eq!(
            v(PgType::Float, "-Infinity"),
            Value::Text("-Infinity".into())
        );
        assert_eq!(v(PgType::Numeric, "12.50"), Value::Text("12.50".into()));
        assert_eq!(v(PgType::Bytea, "\\x00ff"), Value::Bytes(vec![0, 255]));
        assert!(PgType::Bytea.to_value("\\x0").is_err());
        assert!(PgType::Integer.to_value("1.5").is_err());
        assert!(PgType::Bool.to_value("yes").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            v(PgType::Timestamp, "2024-05-01 10:00:00.123456"),
            Value::Text("2024-05-01T10:00:00.123456".into())
        );
        assert_eq!(
            v(PgType::TimestampTz, "2024-05-01 10:00:00.5+00"),
            Value::Text("2024-05-01T10:00:00.5Z".into())
        );
        assert_eq!(
            v(PgType::TimestampTz, "infinity"),
            Value::Text("infinity".into())
        );
    }

    #[test]
    fn json_is_compacted_but_not_reordered() {
        assert_eq!(
            v(
                PgType::Json,
                "{\"b\" : 1,\n \"a\": \"x y\\\" z\", \"n\": 1.50}"
            ),
            Value::Json("{\"b\":1,\"a\":\"x y\\\" z\",\"n\":1.50}".into())
        );
    }

    #[test]
    fn arrays() {
        let ints = PgType::Array {
            element: Box::new(PgType::Integer),
            delimiter: b',',
        };
        assert_eq!(
            v(ints.clone(), "{{1,2},{3,NULL}}"),
            Value::Array(vec![
                Value::Array(vec![Value::Number("1".into()), Value::Number("2".into())]),
                Value::Array(vec![Value::Number("3".into()), Value::Null]),
            ])
        );
        assert_eq!(v(ints.clone(), "{}"), Value::Array(vec![]));
        assert_eq!(
            v(ints.clone(), "[0:1]={7,8}"),
            Value::Array(vec![Value::Number("7".into()), Value::Number("8".into())])
        );
        let texts = PgType::Array {
            element: Box::new(PgType::Text),
            delimiter: b',',
        };
        assert_eq!(
            v(
                texts,
                r#"{"a b","NULL",NULL,"q\"uote","back\\slash",plain}"#
            ),
            Value::Array(vec![
                Value::Text("a b".into()),
                Value::Text("NULL".into()),
                Value::Null,
                Value::Text("q\"uote".into()),
                Value::Text("back\\slash".into()),
                Value::Text("plain".into()),
            ])
        );
        let stamps = PgType::Array {
            element: Box::new(PgType::TimestampTz),
            delimiter: b',',
        };
        assert_eq!(
            v(stamps, r#"{"2024-01-01 00:00:00+00"}"#),
            Value::Array(vec![Value::Text("2024-01-01T00:00:00Z".into())])
        );
        assert!(ints.to_value("{1,2").is_err());
        assert!(ints.to_value("{1}x").is_err());
    }

    #[test]
    fn copy_lines() {
        let fields = |line: &[u8]| {
            let mut fields: Vec<Option<String>> = Vec::new();
            copy_fields(line, |field| {
                fields.push(field.map(str::to_owned));
                Ok(())
            })
            .map(|()| fields)
        };
        let fields_of_line = fields(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101\\x41").unwrap();
        assert_eq!(
            fields_of_line,
            vec![
                Some("1".into()),
                None,
                Some("a\tb\nc\\d".into()),
                Some("AA".into())
            ]
        );
        assert_eq!(fields(b"").unwrap(), vec![Some(String::new())]);
        assert!(fields(b"a\\").is_err());
    }

    #[test]
    fn dates_and_times_outside_years_1_to_9999() {
        let cases = [
            (PgType::Date, "2024-05-01", "2024-05-01"),
            (PgType::Date, "0001-01-01 BC", "0000-01-01"),
            (PgType::Date, "0044-03-15 BC", "-000043-03-15"),
            (PgType::Date, "4714-11-24 BC", "-004713-11-24"),
            (PgType::Date, "5874897-12-31", "+5874897-12-31"),
            (PgType::Date, "infinity", "infinity"),
            (
                PgType::Timestamp,
                "10000-01-01 00:00:00",
                "+010000-01-01T00:00:00",
            ),
            (
                PgType::Timestamp,
                "0044-03-15 10:00:00.25 BC",
                "-000043-03-15T10:00:00.25",
            ),
            (PgType::Timestamp, "-infinity", "-infinity"),
            (
                PgType::TimestampTz,
                "4714-12-31 23:59:59.999999+00 BC",
                "-004713-12-31T23:59:59.999999Z",
            ),
            (
                PgType::TimestampTz,
                "294276-12-31 23:59:59.999999+00",
                "+294276-12-31T23:59:59.999999Z",
            ),
            (
                PgType::TimestampTz,
                "2024-05-01 10:00:00+00",
                "2024-05-01T10:00:00Z",
            ),
            (PgType::TimestampTz, "infinity", "infinity"),
        ];
        for (ty, text, want) in cases {
            assert_eq!(
                ty.to_value(text).unwrap(),
                Value::Text(want.into()),
                "{text}"
            );
        }
        assert!(PgType::TimestampTz
            .to_value("2024-05-01 10:00:00+02")
            .is_err());
    }
}
