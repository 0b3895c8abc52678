//! Where etcd is and how to talk to it: endpoints, auth, TLS.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::EtcdError;
use crate::config::{EtcdTls, Secret};

/// Decode limit for reads: values may be up to etcd's request limit, and pages hold many.
pub(super) const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// Where etcd is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls: EtcdTls,
}

impl Connection {
    /// Plain `http://` endpoints without auth.
    pub fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            user: None,
            password: None,
            tls: EtcdTls::default(),
        }
    }

    pub(super) fn options(&self) -> Result<ConnectOptions, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            // Tokens expire (etcd's --auth-token-ttl); the client gets a new one when needed.
            options = options
                .with_user(user.clone(), password.expose().to_owned())
                .with_auto_token_refresh(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(self.tls_options()?);
        }
        Ok(options)
    }

    pub(super) fn tls_options(&self) -> Result<TlsOptions, EtcdError> {
        let read = |field: &str, path: &str| {
            std::fs::read(path).map_err(|e| EtcdError::Refused {
                context: format!("etcd.tls.{field}"),
                reason: format!("cannot read {path}: {e}"),
            })
        };
        let mut tls = TlsOptions::new();
        tls = match &self.tls.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("ca_file", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        if let Some(name) = &self.tls.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}
