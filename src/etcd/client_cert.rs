//! Whether etcd demands a client certificate the agent does not have.
//!
//! With TLS 1.3 the server checks the client's certificate after the client's side of the
//! handshake is done, so its `certificate required` alert races the connection's close: tonic
//! then reports `connection closed`, which reads as a network failure and is retried forever
//! (16 of 20 first attempts measured here). One handshake of our own, read until the alert,
//! tells the two apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_sync_api::Lenient;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long each step of the probe may take: a refusal arrives within milliseconds.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// etcd's TLS alert if `endpoint` (an `https://` URL) refuses a client without a
/// certificate; `None` when it accepts one, or when the probe cannot tell (unreachable, a
/// slow server), in which case the real connection reports what is wrong.
pub(super) async fn refusal_without_certificate(endpoint: &str) -> Option<String> {
    let authority = endpoint.strip_prefix("https://")?.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let requested = Arc::new(CertificateRequested::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Only the request for a certificate matters here; the real connection checks etcd's.
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient::new(None, provider)))
        .with_client_cert_resolver(Arc::clone(&requested) as Arc<dyn ResolvesClientCert>);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(authority))
        .await
        .ok()?
        .ok()?;
    let mut tls = match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => return None,
        // TLS 1.2: the alert ends the handshake itself.
        Ok(Err(e)) => return alert(&e),
        Ok(Ok(tls)) => tls,
    };
    if !requested.get() {
        return None;
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(STEP_TIMEOUT, tls.read(&mut byte)).await {
        Ok(Err(e)) => alert(&e),
        _ => None,
    }
}

fn alert(error: &std::io::Error) -> Option<String> {
    let text = error.to_string();
    text.contains("received fatal alert").then_some(text)
}

/// A client-certificate resolver that has none and remembers being asked for one.
#[derive(Debug, Default)]
struct CertificateRequested(AtomicBool);

impl CertificateRequested {
    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for CertificateRequested {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
