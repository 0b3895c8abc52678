//! How much work a CPU-second buys right now. A thread of the bench does two fixed pieces of
//! work every 50 ms and counts the CPU time each took (its own `schedstat`, which leaves out
//! the time it waited for a core): register arithmetic, and a chase of pointers through 8 MiB
//! (beyond the core's own caches, as etcd's index and the agent's buffers are). On a virtual
//! machine the same work can take more CPU time when the host is busy (another guest on the
//! core or on its shared cache and memory): every process of a scenario then does less per
//! CPU-second, etcd included, and a round runs slow for a reason no process on the machine
//! caused. The probe's CPU time per piece over a scenario, against its median over the run,
//! says so. It costs about 3% of one core.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Pieces of each kind done so far (both kinds alternate, one each per cycle).
static PIECES: AtomicU64 = AtomicU64::new(0);
/// CPU nanoseconds the arithmetic pieces took.
static ARITHMETIC_NS: AtomicU64 = AtomicU64::new(0);
/// CPU nanoseconds the pointer chases took.
static MEMORY_NS: AtomicU64 = AtomicU64::new(0);
/// Entries of the chased cycle: 8 MiB of `u32`.
const CHASE_ENTRIES: usize = 2 << 20;
/// Steps of one chase.
const CHASE_STEPS: usize = 2_500;

/// Starts the probe's thread for the rest of the process.
pub fn start() {
    std::thread::Builder::new()
        .name("cpu-probe".into())
        .spawn(|| {
            let cycle = random_cycle(CHASE_ENTRIES);
            let mut at = 0_u32;
            // The kernel brings a thread's run time up to date when it switches the thread out,
            // not while it runs: read right after each wake-up, the count is exact, and from
            // one wake-up to the next it holds one piece (and the constant cost of a sleep).
            let mut last = own_cpu_ns();
            loop {
                black_box(arithmetic());
                std::thread::sleep(Duration::from_millis(25));
                let mid = own_cpu_ns();
                at = chase(&cycle, at);
                std::thread::sleep(Duration::from_millis(25));
                let now = own_cpu_ns();
                if let (Some(then), Some(mid), Some(now)) = (last, mid, now) {
                    ARITHMETIC_NS.fetch_add(mid.saturating_sub(then), Ordering::Relaxed);
                    MEMORY_NS.fetch_add(now.saturating_sub(mid), Ordering::Relaxed);
                    PIECES.fetch_add(1, Ordering::Relaxed);
                }
                last = now;
            }
        })
        .ok();
}

/// The probe's totals so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pieces: u64,
    arithmetic_ns: u64,
    memory_ns: u64,
}

pub fn totals() -> Totals {
    Totals {
        pieces: PIECES.load(Ordering::Relaxed),
        arithmetic_ns: ARITHMETIC_NS.load(Ordering::Relaxed),
        memory_ns: MEMORY_NS.load(Ordering::Relaxed),
    }
}

/// CPU microseconds per piece between two totals, arithmetic and pointer chase, if a piece was
/// done between them.
pub fn micros_per_piece(now: Totals, then: Totals) -> Option<(f64, f64)> {
    let pieces = now.pieces.checked_sub(then.pieces).filter(|&p| p > 0)? as f64;
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e3 / pieces;
    Some((
        per(now.arithmetic_ns, then.arithmetic_ns),
        per(now.memory_ns, then.memory_ns),
    ))
}

/// About half a millisecond of register arithmetic: no memory traffic, so what changes its
/// CPU time is how fast the core runs, not the caches.
fn arithmetic() -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// A permutation of `0..n` that is one cycle (Sattolo's algorithm): following it visits every
/// entry, in an order no prefetcher guesses.
fn random_cycle(n: usize) -> Vec<u32> {
    let mut cycle: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x2545_F491_4F6C_DD1D_u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cycle.swap(i, (x % i as u64) as usize);
    }
    cycle
}

/// [`CHASE_STEPS`] dependent loads through `cycle` from `at`; where it stopped.
fn chase(cycle: &[u32], mut at: u32) -> u32 {
    for _ in 0..CHASE_STEPS {
        at = cycle.get(at as usize).copied().unwrap_or(0);
    }
    black_box(at)
}

/// This thread's CPU nanoseconds so far (`/proc/thread-self/schedstat`, first field).
fn own_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
