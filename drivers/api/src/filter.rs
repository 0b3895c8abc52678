//! `where` filters: the subset of SQL the agent evaluates on a row image itself (the same for
//! both databases and both phases, so a dumped and a streamed row are judged alike).
//!
//! Supported: column names (bare, `"quoted"` or `` `quoted` ``), literals (numbers, `'text'`,
//! `TRUE`, `FALSE`, `NULL`), `= <> != < <= > >=`, `[NOT] IN (...)`, `IS [NOT] NULL`, `AND`,
//! `OR`, `NOT`, parentheses, and a bare column as a boolean. SQL's three-valued logic holds: a
//! comparison with NULL is unknown, and a row is kept only when the filter is true.

use std::cmp::Ordering;
use std::fmt;

use crate::Value;

/// A filter that failed to parse: what, and where in the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {at} of the filter)")]
pub struct FilterError {
    pub message: String,
    pub at: usize,
}

/// What the parser supports, for messages.
pub const SUPPORTED: &str =
    "comparisons (= <> != < <= > >=), AND, OR, NOT, IN (...), IS [NOT] NULL, parentheses, \
     column names and literals";

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    /// As written; compared numerically.
    Number(String),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand<C> {
    Column(C),
    Literal(Literal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed filter; `C` is a column name after parsing and a column index once resolved
/// against a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<C> {
    Or(Vec<Expr<C>>),
    And(Vec<Expr<C>>),
    Not(Box<Expr<C>>),
    Compare(Operand<C>, CmpOp, Operand<C>),
    In {
        operand: Operand<C>,
        list: Vec<Operand<C>>,
        negated: bool,
    },
    IsNull {
        operand: Operand<C>,
        negated: bool,
    },
    /// A bare operand used as a condition (`active`, `TRUE`).
    Truth(Operand<C>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Keyword(String),
    Number(String),
    Text(String),
    Op(CmpOp),
    LParen,
    RParen,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) | Token::Keyword(s) | Token::Number(s) => f.write_str(s),
            Token::Text(s) => write!(f, "'{s}'"),
            Token::Op(op) => f.write_str(match op {
                CmpOp::Eq => "=",
                CmpOp::Ne => "<>",
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            }),
            Token::LParen => f.write_str("("),
            Token::RParen => f.write_str(")"),
            Token::Comma => f.write_str(","),
        }
    }
}

const KEYWORDS: &[&str] = &["AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE", "FALSE"];
/// Words that start something this subset does not evaluate, named in the error.
const UNSUPPORTED_WORDS: &[&str] = &[
    "LIKE", "ILIKE", "BETWEEN", "CASE", "SELECT", "EXISTS", "ANY", "ALL", "SIMILAR", "REGEXP",
    "RLIKE", "CAST", "COLLATE", "DISTINCT",
];

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let fail = |at: usize, message: String| FilterError {
        message,
        at: at + 1,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let token = match c {
            '(' => {
                i += 1;
                Token::LParen
            }
            ')' => {
                i += 1;
                Token::RParen
            }
            ',' => {
                i += 1;
                Token::Comma
            }
            '=' => {
                i += 1;
                Token::Op(CmpOp::Eq)
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 2;
                Token::Op(CmpOp::Ne)
            }
            '<' => match chars.get(i + 1) {
                Some('=') => {
                    i += 2;
                    Token::Op(CmpOp::Le)
                }
                Some('>') => {
                    i += 2;
                    Token::Op(CmpOp::Ne)
                }
                _ => {
                    i += 1;
                    Token::Op(CmpOp::Lt)
                }
            },
            '>' => {
                if chars.get(i + 1) == Some(&'=') {
                    i += 2;
                    Token::Op(CmpOp::Ge)
                } else {
                    i += 1;
                    Token::Op(CmpOp::Gt)
                }
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(fail(start, "unterminated string literal".into())),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                Token::Text(s)
            }
            '"' | '`' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(fail(start, "unterminated quoted column name".into())),
                        Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                            s.push(quote);
                            i += 2;
                        }
                        Some(&q) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                Token::Ident(s)
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.')
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == '.')) =>
            {
                let mut s = String::new();
                if c == '+' {
                    i += 1;
                }
                while let Some(&d) = chars.get(i) {
                    let exponent_sign =
                        (d == '-' || d == '+') && matches!(s.chars().last(), Some('e' | 'E'));
                    if d.is_ascii_digit()
                        || d == '.'
                        || d == 'e'
                        || d == 'E'
                        || exponent_sign
                        || (d == '-' && s.is_empty())
                    {
                        s.push(d);
                        i += 1;
                    } else {
                        break;
                    }
                }
                if parse_number(&s).is_none() {
                    return Err(fail(start, format!("{s} is not a number")));
                }
                Token::Number(s)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&d) = chars.get(i) {
                    if d.is_alphanumeric() || d == '_' || d == '$' {
                        s.push(d);
                        i += 1;
                    } else {
                        break;
                    }
                }
                let upper = s.to_uppercase();
                if KEYWORDS.contains(&upper.as_str()) {
                    Token::Keyword(upper)
                } else if UNSUPPORTED_WORDS.contains(&upper.as_str()) {
                    return Err(fail(
                        start,
                        format!("{upper} is not supported; the agent evaluates {SUPPORTED}"),
                    ));
                } else {
                    Token::Ident(s)
                }
            }
            other => {
                return Err(fail(
                    start,
                    format!("{other:?} is not supported; the agent evaluates {SUPPORTED}"),
                ))
            }
        };
        tokens.push((start, token));
    }
    Ok(tokens)
}

/// Parses a filter; column names are checked later, against the table.
pub fn parse(text: &str) -> Result<Expr<String>, FilterError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        len: text.chars().count(),
    };
    if parser.tokens.is_empty() {
        return Err(FilterError {
            message: "the filter is empty".into(),
            at: 1,
        });
    }
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(parser.error(format!("unexpected {token}"))),
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }
    fn error(&self, message: String) -> FilterError {
        let at = self.tokens.get(self.next).map_or(self.len, |(at, _)| *at) + 1;
        FilterError { message, at }
    }
    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Keyword(k)) if k == word) {
            self.next += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, token: Token) -> Result<(), FilterError> {
        if self.peek() == Some(&token) {
            self.next += 1;
            Ok(())
        } else {
            Err(self.error(match self.peek() {
                Some(found) => format!("expected {token}, found {found}"),
                None => format!("expected {token} at the end"),
            }))
        }
    }

    fn or(&mut self) -> Result<Expr<String>, FilterError> {
        let mut terms = vec![self.and()?];
        while self.keyword("OR") {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr<String>, FilterError> {
        let mut terms = vec![self.not()?];
        while self.keyword("AND") {
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn not(&mut self) -> Result<Expr<String>, FilterError> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr<String>, FilterError> {
        if self.peek() == Some(&Token::LParen) {
            self.next += 1;
            let inner = self.or()?;
            self.expect(Token::RParen)?;
            return Ok(inner);
        }
        let left = self.operand()?;
        if let Some(Token::Op(op)) = self.peek() {
            let op = *op;
            self.next += 1;
            let right = self.operand()?;
            return Ok(Expr::Compare(left, op, right));
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err(self.error("expected NULL after IS [NOT]".into()));
            }
            return Ok(Expr::IsNull {
                operand: left,
                negated,
            });
        }
        let negated = if matches!(self.peek(), Some(Token::Keyword(k)) if k == "NOT")
            && matches!(self.tokens.get(self.next + 1), Some((_, Token::Keyword(k))) if k == "IN")
        {
            self.next += 1;
            true
        } else {
            false
        };
        if self.keyword("IN") {
            self.expect(Token::LParen)?;
            let mut list = vec![self.operand()?];
            while self.peek() == Some(&Token::Comma) {
                self.next += 1;
                list.push(self.operand()?);
            }
            self.expect(Token::RParen)?;
            return Ok(Expr::In {
                operand: left,
                list,
                negated,
            });
        }
        Ok(Expr::Truth(left))
    }

    fn operand(&mut self) -> Result<Operand<String>, FilterError> {
        let operand = match self.peek().cloned() {
            Some(Token::Ident(name)) => {
                if self.tokens.get(self.next + 1).map(|(_, t)| t) == Some(&Token::LParen) {
                    return Err(self.error(format!(
                        "function calls ({name}(...)) are not supported; the agent evaluates \
                         {SUPPORTED}"
                    )));
                }
                Operand::Column(name)
            }
            Some(Token::Number(n)) => Operand::Literal(Literal::Number(n)),
            Some(Token::Text(s)) => Operand::Literal(Literal::Text(s)),
            Some(Token::Keyword(k)) if k == "NULL" => Operand::Literal(Literal::Null),
            Some(Token::Keyword(k)) if k == "TRUE" => Operand::Literal(Literal::Bool(true)),
            Some(Token::Keyword(k)) if k == "FALSE" => Operand::Literal(Literal::Bool(false)),
            Some(found) => {
                return Err(self.error(format!("expected a column or a literal, found {found}")))
            }
            None => return Err(self.error("expected a column or a literal at the end".into())),
        };
        self.next += 1;
        Ok(operand)
    }
}

impl<C> Expr<C> {
    /// Calls `f` on every column the filter uses, in order of appearance.
    pub fn visit_columns<'a>(&'a self, f: &mut impl FnMut(&'a C)) {
        let operand = |o: &'a Operand<C>, f: &mut dyn FnMut(&'a C)| {
            if let Operand::Column(c) = o {
                f(c)
            }
        };
        match self {
            Expr::Or(terms) | Expr::And(terms) => terms.iter().for_each(|t| t.visit_columns(f)),
            Expr::Not(inner) => inner.visit_columns(f),
            Expr::Compare(a, _, b) => {
                operand(a, f);
                operand(b, f);
            }
            Expr::In {
                operand: o, list, ..
            } => {
                operand(o, f);
                list.iter().for_each(|item| operand(item, f));
            }
            Expr::IsNull { operand: o, .. } | Expr::Truth(o) => operand(o, f),
        }
    }
}

impl Expr<String> {
    /// The filter as SQL for a server to evaluate (a dump's query, a publication's row
    /// filter), with column names quoted by `quote`.
    pub fn to_sql(&self, quote: &dyn Fn(&str) -> String) -> String {
        let operand = |o: &Operand<String>| match o {
            Operand::Column(c) => quote(c),
            Operand::Literal(Literal::Null) => "NULL".into(),
            Operand::Literal(Literal::Bool(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
            Operand::Literal(Literal::Number(n)) => n.clone(),
            Operand::Literal(Literal::Text(t)) => format!("'{}'", t.replace('\'', "''")),
        };
        let join = |terms: &[Expr<String>], word: &str| {
            terms
                .iter()
                .map(|t| t.to_sql(quote))
                .collect::<Vec<_>>()
                .join(&format!(" {word} "))
        };
        match self {
            Expr::Or(terms) => format!("({})", join(terms, "OR")),
            Expr::And(terms) => format!("({})", join(terms, "AND")),
            Expr::Not(inner) => format!("(NOT {})", inner.to_sql(quote)),
            Expr::Compare(a, op, b) => {
                format!("({} {} {})", operand(a), Token::Op(*op), operand(b))
            }
            Expr::In {
                operand: o,
                list,
                negated,
            } => format!(
                "({} {}IN ({}))",
                operand(o),
                if *negated { "NOT " } else { "" },
                list.iter().map(operand).collect::<Vec<_>>().join(", ")
            ),
            Expr::IsNull {
                operand: o,
                negated,
            } => format!(
                "({} IS {}NULL)",
                operand(o),
                if *negated { "NOT " } else { "" }
            ),
            Expr::Truth(o) => operand(o),
        }
    }

    /// Whether the filter orders values that may be text (`<`, `>`... with a text literal or
    /// between two columns): a server compares text by its collation, the agent by code point,
    /// so such a filter is left to the agent alone.
    pub fn orders_text(&self) -> bool {
        match self {
            Expr::Or(terms) | Expr::And(terms) => terms.iter().any(Expr::orders_text),
            Expr::Not(inner) => inner.orders_text(),
            Expr::Compare(a, op, b) => {
                let ordering = !matches!(op, CmpOp::Eq | CmpOp::Ne);
                let texty = |o: &Operand<String>| matches!(o, Operand::Literal(Literal::Text(_)));
                let columns = matches!((a, b), (Operand::Column(_), Operand::Column(_)));
                ordering && (texty(a) || texty(b) || columns)
            }
            _ => false,
        }
    }

    /// Every column name the filter uses, in order of appearance.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit_columns(&mut |name: &String| out.push(name.as_str()));
        out
    }

    /// The same filter with column names replaced by what `resolve` makes of them.
    pub fn resolve<C, E>(
        &self,
        resolve: &mut impl FnMut(&str) -> Result<C, E>,
    ) -> Result<Expr<C>, E> {
        let operand = |o: &Operand<String>,
                       r: &mut dyn FnMut(&str) -> Result<C, E>|
         -> Result<Operand<C>, E> {
            Ok(match o {
                Operand::Column(c) => Operand::Column(r(c)?),
                Operand::Literal(l) => Operand::Literal(l.clone()),
            })
        };
        Ok(match self {
            Expr::Or(terms) => Expr::Or(
                terms
                    .iter()
                    .map(|t| t.resolve(resolve))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::And(terms) => Expr::And(
                terms
                    .iter()
                    .map(|t| t.resolve(resolve))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Not(inner) => Expr::Not(Box::new(inner.resolve(resolve)?)),
            Expr::Compare(a, op, b) => {
                Expr::Compare(operand(a, resolve)?, *op, operand(b, resolve)?)
            }
            Expr::In {
                operand: o,
                list,
                negated,
            } => Expr::In {
                operand: operand(o, resolve)?,
                list: list
                    .iter()
                    .map(|item| operand(item, resolve))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            },
            Expr::IsNull {
                operand: o,
                negated,
            } => Expr::IsNull {
                operand: operand(o, resolve)?,
                negated: *negated,
            },
            Expr::Truth(o) => Expr::Truth(operand(o, resolve)?),
        })
    }
}

/// A value as the filter compares it.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(Num),
    Text(&'a str),
    /// Something the subset cannot compare (bytes, arrays, JSON): only IS [NOT] NULL applies.
    Opaque,
}

/// A number compared exactly when it is an integer, as a float otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

fn parse_number(text: &str) -> Option<Num> {
    if let Ok(i) = text.parse::<i128>() {
        return Some(Num::Int(i));
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() || text.contains("inf") || text.contains("Inf"))
        .map(Num::Float)
}

fn compare_numbers(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Int(x), Num::Float(y)) => (x as f64).partial_cmp(&y),
        (Num::Float(x), Num::Int(y)) => x.partial_cmp(&(y as f64)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
    }
}

fn scalar(value: &Value) -> Scalar<'_> {
    match value {
        Value::Null | Value::ZeroDate(_) => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Int(i) => Scalar::Number(Num::Int(i128::from(*i))),
        Value::UInt(u) => Scalar::Number(Num::Int(i128::from(*u))),
        Value::Float(f) => Scalar::Number(Num::Float(*f)),
        Value::Number(n) => parse_number(n).map_or(Scalar::Opaque, Scalar::Number),
        Value::Text(s) => Scalar::Text(s),
        Value::Bytes(_) | Value::Json(_) | Value::Array(_) | Value::Unchanged => Scalar::Opaque,
    }
}

fn literal(literal: &Literal) -> Scalar<'_> {
    match literal {
        Literal::Null => Scalar::Null,
        Literal::Bool(b) => Scalar::Bool(*b),
        Literal::Number(n) => parse_number(n).map_or(Scalar::Opaque, Scalar::Number),
        Literal::Text(s) => Scalar::Text(s),
    }
}

/// SQL's comparison of two values: `None` is unknown (a NULL, or values of kinds that do not
/// compare). Booleans compare with numbers as 1 and 0 (MySQL's BOOLEAN is TINYINT(1)); text
/// compares with a number when it reads as one.
fn compare(a: &Scalar<'_>, b: &Scalar<'_>) -> Option<Ordering> {
    let as_number = |s: &Scalar<'_>| match s {
        Scalar::Number(n) => Some(*n),
        Scalar::Bool(b) => Some(Num::Int(i128::from(*b))),
        Scalar::Text(t) => parse_number(t.trim()),
        _ => None,
    };
    match (a, b) {
        (Scalar::Null, _) | (_, Scalar::Null) | (Scalar::Opaque, _) | (_, Scalar::Opaque) => None,
        (Scalar::Text(x), Scalar::Text(y)) => Some(x.cmp(y)),
        (Scalar::Bool(x), Scalar::Bool(y)) => Some(x.cmp(y)),
        (Scalar::Bool(x), Scalar::Text(t)) | (Scalar::Text(t), Scalar::Bool(x))
            if parse_bool(t).is_some() =>
        {
            let t = parse_bool(t)?;
            Some(if matches!(a, Scalar::Bool(_)) {
                x.cmp(&t)
            } else {
                t.cmp(x)
            })
        }
        _ => compare_numbers(as_number(a)?, as_number(b)?),
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "1" | "yes" | "on" => Some(true),
        "f" | "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn truth(s: &Scalar<'_>) -> Option<bool> {
    match s {
        Scalar::Null | Scalar::Opaque => None,
        Scalar::Bool(b) => Some(*b),
        Scalar::Number(Num::Int(i)) => Some(*i != 0),
        Scalar::Number(Num::Float(f)) => Some(*f != 0.0),
        Scalar::Text(t) => parse_bool(t),
    }
}

impl Expr<usize> {
    /// Whether a row passes: only a true filter keeps it (false and unknown do not).
    pub fn keeps(&self, row: &[Value]) -> bool {
        self.eval(row) == Some(true)
    }

    fn operand<'a>(o: &'a Operand<usize>, row: &'a [Value]) -> Scalar<'a> {
        match o {
            Operand::Column(i) => row.get(*i).map_or(Scalar::Null, scalar),
            Operand::Literal(l) => literal(l),
        }
    }

    fn eval(&self, row: &[Value]) -> Option<bool> {
        match self {
            Expr::Or(terms) => {
                let mut result = Some(false);
                for t in terms {
                    match t.eval(row) {
                        Some(true) => return Some(true),
                        None => result = None,
                        Some(false) => {}
                    }
                }
                result
            }
            Expr::And(terms) => {
                let mut result = Some(true);
                for t in terms {
                    match t.eval(row) {
                        Some(false) => return Some(false),
                        None => result = None,
                        Some(true) => {}
                    }
                }
                result
            }
            Expr::Not(inner) => inner.eval(row).map(|b| !b),
            Expr::Compare(a, op, b) => {
                let ordering = compare(&Self::operand(a, row), &Self::operand(b, row))?;
                Some(match op {
                    CmpOp::Eq => ordering == Ordering::Equal,
                    CmpOp::Ne => ordering != Ordering::Equal,
                    CmpOp::Lt => ordering == Ordering::Less,
                    CmpOp::Le => ordering != Ordering::Greater,
                    CmpOp::Gt => ordering == Ordering::Greater,
                    CmpOp::Ge => ordering != Ordering::Less,
                })
            }
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let value = Self::operand(operand, row);
                let mut result = Some(false);
                for item in list {
                    match compare(&value, &Self::operand(item, row)) {
                        Some(Ordering::Equal) => {
                            result = Some(true);
                            break;
                        }
                        None => result = None,
                        Some(_) => {}
                    }
                }
                if *negated {
                    result.map(|b| !b)
                } else {
                    result
                }
            }
            Expr::IsNull { operand, negated } => {
                let null = Self::operand(operand, row) == Scalar::Null;
                Some(null != *negated)
            }
            Expr::Truth(operand) => truth(&Self::operand(operand, row)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeps(filter: &str, columns: &[&str], row: &[Value]) -> bool {
        let expr = parse(filter).unwrap();
        let resolved = expr
            .resolve(&mut |name: &str| {
                columns
                    .iter()
                    .position(|c| *c == name)
                    .ok_or_else(|| format!("no column {name}"))
            })
            .unwrap();
        resolved.keeps(row)
    }

    #[test]
    fn the_issue_example_filters_rows() {
        let cols = ["id", "active", "tenant_id"];
        let row = |active: Value, tenant: Value| vec![Value::Int(1), active, tenant];
        let f = "active AND tenant_id = 7";
        assert!(keeps(f, &cols, &row(Value::Bool(true), Value::Int(7))));
        assert!(!keeps(f, &cols, &row(Value::Bool(false), Value::Int(7))));
        assert!(!keeps(f, &cols, &row(Value::Bool(true), Value::Int(8))));
        // MySQL's BOOLEAN is an integer; PostgreSQL numerics arrive as numbers.
        assert!(keeps(
            f,
            &cols,
            &row(Value::Int(1), Value::Number("7".into()))
        ));
        // NULL is unknown, and unknown is not kept.
        assert!(!keeps(f, &cols, &row(Value::Null, Value::Int(7))));
        assert!(!keeps(
            "NOT (tenant_id = 7)",
            &cols,
            &row(Value::Null, Value::Null)
        ));
    }

    #[test]
    fn three_valued_logic() {
        let cols = ["a", "b"];
        let nulls = [Value::Null, Value::Int(1)];
        assert!(keeps("a = 1 OR b = 1", &cols, &nulls));
        assert!(!keeps("a = 1 AND b = 1", &cols, &nulls));
        assert!(keeps("a IS NULL", &cols, &nulls));
        assert!(keeps("b IS NOT NULL", &cols, &nulls));
        assert!(!keeps("a IN (1, 2)", &cols, &nulls));
        assert!(!keeps("b NOT IN (2, NULL)", &cols, &nulls));
        assert!(keeps("b NOT IN (2, 3)", &cols, &nulls));
        assert!(keeps("b IN (2, 1)", &cols, &nulls));
    }

    #[test]
    fn literals_and_comparisons() {
        let cols = ["name", "price", "code", "Quoted Col"];
        let row = [
            Value::Text("it's".into()),
            Value::Number("12.50".into()),
            Value::UInt(18446744073709551615),
            Value::Text("x".into()),
        ];
        assert!(keeps("name = 'it''s'", &cols, &row));
        assert!(keeps("price > 12.4 and price <= 12.5", &cols, &row));
        assert!(keeps("price <> 12", &cols, &row));
        assert!(keeps("price != 12", &cols, &row));
        assert!(keeps("code = 18446744073709551615", &cols, &row));
        assert!(keeps("code > 18446744073709551614", &cols, &row));
        assert!(keeps(
            "\"Quoted Col\" = 'x' AND `Quoted Col` >= 'x'",
            &cols,
            &row
        ));
        assert!(keeps("-1 < price", &cols, &row));
        assert!(keeps("price < 1e3", &cols, &row));
        assert!(!keeps("name < 'a'", &cols, &row));
    }

    #[test]
    fn unsupported_syntax_is_named() {
        let err = parse("name LIKE 'a%'").unwrap_err();
        assert!(err.message.starts_with("LIKE is not supported"), "{err}");
        assert_eq!(err.at, 6);
        let err = parse("lower(name) = 'a'").unwrap_err();
        assert!(err.message.contains("function calls (lower(...))"), "{err}");
        let err = parse("price + 1 > 2").unwrap_err();
        assert!(err.message.contains("'+' is not supported"), "{err}");
        let err = parse("a = 1 AND").unwrap_err();
        assert!(err.message.contains("at the end"), "{err}");
        let err = parse("(a = 1").unwrap_err();
        assert!(err.message.contains("expected )"), "{err}");
        let err = parse("a = 'x").unwrap_err();
        assert!(err.message.contains("unterminated"), "{err}");
        assert!(parse("   ").is_err());
        let err = parse("a = 1 b").unwrap_err();
        assert!(err.message.contains("unexpected b"), "{err}");
    }

    #[test]
    fn filters_render_as_sql() {
        let expr = parse("active AND tenant_id IN (7, 8) OR NOT name = 'it''s' AND x IS NOT NULL")
            .unwrap();
        let quote = |c: &str| format!("\"{c}\"");
        assert_eq!(
            expr.to_sql(&quote),
            r#"(("active" AND ("tenant_id" IN (7, 8))) OR ((NOT ("name" = 'it''s')) AND ("x" IS NOT NULL)))"#
        );
        assert!(!expr.orders_text());
        assert!(parse("name < 'b'").unwrap().orders_text());
        assert!(parse("a < b").unwrap().orders_text());
        assert!(!parse("a < 3").unwrap().orders_text());
    }

    #[test]
    fn columns_are_listed() {
        let expr = parse("a = 1 AND (b IN (c, 2) OR NOT d IS NULL) AND e").unwrap();
        assert_eq!(expr.columns(), vec!["a", "b", "c", "d", "e"]);
    }
}
