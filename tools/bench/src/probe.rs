//! How much work a CPU-second buys right now. A thread of the bench does a fixed piece of
//! arithmetic every 50 ms and counts the CPU time it took (its own `schedstat`, which leaves
//! out the time it waited for a core). On a virtual machine the same work can take more CPU
//! time when the host is busy (a sibling hyperthread or another guest on the core): every
//! process of a scenario then does less per CPU-second, etcd included, and a round runs slow
//! for a reason no process on the machine caused. The probe's CPU time per piece over a
//! scenario, against its median over the run, says so. It costs about 1% of one core.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Pieces of work done so far.
static PIECES: AtomicU64 = AtomicU64::new(0);
/// CPU nanoseconds they took.
static CPU_NS: AtomicU64 = AtomicU64::new(0);

/// Starts the probe's thread for the rest of the process.
pub fn start() {
    std::thread::Builder::new()
        .name("cpu-probe".into())
        .spawn(|| {
            // The kernel brings a thread's run time up to date when it switches the thread out,
            // not while it runs: read right after each wake-up, the count is exact, and from
            // one wake-up to the next it holds one piece (and the constant cost of a sleep).
            let mut last = own_cpu_ns();
            loop {
                black_box(piece());
                std::thread::sleep(Duration::from_millis(50));
                let now = own_cpu_ns();
                if let (Some(now), Some(then)) = (now, last) {
                    CPU_NS.fetch_add(now.saturating_sub(then), Ordering::Relaxed);
                    PIECES.fetch_add(1, Ordering::Relaxed);
                }
                last = now;
            }
        })
        .ok();
}

/// The probe's totals so far: pieces done and their CPU nanoseconds.
pub fn totals() -> (u64, u64) {
    (
        PIECES.load(Ordering::Relaxed),
        CPU_NS.load(Ordering::Relaxed),
    )
}

/// CPU microseconds per piece between two totals, if a piece was done between them.
pub fn micros_per_piece(now: (u64, u64), then: (u64, u64)) -> Option<f64> {
    let pieces = now.0.checked_sub(then.0).filter(|&p| p > 0)?;
    Some(now.1.saturating_sub(then.1) as f64 / 1e3 / pieces as f64)
}

/// About half a millisecond of register arithmetic: no memory traffic, so what changes its
/// CPU time is how fast the core runs, not the caches etcd and the agent share with it.
fn piece() -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
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
