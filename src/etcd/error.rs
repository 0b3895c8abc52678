//! etcd errors, classified once: what a retry may cure, what needs an operator, and which
//! config fields to check.

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The client's own error, described in one line (tonic's status text holds a debug dump).
    #[error("etcd: {context}: {}", describe(.cause))]
    Client {
        context: String,
        cause: etcd_client::Error,
    },
    #[error(
        "the state at {key} was changed by someone else (mod revision {found}, expected {expected}): \
         another agent is syncing the same state prefix; this one stops so that only one writes"
    )]
    Fenced {
        key: String,
        expected: i64,
        found: i64,
    },
    #[error("the state at {key} is not valid: {reason}; delete it to start over with a full dump")]
    BadState { key: String, reason: String },
    #[error(
        "another agent ({holder}) is syncing this state prefix (it holds {key}): stop it, or set \
         ha.enabled: true to run several agents with one of them active"
    )]
    Locked { key: String, holder: String },
    #[error(
        "etcd: {context}: the database is out of space (NOSPACE alarm): nothing is applied or \
         acknowledged until writes succeed again. Free it: compact old revisions (etcdctl compact \
         <revision>, or run etcd with --auto-compaction-retention), defragment (etcdctl defrag), \
         raise --quota-backend-bytes if the data needs it, then etcdctl alarm disarm"
    )]
    NoSpace { context: String },
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// etcd refused who we are or what we asked: no retry cures it.
    #[error("etcd: {context}: {reason}")]
    Refused { context: String, reason: String },
    #[error("lost the leadership: the lease on {key} expired (etcd unreachable for longer than ha.lease_ttl?)")]
    LostLeadership { key: String },
}

/// What to check when etcd cannot be reached.
pub const ETCD_UNREACHABLE: &str = "is etcd running and reachable from here? check etcd.endpoints \
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

impl EtcdError {
    pub(super) fn client(context: impl Into<String>, source: etcd_client::Error) -> Self {
        let context: String = context.into();
        let text = source.to_string();
        if text.contains("database space exceeded") {
            return Self::NoSpace { context };
        }
        let refused = |reason: String| Self::Refused {
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
            return refused(format!(
                "TLS: etcd refused the connection ({text}); check etcd.tls.cert_file and \
                 etcd.tls.key_file (etcd's --client-cert-auth needs a client certificate)"
            ));
        }
        Self::Client {
            context,
            cause: source,
        }
    }

    /// For a failure that retrying may never cure (etcd is not where the config says), the
    /// config fields to check.
    pub fn config_hint(&self) -> Option<&'static str> {
        let EtcdError::Client { cause, .. } = self else {
            return None;
        };
        let unreachable = match cause {
            etcd_client::Error::GRpcStatus(status) => {
                status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::DeadlineExceeded
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            _ => false,
        };
        unreachable.then_some(ETCD_UNREACHABLE)
    }

    /// Whether a retry may cure it: unavailable, timeouts, leader changes, a full backend.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            EtcdError::Client { cause, .. } => match cause {
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
                }
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                _ => false,
            },
            // Retried until an operator frees space; each retry says how.
            EtcdError::LostLeadership { .. } | EtcdError::NoSpace { .. } => true,
            EtcdError::Fenced { .. }
            | EtcdError::BadState { .. }
            | EtcdError::Locked { .. }
            | EtcdError::Refused { .. }
            | EtcdError::TooManyOps => false,
        }
    }
}

/// Whether an etcd error says a txn has more operations than the server allows.
pub fn is_too_many_ops(err: &EtcdError) -> bool {
    matches!(err, EtcdError::TooManyOps)
        || err
            .to_string()
            .contains("too many operations in txn request")
}
