//! Connection tracking: finding, refreshing, creating and retiring the forward and reply
//! entries of a translated flow.

use core::num::NonZeroU32;

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use proxy_common::{
    Address, BackendOf, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, CtEntryOf, CtKeyOf, IPPROTO_TCP,
    flow, stats::PassReason, tcp,
};

use crate::{
    counters,
    error::Error,
    family::{Family, Tier},
    kernel,
    maps::{CONFIG, Entry},
    nat::rewritten,
    packet::{Packet, Tuple},
};

/// `bpf_map_update_elem` with `BPF_NOEXIST` on a taken key.
const EEXIST: i32 = 17;

/// The entry for `key`, if any.
#[inline(always)]
pub fn lookup<F: Family>(key: &CtKeyOf<F::Addr>) -> Option<Entry<CtEntryOf<F::Addr>>> {
    lookup_tier::<F>(key).map(|(entry, _)| entry)
}

/// The entry for `key` and the map it is in: the established map first, so that a confirmed
/// flow's packets cost one lookup, then the LRU map of new flows.
#[inline(always)]
pub fn lookup_tier<F: Family>(key: &CtKeyOf<F::Addr>) -> Option<(Entry<CtEntryOf<F::Addr>>, Tier)> {
    if let Some(entry) = F::conntrack(Tier::Established, key) {
        return Some((entry, Tier::Established));
    }
    F::conntrack(Tier::New, key).map(|entry| (entry, Tier::New))
}

/// Deletes the entry under `key` from both maps; a missing one is fine.
#[inline(always)]
pub fn remove<F: Family>(key: &CtKeyOf<F::Addr>) {
    F::conntrack_remove(Tier::Established, key);
    F::conntrack_remove(Tier::New, key);
}

/// Records that `pkt` was seen on the flow of `entry`: time and TCP state. Concurrent packets
/// of the same flow may write these fields at once; the last write wins.
#[inline(always)]
pub fn touch<A: Address>(entry: Entry<CtEntryOf<A>>, pkt: &Packet<A>, now: u64) {
    entry.update(|entry| {
        entry.last_seen_ns = now;
        if pkt.tuple.proto == IPPROTO_TCP {
            entry.tcp_state = tcp::next_state(entry.tcp_state, pkt.tcp_flags);
        }
    });
}

/// [`touch`] for a reply packet that matched the reply entry `reply` (as it was before this
/// packet) at `key` in `tier`. A reply that confirms a new flow ([`flow::reply_confirms`])
/// moves the flow to the established map.
#[inline(always)]
pub fn touch_reply<F: Family>(
    entry: Entry<CtEntryOf<F::Addr>>,
    tier: Tier,
    key: &CtKeyOf<F::Addr>,
    reply: &CtEntryOf<F::Addr>,
    pkt: &Packet<F::Addr>,
    now: u64,
) {
    touch(entry, pkt, now);
    if tier == Tier::New {
        let state = tcp::next_state(reply.tcp_state, pkt.tcp_flags);
        if flow::reply_confirms(pkt.tuple.proto, state, pkt.tcp_flags) {
            confirm::<F>(key);
        }
    }
}

/// Moves the flow of the reply entry at `reply_key` from the LRU map to the established map:
/// both entries are written there first, then deleted from the LRU, so a concurrent reader
/// (which looks in the established map first) always finds them. When the established map
/// is full the flow stays in the LRU (it works until evicted) and is counted
/// (`ct_established_full`). A subprogram of its own: its copies of both entries do not fit in
/// the frame of the packet path.
#[inline(never)]
fn confirm<F: Family>(reply_key: &CtKeyOf<F::Addr>) {
    let Some(reply) = F::conntrack(Tier::New, reply_key).map(Entry::get) else {
        return;
    };
    let forward_key = flow::forward_key(reply_key, &reply);
    // Without its forward entry (evicted) the flow is not worth keeping; one for another
    // backend is a later flow of the client's tuple.
    let Some(forward) = F::conntrack(Tier::New, &forward_key)
        .map(Entry::get)
        .filter(|forward| forward.backend_id == reply.backend_id)
    else {
        return;
    };
    let any = u64::from(BPF_ANY);
    if F::conntrack_insert(Tier::Established, reply_key, &reply, any).is_err() {
        counters::pass(PassReason::CtEstablishedFull);
        return;
    }
    if F::conntrack_insert(Tier::Established, &forward_key, &forward, any).is_err() {
        F::conntrack_remove(Tier::Established, reply_key);
        counters::pass(PassReason::CtEstablishedFull);
        return;
    }
    F::conntrack_remove(Tier::New, &forward_key);
    F::conntrack_remove(Tier::New, reply_key);
}

/// Deletes a forward entry and the reply entry that belongs to it, from whichever map holds
/// them.
#[inline(always)]
pub fn remove_flow<F: Family>(forward: &CtKeyOf<F::Addr>, entry: &CtEntryOf<F::Addr>) {
    // Missing entries (already evicted) are fine: the goal is that neither exists.
    remove::<F>(&flow::reply_key(forward, entry));
    remove::<F>(forward);
}

/// Whether `pkt`, which matched the reply entry `reply` at `key`, belongs to that entry's
/// flow. A reply entry keys on the backend and client tuple alone, which a connection that
/// bypasses the translation (the client reusing its port to reach the backend directly) can
/// share. Only a SYN can start such a connection, so other packets are taken at once; for a
/// SYN or SYN-ACK the flow's states decide ([`tcp::syn_answers_flow`]). One that does not
/// belong deletes the flow's stale entries and must pass untranslated.
#[inline(always)]
pub fn reply_belongs<F: Family>(
    pkt: &Packet<F::Addr>,
    key: &CtKeyOf<F::Addr>,
    reply: &CtEntryOf<F::Addr>,
) -> bool {
    if pkt.tuple.proto != IPPROTO_TCP || pkt.tcp_flags & tcp::SYN == 0 {
        return true;
    }
    let forward_key = flow::forward_key(key, reply);
    let forward = lookup::<F>(&forward_key)
        .map(Entry::get)
        // A forward entry for another backend is a later flow of the tuple: not this one's.
        .filter(|forward| forward.backend_id == reply.backend_id);
    if tcp::syn_answers_flow(forward.map(|f| f.tcp_state), reply.tcp_state) {
        return true;
    }
    if forward.is_some() {
        remove::<F>(&forward_key);
    }
    remove::<F>(key);
    false
}

/// A new flow translated by destination NAT only: to a backend on this node (`CT_F_LOCAL`),
/// or from a pod (`CT_F_POD`, whose replies come back to it wherever the backend is). Returns
/// the translated tuple.
#[inline(always)]
pub fn create_dnat<F: Family>(
    pkt: &Packet<F::Addr>,
    backend_id: u32,
    backend: &BackendOf<F::Addr>,
    service_id: u32,
    flags: u8,
    now: u64,
) -> Result<Tuple<F::Addr>, Error> {
    let client = pkt.tuple;
    let base = new_entry(pkt, backend_id, service_id, flags, now);
    let forward = CtEntryOf {
        new_daddr: backend.addr,
        new_dport: backend.port,
        ..base
    };
    let reply_key = CtKeyOf {
        saddr: backend.addr,
        daddr: client.saddr,
        sport: backend.port,
        dport: client.sport,
        proto: client.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let reply = CtEntryOf {
        new_saddr: client.daddr,
        new_sport: client.dport,
        ..base
    };
    // A confirmed flow's reply entry on the same backend and client tuple (a finished flow
    // whose client reused its port towards another frontend) would shadow this one's, the
    // established map being read first: the new flow's wins, as it would over an LRU entry.
    F::conntrack_remove(Tier::Established, &reply_key);
    insert_pair::<F>(
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
///
/// The port: the first free one from a random point of the range on, wrapping, so a flow
/// fails only when every port of the range is taken towards this backend (netfilter's
/// masquerade gives the same promise). Random tries alone failed while ports were free: with
/// two thirds taken, 8 tries all miss 4 % of the time.
#[inline(always)]
pub fn create_snat<F: Family>(
    pkt: &Packet<F::Addr>,
    backend_id: u32,
    backend: &BackendOf<F::Addr>,
    service_id: u32,
    now: u64,
) -> Result<Tuple<F::Addr>, Error> {
    // The port range is shared by both families (CONFIG_V1), the address is the family's.
    let config = CONFIG.get(0).ok_or(Error::NoSnatAddress)?;
    let snat_addr = F::snat_addr();
    if snat_addr.is_unset() {
        return Err(Error::NoSnatAddress);
    }
    let (port_min, port_max) = (config.snat_port_min, config.snat_port_max);
    if port_min == 0 || port_max < port_min {
        return Err(Error::NoSnatPort);
    }
    let room = F::snat_room().ok_or(Error::NoSnatPort)?;
    let client = pkt.tuple;
    room.update(|room| {
        let base = new_entry(pkt, backend_id, service_id, CT_F_SNAT, now);
        room.forward_key = client.ct_key(CT_DIR_FORWARD);
        room.forward = CtEntryOf {
            new_saddr: snat_addr,
            new_daddr: backend.addr,
            new_dport: backend.port,
            ..base
        };
        room.reply_key = CtKeyOf {
            saddr: backend.addr,
            daddr: snat_addr,
            sport: backend.port,
            dport: 0,
            proto: client.proto,
            dir: CT_DIR_REPLY,
            _pad: 0,
        };
        // Replies come back from the backend to the SNAT address; they go out as the frontend.
        room.reply = CtEntryOf {
            new_saddr: client.daddr,
            new_sport: client.dport,
            new_daddr: client.saddr,
            new_dport: client.sport,
            ..base
        };
    });
    let span = NonZeroU32::MIN.saturating_add(u32::from(port_max - port_min));
    let mut search = PortSearch {
        first: u32::from(port_min),
        span,
        start: kernel::random() % span,
        outcome: Err(Error::NoSnatPort),
    };
    kernel::for_each(span.get(), try_snat_port::<F>, &mut search);
    search.outcome?;
    Ok(rewritten(&client, &room.get().forward))
}

/// Where [`create_snat`]'s search is and what came of it.
struct PortSearch {
    first: u32,
    /// Not zero, so `%` needs no check (the verifier refuses a panic's call).
    span: NonZeroU32,
    /// The offset in the range the search starts at (random).
    start: u32,
    /// `Ok` once a port is claimed (the room's forward entry holds it), `NoSnatPort` while none
    /// is.
    outcome: Result<(), Error>,
}

/// One step of [`create_snat`]'s search: offers the `step`th port from the start, and stops the
/// loop once one is claimed or a write failed for another reason.
extern "C" fn try_snat_port<F: Family>(step: u64, search: &mut PortSearch) -> kernel::Step {
    let Some(room) = F::snat_room() else {
        search.outcome = Err(Error::NoSnatPort);
        return kernel::Step::Stop;
    };
    // `step` is below the span, so the offset fits in u32 and the port in u16.
    let port = (search.first + (search.start + step as u32) % search.span) as u16;
    // None while the port is taken.
    let mut tried = None;
    room.update(|room| {
        room.reply_key.dport = port.to_be();
        room.forward.new_sport = port.to_be();
        // A port an established flow holds is taken (that flow's entries left the LRU).
        if F::conntrack(Tier::Established, &room.reply_key).is_some() {
            return;
        }
        // BPF_NOEXIST on the reply entry claims the port: two flows never share a reply tuple.
        tried = match insert_pair::<F>(
            &room.forward_key,
            &room.forward,
            &room.reply_key,
            &room.reply,
            u64::from(BPF_NOEXIST),
        ) {
            Err(Error::NoSnatPort) => None,
            outcome => Some(outcome),
        };
    });
    match tried {
        None => kernel::Step::Next,
        Some(outcome) => {
            search.outcome = outcome;
            kernel::Step::Stop
        }
    }
}

/// Writes the reply entry (with `reply_flags`: `BPF_NOEXIST` to claim its tuple, a taken one
/// is `NoSnatPort`) and then the forward entry into the LRU map of new flows; undoes the
/// reply entry when the forward one cannot be written.
#[inline(always)]
fn insert_pair<F: Family>(
    forward_key: &CtKeyOf<F::Addr>,
    forward: &CtEntryOf<F::Addr>,
    reply_key: &CtKeyOf<F::Addr>,
    reply: &CtEntryOf<F::Addr>,
    reply_flags: u64,
) -> Result<(), Error> {
    match F::conntrack_insert(Tier::New, reply_key, reply, reply_flags) {
        Ok(()) => {}
        Err(err) if err == -EEXIST => return Err(Error::NoSnatPort),
        Err(_) => return Err(Error::ConntrackUpdate),
    }
    if F::conntrack_insert(Tier::New, forward_key, forward, u64::from(BPF_ANY)).is_err() {
        F::conntrack_remove(Tier::New, reply_key);
        return Err(Error::ConntrackUpdate);
    }
    Ok(())
}

#[inline(always)]
fn new_entry<A: Address>(
    pkt: &Packet<A>,
    backend_id: u32,
    service_id: u32,
    flags: u8,
    now: u64,
) -> CtEntryOf<A> {
    let tcp_state = if pkt.tuple.proto == IPPROTO_TCP {
        tcp::next_state(0, pkt.tcp_flags)
    } else {
        0
    };
    CtEntryOf {
        last_seen_ns: now,
        backend_id,
        service_id,
        flags,
        tcp_state,
        ..CtEntryOf::default()
    }
}
