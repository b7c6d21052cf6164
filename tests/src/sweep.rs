//! Removes what dead test processes left behind: processes, bpffs mounts, netns, cgroups, dirs.
//!
//! The guards remove everything in `Drop`, but a test process that is SIGKILLed, aborts or is
//! killed by a CI timeout runs no Drop. Its resources stay, named `sl-<pid>-<start>-...`
//! (see [`crate::unique`]), so a later harness run can prove whose they are: the sweep acts
//! only on names of that exact shape whose owner process no longer exists (same pid and
//! start time), and never on anything else on the machine. For each dead owner, in order:
//!
//! 1. processes still inside its network namespaces or cgroups get SIGKILL (each is checked
//!    again through a pidfd right before the signal, so a reused pid is never hit), and the
//!    sweep waits for them to exit;
//! 2. its bpffs mounts under the temp dir are unmounted;
//! 3. its network namespaces are deleted (`ip netns del`);
//! 4. its cgroups are removed, children first (3 and 4 only once every process in them is
//!    gone: a survivor could not be found again without them);
//! 5. its temp dirs are removed, unless something is still mounted inside.
//!
//! Sweeps are serialized machine-wide by an `flock` on `<tmp>/sl-sweep.lock` (a name the sweep
//! itself never matches). Every process using the harness sweeps once, before it creates
//! anything ([`once`], called from [`crate::unique::next_prefix`]); `cargo xtask test` also
//! runs `netns-harness sweep` first. Owner pids are read from this process's /proc: the
//! harness and everything it spawns share one pid namespace.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    fmt,
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Once,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    cgroup, netns,
    unique::{self, Owner},
};

/// How long the sweep waits for the processes it killed to exit.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Kill rounds: a process that a victim forked just before dying is found in the next one.
const KILL_ROUNDS: usize = 3;

/// What one dead owner left behind.
#[derive(Debug, Default, Clone)]
pub struct Leftovers {
    /// Names in /run/netns.
    pub netns: Vec<String>,
    /// Top-level cgroup dirs (their child cgroups go with them).
    pub cgroups: Vec<PathBuf>,
    /// Mount points under the temp dir (bpffs).
    pub mounts: Vec<PathBuf>,
    /// Directories under the temp dir.
    pub dirs: Vec<PathBuf>,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Report {
    /// The dead owners whose leftovers were found.
    pub owners: Vec<Owner>,
    pub killed: Vec<u32>,
    pub unmounted: Vec<PathBuf>,
    pub netns: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// What could not be removed, and why.
    pub errors: Vec<String>,
}

impl Report {
    /// Nothing found and nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owners: Vec<String> = self.owners.iter().map(Owner::tag).collect();
        write!(
            f,
            "harness sweep: leftovers of dead test processes {owners:?}: killed pids {:?}, \
             unmounted {:?}, deleted netns {:?}, removed cgroups {:?}, removed dirs {:?}",
            self.killed, self.unmounted, self.netns, self.cgroups, self.dirs
        )?;
        for error in &self.errors {
            write!(f, "\n  warning: {error}")?;
        }
        Ok(())
    }
}

/// The machine-wide sweep lock, held while this value lives.
pub struct SweepLock {
    _file: File,
}

impl SweepLock {
    /// Waits for the lock (`flock(LOCK_EX)` on `<tmp>/sl-sweep.lock`).
    pub fn acquire() -> Result<SweepLock> {
        let path = std::env::temp_dir().join(format!("{}sweep.lock", unique::PREFIX));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        loop {
            // SAFETY: flock(2) on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(SweepLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Sweeps once per process; what it removed and what failed goes to stderr. Never fails:
/// leftovers it cannot remove are reported and left alone.
pub fn once() {
    static DONE: Once = Once::new();
    DONE.call_once(|| match sweep() {
        Ok(report) if report.is_empty() => {}
        Ok(report) => eprintln!("{report}"),
        Err(e) => eprintln!("warning: sweeping leftovers of dead test processes: {e:#}"),
    });
}

/// Takes the lock and removes the leftovers of every dead owner.
pub fn sweep() -> Result<Report> {
    let lock = SweepLock::acquire()?;
    Ok(sweep_locked(&lock))
}

/// Removes the leftovers of every dead owner; the caller holds the lock.
pub fn sweep_locked(_lock: &SweepLock) -> Report {
    let mut report = Report::default();
    let found = find_leftovers(&mut report.errors);
    for (owner, leftovers) in found {
        report.owners.push(owner);
        remove(&leftovers, &mut report);
    }
    report
}

/// Every harness resource on the machine whose owner is dead, by owner.
pub fn find_leftovers(errors: &mut Vec<String>) -> BTreeMap<Owner, Leftovers> {
    let mut alive: HashMap<Owner, bool> = HashMap::new();
    let mut found: BTreeMap<Owner, Leftovers> = BTreeMap::new();
    let mut dead_owner = |owner: Option<Owner>| {
        owner.filter(|owner| !*alive.entry(*owner).or_insert_with(|| owner.is_alive()))
    };

    // `ip netns add` makes plain files there (the namespaces are bind-mounted onto them).
    for name in entry_names(Path::new(netns::NETNS_DIR), false, errors) {
        if let Some(owner) = dead_owner(unique::owner_of(&name)) {
            found.entry(owner).or_default().netns.push(name);
        }
    }
    // No cgroup2 mount: the harness cannot have made cgroups either.
    if let Ok(root) = cgroup::cgroup2_mount() {
        for name in entry_names(&root, true, errors) {
            if let Some(owner) = dead_owner(unique::owner_of_cgroup(&name)) {
                found
                    .entry(owner)
                    .or_default()
                    .cgroups
                    .push(root.join(name));
            }
        }
    }
    let tmp = temp_dir();
    for mount in mount_points(errors) {
        let name = mount.file_name().and_then(|n| n.to_str());
        if mount.parent() == Some(tmp.as_path())
            && let Some(owner) = dead_owner(name.and_then(unique::owner_of))
        {
            let mounts = &mut found.entry(owner).or_default().mounts;
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
    }
    for name in entry_names(&tmp, true, errors) {
        if let Some(owner) = dead_owner(unique::owner_of(&name)) {
            found.entry(owner).or_default().dirs.push(tmp.join(name));
        }
    }
    found
}

/// Removes one dead owner's leftovers, in the order the module docs give.
fn remove(leftovers: &Leftovers, report: &mut Report) {
    let all_dead = kill_members(leftovers, report);
    for mount in &leftovers.mounts {
        match unmount(mount) {
            Ok(()) => report.unmounted.push(mount.clone()),
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    // A process that survived is only found again through its namespace or cgroup: keep
    // them for the next sweep.
    if all_dead {
        remove_namespaces_and_cgroups(leftovers, report);
    }
    let mounts = mount_points(&mut report.errors);
    for dir in &leftovers.dirs {
        if let Some(inside) = mounts.iter().find(|m| m.starts_with(dir)) {
            report.errors.push(format!(
                "not removing {}: {} is still mounted",
                dir.display(),
                inside.display()
            ));
            continue;
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => report.dirs.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .errors
                .push(format!("removing {}: {e}", dir.display())),
        }
    }
}

fn remove_namespaces_and_cgroups(leftovers: &Leftovers, report: &mut Report) {
    for name in &leftovers.netns {
        match netns::delete(name) {
            Ok(()) => report.netns.push(name.clone()),
            // A concurrent `ip netns del` of the same name (the owner's own Drop, racing
            // with its death) already did it.
            Err(_) if !Path::new(netns::NETNS_DIR).join(name).exists() => {}
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    for dir in &leftovers.cgroups {
        match cgroup::remove_tree(dir) {
            Ok(()) => report.cgroups.push(dir.clone()),
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
}

/// Why a process is a leftover: it is in one of the owner's namespaces or cgroups.
#[derive(Debug, Clone)]
enum Membership {
    /// The (device, inode) of a network namespace.
    Netns(u64, u64),
    /// A cgroup dir; the pid is in its cgroup.procs.
    Cgroup(PathBuf),
}

impl Membership {
    fn holds(&self, pid: i32) -> bool {
        match self {
            Membership::Netns(dev, ino) => std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == *dev && m.ino() == *ino),
            Membership::Cgroup(dir) => cgroup::procs(dir).is_ok_and(|pids| pids.contains(&pid)),
        }
    }
}

/// The owner's namespaces (by inode) and cgroups (every dir of each subtree).
fn memberships(leftovers: &Leftovers) -> Vec<Membership> {
    fn subtree(dir: &Path, out: &mut Vec<Membership>) {
        out.push(Membership::Cgroup(dir.to_owned()));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    subtree(&entry.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for name in &leftovers.netns {
        if let Ok(m) = std::fs::metadata(Path::new(netns::NETNS_DIR).join(name)) {
            out.push(Membership::Netns(m.dev(), m.ino()));
        }
    }
    for dir in &leftovers.cgroups {
        subtree(dir, &mut out);
    }
    out
}

/// SIGKILLs every process in the owner's namespaces and cgroups and waits for them to exit.
/// False if some could not be killed or still ran at the end.
fn kill_members(leftovers: &Leftovers, report: &mut Report) -> bool {
    let memberships = memberships(leftovers);
    if memberships.is_empty() {
        return true;
    }
    for _ in 0..KILL_ROUNDS {
        let mut signalled: Vec<OwnedFd> = Vec::new();
        let mut killed_any = false;
        for (pid, why) in members(&memberships) {
            match kill_if(pid, why) {
                Ok(Some(pidfd)) => {
                    report.killed.push(pid.cast_unsigned());
                    signalled.extend(pidfd);
                    killed_any = true;
                }
                Ok(None) => {}
                Err(e) => {
                    report.errors.push(format!("killing pid {pid}: {e}"));
                    return false;
                }
            }
        }
        if !killed_any {
            return true;
        }
        if !wait_exited(signalled, KILL_TIMEOUT) {
            report.errors.push(format!(
                "processes killed in {leftovers:?} still ran after {KILL_TIMEOUT:?}"
            ));
            return false;
        }
    }
    // Still finding new members after every round.
    members(&memberships).is_empty()
}

/// The processes in any of `memberships`, each with one reason: cgroup members from the
/// cgroups' `cgroup.procs`, namespace members from a scan of /proc.
fn members(memberships: &[Membership]) -> Vec<(i32, &Membership)> {
    let own_pid = std::process::id().cast_signed();
    let mut out: Vec<(i32, &Membership)> = Vec::new();
    for m in memberships {
        if let Membership::Cgroup(dir) = m {
            out.extend(
                cgroup::procs(dir)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|pid| (pid, m)),
            );
        }
    }
    let namespaces: Vec<&Membership> = memberships
        .iter()
        .filter(|m| matches!(m, Membership::Netns(..)))
        .collect();
    if !namespaces.is_empty() {
        for pid in all_pids() {
            if let Some(m) = namespaces.iter().find(|m| m.holds(pid)) {
                out.push((pid, m));
            }
        }
    }
    out.retain(|(pid, _)| *pid != own_pid);
    out.sort_by_key(|(pid, _)| *pid);
    out.dedup_by_key(|(pid, _)| *pid);
    out
}

/// A process `kill_if` signalled: with a pidfd to wait on, or without (kernels before 5.3).
type Killed = Option<OwnedFd>;

/// SIGKILLs `pid` if it still `why.holds` it, checked through a pidfd so that the process
/// checked is the process signalled. `Ok(Some(Some(fd)))`: killed, wait on `fd`;
/// `Ok(Some(None))`: killed without a pidfd (kernels before 5.3); `Ok(None)`: gone or no
/// longer a member.
fn kill_if(pid: i32, why: &Membership) -> std::io::Result<Option<Killed>> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) if why.holds(pid) => {
                // SAFETY: kill(2); the pid was a member a moment ago.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    Ok(Some(None))
                } else {
                    Ok(None)
                }
            }
            Some(libc::ESRCH | libc::ENOSYS) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
    let pidfd = unsafe {
        OwnedFd::from_raw_fd(i32::try_from(raw).expect("pidfd_open returns a descriptor, an int"))
    };
    // The pidfd pins the process: if the pid now belongs to a member, the pidfd is that
    // member (or a process that already exited, which the signal cannot reach).
    if !why.holds(pid) {
        return Ok(None);
    }
    // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent != 0 {
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(Some(pidfd)))
}

/// Waits until every pidfd is readable (its process exited); false on timeout.
fn wait_exited(pidfds: Vec<OwnedFd>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pending = pidfds;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfds: Vec<libc::pollfd> = pending
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a valid array of pollfds and its length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
        let mut still = Vec::new();
        for (fd, pfd) in pending.into_iter().zip(&pfds) {
            if pfd.revents == 0 {
                still.push(fd);
            }
        }
        pending = still;
    }
    true
}

/// Every pid in /proc.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Unmounts `path` (detaching it if busy) until nothing is mounted there.
fn unmount(path: &Path) -> Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    // Mounts can be stacked; a few rounds take them all off.
    for _ in 0..4 {
        if !mount_points(&mut Vec::new()).iter().any(|m| m == path) {
            return Ok(());
        }
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let err = std::io::Error::last_os_error();
            // Busy (a pinned object still open): detach now, the kernel frees it later.
            // SAFETY: as above.
            if err.raw_os_error() != Some(libc::EBUSY)
                || unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0
            {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("unmounting {}", path.display()));
            }
        }
    }
    anyhow::bail!("{} is still mounted after 4 unmounts", path.display())
}

/// The mount points in this process's mount namespace.
fn mount_points(errors: &mut Vec<String>) -> Vec<PathBuf> {
    match std::fs::read_to_string("/proc/self/mounts") {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|p| PathBuf::from(cgroup::unescape_mount_path(p)))
            .collect(),
        Err(e) => {
            errors.push(format!("reading /proc/self/mounts: {e}"));
            Vec::new()
        }
    }
}

/// The names in `dir`; with `dirs_only`, of its subdirectories only (a symlink or file in
/// /tmp or the cgroup root is never a harness resource).
fn entry_names(dir: &Path, dirs_only: bool, errors: &mut Vec<String>) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| !dirs_only || e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(format!("listing {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

/// The temp dir as /proc/self/mounts spells it (symlinks resolved).
fn temp_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    tmp.canonicalize().unwrap_or(tmp)
}
