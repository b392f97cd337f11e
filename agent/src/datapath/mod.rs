//! The BPF datapath of one node: loads `datapath.bpf.o` with aya, owns the typed
//! map handles, attaches the tc programs to pod veths and the VXLAN device, and
//! writes endpoints and remote pod CIDRs into the maps. `decide` reads the
//! policy maps back to tell how the kernel decides a flow.
//!
//! Attachments are tc filters on a clsact qdisc. They outlive the agent, so pods
//! keep forwarding (with the maps as they were) while an agent restarts; the new
//! agent replaces the filters of every endpoint it re-adopts.

pub mod abi;
pub mod decide;
pub mod policy;

use std::collections::HashMap as StdHashMap;
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{
    NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
    qdisc_add_clsact, qdisc_detach_program,
};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use lumen_api::Ipv4Cidr;

use abi::{
    CFG_LIVE_TRACE, CFG_NO_FLOWS, CFG_POLICY, CFG_REMOTE_TRIE, DpConfig, EndpointValue, EpPolicy,
    FlowKey, FlowValue, LiveTrace, LpmV4Key, MAX_ENDPOINTS, MAX_REMOTE_SLOTS, PeerKey, PolicyRule,
    RemoteNode, TraceKey, Traffic, be_addr, names,
};
pub use decide::DatapathDecision;
use lumen_api::policy::RuleId;
use policy::{EndpointRules, Installed, LayoutError};

/// The compiled datapath, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the BPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("BPF map {name} is missing or has the wrong type")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pod CIDR {cidr} has more addresses than the datapath's {} endpoint slots",
        MAX_ENDPOINTS
    )]
    PodCidrTooLarge { cidr: Ipv4Cidr },
    #[error("endpoint {ip} is outside the node's pod CIDR")]
    OutsidePodCidr { ip: Ipv4Addr },
    #[error("BPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("BPF program {name} could not be loaded or attached to {iface}")]
    Program {
        name: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the compiled policy does not fit the datapath")]
    PolicyLayout(#[from] LayoutError),
    #[error("reading BPF map {name} failed")]
    Lookup {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("updating BPF map {name} failed")]
    Update {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Where a program is attached.
#[derive(Debug, Clone, Copy)]
struct Hook {
    program: &'static str,
    direction: TcAttachType,
}

const POD_HOOKS: [Hook; 2] = [
    Hook {
        program: names::FROM_POD,
        direction: TcAttachType::Ingress,
    },
    Hook {
        program: names::TO_POD,
        direction: TcAttachType::Egress,
    },
];

const OVERLAY_HOOKS: [Hook; 2] = [
    Hook {
        program: names::FROM_OVERLAY,
        direction: TcAttachType::Ingress,
    },
    Hook {
        program: names::TO_OVERLAY,
        direction: TcAttachType::Egress,
    },
];

const UNDERLAY_HOOKS: [Hook; 2] = [
    Hook {
        program: names::TO_UNDERLAY,
        direction: TcAttachType::Egress,
    },
    Hook {
        program: names::FROM_UNDERLAY,
        direction: TcAttachType::Ingress,
    },
];

/// What the programs' interface already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iface {
    /// A veth this agent just made and gave its clsact qdisc
    /// ([`Datapath::prepare_veth`]): nothing to create, no filters to replace.
    Prepared,
    /// Anything else (re-adopted at start-up, the uplink, the VXLAN device):
    /// the qdisc is made if missing and an earlier agent's filters replaced.
    Existing,
}

/// Sizes fixed when the object is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of the flow table (LRU: the least recently used flow is evicted).
    pub max_flows: u32,
    /// Bytes of the flow-event ring buffer (a power of two, at least a page).
    pub events_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_flows: 131_072,
            events_bytes: 256 * 1024,
        }
    }
}

/// What the flow tracker does, set at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSettings {
    /// Track flows at all (off only to measure what tracking costs).
    pub enabled: bool,
    /// Ring-buffer events each CPU may emit a second.
    pub events_per_sec: u32,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            events_per_sec: 10_000,
        }
    }
}

/// The flow tracker's maps, handed whole to the flow collector so reading flows
/// never waits on the datapath's lock.
pub struct FlowMaps {
    pub table: HashMap<MapData, FlowKey, FlowValue>,
    pub events: RingBuf<MapData>,
    pub traffic: PerCpuArray<MapData, Traffic>,
}

impl std::fmt::Debug for FlowMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowMaps").finish_non_exhaustive()
    }
}

/// Traceflow's maps: the observations ring buffer (read by the trace
/// collector), the injected packets and the armed live traces (written by the
/// tracer).
pub struct TraceMaps {
    pub events: RingBuf<MapData>,
    pub packets: HashMap<MapData, TraceKey, u32>,
    pub live: HashMap<MapData, u32, LiveTrace>,
}

impl std::fmt::Debug for TraceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceMaps").finish_non_exhaustive()
    }
}

/// The node's uplink as the datapath sends to it: by name (for its hooks),
/// index (for the redirect) and MTU (what fits once encapsulated), as the
/// caller read them from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Uplink<'a> {
    pub name: &'a str,
    pub index: u32,
    pub mtu: u32,
}

/// The loaded datapath and its typed map handles.
pub struct Datapath {
    ebpf: Ebpf,
    endpoints: Array<MapData, EndpointValue>,
    remote: LpmTrie<MapData, u32, RemoteNode>,
    remote_slots: Array<MapData, RemoteNode>,
    config: aya::maps::Array<MapData, DpConfig>,
    counters: PerCpuArray<MapData, u64>,
    flows: Option<FlowMaps>,
    traces: Option<TraceMaps>,
    links: StdHashMap<String, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// Every remote pod CIDR and its node, in a slot or in the LPM map.
    remotes: std::collections::BTreeMap<Ipv4Cidr, Ipv4Addr>,
    max_flows: u32,
    ep_policy: HashMap<MapData, u32, EpPolicy>,
    policy_rules: aya::maps::Array<MapData, PolicyRule>,
    policy_peers: LpmTrie<MapData, PeerKey, u32>,
    /// What the policy maps hold.
    policy: Installed,
    /// Policy map entries written or removed so far.
    policy_writes: u64,
    /// The settings last written, to flip `CFG_POLICY` alone.
    config_value: DpConfig,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// The CIDR a `dp_config` address and mask (network order) describe; None
/// before `configure` has written them (mask 0).
fn configured_cidr(addr: u32, mask: u32) -> Option<Ipv4Cidr> {
    let prefix = u8::try_from(u32::from_be(mask).count_ones()).ok()?;
    if prefix == 0 {
        return None;
    }
    Ipv4Cidr::new(Ipv4Addr::from(addr.to_ne_bytes()), prefix).ok()
}

/// `dp_config.slot_shift` for a cluster whose node CIDRs are `pod_cidr`'s
/// size: 0 (no slots) when the cluster holds more of them than there are slots.
fn slot_shift(cluster: Ipv4Cidr, pod_cidr: Ipv4Cidr) -> u32 {
    let levels = pod_cidr.prefix().checked_sub(cluster.prefix());
    match levels {
        Some(levels)
            if pod_cidr.prefix() < 32 && (1u64 << levels) <= u64::from(MAX_REMOTE_SLOTS) =>
        {
            32 - u32::from(pod_cidr.prefix())
        }
        _ => 0,
    }
}

impl Datapath {
    /// Load every program and map into the kernel with default sizes.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// Load every program and map into the kernel; nothing is attached yet.
    pub fn load_with(options: LoadOptions) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS, options.max_flows)
            .map_max_entries(names::FLOW_EVENTS, options.events_bytes)
            .load(OBJECT)
            .map_err(DatapathError::Load)?;
        for name in [
            names::FROM_POD,
            names::TO_POD,
            names::FROM_OVERLAY,
            names::TO_OVERLAY,
            names::TO_UNDERLAY,
            names::FROM_UNDERLAY,
            names::NOOP,
            names::GROW_ONLY,
            names::SHRINK_ONLY,
        ] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    name,
                    iface: String::new(),
                    source,
                })?;
        }
        Ok(Self {
            endpoints: take_map(&mut ebpf, names::ENDPOINTS)?,
            remote: take_map(&mut ebpf, names::REMOTE_CIDRS)?,
            remote_slots: take_map(&mut ebpf, names::REMOTE_SLOTS)?,
            config: take_map(&mut ebpf, names::CONFIG)?,
            counters: take_map(&mut ebpf, names::COUNTERS)?,
            ep_policy: take_map(&mut ebpf, names::EP_POLICY)?,
            policy_rules: take_map(&mut ebpf, names::POLICY_RULES)?,
            policy_peers: take_map(&mut ebpf, names::POLICY_PEERS)?,
            policy: Installed::default(),
            policy_writes: 0,
            config_value: DpConfig::default(),
            flows: Some(FlowMaps {
                table: take_map(&mut ebpf, names::FLOWS)?,
                events: take_map(&mut ebpf, names::FLOW_EVENTS)?,
                traffic: take_map(&mut ebpf, names::TRAFFIC)?,
            }),
            traces: Some(TraceMaps {
                events: take_map(&mut ebpf, names::TRACE_EVENTS)?,
                packets: take_map(&mut ebpf, names::TRACE_PACKETS)?,
                live: take_map(&mut ebpf, names::TRACE_LIVE)?,
            }),
            ebpf,
            links: StdHashMap::new(),
            remotes: std::collections::BTreeMap::new(),
            max_flows: options.max_flows,
        })
    }

    /// The flow tracker's maps; `None` once taken.
    pub fn take_flow_maps(&mut self) -> Option<FlowMaps> {
        self.flows.take()
    }

    /// Traceflow's maps; `None` once taken.
    pub fn take_trace_maps(&mut self) -> Option<TraceMaps> {
        self.traces.take()
    }

    /// Whether `from_pod` looks for armed live traces (only while one is).
    pub fn set_live_tracing(&mut self, on: bool) -> Result<(), DatapathError> {
        self.set_flag(CFG_LIVE_TRACE, on)
    }

    /// Track flows or not (off only to measure what tracking costs).
    pub fn set_flow_tracking(&mut self, on: bool) -> Result<(), DatapathError> {
        self.set_flag(CFG_NO_FLOWS, !on)
    }

    /// Node-wide settings the programs read. Every endpoint's address is in
    /// `pod_cidr`, the node's share of `cluster`, which must have no more
    /// addresses than the endpoint map has slots.
    pub fn configure(
        &mut self,
        vxlan_ifindex: u32,
        node_ip: Ipv4Addr,
        cluster: Ipv4Cidr,
        pod_cidr: Ipv4Cidr,
        flows: FlowSettings,
    ) -> Result<(), DatapathError> {
        if pod_cidr.size() > u64::from(MAX_ENDPOINTS) {
            return Err(DatapathError::PodCidrTooLarge { cidr: pod_cidr });
        }
        let value = DpConfig {
            vxlan_ifindex,
            node_ip: be_addr(node_ip),
            cluster_addr: be_addr(cluster.addr()),
            cluster_mask: cluster.mask().to_be(),
            flags: if flows.enabled { 0 } else { CFG_NO_FLOWS },
            events_per_sec: flows.events_per_sec,
            policy_epoch: 1,
            vxlan_port: self.config_value.vxlan_port,
            uplink_ifindex: self.config_value.uplink_ifindex,
            uplink_mtu: self.config_value.uplink_mtu,
            pod_addr: be_addr(pod_cidr.addr()),
            pod_mask: pod_cidr.mask().to_be(),
            slot_shift: slot_shift(cluster, pod_cidr),
        };
        // Where a remote CIDR goes depends on the CIDRs: each is cleared from
        // where it is and placed anew (back where it was if the new settings
        // cannot be written).
        let routed: Vec<(Ipv4Cidr, Ipv4Addr)> =
            self.remotes.iter().map(|(c, n)| (*c, *n)).collect();
        for (cidr, _) in &routed {
            if let Err(error) = self.place_remote(*cidr, None) {
                tracing::warn!(%cidr, %error, "clearing the remote cidr failed");
            }
        }
        let written = self.write_config(value);
        for (cidr, node_ip) in routed {
            self.place_remote(cidr, Some(node_ip))?;
        }
        self.sync_remote_trie()?;
        written
    }

    fn write_config(&mut self, value: DpConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, value, 0)
            .map_err(|source| DatapathError::Update {
                name: names::CONFIG,
                source,
            })?;
        self.config_value = value;
        Ok(())
    }

    /// Enforce `endpoints`' compiled policy, writing only what differs from
    /// the maps' contents: new rules go into free slots, each endpoint whose
    /// rules changed then switches with one map update, and the rules no
    /// endpoint uses any more are removed; no endpoint ever sees a mix. If a
    /// write fails, what was written is undone and the previous policy stays.
    /// Flows keep their verdicts until the flow pipeline resets them
    /// (`Flows::reevaluate`).
    pub fn set_policy(&mut self, endpoints: &[EndpointRules]) -> Result<(), DatapathError> {
        self.set_policy_with(endpoints, |_| ())
    }

    /// [`Self::set_policy`], calling `before_write` with what the maps will
    /// hold once the plan fits and before anything is written: whoever names
    /// the rule handles for flows learns the new ones before a packet can
    /// carry them.
    pub fn set_policy_with(
        &mut self,
        endpoints: &[EndpointRules],
        before_write: impl FnOnce(&Installed),
    ) -> Result<(), DatapathError> {
        let (change, next) = self.policy.plan(endpoints)?;
        before_write(&next);
        let isolated = !endpoints.is_empty();
        let flag_set = self.config_value.flags & CFG_POLICY != 0;
        if change.is_empty() && isolated == flag_set {
            return Ok(());
        }
        let update = |name: &'static str| move |source| DatapathError::Update { name, source };
        // New runs, in slots no endpoint uses.
        for (slot, rule) in &change.rules {
            self.policy_rules
                .set(*slot, *rule, 0)
                .map_err(update(names::POLICY_RULES))?;
        }
        for (written, (prefix, key, matches)) in change.peers.iter().enumerate() {
            let lpm = aya::maps::lpm_trie::Key::new(*prefix, *key);
            if let Err(source) = self.policy_peers.insert(&lpm, *matches, 0) {
                self.remove_peers(change.peers[..written].iter().map(|(p, k, _)| (*p, *k)));
                return Err(update(names::POLICY_PEERS)(source));
            }
        }
        // The switch.
        for (switched, (ip, value)) in change.endpoints.iter().enumerate() {
            if let Err(source) = self.ep_policy.insert(*ip, *value, 0) {
                for (ip, _) in &change.endpoints[..switched] {
                    let _ = match self.policy.endpoint(*ip) {
                        Some(old) => self.ep_policy.insert(*ip, old, 0),
                        None => self.ep_policy.remove(ip),
                    };
                }
                self.remove_peers(change.peers.iter().map(|(p, k, _)| (*p, *k)));
                return Err(update(names::EP_POLICY)(source));
            }
        }
        for ip in &change.removed {
            let _ = self.ep_policy.remove(ip);
        }
        self.policy = next;
        self.policy_writes += change.entries() as u64;
        self.remove_peers(change.stale_peers.iter().copied());
        // A new epoch makes every flow's verdict stale: each is decided again at
        // its next packet, so a connection a new policy denies is cut. (An entry
        // idle across exactly three changes would look current again; idle
        // entries leave the table at the idle timeout.)
        let mut config = self.config_value;
        config.policy_epoch = config.policy_epoch % 3 + 1;
        config.flags = if isolated {
            config.flags | CFG_POLICY
        } else {
            config.flags & !CFG_POLICY
        };
        self.write_config(config)
    }

    /// The rule handles the policy maps have given out, in use or retired,
    /// and the rule id each names (or last named).
    pub fn rule_handles(&self) -> impl Iterator<Item = (u16, RuleId)> + '_ {
        self.policy.handles()
    }

    /// Policy map entries written or removed by the changes so far: what the
    /// per-endpoint diffs cost.
    pub fn policy_writes(&self) -> u64 {
        self.policy_writes
    }

    /// Best effort: a prefix that is not there is already gone.
    fn remove_peers(&mut self, peers: impl Iterator<Item = (u32, PeerKey)>) {
        for (prefix, key) in peers {
            let _ = self
                .policy_peers
                .remove(&aya::maps::lpm_trie::Key::new(prefix, key));
        }
    }

    /// Attach `from_overlay`/`to_overlay` to the VXLAN device.
    pub fn attach_overlay(&mut self, iface: &str) -> Result<(), DatapathError> {
        self.attach(iface, &OVERLAY_HOOKS, Iface::Existing)
    }

    /// Attach `to_underlay` and `from_underlay` to the node's uplink: traced
    /// packets leaving the node report the masquerade hop there, and VXLAN
    /// packets to `vxlan_port` for local pods are decapsulated there. From then
    /// on `from_pod` encapsulates for remote pods itself and sends to it.
    pub fn attach_underlay(
        &mut self,
        uplink: Uplink<'_>,
        vxlan_port: u16,
    ) -> Result<(), DatapathError> {
        self.attach(uplink.name, &UNDERLAY_HOOKS, Iface::Existing)?;
        let config = DpConfig {
            vxlan_port: u32::from(vxlan_port),
            uplink_ifindex: uplink.index,
            uplink_mtu: uplink.mtu,
            ..self.config_value
        };
        self.write_config(config)
    }

    /// Give a veth the agent just created its clsact qdisc. Attaching the
    /// first filter of a new qdisc waits for an RCU grace period to have
    /// passed since the qdisc was made, under the RTNL lock that every other
    /// ADD and DEL needs too; made early, the grace period has usually passed
    /// by the time [`Self::add_endpoint`] attaches the programs.
    pub fn prepare_veth(&mut self, iface: &str) -> Result<(), DatapathError> {
        clsact(iface, names::FROM_POD)
    }

    /// Attach the pod programs to a host veth and publish the endpoint.
    pub fn add_endpoint(
        &mut self,
        host_iface: &str,
        iface: Iface,
        ip: Ipv4Addr,
        value: EndpointValue,
    ) -> Result<(), DatapathError> {
        let slot = self
            .endpoint_slot(ip)
            .ok_or(DatapathError::OutsidePodCidr { ip })?;
        self.attach(host_iface, &POD_HOOKS, iface)?;
        self.endpoints
            .set(slot, value, 0)
            .map_err(|source| DatapathError::Update {
                name: names::ENDPOINTS,
                source,
            })
    }

    /// The datapath's record of a local endpoint.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<EndpointValue> {
        let slot = self.endpoint_slot(ip)?;
        self.endpoints
            .get(&slot, 0)
            .ok()
            .filter(|value| value.ifindex != 0)
    }

    /// Where the endpoint at `ip` lives in the endpoint map: its offset in the
    /// node's pod CIDR (`endpoint_of` in forward.h), None outside it.
    fn endpoint_slot(&self, ip: Ipv4Addr) -> Option<u32> {
        let config = &self.config_value;
        configured_cidr(config.pod_addr, config.pod_mask)?.offset_of(ip)
    }

    /// Forget an endpoint.
    ///
    /// The programs' attachments come back instead of being detached here:
    /// dropping them detaches them. The caller drops them once the veth is
    /// deleted, when detaching is one failed lookup in the kernel rather than
    /// a filter removal that waits for the RTNL lock, with this datapath (and
    /// every other ADD and DEL) held meanwhile.
    #[must_use = "dropping the attachments detaches the programs"]
    pub fn remove_endpoint(&mut self, host_iface: &str, ip: Ipv4Addr) -> Vec<SchedClassifierLink> {
        if let Some(slot) = self.endpoint_slot(ip)
            && let Err(error) = self.endpoints.set(slot, EndpointValue::default(), 0)
        {
            tracing::warn!(%ip, %error, "clearing the endpoint's slot failed");
        }
        let Some(links) = self.links.remove(host_iface) else {
            return Vec::new();
        };
        links
            .into_iter()
            .filter_map(|(name, id)| program(&mut self.ebpf, name).ok()?.take_link(id).ok())
            .collect()
    }

    /// Route a remote pod CIDR to the node that owns it: in its slot of
    /// `remote_slots` if it has one, else in the LPM map.
    pub fn set_remote(&mut self, cidr: Ipv4Cidr, node_ip: Ipv4Addr) -> Result<(), DatapathError> {
        self.place_remote(cidr, Some(node_ip))?;
        self.remotes.insert(cidr, node_ip);
        self.sync_remote_trie()
    }

    pub fn remove_remote(&mut self, cidr: Ipv4Cidr) {
        self.remotes.remove(&cidr);
        if let Err(error) = self.place_remote(cidr, None) {
            tracing::warn!(%cidr, %error, "clearing the remote cidr failed");
        }
        if let Err(error) = self.sync_remote_trie() {
            tracing::warn!(%error, "updating the datapath's config failed");
        }
    }

    /// Write `cidr`'s entry where the current settings put it, its slot or
    /// the LPM map: routed to `node_ip`, or cleared with None.
    fn place_remote(
        &mut self,
        cidr: Ipv4Cidr,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        let value = RemoteNode {
            node_ip: node_ip.map_or(0, be_addr),
            flags: 0,
        };
        if let Some(slot) = self.remote_slot(cidr) {
            return self
                .remote_slots
                .set(slot, value, 0)
                .map_err(|source| DatapathError::Update {
                    name: names::REMOTE_SLOTS,
                    source,
                });
        }
        let key = LpmV4Key::new(u32::from(cidr.prefix()), be_addr(cidr.addr()));
        match node_ip {
            Some(_) => self.remote.insert(&key, value, 0),
            None => self.remote.remove(&key),
        }
        .map_err(|source| DatapathError::Update {
            name: names::REMOTE_CIDRS,
            source,
        })
    }

    /// `CFG_REMOTE_TRIE` on exactly while a routed CIDR has no slot.
    fn sync_remote_trie(&mut self) -> Result<(), DatapathError> {
        let in_trie = self.remotes.keys().any(|c| self.remote_slot(*c).is_none());
        self.set_flag(CFG_REMOTE_TRIE, in_trie)
    }

    /// `cidr`'s index in `remote_slots`: a CIDR of the node's own size in the
    /// cluster CIDR has one while the slots cover the cluster.
    fn remote_slot(&self, cidr: Ipv4Cidr) -> Option<u32> {
        let shift = self.config_value.slot_shift;
        if shift == 0 || u32::from(cidr.prefix()) + shift != 32 {
            return None;
        }
        let config = &self.config_value;
        let cluster = configured_cidr(config.cluster_addr, config.cluster_mask)?;
        Some(cluster.offset_of(cidr.addr())? >> shift)
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), DatapathError> {
        let mut config = self.config_value;
        config.flags = if on {
            config.flags | flag
        } else {
            config.flags & !flag
        };
        if config == self.config_value {
            return Ok(());
        }
        self.write_config(config)
    }

    /// Remote pod CIDRs routed now.
    pub fn remote_count(&self) -> usize {
        self.remotes.len()
    }

    /// The flow table's size (fixed at load).
    pub fn max_flows(&self) -> u32 {
        self.max_flows
    }

    /// One per-CPU counter, summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Sum of each per-CPU counter, in [`abi::COUNTERS`] order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        abi::COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, u32::try_from(i).map_or(0, |i| self.counter(i))))
            .collect()
    }

    /// A loaded program, for `BPF_PROG_TEST_RUN` in benchmarks and tests.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// Attach through a clsact qdisc (netlink): creating a TCX link costs a
    /// kernel RCU grace period (~8 ms each, measured with strace), which put
    /// ~20 ms of every CNI ADD under the kernel's RTNL lock.
    fn attach(&mut self, iface: &str, hooks: &[Hook], state: Iface) -> Result<(), DatapathError> {
        self.detach(iface);
        if state == Iface::Existing {
            clsact(iface, hooks.first().map_or("", |h| h.program))?;
        }
        let mut attached = Vec::with_capacity(hooks.len());
        for hook in hooks {
            // Filters outlive the process that added them: replace those of an
            // earlier agent instead of stacking ours beside them.
            if state == Iface::Existing {
                match qdisc_detach_program(iface, hook.direction, hook.program) {
                    // No such filter yet, or no such interface (attach reports that).
                    Ok(()) | Err(TcError::IoError(_)) => {}
                    Err(error) => {
                        tracing::debug!(%iface, program = hook.program, %error, "removing a stale filter failed");
                    }
                }
            }
            let result = program(&mut self.ebpf, hook.program).and_then(|prog| {
                prog.attach_with_options(
                    iface,
                    hook.direction,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(|source| DatapathError::Program {
                    name: hook.program,
                    iface: iface.to_owned(),
                    source,
                })
            });
            match result {
                Ok(id) => attached.push((hook.program, id)),
                Err(error) => {
                    self.detach_links(attached);
                    return Err(error);
                }
            }
        }
        self.links.insert(iface.to_owned(), attached);
        Ok(())
    }

    fn detach(&mut self, iface: &str) {
        if let Some(links) = self.links.remove(iface) {
            self.detach_links(links);
        }
    }

    fn detach_links(&mut self, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, id) in links {
            if let Ok(prog) = program(&mut self.ebpf, name)
                && let Err(error) = prog.detach(id)
            {
                tracing::debug!(program = name, %error, "detach failed (interface gone?)");
            }
        }
    }
}

/// The clsact qdisc on `iface`, made unless it is there, for `program`.
fn clsact(iface: &str, program: &'static str) -> Result<(), DatapathError> {
    match qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(DatapathError::Program {
            name: program,
            iface: iface.to_owned(),
            source: aya::programs::ProgramError::TcError(e),
        }),
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::MissingProgram { name })
}
