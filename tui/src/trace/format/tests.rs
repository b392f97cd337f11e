//! The tree pinned down by golden files in `tui/tests/golden/trace/`, built
//! from hand-made results: `<case>.txt` is the plain output, `<case>.color.txt`
//! the coloured one with ESC written as `\e`.
//! `UPDATE_EXPECT=1 cargo test -p lumen trace` rewrites them; review the diff.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use lumen_api::flow::{DropReason, PolicyRef, Protocol, RuleAction};
use lumen_api::policy::PodRef;
use lumen_api::trace::{
    Hop, HopAction, TraceDestination, TraceMode, TracePhase, TracePoint, TraceRequest, TraceResult,
    TraceVerdict, TracedPacket, TunnelInfo,
};

use super::*;

/// 2024-11-23T19:30:01.123Z
const T0: u64 = 1_732_390_201_123_000_000;
const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn pod(s: &str) -> PodRef {
    PodRef::parse(s).expect("pod")
}

fn packet(source: [u8; 4], destination: [u8; 4], dport: u16) -> TracedPacket {
    TracedPacket {
        source: Ipv4Addr::from(source),
        destination: Ipv4Addr::from(destination),
        protocol: Protocol::TCP,
        source_port: 40001,
        destination_port: dport,
        ip_id: 7,
    }
}

/// A hop `after` ns after the previous one (the first: at T0).
fn hop(node: &str, point: TracePoint, action: HopAction, after: u64) -> Hop {
    Hop::at(node, point, action, after)
}

fn on(mut hop: Hop, interface: &str, ifindex: u32) -> Hop {
    hop.interface = interface.into();
    hop.ifindex = ifindex;
    hop
}

fn rule(namespace: &str, name: &str, rule: &str, action: RuleAction) -> Option<PolicyRef> {
    Some(PolicyRef {
        namespace: namespace.into(),
        name: name.into(),
        rule: rule.into(),
        action,
    })
}

fn tunnel(local: Ipv4Addr, remote: Ipv4Addr, vni: u32) -> Option<TunnelInfo> {
    Some(TunnelInfo { local, remote, vni })
}

/// A finished trace of `hops` (their timestamps given as the time since the
/// previous hop), as the orchestrator fills it in.
fn succeeded(request: TraceRequest, packet: TracedPacket, hops: Vec<Hop>) -> TraceResult {
    let mut result = running(request, Some(packet), hops);
    result.phase = TracePhase::Succeeded;
    result.verdict = result.hops.last().map(|h| match h.action {
        HopAction::Dropped | HopAction::Rejected => TraceVerdict::Dropped,
        _ if h.point == TracePoint::Masquerade => TraceVerdict::LeftCluster,
        _ => TraceVerdict::Delivered,
    });
    result
}

fn running(request: TraceRequest, packet: Option<TracedPacket>, mut hops: Vec<Hop>) -> TraceResult {
    let mut at = T0;
    for (i, hop) in hops.iter_mut().enumerate() {
        if i > 0 {
            hop.latency_ns = hop.timestamp_ns;
        }
        at += hop.latency_ns;
        hop.timestamp_ns = at;
    }
    TraceResult {
        id: "node-1-193595f2a63-7".into(),
        phase: TracePhase::Running,
        reason: None,
        source_node: hops.first().map_or("node-1".into(), |h| h.node.clone()),
        request,
        packet,
        end_to_end_ns: at - T0,
        hops,
        verdict: None,
        started_ns: T0 - 2_000_000,
    }
}

fn failed(mut result: TraceResult, reason: &str) -> TraceResult {
    result.phase = TracePhase::Failed;
    result.reason = Some(reason.into());
    result.end_to_end_ns = 0;
    result
}

fn to_pod(source: &str, destination: &str) -> TraceRequest {
    TraceRequest::tcp(pod(source), TraceDestination::Pod(pod(destination)), 80)
}

fn intra_node_delivered() -> TraceResult {
    succeeded(
        to_pod("pod-1-1", "pod-1-2"),
        packet([10, 244, 1, 2], [10, 244, 1, 3], 80),
        vec![
            on(
                hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
                "lmn0af40102",
                12,
            ),
            hop(
                "node-1",
                TracePoint::PolicyEgress,
                HopAction::Forwarded,
                4_150,
            ),
            Hop {
                policy: rule("default", "allow-web", "ingress[0]", RuleAction::Allow),
                ..hop(
                    "node-1",
                    TracePoint::PolicyIngress,
                    HopAction::Forwarded,
                    2_020,
                )
            },
            on(
                hop("node-1", TracePoint::ToPod, HopAction::Delivered, 1_870),
                "lmn0af40103",
                13,
            ),
        ],
    )
}

fn inter_node_delivered() -> TraceResult {
    succeeded(
        to_pod("pod-1-1", "pod-2-1"),
        packet([10, 244, 1, 2], [10, 244, 2, 2], 80),
        vec![
            on(
                hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
                "lmn0af40102",
                12,
            ),
            hop(
                "node-1",
                TracePoint::PolicyEgress,
                HopAction::Forwarded,
                4_100,
            ),
            Hop {
                tunnel: tunnel(NODE_1, NODE_2, 0x80_0102),
                ..on(
                    hop("node-1", TracePoint::ToOverlay, HopAction::Tunnelled, 3_000),
                    "lumen_vxlan",
                    3,
                )
            },
            Hop {
                tunnel: tunnel(NODE_2, NODE_1, 0x80_0102),
                ..on(
                    hop(
                        "node-2",
                        TracePoint::FromOverlay,
                        HopAction::Received,
                        41_700,
                    ),
                    "lumen_vxlan",
                    3,
                )
            },
            hop(
                "node-2",
                TracePoint::PolicyIngress,
                HopAction::Forwarded,
                2_200,
            ),
            on(
                hop("node-2", TracePoint::ToPod, HopAction::Delivered, 5_350),
                "lmn0af40202",
                9,
            ),
        ],
    )
}

fn external_masquerade() -> TraceResult {
    let request = TraceRequest::tcp(
        pod("pod-1-1"),
        TraceDestination::Ip(Ipv4Addr::new(203, 0, 113, 10)),
        80,
    );
    succeeded(
        request,
        packet([10, 244, 1, 2], [203, 0, 113, 10], 80),
        vec![
            on(
                hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
                "lmn0af40102",
                12,
            ),
            Hop {
                policy: rule("default", "allow-egress", "egress[1]", RuleAction::Allow),
                ..hop(
                    "node-1",
                    TracePoint::PolicyEgress,
                    HopAction::Forwarded,
                    3_900,
                )
            },
            on(
                hop(
                    "node-1",
                    TracePoint::HostStack,
                    HopAction::Forwarded,
                    1_250_000,
                ),
                "eth0",
                2,
            ),
            Hop {
                translated_source: Some(SocketAddrV4::new(NODE_1, 40001)),
                ..on(
                    hop(
                        "node-1",
                        TracePoint::Masquerade,
                        HopAction::Masqueraded,
                        850,
                    ),
                    "eth0",
                    2,
                )
            },
        ],
    )
}

fn dropped_by_policy() -> TraceResult {
    let mut request = to_pod("x/a", "y/b");
    request.destination_port = Some(8080);
    succeeded(
        request,
        packet([10, 244, 1, 5], [10, 244, 2, 6], 8080),
        vec![
            on(
                hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
                "lmn0af40105",
                14,
            ),
            Hop {
                policy: rule("x", "allow-to-y", "egress[0]", RuleAction::Allow),
                ..hop(
                    "node-1",
                    TracePoint::PolicyEgress,
                    HopAction::Forwarded,
                    4_000,
                )
            },
            Hop {
                tunnel: tunnel(NODE_1, NODE_2, 0x80_0105),
                ..on(
                    hop("node-1", TracePoint::ToOverlay, HopAction::Tunnelled, 2_900),
                    "lumen_vxlan",
                    3,
                )
            },
            Hop {
                tunnel: tunnel(NODE_2, NODE_1, 0x80_0105),
                ..on(
                    hop(
                        "node-2",
                        TracePoint::FromOverlay,
                        HopAction::Received,
                        38_000,
                    ),
                    "lumen_vxlan",
                    3,
                )
            },
            Hop {
                reason: Some(DropReason::Policy),
                policy: rule("y", "deny-all", "", RuleAction::Drop),
                ..hop(
                    "node-2",
                    TracePoint::PolicyIngress,
                    HopAction::Dropped,
                    2_100,
                )
            },
        ],
    )
}

fn failed_live() -> TraceResult {
    let request = TraceRequest {
        mode: TraceMode::Live,
        destination_port: Some(443),
        ..TraceRequest::tcp(
            pod("x/a"),
            TraceDestination::Ip(Ipv4Addr::new(203, 0, 113, 10)),
            443,
        )
    };
    let packet = TracedPacket {
        source_port: 51234,
        ip_id: 4242,
        ..packet([10, 244, 1, 5], [203, 0, 113, 10], 443)
    };
    let reason = format!("the path of {packet} did not end within 5000 ms");
    let hops = vec![
        on(
            hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
            "lmn0af40105",
            14,
        ),
        hop(
            "node-1",
            TracePoint::PolicyEgress,
            HopAction::Forwarded,
            3_300,
        ),
        on(
            hop(
                "node-1",
                TracePoint::HostStack,
                HopAction::Forwarded,
                17_500_000,
            ),
            "eth0",
            2,
        ),
    ];
    failed(running(request, Some(packet), hops), &reason)
}

fn failed_no_packet() -> TraceResult {
    let request = TraceRequest {
        mode: TraceMode::Live,
        dropped_only: true,
        destination_port: None,
        ..to_pod("x/a", "y/b")
    };
    failed(
        running(request, None, vec![]),
        "no packet matched within 5000 ms",
    )
}

fn cases() -> [(&'static str, TraceResult); 6] {
    [
        ("intra_node_delivered", intra_node_delivered()),
        ("inter_node_delivered", inter_node_delivered()),
        ("external_masquerade", external_masquerade()),
        ("dropped_by_policy", dropped_by_policy()),
        ("failed_live", failed_live()),
        ("failed_no_packet", failed_no_packet()),
    ]
}

/// Compare `text` with the golden file `name` (rewriting it first with
/// `UPDATE_EXPECT=1`); the difference, if any.
fn golden(name: &str, text: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/trace")
        .join(name);
    let text = format!("{text}\n");
    if std::env::var("UPDATE_EXPECT").as_deref() == Ok("1") {
        std::fs::write(&path, &text).expect("write the golden file");
    }
    match std::fs::read_to_string(&path) {
        Ok(golden) if golden == text => None,
        Ok(golden) => Some(format!("{name}: expected\n{golden}got\n{text}")),
        Err(e) => Some(format!(
            "{name}: {e} (run with UPDATE_EXPECT=1 to create it)"
        )),
    }
}

#[test]
fn trees_match_the_golden_files() {
    let mut differences = Vec::new();
    for (name, result) in cases() {
        let plain = tree(&result, false);
        assert!(
            plain.is_ascii(),
            "{name}: plain output is ASCII only:\n{plain}"
        );
        let fancy = tree(&result, true);
        assert!(fancy.contains('\x1b'), "{name}: coloured");
        differences.extend(golden(&format!("{name}.txt"), &plain));
        differences.extend(golden(
            &format!("{name}.color.txt"),
            &fancy.replace('\x1b', "\\e"),
        ));
    }
    assert!(
        differences.is_empty(),
        "the tree changed; if that is intended, rerun with UPDATE_EXPECT=1 and review:\n{}",
        differences.join("\n")
    );
}

#[test]
fn colour_follows_the_action_and_the_verdict() {
    let text = tree(&dropped_by_policy(), true);
    assert!(text.contains("\x1b[32mRECEIVED\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[31mDROPPED (POLICY)\x1b[0m"), "{text}");
    assert!(
        text.contains("verdict \x1b[31mDROPPED\x1b[0m at node-2 policy ingress"),
        "{text}"
    );
    assert!(text.contains("└── policy ingress"), "{text}");
    let text = tree(&external_masquerade(), true);
    assert!(text.contains("\x1b[33mMASQUERADED\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[33mLEFT_CLUSTER\x1b[0m"), "{text}");
    assert!(text.contains("\x1b[32mFORWARDED\x1b[0m"), "{text}");
}

#[test]
fn a_note_on_a_succeeded_trace_is_shown() {
    let mut result = intra_node_delivered();
    result.reason = Some("the source agent did not take the result: gone".into());
    let text = tree(&result, false);
    assert!(
        text.ends_with(
            "verdict DELIVERED at node-1 to_pod; end to end 8.0us on 1 node\n\
             note: the source agent did not take the result: gone"
        ),
        "{text}"
    );
}

#[test]
fn json_and_yaml_are_the_result_itself() {
    for (name, result) in cases() {
        let json = render(Output::Json, &result, true).expect("json");
        let back: TraceResult = serde_json::from_str(&json).expect("json decodes");
        assert_eq!(back, result, "{name}");
        assert!(!json.contains('\x1b'));
        let yaml = render(Output::Yaml, &result, true).expect("yaml");
        let back: TraceResult = serde_yaml::from_str(&yaml).expect("yaml decodes");
        assert_eq!(back, result, "{name}");
        assert!(!yaml.ends_with('\n'));
    }
    let json = render(Output::Json, &dropped_by_policy(), false).expect("json");
    assert!(json.contains("\"point\": \"POLICY_INGRESS\""), "{json}");
    assert!(json.contains("\"reason\": \"POLICY\""), "{json}");
}

#[test]
fn durations_keep_about_three_digits() {
    let plain = Style { fancy: false };
    for (ns, text) in [
        (0, "0ns"),
        (850, "850ns"),
        (999, "999ns"),
        (1_000, "1.0us"),
        (4_150, "4.1us"),
        (9_999, "9.9us"),
        (10_000, "10us"),
        (41_700, "41us"),
        (999_999, "999us"),
        (1_000_000, "1.00ms"),
        (1_250_000, "1.25ms"),
        (17_500_000, "17.5ms"),
        (250_000_000, "250ms"),
        (1_000_000_000, "1.00s"),
        (61_230_000_000, "61.23s"),
    ] {
        assert_eq!(duration(ns, plain), text, "{ns}");
    }
    assert_eq!(duration(4_150, Style { fancy: true }), "4.1µs");
}

#[test]
fn interfaces_and_untraced_tunnels() {
    let mut hop = hop("n", TracePoint::ToOverlay, HopAction::Tunnelled, 0);
    assert_eq!(detail(&hop), "");
    hop.ifindex = 3;
    assert_eq!(detail(&hop), "if 3");
    hop.interface = "lumen_vxlan".into();
    hop.tunnel = tunnel(NODE_1, NODE_2, 0x0101);
    assert_eq!(
        detail(&hop),
        "192.0.2.11 -> 192.0.2.12 vni 0x101 (identity 257, not traced)  lumen_vxlan (if 3)"
    );
    hop.ifindex = 0;
    hop.tunnel = None;
    assert_eq!(detail(&hop), "lumen_vxlan");
}
