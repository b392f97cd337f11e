//! The kernel's own answer to "how would this flow be decided?": `policy_decide`
//! and `match_rules` of `bpf/policy.h` replayed in user space over the policy
//! maps as the kernel holds them, read back through the agent's map handles.
//! `lumen policy explain` sets it beside the engine's verdict, so a datapath
//! that says something else than the compiled policy shows.
//!
//! Only the maps are read, never the agent's own record of what it wrote: an
//! LPM lookup from user space does longest-prefix matching as BPF's does, so
//! every step is the program's step.

use std::net::Ipv4Addr;

use lumen_api::policy::RuleId;

use super::abi::{
    CFG_NO_FLOWS, CFG_POLICY, EpPolicy, MAX_RULES_PER_DIRECTION, POL_EGRESS, POL_INGRESS,
    POL_ISOLATED_EGRESS, POL_ISOLATED_INGRESS, PeerKey, PolicyRule, RULE_PORTS, be_addr, names,
};
use super::{Datapath, DatapathError};

/// What the datapath decides for a flow opened from `from` to `to`, with the
/// rules as the maps name them (handles, or the engine's ids once named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatapathDecision<Id = RuleId> {
    /// The rule (or default deny) deciding ingress at `to`; 0 when `to` is
    /// not an isolated endpoint of this node.
    pub ingress_rule: Id,
    /// The same for egress at `from`.
    pub egress_rule: Id,
    /// The flow is dropped.
    pub denied: bool,
}

impl DatapathDecision<u16> {
    /// The decision with each handle replaced by the rule id it names.
    pub(crate) fn named(self, id: impl Fn(u16) -> RuleId) -> DatapathDecision {
        DatapathDecision {
            ingress_rule: id(self.ingress_rule),
            egress_rule: id(self.egress_rule),
            denied: self.denied,
        }
    }
}

/// The lookups `policy_decide` makes, each `None` where BPF gets `NULL`.
pub(crate) trait PolicyMaps {
    type Error;
    /// `ep_policy[addr]` (network order).
    fn endpoint(&self, addr: u32) -> Result<Option<EpPolicy>, Self::Error>;
    /// `policy_rules[slot]`.
    fn rule(&self, slot: u32) -> Result<Option<PolicyRule>, Self::Error>;
    /// `policy_peers` looked up with prefix length 64: the longest prefix
    /// holding (`slot`, `addr`).
    fn peer(&self, slot: u32, addr: u32) -> Result<Option<u32>, Self::Error>;
}

/// `port_matches`.
fn port_matches(rule: &PolicyRule, proto: u8, port: u16) -> bool {
    if rule.nports == 0 {
        return true;
    }
    rule.ports
        .iter()
        .take(usize::from(rule.nports).min(RULE_PORTS))
        .any(|r| r.proto == proto && r.from <= port && port <= r.to)
}

/// `match_rules`: the id of the first of `count` slots from `first` that admits
/// `peer`, or 0.
fn match_rules<M: PolicyMaps>(
    maps: &M,
    first: u16,
    count: u8,
    peer: u32,
    proto: u8,
    port: u16,
) -> Result<u16, M::Error> {
    let count = usize::from(count).min(MAX_RULES_PER_DIRECTION);
    for slot in (u32::from(first)..).take(count) {
        let Some(rule) = maps.rule(slot)? else {
            break;
        };
        if !port_matches(&rule, proto, port) {
            continue;
        }
        if maps.peer(slot, peer)?.is_some_and(|m| m != 0) {
            return Ok(rule.id);
        }
    }
    Ok(0)
}

/// `policy_decide`, after `flow_policy`'s rule that protocols without ports
/// are decided with port 0.
pub(crate) fn policy_decide<M: PolicyMaps>(
    maps: &M,
    from: Ipv4Addr,
    to: Ipv4Addr,
    proto: u8,
    port: u16,
) -> Result<DatapathDecision<u16>, M::Error> {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const SCTP: u8 = 132;
    let port = if matches!(proto, TCP | UDP | SCTP) {
        port
    } else {
        0
    };
    let (from, to) = (be_addr(from), be_addr(to));
    let mut decision = DatapathDecision::default();
    if let Some(ep) = maps.endpoint(from)?
        && ep.isolated & POL_ISOLATED_EGRESS != 0
    {
        let (first, count) = (ep.first[POL_EGRESS], ep.count[POL_EGRESS]);
        let mut id = match_rules(maps, first, count, to, proto, port)?;
        if id == 0 {
            id = ep.deny_rule[POL_EGRESS];
            decision.denied = true;
        }
        decision.egress_rule = id;
    }
    if let Some(ep) = maps.endpoint(to)?
        && ep.isolated & POL_ISOLATED_INGRESS != 0
    {
        let (first, count) = (ep.first[POL_INGRESS], ep.count[POL_INGRESS]);
        let mut id = match_rules(maps, first, count, from, proto, port)?;
        if id == 0 {
            id = ep.deny_rule[POL_INGRESS];
            decision.denied = true;
        }
        decision.ingress_rule = id;
    }
    Ok(decision)
}

/// A lookup's "not there" as `None`, anything else as the map's failure.
fn found<V>(
    name: &'static str,
    result: Result<V, aya::maps::MapError>,
) -> Result<Option<V>, DatapathError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::OutOfBounds { .. }) => Ok(None),
        Err(source) => Err(DatapathError::Lookup { name, source }),
    }
}

impl PolicyMaps for Datapath {
    type Error = DatapathError;

    fn endpoint(&self, addr: u32) -> Result<Option<EpPolicy>, DatapathError> {
        found(names::EP_POLICY, self.ep_policy.get(&addr, 0))
    }

    fn rule(&self, slot: u32) -> Result<Option<PolicyRule>, DatapathError> {
        found(names::POLICY_RULES, self.policy_rules.get(&slot, 0))
    }

    fn peer(&self, slot: u32, addr: u32) -> Result<Option<u32>, DatapathError> {
        let key = aya::maps::lpm_trie::Key::new(64, PeerKey { slot, addr });
        found(names::POLICY_PEERS, self.policy_peers.get(&key, 0))
    }
}

impl Datapath {
    /// How the kernel decides a flow opened from `from` to `to` on (`proto`,
    /// `port`), read from its maps: egress if `from` is an isolated endpoint of
    /// this node, ingress if `to` is. With flow tracking or policy off the
    /// kernel decides nothing, and neither does this.
    pub fn decide(
        &self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> Result<DatapathDecision, DatapathError> {
        let config = found(names::CONFIG, self.config.get(&0, 0))?.unwrap_or_default();
        if config.flags & CFG_NO_FLOWS != 0 || config.flags & CFG_POLICY == 0 {
            return Ok(DatapathDecision::default());
        }
        let decision = policy_decide(self, from, to, proto, port)?;
        Ok(decision.named(|handle| self.policy.rule_id(handle)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::path::Path;

    use lumen_api::flow::Protocol;

    use super::*;
    use crate::cluster::ClusterState;
    use crate::cluster::manifest::parse_into;
    use crate::datapath::policy::{Change, Installed};
    use crate::policy::enforce::local_rules;
    use crate::policy::{DirectionVerdict, PolicyEngine};

    /// The maps as a first `Change` fills them, with the kernel's LPM semantics.
    struct Maps {
        endpoints: HashMap<u32, EpPolicy>,
        rules: HashMap<u32, PolicyRule>,
        peers: Vec<(u32, PeerKey, u32)>,
    }

    impl Maps {
        fn new(change: Change) -> Self {
            Self {
                endpoints: change.endpoints.into_iter().collect(),
                rules: change.rules.into_iter().collect(),
                peers: change.peers,
            }
        }
    }

    impl PolicyMaps for Maps {
        type Error = Infallible;

        fn endpoint(&self, addr: u32) -> Result<Option<EpPolicy>, Infallible> {
            Ok(self.endpoints.get(&addr).copied())
        }

        fn rule(&self, slot: u32) -> Result<Option<PolicyRule>, Infallible> {
            Ok(self.rules.get(&slot).copied())
        }

        fn peer(&self, slot: u32, addr: u32) -> Result<Option<u32>, Infallible> {
            let host = |a: u32| u32::from_be_bytes(a.to_ne_bytes());
            let best = self
                .peers
                .iter()
                .filter(|(len, key, _)| {
                    let bits = len - 32;
                    let mask = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    key.slot == slot && host(key.addr) & mask == host(addr) & mask
                })
                .max_by_key(|(len, _, _)| *len);
            Ok(best.map(|(_, _, matches)| *matches))
        }
    }

    fn state(yaml: &str) -> ClusterState {
        let mut s = ClusterState::default();
        parse_into(&mut s, Path::new("test.yaml"), yaml);
        s
    }

    const PODS: &str = "kind: Namespace\nmetadata: {name: x}\n---\n\
        kind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\nspec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}\nstatus: {podIP: 10.0.0.1}\n---\n\
        kind: Pod\nmetadata: {name: b, namespace: x, labels: {pod: b}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.2}\n---\n\
        kind: Pod\nmetadata: {name: c, namespace: x, labels: {pod: c}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.3}\n";

    const POLICIES: &str = "---\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: web}, {protocol: UDP, port: 53, endPort: 60}]\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.2/31]}}]\n    ports: [{protocol: SCTP, port: 80}]\n\
        ---\nkind: NetworkPolicy\nmetadata: {name: b-out, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {}}]\n    ports: [{port: web}, {port: 1}, {port: 2}, {port: 3}, {port: 4}, {port: 5}]\n";

    fn id(v: &DirectionVerdict) -> RuleId {
        match v {
            DirectionVerdict::Allowed { rule, .. } | DirectionVerdict::DefaultDeny { rule, .. } => {
                *rule
            }
            DirectionVerdict::NotIsolated | DirectionVerdict::Loopback => 0,
        }
    }

    #[test]
    fn decides_as_the_engine_evaluates() {
        let compiled = PolicyEngine::compile(&state(&format!("{PODS}{POLICIES}")), None);
        assert!(compiled.rejected.is_empty(), "{:?}", compiled.rejected);
        // Every pod is this node's.
        let (change, installed) = Installed::default()
            .plan(&local_rules(&compiled, |_| true))
            .expect("layout fits");
        let maps = Maps::new(change);
        let decide = |src, dst, proto, port| {
            policy_decide(&maps, src, dst, proto, port)
                .expect("infallible")
                .named(|h| installed.rule_id(h))
        };
        let ips = [1, 2, 3].map(|n| Ipv4Addr::new(10, 0, 0, n));
        let outside = Ipv4Addr::new(10, 9, 9, 9);
        let mut denied = 0;
        for &src in ips.iter().chain([&outside]) {
            for &dst in &ips {
                if src == dst {
                    continue;
                }
                for (proto, port) in [
                    (Protocol::TCP, 8080),
                    (Protocol::TCP, 80),
                    (Protocol::TCP, 3),
                    (Protocol::UDP, 55),
                    (Protocol::UDP, 61),
                    (Protocol::SCTP, 80),
                    (Protocol::ICMP, 8080),
                ] {
                    let engine = compiled.evaluate(src, dst, proto, port);
                    let kernel = decide(src, dst, proto.0, port);
                    let case = format!("{src} -> {dst} {proto}/{port}");
                    assert_eq!(kernel.egress_rule, id(&engine.egress), "egress {case}");
                    assert_eq!(kernel.ingress_rule, id(&engine.ingress), "ingress {case}");
                    assert_eq!(kernel.denied, !engine.allowed(), "{case}");
                    denied += usize::from(kernel.denied);
                }
            }
        }
        assert!(denied > 10, "the grid has denials ({denied})");
        // The named port resolves to a's 8080 (an entry of its own); five
        // numeric ports take two slots. All three carry the rule's one id.
        let b_to_a = decide(ips[1], ips[0], 6, 8080);
        assert!(!b_to_a.denied && b_to_a.egress_rule != 0 && b_to_a.ingress_rule != 0);
        for port in [1, 5] {
            let b_to_c = decide(ips[1], ips[2], 6, port);
            assert_eq!(b_to_c.egress_rule, b_to_a.egress_rule, "port {port}");
            assert!(!b_to_c.denied, "port {port}");
        }
    }

    #[test]
    fn an_endpoint_that_is_not_isolated_decides_nothing() {
        let compiled = PolicyEngine::compile(&state(PODS), None);
        let (change, _) = Installed::default()
            .plan(&local_rules(&compiled, |_| true))
            .expect("layout");
        let maps = Maps::new(change);
        let d = policy_decide(
            &maps,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            80,
        )
        .expect("infallible");
        assert_eq!(d, DatapathDecision::<u16>::default());
    }
}
