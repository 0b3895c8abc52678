//! Where etcd is and how to talk to it: endpoints, auth, TLS.

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::SinkError;

/// Decode limit for reads: values may be up to etcd's request limit, and pages hold many.
pub(super) const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// Where etcd is and how to talk to it.
#[derive(Clone)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
}

/// TLS for `https://` endpoints: files as PEM, and the name etcd's certificate must carry.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA of etcd's server certificates; `None`: the system's trusted roots.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl Connection {
    /// Plain `http://` endpoints without auth.
    pub fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            user: None,
            password: None,
            tls: TlsFiles::default(),
        }
    }

    pub(super) fn options(&self) -> Result<ConnectOptions, SinkError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            // Tokens expire (etcd's --auth-token-ttl); the client gets a new one when needed.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(self.tls_options()?);
        }
        Ok(options)
    }

    pub(super) fn tls_options(&self) -> Result<TlsOptions, SinkError> {
        let read = |field: &str, path: &str| {
            std::fs::read(path).map_err(|e| SinkError::Refused {
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
