//! A running lab as one value: `up` builds it step by step (reporting progress),
//! `open` finds it again from its state file, and the accessors answer "which
//! namespace / address is X" for `exec`, `probe` and the tests.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use lumen_api::Ipv4Cidr;
use lumen_api::client::Client;
use serde_json::Value;

use crate::LabError;
use crate::cni_exec::{self, CniCommand};
use crate::config::{self, ContainerPort, LabConfig, PodLayout};
use crate::down::{DownReport, down};
use crate::manifest;
use crate::process;
use crate::prometheus;
use crate::state::{External, LabState, Node, Pod, Prometheus, create_dir, write_atomic};
use crate::status::{self, Status};
use crate::topology::{self, describe};

/// How long an agent gets to answer `/healthz`.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an echo server gets to bind its ports.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the metrics relay gets to listen.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Prometheus gets to open its TSDB and answer `/-/ready`.
const PROMETHEUS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One finished step of `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Underlay {
        netns: String,
        cidr: Ipv4Cidr,
    },
    External {
        netns: String,
        ip: Ipv4Addr,
    },
    Node {
        node: String,
        netns: String,
        ip: Ipv4Addr,
    },
    Manifests {
        dir: PathBuf,
    },
    AgentReady {
        node: String,
        pid: u32,
    },
    PodAttached {
        pod: String,
        node: String,
        ip: Ipv4Addr,
    },
    ServerStarted {
        name: String,
        pid: u32,
    },
    CollectorStarted {
        url: String,
        dir: PathBuf,
        pid: u32,
    },
    RelayStarted {
        /// Each node and where its metrics are served.
        targets: Vec<(String, SocketAddr)>,
        pid: u32,
    },
    PrometheusStarted {
        url: String,
        pid: u32,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Underlay { netns, cidr } => write!(f, "underlay {netns} ready ({cidr})"),
            Self::External { netns, ip } => write!(f, "external host {netns} ready ({ip})"),
            Self::Node { node, netns, ip } => write!(f, "{node} netns {netns} ready ({ip})"),
            Self::Manifests { dir } => write!(f, "manifests written to {}", dir.display()),
            Self::AgentReady { node, pid } => write!(f, "{node} agent ready (pid {pid})"),
            Self::PodAttached { pod, node, ip } => write!(f, "{pod} attached on {node} ({ip})"),
            Self::ServerStarted { name, pid } => {
                write!(f, "{name} echo server listening (pid {pid})")
            }
            Self::CollectorStarted { url, dir, pid } => write!(
                f,
                "IPFIX collector nfcapd on {url} writing {} (pid {pid})",
                dir.display()
            ),
            Self::RelayStarted { targets, pid } => {
                let targets: Vec<String> = targets
                    .iter()
                    .map(|(node, addr)| format!("{node} on {addr}"))
                    .collect();
                write!(f, "metrics relay: {} (pid {pid})", targets.join(", "))
            }
            Self::PrometheusStarted { url, pid } => write!(
                f,
                "Prometheus on {url} scraping every {} (pid {pid})",
                prometheus::SCRAPE_INTERVAL
            ),
        }
    }
}

/// A lab that is up (or was, if its processes died since).
#[derive(Debug, Clone)]
pub struct Lab {
    state: LabState,
}

impl Lab {
    /// Build the lab described by `config`, calling `progress` after each step.
    /// On failure everything built so far is removed again.
    pub fn up(config: &LabConfig, progress: &mut dyn FnMut(Progress)) -> Result<Self, LabError> {
        Self::up_with(config, PodLayout::Numbered, progress)
    }

    /// [`Self::up`] with the pods of `layout` (e.g. the NetworkPolicy model).
    pub fn up_with(
        config: &LabConfig,
        layout: PodLayout,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, LabError> {
        config.validate()?;
        layout.validate(config)?;
        let bin_dir = std::path::absolute(&config.bin_dir).map_err(|source| LabError::Io {
            action: "resolve",
            path: config.bin_dir.clone(),
            source,
        })?;
        for bin in ["lumen-agent", "lumen-cni", "lumen"] {
            if !bin_dir.join(bin).is_file() {
                return Err(LabError::Config {
                    reason: format!(
                        "{bin} not found in {} (build the workspace first)",
                        bin_dir.display()
                    ),
                });
            }
        }
        if config.prometheus && !Path::new(prometheus::BINARY).is_file() {
            return Err(LabError::Missing {
                path: PathBuf::from(prometheus::BINARY),
            });
        }
        ensure_absent(config)?;
        let config = LabConfig {
            bin_dir,
            ..config.clone()
        };
        let mut lab = Self {
            state: LabState::plan_with(&config, layout),
        };
        match lab.build(&config, progress) {
            Ok(()) => Ok(lab),
            Err(err) => {
                // The build error is what the caller needs; a cleanup failure would
                // only hide it, and `down` can be run again by hand.
                let _ = down(&config.name, &config.state_root);
                Err(err)
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn from_state(state: LabState) -> Self {
        Self { state }
    }

    /// The lab `name` under `state_root`, from its state file.
    pub fn open(name: &str, state_root: &Path) -> Result<Self, LabError> {
        config::validate_name(name)?;
        Ok(Self {
            state: LabState::load(name, state_root)?,
        })
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn state_root(&self) -> &Path {
        &self.state.state_root
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.state.node(name)
    }

    /// The pod `name` (see [`Pod::lab_name`]).
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.state.pod(name)
    }

    pub fn external(&self) -> &External {
        &self.state.external
    }

    /// The lab's Prometheus, if it runs one.
    pub fn prometheus(&self) -> Option<&Prometheus> {
        self.state.prometheus.as_ref()
    }

    /// The network namespace of a pod, a node, `external` or `underlay` (a lab
    /// namespace name is accepted as itself).
    pub fn netns_of(&self, name: &str) -> Option<String> {
        let s = &self.state;
        if let Some(pod) = s.pod(name) {
            return Some(pod.netns.clone());
        }
        if let Some(node) = s.node(name) {
            return Some(node.netns.clone());
        }
        match name {
            config::EXTERNAL_NAME => Some(s.external.netns.clone()),
            config::UNDERLAY_NAME => Some(s.underlay.netns.clone()),
            _ if s.netns_names().iter().any(|ns| ns == name) => Some(name.to_owned()),
            _ => None,
        }
    }

    /// The address of a pod (its pod IP), a node (its underlay IP), `external`,
    /// `underlay` (the bridge) or a literal IPv4 address.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        let s = &self.state;
        if let Some(pod) = s.pod(name) {
            return pod.ip;
        }
        if let Some(node) = s.node(name) {
            return Some(node.underlay_ip);
        }
        match name {
            config::EXTERNAL_NAME => Some(s.external.ip),
            config::UNDERLAY_NAME => Some(s.underlay.gateway),
            _ => name.parse().ok(),
        }
    }

    /// Like [`Self::netns_of`], as an error for unknown names.
    pub fn require_netns(&self, name: &str) -> Result<String, LabError> {
        self.netns_of(name).ok_or_else(|| self.unknown(name))
    }

    /// Like [`Self::address_of`], as an error for unknown names and for pods
    /// that have no address yet.
    pub fn require_address(&self, name: &str) -> Result<Ipv4Addr, LabError> {
        if let Some(pod) = self.pod(name) {
            return pod.ip.ok_or_else(|| LabError::NoAddress {
                name: name.to_owned(),
            });
        }
        self.address_of(name).ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> LabError {
        LabError::UnknownTarget {
            lab: self.state.name.clone(),
            name: name.to_owned(),
        }
    }

    /// A client for the agent of node `node`.
    pub fn client(&self, node: &str) -> Option<Client> {
        self.node(node)
            .map(|n| Client::new(&n.socket, Duration::from_secs(2)))
    }

    /// Processes alive, pod identities from the agents.
    pub fn status(&self) -> Status {
        status::gather(&self.state)
    }

    /// Run the CNI plugin for `pod` as a runtime would. Does not change the lab's
    /// record of the pod (its IP stays what `up` saw).
    pub fn cni(&self, pod: &str, command: CniCommand) -> Result<Value, LabError> {
        let pod = self.pod(pod).ok_or_else(|| self.unknown(pod))?;
        let node = self
            .node(&pod.node)
            .ok_or_else(|| self.unknown(&pod.node))?;
        cni_exec::invoke(&self.state.bin_dir, node, pod, command)
    }

    /// CNI ADD for `pod`, recording its (possibly new) IP in the lab's state and
    /// in the pod's manifest, as a kubelet reports `status.podIP`.
    pub fn attach(&mut self, pod: &str) -> Result<Ipv4Addr, LabError> {
        let result = self.cni(pod, CniCommand::Add)?;
        let index = self.pod_index(pod)?;
        let ip = cni_exec::result_ip(&self.state.pods[index], &result)?;
        self.state.pods[index].ip = Some(ip);
        self.state.save()?;
        self.write_pod_manifest(index)?;
        Ok(ip)
    }

    /// Replace the labels added to `pod` at run time (the layout's own stay,
    /// unless an added one has the same key) and rewrite its manifest; the
    /// agents follow within their manifest poll interval.
    pub fn set_pod_labels(
        &mut self,
        pod: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        let index = self.pod_index(pod)?;
        if self.state.pods[index].extra_labels == labels {
            return Ok(());
        }
        self.state.pods[index].extra_labels = labels;
        self.state.save()?;
        self.write_pod_manifest(index)
    }

    /// Replace the container ports added to `pod` at run time (after the
    /// layout's own) and rewrite its manifest.
    pub fn set_pod_ports(&mut self, pod: &str, ports: Vec<ContainerPort>) -> Result<(), LabError> {
        let index = self.pod_index(pod)?;
        if self.state.pods[index].extra_ports == ports {
            return Ok(());
        }
        self.state.pods[index].extra_ports = ports;
        self.state.save()?;
        self.write_pod_manifest(index)
    }

    /// Replace the labels added to Kubernetes namespace `namespace` at run time
    /// and rewrite its manifest.
    pub fn set_namespace_labels(
        &mut self,
        namespace: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        if !self.state.namespaces().iter().any(|n| n == namespace) {
            return Err(LabError::UnknownNamespace {
                lab: self.state.name.clone(),
                namespace: namespace.to_owned(),
            });
        }
        let current = self.state.namespace_labels.get(namespace);
        if current.map_or(labels.is_empty(), |c| *c == labels) {
            return Ok(());
        }
        if labels.is_empty() {
            self.state.namespace_labels.remove(namespace);
        } else {
            self.state
                .namespace_labels
                .insert(namespace.to_owned(), labels);
        }
        self.state.save()?;
        self.write_namespace_manifest(namespace)
    }

    fn pod_index(&self, pod: &str) -> Result<usize, LabError> {
        self.state
            .pods
            .iter()
            .position(|p| p.lab_name() == pod)
            .ok_or_else(|| self.unknown(pod))
    }

    fn write_pod_manifest(&self, index: usize) -> Result<(), LabError> {
        let s = &self.state;
        let pod = &s.pods[index];
        if let Some(node) = s.node(&pod.node) {
            manifest::pod(pod, node, &s.pod_labels(pod), &s.pod_ports(pod))
                .write(&s.manifests_dir())?;
        }
        Ok(())
    }

    fn write_namespace_manifest(&self, namespace: &str) -> Result<(), LabError> {
        let s = &self.state;
        manifest::namespace(namespace, &s.namespace_labels_of(namespace))
            .write(&s.manifests_dir())
            .map(drop)
    }

    /// Route the pod network from the underlay to the nodes, so the external
    /// host reaches pods (e.g. to test `ipBlock` peers outside the cluster).
    /// `up` leaves it out: by default only the cluster's nodes reach pods, as
    /// on a network that does not know the pod CIDRs.
    pub fn route_pods_from_underlay(&self) -> Result<(), LabError> {
        topology::route_pod_cidrs(&self.state.underlay, &self.state.nodes)
    }

    /// CNI DEL for `pod`.
    pub fn cni_del(&self, pod: &str) -> Result<(), LabError> {
        self.cni(pod, CniCommand::Del).map(drop)
    }

    /// Run `argv` inside the namespace of `target` (see [`Self::netns_of`]) with
    /// inherited stdio.
    pub fn exec(&self, target: &str, argv: &[String]) -> Result<ExitStatus, LabError> {
        let netns = self.require_netns(target)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns]).args(argv);
        cmd.status().map_err(|source| LabError::Spawn {
            command: describe(&cmd),
            source,
        })
    }

    /// Remove the lab (see [`crate::down()`]).
    pub fn down(self) -> Result<DownReport, LabError> {
        down(&self.state.name, &self.state.state_root)
    }

    // === building ===

    fn build(
        &mut self,
        config: &LabConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), LabError> {
        self.create_dirs()?;
        self.state.save()?;

        let s = &self.state;
        topology::create_underlay(&s.underlay)?;
        progress(Progress::Underlay {
            netns: s.underlay.netns.clone(),
            cidr: s.underlay.cidr,
        });
        topology::create_external(&s.underlay, &s.external)?;
        progress(Progress::External {
            netns: s.external.netns.clone(),
            ip: s.external.ip,
        });
        for node in &s.nodes {
            topology::create_node(&s.underlay, node)?;
            progress(Progress::Node {
                node: node.name.clone(),
                netns: node.netns.clone(),
                ip: node.underlay_ip,
            });
        }

        self.write_manifests()?;
        progress(Progress::Manifests {
            dir: self.state.manifests_dir(),
        });
        self.start_collector(progress)?;

        self.start_agents(progress)?;
        self.attach_pods(progress)?;
        if config.prometheus {
            self.start_prometheus(config, progress)?;
        }
        Ok(())
    }

    fn create_dirs(&self) -> Result<(), LabError> {
        let s = &self.state;
        create_dir(&s.manifests_dir())?;
        create_dir(&s.pods_dir())?;
        for node in &s.nodes {
            create_dir(&node.agent_state_dir)?;
            let cni_dir = s.node_dir(node).join("cni");
            create_dir(&cni_dir)?;
            let conflist = cni_exec::conflist(node);
            let bytes = serde_json::to_vec_pretty(&conflist).map_err(|source| LabError::State {
                path: cni_dir.clone(),
                source,
            })?;
            write_atomic(&cni_dir.join("10-lumen.conflist"), &bytes)?;
        }
        Ok(())
    }

    /// Every node is written before any agent starts: agents read the other nodes
    /// for their routes.
    fn write_manifests(&self) -> Result<(), LabError> {
        let s = &self.state;
        for namespace in s.namespaces() {
            self.write_namespace_manifest(&namespace)?;
        }
        for node in &s.nodes {
            manifest::node(node).write(&s.manifests_dir())?;
        }
        for index in 0..s.pods.len() {
            self.write_pod_manifest(index)?;
        }
        Ok(())
    }

    /// Start `node`'s agent again with the lab's exact command line, e.g. after a
    /// test killed it; the caller waits for it (`process::wait_agent_ready`).
    pub fn spawn_agent(&self, node: &str) -> Result<Child, LabError> {
        let node = self.state.node(node).ok_or_else(|| self.unknown(node))?;
        process::spawn_detached(&mut agent_command(&self.state, node), &node.agent_log)
    }

    /// nfcapd on the underlay gateway, if the lab has one; agents export to it.
    fn start_collector(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), LabError> {
        let Some(collector) = self.state.collector.clone() else {
            return Ok(());
        };
        create_dir(&collector.dir)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.state.underlay.netns, "nfcapd"])
            .args(["-b", &config::UNDERLAY_GATEWAY.to_string()])
            .args(["-p", &config::COLLECTOR_PORT.to_string()])
            // A file a minute, so `nfdump -R` shows flows soon.
            .args(["-t", "60", "-w"])
            .arg(&collector.dir);
        let pid = process::spawn_detached(&mut cmd, &collector.log)?.id();
        if let Some(c) = self.state.collector.as_mut() {
            c.pid = Some(pid);
        }
        self.state.save()?;
        progress(Progress::CollectorStarted {
            url: collector.url,
            dir: collector.dir,
            pid,
        });
        Ok(())
    }

    /// The metrics relay, then Prometheus scraping it; each pid is saved as soon
    /// as the process exists, so `down` finds it whatever happens next.
    fn start_prometheus(
        &mut self,
        config: &LabConfig,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), LabError> {
        let planned = prometheus::plan(
            &self.state,
            config.relay_port_base,
            prometheus::default_rule_files(),
        )?;
        self.state.prometheus = Some(planned.clone());
        self.state.save()?;

        let relay_log = &planned.relay.log;
        let mut relay =
            process::spawn_detached(&mut prometheus::relay_command(&self.state), relay_log)?;
        let relay_pid = relay.id();
        if let Some(p) = self.state.prometheus.as_mut() {
            p.relay.pid = Some(relay_pid);
        }
        self.state.save()?;
        let targets: Vec<(String, SocketAddr)> = planned
            .relay
            .targets
            .iter()
            .map(|t| (t.node.clone(), t.listen))
            .collect();
        let addrs: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
        prometheus::wait_relay(&mut relay, &addrs, relay_log, RELAY_READY_TIMEOUT)?;
        progress(Progress::RelayStarted {
            targets,
            pid: relay_pid,
        });

        write_atomic(
            &planned.config_file,
            prometheus::scrape_config(&planned).as_bytes(),
        )?;
        create_dir(&planned.data_dir)?;
        let mut server = process::spawn_detached(
            &mut prometheus::command(&self.state, &planned),
            &planned.log,
        )?;
        let pid = server.id();
        if let Some(p) = self.state.prometheus.as_mut() {
            p.pid = Some(pid);
        }
        self.state.save()?;
        prometheus::wait_ready(
            &mut server,
            planned.listen,
            &planned.log,
            PROMETHEUS_READY_TIMEOUT,
        )?;
        progress(Progress::PrometheusStarted {
            url: planned.url,
            pid,
        });
        Ok(())
    }

    fn start_agents(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), LabError> {
        let mut children = Vec::new();
        for i in 0..self.state.nodes.len() {
            let node = &self.state.nodes[i];
            let child =
                process::spawn_detached(&mut agent_command(&self.state, node), &node.agent_log)?;
            self.state.nodes[i].agent_pid = Some(child.id());
            self.state.save()?;
            children.push(child);
        }
        for (node, mut child) in self.state.nodes.iter().zip(children) {
            process::wait_agent_ready(&mut child, node, AGENT_READY_TIMEOUT)?;
            progress(Progress::AgentReady {
                node: node.name.clone(),
                pid: child.id(),
            });
        }
        Ok(())
    }

    fn attach_pods(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), LabError> {
        let mut servers: Vec<(String, PathBuf, Child)> = Vec::new();
        for i in 0..self.state.pods.len() {
            let pod = self.state.pods[i].clone();
            let node = self
                .state
                .node(&pod.node)
                .cloned()
                .ok_or_else(|| self.unknown(&pod.node))?;
            topology::create_pod(&pod)?;
            let ip = self.attach(&pod.lab_name())?;
            progress(Progress::PodAttached {
                pod: pod.lab_name(),
                node: node.name.clone(),
                ip,
            });
            let child =
                self.start_server(&pod.netns, &pod.lab_name(), &pod.log, &pod.stats_file)?;
            self.state.pods[i].server_pid = Some(child.id());
            self.state.save()?;
            servers.push((pod.lab_name(), pod.log, child));
        }
        let ext = self.state.external.clone();
        let child = self.start_server(&ext.netns, &ext.name, &ext.log, &ext.stats_file)?;
        self.state.external.server_pid = Some(child.id());
        self.state.save()?;
        servers.push((ext.name, ext.log, child));

        for (name, log, mut child) in servers {
            process::wait_listening(
                &mut child,
                &name,
                &config::SERVER_PORTS,
                &log,
                SERVER_READY_TIMEOUT,
            )?;
            progress(Progress::ServerStarted {
                name,
                pid: child.id(),
            });
        }
        Ok(())
    }

    /// `ip netns exec NETNS lumen lab serve …`, detached; `ip` execs the server, so
    /// the child's pid is the server's.
    fn start_server(
        &self,
        netns: &str,
        name: &str,
        log: &Path,
        stats_file: &Path,
    ) -> Result<Child, LabError> {
        let ports = config::SERVER_PORTS.map(|p| p.to_string()).join(",");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(self.state.bin_dir.join("lumen"))
            .args(["lab", "serve", "--sctp", "--name", name, "--ports", &ports])
            .arg("--stats-file")
            .arg(stats_file);
        process::spawn_detached(&mut cmd, log)
    }
}

/// The agent's command line for `node`: the same at `up` and on a restart.
fn agent_command(state: &LabState, node: &Node) -> Command {
    let mut cmd = Command::new(state.bin_dir.join("lumen-agent"));
    cmd.arg("--node-name")
        .arg(&node.name)
        .arg("--netns")
        .arg(node.netns_path())
        .arg("--socket")
        .arg(&node.socket)
        .arg("--state-dir")
        .arg(&node.agent_state_dir)
        .arg("--manifests")
        .arg(state.manifests_dir())
        .args([
            "--underlay-iface",
            "eth0",
            "--cluster-cidr",
            config::CLUSTER_CIDR,
        ]);
    // Every agent knows every node's agent: it runs the Traceflow objects
    // whose source pod is on its node.
    for peer in &state.nodes {
        cmd.arg(format!(
            "--peer-agent={}={}",
            peer.name,
            peer.socket.display()
        ));
    }
    cmd.args(&state.agent_args);
    cmd
}

/// Refuse to build over an existing lab of the same name.
fn ensure_absent(config: &LabConfig) -> Result<(), LabError> {
    let state = config::state_dir(&config.state_root, &config.name).join(crate::state::STATE_FILE);
    let exists = |what: String| LabError::AlreadyUp {
        name: config.name.clone(),
        what,
    };
    if state.exists() {
        return Err(exists(format!("{} exists", state.display())));
    }
    if let Some(ns) = topology::list_netns()?
        .into_iter()
        .find(|ns| config::is_lab_netns(&config.name, ns))
    {
        return Err(exists(format!("namespace {ns} exists")));
    }
    Ok(())
}

/// A lab that is taken down when the guard is dropped — also on panic, so tests
/// never leave namespaces or processes behind.
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
}

impl LabGuard {
    /// Build a lab guarded from the start.
    pub fn up(config: &LabConfig, progress: &mut dyn FnMut(Progress)) -> Result<Self, LabError> {
        Lab::up(config, progress).map(Self::new)
    }

    /// [`Self::up`] with the pods of `layout`.
    pub fn up_with(
        config: &LabConfig,
        layout: PodLayout,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, LabError> {
        Lab::up_with(config, layout, progress).map(Self::new)
    }

    pub fn new(lab: Lab) -> Self {
        Self { lab }
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(err) = down(self.lab.name(), self.lab.state_root()) {
            // Drop cannot return the error; say it where the test output shows it.
            eprintln!("lumen-lab: removing lab {} failed: {err}", self.lab.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{TempDir, config};

    fn lab(root: &Path) -> Lab {
        let mut state = LabState::plan(&config(root));
        state.pods[1].ip = Some(Ipv4Addr::new(10, 244, 1, 3));
        Lab { state }
    }

    #[test]
    fn resolves_names() {
        let lab = lab(Path::new("/r"));
        assert_eq!(lab.netns_of("pod-1-2").as_deref(), Some("t-pod-1-2"));
        assert_eq!(lab.netns_of("node-2").as_deref(), Some("t-node-2"));
        assert_eq!(lab.netns_of("external").as_deref(), Some("t-ext"));
        assert_eq!(lab.netns_of("underlay").as_deref(), Some("t-underlay"));
        assert_eq!(lab.netns_of("t-pod-2-2").as_deref(), Some("t-pod-2-2"));
        assert_eq!(lab.netns_of("pod-9-9"), None);
        assert_eq!(
            lab.address_of("pod-1-2"),
            Some(Ipv4Addr::new(10, 244, 1, 3))
        );
        assert_eq!(lab.address_of("pod-1-1"), None);
        assert_eq!(lab.address_of("node-2"), Some(Ipv4Addr::new(192, 0, 2, 12)));
        assert_eq!(lab.address_of("external"), Some(config::EXTERNAL_IP));
        assert_eq!(
            lab.address_of("10.244.2.3"),
            Some(Ipv4Addr::new(10, 244, 2, 3))
        );
        let err = lab.require_netns("nope").unwrap_err();
        assert!(matches!(err, LabError::UnknownTarget { .. }), "{err}");
        assert!(lab.client("node-1").is_some());
        assert!(lab.cni("nope", CniCommand::Del).is_err());
    }

    #[test]
    fn run_time_labels_and_ports_rewrite_the_manifests() {
        let dir = TempDir::new("labels");
        let cfg = LabConfig {
            nodes: 3,
            pods_per_node: 3,
            ..config(&dir.0)
        };
        let mut lab = Lab {
            state: LabState::plan_with(&cfg, PodLayout::Model),
        };
        create_dir(&lab.state.manifests_dir()).unwrap();
        lab.state.save().unwrap();
        lab.write_manifests().unwrap();
        let read = |file: &str| -> serde_yaml::Value {
            let text = std::fs::read_to_string(lab_manifests(&dir.0).join(file)).unwrap();
            serde_yaml::from_str(&text).unwrap()
        };
        let files: Vec<String> = std::fs::read_dir(lab_manifests(&dir.0))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 3 + 3 + 9, "{files:?}");
        assert_eq!(
            read("pod-z-c.yaml")["metadata"]["labels"]["pod"].as_str(),
            Some("c")
        );

        let extra = BTreeMap::from([("role".to_owned(), "db".to_owned())]);
        lab.set_pod_labels("x/b", extra.clone()).unwrap();
        lab.set_pod_ports("x/b", vec![ContainerPort::named("web", 81, "TCP")])
            .unwrap();
        lab.set_namespace_labels("y", extra.clone()).unwrap();
        let pod = read("pod-x-b.yaml");
        assert_eq!(pod["metadata"]["labels"]["role"].as_str(), Some("db"));
        assert_eq!(pod["metadata"]["labels"]["pod"].as_str(), Some("b"));
        let ports = pod["spec"]["containers"][0]["ports"].as_sequence().unwrap();
        assert_eq!(ports.last().unwrap()["name"].as_str(), Some("web"));
        assert_eq!(
            read("namespace-y.yaml")["metadata"]["labels"]["role"].as_str(),
            Some("db")
        );
        // What a test added is recorded, so a reopened lab writes the same.
        let reopened = Lab::open("t", &dir.0).unwrap();
        assert_eq!(reopened.pod("x/b").unwrap().extra_labels, extra);

        lab.set_pod_labels("x/b", BTreeMap::new()).unwrap();
        lab.set_namespace_labels("y", BTreeMap::new()).unwrap();
        assert!(read("pod-x-b.yaml")["metadata"]["labels"]["role"].is_null());
        assert!(read("namespace-y.yaml")["metadata"]["labels"]["role"].is_null());

        let err = lab
            .set_namespace_labels("default", extra.clone())
            .unwrap_err();
        assert!(matches!(err, LabError::UnknownNamespace { .. }), "{err}");
        let err = lab.set_pod_labels("b", extra).unwrap_err();
        assert!(matches!(err, LabError::UnknownTarget { .. }), "{err}");
        assert_eq!(lab.netns_of("y/c").as_deref(), Some("t-pod-2-3"));
    }

    fn lab_manifests(root: &Path) -> PathBuf {
        config::state_dir(root, "t").join("manifests")
    }

    #[test]
    fn open_reads_saved_state() {
        let dir = TempDir::new("open");
        let lab = lab(&dir.0);
        create_dir(&lab.state.state_dir).unwrap();
        lab.state.save().unwrap();
        let opened = Lab::open("t", &dir.0).unwrap();
        assert_eq!(opened.state(), lab.state());
        assert_eq!(opened.pods().len(), 4);
        assert!(matches!(
            Lab::open("other", &dir.0).unwrap_err(),
            LabError::NotUp { .. }
        ));
    }

    #[test]
    fn up_refuses_missing_binaries_and_bad_config() {
        let dir = TempDir::new("up");
        let mut cfg = config(&dir.0);
        cfg.bin_dir = dir.0.clone();
        let err = Lab::up(&cfg, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("lumen-agent not found"), "{err}");
        cfg.nodes = 4;
        let err = Lab::up_with(&cfg, PodLayout::Model, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("at most 3 nodes"), "{err}");
        cfg.nodes = 0;
        let err = Lab::up(&cfg, &mut |_| {}).unwrap_err();
        assert!(matches!(err, LabError::Config { .. }), "{err}");
    }

    #[test]
    fn progress_of_prometheus() {
        let line = Progress::RelayStarted {
            targets: vec![
                ("node-1".into(), "127.0.0.1:19961".parse().unwrap()),
                ("node-2".into(), "127.0.0.1:19962".parse().unwrap()),
            ],
            pid: 7,
        }
        .to_string();
        assert_eq!(
            line,
            "metrics relay: node-1 on 127.0.0.1:19961, node-2 on 127.0.0.1:19962 (pid 7)"
        );
        let line = Progress::PrometheusStarted {
            url: "http://127.0.0.1:9090".into(),
            pid: 8,
        }
        .to_string();
        assert_eq!(
            line,
            "Prometheus on http://127.0.0.1:9090 scraping every 5s (pid 8)"
        );
    }

    #[test]
    fn progress_lines() {
        let line = Progress::AgentReady {
            node: "node-1".into(),
            pid: 1234,
        }
        .to_string();
        assert_eq!(line, "node-1 agent ready (pid 1234)");
        let line = Progress::PodAttached {
            pod: "pod-1-1".into(),
            node: "node-1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
        }
        .to_string();
        assert_eq!(line, "pod-1-1 attached on node-1 (10.244.1.2)");
    }
}
