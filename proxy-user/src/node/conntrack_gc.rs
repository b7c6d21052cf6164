//! Background removal of flows from conntrack (`CT_V1`, `CT6_V1` of new flows and
//! `CT_EST_V1`, `CT6_EST_V1` of confirmed ones): finished and idle ones, so the tables hold
//! live flows and `sluice conntrack` shows them instead of waiting for LRU eviction (the
//! established maps evict nothing: this is what empties them), and on request the UDP flows
//! of backends that stopped serving their frontend.
//!
//! A flow is two entries (forward and reply, see docs/packet-path.md); both go together. Each
//! family's two maps are read as one table ([`merged`]): a flow's entries are in one of them,
//! or for a moment in both, and a doomed key is removed from both. The
//! timeouts follow what kube-proxy sets for netfilter: established TCP 24 h, closing TCP
//! (FIN or RST seen) 10 s, a SYN without answer 60 s, UDP 120 s.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use proxy_common::{
    CT_DIR_FORWARD, CT_DIR_REPLY, CtEntryOf, CtKeyOf, IPPROTO_TCP, IPPROTO_UDP, TCP_STATE_CLOSING,
    TCP_STATE_SYN,
    address::Address,
    flow::{forward_key, reply_key},
};
use tracing::{debug, info, warn};

use crate::{
    datapath::{Maps, clock::monotonic_ns},
    node::metrics::Metrics,
    reconcile::RetiredUdpSlot,
};

/// How long a flow may stay idle, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_syn: Duration,
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_hours(24),
            tcp_closing: Duration::from_secs(10),
            tcp_syn: Duration::from_secs(60),
            udp: Duration::from_secs(120),
        }
    }
}

impl CtTimeouts {
    /// How long a flow in `tcp_state` (`TCP_STATE_*`, ignored for UDP) may stay idle.
    pub fn for_flow(&self, proto: u8, tcp_state: u8) -> Duration {
        if proto != IPPROTO_TCP {
            return self.udp;
        }
        match tcp_state {
            TCP_STATE_CLOSING => self.tcp_closing,
            TCP_STATE_SYN => self.tcp_syn,
            _ => self.tcp_established,
        }
    }
}

/// The keys of one flow's entries, forward and reply, which go together; both whether or not
/// the pass read them. A pass reads a map while packets change it, and an iteration can miss
/// an entry written meanwhile (an update goes to the head of its bucket, behind the
/// iterator): a confirmation during a pass showed a reply without its forward entry. The
/// re-read before removal ([`unchanged`]) then finds the missed entry and keeps the flow,
/// instead of deleting the reply of a live flow (whose next packets from the backend leave
/// untranslated).
pub type FlowKeys<A> = [CtKeyOf<A>; 2];

/// Which flows to delete: flows idle past their timeout (the later packet of either
/// direction counts, the closing state of either), flows whose backend is gone, and reply
/// entries whose forward entry the LRU already evicted.
pub fn expired_keys<A: Address + Hash>(
    entries: &HashMap<CtKeyOf<A>, CtEntryOf<A>, impl BuildHasher>,
    backend_exists: impl Fn(u32) -> bool,
    timeouts: &CtTimeouts,
    now_ns: u64,
) -> Vec<FlowKeys<A>> {
    let mut doomed = Vec::new();
    for (key, entry) in entries {
        if key.dir == CT_DIR_REPLY {
            let forward = forward_key(key, entry);
            if !entries.contains_key(&forward) {
                doomed.push([forward, *key]);
            }
            continue;
        }
        let reply_key = reply_key(key, entry);
        let reply = entries.get(&reply_key);
        let last_seen = reply.map_or(entry.last_seen_ns, |r| {
            r.last_seen_ns.max(entry.last_seen_ns)
        });
        let closing = entry.tcp_state == TCP_STATE_CLOSING
            || reply.is_some_and(|r| r.tcp_state == TCP_STATE_CLOSING);
        let state = if closing {
            TCP_STATE_CLOSING
        } else {
            entry.tcp_state
        };
        let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen));
        if idle > timeouts.for_flow(key.proto, state) || !backend_exists(entry.backend_id) {
            doomed.push([*key, reply_key]);
        }
    }
    doomed
}

/// One family's conntrack entries as one table: those of the LRU map of new flows, then
/// those of the established map, which win where a key is in both (a flow being confirmed is
/// written to the established map before it leaves the LRU; read in this order, its entries
/// are seen in one map or the other).
pub fn merged<K: Eq + Hash, V>(
    new: impl IntoIterator<Item = (K, V)>,
    established: impl IntoIterator<Item = (K, V)>,
) -> HashMap<K, V> {
    let mut entries: HashMap<K, V> = new.into_iter().collect();
    entries.extend(established);
    entries
}

/// One pass over the pinned conntrack maps of both families; returns how many entries it
/// removed.
pub fn collect(maps: &mut Maps, timeouts: &CtTimeouts) -> Result<usize> {
    let now = monotonic_ns();
    let backends: HashSet<u32> = maps.backends.keys().filter_map(Result::ok).collect();
    let backends6: HashSet<u32> = maps.backends6.keys().filter_map(Result::ok).collect();
    let removed = collect_in(
        &mut maps.conntrack,
        &mut maps.conntrack_established,
        |entries| expired_keys(entries, |id| backends.contains(&id), timeouts, now),
        Touched::Keep,
    );
    let removed6 = collect_in(
        &mut maps.conntrack6,
        &mut maps.conntrack_established6,
        |entries| expired_keys(entries, |id| backends6.contains(&id), timeouts, now),
        Touched::Keep,
    );
    Ok(removed + removed6)
}

/// The UDP flows whose frontend no longer sends new flows to their backend: the forward
/// entries of UDP recorded for one of `retired` (by the ids they carry), with their replies.
/// kube-proxy deletes the netfilter conntrack entries of such flows, so that the next
/// datagram is balanced again instead of going to a pod that is not ready or is terminating.
pub fn retired_udp_keys<A: Address + Hash>(
    entries: &HashMap<CtKeyOf<A>, CtEntryOf<A>, impl BuildHasher>,
    retired: &HashSet<RetiredUdpSlot, impl BuildHasher>,
) -> Vec<FlowKeys<A>> {
    let mut doomed = Vec::new();
    for (key, entry) in entries {
        if key.dir == CT_DIR_FORWARD
            && key.proto == IPPROTO_UDP
            && retired.contains(&(entry.service_id, entry.backend_id))
        {
            doomed.push([*key, reply_key(key, entry)]);
        }
    }
    doomed
}

/// Removes the UDP flows of `retired` pairs from both pinned conntrack maps; returns how
/// many entries it removed from each (IPv4, IPv6).
pub fn remove_retired_udp_flows(
    maps: &mut Maps,
    retired: &HashSet<RetiredUdpSlot, impl BuildHasher>,
) -> (usize, usize) {
    (
        collect_in(
            &mut maps.conntrack,
            &mut maps.conntrack_established,
            |entries| retired_udp_keys(entries, retired),
            Touched::Remove,
        ),
        collect_in(
            &mut maps.conntrack6,
            &mut maps.conntrack_established6,
            |entries| retired_udp_keys(entries, retired),
            Touched::Remove,
        ),
    )
}

/// Hands retired UDP slots to a task that removes their flows off the sync loop (a pass reads
/// the whole conntrack tables), on its own handles to the pinned maps. Slots handed over while
/// a pass runs are taken together by the next one.
#[derive(Clone)]
pub struct RetiredUdpFlows {
    queue: tokio::sync::mpsc::UnboundedSender<Vec<RetiredUdpSlot>>,
}

impl RetiredUdpFlows {
    /// Starts the task; each pass is counted in kube-proxy's conntrack reconciler metrics.
    pub fn spawn(pin_dir: PathBuf, metrics: Metrics) -> Self {
        let (queue, mut slots) = tokio::sync::mpsc::unbounded_channel::<Vec<RetiredUdpSlot>>();
        tokio::spawn(async move {
            while let Some(first) = slots.recv().await {
                let mut retired: HashSet<RetiredUdpSlot> = first.into_iter().collect();
                while let Ok(more) = slots.try_recv() {
                    retired.extend(more);
                }
                let dir = pin_dir.clone();
                let started = std::time::Instant::now();
                let pass = tokio::task::spawn_blocking(move || {
                    let mut maps = Maps::open_pinned(&dir)?;
                    anyhow::Ok(remove_retired_udp_flows(&mut maps, &retired))
                })
                .await;
                match pass {
                    Ok(Ok((removed, removed6))) => {
                        metrics.conntrack_reconciled(started.elapsed(), removed, removed6);
                        if removed + removed6 > 0 {
                            info!(
                                entries = removed + removed6,
                                "removed the UDP flows of backends that stopped serving their \
                                 frontend"
                            );
                        }
                    }
                    Ok(Err(err)) => warn!("removing UDP flows of retired backends: {err:#}"),
                    Err(err) => warn!("removing UDP flows of retired backends: {err}"),
                }
            }
        });
        Self { queue }
    }

    /// Queues `slots` (nothing happens for none).
    pub fn remove(&self, slots: Vec<RetiredUdpSlot>) {
        if !slots.is_empty() {
            // The task lives as long as the runtime.
            let _ = self.queue.send(slots);
        }
    }
}

/// Reads one family's two maps as one table ([`merged`]), removes the keys `doomed` picks
/// from what it read from both maps; returns how many keys went.
/// What [`collect_in`] does with a doomed flow a packet changed since the maps were read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Touched {
    /// Keeps it: the flow is alive again. A client that reuses a closed flow's tuple (its
    /// `TIME_WAIT` socket, `tcp_tw_reuse`) sends its SYN on the old entries while they are
    /// doomed; removed after that, the backend's answer meets no reply entry and goes out
    /// untranslated, and the connection fails (the leak rounds of `cargo xtask reliability`
    /// lost about one connection in 5000 this way while a pass took tens of milliseconds).
    Keep,
    /// Removes it all the same (flows that must stop whatever they carry).
    Remove,
}

/// Removes the `doomed` flows of one family's maps (read as one table), each from both maps;
/// returns how many entries went.
fn collect_in<A: Address + Hash>(
    new: &mut BpfHashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>,
    established: &mut BpfHashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>,
    doomed: impl FnOnce(&HashMap<CtKeyOf<A>, CtEntryOf<A>>) -> Vec<FlowKeys<A>>,
    touched: Touched,
) -> usize
where
    CtKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let entries = merged(
        new.iter().filter_map(Result::ok).collect::<Vec<_>>(),
        established.iter().filter_map(Result::ok),
    );
    let mut removed = 0;
    for flow in doomed(&entries) {
        // Read again right before the removal: what is left of the race is the microseconds
        // between this read and the delete, instead of the whole pass.
        if touched == Touched::Keep
            && !unchanged(&flow, &entries, |key| {
                established.get(key, 0).or_else(|_| new.get(key, 0)).ok()
            })
        {
            continue;
        }
        // Gone already (the datapath or the LRU was quicker) is fine.
        removed += flow
            .iter()
            .filter(|key| {
                let from_established = established.remove(key).is_ok();
                new.remove(key).is_ok() || from_established
            })
            .count();
    }
    removed
}

/// Whether every entry of `flow` is now (`now_in_maps`) as the pass read it (`read`).
fn unchanged<A: Address + Hash>(
    flow: &FlowKeys<A>,
    read: &HashMap<CtKeyOf<A>, CtEntryOf<A>>,
    now_in_maps: impl Fn(&CtKeyOf<A>) -> Option<CtEntryOf<A>>,
) -> bool {
    flow.iter()
        .all(|key| now_in_maps(key) == read.get(key).copied())
}

/// Runs [`collect`] every `interval` on its own handles to the pinned maps, off the sync loop.
pub async fn run(pin_dir: PathBuf, timeouts: CtTimeouts, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let dir = pin_dir.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let mut maps = Maps::open_pinned(&dir)?;
            collect(&mut maps, &timeouts).context("conntrack GC")
        })
        .await;
        match pass {
            Ok(Ok(removed)) if removed > 0 => debug!(removed, "conntrack GC"),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!("{err:#}"),
            Err(err) => warn!("conntrack GC: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::{CT_F_LOCAL, CtEntry, CtKey, TCP_STATE_ESTABLISHED};

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const NONE: Vec<FlowKeys<u32>> = Vec::new();
    const CLIENT: u32 = 0x6400_12c6; // 198.18.0.100 in memory order
    const FRONTEND: u32 = 0x0b00_12c6;
    const BACKEND: u32 = 0x0a01_12c6;

    /// A local flow client:40000 → frontend:30080 → backend:8080, last seen at `seen` s.
    fn local_flow(proto: u8, state: u8, seen: u64) -> Vec<(CtKey, CtEntry)> {
        let key = CtKey {
            saddr: CLIENT,
            daddr: FRONTEND,
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        let forward = CtEntry {
            last_seen_ns: seen * SEC,
            new_daddr: BACKEND,
            new_dport: 8080u16.to_be(),
            backend_id: 7,
            flags: CT_F_LOCAL,
            tcp_state: state,
            ..CtEntry::default()
        };
        let reply = CtEntry {
            new_saddr: FRONTEND,
            new_sport: 30080u16.to_be(),
            ..forward
        };
        let reply_key = reply_key(&key, &forward);
        assert_eq!(
            forward_key(&reply_key, &reply),
            key,
            "the two keys round-trip"
        );
        vec![(key, forward), (reply_key, reply)]
    }

    /// How many flows [`expired_keys`] dooms in `entries` at `now` s.
    fn expired(entries: Vec<(CtKey, CtEntry)>, now: u64) -> usize {
        let map: HashMap<CtKey, CtEntry> = entries.into_iter().collect();
        expired_keys(&map, |id| id == 7, &CtTimeouts::default(), now * SEC).len()
    }

    #[test]
    fn closing_tcp_goes_after_ten_seconds_established_stays() {
        assert_eq!(
            expired(local_flow(IPPROTO_TCP, TCP_STATE_CLOSING, 100), 105),
            0
        );
        assert_eq!(
            expired(local_flow(IPPROTO_TCP, TCP_STATE_CLOSING, 100), 111),
            1
        );
        assert_eq!(
            expired(local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100), 3700),
            0
        );
        assert_eq!(expired(local_flow(IPPROTO_UDP, 0, 100), 221), 1);
    }

    #[test]
    fn a_reply_packet_keeps_the_flow_alive() {
        let mut flow = local_flow(IPPROTO_UDP, 0, 100);
        flow[1].1.last_seen_ns = 200 * SEC;
        assert_eq!(expired(flow, 250), 0);
    }

    #[test]
    fn gone_backends_and_orphan_replies_are_removed() {
        let mut flow = local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100);
        flow[0].1.backend_id = 8;
        assert_eq!(expired(flow, 101), 1);
        let orphan = local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100).remove(1);
        assert_eq!(expired(vec![orphan], 101), 1);
    }

    #[test]
    fn the_udp_flows_of_retired_pairs_go_with_their_replies_and_nothing_else() {
        let mut entries: HashMap<CtKey, CtEntry> = HashMap::new();
        // Frontend 3 → backend 7, over UDP and over TCP; and UDP frontend 4 → backend 7.
        for (proto, service_id, sport) in [
            (IPPROTO_UDP, 3, 40000u16),
            (IPPROTO_TCP, 3, 40001),
            (IPPROTO_UDP, 4, 40002),
        ] {
            for (mut key, mut entry) in local_flow(proto, 0, 100) {
                entry.service_id = service_id;
                if key.dir == CT_DIR_FORWARD {
                    key.sport = sport.to_be();
                } else {
                    key.dport = sport.to_be();
                }
                entries.insert(key, entry);
            }
        }
        let retired: HashSet<RetiredUdpSlot> = [(3, 7)].into();
        let mut doomed = retired_udp_keys(&entries, &retired).concat();
        doomed.sort_by_key(|key| key.dir);
        assert_eq!(doomed.len(), 2, "{doomed:?}");
        assert!(doomed.iter().all(|key| key.proto == IPPROTO_UDP));
        assert_eq!(doomed[0].sport, 40000u16.to_be());
        assert_eq!(doomed[1].dport, 40000u16.to_be());
        let other: HashSet<RetiredUdpSlot> = [(3, 8)].into();
        assert_eq!(retired_udp_keys(&entries, &other), NONE);
    }

    #[test]
    fn a_flow_split_across_the_maps_is_one_flow_and_goes_in_a_pair() {
        // Forward entry confirmed (established map), reply entry still in the LRU: the
        // moment of a confirmation, or a flow whose move half failed.
        let flow = local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100);
        let (new, established) = (vec![flow[1]], vec![flow[0]]);
        let entries = merged(new.clone(), established.clone());
        let timeouts = CtTimeouts::default();
        // Not an orphan reply: nothing goes while the flow is live.
        assert_eq!(
            expired_keys(&entries, |id| id == 7, &timeouts, 101 * SEC),
            NONE
        );
        // Its backend gone, both keys go, whichever map holds them.
        let mut doomed = expired_keys(&entries, |_| false, &timeouts, 101 * SEC).concat();
        doomed.sort_by_key(|key| key.dir);
        assert_eq!(doomed, [flow[0].0, flow[1].0]);
        // Read apart, the reply would have been taken for an orphan.
        let lru_alone: HashMap<CtKey, CtEntry> = new.into_iter().collect();
        assert_eq!(
            expired_keys(&lru_alone, |id| id == 7, &timeouts, 101 * SEC),
            [[flow[0].0, flow[1].0]]
        );
    }

    #[test]
    fn a_doomed_flow_a_packet_touched_since_the_read_is_kept() {
        let flow = local_flow(IPPROTO_TCP, TCP_STATE_CLOSING, 100);
        let read: HashMap<CtKey, CtEntry> = flow.iter().copied().collect();
        let doomed = expired_keys(&read, |id| id == 7, &CtTimeouts::default(), 111 * SEC);
        assert_eq!(doomed.len(), 1, "one flow, both entries");
        let keys = &doomed[0];
        assert!(unchanged(keys, &read, |key| read.get(key).copied()));
        // A client reusing the tuple: its SYN refreshed the forward entry after the read.
        let mut reused = read.clone();
        let forward = reused.get_mut(&flow[0].0).expect("forward entry");
        forward.last_seen_ns = 112 * SEC;
        forward.tcp_state = TCP_STATE_SYN;
        assert!(!unchanged(keys, &read, |key| reused.get(key).copied()));
        // An entry gone meanwhile (the datapath ended the flow) is a change too.
        assert!(!unchanged(keys, &read, |key| {
            (key != &flow[1].0).then(|| read[key])
        }));
    }

    #[test]
    fn a_reply_whose_forward_entry_the_read_missed_is_kept() {
        // The pass's iteration missed the forward entry, confirmed while it ran (the leak
        // rounds of `cargo xtask reliability` lost connections this way: the reply went, the
        // forward entry stayed, and the client's next connection on the port got the
        // backend's answers untranslated).
        let flow = local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100);
        let read: HashMap<CtKey, CtEntry> = [flow[1]].into_iter().collect();
        let doomed = expired_keys(&read, |id| id == 7, &CtTimeouts::default(), 101 * SEC);
        assert_eq!(
            doomed,
            [[flow[0].0, flow[1].0]],
            "taken for an orphan reply"
        );
        let in_maps: HashMap<CtKey, CtEntry> = flow.iter().copied().collect();
        assert!(!unchanged(&doomed[0], &read, |key| in_maps
            .get(key)
            .copied()));
        // A true orphan (its forward entry evicted) still goes.
        assert!(unchanged(&doomed[0], &read, |key| read.get(key).copied()));
    }

    #[test]
    fn an_entry_in_both_maps_is_read_from_the_established_one() {
        let flow = local_flow(IPPROTO_UDP, 0, 100);
        let mut stale = flow[0];
        stale.1.last_seen_ns = 0;
        // The datapath reads the established copy first: it is the one packets refresh.
        let entries = merged(vec![stale, flow[1]], vec![flow[0]]);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[&flow[0].0].last_seen_ns, 100 * SEC);
        assert_eq!(
            expired_keys(&entries, |id| id == 7, &CtTimeouts::default(), 150 * SEC),
            NONE
        );
    }
}
