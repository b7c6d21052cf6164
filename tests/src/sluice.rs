//! Running the `sluice` daemon on a test node, and its read-only CLI against the node's pins.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    Reply, bins, netns,
    process::{self, Child, Finished},
    topology::Cluster,
};

/// The daemon prints a line starting with this once its first full sync is in the maps.
pub const READY_PREFIX: &str = "sluice ready:";
/// How long [`SluiceDaemon::start`] waits for [`READY_PREFIX`]; override with the
/// environment variable `SLUICE_READY_TIMEOUT_SECS`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`SluiceDaemon::stop`] waits after SIGTERM before it gives up.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one read-only CLI command.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run the daemon on one node. [`DaemonConfig::new`] fills in the standard
/// command line; tests may change any field before [`SluiceDaemon::launch`].
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub node: String,
    /// `$SLUICE_BIN`, else `sluice` next to the test executable's target dir.
    pub bin: PathBuf,
    /// The node's network namespace (entered with setns; the mount namespace stays ours so
    /// the daemon sees the bpffs mount).
    pub netns: PathBuf,
    /// The node's `--pin-dir`, also used by the read-only commands.
    pub pin_dir: PathBuf,
    /// Everything after the binary name.
    pub args: Vec<OsString>,
    /// Extra environment variables (e.g. `RUST_LOG`); the rest is inherited.
    pub env: Vec<(OsString, OsString)>,
    pub ready_timeout: Duration,
}

impl DaemonConfig {
    /// `run --manifests DIR --iface eth0 --node-name NODE --node-ip IP --cgroup CG
    /// --pin-dir PIN --state-dir STATE EXTRA..` for `node` of `cluster`.
    pub fn new(
        cluster: &Cluster,
        node: &str,
        manifests_dir: &Path,
        extra_args: &[&str],
    ) -> DaemonConfig {
        let n = cluster.node(node);
        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        arg(&"run");
        arg(&"--manifests");
        arg(&manifests_dir);
        arg(&"--iface");
        arg(&"eth0");
        arg(&"--node-name");
        arg(&node);
        arg(&"--node-ip");
        arg(&n.ip.to_string());
        arg(&"--cgroup");
        arg(&n.cgroup);
        arg(&"--pin-dir");
        arg(&n.pin_dir);
        arg(&"--state-dir");
        arg(&n.state_dir);
        arg(&"--service-cidr");
        arg(&crate::SERVICE_CIDR);
        args.extend(extra_args.iter().map(OsString::from));
        let ready_timeout = std::env::var("SLUICE_READY_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs);
        DaemonConfig {
            node: node.to_owned(),
            bin: bins::binary_path("SLUICE_BIN", "sluice")
                .unwrap_or_else(|e| panic!("locating sluice: {e:#}")),
            netns: n.netns.path().to_owned(),
            pin_dir: n.pin_dir.clone(),
            args,
            // An error the daemon exits with stays one short report (the harness shows the
            // last lines of stderr); panics keep their backtraces under RUST_BACKTRACE.
            env: vec![("RUST_LIB_BACKTRACE".into(), "0".into())],
            ready_timeout,
        }
    }
}

impl DaemonConfig {
    /// Dual stack, as issue 13 gives the flags: the node's IPv6 address as a second
    /// `--node-ip` and the IPv6 Service CIDR as a second `--service-cidr`.
    #[must_use]
    pub fn dual_stack(mut self, cluster: &Cluster) -> DaemonConfig {
        let ip6 = cluster.node(&self.node).ip6.to_string();
        for arg in ["--node-ip", &ip6, "--service-cidr", crate::SERVICE_CIDR6] {
            self.args.push(arg.into());
        }
        self
    }

    /// Without `--node-ip`: the daemon chooses the node's addresses itself (in cluster mode,
    /// from its Node's `InternalIP` addresses).
    #[must_use]
    pub fn without_node_ip(mut self) -> DaemonConfig {
        while let Some(at) = self.args.iter().position(|arg| arg == "--node-ip") {
            self.args.drain(at..at + 2);
        }
        self
    }

    /// Cluster mode: `--kubeconfig PATH` in place of `--manifests DIR`.
    #[must_use]
    pub fn with_kubeconfig(mut self, kubeconfig: &Path) -> DaemonConfig {
        let at = self
            .args
            .iter()
            .position(|arg| arg == "--manifests")
            .expect("the standard command line has --manifests");
        self.args[at] = "--kubeconfig".into();
        self.args[at + 1] = kubeconfig.into();
        self
    }
}

/// A `sluice run` process on a test node. Its stdout and stderr are drained into buffers
/// (see [`SluiceDaemon::stderr`]); dropping it kills it (SIGKILL). When a test panics, the
/// drop prints the daemon's output.
pub struct SluiceDaemon {
    config: DaemonConfig,
    child: Option<Child>,
    /// The last process that exited, kept for its output.
    exited: Option<Child>,
    ready_line: String,
}

impl SluiceDaemon {
    /// Starts the daemon on `node` and waits for its ready line; panics (showing its stderr)
    /// if it exits or does not get ready in time.
    pub fn start(
        cluster: &Cluster,
        node: &str,
        manifests_dir: &Path,
        extra_args: &[&str],
    ) -> SluiceDaemon {
        Self::try_start(cluster, node, manifests_dir, extra_args)
            .unwrap_or_else(|e| panic!("starting sluice on {node}: {e:#}"))
    }

    /// Like [`SluiceDaemon::start`], returning the failure (for tests that expect one).
    pub fn try_start(
        cluster: &Cluster,
        node: &str,
        manifests_dir: &Path,
        extra_args: &[&str],
    ) -> Result<SluiceDaemon> {
        Self::launch(DaemonConfig::new(cluster, node, manifests_dir, extra_args))
    }

    /// Starts the daemon as `config` says and waits for its ready line.
    pub fn launch(config: DaemonConfig) -> Result<SluiceDaemon> {
        let mut daemon = SluiceDaemon {
            config,
            child: None,
            exited: None,
            ready_line: String::new(),
        };
        daemon.spawn_and_wait()?;
        Ok(daemon)
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready()
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = &self.config.bin;
        if !bin.is_file() {
            bail!(
                "sluice binary not found at {}: build it with `cargo build -p proxy-user` (same \
                 profile as the tests) or set SLUICE_BIN",
                bin.display()
            );
        }
        let mut cmd = Command::new(bin);
        cmd.args(&self.config.args)
            .envs(self.config.env.iter().cloned());
        netns::enter_on_exec(&mut cmd, &self.config.netns, None)?;
        self.child = Some(Child::spawn(
            format!("sluice on {}", self.config.node),
            cmd,
        )?);
        Ok(())
    }

    /// Waits for the ready line of the process just spawned; kills it if none comes.
    fn wait_ready(&mut self) -> Result<()> {
        let mut child = self.take_running("wait for the ready line");
        match child.wait_for_stdout(self.config.ready_timeout, |l| l.starts_with(READY_PREFIX)) {
            Ok(line) => {
                self.ready_line = line;
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                self.exited = Some(child);
                Err(e).context(format!(
                    "sluice on {} never printed `{READY_PREFIX}`",
                    self.config.node
                ))
            }
        }
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The `sluice ready: ...` line of the current run.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// Fails unless the current run's ready line ends with `suffix` (how the hooks were
    /// installed and the programs come by).
    pub fn assert_ready_line_ends_with(&self, suffix: &str) {
        assert!(
            self.ready_line.ends_with(suffix),
            "{}: expected it to end with {suffix:?}",
            self.ready_line
        );
    }

    /// The daemon's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::pid)
    }

    /// Whether the daemon is still running (notices if it died).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        self.exited = self.child.take();
        false
    }

    fn latest(&self) -> Option<&Child> {
        self.child.as_ref().or(self.exited.as_ref())
    }

    /// The stdout of the running (or last) daemon process.
    pub fn stdout(&self) -> String {
        self.latest().map(Child::stdout).unwrap_or_default()
    }

    /// The stderr (logs) of the running (or last) daemon process.
    pub fn stderr(&self) -> String {
        self.latest().map(Child::stderr).unwrap_or_default()
    }

    fn take_running(&mut self, what: &str) -> Child {
        self.child.take().unwrap_or_else(|| {
            panic!(
                "{what}: sluice on {} is not running\n{}",
                self.config.node,
                self.exited
                    .as_ref()
                    .map(Child::output_report)
                    .unwrap_or_default()
            )
        })
    }

    /// SIGTERM and wait for a clean exit; panics if it takes longer than [`STOP_TIMEOUT`]
    /// (then it is killed) or if the daemon was not running.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.take_running("stop");
        let result = child.terminate(STOP_TIMEOUT);
        child.wait_output_closed(Duration::from_secs(2));
        let report = child.output_report();
        self.exited = Some(child);
        match result {
            Ok((status, false)) => status,
            Ok((_, true)) => panic!(
                "sluice on {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed\n{report}",
                self.config.node
            ),
            Err(e) => panic!("stopping sluice on {}: {e:#}", self.config.node),
        }
    }

    /// SIGKILL (a crash, as far as the daemon can tell) and reap.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.take_running("kill");
        let status = child
            .kill()
            .unwrap_or_else(|e| panic!("killing sluice on {}: {e:#}", self.config.node));
        child.wait_output_closed(Duration::from_secs(2));
        self.exited = Some(child);
        status
    }

    /// Starts the daemon again (same arguments, pins and state dir) after [`stop`] or
    /// [`kill`], and waits for its ready line.
    ///
    /// [`stop`]: SluiceDaemon::stop
    /// [`kill`]: SluiceDaemon::kill
    pub fn start_again(&mut self) {
        self.spawn_again();
        self.wait_until_ready();
    }

    /// The first half of [`SluiceDaemon::start_again`]: starts the process and returns at
    /// once, for a test that looks at the daemon before it is ready.
    pub fn spawn_again(&mut self) {
        assert!(
            !self.is_running(),
            "spawn_again: sluice on {} is still running",
            self.config.node
        );
        self.spawn()
            .unwrap_or_else(|e| panic!("restarting sluice on {}: {e:#}", self.config.node));
    }

    /// The second half of [`SluiceDaemon::start_again`]: waits for the ready line.
    pub fn wait_until_ready(&mut self) {
        self.wait_ready()
            .unwrap_or_else(|e| panic!("restarting sluice on {}: {e:#}", self.config.node));
    }

    /// [`SluiceDaemon::stop`], then [`SluiceDaemon::start_again`].
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.start_again();
    }

    /// Runs `sluice ARGS` in the node's namespace and returns its output (any exit status).
    pub fn cli(&self, args: &[&str]) -> Finished {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`SluiceDaemon::cli`], returning a failure to run it.
    pub fn try_cli(&self, args: &[&str]) -> Result<Finished> {
        let what = format!("sluice {} on {}", args.join(" "), self.config.node);
        let mut cmd = Command::new(&self.config.bin);
        cmd.args(args).envs(self.config.env.iter().cloned());
        netns::enter_on_exec(&mut cmd, &self.config.netns, None)
            .and_then(|()| process::run(what.clone(), cmd, CLI_TIMEOUT))
            .with_context(|| format!("running {what}"))
    }

    /// `sluice COMMAND -o json --pin-dir PIN` (services, backends, conntrack, affinity,
    /// stats) parsed as JSON; panics with the output if it fails or is not JSON.
    pub fn read_json(&self, command: &str) -> serde_json::Value {
        let pin_dir = self.config.pin_dir.to_str().expect("pin dir is UTF-8");
        let out = self
            .cli(&[command, "-o", "json", "--pin-dir", pin_dir])
            .check(&format!("sluice {command} on {}", self.config.node))
            .unwrap_or_else(|e| panic!("{e:#}"));
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sluice {command} on {}: stdout is not JSON ({e})\n{}",
                self.config.node, out.stdout
            )
        })
    }

    /// The count of `reason` in the `list` (`drops` or `passes`) of `sluice stats -o json`.
    pub fn stats_count(&self, list: &str, reason: &str) -> u64 {
        let name = format!("{list} {reason}");
        let counters = self.all_counters();
        counters
            .get(&name)
            .copied()
            .unwrap_or_else(|| panic!("no counter {name:?} in {counters:#?}"))
    }

    /// Every counter of `sluice stats -o json` by name: `drops REASON`, `passes REASON` and
    /// `hooks HOOK VERDICT`.
    pub fn all_counters(&self) -> std::collections::BTreeMap<String, u64> {
        let stats = self.read_json("stats");
        let mut counters = std::collections::BTreeMap::new();
        for (list, fields) in [
            ("drops", &["reason"][..]),
            ("passes", &["reason"]),
            ("hooks", &["hook", "verdict"]),
        ] {
            for row in stats[list].as_array().into_iter().flatten() {
                let name: Vec<&str> = fields.iter().filter_map(|f| row[*f].as_str()).collect();
                if let Some(count) = row["count"].as_u64() {
                    counters.insert(format!("{list} {}", name.join(" ")), count);
                }
            }
        }
        counters
    }

    /// `sluice services -o json --pin-dir PIN`.
    pub fn services_json(&self) -> serde_json::Value {
        self.read_json("services")
    }

    /// The `hooks` rows of `sluice stats -o json`: how often each program returned what.
    pub fn hook_counts(&self) -> HookCounts {
        let stats = self.read_json("stats");
        let rows = stats["hooks"]
            .as_array()
            .unwrap_or_else(|| panic!("no hooks in {stats:#}"))
            .iter()
            .map(|row| {
                (
                    row["hook"].as_str().expect("hook").to_owned(),
                    row["verdict"].as_str().expect("verdict").to_owned(),
                    row["count"].as_u64().expect("count"),
                )
            })
            .collect();
        HookCounts(rows)
    }
}

/// Every answer of a batch of requests (`what` says which), or a panic at the first failure
/// with the stderr of the `daemons` that served them.
pub fn every_answer(
    answers: Vec<Result<Reply, String>>,
    what: &str,
    daemons: &[&SluiceDaemon],
) -> Vec<Reply> {
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|err| {
                let stderr: Vec<String> = daemons
                    .iter()
                    .map(|d| format!("{} stderr:\n{}", d.config.node, d.stderr()))
                    .collect();
                panic!("{what}: {err}\n{}", stderr.join("\n"))
            })
        })
        .collect()
}

/// `(hook, verdict, count)` rows of `sluice stats`, as [`SluiceDaemon::hook_counts`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCounts(pub Vec<(String, String, u64)>);

impl HookCounts {
    /// How often `hook` returned `verdict` (0 when the row is absent).
    pub fn of(&self, hook: &str, verdict: &str) -> u64 {
        self.0
            .iter()
            .find(|(h, v, _)| h == hook && v == verdict)
            .map_or(0, |(_, _, count)| *count)
    }
}

impl Drop for SluiceDaemon {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(child) = self.latest()
        {
            eprintln!("{}", child.output_report());
        }
        // The child guards kill and reap.
    }
}
