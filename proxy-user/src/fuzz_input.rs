//! One pure entry per fuzz target (`fuzz/`): sluice's outside inputs; errors are fine, panics not.
//!
//! Each entry drives the code the daemon and the CLI run on that input, in memory: no file,
//! socket or map is touched. The tests replay `fuzz/seeds` and `fuzz/regressions` through them.

use std::{ffi::OsString, hint::black_box, os::unix::ffi::OsStringExt as _, path::Path, sync::Arc};

use clap::Parser as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use kube::{
    Resource, ResourceExt as _,
    core::{ObjectList, Status, WatchEvent},
    runtime::watcher::{self, Event},
};
use serde::de::DeserializeOwned;

use crate::{
    cli::args::{Cli, Command},
    datapath::NodePortAddresses,
    model::DesiredState,
    reconcile::{PlanNode, Planner},
    source::{
        kube::{ClusterView, Update, WatchItem, boxed, describe},
        manifest::{Allocator, ManifestError, ManifestOptions, ManifestStore, ServiceCidrs},
    },
};

/// The node the entries plan for; the seeds' endpoints name it.
const NODE: &str = "node1";

/// `data` as a manifest file's text, read as `x.yaml` and as `x.json` (both in one store, as
/// two files of one directory), resolved and planned: `sluice validate`'s options (one IPv4
/// service CIDR, no node), then `sluice run --manifests`' (dual-stack, this node's name).
pub fn manifests(data: &[u8]) {
    for options in [ManifestOptions::default(), run_options()] {
        let mut store = ManifestStore::new(options.clone());
        let mut problems = Vec::new();
        for name in ["fuzz.yaml", "fuzz.json"] {
            problems.extend(store.load_bytes(Path::new(name), data.to_vec()).problems);
        }
        let resolution = store.desired_state(&mut options.in_memory_allocator());
        problems.extend(resolution.problems);
        show(&problems);
        plan(resolution.state);
    }
}

/// `data` as what the four watches of cluster mode read, one JSON document a line (as kube-rs
/// splits a watch stream): each line goes to every watch (Services, EndpointSlices, the Node,
/// `ServiceCIDR`s), decoded into that watch's typed object as kube-rs decodes it — a watch
/// event, or a whole list response on one line — and turned into the watcher's events, then
/// the view is resolved and planned.
pub fn kube_json(data: &[u8]) {
    let mut view = ClusterView::new(NODE.to_owned());
    // Everything listed once, empty, so the view resolves whatever the lines bring.
    view.update(Update::Services(Ok(Event::InitDone)));
    view.update(Update::EndpointSlices(Ok(Event::InitDone)));
    view.update(Update::Node(Ok(Event::InitDone)));
    for line in data.split(|&byte| byte == b'\n') {
        // kube-rs' line codec fails the stream on a line that is not UTF-8.
        let Ok(line) = std::str::from_utf8(line) else {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8");
            let why = describe(&watcher::Error::WatchFailed(kube::Error::ReadEvents(error)));
            view.update(Update::Services(Err(why)));
            continue;
        };
        watch_line::<Service>(&mut view, Update::Services, line);
        watch_line::<EndpointSlice>(&mut view, Update::EndpointSlices, line);
        watch_line::<Node>(&mut view, Update::Node, line);
        watch_line::<ServiceCIDR>(&mut view, Update::ServiceCidrs, line);
    }
    if let Some(resolution) = view.resolve() {
        show(&resolution.problems);
        plan(resolution.state);
    }
}

/// One line of a watch on `K`: the events kube-rs' watcher makes of it, into the view.
fn watch_line<K>(view: &mut ClusterView, update: fn(WatchItem<K>) -> Update, line: &str)
where
    K: Resource + Clone + DeserializeOwned,
{
    let mut send = |item: Result<Event<K>, watcher::Error>| {
        let item = item.map(boxed).map_err(|error| describe(&error));
        view.update(update(item));
    };
    match serde_json::from_str::<WatchEvent<K>>(line) {
        Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
            send(with_version(object).map(Event::Apply));
        }
        Ok(WatchEvent::Deleted(object)) => send(with_version(object).map(Event::Delete)),
        Ok(WatchEvent::Bookmark(_)) => {}
        Ok(WatchEvent::Error(status)) => send(Err(watcher::Error::WatchError(status))),
        // kube-rs drops an incomplete last line.
        Err(error) if error.is_eof() => {}
        Err(error) => {
            if let Ok(list) = serde_json::from_str::<ObjectList<K>>(line) {
                send(Ok(Event::Init));
                for object in list.items {
                    send(Ok(Event::InitApply(object)));
                }
                send(Ok(Event::InitDone));
                return;
            }
            // As kube-rs: a line that is no event may be the API server's Status.
            let error = match serde_json::from_str::<Status>(line) {
                Ok(status) => kube::Error::Api(status.boxed()),
                Err(_) => kube::Error::SerdeError(error),
            };
            send(Err(watcher::Error::WatchFailed(error)));
        }
    }
}

/// The watcher refuses a watched object without a resourceVersion.
fn with_version<K: Resource>(object: K) -> Result<K, watcher::Error> {
    if object.resource_version().unwrap_or_default().is_empty() {
        Err(watcher::Error::NoResourceVersion)
    } else {
        Ok(object)
    }
}

/// `data` as what the CLI reads from its user: argv (`sluice` then `data` split at NUL bytes)
/// through the real clap parser and the checks `main` makes of what it parsed; and `data` as
/// the JSON sluice reads back, the allocation state file (`allocations.json`) standalone mode
/// keeps in `--state-dir`, taken up by the allocator for a few Services that ask for
/// allocations. The CLI reads no other JSON: it only prints it (`--output json`).
pub fn cli(data: &[u8]) {
    let argv = std::iter::once(OsString::from("sluice")).chain(
        data.split(|&byte| byte == 0)
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    match Cli::try_parse_from(argv) {
        Ok(cli) => check_command(cli.command),
        // What clap prints: the error, the help or the version.
        Err(error) => drop(black_box(error.render().to_string())),
    }
    allocations(data);
}

/// What `main` checks of a parsed command before it touches the system.
fn check_command(command: Command) {
    match command {
        Command::Run(args) => {
            drop(ServiceCidrs::new(args.service_cidrs));
            drop(NodePortAddresses::parse(&args.nodeport_addresses));
        }
        Command::Validate { service_cidrs, .. } => drop(ServiceCidrs::new(service_cidrs)),
        _ => {}
    }
}

/// Services that ask for every kind of allocation (cluster IPs of both families, nodePorts, a
/// health check nodePort); the seeds' state files name them.
const ALLOCATING: &str = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ipFamilies: [IPv6]
  ports: [{name: https, port: 443}]
";

fn allocations(data: &[u8]) {
    let options = run_options();
    let Ok(allocator) = Allocator::from_state(data, options.service_cidrs.clone()) else {
        return;
    };
    let mut allocator = allocator.with_node_port_range(options.node_port_range);
    let mut store = ManifestStore::new(options);
    store.load_bytes(Path::new("allocating.yaml"), ALLOCATING.into());
    let resolution = store.desired_state(&mut allocator);
    show(&resolution.problems);
}

/// `sluice run --manifests`' options: a dual-stack cluster, this node.
fn run_options() -> ManifestOptions {
    ManifestOptions {
        service_cidrs: "198.19.0.0/16,fd00:19::/108".parse().expect("valid CIDRs"),
        node_name: Some(NODE.to_owned()),
        ..ManifestOptions::default()
    }
}

/// Every problem as the daemon logs it and `sluice validate` prints it.
fn show(problems: &[ManifestError]) {
    for problem in problems {
        black_box(problem.to_string());
    }
}

/// The daemon's next step: the plan of the desired state (what the maps would hold).
fn plan(state: DesiredState) {
    Planner::new(PlanNode::dual_stack(NODE)).update(Arc::new(state));
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    /// `fuzz/seeds/<target>` and `fuzz/regressions/<target>`: every input a target was seeded
    /// with or once crashed on.
    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut inputs = Vec::new();
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = fs::read_dir(fuzz.join(kind).join(target)) else {
                continue;
            };
            for entry in dir {
                let path = entry.expect("a directory entry").path();
                let bytes = fs::read(&path).expect("readable input");
                inputs.push((path, bytes));
            }
        }
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "no inputs for {target} under {}",
            fuzz.display()
        );
        inputs
    }

    fn replay(target: &str, entry: fn(&[u8])) {
        for (path, bytes) in inputs(target) {
            eprintln!("{target}: {}", path.display());
            entry(&bytes);
        }
    }

    #[test]
    fn manifests_seeds_and_regressions() {
        replay("manifests", manifests);
    }

    #[test]
    fn kube_json_seeds_and_regressions() {
        replay("kube_json", kube_json);
    }

    #[test]
    fn cli_seeds_and_regressions() {
        replay("cli", cli);
    }

    /// The Services the allocation states are tried on are valid, so each asks for its
    /// allocations.
    #[test]
    fn the_allocating_services_are_valid() {
        let mut store = ManifestStore::new(run_options());
        let report = store.load_bytes(Path::new("allocating.yaml"), ALLOCATING.into());
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.objects, 3);
    }

    /// A YAML bomb (nine levels of nine aliases, plain and through merge keys), 20,000 levels
    /// of nesting (YAML flow and block, JSON) and an alias with no anchor (on which the YAML
    /// library panics) are one bounded error each, in a file of their own under
    /// `fuzz/regressions/manifests`.
    #[test]
    fn bombs_deep_nesting_and_parser_panics_are_one_error() {
        let expected = [
            ("yaml-bomb.yaml", "invalid YAML: repetition limit exceeded"),
            (
                "yaml-merge-bomb.yaml",
                "invalid YAML: repetition limit exceeded",
            ),
            (
                "nesting-20k-flow.yaml",
                "invalid YAML: recursion limit exceeded",
            ),
            (
                "nesting-20k-block.yaml",
                "invalid YAML: recursion limit exceeded",
            ),
            ("nesting-20k.json", "invalid JSON: recursion limit exceeded"),
            // yaml_serde panics after this error (see `manifest::parser_panic`).
            (
                "alias-without-anchor-min.yaml",
                "invalid YAML: unknown anchor",
            ),
        ];
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/manifests");
        for (name, message) in expected {
            let path = dir.join(name);
            let mut store = ManifestStore::new(ManifestOptions::default());
            let report = store.load_bytes(&path, fs::read(&path).expect("readable input"));
            let shown: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
            assert_eq!(shown.len(), 1, "{name}: {shown:?}");
            assert!(shown[0].contains(message), "{name}: {shown:?}");
            assert_eq!(report.objects, 0, "{name}");
        }
    }
}
