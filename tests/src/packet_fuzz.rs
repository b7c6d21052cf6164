//! Packet fuzzing: random and mutated frames through every XDP and TC program with
//! `BPF_PROG_TEST_RUN`, each run checked against invariants that hold whatever the frame:
//!
//! - the verdict is one the program may return (XDP: drop, pass, tx, redirect; TC: ok, shot,
//!   redirect);
//! - a frame to an address Sluice has nothing at (a foreign range) leaves byte for byte
//!   unchanged, passed, unless it is exactly the reply of a flow an earlier fuzzed frame opened
//!   from that range (a client may have any address);
//! - a frame to the SNAT address on a SNAT port that no flow's reply entry holds (a spoofed
//!   reply) is never sent on (no tx, no redirect) and leaves unchanged (the fuzzing makes
//!   flows of its own: a frame that matches one exactly is that flow's reply);
//! - a valid frame that comes out changed is valid (IPv4 header, L4 and ICMP checksums and
//!   lengths, computed from scratch; fragments are checked when whole);
//! - every run is counted once in its program's verdict counters (`tc_ingress`: every redirect).
//!
//! The frames are seeded from the kinds of the packet tables (TCP and UDP of both families to
//! cluster IPs, NodePorts, services without endpoints, unserved ports and addresses, replies,
//! fragments, ICMP errors, IPv6 extension headers, ARP) and mutated (bits flipped, bytes
//! replaced, cut, extended, addresses and ports swapped).
//! `cargo xtask reliability` runs a million frames per program; the test a few thousand.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

use proxy_common::{
    BACKEND_F_LOCAL, CONFIG_F_XDP_TX, CT_DIR_REPLY, IPPROTO_TCP, IPPROTO_UDP, SVC_ADDR_CLUSTER_IP,
    SVC_ADDR_SERVICE_CIDR, SVC_F_NODEPORT, stats::Hook, tcp,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    datapath::{
        CLIENT_IP, CLIENT_IP6, Datapath, NEXT_HOP_IP, NEXT_HOP_IP6, NODE_IP, NODE_IP6, Program,
        SNAT_PORT_MAX, SNAT_PORT_MIN, ct_key, ct_key6, sock, sock6,
    },
    packet::{self, ExtHeader, IPPROTO_DSTOPTS},
};

const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const REMOTE_SVC: [u8; 4] = [198, 19, 0, 20];
const EMPTY_SVC: [u8; 4] = [198, 19, 0, 30];
const LOCAL: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const REMOTE: (u32, [u8; 4], u16) = (2, NEXT_HOP_IP, 8080);
/// Nothing is configured here, in either family: frames to it are not Sluice's.
const FOREIGN: [u8; 4] = [198, 18, 50, 0];
const FOREIGN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0);

const XDP_VERDICTS: [u32; 4] = [1, 2, 3, 4];
const TC_VERDICTS: [u32; 3] = [0, 2, 7];

fn datapath() -> Datapath {
    let mut dp = Datapath::new(CONFIG_F_XDP_TX);
    dp.add_backend(LOCAL.0, sock(LOCAL.1, LOCAL.2), BACKEND_F_LOCAL);
    dp.add_backend(REMOTE.0, sock(REMOTE.1, REMOTE.2), 0);
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        dp.add_service(
            100 + u32::from(proto),
            sock(CLUSTER_IP, 80),
            proto,
            0,
            &[LOCAL.0],
        );
        dp.add_service(
            200 + u32::from(proto),
            sock(REMOTE_SVC, 80),
            proto,
            0,
            &[REMOTE.0],
        );
        dp.add_service(300 + u32::from(proto), sock(EMPTY_SVC, 80), proto, 0, &[]);
        let node_port = sock([0; 4], 30080);
        dp.add_service(
            400 + u32::from(proto),
            node_port,
            proto,
            SVC_F_NODEPORT,
            &[LOCAL.0],
        );
    }
    dp.add_service_addr(CLUSTER_IP, 32, SVC_ADDR_CLUSTER_IP);
    dp.add_service_addr([198, 19, 0, 0], 16, SVC_ADDR_SERVICE_CIDR);
    let local6 = sock6(Ipv6Addr::new(0xfd00, 0x19, 0x100, 0, 0, 0, 0, 1), 8080);
    dp.add_backend6(21, local6, BACKEND_F_LOCAL);
    dp.add_backend6(22, sock6(NEXT_HOP_IP6, 8080), 0);
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let svc = |last| sock6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, last), 80);
        dp.add_service6(500 + u32::from(proto), svc(0x10), proto, 0, 0, &[21]);
        dp.add_service6(600 + u32::from(proto), svc(0x20), proto, 0, 0, &[22]);
    }
    dp
}

/// Valid frames of every kind the tables test, from the client's side and the backends'.
fn seeds() -> Vec<Vec<u8>> {
    let client = |port| sock(CLIENT_IP, port);
    let client6 = |port| sock6(CLIENT_IP6, port);
    let v4_targets = [
        sock(CLUSTER_IP, 80),
        sock(REMOTE_SVC, 80),
        sock(EMPTY_SVC, 80),
        sock(CLUSTER_IP, 9999),
        sock([198, 19, 0, 99], 53),
        sock(NODE_IP, 30080),
        sock(NODE_IP, SNAT_PORT_MIN + 7),
        sock(FOREIGN, 80),
    ];
    let mut out = Vec::new();
    for target in v4_targets {
        for flags in [tcp::SYN, tcp::ACK, tcp::ACK | tcp::PSH, tcp::FIN, tcp::RST] {
            out.push(
                packet::tcp(client(40000), target, flags)
                    .payload(b"data")
                    .build(),
            );
        }
        out.push(packet::udp(client(50000), target).payload(b"query").build());
        out.push(
            packet::udp(client(50000), target)
                .without_udp_checksum()
                .build(),
        );
        let big = packet::udp(client(50001), target)
            .payload(&[7; 3000])
            .build();
        out.extend(packet::fragments(&big, 1480));
        out.push(
            packet::icmp_unreachable(
                Ipv4Addr::new(198, 18, 0, 30),
                Ipv4Addr::from(NODE_IP),
                4,
                &packet::tcp(sock(NODE_IP, SNAT_PORT_MIN + 7), target, tcp::ACK).build(),
            )
            .build(),
        );
    }
    // Replies of the backends.
    out.push(packet::tcp(sock(LOCAL.1, LOCAL.2), client(40000), tcp::SYN | tcp::ACK).build());
    out.push(
        packet::tcp(
            sock(REMOTE.1, REMOTE.2),
            sock(NODE_IP, SNAT_PORT_MAX),
            tcp::ACK,
        )
        .build(),
    );
    out.push(packet::icmp(Ipv4Addr::from(CLIENT_IP), Ipv4Addr::from(CLUSTER_IP), 8, 0).build());
    let v6_targets = [
        sock6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10), 80),
        sock6(Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x20), 80),
        sock6(NODE_IP6, SNAT_PORT_MIN + 7),
        SocketAddrV6::new(FOREIGN6, 80, 0, 0),
    ];
    for target in v6_targets {
        out.push(packet::tcp6(client6(40000), target, tcp::SYN).build());
        out.push(
            packet::tcp6(client6(40000), target, tcp::ACK)
                .ext(ExtHeader::options(IPPROTO_DSTOPTS, 8))
                .build(),
        );
        out.push(
            packet::udp6(client6(50000), target)
                .payload(b"query")
                .build(),
        );
        let big = packet::udp6(client6(50001), target)
            .payload(&[7; 3000])
            .build();
        out.extend(packet::fragments6(&big, 1448, 9));
    }
    out.push(packet::ethernet(
        packet::ETH_P_ARP,
        &[0, 1, 8, 0, 6, 4, 0, 1],
    ));
    out
}

/// A seed changed a few ways at random.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut frame = seed.to_vec();
    for _ in 0..rng.random_range(0..4) {
        match rng.random_range(0..6) {
            0 => {
                let at = rng.random_range(0..frame.len());
                frame[at] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let at = rng.random_range(0..frame.len());
                frame[at] = rng.random();
            }
            2 if frame.len() > 14 => frame.truncate(rng.random_range(14..frame.len())),
            3 => frame.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            // The IPv4 addresses and the L4 ports, where an IPv4 frame has them.
            4 if frame.len() >= 38 => {
                let at = rng.random_range(26..38);
                frame[at] = rng.random();
            }
            _ => {}
        }
    }
    frame
}

/// Where a frame is headed, read at the fixed offsets (a mutated frame may not parse).
fn destination(frame: &[u8]) -> Option<(bool, Vec<u8>)> {
    match frame.get(12..14)? {
        [0x08, 0x00] => Some((false, frame.get(30..34)?.to_vec())),
        [0x86, 0xdd] => Some((true, frame.get(38..54)?.to_vec())),
        _ => None,
    }
}

/// A frame to an address Sluice has nothing at, unless it is the reply of a flow the fuzzing
/// opened (a client may have any address: an earlier frame from the foreign range to a
/// service made one, and its reply is Sluice's to translate).
fn is_foreign(dp: &mut Datapath, frame: &[u8]) -> bool {
    let foreign = match destination(frame) {
        Some((false, dst)) => dst[..3] == FOREIGN[..3],
        Some((true, dst)) => dst[..8] == FOREIGN6.octets()[..8],
        None => false,
    };
    foreign && !ports(frame).is_some_and(|tuple| has_reply_entry(dp, &tuple))
}

/// A TCP or UDP frame to the SNAT address on a SNAT port that no flow's reply entry holds: a
/// spoofed reply, which nothing may take.
fn is_spoofed_reply(dp: &mut Datapath, frame: &[u8]) -> bool {
    let Some(tuple) = ports(frame) else {
        return false;
    };
    let to_snat = if tuple.v6 {
        tuple.dst == NODE_IP6.octets()
    } else {
        tuple.dst == NODE_IP
    };
    to_snat
        && (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&tuple.dport)
        && !has_reply_entry(dp, &tuple)
}

/// A frame's addresses, protocol and ports, read at the fixed offsets.
struct Tuple {
    v6: bool,
    proto: u8,
    src: Vec<u8>,
    sport: u16,
    dst: Vec<u8>,
    dport: u16,
}

/// The tuple of a TCP or UDP frame that is not a fragment (a later fragment's "ports" are
/// data, and it belongs to whichever datagram shares its addresses and identification).
fn ports(frame: &[u8]) -> Option<Tuple> {
    let (v6, dst) = destination(frame)?;
    if packet::is_fragment(frame) {
        return None;
    }
    let (proto, src, l4) = if v6 {
        (*frame.get(20)?, frame.get(22..38)?, 54)
    } else {
        let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
        (*frame.get(23)?, frame.get(26..30)?, 14 + ihl)
    };
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
        return None;
    }
    let ports = frame.get(l4..l4 + 4)?;
    Some(Tuple {
        v6,
        proto,
        src: src.to_vec(),
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dst,
        dport: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

/// Whether a flow's reply entry matches the tuple exactly.
fn has_reply_entry(dp: &mut Datapath, tuple: &Tuple) -> bool {
    if tuple.v6 {
        let addr = |bytes: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"));
        let from = SocketAddrV6::new(addr(&tuple.src), tuple.sport, 0, 0);
        let to = SocketAddrV6::new(addr(&tuple.dst), tuple.dport, 0, 0);
        dp.conntrack6(ct_key6(from, to, tuple.proto, CT_DIR_REPLY))
            .is_some()
    } else {
        let addr = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).expect("4 bytes");
        let from = sock(addr(&tuple.src), tuple.sport);
        let to = sock(addr(&tuple.dst), tuple.dport);
        dp.conntrack(ct_key(from, to, tuple.proto, CT_DIR_REPLY))
            .is_some()
    }
}

fn hook_of(program: Program) -> Hook {
    match program {
        Program::Xdp => Hook::Xdp,
        Program::TcIngress => Hook::TcIngress,
        Program::TcEgress => Hook::TcEgress,
        Program::FromPod => Hook::FromPod,
        Program::ToPod => Hook::ToPod,
    }
}

fn counted(dp: &mut Datapath, hook: Hook) -> u64 {
    (0..8).map(|verdict| dp.hook_count(hook, verdict)).sum()
}

/// What one program made of its frames.
#[derive(Clone, Debug)]
pub struct Tally {
    pub program: &'static str,
    /// Frames the kernel ran the program on, each checked.
    pub ran: u64,
    pub redirected: u64,
    /// Frames the kernel refused to run an skb program on (shorter than their IP header).
    pub refused: u64,
    pub elapsed: std::time::Duration,
}

/// Runs `frames` seeded and mutated frames through `program`, checking each run.
fn fuzz(dp: &mut Datapath, rng: &mut StdRng, seed: u64, program: Program, frames: usize) -> Tally {
    let seeds = seeds();
    let started = std::time::Instant::now();
    let mut tally = Tally {
        program: program.name(),
        ran: 0,
        redirected: 0,
        refused: 0,
        elapsed: std::time::Duration::ZERO,
    };
    for i in 0..frames {
        let seed_frame = &seeds[rng.random_range(0..seeds.len())];
        let input = if i % 4 == 0 {
            seed_frame.clone()
        } else {
            mutate(rng, seed_frame)
        };
        let what = || format!("{} on frame {i} {input:02x?} (seed {seed})", program.name());
        // Before the run: a reply may retire the entry it matched.
        let not_ours = is_foreign(dp, &input) || is_spoofed_reply(dp, &input);
        let run = match dp.try_run(program, &input) {
            Ok(run) => run,
            // The kernel refuses skb runs on frames too short for their headers.
            Err(_) if !matches!(program, Program::Xdp) => {
                tally.refused += 1;
                continue;
            }
            Err(err) => panic!("{}: {err:?}", what()),
        };
        tally.ran += 1;
        tally.redirected += u64::from(run.verdict == 7);
        let allowed: &[u32] = if matches!(program, Program::Xdp) {
            &XDP_VERDICTS
        } else {
            &TC_VERDICTS
        };
        assert!(
            allowed.contains(&run.verdict),
            "{}: verdict {}",
            what(),
            run.verdict
        );
        if not_ours {
            assert_eq!(
                run.frame,
                input,
                "{}: changed a frame that is not Sluice's",
                what()
            );
            assert!(
                !matches!(run.verdict, 3 | 4 | 7),
                "{}: sent on ({})",
                what(),
                run.verdict
            );
        }
        if run.frame != input
            && packet::parse_any(&input).is_ok()
            && !packet::is_fragment(&run.frame)
            && let Err(err) = packet::parse_any(&run.frame)
        {
            panic!(
                "{}: a valid frame came out invalid ({err}): {:02x?}",
                what(),
                run.frame
            );
        }
    }
    tally.elapsed = started.elapsed();
    tally
}

/// Runs `frames` frames per program through every XDP and TC program from `seed`, checking
/// every invariant; panics naming the program, the frame and the seed on the first broken one.
pub fn run(frames: usize, seed: u64) -> Vec<Tally> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dp = datapath();
    let mut tallies = Vec::new();
    for program in [
        Program::Xdp,
        Program::TcEgress,
        Program::FromPod,
        Program::ToPod,
        Program::TcIngress,
    ] {
        let hook = hook_of(program);
        let before = counted(&mut dp, hook);
        let tally = fuzz(&mut dp, &mut rng, seed, program, frames);
        let after = counted(&mut dp, hook);
        // tc_ingress counts only its redirects: the rest of the node's traffic passes it at
        // the cost of one metadata check.
        let expected = if matches!(program, Program::TcIngress) {
            tally.redirected
        } else {
            tally.ran
        };
        assert_eq!(
            after - before,
            expected,
            "{}: verdict counters (seed {seed})",
            program.name()
        );
        tallies.push(tally);
    }
    tallies
}

/// A seed for a run nobody asked to replay: the time, which the caller prints.
pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
}
