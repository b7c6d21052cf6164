//! One connected UDP socket kept by a helper process (`netns-echo udp-session`), so a test can
//! see what happens to that same socket across a change: ping, wait, reconnect.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    Cluster, Place, bins,
    echo::{self, Reply},
    process::Child,
};

/// How long the test waits for a line the helper prints without waiting itself.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected UDP socket in a helper process; dropping it kills the helper.
pub struct UdpSession {
    child: Child,
    next_line: usize,
}

impl Cluster {
    /// Connects a UDP socket from `from` to `addr:port` in a helper process.
    pub fn udp_session(&self, from: Place<'_>, addr: impl Into<IpAddr>, port: u16) -> UdpSession {
        self.udp_session_to(from, SocketAddr::new(addr.into(), port))
    }

    /// Like [`Cluster::udp_session`] to a socket address of any kind (IPv4, IPv6,
    /// IPv4-mapped: an `AF_INET6` socket then).
    pub fn udp_session_to(&self, from: Place<'_>, target: SocketAddr) -> UdpSession {
        let mut cmd =
            std::process::Command::new(bins::echo_bin().unwrap_or_else(|e| panic!("{e:#}")));
        cmd.args(["udp-session", &target.to_string()]);
        let (netns, cgroup) = self.place(from);
        let name = format!("UDP session {from:?} -> {target}");
        let child = netns
            .prepare(&mut cmd, cgroup)
            .and_then(|()| Child::spawn_with_stdin(name.clone(), cmd))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut session = UdpSession {
            child,
            next_line: 0,
        };
        let first = session.line(LINE_TIMEOUT);
        assert_eq!(first, "connected", "{name}");
        session
    }
}

impl UdpSession {
    /// Sends a datagram on the socket and reads the answer (the helper waits up to 2 s).
    /// Err: `KIND: message` as `netns-echo` prints it (`timeout: ...`, `other: ...`).
    pub fn ping(&mut self) -> Result<Reply, String> {
        self.command("ping", LINE_TIMEOUT)
    }

    /// Waits up to `wait` for a datagram or an error on the socket, sending nothing.
    pub fn recv(&mut self, wait: Duration) -> Result<Reply, String> {
        self.command(&format!("recv {}", wait.as_millis()), wait + LINE_TIMEOUT)
    }

    /// Connects the same socket again to the session's address (the socket LB picks anew).
    pub fn reconnect(&mut self) -> Result<(), String> {
        self.send("connect");
        let line = self.line(LINE_TIMEOUT);
        match line.strip_prefix("error: ") {
            Some(err) => Err(err.to_owned()),
            None if line == "connected" => Ok(()),
            None => panic!("unexpected answer to connect: {line:?}"),
        }
    }

    fn command(&mut self, command: &str, timeout: Duration) -> Result<Reply, String> {
        self.send(command);
        echo::parse_line(&self.line(timeout))
    }

    fn send(&mut self, command: &str) {
        self.child
            .write_line(command)
            .unwrap_or_else(|e| panic!("UDP session {command}: {e:#}"));
    }

    fn line(&mut self, timeout: Duration) -> String {
        let line = self
            .child
            .wait_stdout_line(self.next_line, timeout)
            .unwrap_or_else(|e| panic!("UDP session: {e:#}"));
        self.next_line += 1;
        line
    }
}
