//! Reading a whole prefix in time linear in its size.
//!
//! etcd answers a range request that has a limit only after counting every key between the
//! start key and the range's end (the response's `count`; etcd 3.4 and 3.5 cannot skip it).
//! Paging a prefix as `[after, prefix_end)` with a limit therefore costs, per page, the number
//! of keys still ahead: quadratic in the prefix's size (1M keys: ~0.3 s a page). The scanner
//! asks for bounded ranges `[start, start + span)` instead, with the span sized from the key
//! density it has just seen so that a range holds about one page of keys. Each key is then
//! counted a small constant number of times, and the whole prefix is read in linear time.
//!
//! Spans are distances in key space: the part of a key after the prefix read as a fraction whose
//! digits are its bytes, ranked among the bytes seen in keys so far (so that decimal or hex keys
//! fill their space evenly instead of using 10 or 16 of 256 values per byte). That order is
//! etcd's key order.

use etcd_client::GetOptions;

use super::{prefix_end, ListedKey, ScanStats, SinkError, Store};

/// Keys per request when reading keys only: ~60 bytes each in the response.
pub const KEYS_PER_PAGE: i64 = 10_000;
/// Keys per request when reading values too: values may be large.
pub const VALUES_PER_PAGE: i64 = 1_000;
/// The most a span grows after one range that held too few keys (as a power of two). Doubling
/// crosses a gap between keys in few requests; faster growth overshoots into the dense region
/// after the gap (measured on six key shapes: ×16 counted up to 6 keys per key, ×2 under 4).
const MAX_GROWTH_BITS: u32 = 1;

/// Walks the keys under a prefix in key order, one bounded range request per page.
pub struct Scan<'a> {
    store: &'a Store,
    prefix: String,
    end: Vec<u8>,
    /// The next key to read (inclusive).
    start: Vec<u8>,
    planner: RangePlanner,
    page: i64,
    with_values: bool,
    /// Read every range at the first one's revision.
    pinned: bool,
    revision: i64,
    done: bool,
    stats: ScanStats,
}

impl Store {
    /// Reads the keys under `prefix` (values too when `with_values`) in linear time.
    pub fn scan(&self, prefix: &str, with_values: bool) -> Scan<'_> {
        let page = if with_values {
            VALUES_PER_PAGE
        } else {
            KEYS_PER_PAGE
        };
        Scan {
            store: self,
            prefix: prefix.to_owned(),
            end: prefix_end(prefix),
            start: prefix.as_bytes().to_vec(),
            planner: RangePlanner::new(prefix.as_bytes(), page as u64),
            page,
            with_values,
            pinned: false,
            revision: 0,
            done: false,
            stats: ScanStats::default(),
        }
    }

    /// Reads the keys alone under `prefix` in `[from, to)` (`to`: the prefix's end when `None`).
    pub fn scan_range(&self, prefix: &str, from: &str, to: Option<&str>) -> Scan<'_> {
        let whole = self.scan(prefix, false);
        Scan {
            start: from.as_bytes().to_vec(),
            end: to.map_or(whole.end.clone(), |to| to.as_bytes().to_vec()),
            ..whole
        }
    }

    /// A scan of keys and values that reads the whole prefix at one revision (the first
    /// request's), as a snapshot.
    pub fn snapshot_scan(&self, prefix: &str) -> Scan<'_> {
        Scan {
            pinned: true,
            ..self.scan(prefix, true)
        }
    }
}

impl Scan<'_> {
    /// The next keys in order (never empty before the end); empty at the end.
    pub async fn next(&mut self) -> Result<crate::sink::Page, SinkError> {
        while !self.done {
            let range_end = self.planner.range_end(&self.start, &self.end);
            let mut options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(self.page)
                .with_revision(self.revision);
            if !self.with_values {
                options = options.with_keys_only();
            }
            let response = self
                .store
                .retrying(&format!("listing {}", self.prefix), |_| {
                    let mut kv = self.store.kv();
                    let (start, options) = (self.start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            if self.pinned && self.revision == 0 {
                self.revision = response.header().map_or(0, |h| h.revision());
            }
            let kvs = response.kvs();
            let counted = u64::try_from(response.count()).unwrap_or(0);
            self.stats.requests += 1;
            self.stats.keys_counted += counted;
            self.stats.keys_read += kvs.len() as u64;
            for kv in kvs {
                self.planner.learn(kv.key());
            }
            match kvs.last() {
                Some(last) if response.more() => {
                    let first = kvs.first().map_or(last.key(), |kv| kv.key());
                    self.planner.truncated(first, last.key());
                    self.start = successor(last.key());
                }
                _ => {
                    self.planner.complete(counted);
                    if range_end == self.end {
                        self.done = true;
                    }
                    self.start = range_end;
                }
            }
            if !kvs.is_empty() {
                return Ok(kvs
                    .iter()
                    .map(|kv| {
                        (
                            ListedKey {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                mod_revision: kv.mod_revision(),
                            },
                            self.with_values.then(|| kv.value().to_vec()),
                        )
                    })
                    .collect());
            }
        }
        Ok(Vec::new())
    }

    /// What the scan has cost so far.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }
}

/// Chooses each range's end from what earlier ranges held: etcd's side of the scan is pure
/// request/response, so this part is tested on its own against an in-memory key set.
struct RangePlanner {
    prefix_len: usize,
    page: u64,
    /// Bytes seen after the prefix, plus 0 (the successor of a key ends in it), sorted.
    alphabet: Vec<u8>,
    /// The width, in key space, expected to hold about a page; `None` before the first answer
    /// (whose range is the whole prefix).
    span: Option<Vec<u16>>,
}

impl RangePlanner {
    fn new(prefix: &[u8], page: u64) -> Self {
        Self {
            prefix_len: prefix.len(),
            page,
            alphabet: vec![0],
            span: None,
        }
    }

    /// Adds the bytes of a key read to the alphabet.
    fn learn(&mut self, key: &[u8]) {
        for &byte in key.get(self.prefix_len..).unwrap_or_default() {
            if let Err(at) = self.alphabet.binary_search(&byte) {
                self.alphabet.insert(at, byte);
            }
        }
    }

    /// Digit values: 0 ends a key, `1 + i` is the alphabet's `i`th byte.
    fn base(&self) -> u16 {
        self.alphabet.len() as u16 + 1
    }

    /// A key as digits (a byte outside the alphabet counts as the one below it: order kept).
    fn digits(&self, key: &[u8]) -> Vec<u16> {
        key.get(self.prefix_len..)
            .unwrap_or_default()
            .iter()
            .map(|byte| match self.alphabet.binary_search(byte) {
                Ok(i) => i as u16 + 1,
                Err(i) => i as u16,
            })
            .collect()
    }

    /// The smallest key at or above the fraction `digits` (after the prefix `of`).
    fn key(&self, of: &[u8], digits: &[u16]) -> Vec<u8> {
        let mut key = of.get(..self.prefix_len).unwrap_or(of).to_vec();
        for (i, &d) in digits.iter().enumerate() {
            if d == 0 {
                // Between a key and its successor there is no key: round up when more follows.
                if digits[i..].iter().any(|&d| d > 0) {
                    key.push(0);
                }
                break;
            }
            key.push(self.alphabet[usize::from(d) - 1]);
        }
        key
    }

    fn range_end(&self, start: &[u8], end: &[u8]) -> Vec<u8> {
        let Some(span) = &self.span else {
            return end.to_vec();
        };
        match add(&self.digits(start), span, self.base()) {
            Some(sum) => {
                let key = self.key(start, &sum);
                if key.as_slice() > start && key.as_slice() < end {
                    key
                } else {
                    end.to_vec()
                }
            }
            None => end.to_vec(),
        }
    }

    /// The range held more than a page: `first` and `last` are the page's first and last keys.
    /// Their distance, not the one from the range's start (which may lie in a gap before
    /// `first`), is what a page of keys spans here.
    fn truncated(&mut self, first: &[u8], last: &[u8]) {
        let base = self.base();
        let width = sub(&self.digits(last), &self.digits(first), base);
        self.span = Some(if width.iter().all(|&d| d == 0) {
            smallest_step(self.digits(last).len())
        } else {
            width
        });
    }

    /// The range held all of its `counted` keys: widen the next one when they were few.
    fn complete(&mut self, counted: u64) {
        let base = self.base();
        if let Some(span) = &self.span {
            self.span = Some(shl(span, growth_bits(counted, self.page), base));
        }
    }
}

/// How many doublings to widen a span whose range held `counted` keys, aiming at `page`.
fn growth_bits(counted: u64, page: u64) -> u32 {
    let mut bits = 0;
    let mut expected = counted.max(1);
    while bits < MAX_GROWTH_BITS && expected * 2 <= page {
        expected *= 2;
        bits += 1;
    }
    bits
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The smallest positive span past a key of `len` digits: one unit in the digit after them.
fn smallest_step(len: usize) -> Vec<u16> {
    let mut step = vec![0; len + 1];
    step[len] = 1;
    step
}

/// Fractions `a + b` in `base`; `None` when the sum reaches 1.0 (past every key).
fn add(a: &[u16], b: &[u16], base: u16) -> Option<Vec<u16>> {
    let len = a.len().max(b.len());
    let mut sum = vec![0u16; len];
    let mut carry = 0u32;
    for i in (0..len).rev() {
        let s = u32::from(a.get(i).copied().unwrap_or(0))
            + u32::from(b.get(i).copied().unwrap_or(0))
            + carry;
        sum[i] = (s % u32::from(base)) as u16;
        carry = s / u32::from(base);
    }
    (carry == 0).then_some(sum)
}

/// Fractions `a - b` in `base`, or zero when `b ≥ a`.
fn sub(a: &[u16], b: &[u16], base: u16) -> Vec<u16> {
    let len = a.len().max(b.len());
    let mut diff = vec![0u16; len];
    let mut borrow = 0i32;
    for i in (0..len).rev() {
        let mut d = i32::from(a.get(i).copied().unwrap_or(0))
            - i32::from(b.get(i).copied().unwrap_or(0))
            - borrow;
        borrow = 0;
        if d < 0 {
            d += i32::from(base);
            borrow = 1;
        }
        diff[i] = d as u16;
    }
    if borrow != 0 {
        return vec![0; len];
    }
    diff
}

/// The fraction `x · 2^bits` in `base`, saturating just below 1.0.
fn shl(x: &[u16], bits: u32, base: u16) -> Vec<u16> {
    let mut out = x.to_vec();
    for _ in 0..bits {
        let mut carry = 0u32;
        for digit in out.iter_mut().rev() {
            let d = u32::from(*digit) * 2 + carry;
            *digit = (d % u32::from(base)) as u16;
            carry = d / u32::from(base);
        }
        if carry != 0 {
            return vec![base - 1; out.len().max(1)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_add_subtract_and_shift() {
        assert_eq!(add(&[1, 255], &[0, 1], 256), Some(vec![2, 0]));
        assert_eq!(add(&[9], &[1], 10), None);
        assert_eq!(add(&[3, 4], &[0, 0, 1], 10), Some(vec![3, 4, 1]));
        assert_eq!(sub(&[2, 0], &[1, 9], 10), vec![0, 1]);
        assert_eq!(sub(&[1], &[2], 10), vec![0]);
        assert_eq!(shl(&[0, 6], 1, 10), vec![1, 2]);
        assert_eq!(shl(&[5], 1, 10), vec![9]);
    }

    #[test]
    fn keys_map_to_digits_and_back_in_order() {
        let mut planner = RangePlanner::new(b"/p/t/", 10);
        planner.learn(b"/p/t/19");
        planner.learn(b"/p/t/20");
        assert_eq!(planner.alphabet, vec![0, b'0', b'1', b'2', b'9']);
        assert_eq!(planner.digits(b"/p/t/19"), vec![3, 5]);
        assert_eq!(planner.key(b"/p/t/", &[3, 5]), b"/p/t/19".to_vec());
        // A byte never seen ranks with the one below it; "0" then more rounds up.
        assert_eq!(planner.digits(b"/p/t/5"), vec![4]);
        assert_eq!(planner.key(b"/p/t/", &[3, 0, 2]), b"/p/t/1\0".to_vec());
    }

    #[test]
    fn range_ends_always_move_forward_and_stop_at_the_prefix_end() {
        let end = prefix_end("/p/t/");
        let mut planner = RangePlanner::new(b"/p/t/", 10);
        assert_eq!(planner.range_end(b"/p/t/", &end), end);
        planner.learn(b"/p/t/1");
        planner.span = Some(smallest_step(1));
        assert_eq!(planner.range_end(b"/p/t/1", &end), b"/p/t/1\0".to_vec());
        planner.span = Some(vec![4]);
        assert_eq!(planner.range_end(b"/p/t/1", &end), end);
        planner.span = Some(vec![0, 0, 0]);
        assert_eq!(planner.range_end(b"/p/t/1", &end), end);
    }

    #[test]
    fn growth_aims_at_a_page() {
        assert_eq!(growth_bits(10_000, 10_000), 0);
        assert_eq!(growth_bits(0, 10_000), MAX_GROWTH_BITS);
        assert_eq!(growth_bits(100, 10_000), MAX_GROWTH_BITS);
    }

    /// The planner's ranges against an in-memory sorted key set, as etcd would answer them;
    /// returns the keys etcd counted and the keys read, in order.
    fn simulated_scan(keys: &[Vec<u8>], page: usize) -> (u64, Vec<Vec<u8>>) {
        let prefix = b"/p/t/".to_vec();
        let end = prefix_end("/p/t/");
        let mut planner = RangePlanner::new(&prefix, page as u64);
        let mut start = prefix.clone();
        let mut counted = 0u64;
        let mut read = Vec::new();
        loop {
            let range_end = planner.range_end(&start, &end);
            let from = keys.partition_point(|k| k.as_slice() < start.as_slice());
            let to = keys.partition_point(|k| k.as_slice() < range_end.as_slice());
            let in_range = &keys[from..to];
            counted += in_range.len() as u64;

            let answered = &in_range[..in_range.len().min(page)];
            for key in answered {
                planner.learn(key);
            }
            read.extend_from_slice(answered);
            match answered.last() {
                Some(last) if in_range.len() > page => {
                    planner.truncated(&answered[0], last);
                    start = successor(last);
                }
                _ => {
                    planner.complete(in_range.len() as u64);
                    if range_end == end {
                        return (counted, read);
                    }
                    start = range_end;
                }
            }
        }
    }

    fn keys_of(texts: impl Iterator<Item = String>) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = texts.map(|t| format!("/p/t/{t}").into_bytes()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    type Shape = (&'static str, fn(u64) -> String);

    const SHAPES: [Shape; 6] = [
        ("integers", |i| i.to_string()),
        ("uuids", |i| {
            format!("{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)
        }),
        ("composite", |i| format!("{}/{}", i % 100, i)),
        ("long common part", |i| {
            format!("tenant-0000000000000000000000000000000000007/{i:08}")
        }),
        ("text", |i| format!("user{i}@example.com")),
        ("dates", |i| {
            format!(
                "2026-{:02}-{:02} {:02}:{:02}",
                1 + i % 12,
                1 + i % 28,
                i % 24,
                i % 60
            ) + &format!("/{i}")
        }),
    ];

    #[test]
    fn every_key_is_read_once_at_a_cost_linear_in_the_keys() {
        for (name, shape) in SHAPES {
            let mut per_key = Vec::new();
            for n in [50_000u64, 200_000, 800_000] {
                let keys = keys_of((0..n).map(shape));
                let (counted, read) = simulated_scan(&keys, 10_000);
                assert_eq!(read, keys, "{name}: every key once, in order");
                per_key.push(counted as f64 / keys.len() as f64);
            }
            // Keys counted per key read: a small number that barely grows with the size (paging
            // from each page's last key to the prefix end counts 40 per key at 800k keys).
            assert!(per_key.iter().all(|&c| c < 4.0), "{name}: {per_key:?}");
            assert!(per_key[2] < per_key[0] + 1.5, "{name}: grows: {per_key:?}");
        }
    }

    #[test]
    fn sparse_and_dense_regions_and_small_prefixes() {
        let mut texts: Vec<String> = (0..50_000).map(|i| format!("m{i:06}")).collect();
        texts.extend((0..200u8).map(|i| {
            char::from(b'A' + i % 26)
                .to_string()
                .repeat(1 + usize::from(i / 26))
        }));
        texts.push("z".into());
        texts.push("z\0".into());
        texts.push("z\0\0\u{1}".into());
        let keys = keys_of(texts.into_iter());
        let (counted, read) = simulated_scan(&keys, 1_000);
        assert_eq!(read, keys);
        assert!(counted < 6 * keys.len() as u64, "{counted}");
        for n in [0u64, 1, 999, 1000, 1001] {
            let keys = keys_of((0..n).map(|i| i.to_string()));
            assert_eq!(simulated_scan(&keys, 1000).1, keys);
        }
    }

    #[test]
    #[ignore = "prints the cost curve"]
    fn cost_curve() {
        for (name, shape) in SHAPES {
            for n in [100_000u64, 400_000, 1_600_000] {
                let keys = keys_of((0..n).map(shape));
                let (counted, _) = simulated_scan(&keys, 10_000);
                println!("{name} n={n} counted/key={:.2}", counted as f64 / n as f64);
            }
        }
    }
}
