//! The NetworkPolicy conformance cases (`tests/policy/cases.yaml`) in a live
//! lab of the upstream model (namespaces x, y, z on nodes 1, 2, 3; pods a, b, c),
//! with real packets: for every case, its labels, ports and policies are
//! written into the lab's manifests, and once every agent enforces them every
//! cell of every matrix is probed (TCP, UDP, and SCTP over raw sockets) and
//! compared with the expected matrix, and with the policy engine's verdict for
//! the lab's real cluster state. The case's probes to and from addresses
//! outside the pods run too, where the lab has the address.
//!
//! The model's pod addresses are not the lab's: `ipBlock`s are translated
//! (a CIDR that holds the same pods in both is kept, a narrower one becomes the
//! lab pods' /32s). A case that cannot be translated runs with its policies
//! as written and is checked against the engine alone, which the output says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer};
use lumen_agent::cluster::{ClusterState, manifest};
use lumen_agent::policy::{Compiled, Evaluation, PolicyEngine};
use lumen_api::Ipv4Cidr;
use lumen_api::flow::Protocol;
use lumen_api::paths;
use lumen_api::policy::PolicyList;
use lumen_lab::netio::netns;
use lumen_lab::netio::probe::{ProbeError, Proto, probe};
use lumen_lab::state::write_atomic;
use lumen_lab::{ContainerPort, Lab};
use lumen_tests::harness;
use lumen_tests::policy_cases::{self, AddressProbe, Case, Cell, Model, render, render_with};

const LAB: &str = "t-conform";
/// A probe's wait for its reply: denied cells cost this much.
const TIMEOUT: Duration = Duration::from_millis(300);
/// A second chance for a cell that got no reply where one was due, so a
/// reply slowed by the burst of parallel probes is not taken for a drop.
const RETRY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long every agent gets to enforce a change of the manifests.
const ENFORCED_WITHIN: Duration = Duration::from_secs(10);
/// The agents read the manifests every 250 ms: a load that started before a
/// write is followed by one that sees it within this.
const MANIFEST_RELOAD: Duration = Duration::from_millis(600);
/// Files this test writes into the manifests directory start with this.
const POLICY_FILE_PREFIX: &str = "policy-";

// === probes ===

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A reply came back.
    Reached,
    /// Nothing came back in time.
    NoReply,
    /// Anything else (refused, unreachable…): never what a policy does.
    Failed(String),
}

impl Seen {
    fn reached(&self) -> bool {
        *self == Self::Reached
    }

    fn symbol(&self) -> &'static str {
        match self {
            Self::Reached => ".",
            Self::NoReply => "X",
            Self::Failed(_) => "E",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Reached => "allowed".to_owned(),
            Self::NoReply => "denied (no reply)".to_owned(),
            Self::Failed(error) => format!("failed: {error}"),
        }
    }
}

/// One probe to run: from a namespace to an address.
#[derive(Debug, Clone)]
struct Job {
    netns: PathBuf,
    to: Ipv4Addr,
    proto: Proto,
    port: u16,
}

/// Run every job at once, each on its own thread in its source's namespace.
fn run_all(jobs: &[Job], timeout: Duration) -> Vec<Seen> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                scope.spawn(move || {
                    netns::enter(&job.netns).expect("enter the source's namespace");
                    match probe(job.to, job.proto, job.port, timeout) {
                        Ok(_) => Seen::Reached,
                        Err(ProbeError::Timeout { .. }) => Seen::NoReply,
                        Err(error) => Seen::Failed(error.to_string()),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// [`run_all`], then once more with a longer wait for each job that got no
/// reply where `due` says one was due. Returns the outcomes and how many
/// were retried.
fn run_with_retry(jobs: &[Job], due: impl Fn(usize) -> bool) -> (Vec<Seen>, usize) {
    let mut seen = run_all(jobs, TIMEOUT);
    let again: Vec<usize> = (0..jobs.len())
        .filter(|&i| !seen[i].reached() && due(i))
        .collect();
    let retry_jobs: Vec<Job> = again.iter().map(|&i| jobs[i].clone()).collect();
    for (i, outcome) in again.iter().zip(run_all(&retry_jobs, RETRY_TIMEOUT)) {
        seen[*i] = outcome;
    }
    (seen, again.len())
}

fn proto(protocol: Protocol) -> Proto {
    match protocol {
        Protocol::TCP => Proto::Tcp,
        Protocol::UDP => Proto::Udp,
        Protocol::SCTP => Proto::Sctp,
        other => panic!("no probe for protocol {other:?}"),
    }
}

// === the model in the lab ===

/// Model pods (`ns/pod`) and their addresses, in the model and in the lab.
struct Addresses {
    pods: Vec<String>,
    model: BTreeMap<String, Ipv4Addr>,
    lab: BTreeMap<String, Ipv4Addr>,
    /// Known addresses that are not pods (the same in the model and the lab).
    outside: Vec<Ipv4Addr>,
}

impl Addresses {
    fn new(model: &Model, lab: &Lab) -> Self {
        let pods = model.pod_names();
        let lab_ips = pods
            .iter()
            .map(|name| {
                let pod = lab.pod(name).unwrap_or_else(|| panic!("lab pod {name}"));
                (name.clone(), pod.ip.expect("lab pods have addresses"))
            })
            .collect();
        Self {
            model: model.ips(),
            lab: lab_ips,
            pods,
            outside: model.outside.clone(),
        }
    }

    /// Whether `cidr` holds the same pods in the model and in the lab.
    fn same_pods(&self, cidr: Ipv4Cidr) -> bool {
        self.pods
            .iter()
            .all(|p| cidr.contains(self.model[p]) == cidr.contains(self.lab[p]))
    }

    /// The lab addresses of the model pods in `cidr`.
    fn lab_pods_in(&self, cidr: Ipv4Cidr) -> Vec<Ipv4Addr> {
        self.pods
            .iter()
            .filter(|p| cidr.contains(self.model[*p]))
            .map(|p| self.lab[p])
            .collect()
    }

    /// `cidr` in lab addresses: itself if it holds the same pods, else the
    /// /32s of its pods (only if it holds no known address besides pods).
    fn translate(&self, cidr: Ipv4Cidr) -> Result<Vec<Ipv4Cidr>, String> {
        if self.same_pods(cidr) {
            return Ok(vec![cidr]);
        }
        if let Some(ip) = self.outside.iter().find(|ip| cidr.contains(**ip)) {
            return Err(format!(
                "{cidr} holds pods and {ip}: no lab CIDR holds exactly the same"
            ));
        }
        Ok(self
            .lab_pods_in(cidr)
            .into_iter()
            .map(Ipv4Cidr::host)
            .collect())
    }

    /// One `ipBlock` peer in lab addresses: one peer, or one per pod when its
    /// CIDR had to become /32s (peers are ORed, so that is the same set).
    fn translate_block(&self, block: &IPBlock) -> Result<Vec<IPBlock>, String> {
        let parse = |text: &str| -> Result<Ipv4Cidr, String> {
            text.parse()
                .map_err(|e| format!("ipBlock {text} is not an IPv4 CIDR: {e}"))
        };
        let cidr = parse(&block.cidr)?;
        let mut excepts = Vec::new();
        for text in block.except.iter().flatten() {
            excepts.extend(self.translate(parse(text)?)?);
        }
        let cidrs = self.translate(cidr)?;
        if cidrs == [cidr] {
            return Ok(vec![IPBlock {
                cidr: cidr.to_string(),
                except: block
                    .except
                    .as_ref()
                    .map(|_| excepts.iter().map(ToString::to_string).collect()),
            }]);
        }
        let kept: Vec<IPBlock> = cidrs
            .into_iter()
            .filter(|host| !excepts.iter().any(|e| e.contains(host.addr())))
            .map(|host| IPBlock {
                cidr: host.to_string(),
                except: None,
            })
            .collect();
        if kept.is_empty() {
            return Err(format!(
                "ipBlock {} holds no lab pod outside its excepts",
                block.cidr
            ));
        }
        Ok(kept)
    }

    /// The `ipBlock` peers of `peers` in lab addresses; what changed goes to
    /// `notes`.
    fn translate_peers(
        &self,
        peers: &mut Option<Vec<NetworkPolicyPeer>>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(list) = peers.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        for peer in list.drain(..) {
            let Some(block) = &peer.ip_block else {
                out.push(peer);
                continue;
            };
            let blocks = self.translate_block(block)?;
            if blocks != [block.clone()] {
                notes.push(format!(
                    "{} -> {}",
                    show(block),
                    blocks.iter().map(show).collect::<Vec<_>>().join(", ")
                ));
            }
            out.extend(blocks.into_iter().map(|b| NetworkPolicyPeer {
                ip_block: Some(b),
                ..peer.clone()
            }));
        }
        *list = out;
        Ok(())
    }

    /// The case's policies in lab addresses, and what changed.
    fn translate_policies(&self, case: &Case) -> Result<(Vec<NetworkPolicy>, Vec<String>), String> {
        let mut policies = case.policies.clone();
        let mut notes = Vec::new();
        for policy in &mut policies {
            let Some(spec) = policy.spec.as_mut() else {
                continue;
            };
            for rule in spec.ingress.iter_mut().flatten() {
                self.translate_peers(&mut rule.from, &mut notes)?;
            }
            for rule in spec.egress.iter_mut().flatten() {
                self.translate_peers(&mut rule.to, &mut notes)?;
            }
        }
        Ok((policies, notes))
    }
}

/// `cidr` or `cidr except [a, b]`.
fn show(block: &IPBlock) -> String {
    match &block.except {
        Some(except) => format!("{} except [{}]", block.cidr, except.join(", ")),
        None => block.cidr.clone(),
    }
}

/// How a case runs.
enum Plan {
    /// Policies in lab addresses (`notes` says which `ipBlock`s changed): the
    /// expected matrices hold in the lab.
    Faithful {
        policies: Vec<NetworkPolicy>,
        notes: Vec<String>,
    },
    /// Not translatable: the policies as written, checked against the engine.
    EngineOnly {
        policies: Vec<NetworkPolicy>,
        reason: String,
    },
}

impl Plan {
    fn new(case: &Case, addresses: &Addresses) -> Self {
        match addresses.translate_policies(case) {
            Ok((policies, notes)) => Self::Faithful { policies, notes },
            Err(reason) => Self::EngineOnly {
                policies: case.policies.clone(),
                reason,
            },
        }
    }

    fn policies(&self) -> &[NetworkPolicy] {
        match self {
            Self::Faithful { policies: p, .. } | Self::EngineOnly { policies: p, .. } => p,
        }
    }

    fn faithful(&self) -> bool {
        matches!(self, Self::Faithful { .. })
    }
}

// === applying a case ===

/// The case's labels and ports on the lab's pods and namespaces (and the
/// previous case's removed).
fn apply_additions(lab: &mut Lab, model: &Model, case: &Case) {
    for pod in model.pod_names() {
        let labels = case.pod_labels.get(&pod).cloned().unwrap_or_default();
        let ports = case
            .named_ports
            .get(&pod)
            .into_iter()
            .flatten()
            .map(|p| ContainerPort::named(&p.name, p.port, &p.protocol))
            .collect();
        lab.set_pod_labels(&pod, labels).expect("pod labels");
        lab.set_pod_ports(&pod, ports).expect("pod ports");
    }
    for namespace in model.namespaces.keys() {
        let labels = case
            .namespace_labels
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        lab.set_namespace_labels(namespace, labels)
            .expect("namespace labels");
    }
}

fn policy_key(policy: &NetworkPolicy) -> (String, String) {
    (
        policy.metadata.namespace.clone().unwrap_or_default(),
        policy.metadata.name.clone().unwrap_or_default(),
    )
}

fn write_policies(dir: &Path, policies: &[NetworkPolicy]) {
    for policy in policies {
        let (namespace, name) = policy_key(policy);
        let yaml = serde_yaml::to_string(policy).expect("policy as YAML");
        let file = dir.join(format!("{POLICY_FILE_PREFIX}{namespace}-{name}.yaml"));
        write_atomic(&file, yaml.as_bytes()).expect("write policy");
    }
}

fn remove_policies(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("manifests directory") {
        let path = entry.expect("directory entry").path();
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(POLICY_FILE_PREFIX));
        if ours {
            std::fs::remove_file(&path).expect("remove policy");
        }
    }
}

/// Policies by (namespace, name).
type PolicyKeys = BTreeSet<(String, String)>;

/// What each agent enforces: the policies in force, or why that is unknown
/// (the agent's answer, or that some are refused).
fn enforced(lab: &Lab) -> Vec<(String, Result<PolicyKeys, String>)> {
    lab.nodes()
        .iter()
        .map(|node| {
            let answer = lab
                .client(&node.name)
                .expect("client")
                .get::<PolicyList>(paths::POLICIES)
                .map_err(|e| e.to_string())
                .and_then(|list| {
                    if list.rejected.is_empty() {
                        Ok(list
                            .policies
                            .into_iter()
                            .map(|p| (p.namespace, p.name))
                            .collect())
                    } else {
                        Err(format!("refused: {:?}", list.rejected))
                    }
                });
            (node.name.clone(), answer)
        })
        .collect()
}

/// Wait until every agent enforces exactly `want` (the agents answer from
/// the policy whose maps they have written).
fn wait_enforced(lab: &Lab, case: &str, want: &PolicyKeys) {
    let start = Instant::now();
    loop {
        let now = enforced(lab);
        if now.iter().all(|(_, got)| got.as_ref() == Ok(want)) {
            return;
        }
        assert!(
            start.elapsed() < ENFORCED_WITHIN,
            "{case}: the agents do not enforce {want:?} after {ENFORCED_WITHIN:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cluster state the agents read: every manifest of the lab.
fn lab_cluster_state(dir: &Path) -> ClusterState {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("manifests directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut state = ClusterState::default();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("manifest");
        manifest::parse_into(&mut state, &path, &text);
    }
    state
}

// === checking a case ===

fn allowed_text(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// One probed matrix of a case.
struct Matrix {
    text: String,
    protocol: Protocol,
    port: u16,
    /// The case's expectation, when it holds in the lab.
    expected: Option<BTreeMap<Cell, bool>>,
}

/// The case's matrices and address probes in the lab; problems go to
/// `failures`, notes to the returned summary.
fn check_case(
    lab: &Lab,
    addresses: &Addresses,
    case: &Case,
    plan: &Plan,
    compiled: &Compiled,
    failures: &mut Vec<String>,
) -> String {
    let pods = &addresses.pods;
    let matrices: Vec<Matrix> = case
        .probes(pods)
        .map(|(text, want)| {
            let (protocol, port) = policy_cases::probe(text);
            Matrix {
                text: text.to_owned(),
                protocol,
                port,
                expected: plan.faithful().then_some(want),
            }
        })
        .collect();
    let netns_of = |name: &str| netns::path_for(&lab.netns_of(name).expect("netns"));
    let mut jobs = Vec::new();
    let mut cells = Vec::new();
    for (m, matrix) in matrices.iter().enumerate() {
        for from in pods {
            for to in pods {
                jobs.push(Job {
                    netns: netns_of(from),
                    to: addresses.lab[to],
                    proto: proto(matrix.protocol),
                    port: matrix.port,
                });
                cells.push((m, from.clone(), to.clone()));
            }
        }
    }
    let verdict = |m: usize, from: &str, to: &str| -> Evaluation {
        let matrix = &matrices[m];
        compiled.evaluate(
            addresses.lab[from],
            addresses.lab[to],
            matrix.protocol,
            matrix.port,
        )
    };
    let (seen, retried) = run_with_retry(&jobs, |i| {
        let (m, from, to) = &cells[i];
        let expected = matrices[*m]
            .expected
            .as_ref()
            .is_some_and(|e| e[&(from.clone(), to.clone())]);
        expected || verdict(*m, from, to).allowed()
    });
    let measured: BTreeMap<(usize, &str, &str), &Seen> = cells
        .iter()
        .zip(&seen)
        .map(|((m, from, to), s)| ((*m, from.as_str(), to.as_str()), s))
        .collect();

    for (m, matrix) in matrices.iter().enumerate() {
        let mut wrong = Vec::new();
        for from in pods {
            for to in pods {
                let got = measured[&(m, from.as_str(), to.as_str())];
                let engine = verdict(m, from, to);
                let want = matrix
                    .expected
                    .as_ref()
                    .map(|e| e[&(from.clone(), to.clone())]);
                let disagrees = matches!(got, Seen::Failed(_))
                    || got.reached() != engine.allowed()
                    || want.is_some_and(|w| w != got.reached() || w != engine.allowed());
                if disagrees {
                    wrong.push(format!(
                        "  {from} -> {to} {}: expected {}, datapath {}, engine {} ({:?} / {:?})",
                        matrix.text,
                        want.map_or("(not translatable)", allowed_text),
                        got.describe(),
                        allowed_text(engine.allowed()),
                        engine.egress,
                        engine.ingress,
                    ));
                }
            }
        }
        if wrong.is_empty() {
            continue;
        }
        let mut report = format!(
            "{} {}: {} cells disagree\n{}\n",
            case.name,
            matrix.text,
            wrong.len(),
            wrong.join("\n")
        );
        if let Some(expected) = &matrix.expected {
            let _ = write!(
                report,
                "expected:\n{}",
                render(pods, |f, t| expected[&(f.to_owned(), t.to_owned())])
            );
        }
        let _ = write!(
            report,
            "measured (E: probe failed):\n{}engine on the lab's state:\n{}",
            render_with(pods, |f, t| measured[&(m, f, t)].symbol().to_owned()),
            render(pods, |f, t| verdict(m, f, t).allowed()),
        );
        failures.push(report);
    }

    let (ran, skipped) = check_addresses(lab, addresses, case, plan, compiled, failures);
    let mut summary = format!(
        "{} matrices ({} cells), {ran} address probes",
        matrices.len(),
        cells.len()
    );
    if retried > 0 {
        let _ = write!(summary, ", {retried} cells retried");
    }
    for reason in skipped {
        let _ = write!(summary, "\n    skipped {reason}");
    }
    summary
}

/// Where an address probe's end is in the lab.
enum End {
    Pod(String),
    External,
    Node(String),
}

fn end(lab: &Lab, addresses: &Addresses, name: &str) -> Result<End, String> {
    if addresses.lab.contains_key(name) {
        return Ok(End::Pod(name.to_owned()));
    }
    let ip: Ipv4Addr = name.parse().map_err(|_| format!("{name} is no address"))?;
    if ip == lab.external().ip {
        return Ok(End::External);
    }
    lab.nodes()
        .iter()
        .find(|n| n.underlay_ip == ip)
        .map(|n| End::Node(n.name.clone()))
        .ok_or_else(|| format!("the lab has no host at {ip}"))
}

/// The address the kernel in `netns` sends from towards `to`.
fn source_address(netns: &Path, to: Ipv4Addr) -> Ipv4Addr {
    let netns = netns.to_owned();
    harness::in_netns(&netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp socket");
        socket.connect((to, 80)).expect("route to the destination");
        match socket.local_addr().expect("local address").ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(ip) => panic!("IPv6 source {ip}"),
        }
    })
}

/// The case's address probes that the lab can run; returns how many ran and
/// why the others did not.
fn check_addresses(
    lab: &Lab,
    addresses: &Addresses,
    case: &Case,
    plan: &Plan,
    compiled: &Compiled,
    failures: &mut Vec<String>,
) -> (usize, Vec<String>) {
    let mut skipped = Vec::new();
    let mut runnable: Vec<(AddressProbe, Job, Ipv4Addr, Option<bool>)> = Vec::new();
    for probe in case.address_probes() {
        let line = format!(
            "{} -> {} {}/{}",
            probe.from,
            probe.to,
            probe.protocol.name(),
            probe.port
        );
        let ends = end(lab, addresses, &probe.from)
            .and_then(|from| end(lab, addresses, &probe.to).map(|to| (from, to)));
        let (from, to) = match ends {
            Ok(ends) => ends,
            Err(reason) => {
                skipped.push(format!("{line}: {reason}"));
                continue;
            }
        };
        let (netns, model_source) = match &from {
            End::Pod(pod) => (
                netns::path_for(&lab.netns_of(pod).expect("netns")),
                addresses.model[pod],
            ),
            End::External => (netns::path_for(&lab.external().netns), lab.external().ip),
            End::Node(node) => (
                netns::path_for(&lab.netns_of(node).expect("netns")),
                lab.node(node).expect("node").underlay_ip,
            ),
        };
        let target = match &to {
            End::Pod(pod) => addresses.lab[pod],
            End::External => lab.external().ip,
            End::Node(node) => {
                skipped.push(format!("{line}: no server listens on {node}"));
                continue;
            }
        };
        let source = match &from {
            End::Pod(pod) => addresses.lab[pod],
            _ => source_address(&netns, target),
        };
        // A host sends from the address the case names, or the case does
        // not hold for it (a pod's address is translated like the matrices').
        let same_source = matches!(from, End::Pod(_)) || source == model_source;
        let expected = (plan.faithful() && same_source).then_some(probe.allowed);
        if !same_source {
            skipped.push(format!(
                "{line}: expectation (the host sends from {source}), engine still checked"
            ));
        }
        let job = Job {
            netns,
            to: target,
            proto: proto(probe.protocol),
            port: probe.port,
        };
        runnable.push((probe, job, source, expected));
    }
    let jobs: Vec<Job> = runnable.iter().map(|r| r.1.clone()).collect();
    let verdicts: Vec<Evaluation> = runnable
        .iter()
        .map(|(probe, job, source, _)| {
            compiled.evaluate(*source, job.to, probe.protocol, probe.port)
        })
        .collect();
    let (seen, _) = run_with_retry(&jobs, |i| {
        runnable[i].3.unwrap_or(false) || verdicts[i].allowed()
    });
    for ((probe, job, source, expected), (got, engine)) in
        runnable.iter().zip(seen.iter().zip(&verdicts))
    {
        let disagrees = matches!(got, Seen::Failed(_))
            || got.reached() != engine.allowed()
            || expected.is_some_and(|w| w != got.reached() || w != engine.allowed());
        if disagrees {
            failures.push(format!(
                "{} address probe {} -> {} {}/{} (lab: {source} -> {}): expected {}, datapath {}, engine {} ({:?} / {:?})",
                case.name,
                probe.from,
                probe.to,
                probe.protocol.name(),
                probe.port,
                job.to,
                expected.map_or("(not applicable)", allowed_text),
                got.describe(),
                allowed_text(engine.allowed()),
                engine.egress,
                engine.ingress,
            ));
        }
    }
    (runnable.len(), skipped)
}

#[test]
fn conformance_cases_in_the_lab() {
    if !harness::require_root("conformance_cases_in_the_lab") {
        return;
    }
    let suite = Instant::now();
    let file = policy_cases::load();
    let mut guard = harness::model_lab(LAB, &["--idle-timeout=1s", "--flow-drain-interval=250ms"]);
    guard
        .route_pods_from_underlay()
        .expect("route the pod network from the external host");
    let addresses = Addresses::new(&file.model, &guard);
    let lab_ips: Vec<String> = addresses
        .pods
        .iter()
        .map(|p| format!("{p}={}", addresses.lab[p]))
        .collect();
    println!(
        "lab up in {:?}; pods at {}",
        suite.elapsed(),
        lab_ips.join(" ")
    );
    let dir = guard.state().manifests_dir();
    let mut failures = Vec::new();
    let mut enforced_before = BTreeSet::new();
    for case in &file.cases {
        let start = Instant::now();
        let plan = Plan::new(case, &addresses);

        // Labels first, then the old policies go: once every agent enforces
        // none, any later load of the manifests has the new labels.
        apply_additions(&mut guard, &file.model, case);
        remove_policies(&dir);
        if enforced_before.is_empty() {
            std::thread::sleep(MANIFEST_RELOAD);
        } else {
            wait_enforced(&guard, &case.name, &BTreeSet::new());
        }
        write_policies(&dir, plan.policies());
        let want: PolicyKeys = plan.policies().iter().map(policy_key).collect();
        wait_enforced(&guard, &case.name, &want);
        enforced_before = want;
        let settled = start.elapsed();

        let compiled = PolicyEngine::compile(&lab_cluster_state(&dir), None);
        if !compiled.rejected.is_empty() {
            failures.push(format!(
                "{}: the engine refuses the lab's policies: {:?}",
                case.name, compiled.rejected
            ));
            continue;
        }
        let summary = check_case(&guard, &addresses, case, &plan, &compiled, &mut failures);
        let mode = match &plan {
            Plan::Faithful { notes, .. } if notes.is_empty() => String::new(),
            Plan::Faithful { notes, .. } => {
                format!(" [ipBlocks in lab addresses: {}]", notes.join("; "))
            }
            Plan::EngineOnly { reason, .. } => {
                format!(" [engine only, the expected matrices do not hold in the lab: {reason}]")
            }
        };
        println!(
            "{}: {summary}; enforced in {settled:?}, done in {:?}{mode}",
            case.name,
            start.elapsed()
        );
    }
    println!(
        "{} cases in {:?}, {} failures",
        file.cases.len(),
        suite.elapsed(),
        failures.len()
    );
    drop(guard);
    assert!(
        failures.is_empty(),
        "{} disagreements:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
