//! Packet tests of a reused tuple through `BPF_PROG_TEST_RUN`: the reply entry of a closed flow
//! must not translate a new connection between the same backend and client that bypassed the
//! service (`tc_egress` for local backends, `xdp_ingress` for SNATed ones); live flows and
//! flows reopened through the service keep being translated. Needs root.

use std::net::SocketAddrV4;

use proxy_common::{
    BACKEND_F_LOCAL, CONFIG_F_XDP_TX, CT_DIR_FORWARD, CT_DIR_REPLY, CtKey, IPPROTO_TCP,
    SVC_F_NODEPORT, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED, TCP_STATE_SYN, tcp,
};
use proxy_tests::{
    datapath::{
        CLIENT_IP, CLIENT_MAC, Case, Datapath, Expect, NEXT_HOP_IP, NEXT_HOP_MAC, NODE_IP, Program,
        XDP_PASS, XDP_TX, ct_key, sock,
    },
    packet::{self, Frame, NODE_MAC, PEER_MAC},
};

const NODE_PORT: u16 = 30080;
/// A ClusterIP whose only backend is behind the next hop: its flows are SNATed.
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
const LOCAL: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const REMOTE: (u32, [u8; 4], u16) = (10, NEXT_HOP_IP, 8080);

fn client(port: u16) -> SocketAddrV4 {
    sock(CLIENT_IP, port)
}

fn node_port() -> SocketAddrV4 {
    sock(NODE_IP, NODE_PORT)
}

fn local_backend() -> SocketAddrV4 {
    sock(LOCAL.1, LOCAL.2)
}

fn remote_backend() -> SocketAddrV4 {
    sock(REMOTE.1, REMOTE.2)
}

/// A NodePort to the local backend and a ClusterIP to the remote one.
fn datapath(config_flags: u32) -> Datapath {
    let mut dp = Datapath::new(config_flags);
    dp.add_backend(LOCAL.0, local_backend(), BACKEND_F_LOCAL);
    dp.add_backend(REMOTE.0, remote_backend(), 0);
    let any_node_address = sock([0; 4], NODE_PORT);
    dp.add_service(
        100,
        any_node_address,
        IPPROTO_TCP,
        SVC_F_NODEPORT,
        &[LOCAL.0],
    );
    dp.add_service(101, sock(REMOTE_SVC, 80), IPPROTO_TCP, 0, &[REMOTE.0]);
    dp
}

/// The two conntrack keys of the NodePort flow from client port `port`.
fn local_keys(port: u16) -> (CtKey, CtKey) {
    (
        ct_key(client(port), node_port(), IPPROTO_TCP, CT_DIR_FORWARD),
        ct_key(local_backend(), client(port), IPPROTO_TCP, CT_DIR_REPLY),
    )
}

/// The client's segment on the NodePort flow from `port`: XDP DNATs it to the backend.
fn client_sends(dp: &mut Datapath, port: u16, flags: u8) {
    let segment = packet::tcp(client(port), node_port(), flags);
    dp.check(&Case::xdp(
        "the client's segment goes to the local backend",
        segment.build(),
        XDP_PASS,
        Expect::Frame(
            segment
                .clone()
                .addresses(client(port), local_backend())
                .build(),
        ),
    ));
}

/// The local backend's segment to the client at `port`, as it leaves the node.
fn backend_segment(port: u16, flags: u8) -> Frame {
    packet::tcp(local_backend(), client(port), flags).macs(NODE_MAC, PEER_MAC)
}

/// The backend's segment on the NodePort flow: `tc_egress` gives it the NodePort as source.
fn backend_sends(dp: &mut Datapath, port: u16, flags: u8) {
    let segment = backend_segment(port, flags);
    dp.check(&Case::tc_egress(
        "the backend's segment leaves from the NodePort",
        segment.build(),
        Expect::Frame(segment.clone().addresses(node_port(), client(port)).build()),
    ));
}

fn open_local(dp: &mut Datapath, port: u16) {
    client_sends(dp, port, tcp::SYN);
    backend_sends(dp, port, tcp::SYN | tcp::ACK);
    client_sends(dp, port, tcp::ACK);
}

/// How a flow ended.
#[derive(Clone, Copy, Debug)]
enum Close {
    /// FIN both ways, the client first.
    Fin,
    /// The client reset it (only the forward entry saw the end).
    ClientReset,
    /// The backend reset it (only the reply entry saw the end).
    BackendReset,
}

fn close_local(dp: &mut Datapath, port: u16, how: Close) {
    match how {
        Close::Fin => {
            client_sends(dp, port, tcp::FIN | tcp::ACK);
            backend_sends(dp, port, tcp::FIN | tcp::ACK);
            client_sends(dp, port, tcp::ACK);
        }
        Close::ClientReset => client_sends(dp, port, tcp::RST | tcp::ACK),
        Close::BackendReset => backend_sends(dp, port, tcp::RST | tcp::ACK),
    }
}

#[test]
fn a_closed_local_flow_does_not_take_over_a_direct_connection_from_its_port() {
    let mut dp = datapath(0);
    let live = 40010;
    open_local(&mut dp, live);
    for (port, how) in [
        (40000, Close::Fin),
        (40001, Close::ClientReset),
        (40002, Close::BackendReset),
    ] {
        open_local(&mut dp, port);
        close_local(&mut dp, port, how);
        let (forward, reply) = local_keys(port);
        assert!(
            dp.conntrack(forward).is_some() && dp.conntrack(reply).is_some(),
            "{how:?}: the closed flow's entries linger until the GC"
        );

        // The client reuses the port to connect to the backend's own address; its SYN does not
        // touch the service's entries, the backend's SYN-ACK matches the reply entry.
        dp.check(&Case::tc_egress(
            "the SYN-ACK of a direct connection leaves as the backend's",
            backend_segment(port, tcp::SYN | tcp::ACK).build(),
            Expect::Unchanged,
        ));
        assert_eq!(
            (dp.conntrack(forward), dp.conntrack(reply)),
            (None, None),
            "{how:?}: both stale entries are deleted"
        );
        dp.check(&Case::tc_egress(
            "the rest of the direct connection leaves untouched",
            backend_segment(port, tcp::PSH | tcp::ACK)
                .payload(b"hello\n")
                .build(),
            Expect::Unchanged,
        ));
    }
    let (forward, reply) = local_keys(live);
    assert!(
        dp.conntrack(forward).is_some() && dp.conntrack(reply).is_some(),
        "an open flow of another port keeps its entries"
    );
    assert_eq!(dp.conntrack_len(), 2, "only the open flow is left");
    backend_sends(&mut dp, live, tcp::PSH | tcp::ACK);
}

#[test]
fn handshake_answers_of_live_and_reopened_local_flows_are_still_translated() {
    let mut dp = datapath(0);
    let port = 40000;
    let (forward, reply) = local_keys(port);
    client_sends(&mut dp, port, tcp::SYN);
    backend_sends(&mut dp, port, tcp::SYN | tcp::ACK);
    client_sends(&mut dp, port, tcp::ACK);
    // The client's ACK got lost behind the node: the backend sends its SYN-ACK again.
    backend_sends(&mut dp, port, tcp::SYN | tcp::ACK);
    assert_eq!(
        dp.conntrack(forward).map(|e| e.tcp_state),
        Some(TCP_STATE_ESTABLISHED)
    );

    // Closed, then reused through the NodePort: the new SYN reopens the flow, so the answer
    // is the flow's own.
    close_local(&mut dp, port, Close::Fin);
    assert_eq!(
        dp.conntrack(reply).map(|e| e.tcp_state),
        Some(TCP_STATE_CLOSING)
    );
    client_sends(&mut dp, port, tcp::SYN);
    assert_eq!(
        dp.conntrack(forward).map(|e| e.tcp_state),
        Some(TCP_STATE_SYN)
    );
    backend_sends(&mut dp, port, tcp::SYN | tcp::ACK);
    assert_eq!(
        dp.conntrack(reply).map(|e| e.tcp_state),
        Some(TCP_STATE_ESTABLISHED),
        "the reopened flow's answer reopens its reply entry"
    );
    client_sends(&mut dp, port, tcp::ACK);
    backend_sends(&mut dp, port, tcp::PSH | tcp::ACK);
    assert_eq!(dp.conntrack_len(), 2, "one flow, two entries");
}

/// The SNAT port the flow from client port `port` got.
fn snat_port(dp: &mut Datapath, port: u16) -> u16 {
    let key = ct_key(
        client(port),
        sock(REMOTE_SVC, 80),
        IPPROTO_TCP,
        CT_DIR_FORWARD,
    );
    let forward = dp.conntrack(key).expect("forward entry of the SNATed flow");
    u16::from_be(forward.new_sport)
}

/// The client's segment on the SNATed flow from `port`: out to the backend from `snat_port`.
fn client_sends_snat(dp: &mut Datapath, port: u16, snat_port: u16, flags: u8) {
    let segment = packet::tcp(client(port), sock(REMOTE_SVC, 80), flags);
    dp.check(&Case::xdp(
        "the client's segment is SNATed to the remote backend",
        segment.build(),
        XDP_TX,
        Expect::Frame(
            segment
                .clone()
                .addresses(sock(NODE_IP, snat_port), remote_backend())
                .ttl(63)
                .macs(NODE_MAC, NEXT_HOP_MAC)
                .build(),
        ),
    ));
}

fn remote_segment(snat_port: u16, flags: u8) -> Frame {
    packet::tcp(remote_backend(), sock(NODE_IP, snat_port), flags).macs(NEXT_HOP_MAC, NODE_MAC)
}

/// The remote backend's segment to `snat_port`: back to the client at `port`.
fn backend_sends_snat(dp: &mut Datapath, port: u16, snat_port: u16, flags: u8) {
    let segment = remote_segment(snat_port, flags);
    dp.check(&Case::xdp(
        "the remote backend's segment goes back to the client from the frontend",
        segment.build(),
        XDP_TX,
        Expect::Frame(
            segment
                .clone()
                .addresses(sock(REMOTE_SVC, 80), client(port))
                .ttl(63)
                .macs(NODE_MAC, CLIENT_MAC)
                .build(),
        ),
    ));
}

/// Opens and closes (FIN both ways) the SNATed flow from `port`; returns its SNAT port.
fn snat_flow_opened_and_closed(dp: &mut Datapath, port: u16) -> u16 {
    let frontend = sock(REMOTE_SVC, 80);
    let syn = packet::tcp(client(port), frontend, tcp::SYN);
    let run = dp.run(Program::Xdp, &syn.build());
    assert_eq!(run.verdict, XDP_TX, "the SYN is SNATed and sent back out");
    let snat_port = snat_port(dp, port);
    backend_sends_snat(dp, port, snat_port, tcp::SYN | tcp::ACK);
    client_sends_snat(dp, port, snat_port, tcp::ACK);
    client_sends_snat(dp, port, snat_port, tcp::FIN | tcp::ACK);
    backend_sends_snat(dp, port, snat_port, tcp::FIN | tcp::ACK);
    client_sends_snat(dp, port, snat_port, tcp::ACK);
    snat_port
}

#[test]
fn a_closed_snat_flow_does_not_take_over_a_new_connection_on_its_snat_tuple() {
    let mut dp = datapath(CONFIG_F_XDP_TX);
    let stale = snat_flow_opened_and_closed(&mut dp, 40000);
    let forward = ct_key(
        client(40000),
        sock(REMOTE_SVC, 80),
        IPPROTO_TCP,
        CT_DIR_FORWARD,
    );
    let reply = ct_key(
        remote_backend(),
        sock(NODE_IP, stale),
        IPPROTO_TCP,
        CT_DIR_REPLY,
    );
    assert!(dp.conntrack(forward).is_some() && dp.conntrack(reply).is_some());
    // A node process that bound the SNAT port talks to the backend: its answer is the node's.
    dp.check(&Case::xdp(
        "a SYN-ACK on a closed SNAT flow's tuple goes to the node's stack untouched",
        remote_segment(stale, tcp::SYN | tcp::ACK).build(),
        XDP_PASS,
        Expect::Unchanged,
    ));
    assert_eq!(
        (dp.conntrack(forward), dp.conntrack(reply)),
        (None, None),
        "both stale entries are deleted"
    );

    // Reused through the service, the SNAT port comes back with the flow and its answer is
    // translated.
    let reused = snat_flow_opened_and_closed(&mut dp, 40001);
    client_sends_snat(&mut dp, 40001, reused, tcp::SYN);
    backend_sends_snat(&mut dp, 40001, reused, tcp::SYN | tcp::ACK);
    client_sends_snat(&mut dp, 40001, reused, tcp::ACK);
    assert_eq!(dp.conntrack_len(), 2, "one flow, two entries");
}
