//! The store: per-file and per-object last-good state, removals, directory listing.

use std::fs;

use super::{name, service, svc, write};
use crate::source::manifest::{Allocator, ManifestOptions, ManifestStore, is_manifest_file};

fn ports(store: &ManifestStore, service_name: &str) -> Option<Vec<u16>> {
    let mut allocator = Allocator::in_memory(ManifestOptions::default().service_cidrs);
    let resolution = store.desired_state(&mut allocator);
    resolution
        .state
        .services
        .get(&name(service_name))
        .map(|s| s.ports.iter().map(|p| p.port).collect())
}

#[test]
fn a_broken_document_keeps_its_last_good_object_and_valid_ones_apply() {
    let dir = tempfile::tempdir().unwrap();
    let a = |port: &str| svc("a", "", &format!("    - port: {port}\n"));
    let b = |port: &str| svc("b", "", &format!("    - port: {port}\n"));
    let path = write(
        dir.path(),
        "s.yaml",
        &format!("{}\n---\n{}", a("80"), b("90")),
    );
    let mut store = ManifestStore::default();
    store.load_dir(dir.path()).unwrap();
    assert_eq!(ports(&store, "a"), Some(vec![80]));
    assert_eq!(ports(&store, "b"), Some(vec![90]));

    // b breaks while a changes: a's change applies, b keeps its last good version.
    fs::write(&path, format!("{}\n---\n{}", a("81"), b("0"))).unwrap();
    let report = store.reload_file(&path);
    assert!(report.has_errors());
    assert_eq!(report.kept.len(), 1);
    assert_eq!(report.kept[0].to_string(), "Service default/b");
    assert_eq!(ports(&store, "a"), Some(vec![81]));
    assert_eq!(ports(&store, "b"), Some(vec![90]));

    // A syntax error in the first document hides everything: all is kept.
    fs::write(&path, "apiVersion: v1\nkind: [\n").unwrap();
    let report = store.reload_file(&path);
    assert!(report.has_errors());
    assert_eq!(report.kept.len(), 2);
    assert_eq!(ports(&store, "a"), Some(vec![81]));
    assert_eq!(ports(&store, "b"), Some(vec![90]));

    // Removing b while the file still has an error keeps it...
    fs::write(&path, format!("{}\n---\nkind: Service\n", a("82"))).unwrap();
    assert!(store.reload_file(&path).has_errors());
    assert_eq!(ports(&store, "b"), Some(vec![90]));
    // ...until the file is clean.
    fs::write(&path, a("82")).unwrap();
    let report = store.reload_file(&path);
    assert!(!report.has_errors(), "{:?}", report.problems);
    assert_eq!(report.kept, []);
    assert_eq!(ports(&store, "a"), Some(vec![82]));
    assert_eq!(ports(&store, "b"), None);
}

#[test]
fn a_broken_file_never_disturbs_other_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &svc("a", "", "    - port: 80\n"));
    let b = write(dir.path(), "b.yaml", &svc("b", "", "    - port: 90\n"));
    let mut store = ManifestStore::default();
    store.load_dir(dir.path()).unwrap();
    fs::write(&b, "{{{{").unwrap();
    let report = store.reload_file(&b);
    assert!(report.has_errors());
    assert!(
        report.problems[0]
            .to_string()
            .contains("b.yaml: document 1: invalid YAML")
    );
    assert_eq!(ports(&store, "a"), Some(vec![80]));
    assert_eq!(ports(&store, "b"), Some(vec![90]));
}

#[test]
fn unreadable_files_keep_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.yaml", &svc("a", "", "    - port: 80\n"));
    let mut store = ManifestStore::default();
    store.reload_file(&path);
    fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    let report = store.reload_file(&path);
    assert!(report.problems[0].message.contains("not UTF-8"));
    assert_eq!(ports(&store, "a"), Some(vec![80]));
}

#[test]
fn removed_files_take_their_objects_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &svc("a", "", "    - port: 80\n"));
    let b = write(dir.path(), "b.yml", &svc("b", "", "    - port: 90\n"));
    let mut store = ManifestStore::default();
    store.load_dir(dir.path()).unwrap();
    assert!(store.remove_file(&a).removed);
    assert_eq!(ports(&store, "a"), None);
    // A reload of a file that is gone is a removal.
    fs::remove_file(&b).unwrap();
    assert!(store.reload_file(&b).removed);
    assert_eq!(ports(&store, "b"), None);
    assert_eq!(store.files().count(), 0);
}

#[test]
fn load_dir_reads_manifest_files_only_sorted_and_not_recursively() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.yaml", &svc("b", "", "    - port: 80\n"));
    write(
        dir.path(),
        "a.json",
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}"#,
    );
    write(dir.path(), ".b.yaml.swp", "junk");
    write(dir.path(), "notes.txt", "junk");
    write(dir.path(), "c.yaml~", "junk");
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    write(
        &dir.path().join("sub.yaml"),
        "d.yaml",
        &svc("d", "", "    - port: 80\n"),
    );
    let mut store = ManifestStore::default();
    let reports = store.load_dir(dir.path()).unwrap();
    let files: Vec<_> = reports
        .iter()
        .map(|r| r.file.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(files, ["a.json", "b.yaml"]);
    assert!(reports.iter().all(|r| r.problems.is_empty()));

    // A rescan forgets files that went away.
    fs::remove_file(dir.path().join("a.json")).unwrap();
    let reports = store.load_dir(dir.path()).unwrap();
    assert!(reports[0].removed);
    assert_eq!(store.files().count(), 1);

    let error = ManifestStore::default()
        .load_dir(&dir.path().join("missing"))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot list the manifests directory")
    );
}

#[test]
fn a_file_is_one_file_whichever_way_its_path_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.yaml", &svc("a", "", "    - port: 80\n"));
    let mut store = ManifestStore::default();
    store.load_dir(dir.path()).unwrap();
    let dotted = dir.path().join(".").join("a.yaml");
    fs::write(&path, svc("a", "", "    - port: 81\n")).unwrap();
    let report = store.reload_file(&dotted);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(store.files().count(), 1);
    assert_eq!(ports(&store, "a"), Some(vec![81]));
    assert!(store.remove_file(&dotted).removed);
}

#[test]
fn manifest_file_names() {
    for yes in ["a.yaml", "a.YML", "dir/a.json"] {
        assert!(is_manifest_file(yes.as_ref()), "{yes}");
    }
    for no in [".a.yaml", "a.yaml.swp", "a.txt", "..data", "a"] {
        assert!(!is_manifest_file(no.as_ref()), "{no}");
    }
}

#[test]
fn the_resolved_state_of_a_store_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for (i, svc_name) in ["z", "m", "a"].iter().enumerate() {
        write(
            dir.path(),
            &format!("{i}.yaml"),
            &svc(svc_name, "", "    - port: 80\n"),
        );
    }
    let first = super::resolve_dir(dir.path());
    let second = super::resolve_dir(dir.path());
    assert_eq!(first.state, second.state);
    let names: Vec<_> = first
        .state
        .services
        .keys()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, ["a", "m", "z"]);
    assert!(service(&first, "a").cluster_ip().is_some());
}
