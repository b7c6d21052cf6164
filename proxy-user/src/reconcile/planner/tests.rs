use std::{collections::BTreeSet, sync::Arc};

use super::*;
use crate::{
    model::{IpFamily, TrafficPolicy},
    reconcile::random_state::{NODE, RandomStates, plan_node},
};

/// The keys whose entries differ between two plans.
fn differences(old: &Plan, new: &Plan) -> PlanChanges {
    fn keys<K: Ord + Clone, V: PartialEq>(
        old: &std::collections::BTreeMap<K, V>,
        new: &std::collections::BTreeMap<K, V>,
    ) -> BTreeSet<K> {
        old.keys()
            .chain(new.keys())
            .filter(|key| old.get(key) != new.get(key))
            .cloned()
            .collect()
    }
    PlanChanges {
        everything: false,
        frontends: keys(&old.frontends, &new.frontends),
        backends: keys(&old.backends, &new.backends),
        skipped: keys(&old.skipped, &new.skipped),
        ..PlanChanges::default()
    }
}

/// Every service copied: what a source that does not share unchanged services publishes.
fn deep_copy(state: &DesiredState) -> DesiredState {
    DesiredState {
        services: state
            .services
            .iter()
            .map(|(name, service)| (name.clone(), Arc::new((**service).clone())))
            .collect(),
        trigger_times: state.trigger_times.clone(),
        node: state.node.clone(),
        service_cidrs: state.service_cidrs.clone(),
    }
}

/// The node of a seed: of both families, IPv4 only or IPv6 only, so a Service's other family
/// is listed as skipped (and stops being, as services change families).
fn node_of(seed: u64) -> PlanNode {
    match seed % 3 {
        0 => plan_node(),
        1 => PlanNode::new(NODE, [IpFamily::V4]),
        _ => PlanNode::new(NODE, [IpFamily::V6]),
    }
}

/// Random change sequences: after every step the kept plan equals a fresh `Plan::build`, and
/// every entry that changed is listed in the changes. Every third state is a deep copy, so
/// changed services are found by comparison instead of by pointer.
#[test]
fn incremental_plans_equal_full_builds() {
    let mut conflicts = 0;
    for seed in 0..300 {
        let node = node_of(seed);
        let mut random = RandomStates::new(seed);
        let mut state = random.state(10);
        let mut planner = Planner::new(node.clone());
        let changes = planner.update(Arc::new(state.clone()));
        assert!(changes.everything);
        let mut built = Plan::build(&state, &node);
        assert_eq!(planner.plan(), &built, "seed {seed}: first plan");
        for step in 0..40 {
            random.change(&mut state);
            if step % 3 == 2 {
                state = deep_copy(&state);
            }
            let changes = planner.update(Arc::new(state.clone()));
            let previous = std::mem::replace(&mut built, Plan::build(&state, &node));
            assert_eq!(planner.plan(), &built, "seed {seed} step {step}");
            let needed = differences(&previous, &built);
            assert!(!changes.everything);
            assert!(
                needed.frontends.is_subset(&changes.frontends)
                    && needed.backends.is_subset(&changes.backends)
                    && needed.skipped.is_subset(&changes.skipped),
                "seed {seed} step {step}: changed {needed:?}, listed {changes:?}"
            );
            conflicts += planner
                .frontend_claims
                .values()
                .filter(|claims| claims.len() > 1)
                .count();
        }
        // Everything removed leaves nothing behind.
        planner.update(Arc::new(DesiredState::default()));
        assert_eq!(planner.plan(), &Plan::default(), "seed {seed}: emptied");
        assert!(planner.frontend_claims.is_empty() && planner.shared_backends.is_empty());
        assert!(planner.skipped_claims.is_empty());
    }
    // The pools are small on purpose: services must fight over frontends.
    assert!(
        conflicts > 1000,
        "only {conflicts} contested frontends seen"
    );
}

#[test]
fn an_unchanged_state_changes_nothing() {
    let mut random = RandomStates::new(7);
    let state = Arc::new(random.state(10));
    let mut planner = Planner::new(plan_node());
    planner.update(state.clone());
    assert!(planner.update(state.clone()).is_empty());
    assert!(planner.update(Arc::new((*state).clone())).is_empty());
    assert!(planner.update(Arc::new(deep_copy(&state))).is_empty());
}

#[test]
fn one_changed_endpoint_lists_only_its_entries() {
    use std::net::Ipv4Addr;

    use crate::model::{Endpoint, Protocol, Service, ServiceName, ServicePort, ServiceType};

    let endpoint = |last| Endpoint {
        addr: Ipv4Addr::new(198, 18, 2, last).into(),
        port: 8080,
        node_name: Some(NODE.into()),
        ready: true,
        serving: true,
        terminating: false,
        hints: crate::model::Hints::default(),
    };
    let name = ServiceName {
        namespace: "c".into(),
        name: "web".into(),
    };
    let web = Service {
        name: name.clone(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![Ipv4Addr::new(198, 19, 1, 1).into()],
        ip_families: vec![crate::model::IpFamily::V4],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            endpoints: vec![endpoint(1), endpoint(2)],
        }],
        unserved_ports: Vec::new(),
        skip_reason: None,
        affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::default(),
        internal_traffic_policy: TrafficPolicy::default(),
        load_balancer_source_ranges: vec![],
        health_check_node_port: None,
    };
    let mut state = RandomStates::new(11).state(10);
    state.services.insert(name.clone(), Arc::new(web));
    let mut planner = Planner::new(plan_node());
    planner.update(Arc::new(state.clone()));

    Arc::make_mut(state.services.get_mut(&name).expect("inserted")).ports[0].endpoints[1] =
        endpoint(3);
    let changes = planner.update(Arc::new(state.clone()));
    let frontend = Frontend {
        addr: Ipv4Addr::new(198, 19, 1, 1).into(),
        port: 80,
        protocol: Protocol::Tcp,
        scope: proxy_common::SVC_SCOPE_DEFAULT,
    };
    assert_eq!(changes.frontends, [frontend].into());
    let addr = |last| BackendAddr {
        addr: Ipv4Addr::new(198, 18, 2, last).into(),
        port: 8080,
    };
    assert_eq!(changes.backends, [addr(1), addr(2), addr(3)].into());
    assert!(changes.skipped.is_empty());
    assert_eq!(planner.plan(), &Plan::build(&state, &plan_node()));
}
