//! Background removal of finished and idle flows from conntrack (`CT_V1`), so the table holds
//! live flows and `sluice conntrack` shows them, instead of waiting for LRU eviction.
//!
//! A flow is two entries (forward and reply, see docs/packet-path.md); both go together. The
//! timeouts follow what kube-proxy sets for netfilter: established TCP 24 h, closing TCP
//! (FIN or RST seen) 10 s, a SYN without answer 60 s, UDP 120 s.

use std::{collections::HashMap, hash::BuildHasher, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use proxy_common::{
    CT_DIR_REPLY, CtEntry, CtKey, IPPROTO_TCP, TCP_STATE_CLOSING, TCP_STATE_SYN,
    flow::{forward_key, reply_key},
};
use tracing::{debug, warn};

use crate::datapath::{Maps, clock::monotonic_ns};

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

/// Which entries to delete: flows idle past their timeout (the later packet of either
/// direction counts, the closing state of either), flows whose backend is gone, and reply
/// entries whose forward entry the LRU already evicted.
pub fn expired_keys(
    entries: &HashMap<CtKey, CtEntry, impl BuildHasher>,
    backend_exists: impl Fn(u32) -> bool,
    timeouts: &CtTimeouts,
    now_ns: u64,
) -> Vec<CtKey> {
    let mut doomed = Vec::new();
    for (key, entry) in entries {
        if key.dir == CT_DIR_REPLY {
            if !entries.contains_key(&forward_key(key, entry)) {
                doomed.push(*key);
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
            doomed.push(*key);
            if reply.is_some() {
                doomed.push(reply_key);
            }
        }
    }
    doomed
}

/// One pass over the pinned conntrack map; returns how many entries it removed.
pub fn collect(maps: &mut Maps, timeouts: &CtTimeouts) -> Result<usize> {
    let entries: HashMap<CtKey, CtEntry> = maps.conntrack.iter().filter_map(Result::ok).collect();
    let backends: std::collections::HashSet<u32> =
        maps.backends.keys().filter_map(Result::ok).collect();
    let doomed = expired_keys(
        &entries,
        |id| backends.contains(&id),
        timeouts,
        monotonic_ns(),
    );
    let mut removed = 0;
    for key in &doomed {
        // Gone already (the datapath or the LRU was quicker) is fine.
        if maps.conntrack.remove(key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
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
    use proxy_common::{CT_DIR_FORWARD, CT_F_LOCAL, IPPROTO_UDP, TCP_STATE_ESTABLISHED};

    use super::*;

    const SEC: u64 = 1_000_000_000;
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
            2
        );
        assert_eq!(
            expired(local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100), 3700),
            0
        );
        assert_eq!(expired(local_flow(IPPROTO_UDP, 0, 100), 221), 2);
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
        assert_eq!(expired(flow, 101), 2);
        let orphan = local_flow(IPPROTO_TCP, TCP_STATE_ESTABLISHED, 100).remove(1);
        assert_eq!(expired(vec![orphan], 101), 1);
    }
}
