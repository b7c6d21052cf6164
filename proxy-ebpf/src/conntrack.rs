//! Connection tracking: finding, refreshing, creating and retiring the forward and reply
//! entries of a translated flow.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use proxy_common::{
    Backend, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_LOCAL, CT_F_SNAT, CtEntry, CtKey, IPPROTO_TCP,
    flow, tcp,
};

use crate::{
    error::Error,
    kernel,
    maps::{self, CONFIG, CONNTRACK, Entry},
    nat::rewritten,
    packet::{Packet, Tuple},
};

/// How many random SNAT ports a new flow tries before it is dropped.
const SNAT_PORT_TRIES: u32 = 8;
/// `bpf_map_update_elem` with `BPF_NOEXIST` on a taken key.
const EEXIST: i32 = 17;

/// The entry for `key`, if any.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<Entry<CtEntry>> {
    maps::conntrack(key)
}

/// Records that `pkt` was seen on the flow of `entry`: time and TCP state. Concurrent packets
/// of the same flow may write these fields at once; the last write wins.
#[inline(always)]
pub fn touch(entry: Entry<CtEntry>, pkt: &Packet, now: u64) {
    entry.update(|entry| {
        entry.last_seen_ns = now;
        if pkt.tuple.proto == IPPROTO_TCP {
            entry.tcp_state = tcp::next_state(entry.tcp_state, pkt.tcp_flags);
        }
    });
}

/// Deletes a forward entry and the reply entry that belongs to it.
#[inline(always)]
pub fn remove_flow(forward: &CtKey, entry: &CtEntry) {
    // Missing entries (already evicted) are fine: the goal is that neither exists.
    let _ = CONNTRACK.remove(&flow::reply_key(forward, entry));
    let _ = CONNTRACK.remove(forward);
}

/// Whether `pkt`, which matched the reply entry `reply` at `key`, belongs to that entry's
/// flow. A reply entry keys on the backend and client tuple alone, which a connection that
/// bypasses the translation (the client reusing its port to reach the backend directly) can
/// share. Only a SYN can start such a connection, so other packets are taken at once; for a
/// SYN or SYN-ACK the flow's states decide ([`tcp::syn_answers_flow`]). One that does not
/// belong deletes the flow's stale entries and must pass untranslated.
#[inline(always)]
pub fn reply_belongs(pkt: &Packet, key: &CtKey, reply: &CtEntry) -> bool {
    if pkt.tuple.proto != IPPROTO_TCP || pkt.tcp_flags & tcp::SYN == 0 {
        return true;
    }
    let forward_key = flow::forward_key(key, reply);
    let forward = lookup(&forward_key)
        .map(Entry::get)
        // A forward entry for another backend is a later flow of the tuple: not this one's.
        .filter(|forward| forward.backend_id == reply.backend_id);
    if tcp::syn_answers_flow(forward.map(|f| f.tcp_state), reply.tcp_state) {
        return true;
    }
    if forward.is_some() {
        let _ = CONNTRACK.remove(&forward_key);
    }
    let _ = CONNTRACK.remove(key);
    false
}

/// A new flow to a backend on this node: destination NAT only. Returns the translated tuple.
#[inline(always)]
pub fn create_local(
    pkt: &Packet,
    backend_id: u32,
    backend: &Backend,
    service_id: u32,
    now: u64,
) -> Result<Tuple, Error> {
    let client = pkt.tuple;
    let base = new_entry(pkt, backend_id, service_id, CT_F_LOCAL, now);
    let forward = CtEntry {
        new_daddr: backend.addr,
        new_dport: backend.port,
        ..base
    };
    let reply_key = CtKey {
        saddr: backend.addr,
        daddr: client.saddr,
        sport: backend.port,
        dport: client.sport,
        proto: client.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let reply = CtEntry {
        new_saddr: client.daddr,
        new_sport: client.dport,
        ..base
    };
    insert_pair(
        &client.ct_key(CT_DIR_FORWARD),
        &forward,
        &reply_key,
        &reply,
        u64::from(BPF_ANY),
    )?;
    Ok(rewritten(&client, &forward))
}

/// A new flow to a backend on another node: destination NAT to the backend and source NAT to
/// the configured node address and a free port. Returns the translated tuple.
#[inline(always)]
pub fn create_snat(
    pkt: &Packet,
    backend_id: u32,
    backend: &Backend,
    service_id: u32,
    now: u64,
) -> Result<Tuple, Error> {
    let config = CONFIG.get(0).ok_or(Error::NoSnatAddress)?;
    let snat_addr = config.snat_addr;
    if snat_addr == 0 {
        return Err(Error::NoSnatAddress);
    }
    let (port_min, port_max) = (config.snat_port_min, config.snat_port_max);
    if port_min == 0 || port_max < port_min {
        return Err(Error::NoSnatPort);
    }
    let span = u32::from(port_max - port_min) + 1;

    let client = pkt.tuple;
    let base = new_entry(pkt, backend_id, service_id, CT_F_SNAT, now);
    // Replies come back from the backend to the SNAT address; they go out as the frontend.
    let reply = CtEntry {
        new_saddr: client.daddr,
        new_sport: client.dport,
        new_daddr: client.saddr,
        new_dport: client.sport,
        ..base
    };
    for _ in 0..SNAT_PORT_TRIES {
        let random = kernel::random();
        let snat_port = (port_min + (random % span) as u16).to_be();
        let reply_key = CtKey {
            saddr: backend.addr,
            daddr: snat_addr,
            sport: backend.port,
            dport: snat_port,
            proto: client.proto,
            dir: CT_DIR_REPLY,
            _pad: 0,
        };
        let forward = CtEntry {
            new_saddr: snat_addr,
            new_sport: snat_port,
            new_daddr: backend.addr,
            new_dport: backend.port,
            ..base
        };
        // BPF_NOEXIST on the reply entry claims the port: two flows never share a reply tuple.
        match insert_pair(
            &client.ct_key(CT_DIR_FORWARD),
            &forward,
            &reply_key,
            &reply,
            u64::from(BPF_NOEXIST),
        ) {
            Ok(()) => return Ok(rewritten(&client, &forward)),
            Err(Error::NoSnatPort) => {}
            Err(err) => return Err(err),
        }
    }
    Err(Error::NoSnatPort)
}

/// Writes the reply entry (with `reply_flags`: `BPF_NOEXIST` to claim its tuple, a taken one
/// is `NoSnatPort`) and then the forward entry; undoes the reply entry when the forward one
/// cannot be written.
#[inline(always)]
fn insert_pair(
    forward_key: &CtKey,
    forward: &CtEntry,
    reply_key: &CtKey,
    reply: &CtEntry,
    reply_flags: u64,
) -> Result<(), Error> {
    match CONNTRACK.insert(reply_key, reply, reply_flags) {
        Ok(()) => {}
        Err(err) if err == -EEXIST => return Err(Error::NoSnatPort),
        Err(_) => return Err(Error::ConntrackUpdate),
    }
    if CONNTRACK
        .insert(forward_key, forward, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = CONNTRACK.remove(reply_key);
        return Err(Error::ConntrackUpdate);
    }
    Ok(())
}

#[inline(always)]
fn new_entry(pkt: &Packet, backend_id: u32, service_id: u32, flags: u8, now: u64) -> CtEntry {
    let tcp_state = if pkt.tuple.proto == IPPROTO_TCP {
        tcp::next_state(0, pkt.tcp_flags)
    } else {
        0
    };
    CtEntry {
        last_seen_ns: now,
        backend_id,
        service_id,
        flags,
        tcp_state,
        ..CtEntry::default()
    }
}
