//! Keeps the plan of a changing desired state up to date one changed service at a time, so a
//! change costs what it changes, not what the node holds; and says which plan entries changed.
//!
//! The plan is the merge of every service's `Contribution` in name order (see `Plan::build`).
//! The planner keeps, per frontend, the services claiming it (the first by name keeps it); per
//! backend used by several services, how many use it with each flag (flags are OR'ed over
//! them); per skipped name, who lists it (the last by name wins, as a map insert in name order
//! does). Taking a service out recomputes its old contribution from the previous state, so
//! nothing per service is stored twice. Changed services are found by pointer: sources share
//! unchanged services between states (`DesiredState::share_unchanged`); a service that was
//! copied instead is compared in full, which is slower but still correct.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, HashMap, btree_map, hash_map::Entry},
    sync::Arc,
};

use super::plan::{BackendAddr, Contribution, Frontend, Plan, PlanNode};
use crate::model::{ChangeCounts, DesiredState, Service, ServiceName};

/// The plan entries one update changed (or may have: an entry rewritten to the same value is
/// listed too). The reconciler writes only these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanChanges {
    /// Everything may have changed (the first update): the sets below are left empty.
    pub everything: bool,
    /// The Services added, removed or changed.
    pub services: BTreeSet<ServiceName>,
    pub frontends: BTreeSet<Frontend>,
    pub backends: BTreeSet<BackendAddr>,
    pub skipped: BTreeSet<String>,
    /// The Service and endpoint changes of the update, for kube-proxy's change metrics.
    pub counts: ChangeCounts,
}

impl PlanChanges {
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.services.is_empty()
            && self.frontends.is_empty()
            && self.backends.is_empty()
            && self.skipped.is_empty()
    }
}

/// How many services use one backend, and how many of them with each flag bit.
#[derive(Clone, Copy, Debug, Default)]
struct BackendRefs {
    services: u32,
    bits: [u32; 8],
}

impl BackendRefs {
    fn add(&mut self, flags: u8) {
        self.services += 1;
        for (bit, count) in self.bits.iter_mut().enumerate() {
            *count += u32::from(flags >> bit & 1);
        }
    }

    fn remove(&mut self, flags: u8) {
        self.services -= 1;
        for (bit, count) in self.bits.iter_mut().enumerate() {
            *count -= u32::from(flags >> bit & 1);
        }
    }

    /// The OR of the flags of every service using the backend.
    fn flags(&self) -> u8 {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .fold(0, |flags, (bit, _)| flags | 1 << bit)
    }
}

/// Services claiming one plan entry, sorted by name (almost always just one).
type Claimants = Vec<Arc<Service>>;

/// Where `service` is, or goes, in `claimants`.
fn position(claimants: &Claimants, service: &Service) -> Result<usize, usize> {
    claimants.binary_search_by(|claimant| claimant.name.cmp(&service.name))
}

/// The plan of the last desired state, kept up to date by `update`.
#[derive(Debug)]
pub struct Planner {
    node: PlanNode,
    /// The state `plan` was made from; `None` before the first update.
    state: Option<Arc<DesiredState>>,
    plan: Plan,
    /// The services claiming each planned frontend: the first one's entry is planned.
    frontend_claims: HashMap<Frontend, Claimants>,
    /// Backends used by two services or more. One used by a single service needs no count:
    /// its planned flags are that service's.
    shared_backends: HashMap<BackendAddr, BackendRefs>,
    /// The services listed under each skipped name: the last one's entry is planned.
    skipped_claims: HashMap<String, Claimants>,
}

impl Planner {
    /// An empty planner for `node`.
    pub fn new(node: PlanNode) -> Self {
        Self {
            node,
            state: None,
            plan: Plan::default(),
            frontend_claims: HashMap::new(),
            shared_backends: HashMap::new(),
            skipped_claims: HashMap::new(),
        }
    }

    /// The plan of the last state given to `update`; always equal to `Plan::build` of it.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Makes the plan that of `state`, working only on the services that differ from the last
    /// state's, and says which plan entries changed.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the planner keeps `state`: callers hand their `Arc` over"
    )]
    pub fn update(&mut self, state: Arc<DesiredState>) -> PlanChanges {
        // A new zone changes which endpoints topology hints pick: every Service is planned
        // again (as kube-proxy does a full sync on a node label change), its old claims with
        // the old node.
        let old_node = self.node.clone();
        self.node = self.node.for_state(&state);
        let every_service = old_node != self.node;
        let Some(previous) = self.state.replace(state.clone()) else {
            let mut changes = PlanChanges::everything();
            for service in state.services.values() {
                changes.counts += ChangeCounts::of(None, Some(service));
                let contribution = Contribution::of(service, &self.node);
                self.add(service, contribution, None);
            }
            return changes;
        };
        let mut changes = PlanChanges::default();
        if Arc::ptr_eq(&previous, &state) && !every_service {
            return changes;
        }
        let differing = changed_services(&previous, &state, every_service);
        changes.services = differing
            .iter()
            .filter_map(|(old, new)| old.or(*new).map(|service| service.name.clone()))
            .collect();
        for (old, new) in &differing {
            changes.counts += ChangeCounts::of(old.map(|s| &**s), new.map(|s| &**s));
        }
        // Every old claim goes before any new one is made, so a new claim sees only the
        // claims that stay.
        for (old, _) in &differing {
            if let Some(old) = old {
                let contribution = Contribution::of(old, &old_node);
                self.remove(old, contribution, &mut changes);
            }
        }
        // In name order (as `differing` is), like `Plan::build`.
        for (_, new) in &differing {
            if let Some(new) = new {
                let contribution = Contribution::of(new, &self.node);
                self.add(new, contribution, Some(&mut changes));
            }
        }
        self.settle(&changes);
        defer_drop(previous);
        changes
    }

    /// Adds one service's claims. A claim that becomes the first (frontends) or the last
    /// (skipped names) is planned at once: services are added in name order, so a later one
    /// of this update never takes it back wrongly.
    fn add(
        &mut self,
        service: &Arc<Service>,
        contribution: Contribution,
        mut changes: Option<&mut PlanChanges>,
    ) {
        for (addr, flags) in contribution.backends {
            match self.plan.backends.entry(addr) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(flags);
                }
                btree_map::Entry::Occupied(mut entry) => {
                    // The first other user's flags are the planned ones.
                    let first = *entry.get();
                    self.shared_backends
                        .entry(addr)
                        .or_insert_with(|| {
                            let mut refs = BackendRefs::default();
                            refs.add(first);
                            refs
                        })
                        .add(flags);
                    *entry.get_mut() |= flags;
                }
            }
            if let Some(changes) = changes.as_deref_mut() {
                changes.backends.insert(addr);
            }
        }
        for (frontend, planned) in contribution.frontends {
            let claims = self.frontend_claims.entry(frontend).or_default();
            let at = position(claims, service).unwrap_or_else(|at| at);
            claims.insert(at, service.clone());
            if claims.len() > 1 {
                // The new claim sorts first (and wins) or after the one already kept.
                let (kept, ignored) = if at == 0 {
                    (&service.name, &claims[1].name)
                } else {
                    (&claims[0].name, &service.name)
                };
                tracing::warn!(
                    frontend = ?frontend,
                    %kept,
                    %ignored,
                    "two services claim the same frontend; keeping the first by name"
                );
            }
            if at == 0 {
                self.plan.frontends.insert(frontend, planned);
            }
            if let Some(changes) = changes.as_deref_mut() {
                changes.frontends.insert(frontend);
            }
        }
        for (skipped_name, skipped) in contribution.skipped {
            let claims = self.skipped_claims.entry(skipped_name.clone()).or_default();
            let at = position(claims, service).unwrap_or_else(|at| at);
            claims.insert(at, service.clone());
            if at + 1 == claims.len() {
                self.plan.skipped.insert(skipped_name.clone(), skipped);
            }
            if let Some(changes) = changes.as_deref_mut() {
                changes.skipped.insert(skipped_name);
            }
        }
    }

    /// Takes back one service's claims (its contribution to the previous state). A frontend or
    /// skipped name it held leaves the plan; `settle` plans the next claimant's entry.
    fn remove(&mut self, service: &Service, contribution: Contribution, changes: &mut PlanChanges) {
        for (addr, flags) in contribution.backends {
            match self.shared_backends.entry(addr) {
                Entry::Occupied(mut refs) => {
                    refs.get_mut().remove(flags);
                    self.plan.backends.insert(addr, refs.get().flags());
                    if refs.get().services == 1 {
                        refs.remove();
                    }
                }
                Entry::Vacant(_) => {
                    self.plan.backends.remove(&addr);
                }
            }
            changes.backends.insert(addr);
        }
        for (frontend, _) in contribution.frontends {
            if let Entry::Occupied(mut claims) = self.frontend_claims.entry(frontend)
                && let Ok(at) = position(claims.get(), service)
            {
                claims.get_mut().remove(at);
                if at == 0 {
                    self.plan.frontends.remove(&frontend);
                }
                if claims.get().is_empty() {
                    claims.remove();
                }
            }
            changes.frontends.insert(frontend);
        }
        for (skipped_name, _) in contribution.skipped {
            if let Entry::Occupied(mut claims) = self.skipped_claims.entry(skipped_name.clone())
                && let Ok(at) = position(claims.get(), service)
            {
                claims.get_mut().remove(at);
                if at == claims.get().len() {
                    self.plan.skipped.remove(&skipped_name);
                }
                if claims.get().is_empty() {
                    claims.remove();
                }
            }
            changes.skipped.insert(skipped_name);
        }
    }

    /// Plans the entries whose holder was taken out and that other (unchanged) services still
    /// claim: only contested frontends and skipped names get here.
    fn settle(&mut self, changes: &PlanChanges) {
        /// A holder's contribution, computed once per update.
        fn contribution_of<'c>(
            cache: &'c mut HashMap<*const Service, Contribution>,
            service: &Arc<Service>,
            node: &PlanNode,
        ) -> &'c Contribution {
            cache
                .entry(Arc::as_ptr(service))
                .or_insert_with(|| Contribution::of(service, node))
        }
        let mut contributions = HashMap::new();
        for frontend in &changes.frontends {
            if self.plan.frontends.contains_key(frontend) {
                continue;
            }
            let Some(holder) = self.frontend_claims.get(frontend).and_then(|c| c.first()) else {
                continue;
            };
            let contribution = contribution_of(&mut contributions, holder, &self.node);
            if let Ok(at) = contribution
                .frontends
                .binary_search_by_key(frontend, |(frontend, _)| *frontend)
            {
                let planned = contribution.frontends[at].1.clone();
                self.plan.frontends.insert(*frontend, planned);
            }
        }
        for skipped_name in &changes.skipped {
            if self.plan.skipped.contains_key(skipped_name) {
                continue;
            }
            let Some(holder) = self.skipped_claims.get(skipped_name).and_then(|c| c.last()) else {
                continue;
            };
            let contribution = contribution_of(&mut contributions, holder, &self.node);
            if let Some((_, skipped)) = contribution
                .skipped
                .iter()
                .find(|(name, _)| name == skipped_name)
            {
                self.plan
                    .skipped
                    .insert(skipped_name.clone(), skipped.clone());
            }
        }
    }
}

/// States from this many services on are freed on another thread.
const BIG_STATE: usize = 10_000;

/// Frees a big previous state on another thread when this is its last reference: freeing
/// every service name of it costs more than walking it, and would make the sync cost what the
/// node holds again.
fn defer_drop(state: Arc<DesiredState>) {
    if state.services.len() < BIG_STATE || Arc::strong_count(&state) > 1 {
        return;
    }
    // If no thread can be started, the state is simply freed here, with the closure.
    let _ = std::thread::Builder::new()
        .name("sluice-free".into())
        .spawn(move || drop(state));
}

/// One service that differs between two states: its old and new version (`None`: absent).
type Changed<'a> = (Option<&'a Arc<Service>>, Option<&'a Arc<Service>>);

/// The services added, removed or changed from `old` to `new`, in name order. A service both
/// states share (the same `Arc`) is unchanged without looking at it: only the changed ones are
/// compared or even read. With `every_service`, every service of either state is listed.
fn changed_services<'a>(
    old: &'a DesiredState,
    new: &'a DesiredState,
    every_service: bool,
) -> Vec<Changed<'a>> {
    let mut changed = Vec::new();
    let mut old = old.services.iter().peekable();
    let mut new = new.services.iter().peekable();
    loop {
        let step = match (old.peek(), new.peek()) {
            (None, None) => return changed,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            // Keys are the services' names: one service means one name.
            (Some((_, a)), Some((_, b))) if Arc::ptr_eq(a, b) && !every_service => {
                old.next();
                new.next();
                continue;
            }
            (Some((old_name, _)), Some((new_name, _))) => old_name.cmp(new_name),
        };
        match step {
            Ordering::Less => changed.push((old.next().map(|(_, s)| s), None)),
            Ordering::Greater => changed.push((None, new.next().map(|(_, s)| s))),
            Ordering::Equal => {
                let (a, b) = (old.next().map(|(_, s)| s), new.next().map(|(_, s)| s));
                if a != b || every_service {
                    changed.push((a, b));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
