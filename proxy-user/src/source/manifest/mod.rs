//! Standalone mode's source: Kubernetes manifests in a directory, turned into the desired
//! state the reconciler programs.
//!
//! ```text
//! files ─parse─▶ checked objects per file (ManifestStore, last good kept)
//!       ─catalog─▶ one view across files ─resolve (+ Allocator)─▶ model::DesiredState
//! ```

mod alloc;
mod api;
mod backends;
mod catalog;
mod check;
mod cidrs;
mod error;
pub mod k8s;
mod node_ports;
mod object;
mod parse;
mod parser_panic;
mod resolve;
mod store;
mod validate;

#[cfg(test)]
mod tests;

use ipnet::Ipv4Net;

pub use self::{
    alloc::{Allocator, AllocatorError},
    api::{API_ORIGIN, ApiObject, ApiObjects},
    check::validate_dir,
    cidrs::ServiceCidrs,
    error::{ManifestError, ObjectRef, Severity},
    node_ports::NodePortRange,
    object::Kind,
    resolve::{HEADLESS_LABEL, Resolution, SERVICE_PROXY_NAME_LABEL},
    store::{FileReport, ManifestStore, is_manifest_file},
};

/// The service CIDR used when none is given (inside 198.18.0.0/15, reserved for testing).
pub const DEFAULT_SERVICE_CIDR: Ipv4Net =
    match Ipv4Net::new(std::net::Ipv4Addr::new(198, 19, 0, 0), 16) {
        Ok(net) => net,
        Err(_) => panic!("valid CIDR"),
    };

/// Settings that checking manifests depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestOptions {
    /// `--service-cidr`: the families the cluster serves (the first is the primary); explicit
    /// cluster IPs must be inside their family's range, missing ones come from it.
    pub service_cidrs: ServiceCidrs,
    /// `--service-node-port-range`: explicit nodePorts must be inside it, missing ones come
    /// from it.
    pub node_port_range: NodePortRange,
    /// `--node-name`: the Node manifest of that name gives this node's zone (for topology
    /// hints) and whether it is draining (for /healthz). `None` when checking files alone.
    pub node_name: Option<String>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            service_cidrs: ServiceCidrs::ipv4(DEFAULT_SERVICE_CIDR),
            node_port_range: NodePortRange::DEFAULT,
            node_name: None,
        }
    }
}

impl ManifestOptions {
    /// The allocator these options call for, remembering nothing (validation, tests).
    pub fn in_memory_allocator(&self) -> Allocator {
        Allocator::in_memory(self.service_cidrs.clone()).with_node_port_range(self.node_port_range)
    }
}
