//! IPFIX over TCP from live agents to a collector that comes and goes: not
//! running when the agents start, killed mid-stream, back after 30 s. The agents
//! must not crash, must re-send templates on every new connection, and must count
//! what they could not deliver, both in the statistics record the collector gets
//! and in their own state (`GET /v1/flows/stats`).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use lumen_exporter::ipfix::test_util::{
    Decoder, flow_records, split_messages, stats_records, value,
};
use lumen_lab::netio::probe::{Proto, probe};
use lumen_tests::harness::{self, flow_stats, in_netns};

const PORT: u16 = 4740;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BUFFERED: usize = 4;

/// Connections the agent's exporter makes, kept so the test can read and kill them.
struct Collector {
    listener: TcpListener,
}

impl Collector {
    /// Listen on the underlay gateway (inside the lab's underlay namespace).
    fn listen(underlay: &Path) -> Self {
        let listener = in_netns(underlay, || {
            TcpListener::bind(SocketAddrV4::new(GATEWAY, PORT)).expect("collector binds")
        });
        Self { listener }
    }

    fn accept(&self, timeout: Duration) -> TcpStream {
        self.listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    return s;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("no exporter connected within {timeout:?}: {e}"),
            }
        }
    }
}

/// Read from `stream` for `period`, returning every whole message.
fn read_for(stream: &mut TcpStream, period: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + period;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    bytes
}

/// Set ids of a message, in order.
fn set_ids(message: &[u8]) -> Vec<u16> {
    let mut ids = Vec::new();
    let mut rest = &message[16..];
    while rest.len() >= 4 {
        let id = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len < 4 || len > rest.len() {
            break;
        }
        ids.push(id);
        rest = &rest[len..];
    }
    ids
}

/// `n` short TCP exchanges pod-1-1 → pod-2-1: each ends and becomes a record.
fn make_flows(client: &Path, target: Ipv4Addr, n: usize) {
    in_netns(client, move || {
        for _ in 0..n {
            probe(target, Proto::Tcp, 80, Duration::from_secs(2)).expect("probe");
        }
    });
}

fn exporter_stats(socket: &Path) -> serde_json::Value {
    flow_stats(socket)["exporter"]["collectors"][0].clone()
}

fn wait_stats(
    socket: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = exporter_stats(socket);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn collector_down_killed_and_back_after_30s() {
    if !harness::require_root("collector_down_killed_and_back_after_30s") {
        return;
    }
    let collector_url = format!("--ipfix-collector=tcp://{GATEWAY}:{PORT}");
    let buffered = format!("--ipfix-max-buffered={BUFFERED}");
    let guard = harness::lab_with(
        "t-ipfixfault",
        2,
        1,
        &[
            &collector_url,
            &buffered,
            "--ipfix-stats-interval=1s",
            "--idle-timeout=1s",
            "--flow-drain-interval=250ms",
        ],
    );
    let lab = guard.lab();
    let underlay = lumen_lab::netio::netns::path_for(&lab.state().underlay.netns);
    let client = lumen_lab::netio::netns::path_for(&lab.netns_of("pod-1-1").expect("netns"));
    let target = lab.address_of("pod-2-1").expect("pod-2-1");
    let socket = lab.node("node-1").expect("node-1").socket.clone();

    // 1. No collector: records wait in the buffer, the agent is fine.
    make_flows(&client, target, 2);
    let s = wait_stats(&socket, "records buffered while down", |s| {
        s["records_buffered"].as_u64() >= Some(2)
    });
    assert_eq!(s["connected"], false, "{s}");

    // 2. The collector comes: templates first, then the buffered records.
    let collector = Collector::listen(&underlay);
    let mut conn = collector.accept(Duration::from_secs(15));
    let bytes = read_for(&mut conn, Duration::from_secs(2));
    let messages = split_messages(&bytes).expect("whole messages");
    assert!(!messages.is_empty(), "nothing sent after connecting");
    let first = set_ids(messages[0]);
    assert_eq!(
        first.first(),
        Some(&2),
        "a template set opens the session: {first:?}"
    );
    assert!(first.contains(&3), "the options template too: {first:?}");
    let decoder = Decoder::new(lumen_exporter::IpfixConfig::default().enterprise_number);
    let decoded: Vec<_> = messages
        .iter()
        .map(|m| decoder.decode(m).expect("decodes"))
        .collect();
    let records: usize = decoded.iter().map(|m| flow_records(m).len()).sum();
    assert!(records >= 2, "the buffered records arrive: {records}");

    // 3. Killed mid-stream; more records than the buffer holds meanwhile.
    drop(conn);
    drop(collector);
    let killed = Instant::now();
    make_flows(&client, target, BUFFERED + 4);
    let s = wait_stats(&socket, "records lost while the collector is dead", |s| {
        s["records_lost"].as_u64() >= Some(1)
    });
    assert_eq!(s["connected"], false, "{s}");

    // 4. Back after 30 s: a new session with templates again, and the statistics
    //    record counts what was lost.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(killed.elapsed()));
    let collector = Collector::listen(&underlay);
    let mut conn = collector.accept(Duration::from_secs(15));
    let bytes = read_for(&mut conn, Duration::from_secs(3));
    let messages = split_messages(&bytes).expect("whole messages");
    assert_eq!(
        set_ids(messages[0]).first(),
        Some(&2),
        "templates re-sent on reconnect"
    );
    assert_eq!(
        u32::from_be_bytes([
            messages[0][8],
            messages[0][9],
            messages[0][10],
            messages[0][11]
        ]),
        0,
        "a new session starts its sequence numbers at 0"
    );
    let decoder = Decoder::new(lumen_exporter::IpfixConfig::default().enterprise_number);
    let not_sent = messages
        .iter()
        .map(|m| decoder.decode(m).expect("decodes"))
        .flat_map(|m| {
            stats_records(&m)
                .iter()
                .filter_map(|r| match value(r, "notSentFlowTotalCount") {
                    Some(ipfixrw::parser::DataRecordValue::U64(n)) => Some(*n),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .max()
        .expect("a statistics record");
    let s = exporter_stats(&socket);
    let lost = s["records_lost"].as_u64().expect("records_lost");
    assert!(
        lost >= 1 && not_sent >= lost,
        "statistics record {not_sent} vs agent's state {lost}: {s}"
    );
    assert!(s["reconnects"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["connected"], true, "{s}");
    let health = lumen_api::client::Client::new(&socket, Duration::from_secs(2))
        .get::<serde_json::Value>(lumen_api::paths::HEALTHZ)
        .expect("the agent is alive");
    assert_eq!(health["status"], "ok");
    drop(guard);
}
