//! JSON text handling shared by the drivers: number literals checked as JSON allows them, and
//! JSON documents brought to one canonical form without going through floating point.

use std::collections::BTreeMap;

/// Whether `text` is a JSON number literal (`-0.5e+3`, not `+1`, `.5`, `01`, `NaN`).
pub fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// A JSON document in canonical form: no insignificant white space, object keys sorted (the
/// last of duplicate keys wins), strings escaped as serde_json escapes them, and every number
/// literal kept digit for digit (`18446744073709551616` and `1.50` stay as written, where a
/// round trip through `f64` would change them). `None` when `text` is not JSON.
pub fn canonical_json(text: &str) -> Option<String> {
    let mut parser = Parser {
        input: text.as_bytes(),
        text,
        pos: 0,
    };
    let node = parser.value(0)?;
    parser.skip_space();
    if parser.pos != parser.input.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    node.write(&mut out);
    Some(out)
}

/// Nesting deeper than this is refused rather than risking the stack (MySQL allows 100).
const MAX_DEPTH: usize = 512;

enum Node<'a> {
    /// A number, `true`, `false` or `null`, as written.
    Literal(&'a str),
    /// A string, already re-escaped.
    String(String),
    Array(Vec<Node<'a>>),
    Object(BTreeMap<String, (String, Node<'a>)>),
}

impl Node<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Node::Literal(text) => out.push_str(text),
            Node::String(escaped) => out.push_str(escaped),
            Node::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Node::Object(members) => {
                out.push('{');
                for (i, (escaped_key, value)) in members.values().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(escaped_key);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_space(&mut self) {
        while matches!(self.input.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        if self.input.get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        match *self.input.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                let mut members = BTreeMap::new();
                if self.eat(b'}') {
                    return Some(Node::Object(members));
                }
                loop {
                    self.skip_space();
                    let (key, escaped) = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let value = self.value(depth + 1)?;
                    members.insert(key, (escaped, value));
                    if self.eat(b'}') {
                        return Some(Node::Object(members));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Node::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Node::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(|(_, escaped)| Node::String(escaped)),
            _ => {
                let start = self.pos;
                while self.pos < self.input.len()
                    && !matches!(
                        self.input[self.pos],
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.pos += 1;
                }
                let literal = self.text.get(start..self.pos)?;
                (matches!(literal, "true" | "false" | "null") || is_json_number(literal))
                    .then_some(Node::Literal(literal))
            }
        }
    }

    /// A string token at the cursor: its decoded text and its canonical escaped form.
    fn string(&mut self) -> Option<(String, String)> {
        if self.input.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        loop {
            match *self.input.get(self.pos)? {
                b'\\' => self.pos += 2,
                b'"' => break,
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        let decoded: String = serde_json::from_str(self.text.get(start..self.pos)?).ok()?;
        let escaped = serde_json::to_string(&decoded).ok()?;
        Some((decoded, escaped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_digits() {
        assert_eq!(
            canonical_json(r#" {"b": [18446744073709551616, 1.50, -0.0, 1E+400], "a" : 3} "#)
                .as_deref(),
            Some(r#"{"a":3,"b":[18446744073709551616,1.50,-0.0,1E+400]}"#)
        );
        assert_eq!(
            canonical_json("123456789012345678901234567890.123456789").as_deref(),
            Some("123456789012345678901234567890.123456789")
        );
    }

    #[test]
    fn strings_and_keys_as_serde_json_writes_them() {
        assert_eq!(
            canonical_json(r#"{"\u00e9":"a\/b\u0001", "a":"x", "a":"y"}"#).as_deref(),
            Some(r#"{"a":"y","é":"a/b\u0001"}"#)
        );
        assert_eq!(
            canonical_json(r#"["a\"b", {}, []]"#).as_deref(),
            Some(r#"["a\"b",{},[]]"#)
        );
    }

    #[test]
    fn invalid_json_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "NaN",
            "[Infinity]",
            "01",
            "+1",
            ".5",
            "[1] x",
            "tru",
            "\"abc",
        ] {
            assert_eq!(canonical_json(bad), None, "{bad:?}");
        }
        assert_eq!(canonical_json(&"[".repeat(600)), None);
    }

    #[test]
    fn number_literals() {
        for good in ["0", "-0", "1.5", "1e5", "1E-5", "-12.34e+56"] {
            assert!(is_json_number(good), "{good}");
        }
        for bad in ["", "-", "1.", ".1", "1e", "0x10", "NaN", "Infinity", "1 "] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
