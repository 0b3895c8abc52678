//! Validation: every problem of a parsed config, by section, reported together.

use super::{Config, DriverKind};

impl Config {
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.tls_and_auth_problems(&mut p);
        self.database_problems(&mut p);
        self.tables_problems(&mut p);
        self.etcd_problems(&mut p);
        self.operations_problems(&mut p);
        self.start_problems(&mut p);
        p
    }

    /// Certificate files, TLS modes, and credentials that go together.
    fn tls_and_auth_problems(&self, p: &mut Vec<String>) {
        let db = &self.database;
        let tls = &db.tls;
        for (field, file) in [
            ("database.tls.ca_file", &tls.ca_file),
            ("database.tls.cert_file", &tls.cert_file),
            ("database.tls.key_file", &tls.key_file),
            ("etcd.tls.ca_file", &self.etcd.tls.ca_file),
            ("etcd.tls.cert_file", &self.etcd.tls.cert_file),
            ("etcd.tls.key_file", &self.etcd.tls.key_file),
        ] {
            if let Some(file) = file {
                if let Err(e) = std::fs::File::open(file) {
                    p.push(format!("{field}: cannot read {file}: {e}"));
                }
            }
        }
        if tls.mode.verifies_ca() && tls.ca_file.is_none() {
            p.push(format!(
                "database.tls.ca_file: required with mode {}",
                tls.mode
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            p.push("database.tls: cert_file and key_file go together".into());
        }
        let etcd_tls = &self.etcd.tls;
        if etcd_tls.cert_file.is_some() != etcd_tls.key_file.is_some() {
            p.push("etcd.tls: cert_file and key_file go together".into());
        }
        let any_tls_setting = etcd_tls.ca_file.is_some()
            || etcd_tls.cert_file.is_some()
            || etcd_tls.server_name.is_some();
        if any_tls_setting
            && !self
                .etcd
                .endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
        {
            p.push("etcd.tls: set, but no endpoint is https://; write the endpoints as https://host:2379".into());
        }
        if self.etcd.user.is_some() != self.etcd.password.is_some()
            && self.etcd.password_file.is_none()
        {
            p.push(
                "etcd.user: etcd.user and etcd.password (or etcd.password_file) go together".into(),
            );
        }
    }

    /// The connection and each driver's options.
    fn database_problems(&self, p: &mut Vec<String>) {
        let db = &self.database;
        if db.mysql.server_id == Some(0) {
            p.push("database.mysql.server_id: must not be 0".into());
        }
        if db.mysql.mysqldump.is_empty() {
            p.push("database.mysql.mysqldump: must not be empty".into());
        }
        if db.host.is_empty() {
            p.push("database.host: must not be empty".into());
        }
        if db.port == Some(0) {
            p.push("database.port: must be between 1 and 65535".into());
        }
        if db.user.is_empty() {
            p.push("database.user: required (the user the agent connects as)".into());
        }
        if db.name.is_empty() {
            p.push("database.name: required (the database to sync)".into());
        }
        let pg = &db.postgres;
        if !is_identifier(&pg.slot) {
            p.push(format!(
                "database.postgres.slot: {:?} is not a valid slot name (lower-case letters, digits and _, at most 63)",
                pg.slot
            ));
        }
        if pg.publication.is_empty() {
            p.push("database.postgres.publication: must not be empty".into());
        }
        if pg.dump_connections == 0 || pg.dump_connections > 64 {
            p.push("database.postgres.dump_connections: must be between 1 and 64".into());
        }
    }

    /// Table names as the config writes them.
    fn tables_problems(&self, p: &mut Vec<String>) {
        for (field, names) in [
            ("tables.include", &self.tables.include),
            ("tables.exclude", &self.tables.exclude),
        ] {
            for name in names {
                let parts: Vec<&str> = name.split('.').collect();
                if parts.len() > 2 || parts.iter().any(|s| s.is_empty()) {
                    p.push(format!(
                        "{field}: {name:?} is not a table name (\"table\" or \"schema.table\")"
                    ));
                }
            }
        }
        for (table, options) in &self.tables.options {
            p.extend(options.problems(&format!("tables.options.{table}")));
        }
    }

    /// Endpoints, prefixes and txn limits.
    fn etcd_problems(&self, p: &mut Vec<String>) {
        let etcd = &self.etcd;
        if etcd.endpoints.is_empty() {
            p.push("etcd.endpoints: needs at least one endpoint".into());
        }
        for endpoint in &etcd.endpoints {
            if let Err(e) = check_endpoint(endpoint) {
                p.push(format!("etcd.endpoints: {endpoint:?} {e}"));
            }
        }
        let prefix = self.prefix();
        let state = self.state_prefix();
        if prefix.is_empty() {
            p.push(
                "etcd.prefix: must not be empty or \"/\" (the agent deletes stale keys under it)"
                    .into(),
            );
        }
        if state.is_empty() {
            p.push("etcd.state_prefix: must not be empty".into());
        }
        if !prefix.is_empty() && !state.is_empty() && prefixes_overlap(prefix, &state) {
            p.push(format!(
                "etcd.state_prefix: {state:?} overlaps etcd.prefix {prefix:?}; the agent's state must live outside the data prefix"
            ));
        }
        if etcd.max_txn_ops < 2 {
            p.push("etcd.max_txn_ops: must be at least 2 (one operation is the state)".into());
        }
        if etcd.max_txn_bytes < 4096 {
            p.push("etcd.max_txn_bytes: must be at least 4096".into());
        }
        if etcd.dump_txns_in_flight == 0 || etcd.dump_txns_in_flight > 256 {
            p.push("etcd.dump_txns_in_flight: must be between 1 and 256".into());
        }
    }

    /// Metrics and high availability.
    fn operations_problems(&self, p: &mut Vec<String>) {
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                p.push(format!(
                    "metrics.listen: {listen:?} is not host:port (e.g. 127.0.0.1:9187)"
                ));
            }
        }
        let lag = self.metrics.ready_lag_seconds;
        if lag.is_nan() || lag <= 0.0 {
            p.push("metrics.ready_lag_seconds: must be positive".into());
        }
        match humantime::parse_duration(&self.ha.lease_ttl) {
            Ok(ttl)
                if ttl >= std::time::Duration::from_secs(2)
                    && ttl <= std::time::Duration::from_secs(600) => {}
            Ok(_) => p.push("ha.lease_ttl: must be between 2s and 10m".into()),
            Err(e) => p.push(format!(
                "ha.lease_ttl: {:?} is not a duration like 10s ({e})",
                self.ha.lease_ttl
            )),
        }
    }

    /// A start position fits the driver (its syntax is the driver's to check).
    fn start_problems(&self, p: &mut Vec<String>) {
        let db = &self.database;
        if let Some(start) = &self.start {
            match db.driver {
                DriverKind::Postgres => {
                    if start.gtid.is_some() || start.file.is_some() || start.position.is_some() {
                        p.push("start: PostgreSQL takes start.lsn only".into());
                    }
                    // Its syntax is the driver's to check (see the wiring in lib.rs).
                    if start.lsn.is_none() {
                        p.push("start.lsn: required for PostgreSQL (e.g. 0/16B3748)".into())
                    }
                }
                DriverKind::Mysql => {
                    if start.lsn.is_some() {
                        p.push("start.lsn: for PostgreSQL; MySQL takes start.file + start.position, or start.gtid (MariaDB)".into());
                    }
                    if start.gtid.is_none() && (start.file.is_none() || start.position.is_none()) {
                        p.push("start: MySQL needs start.file and start.position, or start.gtid (MariaDB)".into());
                    }
                }
            }
        }
    }
}

pub(super) fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(super) fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| format!("is not a URL ({e}); write it as http://host:2379"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "has scheme {:?}; use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.port().is_none() {
        return Err("has no port; etcd's client port is usually 2379".into());
    }
    Ok(())
}

/// Whether one key prefix contains the other (compared as path segments).
pub(super) fn prefixes_overlap(a: &str, b: &str) -> bool {
    let a = format!("{a}/");
    let b = format!("{b}/");
    a.starts_with(&b) || b.starts_with(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_overlap() {
        assert!(prefixes_overlap("/a", "/a/b"));
        assert!(prefixes_overlap("/a", "/a"));
        assert!(!prefixes_overlap("/a", "/ab"));
    }
}
