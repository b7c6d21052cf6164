//! Tests of the manifest source: parsing and its errors, the store's last-good rule,
//! resolution and allocation, on files in temporary directories.

mod parse;
mod resolve;
mod store;

use std::path::{Path, PathBuf};

use super::{
    ManifestError, ManifestOptions, ManifestStore, Resolution, Severity,
    parse::{ParsedFile, parse_file},
};
use crate::model::{Service, ServiceName};

pub(super) fn parse(name: &str, text: &str) -> ParsedFile {
    parse_file(Path::new(name), text, &ManifestOptions::default())
}

/// The displayed errors (not warnings or notes) of `text` read as `t.yaml`.
pub(super) fn errors(text: &str) -> Vec<String> {
    only(&parse("t.yaml", text).problems, Severity::Error)
}

pub(super) fn only(problems: &[ManifestError], severity: Severity) -> Vec<String> {
    problems
        .iter()
        .filter(|p| p.severity == severity)
        .map(ToString::to_string)
        .collect()
}

pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub(super) fn name(name: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: name.into(),
    }
}

/// Loads `dir` and resolves it with an in-memory allocator.
pub(super) fn resolve_dir(dir: &Path) -> Resolution {
    resolve_dir_with(dir, &ManifestOptions::default())
}

/// [`resolve_dir`] for a cluster of `options`' families.
pub(super) fn resolve_dir_with(dir: &Path, options: &ManifestOptions) -> Resolution {
    let mut store = ManifestStore::new(options.clone());
    store.load_dir(dir).unwrap();
    store.desired_state(&mut options.in_memory_allocator())
}

pub(super) fn service<'a>(resolution: &'a Resolution, service: &str) -> &'a Service {
    resolution
        .state
        .services
        .get(&name(service))
        .unwrap_or_else(|| panic!("no service {service}: {:#?}", resolution.state))
}

/// A Service document with `ports` (YAML list items) and `extra` spec lines.
pub(super) fn svc(name: &str, extra: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{extra}  ports:\n{ports}"
    )
}

/// A ready pod labelled app=echo with the echo ports.
pub(super) fn pod(name: &str, ip: &str, node: &str, extra_status: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: echo}}
spec:
  nodeName: {node}
  containers:
    - ports:
        - {{name: tcp-echo, containerPort: 8080}}
        - {{name: udp-echo, containerPort: 8081, protocol: UDP}}
status:
  podIP: {ip}
  conditions: [{{type: Ready, status: \"True\"}}]
{extra_status}"
    )
}
