//! NetworkPolicy in the datapath's maps (`ep_policy`, `policy_rules`,
//! `policy_peers` in `maps.h`): the compiled rules of every local endpoint laid
//! out as slots, peers as LPM prefixes keyed by slot (an `except` block is a
//! longer prefix that does not match), ports as up to four ranges a slot.

use std::net::Ipv4Addr;

use lumen_api::Ipv4Cidr;

use super::abi::{
    EpPolicy, MAX_POLICY_RULES, MAX_RULES_PER_DIRECTION, POL_EGRESS, POL_INGRESS,
    POL_ISOLATED_EGRESS, POL_ISOLATED_INGRESS, PeerKey, PolicyRule, PortRange, RULE_PORTS, be_addr,
};

/// One rule of one endpoint and direction, as the compiler hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    /// The id flows carry to name this rule (non-zero).
    pub id: u16,
    /// Peer prefixes: `true` matches, `false` is an `except` inside a match.
    pub peers: Vec<(Ipv4Cidr, bool)>,
    /// (protocol, first port, last port); `None`: every protocol and port.
    pub ports: Option<Vec<(u8, u16, u16)>>,
}

/// One direction of one endpoint: isolated with a default-deny id, and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionRules {
    pub deny_id: u16,
    pub rules: Vec<RuleEntry>,
}

/// Everything the datapath needs about one local endpoint's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRules {
    pub ip: Ipv4Addr,
    pub ingress: Option<DirectionRules>,
    pub egress: Option<DirectionRules>,
}

/// Why compiled rules do not fit the datapath.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "endpoint {ip} has {slots} rule slots in one direction; the datapath holds {MAX_RULES_PER_DIRECTION}"
    )]
    TooManyRules { ip: Ipv4Addr, slots: usize },
    #[error(
        "the node's policies need more than half of the datapath's {MAX_POLICY_RULES} rule slots"
    )]
    TooManySlots,
}

/// The maps' contents for a set of endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub endpoints: Vec<(u32, EpPolicy)>,
    pub rules: Vec<(u32, PolicyRule)>,
    /// (prefix length incl. the 32 bits of slot, key, match).
    pub peers: Vec<(u32, PeerKey, u32)>,
}

impl Layout {
    /// Lay out `endpoints` in slots `base .. base + MAX_POLICY_RULES / 2`: the
    /// datapath alternates halves, so a change is written beside the rules in
    /// force and endpoints switch to it one atomic update at a time.
    pub fn new(endpoints: &[EndpointRules], base: u32) -> Result<Self, LayoutError> {
        let mut out = Self::default();
        let mut next: u32 = base;
        let end = base + MAX_POLICY_RULES / 2;
        for ep in endpoints {
            let mut value = EpPolicy::default();
            for (index, flag, dir) in [
                (POL_INGRESS, POL_ISOLATED_INGRESS, &ep.ingress),
                (POL_EGRESS, POL_ISOLATED_EGRESS, &ep.egress),
            ] {
                let Some(dir) = dir else {
                    continue;
                };
                value.isolated |= flag;
                value.deny_rule[index] = dir.deny_id;
                let first = next;
                for rule in &dir.rules {
                    out.push_rule(rule, &mut next, end)?;
                }
                let slots = (next - first) as usize;
                if slots > MAX_RULES_PER_DIRECTION {
                    return Err(LayoutError::TooManyRules { ip: ep.ip, slots });
                }
                value.first[index] = u16::try_from(first).map_err(|_| LayoutError::TooManySlots)?;
                value.count[index] = slots as u8;
            }
            out.endpoints.push((be_addr(ep.ip), value));
        }
        Ok(out)
    }

    /// A rule's slots: one per four port ranges, each with every peer prefix.
    fn push_rule(&mut self, rule: &RuleEntry, next: &mut u32, end: u32) -> Result<(), LayoutError> {
        let chunks: Vec<Vec<(u8, u16, u16)>> = match &rule.ports {
            None => vec![Vec::new()],
            Some(ports) => ports.chunks(RULE_PORTS).map(<[_]>::to_vec).collect(),
        };
        for chunk in chunks {
            if *next >= end {
                return Err(LayoutError::TooManySlots);
            }
            let mut slot = PolicyRule {
                id: rule.id,
                nports: chunk.len() as u8,
                ..PolicyRule::default()
            };
            for (i, (proto, from, to)) in chunk.iter().enumerate() {
                slot.ports[i] = PortRange {
                    proto: *proto,
                    _pad: 0,
                    from: *from,
                    to: *to,
                };
            }
            self.rules.push((*next, slot));
            for (cidr, matches) in &rule.peers {
                let key = PeerKey {
                    slot: *next,
                    addr: be_addr(cidr.addr()),
                };
                self.peers
                    .push((32 + u32::from(cidr.prefix()), key, u32::from(*matches)));
            }
            *next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn lays_out_slots_ports_and_peers() {
        let ports: Vec<(u8, u16, u16)> = (0..5).map(|i| (6, 80 + i, 80 + i)).collect();
        let eps = [EndpointRules {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            ingress: Some(DirectionRules {
                deny_id: 7,
                rules: vec![RuleEntry {
                    id: 3,
                    peers: vec![(cidr("10.0.0.0/8"), true), (cidr("10.1.0.0/16"), false)],
                    ports: Some(ports),
                }],
            }),
            egress: Some(DirectionRules {
                deny_id: 8,
                rules: vec![],
            }),
        }];
        let l = Layout::new(&eps, 0).expect("fits");
        let (_, ep) = l.endpoints[0];
        assert_eq!(ep.isolated, POL_ISOLATED_INGRESS | POL_ISOLATED_EGRESS);
        assert_eq!(ep.deny_rule, [7, 8]);
        assert_eq!(
            (ep.first[POL_INGRESS], ep.count[POL_INGRESS]),
            (0, 2),
            "5 ports: 2 slots"
        );
        assert_eq!(ep.count[POL_EGRESS], 0, "isolated without rules: deny all");
        assert_eq!(l.rules[0].1.nports, 4);
        assert_eq!(l.rules[1].1.nports, 1);
        assert_eq!(l.rules[1].1.ports[0].from, 84);
        assert_eq!(l.peers.len(), 4, "both prefixes in both slots");
        assert_eq!(l.peers[1].0, 48);
        assert_eq!(l.peers[1].2, 0, "except does not match");
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let rules = (1..=65)
            .map(|id| RuleEntry {
                id,
                peers: vec![],
                ports: None,
            })
            .collect();
        let eps = [EndpointRules {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            ingress: Some(DirectionRules { deny_id: 1, rules }),
            egress: None,
        }];
        assert!(matches!(
            Layout::new(&eps, 0),
            Err(LayoutError::TooManyRules { slots: 65, .. })
        ));
    }
}
