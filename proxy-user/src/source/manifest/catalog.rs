//! The merged view of every file's objects, indexed the way resolution looks them up. An
//! object defined in two files is taken from the first file (by path) and reported.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    error::{Context, ManifestError, Severity},
    object::{EndpointsDef, NodeDef, Object, ObjectKey, PodDef, ServiceDef, SliceDef},
    parse::ParsedObject,
};
use crate::model::ServiceName;

/// A service and where it was defined, for problems found while resolving it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocatedService<'a> {
    pub file: &'a Path,
    pub document: usize,
    pub def: &'a ServiceDef,
}

impl LocatedService<'_> {
    pub fn context(&self) -> Context {
        let mut context = Context::new(self.file, Some(self.document));
        context.object = Some(
            ObjectKey {
                kind: super::object::Kind::Service,
                namespace: self.def.name.namespace.clone(),
                name: self.def.name.name.clone(),
            }
            .object_ref(),
        );
        context
    }
}

#[derive(Debug, Default)]
pub(crate) struct Catalog<'a> {
    pub services: BTreeMap<ServiceName, LocatedService<'a>>,
    /// IPv4 slices by the service they belong to, in slice-name order.
    pub slices: BTreeMap<ServiceName, Vec<&'a SliceDef>>,
    pub endpoints: BTreeMap<ServiceName, &'a EndpointsDef>,
    /// Pods by namespace, in name order.
    pub pods: BTreeMap<String, Vec<&'a PodDef>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, &'a NodeDef>,
    pub problems: Vec<ManifestError>,
}

impl<'a> Catalog<'a> {
    /// Builds the catalog from files in the order given (the first definition wins).
    pub fn build(files: impl IntoIterator<Item = (&'a Path, &'a [ParsedObject])>) -> Self {
        let mut catalog = Catalog::default();
        let mut seen: BTreeMap<&ObjectKey, (&Path, usize)> = BTreeMap::new();
        let mut slices: BTreeMap<ServiceName, Vec<&SliceDef>> = BTreeMap::new();
        let mut pods: BTreeMap<String, Vec<&PodDef>> = BTreeMap::new();
        for (file, objects) in files {
            for parsed in objects {
                if let Some((first_file, first_document)) = seen.get(&parsed.key) {
                    let mut context = Context::new(file, Some(parsed.document));
                    context.object = Some(parsed.key.object_ref());
                    catalog.problems.push(context.problem(
                        Severity::Error,
                        Some("metadata.name"),
                        format!(
                            "{} is also defined in {} (document {first_document}), which is \
                             used: remove one of them",
                            parsed.key,
                            PathBuf::from(first_file).display()
                        ),
                    ));
                    continue;
                }
                seen.insert(&parsed.key, (file, parsed.document));
                match &parsed.object {
                    Object::Service(def) => {
                        catalog.services.insert(
                            def.name.clone(),
                            LocatedService {
                                file,
                                document: parsed.document,
                                def,
                            },
                        );
                    }
                    Object::EndpointSlice(def) => {
                        if let (Some(_), Some(service)) = (def.family, &def.service) {
                            let name = ServiceName {
                                namespace: def.namespace.clone(),
                                name: service.clone(),
                            };
                            slices.entry(name).or_default().push(def);
                        }
                    }
                    Object::Endpoints(def) => {
                        let name = ServiceName {
                            namespace: def.namespace.clone(),
                            name: def.name.clone(),
                        };
                        catalog.endpoints.insert(name, def);
                    }
                    Object::Pod(def) => pods.entry(def.namespace.clone()).or_default().push(def),
                    Object::Node(def) => {
                        catalog.nodes.insert(def.name.clone(), def);
                    }
                }
            }
        }
        for list in slices.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        for list in pods.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        catalog.slices = slices;
        catalog.pods = pods;
        catalog
    }
}
