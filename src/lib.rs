//! etcd-sync: keeps an etcd prefix equal to a PostgreSQL (or MySQL) database.
//!
//! The binary (`src/main.rs`) is a thin shell over this library: [`config`] reads the YAML,
//! [`engine`] runs the dump and sync phases against a [`etcd_sync_api::Driver`], [`etcd`] owns
//! every write to etcd, and [`encode`] is the key/value contract. This file is the wiring: the
//! one place that names the drivers, builds them from the config, and lets each judge its own
//! options.

pub mod check;
pub mod config;
pub mod etcd;
pub mod logging;
pub mod preview;
pub mod status;
pub mod verify;

// The engine crate's modules under the names the rest of this crate uses.
pub use etcd_sync_engine as engine;
pub use etcd_sync_engine::{encode, metrics, sink};

use std::path::Path;

use config::{Config, ConfigError, DriverKind};
use etcd_sync_api::{Position, TableFilter, TlsMode};
use etcd_sync_mysql::{MysqlConfig, MysqlDriver};
use etcd_sync_postgres::{ConnectParams, PostgresConfig, PostgresDriver};

pub use etcd_sync_api::error_chain;

/// Reads and validates a config file, the selected driver's own checks included.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    Config::load_with(path, driver_problems)
}

/// What only the selected driver can judge in the config.
pub fn driver_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let db = &config.database;
    match db.driver {
        DriverKind::Postgres => {
            if let Some(lsn) = config.start.as_ref().and_then(|s| s.lsn.as_deref()) {
                if let Err(e) = etcd_sync_postgres::start_position(lsn) {
                    problems.push(format!("start.lsn: {e}"));
                }
            }
        }
        DriverKind::Mysql => {
            if db.tls.mode == TlsMode::VerifyCa {
                if let Err(e) = etcd_sync_mysql::check_tls_settings(&db.tls.settings()) {
                    problems.push(format!("database.tls.mode: {e}"));
                }
            }
        }
    }
    problems
}

/// The configured start position (`start:`), in the selected driver's format.
pub fn start_position(config: &Config) -> Option<Position> {
    let start = config.start.as_ref()?;
    match config.database.driver {
        DriverKind::Postgres => etcd_sync_postgres::start_position(start.lsn.as_deref()?).ok(),
        DriverKind::Mysql => Some(etcd_sync_mysql::start_position(
            start.file.as_deref(),
            start.position,
            start.gtid.as_deref(),
        )),
    }
}

/// Where etcd is, from the config.
pub fn etcd_connection(config: &Config) -> etcd::Connection {
    let tls = &config.etcd.tls;
    etcd::Connection {
        endpoints: config.etcd.endpoints.clone(),
        user: config.etcd.user.clone(),
        password: config.etcd.password.as_ref().map(|p| p.expose().to_owned()),
        tls: etcd::TlsFiles {
            ca_file: tls.ca_file.clone(),
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            server_name: tls.server_name.clone(),
        },
    }
}

/// The engine's settings from the config.
pub fn engine_settings(config: &Config) -> engine::Settings {
    engine::Settings {
        prefix: config.prefix().to_owned(),
        state_prefix: config.state_prefix(),
        max_txn_ops: config.etcd.max_txn_ops,
        max_txn_bytes: config.etcd.max_txn_bytes,
        dump_txns_in_flight: config.etcd.dump_txns_in_flight,
        skip_oversized: config.etcd.oversized_rows == config::OversizedRows::Skip,
        metrics: std::sync::Arc::new(metrics::Metrics::default()),
        metrics_served: config.metrics.listen.is_some(),
        start: start_position(config),
        ha: config.ha.enabled,
        lease_ttl: config.ha.lease_ttl(),
        options: std::sync::Arc::new(engine::shape::Options {
            tables: config.tables.options.clone(),
            on_remove: config.tables.on_remove,
        }),
    }
}

fn table_filter(config: &Config) -> TableFilter {
    TableFilter {
        include: config.tables.include.clone(),
        exclude: config.tables.exclude.clone(),
    }
}

/// The MySQL driver for a config whose `database.driver` is `mysql`.
pub fn mysql_driver(config: &Config) -> MysqlDriver {
    debug_assert_eq!(config.database.driver, DriverKind::Mysql);
    let db = &config.database;
    MysqlDriver::new(MysqlConfig {
        host: db.host.clone(),
        port: config.port(),
        user: db.user.clone(),
        password: db.password.as_ref().map(|p| p.expose().to_owned()),
        database: db.name.clone(),
        server_id: config.mysql_server_id(),
        mysqldump: db.mysql.mysqldump.clone(),
        filter: table_filter(config),
        tls: db.tls.settings(),
    })
}

/// The PostgreSQL driver for a config whose `database.driver` is `postgres`.
pub fn postgres_driver(config: &Config) -> PostgresDriver {
    debug_assert_eq!(config.database.driver, DriverKind::Postgres);
    let db = &config.database;
    PostgresDriver::new(PostgresConfig {
        connect: ConnectParams {
            host: db.host.clone(),
            port: config.port(),
            user: db.user.clone(),
            password: db.password.as_ref().map(|p| p.expose().to_owned()),
            database: db.name.clone(),
            application_name: "etcd-sync".into(),
            tls: db.tls.settings(),
        },
        slot: db.postgres.slot.clone(),
        publication: db.postgres.publication.clone(),
        filter: table_filter(config),
        dump_connections: db.postgres.dump_connections,
        sql_catch_up: db.postgres.sql_catch_up,
        pushdown: config
            .tables
            .options
            .iter()
            .filter_map(|(table, options)| Some((table.clone(), options.pushdown()?)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "database:\n  driver: postgres\n  user: sync\n  name: app\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, "test.yaml", driver_problems)
    }

    #[test]
    fn start_positions_are_the_drivers_to_check_and_build() {
        let pg = format!("{MINIMAL}start:\n  lsn: 0/16B3748\n");
        assert_eq!(
            start_position(&parse(&pg).unwrap()).unwrap().0,
            serde_json::json!({"lsn": "0/16B3748"})
        );
        let err = parse(&format!("{MINIMAL}start:\n  lsn: nope\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("start.lsn: \"nope\" is not an LSN"), "{err}");
        let my = "database:\n  driver: mysql\n  user: u\n  name: n\nstart:\n  file: binlog.000002\n  position: 4\n";
        assert_eq!(
            start_position(&parse(my).unwrap()).unwrap().0,
            serde_json::json!({"file": "binlog.000002", "pos": 4})
        );
        let err = parse("database:\n  driver: mysql\n  user: u\n  name: n\nstart:\n  file: b.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("start.file and start.position"), "{err}");
    }

    #[test]
    fn the_mysql_driver_judges_its_tls_modes() {
        let mysql =
            "database:\n  driver: mysql\n  user: u\n  name: n\n  tls:\n    mode: verify-ca\n";
        let err = parse(mysql).unwrap_err().to_string();
        assert!(
            err.contains("database.tls.mode: mode verify-ca is not available"),
            "{err}"
        );
    }
}
