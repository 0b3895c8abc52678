//! `where` filters: the subset of SQL the agent evaluates on a row image itself (the same for
//! both databases and both phases, so a dumped and a streamed row are judged alike).
//!
//! Supported: column names (bare, `"quoted"` or `` `quoted` ``), literals (numbers, `'text'`,
//! `TRUE`, `FALSE`, `NULL`), `= <> != < <= > >=`, `[NOT] IN (...)`, `IS [NOT] NULL`, `AND`,
//! `OR`, `NOT`, parentheses, and a bare column as a boolean. SQL's three-valued logic holds: a
//! comparison with NULL is unknown, and a row is kept only when the filter is true.

mod eval;
mod parse;

pub use parse::parse;
use parse::Token;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

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
