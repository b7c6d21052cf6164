//! Per-packet cost of `xdp_ingress` for a NodePort, through `BPF_PROG_TEST_RUN`, against an empty
//! `XDP_PASS` program run in the same process, back to back.
//!
//! Two methods, because a test run re-runs the program on the *same* buffer without restoring
//! it, and a conntrack miss creates the entry the next run hits:
//!
//! - **repeat** (`repeat` = 1e6 on one frame): the conntrack-hit path. The NodePort's backends
//!   are the node address and NodePort itself (local), so the DNAT rewrites the frame to the
//!   same bytes and every run takes the full hit path: both conntrack lookups, the backend
//!   check, the state update, the rewrite and checksum fix-up. The flow is created by one run
//!   before timing. No reply ever confirms it, so it stays in the LRU map of new flows and each
//!   lookup first misses the established map; a second flow, moved to the established map as
//!   its first established reply would move it, is timed beside it (`hit_established`): the
//!   difference is what that miss costs.
//! - **per flow** (`repeat` = 1 on many distinct flows, one syscall each): the conntrack-miss
//!   path (frontend lookup, random slot, backend, two conntrack inserts, rewrite), then the
//!   same flows again as hits. The kernel's own duration for a single run is used, so the
//!   syscall is not counted, but the timer's fixed cost is: it is in the floor measured the
//!   same way, and the figures are differences and ratios against that floor.
//!
//! The pod-side path beside XDP: `tc_from_pod` against an empty `TC_ACT_OK` program, repeat
//! method, on the two packets every pod sends once the path is on: one of an established flow
//! (a pod's flow to the NodePort on the node's address, whose backend is that address and port
//! itself, so the DNAT again rewrites to the same bytes), and one to another pod (no service:
//! the frontend lookup misses and the packet passes untouched).
//!
//! IPv6 beside IPv4: the same NodePort on the node's IPv6 address (`[::]:30080` on
//! `fd00:18::1`, its backends the node address and port itself, so the repeat method again
//! rewrites to the same bytes), measured the same two ways in the same rounds. Its frames are
//! 20 bytes longer (74 bytes for a bare TCP segment against 54): the IPv4 hit is also measured
//! on a 74-byte frame (20 bytes of payload), which separates the header size from the
//! family's work.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use anyhow::{Context as _, Result, ensure};
use proxy_common::{
    CONFIG_F_COUNTERS, CONFIG_F_XDP_TX, CT_DIR_FORWARD, CT_F_POD, CtEntry, CtEntry6, CtKey, CtKey6,
    map_names, net::ip6_to_net, tcp,
};
use proxy_tests::{datapath::xdp_md, packet};

use crate::{
    fixture::{self, Loaded, NODE_IP, NODE_IP6, NODE_PORT, REMOTE_NODE_PORT},
    stats::{Samples, ToF64 as _, minus, ratio},
    sys,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub services: &'static [usize],
    pub endpoints: &'static [usize],
    pub repeat: u32,
    pub rounds: usize,
    /// Distinct flows per round of the per-flow method.
    pub flows: usize,
}

/// One (services, endpoints) row.
#[derive(Clone, Debug)]
pub struct Row {
    pub services: usize,
    pub endpoints: usize,
    pub fill_secs: f64,
    /// Repeat method, ns per packet.
    pub floor: Samples,
    /// A flow no reply confirmed (the bench's flows get no replies): in the LRU map of new
    /// flows, found behind a miss in the established map.
    pub hit: Samples,
    /// A confirmed flow's hit: its entries in the established map, found by the first lookup.
    pub hit_established: Samples,
    /// The same hit with the datapath's counters switched off (`CONFIG_F_COUNTERS`).
    pub hit_uncounted: Samples,
    /// Per-flow method, ns per packet.
    pub floor1: Samples,
    pub miss1: Samples,
    pub hit1: Samples,
    /// The IPv6 NodePort, repeat method: its floor (the `XDP_PASS` program on the 74-byte
    /// frame), the hit, and the IPv4 hit on a frame of the same 74 bytes.
    pub floor6: Samples,
    pub hit6: Samples,
    pub hit_74: Samples,
    /// The IPv6 NodePort, per-flow method.
    pub miss6_1: Samples,
    pub hit6_1: Samples,
    /// The pod-side path, repeat method: the `TC_ACT_OK` floor, a pod's established flow, and
    /// a pod-to-pod packet (no service).
    pub tc_floor: Samples,
    pub pod_hit: Samples,
    pub pod_other: Samples,
    /// Through the restorer (repeat method, the frame restored before each run): its floor
    /// (restore, tail call, `XDP_PASS`), the local hit, and the remote backend's hit (SNAT,
    /// FIB lookup, `XDP_TX`).
    pub restored_floor: Samples,
    pub restored_local: Samples,
    pub restored_remote: Samples,
}

impl Row {
    pub fn hit_overhead(&self) -> Samples {
        minus(&self.hit, &self.floor)
    }
    /// What a new flow's hit costs over a confirmed one's: the established map's miss.
    pub fn established_miss_cost(&self) -> Samples {
        minus(&self.hit, &self.hit_established)
    }
    pub fn hit_ratio(&self) -> Samples {
        ratio(&self.hit, &self.floor)
    }
    /// What counting costs on the hit path: hit with counters / hit without.
    pub fn counters_ratio(&self) -> Samples {
        ratio(&self.hit, &self.hit_uncounted)
    }
    pub fn miss_overhead(&self) -> Samples {
        minus(&self.miss1, &self.floor1)
    }
    pub fn hit1_overhead(&self) -> Samples {
        minus(&self.hit1, &self.floor1)
    }
    /// IPv6 hit cost over IPv4's, both above their floors, on their own frames.
    pub fn hit6_ratio(&self) -> Samples {
        ratio(&minus(&self.hit6, &self.floor6), &self.hit_overhead())
    }
    /// The same with the IPv4 frame padded to IPv6's size.
    pub fn hit6_ratio_same_size(&self) -> Samples {
        ratio(
            &minus(&self.hit6, &self.floor6),
            &minus(&self.hit_74, &self.floor6),
        )
    }
    pub fn miss6_ratio(&self) -> Samples {
        ratio(&minus(&self.miss6_1, &self.floor1), &self.miss_overhead())
    }
    pub fn pod_hit_overhead(&self) -> Samples {
        minus(&self.pod_hit, &self.tc_floor)
    }
    pub fn pod_other_overhead(&self) -> Samples {
        minus(&self.pod_other, &self.tc_floor)
    }
    pub fn restored_local_overhead(&self) -> Samples {
        minus(&self.restored_local, &self.restored_floor)
    }
    pub fn remote_overhead(&self) -> Samples {
        minus(&self.restored_remote, &self.restored_floor)
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "`% 60_000` keeps the port in range; the address part is a few hundred at most"
)]
fn client(k: usize) -> SocketAddrV4 {
    let ip = u32::from(Ipv4Addr::new(198, 18, 1, 0)) + (k / 60_000) as u32;
    SocketAddrV4::new(Ipv4Addr::from(ip), 1024 + (k % 60_000) as u16)
}

/// Client `k` of the IPv6 flows (`fd00:18:1::/64`).
#[expect(
    clippy::cast_possible_truncation,
    reason = "as for `client`: the address part is a few hundred at most"
)]
fn client6(k: usize) -> SocketAddrV6 {
    let ip = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, (k / 60_000) as u16 + 1);
    SocketAddrV6::new(ip, 1024 + (k % 60_000) as u16, 0, 0)
}

pub fn run(params: &Params, log: &mut dyn FnMut(&str)) -> Result<Vec<Row>> {
    let pass = sys::load_xdp_pass().context("load the XDP_PASS floor program")?;
    let tc_ok = sys::load_tc_ok().context("load the TC_ACT_OK floor program")?;
    let mut rows = Vec::new();
    for &services in params.services {
        for &endpoints in params.endpoints {
            let row = run_one(params, services, endpoints, &pass, &tc_ok)
                .with_context(|| format!("per-packet cost at {services} x {endpoints}"))?;
            log(&format!(
                "packet: {services} services x {endpoints} endpoints: hit {:.1} ns (floor {:.1}), \
                 miss {:.1} ns (floor {:.1}), fill {:.1} s",
                row.hit.median(),
                row.floor.median(),
                row.miss1.median(),
                row.floor1.median(),
                row.fill_secs
            ));
            log(&format!(
                "packet: {services} x {endpoints}: confirmed flow's hit {:.1} ns (established \
                 map), new flow's hit {:.1} ns (LRU behind an established-map miss): the miss \
                 costs {:.1} ns",
                row.hit_established.median(),
                row.hit.median(),
                row.established_miss_cost().median(),
            ));
            log(&format!(
                "packet: IPv6 {services} x {endpoints}: hit {:.1} ns (floor {:.1}; IPv4 on 74 \
                 bytes {:.1}), miss {:.1} ns; IPv6 / IPv4 above the floors: hit {:.2} \
                 (same frame size {:.2}), miss {:.2}",
                row.hit6.median(),
                row.floor6.median(),
                row.hit_74.median(),
                row.miss6_1.median(),
                row.hit6_ratio().median(),
                row.hit6_ratio_same_size().median(),
                row.miss6_ratio().median(),
            ));
            log(&format!(
                "packet: pod-side path {services} x {endpoints}: established flow {:.1} ns, \
                 pod to pod {:.1} ns (TC floor {:.1}): over the floor {:.1} and {:.1} ns",
                row.pod_hit.median(),
                row.pod_other.median(),
                row.tc_floor.median(),
                row.pod_hit_overhead().median(),
                row.pod_other_overhead().median(),
            ));
            log(&format!(
                "packet: restored frames {services} x {endpoints}: floor {:.1} ns; over it the \
                 local hit {:.1} ns (plain repeat {:.1}), the remote backend's hit {:.1} ns",
                row.restored_floor.median(),
                row.restored_local_overhead().median(),
                row.hit_overhead().median(),
                row.remote_overhead().median(),
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

#[expect(
    clippy::too_many_lines,
    reason = "one size's rounds, each measuring repeat and per-flow runs back to back"
)]
fn run_one(
    params: &Params,
    services: usize,
    endpoints: usize,
    pass: &std::os::fd::OwnedFd,
    tc_ok: &std::os::fd::OwnedFd,
) -> Result<Row> {
    use std::os::fd::AsFd;
    let total_flows = params.flows * params.rounds + 1;
    let mut sizes = fixture::sizes(services, endpoints, total_flows)?.to_vec();
    let flows_v6 = u32::try_from(2 * total_flows + 4096).context("too many flows")?;
    sizes.extend([
        (map_names::SERVICES6, 1024),
        (map_names::BACKENDS6, 1024),
        (map_names::CONNTRACK6, flows_v6),
    ]);
    let mut loaded = Loaded::new(&sizes)?;
    loaded.load_xdp()?;
    loaded.load_from_pod()?;
    let started = std::time::Instant::now();
    let identity = vec![SocketAddrV4::new(NODE_IP, NODE_PORT); endpoints];
    loaded.fill(services, endpoints, &identity)?;
    let fill_secs = started.elapsed().as_secs_f64();
    let identity_v6 = vec![SocketAddrV6::new(NODE_IP6, NODE_PORT, 0, 0); endpoints];
    let pool = (services * endpoints).clamp(1, fixture::BACKEND_POOL);
    let first_v6 = u32::try_from(pool + endpoints + 1).context("too many backends")?;
    let v6_service_id = u32::try_from(services + 1).context("too many services")?;
    loaded.fill6_nodeport(&identity_v6, v6_service_id, first_v6)?;
    let frontend_v6 = SocketAddrV6::new(NODE_IP6, NODE_PORT, 0, 0);
    let frame_v6 = |k: usize, flags: u8| packet::tcp6(client6(k), frontend_v6, flags).build();

    let frontend = SocketAddrV4::new(NODE_IP, NODE_PORT);
    let ctx = xdp_md(0, loaded.sl0);
    let frame = |k: usize, flags: u8| packet::tcp(client(k), frontend, flags).build();
    let with_len = |frame: &[u8]| {
        let mut ctx = ctx;
        let len = u32::try_from(frame.len()).expect("a test frame is a few dozen bytes");
        ctx[4..8].copy_from_slice(&len.to_ne_bytes());
        ctx
    };
    // An fd of our own: `loaded` stays free to switch the counters between runs.
    let xdp_owned = loaded.xdp_fd()?.try_clone_to_owned()?;
    let xdp = xdp_owned.as_fd();
    let pass = pass.as_fd();
    let from_pod_owned = loaded.tc_from_pod_fd()?.try_clone_to_owned()?;
    let from_pod = from_pod_owned.as_fd();
    let tc_ok = tc_ok.as_fd();
    // The pod-side path's flow (a pod of its own: XDP's hot flow has the same frontend), and a
    // packet to another pod.
    let pod = SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 1), 999);
    check_tc(sys::test_run(
        from_pod,
        &packet::tcp(pod, frontend, tcp::SYN).build(),
        &[],
        1,
        0,
        0,
    )?)?;
    let pod_ack = packet::tcp(pod, frontend, tcp::ACK).build();
    let other_pod = SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 2), 8080);
    let pod_to_pod = packet::tcp(pod, other_pod, tcp::ACK).build();

    // The repeat method's flow: created once, then an established ACK.
    let hot = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 1), 999);
    let syn = packet::tcp(hot, frontend, tcp::SYN).build();
    let ack = packet::tcp(hot, frontend, tcp::ACK).build();
    check(sys::test_run(xdp, &syn, &with_len(&syn), 1, 0, 0)?)?;
    // The same flow's ACK padded to an IPv6 segment's size, and the IPv6 hot flow.
    let padded_ack = packet::tcp(hot, frontend, tcp::ACK)
        .payload(&[0; 20])
        .build();
    let hot_client_v6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x18, 3, 0, 0, 0, 0, 1), 999, 0, 0);
    let syn_v6 = packet::tcp6(hot_client_v6, frontend_v6, tcp::SYN).build();
    let ack_v6 = packet::tcp6(hot_client_v6, frontend_v6, tcp::ACK).build();
    ensure!(
        ack_v6.len() == padded_ack.len(),
        "the IPv6 and padded IPv4 frames differ in size"
    );
    check(sys::test_run(xdp, &syn_v6, &with_len(&syn_v6), 1, 0, 0)?)?;
    // The daemon zeroes a frontend's and a backend's counters when it hands out their ids.
    let hot_flow = {
        let conntrack: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
            loaded
                .ebpf
                .map(map_names::CONNTRACK)
                .context("no conntrack map")?,
        )?;
        conntrack
            .get(&forward_key(hot), 0)
            .context("the SYN did not create its flow")?
    };
    loaded.zero_counters(hot_flow.service_id, hot_flow.backend_id)?;
    // A second flow, confirmed: its entries moved to the established map as its first
    // established reply would move them (the bench sends no replies).
    let confirmed = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 2), 999);
    let confirmed_syn = packet::tcp(confirmed, frontend, tcp::SYN).build();
    let confirmed_ack = packet::tcp(confirmed, frontend, tcp::ACK).build();
    check(sys::test_run(
        xdp,
        &confirmed_syn,
        &with_len(&confirmed_syn),
        1,
        0,
        0,
    )?)?;
    confirm(&mut loaded, &forward_key(confirmed))?;

    let mut row = Row {
        services,
        endpoints,
        fill_secs,
        floor: Samples::default(),
        hit: Samples::default(),
        hit_established: Samples::default(),
        hit_uncounted: Samples::default(),
        floor1: Samples::default(),
        miss1: Samples::default(),
        hit1: Samples::default(),
        floor6: Samples::default(),
        hit6: Samples::default(),
        hit_74: Samples::default(),
        miss6_1: Samples::default(),
        hit6_1: Samples::default(),
        tc_floor: Samples::default(),
        pod_hit: Samples::default(),
        pod_other: Samples::default(),
        restored_floor: Samples::default(),
        restored_local: Samples::default(),
        restored_remote: Samples::default(),
    };
    let remote = RemotePath::new(&mut loaded, services, first_v6 + u32::try_from(endpoints)?)?;
    let restore_floor = sys::Restoring::new(&remote.ack)?;
    restore_floor.point_at(pass)?;
    let restore_remote = sys::Restoring::new(&remote.ack)?;
    restore_remote.point_at(xdp)?;
    let restore_local = sys::Restoring::new(&ack)?;
    restore_local.point_at(xdp)?;
    let ack_ctx = with_len(&ack);
    let ack_v6_ctx = with_len(&ack_v6);
    for round in 0..params.rounds {
        let floor = sys::test_run(pass, &ack, &ack_ctx, params.repeat, 0, 0)?;
        let counted_before = loaded.backend_packets_in(hot_flow.backend_id)?;
        let hit = sys::test_run(xdp, &ack, &ack_ctx, params.repeat, 0, 0)?;
        check(hit)?;
        let counted_after = loaded.backend_packets_in(hot_flow.backend_id)?;
        loaded.set_flag(CONFIG_F_COUNTERS, false)?;
        let uncounted = sys::test_run(xdp, &ack, &ack_ctx, params.repeat, 0, 0);
        loaded.set_flag(CONFIG_F_COUNTERS, true)?;
        let uncounted = uncounted?;
        check(uncounted)?;
        // The two runs differ in counting and nothing else: check that they do.
        let uncounted_after = loaded.backend_packets_in(hot_flow.backend_id)?;
        ensure!(
            counted_after - counted_before == u64::from(params.repeat)
                && uncounted_after == counted_after,
            "the hot flow's backend counted {} packets with counters on and {} off, \
             expected {} and 0",
            counted_after - counted_before,
            uncounted_after - counted_after,
            params.repeat
        );
        let confirmed_hit = sys::test_run(xdp, &confirmed_ack, &ack_ctx, params.repeat, 0, 0)?;
        check(confirmed_hit)?;
        row.floor.push(f64::from(floor.duration_ns));
        row.hit.push(f64::from(hit.duration_ns));
        row.hit_established
            .push(f64::from(confirmed_hit.duration_ns));
        row.hit_uncounted.push(f64::from(uncounted.duration_ns));

        // IPv6 and the same-size IPv4 frame, back to back with their floor.
        let floor_v6 = sys::test_run(pass, &ack_v6, &ack_v6_ctx, params.repeat, 0, 0)?;
        let timed_v6 = sys::test_run(xdp, &ack_v6, &ack_v6_ctx, params.repeat, 0, 0)?;
        check(timed_v6)?;
        let hit_74 = sys::test_run(xdp, &padded_ack, &ack_v6_ctx, params.repeat, 0, 0)?;
        check(hit_74)?;
        row.floor6.push(f64::from(floor_v6.duration_ns));
        row.hit6.push(f64::from(timed_v6.duration_ns));
        row.hit_74.push(f64::from(hit_74.duration_ns));

        // The pod-side path, back to back with its floor.
        let tc_floor = sys::test_run(tc_ok, &pod_ack, &[], params.repeat, 0, 0)?;
        let pod_hit = sys::test_run(from_pod, &pod_ack, &[], params.repeat, 0, 0)?;
        check_tc(pod_hit)?;
        let pod_other = sys::test_run(from_pod, &pod_to_pod, &[], params.repeat, 0, 0)?;
        check_tc(pod_other)?;
        row.tc_floor.push(f64::from(tc_floor.duration_ns));
        row.pod_hit.push(f64::from(pod_hit.duration_ns));
        row.pod_other.push(f64::from(pod_other.duration_ns));

        // Through the restorer, back to back with its floor; XDP_TX on for the remote path.
        loaded.set_flag(CONFIG_F_XDP_TX, true)?;
        let restored = (|| {
            let floor = sys::test_run(
                restore_floor.program.as_fd(),
                &remote.ack,
                &ack_ctx,
                params.repeat,
                0,
                0,
            )?;
            ensure!(
                floor.retval == XDP_PASS,
                "the restorer's floor returned {}",
                floor.retval
            );
            let before = loaded.backend_packets_in(remote.backend_id)?;
            let hit = sys::test_run(
                restore_remote.program.as_fd(),
                &remote.ack,
                &ack_ctx,
                params.repeat,
                0,
                0,
            )?;
            let counted = loaded.backend_packets_in(remote.backend_id)? - before;
            ensure!(
                hit.retval == XDP_TX && counted == u64::from(params.repeat),
                "the remote path returned {} (XDP_TX is 3) and its backend counted {counted} of \
                 {} packets: the restorer did not give each run the flow's frame",
                hit.retval,
                params.repeat
            );
            let local = sys::test_run(
                restore_local.program.as_fd(),
                &ack,
                &ack_ctx,
                params.repeat,
                0,
                0,
            )?;
            check(local)?;
            Ok((floor, hit, local))
        })();
        loaded.set_flag(CONFIG_F_XDP_TX, false)?;
        let (floor, hit, local) = restored?;
        row.restored_floor.push(f64::from(floor.duration_ns));
        row.restored_remote.push(f64::from(hit.duration_ns));
        row.restored_local.push(f64::from(local.duration_ns));

        let first = round * params.flows;
        let syns: Vec<Vec<u8>> = (first..first + params.flows)
            .map(|k| frame(k, tcp::SYN))
            .collect();
        let acks: Vec<Vec<u8>> = (first..first + params.flows)
            .map(|k| frame(k, tcp::ACK))
            .collect();
        let ctx1 = with_len(&syns[0]);
        let mut sum = [0u64; 3];
        for (syn, ack) in syns.iter().zip(&acks) {
            sum[0] += u64::from(sys::test_run(pass, syn, &ctx1, 1, 0, 0)?.duration_ns);
            let miss = sys::test_run(xdp, syn, &ctx1, 1, 0, 0)?;
            check(miss)?;
            sum[1] += u64::from(miss.duration_ns);
            let hit = sys::test_run(xdp, ack, &ctx1, 1, 0, 0)?;
            check(hit)?;
            sum[2] += u64::from(hit.duration_ns);
        }
        let n = params.flows.to_f64();
        row.floor1.push(sum[0].to_f64() / n);
        row.miss1.push(sum[1].to_f64() / n);
        row.hit1.push(sum[2].to_f64() / n);

        let ctx_v6 = with_len(&frame_v6(first, tcp::SYN));
        let mut sum_v6 = [0u64; 2];
        for k in first..first + params.flows {
            let miss = sys::test_run(xdp, &frame_v6(k, tcp::SYN), &ctx_v6, 1, 0, 0)?;
            check(miss)?;
            sum_v6[0] += u64::from(miss.duration_ns);
            let hit = sys::test_run(xdp, &frame_v6(k, tcp::ACK), &ctx_v6, 1, 0, 0)?;
            check(hit)?;
            sum_v6[1] += u64::from(hit.duration_ns);
        }
        row.miss6_1.push(sum_v6[0].to_f64() / n);
        row.hit6_1.push(sum_v6[1].to_f64() / n);
    }
    // The misses really created flows.
    let conntrack: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
        loaded
            .ebpf
            .map(map_names::CONNTRACK)
            .context("no conntrack map")?,
    )?;
    ensure!(
        conntrack.get(&forward_key(client(0)), 0).is_ok(),
        "a conntrack miss did not create its flow: the miss figures would be wrong"
    );
    let conntrack_v6: aya::maps::HashMap<_, CtKey6, CtEntry6> = aya::maps::HashMap::try_from(
        loaded
            .ebpf
            .map(map_names::CONNTRACK6)
            .context("no IPv6 conntrack map")?,
    )?;
    ensure!(
        conntrack_v6.get(&forward_key6(client6(0)), 0).is_ok()
            && conntrack_v6.get(&forward_key6(hot_client_v6), 0).is_ok(),
        "an IPv6 conntrack miss did not create its flow: the IPv6 figures would be wrong"
    );
    let pod_flow = conntrack
        .get(&forward_key(pod), 0)
        .context("the pod's SYN did not create its flow: the pod-side figures would be wrong")?;
    ensure!(
        pod_flow.flags & CT_F_POD != 0,
        "the pod's flow is not the pod-side path's (flags {:#x})",
        pod_flow.flags
    );
    Ok(row)
}

/// The remote path's flow: a client's connection to `REMOTE_NODE_PORT`, whose backend is on
/// another node, created by its SYN.
struct RemotePath {
    ack: Vec<u8>,
    backend_id: u32,
}

impl RemotePath {
    fn new(loaded: &mut Loaded, services: usize, backend_id: u32) -> Result<Self> {
        use std::os::fd::AsFd as _;
        let service_id = u32::try_from(services + 2).context("too many services")?;
        loaded.fill_remote_nodeport(service_id, backend_id)?;
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 3), 999);
        let frontend = SocketAddrV4::new(NODE_IP, REMOTE_NODE_PORT);
        let syn = packet::tcp(client, frontend, tcp::SYN).build();
        let ack = packet::tcp(client, frontend, tcp::ACK).build();
        let ctx = xdp_md(syn.len(), loaded.sl0);
        loaded.set_flag(CONFIG_F_XDP_TX, true)?;
        let xdp = loaded.xdp_fd()?.try_clone_to_owned()?;
        let created = sys::test_run(xdp.as_fd(), &syn, &ctx, 1, 0, 0);
        loaded.set_flag(CONFIG_F_XDP_TX, false)?;
        let created = created?;
        ensure!(
            created.retval == XDP_TX,
            "the remote NodePort's SYN returned {} instead of XDP_TX (3)",
            created.retval
        );
        loaded.zero_counters(service_id, backend_id)?;
        Ok(Self { ack, backend_id })
    }
}

/// The conntrack key of an IPv6 client's flow to the measured NodePort.
fn forward_key6(client: SocketAddrV6) -> CtKey6 {
    CtKey6 {
        saddr: ip6_to_net(*client.ip()),
        daddr: ip6_to_net(NODE_IP6),
        sport: client.port().to_be(),
        dport: NODE_PORT.to_be(),
        proto: fixture::IPPROTO_TCP,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

/// Moves the flow of the forward entry at `forward` and its reply entry from the LRU map to the
/// established map, as the datapath does at the flow's first established reply.
fn confirm(loaded: &mut Loaded, forward: &CtKey) -> Result<()> {
    let mut entries = Vec::new();
    {
        let new: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
            loaded
                .ebpf
                .map_mut(map_names::CONNTRACK)
                .context("no conntrack map")?,
        )?;
        let entry = new
            .get(forward, 0)
            .context("the SYN did not create its flow")?;
        let reply = proxy_common::flow::reply_key(forward, &entry);
        entries.push((*forward, entry));
        entries.push((reply, new.get(&reply, 0).context("no reply entry")?));
    }
    let mut established: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
        loaded
            .ebpf
            .map_mut(map_names::CONNTRACK_ESTABLISHED)
            .context("no established conntrack map")?,
    )?;
    for (key, entry) in &entries {
        established.insert(key, entry, 0)?;
    }
    let mut new: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(
        loaded
            .ebpf
            .map_mut(map_names::CONNTRACK)
            .context("no conntrack map")?,
    )?;
    for (key, _) in &entries {
        new.remove(key)?;
    }
    Ok(())
}

/// The conntrack key of a client's flow to the measured NodePort.
fn forward_key(client: SocketAddrV4) -> CtKey {
    CtKey {
        saddr: u32::from_ne_bytes(client.ip().octets()),
        daddr: u32::from_ne_bytes(NODE_IP.octets()),
        sport: client.port().to_be(),
        dport: NODE_PORT.to_be(),
        proto: fixture::IPPROTO_TCP,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

fn check_tc(run: sys::TestRun) -> Result<()> {
    ensure!(
        run.retval == TC_ACT_OK,
        "tc_from_pod returned {} instead of TC_ACT_OK (0)",
        run.retval
    );
    Ok(())
}

fn check(run: sys::TestRun) -> Result<()> {
    ensure!(
        run.retval == XDP_PASS,
        "xdp_ingress returned {} instead of XDP_PASS (2) for a NodePort with a local backend",
        run.retval
    );
    Ok(())
}
