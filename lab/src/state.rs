//! The lab's record of itself (`state.json`): every namespace, address, process
//! and path that `status`, `probe`, `exec` and `down` need, planned up front from
//! the configuration and filled in (pids, pod IPs) as `up` goes.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use lumen_api::Ipv4Cidr;
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::cni_exec;
use crate::config::{self, ContainerPort, LabConfig, PodLayout};

/// File name of the state inside the lab's state directory.
pub const STATE_FILE: &str = "state.json";

/// Everything known about one lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub state_root: PathBuf,
    pub state_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub underlay: Underlay,
    pub external: External,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Extra flags every agent runs with.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// The lab's IPFIX collector, if it runs one.
    #[serde(default)]
    pub collector: Option<Collector>,
    /// The lab's Prometheus and its metrics relay, if it runs them.
    #[serde(default)]
    pub prometheus: Option<Prometheus>,
    /// Who the pods are (names, labels, container ports in the manifests).
    #[serde(default)]
    pub layout: PodLayout,
    /// Labels added to namespaces at run time (see
    /// [`crate::Lab::set_namespace_labels`]), by namespace.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// nfcapd in the underlay namespace, receiving every node's IPFIX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collector {
    /// `udp://192.0.2.1:4739`, as the agents are told.
    pub url: String,
    /// Where nfcapd writes its files (read them with `nfdump -R DIR`).
    pub dir: PathBuf,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

/// A Prometheus server in the root namespace, on loopback, scraping every node
/// agent through the metrics relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prometheus {
    /// `http://127.0.0.1:9090`: the web UI and the HTTP API.
    pub url: String,
    pub listen: SocketAddr,
    /// `prometheus.yml`, written by `up`.
    pub config_file: PathBuf,
    /// The TSDB, removed with the lab.
    pub data_dir: PathBuf,
    /// Alert rule files the server evaluates.
    pub rule_files: Vec<PathBuf>,
    pub log: PathBuf,
    pub pid: Option<u32>,
    pub relay: MetricsRelay,
}

/// `lumen lab relay-metrics`: one loopback port per node, answered from the
/// node agent's socket (see [`crate::relay`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsRelay {
    pub targets: Vec<RelayTarget>,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

/// Where the relay serves one node's `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTarget {
    pub node: String,
    pub listen: SocketAddr,
}

/// The underlay: one namespace with a bridge every node is plugged into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlay {
    pub netns: String,
    pub cidr: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub bridge: String,
}

/// The host outside the cluster, reached through the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct External {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub server_pid: Option<u32>,
    pub log: PathBuf,
    pub stats_file: PathBuf,
}

/// One node: a namespace with an underlay link and an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub index: u32,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Cidr,
    /// The agent's API socket.
    pub socket: PathBuf,
    /// The agent's own state directory (IPAM and such).
    pub agent_state_dir: PathBuf,
    pub agent_log: PathBuf,
    pub cni_log: PathBuf,
    pub agent_pid: Option<u32>,
}

/// One pod: a namespace attached by the CNI plugin, running an echo server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    /// Known once CNI ADD succeeded.
    pub ip: Option<Ipv4Addr>,
    pub container_id: String,
    pub server_pid: Option<u32>,
    pub log: PathBuf,
    pub stats_file: PathBuf,
    /// The last ADD result, which CHECK and DEL pass back as `prevResult` (a
    /// runtime's result cache).
    pub cni_result: PathBuf,
    /// Labels added at run time (see [`crate::Lab::set_pod_labels`]), over the
    /// layout's own.
    #[serde(default)]
    pub extra_labels: BTreeMap<String, String>,
    /// Container ports added at run time (see [`crate::Lab::set_pod_ports`]):
    /// names a policy can refer to; the server still listens on
    /// [`config::SERVER_PORTS`] only.
    #[serde(default)]
    pub extra_ports: Vec<ContainerPort>,
}

impl Pod {
    /// The namespace path a runtime hands to CNI.
    pub fn netns_path(&self) -> PathBuf {
        config::netns_path(&self.netns)
    }

    /// The name `probe`, `exec` and [`LabState::pod`] know the pod by: its name
    /// in namespace `default` (`pod-1-1`), `namespace/name` in any other (`x/a`).
    pub fn lab_name(&self) -> String {
        if self.namespace == config::POD_NAMESPACE {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl Node {
    /// The namespace path the agent is given.
    pub fn netns_path(&self) -> PathBuf {
        config::netns_path(&self.netns)
    }
}

impl LabState {
    /// The full plan for `config` with the usual pods ([`PodLayout::Numbered`]).
    pub fn plan(config: &LabConfig) -> Self {
        Self::plan_with(config, PodLayout::Numbered)
    }

    /// The full plan for `config` and `layout`: names, addresses and paths, no
    /// processes yet. Files and namespaces are named after the pod's place
    /// (`pod-<node>-<i>`) whatever the layout calls it.
    pub fn plan_with(config: &LabConfig, layout: PodLayout) -> Self {
        let lab = config.name.as_str();
        let state_dir = config::state_dir(&config.state_root, lab);
        let pods_dir = state_dir.join("pods");
        let nodes = (1..=config.nodes)
            .map(|i| {
                let dir = state_dir.join(config::node_name(i));
                Node {
                    name: config::node_name(i),
                    index: i,
                    netns: config::node_netns(lab, i),
                    underlay_ip: config::node_ip(i),
                    pod_cidr: config::pod_cidr(i),
                    socket: dir.join("agent.sock"),
                    agent_state_dir: dir.join("state"),
                    agent_log: dir.join("agent.log"),
                    cni_log: dir.join("cni.log"),
                    agent_pid: None,
                }
            })
            .collect();
        let pods = (1..=config.nodes)
            .flat_map(|i| (1..=config.pods_per_node).map(move |j| (i, j)))
            .map(|(i, j)| {
                let place = config::pod_name(i, j);
                Pod {
                    name: layout.pod_name(i, j),
                    namespace: layout.pod_namespace(i),
                    node: config::node_name(i),
                    netns: config::pod_netns(lab, i, j),
                    ip: None,
                    container_id: cni_exec::container_id(lab, &place),
                    server_pid: None,
                    log: pods_dir.join(format!("{place}.log")),
                    stats_file: pods_dir.join(format!("{place}.stats.json")),
                    cni_result: pods_dir.join(format!("{place}.cni-result.json")),
                    extra_labels: BTreeMap::new(),
                    extra_ports: Vec::new(),
                }
            })
            .collect();
        Self {
            name: lab.to_owned(),
            state_root: config.state_root.clone(),
            bin_dir: config.bin_dir.clone(),
            underlay: Underlay {
                netns: config::underlay_netns(lab),
                cidr: config::underlay_cidr(),
                gateway: config::UNDERLAY_GATEWAY,
                bridge: config::BRIDGE.to_owned(),
            },
            external: External {
                name: config::EXTERNAL_NAME.to_owned(),
                netns: config::external_netns(lab),
                ip: config::EXTERNAL_IP,
                gateway: config::EXTERNAL_GATEWAY,
                server_pid: None,
                log: pods_dir.join(format!("{}.log", config::EXTERNAL_NAME)),
                stats_file: pods_dir.join(format!("{}.stats.json", config::EXTERNAL_NAME)),
            },
            nodes,
            pods,
            state_dir,
            agent_args: config.agent_args.clone(),
            collector: None,
            prometheus: None,
            layout,
            namespace_labels: BTreeMap::new(),
        }
        .with_collector(config.collector)
    }

    /// Plan the lab's IPFIX collector and point every agent at it.
    fn with_collector(mut self, wanted: bool) -> Self {
        if wanted {
            let url = format!(
                "udp://{}:{}",
                config::UNDERLAY_GATEWAY,
                config::COLLECTOR_PORT
            );
            self.agent_args.push(format!("--ipfix-collector={url}"));
            self.collector = Some(Collector {
                url,
                dir: self.state_dir.join("ipfix"),
                log: self.state_dir.join("collector.log"),
                pid: None,
            });
        }
        self
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.state_dir.join("manifests")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    /// The directory of node `node` (socket, logs, agent state).
    pub fn node_dir(&self, node: &Node) -> PathBuf {
        self.state_dir.join(&node.name)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod whose [`Pod::lab_name`] is `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.lab_name() == name)
    }

    /// The Kubernetes namespaces the pods live in.
    pub fn namespaces(&self) -> Vec<String> {
        let nodes = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        self.layout.namespaces(nodes)
    }

    /// Every label of namespace `namespace`: the layout's, then those added at
    /// run time, and the name label, which nothing overrides (the API server
    /// sets it).
    pub fn namespace_labels_of(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.layout.namespace_labels(namespace);
        labels.extend(
            self.namespace_labels
                .get(namespace)
                .cloned()
                .unwrap_or_default(),
        );
        labels.insert(
            config::NAMESPACE_NAME_LABEL.to_owned(),
            namespace.to_owned(),
        );
        labels
    }

    /// Every label of `pod`: the layout's, then those added at run time.
    pub fn pod_labels(&self, pod: &Pod) -> BTreeMap<String, String> {
        let mut labels = self.layout.pod_labels(&pod.name, &pod.node);
        labels.extend(pod.extra_labels.clone());
        labels
    }

    /// Every container port of `pod`: the layout's, then those added at run time.
    pub fn pod_ports(&self, pod: &Pod) -> Vec<ContainerPort> {
        let mut ports = self.layout.container_ports();
        ports.extend(pod.extra_ports.iter().cloned());
        ports
    }

    /// Every namespace of the lab, underlay first.
    pub fn netns_names(&self) -> Vec<String> {
        let mut all = vec![self.underlay.netns.clone(), self.external.netns.clone()];
        all.extend(self.nodes.iter().map(|n| n.netns.clone()));
        all.extend(self.pods.iter().map(|p| p.netns.clone()));
        all
    }

    /// Every process the lab started and recorded.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.agent_pid)
            .chain(self.pods.iter().filter_map(|p| p.server_pid))
            .chain(self.external.server_pid)
            .chain(self.prometheus.as_ref().and_then(|p| p.relay.pid))
            .chain(self.prometheus.as_ref().and_then(|p| p.pid))
            .collect()
    }

    /// Read `state.json` of lab `name` under `state_root`.
    pub fn load(name: &str, state_root: &Path) -> Result<Self, LabError> {
        let path = config::state_dir(state_root, name).join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotUp {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(source) => {
                return Err(LabError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| LabError::State { path, source })
    }

    /// Write `state.json` atomically, so a crash never leaves half a state.
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.state_file();
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }
}

/// Write `bytes` to `path` through a temporary file and a rename, so readers (the
/// agents watching manifests, `status`) never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot prefix keeps directory watchers that skip hidden files from reading it.
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let io = |action, source| LabError::Io {
        action,
        path: tmp.clone(),
        source,
    };
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|source| LabError::Io {
        action: "rename into place",
        path: path.to_owned(),
        source,
    })
}

/// Create a directory and its parents.
pub fn create_dir(path: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(path).map_err(|source| LabError::Io {
        action: "create directory",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir()
                .join(format!("lumen-lab-test-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn config(root: &Path) -> LabConfig {
        LabConfig {
            name: "t".into(),
            nodes: 2,
            pods_per_node: 2,
            bin_dir: PathBuf::from("/opt/lumen/bin"),
            state_root: root.to_owned(),
            agent_args: Vec::new(),
            collector: false,
            prometheus: false,
            relay_port_base: config::DEFAULT_RELAY_PORT_BASE,
        }
    }

    #[test]
    fn model_layout_names_pods_by_namespace() {
        let cfg = LabConfig {
            nodes: 3,
            pods_per_node: 3,
            ..config(Path::new("/run/x"))
        };
        let state = LabState::plan_with(&cfg, PodLayout::Model);
        let names: Vec<String> = state.pods.iter().map(Pod::lab_name).collect();
        assert_eq!(
            names,
            [
                "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"
            ]
        );
        assert_eq!(state.namespaces(), ["x", "y", "z"]);
        let za = state.pod("z/a").unwrap();
        assert_eq!((za.node.as_str(), za.name.as_str()), ("node-3", "a"));
        // Files and namespaces keep the place's name, so nothing collides.
        assert_eq!(za.netns, "t-pod-3-1");
        assert_eq!(za.log, PathBuf::from("/run/x/t/pods/pod-3-1.log"));
        assert!(state.pod("a").is_none(), "a bare name is ambiguous");
        assert_eq!(
            state.pod_labels(za),
            BTreeMap::from([("pod".to_owned(), "a".to_owned())])
        );
        assert_eq!(
            state.namespace_labels_of("y"),
            BTreeMap::from([
                ("kubernetes.io/metadata.name".to_owned(), "y".to_owned()),
                ("ns".to_owned(), "y".to_owned()),
            ])
        );

        let numbered = LabState::plan(&cfg);
        let p = numbered.pod("pod-3-1").unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.lab_name()),
            ("default", p.name.clone())
        );
        assert_eq!(numbered.namespaces(), ["default"]);
        assert_eq!(
            numbered.pod_labels(p),
            BTreeMap::from([
                ("app".to_owned(), "pod-3-1".to_owned()),
                ("lab-node".to_owned(), "node-3".to_owned()),
            ])
        );
    }

    #[test]
    fn model_layout_fits_three_by_three() {
        let cfg = |nodes, pods_per_node| LabConfig {
            nodes,
            pods_per_node,
            ..config(Path::new("/r"))
        };
        assert!(PodLayout::Model.validate(&cfg(3, 3)).is_ok());
        assert!(PodLayout::Model.validate(&cfg(2, 1)).is_ok());
        assert!(PodLayout::Model.validate(&cfg(4, 3)).is_err());
        assert!(PodLayout::Model.validate(&cfg(3, 4)).is_err());
        assert!(PodLayout::Numbered.validate(&cfg(4, 4)).is_ok());
    }

    #[test]
    fn plan_names_everything() {
        let state = LabState::plan(&config(Path::new("/run/x")));
        assert_eq!(state.state_dir, PathBuf::from("/run/x/t"));
        assert_eq!(state.nodes.len(), 2);
        assert_eq!(state.pods.len(), 4);
        let node = &state.nodes[1];
        assert_eq!(node.name, "node-2");
        assert_eq!(node.netns, "t-node-2");
        assert_eq!(node.underlay_ip, Ipv4Addr::new(192, 0, 2, 12));
        assert_eq!(node.pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(node.socket, PathBuf::from("/run/x/t/node-2/agent.sock"));
        assert_eq!(node.netns_path(), PathBuf::from("/run/netns/t-node-2"));
        let pod = state.pod("pod-2-1").unwrap();
        assert_eq!(pod.node, "node-2");
        assert_eq!(pod.netns_path(), PathBuf::from("/run/netns/t-pod-2-1"));
        assert_eq!(
            pod.stats_file,
            PathBuf::from("/run/x/t/pods/pod-2-1.stats.json")
        );
        assert_eq!(state.external.netns, "t-ext");
        assert_eq!(state.underlay.netns, "t-underlay");
        assert_eq!(state.netns_names().len(), 2 + 2 + 4);
        for ns in state.netns_names() {
            assert!(config::is_lab_netns("t", &ns), "{ns}");
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = TempDir::new("state");
        let mut state = LabState::plan(&config(&dir.0));
        create_dir(&state.state_dir).unwrap();
        state.nodes[0].agent_pid = Some(42);
        state.pods[0].ip = Some(Ipv4Addr::new(10, 244, 1, 2));
        state.external.server_pid = Some(7);
        state.save().unwrap();
        let loaded = LabState::load("t", &dir.0).unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.pids(), vec![42, 7]);
        let missing = LabState::load("nope", &dir.0).unwrap_err();
        assert!(matches!(missing, LabError::NotUp { .. }), "{missing}");
        std::fs::write(state.state_file(), b"{").unwrap();
        let bad = LabState::load("t", &dir.0).unwrap_err();
        assert!(matches!(bad, LabError::State { .. }), "{bad}");
    }
}
