//! `lumen observe` as a user runs it, against stand-in agents on unix sockets
//! that answer `GET /v1/flows` with chunked NDJSON as the real agent does.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers (fake agents, fixtures): a broken harness should fail loudly"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use lumen_api::flow::{Counters, Protocol, TcpFlags};
use lumen_api::{Flow, FlowEndpoint, FlowEvent, Identity, LostEvents, LostSource};

/// 2024-11-23T19:30:01.123Z
const T0: u64 = 1_732_390_201_123_000_000;
const SECOND: u64 = 1_000_000_000;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lumen-observe-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(name: &str, ip: [u8; 4], port: u16, id: u32) -> FlowEndpoint {
    FlowEndpoint {
        namespace: Some("default".into()),
        pod: Some(name.into()),
        node: None,
        labels: BTreeMap::new(),
        ..FlowEndpoint::bare(Ipv4Addr::from(ip), port, Identity(id))
    }
}

fn flow(node: &str, secs: u64) -> FlowEvent {
    FlowEvent::Flow(Box::new(Flow {
        start_ns: T0,
        end_ns: T0 + secs * SECOND,
        forward: Counters {
            packets: 5,
            bytes: 400,
        },
        reverse: Counters {
            packets: 4,
            bytes: 1_500,
        },
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::FIN),
        reverse_tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::FIN),
        correlation_id: "c".into(),
        community_id: "1:x".into(),
        ..Flow::between(
            node,
            Protocol::TCP,
            pod("pod-1-1", [10, 244, 1, 2], 43210, 514),
            pod("pod-2-1", [10, 244, 2, 2], 80, 770),
        )
    }))
}

fn lost(node: &str, secs: u64) -> FlowEvent {
    FlowEvent::LostEvents(LostEvents {
        node: node.into(),
        source: LostSource::RingBuffer,
        count: 12,
        time_ns: T0 + secs * SECOND,
    })
}

/// The compact line `flow(node, secs)` shows as.
fn compact(node: &str, secs: u64) -> String {
    format!(
        "Nov 23 19:30:{:02}.123 {node}: default/pod-1-1:43210 (ID:514) -> default/pod-2-1:80 \
         (ID:770) TCP Flags: SYN,ACK,FIN FORWARDED 5 pkts 400 B <- 4 pkts 1.5 KB",
        1 + secs
    )
}

fn json(event: &FlowEvent) -> String {
    serde_json::to_string(event).unwrap()
}

const NDJSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                           transfer-encoding: chunked\r\n\r\n";

fn chunk(conn: &mut UnixStream, lines: &[String]) {
    let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // A zero-length chunk would end the body early.
    if data.is_empty() {
        return;
    }
    write!(conn, "{:x}\r\n{data}\r\n", data.len()).unwrap();
    conn.flush().unwrap();
}

/// A stand-in agent: answers every connection with `answer`, and hands back the
/// request lines it saw when stopped.
struct FakeAgent {
    path: PathBuf,
    server: JoinHandle<Vec<String>>,
}

impl FakeAgent {
    fn serve(path: &Path, answer: impl Fn(UnixStream) + Send + Sync + 'static) -> Self {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(path).unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for conn in listener.incoming() {
                let conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.starts_with("STOP") {
                    return requests;
                }
                requests.push(line.trim_end().to_owned());
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim_end().is_empty() {
                        break;
                    }
                }
                answer(conn);
            }
            requests
        });
        Self {
            path: path.to_owned(),
            server,
        }
    }

    /// Answering with these events, then the end of the body.
    fn with_events(path: &Path, events: Vec<FlowEvent>) -> Self {
        Self::serve(path, move |mut conn| {
            conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
            chunk(&mut conn, &events.iter().map(json).collect::<Vec<_>>());
            conn.write_all(b"0\r\n\r\n").unwrap();
        })
    }

    fn requests(self) -> Vec<String> {
        let mut stop = UnixStream::connect(&self.path).unwrap();
        stop.write_all(b"STOP\r\n").unwrap();
        self.server.join().unwrap()
    }
}

fn lumen(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lumen"));
    cmd.arg("observe").args(args).env_remove("NO_COLOR");
    cmd
}

fn run(args: &[&str]) -> Output {
    lumen(args).output().unwrap()
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A planned lab `t` with `nodes` nodes under `root`, as `lumen lab up` records it.
fn lab(root: &Path, nodes: u32) -> lumen_lab::LabState {
    let state = lumen_lab::LabState::plan(&lumen_lab::LabConfig {
        name: "t".into(),
        nodes,
        pods_per_node: 1,
        bin_dir: PathBuf::from("/bin"),
        state_root: root.to_owned(),
        ..lumen_lab::LabConfig::default()
    });
    std::fs::create_dir_all(&state.state_dir).unwrap();
    state.save().unwrap();
    state
}

#[test]
fn one_agent_compact_without_colour_when_piped() {
    let dir = TempDir::new("compact");
    let socket = dir.0.join("agent.sock");
    let agent = FakeAgent::with_events(
        &socket,
        vec![flow("node-1", 0), lost("node-1", 1), flow("node-1", 2)],
    );
    let out = run(&[
        "--socket",
        socket.to_str().unwrap(),
        "--from-pod",
        "default/pod-1-1",
        "--port",
        "80",
        "--port",
        "81",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        lines(&out.stdout),
        [
            compact("node-1", 0),
            "Nov 23 19:30:02.123 LOST 12 events (RING_BUFFER) on node-1".to_owned(),
            compact("node-1", 2),
        ]
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        agent.requests(),
        ["GET /v1/flows?from_pod=default%2Fpod-1-1&port=80%2C81&last=20 HTTP/1.1"]
    );
}

#[test]
fn json_is_passed_through_and_colour_can_be_forced() {
    let dir = TempDir::new("json");
    let socket = dir.0.join("agent.sock");
    // Spacing and key order the client would not produce itself.
    let raw = r#"{"lost_events": {"count": 3, "node": "node-2", "source": "SINK", "time_ns": 1732390201123000000}}"#;
    let agent = FakeAgent::serve(&socket, move |mut conn| {
        conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
        chunk(&mut conn, &[raw.to_owned()]);
        conn.write_all(b"0\r\n\r\n").unwrap();
    });
    let path = socket.to_str().unwrap();
    let out = run(&["--socket", path, "-o", "json", "--color", "always"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines(&out.stdout), [raw]);
    let out = run(&["--socket", path, "--color", "always"]);
    assert_eq!(
        lines(&out.stdout),
        ["Nov 23 19:30:01.123 \x1b[33mLOST\x1b[0m 3 events (SINK) on node-2"]
    );
    assert_eq!(agent.requests().len(), 2);
}

#[test]
fn a_lab_merges_its_nodes_by_time_and_reports_the_silent_one() {
    let dir = TempDir::new("lab");
    let state = lab(&dir.0, 3);
    let node1 = FakeAgent::with_events(
        &state.nodes[0].socket,
        vec![flow("node-1", 1), flow("node-1", 4), flow("node-1", 5)],
    );
    let node2 = FakeAgent::with_events(
        &state.nodes[1].socket,
        vec![flow("node-2", 2), flow("node-2", 3), flow("node-2", 6)],
    );
    let root = dir.0.to_str().unwrap();
    let out = run(&["--lab", "t", "--state-root", root, "--last", "4"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        lines(&out.stdout),
        [
            compact("node-2", 3),
            compact("node-1", 4),
            compact("node-1", 5),
            compact("node-2", 6),
        ]
    );
    let stderr = lines(&out.stderr);
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].starts_with(&format!(
            "warning: node-3: agent socket {} is unreachable: ",
            state.nodes[2].socket.display()
        )),
        "{stderr:?}"
    );
    assert_eq!(node1.requests(), ["GET /v1/flows?last=4 HTTP/1.1"]);
    assert_eq!(node2.requests(), ["GET /v1/flows?last=4 HTTP/1.1"]);
}

#[test]
fn no_agent_answering_is_a_failure() {
    let dir = TempDir::new("none");
    lab(&dir.0, 2);
    let out = run(&["--lab", "t", "--state-root", dir.0.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: node-1: agent socket"), "{stderr}");
    assert!(stderr.contains("warning: node-2: agent socket"), "{stderr}");
    assert!(
        stderr.ends_with("error: could not read flows from any agent of lab t (2 asked)\n"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_fail_before_asking() {
    let dir = TempDir::new("bad");
    let socket = dir.0.join("agent.sock");
    let agent = FakeAgent::with_events(&socket, vec![]);
    let path = socket.to_str().unwrap();
    for (flags, message) in [
        (
            &["--port", "http"][..],
            "error: invalid filter: port: \"http\" is not a valid port number\n",
        ),
        (
            &["--verdict", "maybe"],
            "error: invalid filter: verdict: \"maybe\" is not a valid verdict (FORWARDED|DROPPED|TRACED)\n",
        ),
        (
            &["--since", "tomorrow"],
            "error: --since \"tomorrow\" is neither a duration (5m, 2h, 1h30m) nor an RFC 3339 \
             time (2024-11-23T19:30:00Z)\n",
        ),
    ] {
        let out = run(&[&["--socket", path][..], flags].concat());
        assert!(!out.status.success(), "{flags:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), message);
    }
    assert!(agent.requests().is_empty(), "nothing was sent");
}

#[test]
fn the_agents_refusal_is_shown() {
    let dir = TempDir::new("refused");
    let socket = dir.0.join("agent.sock");
    let agent = FakeAgent::serve(&socket, |mut conn| {
        let body = r#"{"error":"namespace: too many values"}"#;
        write!(
            conn,
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let path = socket.to_str().unwrap();
    let out = run(&["--socket", path]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "warning: {path}: the agent answered HTTP 400: namespace: too many values\n\
             error: could not read flows from the agent on {path}\n"
        )
    );
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn follow_prints_each_record_as_it_arrives() {
    let dir = TempDir::new("follow");
    let state = lab(&dir.0, 2);
    let (next_tx, next_rx) = mpsc::channel::<()>();
    let next_rx = std::sync::Mutex::new(next_rx);
    let node1 = FakeAgent::serve(&state.nodes[0].socket, move |mut conn| {
        conn.write_all(NDJSON_HEAD.as_bytes()).unwrap();
        chunk(&mut conn, &[json(&flow("node-1", 5))]);
        // The next record only once the first one was seen on the terminal.
        next_rx.lock().unwrap().recv().unwrap();
        chunk(&mut conn, &[json(&flow("node-1", 1))]);
        conn.write_all(b"0\r\n\r\n").unwrap();
    });
    let node2 = FakeAgent::with_events(&state.nodes[1].socket, vec![]);
    let mut child = lumen(&[
        "--lab",
        "t",
        "--state-root",
        dir.0.to_str().unwrap(),
        "-f",
        "-o",
        "table",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut read = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    };
    let header = read();
    assert!(header.starts_with("TIME "), "{header}");
    let first = read();
    assert!(
        first.starts_with("Nov 23 19:30:06.123  node-1  "),
        "{first}"
    );
    next_tx.send(()).unwrap();
    let second = read();
    assert!(
        second.starts_with("Nov 23 19:30:02.123  node-1  "),
        "{second}"
    );
    assert_eq!(second.find("FORWARDED"), header.find("VERDICT"));
    // Both streams ended: so does observe.
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(read(), "");
    assert_eq!(node1.requests(), ["GET /v1/flows?follow=true HTTP/1.1"]);
    assert_eq!(node2.requests(), ["GET /v1/flows?follow=true HTTP/1.1"]);
}
