//! Cluster mode's half of the manifest pipeline: objects that the Kubernetes API server sends
//! one at a time, checked by the same code as manifest files and resolved by the same step.
//!
//! ```text
//! API JSON ─parse_object─▶ checked objects (last good kept) ─catalog─▶ resolve ─▶ DesiredState
//! ```
//!
//! The differences from files are deliberate and few: there are no files or documents (a
//! problem names the object and [`API_ORIGIN`]); any cluster IP is accepted (the API server
//! owns the service CIDR); and nothing is allocated (the API server assigns cluster IPs and
//! nodePorts), so a Service it left without one is listed but not programmed.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

use super::{
    ManifestOptions,
    alloc::Allocator,
    catalog::Catalog,
    error::{Context, ManifestError, Severity},
    object::{Kind, ObjectKey},
    parse::{ParsedFile, ParsedObject, parse_object},
    resolve::{Resolution, resolve},
};

/// What problems about API objects name instead of a file.
pub const API_ORIGIN: &str = "kubernetes API";

/// The checked Services and EndpointSlices the API server holds, as last seen.
#[derive(Debug)]
pub struct ApiObjects {
    options: ManifestOptions,
    objects: BTreeMap<ObjectKey, ParsedObject>,
}

impl Default for ApiObjects {
    fn default() -> Self {
        ApiObjects {
            // Every cluster IP is valid: the API server already checked it against its own
            // service CIDR, which sluice does not know.
            options: ManifestOptions {
                service_cidr: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid CIDR"),
            },
            objects: BTreeMap::new(),
        }
    }
}

impl ApiObjects {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Adds or replaces one object, given as the API server's JSON (with `apiVersion` and
    /// `kind`). An object that fails the checks keeps its last good version, as in a file.
    /// Returns what the checks found.
    pub fn apply(&mut self, object: serde_json::Value) -> Vec<ManifestError> {
        let (parsed, problems) = self.check(object);
        if let Some(parsed) = parsed {
            self.objects.insert(parsed.key.clone(), parsed);
        }
        problems
    }

    /// Forgets an object; true when it was held.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = ObjectKey {
            kind,
            namespace: namespace_or_default(namespace).to_owned(),
            name: name.to_owned(),
        };
        self.objects.remove(&key).is_some()
    }

    /// Replaces every object of `kind` with `objects` (a complete list, after a (re-)list):
    /// those not in it are gone. An object of the list that fails the checks keeps its last
    /// good version.
    pub fn replace_kind(
        &mut self,
        kind: Kind,
        objects: impl IntoIterator<Item = serde_json::Value>,
    ) -> Vec<ManifestError> {
        let mut fresh = BTreeMap::new();
        let mut problems = Vec::new();
        let mut broken = Vec::new();
        for object in objects {
            let (namespace, name) = object_name(&object);
            let (parsed, mut found) = self.check(object);
            problems.append(&mut found);
            match parsed {
                Some(parsed) if parsed.key.kind == kind => {
                    fresh.insert(parsed.key.clone(), parsed);
                }
                Some(_) => {}
                None => broken.push(ObjectKey {
                    kind,
                    namespace,
                    name,
                }),
            }
        }
        for key in broken {
            if let Some(old) = self.objects.get(&key) {
                fresh.insert(key, old.clone());
            }
        }
        self.objects.retain(|key, _| key.kind != kind);
        self.objects.extend(fresh);
        problems
    }

    /// The desired state of everything held. Nothing is allocated.
    pub fn desired_state(&self) -> Resolution {
        let origin = Path::new(API_ORIGIN);
        let catalog = Catalog::build(
            self.objects
                .values()
                .map(|object| (origin, std::slice::from_ref(object))),
        );
        resolve(&catalog, &mut Allocator::disabled())
    }

    fn check(&self, object: serde_json::Value) -> (Option<ParsedObject>, Vec<ManifestError>) {
        let mut parsed = ParsedFile::default();
        let context = Context::new(PathBuf::from(API_ORIGIN), None);
        match serde_yaml::to_value(object) {
            Ok(value) => parse_object(value, &context, None, &self.options, &mut parsed),
            Err(e) => parsed.problems.push(context.problem(
                Severity::Error,
                None,
                format!("cannot read the object: {e}"),
            )),
        }
        let valid = !parsed.has_errors();
        let object = parsed.objects.pop().filter(|object| {
            valid && matches!(object.key.kind, Kind::Service | Kind::EndpointSlice)
        });
        (object, parsed.problems)
    }
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        "default"
    } else {
        namespace
    }
}

/// `metadata.namespace` and `metadata.name` of raw JSON, for keeping a broken object's last
/// good version.
fn object_name(object: &serde_json::Value) -> (String, String) {
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or_default();
    (
        namespace_or_default(namespace).to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}
