//! What the engine and a sink exchange: writes, listed keys, the leadership, scan costs.

/// A write the engine hands to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Bytes it adds to a request: key, value and a little protobuf framing.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
        }
    }
}

/// A page of a scan: keys in order, with their values when the scan reads them.
pub type Page = Vec<(ListedKey, Option<Vec<u8>>)>;

/// A listed key with the revision of its last write.
#[derive(Debug, Clone)]
pub struct ListedKey {
    pub key: String,
    pub mod_revision: i64,
}

/// This agent's right to write: a key it holds under a lease. Every write txn compares the
/// key's create revision, so once the lease is gone no write of this agent can land, not even
/// one already in flight.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub revision: i64,
    pub lease: i64,
}

/// What a scan cost the server: requests sent, keys counted by them (the work it did), keys read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub requests: u64,
    pub keys_counted: u64,
    pub keys_read: u64,
}

impl ScanStats {
    pub fn add(&mut self, other: ScanStats) {
        self.requests += other.requests;
        self.keys_counted += other.keys_counted;
        self.keys_read += other.keys_read;
    }
}
