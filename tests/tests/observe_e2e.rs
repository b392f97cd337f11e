//! `lumen observe` against a live lab: filters, the three output formats, merging
//! both nodes, and follow mode, checked against traffic the test made itself.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumen_api::flow::{EndReason, FlowEvent, Protocol};
use lumen_api::{Flow, FlowFilter, FlowQuery};
use lumen_tests::harness::{self, in_netns, wait_flows};

const LAB: &str = "t-observe";

fn observe(args: &[&str]) -> (String, String, bool) {
    let out = harness::lumen(&[&["observe", "--lab", LAB], args].concat());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn json_flows(stdout: &str) -> Vec<Flow> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<FlowEvent>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .filter_map(|e| match e {
            FlowEvent::Flow(f) => Some(*f),
            FlowEvent::LostEvents(_) => None,
        })
        .collect()
}

/// A TCP connection that sends one line and closes; returns its source port.
fn tcp_exchange(target: Ipv4Addr, port: u16) -> u16 {
    use std::io::Write;
    let mut s = TcpStream::connect(SocketAddrV4::new(target, port)).expect("connect");
    s.write_all(b"lumen-observe\n").expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("reply");
    s.local_addr().expect("addr").port()
}

fn udp_exchange(target: Ipv4Addr, port: u16) -> u16 {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.send_to(b"lumen-observe", SocketAddrV4::new(target, port))
        .expect("send");
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf).expect("reply");
    s.local_addr().expect("addr").port()
}

fn human_bytes(b: u64) -> String {
    if b < 1000 {
        format!("{b} B")
    } else {
        format!("{:.1} KB", b as f64 / 1000.0)
    }
}

fn pkts(n: u64) -> String {
    if n == 1 {
        "1 pkt".into()
    } else {
        format!("{n} pkts")
    }
}

#[test]
fn observe_filters_and_formats_against_a_live_lab() {
    if !harness::require_root("observe_filters_and_formats_against_a_live_lab") {
        return;
    }
    let guard = harness::lab_with(
        LAB,
        2,
        2,
        &["--idle-timeout", "2s", "--flow-drain-interval", "250ms"],
    );
    let lab = guard.lab();
    let ns = |pod: &str| lumen_lab::netio::netns::path_for(&lab.netns_of(pod).expect("netns"));
    let addr = |pod: &str| lab.address_of(pod).expect("address");
    let (p11, p21) = (addr("pod-1-1"), addr("pod-2-1"));
    let socket = |node: &str| lab.node(node).expect("node").socket.clone();

    // The agents learn pod names from the manifests a moment after the lab is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let port = in_netns(&ns("pod-1-1"), move || tcp_exchange(p21, 81));
        let named = [socket("node-1"), socket("node-2")].iter().all(|s| {
            wait_flows(s, &format!("port={port}"), Duration::from_secs(3), |fs| {
                fs.iter().any(|f| f.destination.pod.is_some())
            })
            .iter()
            .any(|f| f.destination.pod.is_some())
        });
        if named {
            break;
        }
    }
    let tcp_port = in_netns(&ns("pod-1-1"), move || tcp_exchange(p21, 80));
    let udp_port = in_netns(&ns("pod-1-2"), move || udp_exchange(p11, 81));
    // Wait for the ended records on both nodes before asking the CLI.
    wait_flows(
        &socket("node-2"),
        &format!("port={tcp_port}"),
        Duration::from_secs(20),
        |fs| fs.iter().any(|f| f.end_reason.is_some()),
    );
    wait_flows(
        &socket("node-1"),
        &format!("port={udp_port}"),
        Duration::from_secs(20),
        |fs| {
            fs.iter()
                .any(|f| f.end_reason == Some(EndReason::IdleTimeout))
        },
    );

    // json, both nodes merged: the TCP flow from each node, with one correlation id.
    let (out, err, ok) = observe(&[
        "-o",
        "json",
        "--port",
        &tcp_port.to_string(),
        "--last",
        "100",
    ]);
    assert!(ok, "{err}");
    let flows = json_flows(&out);
    let ended: Vec<&Flow> = flows.iter().filter(|f| f.end_reason.is_some()).collect();
    let nodes: std::collections::BTreeSet<&str> = ended.iter().map(|f| f.node.as_str()).collect();
    assert_eq!(nodes, ["node-1", "node-2"].into(), "{out}");
    assert!(
        ended
            .windows(2)
            .all(|w| w[0].correlation_id == w[1].correlation_id)
    );
    assert!(
        flows.windows(2).all(|w| w[0].end_ns <= w[1].end_ns),
        "merged in time order"
    );
    for f in &flows {
        assert_eq!(f.source.pod_ref().as_deref(), Some("default/pod-1-1"));
        assert_eq!(f.destination.pod_ref().as_deref(), Some("default/pod-2-1"));
        assert_eq!((f.source.port, f.destination.port), (tcp_port, 80));
    }

    // Every filter flag: what comes back matches it (checked with the API's own
    // filter), and is not empty where traffic was made.
    let cases: Vec<(Vec<&str>, FlowQuery, bool)> = vec![
        (
            vec!["--from-pod", "default/pod-1-1"],
            FlowQuery {
                from_pod: Some("default/pod-1-1".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--to-pod", "pod-1-1"],
            FlowQuery {
                to_pod: Some("pod-1-1".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--namespace", "default", "--protocol", "udp"],
            FlowQuery {
                namespace: Some("default".into()),
                protocol: Some("udp".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--from-label", "app=pod-1-2"],
            FlowQuery {
                from_label: Some("app=pod-1-2".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--to-label", "lab-node=node-2"],
            FlowQuery {
                to_label: Some("lab-node=node-2".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--node", "node-2"],
            FlowQuery {
                node: Some("node-2".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--verdict", "FORWARDED", "--port", "80"],
            FlowQuery {
                verdict: Some("FORWARDED".into()),
                port: Some("80".into()),
                ..Default::default()
            },
            true,
        ),
        (
            vec!["--verdict", "DROPPED"],
            FlowQuery {
                verdict: Some("DROPPED".into()),
                ..Default::default()
            },
            false,
        ),
        (
            vec!["--from-pod", "pod-2-2"],
            FlowQuery {
                from_pod: Some("pod-2-2".into()),
                ..Default::default()
            },
            false,
        ),
    ];
    for (args, query, nonempty) in cases {
        let (out, err, ok) =
            observe(&[&["-o", "json", "--last", "1000"], args.as_slice()].concat());
        assert!(ok, "{args:?}: {err}");
        let flows = json_flows(&out);
        let filter = FlowFilter::try_from(&query).expect("filter");
        assert_eq!(
            !flows.is_empty(),
            nonempty,
            "{args:?} returned {} records",
            flows.len()
        );
        for f in &flows {
            assert!(filter.matches_flow(f), "{args:?} let through {f:?}");
        }
    }
    let (_, err, ok) = observe(&["--port", "http"]);
    assert!(
        !ok && err.contains("port"),
        "a bad filter is refused: {err}"
    );

    // compact: the TCP record of node-1 as a line we can write down ourselves.
    let (json, _, _) = observe(&[
        "-o",
        "json",
        "--node",
        "node-1",
        "--port",
        &tcp_port.to_string(),
        "--last",
        "100",
    ]);
    let flow = json_flows(&json)
        .into_iter()
        .find(|f| f.end_reason == Some(EndReason::EndOfFlow))
        .expect("node-1's ended record");
    let (compact, _, ok) = observe(&[
        "--node",
        "node-1",
        "--port",
        &tcp_port.to_string(),
        "--last",
        "100",
    ]);
    assert!(ok);
    let flags = lumen_api::flow::TcpFlags(flow.tcp_flags.0 | flow.reverse_tcp_flags.0);
    let want = format!(
        "node-1: default/pod-1-1:{tcp_port} (ID:{}) -> default/pod-2-1:80 (ID:{}) TCP Flags: {flags} FORWARDED {} {} <- {} {} [END_OF_FLOW]",
        flow.source.identity,
        flow.destination.identity,
        pkts(flow.forward.packets),
        human_bytes(flow.forward.bytes),
        pkts(flow.reverse.packets),
        human_bytes(flow.reverse.bytes),
    );
    let line = compact
        .lines()
        .find(|l| l.ends_with("[END_OF_FLOW]"))
        .unwrap_or_else(|| panic!("no ended line in:\n{compact}"));
    assert_eq!(&line[20..], want, "compact line");
    assert_eq!(
        &line[..4],
        &lumen_tests_month(flow.end_ns),
        "time prefix of {line:?}"
    );
    assert!(!compact.contains('\x1b'), "no colour when not a terminal");

    // table: one header, one row a record, the pods in their columns.
    let (table, _, ok) = observe(&[
        "-o",
        "table",
        "--port",
        &udp_port.to_string(),
        "--last",
        "100",
    ]);
    assert!(ok);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    for col in ["TIME", "NODE", "SOURCE", "DESTINATION", "PROTO", "VERDICT"] {
        assert!(header.contains(col), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(
            row.contains(&format!("default/pod-1-2:{udp_port}"))
                && row.contains("default/pod-1-1:81"),
            "{row}"
        );
        assert!(row.contains("UDP") && row.contains("FORWARDED"), "{row}");
    }

    // follow: a new flow shows up while the command runs.
    let mut child = Command::new(harness::bin_dir().join("lumen"))
        .args([
            "observe",
            "--lab",
            LAB,
            "-f",
            "-o",
            "json",
            "--protocol",
            "tcp",
            "--from-pod",
            "pod-1-2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("observe -f");
    let stdout = child.stdout.take().expect("stdout");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let port = in_netns(&ns("pod-1-2"), move || tcp_exchange(p21, 80));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let f = json_flows(&line);
            if f.iter()
                .any(|f| f.source.port == port && f.protocol == Protocol::TCP)
            {
                seen = Some(started.elapsed());
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.is_some(),
        "follow mode never showed the flow from port {port}"
    );
    drop(guard);
}

/// The month abbreviation `lumen observe` prints for a time (UTC).
fn lumen_tests_month(ns: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Civil-from-days (Howard Hinnant): days since 1970-01-01 → month.
    let days = (ns / 1_000_000_000 / 86_400) as i64 + 719_468;
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{} ", MONTHS[(month - 1) as usize])
}
