//! A CPU load of a given size beside a ceiling: what etcd reaches when something else uses as
//! much of the same cores as the agent and the database did in a scenario. On two cores etcd's
//! ceiling falls with any such load (a 0.4-core busy loop took 14–23% off it), so this tells
//! the agent's own share of a shortfall from what its CPU, wherever spent, costs etcd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Busy threads that together use `cores` of the machine until dropped.
pub struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The period of each thread's busy/idle cycle: short next to any measured scenario.
const PERIOD: Duration = Duration::from_millis(10);

impl CpuLoad {
    pub fn start(cores: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = cores.ceil().max(0.0) as usize;
        let duty = if count == 0 {
            0.0
        } else {
            cores / count as f64
        };
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let busy = PERIOD.mul_f64(duty.min(1.0));
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        while started.elapsed() < busy {
                            std::hint::spin_loop();
                        }
                        std::thread::sleep(PERIOD.saturating_sub(busy));
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
