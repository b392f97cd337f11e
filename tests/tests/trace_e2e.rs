//! Traceflow end to end over live labs. Injected traces of every kind of path
//! (intra-node, inter-node with the tunnel and its tag, to the outside through
//! the masquerade, to a node, to addresses nobody has) checked hop by hop;
//! NetworkPolicy drops at the egress and at the ingress point naming the
//! deciding policy; `lumen trace` printing the same; injected packets never
//! reaching the destination's stack or server while real ones do; live traces
//! following a real connection, and with `dropped_only` ignoring an allowed one;
//! 200 traces at once without mixing their hops; and clear errors for bad
//! requests, unknown pods, unreachable agents and live traces that see nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lumen_api::Tag;
use lumen_api::flow::{DropReason, PolicyRef, Protocol, RuleAction, TcpFlags};
use lumen_api::policy::PodRef;
use lumen_api::trace::orchestrate::{self, NodeAgent, OrchestrateError};
use lumen_api::trace::{
    Hop, HopAction, TraceDestination, TraceMode, TracePhase, TracePoint, TraceRequest, TraceResult,
    TraceVerdict, TracedPacket, TunnelInfo,
};
use lumen_lab::Lab;
use lumen_lab::netio::probe::{Proto, probe};
use lumen_tests::harness::{self, in_netns};

/// How long a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// The lab's external host (TEST-NET-3).
const EXTERNAL: Ipv4Addr = lumen_lab::config::EXTERNAL_IP;
/// In no node's pod CIDR: no route anywhere.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(10, 244, 99, 9);

// === what a hop should be ===

/// The part of a hop a path is checked on, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    node: String,
    point: TracePoint,
    action: HopAction,
    reason: Option<DropReason>,
    policy: Option<PolicyRef>,
}

fn want(node: &str, point: TracePoint, action: HopAction) -> Want {
    Want {
        node: node.to_owned(),
        point,
        action,
        reason: None,
        policy: None,
    }
}

impl Want {
    fn of(hop: &Hop) -> Self {
        Self {
            node: hop.node.clone(),
            point: hop.point,
            action: hop.action,
            reason: hop.reason,
            policy: hop.policy.clone(),
        }
    }

    fn dropped(mut self, reason: DropReason) -> Self {
        self.action = HopAction::Dropped;
        self.reason = Some(reason);
        self
    }

    fn policy(mut self, name: &str, rule: &str, action: RuleAction) -> Self {
        self.policy = Some(policy_ref(name, rule, action));
        self
    }
}

fn policy_ref(name: &str, rule: &str, action: RuleAction) -> PolicyRef {
    PolicyRef {
        namespace: "default".into(),
        name: name.into(),
        rule: rule.into(),
        action,
    }
}

// === the paths, as hop lists ===

/// The source pod's node up to the tunnel into `to`'s node.
fn out_of(node: &str) -> Vec<Want> {
    vec![
        want(node, TracePoint::FromPod, HopAction::Received),
        want(node, TracePoint::PolicyEgress, HopAction::Forwarded),
    ]
}

/// A pod to a pod of the same node.
fn intra(node: &str) -> Vec<Want> {
    let mut path = out_of(node);
    path.push(want(node, TracePoint::PolicyIngress, HopAction::Forwarded));
    path.push(want(node, TracePoint::ToPod, HopAction::Delivered));
    path
}

/// Out of `from` through the tunnel and into `to`, up to (not including) what
/// `to` does with the packet.
fn tunnelled(from: &str, to: &str) -> Vec<Want> {
    let mut path = out_of(from);
    path.push(want(from, TracePoint::ToOverlay, HopAction::Tunnelled));
    path.push(want(to, TracePoint::FromOverlay, HopAction::Received));
    path
}

/// A pod to a pod of another node.
fn inter(from: &str, to: &str) -> Vec<Want> {
    let mut path = tunnelled(from, to);
    path.push(want(to, TracePoint::PolicyIngress, HopAction::Forwarded));
    path.push(want(to, TracePoint::ToPod, HopAction::Delivered));
    path
}

/// A pod to another node's own address.
fn to_node(from: &str, to: &str) -> Vec<Want> {
    let mut path = tunnelled(from, to);
    path.push(want(to, TracePoint::HostStack, HopAction::Delivered));
    path
}

/// A pod to the outside: the node's stack routes it out, masqueraded.
fn external(node: &str) -> Vec<Want> {
    let mut path = out_of(node);
    path.push(want(node, TracePoint::HostStack, HopAction::Forwarded));
    path.push(want(node, TracePoint::Masquerade, HopAction::Masqueraded));
    path
}

/// A pod to an address outside every pod CIDR: the node has no route.
fn no_route(node: &str) -> Vec<Want> {
    let mut path = out_of(node);
    path.push(want(node, TracePoint::HostStack, HopAction::Dropped).dropped(DropReason::NoRoute));
    path
}

// === running traces ===

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn to_pod(name: &str) -> TraceDestination {
    TraceDestination::Pod(pod(name))
}

/// An injected TCP SYN from `from` to `to` port `port`.
fn tcp(from: &str, to: TraceDestination, port: u16) -> TraceRequest {
    TraceRequest::tcp(pod(from), to, port)
}

/// A lab's pods and nodes as the traces need them.
struct Cluster<'a> {
    lab: &'a Lab,
    agents: Vec<NodeAgent>,
    identity: BTreeMap<String, u32>,
}

impl<'a> Cluster<'a> {
    fn new(lab: &'a Lab) -> Self {
        let identity = lab
            .status()
            .pods
            .iter()
            .map(|p| {
                let id = p
                    .identity
                    .unwrap_or_else(|| panic!("{} has an identity", p.name));
                (p.name.clone(), id.0)
            })
            .collect();
        let cluster = Self {
            lab,
            agents: harness::trace_agents(lab),
            identity,
        };
        cluster.wait_ready();
        cluster
    }

    /// Wait until every node's agent knows every pod's address: `up` returns
    /// once the pods are attached, and the agents read the manifests (where
    /// the addresses are) every 250 ms, so a trace right after `up` may be
    /// refused with "has no IP address yet".
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in self.lab.nodes() {
            let from = self
                .lab
                .pods()
                .iter()
                .find(|p| p.node == node.name)
                .expect("a pod on every node");
            for to in self.lab.pods().iter().filter(|p| p.name != from.name) {
                let request = tcp(&from.name, to_pod(&to.name), 80);
                while let Err(e) = orchestrate::run(&self.agents, &node.name, &request) {
                    let e = chain(&e);
                    assert!(
                        Instant::now() < deadline,
                        "the agents never knew every pod: {e}"
                    );
                    eprintln!("{} -> {}: not ready: {e}", from.name, to.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn node_of(&self, pod: &str) -> &str {
        &self
            .lab
            .pod(pod)
            .unwrap_or_else(|| panic!("pod {pod}"))
            .node
    }

    fn ip(&self, name: &str) -> Ipv4Addr {
        self.lab
            .address_of(name)
            .unwrap_or_else(|| panic!("address of {name}"))
    }

    fn node_ip(&self, node: &str) -> Ipv4Addr {
        self.lab
            .node(node)
            .unwrap_or_else(|| panic!("node {node}"))
            .underlay_ip
    }

    /// Run `request` from its source pod's node; an error is a test failure.
    fn trace(&self, request: &TraceRequest) -> TraceResult {
        let node = self.node_of(&request.source.name);
        orchestrate::run(&self.agents, node, request)
            .unwrap_or_else(|e| panic!("trace {request:?}: {}", chain(&e)))
    }

    /// Run `request` and check its result: phase, verdict, exact path,
    /// packet, tunnels, latencies. Returns the result for further checks.
    #[track_caller]
    fn check(&self, request: &TraceRequest, path: &[Want], verdict: TraceVerdict) -> TraceResult {
        let result = self.trace(request);
        self.check_result(&result, path, verdict);
        result
    }

    #[track_caller]
    fn check_result(&self, result: &TraceResult, path: &[Want], verdict: TraceVerdict) {
        let request = &result.request;
        let case = format!("{} -> {}", request.source, request.destination);
        assert_eq!(
            (result.phase, result.reason.as_deref()),
            (TracePhase::Succeeded, None),
            "{case}: {result:#?}"
        );
        let got: Vec<Want> = result.hops.iter().map(Want::of).collect();
        assert_eq!(got, path, "{case}: the path, hop by hop");
        assert_eq!(result.verdict, Some(verdict), "{case}");
        let source_node = self.node_of(&request.source.name);
        assert_eq!(result.source_node, source_node, "{case}");

        // The packet is the one asked for.
        let packet = result.packet.unwrap_or_else(|| panic!("{case}: no packet"));
        assert_eq!(packet.source, self.ip(&request.source.name), "{case}");
        let destination = match &request.destination {
            TraceDestination::Pod(p) => self.ip(&p.name),
            TraceDestination::Node(n) => self.node_ip(n),
            TraceDestination::Ip(ip) => *ip,
        };
        assert_eq!(packet.destination, destination, "{case}");
        assert_eq!(packet.protocol, request.protocol, "{case}");
        if let Some(port) = request.destination_port {
            assert_eq!(packet.destination_port, port, "{case}");
        }
        if request.mode == TraceMode::Injected && request.protocol.has_ports() {
            assert!(packet.source_port >= 32_768, "{case}: {packet}");
        }

        // The path ends at its final hop (an injected packet goes no further).
        let last = result.hops.last().expect("hops");
        assert!(last.is_final(), "{case}: last hop {last:?}");
        assert_eq!(result.final_hop(), Some(last), "{case}: one final hop");

        check_latencies(result);
        self.check_details(result, &case);
    }

    /// Tunnel legs (endpoints, the sender's identity, the trace bit), the
    /// translated source, and nothing extra on any other hop.
    #[track_caller]
    fn check_details(&self, result: &TraceResult, case: &str) {
        let source_node = result.source_node.as_str();
        let identity = self.identity[&result.request.source.name];
        let mut vnis = BTreeSet::new();
        let receiver = result
            .hops
            .iter()
            .find(|h| h.point == TracePoint::FromOverlay)
            .map(|h| h.node.clone());
        for hop in &result.hops {
            let at = format!("{case}: {} {}", hop.node, hop.point.name());
            match hop.point {
                TracePoint::ToOverlay if hop.action == HopAction::Tunnelled => {
                    let t = hop.tunnel.unwrap_or_else(|| panic!("{at}: no tunnel"));
                    let to = receiver.as_deref().expect("a receiving node");
                    assert_eq!(
                        (t.local, t.remote),
                        (self.node_ip(source_node), self.node_ip(to)),
                        "{at}"
                    );
                    vnis.insert(t.vni);
                }
                TracePoint::FromOverlay => {
                    let t = hop.tunnel.unwrap_or_else(|| panic!("{at}: no tunnel"));
                    assert_eq!(
                        (t.local, t.remote),
                        (self.node_ip(&hop.node), self.node_ip(source_node)),
                        "{at}"
                    );
                    vnis.insert(t.vni);
                }
                _ => assert_eq!(hop.tunnel, None, "{at}"),
            }
            if hop.point == TracePoint::Masquerade {
                let translated = hop
                    .translated_source
                    .unwrap_or_else(|| panic!("{at}: no translated source"));
                assert_eq!(*translated.ip(), self.node_ip(source_node), "{at}");
                assert_ne!(translated.port(), 0, "{at}");
            } else {
                assert_eq!(hop.translated_source, None, "{at}");
            }
            if !matches!(
                hop.point,
                TracePoint::PolicyEgress | TracePoint::PolicyIngress
            ) {
                assert_eq!(hop.policy, None, "{at}");
            }
            assert_ne!(hop.ifindex, 0, "{at}");
            assert!(!hop.interface.is_empty(), "{at}");
        }
        for vni in vnis {
            assert_eq!(vni & 0x7f_ffff, identity, "{case}: vni {vni:#x}");
            assert_ne!(vni & 0x80_0000, 0, "{case}: trace bit of vni {vni:#x}");
            let tag = Tag::from_vni(vni);
            assert!(tag.trace && tag.identity.0 == identity, "{case}: {tag:?}");
        }
    }
}

/// Every hop's latency is the time since the previous hop (0 for the first),
/// hops are in time order, and end to end spans first to last.
#[track_caller]
fn check_latencies(result: &TraceResult) {
    let mut previous: Option<&Hop> = None;
    for hop in &result.hops {
        match previous {
            None => assert_eq!(hop.latency_ns, 0, "first hop {hop:?}"),
            Some(p) => {
                assert!(
                    hop.timestamp_ns >= p.timestamp_ns,
                    "{} {} at {} before {} {} at {}",
                    hop.node,
                    hop.point.name(),
                    hop.timestamp_ns,
                    p.node,
                    p.point.name(),
                    p.timestamp_ns
                );
                assert_eq!(
                    hop.latency_ns,
                    hop.timestamp_ns - p.timestamp_ns,
                    "latency of {} {}",
                    hop.node,
                    hop.point.name()
                );
            }
        }
        previous = Some(hop);
    }
    if let (Some(first), Some(last)) = (result.hops.first(), result.hops.last()) {
        assert_eq!(result.end_to_end_ns, last.timestamp_ns - first.timestamp_ns);
    }
}

/// An error with its sources, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// === lab helpers ===

fn write_policy(lab: &Lab, name: &str, yaml: &str) {
    let dir = lab.state().manifests_dir();
    std::fs::write(dir.join(format!("policy-{name}.yaml")), yaml).expect("write policy");
}

fn remove_policy(lab: &Lab, name: &str) {
    let dir = lab.state().manifests_dir();
    std::fs::remove_file(dir.join(format!("policy-{name}.yaml"))).expect("remove policy");
}

/// Whether `from` reaches `to` on `port`/`proto` (a reply came back).
fn reaches(lab: &Lab, from: &str, to: &str, proto: Proto, port: u16) -> bool {
    let ns = lumen_lab::netio::netns::path_for(&lab.netns_of(from).expect("netns"));
    let target = lab.address_of(to).expect("address");
    in_netns(&ns, move || {
        probe(target, proto, port, PROBE_TIMEOUT).is_ok()
    })
}

/// Wait until `check` holds (enforcement follows the manifests within a second).
#[track_caller]
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lumen trace --lab LAB ARGS`: exit code, stdout, stderr.
fn lumen_trace(lab: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = harness::lumen(&[&["trace", "--lab", lab], args].concat());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The port of `peer=IP:PORT` in an echo server's answer line.
fn peer_port(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))
        .and_then(|p| p.parse::<SocketAddrV4>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("no peer=IP:PORT in {reply:?}"))
}

fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    u64::try_from(d.as_nanos()).expect("fits")
}

// === 1. injected paths ===

const DENY_TO_21: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-to-2-1, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  policyTypes: [Ingress]
";

const ALLOW_12_TO_21: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-1-2-on-80, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: pod-1-2}}
    ports:
    - {protocol: TCP, port: 80}
";

const EGRESS_11_ONLY_81: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-1-1-only-81, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-1-1}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {protocol: TCP, port: 81}
";

#[test]
fn injected_traces_follow_every_path() {
    if !harness::require_root("injected_traces_follow_every_path") {
        return;
    }
    let guard = harness::lab("t-trace", 3, 2);
    let lab = guard.lab();
    let c = Cluster::new(lab);

    // Intra-node: both policy points on node-1, delivered into pod-1-2.
    c.check(
        &tcp("pod-1-1", to_pod("pod-1-2"), 80),
        &intra("node-1"),
        TraceVerdict::Delivered,
    );
    // Inter-node: through the tunnel (endpoints, tag), node-3 sees nothing.
    let r = c.check(
        &tcp("pod-1-1", to_pod("pod-2-1"), 80),
        &inter("node-1", "node-2"),
        TraceVerdict::Delivered,
    );
    let tunnels: Vec<TunnelInfo> = r.hops.iter().filter_map(|h| h.tunnel).collect();
    assert_eq!(tunnels.len(), 2, "{tunnels:?}");
    let id = c.identity["pod-1-1"];
    assert_eq!(
        tunnels[0],
        TunnelInfo {
            local: c.node_ip("node-1"),
            remote: c.node_ip("node-2"),
            vni: 0x80_0000 | id,
        }
    );
    assert_eq!(
        tunnels[1],
        TunnelInfo {
            local: c.node_ip("node-2"),
            remote: c.node_ip("node-1"),
            vni: 0x80_0000 | id,
        }
    );
    // The other way round and from the third node, UDP and ICMP too.
    c.check(
        &tcp("pod-3-2", to_pod("pod-1-1"), 81),
        &inter("node-3", "node-1"),
        TraceVerdict::Delivered,
    );
    let udp = TraceRequest {
        protocol: Protocol::UDP,
        ..tcp("pod-2-2", to_pod("pod-3-1"), 81)
    };
    c.check(&udp, &inter("node-2", "node-3"), TraceVerdict::Delivered);
    let icmp = TraceRequest {
        protocol: Protocol::ICMP,
        destination_port: None,
        ..tcp("pod-1-2", to_pod("pod-2-2"), 0)
    };
    c.check(&icmp, &inter("node-1", "node-2"), TraceVerdict::Delivered);

    // To the outside: masqueraded to the source node's underlay address.
    for (from, node) in [("pod-1-1", "node-1"), ("pod-3-1", "node-3")] {
        let r = c.check(
            &tcp(from, TraceDestination::Ip(EXTERNAL), 80),
            &external(node),
            TraceVerdict::LeftCluster,
        );
        let hop = r.hops.last().expect("masquerade hop");
        let translated = hop.translated_source.expect("translated source");
        assert_eq!(*translated.ip(), c.node_ip(node), "{from}");
    }
    // To a node's own address (by name and by IP).
    c.check(
        &tcp("pod-1-1", TraceDestination::Node("node-2".into()), 80),
        &to_node("node-1", "node-2"),
        TraceVerdict::Delivered,
    );
    c.check(
        &tcp("pod-2-1", TraceDestination::Ip(c.node_ip("node-3")), 22),
        &to_node("node-2", "node-3"),
        TraceVerdict::Delivered,
    );
    // To addresses nobody has: outside every pod CIDR (no route on the
    // source node), and unallocated in node-2's (no route there).
    c.check(
        &tcp("pod-1-1", TraceDestination::Ip(NOWHERE), 80),
        &no_route("node-1"),
        TraceVerdict::Dropped,
    );
    let mut unallocated = tunnelled("node-1", "node-2");
    unallocated.push(
        want("node-2", TracePoint::HostStack, HopAction::Dropped).dropped(DropReason::NoRoute),
    );
    c.check(
        &tcp(
            "pod-1-1",
            TraceDestination::Ip(Ipv4Addr::new(10, 244, 2, 99)),
            80,
        ),
        &unallocated,
        TraceVerdict::Dropped,
    );

    // `lumen trace` prints the inter-node path as a tree, and its JSON is
    // the same result.
    let (code, out, err) = lumen_trace("t-trace", &["pod-1-1", "pod-2-1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    check_tree(
        &out,
        "TCP 10.244.1.1:",
        &[
            ("node-1", "from_pod", "RECEIVED"),
            ("node-1", "policy egress", "FORWARDED"),
            ("node-1", "to_overlay", "TUNNELLED"),
            ("node-2", "from_overlay", "RECEIVED"),
            ("node-2", "policy ingress", "FORWARDED"),
            ("node-2", "to_pod", "DELIVERED"),
        ],
        "verdict DELIVERED at node-2 to_pod; end to end ",
    );
    assert!(
        out.contains(&format!(
            "192.0.2.11 -> 192.0.2.12 vni {:#x} (identity {id}, traced)",
            0x80_0000 | id
        )),
        "{out}"
    );
    assert!(out.contains("-> 10.244.2.1:80 ip id "), "{out}");
    assert!(out.trim_end().ends_with("over 2 nodes"), "{out}");
    let (code, out, err) = lumen_trace("t-trace", &["pod-1-1", "203.0.113.10:81", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let r: TraceResult = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    c.check_result(&r, &external("node-1"), TraceVerdict::LeftCluster);
    assert_eq!(r.request.destination_port, Some(81));

    // A default deny on pod-2-1's ingress: dropped at node-2's ingress point,
    // naming the policy; pod-1-2 is allowed on port 80 by a rule of another
    // policy. (A default deny is the first isolating policy's by name, as in
    // flow records: deny-to-2-1 before from-1-2-on-80.)
    write_policy(lab, "deny", DENY_TO_21);
    write_policy(lab, "allow", ALLOW_12_TO_21);
    eventually("pod-1-1 is cut off from pod-2-1", || {
        !reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 80)
    });
    eventually("pod-1-2 reaches pod-2-1 on 80", || {
        reaches(lab, "pod-1-2", "pod-2-1", Proto::Tcp, 80)
    });
    let mut denied = tunnelled("node-1", "node-2");
    denied.push(
        want("node-2", TracePoint::PolicyIngress, HopAction::Dropped)
            .dropped(DropReason::Policy)
            .policy("deny-to-2-1", "", RuleAction::Drop),
    );
    let r = c.check(
        &tcp("pod-1-1", to_pod("pod-2-1"), 80),
        &denied,
        TraceVerdict::Dropped,
    );
    let last = r.hops.last().expect("drop hop");
    assert_eq!(
        last.policy,
        Some(policy_ref("deny-to-2-1", "", RuleAction::Drop))
    );
    // Another pod of pod-2-1's node: not isolated.
    c.check(
        &tcp("pod-1-1", to_pod("pod-2-2"), 80),
        &inter("node-1", "node-2"),
        TraceVerdict::Delivered,
    );
    // From the third node too, and UDP: the same default deny.
    let mut denied3 = tunnelled("node-3", "node-2");
    denied3.push(denied.last().expect("drop").clone());
    let udp = TraceRequest {
        protocol: Protocol::UDP,
        ..tcp("pod-3-1", to_pod("pod-2-1"), 80)
    };
    c.check(&udp, &denied3, TraceVerdict::Dropped);
    // Allowed by the rule: forwarded at ingress, naming the rule.
    let mut allowed = tunnelled("node-1", "node-2");
    allowed.push(
        want("node-2", TracePoint::PolicyIngress, HopAction::Forwarded).policy(
            "from-1-2-on-80",
            "ingress[0]",
            RuleAction::Allow,
        ),
    );
    allowed.push(want("node-2", TracePoint::ToPod, HopAction::Delivered));
    c.check(
        &tcp("pod-1-2", to_pod("pod-2-1"), 80),
        &allowed,
        TraceVerdict::Delivered,
    );
    // …but not on another port.
    let mut denied81 = tunnelled("node-1", "node-2");
    denied81.push(denied.last().expect("drop").clone());
    c.check(
        &tcp("pod-1-2", to_pod("pod-2-1"), 81),
        &denied81,
        TraceVerdict::Dropped,
    );
    let (code, out, err) = lumen_trace("t-trace", &["pod-1-1", "pod-2-1"]);
    assert_eq!(
        code,
        Some(0),
        "a completed trace succeeds whatever its verdict: {err}"
    );
    check_tree(
        &out,
        "TCP 10.244.1.1:",
        &[
            ("node-1", "from_pod", "RECEIVED"),
            ("node-1", "policy egress", "FORWARDED"),
            ("node-1", "to_overlay", "TUNNELLED"),
            ("node-2", "from_overlay", "RECEIVED"),
            ("node-2", "policy ingress", "DROPPED (POLICY)"),
        ],
        "verdict DROPPED at node-2 policy ingress; end to end ",
    );
    assert!(out.contains("default deny of default/deny-to-2-1"), "{out}");

    // An egress policy on pod-1-1 allowing only TCP 81: port 80 is dropped at
    // node-1's egress point (nothing leaves the node), 81 is allowed by the
    // rule and delivered.
    write_policy(lab, "egress", EGRESS_11_ONLY_81);
    eventually("pod-1-1 cannot send to pod-3-1 on 80", || {
        !reaches(lab, "pod-1-1", "pod-3-1", Proto::Tcp, 80)
    });
    eventually("pod-1-1 reaches pod-3-1 on 81", || {
        reaches(lab, "pod-1-1", "pod-3-1", Proto::Tcp, 81)
    });
    let egress_drop = vec![
        want("node-1", TracePoint::FromPod, HopAction::Received),
        want("node-1", TracePoint::PolicyEgress, HopAction::Dropped)
            .dropped(DropReason::Policy)
            .policy("egress-1-1-only-81", "", RuleAction::Drop),
    ];
    for to in ["pod-3-1", "pod-1-2", "pod-2-1"] {
        c.check(
            &tcp("pod-1-1", to_pod(to), 80),
            &egress_drop,
            TraceVerdict::Dropped,
        );
    }
    c.check(
        &tcp("pod-1-1", TraceDestination::Ip(EXTERNAL), 80),
        &egress_drop,
        TraceVerdict::Dropped,
    );
    let mut egress_allowed = vec![
        want("node-1", TracePoint::FromPod, HopAction::Received),
        want("node-1", TracePoint::PolicyEgress, HopAction::Forwarded).policy(
            "egress-1-1-only-81",
            "egress[0]",
            RuleAction::Allow,
        ),
        want("node-1", TracePoint::ToOverlay, HopAction::Tunnelled),
        want("node-3", TracePoint::FromOverlay, HopAction::Received),
    ];
    egress_allowed.push(want(
        "node-3",
        TracePoint::PolicyIngress,
        HopAction::Forwarded,
    ));
    egress_allowed.push(want("node-3", TracePoint::ToPod, HopAction::Delivered));
    c.check(
        &tcp("pod-1-1", to_pod("pod-3-1"), 81),
        &egress_allowed,
        TraceVerdict::Delivered,
    );
    // Intra-node on 81: egress allowed by the rule, ingress not isolated.
    let mut intra81 = intra("node-1");
    intra81[1] = egress_allowed[1].clone();
    c.check(
        &tcp("pod-1-1", to_pod("pod-1-2"), 81),
        &intra81,
        TraceVerdict::Delivered,
    );
    // UDP 81 is not in the rule.
    let udp = TraceRequest {
        protocol: Protocol::UDP,
        ..tcp("pod-1-1", to_pod("pod-3-1"), 81)
    };
    c.check(&udp, &egress_drop, TraceVerdict::Dropped);
    let (code, out, err) = lumen_trace("t-trace", &["pod-1-1", "pod-3-1"]);
    assert_eq!(code, Some(0), "{err}");
    check_tree(
        &out,
        "TCP 10.244.1.1:",
        &[
            ("node-1", "from_pod", "RECEIVED"),
            ("node-1", "policy egress", "DROPPED (POLICY)"),
        ],
        "verdict DROPPED at node-1 policy egress; end to end ",
    );
    assert!(
        out.contains("default deny of default/egress-1-1-only-81"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("on 1 node"), "{out}");

    // Policies gone: no policy point names one any more.
    for name in ["deny", "allow", "egress"] {
        remove_policy(lab, name);
    }
    eventually("pod-1-1 reaches pod-2-1 again", || {
        reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 80)
    });
    eventually("pod-1-1 reaches pod-3-1 on 80 again", || {
        reaches(lab, "pod-1-1", "pod-3-1", Proto::Tcp, 80)
    });
    c.check(
        &tcp("pod-1-1", to_pod("pod-2-1"), 80),
        &inter("node-1", "node-2"),
        TraceVerdict::Delivered,
    );
    drop(guard);
}

/// `out` is a tree: a header naming `packet`, one branch per node with the
/// hops `(node, point, action)` in order, and a footer starting `footer`.
#[track_caller]
fn check_tree(out: &str, packet: &str, hops: &[(&str, &str, &str)], footer: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("trace ")
            && lines[0].contains(packet)
            && lines[0].ends_with("(injected)"),
        "header: {out}"
    );
    let mut got = Vec::new();
    let mut node = "";
    for line in &lines[1..lines.len() - 1] {
        let Some(hop) = line
            .strip_prefix("|-- ")
            .or_else(|| line.strip_prefix("`-- "))
        else {
            node = line;
            continue;
        };
        let (point, rest) = hop
            .split_once("  ")
            .unwrap_or_else(|| panic!("hop line {line:?}"));
        let rest = rest.trim_start();
        // The action, with its reason in parentheses when dropped.
        let word = rest.split_whitespace().next().unwrap_or("");
        let action = match rest[word.len()..].strip_prefix(" (") {
            Some(reason) => format!("{word} ({})", reason.split(')').next().unwrap_or("")),
            None => word.to_owned(),
        };
        got.push((node.to_owned(), point.trim().to_owned(), action));
    }
    let want: Vec<(String, String, String)> = hops
        .iter()
        .map(|(n, p, a)| ((*n).to_owned(), (*p).to_owned(), (*a).to_owned()))
        .collect();
    assert_eq!(got, want, "{out}");
    let last = lines.last().expect("footer");
    assert!(last.starts_with(footer), "footer {last:?} in {out}");
}

// === 2. injected packets stop before the destination ===

/// What a namespace's IP stack and its echo server have received. (Not the
/// interface's frame count: neighbour resolution moves that on its own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Received {
    /// Every IPv4 packet the stack took in, whatever became of it.
    ip_in_receives: u64,
    tcp_in_segs: u64,
    tcp_passive_opens: u64,
    udp_in_datagrams: u64,
    icmp_in_msgs: u64,
    /// Requests the echo server counted (every protocol and port).
    served: u64,
}

/// `/proc/thread-self/net/snmp`'s `Proto: field` value.
fn snmp(text: &str, proto: &str, field: &str) -> u64 {
    let mut rows = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        panic!("no {proto} rows in {text}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {proto} {field}"));
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{proto} {field} value"))
}

fn received(netns: &str, stats_file: Option<&Path>) -> Received {
    let path = lumen_lab::netio::netns::path_for(netns);
    let mut seen = in_netns(&path, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("net/snmp");
        Received {
            ip_in_receives: snmp(&text, "Ip", "InReceives"),
            tcp_in_segs: snmp(&text, "Tcp", "InSegs"),
            tcp_passive_opens: snmp(&text, "Tcp", "PassiveOpens"),
            udp_in_datagrams: snmp(&text, "Udp", "InDatagrams"),
            icmp_in_msgs: snmp(&text, "Icmp", "InMsgs"),
            served: 0,
        }
    });
    if let Some(file) = stats_file {
        let stats = lumen_lab::netio::serve::read_stats(file).expect("server stats");
        seen.served = stats.requests.values().sum();
    }
    seen
}

fn pod_received(lab: &Lab, pod: &str) -> Received {
    let p = lab.pod(pod).expect("pod");
    received(&p.netns, Some(&p.stats_file))
}

#[test]
fn injected_packets_never_reach_the_destination() {
    if !harness::require_root("injected_packets_never_reach_the_destination") {
        return;
    }
    let guard = harness::lab("t-trace-quiet", 2, 2);
    let lab = guard.lab();
    let c = Cluster::new(lab);
    let ext = lab.external();
    let node2 = lab.node("node-2").expect("node-2").netns.clone();
    let snapshot = || {
        (
            pod_received(lab, "pod-2-1"),
            pod_received(lab, "pod-1-2"),
            pod_received(lab, "pod-1-1"),
            received(&ext.netns, Some(&ext.stats_file)),
            received(&node2, None).tcp_in_segs,
        )
    };
    // Warm up neighbour entries, so a probe below moves only what it sends.
    for to in ["pod-2-1", "pod-1-2", "external"] {
        assert!(
            harness::probe("t-trace-quiet", "pod-1-1", to, "80/tcp").ok,
            "{to}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));

    let before = snapshot();
    let mut traced = 0;
    for round in 0..5u16 {
        for (to, path, verdict) in [
            (
                to_pod("pod-2-1"),
                inter("node-1", "node-2"),
                TraceVerdict::Delivered,
            ),
            (to_pod("pod-1-2"), intra("node-1"), TraceVerdict::Delivered),
            (
                TraceDestination::Ip(EXTERNAL),
                external("node-1"),
                TraceVerdict::LeftCluster,
            ),
            (
                TraceDestination::Node("node-2".into()),
                to_node("node-1", "node-2"),
                TraceVerdict::Delivered,
            ),
        ] {
            let port = 80 + round % 2;
            let syn = tcp("pod-1-1", to.clone(), port);
            c.check(&syn, &path, verdict);
            let udp = TraceRequest {
                protocol: Protocol::UDP,
                ..syn.clone()
            };
            c.check(&udp, &path, verdict);
            let icmp = TraceRequest {
                protocol: Protocol::ICMP,
                destination_port: None,
                ..syn.clone()
            };
            c.check(&icmp, &path, verdict);
            // An ACK out of nowhere would draw a RST from a stack that got it.
            let ack = TraceRequest {
                tcp_flags: Some(TcpFlags(TcpFlags::ACK)),
                ..syn
            };
            c.check(&ack, &path, verdict);
            traced += 4;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = snapshot();
    assert_eq!(traced, 80);
    assert_eq!(
        after.0, before.0,
        "pod-2-1 received nothing of {traced} traces"
    );
    assert_eq!(after.1, before.1, "pod-1-2 received nothing");
    assert_eq!(
        after.2, before.2,
        "the source pod got no answer (SYN-ACK, RST, echo reply)"
    );
    assert_eq!(after.3, before.3, "the external host received nothing");
    assert_eq!(after.4, before.4, "node-2's stack took no TCP segment");

    // A real connection moves every counter of its destination.
    for to in ["pod-2-1", "pod-1-2"] {
        let before = pod_received(lab, to);
        assert!(harness::probe("t-trace-quiet", "pod-1-1", to, "80/tcp").ok);
        std::thread::sleep(Duration::from_millis(300));
        let after = pod_received(lab, to);
        assert!(
            after.ip_in_receives > before.ip_in_receives,
            "{to}: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.tcp_passive_opens,
            before.tcp_passive_opens + 1,
            "{to}"
        );
        assert!(after.tcp_in_segs > before.tcp_in_segs, "{to}");
        assert_eq!(after.served, before.served + 1, "{to}: the server answered");
    }
    let before = received(&ext.netns, Some(&ext.stats_file));
    assert!(harness::probe("t-trace-quiet", "pod-1-1", "external", "81/udp").ok);
    std::thread::sleep(Duration::from_millis(300));
    let after = received(&ext.netns, Some(&ext.stats_file));
    assert!(after.udp_in_datagrams > before.udp_in_datagrams);
    assert_eq!(after.served, before.served + 1);
    let before = received(&node2, None).tcp_in_segs;
    let _ = harness::probe("t-trace-quiet", "pod-1-1", "node-2", "80/tcp");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        received(&node2, None).tcp_in_segs > before,
        "a real SYN reaches node-2's stack"
    );
    drop(guard);
}

// === 3. live traces ===

const ALLOW_11_TO_21_ON_80: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-1-1-on-80, namespace: default}
spec:
  podSelector: {matchLabels: {app: pod-2-1}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: pod-1-1}}
    ports:
    - {protocol: TCP, port: 80}
";

/// How long after starting a live trace its datapath is surely armed.
const ARMING: Duration = Duration::from_millis(1_000);

#[test]
fn live_traces_follow_real_packets() {
    if !harness::require_root("live_traces_follow_real_packets") {
        return;
    }
    let name = "t-trace-live";
    let guard = harness::lab(name, 2, 2);
    let lab = guard.lab();
    let c = Cluster::new(lab);
    // Neighbour entries first: the traced SYN is the connection's own.
    assert!(harness::probe(name, "pod-1-1", "pod-2-1", "80/tcp").ok);

    // `lumen trace --live`: the next SYN from pod-1-1 to pod-2-1:80 is the
    // probe's, with its ephemeral port.
    let mut child = Command::new(harness::bin_dir().join("lumen"))
        .args(["trace", "--lab", name, "pod-1-1", "pod-2-1", "--live"])
        .args(["--dport", "80", "--timeout", "20s", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lumen trace runs");
    std::thread::sleep(ARMING);
    let sent_ns = now_ns();
    let report = harness::probe(name, "pod-1-1", "pod-2-1", "80/tcp");
    assert!(report.ok, "{report:?}");
    let port = peer_port(report.reply.as_deref().unwrap_or(""));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("output");
    let status = child.wait().expect("lumen trace ends");
    assert!(status.success(), "{status}: {out}");
    let r: TraceResult = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r.request.mode, TraceMode::Live);
    assert!(
        r.started_ns < sent_ns,
        "the trace was armed before the probe"
    );
    c.check_result(&r, &inter("node-1", "node-2"), TraceVerdict::Delivered);
    let packet = r.packet.expect("packet");
    assert_eq!(
        (packet.source_port, packet.destination_port),
        (port, 80),
        "the probe's SYN: {packet}"
    );

    // Live UDP on one node through the library, any port: the probe's datagram.
    let request = TraceRequest {
        protocol: Protocol::UDP,
        destination_port: None,
        mode: TraceMode::Live,
        timeout_ms: 20_000,
        ..tcp("pod-1-1", to_pod("pod-1-2"), 0)
    };
    let (r, report, sent_ns) = std::thread::scope(|s| {
        let trace = s.spawn(|| c.trace(&request));
        std::thread::sleep(ARMING);
        let sent_ns = now_ns();
        let report = harness::probe(name, "pod-1-1", "pod-1-2", "81/udp");
        (trace.join().expect("trace thread"), report, sent_ns)
    });
    assert!(report.ok, "{report:?}");
    assert!(r.started_ns < sent_ns);
    c.check_result(&r, &intra("node-1"), TraceVerdict::Delivered);
    let packet = r.packet.expect("packet");
    let port = peer_port(report.reply.as_deref().unwrap_or(""));
    assert_eq!((packet.source_port, packet.destination_port), (port, 81));

    // Dropped only: pod-2-1 admits pod-1-1 on TCP 80 alone. A live trace from
    // pod-1-1 to pod-2-1 on any port lets the allowed connection on 80 pass
    // and completes on the denied SYN to 81, with its drop hop.
    write_policy(lab, "allow80", ALLOW_11_TO_21_ON_80);
    eventually("pod-1-1 is cut off from pod-2-1 on 81", || {
        !reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 81)
    });
    assert!(reaches(lab, "pod-1-1", "pod-2-1", Proto::Tcp, 80));
    let request = TraceRequest {
        destination_port: None,
        mode: TraceMode::Live,
        dropped_only: true,
        timeout_ms: 20_000,
        ..tcp("pod-1-1", to_pod("pod-2-1"), 0)
    };
    let (r, allowed, allowed_ns) = std::thread::scope(|s| {
        let trace = s.spawn(|| c.trace(&request));
        std::thread::sleep(ARMING);
        let allowed_ns = now_ns();
        let allowed = harness::probe(name, "pod-1-1", "pod-2-1", "80/tcp");
        // Give the orchestrator time to follow the allowed SYN to its end.
        std::thread::sleep(Duration::from_millis(500));
        let denied = harness::probe(name, "pod-1-1", "pod-2-1", "81/tcp");
        assert!(!denied.ok, "81 is denied: {denied:?}");
        (trace.join().expect("trace thread"), allowed, allowed_ns)
    });
    assert!(allowed.ok, "{allowed:?}");
    assert!(
        r.started_ns < allowed_ns,
        "the allowed SYN came while armed"
    );
    let mut path = tunnelled("node-1", "node-2");
    path.push(
        want("node-2", TracePoint::PolicyIngress, HopAction::Dropped)
            .dropped(DropReason::Policy)
            .policy("allow-1-1-on-80", "", RuleAction::Drop),
    );
    c.check_result(&r, &path, TraceVerdict::Dropped);
    let packet = r.packet.expect("packet");
    let allowed_port = peer_port(allowed.reply.as_deref().unwrap_or(""));
    assert_eq!(packet.destination_port, 81, "{packet}");
    assert_ne!(packet.source_port, allowed_port, "{packet}");
    drop(guard);
}

// === 4. many at once ===

#[test]
fn two_hundred_traces_at_once_do_not_mix() {
    if !harness::require_root("two_hundred_traces_at_once_do_not_mix") {
        return;
    }
    const TRACES: usize = 200;
    let guard = harness::lab("t-trace-many", 3, 2);
    let lab = guard.lab();
    let c = Cluster::new(lab);
    let pods: Vec<(String, String)> = lab
        .pods()
        .iter()
        .map(|p| (p.name.clone(), p.node.clone()))
        .collect();
    let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    // Trace i: from pod i % 6, to one of five kinds of destination.
    let cases: Vec<(TraceRequest, Vec<Want>, TraceVerdict)> = (0..TRACES)
        .map(|i| {
            let (src, node) = &pods[i % pods.len()];
            let k = nodes.iter().position(|n| n == node).expect("node");
            let next = &nodes[(k + 1) % nodes.len()];
            let on = |node: &str| -> Vec<&str> {
                pods.iter()
                    .filter(|(_, n)| n == node)
                    .map(|(p, _)| p.as_str())
                    .collect()
            };
            let local_peer = on(node)
                .into_iter()
                .find(|p| p != src)
                .expect("a second pod on the node");
            let remote_peer = on(next)[i % 2];
            let port = 80 + u16::try_from(i % 2).expect("port");
            match (i / pods.len()) % 5 {
                0 => (
                    tcp(src, to_pod(local_peer), port),
                    intra(node),
                    TraceVerdict::Delivered,
                ),
                1 => (
                    tcp(src, to_pod(remote_peer), port),
                    inter(node, next),
                    TraceVerdict::Delivered,
                ),
                2 => (
                    tcp(src, TraceDestination::Ip(EXTERNAL), port),
                    external(node),
                    TraceVerdict::LeftCluster,
                ),
                3 => (
                    tcp(src, TraceDestination::Node(next.clone()), port),
                    to_node(node, next),
                    TraceVerdict::Delivered,
                ),
                _ => (
                    tcp(src, TraceDestination::Ip(NOWHERE), port),
                    no_route(node),
                    TraceVerdict::Dropped,
                ),
            }
        })
        .collect();
    let barrier = Barrier::new(TRACES);
    let started = Instant::now();
    let results: Vec<(TraceResult, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(request, _, _)| {
                let (barrier, c) = (&barrier, &c);
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = c.trace(request);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("trace thread"))
            .collect()
    });
    let wall = started.elapsed();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!("{TRACES} traces at once: all done in {wall:?}, slowest {slowest:?}");

    let mut ids = BTreeSet::new();
    let mut packets: BTreeSet<TracedPacket> = BTreeSet::new();
    for ((result, _), (request, path, verdict)) in results.iter().zip(&cases) {
        assert_eq!(&result.request, request, "each result is its own request's");
        c.check_result(result, path, *verdict);
        assert!(ids.insert(result.id.clone()), "duplicate id {}", result.id);
        let packet = result.packet.expect("packet");
        assert!(packets.insert(packet), "two traces share {packet}");
    }
    // Hops name their own packet's interfaces: every trace from one pod left
    // through that pod's veth, every one into a pod entered through its veth,
    // and each masquerade kept its own packet's source port.
    let mut from_if: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut to_if: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for (r, _) in &results {
        let packet = r.packet.expect("packet");
        for hop in &r.hops {
            match hop.point {
                TracePoint::FromPod => {
                    from_if
                        .entry(r.request.source.name.clone())
                        .or_default()
                        .insert(format!("{}/{}", hop.node, hop.interface));
                }
                TracePoint::ToPod => {
                    to_if
                        .entry(packet.destination)
                        .or_default()
                        .insert(format!("{}/{}", hop.node, hop.interface));
                }
                TracePoint::Masquerade => assert_eq!(
                    hop.translated_source.map(|a| a.port()),
                    Some(packet.source_port),
                    "{packet}"
                ),
                _ => {}
            }
        }
    }
    assert_eq!(from_if.len(), pods.len(), "{from_if:?}");
    assert!(from_if.values().all(|i| i.len() == 1), "{from_if:?}");
    assert!(to_if.values().all(|i| i.len() == 1), "{to_if:?}");
    let veths: BTreeSet<&String> = from_if.values().flatten().collect();
    assert_eq!(veths.len(), pods.len(), "one veth a pod: {from_if:?}");
    // Per node: the injected packets' ip ids are all distinct too.
    let by_source_node: BTreeMap<&str, BTreeSet<u16>> =
        results.iter().fold(BTreeMap::new(), |mut m, (r, _)| {
            m.entry(r.source_node.as_str())
                .or_default()
                .insert(r.packet.expect("packet").ip_id);
            m
        });
    let total: usize = by_source_node.values().map(BTreeSet::len).sum();
    assert_eq!(total, TRACES, "{by_source_node:?}");
    drop(guard);
}

// === 5. errors ===

#[test]
fn bad_requests_fail_clearly() {
    if !harness::require_root("bad_requests_fail_clearly") {
        return;
    }
    let name = "t-trace-errors";
    let guard = harness::lab(name, 2, 2);
    let lab = guard.lab();
    let c = Cluster::new(lab);
    let refused = |request: &TraceRequest, node: &str| -> String {
        match orchestrate::run(&c.agents, node, request) {
            Err(e @ OrchestrateError::Refused { .. }) => {
                let text = chain(&e);
                assert!(
                    text.contains(&format!("the agent of node {node} refused")),
                    "{text}"
                );
                text
            }
            other => panic!("{request:?} from {node}: {other:?}"),
        }
    };

    // Unknown pods, asked of the agents directly.
    let text = refused(&tcp("nope", to_pod("pod-2-1"), 80), "node-1");
    assert!(
        text.contains("no pod default/nope in the cluster"),
        "{text}"
    );
    let text = refused(&tcp("pod-1-1", to_pod("nope"), 80), "node-1");
    assert!(
        text.contains("no pod default/nope in the cluster"),
        "{text}"
    );
    let text = refused(
        &tcp("pod-1-1", TraceDestination::Node("node-9".into()), 80),
        "node-1",
    );
    assert!(text.contains("node-9"), "{text}");
    // A pod asked of a node it is not on.
    let text = refused(&tcp("pod-2-1", to_pod("pod-1-1"), 80), "node-1");
    assert!(
        text.contains("pod default/pod-2-1 is not on node node-1"),
        "{text}"
    );
    // A node nobody knows.
    match orchestrate::run(&c.agents, "node-9", &tcp("pod-1-1", to_pod("pod-2-1"), 80)) {
        Err(e @ OrchestrateError::UnknownNode(_)) => {
            assert_eq!(e.to_string(), "no agent is known for node node-9");
        }
        other => panic!("{other:?}"),
    }
    // Requests refused before anything is sent.
    for (request, message) in [
        (
            TraceRequest {
                destination_port: None,
                ..tcp("pod-1-1", to_pod("pod-2-1"), 0)
            },
            "an injected TCP trace needs a destination port 1-65535",
        ),
        (
            tcp("pod-1-1", to_pod("pod-2-1"), 0),
            "needs a destination port 1-65535",
        ),
        (
            TraceRequest {
                timeout_ms: 0,
                ..tcp("pod-1-1", to_pod("pod-2-1"), 80)
            },
            "timeout 0 ms is out of range",
        ),
        (
            TraceRequest {
                dropped_only: true,
                ..tcp("pod-1-1", to_pod("pod-2-1"), 80)
            },
            "dropped-only applies to live traces",
        ),
    ] {
        match orchestrate::run(&c.agents, "node-1", &request) {
            Err(e @ OrchestrateError::Request(_)) => {
                assert!(e.to_string().contains(message), "{e} ({message})");
            }
            other => panic!("{request:?}: {other:?}"),
        }
    }

    // The same through `lumen trace`: exit status 1 and one line saying why.
    for (args, code, message) in [
        (
            &["nope", "pod-2-1"][..],
            1,
            format!("error: lab {name} has no pod default/nope (its pods: default/pod-1-1, "),
        ),
        (
            &["pod-1-1", "nope"][..],
            1,
            format!("error: lab {name} has no pod default/nope (its pods: "),
        ),
        (
            &["pod-1-1", "node/node-9"][..],
            1,
            format!("error: lab {name} has no node node-9 (its nodes: node-1, node-2)"),
        ),
        (
            &["pod-1-1", "pod-2-1", "--dport", "0"][..],
            1,
            "error: invalid trace: the destination port must be 1-65535".to_owned(),
        ),
        (
            &["pod-1-1", "10.244.2.1:0"][..],
            1,
            "error: invalid trace: the destination port must be 1-65535".to_owned(),
        ),
        // Out of u16 range: clap refuses the argument (its usage-error status).
        (
            &["pod-1-1", "pod-2-1", "--dport", "70000"][..],
            2,
            "error: invalid value '70000' for '--dport <PORT>'".to_owned(),
        ),
        (
            &["pod-1-1", "pod-2-1", "--proto", "icmp", "--dport", "80"][..],
            1,
            "error: invalid trace: ICMP has no ports".to_owned(),
        ),
    ] {
        let (got, out, err) = lumen_trace(name, args);
        assert_eq!(got, Some(code), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
        assert!(
            err.starts_with(&message),
            "{args:?}: {err:?}, expected {message:?}"
        );
    }

    // An unreachable source agent: the error names its node.
    let mut agents = c.agents.clone();
    let missing = PathBuf::from("/run/lumen-lab/t-trace-errors/node-1/no-such.sock");
    agents[0].socket = missing;
    match orchestrate::run(&agents, "node-1", &tcp("pod-1-1", to_pod("pod-2-1"), 80)) {
        Err(e @ OrchestrateError::Agent { .. }) => {
            let text = chain(&e);
            assert!(
                text.starts_with("the agent of node node-1 cannot be asked"),
                "{text}"
            );
        }
        other => panic!("unreachable agent: {other:?}"),
    }
    // An unreachable agent on the path: the path never ends, the trace fails
    // with a reason (and one off the path changes nothing).
    let mut agents = c.agents.clone();
    agents[1].socket = PathBuf::from("/run/lumen-lab/t-trace-errors/node-2/no-such.sock");
    let request = TraceRequest {
        timeout_ms: 1_000,
        ..tcp("pod-1-1", to_pod("pod-2-1"), 80)
    };
    let r = orchestrate::run(&agents, "node-1", &request).expect("the trace runs");
    assert_eq!(r.phase, TracePhase::Failed, "{r:#?}");
    let reason = r.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("did not end within 1000 ms") && reason.contains("node node-2"),
        "the reason names the node that could not be asked: {reason}"
    );
    // The hops node-1 saw are kept; the path stops at its tunnel.
    let seen: Vec<Want> = r.hops.iter().map(Want::of).collect();
    assert!(
        seen.is_empty() || seen[..] == tunnelled("node-1", "node-2")[..3],
        "{seen:?}"
    );
    let r = orchestrate::run(&agents, "node-1", &tcp("pod-1-1", to_pod("pod-1-2"), 80))
        .expect("the trace runs");
    c.check_result(&r, &intra("node-1"), TraceVerdict::Delivered);

    // A live trace that sees no matching packet fails after its timeout.
    let request = TraceRequest {
        mode: TraceMode::Live,
        timeout_ms: 500,
        ..tcp("pod-1-1", to_pod("pod-2-1"), 80)
    };
    let t = Instant::now();
    let r = c.trace(&request);
    let took = t.elapsed();
    assert_eq!(r.phase, TracePhase::Failed, "{r:#?}");
    assert_eq!(r.reason.as_deref(), Some("no packet matched within 500 ms"));
    assert!(
        (r.packet, r.verdict, r.hops.len()) == (None, None, 0),
        "{r:#?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A live trace from the same pod may start again once that one ended.
    let (code, out, err) = lumen_trace(
        name,
        &["pod-1-1", "pod-2-1", "--live", "--timeout", "500ms"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.trim_end()
            .ends_with("trace FAILED: no packet matched within 500 ms"),
        "{out}"
    );
    assert!(out.contains("(live, no packet seen)"), "{out}");
    let (code, out, err) = lumen_trace(
        name,
        &[
            "pod-1-1",
            "pod-2-1",
            "--live",
            "--timeout",
            "500ms",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    let r: TraceResult = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r.phase, TracePhase::Failed);
    assert!(
        err.contains("failed: no packet matched within 500 ms"),
        "{err}"
    );
    drop(guard);
}
