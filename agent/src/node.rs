//! The node: brings up the datapath of this node (VXLAN device, BPF programs,
//! masquerade, IPAM) from the agent's configuration and the cluster state, and
//! holds what the pod operations and the API share.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumen_api::cni::AttachmentKey;
use lumen_api::{Endpoint, Ipv4Cidr};

use crate::cluster::ClusterState;
use crate::datapath::{Datapath, DatapathError, FlowSettings, LoadOptions, Uplink};
use crate::flows::FlowConfig;
use crate::ipam::{Ipam, IpamError};
use crate::masquerade::{self, MasqueradeError};
use crate::netlink::{Netlink, NetlinkError};
use crate::overlay::{self, Overlay};
use crate::policy::enforce::Enforcer;
use crate::reaper::LinkReaper;

/// Name of the node's VXLAN device.
pub const VXLAN_IFACE: &str = "lumen_vxlan";
/// VXLAN over IPv4 costs 50 bytes of the underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The agent's configuration (from its command line).
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub manifests: PathBuf,
    pub underlay_iface: String,
    pub cluster_cidr: Ipv4Cidr,
    /// Overrides the Node's `spec.podCIDR`.
    pub pod_cidr: Option<Ipv4Cidr>,
    pub vxlan_port: u16,
    /// Flow table sizes (fixed at load).
    pub datapath: LoadOptions,
    /// Flow tracking in the datapath.
    pub flow_settings: FlowSettings,
    /// The flow pipeline.
    pub flows: FlowConfig,
    /// The TCP listener for `GET /metrics`, if any (also on the unix socket).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Per-pod metric series, under a cap; off when `None`.
    pub metrics_per_pod: Option<crate::metrics::PerPod>,
    /// IPFIX export; no collectors, no export. The observation domain id is set
    /// from the node's address when left 0.
    pub ipfix: lumen_exporter::IpfixConfig,
    /// Every node's agent (this one's included), for `Traceflow` objects.
    pub peer_agents: Vec<lumen_api::trace::orchestrate::NodeAgent>,
}

/// Why the node could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node {node} has no pod CIDR: set spec.podCIDR on its Node manifest or pass --pod-cidr"
    )]
    NoPodCidr { node: String },
    #[error("pod CIDR {pod} is not inside the cluster CIDR {cluster}")]
    PodCidrOutsideCluster { pod: Ipv4Cidr, cluster: Ipv4Cidr },
    #[error("underlay interface {iface} has no IPv4 address and the Node has no InternalIP")]
    NoNodeIp { iface: String },
    #[error("enabling IPv4 forwarding in the node namespace failed")]
    Forwarding(#[source] std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Masquerade(#[from] MasqueradeError),
    #[error("starting the link reaper failed")]
    Reaper(#[source] std::io::Error),
}

/// Everything the pod operations and the API share.
#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub netlink: Netlink,
    pub datapath: Arc<Mutex<Datapath>>,
    pub ipam: Mutex<Ipam>,
    pub endpoints: Mutex<BTreeMap<AttachmentKey, Endpoint>>,
    pub node_ip: Ipv4Addr,
    pub pod_mtu: u32,
    /// NetworkPolicy in force on this node.
    pub policy: Enforcer,
    /// Deletes pod veths in batches.
    pub reaper: LinkReaper,
}

impl Node {
    /// Bring the node up: forwarding, VXLAN device, BPF programs, masquerade, IPAM.
    pub async fn start(config: Config, cluster: &ClusterState) -> Result<Self, NodeError> {
        let me = cluster.nodes.get(&config.node_name);
        let pod_cidr = config
            .pod_cidr
            .or_else(|| me.and_then(|n| n.pod_cidr))
            .ok_or_else(|| NodeError::NoPodCidr {
                node: config.node_name.clone(),
            })?;
        if !config.cluster_cidr.contains(pod_cidr.addr())
            || pod_cidr.prefix() < config.cluster_cidr.prefix()
        {
            return Err(NodeError::PodCidrOutsideCluster {
                pod: pod_cidr,
                cluster: config.cluster_cidr,
            });
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").map_err(NodeError::Forwarding)?;

        let netlink = Netlink::connect()?;
        let underlay = netlink.require_link(&config.underlay_iface).await?;
        let node_ip =
            match me.and_then(|n| n.internal_ip) {
                Some(ip) => ip,
                None => netlink.first_ipv4(underlay.index).await?.ok_or_else(|| {
                    NodeError::NoNodeIp {
                        iface: config.underlay_iface.clone(),
                    }
                })?,
            };
        let pod_mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);

        netlink.delete_link(VXLAN_IFACE).await?;
        let vxlan = netlink
            .create_vxlan(VXLAN_IFACE, config.vxlan_port, pod_mtu)
            .await?;

        let mut datapath = Datapath::load_with(config.datapath)?;
        datapath.configure(
            vxlan.index,
            node_ip,
            config.cluster_cidr,
            pod_cidr,
            config.flow_settings,
        )?;
        datapath.attach_overlay(VXLAN_IFACE)?;
        let uplink = Uplink {
            name: &config.underlay_iface,
            index: underlay.index,
            mtu: underlay.mtu,
        };
        datapath.attach_underlay(uplink, config.vxlan_port)?;
        // A cluster address no pod or node CIDR route claims has no pod: refuse
        // it here rather than send it out by the default route.
        netlink.route_unreachable(config.cluster_cidr).await?;
        masquerade::install(config.cluster_cidr, VXLAN_IFACE, config.vxlan_port)?;

        let ipam = Ipam::open(&config.state_dir.join("ipam.json"), pod_cidr)?;
        tracing::info!(
            node = %config.node_name, %node_ip, %pod_cidr, pod_mtu, vxlan = vxlan.index,
            "node datapath up"
        );
        let policy = Enforcer::new(config.flows.rules.clone());
        let reaper = LinkReaper::start().map_err(NodeError::Reaper)?;
        Ok(Self {
            config,
            netlink,
            datapath: Arc::new(Mutex::new(datapath)),
            ipam: Mutex::new(ipam),
            endpoints: Mutex::new(BTreeMap::new()),
            node_ip,
            pod_mtu,
            policy,
            reaper,
        })
    }

    /// This node's pod CIDR: the addresses whose policy it enforces.
    pub fn pod_cidr(&self) -> Option<Ipv4Cidr> {
        self.ipam.lock().map(|i| i.cidr()).ok()
    }

    /// Follow the cluster state: keep the overlay routes equal to the other nodes'
    /// pod CIDRs. Runs until the source goes away.
    pub async fn follow_cluster(
        self: Arc<Self>,
        mut rx: tokio::sync::watch::Receiver<Arc<ClusterState>>,
        vxlan_index: u32,
    ) {
        let mut overlay = Overlay::new(self.netlink.clone(), vxlan_index);
        loop {
            let state = rx.borrow_and_update().clone();
            let want = overlay::wanted(&state, &self.config.node_name);
            overlay.reconcile(&self.datapath, want).await;
            let pod_cidr = self.pod_cidr();
            let local = |ip| pod_cidr.is_some_and(|c: Ipv4Cidr| c.contains(ip));
            if let Err(error) = self.policy.apply(&state, &self.datapath, local) {
                tracing::error!(%error, "the new policy does not fit the datapath; the previous one stays enforced");
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                // Retry failed installs even when nothing changes.
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
