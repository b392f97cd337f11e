//! The NetworkPolicy conformance cases (`tests/policy/cases.yaml`) through the
//! policy engine: every cell of every matrix, and every address probe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use lumen_agent::cluster::{ClusterState, NamedPort, PodInfo, k8s_protocol};
use lumen_agent::policy::{Compiled, DirectionVerdict, PolicyEngine};
use lumen_api::flow::Protocol;
use serde::Deserialize;

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/policy/cases.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    model: Model,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Model {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<ModelPod>,
    ports: Vec<u16>,
    protocols: Vec<String>,
    outside: Vec<Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelPod {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    about: String,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    named_ports: BTreeMap<String, Vec<ExtraPort>>,
    policies: Vec<NetworkPolicy>,
    reach: Vec<Reach>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraPort {
    name: String,
    port: u16,
    protocol: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reach {
    probes: Vec<String>,
    matrix: String,
}

fn load() -> File {
    let text = std::fs::read_to_string(CASES).expect("tests/policy/cases.yaml");
    serde_yaml::from_str(&text).expect("cases.yaml parses")
}

fn protocol(name: &str) -> Protocol {
    k8s_protocol(name).unwrap_or_else(|| panic!("unknown protocol {name}"))
}

/// `TCP/80` → (TCP, 80).
fn probe(text: &str) -> (Protocol, u16) {
    let (proto, port) = text.split_once('/').expect("PROTOCOL/PORT");
    (protocol(proto), port.parse().expect("port"))
}

fn pod_key(name: &str) -> (String, String) {
    let (ns, pod) = name.split_once('/').expect("namespace/pod");
    (ns.to_owned(), pod.to_owned())
}

/// The model with the case's additions and policies.
fn state(model: &Model, case: &Case) -> ClusterState {
    let mut state = ClusterState::default();
    for (name, labels) in &model.namespaces {
        let mut labels = labels.clone();
        labels.extend(case.namespace_labels.get(name).cloned().unwrap_or_default());
        state.namespaces.insert(name.clone(), labels);
    }
    for pod in &model.pods {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let mut labels = pod.labels.clone();
        labels.extend(case.pod_labels.get(&key).cloned().unwrap_or_default());
        let mut ports = Vec::new();
        for proto in &model.protocols {
            for &port in &model.ports {
                ports.push(NamedPort {
                    name: format!("serve-{port}-{}", proto.to_ascii_lowercase()),
                    port,
                    protocol: protocol(proto),
                });
            }
        }
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

/// The expected matrix: (source, destination) → allowed.
fn expected(case: &str, matrix: &str, pods: &[String]) -> BTreeMap<(String, String), bool> {
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
        for (to, cell) in pods.iter().zip(cells) {
            let allowed = match cell {
                "." => true,
                "X" => false,
                other => panic!("{case}: cell {other:?} is neither . nor X"),
            };
            if from == to {
                assert!(allowed, "{case}: a pod always reaches itself ({from})");
            }
            out.insert((from.to_owned(), to.clone()), allowed);
        }
    }
    assert_eq!(rows, pods, "{case}: matrix rows");
    out
}

fn render(pods: &[String], cell: impl Fn(&str, &str) -> bool) -> String {
    let mut out = format!("from/to {}\n", pods.join(" "));
    for from in pods {
        let cells: Vec<&str> = pods
            .iter()
            .map(|to| if cell(from, to) { " . " } else { " X " })
            .collect();
        let _ = writeln!(out, "{from:<8}{}", cells.join(" ").trim_end());
    }
    out
}

/// Every verdict names a policy of the case.
fn check_attribution(case: &Case, compiled: &Compiled, verdict: &DirectionVerdict) {
    let (rule, policy) = match verdict {
        DirectionVerdict::Allowed { rule, policy }
        | DirectionVerdict::DefaultDeny { rule, policy } => (rule, policy),
        DirectionVerdict::NotIsolated | DirectionVerdict::Loopback => return,
    };
    assert_eq!(compiled.rule(*rule), Some(policy), "{}: rule id", case.name);
    assert!(
        case.policies.iter().any(|p| {
            p.metadata.name.as_deref() == Some(policy.name.as_str())
                && p.metadata.namespace.as_deref() == Some(policy.namespace.as_str())
        }),
        "{}: {policy:?} is not a policy of the case",
        case.name
    );
}

#[test]
fn conformance_cases_match_the_engine() {
    let file = load();
    let pods: Vec<String> = file
        .model
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let ips: BTreeMap<&str, Ipv4Addr> = pods
        .iter()
        .map(String::as_str)
        .zip(file.model.pods.iter().map(|p| p.ip))
        .collect();
    // Addresses other than pods' must be the model's, so the lab provides them.
    let address = |name: &str| -> Ipv4Addr {
        ips.get(name).copied().unwrap_or_else(|| {
            let ip = name.parse().expect("a pod or an address");
            assert!(
                file.model.outside.contains(&ip),
                "{ip} is not in model.outside"
            );
            ip
        })
    };
    let mut failures = Vec::new();
    let mut names = Vec::new();
    let mut cells = 0;
    for case in &file.cases {
        assert!(!case.about.is_empty(), "{}: about", case.name);
        assert!(!names.contains(&case.name), "{}: duplicate", case.name);
        names.push(case.name.clone());
        let compiled = PolicyEngine::compile(&state(&file.model, case), None);
        assert!(
            compiled.rejected.is_empty(),
            "{}: policies rejected: {:?}",
            case.name,
            compiled.rejected
        );
        for reach in &case.reach {
            let want = expected(&case.name, &reach.matrix, &pods);
            for text in &reach.probes {
                let (proto, port) = probe(text);
                let got = |from: &str, to: &str| {
                    let verdict = compiled.evaluate(ips[from], ips[to], proto, port);
                    check_attribution(case, &compiled, &verdict.egress);
                    check_attribution(case, &compiled, &verdict.ingress);
                    verdict.allowed()
                };
                let wrong: Vec<String> = want
                    .iter()
                    .filter(|((from, to), allowed)| got(from, to) != **allowed)
                    .map(|((from, to), allowed)| {
                        let verdict =
                            compiled.evaluate(ips[from.as_str()], ips[to.as_str()], proto, port);
                        format!(
                            "  {from} -> {to}: expected {}, engine {verdict:?}",
                            if *allowed { "allowed" } else { "denied" }
                        )
                    })
                    .collect();
                cells += want.len();
                if !wrong.is_empty() {
                    failures.push(format!(
                        "{} {text}:\n{}\nthe engine says:\n{}",
                        case.name,
                        wrong.join("\n"),
                        render(&pods, |f, t| got(f, t))
                    ));
                }
            }
        }
        for line in &case.addresses {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [from, "->", to, text, cell] = parts[..] else {
                panic!(
                    "{}: address probe {line:?} is not FROM -> TO PROTO/PORT .|X",
                    case.name
                );
            };
            let (proto, port) = probe(text);
            let want = match cell {
                "." => true,
                "X" => false,
                other => panic!("{}: {other:?} is neither . nor X", case.name),
            };
            assert!(
                ips.contains_key(from) || ips.contains_key(to),
                "{}: {line}: one end must be a pod",
                case.name
            );
            let verdict = compiled.evaluate(address(from), address(to), proto, port);
            check_attribution(case, &compiled, &verdict.egress);
            check_attribution(case, &compiled, &verdict.ingress);
            if verdict.allowed() != want {
                failures.push(format!("{} {line}: engine {verdict:?}", case.name));
            }
        }
    }
    assert!(file.cases.len() >= 40, "only {} cases", file.cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} case probes disagree ({cells} cells checked):\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n\n")
    );
}
