//! Owned, collision-free names: `sl-<pid>-<start>-<n>`, naming the test process that made them.
//!
//! Every namespace, cgroup, mount and temp dir of the harness is named from
//! [`next_prefix`], so whoever finds one later can tell which process made it and whether
//! that process still runs ([`Owner::is_alive`]): the sweep (see [`crate::sweep`]) removes
//! only what a dead owner left. The pid alone would not do: once a process is gone its pid
//! can be reused. The pid together with the process's start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot) names one process for the machine's uptime.

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

/// What every owned name starts with (cgroups: [`CGROUP_PREFIX`] before it).
pub const PREFIX: &str = "sl-";
/// The harness's top-level cgroups are `sluice-test-<prefix>`.
pub const CGROUP_PREFIX: &str = "sluice-test-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new prefix such as `sl-4242-981234-0`. The pid and start time say which process owns
/// it; the counter keeps concurrent tests inside one process apart.
///
/// The first call in a process also sweeps what dead test processes left behind (see
/// [`crate::sweep::once`]): every harness resource is named from here, so the sweep runs
/// before this process creates any.
pub fn next_prefix() -> String {
    crate::sweep::once();
    format!(
        "{}-{}",
        Owner::current().tag(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A process, identified for the machine's uptime by its pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
    pub start: u64,
}

/// What `/proc/PID/stat` says about a process.
struct Stat {
    state: char,
    threads: u64,
    start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            let stat = read_stat(pid)
                .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat of this process: {e}"));
            Owner {
                pid,
                start: stat.start,
            }
        })
    }

    /// The process that has `pid` now, if any.
    pub fn of_pid(pid: u32) -> Option<Owner> {
        read_stat(pid).ok().map(|stat| Owner {
            pid,
            start: stat.start,
        })
    }

    /// `sl-<pid>-<start>`: the start of every name this owner makes.
    pub fn tag(&self) -> String {
        format!("{PREFIX}{}-{}", self.pid, self.start)
    }

    /// Whether this very process still runs. A different start time means the pid was
    /// reused: the owner is gone. A zombie whose threads have all exited is gone too (it
    /// can no longer clean up; only its parent has not reaped it yet). When /proc cannot be
    /// read for another reason the answer is "alive": the sweep then leaves things alone.
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Ok(stat) => {
                stat.start == self.start && !(matches!(stat.state, 'Z' | 'X') && stat.threads <= 1)
            }
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }
}

fn read_stat(pid: u32) -> std::io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text}"),
        )
    })
}

/// `PID (COMM) STATE PPID ...`: COMM may hold spaces and parentheses, so fields are counted
/// from the last `)`. After it, field 3 (state) is index 0, so field N is index N - 3.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        threads: fields.get(20 - 3)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// The owner named by a harness name (`sl-<pid>-<start>-<n>`, optionally followed by `-` and
/// anything), or `None` for every other name. Strict on purpose: the sweep must never act
/// on a name it did not make.
pub fn owner_of(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = number(parts.next()?)?;
    let start = number(parts.next()?)?;
    let tail = parts.next()?;
    let counter = tail.split_once('-').map_or(tail, |(counter, _)| counter);
    number(counter)?;
    Some(Owner {
        pid: u32::try_from(pid).ok().filter(|&pid| pid > 0)?,
        start,
    })
}

/// The owner named by a harness cgroup name (`sluice-test-sl-<pid>-<start>-<n>`).
pub fn owner_of_cgroup(name: &str) -> Option<Owner> {
    owner_of(name.strip_prefix(CGROUP_PREFIX)?)
}

/// Plain ASCII digits only (`str::parse` would also take a leading `+`).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_owner() {
        let owner = Owner::current();
        assert!(owner.is_alive());
        let name = format!("{}-7-underlay", owner.tag());
        assert_eq!(owner_of(&name), Some(owner));
        assert_eq!(owner_of(&format!("{}-7", owner.tag())), Some(owner));
        assert_eq!(
            owner_of_cgroup(&format!("{CGROUP_PREFIX}{}-0", owner.tag())),
            Some(owner)
        );
    }

    #[test]
    fn other_names_have_no_owner() {
        for name in [
            "sl-",
            "sl-12",
            "sl-12-34",
            "sl-12-34-",
            "sl-12-34-x",
            "sl-12-34-5x",
            "sl-0-34-5",
            "sl-+12-34-5",
            "sl-12-+34-5",
            "sl-99999999999-34-5",
            // The previous format, without a start time.
            "sl-4242-0-underlay",
            "sl-4242-3manifests",
            "sl-sweep.lock",
            "slx-12-34-5",
            "sluice-bench-bpffs",
            "node1",
        ] {
            assert_eq!(owner_of(name), None, "{name}");
        }
        assert_eq!(owner_of_cgroup("sl-12-34-5"), None);
        assert_eq!(owner_of_cgroup("sluice-test-sl-12-34"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "77 (a) b (c) d) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    123456 1000 50 18446744073709551615";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(parsed.state, 'S');
        assert_eq!(parsed.threads, 3);
        assert_eq!(parsed.start, 123_456);
        assert!(parse_stat("77 (a) S 1").is_none());
    }

    #[test]
    fn a_reused_pid_or_a_missing_process_is_dead() {
        let me = Owner::current();
        let reused = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
        // Above the kernel's pid_max limit (4194304): no process can have it.
        let missing = Owner {
            pid: 4_194_305,
            start: 1,
        };
        assert!(!missing.is_alive());
        assert_eq!(Owner::of_pid(me.pid), Some(me));
    }
}
