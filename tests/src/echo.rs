//! The `netns-echo` wire format seen from the tests: protocols, answers, and parsing them.
//!
//! A server answers `NAME PEER LOCAL` (the pod's name, the client address it saw, and its
//! own address; IPv6 ones as `[fd00:18::100]:4000`). `netns-echo request` prints that line followed by the address the client
//! saw the answer come from (`REMOTE`), or `error: KIND: message`.

use std::{fmt, net::SocketAddr};

/// How `netns-echo request` talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// A new TCP connection per request.
    Tcp,
    /// A new unconnected UDP socket per request: sendto + recvfrom (cgroup sendmsg/recvmsg).
    Udp,
    /// A new connected UDP socket per request: connect + send + recv (cgroup connect).
    UdpConnected,
}

impl Proto {
    /// The word `netns-echo request` takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::UdpConnected => "udp-connected",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_arg())
    }
}

/// One answer from an echo server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answering pod's name.
    pub name: String,
    /// The client address the server saw (after any SNAT).
    pub peer: SocketAddr,
    /// The server's own socket address (port = the pod port that answered; UDP: 0.0.0.0).
    pub local: SocketAddr,
    /// The address the client saw the answer from (getpeername / recvfrom), i.e. after
    /// reverse translation.
    pub remote: SocketAddr,
    /// A large UDP request (`--size`): the bytes the server received, checked unchanged.
    pub received: Option<usize>,
}

impl Reply {
    /// Parses `NAME PEER LOCAL [LEN] REMOTE`.
    pub fn parse(line: &str) -> Result<Reply, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, peer, local, received, remote) = match fields[..] {
            [name, peer, local, remote] => (name, peer, local, None, remote),
            [name, peer, local, len, remote] => {
                let len = len
                    .parse()
                    .map_err(|e| format!("malformed length {len:?} in answer {line:?}: {e}"))?;
                (name, peer, local, Some(len), remote)
            }
            _ => return Err(format!("malformed answer {line:?}")),
        };
        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|e| format!("malformed address {s:?} in answer {line:?}: {e}"))
        };
        Ok(Reply {
            name: name.to_owned(),
            peer: addr(peer)?,
            local: addr(local)?,
            remote: addr(remote)?,
            received,
        })
    }
}

/// Parses one output line of `netns-echo request`: an answer, or the error text after
/// `error: ` (which starts with a kind: `refused`, `timeout`, `reset`, `unreachable`, `eof`
/// or `other`).
pub fn parse_line(line: &str) -> Result<Reply, String> {
    match line.strip_prefix("error: ") {
        Some(err) => Err(err.to_owned()),
        None => Reply::parse(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers_and_errors() {
        let r = parse_line("pod-1a 198.18.0.100:4000 198.18.1.10:80 198.19.0.1:80").unwrap();
        assert_eq!(r.name, "pod-1a");
        assert_eq!(r.peer, "198.18.0.100:4000".parse().unwrap());
        assert_eq!(r.local.port(), 80);
        assert_eq!(r.remote, "198.19.0.1:80".parse().unwrap());
        assert_eq!(
            parse_line("error: refused: Connection refused (os error 111)"),
            Err("refused: Connection refused (os error 111)".to_owned())
        );
        assert!(parse_line("pod-1a 1.2.3.4:5").is_err());
        let big = parse_line("pod-1a 198.18.0.100:4000 0.0.0.0:8053 4000 198.19.0.1:53").unwrap();
        assert_eq!(big.received, Some(4000));
        assert_eq!(r.received, None);
    }

    #[test]
    fn parses_ipv6_and_mapped_answers() {
        let r =
            parse_line("pod-2a [fd00:18::100]:4000 [fd00:18:2::10]:80 [fd00:19::10]:80").unwrap();
        assert_eq!(r.peer, "[fd00:18::100]:4000".parse().unwrap());
        assert_eq!(r.remote, "[fd00:19::10]:80".parse().unwrap());
        let r =
            parse_line("pod-1a 198.18.0.100:4000 198.18.1.10:80 [::ffff:198.19.0.10]:80").unwrap();
        assert!(r.peer.is_ipv4());
        assert_eq!(r.remote.to_string(), "[::ffff:198.19.0.10]:80");
    }
}
