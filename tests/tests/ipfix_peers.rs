//! Lumen's IPFIX export as the collectors and decoders people run read it: tshark
//! (UDP and TCP, with our Lua dissector naming the enterprise elements), nfcapd +
//! nfdump, pmacct's nfacctd with our `primitives.lst`, python-ipfix with our IESpec
//! file, and libfixbuf's ipfixDump with our element file. Each test starts the real
//! peer on loopback, exports known flows with `IpfixExporter`, stops the peer and
//! compares what the peer decoded with the flows.
//!
//! A missing peer fails the test with the command that installs it: CI installs
//! them all (`cargo xtask deps`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lumen_api::flow::{
    Counters, DropReason, EndReason, FlowEndpoint, FlowType, PolicyRef, Protocol, RuleAction,
    TcpFlags, Verdict,
};
use lumen_api::{Flow, Identity};
use lumen_exporter::{Collector, ExporterStats, IpfixConfig, IpfixExporter, Transport};
use lumen_tests::harness;
use lumen_tests::peers::{self, Daemon, TcpSink, TempDir, UdpSink, repo_file, tool, wait_until};
use serde_json::Value;

/// The observation domain the tests export in.
const ODID: u32 = 4242;
const FLOW_TEMPLATE: u64 = 256;
const STATS_TEMPLATE: u64 = 257;
const LUMEN_PEN: u32 = 32473;
const ANTREA_PEN: u32 = 56506;
const REVERSE_PEN: u32 = 29305;

const LUA_DISSECTOR: &str = "dashboards/collectors/wireshark/lumen_ipfix.lua";
const PMACCT_PRIMITIVES: &str = "dashboards/collectors/pmacct/primitives.lst";
const PMACCT_CONF: &str = "dashboards/collectors/pmacct/nfacctd.conf";
const LIBFIXBUF_ELEMENTS: &str = "dashboards/collectors/libfixbuf/lumen-elements.xml";
const PYTHON_IESPEC: &str = "dashboards/collectors/python-ipfix/lumen.iespec";
const PYTHON_DECODER: &str = "tests/peers/ipfix_decode.py";

// === The contract ===

/// The flow template's elements as documented (name, enterprise, id, length; 65535
/// is variable length). Order is not part of the contract.
const CONTRACT: &[(&str, u32, u16, u16)] = &[
    ("flowStartMilliseconds", 0, 152, 8),
    ("flowEndMilliseconds", 0, 153, 8),
    ("sourceIPv4Address", 0, 8, 4),
    ("destinationIPv4Address", 0, 12, 4),
    ("sourceTransportPort", 0, 7, 2),
    ("destinationTransportPort", 0, 11, 2),
    ("protocolIdentifier", 0, 4, 1),
    ("icmpTypeCodeIPv4", 0, 32, 2),
    ("packetDeltaCount", 0, 2, 8),
    ("octetDeltaCount", 0, 1, 8),
    ("packetTotalCount", 0, 86, 8),
    ("octetTotalCount", 0, 85, 8),
    ("tcpControlBits", 0, 6, 1),
    ("flowEndReason", 0, 136, 1),
    ("reversePacketDeltaCount", REVERSE_PEN, 2, 8),
    ("reverseOctetDeltaCount", REVERSE_PEN, 1, 8),
    ("reversePacketTotalCount", REVERSE_PEN, 86, 8),
    ("reverseOctetTotalCount", REVERSE_PEN, 85, 8),
    ("reverseTcpControlBits", REVERSE_PEN, 6, 1),
    ("sourcePodNamespace", ANTREA_PEN, 100, 65535),
    ("sourcePodName", ANTREA_PEN, 101, 65535),
    ("destinationPodNamespace", ANTREA_PEN, 102, 65535),
    ("destinationPodName", ANTREA_PEN, 103, 65535),
    ("sourceNodeName", ANTREA_PEN, 104, 65535),
    ("destinationNodeName", ANTREA_PEN, 105, 65535),
    ("sourcePodLabels", ANTREA_PEN, 143, 65535),
    ("destinationPodLabels", ANTREA_PEN, 144, 65535),
    ("flowType", ANTREA_PEN, 137, 1),
    ("ingressNetworkPolicyName", ANTREA_PEN, 110, 65535),
    ("ingressNetworkPolicyNamespace", ANTREA_PEN, 111, 65535),
    ("ingressNetworkPolicyType", ANTREA_PEN, 115, 1),
    ("ingressNetworkPolicyRuleName", ANTREA_PEN, 141, 65535),
    ("ingressNetworkPolicyRuleAction", ANTREA_PEN, 139, 1),
    ("egressNetworkPolicyName", ANTREA_PEN, 112, 65535),
    ("egressNetworkPolicyNamespace", ANTREA_PEN, 113, 65535),
    ("egressNetworkPolicyType", ANTREA_PEN, 118, 1),
    ("egressNetworkPolicyRuleName", ANTREA_PEN, 142, 65535),
    ("egressNetworkPolicyRuleAction", ANTREA_PEN, 140, 1),
    ("lumenVerdict", LUMEN_PEN, 1, 1),
    ("lumenDropReason", LUMEN_PEN, 2, 1),
    ("lumenTag", LUMEN_PEN, 3, 4),
    ("lumenCorrelationId", LUMEN_PEN, 4, 8),
    ("lumenCommunityId", LUMEN_PEN, 5, 65535),
    ("lumenSourceIdentity", LUMEN_PEN, 6, 4),
    ("lumenDestinationIdentity", LUMEN_PEN, 7, 4),
    ("lumenTraced", LUMEN_PEN, 8, 1),
    ("lumenObservationNode", LUMEN_PEN, 9, 65535),
];

/// The contract's name of the element `pen`/`id`.
fn contract_name(pen: u32, id: u16) -> Option<&'static str> {
    CONTRACT
        .iter()
        .find(|(_, p, i, _)| *p == pen && *i == id)
        .map(|(name, ..)| *name)
}

// === The flows every test exports ===

fn pod(ip: [u8; 4], port: u16, identity: u32, ns: &str, name: &str, node: &str) -> FlowEndpoint {
    FlowEndpoint {
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        node: Some(node.into()),
        ..FlowEndpoint::bare(Ipv4Addr::from(ip), port, Identity(identity))
    }
}

fn counters(packets: u64, bytes: u64) -> Counters {
    Counters { packets, bytes }
}

/// A TCP pod → pod flow with every string and label set (the destination's labels
/// are longer than 255 bytes: the three-octet length form), a UDP pod → outside
/// flow with no destination metadata, an ICMP echo from outside, and a TCP flow
/// dropped by an ingress default deny. Timestamps carry sub-millisecond digits and
/// delta counts differ from total counts, so a unit or counter mix-up shows.
fn sample_flows() -> Vec<Flow> {
    let mut web = pod([10, 244, 1, 5], 43512, 261, "shop", "web-7f9c4", "node-1");
    web.labels = BTreeMap::from([
        ("app".into(), "web".into()),
        ("tier".into(), "frontend".into()),
    ]);
    let mut db = pod([10, 244, 2, 9], 5432, 777, "db", "postgres-0", "node-2");
    db.labels = (0..6)
        .map(|i| {
            (
                format!("example.com/label-{i}"),
                format!("value-{i}-{}", "x".repeat(40)),
            )
        })
        .chain([("app".into(), "postgres".into())])
        .collect();
    let tcp = Flow {
        node: "node-1".into(),
        start_ns: 1_700_000_000_123_400_000,
        end_ns: 1_700_000_004_567_100_000,
        protocol: Protocol::TCP,
        source: web.clone(),
        destination: db,
        forward: counters(120, 95_000),
        reverse: counters(100, 1_200_000),
        forward_delta: counters(20, 15_000),
        reverse_delta: counters(18, 200_000),
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN),
        reverse_tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::PSH),
        icmp_type_code: None,
        verdict: Verdict::Forwarded,
        drop_reason: None,
        ingress_policy: Some(PolicyRef {
            namespace: "db".into(),
            name: "allow-web-to-db".into(),
            rule: "ingress[0]".into(),
            action: RuleAction::Allow,
        }),
        egress_policy: Some(PolicyRef {
            namespace: "shop".into(),
            name: "web-egress".into(),
            rule: "egress[1]".into(),
            action: RuleAction::Allow,
        }),
        flow_type: FlowType::InterNode,
        tag: Some(261 | 1 << 23),
        traced: true,
        end_reason: Some(EndReason::EndOfFlow),
        correlation_id: "8f3a2b1c0d4e5f67".into(),
        community_id: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into(),
    };
    let mut client = pod(
        [10, 244, 1, 6],
        53211,
        262,
        "shop",
        "checkout-5d8",
        "node-1",
    );
    client.labels.clear();
    let udp = Flow {
        start_ns: 1_700_000_010_000_200_000,
        end_ns: 1_700_000_010_042_300_000,
        protocol: Protocol::UDP,
        source: client,
        destination: FlowEndpoint::bare(Ipv4Addr::new(203, 0, 113, 53), 53, Identity::WORLD),
        forward: counters(2, 140),
        reverse: counters(2, 380),
        forward_delta: counters(2, 140),
        reverse_delta: counters(2, 380),
        tcp_flags: TcpFlags(0),
        reverse_tcp_flags: TcpFlags(0),
        ingress_policy: None,
        egress_policy: None,
        flow_type: FlowType::ToExternal,
        tag: None,
        traced: false,
        end_reason: None,
        correlation_id: "00000000000000ff".into(),
        community_id: "1:udpCommunityIdExample0000000=".into(),
        ..tcp.clone()
    };
    let icmp = Flow {
        node: "node-2".into(),
        start_ns: 1_700_000_020_500_000_000,
        end_ns: 1_700_000_022_500_400_000,
        protocol: Protocol::ICMP,
        source: FlowEndpoint::bare(Ipv4Addr::new(203, 0, 113, 10), 0, Identity::WORLD),
        destination: pod([10, 244, 2, 7], 0, 519, "default", "echo-0", "node-2"),
        forward: counters(3, 252),
        reverse: counters(3, 252),
        forward_delta: counters(1, 84),
        reverse_delta: counters(1, 84),
        tcp_flags: TcpFlags(0),
        reverse_tcp_flags: TcpFlags(0),
        icmp_type_code: Some(8 << 8),
        ingress_policy: None,
        egress_policy: None,
        flow_type: FlowType::FromExternal,
        tag: None,
        traced: false,
        end_reason: Some(EndReason::IdleTimeout),
        correlation_id: "0123456789abcdef".into(),
        community_id: "1:icmpCommunityIdExample000000=".into(),
        ..tcp.clone()
    };
    let dropped = Flow {
        node: "node-1".into(),
        start_ns: 1_700_000_030_000_000_000,
        end_ns: 1_700_000_033_000_000_000,
        protocol: Protocol::TCP,
        source: pod([10, 244, 2, 11], 51000, 780, "tools", "scanner", "node-2"),
        destination: web,
        forward: counters(3, 180),
        reverse: counters(0, 0),
        forward_delta: counters(3, 180),
        reverse_delta: counters(0, 0),
        tcp_flags: TcpFlags(TcpFlags::SYN),
        reverse_tcp_flags: TcpFlags(0),
        icmp_type_code: None,
        verdict: Verdict::Dropped,
        drop_reason: Some(DropReason::Policy),
        ingress_policy: Some(PolicyRef {
            namespace: "shop".into(),
            name: "default-deny".into(),
            rule: String::new(),
            action: RuleAction::Drop,
        }),
        egress_policy: None,
        flow_type: FlowType::InterNode,
        tag: Some(780),
        traced: false,
        end_reason: Some(EndReason::IdleTimeout),
        correlation_id: "fedcba9876543210".into(),
        community_id: "1:droppedCommunityIdExample000=".into(),
    };
    vec![tcp, udp, icmp, dropped]
}

/// A decoded or expected element value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V {
    U(u64),
    S(String),
}

impl V {
    fn s(s: &str) -> Self {
        Self::S(s.to_owned())
    }
}

impl std::fmt::Display for V {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::U(n) => write!(f, "{n}"),
            Self::S(s) => write!(f, "{s:?}"),
        }
    }
}

/// What every element of `flow`'s record must be, by the contract: forward is
/// source → destination; absent metadata is an empty string or 0; labels are
/// Antrea's JSON object (empty for an endpoint that is not a pod); a policy is a
/// Kubernetes NetworkPolicy (type 1); a record without an end reason is an
/// active-timeout snapshot (2); the correlation id is the hex number it spells.
fn expected(flow: &Flow) -> BTreeMap<&'static str, V> {
    let ms = |ns: u64| V::U(ns / 1_000_000);
    let opt = |s: &Option<String>| V::S(s.clone().unwrap_or_default());
    let labels = |e: &FlowEndpoint| {
        V::S(if e.pod.is_some() {
            serde_json::to_string(&e.labels).expect("labels serialise")
        } else {
            String::new()
        })
    };
    let policy = |p: &Option<PolicyRef>| match p {
        Some(p) => (
            V::s(&p.name),
            V::s(&p.namespace),
            V::U(1),
            V::s(&p.rule),
            V::U(match p.action {
                RuleAction::Allow => 1,
                RuleAction::Drop => 2,
            }),
        ),
        None => (V::s(""), V::s(""), V::U(0), V::s(""), V::U(0)),
    };
    let (s, d) = (&flow.source, &flow.destination);
    let (in_name, in_ns, in_type, in_rule, in_action) = policy(&flow.ingress_policy);
    let (eg_name, eg_ns, eg_type, eg_rule, eg_action) = policy(&flow.egress_policy);
    BTreeMap::from([
        ("flowStartMilliseconds", ms(flow.start_ns)),
        ("flowEndMilliseconds", ms(flow.end_ns)),
        ("sourceIPv4Address", V::S(s.ip.to_string())),
        ("destinationIPv4Address", V::S(d.ip.to_string())),
        ("sourceTransportPort", V::U(s.port.into())),
        ("destinationTransportPort", V::U(d.port.into())),
        ("protocolIdentifier", V::U(flow.protocol.0.into())),
        (
            "icmpTypeCodeIPv4",
            V::U(flow.icmp_type_code.unwrap_or(0).into()),
        ),
        ("packetDeltaCount", V::U(flow.forward_delta.packets)),
        ("octetDeltaCount", V::U(flow.forward_delta.bytes)),
        ("packetTotalCount", V::U(flow.forward.packets)),
        ("octetTotalCount", V::U(flow.forward.bytes)),
        ("tcpControlBits", V::U(flow.tcp_flags.0.into())),
        (
            "flowEndReason",
            V::U(flow.end_reason.map_or(2, EndReason::ipfix).into()),
        ),
        ("reversePacketDeltaCount", V::U(flow.reverse_delta.packets)),
        ("reverseOctetDeltaCount", V::U(flow.reverse_delta.bytes)),
        ("reversePacketTotalCount", V::U(flow.reverse.packets)),
        ("reverseOctetTotalCount", V::U(flow.reverse.bytes)),
        (
            "reverseTcpControlBits",
            V::U(flow.reverse_tcp_flags.0.into()),
        ),
        ("sourcePodNamespace", opt(&s.namespace)),
        ("sourcePodName", opt(&s.pod)),
        ("destinationPodNamespace", opt(&d.namespace)),
        ("destinationPodName", opt(&d.pod)),
        ("sourceNodeName", opt(&s.node)),
        ("destinationNodeName", opt(&d.node)),
        ("sourcePodLabels", labels(s)),
        ("destinationPodLabels", labels(d)),
        ("flowType", V::U(flow.flow_type.antrea().into())),
        ("ingressNetworkPolicyName", in_name),
        ("ingressNetworkPolicyNamespace", in_ns),
        ("ingressNetworkPolicyType", in_type),
        ("ingressNetworkPolicyRuleName", in_rule),
        ("ingressNetworkPolicyRuleAction", in_action),
        ("egressNetworkPolicyName", eg_name),
        ("egressNetworkPolicyNamespace", eg_ns),
        ("egressNetworkPolicyType", eg_type),
        ("egressNetworkPolicyRuleName", eg_rule),
        ("egressNetworkPolicyRuleAction", eg_action),
        (
            "lumenVerdict",
            V::U(match flow.verdict {
                Verdict::Forwarded => 1,
                Verdict::Dropped => 2,
            }),
        ),
        (
            "lumenDropReason",
            V::U(flow.drop_reason.map_or(0, DropReason::code).into()),
        ),
        ("lumenTag", V::U(flow.tag.unwrap_or(0).into())),
        (
            "lumenCorrelationId",
            V::U(u64::from_str_radix(&flow.correlation_id, 16).expect("hex correlation id")),
        ),
        ("lumenCommunityId", V::s(&flow.community_id)),
        ("lumenSourceIdentity", V::U(s.identity.0.into())),
        ("lumenDestinationIdentity", V::U(d.identity.0.into())),
        ("lumenTraced", V::U(flow.traced.into())),
        ("lumenObservationNode", V::s(&flow.node)),
    ])
}

/// The 5-tuple that tells the sample flows apart.
fn flow_key(src: &str, sport: u64, dst: &str, dport: u64, proto: u64) -> String {
    format!("{src}:{sport} > {dst}:{dport} proto {proto}")
}

fn key_of(flow: &Flow) -> String {
    flow_key(
        &flow.source.ip.to_string(),
        flow.source.port.into(),
        &flow.destination.ip.to_string(),
        flow.destination.port.into(),
        flow.protocol.0.into(),
    )
}

/// Compare what `peer` decoded for each flow with `expected`, element by element
/// (only the elements in `names`); one panic lists every difference.
#[track_caller]
fn assert_records(
    peer: &str,
    flows: &[Flow],
    decoded: &BTreeMap<String, BTreeMap<String, V>>,
    names: &[&str],
) {
    let mut problems = Vec::new();
    for flow in flows {
        let key = key_of(flow);
        let Some(record) = decoded.get(&key) else {
            problems.push(format!("no record for {key}"));
            continue;
        };
        let want = expected(flow);
        for name in names {
            let want = &want[name];
            match record.get(*name) {
                None => problems.push(format!("{key}: {name} missing")),
                Some(got) if got != want => {
                    problems.push(format!("{key}: {name} expected {want}, decoded {got}"))
                }
                Some(_) => {}
            }
        }
    }
    let extra: Vec<&String> = decoded
        .keys()
        .filter(|k| !flows.iter().any(|f| &key_of(f) == *k))
        .collect();
    if !extra.is_empty() {
        problems.push(format!("records of no exported flow: {extra:?}"));
    }
    assert!(
        problems.is_empty(),
        "{peer} decoded differently:\n  {}",
        problems.join("\n  ")
    );
}

/// A decoded record keyed by contract name → its flow key.
fn keyed(record: &BTreeMap<String, V>) -> String {
    let u = |name: &str| match record.get(name) {
        Some(V::U(n)) => *n,
        other => panic!("{name} is {other:?} in {record:?}"),
    };
    let s = |name: &str| match record.get(name) {
        Some(V::S(s)) => s.clone(),
        other => panic!("{name} is {other:?} in {record:?}"),
    };
    flow_key(
        &s("sourceIPv4Address"),
        u("sourceTransportPort"),
        &s("destinationIPv4Address"),
        u("destinationTransportPort"),
        u("protocolIdentifier"),
    )
}

/// Index records by flow key; a flow exported once must be decoded once.
#[track_caller]
fn by_key(peer: &str, records: Vec<BTreeMap<String, V>>) -> BTreeMap<String, BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    for record in records {
        let key = keyed(&record);
        assert!(
            out.insert(key.clone(), record).is_none(),
            "{peer}: {key} decoded twice"
        );
    }
    out
}

fn all_names() -> Vec<&'static str> {
    CONTRACT.iter().map(|(name, ..)| *name).collect()
}

// === Running the exporter ===

/// Export `flows` to `collector` and shut the exporter down, which sends what is
/// buffered. The statistics interval is short so a reliability statistics record
/// follows the flows. Returns the exporter's own statistics.
fn export(collector: SocketAddr, transport: Transport, flows: &[Flow]) -> ExporterStats {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let config = IpfixConfig {
            collectors: vec![Collector {
                addr: collector,
                transport,
            }],
            observation_domain_id: ODID,
            stats_interval: Duration::from_millis(300),
            ..IpfixConfig::default()
        };
        let exporter = IpfixExporter::start(config).expect("the exporter starts");
        for flow in flows {
            exporter.export(flow);
        }
        // Long enough for the flows and then a statistics record to go out.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let stats = exporter.stats();
        exporter.shutdown().await;
        stats
    })
}

// === tshark ===

/// A tshark capture of one port on loopback, written to a pcap.
struct Capture {
    daemon: Daemon,
    pcap: std::path::PathBuf,
}

impl Capture {
    fn start(dir: &TempDir, proto: &str, port: u16) -> Self {
        let pcap = dir.join("capture.pcap");
        let mut cmd = Command::new(tool("tshark"));
        cmd.args([
            "-n",
            "-i",
            "lo",
            "-f",
            &format!("{proto} port {port}"),
            "-w",
        ])
        .arg(&pcap);
        let mut daemon = Daemon::spawn("tshark", &mut cmd, dir.path());
        daemon.wait_for_output("Capturing on", Duration::from_secs(20));
        // tshark says so before dumpcap has the interface open.
        std::thread::sleep(Duration::from_millis(1500));
        Self { daemon, pcap }
    }

    /// Stop capturing and decode the pcap as IPFIX on `port`, with our dissector.
    fn decode(self, proto: &str, port: u16) -> Vec<Value> {
        // Loopback delivery is immediate; give dumpcap a moment to write it out.
        std::thread::sleep(Duration::from_millis(500));
        let out = self.daemon.stop();
        assert!(
            self.pcap.exists(),
            "tshark wrote no capture: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lua = repo_file(LUA_DISSECTOR);
        let out = Command::new(tool("tshark"))
            .args(["-n", "-r"])
            .arg(&self.pcap)
            .arg("-X")
            .arg(format!("lua_script:{}", lua.display()))
            .args(["-d", &format!("{proto}.port=={port},cflow")])
            .args(["-T", "json", "--no-duplicate-keys"])
            .output()
            .expect("tshark reads the capture");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tshark -r failed: {stderr}");
        // A Lua error does not fail tshark; it only says so.
        assert!(
            !stderr.contains("Lua") && !stderr.contains("lua"),
            "the Lua dissector failed: {stderr}"
        );
        serde_json::from_slice(&out.stdout).expect("tshark -T json is JSON")
    }
}

/// A JSON value that `--no-duplicate-keys` turns into an array when repeated.
fn many(v: Option<&Value>) -> Vec<&Value> {
    match v {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn int(v: &Value) -> u64 {
    let t = text(v);
    let parsed = match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("not a number: {t:?}"))
}

/// `Nov 14, 2023 22:13:20.123000000 UTC` → milliseconds since the epoch.
fn tshark_time_ms(t: &str) -> u64 {
    let parts: Vec<&str> = t.split_whitespace().collect();
    let [month, day, year, time, "UTC"] = parts[..] else {
        panic!("unexpected tshark time {t:?}");
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)
    .expect("month name") as u64
        + 1;
    let day: u64 = day.trim_end_matches(',').parse().expect("day");
    let year: u64 = year.parse().expect("year");
    let (hms, frac) = time.split_once('.').expect("fractional seconds");
    let hms: Vec<u64> = hms.split(':').map(|x| x.parse().expect("h:m:s")).collect();
    let ms: u64 = frac[..3].parse().expect("milliseconds");
    (days_from_civil(year, month, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) * 1000 + ms
}

/// Days since 1970-01-01 of a Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What tshark saw: per IPFIX message its sequence number and data record count,
/// the templates by set, and the flow records with IANA and enterprise elements.
#[derive(Debug, Default)]
struct TsharkView {
    messages: Vec<(u64, u64)>,
    templates: BTreeSet<(u64, u64)>,
    flow_template: Vec<(u32, u16, u16)>,
    records: Vec<BTreeMap<String, V>>,
}

/// The cflow field and the IE names it stands for, forward first.
const CFLOW_FIELDS: &[(&str, &str, Option<&str>)] = &[
    ("cflow.srcaddr", "sourceIPv4Address", None),
    ("cflow.dstaddr", "destinationIPv4Address", None),
    ("cflow.srcport", "sourceTransportPort", None),
    ("cflow.dstport", "destinationTransportPort", None),
    ("cflow.protocol", "protocolIdentifier", None),
    ("cflow.icmp_type_code_ipv4", "icmpTypeCodeIPv4", None),
    (
        "cflow.packets",
        "packetDeltaCount",
        Some("reversePacketDeltaCount"),
    ),
    (
        "cflow.octets",
        "octetDeltaCount",
        Some("reverseOctetDeltaCount"),
    ),
    (
        "cflow.permanent_packets",
        "packetTotalCount",
        Some("reversePacketTotalCount"),
    ),
    (
        "cflow.permanent_octets",
        "octetTotalCount",
        Some("reverseOctetTotalCount"),
    ),
    (
        "cflow.tcpflags",
        "tcpControlBits",
        Some("reverseTcpControlBits"),
    ),
    ("cflow.flow_end_reason", "flowEndReason", None),
];

/// The members of `obj` named `<prefix><number>…` ("Set 2 [id=256]", "Flow 10",
/// "Field (3/47)"), in the order of their numbers: tshark's order, which
/// serde_json's sorted maps lose ("Flow 10" < "Flow 2").
fn numbered<'a>(obj: &'a Value, prefix: &str) -> Vec<(u64, &'a Value)> {
    let mut out: Vec<(u64, &Value)> = obj
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {obj}"))
        .iter()
        .filter_map(|(name, v)| {
            let digits: String = name
                .strip_prefix(prefix)?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((digits.parse().ok()?, v))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

fn tshark_view(packets: &[Value]) -> TsharkView {
    let mut view = TsharkView::default();
    for packet in packets {
        let layers = &packet["_source"]["layers"];
        let mut flows = Vec::new();
        for message in many(layers.get("cflow")) {
            let Some(seq) = message.get("cflow.sequence") else {
                continue;
            };
            assert_eq!(
                int(&message["cflow.od_id"]),
                u64::from(ODID),
                "observation domain"
            );
            let mut data_records = 0;
            for (_, set) in numbered(message, "Set ") {
                let set_id = int(&set["cflow.flowset_id"]);
                if set_id == 2 || set_id == 3 {
                    read_templates(set, set_id, &mut view);
                    continue;
                }
                for (_, rec) in numbered(set, "Flow ") {
                    data_records += 1;
                    if set_id == FLOW_TEMPLATE {
                        flows.push(cflow_record(rec, &view.flow_template));
                    }
                }
            }
            view.messages.push((int(seq), data_records));
        }
        // Our dissector's records, in the same order as cflow's in this frame.
        let mut lua = Vec::new();
        for tree in many(layers.get("lumen_ipfix")) {
            lua.extend(many(tree.get("lumen_ipfix.record")));
        }
        assert_eq!(
            lua.len(),
            flows.len(),
            "the Lua dissector named {} records, cflow decoded {}",
            lua.len(),
            flows.len()
        );
        for (mut record, rec) in flows.into_iter().zip(lua) {
            for (field, value) in rec.as_object().expect("a record is an object") {
                let Some(name) = field.strip_prefix("lumen_ipfix.") else {
                    continue;
                };
                if name == "template_id" {
                    assert_eq!(
                        int(value),
                        FLOW_TEMPLATE,
                        "a Lua record of another template"
                    );
                    continue;
                }
                let kind = CONTRACT.iter().find(|(n, ..)| *n == name);
                let (_, _, _, len) = kind.unwrap_or_else(|| panic!("unknown field {field}"));
                let value = if *len == 65535 {
                    V::S(text(value).to_owned())
                } else {
                    V::U(int(value))
                };
                record.insert(name.to_owned(), value);
            }
            view.records.push(record);
        }
    }
    view
}

fn read_templates(set: &Value, set_id: u64, view: &mut TsharkView) {
    for (name, template) in set.as_object().expect("a set is an object") {
        if !name.contains("Template (Id = ") {
            continue;
        }
        let tid = int(&template["cflow.template_id"]);
        view.templates.insert((set_id, tid));
        if tid != FLOW_TEMPLATE {
            continue;
        }
        let mut fields = Vec::new();
        for (_, field) in numbered(template, "Field (") {
            let pen = field
                .get("cflow.template_ipfix_field_pen")
                .map_or(0, |p| int(p) as u32);
            // Elements of enterprises cflow does not know have a field of their own.
            let id = field
                .get("cflow.template_ipfix_field_type")
                .or_else(|| field.get("cflow.template_ipfix_field_type_enterprise"))
                .map(int)
                .unwrap_or_else(|| panic!("no element id in {field}")) as u16;
            let len = int(&field["cflow.template_field_length"]) as u16;
            fields.push((pen, id, len));
        }
        view.flow_template = fields;
    }
}

/// One flow record's IANA and RFC 5103 elements under their contract names. A
/// cflow field repeated for the reverse direction is told apart by the position
/// of its element in the template.
fn cflow_record(rec: &Value, template: &[(u32, u16, u16)]) -> BTreeMap<String, V> {
    assert!(!template.is_empty(), "a flow record before its template");
    let mut out = BTreeMap::new();
    let times = &rec["cflow.timedelta_tree"];
    out.insert(
        "flowStartMilliseconds".to_owned(),
        V::U(tshark_time_ms(text(&times["cflow.abstimestart"]))),
    );
    out.insert(
        "flowEndMilliseconds".to_owned(),
        V::U(tshark_time_ms(text(&times["cflow.abstimeend"]))),
    );
    for (field, forward, reverse) in CFLOW_FIELDS {
        let values = many(rec.get(*field));
        let Some(reverse) = reverse else {
            if let Some(v) = values.first() {
                let value = if field.ends_with("addr") {
                    V::S(text(v).to_owned())
                } else {
                    V::U(int(v))
                };
                out.insert((*forward).to_owned(), value);
            }
            continue;
        };
        // The IANA id of this field's element, from the forward name's contract row.
        let id = CONTRACT
            .iter()
            .find(|(n, ..)| n == forward)
            .map(|(_, _, id, _)| *id)
            .expect("contract row");
        let order = template
            .iter()
            .filter(|(pen, i, _)| *i == id && (*pen == 0 || *pen == REVERSE_PEN));
        for ((pen, ..), v) in order.zip(values) {
            let name = if *pen == REVERSE_PEN {
                reverse
            } else {
                forward
            };
            out.insert((*name).to_owned(), V::U(int(v)));
        }
    }
    out
}

fn tshark_test(transport: Transport) {
    if !harness::require_root("tshark capture on lo") {
        return;
    }
    let proto = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let dir = TempDir::new(&format!("tshark-{proto}"));
    let flows = sample_flows();
    // A collector must own the port: over UDP so that no ICMP port unreachable
    // comes back, over TCP to accept the connection.
    let (udp, tcp);
    let addr = match transport {
        Transport::Udp => {
            udp = UdpSink::bind();
            udp.addr()
        }
        Transport::Tcp => {
            tcp = TcpSink::bind();
            tcp.addr()
        }
    };
    let port = addr.port();
    let capture = Capture::start(&dir, proto, port);
    let stats = export(addr, transport, &flows);
    let packets = capture.decode(proto, port);
    let view = tshark_view(&packets);

    assert!(
        view.templates.contains(&(2, FLOW_TEMPLATE)),
        "no flow template (set 2, id 256) in {:?}",
        view.templates
    );
    assert!(
        view.templates.contains(&(3, STATS_TEMPLATE)),
        "no options template (set 3, id 257) in {:?}",
        view.templates
    );
    let mut got: Vec<(u32, u16, u16)> = view.flow_template.clone();
    got.sort_unstable();
    let mut want: Vec<(u32, u16, u16)> = CONTRACT.iter().map(|(_, p, i, l)| (*p, *i, *l)).collect();
    want.sort_unstable();
    assert_eq!(got, want, "template 256 is not the documented one");

    // RFC 7011 §3.1: a message's sequence number counts the data records sent
    // before it in the session.
    assert!(!view.messages.is_empty(), "tshark saw no IPFIX message");
    assert_eq!(view.messages[0].0, 0, "the first message's sequence number");
    for pair in view.messages.windows(2) {
        let ((seq, records), (next, _)) = (pair[0], pair[1]);
        assert_eq!(
            next,
            seq + records,
            "sequence numbers: a message with {records} data records at {seq} is followed by {next} (all: {:?})",
            view.messages
        );
    }
    let data_records: u64 = view.messages.iter().map(|(_, n)| n).sum();
    assert!(
        data_records > flows.len() as u64,
        "expected the flows and a statistics record, saw {data_records} data records"
    );

    let decoded = by_key("tshark", view.records);
    assert_records("tshark", &flows, &decoded, &all_names());
    let collector = &stats.collectors[0];
    assert_eq!(
        (collector.records_sent, collector.records_lost),
        (flows.len() as u64, 0),
        "the exporter's own counts: {stats:?}"
    );
}

#[test]
fn tshark_decodes_every_field_over_udp() {
    tshark_test(Transport::Udp);
}

#[test]
fn tshark_decodes_every_field_over_tcp() {
    tshark_test(Transport::Tcp);
}

// === nfcapd + nfdump ===

/// nfdump is what many sites aggregate flows with: it sums the packet and byte
/// columns over records, so they must be the delta counts. nfdump 1.7 keeps one
/// of a delta and a total count of the same direction, the one later in the
/// template.
#[test]
fn nfdump_reads_flows_exported_over_udp() {
    let (nfcapd, nfdump) = (tool("nfcapd"), tool("nfdump"));
    let dir = TempDir::new("nfdump");
    let flows = sample_flows();
    let port = peers::free_port(false);
    let mut daemon = Daemon::spawn(
        "nfcapd",
        Command::new(nfcapd)
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-w"])
            .arg(dir.path()),
        dir.path(),
    );
    daemon.wait_for_output("Startup", Duration::from_secs(10));
    export(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Transport::Udp,
        &flows,
    );
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM makes nfcapd close its current file under its final name.
    let out = daemon.stop();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the flow directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nfcapd.2"))
        })
        .collect();
    assert!(!files.is_empty(), "nfcapd wrote no file: {log}");

    let mut records = Vec::new();
    for file in files {
        let out = Command::new(&nfdump)
            .env("TZ", "UTC")
            .arg("-r")
            .arg(&file)
            .args(["-o", "json"])
            .output()
            .expect("nfdump runs");
        assert!(
            out.status.success(),
            "nfdump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "nfdump -o json ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        for rec in json.as_array().expect("an array of records") {
            records.push(nfdump_record(rec));
        }
    }
    let decoded = by_key("nfdump", records);
    assert_records(
        "nfdump",
        &flows,
        &decoded,
        &[
            "sourceIPv4Address",
            "destinationIPv4Address",
            "sourceTransportPort",
            "destinationTransportPort",
            "protocolIdentifier",
            "icmpTypeCodeIPv4",
            "flowStartMilliseconds",
            "flowEndMilliseconds",
            "packetDeltaCount",
            "octetDeltaCount",
            "reversePacketDeltaCount",
            "reverseOctetDeltaCount",
        ],
    );
}

/// `2023-11-14T22:13:20.123` (UTC) → milliseconds since the epoch.
fn iso_ms(t: &str) -> u64 {
    let (date, time) = t
        .split_once(['T', ' '])
        .unwrap_or_else(|| panic!("time {t:?}"));
    let ymd: Vec<u64> = date.split('-').map(|x| x.parse().expect("date")).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let hms: Vec<u64> = hms.split(':').map(|x| x.parse().expect("time")).collect();
    let ms: u64 = format!("{frac:0<3}")[..3].parse().expect("milliseconds");
    (days_from_civil(ymd[0], ymd[1], ymd[2]) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) * 1000
        + ms
}

/// One nfdump JSON record under contract names. nfdump has ports only for
/// protocols with ports, and ICMP type and code only for ICMP; absent is 0.
fn nfdump_record(rec: &Value) -> BTreeMap<String, V> {
    let opt = |k: &str| rec.get(k).and_then(Value::as_u64);
    let n = |k: &str| opt(k).unwrap_or_else(|| panic!("nfdump record without {k}: {rec}"));
    let s = |k: &str| {
        rec.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("nfdump record without {k}: {rec}"))
            .to_owned()
    };
    let icmp = opt("icmp_type").map_or(0, |t| t << 8 | opt("icmp_code").unwrap_or(0));
    BTreeMap::from([
        ("sourceIPv4Address".to_owned(), V::S(s("src4_addr"))),
        ("destinationIPv4Address".to_owned(), V::S(s("dst4_addr"))),
        (
            "sourceTransportPort".to_owned(),
            V::U(opt("src_port").unwrap_or(0)),
        ),
        (
            "destinationTransportPort".to_owned(),
            V::U(opt("dst_port").unwrap_or(0)),
        ),
        ("protocolIdentifier".to_owned(), V::U(n("proto"))),
        ("icmpTypeCodeIPv4".to_owned(), V::U(icmp)),
        (
            "flowStartMilliseconds".to_owned(),
            V::U(iso_ms(&s("first"))),
        ),
        ("flowEndMilliseconds".to_owned(), V::U(iso_ms(&s("last")))),
        ("packetDeltaCount".to_owned(), V::U(n("in_packets"))),
        ("octetDeltaCount".to_owned(), V::U(n("in_bytes"))),
        ("reversePacketDeltaCount".to_owned(), V::U(n("out_packets"))),
        ("reverseOctetDeltaCount".to_owned(), V::U(n("out_bytes"))),
    ])
}

// === pmacct nfacctd ===

/// The primitives of our `primitives.lst`: name → (enterprise, element id).
fn pmacct_primitives(path: &Path) -> BTreeMap<String, (u32, u16)> {
    let text = std::fs::read_to_string(path).expect("read primitives.lst");
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('!') && !l.trim().is_empty())
    {
        let keys: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (pen, id) = keys["field_type"].split_once(':').expect("PEN:ID");
        out.insert(
            keys["name"].to_owned(),
            (pen.parse().expect("PEN"), id.parse().expect("element id")),
        );
    }
    out
}

/// Our example `nfacctd.conf` with this test's port, scratch directory and the
/// repository's `primitives.lst`; each replaced setting must be in the example.
fn pmacct_config(dir: &TempDir, port: u16) -> String {
    let example = std::fs::read_to_string(repo_file(PMACCT_CONF)).expect("read nfacctd.conf");
    let primitives = repo_file(PMACCT_PRIMITIVES);
    let mut lines = Vec::new();
    let mut replaced = BTreeSet::new();
    for line in example.lines() {
        let key = line.split_once(':').map(|(k, _)| k.trim());
        let new = match key {
            Some("nfacctd_ip") => "nfacctd_ip: 127.0.0.1".to_owned(),
            Some("nfacctd_port") => format!("nfacctd_port: {port}"),
            Some("aggregate_primitives") => {
                format!("aggregate_primitives: {}", primitives.display())
            }
            Some("nfacctd_templates_file") => {
                format!(
                    "nfacctd_templates_file: {}",
                    dir.join("templates.json").display()
                )
            }
            Some(k) if k.starts_with("print_output_file[") => {
                format!("{k}: {}", dir.join("flows-%Y%m%d-%H%M.json").display())
            }
            Some(k) if k.starts_with("print_refresh_time[") => format!("{k}: 1"),
            _ => {
                lines.push(line.to_owned());
                continue;
            }
        };
        replaced.insert(
            key.expect("a key")
                .split('[')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
        lines.push(new);
    }
    for key in [
        "nfacctd_ip",
        "nfacctd_port",
        "aggregate_primitives",
        "print_output_file",
        "print_refresh_time",
    ] {
        assert!(
            replaced.contains(key),
            "the example nfacctd.conf has no {key}"
        );
    }
    lines.join("\n") + "\n"
}

/// Every JSON line nfacctd's print plugin wrote to the scratch directory.
fn pmacct_lines(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("read the scratch directory")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("flows-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

/// Every primitive of our `primitives.lst` must decode to the flow's value. pmacct
/// 1.7 numbers repeated element ids across enterprises (an element `PEN:id` after
/// another enterprise's element with the same id is not found by its primitive),
/// which the flow template's order must allow for.
#[test]
fn pmacct_decodes_enterprise_elements_with_our_primitives() {
    let nfacctd = tool("nfacctd");
    let dir = TempDir::new("pmacct");
    let flows = sample_flows();
    let port = peers::free_port(false);
    let conf = dir.join("nfacctd.conf");
    std::fs::write(&conf, pmacct_config(&dir, port)).expect("write nfacctd.conf");
    let mut daemon = Daemon::spawn(
        "nfacctd",
        Command::new(nfacctd).arg("-f").arg(&conf),
        dir.path(),
    )
    .stop_signal(libc::SIGINT);
    daemon.wait_for_output("waiting for NetFlow/IPFIX data", Duration::from_secs(10));
    export(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Transport::Udp,
        &flows,
    );
    // nfacctd writes on its print refresh; on a loaded machine (the whole suite
    // runs labs before this) that has been seen to take over 15 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while pmacct_lines(dir.path()).len() < flows.len() {
        if std::time::Instant::now() > deadline {
            let (out, err) = daemon.output();
            panic!(
                "nfacctd wrote {} of {} flows in 45 s\n{out}\n{err}",
                pmacct_lines(dir.path()).len(),
                flows.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, log) = daemon.output();
    drop(daemon);

    let primitives = pmacct_primitives(&repo_file(PMACCT_PRIMITIVES));
    let mut records = Vec::new();
    for line in pmacct_lines(dir.path()) {
        let s = |k: &str| {
            line.get(k)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_else(|| panic!("nfacctd wrote no {k}: {line}\n{log}"))
        };
        let n = |k: &str| {
            s(k).parse::<u64>()
                .unwrap_or_else(|_| panic!("{k} in {line}"))
        };
        let proto = s("ip_proto");
        let proto = Protocol::parse(&proto)
            .unwrap_or_else(|| panic!("protocol {proto:?}"))
            .0;
        let mut record = BTreeMap::from([
            ("sourceIPv4Address".to_owned(), V::S(s("ip_src"))),
            ("destinationIPv4Address".to_owned(), V::S(s("ip_dst"))),
            ("sourceTransportPort".to_owned(), V::U(n("port_src"))),
            ("destinationTransportPort".to_owned(), V::U(n("port_dst"))),
            ("protocolIdentifier".to_owned(), V::U(proto.into())),
            (
                "flowStartMilliseconds".to_owned(),
                V::U(iso_ms(&s("timestamp_start"))),
            ),
            (
                "flowEndMilliseconds".to_owned(),
                V::U(iso_ms(&s("timestamp_end"))),
            ),
            ("packetDeltaCount".to_owned(), V::U(n("packets"))),
            ("octetDeltaCount".to_owned(), V::U(n("bytes"))),
        ]);
        for (primitive, (pen, id)) in &primitives {
            let name = contract_name(*pen, *id).unwrap_or_else(|| {
                panic!("primitive {primitive} is {pen}:{id}, not a documented element")
            });
            let value = s(primitive);
            let len = CONTRACT.iter().find(|(n, ..)| *n == name).map(|r| r.3);
            let value = if len == Some(65535) {
                V::S(value)
            } else {
                V::U(
                    value
                        .parse()
                        .unwrap_or_else(|_| panic!("{primitive} = {value:?}")),
                )
            };
            record.insert(name.to_owned(), value);
        }
        records.push(record);
    }
    let decoded = by_key("nfacctd", records);
    let mut names: Vec<&str> = vec![
        "sourceIPv4Address",
        "destinationIPv4Address",
        "sourceTransportPort",
        "destinationTransportPort",
        "protocolIdentifier",
        "flowStartMilliseconds",
        "flowEndMilliseconds",
        "packetDeltaCount",
        "octetDeltaCount",
    ];
    names.extend(
        primitives
            .values()
            .map(|(pen, id)| contract_name(*pen, *id).expect("checked above")),
    );
    assert!(
        names.contains(&"sourcePodNamespace") && names.contains(&"destinationPodName"),
        "primitives.lst lacks the pod elements"
    );
    assert_records("nfacctd", &flows, &decoded, &names);
}

// === python-ipfix ===

fn python_test(transport: Transport) {
    let python = peers::python_with("ipfix");
    let dir = TempDir::new("python-ipfix");
    let flows = sample_flows();
    let listen = match transport {
        Transport::Udp => "--udp",
        Transport::Tcp => "--tcp",
    };
    let mut daemon = Daemon::spawn(
        "ipfix_decode",
        Command::new(python)
            .arg(repo_file(PYTHON_DECODER))
            .args([listen, "127.0.0.1:0", "--iespec"])
            .arg(repo_file(PYTHON_IESPEC))
            .args(["--records", &flows.len().to_string(), "--timeout", "30"]),
        dir.path(),
    );
    daemon.wait_for_output("listening", Duration::from_secs(20));
    let (_, err) = daemon.output();
    let port: u16 = err
        .lines()
        .find_map(|l| l.strip_prefix("listening "))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {err:?}"));
    export(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        transport,
        &flows,
    );
    wait_until(
        "the decoder to read every flow",
        Duration::from_secs(20),
        || !daemon.running(),
    );
    let out = daemon.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ipfix_decode.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let mut records = Vec::new();
    for line in stdout.lines() {
        let message: Value = serde_json::from_str(line).expect("a JSON line per message");
        assert_eq!(message["odid"], ODID, "observation domain of {message}");
        for rec in message["records"].as_array().expect("records") {
            if rec["template_id"] != FLOW_TEMPLATE {
                continue;
            }
            let fields = rec["fields"].as_object().expect("fields");
            let unknown: Vec<&String> =
                fields.keys().filter(|k| k.starts_with("_ipfix_")).collect();
            assert!(unknown.is_empty(), "python-ipfix does not know {unknown:?}");
            let record = fields
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => V::S(s.clone()),
                        Value::Number(n) => V::U(n.as_u64().expect("unsigned")),
                        other => panic!("{k} = {other}"),
                    };
                    (k.clone(), v)
                })
                .collect();
            records.push(record);
        }
    }
    let decoded = by_key("python-ipfix", records);
    assert_records("python-ipfix", &flows, &decoded, &all_names());
}

#[test]
fn python_ipfix_decodes_every_element_over_udp() {
    python_test(Transport::Udp);
}

#[test]
fn python_ipfix_decodes_every_element_over_tcp() {
    python_test(Transport::Tcp);
}

// === libfixbuf ipfixDump ===

/// ipfixDump's text: every data record as (template id, element name → value text).
fn ipfixdump_records(text: &str) -> Vec<(u64, BTreeMap<String, String>)> {
    let mut out: Vec<(u64, BTreeMap<String, String>)> = Vec::new();
    let mut in_data = false;
    for line in text.lines() {
        if line.starts_with("--- ") {
            in_data = line.starts_with("--- data record");
            continue;
        }
        if !in_data {
            continue;
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("count:") {
            let tid = rest
                .split_once("tid:")
                .and_then(|(_, t)| t.split_whitespace().next())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("record header {line:?}"));
            out.push((tid, BTreeMap::new()));
        } else if trimmed.starts_with('(')
            && let Some((name, value)) = trimmed
                .split_once(')')
                .and_then(|(_, rest)| rest.split_once(" : "))
        {
            // Strings are "(len: N) text".
            let value = match value.strip_prefix("(len: ") {
                Some(rest) => rest.split_once(") ").map_or("", |(_, v)| v),
                None => value,
            };
            if let Some((_, fields)) = out.last_mut() {
                fields.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }
    out
}

#[test]
fn ipfixdump_names_every_element_with_our_element_file() {
    let ipfixdump = tool("ipfixDump");
    let dir = TempDir::new("ipfixdump");
    let flows = sample_flows();
    let sink = UdpSink::bind();
    export(sink.addr(), Transport::Udp, &flows);
    std::thread::sleep(Duration::from_millis(200));
    let messages = sink.messages();
    // An IPFIX file (RFC 5655) is the messages one after another.
    let file = dir.join("export.ipfix");
    std::fs::write(&file, messages.concat()).expect("write the IPFIX file");
    let out = Command::new(ipfixdump)
        .env("TZ", "UTC")
        .arg("--element-file")
        .arg(repo_file(LIBFIXBUF_ELEMENTS))
        .arg("--in")
        .arg(&file)
        .output()
        .expect("ipfixDump runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ipfixDump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = ipfixdump_records(&text);

    let mut records = Vec::new();
    for (tid, fields) in all.iter().filter(|(tid, _)| *tid == FLOW_TEMPLATE) {
        assert!(
            !fields.contains_key("_alienInformationElement"),
            "an element the element file does not define (template {tid}): {fields:?}"
        );
        let record = fields
            .iter()
            .map(|(name, value)| {
                let len = CONTRACT.iter().find(|(n, ..)| n == name).map(|r| r.3);
                let v = match (name.as_str(), len) {
                    ("flowStartMilliseconds" | "flowEndMilliseconds", _) => V::U(iso_ms(value)),
                    ("sourceIPv4Address" | "destinationIPv4Address", _) | (_, Some(65535)) => {
                        V::S(value.clone())
                    }
                    _ => V::U(
                        value
                            .parse()
                            .unwrap_or_else(|_| panic!("{name} = {value:?}")),
                    ),
                };
                (name.clone(), v)
            })
            .collect();
        records.push(record);
    }
    let decoded = by_key("ipfixDump", records);
    assert_records("ipfixDump", &flows, &decoded, &all_names());

    // The reliability statistics: each counts what went out before its message.
    let stats: Vec<&BTreeMap<String, String>> = all
        .iter()
        .filter(|(tid, _)| *tid == STATS_TEMPLATE)
        .map(|(_, f)| f)
        .collect();
    assert!(
        !stats.is_empty(),
        "no statistics record in {} messages",
        messages.len()
    );
    let last = stats.last().expect("one at least");
    let n = |k: &str| -> u64 {
        last.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("statistics without {k}: {last:?}"))
    };
    assert_eq!(
        n("exportedFlowRecordTotalCount"),
        flows.len() as u64,
        "{last:?}"
    );
    assert_eq!(n("notSentFlowTotalCount"), 0, "{last:?}");
    let stats_at = messages
        .iter()
        .rposition(|m| m.len() > 20 && u16::from_be_bytes([m[16], m[17]]) == STATS_TEMPLATE as u16)
        .expect("the message of the last statistics record");
    let before = &messages[..stats_at];
    assert_eq!(
        n("exportedMessageTotalCount"),
        before.len() as u64,
        "{last:?}"
    );
    assert_eq!(
        n("exportedOctetTotalCount"),
        before.iter().map(|m| m.len() as u64).sum::<u64>(),
        "{last:?}"
    );
}
