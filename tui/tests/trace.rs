//! `lumen trace` as a user runs it, over a planned lab whose node agents are
//! stand-ins on unix sockets answering the trace API as the real agent does:
//! what is sent, what is printed, and the exit status.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers (fake agents, fixtures): a broken harness should fail loudly"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use lumen_api::flow::Protocol;
use lumen_api::policy::PodRef;
use lumen_api::trace::{
    Hop, HopAction, HopsQuery, NodeHops, SourceTrace, TraceDestination, TracePhase, TracePoint,
    TraceRequest, TraceResult, TraceVerdict, TracedPacket, TunnelInfo,
};

const T0: u64 = 1_732_390_201_123_000_000;
const ID: &str = "node-1-193595f2a63-1";

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lumen-trace-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request a stand-in agent saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

type Answer = (u16, String);

/// A stand-in agent: answers each request with `answer(method, path, body)`
/// and keeps what it saw. Its thread lives as long as the test.
struct FakeAgent {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAgent {
    fn serve(path: &Path, answer: impl Fn(&Seen) -> Answer + Send + 'static) -> Self {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request = Seen {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    body: String::from_utf8(body).unwrap(),
                };
                let (status, body) = answer(&request);
                log.lock().unwrap().push(request);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn ok(value: &impl serde::Serialize) -> Answer {
    (200, serde_json::to_string(value).unwrap())
}

/// A planned lab `t`: node-1 with pod-1-1, node-2 with pod-2-1.
fn lab(root: &Path) -> lumen_lab::LabState {
    let state = lumen_lab::LabState::plan(&lumen_lab::LabConfig {
        name: "t".into(),
        nodes: 2,
        pods_per_node: 1,
        bin_dir: PathBuf::from("/bin"),
        state_root: root.to_owned(),
        ..lumen_lab::LabConfig::default()
    });
    std::fs::create_dir_all(&state.state_dir).unwrap();
    state.save().unwrap();
    state
}

fn lumen(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumen"))
        .arg("trace")
        .args(args)
        .args(["--lab", "t", "--state-root", dir.arg()])
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn hop(node: &str, point: TracePoint, action: HopAction, ts: u64) -> Hop {
    Hop::at(node, point, action, T0 + ts)
}

const PACKET: TracedPacket = TracedPacket {
    source: Ipv4Addr::new(10, 244, 1, 2),
    destination: Ipv4Addr::new(10, 244, 2, 2),
    protocol: Protocol::TCP,
    source_port: 40001,
    destination_port: 80,
    ip_id: 7,
};

/// What the source agent answers `POST /v1/traces` with.
fn started(body: &str, packets: Vec<TracedPacket>) -> SourceTrace {
    let request: TraceRequest = serde_json::from_str(body).unwrap();
    SourceTrace {
        result: TraceResult {
            id: ID.into(),
            phase: TracePhase::Running,
            reason: None,
            request,
            source_node: "node-1".into(),
            packet: None,
            hops: vec![],
            verdict: None,
            started_ns: T0,
            end_to_end_ns: 0,
        },
        packets,
    }
}

fn node_hops(node: &str, hops: &[Hop], seen: &Seen) -> Answer {
    let query: HopsQuery = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(query.packet, PACKET);
    ok(&NodeHops {
        node: node.into(),
        hops: hops.to_vec(),
    })
}

#[test]
fn an_inter_node_trace_is_a_tree_with_a_branch_per_node() {
    let dir = TempDir::new("tree");
    let state = lab(&dir.0);
    let tunnel = |local: [u8; 4], remote: [u8; 4]| {
        Some(TunnelInfo {
            local: Ipv4Addr::from(local),
            remote: Ipv4Addr::from(remote),
            vni: 0x80_0102,
        })
    };
    let node1 = vec![
        hop("node-1", TracePoint::FromPod, HopAction::Received, 0),
        hop(
            "node-1",
            TracePoint::PolicyEgress,
            HopAction::Forwarded,
            4_000,
        ),
        Hop {
            tunnel: tunnel([192, 0, 2, 11], [192, 0, 2, 12]),
            ..hop("node-1", TracePoint::ToOverlay, HopAction::Tunnelled, 7_000)
        },
    ];
    let node2 = vec![
        Hop {
            tunnel: tunnel([192, 0, 2, 12], [192, 0, 2, 11]),
            ..hop(
                "node-2",
                TracePoint::FromOverlay,
                HopAction::Received,
                50_000,
            )
        },
        hop("node-2", TracePoint::ToPod, HopAction::Delivered, 55_000),
    ];
    let agent1 = FakeAgent::serve(&state.nodes[0].socket, move |seen| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/v1/traces") => ok(&started(&seen.body, vec![PACKET])),
            ("POST", "/v1/traces/hops") => node_hops("node-1", &node1, seen),
            ("POST", p) if p == format!("/v1/traces/{ID}/finish") => (200, "{}".into()),
            _ => (404, r#"{"error":"no such route"}"#.into()),
        }
    });
    let agent2 = FakeAgent::serve(&state.nodes[1].socket, move |seen| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/v1/traces/hops") => node_hops("node-2", &node2, seen),
            _ => (404, r#"{"error":"no such route"}"#.into()),
        }
    });

    let out = lumen(&dir, &["pod-1-1", "pod-2-1", "--timeout", "3s"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "trace {ID} TCP 10.244.1.2:40001 -> 10.244.2.2:80 ip id 7 (injected)\n\
             node-1\n\
             |-- from_pod       RECEIVED\n\
             |-- policy egress  FORWARDED  +4.0us  no policy\n\
             `-- to_overlay     TUNNELLED  +3.0us  192.0.2.11 -> 192.0.2.12 vni 0x800102 (identity 258, traced)\n\
             node-2\n\
             |-- from_overlay   RECEIVED    +43us  192.0.2.11 -> 192.0.2.12 vni 0x800102 (identity 258, traced)\n\
             `-- to_pod         DELIVERED  +5.0us\n\
             verdict DELIVERED at node-2 to_pod; end to end 55us over 2 nodes\n"
        )
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let seen = agent1.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/traces")
    );
    let sent: TraceRequest = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        sent,
        TraceRequest {
            timeout_ms: 3_000,
            ..TraceRequest::tcp(
                PodRef::parse("pod-1-1").unwrap(),
                TraceDestination::Pod(PodRef::parse("pod-2-1").unwrap()),
                80
            )
        }
    );
    // Polls may still be in flight when the result goes back: find it by path.
    let finish_path = format!("/v1/traces/{ID}/finish");
    let finishes: Vec<&Seen> = seen.iter().filter(|s| s.path == finish_path).collect();
    assert_eq!(finishes.len(), 1, "{seen:?}");
    let finish = finishes[0];
    let finished: TraceResult = serde_json::from_str(&finish.body).unwrap();
    assert_eq!(
        (finished.phase, finished.verdict, finished.hops.len()),
        (TracePhase::Succeeded, Some(TraceVerdict::Delivered), 5)
    );
    assert!(agent2.seen().iter().all(|s| s.path == "/v1/traces/hops"));
}

#[test]
fn a_failed_trace_is_printed_and_exits_1() {
    let dir = TempDir::new("failed");
    let state = lab(&dir.0);
    let agent = FakeAgent::serve(&state.nodes[0].socket, |seen| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/v1/traces") => ok(&started(&seen.body, vec![])),
            ("GET", p) if p.starts_with(&format!("/v1/traces/{ID}?")) => {
                let mut trace = started(
                    &serde_json::to_string(&TraceRequest::tcp(
                        PodRef::parse("pod-1-1").unwrap(),
                        TraceDestination::Ip(Ipv4Addr::new(203, 0, 113, 10)),
                        80,
                    ))
                    .unwrap(),
                    vec![],
                );
                trace.result.phase = TracePhase::Failed;
                trace.result.reason = Some("the injected packet could not be sent".into());
                ok(&trace)
            }
            ("POST", p) if p.ends_with("/finish") => (200, "{}".into()),
            _ => (404, "{}".into()),
        }
    });
    let out = lumen(&dir, &["pod-1-1", "203.0.113.10"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "trace {ID} TCP default/pod-1-1 -> 203.0.113.10:80 (injected, no packet seen)\n\
             (no hop seen)\n\
             trace FAILED: the injected packet could not be sent\n"
        )
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = lumen(&dir, &["pod-1-1", "203.0.113.10", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let result: TraceResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result.phase, TracePhase::Failed);
    assert_eq!(
        text(&out.stderr),
        format!("error: trace {ID} failed: the injected packet could not be sent\n")
    );
    let paths: Vec<String> = agent.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths.len(), 6, "{paths:?}");
}

#[test]
fn a_refusal_names_the_agent() {
    let dir = TempDir::new("refused");
    let state = lab(&dir.0);
    let _agent = FakeAgent::serve(&state.nodes[1].socket, |_| {
        (
            409,
            r#"{"error":"a live trace of default/pod-2-1 is already running"}"#.into(),
        )
    });
    let out = lumen(&dir, &["pod-2-1", "pod-1-1", "--live"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "error: the trace could not run: the agent of node node-2 refused the trace: \
         a live trace of default/pod-2-1 is already running\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn nothing_is_sent_for_a_bad_request_or_an_unknown_pod() {
    let dir = TempDir::new("bad");
    let state = lab(&dir.0);
    let agent = FakeAgent::serve(&state.nodes[0].socket, |_| (500, "{}".into()));
    for (args, stderr) in [
        (
            &["nope", "pod-2-1"][..],
            "error: lab t has no pod default/nope (its pods: default/pod-1-1, default/pod-2-1)\n",
        ),
        (
            &["pod-1-1", "x/pod-2-1"],
            "error: lab t has no pod x/pod-2-1 (its pods: default/pod-1-1, default/pod-2-1)\n",
        ),
        (
            &["pod-1-1", "node/node-3"],
            "error: lab t has no node node-3 (its nodes: node-1, node-2)\n",
        ),
        (
            &["pod-1-1", "pod-2-1", "--dropped-only"],
            "error: invalid trace: dropped-only applies to live traces \
             (an injected packet is one packet)\n",
        ),
        (
            &["pod-1-1", "10.0.0.1:80", "--dport", "81"],
            "error: destination \"10.0.0.1:80\" says port 80 but --dport says 81\n",
        ),
    ] {
        let out = lumen(&dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(text(&out.stderr), stderr, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(agent.seen().is_empty(), "{:?}", agent.seen());
}

#[test]
fn the_request_is_checked_before_the_lab_is_looked_for() {
    let dir = TempDir::new("nolab");
    let out = lumen(
        &dir,
        &["pod-1-1", "pod-2-1", "--proto", "udp", "--flags", "SYN"],
    );
    assert_eq!(
        text(&out.stderr),
        "error: invalid trace: TCP flags given for a UDP trace\n"
    );
    let out = lumen(&dir, &["pod-1-1", "pod-2-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: lab \"t\" is not up: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreachable_agents_are_an_error() {
    let dir = TempDir::new("down");
    let state = lab(&dir.0);
    let out = lumen(&dir, &["pod-1-1", "pod-2-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "error: the trace could not run: the agent of node node-1 cannot be asked: \
             agent socket {} is unreachable: ",
            state.nodes[0].socket.display()
        )),
        "{}",
        text(&out.stderr)
    );
}
