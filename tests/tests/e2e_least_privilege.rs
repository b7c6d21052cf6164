//! Least privilege of the pins (issue 16): whoever opens a pin can rewrite a map or detach a
//! program, so the pin directory is `0700` and its pins `0600`, a process without root cannot
//! open them, and a `--pin-dir` off bpffs or through a symbolic link is refused with one line
//! that names the flag.

use std::{
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use proxy_tests::{
    Cluster, SluiceDaemon, manifests::ManifestDir, process, scenario::Scenario,
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
    for dir in [&pin_dir, &links] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let mut pins = 0;
    for dir in [&pin_dir, &links] {
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
