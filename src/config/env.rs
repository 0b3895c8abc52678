//! `${VAR}` and `${VAR:-default}` in config values, expanded while deserializing so that an
//! error names the field it came from.

use serde::{Deserialize, Deserializer};

use super::{Secret, TlsMode};

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let expr = &body[..end];
            let (name, fallback) = match expr.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            match (lookup(name), fallback) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand<E: serde::de::Error>(text: String) -> Result<String, E> {
    expand_env(&text, |name| std::env::var(name).ok()).map_err(E::custom)
}

pub(super) fn env_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    expand(String::deserialize(d)?)
}

pub(super) fn env_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?.map(expand).transpose()
}

pub(super) fn env_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(expand)
        .collect()
}

pub(super) fn env_tls_mode<'de, D: Deserializer<'de>>(d: D) -> Result<TlsMode, D::Error> {
    env_string(d)?.parse().map_err(serde::de::Error::custom)
}

pub(super) fn env_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(env_opt_string(d)?.map(Secret))
}
