//! A sink's errors, classified once by the sink that knows what they mean: what a retry may
//! cure, what needs an operator, and which config fields to check.

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The client's own failure, described in one line by the sink, classified when made.
    #[error("etcd: {context}: {detail}")]
    Client {
        context: String,
        detail: String,
        /// Whether a retry may cure it (unavailable, timeouts, leader changes).
        transient: bool,
        /// The config fields to check when the server cannot be reached.
        hint: Option<&'static str>,
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
    /// The server refused who we are or what we asked: no retry cures it.
    #[error("etcd: {context}: {reason}")]
    Refused { context: String, reason: String },
    #[error("lost the leadership: the lease on {key} expired (etcd unreachable for longer than ha.lease_ttl?)")]
    LostLeadership { key: String },
}

impl SinkError {
    /// For a failure that retrying may never cure (the server is not where the config says),
    /// the config fields to check.
    pub fn config_hint(&self) -> Option<&'static str> {
        match self {
            SinkError::Client { hint, .. } => *hint,
            _ => None,
        }
    }

    /// Whether a retry may cure it.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Client { transient, .. } => *transient,
            // Retried until an operator frees space; each retry says how.
            SinkError::LostLeadership { .. } | SinkError::NoSpace { .. } => true,
            SinkError::Fenced { .. }
            | SinkError::BadState { .. }
            | SinkError::Locked { .. }
            | SinkError::Refused { .. }
            | SinkError::TooManyOps => false,
        }
    }
}

/// Whether a sink error says a txn has more operations than the server allows.
pub fn is_too_many_ops(err: &SinkError) -> bool {
    matches!(err, SinkError::TooManyOps)
        || err
            .to_string()
            .contains("too many operations in txn request")
}
