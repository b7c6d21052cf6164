//! Golden fixtures: a manifests directory, resolved and planned for node1 and applied by a new
//! reconciler into empty in-memory tables, must leave exactly the entries its `.maps` file
//! lists. A change of encoding, ids, flags or write rules shows as a diff of that file.
//! `SLUICE_BLESS=1 cargo test -p proxy-user --test golden_maps` rewrites the files; read the
//! diff before committing it.

use std::{fs, path::Path};

use proxy_user::{
    model::IpFamily,
    reconcile::{
        Plan, PlanNode, Reconciler,
        tables::memory::{Capacity, MemoryTables},
    },
    source::manifest::{Allocator, ManifestOptions, ManifestStore},
};

const NODE: &str = "node1";

/// The map entries `dir`'s manifests program on a cluster of `options`' service CIDRs, for
/// node1 with addresses of `node_families`.
fn programmed(dir: &Path, options: &ManifestOptions, node_families: &[IpFamily]) -> String {
    let mut store = ManifestStore::new(options.clone());
    for report in store.load_dir(dir).expect("read the fixture directory") {
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
    let resolution = store.desired_state(&mut Allocator::in_memory(options.service_cidrs.clone()));
    let errors: Vec<_> = resolution
        .problems
        .iter()
        .filter(|p| p.is_error())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let mut tables = MemoryTables::new(Capacity::default());
    let mut reconciler = Reconciler::from_maps(&mut tables).expect("read the empty tables");
    reconciler
        .apply(
            &mut tables,
            &Plan::build(
                &resolution.state,
                &PlanNode::new(NODE, node_families.iter().copied()),
            ),
        )
        .expect("apply");
    tables.reader_violation().expect("a consistent view");
    tables.contents().render()
}

fn check(name: &str, dir: &Path) {
    check_on(name, dir, &ManifestOptions::default(), &[IpFamily::V4]);
}

fn check_on(name: &str, dir: &Path, options: &ManifestOptions, node_families: &[IpFamily]) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.maps"));
    let actual = programmed(dir, options, node_families);
    if std::env::var_os("SLUICE_BLESS").is_some() {
        fs::write(&golden, &actual).expect("write the golden file");
        return;
    }
    let expected = fs::read_to_string(&golden)
        .unwrap_or_else(|err| panic!("{}: {err} (SLUICE_BLESS=1 writes it)", golden.display()));
    assert!(
        actual == expected,
        "{} differs; the tables hold:\n{actual}",
        golden.display()
    );
}

/// The README's demo manifests, planned as the demo runs them: a dual-stack cluster and node.
#[test]
fn the_examples() {
    let options = ManifestOptions {
        service_cidrs: "198.19.0.0/16,fd00:19::/108".parse().expect("valid"),
        ..ManifestOptions::default()
    };
    check_on(
        "examples",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"),
        &options,
        &[IpFamily::V4, IpFamily::V6],
    );
}

#[test]
fn local_policies_affinity_and_endpoint_conditions() {
    check(
        "local-policies",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/local-policies"),
    );
}

/// A dual-stack and an IPv6-only Service on a dual-stack cluster, for a node of both families
/// and for an IPv4-only node.
#[test]
fn dual_stack_and_ipv6_only_services() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dual-stack");
    let options = ManifestOptions {
        service_cidrs: "198.19.0.0/16,fd00:19::/108".parse().expect("valid"),
        ..ManifestOptions::default()
    };
    check_on("dual-stack", &dir, &options, &[IpFamily::V4, IpFamily::V6]);
    check_on("dual-stack-ipv4-node", &dir, &options, &[IpFamily::V4]);
}
