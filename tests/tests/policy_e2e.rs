//! NetworkPolicy in a live lab with real packets: a default deny and an allow
//! rule enforced across nodes for TCP, UDP and SCTP; the drop and the allow are
//! attributed in the flow records, and `lumen policy explain` names the same
//! rules with each node's datapath agreeing; `lumen policy for` shows the
//! isolating policy; a new policy cuts an allowed connection; a bad policy is
//! refused (listed with its reason by `lumen policy list`) and the old one
//! stays enforced; deleting policies restores reachability.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use lumen_api::Flow;
use lumen_api::flow::{RuleAction, Verdict};
use lumen_api::policy::{Explanation, PodPolicies, PolicyList, PolicyType};
use lumen_api::{Ipv4Cidr, paths};
use lumen_lab::Lab;
use lumen_lab::netio::probe::{Proto, probe};
use lumen_tests::harness::{self, in_netns};

const TIMEOUT: Duration = Duration::from_millis(400);
/// An IPFIX collector of the test's own, on the underlay gateway.
const COLLECTOR: &str = "192.0.2.1:4741";

/// Datagrams sent to [`COLLECTOR`], kept for an independent decoder.
struct Collector {
    messages: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    /// Bind inside the lab's underlay namespace and keep reading.
    fn listen(underlay: &Path) -> Self {
        let socket = in_netns(underlay, || {
            std::net::UdpSocket::bind(COLLECTOR).expect("bind the collector")
        });
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 65_536];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().expect("lock").push(buf[..n].to_vec());
            }
        });
        Self { messages }
    }

    /// Every flow record so far, decoded by PyPI `ipfix` with our IE spec.
    fn decoded(&self) -> Vec<serde_json::Value> {
        use lumen_tests::peers::{python_with, repo_file};
        let file = std::env::temp_dir().join(format!("lumen-policy-{}.ipfix", std::process::id()));
        let bytes: Vec<u8> = self.messages.lock().expect("lock").concat();
        std::fs::write(&file, bytes).expect("write messages");
        let out = std::process::Command::new(python_with("ipfix"))
            .arg(repo_file("tests/peers/ipfix_decode.py"))
            .arg("--file")
            .arg(&file)
            .arg("--iespec")
            .arg(repo_file("dashboards/collectors/python-ipfix/lumen.iespec"))
            .output()
            .expect("the decoder runs (install with: cargo xtask deps)");
        assert!(
            out.status.success(),
            "decoding {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&file);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|m| m["records"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["template_id"] == 256)
            .map(|r| r["fields"].clone())
            .collect()
    }
}
const LAB: &str = "t-policy";

/// A 2 x 2 lab whose agents end idle flows after 1 s and export them to the
/// test's own collector on the underlay.
fn exporting_lab(name: &str) -> (lumen_lab::LabGuard, Collector) {
    let collector_url = format!("--ipfix-collector=udp://{COLLECTOR}");
    let guard = harness::lab_with(
        name,
        2,
        2,
        &[
            "--idle-timeout=1s",
            "--flow-drain-interval=250ms",
            &collector_url,
            // The collector binds after the agents started: templates again soon.
            "--ipfix-template-refresh=1s",
        ],
    );
    let collector = Collector::listen(&lumen_lab::netio::netns::path_for(
        &guard.lab().state().underlay.netns,
    ));
    (guard, collector)
}

/// Whether `from` reaches `to` on `port`/`proto` (a reply came back).
fn reaches(lab: &Lab, from: &str, to: &str, proto: Proto, port: u16) -> bool {
    let ns = lumen_lab::netio::netns::path_for(&lab.netns_of(from).expect("netns"));
    let target = lab.address_of(to).expect("address");
    in_netns(&ns, move || probe(target, proto, port, TIMEOUT).is_ok())
}

fn write_policy(dir: &Path, name: &str, yaml: &str) {
    std::fs::write(dir.join(format!("policy-{name}.yaml")), yaml).expect("write policy");
}

/// Wait until `check` holds (enforcement follows the manifests within a second).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lumen policy ARGS` over the agents of lab `lab`: its standard output.
fn lumen_policy(lab: &str, args: &[&str]) -> String {
    let out = harness::lumen(&[&["policy", "--lab", lab], args].concat());
    assert!(
        out.status.success(),
        "lumen policy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lumen policy ARGS -o json` as JSON.
fn policy_json(lab: &str, args: &[&str]) -> serde_json::Value {
    let out = lumen_policy(lab, &[args, &["-o", "json"]].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lumen policy {args:?}: {e}: {out}"))
}

/// `lumen policy explain` of `flow`'s packet names the rules the flow record
/// names, and the datapath of each end's node agrees with it.
fn explain_like_the_record(lab: &Lab, flow: &Flow) -> Explanation {
    let from = flow.source.pod_ref().expect("source is a pod");
    let to = flow.destination.pod_ref().expect("destination is a pod");
    let packet = format!("{}/{}", flow.destination.port, flow.protocol);
    let name = lab.state().name.clone();
    let e: Explanation =
        serde_json::from_value(policy_json(&name, &["explain", &from, &to, &packet]))
            .expect("explanation");
    let case = format!("{from} -> {to} {packet}");
    assert_eq!(e.allowed, flow.verdict == Verdict::Forwarded, "{case}");
    // Both ends' rules are on the record: the source is never isolated here,
    // and the record is the destination's node's.
    assert_eq!(
        e.ingress.engine.policy(),
        flow.ingress_policy.as_ref(),
        "{case}"
    );
    assert_eq!(
        e.egress.engine.policy(),
        flow.egress_policy.as_ref(),
        "{case}"
    );
    for (direction, pod, d) in [
        ("egress", &flow.source, &e.egress),
        ("ingress", &flow.destination, &e.ingress),
    ] {
        let pod = lab.pod(pod.pod.as_deref().expect("pod")).expect("lab pod");
        assert_eq!(
            d.node.as_deref(),
            Some(pod.node.as_str()),
            "{case} {direction}"
        );
        let datapath = d.datapath.as_ref().expect("the enforcing node's datapath");
        assert!(datapath.agrees, "{case} {direction}: {datapath:?}");
        assert_eq!(datapath.rule, d.engine.rule(), "{case} {direction}");
    }
    let text = lumen_policy(&name, &["explain", &from, &to, &packet]);
    assert_eq!(
        text.matches("datapath agrees: yes").count(),
        2,
        "{case}: {text}"
    );
    e
}

const DENY_ALL_TO_21: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  policyTypes: [Ingress]
";

const ALLOW_11_ON_80: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-11, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: pod-1-1}}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: UDP, port: 80}
    - {protocol: SCTP, port: 80}
";

const ALLOW_TRUSTED: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-trusted, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: trusted}}
";

#[test]
fn policy_enforced_attributed_and_changed_at_run_time() {
    if !harness::require_root("policy_enforced_attributed_and_changed_at_run_time") {
        return;
    }
    let (guard, collector) = exporting_lab(LAB);
    let lab = guard.lab();
    let manifests = lab.state().manifests_dir();
    let protos = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    // Before any policy everything reaches pod-2-1.
    for proto in protos {
        assert!(reaches(lab, "pod-1-2", "pod-2-1", proto, 81));
    }

    // An allowed connection, held open across the policy change below.
    let p21 = lab.address_of("pod-2-1").expect("pod-2-1");
    let ns11 = lumen_lab::netio::netns::path_for(&lab.netns_of("pod-1-1").expect("netns"));
    let held = in_netns(&ns11, move || {
        TcpStream::connect_timeout(&SocketAddrV4::new(p21, 81).into(), TIMEOUT).expect("connect")
    });

    write_policy(&manifests, "deny", DENY_ALL_TO_21);
    write_policy(&manifests, "allow", ALLOW_11_ON_80);
    eventually("pod-1-2 is cut off from pod-2-1", || {
        !reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80)
    });
    for proto in protos {
        assert!(
            reaches(lab, "pod-1-1", "pod-2-1", proto, 80),
            "{proto:?} 80 from pod-1-1"
        );
        assert!(
            !reaches(lab, "pod-1-1", "pod-2-1", proto, 81),
            "{proto:?} 81 from pod-1-1"
        );
        assert!(
            !reaches(lab, "pod-1-2", "pod-2-1", proto, 80),
            "{proto:?} 80 from pod-1-2"
        );
    }
    // Same node as the client, other direction: not isolated.
    assert!(reaches(lab, "pod-2-1", "pod-1-2", Proto::Tcp, 80));
    assert!(reaches(lab, "pod-2-2", "pod-1-1", Proto::Udp, 81));

    // The connection opened before the policy is cut at its next packet.
    let mut held = held;
    held.set_read_timeout(Some(Duration::from_millis(600)))
        .expect("timeout");
    let _ = held.write_all(b"still there?\n");
    let mut line = String::new();
    let answered = BufReader::new(&held)
        .read_line(&mut line)
        .is_ok_and(|n| n > 0);
    assert!(
        !answered,
        "a connection the new policy denies is cut: {line:?}"
    );

    // The drop is attributed: pod-2-1's node names the policy that isolates it.
    let socket = lab.node("node-2").expect("node-2").socket.clone();
    let denied = harness::wait_flows(
        &socket,
        "verdict=DROPPED&from_pod=default/pod-1-2",
        Duration::from_secs(10),
        |fs| !fs.is_empty(),
    );
    let flow = denied.first().expect("a dropped flow from pod-1-2");
    assert_eq!(flow.verdict, Verdict::Dropped);
    let policy = flow.ingress_policy.as_ref().expect("ingress policy named");
    assert_eq!(
        (
            policy.namespace.as_str(),
            policy.name.as_str(),
            policy.rule.as_str(),
            policy.action
        ),
        ("default", "web-deny-all", "", RuleAction::Drop),
        "the default deny of the first isolating policy"
    );
    let allowed = harness::wait_flows(
        &socket,
        "verdict=FORWARDED&from_pod=default/pod-1-1&port=80",
        Duration::from_secs(10),
        |fs| fs.iter().any(|f| f.ingress_policy.is_some()),
    );
    let rule = allowed
        .iter()
        .find_map(|f| f.ingress_policy.clone())
        .expect("allowing rule named");
    assert_eq!(
        (rule.name.as_str(), rule.rule.as_str()),
        ("web-from-11", "ingress[0]")
    );
    let allowed_flow = allowed
        .iter()
        .find(|f| f.ingress_policy.is_some())
        .expect("an allowed flow");

    // The IPFIX records say the same, read by an independent decoder (PyPI ipfix).
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        records = collector.decoded();
        let has = |src: &str| {
            records.iter().any(|r| {
                r["sourcePodName"] == src
                    && r["destinationPodName"] == "pod-2-1"
                    && !r["ingressNetworkPolicyName"]
                        .as_str()
                        .unwrap_or("")
                        .is_empty()
            })
        };
        if has("pod-1-2") && has("pod-1-1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ipfix_denied = records
        .iter()
        .find(|r| {
            r["sourcePodName"] == "pod-1-2"
                && r["destinationPodName"] == "pod-2-1"
                && r["lumenVerdict"] == 2
        })
        .unwrap_or_else(|| {
            panic!(
                "no IPFIX record of the drop in {records:#?} ({} datagrams received)",
                collector.messages.lock().map_or(0, |m| m.len())
            )
        });
    assert_eq!(ipfix_denied["ingressNetworkPolicyName"], "web-deny-all");
    assert_eq!(ipfix_denied["ingressNetworkPolicyNamespace"], "default");
    assert_eq!(ipfix_denied["ingressNetworkPolicyRuleName"], "");
    assert_eq!(ipfix_denied["ingressNetworkPolicyRuleAction"], 2, "drop");
    assert_eq!(
        ipfix_denied["ingressNetworkPolicyType"], 1,
        "K8s NetworkPolicy"
    );
    assert_eq!(ipfix_denied["lumenDropReason"], 1, "policy");
    let ipfix_allowed = records
        .iter()
        .find(|r| {
            r["sourcePodName"] == "pod-1-1"
                && r["destinationPodName"] == "pod-2-1"
                && r["destinationTransportPort"] == 80
                && r["lumenVerdict"] == 1
                && r["ingressNetworkPolicyName"] == "web-from-11"
        })
        .unwrap_or_else(|| panic!("no IPFIX record of the allowed flow in {records:#?}"));
    assert_eq!(ipfix_allowed["ingressNetworkPolicyRuleName"], "ingress[0]");
    assert_eq!(ipfix_allowed["ingressNetworkPolicyRuleAction"], 1, "allow");

    // `lumen policy explain` names the same rules, and both nodes' datapaths agree.
    let denial = explain_like_the_record(lab, flow);
    assert!(matches!(
        denial.ingress.engine,
        lumen_api::policy::EngineVerdict::DefaultDeny { .. }
    ));
    let allow = explain_like_the_record(lab, allowed_flow);
    assert!(allow.allowed);
    let text = lumen_policy(
        LAB,
        &["explain", "default/pod-1-2", "default/pod-2-1", "80/tcp"],
    );
    assert!(
        text.contains("DENIED") && text.contains("default deny of default/web-deny-all"),
        "{text}"
    );

    // `lumen policy for` shows the isolating policy and the allowing rule.
    let for_21: PodPolicies = serde_json::from_value(policy_json(LAB, &["for", "default/pod-2-1"]))
        .expect("pod policies");
    assert_eq!((for_21.node.as_str(), for_21.local), ("node-2", true));
    assert!(for_21.ingress.isolated && !for_21.egress.isolated);
    let deny = for_21.ingress.default_deny.as_ref().expect("default deny");
    assert_eq!(Some(&deny.policy), flow.ingress_policy.as_ref());
    assert_eq!(deny.id, denial.ingress.engine.rule(), "the id explain gave");
    let rules: Vec<_> = for_21
        .ingress
        .rules
        .iter()
        .map(|r| {
            let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
            (
                r.policy.name.as_str(),
                r.policy.rule.as_str(),
                r.peers.clone(),
                ports,
            )
        })
        .collect();
    let p11 = lab.address_of("pod-1-1").expect("pod-1-1");
    assert_eq!(
        rules,
        [(
            "web-from-11",
            "ingress[0]",
            vec![Ipv4Cidr::host(p11)],
            vec!["TCP/80".to_owned(), "UDP/80".into(), "SCTP/80".into()]
        )]
    );
    let text = lumen_policy(LAB, &["for", "default/pod-2-1"]);
    assert!(
        text.contains("Ingress: isolated, default deny of default/web-deny-all")
            && text.contains("allow default/web-from-11 ingress[0]")
            && text.contains("Egress: not isolated"),
        "{text}"
    );

    let metrics = harness::get_text(&socket, paths::METRICS);
    assert!(
        harness::metric(&metrics, "lumen_datapath_drops_total{reason=\"policy\"}") > 0.0,
        "policy drops are counted"
    );

    // Relabelling a pod changes what a policy selects: pod-1-2 gains the label
    // a new rule admits, reaches pod-2-1, and loses it again.
    write_policy(&manifests, "trusted", ALLOW_TRUSTED);
    let mut relabel = Lab::open(LAB, lab.state_root()).expect("the lab's state");
    let trusted = std::collections::BTreeMap::from([("role".to_owned(), "trusted".to_owned())]);
    relabel
        .set_pod_labels("pod-1-2", trusted)
        .expect("label pod-1-2");
    eventually("the relabelled pod-1-2 reaches pod-2-1", || {
        reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80)
    });
    relabel
        .set_pod_labels("pod-1-2", std::collections::BTreeMap::new())
        .expect("unlabel pod-1-2");
    eventually("pod-1-2 is cut off again without the label", || {
        !reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80)
    });
    std::fs::remove_file(manifests.join("policy-trusted.yaml")).expect("remove");

    // A bad update of the allow policy is refused; the old version stays.
    write_policy(
        &manifests,
        "allow",
        &ALLOW_11_ON_80.replace(
            "port: 80}\n    - {protocol: UDP",
            "port: 70000}\n    - {protocol: UDP",
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 80),
        "old allow still in force"
    );
    assert!(
        !reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80),
        "old deny still in force"
    );
    let log =
        std::fs::read_to_string(&lab.node("node-2").expect("node-2").agent_log).expect("agent log");
    assert!(
        log.contains("web-from-11") && log.contains("70000"),
        "refusal logged with its reason"
    );
    // `lumen policy list` shows the refusal and its reason, and the old
    // version still in force.
    let list: PolicyList =
        serde_json::from_value(policy_json(LAB, &["list"])).expect("policy list");
    let refused = list
        .rejected
        .iter()
        .find(|r| r.name == "web-from-11")
        .unwrap_or_else(|| panic!("refusal listed: {list:?}"));
    assert!(refused.reason.contains("70000"), "{}", refused.reason);
    assert!(refused.previous_in_force);
    let listed: Vec<_> = list
        .policies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.policy_types.clone(),
                p.selected_pods,
                p.previous_version,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("web-deny-all", vec![PolicyType::Ingress], 1, false),
            ("web-from-11", vec![PolicyType::Ingress], 1, true),
        ]
    );
    let text = lumen_policy(LAB, &["list"]);
    assert!(
        text.contains("Refused:")
            && text.contains(&format!("default/web-from-11: {}", refused.reason)),
        "{text}"
    );

    // Policies gone: everything reaches pod-2-1 again.
    for name in ["deny", "allow"] {
        std::fs::remove_file(manifests.join(format!("policy-{name}.yaml"))).expect("remove");
    }
    eventually("pod-1-2 reaches pod-2-1 again", || {
        reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80)
    });
    assert_eq!(lumen_policy(LAB, &["list"]), "No NetworkPolicy in force.\n");
    drop(guard);
}

const LAB_EGRESS: &str = "t-policy-eg";

const EGRESS_ONLY_80: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress-80, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-1-1}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {}
    ports:
    - {protocol: TCP, port: 80}
";

const FROM_TRUSTED_NAMESPACES: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-trusted-ns, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-2}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {trust: high}}
";

/// A drop by an egress policy is attributed the same way by the flow record,
/// the IPFIX record, `lumen policy explain` and a trace; a namespace's labels
/// changing at run time changes what a namespaceSelector admits.
#[test]
fn egress_drop_attributed_and_namespace_relabel_followed() {
    if !harness::require_root("egress_drop_attributed_and_namespace_relabel_followed") {
        return;
    }
    let (guard, collector) = exporting_lab(LAB_EGRESS);
    let lab = guard.lab();
    let manifests = lab.state().manifests_dir();

    // pod-1-1 may open TCP 80 only: 81 is dropped at its own node, by the
    // default deny of the policy that isolates it for egress.
    write_policy(&manifests, "egress", EGRESS_ONLY_80);
    eventually("pod-1-1 loses TCP 81 to pod-2-1", || {
        !reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 81)
    });
    assert!(reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 80));
    assert!(
        !reaches(lab, "pod-1-1", "pod-2-1", Proto::Udp, 80),
        "UDP not admitted"
    );
    assert!(
        reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 81),
        "others unaffected"
    );

    let node1 = lab.node("node-1").expect("node-1").socket.clone();
    let denied = harness::wait_flows(
        &node1,
        "verdict=DROPPED&from_pod=default/pod-1-1&port=81&protocol=tcp",
        Duration::from_secs(10),
        |fs| !fs.is_empty(),
    );
    let flow = denied.first().expect("a dropped flow from pod-1-1 on 81");
    let policy = flow.egress_policy.as_ref().expect("egress policy named");
    assert_eq!(
        (
            policy.namespace.as_str(),
            policy.name.as_str(),
            policy.rule.as_str(),
            policy.action
        ),
        ("default", "client-egress-80", "", RuleAction::Drop)
    );
    assert!(flow.ingress_policy.is_none(), "pod-2-1 is not isolated");
    let allowed = harness::wait_flows(
        &node1,
        "verdict=FORWARDED&from_pod=default/pod-1-1&port=80&protocol=tcp",
        Duration::from_secs(10),
        |fs| fs.iter().any(|f| f.egress_policy.is_some()),
    );
    let rule = allowed
        .iter()
        .find_map(|f| f.egress_policy.clone())
        .expect("allowing egress rule named");
    assert_eq!(
        (rule.name.as_str(), rule.rule.as_str(), rule.action),
        ("client-egress-80", "egress[0]", RuleAction::Allow)
    );

    // IPFIX, decoded by PyPI ipfix: Antrea's egress policy IEs. Records sent
    // before the collector had a template cannot be decoded: once it has one
    // (the allowed flows' records decode), one more denied connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    while collector.decoded().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 81));
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let is_drop = |r: &serde_json::Value| {
        r["sourcePodName"] == "pod-1-1"
            && r["destinationTransportPort"] == 81
            && r["protocolIdentifier"] == 6
            && r["lumenVerdict"] == 2
    };
    while Instant::now() < deadline {
        records = collector.decoded();
        if records.iter().any(is_drop) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ipfix = records.iter().find(|r| is_drop(r)).unwrap_or_else(|| {
        let seen: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{} -> {}:{} proto {} verdict {}",
                    r["sourcePodName"],
                    r["destinationPodName"],
                    r["destinationTransportPort"],
                    r["protocolIdentifier"],
                    r["lumenVerdict"]
                )
            })
            .collect();
        panic!("no IPFIX record of the egress drop in {seen:#?}")
    });
    assert_eq!(ipfix["egressNetworkPolicyName"], "client-egress-80");
    assert_eq!(ipfix["egressNetworkPolicyNamespace"], "default");
    assert_eq!(ipfix["egressNetworkPolicyRuleName"], "");
    assert_eq!(ipfix["egressNetworkPolicyRuleAction"], 2, "drop");
    assert_eq!(ipfix["egressNetworkPolicyType"], 1, "K8s NetworkPolicy");
    assert_eq!(ipfix["lumenDropReason"], 1, "policy");

    // explain: the same default deny, decided at node-1, and the datapath agrees.
    let e = explain_like_the_record(lab, flow);
    assert!(matches!(
        e.egress.engine,
        lumen_api::policy::EngineVerdict::DefaultDeny { .. }
    ));
    let text = lumen_policy(
        LAB_EGRESS,
        &["explain", "default/pod-1-1", "default/pod-2-1", "81/tcp"],
    );
    assert!(
        text.contains("DENIED") && text.contains("default deny of default/client-egress-80"),
        "{text}"
    );

    // A trace of the same packet stops at node-1's policy egress, naming it.
    let out = harness::lumen(&[
        "trace", "--lab", LAB_EGRESS, "pod-1-1", "pod-2-1", "--dport", "81", "-o", "json",
    ]);
    let result: lumen_api::trace::TraceResult =
        serde_json::from_slice(&out.stdout).expect("trace result");
    let last = result.hops.last().expect("hops");
    assert_eq!(
        (last.node.as_str(), last.point, last.action),
        (
            "node-1",
            lumen_api::trace::TracePoint::PolicyEgress,
            lumen_api::trace::HopAction::Dropped
        )
    );
    assert_eq!(
        last.policy.as_ref(),
        Some(policy),
        "the same policy and rule"
    );

    // A namespaceSelector follows the namespace's labels as they change.
    write_policy(&manifests, "trusted-ns", FROM_TRUSTED_NAMESPACES);
    eventually("pod-1-2 is cut off from pod-2-2", || {
        !reaches(lab, "pod-1-2", "pod-2-2", Proto::Tcp, 80)
    });
    let mut relabel = Lab::open(LAB_EGRESS, lab.state_root()).expect("the lab's state");
    let high = std::collections::BTreeMap::from([("trust".to_owned(), "high".to_owned())]);
    relabel
        .set_namespace_labels("default", high)
        .expect("label the namespace");
    eventually(
        "pod-1-2 reaches pod-2-2 once its namespace is trusted",
        || reaches(lab, "pod-1-2", "pod-2-2", Proto::Tcp, 80),
    );
    relabel
        .set_namespace_labels("default", std::collections::BTreeMap::new())
        .expect("unlabel the namespace");
    eventually("pod-1-2 is cut off again", || {
        !reaches(lab, "pod-1-2", "pod-2-2", Proto::Tcp, 80)
    });
    drop(guard);
}
