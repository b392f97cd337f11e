//! Privileged: the datapath programs in the kernel, run with BPF_PROG_TEST_RUN on
//! crafted packets inside a namespace of the test's own. Checks each forwarding
//! decision, the MAC rewrite, the per-CPU counters, the policy verdicts, and
//! that `Datapath::decide` reads those verdicts back from the maps.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use lumen_agent::datapath::abi::{EndpointValue, names};
use lumen_agent::datapath::policy::{DirectionRules, EndpointRules, RuleEntry};
use lumen_agent::datapath::{Datapath, FlowSettings, Iface};
use lumen_api::policy::RuleId;
use lumen_api::{Identity, Ipv4Cidr};
use lumen_tests::bench::netns::Netns;
use lumen_tests::bench::packet::{padded, tcp_packet, tcp_syn, vxlan_frame as vxlan};
use lumen_tests::harness;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;

/// A TCP SYN as a pod would send it.
fn syn(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    tcp_syn([0x02, 0, 0, 0, 0, 1], [0xee; 6], src, dst, 40000, 80)
}

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const HOST_B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];

/// A datapath with two local pods (A, B) and a remote pod CIDR, attached to
/// veths in a namespace of the test's own, which the calling thread enters.
fn two_pods(netns: &str) -> (Netns, Datapath) {
    let ns = Netns::add(netns).expect("test netns");
    for (a, b) in [("hostA", "podA"), ("hostB", "podB"), ("vx", "vxp")] {
        ns.veth(a, b, None, None).expect("veth pair");
    }
    let vx = ns.ifindex("vx").expect("ifindex");
    let host_b = ns.ifindex("hostB").expect("ifindex");
    // Attach and publish from inside the namespace (this thread only).
    lumen_agent::netns::enter(&ns.path()).expect("enter test netns");

    let mut dp = Datapath::load().expect("datapath loads");
    dp.configure(
        vx,
        Ipv4Addr::new(192, 0, 2, 11),
        "10.244.0.0/16".parse().expect("cidr"),
        "10.244.1.0/24".parse().expect("cidr"),
        FlowSettings::default(),
    )
    .expect("configure");
    // As ADD does: the qdisc right after the veth, the programs later.
    for host in ["hostA", "hostB"] {
        dp.prepare_veth(host).expect("clsact");
    }
    dp.add_endpoint(
        "hostA",
        Iface::Prepared,
        POD_A,
        EndpointValue {
            ifindex: ns.ifindex("hostA").expect("ifindex"),
            identity: 257,
            ..Default::default()
        },
    )
    .expect("endpoint A");
    dp.add_endpoint(
        "hostB",
        Iface::Prepared,
        POD_B,
        EndpointValue {
            ifindex: host_b,
            identity: 258,
            mac: POD_B_MAC,
            host_mac: HOST_B_MAC,
            flags: 0,
        },
    )
    .expect("endpoint B");
    dp.set_remote(
        "10.244.2.0/24".parse().expect("cidr"),
        Ipv4Addr::new(192, 0, 2, 12),
    )
    .expect("remote");
    (ns, dp)
}

/// Run `prog` on `packet`: its verdict and the packet as it left.
fn run(dp: &mut Datapath, prog: &'static str, packet: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; packet.len() + 256];
    let result = dp
        .program(prog)
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

#[test]
fn forwarding_decisions_in_the_kernel() {
    if !harness::require_root("forwarding_decisions_in_the_kernel") {
        return;
    }
    let (_ns, mut dp) = two_pods("lumen-test-dp");
    let (pod_a, pod_b, pod_b_mac, host_b_mac) = (POD_A, POD_B, POD_B_MAC, HOST_B_MAC);

    // Local pod: redirected into the peer with the pod's MACs.
    let (verdict, out) = run(&mut dp, names::FROM_POD, &syn(pod_a, pod_b));
    assert_eq!(verdict, TC_ACT_REDIRECT, "local pod is redirected");
    assert_eq!(out[0..6], pod_b_mac, "destination MAC is the pod's");
    assert_eq!(out[6..12], host_b_mac, "source MAC is the host veth's");

    // Remote pod, and no uplink to encapsulate for: tunnelled through the
    // VXLAN device (tunnel key, redirect).
    let (verdict, _) = run(
        &mut dp,
        names::FROM_POD,
        &syn(pod_a, Ipv4Addr::new(10, 244, 2, 7)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT, "remote pod is tunnelled");

    // Outside the cluster: up the host stack, untouched.
    let packet = syn(pod_a, Ipv4Addr::new(203, 0, 113, 10));
    let (verdict, out) = run(&mut dp, names::FROM_POD, &packet);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, packet);

    // Not IPv4 (ARP): passed through.
    let mut arp = packet.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&mut dp, names::FROM_POD, &arp).0, TC_ACT_OK);

    // A packet without tunnel metadata on the overlay is left to the stack.
    assert_eq!(
        run(&mut dp, names::FROM_OVERLAY, &syn(pod_a, pod_b)).0,
        TC_ACT_OK
    );

    let counters: std::collections::HashMap<_, _> = dp.counters().into_iter().collect();
    assert_eq!(counters["from_pod"], 3, "{counters:?}");
    assert_eq!(counters["local_redirect"], 1);
    assert_eq!(counters["tunnelled_via_device"], 1);
    assert_eq!(counters["tunnelled"], 0);
    assert_eq!(counters["to_stack"], 1);

    // An endpoint must be in the node's pod CIDR: from_pod looks up no other.
    let outside = Ipv4Addr::new(10, 244, 2, 9);
    let err = dp
        .add_endpoint("hostA", Iface::Existing, outside, EndpointValue::default())
        .expect_err("an address outside the pod CIDR is refused");
    assert_eq!(
        err.to_string(),
        "endpoint 10.244.2.9 is outside the node's pod CIDR"
    );
    assert!(dp.endpoint(outside).is_none());
    // The endpoint map has a slot for each address of the pod CIDR, up to a /16.
    let err = dp
        .configure(
            1,
            Ipv4Addr::new(192, 0, 2, 11),
            "10.244.0.0/14".parse().expect("cidr"),
            "10.244.0.0/15".parse().expect("cidr"),
            FlowSettings::default(),
        )
        .expect_err("a pod CIDR larger than the endpoint map is refused");
    assert_eq!(
        err.to_string(),
        "pod CIDR 10.244.0.0/15 has more addresses than the datapath's 65536 endpoint slots"
    );
    // Refused, the old settings stay: pod B is still delivered to.
    let (verdict, _) = run(&mut dp, names::FROM_POD, &syn(pod_a, pod_b));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.endpoint(pod_b).map(|e| e.mac), Some(pod_b_mac));
}

#[test]
fn from_pod_encapsulates_for_remote_pods() {
    if !harness::require_root("from_pod_encapsulates_for_remote_pods") {
        return;
    }
    let (ns, mut dp) = two_pods("lumen-test-encap");
    let node = Ipv4Addr::new(192, 0, 2, 11);
    let other_node = Ipv4Addr::new(192, 0, 2, 12);
    let remote_pod = Ipv4Addr::new(10, 244, 2, 7);
    // The node's uplink with its address; forwarding on, as the agent sets.
    let uplink = ns.uplink("up0", "up0p", "192.0.2.11/24").expect("uplink");
    dp.attach_underlay(uplink, 4789).expect("uplink hooks");

    // No neighbour entry for the other node is needed: the redirect resolves it.
    let inner = syn(POD_A, remote_pod);
    let (verdict, out) = run(&mut dp, names::FROM_POD, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent to the uplink");
    // The frame handed to the uplink's neighbour output, which writes the MAC
    // addresses: IPv4 from this node to the other (DF, TTL 64), UDP to the
    // VXLAN port with a zero checksum, the VNI holding pod A's identity, and the
    // pod's frame whole.
    let identity =
        Identity::for_pod("10.244.0.0/16".parse().expect("cidr"), POD_A).expect("a pod address");
    let mut want = vxlan(node, other_node, 4789, identity.0, &inner);
    want[0..12].fill(0);
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!((32768..61000).contains(&sport), "source port {sport}");
    want[34..36].copy_from_slice(&out[34..36]);
    assert_eq!(out, want);

    // Another flow, another source port (the underlay spreads flows by it).
    let other_flow = tcp((POD_A, 40001), (remote_pod, 80), SYN);
    let (_, out2) = run(&mut dp, names::FROM_POD, &other_flow);
    assert_ne!(out2[34..36], out[34..36], "source port follows the flow");

    // Too big for the uplink once encapsulated: the device's path, which
    // answers with the path MTU. One byte less fits.
    let sized = |ip_len| padded(syn(POD_A, remote_pod), ip_len);
    let big = sized(1451);
    let (verdict, out) = run(&mut dp, names::FROM_POD, &big);
    assert_eq!((verdict, out.len()), (TC_ACT_REDIRECT, big.len()));
    let fits = sized(1450);
    let (verdict, out) = run(&mut dp, names::FROM_POD, &fits);
    assert_eq!((verdict, out.len()), (TC_ACT_REDIRECT, fits.len() + 50));

    let counters: HashMap<_, _> = dp.counters().into_iter().collect();
    assert_eq!(counters["tunnelled"], 3, "{counters:?}");
    assert_eq!(counters["tunnelled_via_device"], 1, "{counters:?}");
}

/// Where `from_pod` sends a packet for `dst`: the outer destination it
/// encapsulated for, or None when it was not tunnelled.
fn tunnel_to(dp: &mut Datapath, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    let (verdict, out) = run(dp, names::FROM_POD, &syn(POD_A, dst));
    let outer: [u8; 4] = out.get(30..34)?.try_into().ok()?;
    (verdict == TC_ACT_REDIRECT && out.len() == 54 + 50).then(|| Ipv4Addr::from(outer))
}

#[test]
fn remote_pod_cidrs_of_any_size_are_routed() {
    if !harness::require_root("remote_pod_cidrs_of_any_size_are_routed") {
        return;
    }
    let (ns, mut dp) = two_pods("lumen-test-remotes");
    let uplink = ns.uplink("up0", "up0p", "192.0.2.11/24").expect("uplink");
    dp.attach_underlay(uplink, 4789).expect("uplink hooks");
    let node = |last| Ipv4Addr::new(192, 0, 2, last);
    let cidr = |s: &str| s.parse::<Ipv4Cidr>().expect("cidr");
    // Node CIDRs of the node's own size take an array slot; a smaller one, a
    // bigger one, and one outside the cluster CIDR go to the trie; all route.
    dp.set_remote(cidr("10.244.255.0/24"), node(13))
        .expect("remote");
    dp.set_remote(cidr("10.244.3.128/25"), node(14))
        .expect("remote");
    dp.set_remote(cidr("10.244.4.0/23"), node(15))
        .expect("remote");
    dp.set_remote(cidr("10.96.0.0/24"), node(16))
        .expect("remote");
    let routes = [
        (Ipv4Addr::new(10, 244, 2, 7), Some(node(12))),
        (Ipv4Addr::new(10, 244, 255, 254), Some(node(13))),
        (Ipv4Addr::new(10, 244, 3, 130), Some(node(14))),
        (Ipv4Addr::new(10, 244, 3, 7), None),
        (Ipv4Addr::new(10, 244, 5, 9), Some(node(15))),
        (Ipv4Addr::new(10, 96, 0, 1), Some(node(16))),
        (Ipv4Addr::new(10, 97, 0, 1), None),
    ];
    for (dst, want) in routes {
        assert_eq!(tunnel_to(&mut dp, dst), want, "to {dst}");
    }
    assert_eq!(dp.remote_count(), 5);

    // Removed, from the slot and from the trie alike.
    dp.remove_remote(cidr("10.244.255.0/24"));
    dp.remove_remote(cidr("10.244.3.128/25"));
    assert_eq!(tunnel_to(&mut dp, Ipv4Addr::new(10, 244, 255, 254)), None);
    assert_eq!(tunnel_to(&mut dp, Ipv4Addr::new(10, 244, 3, 130)), None);
    assert_eq!(
        tunnel_to(&mut dp, Ipv4Addr::new(10, 244, 5, 9)),
        Some(node(15))
    );

    // Configured again with other CIDRs, the routes stay: each is placed
    // anew (a /8 cluster of /24 nodes has more of them than slots).
    dp.configure(
        ns.ifindex("vx").expect("ifindex"),
        node(11),
        cidr("10.0.0.0/8"),
        cidr("10.244.1.0/24"),
        FlowSettings::default(),
    )
    .expect("configure");
    for (dst, want) in [
        (Ipv4Addr::new(10, 244, 2, 7), Some(node(12))),
        (Ipv4Addr::new(10, 244, 5, 9), Some(node(15))),
        (Ipv4Addr::new(10, 96, 0, 1), Some(node(16))),
        (Ipv4Addr::new(10, 244, 3, 130), None),
    ] {
        assert_eq!(tunnel_to(&mut dp, dst), want, "to {dst} after configure");
    }
}

#[test]
fn from_underlay_decapsulates_for_local_pods_only() {
    if !harness::require_root("from_underlay_decapsulates_for_local_pods_only") {
        return;
    }
    let (ns, mut dp) = two_pods("lumen-test-underlay");
    let uplink = ns.link("vxp").expect("vxp");
    dp.attach_underlay(uplink, 4789).expect("uplink hooks");
    let node = Ipv4Addr::new(192, 0, 2, 11);
    let other_node = Ipv4Addr::new(192, 0, 2, 12);
    let remote_pod = Ipv4Addr::new(10, 244, 2, 7);
    let identity = 769;
    let inner = tcp((remote_pod, 40000), (POD_B, 80), SYN);

    // For a local pod: decapsulated and redirected into it, with its MACs.
    let packet = vxlan(other_node, node, 4789, identity, &inner);
    let (verdict, out) = run(&mut dp, names::FROM_UNDERLAY, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered straight to pod B");
    assert_eq!(out.len(), inner.len(), "the 50 bytes of VXLAN are gone");
    assert_eq!(out[0..6], POD_B_MAC);
    assert_eq!(out[6..12], HOST_B_MAC);
    assert_eq!(
        out[12..],
        inner[12..],
        "the inner packet itself is untouched"
    );

    // Everything else is left, unchanged, to the VXLAN device.
    let not_local = tcp(
        (remote_pod, 40000),
        (Ipv4Addr::new(10, 244, 1, 99), 80),
        SYN,
    );
    for (case, packet) in [
        (
            "a pod not on this node",
            vxlan(other_node, node, 4789, identity, &not_local),
        ),
        (
            "another UDP port",
            vxlan(other_node, node, 4790, identity, &inner),
        ),
        (
            "another node's address",
            vxlan(other_node, other_node, 4789, identity, &inner),
        ),
        ("not VXLAN at all", inner.clone()),
    ] {
        let (verdict, out) = run(&mut dp, names::FROM_UNDERLAY, &packet);
        assert_eq!((verdict, &out), (TC_ACT_OK, &packet), "{case}");
    }

    // Accounted as the overlay's, once, with the sender's identity from the
    // VNI (the address alone would give 10.244.2.7 another one).
    let counters: HashMap<_, _> = dp.counters().into_iter().collect();
    assert_eq!(counters["from_overlay"], 1, "{counters:?}");
    assert_eq!(counters["overlay_delivered"], 1);
    let maps = dp.take_flow_maps().expect("flow maps");
    let sides: Vec<[u32; 2]> = maps
        .table
        .iter()
        .filter_map(Result::ok)
        .map(|(_, v)| v.side.map(|s| s & 0x00ff_ffff))
        .collect();
    assert!(sides.iter().any(|s| s.contains(&identity)), "{sides:?}");
}

/// A TCP segment from `src` to `dst` with `flags`.
fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    tcp_packet([[0x02, 0, 0, 0, 0, 1], [0xee; 6]], src, dst, flags)
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

#[test]
fn policy_decides_each_flow_in_the_kernel() {
    if !harness::require_root("policy_decides_each_flow_in_the_kernel") {
        return;
    }
    let (_ns, mut dp) = two_pods("lumen-test-pol");
    let stranger = Ipv4Addr::new(10, 244, 1, 9);
    // B is isolated for ingress: rule 70,005 admits A on TCP 80-80; the
    // default deny is 70,009 (ids wider than the maps' 16-bit handles).
    let only_a_on_80 = |deny_id| EndpointRules {
        ip: POD_B,
        ingress: Some(DirectionRules {
            deny_id,
            rules: vec![RuleEntry {
                id: 70_005,
                peers: vec![(Ipv4Cidr::new(POD_A, 32).expect("cidr"), true)].into(),
                ports: Some(vec![(6, 80, 80)]),
            }]
            .into(),
        }),
        egress: None,
    };
    dp.set_policy(&[only_a_on_80(70_009)]).expect("policy");

    let allowed = tcp((POD_A, 40000), (POD_B, 80), SYN);
    assert_eq!(run(&mut dp, names::FROM_POD, &allowed).0, TC_ACT_REDIRECT);
    // The reply of an allowed flow passes: B's own egress is not isolated, and
    // A's ingress is not either, but it is the flow's verdict that decides.
    let reply = tcp((POD_B, 80), (POD_A, 40000), SYN_ACK);
    assert_eq!(run(&mut dp, names::FROM_POD, &reply).0, TC_ACT_REDIRECT);
    // Another port, another peer: default deny.
    let wrong_port = tcp((POD_A, 40001), (POD_B, 81), SYN);
    assert_eq!(run(&mut dp, names::FROM_POD, &wrong_port).0, TC_ACT_SHOT);
    let wrong_peer = tcp((stranger, 40002), (POD_B, 80), SYN);
    assert_eq!(run(&mut dp, names::FROM_POD, &wrong_peer).0, TC_ACT_SHOT);
    let counters: std::collections::HashMap<_, _> = dp.counters().into_iter().collect();
    assert_eq!(counters["drop_policy"], 2, "{counters:?}");

    // A new policy that denies everything to B cuts the allowed connection at
    // its next packet, in both directions, attributed to the new default deny.
    dp.set_policy(&[EndpointRules {
        ip: POD_B,
        ingress: Some(DirectionRules {
            deny_id: 11,
            rules: vec![].into(),
        }),
        egress: None,
    }])
    .expect("deny all");
    let more = tcp((POD_A, 40000), (POD_B, 80), ACK);
    assert_eq!(run(&mut dp, names::FROM_POD, &more).0, TC_ACT_SHOT);
    assert_eq!(run(&mut dp, names::FROM_POD, &reply).0, TC_ACT_SHOT);
    // No policy at all: everything passes again, the denied flow included.
    dp.set_policy(&[]).expect("no policy");
    assert_eq!(
        run(&mut dp, names::FROM_POD, &wrong_port).0,
        TC_ACT_REDIRECT
    );

    // The flow entries name the deciding rules.
    dp.set_policy(&[only_a_on_80(70_009)])
        .expect("policy again");
    run(&mut dp, names::FROM_POD, &more);
    run(&mut dp, names::FROM_POD, &wrong_port);
    let rules = flow_rules(&mut dp);
    assert_eq!(
        rules[&40000],
        [70_005, 0],
        "allowed by rule 70,005 (ingress)"
    );
    assert_eq!(
        rules[&40001],
        [70_009, 0],
        "denied by the default deny 70,009 (ingress)"
    );
}

/// The rules [ingress, egress] each flow entry names, by the entry's higher
/// port: the entries carry the maps' handles, named by the datapath.
fn flow_rules(dp: &mut Datapath) -> HashMap<u16, [RuleId; 2]> {
    let named: HashMap<u16, RuleId> = dp.rule_handles().collect();
    let maps = dp.take_flow_maps().expect("flow maps");
    maps.table
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            let port = u16::from_be(k.port[0]).max(u16::from_be(k.port[1]));
            (port, v.rule.map(|h| named.get(&h).copied().unwrap_or(0)))
        })
        .collect()
}

#[test]
fn decide_reads_the_kernels_verdicts_back() {
    if !harness::require_root("decide_reads_the_kernels_verdicts_back") {
        return;
    }
    let (_ns, mut dp) = two_pods("lumen-test-decide");
    let cidr = |s: &str| -> Ipv4Cidr { s.parse().expect("cidr") };
    let host = |ip| Ipv4Cidr::new(ip, 32).expect("cidr");
    // B: ingress from A on TCP 80 (5), or from the cluster but 10.244.1.8/30 on
    // UDP 53 and TCP 8000-8100 (6); else 9. A: egress to B on TCP 80-90 and
    // 8000-8100 (7), anything to the remote CIDR (8); else 10.
    dp.set_policy(&[
        EndpointRules {
            ip: POD_B,
            ingress: Some(DirectionRules {
                deny_id: 9,
                rules: vec![
                    RuleEntry {
                        id: 5,
                        peers: vec![(host(POD_A), true)].into(),
                        ports: Some(vec![(6, 80, 80)]),
                    },
                    RuleEntry {
                        id: 6,
                        peers: vec![
                            (cidr("10.244.0.0/16"), true),
                            (cidr("10.244.1.8/30"), false),
                        ]
                        .into(),
                        ports: Some(vec![(17, 53, 53), (6, 8000, 8100)]),
                    },
                ]
                .into(),
            }),
            egress: None,
        },
        EndpointRules {
            ip: POD_A,
            ingress: None,
            egress: Some(DirectionRules {
                deny_id: 10,
                rules: vec![
                    RuleEntry {
                        id: 7,
                        peers: vec![(host(POD_B), true)].into(),
                        ports: Some(vec![(6, 80, 90), (6, 8000, 8100)]),
                    },
                    RuleEntry {
                        id: 8,
                        peers: vec![(cidr("10.244.2.0/24"), true)].into(),
                        ports: None,
                    },
                ]
                .into(),
            }),
        },
    ])
    .expect("policy");

    let stranger = Ipv4Addr::new(10, 244, 1, 9);
    let elsewhere = Ipv4Addr::new(10, 244, 3, 3);
    let remote = Ipv4Addr::new(10, 244, 2, 7);
    let outside = Ipv4Addr::new(203, 0, 113, 10);
    // (source, destination, port, the rules [ingress, egress] expected to decide).
    // Every flow has a source port of its own, so each is decided afresh.
    let cases = [
        (POD_A, POD_B, 80, [5, 7]),
        (POD_A, POD_B, 85, [9, 7]),
        (POD_A, POD_B, 95, [9, 10]),
        (POD_A, POD_B, 8050, [6, 7]),
        (stranger, POD_B, 8050, [9, 0]),
        (elsewhere, POD_B, 8050, [6, 0]),
        (elsewhere, POD_B, 53, [9, 0]),
        (POD_A, remote, 443, [0, 8]),
        (POD_A, outside, 80, [0, 10]),
        (POD_B, POD_A, 80, [0, 0]),
    ];
    let mut decided = Vec::new();
    for (i, &(src, dst, port, _)) in cases.iter().enumerate() {
        let sport = 41000 + u16::try_from(i).expect("few cases");
        let (verdict, _) = run(
            &mut dp,
            names::FROM_POD,
            &tcp((src, sport), (dst, port), SYN),
        );
        let d = dp.decide(src, dst, 6, port).expect("maps readable");
        assert_eq!(
            verdict == TC_ACT_SHOT,
            d.denied,
            "{src}:{sport} -> {dst}:{port}: kernel {verdict}, decide {d:?}"
        );
        decided.push((sport, d));
    }
    let kernel = flow_rules(&mut dp);
    for ((sport, d), (src, dst, port, expected)) in decided.iter().zip(cases) {
        let case = format!("{src}:{sport} -> {dst}:{port}");
        assert_eq!(
            kernel.get(sport),
            Some(&[d.ingress_rule, d.egress_rule]),
            "{case}: the flow entry's rules"
        );
        assert_eq!([d.ingress_rule, d.egress_rule], expected, "{case}");
    }
    assert_eq!(
        decided.iter().filter(|(_, d)| d.denied).count(),
        5,
        "{decided:?}"
    );

    // No policy: the kernel decides nothing, and neither does decide.
    dp.set_policy(&[]).expect("no policy");
    let d = dp.decide(POD_A, POD_B, 6, 95).expect("maps readable");
    assert_eq!((d.ingress_rule, d.egress_rule, d.denied), (0, 0, false));
}
