//! The agents' Prometheus metrics in a live lab: `promtool check metrics` is clean
//! on both listeners, counters move by exactly the traffic sent, and the number
//! of series stays bounded however many pod pairs talk (per-pod series only under
//! their cap).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lumen_lab::netio::probe::{Proto, probe, transfer};
use lumen_tests::harness::{self, get_text, in_netns, measured, metric, offloads_off};

fn metrics(socket: &Path) -> String {
    get_text(socket, lumen_api::paths::METRICS)
}

/// `promtool check metrics` on an exposition: its complaints, empty when clean.
fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (install with: cargo xtask deps)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed: {complaints}"
    );
    complaints
}

/// The exposition from the agent's TCP listener, fetched from inside its node.
fn metrics_over_tcp(node_netns: &Path, node_ip: Ipv4Addr) -> String {
    in_netns(node_netns, move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(node_ip, 9965)).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("response");
        let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP");
        assert!(head.contains(" 200 "), "{head}");
        body.to_owned()
    })
}

/// Series (non-comment lines) of an exposition.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

const PACKETS: &str = "lumen_datapath_packets_total";
const BYTES: &str = "lumen_datapath_bytes_total";

fn traffic(text: &str, direction: &str) -> (f64, f64) {
    let s = |name: &str| format!("{name}{{direction=\"{direction}\",verdict=\"forwarded\"}}");
    (metric(text, &s(PACKETS)), metric(text, &s(BYTES)))
}

#[test]
fn metrics_are_clean_exact_and_bounded() {
    if !harness::require_root("metrics_are_clean_exact_and_bounded") {
        return;
    }
    let guard = harness::lab_with(
        "t-metrics",
        2,
        3,
        &[
            "--idle-timeout=1s",
            "--flow-drain-interval=250ms",
            "--metrics-per-pod",
            "--metrics-per-pod-max-series=4",
        ],
    );
    let lab = guard.lab();
    let node1 = lab.node("node-1").expect("node-1").clone();
    let socket = node1.socket.clone();
    let netns = |pod: &str| lab.netns_of(pod).expect("netns");
    for pod in ["pod-1-1", "pod-2-1"] {
        offloads_off(&netns(pod));
    }
    let client = lumen_lab::netio::netns::path_for(&netns("pod-1-1"));
    let target = lab.address_of("pod-2-1").expect("pod-2-1");

    // Clean, on both listeners.
    let text = metrics(&socket);
    assert_eq!(promtool_check(&text), "", "unix socket exposition");
    let tcp = metrics_over_tcp(&node1.netns_path(), node1.underlay_ip);
    assert_eq!(promtool_check(&tcp), "", "TCP listener exposition");
    assert!(tcp.contains("lumen_build_info{version="), "{tcp}");

    // Exact: one TCP transfer and a ping from pod-1-1 to pod-2-1. Node 1 sees
    // the client's sent packets as egress and its received ones as ingress.
    let before = metrics(&socket);
    let created_before = metric(&before, "lumen_flows_created_total");
    let ended_before = metric(&before, "lumen_flows_ended_total{reason=\"end_of_flow\"}");
    let ((), seen) = in_netns(&client, move || {
        measured(|| {
            transfer(target, 80, 50_000, Duration::from_secs(10)).expect("transfer");
            probe(target, Proto::Icmp, 0, Duration::from_secs(2)).expect("ping");
        })
    });
    // Two drains of the kernel counters later.
    std::thread::sleep(Duration::from_millis(3000));
    let after = metrics(&socket);
    let delta = |dir: &str| {
        let (p0, b0) = traffic(&before, dir);
        let (p1, b1) = traffic(&after, dir);
        ((p1 - p0) as u64, (b1 - b0) as u64)
    };
    assert_eq!(delta("egress"), seen.sent, "egress = what the client sent");
    assert_eq!(
        delta("ingress"),
        seen.received,
        "ingress = what it received"
    );
    assert_eq!(
        metric(&after, "lumen_flows_created_total") - created_before,
        2.0,
        "one TCP flow and one ICMP flow"
    );
    assert_eq!(
        metric(&after, "lumen_flows_ended_total{reason=\"end_of_flow\"}") - ended_before,
        1.0,
        "the TCP flow ended with FIN"
    );
    for reason in ["policy", "tunnel_key", "no_config"] {
        assert_eq!(
            metric(
                &after,
                &format!("lumen_datapath_drops_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }

    // Bounded: many short flows between every pod pair (and to the outside).
    let bound_before = series(&after)
        .iter()
        .filter(|l| !l.starts_with("lumen_pod_"))
        .count();
    let pods: Vec<String> = lab.pods().iter().map(|p| p.name.clone()).collect();
    let addresses: Vec<Ipv4Addr> = pods.iter().map(|p| addr_of(lab, p)).collect();
    for pod in &pods {
        let ns = lumen_lab::netio::netns::path_for(&netns(pod));
        let targets = addresses.clone();
        in_netns(&ns, move || {
            for _ in 0..30 {
                for t in &targets {
                    let _ = probe(*t, Proto::Tcp, 81, Duration::from_secs(2));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(2500));
    let text = metrics(&socket);
    assert_eq!(promtool_check(&text), "");
    let all = series(&text);
    let fixed = all.iter().filter(|l| !l.starts_with("lumen_pod_")).count();
    assert_eq!(
        fixed, bound_before,
        "series other than per-pod ones do not grow with flows or pod pairs"
    );
    assert!(fixed <= 550, "{fixed} series over the documented bound");
    let per_pod = all
        .iter()
        .filter(|l| l.starts_with("lumen_pod_packets_total"))
        .count();
    assert!(per_pod <= 4, "{per_pod} per-pod series over the cap of 4");
    assert_eq!(per_pod, 4, "the cap was reached");
    assert!(
        metric(&text, "lumen_metrics_series_refused_total") > 0.0,
        "what the cap refused is counted"
    );
    drop(guard);
}

fn addr_of(lab: &lumen_lab::Lab, pod: &str) -> Ipv4Addr {
    lab.address_of(pod).expect("pod address")
}
