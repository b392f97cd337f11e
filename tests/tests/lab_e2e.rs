//! End to end over a lab of 3 nodes × 4 pods: full reachability, the flow tag on
//! the underlay decoded by tshark, MTU without fragments, masquerade to the outside,
//! and a teardown that leaves the machine as it found it; and a pod's UDP GSO
//! packet arriving across the overlay as its datagrams.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lumen_api::{Identity, Tag};
use lumen_tests::harness::{self, Snapshot};

/// A capture on the lab's underlay bridge, killed on drop.
struct Capture {
    child: Child,
}

impl Capture {
    /// Start tshark on `netns`/`iface` and wait until it is capturing.
    fn start(netns: &str, iface: &str, filter: &str, fields: &[&str]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", netns, "tshark", "-l", "-n", "-i", iface, "-f", filter,
        ])
        .args([
            "-d",
            "udp.port==4789,vxlan",
            "-T",
            "fields",
            "-E",
            "separator=|",
        ]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark runs (cargo xtask deps installs it)");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("tshark stderr");
            assert!(n > 0, "tshark exited before capturing");
            if line.contains("Capturing on") {
                break;
            }
        }
        // "Capturing on" comes from tshark before dumpcap has the interface open.
        std::thread::sleep(Duration::from_secs(1));
        // Keep draining stderr so tshark never blocks on it.
        std::thread::spawn(move || for _ in reader.lines() {});
        Self { child }
    }

    /// Stop the capture and return its lines.
    fn finish(mut self) -> Vec<Vec<String>> {
        std::thread::sleep(Duration::from_millis(500));
        // SIGINT lets tshark flush what it has.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            use std::io::Read;
            stdout.read_to_string(&mut out).expect("tshark output");
        }
        let _ = self.child.wait();
        out.lines()
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lab_3x4_end_to_end() {
    if !harness::require_root("lab_3x4_end_to_end") {
        return;
    }
    let name = "e2e";
    let before = Snapshot::take();
    let guard = harness::lab(name, 3, 4);
    let lab = guard.lab();
    let pods: Vec<(String, String)> = lab
        .pods()
        .iter()
        .map(|p| (p.name.clone(), p.node.clone()))
        .collect();
    assert_eq!(pods.len(), 12);

    // No node knows another's MAC address: the first packets to each node are
    // encapsulated by from_pod too, and the kernel resolves the next hop as it
    // sends them (bpf_redirect_neigh), queueing them meanwhile.
    for node in lab.nodes() {
        let status = Command::new("ip")
            .args(["-n", &node.netns, "neigh", "flush", "dev", "eth0"])
            .status()
            .expect("ip runs");
        assert!(status.success(), "flushing {}'s neighbours", node.name);
    }

    // --- Full reachability matrix: every pod to every other pod, TCP, UDP, ICMP.
    let mut failures = Vec::new();
    let mut probes = 0;
    for (from, _) in &pods {
        for (to, _) in &pods {
            if from == to {
                continue;
            }
            for spec in ["80/tcp", "81/udp", "icmp"] {
                probes += 1;
                let report = harness::probe(name, from, to, spec);
                if !report.ok {
                    failures.push(format!("{from} -> {to} {spec}: {:?}", report.error));
                } else if spec != "icmp" {
                    let reply = report.reply.unwrap_or_default();
                    assert!(
                        reply.contains(&format!("name={to} ")),
                        "{from} -> {to} answered by: {reply}"
                    );
                }
            }
        }
    }
    assert_eq!(probes, 12 * 11 * 3);
    assert!(
        failures.is_empty(),
        "{} of {probes} probes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every pod's packet to another node was encapsulated in BPF, none handed to
    // the VXLAN device (none is too big for the uplink).
    for node in lab.nodes() {
        let counters: serde_json::Value =
            serde_json::from_str(&harness::get_text(&node.socket, lumen_api::paths::COUNTERS))
                .expect("counters JSON");
        assert!(
            counters["tunnelled"].as_u64() > Some(0),
            "{}: {counters}",
            node.name
        );
        assert_eq!(
            counters["tunnelled_via_device"].as_u64(),
            Some(0),
            "{}: {counters}",
            node.name
        );
    }

    // --- Nodes reach pods on every node, and the replies come back (a pod's reply
    // to another node returns through the tunnel, not masqueraded).
    for node in lab.nodes() {
        for (pod, _) in pods.iter().filter(|(p, _)| p.ends_with("-1")) {
            for spec in ["80/tcp", "icmp"] {
                let report = harness::probe(name, &node.name, pod, spec);
                assert!(
                    report.ok,
                    "{} -> {pod} {spec}: {:?}",
                    node.name, report.error
                );
            }
        }
    }

    // --- The tag on the underlay: tshark decodes the VNI, which must carry the
    // sending pod's identity (as its agent reports it).
    let status = harness::status(name);
    let identity: BTreeMap<String, u32> = status["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                p["ip"].as_str().expect("pod ip").to_owned(),
                p["identity"].as_u64().expect("pod identity") as u32,
            )
        })
        .collect();
    let underlay = lab.state().underlay.netns.clone();
    let capture = Capture::start(
        &underlay,
        "br0",
        "udp port 4789",
        &["ip.src", "ip.dst", "vxlan.vni"],
    );
    for (from, to) in [
        ("pod-1-1", "pod-2-1"),
        ("pod-2-3", "pod-3-4"),
        ("pod-3-2", "pod-1-4"),
    ] {
        assert!(harness::probe(name, from, to, "80/tcp").ok);
    }
    let packets = capture.finish();
    let mut checked = 0;
    for fields in &packets {
        let [src, _dst, vni] = &fields[..] else {
            continue;
        };
        // ip.src is "outer,inner" for VXLAN.
        let Some(inner_src) = src.split(',').nth(1) else {
            continue;
        };
        let vni: u32 = vni.parse().expect("numeric VNI");
        let tag = Tag::from_vni(vni);
        assert_eq!(
            Some(&tag.identity.0),
            identity.get(inner_src),
            "packet from {inner_src} carries VNI {vni}"
        );
        assert!(tag.identity.0 >= Identity::POD_BASE);
        assert!(!tag.trace, "untraced traffic must not carry the trace bit");
        checked += 1;
    }
    assert!(
        checked >= 6,
        "expected tagged VXLAN packets both ways, got {packets:?}"
    );

    // --- MTU: a TCP transfer in 1400-byte writes between nodes, no fragments on
    // the underlay, and every outer packet carries DF so nothing downstream may
    // fragment it either. (Frame sizes are not compared: veths pass GSO packets
    // whole, so a capture on the bridge sees pre-segmentation sizes.)
    let dst = lab.require_address("pod-3-1").expect("pod-3-1 ip");
    let client = lumen_lab::netio::netns::path_for(&lab.require_netns("pod-1-2").expect("netns"));
    let capture = Capture::start(
        &underlay,
        "br0",
        "udp port 4789 or (ip[6:2] & 0x3fff != 0)",
        &["ip.flags.df", "ip.flags.mf", "ip.frag_offset"],
    );
    // The lab's sink counts what it read and answers after the sender shut down:
    // exact, unlike iperf3's server, which stops counting on its own timer.
    const BYTES: usize = 4 * 1024 * 1024;
    let received = harness::in_netns(&client, move || {
        lumen_lab::netio::probe::transfer(dst, 80, BYTES, Duration::from_secs(10))
            .expect("transfer")
    });
    let packets = capture.finish();
    assert_eq!(received, BYTES, "the whole transfer arrived");
    assert!(
        packets.len() > 1000,
        "the transfer crossed the underlay: {} packets",
        packets.len()
    );
    for fields in &packets {
        // The outer IP header is the first ip layer; a fragment has MF or an offset.
        let outer = |i: usize| fields[i].split(',').next().unwrap_or("").to_owned();
        assert!(
            outer(0) == "1" || outer(0) == "True",
            "outer packet without DF: {fields:?}"
        );
        assert!(
            outer(1) != "1" && outer(1) != "True",
            "fragment on the underlay: {fields:?}"
        );
        assert!(
            outer(2) == "0" || outer(2).is_empty(),
            "fragment on the underlay: {fields:?}"
        );
    }

    // --- Masquerade: the external host sees each node's underlay address.
    for node in lab.nodes() {
        let pod = pods
            .iter()
            .find(|(_, n)| n == &node.name)
            .expect("a pod per node");
        let report = harness::probe(name, &pod.0, "external", "80/tcp");
        assert!(report.ok, "{} -> external: {:?}", pod.0, report.error);
        let reply = report.reply.unwrap_or_default();
        assert!(
            reply.contains(&format!("peer={}:", node.underlay_ip)),
            "external saw {reply}, expected the address of {}",
            node.name
        );
    }

    // --- Teardown leaves the machine exactly as found.
    drop(guard);
    assert_eq!(Snapshot::take(), before);
}

#[test]
fn lab_down_after_kill_9_leaves_nothing() {
    if !harness::require_root("lab_down_after_kill_9_leaves_nothing") {
        return;
    }
    let name = "k9";
    let before = Snapshot::take();
    let guard = harness::lab(name, 2, 1);
    let state = guard.lab().state().clone();
    // Kill every process of the lab without warning: agents and servers.
    let mut pids: Vec<u32> = state.nodes.iter().filter_map(|n| n.agent_pid).collect();
    pids.extend(state.pods.iter().filter_map(|p| p.server_pid));
    pids.extend(state.external.server_pid);
    assert!(pids.len() >= 5, "agents and servers recorded: {pids:?}");
    for pid in pids {
        // SAFETY: signalling processes this test's lab started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    std::mem::forget(guard);
    let out = harness::lumen(&["lab", "down", "--name", name]);
    assert!(
        out.status.success(),
        "down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Snapshot::take(), before);
    // Idempotent: a second down finds nothing and succeeds.
    let out = harness::lumen(&["lab", "down", "--name", name]);
    assert!(out.status.success());
}

/// A UDP receiver (no UDP_GRO) in one namespace and a sender using UDP
/// segmentation offload (UDP_SEGMENT) in another: the sender hands the kernel
/// 20 datagrams of 1000 bytes as one GSO packet, which crosses the overlay
/// whole. The receiver reports how many datagrams arrived and how many had
/// exactly the bytes sent.
const UDP_GSO_PEER: &str = r#"
import socket, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "recv":
    s.bind((addr, port))
    s.settimeout(3)
    print("ready", flush=True)
    got = []
    try:
        while True:
            got.append(s.recvfrom(65535)[0])
    except socket.timeout:
        pass
    print(len(got), sum(1 for i, d in enumerate(got) if d == bytes([i]) * 1000))
else:
    s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT
    s.sendto(b"".join(bytes([i]) * 1000 for i in range(20)), (addr, port))
"#;

/// A pod's UDP GSO packet reaches a pod on another node as the datagrams it
/// was made of. The receiving node's fast path must leave such a packet to
/// the VXLAN device, which clears its tunnel GSO state; decapsulated in BPF,
/// the receiver's stack would segment it as a tunnel packet.
#[test]
fn udp_gso_crosses_the_overlay_as_its_datagrams() {
    if !harness::require_root("udp_gso_crosses_the_overlay_as_its_datagrams") {
        return;
    }
    let guard = harness::lab("t-udpgso", 2, 1);
    let lab = guard.lab();
    let pod = |name: &str| lab.pod(name).expect("pod").clone();
    let (from, to) = (pod("pod-1-1"), pod("pod-2-1"));
    let to_ip = to.ip.expect("address").to_string();
    let mut receiver = Command::new("ip")
        .args(["netns", "exec", &to.netns, "python3", "-c", UDP_GSO_PEER])
        .args(["recv", &to_ip, "9000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(receiver.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("ready"), "ready");
    let sent = Command::new("ip")
        .args(["netns", "exec", &from.netns, "python3", "-c", UDP_GSO_PEER])
        .args(["send", &to_ip, "9000"])
        .status()
        .expect("python3 runs");
    assert!(sent.success(), "the GSO send");
    let report = lines.next().expect("a report").expect("report");
    let _ = receiver.wait();
    assert_eq!(report, "20 20", "datagrams received, and intact");
}
