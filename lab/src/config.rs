//! What a lab is made of: its configuration, the fixed address plan, and the names
//! of its namespaces, nodes and pods (and the inverse: is a namespace one of ours).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use lumen_api::Ipv4Cidr;
use serde::{Deserialize, Serialize};

use crate::LabError;

/// The lab name used when none is given.
pub const DEFAULT_NAME: &str = "lumen";
/// Where labs keep their state (one directory per lab).
pub const DEFAULT_STATE_ROOT: &str = "/run/lumen-lab";
/// The Kubernetes namespace every lab pod lives in.
pub const POD_NAMESPACE: &str = "default";
/// The cluster's pod network; node `i` gets `10.244.i.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The underlay network between nodes (TEST-NET-1, never routed outside the lab).
pub const UNDERLAY_CIDR: &str = "192.0.2.0/24";
/// The underlay's bridge address, the nodes' default gateway.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The lab's IPFIX collector listens on the underlay gateway, on the IANA port.
pub const COLLECTOR_PORT: u16 = 4739;
/// The metrics relay serves node `i` on `127.0.0.1:<base + i>`, from the first
/// base at or above this one whose ports are all free (so node-1 is on 19965,
/// as in `dashboards/prometheus/scrape-lab.yml`).
pub const DEFAULT_RELAY_PORT_BASE: u16 = 19964;
/// The lab's Prometheus listens on the first free loopback port from this one
/// (Prometheus's own default).
pub const PROMETHEUS_PORT: u16 = 9090;
/// The external host's address (TEST-NET-3).
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The underlay's side of the external host's link.
pub const EXTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Prefix length of the external link.
pub const EXTERNAL_PREFIX: u8 = 24;
/// The name the external host answers to (in `probe`, `exec`, the echo server).
pub const EXTERNAL_NAME: &str = "external";
/// The name of the underlay namespace in `exec`.
pub const UNDERLAY_NAME: &str = "underlay";
/// Ports every echo server listens on, TCP and UDP.
pub const SERVER_PORTS: [u16; 2] = [80, 81];
/// The bridge inside the underlay namespace.
pub const BRIDGE: &str = "br0";
/// The most nodes a lab can have: node addresses are 192.0.2.(10+i).
pub const MAX_NODES: u32 = 200;
/// The most pods per node: each node's pod CIDR is a /24.
pub const MAX_PODS_PER_NODE: u32 = 250;
/// Longest lab name: keeps netns names and paths short.
pub const MAX_NAME_LEN: usize = 32;
/// The label Kubernetes puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The upstream NetworkPolicy e2e model's namespaces: node 1's pods live in the
/// first, node 2's in the second…
pub const MODEL_NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The model's pod names, by index on their node.
pub const MODEL_PODS: [&str; 3] = ["a", "b", "c"];
/// The protocols every model pod serves, as Kubernetes spells them.
pub const MODEL_PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// How to build a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Prefix of every namespace and the name of the state directory.
    pub name: String,
    pub nodes: u32,
    pub pods_per_node: u32,
    /// Where `lumen-agent`, `lumen-cni` and `lumen` are.
    pub bin_dir: PathBuf,
    /// Parent of the lab's state directory.
    pub state_root: PathBuf,
    /// Extra flags for every agent (e.g. `--idle-timeout 3s`, `--ipfix-collector …`).
    pub agent_args: Vec<String>,
    /// Run an IPFIX collector (nfcapd) in the underlay and export every node's flows to it.
    pub collector: bool,
    /// Run a Prometheus server (`/usr/bin/prometheus`) on loopback in the root
    /// namespace, scraping every node agent through the metrics relay.
    pub prometheus: bool,
    /// Where the metrics relay's ports start (see [`DEFAULT_RELAY_PORT_BASE`]).
    pub relay_port_base: u16,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            nodes: 2,
            pods_per_node: 3,
            bin_dir: default_bin_dir(),
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            agent_args: Vec::new(),
            collector: false,
            prometheus: false,
            relay_port_base: DEFAULT_RELAY_PORT_BASE,
        }
    }
}

impl LabConfig {
    /// Refuse configurations the address plan cannot hold.
    pub fn validate(&self) -> Result<(), LabError> {
        validate_name(&self.name)?;
        let reason = if !(1..=MAX_NODES).contains(&self.nodes) {
            format!(
                "nodes must be between 1 and {MAX_NODES}, not {}",
                self.nodes
            )
        } else if self.pods_per_node > MAX_PODS_PER_NODE {
            format!(
                "pods per node must be at most {MAX_PODS_PER_NODE}, not {}",
                self.pods_per_node
            )
        } else {
            return Ok(());
        };
        Err(LabError::Config { reason })
    }
}

/// Who the lab's pods are: their Kubernetes namespaces, names, labels and
/// container ports. Only the manifests differ; namespaces, addresses, processes
/// and files are the same for every layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodLayout {
    /// `pod-<node>-<i>` in namespace `default`, labelled `app=<name>` and
    /// `lab-node=<node>`, with container ports `http` (80/TCP), `http-alt`
    /// (81/TCP) and unnamed 80/UDP and 81/UDP.
    #[default]
    Numbered,
    /// The model of the upstream Kubernetes NetworkPolicy e2e tests, for up to
    /// 3 nodes of up to 3 pods: node 1's pods are in namespace `x`, node 2's in
    /// `y`, node 3's in `z`, named `a`, `b`, `c` and labelled `pod=<name>`;
    /// namespaces are labelled `ns=<name>`; every pod has the container ports
    /// `serve-<port>-<protocol>` (`serve-80-tcp`, `serve-80-udp`,
    /// `serve-80-sctp`, `serve-81-tcp`…) of the ports its server listens on.
    Model,
}

/// A container port in a Pod manifest (`spec.containers[].ports[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// Named ports are what a NetworkPolicy can refer to by name.
    pub name: Option<String>,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl ContainerPort {
    pub fn named(name: &str, port: u16, protocol: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            port,
            protocol: protocol.to_owned(),
        }
    }
}

// === impl PodLayout ===

impl PodLayout {
    /// Refuse a lab the layout has no names for.
    pub fn validate(self, config: &LabConfig) -> Result<(), LabError> {
        let (nodes, pods) = (MODEL_NAMESPACES.len(), MODEL_PODS.len());
        match self {
            Self::Numbered => Ok(()),
            Self::Model
                if config.nodes as usize <= nodes && config.pods_per_node as usize <= pods =>
            {
                Ok(())
            }
            Self::Model => Err(LabError::Config {
                reason: format!(
                    "the NetworkPolicy model has at most {nodes} nodes of {pods} pods, not {} of {}",
                    config.nodes, config.pods_per_node
                ),
            }),
        }
    }

    /// The Kubernetes namespace of node `node`'s pods.
    pub fn pod_namespace(self, node: u32) -> String {
        match self {
            Self::Numbered => POD_NAMESPACE.to_owned(),
            Self::Model => model_name(&MODEL_NAMESPACES, node),
        }
    }

    /// The Kubernetes name of pod `pod` of node `node`.
    pub fn pod_name(self, node: u32, pod: u32) -> String {
        match self {
            Self::Numbered => pod_name(node, pod),
            Self::Model => model_name(&MODEL_PODS, pod),
        }
    }

    /// The Kubernetes namespaces of a lab of `nodes` nodes, in node order.
    pub fn namespaces(self, nodes: u32) -> Vec<String> {
        match self {
            Self::Numbered => vec![POD_NAMESPACE.to_owned()],
            Self::Model => (1..=nodes).map(|n| self.pod_namespace(n)).collect(),
        }
    }

    /// A namespace's own labels (besides [`NAMESPACE_NAME_LABEL`], which every
    /// namespace has).
    pub fn namespace_labels(self, namespace: &str) -> BTreeMap<String, String> {
        match self {
            Self::Numbered => BTreeMap::new(),
            Self::Model => BTreeMap::from([("ns".to_owned(), namespace.to_owned())]),
        }
    }

    /// A pod's own labels.
    pub fn pod_labels(self, name: &str, node: &str) -> BTreeMap<String, String> {
        let labels: &[(&str, &str)] = match self {
            Self::Numbered => &[("app", name), ("lab-node", node)],
            Self::Model => &[("pod", name)],
        };
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Every pod's container ports: the ports its echo server listens on.
    pub fn container_ports(self) -> Vec<ContainerPort> {
        match self {
            Self::Numbered => vec![
                ContainerPort::named("http", 80, "TCP"),
                ContainerPort::named("http-alt", 81, "TCP"),
                ContainerPort {
                    name: None,
                    port: 80,
                    protocol: "UDP".to_owned(),
                },
                ContainerPort {
                    name: None,
                    port: 81,
                    protocol: "UDP".to_owned(),
                },
            ],
            Self::Model => SERVER_PORTS
                .iter()
                .flat_map(|&port| {
                    MODEL_PROTOCOLS.iter().map(move |protocol| {
                        let name = format!("serve-{port}-{}", protocol.to_ascii_lowercase());
                        ContainerPort::named(&name, port, protocol)
                    })
                })
                .collect(),
        }
    }
}

/// The `index`th (from 1) of `names`; `validate` keeps indices in range.
fn model_name(names: &[&str], index: u32) -> String {
    let at = usize::try_from(index)
        .unwrap_or(usize::MAX)
        .saturating_sub(1);
    names
        .get(at)
        .map_or_else(|| index.to_string(), |n| (*n).to_owned())
}

/// Lab names become namespace-name prefixes: keep them to what `ip netns` and
/// file names take without quoting.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_chars && ok_ends && name.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    Err(LabError::Config {
        reason: format!(
            "lab name {name:?} must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-', \
             starting and ending with a letter or digit"
        ),
    })
}

/// The directory of the running executable, or its parent when that is cargo's
/// `deps/` (so test binaries find `target/debug/lumen-agent`).
pub fn default_bin_dir() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    match dir.file_name() {
        Some(last) if last == "deps" => dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        _ => dir,
    }
}

/// The target of the static `lumen-cni` that `cargo xtask build` makes.
pub const CNI_STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Names the plugin binary labs run, overriding [`cni_plugin`]'s choice
/// (`cargo xtask` sets it to the static build it just made).
pub const CNI_PLUGIN_ENV: &str = "LUMEN_CNI_PLUGIN";

/// The CNI plugin a lab runs from `bin_dir` (cargo's `target/<profile>`): the
/// file `LUMEN_CNI_PLUGIN` names, if it exists; else the static build of the
/// same profile when there is one at least as new as the glibc build there
/// (it starts about 1 ms faster a call); else the glibc one.
pub fn cni_plugin(bin_dir: &Path) -> PathBuf {
    if let Some(named) = std::env::var_os(CNI_PLUGIN_ENV).map(PathBuf::from)
        && named.is_file()
    {
        return named;
    }
    newest_plugin(bin_dir)
}

/// The static build beside `bin_dir` if it is at least as new as the glibc
/// one in it, else the glibc one.
fn newest_plugin(bin_dir: &Path) -> PathBuf {
    let glibc = bin_dir.join("lumen-cni");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let static_build = bin_dir
        .parent()
        .zip(bin_dir.file_name())
        .map(|(target, profile)| {
            target
                .join(CNI_STATIC_TARGET)
                .join(profile)
                .join("lumen-cni")
        });
    match static_build
        .as_deref()
        .and_then(|path| Some((path, modified(path)?)))
    {
        Some((path, built)) if Some(built) >= modified(&glibc) => path.to_owned(),
        _ => glibc,
    }
}

/// The directory holding one lab's state.
pub fn state_dir(state_root: &Path, lab: &str) -> PathBuf {
    state_root.join(lab)
}

/// The path a runtime uses for a named network namespace.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

pub fn underlay_netns(lab: &str) -> String {
    format!("{lab}-underlay")
}

pub fn external_netns(lab: &str) -> String {
    format!("{lab}-ext")
}

pub fn node_netns(lab: &str, node: u32) -> String {
    format!("{lab}-node-{node}")
}

pub fn pod_netns(lab: &str, node: u32, pod: u32) -> String {
    format!("{lab}-pod-{node}-{pod}")
}

pub fn node_name(node: u32) -> String {
    format!("node-{node}")
}

pub fn pod_name(node: u32, pod: u32) -> String {
    format!("pod-{node}-{pod}")
}

/// The underlay-side veth of node `node`.
pub fn node_peer_ifname(node: u32) -> String {
    format!("n{node}")
}

/// Node `node`'s address on the underlay.
pub fn node_ip(node: u32) -> Ipv4Addr {
    let [a, b, c, _] = UNDERLAY_GATEWAY.octets();
    // MAX_NODES keeps 10 + node within one octet; saturate rather than wrap.
    let last = u8::try_from(10 + node).unwrap_or(u8::MAX);
    Ipv4Addr::new(a, b, c, last)
}

/// Node `node`'s pod CIDR: `10.244.<node>.0/24`.
pub fn pod_cidr(node: u32) -> Ipv4Cidr {
    let third = u8::try_from(node).unwrap_or(u8::MAX);
    Ipv4Cidr::new(Ipv4Addr::new(10, 244, third, 0), 24).expect("x.y.z.0/24 has no host bits")
}

/// The cluster CIDR as a value.
pub fn cluster_cidr() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("10.244.0.0/16 has no host bits")
}

/// The underlay CIDR as a value.
pub fn underlay_cidr() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24).expect("192.0.2.0/24 has no host bits")
}

/// Whether `netns` is one of lab `lab`'s namespaces.
///
/// Matches the exact name grammar rather than the prefix, so `down` of lab
/// `lumen` never touches lab `lumen-t1`'s namespaces.
pub fn is_lab_netns(lab: &str, netns: &str) -> bool {
    let Some(rest) = netns
        .strip_prefix(lab)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let numbers = |s: &str, count: usize| {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == count
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    match rest {
        "underlay" | "ext" => true,
        _ => {
            rest.strip_prefix("node-").is_some_and(|n| numbers(n, 1))
                || rest.strip_prefix("pod-").is_some_and(|n| numbers(n, 2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_plugin_when_it_is_as_new() {
        use std::time::{Duration, SystemTime};
        let target = std::env::temp_dir().join(format!("lumen-cni-plugin-{}", std::process::id()));
        let bin_dir = target.join("debug");
        let static_dir = target.join(CNI_STATIC_TARGET).join("debug");
        let glibc = bin_dir.join("lumen-cni");
        let musl = static_dir.join("lumen-cni");
        let write = |path: &Path, age: u64| {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            let file = std::fs::File::create(path).expect("file");
            let when = SystemTime::now() - Duration::from_secs(age);
            file.set_modified(when).expect("mtime");
        };
        write(&glibc, 10);
        assert_eq!(newest_plugin(&bin_dir), glibc, "no static build");
        write(&musl, 20);
        assert_eq!(newest_plugin(&bin_dir), glibc, "a stale static build");
        write(&musl, 5);
        assert_eq!(newest_plugin(&bin_dir), musl);
        std::fs::remove_dir_all(&target).expect("cleanup");
    }

    #[test]
    fn names_and_addresses() {
        assert_eq!(node_netns("lumen", 2), "lumen-node-2");
        assert_eq!(pod_netns("t", 1, 3), "t-pod-1-3");
        assert_eq!(node_ip(1), Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(pod_cidr(2).to_string(), "10.244.2.0/24");
        assert_eq!(cluster_cidr().to_string(), CLUSTER_CIDR);
        assert_eq!(underlay_cidr().to_string(), UNDERLAY_CIDR);
        assert_eq!(
            netns_path("lumen-pod-1-1"),
            PathBuf::from("/run/netns/lumen-pod-1-1")
        );
    }

    #[test]
    fn lab_netns_matching_is_exact() {
        for ns in [
            "lumen-underlay",
            "lumen-ext",
            "lumen-node-1",
            "lumen-node-12",
            "lumen-pod-1-3",
        ] {
            assert!(is_lab_netns("lumen", ns), "{ns}");
        }
        for ns in [
            "lumen-t1-node-1",
            "lumen-t1-underlay",
            "lumen-node-1-pod-1-1",
            "lumen-node-",
            "lumen-pod-1",
            "lumen-pod-1-x",
            "lumenx-ext",
            "lumen",
            "other-ext",
        ] {
            assert!(!is_lab_netns("lumen", ns), "{ns}");
        }
        assert!(is_lab_netns("lumen-t1", "lumen-t1-node-1"));
    }

    #[test]
    fn validates_config() {
        let ok = LabConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            LabConfig {
                nodes: 0,
                ..LabConfig::default()
            },
            LabConfig {
                pods_per_node: 251,
                ..LabConfig::default()
            },
            LabConfig {
                name: "Bad_Name".into(),
                ..LabConfig::default()
            },
            LabConfig {
                name: "-x".into(),
                ..LabConfig::default()
            },
            LabConfig {
                name: String::new(),
                ..LabConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bin_dir_skips_cargo_deps() {
        assert_ne!(default_bin_dir().file_name(), Some("deps".as_ref()));
    }
}
