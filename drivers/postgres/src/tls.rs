//! rustls client configurations for libpq's `sslmode`s, shared by the query connections
//! (tokio-postgres) and the replication connection ([`crate::conn`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use etcd_sync_api::{Lenient, TlsMode, TlsSettings};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// A TLS setting that cannot be used (unreadable file, bad PEM): the user must fix the config.
#[derive(Debug, thiserror::Error)]
#[error("database.tls: {0}")]
pub struct TlsConfigError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `settings`, or `None` for `disable`.
pub fn client_config(settings: &TlsSettings) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        TlsMode::Disable => return Ok(None),
        // As libpq: without verify-*, TLS protects against eavesdropping, not impersonation.
        TlsMode::Prefer | TlsMode::Require => Arc::new(Lenient::new(None, Arc::clone(&provider))),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let ca_file = settings
                .ca_file
                .as_deref()
                .ok_or_else(|| TlsConfigError(format!("mode {} needs ca_file", settings.mode)))?;
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsConfigError(format!("ca_file {ca_file}: {e}")))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsConfigError(format!("ca_file {ca_file}: {e}")))?;
            if settings.mode == TlsMode::VerifyCa {
                Arc::new(Lenient::new(Some(webpki), Arc::clone(&provider)))
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| TlsConfigError(format!("key_file {key_file}: {e}")))?;
            builder
                .with_client_auth_cert(read_certs(cert_file)?, key)
                .map_err(|e| TlsConfigError(format!("cert_file {cert_file}: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError("cert_file and key_file go together".into())),
    };
    Ok(Some(Arc::new(config)))
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsConfigError(format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsConfigError(format!("{path}: no PEM certificate in it")));
    }
    Ok(certs)
}

/// The name to check the server's certificate against: the host as configured.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsConfigError(format!("host {host:?} is not a valid TLS server name: {e}")))
}

/// tokio-postgres's TLS hook on tokio-rustls, so that the query connections and the
/// replication connection share one TLS setup. No channel binding: SCRAM without `-PLUS`, as
/// on the replication connection.
#[derive(Clone)]
pub struct MakeRustlsConnect(pub Arc<ClientConfig>);

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// A TLS stream for tokio-postgres.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsConfigError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsConfigError> {
        Ok(RustlsConnect {
            config: Arc::clone(&self.0),
            name: server_name(domain)?,
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(stream))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
