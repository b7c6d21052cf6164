//! The endpoints of one Service port: from its EndpointSlices (merged), else its v1
//! Endpoints, else the Pods its selector matches (as the endpoint-slice controller would).

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    catalog::{Catalog, LocatedService},
    error::{ManifestError, Problems},
    object::{
        EndpointPortDef, EndpointsDef, NodeDef, PodDef, PortDef, SliceDef, TargetPort,
        TrafficDistribution,
    },
};
use crate::model::{Endpoint, Hints};

/// Where a service's endpoints come from.
#[derive(Debug)]
pub(crate) enum Source<'a> {
    Slices(&'a [&'a SliceDef]),
    Endpoints(&'a EndpointsDef),
    Pods(SelectedPods<'a>),
    /// No selector and no slices or Endpoints.
    Nothing,
}

/// The pods a Service selects, and what the endpoint-slice controller reads to give their
/// endpoints topology hints.
#[derive(Debug)]
pub(crate) struct SelectedPods<'a> {
    pub pods: Vec<&'a PodDef>,
    pub distribution: Option<TrafficDistribution>,
    /// Every Node, for the zone of each pod's node.
    pub nodes: &'a BTreeMap<String, &'a NodeDef>,
}

impl SelectedPods<'_> {
    /// The hints the endpoint-slice controller writes for `pod`'s endpoints (its
    /// `trafficdist` heuristics): none without a traffic distribution or for a pod that is
    /// not ready; else a zone hint for the zone of the pod's node (when that Node has one)
    /// and, for `PreferSameNode`, a node hint for its node.
    fn hints(&self, pod: &PodDef, ready: bool) -> Hints {
        let Some(distribution) = self.distribution.filter(|_| ready) else {
            return Hints::default();
        };
        let node = pod.node_name.as_deref();
        let zone = node
            .and_then(|node| self.nodes.get(node))
            .and_then(|node| node.state.zone());
        Hints {
            for_zones: zone.map(str::to_owned).into_iter().collect(),
            for_nodes: node
                .filter(|_| distribution == TrafficDistribution::PreferSameNode)
                .map(str::to_owned)
                .into_iter()
                .collect(),
        }
    }
}

impl<'a> Source<'a> {
    pub fn of(service: &LocatedService<'a>, catalog: &'a Catalog<'a>) -> Self {
        let name = &service.def.name;
        if let Some(slices) = catalog.slices.get(name) {
            return Source::Slices(slices);
        }
        if let Some(endpoints) = catalog.endpoints.get(name) {
            return Source::Endpoints(endpoints);
        }
        let selector = &service.def.selector;
        if selector.is_empty() {
            return Source::Nothing;
        }
        let pods = catalog
            .pods
            .get(&name.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|pod| {
                selector
                    .iter()
                    .all(|(key, value)| pod.labels.get(key) == Some(value))
            })
            .collect();
        Source::Pods(SelectedPods {
            pods,
            distribution: service.def.traffic_distribution,
            nodes: &catalog.nodes,
        })
    }
}

/// Resolves the endpoints of `port` (the `index`th port of `service`), reporting why a port
/// ends up without endpoints when that looks like a mistake.
pub(crate) fn port_endpoints(
    service: &LocatedService,
    index: usize,
    port: &PortDef,
    source: &Source,
    problems: &mut Vec<ManifestError>,
) -> Vec<Endpoint> {
    let context = service.context();
    let mut p = Problems::new(&context);
    let mut merged = Merged::default();
    match source {
        Source::Slices(slices) => slice_endpoints(slices, index, port, &mut merged, &mut p),
        Source::Endpoints(endpoints) => {
            subset_endpoints(endpoints, index, port, &mut merged, &mut p);
        }
        Source::Pods(pods) => pod_endpoints(pods, index, port, &mut merged, &mut p),
        Source::Nothing => {}
    }
    problems.append(&mut p.list);
    merged.into_sorted(service.def.publish_not_ready)
}

/// Adds the endpoints of the slices that have `port`.
fn slice_endpoints(
    slices: &[&SliceDef],
    index: usize,
    port: &PortDef,
    merged: &mut Merged,
    p: &mut Problems<'_>,
) {
    let mut matched = false;
    for slice in slices {
        let Some(found) = matching_port(&slice.ports, port) else {
            continue;
        };
        matched = true;
        let number = match (found.port, &port.target) {
            (Some(number), _) => number,
            // A slice port without a number: use a numeric targetPort.
            (None, TargetPort::Number(number)) => *number,
            (None, TargetPort::Name(_)) => continue,
        };
        for endpoint in &slice.endpoints {
            for &addr in &endpoint.addresses {
                merged.add(Endpoint {
                    addr,
                    port: number,
                    node_name: endpoint.node_name.clone(),
                    ready: endpoint.ready,
                    serving: endpoint.serving,
                    terminating: endpoint.terminating,
                    hints: endpoint.hints.clone(),
                });
            }
        }
    }
    if !matched {
        p.warning(
            &format!("spec.ports[{index}].name"),
            format!(
                "no EndpointSlice of this Service has a port named {:?} for {}: this \
                 port has no endpoints (a slice port takes the name of the Service port \
                 it serves)",
                port.name, port.protocol
            ),
        );
    }
}

/// Adds the addresses of the Endpoints subsets that have `port`.
fn subset_endpoints(
    endpoints: &EndpointsDef,
    index: usize,
    port: &PortDef,
    merged: &mut Merged,
    p: &mut Problems<'_>,
) {
    let mut matched = false;
    for subset in &endpoints.subsets {
        let Some(number) = matching_port(&subset.ports, port).and_then(|found| found.port) else {
            continue;
        };
        matched = true;
        let lists = [
            (&subset.addresses, true),
            (&subset.not_ready_addresses, false),
        ];
        for (addresses, ready) in lists {
            for address in addresses {
                merged.add(Endpoint {
                    addr: address.ip,
                    port: number,
                    node_name: address.node_name.clone(),
                    ready,
                    serving: ready,
                    terminating: false,
                    hints: Hints::default(),
                });
            }
        }
    }
    if !matched {
        p.warning(
            &format!("spec.ports[{index}].name"),
            format!(
                "the Endpoints of this Service have no port named {:?} for {}: this port \
                 has no endpoints",
                port.name, port.protocol
            ),
        );
    }
}

/// Adds the selected pods that have `port`, as the endpoint-slice controller would.
fn pod_endpoints(
    selected: &SelectedPods,
    index: usize,
    port: &PortDef,
    merged: &mut Merged,
    p: &mut Problems<'_>,
) {
    let candidates: Vec<_> = selected
        .pods
        .iter()
        .filter(|pod| !pod.ips.is_empty() && !pod.finished)
        .collect();
    let mut found = false;
    for pod in &candidates {
        let Some(number) = pod_port(pod, port) else {
            continue;
        };
        found = true;
        // As the endpoint-slice controller: serving is the Ready condition; ready is
        // never true for a terminating pod. One endpoint per pod address: the planner serves
        // each frontend with those of its family.
        let serving = pod.ready;
        let ready = serving && !pod.terminating;
        let hints = selected.hints(pod, ready);
        for &addr in &pod.ips {
            merged.add(Endpoint {
                addr,
                port: number,
                node_name: pod.node_name.clone(),
                ready,
                serving,
                terminating: pod.terminating,
                hints: hints.clone(),
            });
        }
    }
    if let (false, false, TargetPort::Name(name)) = (found, candidates.is_empty(), &port.target) {
        p.warning(
            &format!("spec.ports[{index}].targetPort"),
            format!(
                "no pod selected by this Service has a container port named {name:?} for \
                 {}: this port has no endpoints",
                port.protocol
            ),
        );
    }
}

/// Slice and Endpoints ports match the Service port by name and protocol.
fn matching_port<'p>(ports: &'p [EndpointPortDef], port: &PortDef) -> Option<&'p EndpointPortDef> {
    ports
        .iter()
        .find(|candidate| candidate.name == port.name && candidate.protocol == port.protocol)
}

/// The pod port a service port targets: the number, or the container port of that name and
/// protocol.
fn pod_port(pod: &PodDef, port: &PortDef) -> Option<u16> {
    match &port.target {
        TargetPort::Number(number) => Some(*number),
        TargetPort::Name(name) => pod
            .ports
            .iter()
            .find(|candidate| &candidate.name == name && candidate.protocol == port.protocol)
            .map(|candidate| candidate.port),
    }
}

/// Endpoints deduplicated by address and port: the same endpoint in two slices counts once,
/// with the readier conditions.
#[derive(Default)]
struct Merged(BTreeMap<(IpAddr, u16), Endpoint>);

impl Merged {
    fn add(&mut self, endpoint: Endpoint) {
        let key = (endpoint.addr, endpoint.port);
        match self.0.get_mut(&key) {
            None => {
                self.0.insert(key, endpoint);
            }
            Some(existing) => {
                let rank = |e: &Endpoint| (e.ready, e.serving, !e.terminating);
                let node_name = existing.node_name.take().or(endpoint.node_name.clone());
                if rank(&endpoint) > rank(existing) {
                    *existing = endpoint;
                }
                if existing.node_name.is_none() {
                    existing.node_name = node_name;
                }
            }
        }
    }

    fn into_sorted(self, publish_not_ready: bool) -> Vec<Endpoint> {
        self.0
            .into_values()
            .map(|mut endpoint| {
                if publish_not_ready {
                    endpoint.ready = true;
                    endpoint.serving = true;
                }
                endpoint
            })
            .collect()
    }
}
