//! Enrich: give an observed flow its Kubernetes meaning through narrow lookup
//! traits (Hubble's `getters`), so the pipeline neither knows nor cares where
//! pods, nodes and policies come from.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use lumen_api::flow::{Flow, FlowEndpoint, FlowType, PolicyRef, Verdict};
use lumen_api::{Identity, Ipv4Cidr};

use super::decode::{Observed, Side};
use crate::cluster::ClusterState;

/// A pod as flows name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Pods by address.
pub trait PodLookup {
    fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodMeta>;
}

/// Nodes by their own address or by a pod address in their pod CIDR.
pub trait NodeLookup {
    fn node_of(&self, ip: Ipv4Addr) -> Option<&str>;
}

/// Policy rules by the datapath's rule handle (0: no policy).
pub trait PolicyLookup {
    fn rule(&self, id: u16) -> Option<PolicyRef>;
}

/// Pods and nodes over one snapshot of the cluster state.
#[derive(Debug, Clone, Default)]
pub struct ClusterLookup {
    pods: HashMap<Ipv4Addr, PodMeta>,
    node_ips: HashMap<Ipv4Addr, String>,
    pod_cidrs: Vec<(Ipv4Cidr, String)>,
}

/// The names of the datapath's rule handles (`datapath::policy`), shared by
/// the policy controller (which replaces them on every change) and the flow
/// pipeline and trace store (which name verdicts).
#[derive(Debug, Clone, Default)]
pub struct PolicyRules(Arc<RwLock<HashMap<u16, PolicyRef>>>);

impl PolicyRules {
    pub fn replace(&self, rules: HashMap<u16, PolicyRef>) {
        if let Ok(mut r) = self.0.write() {
            *r = rules;
        }
    }

    pub fn get(&self, id: u16) -> Option<PolicyRef> {
        self.0.read().ok()?.get(&id).cloned()
    }
}

/// What enrichment looks things up in.
#[derive(Debug, Clone, Copy)]
pub struct Lookups<'a> {
    pub cluster: &'a ClusterLookup,
    pub rules: &'a PolicyRules,
}

impl PodLookup for Lookups<'_> {
    fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodMeta> {
        self.cluster.pod_by_ip(ip)
    }
}

impl NodeLookup for Lookups<'_> {
    fn node_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.cluster.node_of(ip)
    }
}

impl PolicyLookup for Lookups<'_> {
    fn rule(&self, id: u16) -> Option<PolicyRef> {
        (id != 0).then(|| self.rules.get(id))?
    }
}

impl ClusterLookup {
    pub fn new(state: &ClusterState) -> Self {
        let pods = state
            .pods
            .values()
            .filter_map(|p| {
                let meta = PodMeta {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    labels: p.labels.clone(),
                };
                Some((p.ip?, meta))
            })
            .collect();
        let node_ips = state
            .nodes
            .values()
            .filter_map(|n| Some((n.internal_ip?, n.name.clone())))
            .collect();
        let pod_cidrs = state
            .nodes
            .values()
            .filter_map(|n| Some((n.pod_cidr?, n.name.clone())))
            .collect();
        Self {
            pods,
            node_ips,
            pod_cidrs,
        }
    }
}

impl PodLookup for ClusterLookup {
    fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodMeta> {
        self.pods.get(&ip)
    }
}

impl NodeLookup for ClusterLookup {
    fn node_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.node_ips.get(&ip).map(String::as_str).or_else(|| {
            self.pod_cidrs
                .iter()
                .find(|(cidr, _)| cidr.contains(ip))
                .map(|(_, n)| n.as_str())
        })
    }
}

fn endpoint(side: &Side, pods: &impl PodLookup, nodes: &impl NodeLookup) -> FlowEndpoint {
    let mut ep = FlowEndpoint::bare(side.ip, side.port, side.identity);
    match pods.pod_by_ip(side.ip) {
        Some(pod) => {
            ep.namespace = Some(pod.namespace.clone());
            ep.pod = Some(pod.name.clone());
            ep.labels = pod.labels.clone();
            ep.node = pod
                .node
                .clone()
                .or_else(|| nodes.node_of(side.ip).map(str::to_owned));
        }
        None => ep.node = nodes.node_of(side.ip).map(str::to_owned),
    }
    ep
}

fn flow_type(src: &FlowEndpoint, dst: &FlowEndpoint) -> FlowType {
    let external = |e: &FlowEndpoint| e.identity == Identity::WORLD && e.node.is_none();
    if external(dst) {
        FlowType::ToExternal
    } else if external(src) {
        FlowType::FromExternal
    } else if src.node.is_some() && src.node == dst.node {
        FlowType::IntraNode
    } else {
        FlowType::InterNode
    }
}

/// The flow record for an observation on `node`, with wall-clock times from
/// `mono_to_epoch` (added to the datapath's monotonic nanoseconds).
pub fn enrich(
    obs: &Observed,
    node: &str,
    mono_to_epoch: u64,
    lookup: &(impl PodLookup + NodeLookup + PolicyLookup),
) -> Flow {
    let source = endpoint(&obs.source, lookup, lookup);
    let destination = endpoint(&obs.destination, lookup, lookup);
    Flow {
        node: node.to_owned(),
        start_ns: obs.first_mono.saturating_add(mono_to_epoch),
        end_ns: obs.last_mono.saturating_add(mono_to_epoch),
        protocol: obs.protocol,
        flow_type: flow_type(&source, &destination),
        source,
        destination,
        forward: obs.forward,
        reverse: obs.reverse,
        forward_delta: obs.forward,
        reverse_delta: obs.reverse,
        tcp_flags: obs.tcp_flags,
        reverse_tcp_flags: obs.reverse_tcp_flags,
        icmp_type_code: obs.icmp_type_code,
        verdict: if obs.drop_reason.is_some() {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: obs.drop_reason,
        ingress_policy: lookup.rule(obs.rules[0]),
        egress_policy: lookup.rule(obs.rules[1]),
        tag: obs.tag,
        traced: obs.traced,
        end_reason: None,
        correlation_id: obs.correlation_id.clone(),
        community_id: obs.community_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use lumen_api::flow::{Counters, Protocol, TcpFlags};

    use super::*;
    use crate::cluster::{NodeInfo, PodInfo};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for (i, name) in [(1u8, "node-1"), (2, "node-2")] {
            s.nodes.insert(
                name.into(),
                NodeInfo {
                    name: name.into(),
                    pod_cidr: Some(Ipv4Cidr::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("cidr")),
                    internal_ip: Some(Ipv4Addr::new(192, 0, 2, 10 + i)),
                },
            );
        }
        s.pods.insert(
            ("default".into(), "web".into()),
            PodInfo {
                namespace: "default".into(),
                name: "web".into(),
                node: Some("node-2".into()),
                labels: BTreeMap::from([("app".into(), "web".into())]),
                ip: Some(Ipv4Addr::new(10, 244, 2, 5)),
                ports: Vec::new(),
            },
        );
        s.pods.insert(
            ("default".into(), "client".into()),
            PodInfo {
                namespace: "default".into(),
                name: "client".into(),
                node: Some("node-1".into()),
                labels: BTreeMap::new(),
                ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
                ports: Vec::new(),
            },
        );
        s
    }

    fn obs(src: Ipv4Addr, sid: u32, dst: Ipv4Addr, did: u32) -> Observed {
        let side = |ip, id| Side {
            ip,
            port: 1,
            identity: Identity(id),
        };
        Observed {
            source: side(src, sid),
            destination: side(dst, did),
            protocol: Protocol::TCP,
            first_mono: 10,
            last_mono: 20,
            forward: Counters::default(),
            reverse: Counters::default(),
            tcp_flags: TcpFlags::default(),
            reverse_tcp_flags: TcpFlags::default(),
            icmp_type_code: None,
            drop_reason: None,
            tag: None,
            traced: false,
            correlation_id: String::new(),
            community_id: String::new(),
            rules: [5, 0],
        }
    }

    #[test]
    fn names_pods_nodes_and_the_flow_type() {
        let cluster = ClusterLookup::new(&state());
        let rules = PolicyRules::default();
        rules.replace(HashMap::from([(
            5,
            PolicyRef {
                namespace: "default".into(),
                name: "web".into(),
                rule: "ingress[0]".into(),
                action: lumen_api::flow::RuleAction::Allow,
            },
        )]));
        let lookup = Lookups {
            cluster: &cluster,
            rules: &rules,
        };
        let client = Ipv4Addr::new(10, 244, 1, 5);
        let web = Ipv4Addr::new(10, 244, 2, 5);
        let f = enrich(&obs(client, 261, web, 517), "node-1", 1_000, &lookup);
        assert_eq!(f.source.pod_ref().as_deref(), Some("default/client"));
        assert_eq!(f.destination.pod_ref().as_deref(), Some("default/web"));
        assert_eq!(f.destination.labels["app"], "web");
        assert_eq!(f.destination.node.as_deref(), Some("node-2"));
        assert_eq!(f.flow_type, FlowType::InterNode);
        assert_eq!((f.start_ns, f.end_ns), (1_010, 1_020));
        assert_eq!(
            f.ingress_policy.as_ref().map(|p| p.name.as_str()),
            Some("web"),
            "rule ids become policy names"
        );
        assert_eq!(f.egress_policy, None);

        let world = Ipv4Addr::new(203, 0, 113, 10);
        let f = enrich(&obs(client, 261, world, 2), "node-1", 0, &lookup);
        assert_eq!(f.flow_type, FlowType::ToExternal);
        assert_eq!(f.destination.pod, None);
        let f = enrich(&obs(world, 2, client, 261), "node-1", 0, &lookup);
        assert_eq!(f.flow_type, FlowType::FromExternal);

        let other = Ipv4Addr::new(10, 244, 1, 9);
        let f = enrich(&obs(client, 261, other, 265), "node-1", 0, &lookup);
        assert_eq!(f.flow_type, FlowType::IntraNode);
        assert_eq!(f.destination.node.as_deref(), Some("node-1"));
    }
}
