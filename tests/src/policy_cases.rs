//! The NetworkPolicy conformance cases (`tests/policy/cases.yaml`) as values:
//! the upstream e2e model, each case's additions, policies, expected matrices
//! and address probes. The engine test (`agent/tests/policy_cases.rs`) and the
//! lab test (`tests/tests/policy_conformance.rs`) read them through this module,
//! so both run exactly the same cases. The file's header documents the format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use lumen_agent::cluster::{ClusterState, NamedPort, PodInfo, k8s_protocol};
use lumen_api::flow::Protocol;
use serde::Deserialize;

/// Where the cases live.
pub const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/cases.yaml");

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub model: Model,
    pub cases: Vec<Case>,
}

/// The model every case starts from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Namespace name → its labels (without `kubernetes.io/metadata.name`).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<ModelPod>,
    pub ports: Vec<u16>,
    pub protocols: Vec<String>,
    /// Addresses that are not pods but that address probes may use.
    pub outside: Vec<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// One case: what it adds to the model, its policies, what it expects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub about: String,
    /// `ns/pod` → labels added to the model's.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespace → labels added to the model's.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// `ns/pod` → container ports added to the model's.
    #[serde(default)]
    pub named_ports: BTreeMap<String, Vec<ExtraPort>>,
    pub policies: Vec<NetworkPolicy>,
    pub reach: Vec<Reach>,
    /// `FROM -> TO PROTOCOL/PORT .|X` lines; see [`AddressProbe::parse`].
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A container port a case adds to a pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPort {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// A group of probes sharing one expected matrix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    /// `PROTOCOL/PORT`, e.g. `TCP/80`.
    pub probes: Vec<String>,
    pub matrix: String,
}

/// Source and destination pod (`ns/pod`) of one matrix cell.
pub type Cell = (String, String);

/// One probe to or from an address that is not a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressProbe {
    /// A pod (`ns/pod`) or an IPv4 address.
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
}

/// Read and parse the cases file.
pub fn load() -> File {
    let text = std::fs::read_to_string(CASES).expect("tests/policy/cases.yaml");
    serde_yaml::from_str(&text).expect("cases.yaml parses")
}

/// A Kubernetes protocol name as the flow protocol.
pub fn protocol(name: &str) -> Protocol {
    k8s_protocol(name).unwrap_or_else(|| panic!("unknown protocol {name}"))
}

/// `TCP/80` → (TCP, 80).
pub fn probe(text: &str) -> (Protocol, u16) {
    let (proto, port) = text.split_once('/').expect("PROTOCOL/PORT");
    (protocol(proto), port.parse().expect("port"))
}

/// `ns/pod` → (ns, pod).
pub fn pod_key(name: &str) -> (String, String) {
    let (ns, pod) = name.split_once('/').expect("namespace/pod");
    (ns.to_owned(), pod.to_owned())
}

/// `.` → allowed, `X` → denied.
fn cell(case: &str, text: &str) -> bool {
    match text {
        "." => true,
        "X" => false,
        other => panic!("{case}: cell {other:?} is neither . nor X"),
    }
}

// === impl Model ===

impl Model {
    /// Every pod as `ns/pod`, in the matrices' order.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    /// `ns/pod` → the model's address of that pod.
    pub fn ips(&self) -> BTreeMap<String, Ipv4Addr> {
        self.pod_names()
            .into_iter()
            .zip(self.pods.iter().map(|p| p.ip))
            .collect()
    }

    /// Every container port of a model pod: `serve-<port>-<protocol>`.
    pub fn ports(&self) -> Vec<NamedPort> {
        self.protocols
            .iter()
            .flat_map(|proto| {
                self.ports.iter().map(move |&port| NamedPort {
                    name: format!("serve-{port}-{}", proto.to_ascii_lowercase()),
                    port,
                    protocol: protocol(proto),
                })
            })
            .collect()
    }

    /// The model with the case's additions and policies, at the model's
    /// addresses.
    pub fn state(&self, case: &Case) -> ClusterState {
        let mut state = ClusterState::default();
        for (name, labels) in &self.namespaces {
            let mut labels = labels.clone();
            labels.extend(case.namespace_labels.get(name).cloned().unwrap_or_default());
            state.namespaces.insert(name.clone(), labels);
        }
        for pod in &self.pods {
            let key = format!("{}/{}", pod.namespace, pod.name);
            let mut labels = pod.labels.clone();
            labels.extend(case.pod_labels.get(&key).cloned().unwrap_or_default());
            let mut ports = self.ports();
            for extra in case.named_ports.get(&key).into_iter().flatten() {
                ports.push(NamedPort {
                    name: extra.name.clone(),
                    port: extra.port,
                    protocol: protocol(&extra.protocol),
                });
            }
            state.pods.insert(
                (pod.namespace.clone(), pod.name.clone()),
                PodInfo {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    node: None,
                    labels,
                    ip: Some(pod.ip),
                    ports,
                },
            );
        }
        for key in case.pod_labels.keys().chain(case.named_ports.keys()) {
            assert!(
                state.pods.contains_key(&pod_key(key)),
                "{}: no pod {key}",
                case.name
            );
        }
        for policy in &case.policies {
            state.add_policy(policy);
        }
        assert_eq!(
            state.policies.len(),
            case.policies.len(),
            "{}: policies need distinct names",
            case.name
        );
        state
    }
}

// === impl Case ===

impl Case {
    /// Every (protocol/port text, expected matrix) pair of the case.
    pub fn probes<'a>(
        &'a self,
        pods: &'a [String],
    ) -> impl Iterator<Item = (&'a str, BTreeMap<Cell, bool>)> + 'a {
        self.reach.iter().flat_map(move |reach| {
            let want = expected(&self.name, &reach.matrix, pods);
            reach
                .probes
                .iter()
                .map(move |text| (text.as_str(), want.clone()))
        })
    }

    /// The case's address probes, parsed.
    pub fn address_probes(&self) -> Vec<AddressProbe> {
        self.addresses
            .iter()
            .map(|line| AddressProbe::parse(&self.name, line))
            .collect()
    }
}

// === impl AddressProbe ===

impl AddressProbe {
    /// `FROM -> TO PROTOCOL/PORT .|X`.
    pub fn parse(case: &str, line: &str) -> Self {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [from, "->", to, text, allowed] = parts[..] else {
            panic!("{case}: address probe {line:?} is not FROM -> TO PROTOCOL/PORT .|X");
        };
        let (protocol, port) = probe(text);
        Self {
            from: from.to_owned(),
            to: to.to_owned(),
            protocol,
            port,
            allowed: cell(case, allowed),
        }
    }
}

/// The expected matrix: (source, destination) → allowed. Checks that rows and
/// columns are `pods` in order and that a pod always reaches itself.
pub fn expected(case: &str, matrix: &str, pods: &[String]) -> BTreeMap<Cell, bool> {
    let mut lines = matrix.lines().map(str::split_whitespace);
    let header: Vec<&str> = lines.next().expect("header").skip(1).collect();
    assert_eq!(header, pods, "{case}: matrix columns");
    let mut out = BTreeMap::new();
    let mut rows = Vec::new();
    for mut line in lines {
        let from = line.next().expect("row name");
        rows.push(from.to_owned());
        let cells: Vec<&str> = line.collect();
        assert_eq!(cells.len(), pods.len(), "{case}: row {from}");
        for (to, text) in pods.iter().zip(cells) {
            let allowed = cell(case, text);
            if from == to {
                assert!(allowed, "{case}: a pod always reaches itself ({from})");
            }
            out.insert((from.to_owned(), to.clone()), allowed);
        }
    }
    assert_eq!(rows, pods, "{case}: matrix rows");
    out
}

/// A matrix in the cases' notation, `cell` giving each cell's text.
pub fn render_with(pods: &[String], cell: impl Fn(&str, &str) -> String) -> String {
    let mut out = format!("from/to {}\n", pods.join(" "));
    for from in pods {
        let cells: Vec<String> = pods
            .iter()
            .map(|to| format!(" {} ", cell(from, to)))
            .collect();
        let _ = writeln!(out, "{from:<8}{}", cells.join(" ").trim_end());
    }
    out
}

/// A matrix of allowed (`.`) and denied (`X`) cells.
pub fn render(pods: &[String], allowed: impl Fn(&str, &str) -> bool) -> String {
    render_with(pods, |from, to| {
        if allowed(from, to) { "." } else { "X" }.to_owned()
    })
}
