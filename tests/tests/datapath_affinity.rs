//! Session affinity on the packet path, through `BPF_PROG_TEST_RUN` of `xdp_ingress`: a hit
//! sends new flows to the remembered backend and refreshes it, a miss remembers the random
//! choice, an expired entry or one whose backend left the service is not used, and a service
//! without affinity neither uses nor writes entries. Needs root.
//!
//! Entries are written straight into `AFFINITY_V1`, with timestamps on `CLOCK_MONOTONIC` (the
//! clock of `bpf_ktime_get_ns`), so expiry needs no waiting.

use std::{collections::BTreeSet, net::SocketAddrV4};

use aya::maps::HashMap;
use proxy_common::{
    AFFINITY_CLIENT_IP, AffinityKey, AffinityMatchKey, AffinityValue, BACKEND_F_LOCAL, IPPROTO_TCP,
    ServiceKey, ServiceValue, map_names, tcp,
};
use proxy_tests::{
    datapath::{CLIENT_IP, Case, Datapath, Expect, XDP_PASS, be_addr, sock},
    packet,
};

const CLUSTER_IP: [u8; 4] = [198, 19, 0, 10];
const SERVICE_ID: u32 = 100;
const TIMEOUT_SECS: u32 = 60;
const NANOS_PER_SEC: u64 = 1_000_000_000;

const A: (u32, [u8; 4], u16) = (1, [198, 19, 100, 1], 8080);
const B: (u32, [u8; 4], u16) = (2, [198, 19, 100, 2], 8080);
/// A backend of another service: in `BACKEND_V1`, but never a slot of `SERVICE_ID`.
const OTHER: (u32, [u8; 4], u16) = (3, [198, 19, 100, 3], 8080);

/// New flows per check: a wrong backend is chosen at random with probability 1/2 each time.
const FLOWS: u16 = 20;

fn frontend() -> SocketAddrV4 {
    sock(CLUSTER_IP, 80)
}

fn addr((_, ip, port): (u32, [u8; 4], u16)) -> SocketAddrV4 {
    sock(ip, port)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    // CLOCK_MONOTONIC is never negative.
    ts.tv_sec.cast_unsigned() * NANOS_PER_SEC + ts.tv_nsec.cast_unsigned()
}

fn client_key() -> AffinityKey {
    AffinityKey {
        client: u64::from(u32::from_ne_bytes(CLIENT_IP)),
        service_id: SERVICE_ID,
        client_kind: AFFINITY_CLIENT_IP,
        _pad: [0; 3],
    }
}

/// The fixture with one TCP service (backends A and B) and OTHER as a stray backend; the
/// service has affinity with `timeout` seconds (0: off), and the daemon's match entries.
fn datapath(timeout: u32) -> Datapath {
    let mut dp = Datapath::new(0);
    for backend in [A, B, OTHER] {
        dp.add_backend(backend.0, addr(backend), BACKEND_F_LOCAL);
    }
    program_service(&mut dp, timeout, &[A.0, B.0]);
    dp
}

/// Writes the service as the daemon does: match entries of joining backends and the slots,
/// slot 0 with the timeout, and drops the match entries of backends that left.
fn program_service(dp: &mut Datapath, timeout: u32, backend_ids: &[u32]) {
    let mut members: HashMap<_, AffinityMatchKey, u32> = dp.hash_map(map_names::AFFINITY_MATCH);
    let stale: Vec<AffinityMatchKey> = members
        .keys()
        .map(|key| key.expect("read AFF_MATCH_V1"))
        .filter(|key| !backend_ids.contains(&key.backend_id))
        .collect();
    for key in stale {
        members.remove(&key).expect("delete from AFF_MATCH_V1");
    }
    for &backend_id in backend_ids {
        let key = AffinityMatchKey {
            service_id: SERVICE_ID,
            backend_id,
        };
        members.insert(&key, &0, 0).expect("write AFF_MATCH_V1");
    }
    dp.add_service(SERVICE_ID, frontend(), IPPROTO_TCP, 0, backend_ids);
    let mut services: HashMap<_, ServiceKey, ServiceValue> = dp.hash_map(map_names::SERVICES);
    let head_key = ServiceKey {
        addr: be_addr(frontend()),
        port: 80u16.to_be(),
        slot: 0,
        proto: IPPROTO_TCP,
        scope: 0,
        _pad: 0,
    };
    let mut head = services.get(&head_key, 0).expect("slot 0 written");
    head.affinity_timeout = timeout;
    services.insert(&head_key, &head, 0).expect("write SVC_V1");
}

fn remember(dp: &mut Datapath, backend_id: u32, last_used_ns: u64) {
    let mut affinity: HashMap<_, AffinityKey, AffinityValue> = dp.hash_map(map_names::AFFINITY);
    let value = AffinityValue {
        last_used_ns,
        backend_id,
        _pad: 0,
    };
    affinity
        .insert(&client_key(), &value, 0)
        .expect("write AFFINITY_V1");
}

fn remembered(dp: &mut Datapath) -> Option<AffinityValue> {
    let affinity: HashMap<_, AffinityKey, AffinityValue> = dp.hash_map(map_names::AFFINITY);
    affinity.get(&client_key(), 0).ok()
}

fn affinity_len(dp: &mut Datapath) -> usize {
    let affinity: HashMap<_, AffinityKey, AffinityValue> = dp.hash_map(map_names::AFFINITY);
    affinity.keys().count()
}

/// A new TCP flow (SYN) from the client's `port`; returns the backend it was sent to.
fn new_flow(dp: &mut Datapath, port: u16) -> SocketAddrV4 {
    let client = sock(CLIENT_IP, port);
    let syn = packet::tcp(client, frontend(), tcp::SYN);
    let run = dp.run(proxy_tests::datapath::Program::Xdp, &syn.build());
    assert_eq!(
        run.verdict, XDP_PASS,
        "a local backend: passed to the stack"
    );
    let backend = packet::parse(&run.frame)
        .expect("a valid translated frame")
        .destination();
    assert_eq!(
        run.frame,
        syn.addresses(client, backend).build(),
        "only the destination changes"
    );
    backend
}

/// A new flow that must reach `backend`, checked byte for byte.
fn new_flow_to(dp: &mut Datapath, port: u16, backend: SocketAddrV4, description: &'static str) {
    let client = sock(CLIENT_IP, port);
    let syn = packet::tcp(client, frontend(), tcp::SYN);
    dp.check(&Case::xdp(
        description,
        syn.build(),
        XDP_PASS,
        Expect::Frame(syn.clone().addresses(client, backend).build()),
    ));
}

#[test]
fn a_hit_sends_every_new_flow_to_the_remembered_backend_and_refreshes_it() {
    let mut dp = datapath(TIMEOUT_SECS);
    let written = monotonic_ns() - 30 * NANOS_PER_SEC;
    remember(&mut dp, B.0, written);
    let before = monotonic_ns();
    for port in 40000..40000 + FLOWS {
        new_flow_to(&mut dp, port, addr(B), "hit: the remembered backend");
    }
    let entry = remembered(&mut dp).expect("the entry stays");
    assert_eq!(entry.backend_id, B.0);
    assert!(
        entry.last_used_ns >= before,
        "a hit refreshes the entry: {} < {before}",
        entry.last_used_ns
    );
    assert_eq!(affinity_len(&mut dp), 1, "one client, one entry");
}

#[test]
fn a_miss_remembers_the_random_choice() {
    let mut dp = datapath(TIMEOUT_SECS);
    assert_eq!(remembered(&mut dp), None);
    let before = monotonic_ns();
    let chosen = new_flow(&mut dp, 40000);
    let entry = remembered(&mut dp).expect("a miss writes an entry");
    let chosen_id = if chosen == addr(A) { A.0 } else { B.0 };
    assert!(
        [addr(A), addr(B)].contains(&chosen),
        "{chosen} serves the service"
    );
    assert_eq!(entry.backend_id, chosen_id);
    assert!(entry.last_used_ns >= before && entry.last_used_ns <= monotonic_ns());
    for port in 40001..40001 + FLOWS {
        new_flow_to(
            &mut dp,
            port,
            chosen,
            "after a miss: the first choice sticks",
        );
    }
}

#[test]
fn an_expired_entry_is_not_used_and_is_replaced() {
    let mut dp = datapath(TIMEOUT_SECS);
    let mut seen = BTreeSet::new();
    for port in 40000..40000 + FLOWS {
        let expired = monotonic_ns() - u64::from(TIMEOUT_SECS + 1) * NANOS_PER_SEC;
        remember(&mut dp, B.0, expired);
        let before = monotonic_ns();
        let chosen = new_flow(&mut dp, port);
        seen.insert(chosen);
        let entry = remembered(&mut dp).expect("replaced, not deleted");
        assert!(entry.last_used_ns >= before, "the new choice is fresh");
        let chosen_id = if chosen == addr(A) { A.0 } else { B.0 };
        assert_eq!(entry.backend_id, chosen_id, "the new choice is remembered");
    }
    assert_eq!(
        seen,
        BTreeSet::from([addr(A), addr(B)]),
        "expired entries do not pin: {FLOWS} flows reached both backends"
    );
    // Just inside the timeout it still holds.
    let fresh = monotonic_ns() - u64::from(TIMEOUT_SECS - 2) * NANOS_PER_SEC;
    remember(&mut dp, B.0, fresh);
    for port in 41000..41000 + FLOWS {
        new_flow_to(
            &mut dp,
            port,
            addr(B),
            "an entry younger than the timeout holds",
        );
    }
}

#[test]
fn an_entry_whose_backend_left_the_service_is_not_used() {
    let mut dp = datapath(TIMEOUT_SECS);
    remember(&mut dp, B.0, monotonic_ns());
    new_flow_to(&mut dp, 40000, addr(B), "B still serves: the entry holds");

    // B leaves the service (not ready, or deleted) but stays in BACKEND_V1 for another one.
    program_service(&mut dp, TIMEOUT_SECS, &[A.0]);
    for port in 40001..40001 + FLOWS {
        new_flow_to(&mut dp, port, addr(A), "B left: the client moves to A");
    }
    assert_eq!(remembered(&mut dp).map(|e| e.backend_id), Some(A.0));

    // Entries pointing at a backend of another service, or at no backend at all.
    for stray in [OTHER.0, 99] {
        remember(&mut dp, stray, monotonic_ns());
        new_flow_to(
            &mut dp,
            41000 + u16::try_from(stray).expect("a small id"),
            addr(A),
            "not a slot: not used",
        );
        assert_eq!(remembered(&mut dp).map(|e| e.backend_id), Some(A.0));
    }
}

#[test]
fn without_affinity_entries_are_neither_used_nor_written() {
    let mut dp = datapath(0);
    let mut seen = BTreeSet::new();
    for port in 40000..40000 + FLOWS {
        seen.insert(new_flow(&mut dp, port));
    }
    assert_eq!(seen, BTreeSet::from([addr(A), addr(B)]), "random spread");
    assert_eq!(
        affinity_len(&mut dp),
        0,
        "no entry written with affinity off"
    );

    remember(&mut dp, B.0, monotonic_ns());
    let mut seen = BTreeSet::new();
    for port in 41000..41000 + FLOWS {
        seen.insert(new_flow(&mut dp, port));
    }
    assert_eq!(
        seen,
        BTreeSet::from([addr(A), addr(B)]),
        "a leftover entry does not pin a service without affinity"
    );
}
