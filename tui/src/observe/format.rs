//! How `lumen observe` shows records: one compact line a record in Hubble's
//! style, the agent's JSON line unchanged, or an aligned table. Times are UTC;
//! colour marks only the verdict (and lost records), and only when asked for.

use std::fmt::Write as _;

use clap::ValueEnum;
use lumen_api::client::FlowLine;
use lumen_api::flow::{Counters, PolicyRef, Protocol, RuleAction, TcpFlags, Verdict};
use lumen_api::{Flow, FlowEndpoint, FlowEvent, Identity, LostEvents};
use serde::Serialize;

/// The `-o` formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line a record
    #[default]
    Compact,
    /// Each record as the agent sent it, one JSON object a line
    Json,
    /// Aligned columns under one header
    Table,
}

/// The `--color` choices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// When standard output is a terminal and NO_COLOR is not set
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour, given where the output goes and whether the user set
    /// `NO_COLOR` (<https://no-color.org>).
    pub fn enabled(self, stdout_is_terminal: bool, no_color: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => stdout_is_terminal && !no_color,
        }
    }
}

/// The few colours used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    Green,
    Red,
    Yellow,
}

impl Paint {
    fn apply(self, text: &str) -> String {
        let code = match self {
            Self::Green => 32,
            Self::Red => 31,
            Self::Yellow => 33,
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

fn paint(text: &str, paint: Option<Paint>, color: bool) -> String {
    match paint {
        Some(p) if color => p.apply(text),
        _ => text.to_owned(),
    }
}

// === pieces ===

/// `Nov 23 19:30:01.123`, UTC.
pub fn time(ns: u64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%b %d %H:%M:%S%.3f").to_string(),
        Err(_) => ns.to_string(),
    }
}

/// The name serde gives a wire enum (`RING_BUFFER`), so the text matches the JSON.
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

fn identity(id: Identity) -> String {
    match id {
        Identity::UNKNOWN => "unknown".to_owned(),
        Identity::HOST => "host".to_owned(),
        Identity::WORLD => "world".to_owned(),
        Identity(n) => format!("ID:{n}"),
    }
}

/// `default/pod-1-1:43210 (ID:300)`, or `203.0.113.10:80 (world)` for a non-pod;
/// no port for protocols without ports.
fn endpoint(ep: &FlowEndpoint, protocol: Protocol) -> String {
    let name = ep.pod_ref().unwrap_or_else(|| ep.ip.to_string());
    if protocol.has_ports() {
        format!("{name}:{} ({})", ep.port, identity(ep.identity))
    } else {
        format!("{name} ({})", identity(ep.identity))
    }
}

fn icmp_type_name(icmp_type: u8) -> Option<&'static str> {
    Some(match icmp_type {
        0 => "EchoReply",
        3 => "DestinationUnreachable",
        5 => "Redirect",
        8 => "EchoRequest",
        11 => "TimeExceeded",
        12 => "ParameterProblem",
        _ => return None,
    })
}

/// What the protocol adds: TCP flags of both directions, or ICMP `name type/code`.
fn protocol_detail(flow: &Flow) -> Option<String> {
    match flow.protocol {
        Protocol::TCP => {
            let flags = TcpFlags(flow.tcp_flags.0 | flow.reverse_tcp_flags.0);
            (flags.0 != 0).then(|| flags.to_string())
        }
        Protocol::ICMP => flow.icmp_type_code.map(|tc| {
            let [icmp_type, code] = tc.to_be_bytes();
            match icmp_type_name(icmp_type) {
                Some(name) => format!("{name} {icmp_type}/{code}"),
                None => format!("{icmp_type}/{code}"),
            }
        }),
        _ => None,
    }
}

fn policy(p: &PolicyRef) -> String {
    if p.rule.is_empty() {
        format!("{}/{}", p.namespace, p.name)
    } else {
        format!("{}/{} {}", p.namespace, p.name, p.rule)
    }
}

/// `FORWARDED`, `DROPPED`, or `DROPPED (POLICY shop/deny-web ingress[0])`: the
/// reason, and for a policy drop the rule that denied it; `TRACED` after it
/// when a packet of the flow was traced.
fn verdict(flow: &Flow) -> (String, Paint) {
    let (text, paint) = untraced_verdict(flow);
    if flow.traced {
        (format!("{text} TRACED"), paint)
    } else {
        (text, paint)
    }
}

fn untraced_verdict(flow: &Flow) -> (String, Paint) {
    match flow.verdict {
        Verdict::Forwarded => ("FORWARDED".to_owned(), Paint::Green),
        Verdict::Dropped => {
            let denied_by = [&flow.ingress_policy, &flow.egress_policy]
                .into_iter()
                .flatten()
                .find(|p| p.action == RuleAction::Drop);
            let text = match (flow.drop_reason, denied_by) {
                (Some(reason), Some(p)) => {
                    format!("DROPPED ({} {})", wire_name(&reason), policy(p))
                }
                (Some(reason), None) => format!("DROPPED ({})", wire_name(&reason)),
                (None, _) => "DROPPED".to_owned(),
            };
            (text, Paint::Red)
        }
    }
}

/// `3.4 KB`: decimal units, one decimal from KB up.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "one decimal is shown; u64 to f64 is exact far beyond that"
    )]
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn packets(n: u64) -> String {
    if n == 1 {
        "1 pkt".to_owned()
    } else {
        format!("{n} pkts")
    }
}

// === compact ===

/// One line for an event (no line end).
pub fn compact(event: &FlowEvent, color: bool) -> String {
    match event {
        FlowEvent::Flow(flow) => compact_flow(flow, color),
        FlowEvent::LostEvents(lost) => compact_lost(lost, color),
    }
}

fn compact_flow(flow: &Flow, color: bool) -> String {
    let mut line = format!(
        "{} {}: {} -> {} {}",
        time(flow.end_ns),
        flow.node,
        endpoint(&flow.source, flow.protocol),
        endpoint(&flow.destination, flow.protocol),
        flow.protocol,
    );
    match (flow.protocol, protocol_detail(flow)) {
        (Protocol::TCP, Some(flags)) => {
            let _ = write!(line, " Flags: {flags}");
        }
        (_, Some(detail)) => {
            let _ = write!(line, " {detail}");
        }
        (_, None) => {}
    }
    let (verdict, colour) = verdict(flow);
    let _ = write!(
        line,
        " {} {} {} <- {} {}",
        paint(&verdict, Some(colour), color),
        packets(flow.forward.packets),
        bytes(flow.forward.bytes),
        packets(flow.reverse.packets),
        bytes(flow.reverse.bytes),
    );
    if let Some(end) = flow.end_reason {
        let _ = write!(line, " [{}]", wire_name(&end));
    }
    line
}

fn compact_lost(lost: &LostEvents, color: bool) -> String {
    format!(
        "{} {} {} events ({}) on {}",
        time(lost.time_ns),
        paint("LOST", Some(Paint::Yellow), color),
        lost.count,
        wire_name(&lost.source),
        lost.node,
    )
}

// === table ===

const HEADER: [&str; 10] = [
    "TIME",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "PROTO",
    "FLAGS",
    "VERDICT",
    "FWD",
    "REV",
    "END",
];
/// Index of the VERDICT column, the one coloured.
const VERDICT: usize = 6;
/// Starting widths when rows arrive one by one (`--follow`): enough for the
/// usual lab names, so most rows line up without knowing them in advance.
const STREAMING_WIDTHS: [usize; 10] = [19, 8, 34, 34, 5, 15, 9, 14, 14, 12];
const GAP: &str = "  ";

/// One row of cells, and the colour of its VERDICT cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    cells: [String; 10],
    paint: Paint,
}

fn counters(c: Counters) -> String {
    format!("{}/{}", c.packets, bytes(c.bytes))
}

impl Row {
    pub fn new(event: &FlowEvent) -> Self {
        let dash = || "-".to_owned();
        match event {
            FlowEvent::Flow(flow) => {
                let (verdict, paint) = verdict(flow);
                Self {
                    cells: [
                        time(flow.end_ns),
                        flow.node.clone(),
                        endpoint(&flow.source, flow.protocol),
                        endpoint(&flow.destination, flow.protocol),
                        flow.protocol.to_string(),
                        protocol_detail(flow).unwrap_or_else(dash),
                        verdict,
                        counters(flow.forward),
                        counters(flow.reverse),
                        flow.end_reason.map_or_else(dash, |e| wire_name(&e)),
                    ],
                    paint,
                }
            }
            // The loss's source stands in SOURCE and its count in FWD.
            FlowEvent::LostEvents(lost) => Self {
                cells: [
                    time(lost.time_ns),
                    lost.node.clone(),
                    wire_name(&lost.source),
                    dash(),
                    dash(),
                    dash(),
                    "LOST".to_owned(),
                    format!("{} events", lost.count),
                    dash(),
                    dash(),
                ],
                paint: Paint::Yellow,
            },
        }
    }
}

/// Column widths, grown to fit every row seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    widths: [usize; 10],
    color: bool,
}

impl Table {
    /// Widths that fit the header and all of `rows`.
    pub fn fitted<'a>(rows: impl IntoIterator<Item = &'a Row>, color: bool) -> Self {
        let mut table = Self {
            widths: HEADER.map(str::len),
            color,
        };
        for row in rows {
            table.widen(row);
        }
        table
    }

    /// Widths for rows not known yet; a longer cell widens its column from then on.
    pub fn streaming(color: bool) -> Self {
        Self {
            widths: STREAMING_WIDTHS,
            color,
        }
    }

    fn widen(&mut self, row: &Row) {
        for (width, cell) in self.widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.chars().count());
        }
    }

    pub fn header(&self) -> String {
        self.line(&HEADER.map(str::to_owned), None)
    }

    /// The row's line (no line end); widens the columns it overflows.
    pub fn row(&mut self, row: &Row) -> String {
        self.widen(row);
        self.line(&row.cells, Some(row.paint))
    }

    fn line(&self, cells: &[String; 10], paint_verdict: Option<Paint>) -> String {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(self.widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            // Pad before colouring: escape codes take no room on screen.
            let padded = format!("{cell:<width$}");
            let paint = if i == VERDICT { paint_verdict } else { None };
            line.push_str(&paint_cell(&padded, cell.len(), paint, self.color));
        }
        line.truncate(line.trim_end().len());
        line
    }
}

/// Colour the text of a padded cell, leaving its padding plain.
fn paint_cell(padded: &str, text_len: usize, p: Option<Paint>, color: bool) -> String {
    let (text, pad) = padded.split_at(text_len.min(padded.len()));
    format!("{}{pad}", paint(text, p, color))
}

// === outputs ===

/// Every line to print for a finished list of records, in order.
pub fn render_all(output: Output, color: bool, lines: &[FlowLine]) -> Vec<String> {
    match output {
        Output::Compact => lines.iter().map(|l| compact(&l.event, color)).collect(),
        Output::Json => lines.iter().map(|l| l.json.clone()).collect(),
        Output::Table => {
            let rows: Vec<Row> = lines.iter().map(|l| Row::new(&l.event)).collect();
            let mut table = Table::fitted(&rows, color);
            std::iter::once(table.header())
                .chain(rows.iter().map(|r| table.row(r)))
                .collect()
        }
    }
}

/// Lines for records as they arrive (`--follow`).
#[derive(Debug)]
pub struct Streaming {
    output: Output,
    color: bool,
    table: Table,
}

impl Streaming {
    pub fn new(output: Output, color: bool) -> Self {
        Self {
            output,
            color,
            table: Table::streaming(color),
        }
    }

    /// What to print before any record: the table's header.
    pub fn start(&self) -> Option<String> {
        (self.output == Output::Table).then(|| self.table.header())
    }

    pub fn line(&mut self, line: &FlowLine) -> String {
        match self.output {
            Output::Compact => compact(&line.event, self.color),
            Output::Json => line.json.clone(),
            Output::Table => self.table.row(&Row::new(&line.event)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use lumen_api::flow::{DropReason, EndReason, FlowType, LostSource};

    use super::*;

    /// 2024-11-23T19:30:01.123Z
    pub(crate) const T0: u64 = 1_732_390_201_123_000_000;

    fn pod(ns: &str, name: &str, ip: [u8; 4], port: u16, id: u32) -> FlowEndpoint {
        FlowEndpoint {
            namespace: Some(ns.into()),
            pod: Some(name.into()),
            node: Some("node-1".into()),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            ..FlowEndpoint::bare(Ipv4Addr::from(ip), port, Identity(id))
        }
    }

    /// A pod-to-pod TCP flow on node-1 ending at `end_ns`.
    pub(crate) fn tcp_flow(node: &str, end_ns: u64) -> Flow {
        Flow {
            start_ns: end_ns - 2_000_000_000,
            end_ns,
            forward: Counters {
                packets: 12,
                bytes: 3_400,
            },
            reverse: Counters {
                packets: 10,
                bytes: 1_100,
            },
            tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
            reverse_tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
            correlation_id: "c1".into(),
            community_id: "1:abc".into(),
            ..Flow::between(
                node,
                Protocol::TCP,
                pod("default", "pod-1-1", [10, 244, 1, 2], 43210, 300),
                pod("default", "pod-2-1", [10, 244, 2, 2], 8080, 301),
            )
        }
    }

    fn icmp_flow() -> Flow {
        Flow {
            protocol: Protocol::ICMP,
            source: pod("default", "pod-1-1", [10, 244, 1, 2], 0, 300),
            destination: pod("default", "pod-1-2", [10, 244, 1, 3], 0, 302),
            forward: Counters {
                packets: 1,
                bytes: 84,
            },
            reverse: Counters {
                packets: 1,
                bytes: 84,
            },
            tcp_flags: TcpFlags::default(),
            reverse_tcp_flags: TcpFlags::default(),
            icmp_type_code: Some(8 << 8),
            end_reason: Some(EndReason::IdleTimeout),
            ..tcp_flow("node-1", T0)
        }
    }

    fn world_udp_flow() -> Flow {
        Flow {
            node: "node-2".into(),
            protocol: Protocol::UDP,
            source: pod("default", "pod-2-1", [10, 244, 2, 2], 53124, 301),
            destination: FlowEndpoint::bare(Ipv4Addr::new(203, 0, 113, 10), 81, Identity::WORLD),
            forward: Counters {
                packets: 3,
                bytes: 2_500_000,
            },
            reverse: Counters::default(),
            tcp_flags: TcpFlags::default(),
            reverse_tcp_flags: TcpFlags::default(),
            flow_type: FlowType::ToExternal,
            ..tcp_flow("node-2", T0)
        }
    }

    fn dropped_flow() -> Flow {
        Flow {
            destination: pod("shop", "web", [10, 244, 2, 5], 80, 305),
            tcp_flags: TcpFlags(TcpFlags::SYN),
            reverse_tcp_flags: TcpFlags::default(),
            forward: Counters {
                packets: 3,
                bytes: 180,
            },
            reverse: Counters::default(),
            verdict: Verdict::Dropped,
            drop_reason: Some(DropReason::Policy),
            ingress_policy: Some(PolicyRef {
                namespace: "shop".into(),
                name: "web-from-frontend".into(),
                rule: String::new(),
                action: RuleAction::Drop,
            }),
            egress_policy: Some(PolicyRef {
                namespace: "default".into(),
                name: "allow-all-egress".into(),
                rule: "egress[0]".into(),
                action: RuleAction::Allow,
            }),
            end_reason: Some(EndReason::IdleTimeout),
            ..tcp_flow("node-2", T0)
        }
    }

    fn lost() -> FlowEvent {
        FlowEvent::LostEvents(LostEvents {
            node: "node-1".into(),
            source: LostSource::RingBuffer,
            count: 12,
            time_ns: T0,
        })
    }

    fn ev(flow: Flow) -> FlowEvent {
        FlowEvent::Flow(Box::new(flow))
    }

    /// The golden lines: one per kind of record.
    fn cases() -> Vec<(FlowEvent, &'static str)> {
        vec![
            (
                ev(tcp_flow("node-1", T0)),
                "Nov 23 19:30:01.123 node-1: default/pod-1-1:43210 (ID:300) -> \
                 default/pod-2-1:8080 (ID:301) TCP Flags: SYN,ACK FORWARDED \
                 12 pkts 3.4 KB <- 10 pkts 1.1 KB",
            ),
            (
                ev(icmp_flow()),
                "Nov 23 19:30:01.123 node-1: default/pod-1-1 (ID:300) -> \
                 default/pod-1-2 (ID:302) ICMP EchoRequest 8/0 FORWARDED \
                 1 pkt 84 B <- 1 pkt 84 B [IDLE_TIMEOUT]",
            ),
            (
                ev(world_udp_flow()),
                "Nov 23 19:30:01.123 node-2: default/pod-2-1:53124 (ID:301) -> \
                 203.0.113.10:81 (world) UDP FORWARDED 3 pkts 2.5 MB <- 0 pkts 0 B",
            ),
            (
                ev(dropped_flow()),
                "Nov 23 19:30:01.123 node-2: default/pod-1-1:43210 (ID:300) -> \
                 shop/web:80 (ID:305) TCP Flags: SYN DROPPED \
                 (POLICY shop/web-from-frontend) 3 pkts 180 B <- 0 pkts 0 B [IDLE_TIMEOUT]",
            ),
            (
                lost(),
                "Nov 23 19:30:01.123 LOST 12 events (RING_BUFFER) on node-1",
            ),
        ]
    }

    #[test]
    fn compact_golden_lines() {
        for (event, want) in cases() {
            assert_eq!(compact(&event, false), want);
        }
    }

    #[test]
    fn colour_marks_only_the_verdict() {
        let forwarded = compact(&ev(tcp_flow("node-1", T0)), true);
        assert!(
            forwarded.contains(" \x1b[32mFORWARDED\x1b[0m "),
            "{forwarded:?}"
        );
        let dropped = compact(&ev(dropped_flow()), true);
        assert!(
            dropped.contains(" \x1b[31mDROPPED (POLICY shop/web-from-frontend)\x1b[0m "),
            "{dropped:?}"
        );
        let lost = compact(&lost(), true);
        assert!(lost.contains(" \x1b[33mLOST\x1b[0m "), "{lost:?}");
        for (event, plain) in cases() {
            let coloured = compact(&event, true);
            let stripped = coloured.replace("\x1b[0m", "");
            let stripped = ["\x1b[31m", "\x1b[32m", "\x1b[33m"]
                .iter()
                .fold(stripped, |s, code| s.replace(code, ""));
            assert_eq!(stripped, plain);
        }
    }

    #[test]
    fn colour_is_off_unless_a_terminal_or_asked() {
        assert!(!ColorChoice::Auto.enabled(false, false));
        assert!(ColorChoice::Auto.enabled(true, false));
        assert!(!ColorChoice::Auto.enabled(true, true));
        assert!(ColorChoice::Always.enabled(false, true));
        assert!(!ColorChoice::Never.enabled(true, false));
    }

    #[test]
    fn dropped_without_a_denying_policy_names_the_reason() {
        let flow = Flow {
            drop_reason: Some(DropReason::TunnelKey),
            ingress_policy: None,
            egress_policy: None,
            ..dropped_flow()
        };
        assert_eq!(verdict(&flow).0, "DROPPED (TUNNEL_KEY)");
        let flow = Flow {
            ingress_policy: Some(PolicyRef {
                namespace: "shop".into(),
                name: "deny-web".into(),
                rule: "ingress[1]".into(),
                action: RuleAction::Drop,
            }),
            ..dropped_flow()
        };
        assert_eq!(
            verdict(&flow).0,
            "DROPPED (POLICY shop/deny-web ingress[1])"
        );
    }

    #[test]
    fn sizes_and_icmp_codes() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_000), "1.0 KB");
        assert_eq!(bytes(999_960), "1.0 MB");
        assert_eq!(bytes(3_400_000_000), "3.4 GB");
        let unreachable = Flow {
            icmp_type_code: Some(3 << 8 | 3),
            ..icmp_flow()
        };
        assert_eq!(
            protocol_detail(&unreachable).as_deref(),
            Some("DestinationUnreachable 3/3")
        );
        let odd = Flow {
            icmp_type_code: Some(42 << 8),
            ..icmp_flow()
        };
        assert_eq!(protocol_detail(&odd).as_deref(), Some("42/0"));
    }

    fn line(event: FlowEvent) -> FlowLine {
        FlowLine {
            json: serde_json::to_string(&event).unwrap(),
            event,
        }
    }

    #[test]
    fn table_aligns_columns_to_the_widest_cell() {
        let lines: Vec<FlowLine> = cases().into_iter().map(|(e, _)| line(e)).collect();
        let out = render_all(Output::Table, false, &lines);
        let want = [
            "TIME                 NODE    SOURCE                          DESTINATION                    PROTO  FLAGS            VERDICT                                  FWD        REV        END",
            "Nov 23 19:30:01.123  node-1  default/pod-1-1:43210 (ID:300)  default/pod-2-1:8080 (ID:301)  TCP    SYN,ACK          FORWARDED                                12/3.4 KB  10/1.1 KB  -",
            "Nov 23 19:30:01.123  node-1  default/pod-1-1 (ID:300)        default/pod-1-2 (ID:302)       ICMP   EchoRequest 8/0  FORWARDED                                1/84 B     1/84 B     IDLE_TIMEOUT",
            "Nov 23 19:30:01.123  node-2  default/pod-2-1:53124 (ID:301)  203.0.113.10:81 (world)        UDP    -                FORWARDED                                3/2.5 MB   0/0 B      -",
            "Nov 23 19:30:01.123  node-2  default/pod-1-1:43210 (ID:300)  shop/web:80 (ID:305)           TCP    SYN              DROPPED (POLICY shop/web-from-frontend)  3/180 B    0/0 B      IDLE_TIMEOUT",
            "Nov 23 19:30:01.123  node-1  RING_BUFFER                     -                              -      -                LOST                                     12 events  -          -",
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn coloured_table_keeps_its_alignment() {
        let lines = vec![line(ev(tcp_flow("node-1", T0))), line(ev(dropped_flow()))];
        let plain = render_all(Output::Table, false, &lines);
        let coloured = render_all(Output::Table, true, &lines);
        assert!(
            coloured[1].contains("\x1b[32mFORWARDED\x1b[0m "),
            "{:?}",
            coloured[1]
        );
        let stripped: Vec<String> = coloured
            .iter()
            .map(|l| {
                l.replace("\x1b[32m", "")
                    .replace("\x1b[31m", "")
                    .replace("\x1b[0m", "")
            })
            .collect();
        assert_eq!(stripped, plain);
    }

    #[test]
    fn json_is_the_agents_line_unchanged() {
        // Key order and spacing differ from what serde would write back.
        let json = r#"{"lost_events": {"time_ns": 1732390201123000000, "node": "node-1", "source": "RING_BUFFER", "count": 12}}"#;
        let flow_line = FlowLine {
            event: serde_json::from_str(json).unwrap(),
            json: json.to_owned(),
        };
        assert_eq!(
            render_all(Output::Json, true, std::slice::from_ref(&flow_line)),
            [json]
        );
        assert_eq!(Streaming::new(Output::Json, true).line(&flow_line), json);
    }

    #[test]
    fn streaming_table_prints_the_header_first_and_widens_later_rows() {
        let mut streaming = Streaming::new(Output::Table, false);
        let header = streaming.start().unwrap();
        assert!(
            header.starts_with("TIME                 NODE      SOURCE"),
            "{header}"
        );
        let first = streaming.line(&line(ev(tcp_flow("node-1", T0))));
        assert_eq!(first.find("default/pod-1-1"), header.find("SOURCE"));
        assert_eq!(first.find("FORWARDED"), header.find("VERDICT"));
        let long_node = streaming.line(&line(ev(tcp_flow("node-with-a-long-name", T0))));
        let next = streaming.line(&line(ev(tcp_flow("node-1", T0))));
        assert_eq!(
            long_node.find("default/pod-1-1"),
            next.find("default/pod-1-1")
        );
        assert!(Streaming::new(Output::Compact, false).start().is_none());
    }
}
