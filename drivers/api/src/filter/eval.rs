//! A resolved filter on a row: SQL's comparisons and three-valued logic.

use std::cmp::Ordering;

use super::{CmpOp, Expr, Literal, Operand};
use crate::Value;

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
pub(super) enum Num {
    Int(i128),
    Float(f64),
}

pub(super) fn parse_number(text: &str) -> Option<Num> {
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
