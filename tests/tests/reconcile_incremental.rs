//! The daemon's incremental sync against real maps: random sequences of desired-state changes
//! (services added and removed, endpoints moving, terminating, type and policy changes,
//! shared endpoints, contested frontends, affinity on and off), each planned by `Planner` and
//! written by `Reconciler::apply_changes`, must leave the maps holding exactly what a full
//! apply of the same state writes into a freshly loaded object. Ids differ between the two, so
//! the maps are compared by frontend and backend address. Needs root (loads the eBPF object).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use aya::{Ebpf, EbpfLoader};
use proxy_common::{
    ServiceMeta, map_names,
    net::{ip_from_net, port_from_net},
};
use proxy_tests::isolated_netns::IsolatedNetns;
use proxy_user::{
    datapath::Maps,
    model::DesiredState,
    reconcile::{
        Plan, Planner, Reconciler,
        random_state::{NODE, RandomStates},
    },
};

const SEEDS: u64 = 40;
/// More for the failing runs: many steps there fail, and only some of them recover.
const FAILING_SEEDS: u64 = 100;
const STEPS: usize = 30;

/// Loads the object's maps (no program is loaded or attached), small; `backend_ids` sizes the
/// backend counters, which bounds the backend ids the reconciler hands out.
fn load(backend_ids: u32) -> (Ebpf, Maps) {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::SERVICES, 4096)
        .map_max_entries(map_names::BACKENDS, 1024)
        .map_max_entries(map_names::SERVICE_META, 1024)
        .map_max_entries(map_names::SERVICE_STATS, 1024)
        .map_max_entries(map_names::BACKEND_STATS, backend_ids)
        .map_max_entries(map_names::CONNTRACK, 1024)
        .map_max_entries(map_names::SOCK_REV_NAT, 64)
        .map_max_entries(map_names::AFFINITY, 1024)
        .map_max_entries(map_names::AFFINITY_MATCH, 4096)
        .map_max_entries(map_names::SOURCE_RANGES, 1024)
        .map_max_entries(map_names::SKIPPED, 256)
        .load(proxy_user::EBPF_OBJECT)
        .expect("load the eBPF object");
    let maps = Maps::take_from(&mut ebpf).expect("take the maps");
    (ebpf, maps)
}

/// A frontend: address, port, protocol, scope.
type FrontendKey = (Ipv4Addr, u16, u8, u8);
/// A backend: address and port.
type BackendKey = (Ipv4Addr, u16);

/// One frontend as the maps hold it, with ids replaced by what they stand for.
#[derive(Debug, Default, PartialEq, Eq)]
struct FrontendEntry {
    count: u16,
    flags: u16,
    affinity_timeout: u32,
    /// Backends by slot, `1..=count` (and any slot past the count, which must not exist).
    slots: BTreeMap<u16, BackendKey>,
    meta: Option<ServiceMeta>,
    /// Source ranges: (prefix length of the trie key, network address).
    source_ranges: BTreeSet<(u32, Ipv4Addr)>,
    /// The affinity-match entries of the frontend's id.
    members: BTreeSet<BackendKey>,
}

/// The maps' contents without ids.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    frontends: BTreeMap<FrontendKey, FrontendEntry>,
    backends: BTreeMap<BackendKey, u8>,
    skipped: BTreeMap<String, (u8, String)>,
}

/// Reads every map the reconciler writes, checking on the way that every id refers to
/// something: slots to backends and to their frontend's id, metadata, source ranges and
/// affinity members to a frontend.
fn snapshot(maps: &Maps) -> Snapshot {
    let backend_ids: HashMap<u32, BackendKey> = maps
        .backends
        .iter()
        .map(|entry| {
            let (id, backend) = entry.expect("read the backends");
            (id, (ip_from_net(backend.addr), port_from_net(backend.port)))
        })
        .collect();
    let backends = maps
        .backends
        .iter()
        .map(|entry| {
            let (id, backend) = entry.expect("read the backends");
            (backend_ids[&id], backend.flags)
        })
        .collect();
    let mut frontends: BTreeMap<FrontendKey, FrontendEntry> = BTreeMap::new();
    let mut slots = Vec::new();
    let mut ids: HashMap<u32, FrontendKey> = HashMap::new();
    for entry in maps.services.iter() {
        let (key, value) = entry.expect("read the services");
        let frontend = (
            ip_from_net(key.addr),
            port_from_net(key.port),
            key.proto,
            key.scope,
        );
        if key.slot == 0 {
            let head = frontends.entry(frontend).or_default();
            head.count = value.count;
            head.flags = value.flags;
            head.affinity_timeout = value.affinity_timeout;
            assert!(
                ids.insert(value.service_id, frontend).is_none(),
                "two frontends have id {}",
                value.service_id
            );
        } else {
            slots.push((frontend, key.slot, value));
        }
    }
    for (frontend, slot, value) in slots {
        let head = frontends
            .get_mut(&frontend)
            .unwrap_or_else(|| panic!("slot {slot} of {frontend:?} has no slot 0"));
        assert_eq!(ids.get(&value.service_id), Some(&frontend), "slot's id");
        let backend = backend_ids
            .get(&value.backend_id)
            .unwrap_or_else(|| panic!("slot {slot} of {frontend:?}: no backend"));
        head.slots.insert(slot, *backend);
    }
    let of_id = |id: u32, what: &str| -> FrontendKey {
        *ids.get(&id)
            .unwrap_or_else(|| panic!("{what} of id {id}, which no frontend has"))
    };
    for entry in maps.service_meta.iter() {
        let (id, meta) = entry.expect("read the service metadata");
        let frontend = of_id(id, "metadata");
        frontends.get_mut(&frontend).expect("listed").meta = Some(meta);
    }
    for key in maps.source_ranges.keys() {
        let key = key.expect("read the source ranges");
        let frontend = of_id(key.data().service_id, "a source range");
        frontends
            .get_mut(&frontend)
            .expect("listed")
            .source_ranges
            .insert((key.prefix_len(), ip_from_net(key.data().addr)));
    }
    for key in maps.affinity_match.keys() {
        let key = key.expect("read the affinity members");
        let frontend = of_id(key.service_id, "an affinity member");
        let backend = backend_ids
            .get(&key.backend_id)
            .unwrap_or_else(|| panic!("affinity member {key:?}: no backend"));
        frontends
            .get_mut(&frontend)
            .expect("listed")
            .members
            .insert(*backend);
    }
    let skipped = maps
        .skipped
        .iter()
        .map(|entry| {
            let (key, value) = entry.expect("read the skipped services");
            (
                key.name().to_owned(),
                (value.svc_type, value.reason().to_owned()),
            )
        })
        .collect();
    Snapshot {
        frontends,
        backends,
        skipped,
    }
}

/// A second loaded object that full applies go into, emptied before each (loading a fresh
/// one per comparison would make the test take minutes).
struct Reference {
    _ebpf: Ebpf,
    maps: Maps,
}

impl Reference {
    fn new() -> Self {
        let (ebpf, maps) = load(1024);
        Self { _ebpf: ebpf, maps }
    }

    /// What a full apply of `state` by a new reconciler writes into the emptied maps.
    fn fully_applied(&mut self, state: &DesiredState) -> Snapshot {
        let maps = &mut self.maps;
        fn clear<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>) {
            let keys: Vec<K> = map.keys().map(|key| key.expect("read a key")).collect();
            for key in keys {
                map.remove(&key).expect("delete an entry");
            }
        }
        clear(&mut maps.services);
        clear(&mut maps.backends);
        clear(&mut maps.service_meta);
        clear(&mut maps.affinity_match);
        clear(&mut maps.skipped);
        let ranges: Vec<_> = maps
            .source_ranges
            .keys()
            .map(|key| key.expect("read a source range"))
            .collect();
        for key in ranges {
            maps.source_ranges
                .remove(&key)
                .expect("delete a source range");
        }
        let mut reconciler = Reconciler::from_maps(maps).expect("read the empty maps");
        reconciler
            .apply(maps, &Plan::build(state, NODE))
            .expect("full apply");
        snapshot(maps)
    }
}

#[test]
fn incremental_applies_leave_what_a_full_apply_writes() {
    let _netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
    let mut reference = Reference::new();
    let mut written = 0;
    for seed in 0..SEEDS {
        let mut random = RandomStates::new(seed);
        let mut state = random.state(10);
        let (_ebpf, mut maps) = load(1024);
        let mut reconciler = Reconciler::from_maps(&maps).expect("read the empty maps");
        let mut planner = Planner::new(NODE);
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            assert_eq!(changes.everything, step == 0);
            let stats = reconciler
                .apply_changes(&mut maps, planner.plan(), &changes)
                .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
            written += stats.frontends_written + stats.frontends_removed;
            let incremental = snapshot(&maps);
            assert_eq!(
                incremental,
                reference.fully_applied(&state),
                "seed {seed} step {step}: the maps differ from a full apply's"
            );
            // Slot 0 says how many slots there are: no slot past the count is left over.
            for (frontend, entry) in &incremental.frontends {
                let expected: Vec<u16> = (1..=entry.count).collect();
                let found: Vec<u16> = entry.slots.keys().copied().collect();
                assert_eq!(found, expected, "seed {seed} step {step}: {frontend:?}");
            }
            random.change(&mut state);
        }
    }
    assert!(
        written > 1000,
        "only {written} frontend writes: too few changes"
    );
}

/// Backend ids run out now and then (their counters array is tiny), so applies fail half way;
/// the reconciler re-reads the maps, and the next apply (a full one) must converge.
#[test]
fn after_a_failed_apply_the_next_one_converges() {
    let _netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
    let mut reference = Reference::new();
    let (mut failed, mut recovered) = (0, 0);
    for seed in 0..FAILING_SEEDS {
        let mut random = RandomStates::new(1000 + seed);
        let mut state = random.state(10);
        // At most 11 backends: fewer than the random states' 16 distinct endpoints.
        let (_ebpf, mut maps) = load(12);
        let mut reconciler = Reconciler::from_maps(&maps).expect("read the empty maps");
        let mut planner = Planner::new(NODE);
        let mut failing = false;
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            match reconciler.apply_changes(&mut maps, planner.plan(), &changes) {
                Err(_) => {
                    failed += 1;
                    failing = true;
                    // The next state needs fewer backends, so an apply can succeed again.
                    let names: Vec<_> = state.services.keys().take(2).cloned().collect();
                    for name in names {
                        state.services.remove(&name);
                    }
                }
                Ok(_) => {
                    recovered += usize::from(failing);
                    failing = false;
                    assert_eq!(
                        snapshot(&maps),
                        reference.fully_applied(&state),
                        "seed {seed} step {step}: the maps differ from a full apply's"
                    );
                }
            }
            random.change(&mut state);
        }
    }
    assert!(
        failed > 20 && recovered > 20,
        "{failed} failed applies, {recovered} recoveries: the test does not test much"
    );
}
