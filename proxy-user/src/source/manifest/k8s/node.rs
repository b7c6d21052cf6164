//! v1 Node: the labels (zone) and deletion signals of the nodes in a standalone setup.

use serde::Deserialize;

use super::{ObjectMeta, nullable};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Node {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NodeSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NodeSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub taints: Vec<Taint>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Taint {
    pub key: Option<String>,
}
