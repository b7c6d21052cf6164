//! Least privilege (issue 16). The pins: whoever opens a pin can rewrite a map or detach a
//! program, so the pin directory is `0700` and its pins `0600`, a process without root cannot
//! open them, and a `--pin-dir` off bpffs or through a symbolic link is refused with one line
//! that names the flag. The HTTP endpoints: the daemon listens where the docs say and nowhere
//! else, and serves status only (`/healthz`, `/livez`, `/metrics`, each on its own address,
//! GET only).

use std::{
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use proxy_tests::{
    Cluster, SluiceDaemon, http, manifests::ManifestDir, process, scenario::Scenario,
    sluice::DaemonConfig, tempdir::TempDir,
};

/// The unprivileged user the kernel calls `nobody`.
const NOBODY: &str = "65534";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_pin_directory_is_private_and_nobody_else_opens_a_pin() {
    let scenario = Scenario::start(&[]);
    let pin_dir = scenario.cluster.node("node1").pin_dir.clone();
    let links = pin_dir.join("links");
    let programs = pin_dir.join("programs");
    let mut dirs = vec![pin_dir.clone(), links, programs.clone()];
    // The verified programs of this build.
    for entry in std::fs::read_dir(&programs).expect("list the program builds") {
        dirs.push(entry.expect("a build").path());
    }
    assert_eq!(dirs.len(), 4, "one build: {dirs:?}");
    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let mut pins = 0;
    for dir in &dirs {
        for entry in std::fs::read_dir(dir).expect("list the pins") {
            let path = entry.expect("a pin").path();
            if path.is_dir() {
                continue;
            }
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
            pins += 1;
        }
    }
    assert!(pins > 20, "only {pins} pins");
    // An unprivileged process: no root, no capabilities.
    let conntrack = pin_dir.join("CT_V1");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg("cat")
    .arg(&conntrack);
    let out =
        process::run("cat a pin as nobody", cmd, Duration::from_secs(10)).expect("run setpriv");
    assert!(!out.status.success(), "nobody read {}", conntrack.display());
    assert!(
        out.stderr.contains("Permission denied"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// node1's daemon with `--pin-dir` set to `pin_dir`, started; the error it exits with.
fn start_refused(cluster: &Cluster, manifests: &ManifestDir, pin_dir: &Path) -> String {
    let mut config = DaemonConfig::new(cluster, "node1", manifests.path(), &[]);
    let at = config
        .args
        .iter()
        .position(|arg| arg == "--pin-dir")
        .expect("the standard command line has --pin-dir");
    config.args[at + 1] = OsString::from(pin_dir);
    config.pin_dir = PathBuf::from(pin_dir);
    match SluiceDaemon::launch(config) {
        Ok(_) => panic!("sluice started with --pin-dir {}", pin_dir.display()),
        Err(err) => format!("{err:#}"),
    }
}

#[test]
fn a_pin_dir_off_bpffs_or_through_a_symlink_is_refused_in_one_line() {
    let mut cluster = Cluster::new();
    cluster.start_pods();
    let manifests = ManifestDir::standard(&cluster);
    let name = format!("{}-pin-dir", proxy_tests::unique::next_prefix());
    let scratch = TempDir::new(&name).expect("a temporary directory");

    let off_bpffs = scratch.path().join("plain").join("pins");
    let err = start_refused(&cluster, &manifests, &off_bpffs);
    assert!(
        err.contains(&format!(
            "sluice: --pin-dir {}: {} is not on a bpffs",
            off_bpffs.display(),
            scratch.path().display()
        )),
        "{err}"
    );
    assert!(!off_bpffs.exists(), "nothing was created off bpffs");

    // A link to the cluster's own bpffs: the pins would land there through it.
    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(cluster.bpffs_dir(), &link).expect("make a symbolic link");
    let through = link.join("node9");
    let err = start_refused(&cluster, &manifests, &through);
    assert!(
        err.contains(&format!(
            "sluice: --pin-dir {}: {} is a symbolic link",
            through.display(),
            link.display()
        )),
        "{err}"
    );
    assert!(!cluster.bpffs_dir().join("node9").exists());
    assert!(!err.contains("panicked"), "{err}");
}

/// The TCP sockets listening in the namespace the caller is in: `addr:port` as
/// `/proc/thread-self/net/tcp{,6}` lists them (state 0A; the thread's namespace, not the
/// process's).
fn listening() -> Vec<String> {
    let mut out = Vec::new();
    for (file, v6) in [
        ("/proc/thread-self/net/tcp", false),
        ("/proc/thread-self/net/tcp6", true),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some("0A")) = (fields.get(1), fields.get(3).copied()) else {
                continue;
            };
            let (addr, port) = local.split_once(':').expect("ADDR:PORT");
            let port = u16::from_str_radix(port, 16).expect("a hex port");
            let addr = if v6 {
                let bytes: Vec<u8> = (0..16)
                    .map(|i| u8::from_str_radix(&addr[i * 2..i * 2 + 2], 16).expect("hex"))
                    .collect();
                // Four host-order 32-bit words.
                let mut octets = [0u8; 16];
                for word in 0..4 {
                    for byte in 0..4 {
                        octets[word * 4 + byte] = bytes[word * 4 + 3 - byte];
                    }
                }
                format!("[{}]", std::net::Ipv6Addr::from(octets))
            } else {
                let raw = u32::from_str_radix(addr, 16).expect("a hex address");
                std::net::Ipv4Addr::from(raw.to_le_bytes()).to_string()
            };
            out.push(format!("{addr}:{port}"));
        }
    }
    out.sort();
    out
}

#[test]
fn the_daemon_listens_where_the_docs_say_and_serves_status_only() {
    let scenario = Scenario::start(&[]);
    let netns = &scenario.cluster.node("node1").netns;
    // Only the daemon listens in the node's namespace: its two documented defaults.
    let sockets = netns.run_in(listening).expect("enter node1's namespace");
    assert_eq!(sockets, ["127.0.0.1:10249", "127.0.0.1:10256"]);
    let status = |addr: &str, method: &str, path: &str| {
        http::request(netns, addr, method, path)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .0
    };
    let health = "127.0.0.1:10256";
    let metrics = "127.0.0.1:10249";
    for (addr, method, path, expected) in [
        (health, "GET", "/healthz", "200"),
        (health, "GET", "/livez", "200"),
        (metrics, "GET", "/metrics", "200"),
        // Each endpoint on its own address only, and nothing else anywhere.
        (health, "GET", "/metrics", "404"),
        (metrics, "GET", "/healthz", "404"),
        (health, "GET", "/", "404"),
        (metrics, "GET", "/debug/pprof/", "404"),
        (health, "GET", "/../../etc/passwd", "404"),
        // Status is read, never changed.
        (health, "POST", "/healthz", "405"),
        (metrics, "PUT", "/metrics", "405"),
        (metrics, "DELETE", "/metrics", "405"),
    ] {
        let line = status(addr, method, path);
        assert!(
            line.split_whitespace().nth(1) == Some(expected),
            "{method} http://{addr}{path}: {line}, expected {expected}"
        );
    }
}
