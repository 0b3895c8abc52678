//! CPU accounting from `/proc`: the cores each process of a scenario used, the rest of the
//! machine, and how long their threads waited for a core (runnable, not running). On two
//! shared cores a scenario can be bound by the wait rather than by its own work; the wait
//! shows it (a 30 s PostgreSQL stream at the source's peak: the agent's threads waited 4-9 s
//! each, ran about 1 s).

use crate::agent::Agent;
use crate::server::EtcdServer;

/// CPU and run-queue seconds so far of the processes a scenario involves, and the machine's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    agent: Usage,
    etcd: Usage,
    db: Usage,
    machine: Machine,
    probe: crate::probe::Totals,
}

/// Seconds a process tree ran and waited for a core.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    ran: f64,
    waited: f64,
}

impl Usage {
    /// One walk of the process tree for both counts.
    fn of(pid: Option<u32>) -> Self {
        pid.map_or_else(Self::default, |pid| {
            let tree = tree(pid);
            Usage {
                ran: tree.iter().map(|&p| cpu_seconds(p)).sum(),
                waited: tree.iter().map(|&p| run_queue_seconds(p)).sum(),
            }
        })
    }
}

/// CPU seconds of the whole machine since boot: busy (its processes and the kernel's work,
/// not idle, not waiting for I/O), and stolen by the hypervisor.
#[derive(Debug, Clone, Copy, Default)]
struct Machine {
    busy: f64,
    stolen: f64,
}

/// Cores used on average over a scenario. `other` is the rest of the machine (the bench's own
/// client, the test environment's idle servers, the kernel's threads): what the scenario's
/// processes did not get of the two cores, so a run disturbed by something else shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cores {
    pub agent: f64,
    pub etcd: f64,
    pub db: f64,
    pub other: f64,
    /// Threads waiting for a core on average (run-queue seconds per second), per process.
    pub waiting: Waiting,
    /// Cores the hypervisor ran something else on, on average (`steal` in `/proc/stat`).
    pub stolen: f64,
    /// CPU microseconds the bench's probe took per piece of fixed work over the scenario
    /// (`probe`), arithmetic and pointer chase: higher when the machine's cores did less per
    /// CPU-second.
    pub probe_us: Option<(f64, f64)>,
}

/// Threads of each process runnable but not running, on average.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waiting {
    pub agent: f64,
    pub etcd: f64,
    pub db: f64,
}

impl Cpu {
    /// Before the agent starts (its own count starts at 0).
    pub fn before_agent(etcd: &EtcdServer, db_pid: Option<u32>) -> Self {
        Cpu {
            agent: Usage::default(),
            etcd: Usage::of(etcd.pid()),
            db: Usage::of(db_pid),
            machine: machine_seconds(),
            probe: crate::probe::totals(),
        }
    }

    /// Now: the agent (with mysqldump), etcd, the database server, the machine.
    pub fn now(agent: &Agent, etcd: &EtcdServer, db_pid: Option<u32>) -> Self {
        Cpu {
            agent: Usage::of(agent.pid()),
            ..Self::before_agent(etcd, db_pid)
        }
    }

    /// Etcd alone (a ceiling: its client is the bench, counted in `other`).
    pub fn etcd(etcd: &EtcdServer) -> Self {
        Self::before_agent(etcd, None)
    }

    pub fn cores_since(&self, before: &Cpu, seconds: f64) -> Cores {
        let per_second = |now: f64, then: f64| (now - then).max(0.0) / seconds;
        let agent = per_second(self.agent.ran, before.agent.ran);
        let etcd = per_second(self.etcd.ran, before.etcd.ran);
        let db = per_second(self.db.ran, before.db.ran);
        Cores {
            agent,
            etcd,
            db,
            other: (per_second(self.machine.busy, before.machine.busy) - agent - etcd - db)
                .max(0.0),
            stolen: per_second(self.machine.stolen, before.machine.stolen),
            probe_us: crate::probe::micros_per_piece(self.probe, before.probe),
            waiting: Waiting {
                agent: per_second(self.agent.waited, before.agent.waited),
                etcd: per_second(self.etcd.waited, before.etcd.waited),
                db: per_second(self.db.waited, before.db.waited),
            },
        }
    }
}

/// CPU seconds the whole machine has been busy and had stolen since boot.
fn machine_seconds() -> Machine {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Machine::default();
    };
    // cpu  user nice system idle iowait irq softirq steal ...
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|v| v.parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default();
    let busy = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 4, 7].contains(i))
        .map(|(_, v)| v)
        .sum::<f64>();
    Machine {
        busy: busy / 100.0,
        stolen: fields.get(7).copied().unwrap_or(0.0) / 100.0,
    }
}

/// Seconds the live threads of a process spent runnable but not running
/// (`/proc/<pid>/task/<tid>/schedstat`, second field). Exited threads' waits are lost, so a
/// process whose threads come and go reads low; the agent's, etcd's and the walsender's
/// threads live through a scenario.
fn run_queue_seconds(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum::<f64>()
                / 1e9
        })
        .unwrap_or(0.0)
}

/// Context switches of all of a process's threads so far (voluntary and not): how often it
/// went to sleep and woke up.
pub fn context_switches(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU seconds of a process and all its descendants, the exited ones included (the kernel
/// adds a reaped child's time to its parent's): a database server with its backends, or the
/// agent with mysqldump.
pub fn cpu_seconds_tree(pid: u32) -> f64 {
    tree(pid).into_iter().map(cpu_seconds).sum()
}

/// A process's own CPU seconds and those of its reaped children.
fn cpu_seconds(pid: u32) -> f64 {
    let Some(fields) = stat_fields(pid) else {
        return 0.0;
    };
    // utime, stime, cutime, cstime.
    fields.get(11..15).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    }) / 100.0
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// `pid` and its live descendants, from one scan of `/proc`.
fn tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, stat_fields(p)?.get(1)?.parse::<u32>().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![pid];
    let mut next = 0;
    while let Some(&parent) = out.get(next) {
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        next += 1;
    }
    out
}
