//! `ServiceIndex`: the few Services a node service looks at (those with a health check, those
//! with a Local traffic policy), kept up to date from the planner's changes, so a sync looks at
//! those instead of every Service.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    model::{DesiredState, Service, ServiceName},
    reconcile::PlanChanges,
};

#[derive(Debug)]
pub struct ServiceIndex {
    /// Which Services belong.
    keeps: fn(&Service) -> bool,
    services: BTreeMap<ServiceName, Arc<Service>>,
}

impl ServiceIndex {
    pub fn new(keeps: fn(&Service) -> bool) -> Self {
        Self {
            keeps,
            services: BTreeMap::new(),
        }
    }

    /// Takes in `state`, which differs from the last one only in `changes.services` (unless
    /// `changes.everything`).
    pub fn update(&mut self, state: &DesiredState, changes: &PlanChanges) {
        if changes.everything {
            self.services = state
                .services
                .iter()
                .filter(|(_, service)| (self.keeps)(service))
                .map(|(name, service)| (name.clone(), service.clone()))
                .collect();
            return;
        }
        for name in &changes.services {
            match state.services.get(name) {
                Some(service) if (self.keeps)(service) => {
                    self.services.insert(name.clone(), service.clone());
                }
                _ => {
                    self.services.remove(name);
                }
            }
        }
    }

    /// The Services that belong, in name order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }
}
