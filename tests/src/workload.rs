//! Workloads on the cluster: the pods' echo servers, requests from anywhere, held connections.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    bins,
    echo::{self, Proto, Reply},
    netns::Netns,
    process::{self, Child, Finished},
    topology::Cluster,
};

/// TCP ports every pod serves after [`Cluster::start_pods`].
pub const TCP_PORTS: [u16; 2] = [80, 8080];
/// UDP ports every pod serves after [`Cluster::start_pods`].
pub const UDP_PORTS: [u16; 2] = [53, 8053];

/// How long a server gets to bind its ports and say `ready`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout of [`Cluster::request`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Where a test process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// The off-cluster client namespace (no node cgroup: its traffic reaches nodes over the wire).
    Client,
    /// A node's namespace, in the node's cgroup (a node-local process: socket LB applies).
    Node(&'a str),
    /// A pod's namespace, in its node's cgroup.
    Pod(&'a str),
    /// A pod's namespace outside every node cgroup: the socket LB does not see its sockets
    /// (a process outside `--cgroup`, as a VM in a pod is), only the pod-side packet path.
    PodOutsideCgroup(&'a str),
}

impl Cluster {
    /// The namespace and cgroup a process at `place` uses.
    pub fn place(&self, place: Place<'_>) -> (&Netns, Option<&Path>) {
        match place {
            Place::Client => (&self.client().netns, None),
            Place::Node(name) => {
                let node = self.node(name);
                (&node.netns, Some(node.cgroup.as_path()))
            }
            Place::Pod(name) => {
                let pod = self.pod(name);
                (&pod.netns, Some(self.node(&pod.node).cgroup.as_path()))
            }
            Place::PodOutsideCgroup(name) => (&self.pod(name).netns, None),
        }
    }

    /// Spawns `cmd` at `place` (netns + cgroup) as a guarded [`Child`].
    pub fn spawn(&self, place: Place<'_>, name: &str, cmd: Command) -> Child {
        let (netns, cgroup) = self.place(place);
        netns
            .spawn(name, cmd, cgroup)
            .unwrap_or_else(|e| panic!("spawning {name} at {place:?}: {e:#}"))
    }

    /// Runs `cmd` at `place` to completion (killed after `timeout`).
    pub fn run(&self, place: Place<'_>, cmd: Command, timeout: Duration) -> Finished {
        let what = format!("{cmd:?} at {place:?}");
        let (netns, cgroup) = self.place(place);
        let mut cmd = cmd;
        netns
            .prepare(&mut cmd, cgroup)
            .and_then(|()| process::run(what.clone(), cmd, timeout))
            .unwrap_or_else(|e| panic!("running {what}: {e:#}"))
    }

    /// Starts an echo server in every pod on [`TCP_PORTS`] and [`UDP_PORTS`].
    pub fn start_pods(&mut self) {
        self.start_pods_with(&TCP_PORTS, &UDP_PORTS);
    }

    /// Starts an echo server in every pod on the given ports.
    pub fn start_pods_with(&mut self, tcp: &[u16], udp: &[u16]) {
        self.try_start_pods_with(tcp, udp)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Like [`Cluster::start_pods_with`], returning the failure.
    pub fn try_start_pods_with(&mut self, tcp: &[u16], udp: &[u16]) -> Result<()> {
        let names: Vec<String> = self.pods().iter().map(|p| p.name.clone()).collect();
        for name in names {
            self.try_replace_pod(&name, tcp, udp)?;
        }
        Ok(())
    }

    /// Starts pod `pod`'s echo server (in the pod netns and its node's cgroup) and waits
    /// until it has bound every port. Replaces a server already running there.
    pub fn start_pod(&mut self, pod: &str, tcp: &[u16], udp: &[u16]) {
        self.try_replace_pod(pod, tcp, udp)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_replace_pod(&mut self, pod: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
        self.stop_pod(pod);
        let child = self
            .try_start_pod(pod, tcp, udp)
            .with_context(|| format!("starting the echo server of {pod}"))?;
        self.servers.insert(pod.to_owned(), child);
        Ok(())
    }

    fn try_start_pod(&self, pod: &str, tcp: &[u16], udp: &[u16]) -> Result<Child> {
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = Command::new(bins::echo_bin()?);
        cmd.args([
            "serve",
            "--name",
            pod,
            "--tcp",
            &join(tcp),
            "--udp",
            &join(udp),
        ]);
        let (netns, cgroup) = self.place(Place::Pod(pod));
        let mut child = netns.spawn(&format!("echo server {pod}"), cmd, cgroup)?;
        child.wait_for_stdout(SERVER_READY_TIMEOUT, |l| l == "ready")?;
        Ok(child)
    }

    /// Stops pod `pod`'s echo server (SIGKILL), if running: its ports then refuse.
    pub fn stop_pod(&mut self, pod: &str) {
        if let Some(mut child) = self.servers.remove(pod) {
            child
                .kill()
                .unwrap_or_else(|e| panic!("stopping the echo server of {pod}: {e:#}"));
        }
    }

    /// The PID of pod `pod`'s echo server, if running.
    pub fn pod_server_pid(&self, pod: &str) -> Option<u32> {
        self.servers.get(pod).map(Child::pid)
    }

    /// Sends `count` requests (a fresh socket each) from `from` to `addr:port` and returns,
    /// per request, the answering pod's name or the error (`refused: ...`, `timeout: ...`).
    pub fn request(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: impl Into<IpAddr>,
        port: u16,
        count: usize,
    ) -> Vec<Result<String, String>> {
        self.request_detailed(from, proto, addr, port, count, REQUEST_TIMEOUT)
            .into_iter()
            .map(|r| r.map(|reply| reply.name))
            .collect()
    }

    /// Like [`Cluster::request`], returning whole answers: who answered, the client address
    /// the server saw, the server's port, and where the client saw the answer come from.
    pub fn request_detailed(
        &self,
        from: Place<'_>,
        proto: Proto,
        addr: impl Into<IpAddr>,
        port: u16,
        count: usize,
        timeout: Duration,
    ) -> Vec<Result<Reply, String>> {
        self.request_to(
            from,
            proto,
            SocketAddr::new(addr.into(), port),
            count,
            timeout,
        )
    }

    /// Like [`Cluster::request_detailed`] to a socket address: IPv4, IPv6, or IPv4-mapped
    /// (`[::ffff:198.19.0.10]:80`, an `AF_INET6` socket reaching an IPv4 address, as the JVM
    /// connects). A mapped target's answer shows the mapped address as `remote`.
    pub fn request_to(
        &self,
        from: Place<'_>,
        proto: Proto,
        target: SocketAddr,
        count: usize,
        timeout: Duration,
    ) -> Vec<Result<Reply, String>> {
        self.run_requests(from, proto, target, count, timeout, &[])
    }

    /// [`Cluster::request_to`] with UDP datagrams of `size` bytes (`netns-echo --size`): each
    /// answer's `received` says the server got all of it, unchanged.
    pub fn request_sized(
        &self,
        from: Place<'_>,
        proto: Proto,
        target: SocketAddr,
        count: usize,
        size: usize,
    ) -> Vec<Result<Reply, String>> {
        let size = size.to_string();
        self.run_requests(
            from,
            proto,
            target,
            count,
            REQUEST_TIMEOUT,
            &["--size", &size],
        )
    }

    /// One TCP request from local port `source_port` (bound with `SO_REUSEADDR`, so it can be
    /// reused while an earlier connection from it waits in `TIME_WAIT`).
    pub fn request_from_port(
        &self,
        from: Place<'_>,
        source_port: u16,
        addr: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let target = SocketAddr::new(addr.into(), port);
        let source_port = source_port.to_string();
        let extra = ["--source-port", source_port.as_str()];
        let mut answers = self.run_requests(from, Proto::Tcp, target, 1, timeout, &extra);
        answers.remove(0)
    }

    fn run_requests(
        &self,
        from: Place<'_>,
        proto: Proto,
        target: SocketAddr,
        count: usize,
        timeout: Duration,
        extra_args: &[&str],
    ) -> Vec<Result<Reply, String>> {
        let mut cmd = Command::new(bins::echo_bin().unwrap_or_else(|e| panic!("{e:#}")));
        cmd.args(["request", proto.as_arg(), &target.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .args(extra_args);
        // Each attempt is bounded by about two timeouts (connect + read).
        let overall =
            timeout * 2 * u32::try_from(count).expect("a request count") + Duration::from_secs(10);
        let what = format!("{proto} requests from {from:?} to {target}");
        let out = self.run(from, cmd, overall);
        assert!(
            out.status.success(),
            "{what}: netns-echo failed ({})\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        let answers: Vec<Result<Reply, String>> =
            out.stdout.lines().map(echo::parse_line).collect();
        assert_eq!(
            answers.len(),
            count,
            "{what}: expected {count} answer lines\n{}{}",
            out.stdout,
            out.stderr
        );
        answers
    }

    /// Opens a long-lived TCP connection from `from` to `addr:port` in a helper process.
    /// Err: why it could not connect (`refused: ...`, ...).
    pub fn hold(
        &self,
        from: Place<'_>,
        addr: impl Into<IpAddr>,
        port: u16,
    ) -> Result<HeldConn, String> {
        self.hold_to(from, SocketAddr::new(addr.into(), port))
    }

    /// Like [`Cluster::hold`] to a socket address of any kind (IPv4, IPv6, IPv4-mapped).
    pub fn hold_to(&self, from: Place<'_>, target: SocketAddr) -> Result<HeldConn, String> {
        let mut cmd = Command::new(bins::echo_bin().unwrap_or_else(|e| panic!("{e:#}")));
        cmd.args(["hold", &target.to_string()]);
        let (netns, cgroup) = self.place(from);
        let name = format!("held connection {from:?} -> {target}");
        let spawned = netns
            .prepare(&mut cmd, cgroup)
            .and_then(|()| Child::spawn_with_stdin(name.clone(), cmd));
        let mut child = spawned.unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut next_line = 0;
        let greeting = next_reply(&mut child, &mut next_line)?;
        next_reply(&mut child, &mut next_line)?; // the `hold` acknowledgement
        Ok(HeldConn {
            child,
            next_line,
            greeting,
        })
    }

    /// Delegates to [`crate::wait_until`]: polls `cond` until true, panics after `timeout`.
    #[track_caller]
    pub fn wait_until(
        &self,
        timeout: Duration,
        poll_interval: Duration,
        cond: impl FnMut() -> bool,
    ) {
        crate::wait::wait_until(timeout, poll_interval, cond);
    }
}

/// A TCP connection kept open by a helper process (`netns-echo hold`). Each
/// [`HeldConn::ping`] sends a line over it and reads the server's answer. Dropping it
/// closes the connection (the helper is killed).
pub struct HeldConn {
    child: Child,
    next_line: usize,
    greeting: Reply,
}

/// How long a held connection waits for one answer (the helper's own timeout is 2 s).
const HOLD_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn next_reply(child: &mut Child, next_line: &mut usize) -> Result<Reply, String> {
    let line = child
        .wait_stdout_line(*next_line, HOLD_ANSWER_TIMEOUT)
        .map_err(|e| format!("{e:#}"))?;
    *next_line += 1;
    echo::parse_line(&line)
}

impl HeldConn {
    /// The answer the connection got when it was opened: which pod it landed on.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// Sends a line over the connection; the answer says which pod still holds it.
    /// Err once the connection broke (`reset: ...`, `timeout: ...`, `eof: ...`).
    pub fn ping(&mut self) -> Result<Reply, String> {
        self.send("ping")
    }

    /// Sends `line` (any length: a long one fills full-size segments) and reads the answer.
    pub fn send(&mut self, line: &str) -> Result<Reply, String> {
        if let Err(e) = self.child.write_line(line) {
            // The helper exited; its last line says why.
            return match next_reply(&mut self.child, &mut self.next_line) {
                Err(why) => Err(why),
                Ok(_) => Err(format!("{e:#}")),
            };
        }
        next_reply(&mut self.child, &mut self.next_line)
    }

    /// The helper process's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
