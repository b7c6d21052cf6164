//! The reconciler's kernel tables (aya's maps of a loaded object, batched updates) against the
//! in-memory ones its unit tests use (`proxy_user::reconcile::tables::memory`): the same random
//! sequences of desired states, applied by two reconcilers, one into each, must leave the same
//! entries, ids included, after every step; also when backend ids run out and frontends are
//! left out. The unit tests show the in-memory result is right; this shows the kernel's is
//! the same. The random services are of either family or both, so both families' maps
//! (`SVC_V1`/`SVC6_V1`, `BACKEND_V1`/`BACKEND6_V1`, `SRC_RANGE_V1`/`SRC_RANGE6_V1`) are
//! compared. Needs root (loads the eBPF object).

use std::sync::Arc;

use aya::{Ebpf, EbpfLoader};
use proxy_common::map_names;
use proxy_tests::isolated_netns::IsolatedNetns;
use proxy_user::{
    datapath::Maps,
    reconcile::{
        Planner, Reconciler,
        random_state::{RandomStates, plan_node},
        tables::memory::{Capacity, Contents, MemoryTables},
    },
};

const SEEDS: u64 = 12;
const STEPS: usize = 30;

/// Loads the object's maps (no program is loaded or attached) with the in-memory tables'
/// capacities.
fn load(capacity: &Capacity) -> (Ebpf, Maps) {
    let entries = |n: usize| u32::try_from(n).expect("small");
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::SERVICES, entries(capacity.services))
        .map_max_entries(map_names::BACKENDS, entries(capacity.backends))
        .map_max_entries(map_names::SERVICE_META, entries(capacity.service_meta))
        .map_max_entries(map_names::SERVICE_STATS, capacity.service_ids)
        .map_max_entries(map_names::BACKEND_STATS, capacity.backend_ids)
        .map_max_entries(map_names::CONNTRACK, 1024)
        .map_max_entries(map_names::CONNTRACK_ESTABLISHED, 1024)
        .map_max_entries(map_names::SOCK_REV_NAT, 64)
        .map_max_entries(map_names::AFFINITY, 1024)
        .map_max_entries(map_names::AFFINITY_MATCH, entries(capacity.affinity_match))
        .map_max_entries(map_names::SOURCE_RANGES, entries(capacity.source_ranges))
        .map_max_entries(map_names::SKIPPED, entries(capacity.skipped))
        .map_max_entries(map_names::SERVICES6, entries(capacity.services))
        .map_max_entries(map_names::BACKENDS6, entries(capacity.backends))
        .map_max_entries(map_names::SOURCE_RANGES6, entries(capacity.source_ranges))
        .map_max_entries(map_names::CONNTRACK6, 1024)
        .map_max_entries(map_names::CONNTRACK_ESTABLISHED6, 1024)
        .map_max_entries(map_names::SOCK_REV_NAT6, 64)
        .map_max_entries(map_names::AFFINITY6, 1024)
        .load(proxy_user::EBPF_OBJECT)
        .expect("load the eBPF object");
    let maps = Maps::take_from(&mut ebpf).expect("take the maps");
    (ebpf, maps)
}

/// Runs `seeds` random sequences into both kinds of tables; returns (applies that failed,
/// applies that succeeded).
fn run_in_step(first_seed: u64, seeds: u64, capacity: Capacity) -> (usize, usize) {
    let (mut failed, mut succeeded) = (0, 0);
    let mut ipv6_entries = 0;
    for seed in first_seed..first_seed + seeds {
        let mut random = RandomStates::new(seed);
        let mut state = random.state(10);
        let (_ebpf, mut maps) = load(&capacity);
        let mut memory = MemoryTables::new(capacity);
        let mut in_kernel = Reconciler::from_maps(&mut maps).expect("read the empty maps");
        let mut in_memory = Reconciler::from_maps(&mut memory).expect("read the empty tables");
        let mut planner = Planner::new(plan_node());
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            let kernel = in_kernel.apply_changes(&mut maps, planner.plan(), &changes);
            let expected = in_memory.apply_changes(&mut memory, planner.plan(), &changes);
            match (&kernel, &expected) {
                (Ok(kernel), Ok(expected)) => {
                    assert_eq!(
                        kernel, expected,
                        "seed {seed} step {step}: what was written"
                    );
                    succeeded += 1;
                }
                (Err(kernel), Err(expected)) => {
                    assert_eq!(
                        format!("{kernel:#}"),
                        format!("{expected:#}"),
                        "seed {seed} step {step}: the error"
                    );
                    failed += 1;
                    // The next state needs fewer backends, so an apply can succeed again.
                    let names: Vec<_> = state.services.keys().take(2).cloned().collect();
                    for name in names {
                        state.services.remove(&name);
                    }
                }
                _ => panic!("seed {seed} step {step}: kernel {kernel:?}, memory {expected:?}"),
            }
            let in_maps = Contents::read(&mut maps).expect("read the maps");
            let in_tables = Contents::read(&mut memory).expect("read the tables");
            assert!(
                in_maps == in_tables,
                "seed {seed} step {step}: the maps hold\n{}\nthe in-memory tables\n{}",
                in_maps.render(),
                in_tables.render()
            );
            ipv6_entries += in_maps.services6.len() + in_maps.backends6.len();
            random.change(&mut state);
        }
    }
    assert!(
        ipv6_entries > 0,
        "no step wrote an IPv6 entry: the test covers one family"
    );
    (failed, succeeded)
}

#[test]
fn the_kernel_maps_end_up_as_the_in_memory_tables() {
    let _netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
    let (failed, succeeded) = run_in_step(0, SEEDS, Capacity::default());
    assert_eq!(failed, 0);
    assert_eq!(
        u64::try_from(succeeded).unwrap(),
        SEEDS * u64::try_from(STEPS).unwrap()
    );
}

/// Backend ids run out now and then (their counters array is tiny): the frontends that do not
/// fit are left out instead of failing the apply, and after every apply the kernel's maps hold
/// exactly what the in-memory tables hold.
#[test]
fn applies_that_leave_frontends_out_leave_the_kernel_maps_as_the_in_memory_tables() {
    let _netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
    // At most 11 backends: fewer than the random states' 16 distinct endpoints.
    let capacity = Capacity {
        backend_ids: 12,
        ..Capacity::default()
    };
    let (failed, succeeded) = run_in_step(1000, SEEDS * 2, capacity);
    assert_eq!(
        failed, 0,
        "an apply failed instead of leaving frontends out"
    );
    assert_eq!(
        u64::try_from(succeeded).unwrap(),
        SEEDS * 2 * u64::try_from(STEPS).unwrap()
    );
}

/// The maps are read back in batches of 16384 entries (a restart reads every frontend): a map
/// of several batches, with hash buckets of more than one entry, reads back entry for entry.
#[test]
fn a_map_of_several_read_batches_reads_back_whole() {
    use proxy_common::{ServiceKey, ServiceValue};
    use proxy_user::reconcile::tables::Table as _;

    let _netns = IsolatedNetns::enter().expect("create a network namespace (needs root)");
    let capacity = Capacity {
        services: 65_536,
        ..Capacity::default()
    };
    let (_ebpf, mut maps) = load(&capacity);
    let count: u32 = 40_000;
    let keys: Vec<ServiceKey> = (0..count)
        .map(|i| ServiceKey {
            addr: 0xc613_0000 + i / 4,
            port: 80,
            slot: u16::try_from(i % 4).unwrap(),
            proto: proxy_common::IPPROTO_TCP,
            scope: 0,
            _pad: 0,
        })
        .collect();
    let values: Vec<ServiceValue> = (0..count)
        .map(|i| ServiceValue {
            backend_id: i + 1,
            count: 3,
            flags: 0,
            service_id: i / 4 + 1,
            affinity_timeout: 0,
        })
        .collect();
    maps.services
        .write(&keys, &values)
        .expect("write 40000 entries");
    let mut read = maps.services.entries().expect("read them back");
    assert_eq!(read.len(), keys.len(), "every entry once");
    read.sort_by_key(|(_, value)| value.backend_id);
    for ((key, value), (wrote_key, wrote_value)) in read.iter().zip(keys.iter().zip(&values)) {
        assert_eq!((key, value), (wrote_key, wrote_value));
    }
}
