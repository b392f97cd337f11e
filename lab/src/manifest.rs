//! The cluster state the agents watch: Kubernetes objects (Namespace, Node, Pod)
//! rendered as YAML, one object per file, written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::LabError;
use crate::config::ContainerPort;
use crate::state::{Node, Pod, write_atomic};

/// One Kubernetes object and the file it lives in.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub file_name: String,
    pub object: Value,
}

impl Manifest {
    /// The object as YAML.
    pub fn to_yaml(&self, dir: &Path) -> Result<String, LabError> {
        serde_yaml::to_string(&self.object).map_err(|source| LabError::Manifest {
            path: dir.join(&self.file_name),
            source,
        })
    }

    /// Write the object into `dir`, replacing any previous version atomically.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, LabError> {
        let yaml = self.to_yaml(dir)?;
        let path = dir.join(&self.file_name);
        write_atomic(&path, yaml.as_bytes())?;
        Ok(path)
    }
}

/// A Namespace with `labels` (which should hold the name label Kubernetes puts
/// on every namespace, see [`crate::LabState::namespace_labels_of`]).
pub fn namespace(name: &str, labels: &BTreeMap<String, String>) -> Manifest {
    Manifest {
        file_name: format!("namespace-{name}.yaml"),
        object: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": labels,
            },
        }),
    }
}

/// A Node with its pod CIDR and underlay address, as the agents read them.
pub fn node(node: &Node) -> Manifest {
    let cidr = node.pod_cidr.to_string();
    Manifest {
        file_name: format!("node-{}.yaml", node.name),
        object: json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                },
            },
            "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": node.underlay_ip.to_string() },
                    { "type": "Hostname", "address": node.name },
                ],
            },
        }),
    }
}

/// A Pod scheduled on `node` with `labels` and one container with `ports`;
/// Running with its IP once CNI ADD gave it one.
pub fn pod(
    pod: &Pod,
    node: &Node,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort],
) -> Manifest {
    let status = match pod.ip {
        Some(ip) => json!({
            "phase": "Running",
            "hostIP": node.underlay_ip.to_string(),
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
        }),
        None => json!({ "phase": "Pending" }),
    };
    Manifest {
        file_name: format!("pod-{}-{}.yaml", pod.namespace, pod.name),
        object: json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": labels,
            },
            "spec": {
                "nodeName": node.name,
                "containers": [{
                    "name": "echo",
                    "image": "lumen-lab/echo",
                    "ports": ports.iter().map(container_port).collect::<Vec<_>>(),
                }],
            },
            "status": status,
        }),
    }
}

/// `{name?, containerPort, protocol}`, the name left out when there is none.
fn container_port(port: &ContainerPort) -> Value {
    let mut value = json!({ "containerPort": port.port, "protocol": port.protocol });
    if let (Some(name), Some(object)) = (&port.name, value.as_object_mut()) {
        object.insert("name".to_owned(), json!(name));
    }
    value
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::{LabConfig, PodLayout};
    use crate::state::LabState;
    use crate::state::tests::{TempDir, config};

    fn parse(m: &Manifest) -> serde_yaml::Value {
        serde_yaml::from_str(&m.to_yaml(Path::new("/x")).unwrap()).unwrap()
    }

    fn default_namespace() -> Manifest {
        let state = LabState::plan(&config(Path::new("/r")));
        namespace("default", &state.namespace_labels_of("default"))
    }

    /// `(containerPort, protocol, name)` of every port of the pod's container.
    fn ports(y: &serde_yaml::Value) -> Vec<(u64, &str, Option<&str>)> {
        y["spec"]["containers"][0]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap(),
                    p["name"].as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn namespace_has_metadata_label() {
        let m = default_namespace();
        assert_eq!(m.file_name, "namespace-default.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Namespace"));
        let labels = y["metadata"]["labels"].as_mapping().unwrap();
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(
            y["metadata"]["labels"]["kubernetes.io/metadata.name"].as_str(),
            Some("default")
        );
    }

    #[test]
    fn model_pods_and_namespaces() {
        let cfg = LabConfig {
            nodes: 3,
            pods_per_node: 3,
            ..config(Path::new("/r"))
        };
        let mut state = LabState::plan_with(&cfg, PodLayout::Model);
        state
            .namespace_labels
            .insert("z".into(), BTreeMap::from([("team".into(), "q".into())]));
        let y = parse(&namespace("z", &state.namespace_labels_of("z")));
        assert_eq!(y["metadata"]["name"].as_str(), Some("z"));
        assert_eq!(y["metadata"]["labels"]["ns"].as_str(), Some("z"));
        assert_eq!(y["metadata"]["labels"]["team"].as_str(), Some("q"));
        assert_eq!(
            y["metadata"]["labels"]["kubernetes.io/metadata.name"].as_str(),
            Some("z")
        );

        let index = state
            .pods
            .iter()
            .position(|p| p.lab_name() == "y/c")
            .unwrap();
        state.pods[index]
            .extra_labels
            .insert("pod".into(), "renamed".into());
        state.pods[index]
            .extra_ports
            .push(ContainerPort::named("web", 81, "TCP"));
        let pod_state = &state.pods[index];
        let node = state.node(&pod_state.node).unwrap();
        let m = pod(
            pod_state,
            node,
            &state.pod_labels(pod_state),
            &state.pod_ports(pod_state),
        );
        assert_eq!(m.file_name, "pod-y-c.yaml");
        let y = parse(&m);
        assert_eq!(y["metadata"]["namespace"].as_str(), Some("y"));
        assert_eq!(y["metadata"]["name"].as_str(), Some("c"));
        assert_eq!(
            y["metadata"]["labels"].as_mapping().unwrap().len(),
            1,
            "the added label replaces the layout's"
        );
        assert_eq!(y["metadata"]["labels"]["pod"].as_str(), Some("renamed"));
        assert_eq!(y["spec"]["nodeName"].as_str(), Some("node-2"));
        assert_eq!(
            ports(&y),
            vec![
                (80, "TCP", Some("serve-80-tcp")),
                (80, "UDP", Some("serve-80-udp")),
                (80, "SCTP", Some("serve-80-sctp")),
                (81, "TCP", Some("serve-81-tcp")),
                (81, "UDP", Some("serve-81-udp")),
                (81, "SCTP", Some("serve-81-sctp")),
                (81, "TCP", Some("web")),
            ]
        );
    }

    #[test]
    fn node_has_cidr_and_internal_ip() {
        let state = LabState::plan(&config(Path::new("/r")));
        let m = node(&state.nodes[0]);
        assert_eq!(m.file_name, "node-node-1.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Node"));
        assert_eq!(y["metadata"]["name"].as_str(), Some("node-1"));
        assert_eq!(y["spec"]["podCIDR"].as_str(), Some("10.244.1.0/24"));
        assert_eq!(
            y["metadata"]["labels"]["kubernetes.io/hostname"].as_str(),
            Some("node-1")
        );
        let addr = &y["status"]["addresses"][0];
        assert_eq!(addr["type"].as_str(), Some("InternalIP"));
        assert_eq!(addr["address"].as_str(), Some("192.0.2.11"));
    }

    #[test]
    fn pod_is_pending_then_running() {
        let mut state = LabState::plan(&config(Path::new("/r")));
        let node = state.nodes[1].clone();
        let labels = state.layout.pod_labels("pod-2-2", "node-2");
        let ports_of = state.layout.container_ports();
        let pod_state = state.pods.iter_mut().find(|p| p.name == "pod-2-2").unwrap();
        let m = pod(pod_state, &node, &labels, &ports_of);
        assert_eq!(m.file_name, "pod-default-pod-2-2.yaml");
        let y = parse(&m);
        assert_eq!(y["kind"].as_str(), Some("Pod"));
        assert_eq!(y["metadata"]["namespace"].as_str(), Some("default"));
        assert_eq!(y["metadata"]["labels"]["app"].as_str(), Some("pod-2-2"));
        assert_eq!(y["metadata"]["labels"]["lab-node"].as_str(), Some("node-2"));
        assert_eq!(y["spec"]["nodeName"].as_str(), Some("node-2"));
        assert_eq!(
            ports(&y),
            vec![
                (80, "TCP", Some("http")),
                (81, "TCP", Some("http-alt")),
                (80, "UDP", None),
                (81, "UDP", None)
            ]
        );
        assert_eq!(y["status"]["phase"].as_str(), Some("Pending"));
        assert!(y["status"]["podIP"].is_null());

        pod_state.ip = Some(Ipv4Addr::new(10, 244, 2, 5));
        let y = parse(&pod(pod_state, &node, &labels, &ports_of));
        assert_eq!(y["status"]["phase"].as_str(), Some("Running"));
        assert_eq!(y["status"]["podIP"].as_str(), Some("10.244.2.5"));
        assert_eq!(y["status"]["podIPs"][0]["ip"].as_str(), Some("10.244.2.5"));
        assert_eq!(y["status"]["hostIP"].as_str(), Some("192.0.2.12"));
    }

    #[test]
    fn writes_atomically_and_replaces() {
        let dir = TempDir::new("manifest");
        let m = default_namespace();
        let path = m.write(&dir.0).unwrap();
        let again = default_namespace().write(&dir.0).unwrap();
        assert_eq!(path, again);
        let entries: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left behind");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("kind: Namespace"), "{text}");
    }
}
