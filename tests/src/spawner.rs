//! Starts the harness's child processes so they die with the test process (`PR_SET_PDEATHSIG`).
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`: if the test process is SIGKILLed, aborts or
//! is killed by a CI timeout, the kernel kills its daemons and workloads at once, and no Drop
//! has to run. The kernel sends that signal when the *thread* that forked the child exits,
//! not the process. Test code starts daemons from short-lived threads (a restart inside
//! `std::thread::scope`, for one), so forking on the caller's thread would kill those
//! daemons when the helper thread ends. Every fork therefore happens on one spawner thread
//! that lives as long as the process: children die exactly when the test process does.
//!
//! The caller's thread may be in another network namespace (a thread that joined a test
//! namespace); the spawner joins the caller's namespace before each fork, so the child still
//! starts where it would have started had the caller forked it.

use std::{
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, process::CommandExt},
    },
    process::Command,
    sync::{
        OnceLock,
        mpsc::{self, Sender, SyncSender},
    },
};

struct Request {
    cmd: Command,
    /// The caller thread's network namespace.
    netns: File,
    reply: SyncSender<io::Result<std::process::Child>>,
}

/// Spawns `cmd` from the spawner thread with `PR_SET_PDEATHSIG(SIGKILL)`: the child is
/// killed by the kernel when this process ends, however it ends.
pub fn spawn(mut cmd: Command) -> io::Result<std::process::Child> {
    set_parent_death_signal(&mut cmd);
    let netns = File::open("/proc/thread-self/ns/net")?;
    let (reply, answer) = mpsc::sync_channel(1);
    spawner()
        .send(Request { cmd, netns, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// Makes the child ask for SIGKILL when its parent thread (the spawner) exits.
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl(2) and getppid(2) are async-signal-safe; the closure touches no memory
    // but its captured pid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn spawner() -> &'static Sender<Request> {
    static SPAWNER: OnceLock<Sender<Request>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || serve(incoming))
            .expect("starting the harness spawner thread");
        requests
    })
}

/// The spawner thread. Between requests it sits in the process's own network namespace
/// (the main thread's), so it never keeps a test namespace alive after the test deleted it.
fn serve(incoming: mpsc::Receiver<Request>) {
    let home = File::open("/proc/self/ns/net");
    // Never ends while the process runs: the sender lives in a static.
    for Request {
        mut cmd,
        netns,
        reply,
    } in incoming
    {
        let result = match &home {
            Ok(home) if same_namespace(home, &netns) => cmd.spawn(),
            Ok(home) => {
                // SAFETY: setns on fds we own; this thread does nothing but fork.
                let joined = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                let result = if joined == 0 {
                    cmd.spawn()
                } else {
                    Err(io::Error::last_os_error())
                };
                // SAFETY: as above.
                if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let err = io::Error::last_os_error();
                    panic!("harness spawner: returning to the process's network namespace: {err}");
                }
                result
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("harness spawner: opening /proc/self/ns/net: {e}"),
            )),
        };
        let _ = reply.send(result);
    }
}

/// Whether two namespace files are the same namespace (same nsfs inode).
fn same_namespace(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        path::Path,
        process::Stdio,
        time::Duration,
    };

    use super::*;

    /// A child started from a thread that then exits keeps running: it dies with the
    /// process, not with the thread that asked for it.
    #[test]
    fn children_outlive_the_thread_that_started_them() {
        let (tid, mut child) = std::thread::spawn(|| {
            let mut cmd = Command::new("cat");
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            // SAFETY: gettid(2) has no preconditions.
            (unsafe { libc::gettid() }, spawn(cmd).expect("spawning cat"))
        })
        .join()
        .unwrap();
        // Once the thread's task is released, a parent-death signal tied to it would
        // already have been sent (the kernel sends it while the thread exits).
        crate::wait::wait_until(Duration::from_secs(5), Duration::from_millis(5), || {
            !Path::new(&format!("/proc/self/task/{tid}")).exists()
        });
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"still here\n").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line, "still here\n",
            "the child died with its spawning thread"
        );
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }

    /// A child spawned from a thread in another network namespace starts in that namespace.
    #[test]
    fn children_start_in_the_callers_network_namespace() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let (theirs, child_ns) = std::thread::spawn(|| {
            // SAFETY: unshare(2) only changes this short-lived thread.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare (root?)"
            );
            let theirs = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
            let mut cmd = Command::new("readlink");
            cmd.arg("/proc/self/ns/net").stdout(Stdio::piped());
            let out = spawn(cmd).unwrap().wait_with_output().unwrap();
            (theirs, String::from_utf8(out.stdout).unwrap())
        })
        .join()
        .unwrap();
        assert_ne!(own.ino(), theirs.ino());
        assert_eq!(child_ns.trim(), format!("net:[{}]", theirs.ino()));
    }
}
