//! The policy engine: the cluster's NetworkPolicies compiled into rules per
//! endpoint, and verdicts answered from those rules alone, so `evaluate` and
//! the BPF maps generated from the same form cannot disagree.
//!
//! # The compiled form
//!
//! Every pod with an address is an [`EndpointPolicy`]. Per direction it is either
//! not isolated (`None`: no policy selects it for that direction, so everything
//! passes) or isolated ([`DirectionRules`]): the rule id of its default deny (the
//! first isolating policy, by namespace then name), then the allowing
//! [`RuleEntry`]s of every policy selecting it, in evaluation order (policies
//! by namespace and name, rules by index). An entry is
//!
//! - `id`: the rule's id (non-zero, unique in one compilation; the datapath
//!   writes it into flow entries and [`Compiled::rule`] names it). A policy's
//!   default deny of a direction has an id too. Ids are kept from the previous
//!   compilation for the same rule, and freed ids are not reused at once, so
//!   flows recorded under the old ids keep their names;
//! - `peers`: a [`CidrSet`] of disjoint IPv4 CIDRs. Pod peers are the /32s of
//!   the selected pods, an `ipBlock` is its CIDR with the `except` blocks cut
//!   out, an empty peer list is `0.0.0.0/0`. The set is the peer's address: the
//!   source for ingress, the destination for egress;
//! - `ports`: [`Ports::Any`] (no ports in the rule: every protocol and port) or
//!   ranges `(protocol, from, to)`, both ends inclusive. Named ports are already
//!   resolved: for ingress against this endpoint's container ports; for egress
//!   against each destination pod's, so an egress rule with named ports has one
//!   entry for its numeric ports and one per group of destination pods that
//!   resolve them alike (peers: those pods' /32s). A named port never matches
//!   an address that is not a pod's.
//!
//! Several entries may share an id. A rule whose ports resolve to nothing for
//! an endpoint has no entry there: an entry never has an empty port list.
//!
//! A packet from `src` to `dst` passes egress at `src` (if `src` is a pod) and
//! ingress at `dst` (if `dst` is a pod): in each, an isolated endpoint needs an
//! entry whose peers hold the other address and whose ports hold the packet's
//! protocol and port. A pod sending to its own address is never isolated (the
//! packet stays in the pod). Replies of allowed connections are the stateful
//! datapath's business, not the engine's.
//!
//! Policies that fail validation (or do not even read as a NetworkPolicy:
//! `ClusterState::unreadable_policies`) are not compiled; they are listed in
//! [`Compiled::rejected`], and the previous compilation's accepted version of
//! the same policy, if any, stays in force.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use lumen_api::Ipv4Cidr;
use lumen_api::flow::{PolicyRef, Protocol, RuleAction};

use super::cidrs::CidrSet;
use super::model::{Namespaces, Peer, Policy, PolicyError, PortMatch, Rule};
use crate::cluster::{ClusterState, PodInfo};

/// The label the API server puts on every namespace, with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why a policy is not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error("not a NetworkPolicy: {reason}")]
    Unreadable { reason: String },
    #[error("the policies in force need more than {} rule ids", u16::MAX)]
    RuleIds,
}

/// A policy that is not compiled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub namespace: String,
    pub name: String,
    pub reason: CompileError,
    /// An earlier version of the policy was accepted and stays in force.
    pub previous_in_force: bool,
}

/// A policy being enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub policy: Arc<Policy>,
    /// This is the previous accepted version: the current one was rejected.
    pub previous: bool,
    /// The pods it selects, by (namespace, name), addressed or not.
    pub selected: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// A pod's compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `None`: not isolated for ingress.
    pub ingress: Option<DirectionRules>,
    pub egress: Option<DirectionRules>,
}

/// An isolated direction of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionRules {
    /// The default deny's rule id, from the first policy isolating the endpoint.
    pub deny_id: u16,
    /// What `deny_id` names (an empty `rule`).
    pub deny: Arc<PolicyRef>,
    /// Allowing entries in evaluation order.
    pub rules: Vec<RuleEntry>,
}

/// One allowing entry; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    pub id: u16,
    pub policy: Arc<PolicyRef>,
    pub peers: Arc<CidrSet>,
    pub ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Every protocol and port.
    Any,
    /// Sorted, never empty.
    Ranges(Vec<PortRange>),
}

/// `from..=to` of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub protocol: Protocol,
    pub from: u16,
    pub to: u16,
}

/// What one direction of a packet's path decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionVerdict {
    /// No policy selects the pod for this direction, or the address is not a
    /// pod's.
    NotIsolated,
    /// A pod talking to its own address: the packet never leaves the pod, and
    /// a pod cannot be isolated from itself.
    Loopback,
    /// The first allowing rule (policies by namespace and name, rules by index).
    Allowed { rule: u16, policy: PolicyRef },
    /// Isolated and no rule allows it; `policy` is the first isolating policy.
    DefaultDeny { rule: u16, policy: PolicyRef },
}

impl DirectionVerdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::DefaultDeny { .. })
    }
}

/// The verdicts of both ends for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// At the source pod.
    pub egress: DirectionVerdict,
    /// At the destination pod.
    pub ingress: DirectionVerdict,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

/// Compiles cluster state; see the module documentation.
#[derive(Debug)]
pub struct PolicyEngine;

/// The cluster's policies compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    policies: Vec<InForce>,
    /// Policies not compiled, by namespace and name.
    pub rejected: Vec<Rejected>,
    endpoints: BTreeMap<(String, String), EndpointPolicy>,
    by_ip: HashMap<Ipv4Addr, (String, String)>,
    rules: BTreeMap<u16, Arc<PolicyRef>>,
    ids: HashMap<RuleKey, u16>,
}

/// What a rule id stands for: a rule, or (`index` `None`) a default deny.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RuleKey {
    namespace: String,
    name: String,
    direction: Direction,
    index: Option<usize>,
}

// === impl PolicyEngine ===

impl PolicyEngine {
    /// Compile `state`'s policies. A policy that fails validation keeps its
    /// version from `previous` in force, if that had one.
    pub fn compile(state: &ClusterState, previous: Option<&Compiled>) -> Compiled {
        let view = View::new(state);
        let mut rejected = Vec::new();
        let mut policies = Vec::new();
        let unreadable = state
            .unreadable_policies
            .iter()
            .filter(|(key, _)| !state.policies.contains_key(*key))
            .map(|(key, reason)| {
                let error = CompileError::Unreadable {
                    reason: reason.clone(),
                };
                (key, Err(error))
            });
        let readable = state.policies.iter().map(|(key, object)| {
            let policy = Policy::validate(&key.0, &key.1, object).map_err(CompileError::from);
            (key, policy)
        });
        let mut all: Vec<_> = readable.chain(unreadable).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        for ((namespace, name), validated) in all {
            let (policy, was_previous) = match validated {
                Ok(policy) => (Arc::new(policy), false),
                Err(error) => {
                    let old = previous.and_then(|p| p.policy(namespace, name));
                    rejected.push(Rejected {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        reason: error,
                        previous_in_force: old.is_some(),
                    });
                    match old {
                        Some(old) => (old.policy.clone(), true),
                        None => continue,
                    }
                }
            };
            let selected = view
                .pods_in(&policy.namespace)
                .filter(|p| policy.pod_selector.matches(&p.labels))
                .map(|p| (p.namespace.clone(), p.name.clone()))
                .collect();
            policies.push(InForce {
                policy,
                previous: was_previous,
                selected,
            });
        }

        let mut endpoints: BTreeMap<(String, String), EndpointPolicy> = BTreeMap::new();
        let mut by_ip = HashMap::new();
        for ((namespace, name), pod) in &state.pods {
            let Some(ip) = pod.ip else { continue };
            by_ip
                .entry(ip)
                .or_insert_with(|| (namespace.clone(), name.clone()));
            endpoints.insert(
                (namespace.clone(), name.clone()),
                EndpointPolicy {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    ip,
                    ingress: None,
                    egress: None,
                },
            );
        }

        let (ids, failed) = allocate_ids(&policies, &endpoints, previous);
        if !failed.is_empty() {
            policies.retain(|p| {
                let key = (p.policy.namespace.clone(), p.policy.name.clone());
                if !failed.contains(&key) {
                    return true;
                }
                rejected.push(Rejected {
                    namespace: key.0,
                    name: key.1,
                    reason: CompileError::RuleIds,
                    previous_in_force: false,
                });
                false
            });
            rejected.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        }

        let mut rules = BTreeMap::new();
        for in_force in &policies {
            let policy = &in_force.policy;
            for (direction, list) in [
                (Direction::Ingress, &policy.ingress),
                (Direction::Egress, &policy.egress),
            ] {
                let Some(list) = list else { continue };
                let Some(&deny_id) = ids.get(&RuleKey::new(policy, direction, None)) else {
                    // Selects no addressed pod: nothing to enforce.
                    continue;
                };
                let deny = Arc::new(policy_ref(policy, String::new(), RuleAction::Drop));
                rules.insert(deny_id, deny.clone());
                let compiled: Vec<CompiledRule> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, rule)| {
                        let id = *ids.get(&RuleKey::new(policy, direction, Some(i)))?;
                        let name = format!("{}[{i}]", direction.name());
                        let reference = Arc::new(policy_ref(policy, name, RuleAction::Allow));
                        rules.insert(id, reference.clone());
                        Some(CompiledRule::new(
                            id, reference, policy, direction, rule, &view,
                        ))
                    })
                    .collect();
                for key in &in_force.selected {
                    let Some(endpoint) = endpoints.get_mut(key) else {
                        continue;
                    };
                    let pod = state.pods.get(key);
                    let side = match direction {
                        Direction::Ingress => &mut endpoint.ingress,
                        Direction::Egress => &mut endpoint.egress,
                    };
                    let side = side.get_or_insert_with(|| DirectionRules {
                        deny_id,
                        deny: deny.clone(),
                        rules: Vec::new(),
                    });
                    for rule in &compiled {
                        rule.entries_for(pod, &mut side.rules);
                    }
                }
            }
        }

        for r in &rejected {
            let known = previous.is_some_and(|p| p.rejected.contains(r));
            if !known {
                tracing::warn!(
                    namespace = %r.namespace,
                    policy = %r.name,
                    reason = %r.reason,
                    previous_in_force = r.previous_in_force,
                    "NetworkPolicy refused"
                );
            }
        }
        Compiled {
            policies,
            rejected,
            endpoints,
            by_ip,
            rules,
            ids,
        }
    }
}

fn policy_ref(policy: &Policy, rule: String, action: RuleAction) -> PolicyRef {
    PolicyRef {
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        rule,
        action,
    }
}

impl RuleKey {
    fn new(policy: &Policy, direction: Direction, index: Option<usize>) -> Self {
        Self {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
            direction,
            index,
        }
    }
}

/// Ids for every rule and default deny of the policies that select an
/// addressed pod: the previous compilation's where it had one, else the lowest
/// id it did not use, else the lowest free. Returns the policies that did not
/// get all their ids.
fn allocate_ids(
    policies: &[InForce],
    endpoints: &BTreeMap<(String, String), EndpointPolicy>,
    previous: Option<&Compiled>,
) -> (HashMap<RuleKey, u16>, Vec<(String, String)>) {
    let wanted: Vec<(&Policy, Vec<RuleKey>)> = policies
        .iter()
        .filter(|p| p.selected.iter().any(|k| endpoints.contains_key(k)))
        .map(|p| {
            let policy = &*p.policy;
            let mut keys = Vec::new();
            for (direction, list) in [
                (Direction::Ingress, &policy.ingress),
                (Direction::Egress, &policy.egress),
            ] {
                if let Some(list) = list {
                    keys.push(RuleKey::new(policy, direction, None));
                    keys.extend((0..list.len()).map(|i| RuleKey::new(policy, direction, Some(i))));
                }
            }
            (policy, keys)
        })
        .collect();

    let slots = usize::from(u16::MAX) + 1;
    let mut used = vec![false; slots];
    let mut used_before = vec![false; slots];
    // Id 0 means "no rule" to the datapath.
    used[0] = true;
    let mut ids = HashMap::new();
    if let Some(previous) = previous {
        for &id in previous.ids.values() {
            used_before[usize::from(id)] = true;
        }
        for (_, keys) in &wanted {
            for key in keys {
                if let Some(&id) = previous.ids.get(key) {
                    used[usize::from(id)] = true;
                    ids.insert(key.clone(), id);
                }
            }
        }
    }
    let mut fresh = 1usize;
    let mut reused = 1usize;
    let mut next = |used: &mut Vec<bool>| -> Option<u16> {
        while fresh < slots && (used[fresh] || used_before[fresh]) {
            fresh += 1;
        }
        let pick = if fresh < slots {
            fresh
        } else {
            while reused < slots && used[reused] {
                reused += 1;
            }
            reused
        };
        let id = u16::try_from(pick).ok()?;
        used[pick] = true;
        Some(id)
    };
    let mut failed = Vec::new();
    for (policy, keys) in wanted {
        let mut got = Vec::new();
        for key in keys {
            if ids.contains_key(&key) {
                continue;
            }
            match next(&mut used) {
                Some(id) => got.push((key, id)),
                None => {
                    failed.push((policy.namespace.clone(), policy.name.clone()));
                    got.clear();
                    break;
                }
            }
        }
        ids.extend(got);
    }
    if !failed.is_empty() {
        ids.retain(|k, _| !failed.contains(&(k.namespace.clone(), k.name.clone())));
    }
    (ids, failed)
}

// === impl Compiled ===

impl Compiled {
    /// The policies in force, by namespace and name.
    pub fn policies(&self) -> &[InForce] {
        &self.policies
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Option<&InForce> {
        self.policies
            .binary_search_by(|p| {
                (p.policy.namespace.as_str(), p.policy.name.as_str()).cmp(&(namespace, name))
            })
            .ok()
            .map(|i| &self.policies[i])
    }

    /// Every addressed pod's compiled policy, by namespace and name.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointPolicy> {
        self.endpoints.values()
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&EndpointPolicy> {
        self.endpoints.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<&EndpointPolicy> {
        self.by_ip.get(&ip).and_then(|k| self.endpoints.get(k))
    }

    /// The rule (or default deny, with an empty `rule`) an id names.
    pub fn rule(&self, id: u16) -> Option<&PolicyRef> {
        self.rules.get(&id).map(|r| &**r)
    }

    /// Every rule id in use and what it names.
    pub fn rules(&self) -> impl Iterator<Item = (u16, &PolicyRef)> {
        self.rules.iter().map(|(id, r)| (*id, &**r))
    }

    /// The verdict for a packet from `src` to `dst` (`port` is ignored for
    /// protocols without ports).
    pub fn evaluate(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: Protocol,
        port: u16,
    ) -> Evaluation {
        let source = self.endpoint_by_ip(src);
        if src == dst && source.is_some() {
            return Evaluation {
                egress: DirectionVerdict::Loopback,
                ingress: DirectionVerdict::Loopback,
            };
        }
        let port = if protocol.has_ports() { port } else { 0 };
        let egress = source.and_then(|e| e.egress.as_ref());
        let ingress = self.endpoint_by_ip(dst).and_then(|e| e.ingress.as_ref());
        Evaluation {
            egress: decide(egress, dst, protocol, port),
            ingress: decide(ingress, src, protocol, port),
        }
    }
}

/// One direction's verdict for a packet to or from `peer`.
fn decide(
    rules: Option<&DirectionRules>,
    peer: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> DirectionVerdict {
    let Some(rules) = rules else {
        return DirectionVerdict::NotIsolated;
    };
    if let Some(entry) = rules
        .rules
        .iter()
        .find(|e| e.peers.contains(peer) && e.ports.matches(protocol, port))
    {
        return DirectionVerdict::Allowed {
            rule: entry.id,
            policy: (*entry.policy).clone(),
        };
    }
    DirectionVerdict::DefaultDeny {
        rule: rules.deny_id,
        policy: (*rules.deny).clone(),
    }
}

impl Ports {
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            Self::Any => true,
            Self::Ranges(ranges) => ranges
                .iter()
                .any(|r| r.protocol == protocol && (r.from..=r.to).contains(&port)),
        }
    }
}

// === impl CompiledRule ===

/// One rule of one policy, with everything that does not depend on the
/// endpoint it is compiled for.
struct CompiledRule {
    id: u16,
    policy: Arc<PolicyRef>,
    direction: Direction,
    peers: Arc<CidrSet>,
    /// `None`: the rule has no ports (every protocol and port).
    numeric: Option<Vec<PortRange>>,
    /// Named ports (protocol, name) left to resolve.
    named: Vec<(Protocol, String)>,
    /// Egress: the destination pods with named ports resolved, grouped alike.
    egress_named: Vec<(Arc<CidrSet>, Vec<PortRange>)>,
}

impl CompiledRule {
    fn new(
        id: u16,
        policy: Arc<PolicyRef>,
        owner: &Policy,
        direction: Direction,
        rule: &Rule,
        view: &View<'_>,
    ) -> Self {
        let peers = Arc::new(if rule.peers.is_empty() {
            CidrSet::any()
        } else {
            CidrSet::new(rule.peers.iter().flat_map(|p| view.peer_cidrs(owner, p)))
        });
        let mut numeric = Vec::new();
        let mut named = Vec::new();
        for spec in &rule.ports {
            match &spec.port {
                PortMatch::Any => numeric.push(PortRange {
                    protocol: spec.protocol,
                    from: 0,
                    to: u16::MAX,
                }),
                PortMatch::Range { from, to } => numeric.push(PortRange {
                    protocol: spec.protocol,
                    from: *from,
                    to: *to,
                }),
                PortMatch::Named(name) => named.push((spec.protocol, name.clone())),
            }
        }
        numeric.sort_unstable();
        numeric.dedup();
        let mut egress_named = Vec::new();
        if direction == Direction::Egress && !named.is_empty() {
            let mut groups: BTreeMap<Vec<PortRange>, Vec<Ipv4Cidr>> = BTreeMap::new();
            for pod in view.pods_within(&peers) {
                let ranges = resolve(&named, Some(pod));
                if let (false, Some(ip)) = (ranges.is_empty(), pod.ip) {
                    groups.entry(ranges).or_default().push(Ipv4Cidr::host(ip));
                }
            }
            egress_named = groups
                .into_iter()
                .map(|(ranges, hosts)| (Arc::new(CidrSet::new(hosts)), ranges))
                .collect();
        }
        Self {
            id,
            policy,
            direction,
            peers,
            numeric: (!rule.ports.is_empty()).then_some(numeric),
            named,
            egress_named,
        }
    }

    /// Append this rule's entries for the endpoint `pod` to `out`.
    fn entries_for(&self, pod: Option<&PodInfo>, out: &mut Vec<RuleEntry>) {
        let entry = |peers: &Arc<CidrSet>, ports| RuleEntry {
            id: self.id,
            policy: self.policy.clone(),
            peers: peers.clone(),
            ports,
        };
        let Some(numeric) = &self.numeric else {
            out.push(entry(&self.peers, Ports::Any));
            return;
        };
        match self.direction {
            Direction::Ingress => {
                let mut ranges = numeric.clone();
                ranges.extend(resolve(&self.named, pod));
                ranges.sort_unstable();
                ranges.dedup();
                if !ranges.is_empty() {
                    out.push(entry(&self.peers, Ports::Ranges(ranges)));
                }
            }
            Direction::Egress => {
                if !numeric.is_empty() {
                    out.push(entry(&self.peers, Ports::Ranges(numeric.clone())));
                }
                for (peers, ranges) in &self.egress_named {
                    out.push(entry(peers, Ports::Ranges(ranges.clone())));
                }
            }
        }
    }
}

/// Named ports as `pod` defines them: same name and protocol.
fn resolve(named: &[(Protocol, String)], pod: Option<&PodInfo>) -> Vec<PortRange> {
    let Some(pod) = pod else {
        return Vec::new();
    };
    let mut out: Vec<PortRange> = named
        .iter()
        .flat_map(|(protocol, name)| {
            pod.ports
                .iter()
                .filter(move |p| p.name == *name && p.protocol == *protocol)
                .map(|p| PortRange {
                    protocol: p.protocol,
                    from: p.port,
                    to: p.port,
                })
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

// === impl View ===

/// The cluster state indexed for selection.
struct View<'a> {
    /// Namespace labels, with the API server's name label; namespaces that
    /// only pods mention are included.
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
    pods_by_namespace: BTreeMap<&'a str, Vec<&'a PodInfo>>,
    pods_by_ip: BTreeMap<Ipv4Addr, &'a PodInfo>,
}

impl<'a> View<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut namespaces: BTreeMap<&str, BTreeMap<String, String>> = state
            .namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels.clone()))
            .collect();
        let mut pods_by_namespace: BTreeMap<&str, Vec<&PodInfo>> = BTreeMap::new();
        let mut pods_by_ip = BTreeMap::new();
        for pod in state.pods.values() {
            namespaces.entry(pod.namespace.as_str()).or_default();
            pods_by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push(pod);
            if let Some(ip) = pod.ip {
                pods_by_ip.entry(ip).or_insert(pod);
            }
        }
        for (name, labels) in &mut namespaces {
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), (*name).to_owned());
        }
        Self {
            namespaces,
            pods_by_namespace,
            pods_by_ip,
        }
    }

    fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &'a PodInfo> + '_ {
        self.pods_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .copied()
    }

    /// A peer's addresses (before the union with the rule's other peers).
    fn peer_cidrs(&self, owner: &Policy, peer: &Peer) -> Vec<Ipv4Cidr> {
        match peer {
            Peer::Block(block) => block.cidrs(),
            Peer::Pods { pods, namespaces } => {
                let in_scope: Vec<&str> = match namespaces {
                    Namespaces::Own => vec![owner.namespace.as_str()],
                    Namespaces::Matching(selector) => self
                        .namespaces
                        .iter()
                        .filter(|(_, labels)| selector.matches(labels))
                        .map(|(name, _)| *name)
                        .collect(),
                };
                in_scope
                    .into_iter()
                    .flat_map(|ns| self.pods_in(ns))
                    .filter(|p| pods.matches(&p.labels))
                    .filter_map(|p| p.ip.map(Ipv4Cidr::host))
                    .collect()
            }
        }
    }

    /// The addressed pods whose address is in `set`.
    fn pods_within(&self, set: &CidrSet) -> Vec<&'a PodInfo> {
        set.cidrs()
            .iter()
            .flat_map(|c| {
                let last = Ipv4Addr::from(u32::from(c.addr()) | !c.mask());
                self.pods_by_ip.range(c.addr()..=last).map(|(_, p)| *p)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicySpec,
    };

    use super::*;
    use crate::cluster::manifest::parse_into;

    /// Namespace x with pods a, b, c (10.0.0.1-3, label pod=<name>), a's
    /// container port web=8080/TCP and b's web=9090/TCP, and `policies`.
    fn state(policies: &str) -> ClusterState {
        let mut yaml = String::from("kind: Namespace\nmetadata: {name: x}\n");
        for (i, pod, ports) in [
            (1, "a", "[{name: web, containerPort: 8080}]"),
            (2, "b", "[{name: web, containerPort: 9090}]"),
            (3, "c", "[]"),
        ] {
            yaml.push_str(&format!(
                "---\nkind: Pod\nmetadata: {{name: {pod}, namespace: x, labels: {{pod: {pod}}}}}\n\
                 spec: {{containers: [{{name: c, ports: {ports}}}]}}\nstatus: {{podIP: 10.0.0.{i}}}\n"
            ));
        }
        for policy in policies.split("---").filter(|p| !p.trim().is_empty()) {
            yaml.push_str(&format!("---\nkind: NetworkPolicy\n{}\n", policy.trim()));
        }
        let mut s = ClusterState::default();
        parse_into(&mut s, Path::new("test.yaml"), &yaml);
        s
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    fn allowed(namespace: &str, name: &str, rule: &str) -> DirectionVerdict {
        let policy = PolicyRef {
            namespace: namespace.into(),
            name: name.into(),
            rule: rule.into(),
            action: RuleAction::Allow,
        };
        DirectionVerdict::Allowed { rule: 0, policy }
    }

    fn denied(namespace: &str, name: &str) -> DirectionVerdict {
        let policy = PolicyRef {
            namespace: namespace.into(),
            name: name.into(),
            rule: String::new(),
            action: RuleAction::Drop,
        };
        DirectionVerdict::DefaultDeny { rule: 0, policy }
    }

    /// The verdict with its rule id checked against `rule()` and then cleared,
    /// so expectations need not know ids.
    fn verdict(c: &Compiled, v: DirectionVerdict) -> DirectionVerdict {
        match v {
            DirectionVerdict::Allowed { rule, policy } => {
                assert_eq!(c.rule(rule), Some(&policy));
                DirectionVerdict::Allowed { rule: 0, policy }
            }
            DirectionVerdict::DefaultDeny { rule, policy } => {
                assert_eq!(c.rule(rule), Some(&policy));
                DirectionVerdict::DefaultDeny { rule: 0, policy }
            }
            other => other,
        }
    }

    fn eval(
        c: &Compiled,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: Protocol,
        port: u16,
    ) -> (DirectionVerdict, DirectionVerdict) {
        let e = c.evaluate(src, dst, proto, port);
        (verdict(c, e.egress), verdict(c, e.ingress))
    }

    const ONLY_B: &str = "metadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}";
    const BAD_P: &str = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}";

    #[test]
    fn a_rejected_update_keeps_the_previous_version() {
        let v1 = PolicyEngine::compile(&state(ONLY_B), None);
        assert!(v1.rejected.is_empty());
        let from_c = |c: &Compiled| eval(c, ip(3), ip(1), Protocol::TCP, 80).1;
        assert_eq!(from_c(&v1), denied("x", "p"));

        let bad = state(BAD_P);
        let v2 = PolicyEngine::compile(&bad, Some(&v1));
        let r = &v2.rejected[0];
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.previous_in_force),
            ("x", "p", true)
        );
        assert_eq!(
            r.reason.to_string(),
            "spec.ingress[0].ports[0].port: 0 is not a valid port number (1-65535)"
        );
        assert_eq!(from_c(&v2), denied("x", "p"), "the old version is enforced");
        assert_eq!(
            eval(&v2, ip(2), ip(1), Protocol::TCP, 80).1,
            allowed("x", "p", "ingress[0]")
        );
        assert!(v2.policy("x", "p").is_some_and(|p| p.previous));

        // Still bad on the next change: still the old version.
        let v3 = PolicyEngine::compile(&bad, Some(&v2));
        assert_eq!(from_c(&v3), denied("x", "p"));
        // Without an accepted version there is nothing to keep.
        let fresh = PolicyEngine::compile(&bad, None);
        assert!(!fresh.rejected[0].previous_in_force);
        assert_eq!(from_c(&fresh), DirectionVerdict::NotIsolated);
        // Deleted: gone, whatever the previous state.
        let v4 = PolicyEngine::compile(&state(""), Some(&v3));
        assert!(v4.policies().is_empty() && v4.rejected.is_empty());
        assert_eq!(from_c(&v4), DirectionVerdict::NotIsolated);
        // Not even a NetworkPolicy (a port that is a list): refused
        // by name, and the old version stays too.
        let unreadable =
            state("metadata: {name: p, namespace: x}\nspec: {ingress: [{ports: [{port: [80]}]}]}");
        let v6 = PolicyEngine::compile(&unreadable, Some(&v1));
        let r = &v6.rejected[0];
        assert!(r.previous_in_force, "{r:?}");
        assert!(
            r.reason.to_string().starts_with("not a NetworkPolicy: "),
            "{}",
            r.reason
        );
        assert_eq!(from_c(&v6), denied("x", "p"));
        // Fixed: the new version.
        let v5 = PolicyEngine::compile(
            &state(ONLY_B.replace("pod: b", "pod: c").as_str()),
            Some(&v3),
        );
        assert_eq!(from_c(&v5), allowed("x", "p", "ingress[0]"));
    }

    #[test]
    fn the_first_policy_and_rule_decide() {
        let c = PolicyEngine::compile(
            &state(
                "metadata: {name: b-second, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n---\n\
                 metadata: {name: a-first, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81}]}, {ports: [{port: 80}, {protocol: UDP}]}]}",
            ),
            None,
        );
        for (src, dst, proto, port, want) in [
            (
                ip(2),
                ip(1),
                Protocol::TCP,
                80,
                allowed("x", "a-first", "ingress[1]"),
            ),
            (
                ip(2),
                ip(1),
                Protocol::TCP,
                81,
                allowed("x", "a-first", "ingress[0]"),
            ),
            (
                ip(2),
                ip(1),
                Protocol::UDP,
                5353,
                allowed("x", "a-first", "ingress[1]"),
            ),
            (ip(2), ip(1), Protocol::TCP, 82, denied("x", "a-first")),
            (ip(2), ip(1), Protocol::ICMP, 0, denied("x", "a-first")),
            (OUTSIDE, ip(1), Protocol::SCTP, 80, denied("x", "a-first")),
            (
                ip(1),
                ip(2),
                Protocol::TCP,
                80,
                allowed("x", "b-second", "ingress[0]"),
            ),
            (ip(1), ip(2), Protocol::TCP, 81, denied("x", "b-second")),
        ] {
            let (egress, ingress) = eval(&c, src, dst, proto, port);
            assert_eq!(
                egress,
                DirectionVerdict::NotIsolated,
                "{src} -> {dst} {proto}/{port}"
            );
            assert_eq!(ingress, want, "{src} -> {dst} {proto}/{port}");
        }
        let (egress, ingress) = eval(&c, ip(1), ip(1), Protocol::TCP, 82);
        assert_eq!(
            (egress, ingress),
            (DirectionVerdict::Loopback, DirectionVerdict::Loopback)
        );
        assert!(c.evaluate(ip(1), ip(1), Protocol::TCP, 82).allowed());
        assert!(!c.evaluate(ip(2), ip(1), Protocol::TCP, 82).allowed());
        let selected: Vec<_> = c
            .policies()
            .iter()
            .map(|p| (p.policy.name.as_str(), p.selected.len()))
            .collect();
        assert_eq!(selected, [("a-first", 1), ("b-second", 3)]);
    }

    #[test]
    fn rule_ids_survive_recompilation() {
        let policy = |name: &str| {
            format!(
                "metadata: {{name: {name}, namespace: x}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress, Egress], ingress: [{{}}], egress: [{{}}, {{}}]}}\n---\n"
            )
        };
        let v1 = PolicyEngine::compile(&state(&(policy("m") + &policy("z"))), None);
        let ids = |c: &Compiled, name: &str| -> Vec<(u16, String)> {
            c.rules()
                .filter(|(_, r)| r.name == name)
                .map(|(id, r)| (id, r.rule.clone()))
                .collect()
        };
        let m = ids(&v1, "m");
        let z = ids(&v1, "z");
        assert_eq!(m.len(), 5, "two default denies and three rules: {m:?}");
        assert!(m.iter().chain(&z).all(|(id, _)| *id != 0));
        // "a" sorts first and "z" is deleted: m keeps its ids, a takes none of z's.
        let v2 = PolicyEngine::compile(&state(&(policy("a") + &policy("m"))), Some(&v1));
        assert_eq!(ids(&v2, "m"), m);
        let a = ids(&v2, "a");
        assert_eq!(a.len(), 5);
        assert!(
            a.iter().all(|(id, _)| !z.iter().any(|(old, _)| old == id)),
            "{a:?} reuses {z:?}"
        );
        let names: Vec<&str> = a.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(names.iter().filter(|r| r.is_empty()).count(), 2);
        assert!(names.contains(&"ingress[0]") && names.contains(&"egress[1]"));
    }

    #[test]
    fn compiled_form_resolves_peers_and_named_ports() {
        let c = PolicyEngine::compile(
            &state(
                "metadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/9]}}, {podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: web}]\n  egress:\n  - ports: [{port: web}, {protocol: UDP, port: 53}]",
            ),
            None,
        );
        let cidrs = |e: &RuleEntry| -> Vec<String> {
            e.peers.cidrs().iter().map(ToString::to_string).collect()
        };
        let range = |protocol, port| {
            Ports::Ranges(vec![PortRange {
                protocol,
                from: port,
                to: port,
            }])
        };

        let a = c.endpoint("x", "a").expect("x/a");
        let ingress = a.ingress.as_ref().expect("isolated for ingress");
        assert_eq!(ingress.rules.len(), 1);
        assert_eq!(cidrs(&ingress.rules[0]), ["10.0.0.2/32", "10.128.0.0/9"]);
        assert_eq!(ingress.rules[0].ports, range(Protocol::TCP, 8080));
        assert_eq!(
            c.endpoint("x", "b")
                .and_then(|b| b.ingress.as_ref())
                .map(|i| i.rules[0].ports.clone()),
            Some(range(Protocol::TCP, 9090))
        );
        // No web port on c: isolated, and no entry (an entry never has an empty port list).
        let c_in = c
            .endpoint("x", "c")
            .and_then(|e| e.ingress.as_ref())
            .expect("x/c isolated");
        assert!(c_in.rules.is_empty());
        assert_eq!(c.rule(c_in.deny_id).map(|r| r.name.as_str()), Some("web"));

        // Egress: UDP/53 anywhere; web per destination pod, never outside.
        let egress = c
            .endpoint("x", "c")
            .and_then(|e| e.egress.as_ref())
            .expect("x/c egress");
        let entries: Vec<(Vec<String>, Ports)> = egress
            .rules
            .iter()
            .map(|e| (cidrs(e), e.ports.clone()))
            .collect();
        assert_eq!(
            entries,
            [
                (vec!["0.0.0.0/0".to_owned()], range(Protocol::UDP, 53)),
                (vec!["10.0.0.1/32".to_owned()], range(Protocol::TCP, 8080)),
                (vec!["10.0.0.2/32".to_owned()], range(Protocol::TCP, 9090)),
            ]
        );
        assert!(egress.rules.iter().all(|e| e.id == egress.rules[0].id));
        for (dst, port, ok) in [
            (ip(2), 9090, true),
            (ip(2), 8080, false),
            (ip(1), 8080, true),
            (OUTSIDE, 8080, false),
        ] {
            assert_eq!(
                c.evaluate(ip(3), dst, Protocol::TCP, port).egress.allowed(),
                ok,
                "{dst}:{port}"
            );
        }
        assert!(
            c.evaluate(ip(3), OUTSIDE, Protocol::UDP, 53)
                .egress
                .allowed()
        );
        // An address outside the cluster is not an endpoint: its egress is not ours to decide.
        assert_eq!(
            c.evaluate(OUTSIDE, ip(3), Protocol::TCP, 1).egress,
            DirectionVerdict::NotIsolated
        );
        assert_eq!(c.endpoint_by_ip(ip(2)).map(|e| e.name.as_str()), Some("b"));
        assert_eq!(c.endpoints().count(), 3);
    }

    #[test]
    fn namespaces_carry_their_name_label() {
        let mut s = state(
            "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
        );
        // y exists only through its pod, as a manifest directory allows.
        let mut pod = s.pods[&("x".to_owned(), "c".to_owned())].clone();
        pod.namespace = "y".into();
        pod.ip = Some(ip(9));
        s.pods.insert(("y".into(), "c".into()), pod);
        let c = PolicyEngine::compile(&s, None);
        assert!(c.evaluate(ip(9), ip(1), Protocol::TCP, 80).allowed());
        assert!(!c.evaluate(ip(3), ip(1), Protocol::TCP, 80).allowed());
    }

    #[test]
    fn rule_ids_run_out_cleanly() {
        let mut s = state("");
        for (name, rules) in [("a", 40_000), ("b", 30_000)] {
            let policy = NetworkPolicy {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("x".into()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    ingress: Some(vec![NetworkPolicyIngressRule::default(); rules]),
                    ..Default::default()
                }),
            };
            s.add_policy(&policy);
        }
        let c = PolicyEngine::compile(&s, None);
        let rejected: Vec<_> = c
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.clone()))
            .collect();
        assert_eq!(rejected, [("b", CompileError::RuleIds)]);
        assert_eq!(c.rules().count(), 40_001);
        assert_eq!(
            eval(&c, ip(2), ip(1), Protocol::TCP, 80).1,
            allowed("x", "a", "ingress[0]")
        );
    }
}
