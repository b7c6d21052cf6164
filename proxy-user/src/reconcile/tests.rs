//! The reconciler against in-memory tables: random sequences of desired-state changes
//! (services added and removed, endpoints moving, terminating, type and policy changes, shared
//! endpoints, contested frontends, affinity on and off), each planned by `Planner` and written by
//! `Reconciler::apply_changes`, must leave exactly what a full apply of the same state writes
//! into empty tables; a failed write anywhere must leave a view a datapath reader can use and
//! the next apply must converge; and at no single write may a reader see a half-written
//! service (the tables check that after every entry).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use proxy_common::{BackendOf, ServiceKeyOf, ServiceMeta, ServiceValue, net::port_from_net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::{
    Plan, Planner, Reconciler,
    random_state::{RandomStates, plan_node},
    tables::{
        MapAddr, ServiceTables as _,
        memory::{Capacity, Contents, MemoryTables},
    },
};
use crate::model::DesiredState;

const SEEDS: u64 = 40;
/// More for the failing runs: many steps there fail, and only some of them recover.
const FAILING_SEEDS: u64 = 100;
const STEPS: usize = 30;

/// A frontend: address, port, protocol, scope.
type FrontendKey = (IpAddr, u16, u8, u8);
/// A backend: address and port.
type BackendKey = (IpAddr, u16);

/// One frontend as the tables hold it, with ids replaced by what they stand for.
#[derive(Debug, Default, PartialEq, Eq)]
struct FrontendEntry {
    count: u16,
    flags: u16,
    affinity_timeout: u32,
    /// Backends by slot, `1..=count` (and any slot past the count, which must not exist).
    slots: BTreeMap<u16, BackendKey>,
    meta: Option<ServiceMeta>,
    source_ranges: BTreeSet<IpNet>,
    /// The affinity-match entries of the frontend's id.
    members: BTreeSet<BackendKey>,
}

/// The tables' contents without ids (two reconcilers may number the same state differently).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    frontends: BTreeMap<FrontendKey, FrontendEntry>,
    backends: BTreeMap<BackendKey, u8>,
    skipped: BTreeMap<String, (u8, String)>,
}

/// Both families' backends by id.
fn all_backends(contents: &Contents) -> HashMap<u32, (BackendKey, u8)> {
    fn of<A: MapAddr>(backends: &HashMap<u32, BackendOf<A>>) -> Vec<(u32, (BackendKey, u8))> {
        backends
            .iter()
            .map(|(id, b)| (*id, ((b.addr.ip(), port_from_net(b.port)), b.flags)))
            .collect()
    }
    let mut all: HashMap<u32, (BackendKey, u8)> = of(&contents.backends).into_iter().collect();
    for (id, backend) in of(&contents.backends6) {
        assert!(
            all.insert(id, backend).is_none(),
            "backend id {id} is in both families' tables"
        );
    }
    all
}

/// One family's services table as (frontend, slot, value).
fn all_services<A: MapAddr>(
    services: &HashMap<ServiceKeyOf<A>, ServiceValue>,
) -> Vec<(FrontendKey, u16, ServiceValue)> {
    services
        .iter()
        .map(|(key, value)| {
            let frontend = (key.addr.ip(), port_from_net(key.port), key.proto, key.scope);
            (frontend, key.slot, *value)
        })
        .collect()
}

/// `contents` without ids, checking on the way that every id refers to something: slots to
/// backends of their family and to their frontend's id, metadata, source ranges and affinity
/// members to a frontend; and that no slot is left past a frontend's count.
fn snapshot(contents: &Contents) -> Snapshot {
    let all = all_backends(contents);
    let backend_addr = |id: &u32| -> BackendKey {
        all.get(id)
            .unwrap_or_else(|| panic!("backend id {id} is not in the backends tables"))
            .0
    };
    let backends = all.values().copied().collect();
    let mut frontends: BTreeMap<FrontendKey, FrontendEntry> = BTreeMap::new();
    let mut ids: HashMap<u32, FrontendKey> = HashMap::new();
    let mut services = all_services(&contents.services);
    services.extend(all_services(&contents.services6));
    for (frontend, _, value) in services.iter().filter(|(_, slot, _)| *slot == 0) {
        let head = frontends.entry(*frontend).or_default();
        head.count = value.count;
        head.flags = value.flags;
        head.affinity_timeout = value.affinity_timeout;
        assert!(
            ids.insert(value.service_id, *frontend).is_none(),
            "two frontends have id {}",
            value.service_id
        );
    }
    for (frontend, slot, value) in services.iter().filter(|(_, slot, _)| *slot != 0) {
        let head = frontends
            .get_mut(frontend)
            .unwrap_or_else(|| panic!("slot {slot} of {frontend:?} has no slot 0"));
        assert_eq!(ids.get(&value.service_id), Some(frontend), "slot's id");
        let backend = backend_addr(&value.backend_id);
        assert_eq!(
            backend.0.is_ipv4(),
            frontend.0.is_ipv4(),
            "slot {slot} of {frontend:?} points at a backend of the other family"
        );
        head.slots.insert(*slot, backend);
    }
    let of_id = |id: u32, what: &str| -> FrontendKey {
        *ids.get(&id)
            .unwrap_or_else(|| panic!("{what} of id {id}, which no frontend has"))
    };
    for (id, meta) in &contents.service_meta {
        let frontend = of_id(*id, "metadata");
        frontends.get_mut(&frontend).expect("listed").meta = Some(*meta);
    }
    let ranges = contents
        .source_ranges
        .keys()
        .map(|(id, net)| (*id, IpNet::from(*net)))
        .chain(
            contents
                .source_ranges6
                .keys()
                .map(|(id, net)| (*id, IpNet::from(*net))),
        );
    for (id, net) in ranges {
        let frontend = of_id(id, "a source range");
        assert_eq!(
            net.addr().is_ipv4(),
            frontend.0.is_ipv4(),
            "source range {net} of {frontend:?} is of the other family"
        );
        let entry = frontends.get_mut(&frontend).expect("listed");
        entry.source_ranges.insert(net);
    }
    for key in contents.affinity_match.keys() {
        let frontend = of_id(key.service_id, "an affinity member");
        let backend = backend_addr(&key.backend_id);
        let entry = frontends.get_mut(&frontend).expect("listed");
        entry.members.insert(backend);
    }
    for (frontend, entry) in &frontends {
        let expected: Vec<u16> = (1..=entry.count).collect();
        let found: Vec<u16> = entry.slots.keys().copied().collect();
        assert_eq!(found, expected, "slots of {frontend:?}");
    }
    let skipped = contents
        .skipped
        .iter()
        .map(|(key, value)| {
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

/// What a full apply of `state` by a new reconciler writes into empty tables.
fn fully_applied(state: &DesiredState) -> Snapshot {
    let mut tables = MemoryTables::new(Capacity::default());
    let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
    reconciler
        .apply(&mut tables, &Plan::build(state, &plan_node()))
        .expect("full apply");
    tables.reader_violation().expect("a consistent view");
    snapshot(&tables.contents())
}

/// Fails unless no reader saw a half-written service and `tables` hold what a full apply of
/// `state` writes.
fn assert_holds(tables: &MemoryTables, state: &DesiredState, seed: u64, step: usize) {
    tables
        .reader_violation()
        .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
    assert_eq!(
        snapshot(&tables.contents()),
        fully_applied(state),
        "seed {seed} step {step}: the tables differ from a full apply's"
    );
}

/// A random sequence's start: its first state, empty tables, a reconciler and a planner.
struct Sequence {
    random: RandomStates,
    state: DesiredState,
    tables: MemoryTables,
    reconciler: Reconciler,
    planner: Planner,
}

impl Sequence {
    fn new(seed: u64) -> Self {
        let mut random = RandomStates::new(seed);
        let state = random.state(10);
        let mut tables = MemoryTables::new(Capacity::default());
        let reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
        Self {
            random,
            state,
            tables,
            reconciler,
            planner: Planner::new(plan_node()),
        }
    }
}

#[test]
fn incremental_applies_leave_what_a_full_apply_writes() {
    let mut written = 0;
    for seed in 0..SEEDS {
        let Sequence {
            mut random,
            mut state,
            mut tables,
            mut reconciler,
            mut planner,
        } = Sequence::new(seed);
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            assert_eq!(changes.everything, step == 0);
            let applied = reconciler
                .apply_changes(&mut tables, planner.plan(), &changes)
                .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
            assert_eq!(applied.full, step == 0);
            written += applied.frontends_written + applied.frontends_removed;
            assert_holds(&tables, &state, seed, step);
            random.change(&mut state);
        }
    }
    assert!(
        written > 1000,
        "only {written} frontend writes: too few changes"
    );
}

/// Small maps (a services map of 40 entries, 11 backend ids: fewer than the random states
/// need): no apply fails; a frontend that does not fit is left out and listed (its Service in
/// the skipped list), every other one is exactly as planned, nothing unplanned is left, and once
/// the state shrinks to fit, everything left out lands (and every backend has an id).
#[test]
fn frontends_the_maps_have_no_room_for_are_left_out_and_land_once_there_is_room() {
    let (mut left_out, mut landed) = (0, 0);
    let capacity = Capacity {
        services: 40,
        backend_ids: 12,
        ..Capacity::default()
    };
    for seed in 0..FAILING_SEEDS {
        let mut random = RandomStates::new(1000 + seed);
        let mut state = random.state(10);
        let mut tables = MemoryTables::new(capacity);
        let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
        let mut planner = Planner::new(plan_node());
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            reconciler
                .apply_changes(&mut tables, planner.plan(), &changes)
                .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
            let unfit = reconciler.unfit_frontends();
            left_out += unfit.len();
            assert_fits(&tables, &state, &unfit, seed, step);
            random.change(&mut state);
        }
        // Fewer Services until everything fits: the last apply leaves what a full one writes.
        loop {
            let changes = planner.update(Arc::new(state.clone()));
            reconciler
                .apply_changes(&mut tables, planner.plan(), &changes)
                .unwrap_or_else(|err| panic!("seed {seed} shrinking: {err:#}"));
            if reconciler.unfit_frontends().is_empty() && reconciler.unallocated_backends() == 0 {
                break;
            }
            let first = state.services.keys().next().cloned().expect("a service");
            state.services.remove(&first);
            landed += 1;
        }
        assert_holds(&tables, &state, seed, STEPS);
    }
    assert!(
        left_out > 100 && landed > 20,
        "{left_out} frontends left out, {landed} shrinking applies: the test does not test much"
    );
}

/// `tables` hold every planned frontend not in `unfit` as a full apply writes it, nothing the
/// plan lacks, and list each unfit frontend's Service as skipped.
fn assert_fits(
    tables: &MemoryTables,
    state: &DesiredState,
    unfit: &BTreeMap<FrontendKey, String>,
    seed: u64,
    step: usize,
) {
    tables
        .reader_violation()
        .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
    let held = snapshot(&tables.contents());
    let full = fully_applied(state);
    for (frontend, entry) in &full.frontends {
        if !unfit.contains_key(frontend) {
            assert_eq!(
                held.frontends.get(frontend),
                Some(entry),
                "seed {seed} step {step}: {frontend:?} fits but is not as planned"
            );
        }
    }
    for frontend in held.frontends.keys() {
        assert!(
            full.frontends.contains_key(frontend),
            "seed {seed} step {step}: {frontend:?} is not planned but programmed"
        );
    }
    for name in unfit.values() {
        let listed = held.skipped.get(name).map(|(_, reason)| reason.as_str());
        assert!(
            listed.is_some_and(|reason| reason.contains("not programmed")),
            "seed {seed} step {step}: {name} has a frontend left out but is listed {listed:?}"
        );
    }
}

/// Any single write may fail (as a kernel map write can): whichever one does, the view stays
/// one a reader can use, and the next apply, a full one from what the tables then hold,
/// converges.
#[test]
fn a_write_failing_anywhere_leaves_a_usable_view_and_the_next_apply_converges() {
    let mut failed = 0;
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(7000 + seed);
        let mut random = RandomStates::new(7000 + seed);
        let mut state = random.state(10);
        let mut tables = MemoryTables::new(Capacity::default());
        let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
        let mut planner = Planner::new(plan_node());
        for step in 0..STEPS {
            let changes = planner.update(Arc::new(state.clone()));
            // Fail one of the first writes of this apply (a change writes a few dozen).
            tables.fail_op(rng.random_range(1..=40));
            let result = reconciler.apply_changes(&mut tables, planner.plan(), &changes);
            tables.clear_failure();
            if result.is_err() {
                failed += 1;
                let applied = reconciler
                    .apply_changes(&mut tables, planner.plan(), &changes)
                    .unwrap_or_else(|err| panic!("seed {seed} step {step}: retry: {err:#}"));
                assert!(applied.full, "the retry after an error writes everything");
            }
            assert_holds(&tables, &state, seed, step);
            random.change(&mut state);
        }
    }
    assert!(
        failed > 200,
        "only {failed} applies failed: the test does not test much"
    );
}

/// A new frontend's and a new backend's counters start from zero (a reused id never shows an
/// earlier owner's traffic); an apply that leaves them in place does not reset them.
#[test]
fn counters_start_from_zero_with_their_id_and_are_kept_after() {
    let mut random = RandomStates::new(42);
    let state = random.state(20);
    let mut tables = MemoryTables::new(Capacity::default());
    tables.set_traffic(7);
    let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
    let plan = Plan::build(&state, &plan_node());
    reconciler.apply(&mut tables, &plan).expect("apply");
    let contents = tables.contents();
    let service_ids: BTreeSet<u32> = contents
        .services
        .values()
        .chain(contents.services6.values())
        .map(|v| v.service_id)
        .collect();
    assert!(!service_ids.is_empty() && !contents.backends.is_empty());
    assert!(!contents.services6.is_empty() && !contents.backends6.is_empty());
    for (id, traffic) in (0..).zip(&contents.service_counters) {
        let expected = if service_ids.contains(&id) { 0 } else { 7 };
        assert_eq!(*traffic, expected, "service id {id}");
    }
    for (id, traffic) in (0..).zip(&contents.backend_counters) {
        let used = contents.backends.contains_key(&id) || contents.backends6.contains_key(&id);
        assert_eq!(*traffic, if used { 0 } else { 7 }, "backend id {id}");
    }

    tables.set_traffic(9);
    reconciler.apply(&mut tables, &plan).expect("apply again");
    let contents = tables.contents();
    assert!(
        contents
            .service_counters
            .iter()
            .all(|&traffic| traffic == 9)
    );
    assert!(
        contents
            .backend_counters
            .iter()
            .all(|&traffic| traffic == 9)
    );
}

/// A restarted daemon reads what the tables hold: an apply of the same plan writes nothing.
#[test]
fn a_reconciler_reading_applied_tables_has_nothing_to_write() {
    for seed in 0..SEEDS {
        let state = RandomStates::new(seed).state(10);
        let plan = Plan::build(&state, &plan_node());
        let mut tables = MemoryTables::new(Capacity::default());
        let mut first = Reconciler::from_maps(&mut tables).expect("read the empty tables");
        first.apply(&mut tables, &plan).expect("apply");
        let ops = tables.ops();
        let mut restarted = Reconciler::from_maps(&mut tables).expect("read the tables");
        let applied = restarted.apply(&mut tables, &plan).expect("apply again");
        assert_eq!(
            (applied.frontends_written, applied.backends_written),
            (0, 0),
            "seed {seed}"
        );
        assert_eq!(
            tables.ops(),
            ops,
            "seed {seed}: an apply of no change wrote"
        );
    }
}

/// The periodic read-back (`Syncer::repair`): an entry removed or changed behind the
/// reconciler's back is found by reading the tables again and written back, and only it.
#[test]
fn a_reread_finds_and_repairs_what_changed_behind_the_reconcilers_back() {
    let mut repaired_seen = 0u64;
    for seed in 0..SEEDS {
        let state = RandomStates::new(seed).state(10);
        let plan = Plan::build(&state, &plan_node());
        let mut tables = MemoryTables::new(Capacity::default());
        let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
        reconciler.apply(&mut tables, &plan).expect("apply");
        let expected = snapshot(&tables.contents());
        // Remove one frontend's head entry and one backend, as `bpftool map delete` would.
        let contents = tables.contents();
        let Some(head) = contents.services.keys().find(|key| key.slot == 0).copied() else {
            continue;
        };
        let backend = contents.backends.keys().next().copied();
        tables.services().remove(&head).expect("remove");
        if let Some(id) = backend {
            tables.backends().remove(&id).expect("remove");
        }
        assert!(!tables.contents().services.contains_key(&head));

        let mut reread = Reconciler::from_maps(&mut tables).expect("read the tables back");
        let applied = reread.apply(&mut tables, &plan).expect("repair");
        assert_eq!(snapshot(&tables.contents()), expected, "seed {seed}");
        // Only what drifted is written: the frontend that lost its head, and at most those whose
        // slots point at the lost backend (only if it comes back under another id). Which
        // backend goes depends on a HashMap's order, so this is counted, not assumed small.
        let lost_backend = backend.map(|id| all_backends(&contents)[&id].0);
        let head_frontend = (
            head.addr.ip(),
            port_from_net(head.port),
            head.proto,
            head.scope,
        );
        let drifted = expected
            .frontends
            .iter()
            .filter(|(frontend, entry)| {
                **frontend == head_frontend
                    || lost_backend.is_some_and(|lost| entry.slots.values().any(|b| *b == lost))
            })
            .count();
        assert!(
            (1..=drifted).contains(&applied.frontends_written)
                && applied.backends_written == usize::from(backend.is_some()),
            "seed {seed}: {applied:?}, {drifted} drifted"
        );
        let mut again = Reconciler::from_maps(&mut tables).expect("read the tables back");
        let applied = again.apply(&mut tables, &plan).expect("apply");
        assert_eq!(
            (applied.frontends_written, applied.backends_written),
            (0, 0)
        );
        repaired_seen += 1;
    }
    assert!(repaired_seen > SEEDS / 2, "only {repaired_seen} repairs");
}

/// (frontend, backend) pairs whose UDP flows a plan keeps: each UDP frontend with its
/// backends and its port's serving endpoints.
fn udp_held(plan: &Plan) -> BTreeSet<(FrontendKey, BackendKey)> {
    plan.frontends
        .iter()
        .filter(|(frontend, _)| frontend.protocol == crate::model::Protocol::Udp)
        .flat_map(|(frontend, planned)| {
            let key = (
                frontend.addr,
                frontend.port,
                frontend.protocol.ip_proto(),
                frontend.scope,
            );
            planned
                .backends
                .iter()
                .chain(&planned.serving)
                .map(move |backend| (key, (backend.addr, backend.port)))
        })
        .collect()
}

/// Ids of the tables: service id → frontend, backend id → backend.
fn ids_of(contents: &Contents) -> (HashMap<u32, FrontendKey>, HashMap<u32, BackendKey>) {
    let mut services = all_services(&contents.services);
    services.extend(all_services(&contents.services6));
    let frontends = services
        .iter()
        .filter(|(_, slot, _)| *slot == 0)
        .map(|(frontend, _, value)| (value.service_id, *frontend))
        .collect();
    let backends = all_backends(contents)
        .into_iter()
        .map(|(id, (backend, _))| (id, backend))
        .collect();
    (frontends, backends)
}

/// The retired UDP slots each incremental apply reports are exactly the pairs the plan kept
/// flows for before and does not after: backends that stopped serving, or whose frontend went
/// (a backend that only left the new-flow slots while still serving keeps its flows).
#[test]
fn retired_udp_slots_are_the_pairs_that_stopped_being_served() {
    let mut retired_seen = 0;
    for seed in 0..SEEDS {
        let Sequence {
            mut random,
            mut state,
            mut tables,
            mut reconciler,
            mut planner,
        } = Sequence::new(seed);
        let changes = planner.update(Arc::new(state.clone()));
        reconciler
            .apply_changes(&mut tables, planner.plan(), &changes)
            .expect("first apply");
        assert_eq!(reconciler.take_retired_udp_slots(), []);
        for step in 1..STEPS {
            random.change(&mut state);
            let before = udp_held(planner.plan());
            let (frontend_ids, backend_ids) = ids_of(&tables.contents());
            let changes = planner.update(Arc::new(state.clone()));
            reconciler
                .apply_changes(&mut tables, planner.plan(), &changes)
                .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err:#}"));
            let expected: BTreeSet<_> = before
                .difference(&udp_held(planner.plan()))
                .copied()
                .collect();
            let retired: BTreeSet<_> = reconciler
                .take_retired_udp_slots()
                .into_iter()
                .map(|(service_id, backend_id)| {
                    (frontend_ids[&service_id], backend_ids[&backend_id])
                })
                .collect();
            assert_eq!(retired, expected, "seed {seed} step {step}");
            retired_seen += retired.len();
        }
    }
    assert!(
        retired_seen > 50,
        "only {retired_seen} retired pairs: too few changes"
    );
}
