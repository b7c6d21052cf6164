//! Checks of a v1 Node.

use super::{NameRule, check_name};
use crate::{
    model::NodeState,
    source::manifest::{error::Problems, k8s, object::NodeDef},
};

pub(crate) fn check_node(raw: &k8s::Node, p: &mut Problems) -> Option<NodeDef> {
    let meta = &raw.metadata;
    if meta
        .namespace
        .as_deref()
        .is_some_and(|namespace| !namespace.is_empty())
    {
        p.note("metadata.namespace", "is ignored: Nodes are cluster-scoped");
    }
    let name = check_name(meta, NameRule::Subdomain, p)?;
    let tainted = raw
        .spec
        .taints
        .iter()
        .any(|taint| taint.key.as_deref() == Some(NodeState::TO_BE_DELETED_TAINT));
    Some(NodeDef {
        name,
        state: NodeState {
            draining: meta.deletion_timestamp.is_some() || tainted,
            labels: meta.labels.clone(),
        },
    })
}
