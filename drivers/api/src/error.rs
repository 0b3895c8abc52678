/// What to check when the database cannot be reached.
pub const DATABASE_UNREACHABLE: &str =
    "is the database running and reachable from here? check database.host and database.port";

/// Any error a driver wraps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A driver error, classified once by the driver that knows what it means; the engine maps
/// each class to one action (stop, retry, or dump again).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The server, its settings or the selection need an operator's change; retrying cannot help.
    /// The message says what to change.
    #[error("{0}")]
    Misconfigured(String),
    /// Network or server trouble that a retry from the last committed position may cure.
    #[error("{context}")]
    Transient {
        context: String,
        #[source]
        source: BoxError,
    },
    /// The stored position can no longer be streamed from (slot dropped, binlog purged):
    /// a new dump is needed.
    #[error("{0}")]
    PositionLost(String),
    /// Rows changed in a way the stream does not carry (a partition attached, detached or
    /// truncated): the position is good, but etcd can only be made equal by a new dump.
    #[error("{0}")]
    Resnapshot(String),
    /// The source sent something this driver cannot decode.
    #[error("{0}")]
    Protocol(String),
    /// The engine stopped listening (shutdown); not a failure.
    #[error("stopped")]
    Stopped,
}

impl DriverError {
    pub fn transient(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// For a failure that retrying may never cure (the server is not where the config says),
    /// the config fields to check.
    pub fn config_hint(&self) -> Option<&'static str> {
        match self {
            Self::Transient { context, .. }
                if context.starts_with("connecting to")
                    || context.starts_with("opening a replication connection") =>
            {
                Some(DATABASE_UNREACHABLE)
            }
            _ => None,
        }
    }
}

/// An error's line followed by the config fields to check, when there are some.
pub fn with_hint(line: String, hint: Option<&str>) -> String {
    match hint {
        Some(hint) => format!("{line}; {hint}"),
        None => line,
    }
}

/// An error with its causes on one line, each cause once (some errors repeat their source's
/// text in their own).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
