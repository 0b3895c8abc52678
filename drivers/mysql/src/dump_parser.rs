//! A streaming parser for mysqldump's output: the binary-log coordinates and each `INSERT`'s
//! rows. Works line by line: mysqldump escapes newlines inside strings and breaks extended
//! inserts only between rows (`),\n(`), so no row spans two lines.

use crate::types::Literal;

/// What a line of the dump contributes.
#[derive(Debug, PartialEq)]
pub enum DumpLine {
    /// `-- CHANGE MASTER TO MASTER_LOG_FILE='f', MASTER_LOG_POS=n;` (or `CHANGE REPLICATION SOURCE`).
    Coordinates {
        file: String,
        position: u64,
    },
    /// `-- SET GLOBAL gtid_slave_pos='...'` (MariaDB) or `SET @@GLOBAL.GTID_PURGED=...` (MySQL).
    Gtid(String),
    /// `USE \`db\`;`
    Use(String),
    /// Rows of an `INSERT INTO \`table\` (columns) VALUES ...` statement.
    Rows {
        table: String,
        columns: Vec<String>,
        rows: Vec<Vec<Literal>>,
    },
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse mysqldump output: {reason} (near {near:?})")]
pub struct ParseError {
    reason: String,
    near: String,
}

/// Keeps the statement in progress across lines.
#[derive(Default)]
pub struct DumpParser {
    insert: Option<(String, Vec<String>)>,
}

impl DumpParser {
    /// Parses one line (without its newline).
    pub fn line(&mut self, line: &[u8]) -> Result<DumpLine, ParseError> {
        if let Some((table, columns)) = self.insert.clone() {
            let (rows, ended) = parse_tuples(line)?;
            if ended {
                self.insert = None;
            }
            return Ok(DumpLine::Rows {
                table,
                columns,
                rows,
            });
        }
        if let Some(rest) = line.strip_prefix(b"INSERT INTO ") {
            let mut p = Cursor {
                input: rest,
                pos: 0,
            };
            let table = p.identifier()?;
            p.skip_spaces();
            let mut columns = Vec::new();
            if p.peek() == Some(b'(') {
                p.pos += 1;
                loop {
                    p.skip_spaces();
                    columns.push(p.identifier()?);
                    p.skip_spaces();
                    match p.next() {
                        Some(b',') => continue,
                        Some(b')') => break,
                        _ => return Err(p.error("expected , or ) in the column list")),
                    }
                }
            }
            p.skip_spaces();
            if !p.rest().starts_with(b"VALUES ") {
                return Err(p.error("expected VALUES"));
            }
            p.pos += 7;
            let (rows, ended) = parse_tuples(p.rest())?;
            if !ended {
                self.insert = Some((table.clone(), columns.clone()));
            }
            return Ok(DumpLine::Rows {
                table,
                columns,
                rows,
            });
        }
        let text = String::from_utf8_lossy(line);
        if let Some(rest) = text.strip_prefix("USE ") {
            let mut p = Cursor {
                input: rest.as_bytes(),
                pos: 0,
            };
            return Ok(DumpLine::Use(p.identifier()?));
        }
        if text.starts_with("-- CHANGE MASTER TO MASTER_LOG_FILE=")
            || text.starts_with("-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE=")
        {
            let file =
                quoted_after(&text, "_LOG_FILE=").ok_or_else(|| error(&text, "no log file"))?;
            let position = text
                .split("_LOG_POS=")
                .nth(1)
                .map(|s| s.trim_end_matches(';').trim())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| error(&text, "no log position"))?;
            return Ok(DumpLine::Coordinates { file, position });
        }
        if text.starts_with("-- SET GLOBAL gtid_slave_pos=") {
            let gtid = quoted_after(&text, "=").ok_or_else(|| error(&text, "no GTID"))?;
            return Ok(DumpLine::Gtid(gtid));
        }
        if text.contains("SET @@GLOBAL.GTID_PURGED=") {
            let gtid =
                quoted_after(&text, "GTID_PURGED=").ok_or_else(|| error(&text, "no GTID"))?;
            return Ok(DumpLine::Gtid(gtid.replace('\n', "")));
        }
        Ok(DumpLine::Other)
    }
}

fn error(near: &str, reason: &str) -> ParseError {
    ParseError {
        reason: reason.into(),
        near: near.chars().take(80).collect(),
    }
}

fn quoted_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let rest = rest.trim_start_matches("/*!80000 '+'*/ ");
    let start = rest.find('\'')? + 1;
    let end = start + rest[start..].find('\'')?;
    Some(rest[start..end].to_owned())
}

/// Parses `(..),(..)` up to the end of the line; `true` when the statement ended (`;`).
fn parse_tuples(line: &[u8]) -> Result<(Vec<Vec<Literal>>, bool), ParseError> {
    let mut p = Cursor {
        input: line,
        pos: 0,
    };
    let mut rows = Vec::new();
    loop {
        p.skip_spaces();
        if p.peek() != Some(b'(') {
            return Err(p.error("expected ("));
        }
        p.pos += 1;
        let mut row = Vec::new();
        loop {
            p.skip_spaces();
            row.push(p.literal()?);
            p.skip_spaces();
            match p.next() {
                Some(b',') => continue,
                Some(b')') => break,
                _ => return Err(p.error("expected , or ) after a value")),
            }
        }
        rows.push(row);
        match p.next() {
            Some(b',') if p.pos == line.len() => return Ok((rows, false)),
            Some(b',') => continue,
            Some(b';') => return Ok((rows, true)),
            _ => return Err(p.error("expected , or ; after a row")),
        }
    }
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.pos += 1;
        c
    }
    fn rest(&self) -> &[u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }
    fn error(&self, reason: &str) -> ParseError {
        error(&String::from_utf8_lossy(self.rest()), reason)
    }

    /// A backquoted identifier (`` ` `` doubled inside).
    fn identifier(&mut self) -> Result<String, ParseError> {
        if self.next() != Some(b'`') {
            return Err(self.error("expected a `quoted` name"));
        }
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(b'`') if self.peek() == Some(b'`') => {
                    self.pos += 1;
                    out.push(b'`');
                }
                Some(b'`') => break,
                Some(c) => out.push(c),
                None => return Err(self.error("unterminated name")),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("name is not UTF-8"))
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        match self.peek() {
            Some(b'\'') => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.next() {
                        Some(b'\'') => return Ok(Literal::String(out)),
                        Some(b'\\') => out.push(match self.next() {
                            Some(b'0') => 0,
                            Some(b'b') => 8,
                            Some(b'n') => b'\n',
                            Some(b'r') => b'\r',
                            Some(b't') => b'\t',
                            Some(b'Z') => 26,
                            Some(c) => c,
                            None => return Err(self.error("unterminated escape")),
                        }),
                        Some(c) => out.push(c),
                        None => return Err(self.error("unterminated string")),
                    }
                }
            }
            Some(b'0') if self.input.get(self.pos + 1) == Some(&b'x') => {
                self.pos += 2;
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                let hex = &self.input[start..self.pos];
                if hex.len() % 2 != 0 {
                    return Err(self.error("odd hex literal"));
                }
                let nibble = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                Ok(Literal::Hex(
                    hex.chunks_exact(2)
                        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
                        .collect(),
                ))
            }
            Some(b'N') if self.rest().starts_with(b"NULL") => {
                self.pos += 4;
                Ok(Literal::Null)
            }
            Some(c) if c == b'-' || c == b'+' || c == b'.' || c.is_ascii_digit() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')
                }) {
                    self.pos += 1;
                }
                Ok(Literal::Number(
                    String::from_utf8_lossy(&self.input[start..self.pos]).into_owned(),
                ))
            }
            _ => Err(self.error("unknown literal")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_and_gtid() {
        let mut p = DumpParser::default();
        assert_eq!(
            p.line(b"-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000001', MASTER_LOG_POS=3675;")
                .unwrap(),
            DumpLine::Coordinates {
                file: "binlog.000001".into(),
                position: 3675
            }
        );
        assert_eq!(
            p.line(
                b"-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='b.000002', SOURCE_LOG_POS=4;"
            )
            .unwrap(),
            DumpLine::Coordinates {
                file: "b.000002".into(),
                position: 4
            }
        );
        assert_eq!(
            p.line(b"-- SET GLOBAL gtid_slave_pos='0-1-11';").unwrap(),
            DumpLine::Gtid("0-1-11".into())
        );
        assert_eq!(
            p.line(b"SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5';")
                .unwrap(),
            DumpLine::Gtid("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5".into())
        );
        assert_eq!(
            p.line(b"USE `my``db`;").unwrap(),
            DumpLine::Use("my`db".into())
        );
        assert_eq!(
            p.line(b"/*M!999999\\- enable the sandbox mode */ ")
                .unwrap(),
            DumpLine::Other
        );
    }

    #[test]
    fn extended_insert_across_lines() {
        let mut p = DumpParser::default();
        let first = p
            .line(b"INSERT INTO `t` (`a`, `b c`) VALUES (1,'it\\'s \\\"q\\\"\\n\t\\\\'),")
            .unwrap();
        assert_eq!(
            first,
            DumpLine::Rows {
                table: "t".into(),
                columns: vec!["a".into(), "b c".into()],
                rows: vec![vec![
                    Literal::Number("1".into()),
                    Literal::String(b"it's \"q\"\n\t\\".to_vec())
                ]]
            }
        );
        let DumpLine::Rows { rows, .. } = p.line(b"(-2.5e-3,NULL),(0x00FF,''),").unwrap() else {
            panic!()
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], Literal::Number("-2.5e-3".into()));
        assert_eq!(rows[0][1], Literal::Null);
        assert_eq!(rows[1][0], Literal::Hex(vec![0, 255]));
        assert_eq!(rows[1][1], Literal::String(Vec::new()));
        let DumpLine::Rows { rows, .. } = p.line(b"(3,'a,b');").unwrap() else {
            panic!()
        };
        assert_eq!(rows[0][1], Literal::String(b"a,b".to_vec()));
        assert_eq!(p.line(b"-- done").unwrap(), DumpLine::Other);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut p = DumpParser::default();
        assert!(p.line(b"INSERT INTO `t` VALUES (1,'x);").is_err());
        assert!(p.line(b"INSERT INTO t VALUES (1);").is_err());
        let mut p = DumpParser::default();
        assert!(p.line(b"INSERT INTO `t` VALUES (1 2);").is_err());
    }
}
