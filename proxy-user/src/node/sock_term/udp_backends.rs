//! Which backends the UDP frontends use, kept per frontend so that after a sync that changed a
//! few frontends, finding the backends no UDP frontend uses any more costs what changed.

use std::collections::{BTreeSet, HashMap};

use crate::{
    model::Protocol,
    reconcile::{BackendAddr, Frontend, Plan, PlanChanges},
};

#[derive(Debug, Default)]
pub(super) struct UdpBackends {
    /// The backends of each planned UDP frontend; `None` while only the set read from the maps
    /// is known (before the first full look at a plan).
    frontends: Option<HashMap<Frontend, Vec<BackendAddr>>>,
    /// How many UDP frontends use each backend.
    serving: HashMap<BackendAddr, u32>,
}

impl UdpBackends {
    /// Starts from the backends the maps' UDP frontends use.
    pub(super) fn from_maps(backends: BTreeSet<BackendAddr>) -> Self {
        Self {
            frontends: None,
            serving: backends.into_iter().map(|backend| (backend, 1)).collect(),
        }
    }

    /// Takes in `plan`, which differs from the last one only in `changes` (`None`: it may
    /// differ anywhere), and returns the backends no UDP frontend uses any more, sorted.
    pub(super) fn update(
        &mut self,
        plan: &Plan,
        changes: Option<&PlanChanges>,
    ) -> Vec<BackendAddr> {
        let (Some(frontends), Some(changes)) = (self.frontends.as_mut(), changes) else {
            return self.rebuild(plan);
        };
        let mut dropped = Vec::new();
        for frontend in changes
            .frontends
            .iter()
            .filter(|f| f.protocol == Protocol::Udp)
        {
            for backend in frontends.remove(frontend).unwrap_or_default() {
                let count = self.serving.get_mut(&backend).expect("counted when added");
                *count -= 1;
                if *count == 0 {
                    dropped.push(backend);
                }
            }
            if let Some(planned) = plan.frontends.get(frontend) {
                for backend in &planned.backends {
                    *self.serving.entry(*backend).or_default() += 1;
                }
                frontends.insert(*frontend, planned.backends.clone());
            }
        }
        // A backend one frontend dropped may be one another took up.
        dropped.sort_unstable();
        dropped.dedup();
        dropped.retain(|backend| self.serving[backend] == 0);
        for backend in &dropped {
            self.serving.remove(backend);
        }
        dropped
    }

    fn rebuild(&mut self, plan: &Plan) -> Vec<BackendAddr> {
        let frontends: HashMap<Frontend, Vec<BackendAddr>> = plan
            .frontends
            .iter()
            .filter(|(frontend, _)| frontend.protocol == Protocol::Udp)
            .map(|(frontend, planned)| (*frontend, planned.backends.clone()))
            .collect();
        let mut serving: HashMap<BackendAddr, u32> = HashMap::new();
        for backend in frontends.values().flatten() {
            *serving.entry(*backend).or_default() += 1;
        }
        let mut gone: Vec<BackendAddr> = self
            .serving
            .keys()
            .filter(|backend| !serving.contains_key(backend))
            .copied()
            .collect();
        gone.sort_unstable();
        self.frontends = Some(frontends);
        self.serving = serving;
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::reconcile::{
        Planner,
        random_state::{RandomStates, plan_node},
    };

    fn udp_backends(plan: &Plan) -> BTreeSet<BackendAddr> {
        plan.frontends
            .iter()
            .filter(|(frontend, _)| frontend.protocol == Protocol::Udp)
            .flat_map(|(_, planned)| planned.backends.iter().copied())
            .collect()
    }

    /// Kept up to date from the planner's changes, the backends found gone are exactly those of
    /// the UDP frontends before and not after, as comparing whole plans finds them.
    #[test]
    fn changes_find_the_backends_a_whole_plan_comparison_finds() {
        let mut gone_seen = 0;
        for seed in 0..200 {
            let mut random = RandomStates::new(seed);
            let mut state = random.state(10);
            let mut planner = Planner::new(plan_node());
            planner.update(Arc::new(state.clone()));
            let mut before = udp_backends(planner.plan());
            let mut tracked = UdpBackends::from_maps(before.clone());
            assert_eq!(tracked.update(planner.plan(), None), []);
            for step in 0..30 {
                random.change(&mut state);
                let changes = planner.update(Arc::new(state.clone()));
                let after = udp_backends(planner.plan());
                let expected: Vec<BackendAddr> = before.difference(&after).copied().collect();
                let gone = tracked.update(planner.plan(), Some(&changes));
                assert_eq!(gone, expected, "seed {seed} step {step}");
                gone_seen += gone.len();
                before = after;
            }
        }
        assert!(
            gone_seen > 100,
            "only {gone_seen} backends left UDP frontends"
        );
    }
}
