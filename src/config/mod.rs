//! The YAML config: parsing (unknown fields refused, `${VAR}` expanded in string values) and
//! validation that reports every problem at once.
//!
//! About 540 lines of config structs (their doc comments are the reference users read) and
//! parsing; the rest is unit tests.

use std::fmt;
use std::path::Path;

use etcd_sync_api::{TlsMode, TlsSettings};
pub use etcd_sync_engine::shape::{OnRemove, TableOptions};
use serde::Deserialize;

mod env;
mod validate;

pub use env::expand_env;
use env::{env_opt_string, env_secret, env_string, env_strings, env_tls_mode};

/// Defaults, in one place.
pub mod defaults {
    pub const POSTGRES_PORT: u16 = 5432;
    pub const MYSQL_PORT: u16 = 3306;
    pub const MYSQLDUMP: &str = "mysqldump";
    pub const SLOT: &str = "etcd_sync";
    pub const PUBLICATION: &str = "etcd_sync";
    pub const DUMP_CONNECTIONS: usize = 2;
    /// A large backlog is read through logical decoding's SQL interface (a third of the
    /// source's CPU per transaction of the walsender's).
    pub const SQL_CATCH_UP: bool = true;
    pub const ENDPOINT: &str = "http://127.0.0.1:2379";
    pub const PREFIX: &str = "/sync";
    pub const STATE_PREFIX_ROOT: &str = "/etcd-sync";
    /// etcd's own default `--max-txn-ops`.
    pub const MAX_TXN_OPS: usize = 128;
    /// Below etcd's default `--max-request-bytes` (1.5 MiB) with room for the txn's framing.
    pub const MAX_TXN_BYTES: usize = 1024 * 1024;
    /// etcd's own ingest ceiling is reached with 16 txns in flight (1M rows on 2 cores: 4 gave
    /// 0.69 of it, 8 gave 0.87, 16 gave 0.92).
    pub const DUMP_TXNS_IN_FLIGHT: usize = 16;
    pub const READY_LAG_SECONDS: f64 = 10.0;
    pub const LEASE_TTL: &str = "10s";
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}{}", list_problems(problems))]
    Invalid { path: String, problems: Vec<String> },
}

/// One problem on one line; several as a list.
fn list_problems(problems: &[String]) -> String {
    match problems {
        [one] => format!(": {one}"),
        many => format!(" has {} problems:\n  - {}", many.len(), many.join("\n  - ")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub ha: HaConfig,
    /// Where to start streaming when there is no state yet, instead of dumping.
    pub start: Option<StartConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; off when unset.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub listen: Option<String>,
    /// `/readyz` fails when the last applied transaction was older than this at apply time.
    #[serde(default = "default_ready_lag_seconds")]
    pub ready_lag_seconds: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            ready_lag_seconds: default_ready_lag_seconds(),
        }
    }
}

/// High availability: several agents, one active, elected through etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    #[serde(default)]
    pub enabled: bool,
    /// How long the leader's (or, without `ha`, the lock holder's) lease outlives its last
    /// renewal: how soon a standby takes over after the leader dies, e.g. `10s`.
    #[serde(default = "default_lease_ttl", deserialize_with = "env_string")]
    pub lease_ttl: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_ttl: default_lease_ttl(),
        }
    }
}

impl HaConfig {
    /// The validated TTL (see [`Config::parse`]).
    pub fn lease_ttl(&self) -> std::time::Duration {
        humantime::parse_duration(&self.lease_ttl).unwrap_or(std::time::Duration::from_secs(10))
    }
}

/// A start position, as operators of other CDC tools give it: PostgreSQL `lsn`, MySQL
/// `file` + `position`, or MariaDB `gtid`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartConfig {
    #[serde(default, deserialize_with = "env_opt_string")]
    pub lsn: Option<String>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub gtid: Option<String>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub file: Option<String>,
    pub position: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Postgres,
    Mysql,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub driver: DriverKind,
    #[serde(default = "default_host", deserialize_with = "env_string")]
    pub host: String,
    pub port: Option<u16>,
    /// Required; missing, it is reported with every other problem (not as a parse error).
    #[serde(default, deserialize_with = "env_string")]
    pub user: String,
    #[serde(default, deserialize_with = "env_secret")]
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored), instead of `password`.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub password_file: Option<String>,
    /// Required, as `user`.
    #[serde(default, deserialize_with = "env_string")]
    pub name: String,
    #[serde(default)]
    pub tls: DatabaseTls,
    #[serde(default)]
    pub postgres: PostgresOptions,
    #[serde(default)]
    pub mysql: MysqlOptions,
}

/// TLS to the database (`database.tls`); modes as libpq's `sslmode`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTls {
    #[serde(default, deserialize_with = "env_tls_mode")]
    pub mode: TlsMode,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub ca_file: Option<String>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub cert_file: Option<String>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub key_file: Option<String>,
}

impl DatabaseTls {
    pub fn settings(&self) -> TlsSettings {
        TlsSettings {
            mode: self.mode,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// TLS to etcd (`etcd.tls`), used for `https://` endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA of etcd's server certificates; default: the system's trusted roots.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub ca_file: Option<String>,
    /// Client certificate for etcd's `--client-cert-auth`.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub cert_file: Option<String>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub key_file: Option<String>,
    /// The name etcd's certificate must carry, when it differs from the endpoints' host.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlOptions {
    /// Replica id of the binary-log connection; default derived from the config (stable).
    pub server_id: Option<u32>,
    #[serde(default = "default_mysqldump", deserialize_with = "env_string")]
    pub mysqldump: String,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        Self {
            server_id: None,
            mysqldump: default_mysqldump(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresOptions {
    #[serde(default = "default_slot", deserialize_with = "env_string")]
    pub slot: String,
    #[serde(default = "default_publication", deserialize_with = "env_string")]
    pub publication: String,
    #[serde(default = "default_dump_connections")]
    pub dump_connections: usize,
    /// Read a backlog of 16 MiB of WAL or more through logical decoding's SQL interface.
    #[serde(default = "default_sql_catch_up")]
    pub sql_catch_up: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            slot: default_slot(),
            publication: default_publication(),
            dump_connections: default_dump_connections(),
            sql_catch_up: default_sql_catch_up(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Per-table options (`columns`, `where`, `value`), by the table's name as `include`
    /// writes it.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, TableOptions>,
    /// What happens to the keys of a table no longer selected: `delete` (the default) or `keep`.
    #[serde(default)]
    pub on_remove: OnRemove,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    #[serde(default = "default_endpoints", deserialize_with = "env_strings")]
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix", deserialize_with = "env_string")]
    pub prefix: String,
    /// Default: `/etcd-sync/<database.name>`; see [`Config::state_prefix`].
    #[serde(default, deserialize_with = "env_opt_string")]
    pub state_prefix: Option<String>,
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    #[serde(default = "default_max_txn_bytes")]
    pub max_txn_bytes: usize,
    #[serde(default = "default_dump_txns_in_flight")]
    pub dump_txns_in_flight: usize,
    /// What to do with a row whose key and value exceed `max_txn_bytes`.
    #[serde(default)]
    pub oversized_rows: OversizedRows,
    /// etcd user (with etcd's auth enabled); needs read/write on the prefix and state prefix.
    #[serde(default, deserialize_with = "env_opt_string")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "env_secret")]
    pub password: Option<Secret>,
    #[serde(default, deserialize_with = "env_opt_string")]
    pub password_file: Option<String>,
    #[serde(default)]
    pub tls: EtcdTls,
}

/// Rows too large for one etcd request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizedRows {
    /// Stop with an error naming the table and key (never drop data silently).
    #[default]
    Fail,
    /// Leave the row out of etcd (deleting an older version of its key), logging each.
    Skip,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: default_endpoints(),
            prefix: default_prefix(),
            state_prefix: None,
            max_txn_ops: default_max_txn_ops(),
            max_txn_bytes: default_max_txn_bytes(),
            dump_txns_in_flight: default_dump_txns_in_flight(),
            oversized_rows: OversizedRows::default(),
            user: None,
            password: None,
            password_file: None,
            tls: EtcdTls::default(),
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_lease_ttl() -> String {
    defaults::LEASE_TTL.into()
}
fn default_ready_lag_seconds() -> f64 {
    defaults::READY_LAG_SECONDS
}
fn default_mysqldump() -> String {
    defaults::MYSQLDUMP.into()
}
fn default_slot() -> String {
    defaults::SLOT.into()
}
fn default_publication() -> String {
    defaults::PUBLICATION.into()
}
fn default_sql_catch_up() -> bool {
    defaults::SQL_CATCH_UP
}

fn default_dump_connections() -> usize {
    defaults::DUMP_CONNECTIONS
}
fn default_endpoints() -> Vec<String> {
    vec![defaults::ENDPOINT.into()]
}
fn default_prefix() -> String {
    defaults::PREFIX.into()
}
fn default_max_txn_ops() -> usize {
    defaults::MAX_TXN_OPS
}
fn default_max_txn_bytes() -> usize {
    defaults::MAX_TXN_BYTES
}
fn default_dump_txns_in_flight() -> usize {
    defaults::DUMP_TXNS_IN_FLIGHT
}

/// A password: never printed, in `Debug` or anywhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Reads, parses and validates a config file; `more` adds the problems only a driver can
    /// judge (the wiring passes the selected driver's checks), reported with all the others.
    pub fn load_with(
        path: &Path,
        more: impl Fn(&Config) -> Vec<String>,
    ) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let config = Self::parse_with(&text, &display, more)?;
        if let Some(warning) = literal_password_warning(path, &text) {
            tracing::warn!("{warning}");
        }
        Ok(config)
    }

    /// Parses and validates config text, without any driver's own checks.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        Self::parse_with(text, path, |_| Vec::new())
    }

    pub fn parse_with(
        text: &str,
        path: &str,
        more: impl Fn(&Config) -> Vec<String>,
    ) -> Result<Config, ConfigError> {
        // serde_path_to_error names the exact field, also for errors raised while expanding
        // `${VAR}`, which the YAML parser alone attributes to the enclosing mapping.
        let config: Config = serde_path_to_error::deserialize(
            serde_yaml_ng::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            // The parser may already name the path, or an enclosing part of it.
            let inner = match inner.split_once(": ") {
                Some((named, rest))
                    if field == named || field.starts_with(&format!("{named}.")) =>
                {
                    rest.to_owned()
                }
                _ => inner,
            };
            let message = if field == "." {
                inner
            } else {
                format!("{field}: {inner}")
            };
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })?;
        let mut config = config;
        let mut problems = config.read_password_files();
        problems.extend(config.problems());
        problems.extend(more(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// The data prefix without a trailing slash.
    pub fn prefix(&self) -> &str {
        self.etcd.prefix.trim_end_matches('/')
    }

    /// Where the agent keeps its own state; never under [`Config::prefix`].
    pub fn state_prefix(&self) -> String {
        match &self.etcd.state_prefix {
            Some(p) => p.trim_end_matches('/').to_owned(),
            None => format!("{}/{}", defaults::STATE_PREFIX_ROOT, self.database.name),
        }
    }

    /// The binary-log replica id: configured, or derived from where this agent reads and
    /// writes, so it stays the same across restarts and differs between agents.
    pub fn mysql_server_id(&self) -> u32 {
        if let Some(id) = self.database.mysql.server_id {
            return id;
        }
        let identity = format!(
            "{}:{}/{}/{}",
            self.database.host,
            self.port(),
            self.database.name,
            self.state_prefix()
        );
        // FNV-1a: stable across builds, unlike the standard library's hasher.
        let hash = identity.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        // Away from the small ids people give servers by hand.
        1_000_000 + hash % 3_000_000_000
    }

    pub fn port(&self) -> u16 {
        self.database.port.unwrap_or(match self.database.driver {
            DriverKind::Postgres => defaults::POSTGRES_PORT,
            DriverKind::Mysql => defaults::MYSQL_PORT,
        })
    }

    /// Moves `password_file` contents into `password`; the problems it met.
    fn read_password_files(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let fields = [
            (
                "database",
                &mut self.database.password,
                &self.database.password_file,
            ),
            ("etcd", &mut self.etcd.password, &self.etcd.password_file),
        ];
        for (section, password, file) in fields {
            let Some(file) = file else { continue };
            if password.is_some() {
                problems.push(format!(
                    "{section}.password_file: set {section}.password or {section}.password_file, not both"
                ));
                continue;
            }
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    *password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
                }
                Err(e) => {
                    problems.push(format!("{section}.password_file: cannot read {file}: {e}"))
                }
            }
        }
        problems
    }
}

/// A config file others may read must not hold a literal password.
fn literal_password_warning(path: &Path, text: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o044 == 0 {
        return None;
    }
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let section = ["database", "etcd"].into_iter().find(|section| {
        yaml.get(section)
            .and_then(|s| s.get("password"))
            .and_then(|p| p.as_str())
            .is_some_and(|p| !p.contains("${"))
    })?;
    Some(format!(
        "config file {} is readable by other users (mode {:o}) and holds a literal {section}.password: \
         use {section}.password: ${{VARIABLE}} with the password in the environment, or {section}.password_file, or chmod 600 the file",
        path.display(),
        mode & 0o777
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "database:\n  driver: postgres\n  user: sync\n  name: app\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml")
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.port(), 5432);
        assert_eq!(c.prefix(), "/sync");
        assert_eq!(c.state_prefix(), "/etcd-sync/app");
        assert_eq!(c.etcd.max_txn_ops, 128);
        assert_eq!(c.database.postgres.slot, "etcd_sync");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = parse(&format!("{MINIMAL}  hots: x\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `hots`"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse("database:\n  driver: postgres\n  user: u\n  name: n\n  port: abc\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.port"), "{err}");
    }

    #[test]
    fn missing_required_fields_are_all_named() {
        let err = parse("database:\n  driver: postgres\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.user: required"), "{err}");
        assert!(err.contains("database.name: required"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{MINIMAL}etcd:\n  endpoints: [\"127.0.0.1:2379\"]\n  prefix: /a\n  state_prefix: /a/state\n  max_txn_ops: 1\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("etcd.endpoints"), "{err}");
        assert!(err.contains("etcd.state_prefix"), "{err}");
        assert!(err.contains("etcd.max_txn_ops"), "{err}");
        assert!(err.contains("has 3 problems"), "{err}");
    }

    #[test]
    fn env_vars_expand_and_missing_ones_are_named() {
        let lookup = |name: &str| (name == "PW").then(|| "s3cret".to_string());
        assert_eq!(expand_env("${PW}", lookup).unwrap(), "s3cret");
        assert_eq!(expand_env("a${NOPE:-b}c", lookup).unwrap(), "abc");
        assert_eq!(expand_env("$$5 and $x", lookup).unwrap(), "$5 and $x");
        let err = expand_env("${NOPE}", lookup).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
        assert!(expand_env("${A", lookup).is_err());
    }

    #[test]
    fn missing_env_var_names_the_field() {
        let text = format!("{MINIMAL}  password: ${{ETCD_SYNC_SURELY_UNSET_VAR}}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("database.password"), "{err}");
        assert!(err.contains("ETCD_SYNC_SURELY_UNSET_VAR"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let text = format!("{MINIMAL}  password: hunter2\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.database.password.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn messages_name_the_field_once() {
        for (text, want) in [
            (
                format!("{MINIMAL}  hots: x\n"),
                "database.hots: unknown field `hots`",
            ),
            (
                format!("{MINIMAL}  password: ${{ETCD_SYNC_UNSET_VAR}}\n"),
                "database.password: environment variable ETCD_SYNC_UNSET_VAR is not set",
            ),
            (
                "database:\n  driver: postgres\n  user: u\n  name: n\n  port: abc\n".to_string(),
                "database.port: invalid type",
            ),
            (
                format!("{MINIMAL}etcd:\n  endpoints: 5\n"),
                "etcd.endpoints: invalid type",
            ),
            ("database: [\n".to_string(), "line"),
            (
                "database:\n  driver: oracle\n  user: u\n  name: n\n".to_string(),
                "database.driver: unknown variant `oracle`",
            ),
            (
                "database:\n  driver: postgres\n  name: n\n".to_string(),
                "database.user: required",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn mysql_server_id_is_stable_and_configurable() {
        let text = "database:\n  driver: mysql\n  user: u\n  name: app\n";
        let a = parse(text).unwrap();
        assert_eq!(a.mysql_server_id(), parse(text).unwrap().mysql_server_id());
        assert!(a.mysql_server_id() >= 1_000_000);
        assert_eq!(a.port(), 3306);
        let b = parse(&text.replace("app", "other")).unwrap();
        assert_ne!(a.mysql_server_id(), b.mysql_server_id());
        let c = parse(&format!("{text}  mysql:\n    server_id: 42\n")).unwrap();
        assert_eq!(c.mysql_server_id(), 42);
    }

    #[test]
    fn literal_password_in_a_readable_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("etcd-sync-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        let literal = format!("{MINIMAL}  password: hunter2\n");
        std::fs::write(&path, &literal).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = literal_password_warning(&path, &literal).expect("a warning");
        assert!(
            warning.contains("chmod 600") && !warning.contains("hunter2"),
            "{warning}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(literal_password_warning(&path, &literal).is_none());
        let from_env = format!("{MINIMAL}  password: ${{PW}}\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(literal_password_warning(&path, &from_env).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_come_from_files_and_never_show_in_debug() {
        let dir = std::env::temp_dir().join(format!("etcd-sync-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let text = format!(
            "{MINIMAL}  password_file: {}\netcd:\n  user: agent\n  password: s3cret-etcd\n",
            file.display()
        );
        let c = parse(&text).unwrap();
        let db_password = c.database.password.as_ref().unwrap();
        assert_eq!(db_password.expose(), "s3cret-from-file");
        let debug = format!("{c:?} {:?}", crate::etcd_connection(&c));
        assert!(!debug.contains("s3cret"), "{debug}");

        let both = format!(
            "{MINIMAL}  password: x\n  password_file: {}\n",
            file.display()
        );
        let err = parse(&both).unwrap_err().to_string();
        assert!(
            err.contains("database.password_file: set database.password or"),
            "{err}"
        );
        let missing = format!("{MINIMAL}  password_file: /nonexistent/pw\n");
        let err = parse(&missing).unwrap_err().to_string();
        assert!(
            err.contains("database.password_file: cannot read /nonexistent/pw"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_settings_are_checked_together() {
        let text = format!(
            "{MINIMAL}  tls:\n    mode: verify-full\n    cert_file: /nonexistent/c.pem\netcd:\n  tls:\n    ca_file: /nonexistent/ca.pem\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        for want in [
            "database.tls.ca_file: required with mode verify-full",
            "database.tls.cert_file: cannot read /nonexistent/c.pem",
            "database.tls: cert_file and key_file go together",
            "etcd.tls.ca_file: cannot read /nonexistent/ca.pem",
            "etcd.tls: set, but no endpoint is https://",
        ] {
            assert!(err.contains(want), "{want:?} missing from {err}");
        }
        let err = parse(&format!("{MINIMAL}  tls:\n    mode: sometimes\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.tls.mode: unknown TLS mode"), "{err}");
    }
}
