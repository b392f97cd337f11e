//! A lab's health at a glance: which processes are alive and which identity each
//! pod has according to its node's agent; as JSON and as a readable table.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use lumen_api::client::Client;
use lumen_api::{Endpoint, Identity, Ipv4Cidr};
use serde::{Deserialize, Serialize};

use crate::process::is_alive;
use crate::state::{LabState, Node, Pod};

/// How long `status` waits for each agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub external: ExternalStatus,
    pub underlay: UnderlayStatus,
    /// The lab's Prometheus, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusStatus {
    /// The web UI and HTTP API, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    pub pid: Option<u32>,
    pub alive: bool,
    pub relay_pid: Option<u32>,
    pub relay_alive: bool,
    /// Where the relay serves each node's metrics.
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub node: String,
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Cidr,
    pub agent_pid: Option<u32>,
    pub agent_alive: bool,
    pub socket: PathBuf,
    /// Why the agent's endpoints could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub ip: Option<Ipv4Addr>,
    /// The identity the node's agent gave the pod's endpoint.
    pub identity: Option<Identity>,
    pub container_id: String,
    pub server_pid: Option<u32>,
    pub server_alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalStatus {
    pub netns: String,
    pub ip: Ipv4Addr,
    pub server_pid: Option<u32>,
    pub server_alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayStatus {
    pub netns: String,
    pub cidr: Ipv4Cidr,
}

/// Check every process and ask every agent for its endpoints.
pub fn gather(state: &LabState) -> Status {
    let mut endpoints = Vec::new();
    let nodes = state
        .nodes
        .iter()
        .map(|node| {
            let agent_error = match agent_endpoints(node) {
                Ok(found) => {
                    endpoints.extend(found.into_iter().map(|e| (node.name.clone(), e)));
                    None
                }
                Err(err) => Some(err),
            };
            NodeStatus {
                name: node.name.clone(),
                netns: node.netns.clone(),
                underlay_ip: node.underlay_ip,
                pod_cidr: node.pod_cidr,
                agent_pid: node.agent_pid,
                agent_alive: node.agent_pid.is_some_and(is_alive),
                socket: node.socket.clone(),
                agent_error,
            }
        })
        .collect();
    let pods = state
        .pods
        .iter()
        .map(|pod| PodStatus {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            node: pod.node.clone(),
            netns: pod.netns.clone(),
            ip: pod.ip,
            identity: endpoints
                .iter()
                .find(|(node, e)| *node == pod.node && is_endpoint_of(e, pod))
                .map(|(_, e)| e.identity),
            container_id: pod.container_id.clone(),
            server_pid: pod.server_pid,
            server_alive: pod.server_pid.is_some_and(is_alive),
        })
        .collect();
    Status {
        name: state.name.clone(),
        nodes,
        pods,
        external: ExternalStatus {
            netns: state.external.netns.clone(),
            ip: state.external.ip,
            server_pid: state.external.server_pid,
            server_alive: state.external.server_pid.is_some_and(is_alive),
        },
        underlay: UnderlayStatus {
            netns: state.underlay.netns.clone(),
            cidr: state.underlay.cidr,
        },
        prometheus: state.prometheus.as_ref().map(|p| PrometheusStatus {
            url: p.url.clone(),
            pid: p.pid,
            alive: p.pid.is_some_and(is_alive),
            relay_pid: p.relay.pid,
            relay_alive: p.relay.pid.is_some_and(is_alive),
            targets: p
                .relay
                .targets
                .iter()
                .map(|t| TargetStatus {
                    node: t.node.clone(),
                    listen: t.listen,
                })
                .collect(),
        }),
    }
}

fn agent_endpoints(node: &Node) -> Result<Vec<Endpoint>, String> {
    Client::new(&node.socket, AGENT_TIMEOUT)
        .get(lumen_api::paths::ENDPOINTS)
        .map_err(|err| err.to_string())
}

fn is_endpoint_of(endpoint: &Endpoint, pod: &Pod) -> bool {
    endpoint.container_id == pod.container_id
        || (endpoint.pod.as_deref() == Some(pod.name.as_str())
            && endpoint.namespace.as_deref() == Some(pod.namespace.as_str()))
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {}: underlay {} in {}, external {} in {} ({})",
            self.name,
            self.underlay.cidr,
            self.underlay.netns,
            self.external.ip,
            self.external.netns,
            process_cell(self.external.server_pid, self.external.server_alive),
        )?;
        if let Some(p) = &self.prometheus {
            let targets: Vec<String> = p
                .targets
                .iter()
                .map(|t| format!("{} on {}", t.node, t.listen))
                .collect();
            writeln!(
                f,
                "prometheus {} ({}), metrics relay {} ({})",
                p.url,
                process_cell(p.pid, p.alive),
                targets.join(", "),
                process_cell(p.relay_pid, p.relay_alive),
            )?;
        }
        writeln!(f)?;
        let mut nodes = vec![row(["NODE", "NETNS", "UNDERLAY IP", "POD CIDR", "AGENT"])];
        for n in &self.nodes {
            let mut agent = process_cell(n.agent_pid, n.agent_alive);
            if let Some(err) = &n.agent_error {
                agent = format!("{agent}; api: {err}");
            }
            nodes.push(vec![
                n.name.clone(),
                n.netns.clone(),
                n.underlay_ip.to_string(),
                n.pod_cidr.to_string(),
                agent,
            ]);
        }
        write_table(f, &nodes)?;
        writeln!(f)?;
        let mut pods = vec![row(["POD", "NODE", "IP", "IDENTITY", "NETNS", "SERVER"])];
        for p in &self.pods {
            pods.push(vec![
                format!("{}/{}", p.namespace, p.name),
                p.node.clone(),
                p.ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                p.identity
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                p.netns.clone(),
                process_cell(p.server_pid, p.server_alive),
            ]);
        }
        write_table(f, &pods)
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn process_cell(pid: Option<u32>, alive: bool) -> String {
    match (pid, alive) {
        (None, _) => "not started".to_owned(),
        (Some(pid), true) => format!("pid {pid} running"),
        (Some(pid), false) => format!("pid {pid} DEAD"),
    }
}

/// Rows as left-aligned columns two spaces apart; the last column is not padded.
/// The CLI's other tables (`lumen policy`) use it too.
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn write_table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    for line in table(rows) {
        writeln!(f, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::tests::config;

    #[test]
    fn status_without_agents_has_the_documented_shape() {
        let mut state = LabState::plan(&config(Path::new("/nonexistent-root")));
        state.pods[0].ip = Some(Ipv4Addr::new(10, 244, 1, 2));
        state.pods[0].server_pid = Some(std::process::id());
        let status = gather(&state);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["name"], "t");
        let node = &json["nodes"][0];
        for key in [
            "name",
            "netns",
            "underlay_ip",
            "pod_cidr",
            "agent_pid",
            "agent_alive",
            "socket",
        ] {
            assert!(node.get(key).is_some(), "node lacks {key}: {node}");
        }
        assert_eq!(node["agent_alive"], false);
        assert!(
            node["agent_error"]
                .as_str()
                .unwrap()
                .contains("unreachable")
        );
        let pod = &json["pods"][0];
        for key in [
            "name",
            "namespace",
            "node",
            "netns",
            "ip",
            "identity",
            "container_id",
            "server_pid",
        ] {
            assert!(pod.get(key).is_some(), "pod lacks {key}: {pod}");
        }
        assert_eq!(pod["ip"], "10.244.1.2");
        assert_eq!(pod["server_alive"], true);
        assert!(pod["identity"].is_null());
        assert_eq!(json["external"]["ip"], "203.0.113.10");
        assert_eq!(json["external"]["netns"], "t-ext");
        assert_eq!(json["underlay"]["cidr"], "192.0.2.0/24");
        assert!(json.get("prometheus").is_none(), "{json}");
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);

        let table = status.to_string();
        assert!(
            table.contains("default/pod-1-1  node-1  10.244.1.2"),
            "{table}"
        );
        assert!(table.contains("not started"), "{table}");
        assert!(!table.contains("prometheus"), "{table}");
    }

    #[test]
    fn status_shows_the_prometheus_url() {
        let mut state = LabState::plan(&config(Path::new("/nonexistent-root")));
        let mut prometheus =
            crate::prometheus::plan(&state, crate::config::DEFAULT_RELAY_PORT_BASE, Vec::new())
                .unwrap();
        prometheus.pid = Some(std::process::id());
        let url = prometheus.url.clone();
        let node1 = prometheus.relay.targets[0].listen;
        state.prometheus = Some(prometheus);
        let status = gather(&state);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["prometheus"]["url"], url.as_str());
        assert_eq!(json["prometheus"]["alive"], true);
        assert_eq!(json["prometheus"]["relay_alive"], false);
        assert_eq!(json["prometheus"]["targets"][0]["node"], "node-1");
        let table = status.to_string();
        let line = format!(
            "prometheus {url} (pid {} running), metrics relay node-1 on {node1}",
            std::process::id()
        );
        assert!(table.contains(&line), "{table}");
        assert!(table.contains("(not started)"), "{table}");
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn matches_endpoints_by_container_or_name() {
        let state = LabState::plan(&config(Path::new("/r")));
        let pod = &state.pods[0];
        let mut ep = Endpoint {
            container_id: pod.container_id.clone(),
            ifname: "eth0".into(),
            namespace: None,
            pod: None,
            ip: Ipv4Addr::new(10, 244, 1, 2),
            identity: Identity(514),
            host_ifname: "lxc1".into(),
            host_ifindex: 5,
            mac: "02:00:00:00:00:01".into(),
            netns: pod.netns_path().display().to_string(),
        };
        assert!(is_endpoint_of(&ep, pod));
        ep.container_id = "other".into();
        assert!(!is_endpoint_of(&ep, pod));
        ep.pod = Some(pod.name.clone());
        ep.namespace = Some("default".into());
        assert!(is_endpoint_of(&ep, pod));
    }
}
