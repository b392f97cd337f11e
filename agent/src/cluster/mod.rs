//! Cluster state: the nodes, namespaces, pods and NetworkPolicies the agent needs
//! to know, behind one trait with two sources — a manifest directory of Kubernetes YAML (the lab,
//! and anyone without an API server) and, later, Kubernetes watchers.

pub mod dirwatch;
pub mod manifest;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use lumen_api::Ipv4Cidr;
use lumen_api::flow::Protocol;
use tokio::sync::watch;

/// A node of the cluster, as far as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidr: Option<Ipv4Cidr>,
    pub internal_ip: Option<Ipv4Addr>,
}

/// A pod, as far as attribution and policy need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// The named container ports of all its containers: NetworkPolicy's named
    /// ports resolve against them.
    pub ports: Vec<NamedPort>,
}

/// A named container port (`spec.containers[].ports[]` with a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Everything the sources know, replaced whole on every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// NetworkPolicies as written, by (namespace, name); the policy engine
    /// validates them.
    pub policies: BTreeMap<(String, String), NetworkPolicy>,
    /// Objects of kind NetworkPolicy that do not even read as one (a field of
    /// the wrong type, a required field missing), by (namespace, name), with
    /// the reason: the engine refuses them like invalid policies.
    pub unreadable_policies: BTreeMap<(String, String), String>,
}

/// A source of cluster state: a watch channel that always holds the latest
/// complete state.
pub trait ClusterSource {
    fn watch(&self) -> watch::Receiver<Arc<ClusterState>>;
}

impl ClusterState {
    pub fn add_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let pod_cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| match c.parse() {
                Ok(cidr) => Some(cidr),
                Err(error) => {
                    tracing::warn!(node = %name, cidr = c, %error, "ignoring bad podCIDR");
                    None
                }
            });
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok());
        self.nodes.insert(
            name.clone(),
            NodeInfo {
                name,
                pod_cidr,
                internal_ip,
            },
        );
    }

    pub fn add_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.clone() {
            self.namespaces
                .insert(name, ns.metadata.labels.clone().unwrap_or_default());
        }
    }

    pub fn add_pod(&mut self, pod: &Pod) {
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let info = PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            ports: named_ports(pod),
        };
        self.pods.insert((namespace, name), info);
    }

    pub fn add_policy(&mut self, policy: &NetworkPolicy) {
        let Some(name) = policy.metadata.name.clone() else {
            return;
        };
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        self.policies.insert((namespace, name), policy.clone());
    }

    pub fn add_unreadable_policy(&mut self, namespace: Option<&str>, name: &str, reason: String) {
        let namespace = namespace.unwrap_or("default").to_owned();
        self.unreadable_policies
            .insert((namespace, name.to_owned()), reason);
    }

    /// Add `other`'s objects; an object both have becomes `other`'s.
    pub fn merge(&mut self, other: &Self) {
        let Self {
            nodes,
            namespaces,
            pods,
            policies,
            unreadable_policies,
        } = other;
        self.nodes.extend(nodes.clone());
        self.namespaces.extend(namespaces.clone());
        self.pods.extend(pods.clone());
        self.policies.extend(policies.clone());
        self.unreadable_policies.extend(unreadable_policies.clone());
    }
}

/// A Kubernetes protocol name (`TCP`, `UDP`, `SCTP`: exact, as the API server
/// accepts them).
pub fn k8s_protocol(name: &str) -> Option<Protocol> {
    match name {
        "TCP" => Some(Protocol::TCP),
        "UDP" => Some(Protocol::UDP),
        "SCTP" => Some(Protocol::SCTP),
        _ => None,
    }
}

/// The named ports of every container of `pod`; unnamed ones cannot be referred
/// to by a policy, and invalid ones are skipped with a warning.
fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let parsed = (
                u16::try_from(p.container_port).ok().filter(|&n| n != 0),
                k8s_protocol(protocol),
            );
            let (Some(port), Some(protocol)) = parsed else {
                tracing::warn!(
                    pod = ?pod.metadata.name,
                    port = p.container_port,
                    protocol,
                    "ignoring an invalid container port"
                );
                return None;
            };
            Some(NamedPort {
                name,
                port,
                protocol,
            })
        })
        .collect()
}
