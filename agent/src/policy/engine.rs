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
//! # Cost
//!
//! A compilation is of the whole cluster, so it is kept proportional to what
//! selectors select: pods are indexed by namespace and label, and a selector's
//! candidates are a posting list (the shortest of its `matchLabels` pairs, or
//! the union of an `In` requirement's values), never every pod; a rule's peer
//! set is computed once per distinct peer list; endpoints that the same
//! policies isolate share one [`DirectionRules`] (unless an ingress rule
//! resolves named ports against each); and a policy whose spec is the same as
//! in `previous` is not validated again.
//!
//! Policies that fail validation (or do not even read as a NetworkPolicy:
//! `ClusterState::unreadable_policies`) are not compiled; they are listed in
//! [`Compiled::rejected`], and the previous compilation's accepted version of
//! the same policy, if any, stays in force.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use lumen_api::Ipv4Cidr;
use lumen_api::flow::{PolicyRef, Protocol, RuleAction};
use lumen_api::policy::RuleId;

use super::cidrs::CidrSet;
use super::model::{Namespaces, Operator, Peer, Policy, PolicyError, PortMatch, Rule, Selector};
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
    /// How many pods it selects, addressed or not.
    pub selected_pods: usize,
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
    /// `None`: not isolated for ingress. Endpoints that the same policies
    /// select share one value when nothing in it depends on the pod (only an
    /// ingress rule with named ports does).
    pub ingress: Option<Arc<DirectionRules>>,
    pub egress: Option<Arc<DirectionRules>>,
}

/// An isolated direction of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionRules {
    /// The default deny's rule id, from the first policy isolating the endpoint.
    pub deny_id: RuleId,
    /// What `deny_id` names (an empty `rule`).
    pub deny: Arc<PolicyRef>,
    /// Allowing entries in evaluation order.
    pub rules: Vec<RuleEntry>,
}

/// One allowing entry; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    pub id: RuleId,
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
    Allowed { rule: RuleId, policy: PolicyRef },
    /// Isolated and no rule allows it; `policy` is the first isolating policy.
    DefaultDeny { rule: RuleId, policy: PolicyRef },
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
    /// By namespace and name.
    endpoints: Vec<EndpointPolicy>,
    /// Index into `endpoints` of the first pod with each address.
    by_ip: HashMap<Ipv4Addr, usize>,
    rules: BTreeMap<RuleId, Arc<PolicyRef>>,
    ids: IdTable,
    /// The next fresh rule id (see `allocate_ids`).
    next_id: RuleId,
    validated: Validations,
}

/// Each policy as validated, by namespace and name: the next compilation
/// validates only the policies whose spec changed (validation reads nothing
/// else).
#[derive(Debug, Clone, Default)]
struct Validations(HashMap<(String, String), Arc<Validated>>);

/// Not part of what was compiled: two compilations of one state are equal
/// whatever each had to validate.
impl PartialEq for Validations {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Validations {}

#[derive(Debug)]
struct Validated {
    spec: Option<NetworkPolicySpec>,
    policy: Result<Arc<Policy>, CompileError>,
}

/// The rule ids of each policy, by namespace and name.
type IdTable = HashMap<String, HashMap<String, PolicyIds>>;

/// One policy's rule ids, per direction (ingress, egress) if it has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PolicyIds([Option<DirectionIds>; 2]);

#[derive(Debug, Clone, PartialEq, Eq)]
struct DirectionIds {
    /// The default deny's.
    deny: RuleId,
    /// Each rule's, by index.
    rules: Vec<RuleId>,
}

// === impl PolicyEngine ===

impl PolicyEngine {
    /// Compile `state`'s policies. A policy that fails validation keeps its
    /// version from `previous` in force, if that had one.
    pub fn compile(state: &ClusterState, previous: Option<&Compiled>) -> Compiled {
        let view = View::new(state);
        let mut rejected = Vec::new();
        let mut policies = Vec::new();
        // The pods each policy of `policies` selects, as indices into `view.pods`.
        let mut selections: Vec<Vec<usize>> = Vec::new();
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
        let mut validated = Validations::default();
        let readable = state.policies.iter().map(|(key, object)| {
            let known = previous
                .and_then(|p| p.validated.0.get(key))
                .filter(|v| v.spec == object.spec);
            let v = match known {
                Some(v) => v.clone(),
                None => Arc::new(Validated {
                    spec: object.spec.clone(),
                    policy: Policy::validate(&key.0, &key.1, object)
                        .map(Arc::new)
                        .map_err(CompileError::from),
                }),
            };
            validated.0.insert(key.clone(), v.clone());
            (key, v.policy.clone())
        });
        let mut all: Vec<_> = readable.chain(unreadable).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        for ((namespace, name), validated) in all {
            let (policy, was_previous) = match validated {
                Ok(policy) => (policy, false),
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
            let selected = view.select(&policy.namespace, &policy.pod_selector);
            policies.push(InForce {
                policy,
                previous: was_previous,
                selected_pods: selected.len(),
            });
            selections.push(selected);
        }

        // Every addressed pod, in `view.pods`' order (by namespace and name).
        let mut endpoints = Vec::new();
        let mut endpoint_pod = Vec::new();
        let mut endpoint_of: Vec<Option<usize>> = vec![None; view.pods.len()];
        let mut by_ip = HashMap::new();
        for (index, ((namespace, name), pod)) in state.pods.iter().enumerate() {
            let Some(ip) = pod.ip else { continue };
            by_ip.entry(ip).or_insert(endpoints.len());
            endpoint_of[index] = Some(endpoints.len());
            endpoint_pod.push(index);
            endpoints.push(EndpointPolicy {
                namespace: namespace.clone(),
                name: name.clone(),
                ip,
                ingress: None,
                egress: None,
            });
        }

        let (ids, next_id) = allocate_ids(&policies, &selections, &endpoint_of, previous);

        // Each policy's directions compiled once, and for every endpoint and
        // direction the policies isolating it, in evaluation order.
        let mut rules = BTreeMap::new();
        let mut peers = PeerSets::default();
        let mut directions: Vec<[Option<CompiledDirection>; 2]> =
            Vec::with_capacity(policies.len());
        let mut isolating: [Vec<Vec<u32>>; 2] = [
            vec![Vec::new(); endpoints.len()],
            vec![Vec::new(); endpoints.len()],
        ];
        for (index, (in_force, selected)) in policies.iter().zip(&selections).enumerate() {
            let policy = &in_force.policy;
            let mut compiled_directions = [None, None];
            let policy_ids = ids
                .get(&policy.namespace)
                .and_then(|names| names.get(&policy.name));
            for (side, direction, list) in [
                (0, Direction::Ingress, &policy.ingress),
                (1, Direction::Egress, &policy.egress),
            ] {
                let Some(list) = list else { continue };
                let Some(direction_ids) = policy_ids.and_then(|p| p.0[side].as_ref()) else {
                    // Selects no addressed pod: nothing to enforce.
                    continue;
                };
                let deny_id = direction_ids.deny;
                let deny = Arc::new(policy_ref(policy, String::new(), RuleAction::Drop));
                rules.insert(deny_id, deny.clone());
                let compiled: Vec<CompiledRule> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, rule)| {
                        let id = *direction_ids.rules.get(i)?;
                        let name = format!("{}[{i}]", direction.name());
                        let reference = Arc::new(policy_ref(policy, name, RuleAction::Allow));
                        rules.insert(id, reference.clone());
                        Some(CompiledRule::new(
                            id, reference, policy, direction, rule, &view, &mut peers,
                        ))
                    })
                    .collect();
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                for e in selected.iter().filter_map(|&pod| endpoint_of[pod]) {
                    isolating[side][e].push(index);
                }
                compiled_directions[side] = Some(CompiledDirection {
                    deny_id,
                    deny,
                    per_pod: compiled.iter().any(CompiledRule::per_pod),
                    rules: compiled,
                });
            }
            directions.push(compiled_directions);
        }

        // The endpoints isolated by the same policies share their rules unless
        // a rule resolves named ports against the pod.
        for (side, isolating) in isolating.iter().enumerate() {
            let mut shared: HashMap<&[u32], Arc<DirectionRules>> = HashMap::new();
            for (e, by) in isolating.iter().enumerate() {
                let compiled: Vec<&CompiledDirection> = by
                    .iter()
                    .filter_map(|&p| directions[p as usize][side].as_ref())
                    .collect();
                let Some(first) = compiled.first() else {
                    continue;
                };
                let pod = view.pods[endpoint_pod[e]];
                let build = || {
                    let mut rules = Vec::new();
                    for rule in compiled.iter().flat_map(|d| &d.rules) {
                        rule.entries_for(Some(pod), &mut rules);
                    }
                    Arc::new(DirectionRules {
                        deny_id: first.deny_id,
                        deny: first.deny.clone(),
                        rules,
                    })
                };
                let rules = if compiled.iter().any(|d| d.per_pod) {
                    build()
                } else {
                    shared.entry(by).or_insert_with(build).clone()
                };
                let endpoint = &mut endpoints[e];
                let slot = if side == 0 {
                    &mut endpoint.ingress
                } else {
                    &mut endpoint.egress
                };
                *slot = Some(rules);
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
            next_id,
            validated,
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

/// Ids for every rule and default deny of the policies that select an
/// addressed pod: the previous compilation's where it had one, else the next
/// value of a counter that only moves forward (past `u32::MAX` it starts over
/// at 1, skipping ids in use), so a freed id is not handed out again while
/// flows may still carry it. Returns the ids and the counter's next value.
fn allocate_ids(
    policies: &[InForce],
    selections: &[Vec<usize>],
    endpoint_of: &[Option<usize>],
    previous: Option<&Compiled>,
) -> (IdTable, RuleId) {
    let wanted: Vec<&Policy> = policies
        .iter()
        .zip(selections)
        .filter(|(_, selected)| selected.iter().any(|&pod| endpoint_of[pod].is_some()))
        .map(|(p, _)| &*p.policy)
        .collect();
    let before = |policy: &Policy| {
        previous
            .and_then(|p| p.ids.get(&policy.namespace))
            .and_then(|names| names.get(&policy.name))
    };
    fn directions(policy: &Policy) -> [Option<&Vec<Rule>>; 2] {
        [policy.ingress.as_ref(), policy.egress.as_ref()]
    }

    // The previous ids of the rules that are still there are kept.
    let mut kept = HashSet::new();
    for &policy in &wanted {
        let Some(old) = before(policy) else { continue };
        for (list, old) in directions(policy).into_iter().zip(&old.0) {
            if let (Some(list), Some(old)) = (list, old) {
                kept.insert(old.deny);
                kept.extend(old.rules.iter().take(list.len()));
            }
        }
    }
    // Id 0 means "no rule" to the datapath.
    let mut counter = previous.map_or(1, |p| p.next_id).max(1);
    let mut next = || {
        while kept.contains(&counter) {
            counter = counter.checked_add(1).unwrap_or(1);
        }
        let id = counter;
        counter = counter.checked_add(1).unwrap_or(1);
        id
    };
    let mut ids = IdTable::new();
    for policy in wanted {
        let old = before(policy);
        let mut got = PolicyIds::default();
        for (side, list) in directions(policy).into_iter().enumerate() {
            let Some(list) = list else { continue };
            let old = old.and_then(|o| o.0[side].as_ref());
            let deny = old.map_or_else(&mut next, |o| o.deny);
            let rules = (0..list.len())
                .map(|i| {
                    old.and_then(|o| o.rules.get(i).copied())
                        .unwrap_or_else(&mut next)
                })
                .collect();
            got.0[side] = Some(DirectionIds { deny, rules });
        }
        ids.entry(policy.namespace.clone())
            .or_default()
            .insert(policy.name.clone(), got);
    }
    (ids, counter)
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
        self.endpoints.iter()
    }

    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&EndpointPolicy> {
        self.endpoints
            .binary_search_by(|e| (e.namespace.as_str(), e.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.endpoints[i])
    }

    pub fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<&EndpointPolicy> {
        self.by_ip.get(&ip).and_then(|&i| self.endpoints.get(i))
    }

    /// The rule (or default deny, with an empty `rule`) an id names.
    pub fn rule(&self, id: RuleId) -> Option<&PolicyRef> {
        self.rules.get(&id).map(|r| &**r)
    }

    /// Every rule id in use and what it names.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &PolicyRef)> {
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
        let egress = source.and_then(|e| e.egress.as_deref());
        let ingress = self.endpoint_by_ip(dst).and_then(|e| e.ingress.as_deref());
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

/// One direction of one policy, compiled.
struct CompiledDirection {
    deny_id: RuleId,
    deny: Arc<PolicyRef>,
    rules: Vec<CompiledRule>,
    /// Some rule's entries depend on the endpoint (`CompiledRule::per_pod`).
    per_pod: bool,
}

/// One rule of one policy, with everything that does not depend on the
/// endpoint it is compiled for.
struct CompiledRule {
    id: RuleId,
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
    fn new<'p>(
        id: RuleId,
        policy: Arc<PolicyRef>,
        owner: &'p Policy,
        direction: Direction,
        rule: &'p Rule,
        view: &View<'p>,
        sets: &mut PeerSets<'p>,
    ) -> Self {
        let peers = sets.of(owner, &rule.peers, view);
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

    /// Whether the entries depend on the endpoint: ingress named ports resolve
    /// against its container ports.
    fn per_pod(&self) -> bool {
        self.direction == Direction::Ingress && self.numeric.is_some() && !self.named.is_empty()
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

// === impl PeerSets ===

/// Rules' peer sets, each computed once per distinct peer list (with the
/// owner's namespace when a peer is looked for there): in a large cluster many
/// policies name the same peers.
#[derive(Default)]
struct PeerSets<'p> {
    sets: HashMap<(Option<&'p str>, &'p [Peer]), Arc<CidrSet>>,
    namespaces: HashMap<&'p Selector, Vec<&'p str>>,
}

impl<'p> PeerSets<'p> {
    /// The addresses `peers` (one rule's) allow; every address if there are none.
    fn of(&mut self, owner: &'p Policy, peers: &'p [Peer], view: &View<'p>) -> Arc<CidrSet> {
        let own = peers
            .iter()
            .any(|p| {
                matches!(
                    p,
                    Peer::Pods {
                        namespaces: Namespaces::Own,
                        ..
                    }
                )
            })
            .then_some(owner.namespace.as_str());
        if let Some(set) = self.sets.get(&(own, peers)) {
            return set.clone();
        }
        let set = Arc::new(if peers.is_empty() {
            CidrSet::any()
        } else {
            let mut cidrs = Vec::new();
            for peer in peers {
                match peer {
                    Peer::Block(block) => cidrs.extend(block.cidrs()),
                    Peer::Pods { pods, namespaces } => {
                        let own = [owner.namespace.as_str()];
                        let in_scope: &[&str] = match namespaces {
                            Namespaces::Own => &own,
                            Namespaces::Matching(selector) => self
                                .namespaces
                                .entry(selector)
                                .or_insert_with(|| view.namespaces_matching(selector)),
                        };
                        for namespace in in_scope {
                            let selected = view.select(namespace, pods);
                            cidrs.extend(
                                selected
                                    .into_iter()
                                    .filter_map(|i| view.pods[i].ip.map(Ipv4Cidr::host)),
                            );
                        }
                    }
                }
            }
            CidrSet::new(cidrs)
        });
        self.sets.insert((own, peers), set.clone());
        set
    }
}

// === impl View ===

/// The cluster state indexed for selection. A selector's candidates are the
/// shortest posting list of its `matchLabels` pairs, or without those the
/// smallest union of an `In` requirement's values, or else its namespace's
/// pods; only candidates are matched against the whole selector.
struct View<'a> {
    /// Every pod, by namespace and name.
    pods: Vec<&'a PodInfo>,
    /// Namespace labels, with the API server's name label; namespaces that
    /// only pods mention are included.
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
    by_namespace: HashMap<&'a str, NamespacePods<'a>>,
    pods_by_ip: BTreeMap<Ipv4Addr, &'a PodInfo>,
}

/// One namespace's pods as ascending indices into `View::pods`: all of them,
/// and every (label key, value, pod) sorted, so the pods of one label are a
/// run of `labelled`.
#[derive(Default)]
struct NamespacePods<'a> {
    all: Vec<usize>,
    labels: Vec<(&'a str, &'a str)>,
    labelled: Vec<usize>,
}

impl<'a> NamespacePods<'a> {
    fn new(pods: &[(usize, &'a PodInfo)]) -> Self {
        let mut entries: Vec<(&str, &str, usize)> = pods
            .iter()
            .flat_map(|&(i, pod)| {
                pod.labels
                    .iter()
                    .map(move |(k, v)| (k.as_str(), v.as_str(), i))
            })
            .collect();
        entries.sort_unstable();
        Self {
            all: pods.iter().map(|&(i, _)| i).collect(),
            labels: entries.iter().map(|&(k, v, _)| (k, v)).collect(),
            labelled: entries.into_iter().map(|(_, _, i)| i).collect(),
        }
    }

    /// The pods labelled `key=value`.
    fn labelled(&self, key: &str, value: &str) -> &[usize] {
        let start = self.labels.partition_point(|&l| l < (key, value));
        let end = start + self.labels[start..].partition_point(|&l| l == (key, value));
        &self.labelled[start..end]
    }
}

impl<'a> View<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut namespaces: BTreeMap<&str, BTreeMap<String, String>> = state
            .namespaces
            .iter()
            .map(|(name, labels)| (name.as_str(), labels.clone()))
            .collect();
        let pods: Vec<&PodInfo> = state.pods.values().collect();
        let mut by_namespace: HashMap<&str, Vec<(usize, &PodInfo)>> = HashMap::new();
        let mut pods_by_ip = BTreeMap::new();
        // Pods come by namespace: one lookup a namespace, not a pod.
        for run in pods
            .iter()
            .enumerate()
            .collect::<Vec<_>>()
            .chunk_by(|a, b| a.1.namespace == b.1.namespace)
        {
            let namespace = run[0].1.namespace.as_str();
            namespaces.entry(namespace).or_default();
            by_namespace
                .entry(namespace)
                .or_default()
                .extend(run.iter().map(|&(i, pod)| (i, *pod)));
        }
        for pod in &pods {
            if let Some(ip) = pod.ip {
                pods_by_ip.entry(ip).or_insert(*pod);
            }
        }
        let by_namespace = by_namespace
            .into_iter()
            .map(|(namespace, pods)| (namespace, NamespacePods::new(&pods)))
            .collect();
        for (name, labels) in &mut namespaces {
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), (*name).to_owned());
        }
        Self {
            pods,
            namespaces,
            by_namespace,
            pods_by_ip,
        }
    }

    /// The pods of `namespace` that `selector` matches, as ascending indices
    /// into `pods`.
    fn select(&self, namespace: &str, selector: &Selector) -> Vec<usize> {
        let Some(pods) = self.by_namespace.get(namespace) else {
            return Vec::new();
        };
        fn shorter<'s>(best: &mut Option<Cow<'s, [usize]>>, list: Cow<'s, [usize]>) {
            if best.as_ref().is_none_or(|b| list.len() < b.len()) {
                *best = Some(list);
            }
        }
        let mut candidates = None;
        for (key, value) in &selector.labels {
            shorter(&mut candidates, Cow::Borrowed(pods.labelled(key, value)));
        }
        if selector.labels.is_empty() {
            for r in &selector.requirements {
                if r.operator == Operator::In {
                    let mut union: Vec<usize> = r
                        .values
                        .iter()
                        .flat_map(|v| pods.labelled(&r.key, v))
                        .copied()
                        .collect();
                    union.sort_unstable();
                    shorter(&mut candidates, Cow::Owned(union));
                }
            }
        }
        let candidates = candidates.unwrap_or(Cow::Borrowed(&pods.all));
        candidates
            .iter()
            .copied()
            .filter(|&i| selector.matches(&self.pods[i].labels))
            .collect()
    }

    /// The namespaces whose labels `selector` matches.
    fn namespaces_matching(&self, selector: &Selector) -> Vec<&'a str> {
        self.namespaces
            .iter()
            .filter(|(_, labels)| selector.matches(labels))
            .map(|(name, _)| *name)
            .collect()
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
            .map(|p| (p.policy.name.as_str(), p.selected_pods))
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
        let ids = |c: &Compiled, name: &str| -> Vec<(RuleId, String)> {
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
    fn rule_ids_go_past_sixteen_bits() {
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
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
        assert_eq!(c.rules().count(), 70_002);
        let (last, rule) = c.rules().last().expect("rules");
        assert_eq!(
            (last, rule.name.as_str(), rule.rule.as_str()),
            (70_002, "b", "ingress[29999]")
        );
        assert_eq!(
            eval(&c, ip(2), ip(1), Protocol::TCP, 80).1,
            allowed("x", "a", "ingress[0]")
        );
    }

    #[test]
    fn only_changed_objects_are_validated_again() {
        let two = format!("{ONLY_B}\n---\n{}", ONLY_B.replace("name: p,", "name: q,"));
        let v1 = PolicyEngine::compile(&state(&two), None);
        let changed = two.replacen("pod: b", "pod: c", 1);
        let v2 = PolicyEngine::compile(&state(&changed), Some(&v1));
        let policy = |c: &Compiled, name: &str| c.policy("x", name).map(|p| p.policy.clone());
        let (p1, p2) = (policy(&v1, "p"), policy(&v2, "p"));
        assert!(
            p1.zip(p2.clone())
                .is_some_and(|(a, b)| !Arc::ptr_eq(&a, &b))
        );
        let (q1, q2) = (policy(&v1, "q"), policy(&v2, "q"));
        assert!(q1.zip(q2).is_some_and(|(a, b)| Arc::ptr_eq(&a, &b)));
        // What was compiled is what a fresh compilation gives.
        let fresh = PolicyEngine::compile(&state(&changed), None);
        assert_eq!(
            p2.map(|p| (*p).clone()),
            policy(&fresh, "p").map(|p| (*p).clone())
        );
        for src in [1, 2, 3] {
            assert_eq!(
                eval(&v2, ip(src), ip(1), Protocol::TCP, 80),
                eval(&fresh, ip(src), ip(1), Protocol::TCP, 80),
                "from {src}"
            );
        }
    }

    #[test]
    fn the_label_index_selects_what_a_scan_selects() {
        let mut s = ClusterState::default();
        for n in 0..4 {
            let labels = [
                ("env", ["prod", "dev"][n % 2]),
                ("team", ["a", "b", "c"][n % 3]),
            ];
            s.namespaces.insert(
                format!("ns{n}"),
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        for i in 0..120u8 {
            let mut labels = BTreeMap::new();
            labels.insert("app".to_owned(), format!("app{}", i % 5));
            if i % 3 != 0 {
                labels.insert(
                    "tier".to_owned(),
                    ["web", "db"][usize::from(i % 2)].to_owned(),
                );
            }
            let namespace = format!("ns{}", i % 4);
            let name = format!("pod{i}");
            s.pods.insert(
                (namespace.clone(), name.clone()),
                PodInfo {
                    namespace,
                    name,
                    node: None,
                    labels,
                    ip: (i % 7 != 0).then(|| Ipv4Addr::new(10, 0, 1, i)),
                    ports: Vec::new(),
                },
            );
        }
        let view = View::new(&s);
        let selectors = [
            "{}",
            "{matchLabels: {app: app1}}",
            "{matchLabels: {app: app1, tier: web}}",
            "{matchLabels: {app: nope}}",
            "{matchExpressions: [{key: tier, operator: In, values: [web, db]}]}",
            "{matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}",
            "{matchExpressions: [{key: tier, operator: DoesNotExist}, {key: app, operator: In, values: [app2, app3]}]}",
            "{matchLabels: {tier: db}, matchExpressions: [{key: app, operator: Exists}]}",
        ];
        for text in selectors {
            let raw: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
                serde_yaml::from_str(text).expect("selector");
            let object = NetworkPolicy {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta::default(),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(raw),
                    ..Default::default()
                }),
            };
            let selector = Policy::validate("ns0", "p", &object)
                .expect("valid")
                .pod_selector;
            for n in 0..5 {
                let namespace = format!("ns{n}");
                let scan: Vec<usize> = (0..view.pods.len())
                    .filter(|&i| view.pods[i].namespace == namespace)
                    .filter(|&i| selector.matches(&view.pods[i].labels))
                    .collect();
                assert_eq!(
                    view.select(&namespace, &selector),
                    scan,
                    "{text} in {namespace}"
                );
            }
        }
    }
}
