//! The filter's text: tokens, then a recursive-descent parser.

use std::fmt;

use super::eval::parse_number;
use super::{CmpOp, Expr, FilterError, Literal, Operand, SUPPORTED};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
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
