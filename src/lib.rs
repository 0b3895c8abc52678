//! etcd-sync: keeps an etcd prefix equal to a PostgreSQL (or MySQL) database.
//!
//! The binary (`src/main.rs`) is a thin shell over this library: [`config`] reads the YAML,
//! [`engine`] runs the dump and sync phases against a [`etcd_sync_api::Driver`], [`etcd`] owns
//! every write to etcd, and [`encode`] is the key/value contract.

pub mod check;
pub mod config;
pub mod encode;
pub mod engine;
pub mod etcd;
pub mod logging;
pub mod metrics;
pub mod status;
pub mod verify;

use config::{Config, DriverKind};
use etcd_sync_api::TableFilter;
use etcd_sync_mysql::{MysqlConfig, MysqlDriver};
use etcd_sync_postgres::{ConnectParams, PostgresConfig, PostgresDriver};

pub use etcd_sync_api::error_chain;

/// The engine's settings from the config.
pub fn engine_settings(config: &Config) -> engine::Settings {
    engine::Settings {
        etcd: config.etcd_connection(),
        prefix: config.prefix().to_owned(),
        state_prefix: config.state_prefix(),
        max_txn_ops: config.etcd.max_txn_ops,
        max_txn_bytes: config.etcd.max_txn_bytes,
        dump_txns_in_flight: config.etcd.dump_txns_in_flight,
        skip_oversized: config.etcd.oversized_rows == config::OversizedRows::Skip,
        metrics: std::sync::Arc::new(metrics::Metrics::default()),
        metrics_served: config.metrics.listen.is_some(),
        start: config.start_position(),
        ha: config.ha.enabled,
        lease_ttl: config.ha.lease_ttl(),
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
    })
}
