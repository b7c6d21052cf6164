//! What an error does on each path: its action, the drop counter it is counted in, and whether
//! it is logged. The one table every hook's entry function reads.

use proxy_common::stats::{DropReason, PassReason};

use crate::error::Error;

/// Where an error arose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `xdp_ingress`: packets from off-node.
    Xdp,
    /// `tc_egress`: replies of local backends leaving the node (and `tc_to_pod`: replies
    /// reaching a pod).
    TcEgress,
    /// `tc_from_pod`: packets a pod sent that no socket hook translated.
    FromPod,
    /// The cgroup socket hooks: a `connect` or `sendmsg` of a local process.
    Socket,
}

/// What happens to the packet or the socket call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// On to the stack (or the call proceeds) untouched.
    Pass,
    /// Dropped (kube-proxy's DROP); the client retransmits or times out.
    Drop,
    /// Refused at once (kube-proxy's REJECT): a TCP RST or ICMP port unreachable from XDP,
    /// `ECONNREFUSED` on a socket.
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    /// The drop counter (`DROP_STATS_V1`) it is counted in; `None` for packets that are not
    /// ours, which the hook's verdict counters count as passed.
    pub counted: Option<DropReason>,
    /// The pass counter (`PASS_STATS_V1`) of a packet that may be for a service but is passed
    /// untranslated.
    pub passed: Option<PassReason>,
    /// Whether it is logged (at debug) when kernel log lines are on.
    pub logged: bool,
}

impl Outcome {
    const fn not_ours() -> Self {
        Self {
            action: Action::Pass,
            counted: None,
            passed: None,
            logged: false,
        }
    }

    const fn untranslated(reason: PassReason) -> Self {
        Self {
            passed: Some(reason),
            ..Self::not_ours()
        }
    }

    const fn refuse(reason: DropReason) -> Self {
        Self {
            action: Action::Refuse,
            counted: Some(reason),
            passed: None,
            logged: true,
        }
    }

    const fn drop(reason: DropReason) -> Self {
        Self {
            action: Action::Drop,
            counted: Some(reason),
            passed: None,
            logged: true,
        }
    }
}

/// The outcome of `err` on `path`.
pub const fn outcome(path: Path, err: Error) -> Outcome {
    match err {
        // Not a TCP or UDP packet we can translate: the stack's, untouched.
        Error::NotIp | Error::NotTcpUdp | Error::Truncated | Error::Malformed => {
            Outcome::not_ours()
        }
        // The same, but possibly a service's traffic: counted as passed.
        Error::Fragment => Outcome::untranslated(PassReason::Fragment),
        Error::ExtensionHeaders => Outcome::untranslated(PassReason::Ipv6ExtensionHeaders),
        Error::NoEndpoints => Outcome::refuse(DropReason::NoEndpoints),
        // kube-proxy's nftables mode rejects the first and drops the second; both are
        // refused here, so a client learns at once that nothing is there.
        Error::UnservedPort => Outcome::refuse(DropReason::UnservedPort),
        Error::UnallocatedServiceIp => Outcome::refuse(DropReason::UnallocatedServiceIp),
        // A slot or backend vanished under a concurrent update: a connecting socket is refused
        // (it would otherwise wait on the service address, which nothing answers), a packet
        // dropped (its retransmission finds the new state).
        Error::NoBackend => match path {
            Path::Socket => Outcome::refuse(DropReason::NoBackend),
            Path::Xdp | Path::TcEgress | Path::FromPod => Outcome::drop(DropReason::NoBackend),
        },
        Error::NoSnatAddress => Outcome::drop(DropReason::NoSnatAddress),
        Error::NoSnatPort => Outcome::drop(DropReason::NoSnatPort),
        Error::ConntrackUpdate => Outcome::drop(DropReason::ConntrackFull),
        // A half-rewritten packet, or a reply that would leave with the pod's address: dropped,
        // so the sender retransmits, rather than sent wrong.
        Error::Resize | Error::SkbRewrite => Outcome::drop(DropReason::Rewrite),
        // Policy drops: kube-proxy's DROP, not REJECT.
        Error::SourceRangeDenied => Outcome::drop(DropReason::SourceRange),
        Error::NoLocalEndpoint => Outcome::drop(DropReason::NoLocalEndpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: [Path; 4] = [Path::Xdp, Path::TcEgress, Path::FromPod, Path::Socket];

    #[test]
    fn packets_that_are_not_ours_pass_untouched_and_uncounted() {
        for path in PATHS {
            for err in [
                Error::NotIp,
                Error::NotTcpUdp,
                Error::Truncated,
                Error::Malformed,
            ] {
                assert_eq!(outcome(path, err), Outcome::not_ours(), "{path:?} {err:?}");
            }
        }
    }

    #[test]
    fn fragments_and_long_ipv6_header_chains_pass_untouched_and_are_counted_as_passed() {
        for path in PATHS {
            for (err, reason) in [
                (Error::Fragment, PassReason::Fragment),
                (Error::ExtensionHeaders, PassReason::Ipv6ExtensionHeaders),
            ] {
                let outcome = outcome(path, err);
                assert_eq!(
                    (outcome.action, outcome.counted, outcome.passed),
                    (Action::Pass, None, Some(reason)),
                    "{path:?} {err:?}"
                );
            }
        }
    }

    #[test]
    fn every_other_error_is_counted_and_logged() {
        for path in PATHS {
            for err in Error::ALL {
                let outcome = outcome(path, err);
                if outcome.action == Action::Pass && outcome.counted.is_none() && !outcome.logged {
                    continue;
                }
                assert!(outcome.logged, "{path:?} {err:?}");
                assert!(outcome.counted.is_some(), "{path:?} {err:?}");
                assert_ne!(outcome.action, Action::Pass, "{path:?} {err:?}");
            }
        }
    }

    /// The table, as kube-proxy users know it: no endpoints is REJECT, policies are DROP.
    #[test]
    fn the_table() {
        let cases = [
            (
                Path::Xdp,
                Error::NoEndpoints,
                Action::Refuse,
                Some(DropReason::NoEndpoints),
            ),
            (
                Path::Socket,
                Error::NoEndpoints,
                Action::Refuse,
                Some(DropReason::NoEndpoints),
            ),
            (
                Path::Socket,
                Error::NoBackend,
                Action::Refuse,
                Some(DropReason::NoBackend),
            ),
            (
                Path::Xdp,
                Error::NoBackend,
                Action::Drop,
                Some(DropReason::NoBackend),
            ),
            (
                Path::Xdp,
                Error::SourceRangeDenied,
                Action::Drop,
                Some(DropReason::SourceRange),
            ),
            (
                Path::Xdp,
                Error::NoLocalEndpoint,
                Action::Drop,
                Some(DropReason::NoLocalEndpoint),
            ),
            (
                Path::Xdp,
                Error::NoSnatPort,
                Action::Drop,
                Some(DropReason::NoSnatPort),
            ),
            (
                Path::Xdp,
                Error::ConntrackUpdate,
                Action::Drop,
                Some(DropReason::ConntrackFull),
            ),
            (
                Path::Xdp,
                Error::Resize,
                Action::Drop,
                Some(DropReason::Rewrite),
            ),
            (
                Path::TcEgress,
                Error::SkbRewrite,
                Action::Drop,
                Some(DropReason::Rewrite),
            ),
        ];
        for (path, err, action, counted) in cases {
            let outcome = outcome(path, err);
            assert_eq!(
                (outcome.action, outcome.counted),
                (action, counted),
                "{path:?} {err:?}"
            );
        }
    }
}
