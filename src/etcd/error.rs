//! etcd client errors as the engine's [`SinkError`]s, classified once: what a retry may cure,
//! what needs an operator, and which config fields to check.

use crate::sink::SinkError;

/// What to check when etcd cannot be reached.
const ETCD_UNREACHABLE: &str = "is etcd running and reachable from here? check etcd.endpoints \
     (and etcd.tls for https endpoints)";

/// A client error in one line: a gRPC status's message and the root cause under it
/// (`tcp connect error: Connection refused (os error 111)`), not tonic's debug form.
fn describe(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return etcd_sync_api::error_chain(error);
    };
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    let mut root = None;
    while let Some(cause) = source {
        root = Some(cause.to_string());
        source = cause.source();
    }
    if let Some(root) = root.filter(|r| !text.contains(r.as_str())) {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&root);
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    text
}

/// An etcd client error as a [`SinkError`], classified here once.
pub(super) fn client_error(context: impl Into<String>, source: etcd_client::Error) -> SinkError {
    let context: String = context.into();
    let text = source.to_string();
    if text.contains("database space exceeded") {
        return SinkError::NoSpace { context };
    }
    let refused = |reason: String| SinkError::Refused {
        context: context.clone(),
        reason,
    };
    if text.contains("permission denied") {
        return refused(
            "permission denied: give the etcd user's role readwrite on etcd.prefix and \
                 etcd.state_prefix (see the README's etcd role)"
                .into(),
        );
    }
    if text.contains("authentication failed") || text.contains("user name is empty") {
        return refused(format!("{text}: check etcd.user and etcd.password"));
    }
    // tonic folds the TLS error into a status message, out of reach of downcasts.
    let tls_reason = etcd_sync_api::tls_failure(&source).or_else(|| {
        text.split_once("invalid peer certificate: ")
            .map(|(_, rest)| rest.split(['"', ',']).next().unwrap_or(rest).to_owned())
    });
    if let Some(reason) = tls_reason {
        return refused(format!(
            "TLS: etcd's certificate was refused ({reason}); check etcd.tls.ca_file and \
                 etcd.tls.server_name"
        ));
    }
    if text.contains("received fatal alert") {
        return alert_refusal(context, &text);
    }
    SinkError::Client {
        context,
        detail: describe(&source),
        transient: is_transient(&source),
        hint: unreachable(&source).then_some(ETCD_UNREACHABLE),
    }
}

/// etcd's TLS alert: it refused the client, most often for want of a client certificate.
pub(super) fn alert_refusal(context: String, text: &str) -> SinkError {
    SinkError::Refused {
        context,
        reason: format!(
            "TLS: etcd refused the connection ({text}); check etcd.tls.cert_file and \
             etcd.tls.key_file (etcd's --client-cert-auth needs a client certificate)"
        ),
    }
}

/// Whether a retry may cure it: unavailable, timeouts, leader changes, a full backend.
fn is_transient(error: &etcd_client::Error) -> bool {
    use tonic::Code;
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                Code::Unavailable
                    // A lease gone between grant and use (etcd restarted, a slow retry).
                    | Code::NotFound
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
            ) || status.message().contains("database space exceeded")
                // A member behind the revision a paged read pinned: another may answer.
                || status.message().contains("required revision is a future revision")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Whether etcd could not be reached at all (so the endpoints are worth checking).
fn unreachable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                || status.code() == tonic::Code::DeadlineExceeded
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}
