//! NetworkPolicy in the datapath's maps (`ep_policy`, `policy_rules`,
//! `policy_peers` in `maps.h`): the compiled rules of every local endpoint laid
//! out as slots, peers as LPM prefixes keyed by slot (an `except` block is a
//! longer prefix that does not match), ports as up to four ranges a slot.
//!
//! One direction's rules are a *run* of consecutive slots. Endpoints whose
//! rules are the same share one run, so a deployment's pods cost the peers of
//! one. [`Installed`] is what the maps hold; [`Installed::plan`] turns the
//! wanted state into a [`Change`] that touches only what differs: runs that
//! are new go into free slots, the endpoints whose rules changed switch to
//! them with one `ep_policy` update each (so no endpoint ever sees a mix of
//! old and new rules), and only then are the runs no endpoint uses any more
//! removed and their slots freed.
//!
//! Rule ids are the engine's ([`RuleId`], 32 bits, cluster-wide); the maps
//! and the flow entries carry 16-bit *handles* that only name the rules of
//! this node's endpoints ([`Handles`]). A handle keeps its rule while any
//! endpoint uses it, and a freed handle goes to the back of the free queue,
//! so it is handed out again as late as possible and a flow decided under it
//! keeps its name.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use lumen_api::Ipv4Cidr;
use lumen_api::policy::RuleId;

use super::abi::{
    EpPolicy, MAX_POLICY_RULES, MAX_RULES_PER_DIRECTION, POL_EGRESS, POL_INGRESS,
    POL_ISOLATED_EGRESS, POL_ISOLATED_INGRESS, PeerKey, PolicyRule, PortRange, RULE_PORTS, be_addr,
};

/// One rule of one endpoint and direction, as the compiler hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleEntry {
    /// The engine's id of this rule (non-zero).
    pub id: RuleId,
    /// Peer prefixes: `true` matches, `false` is an `except` inside a match.
    pub peers: Arc<[(Ipv4Cidr, bool)]>,
    /// (protocol, first port, last port); `None`: every protocol and port.
    pub ports: Option<Vec<(u8, u16, u16)>>,
}

/// One direction of one endpoint: isolated with a default-deny id, and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionRules {
    pub deny_id: RuleId,
    /// Endpoints may share one list: it is laid out once for all of them.
    pub rules: Arc<[RuleEntry]>,
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
        "the node's policies, with the rules they replace, need more than the datapath's {MAX_POLICY_RULES} rule slots"
    )]
    TooManySlots,
    #[error(
        "the node's endpoints are decided by more than the datapath's {} rules and default denies",
        u16::MAX
    )]
    TooManyRuleIds,
}

/// What one change writes, in this order: `rules` and `peers` (new runs, in
/// slots no endpoint uses), then `endpoints` (each switching to its new runs),
/// then the removal of `removed` endpoints and of `stale_peers` (the runs left
/// unused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub rules: Vec<(u32, PolicyRule)>,
    /// (prefix length incl. the 32 bits of slot, key, match).
    pub peers: Vec<(u32, PeerKey, u32)>,
    pub endpoints: Vec<(u32, EpPolicy)>,
    /// Endpoints (network order) no longer isolated.
    pub removed: Vec<u32>,
    pub stale_peers: Vec<(u32, PeerKey)>,
}

impl Change {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.peers.is_empty()
            && self.endpoints.is_empty()
            && self.removed.is_empty()
            && self.stale_peers.is_empty()
    }

    /// Map entries it writes or removes.
    pub fn entries(&self) -> usize {
        self.rules.len()
            + self.peers.len()
            + self.endpoints.len()
            + self.removed.len()
            + self.stale_peers.len()
    }
}

/// The policy maps' contents, as the changes applied so far left them.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// By address (network order).
    endpoints: HashMap<u32, InstalledEndpoint>,
    /// By first slot.
    runs: HashMap<u32, Run>,
    /// First slot by rules.
    by_rules: HashMap<Arc<[RuleEntry]>, u32>,
    free: FreeSlots,
    handles: Handles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InstalledEndpoint {
    value: EpPolicy,
    /// The first slot of its run, per direction (`None`: no rules).
    runs: [Option<u32>; 2],
}

#[derive(Debug, Clone)]
struct Run {
    rules: Arc<[RuleEntry]>,
    slots: u32,
}

// === impl Installed ===

impl Installed {
    /// The `ep_policy` value installed for `addr` (network order).
    pub fn endpoint(&self, addr: u32) -> Option<EpPolicy> {
        self.endpoints.get(&addr).map(|e| e.value)
    }

    /// The handles given out so far, in use or retired, and the rule id each
    /// names (or last named).
    pub fn handles(&self) -> impl Iterator<Item = (u16, RuleId)> + '_ {
        self.handles.named()
    }

    /// The rule id a handle names (or last named); 0 for handle 0.
    pub fn rule_id(&self, handle: u16) -> RuleId {
        self.handles.id(handle)
    }

    /// The change from what is installed to `endpoints`, and what is installed
    /// after it. An address listed twice gets its last entry.
    pub fn plan(&self, endpoints: &[EndpointRules]) -> Result<(Change, Self), LayoutError> {
        let mut change = Change::default();
        let mut next = Self {
            endpoints: HashMap::with_capacity(endpoints.len()),
            runs: self.runs.clone(),
            by_rules: self.by_rules.clone(),
            free: self.free.clone(),
            handles: self.handles.clone(),
        };
        // Every id the endpoints need has a handle before anything is laid out.
        let mut wanted = HashSet::new();
        let mut seen: HashSet<*const RuleEntry> = HashSet::new();
        for dir in endpoints
            .iter()
            .flat_map(|ep| [&ep.ingress, &ep.egress])
            .flatten()
        {
            let ids = std::iter::once(dir.deny_id);
            let rules = seen.insert(dir.rules.as_ptr()).then(|| dir.rules.iter());
            for id in ids.chain(rules.into_iter().flatten().map(|r| r.id)) {
                if wanted.insert(id) {
                    next.handles.take(id)?;
                }
            }
        }
        // Runs found for a list of rules in this change, by the list's address:
        // endpoints sharing one list are looked up once.
        let mut found: HashMap<*const RuleEntry, u32> = HashMap::new();
        for ep in endpoints {
            let addr = be_addr(ep.ip);
            let old = self.endpoints.get(&addr);
            let mut installed = InstalledEndpoint {
                value: EpPolicy::default(),
                runs: [None; 2],
            };
            for (index, flag, dir) in [
                (POL_INGRESS, POL_ISOLATED_INGRESS, &ep.ingress),
                (POL_EGRESS, POL_ISOLATED_EGRESS, &ep.egress),
            ] {
                let Some(dir) = dir else {
                    continue;
                };
                let value = &mut installed.value;
                value.isolated |= flag;
                value.deny_rule[index] = next.handles.handle(dir.deny_id);
                if dir.rules.is_empty() {
                    continue;
                }
                let first = match found.get(&dir.rules.as_ptr()) {
                    Some(&first) => first,
                    None => {
                        let was = old.and_then(|o| o.runs[index]);
                        let first = next.run(&dir.rules, was, ep.ip, &mut change)?;
                        found.insert(dir.rules.as_ptr(), first);
                        first
                    }
                };
                let slots = next.runs.get(&first).map_or(0, |r| r.slots);
                value.first[index] = u16::try_from(first).map_err(|_| LayoutError::TooManySlots)?;
                value.count[index] = u8::try_from(slots).map_err(|_| LayoutError::TooManySlots)?;
                installed.runs[index] = Some(first);
            }
            next.endpoints.insert(addr, installed);
        }
        for (addr, installed) in &next.endpoints {
            if self
                .endpoints
                .get(addr)
                .is_none_or(|o| o.value != installed.value)
            {
                change.endpoints.push((*addr, installed.value));
            }
        }
        change.removed = self
            .endpoints
            .keys()
            .filter(|addr| !next.endpoints.contains_key(addr))
            .copied()
            .collect();
        let used: HashSet<u32> = next
            .endpoints
            .values()
            .flat_map(|e| e.runs.iter().flatten())
            .copied()
            .collect();
        let Self {
            runs,
            by_rules,
            free,
            handles,
            ..
        } = &mut next;
        runs.retain(|&first, run| {
            if used.contains(&first) {
                return true;
            }
            lay_out(&run.rules, first, handles, |_, _, peers| {
                change
                    .stale_peers
                    .extend(peers.iter().map(|(len, key, _)| (*len, *key)));
            });
            by_rules.remove(&run.rules);
            free.release(first, run.slots);
            false
        });
        handles.keep_only(&wanted);
        Ok((change, next))
    }

    /// The first slot of a run holding `rules`: the endpoint's run `was` or
    /// another in use if it holds the same, else a new one laid out in `change`.
    fn run(
        &mut self,
        rules: &Arc<[RuleEntry]>,
        was: Option<u32>,
        ip: Ipv4Addr,
        change: &mut Change,
    ) -> Result<u32, LayoutError> {
        let same = was.filter(|first| self.runs.get(first).is_some_and(|r| r.rules == *rules));
        if let Some(first) = same.or_else(|| self.by_rules.get(rules).copied()) {
            return Ok(first);
        }
        let slots = slot_count(rules);
        if slots > MAX_RULES_PER_DIRECTION {
            return Err(LayoutError::TooManyRules { ip, slots });
        }
        let slots = slots as u32;
        let first = self.free.take(slots).ok_or(LayoutError::TooManySlots)?;
        lay_out(rules, first, &self.handles, |slot, rule, peers| {
            change.rules.push((slot, rule));
            change.peers.extend_from_slice(peers);
        });
        self.runs.insert(
            first,
            Run {
                rules: rules.clone(),
                slots,
            },
        );
        self.by_rules.insert(rules.clone(), first);
        Ok(first)
    }
}

/// A rule's slots: one per four port ranges.
fn rule_slots(rule: &RuleEntry) -> usize {
    rule.ports
        .as_ref()
        .map_or(1, |ports| ports.len().div_ceil(RULE_PORTS))
}

fn slot_count(rules: &[RuleEntry]) -> usize {
    rules.iter().map(rule_slots).sum()
}

/// `rules` laid out from slot `first`: `f(slot, rule, peers)` for each slot,
/// with every peer prefix of the rule keyed by that slot.
fn lay_out(
    rules: &[RuleEntry],
    first: u32,
    handles: &Handles,
    mut f: impl FnMut(u32, PolicyRule, &[(u32, PeerKey, u32)]),
) {
    let mut slot = first;
    let mut peers = Vec::new();
    for rule in rules {
        let chunks: Vec<&[(u8, u16, u16)]> = match &rule.ports {
            None => vec![&[]],
            Some(ports) => ports.chunks(RULE_PORTS).collect(),
        };
        for chunk in chunks {
            let mut value = PolicyRule {
                id: handles.handle(rule.id),
                nports: chunk.len() as u8,
                ..PolicyRule::default()
            };
            for (i, (proto, from, to)) in chunk.iter().enumerate() {
                value.ports[i] = PortRange {
                    proto: *proto,
                    _pad: 0,
                    from: *from,
                    to: *to,
                };
            }
            peers.clear();
            peers.extend(rule.peers.iter().map(|(cidr, matches)| {
                let key = PeerKey {
                    slot,
                    addr: be_addr(cidr.addr()),
                };
                (32 + u32::from(cidr.prefix()), key, u32::from(*matches))
            }));
            f(slot, value, &peers);
            slot += 1;
        }
    }
}

// === impl Handles ===

/// The 16-bit handles of the rule ids this node's endpoints use.
#[derive(Debug, Clone)]
struct Handles {
    /// By rule id, the ids in use.
    by_id: HashMap<RuleId, u16>,
    /// By handle, the id it names or last named (0: never given out).
    ids: Vec<RuleId>,
    /// Handles not in use, the longest free first.
    free: VecDeque<u16>,
}

impl Default for Handles {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            ids: vec![0; usize::from(u16::MAX) + 1],
            // Handle 0 means "no rule" to the datapath.
            free: (1..=u16::MAX).collect(),
        }
    }
}

impl Handles {
    /// `id`'s handle, given out now if it has none.
    fn take(&mut self, id: RuleId) -> Result<u16, LayoutError> {
        if let Some(&handle) = self.by_id.get(&id) {
            return Ok(handle);
        }
        let handle = self.free.pop_front().ok_or(LayoutError::TooManyRuleIds)?;
        self.by_id.insert(id, handle);
        self.ids[usize::from(handle)] = id;
        Ok(handle)
    }

    /// `id`'s handle; 0 if it has none (`plan` gives every id it lays out one).
    fn handle(&self, id: RuleId) -> u16 {
        self.by_id.get(&id).copied().unwrap_or(0)
    }

    fn id(&self, handle: u16) -> RuleId {
        self.ids[usize::from(handle)]
    }

    /// The handles of ids not in `used` go to the back of the free queue.
    fn keep_only(&mut self, used: &HashSet<RuleId>) {
        let free = &mut self.free;
        self.by_id.retain(|id, handle| {
            let keep = used.contains(id);
            if !keep {
                free.push_back(*handle);
            }
            keep
        });
    }

    fn named(&self) -> impl Iterator<Item = (u16, RuleId)> + '_ {
        (0..=u16::MAX)
            .zip(self.ids.iter().copied())
            .filter(|&(_, id)| id != 0)
    }
}

// === impl FreeSlots ===

/// The free slots of `policy_rules` as ranges: first slot -> length.
#[derive(Debug, Clone)]
struct FreeSlots(BTreeMap<u32, u32>);

impl Default for FreeSlots {
    fn default() -> Self {
        Self(BTreeMap::from([(0, MAX_POLICY_RULES)]))
    }
}

impl FreeSlots {
    /// The first `n` consecutive free slots (first fit).
    fn take(&mut self, n: u32) -> Option<u32> {
        let (&first, &len) = self.0.iter().find(|(_, len)| **len >= n)?;
        self.0.remove(&first);
        if len > n {
            self.0.insert(first + n, len - n);
        }
        Some(first)
    }

    /// Slots `first .. first + n` are free again; neighbours merge.
    fn release(&mut self, mut first: u32, mut n: u32) {
        if let Some((&before, &len)) = self.0.range(..first).next_back()
            && before + len == first
        {
            self.0.remove(&before);
            first = before;
            n += len;
        }
        if let Some(len) = self.0.remove(&(first + n)) {
            n += len;
        }
        self.0.insert(first, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("cidr")
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, n)
    }

    fn rule(id: RuleId, peers: &[&str]) -> RuleEntry {
        RuleEntry {
            id,
            peers: peers.iter().map(|p| (cidr(p), true)).collect(),
            ports: None,
        }
    }

    fn ingress(n: u8, deny_id: RuleId, rules: &Arc<[RuleEntry]>) -> EndpointRules {
        EndpointRules {
            ip: ip(n),
            ingress: Some(DirectionRules {
                deny_id,
                rules: rules.clone(),
            }),
            egress: None,
        }
    }

    fn value(change: &Change, n: u8) -> Option<EpPolicy> {
        let addr = be_addr(ip(n));
        change
            .endpoints
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, v)| *v)
    }

    #[test]
    fn lays_out_slots_ports_and_peers() {
        let ports: Vec<(u8, u16, u16)> = (0..5).map(|i| (6, 80 + i, 80 + i)).collect();
        let eps = [EndpointRules {
            ip: ip(2),
            ingress: Some(DirectionRules {
                deny_id: 70_007,
                rules: Arc::from([RuleEntry {
                    id: 3,
                    peers: Arc::from([(cidr("10.0.0.0/8"), true), (cidr("10.1.0.0/16"), false)]),
                    ports: Some(ports),
                }]),
            }),
            egress: Some(DirectionRules {
                deny_id: 4_000_000_008,
                rules: Arc::from([]),
            }),
        }];
        let (l, installed) = Installed::default().plan(&eps).expect("fits");
        let (_, ep) = l.endpoints[0];
        assert_eq!(ep.isolated, POL_ISOLATED_INGRESS | POL_ISOLATED_EGRESS);
        // The maps carry handles, in the order the ids were met.
        assert_eq!(ep.deny_rule, [1, 3]);
        assert_eq!(l.rules[0].1.id, 2);
        let named = |h: u16| installed.rule_id(h);
        assert_eq!(
            [1, 2, 3, 0].map(named),
            [70_007, 3, 4_000_000_008, 0],
            "handle 0 names nothing"
        );
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
        let rules: Arc<[RuleEntry]> = (1..=65).map(|id| rule(id, &[])).collect();
        assert!(matches!(
            Installed::default().plan(&[ingress(2, 1, &rules)]),
            Err(LayoutError::TooManyRules { slots: 65, .. })
        ));
        // 1,025 runs of 64 slots do not fit 65,536 slots.
        let eps: Vec<EndpointRules> = (0..1025u32)
            .map(|i| {
                let rules: Arc<[RuleEntry]> = (1..=64)
                    .map(|id| rule(id, &[&format!("10.0.{}.{}/32", i / 256, i % 256)]))
                    .collect();
                EndpointRules {
                    ip: Ipv4Addr::from(0x0a00_0000 + i),
                    ingress: Some(DirectionRules { deny_id: 1, rules }),
                    egress: None,
                }
            })
            .collect();
        assert_eq!(
            Installed::default().plan(&eps).map(|_| ()),
            Err(LayoutError::TooManySlots)
        );
    }

    #[test]
    fn handles_are_reused_last_and_run_out_cleanly() {
        let a: Arc<[RuleEntry]> = Arc::from([rule(100_000, &[])]);
        let b: Arc<[RuleEntry]> = Arc::from([rule(200_000, &[])]);
        let (_, v1) = Installed::default()
            .plan(&[ingress(2, 100_001, &a)])
            .expect("fits");
        // a's ids are no longer used: b gets fresh handles, not a's.
        let (change, v2) = v1.plan(&[ingress(2, 200_001, &b)]).expect("fits");
        let ep = value(&change, 2).expect("switches");
        assert_eq!(ep.deny_rule[POL_INGRESS], 3);
        assert_eq!(change.rules[0].1.id, 4);
        // A retired handle still names its rule, for flows decided under it.
        assert_eq!((v2.rule_id(1), v2.rule_id(2)), (100_001, 100_000));
        assert_eq!(v2.handles().count(), 4);

        // More rule ids than handles: refused, and nothing changes.
        let eps: Vec<EndpointRules> = (0..u32::from(u16::MAX) + 1)
            .map(|i| EndpointRules {
                ip: Ipv4Addr::from(0x0a00_0000 + i),
                ingress: Some(DirectionRules {
                    deny_id: 1_000_000 + i,
                    rules: Arc::from([]),
                }),
                egress: None,
            })
            .collect();
        assert_eq!(v2.plan(&eps).map(|_| ()), Err(LayoutError::TooManyRuleIds));
        assert_eq!(v2.rule_id(3), 200_001);
        let (_, v3) = v2.plan(&eps[..60_000]).expect("fits");
        assert_eq!(v3.rule_id(60_004), 1_000_000 + 59_999, "handles 5.. first");
    }

    #[test]
    fn endpoints_with_the_same_rules_share_a_run() {
        let rules: Arc<[RuleEntry]> = Arc::from([rule(3, &["10.0.0.0/24", "10.0.1.0/24"])]);
        // Equal lists, not the same allocation: still one run.
        let copy: Arc<[RuleEntry]> = rules.iter().cloned().collect();
        let (change, _) = Installed::default()
            .plan(&[ingress(2, 1, &rules), ingress(3, 1, &copy)])
            .expect("fits");
        assert_eq!(change.rules.len(), 1);
        assert_eq!(change.peers.len(), 2);
        assert_eq!(value(&change, 2), value(&change, 3));
    }

    #[test]
    fn a_change_writes_only_what_differs_and_frees_what_is_left() {
        let a: Arc<[RuleEntry]> = Arc::from([rule(3, &["10.0.0.0/24"])]);
        let b: Arc<[RuleEntry]> = Arc::from([rule(4, &["10.0.9.0/24", "10.0.8.0/24"])]);
        let (first, v1) = Installed::default()
            .plan(&[ingress(2, 1, &a), ingress(3, 1, &a), ingress(4, 1, &b)])
            .expect("fits");
        assert_eq!((first.rules.len(), first.endpoints.len()), (2, 3));

        // The same state again (rebuilt lists): nothing to write.
        let a2: Arc<[RuleEntry]> = a.iter().cloned().collect();
        let b2: Arc<[RuleEntry]> = b.iter().cloned().collect();
        let (same, v1) = v1
            .plan(&[ingress(2, 1, &a2), ingress(3, 1, &a2), ingress(4, 1, &b2)])
            .expect("fits");
        assert!(same.is_empty(), "{same:?}");

        // Endpoint 3 gets a second rule: one new run beside the two in use,
        // one endpoint switches, nothing is freed while 2 still uses `a`.
        let a_more: Arc<[RuleEntry]> = a.iter().cloned().chain([rule(5, &[])]).collect();
        let (change, v2) = v1
            .plan(&[ingress(2, 1, &a), ingress(3, 1, &a_more), ingress(4, 1, &b)])
            .expect("fits");
        assert_eq!(change.endpoints.len(), 1);
        let new = value(&change, 3).expect("3 switches");
        let old = value(&first, 3).expect("3 was installed");
        let in_use = [
            old.first[POL_INGRESS],
            value(&first, 4).expect("4").first[POL_INGRESS],
        ];
        let (from, count) = (new.first[POL_INGRESS], u16::from(new.count[POL_INGRESS]));
        assert_eq!(count, 2);
        assert!(
            in_use
                .iter()
                .all(|&slot| !(from..from + count).contains(&slot)),
            "{in_use:?} overlaps {from}+{count}"
        );
        assert_eq!(change.rules.len(), 2);
        assert!(change.stale_peers.is_empty() && change.removed.is_empty());

        // 4 goes away and 2 moves to `a_more`: b's and a's runs are freed,
        // their peers removed.
        let (change, v3) = v2
            .plan(&[ingress(2, 1, &a_more), ingress(3, 1, &a_more)])
            .expect("fits");
        assert!(change.rules.is_empty(), "a_more is installed already");
        assert_eq!(change.removed, [be_addr(ip(4))]);
        assert_eq!(value(&change, 2), Some(new));
        assert_eq!(change.stale_peers.len(), 3);
        // The freed slots are used again.
        let c: Arc<[RuleEntry]> = Arc::from([rule(6, &[])]);
        let (change, _) = v3
            .plan(&[ingress(2, 1, &a_more), ingress(9, 1, &c)])
            .expect("fits");
        assert_eq!(change.rules[0].0, 0, "{change:?}");
    }
}
