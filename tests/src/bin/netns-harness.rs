//! `netns-harness sweep` removes what dead test processes left (`cargo xtask test` runs it first);
//! `netns-harness leak` builds a busy cluster, says what it made and waits to be SIGKILLed.
//!
//! `leak` is the victim of the harness test `a_killed_test_process_leaves_nothing_behind`:
//! it prints `owner PID START`, then one line per resource (`netns NAME`, `cgroup DIR`,
//! `mount DIR`, `dir DIR`), per harness child (`pid N`: pod servers, a daemon, a held
//! connection) and per process started *without* the harness (`escaped N`: no parent-death
//! signal, so only the sweep can end them), then `ready`. It then reads stdin until EOF.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use proxy_tests::{
    Cluster, Place, SluiceDaemon, manifests::ManifestDir, sluice::DaemonConfig, sweep,
    unique::Owner,
};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("sweep") => run_sweep(),
        Some("leak") => {
            leak();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: netns-harness sweep | leak");
            ExitCode::from(2)
        }
    }
}

fn run_sweep() -> ExitCode {
    match sweep::sweep() {
        Ok(report) if report.is_empty() => {
            println!("harness sweep: no leftovers of dead test processes");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{report}");
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("harness sweep: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn leak() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let manifests = ManifestDir::new("manifests");
    // A stand-in daemon, started like `sluice run` (node1's netns), that never exits.
    let mut config = DaemonConfig::new(&cluster, "node1", manifests.path(), &[]);
    config.bin = "/bin/sh".into();
    config.args = vec![
        "-c".into(),
        "echo 'sluice ready: stand-in'; exec sleep 3600".into(),
    ];
    let daemon = SluiceDaemon::launch(config).unwrap_or_else(|e| panic!("stand-in: {e:#}"));
    let pod_2a = cluster.pod("pod-2a").ip;
    let held = cluster
        .hold(Place::Client, pod_2a, 80)
        .unwrap_or_else(|e| panic!("holding a connection to pod-2a: {e}"));

    // One escapee per way the sweep finds processes: namespace and cgroup, namespace only
    // (like the daemon), cgroup only.
    let node1 = cluster.node("node1");
    let node2 = cluster.node("node2");
    let mut escaped = [
        escape(cluster.pod("pod-1a").netns.path(), Some(&node1.cgroup)),
        escape(cluster.client().netns.path(), None),
        escape(Path::new("/proc/self/ns/net"), Some(&node2.cgroup)),
    ];

    let mut out = String::new();
    let owner = Owner::current();
    let _ = writeln!(out, "owner {} {}", owner.pid, owner.start);
    for name in cluster.netns_names() {
        let _ = writeln!(out, "netns {name}");
    }
    let _ = writeln!(out, "cgroup {}", cluster.cgroup_root().display());
    let _ = writeln!(out, "mount {}", cluster.bpffs_dir().display());
    for dir in [cluster.bpffs_dir(), cluster.state_root(), manifests.path()] {
        let _ = writeln!(out, "dir {}", dir.display());
    }
    let pods: Vec<u32> = cluster
        .pods()
        .iter()
        .filter_map(|p| cluster.pod_server_pid(&p.name))
        .collect();
    let daemon_pid = daemon.pid().expect("the stand-in runs");
    for pid in pods.iter().copied().chain([daemon_pid, held.pid()]) {
        let _ = writeln!(out, "pid {pid}");
    }
    for child in &escaped {
        let _ = writeln!(out, "escaped {}", child.id());
    }
    out.push_str("ready\n");
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .expect("writing the report");
    drop(stdout);

    // Killed here, normally. On EOF clean up as a test would.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for child in &mut escaped {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `sleep 3600` in the namespace at `netns` (and `cgroup`), started with plain std, not the
/// harness: it gets no parent-death signal and outlives this process.
fn escape(netns: &Path, cgroup: Option<&Path>) -> std::process::Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    proxy_tests::netns::enter_on_exec(&mut cmd, netns, cgroup)
        .and_then(|()| Ok(cmd.spawn()?))
        .unwrap_or_else(|e| panic!("starting an escapee: {e:#}"))
}
