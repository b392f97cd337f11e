//! Privileged: the datapath programs in the kernel, run with BPF_PROG_TEST_RUN on
//! crafted packets inside a namespace of the test's own. Checks each forwarding
//! decision, the MAC rewrite and the per-CPU counters.

use std::net::Ipv4Addr;
use std::process::Command;

use aya::programs::{TestRun, TestRunOptions};
use lumen_agent::datapath::abi::{EndpointValue, names};
use lumen_agent::datapath::{Datapath, FlowSettings};
use lumen_tests::bench::netns::Netns;
use lumen_tests::bench::packet::tcp_syn;
use lumen_tests::harness;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

fn ifindex(ns: &Netns, name: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-o", "link", "show", name])
        .output()
        .expect("ip runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .expect("ifindex")
}

/// A TCP SYN as a pod would send it.
fn syn(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    tcp_syn([0x02, 0, 0, 0, 0, 1], [0xee; 6], src, dst, 40000, 80)
}

#[test]
fn forwarding_decisions_in_the_kernel() {
    if !harness::require_root("forwarding_decisions_in_the_kernel") {
        return;
    }
    let ns = Netns::add("lumen-test-dp").expect("test netns");
    for (a, b) in [("hostA", "podA"), ("hostB", "podB"), ("vx", "vxp")] {
        ns.veth(a, b, None, None).expect("veth pair");
    }
    let vx = ifindex(&ns, "vx");
    let host_b = ifindex(&ns, "hostB");
    // Attach and publish from inside the namespace (this thread only).
    lumen_agent::netns::enter(&ns.path()).expect("enter test netns");

    let mut dp = Datapath::load().expect("datapath loads");
    dp.configure(
        vx,
        Ipv4Addr::new(192, 0, 2, 11),
        "10.244.0.0/16".parse().unwrap(),
        FlowSettings::default(),
    )
    .expect("configure");
    let pod_a = Ipv4Addr::new(10, 244, 1, 1);
    let pod_b = Ipv4Addr::new(10, 244, 1, 2);
    let pod_b_mac = [0x02, 0xbb, 0, 0, 0, 2];
    let host_b_mac = [0x02, 0xbb, 0, 0, 0, 1];
    dp.add_endpoint(
        "hostA",
        pod_a,
        EndpointValue {
            ifindex: ifindex(&ns, "hostA"),
            identity: 257,
            ..Default::default()
        },
    )
    .expect("endpoint A");
    dp.add_endpoint(
        "hostB",
        pod_b,
        EndpointValue {
            ifindex: host_b,
            identity: 258,
            mac: pod_b_mac,
            host_mac: host_b_mac,
            flags: 0,
        },
    )
    .expect("endpoint B");
    dp.set_remote(
        "10.244.2.0/24".parse().unwrap(),
        Ipv4Addr::new(192, 0, 2, 12),
    )
    .expect("remote");

    let run = |dp: &mut Datapath, prog: &'static str, packet: &[u8]| {
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
    };

    // Local pod: redirected into the peer with the pod's MACs.
    let (verdict, out) = run(&mut dp, names::FROM_POD, &syn(pod_a, pod_b));
    assert_eq!(verdict, TC_ACT_REDIRECT, "local pod is redirected");
    assert_eq!(out[0..6], pod_b_mac, "destination MAC is the pod's");
    assert_eq!(out[6..12], host_b_mac, "source MAC is the host veth's");

    // Remote pod: tunnelled (redirect to the VXLAN device).
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
    assert_eq!(counters["tunnelled"], 1);
    assert_eq!(counters["to_stack"], 1);
}
