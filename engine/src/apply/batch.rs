//! Coalesced writes: the last operation per key wins, with the size etcd will count.

use std::collections::HashMap;

use crate::sink::Op;

/// Coalesced writes: the last operation per key wins (`None` deletes).
#[derive(Default)]
pub(super) struct Batch {
    pub(super) ops: HashMap<String, Option<Vec<u8>>>,
    pub(super) bytes: usize,
}

impl Batch {
    pub(super) fn set(&mut self, key: String, value: Option<Vec<u8>>) {
        let key_len = key.len();
        let size = key_len + value.as_ref().map_or(0, Vec::len) + 16;
        if let Some(old) = self.ops.insert(key, value) {
            self.bytes -= key_len + old.map_or(0, |v| v.len()) + 16;
        }
        self.bytes += size;
    }

    pub(super) fn len(&self) -> usize {
        self.ops.len()
    }

    /// How many operations and bytes `self` would have with `other` merged in.
    pub(super) fn merged_size(&self, other: &Batch) -> (usize, usize) {
        let mut ops = self.len();
        let mut bytes = self.bytes + other.bytes;
        for key in other.ops.keys() {
            match self.ops.get(key) {
                Some(old) => bytes -= key.len() + old.as_ref().map_or(0, Vec::len) + 16,
                None => ops += 1,
            }
        }
        (ops, bytes)
    }

    pub(super) fn merge(&mut self, other: Batch) {
        for (key, value) in other.ops {
            self.set(key, value);
        }
    }

    pub(super) fn take_ops(&mut self) -> Vec<Op> {
        self.bytes = 0;
        self.ops
            .drain()
            .map(|(key, value)| match value {
                Some(value) => Op::Put { key, value },
                None => Op::Delete { key },
            })
            .collect()
    }

    /// The pending value of `key`: `Some(None)` when it is to be deleted.
    pub(super) fn lookup(&self, key: &str) -> Option<Option<&[u8]>> {
        self.ops.get(key).map(|v| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_coalesces_per_key_and_tracks_size() {
        let mut b = Batch::default();
        b.set("a".into(), Some(b"1".to_vec()));
        b.set("a".into(), Some(b"22".to_vec()));
        b.set("b".into(), None);
        assert_eq!(b.len(), 2);
        assert_eq!(b.bytes, (1 + 2 + 16) + (1 + 16));
        assert_eq!(b.lookup("a"), Some(Some(&b"22"[..])));
        assert_eq!(b.lookup("b"), Some(None));

        let mut other = Batch::default();
        other.set("a".into(), None);
        other.set("c".into(), Some(b"3".to_vec()));
        let (ops, bytes) = b.merged_size(&other);
        b.merge(other);
        assert_eq!((ops, bytes), (b.len(), b.bytes));
        assert_eq!(b.lookup("a"), Some(None));

        let mut ops = b.take_ops();
        ops.sort_by(|x, y| x.key().cmp(y.key()));
        assert_eq!(
            ops,
            vec![
                Op::Delete { key: "a".into() },
                Op::Delete { key: "b".into() },
                Op::Put {
                    key: "c".into(),
                    value: b"3".to_vec()
                }
            ]
        );
        assert_eq!(b.bytes, 0);
    }
}
