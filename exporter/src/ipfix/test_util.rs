//! For tests and benchmarks (feature `test-util`): flow fixtures, and an independent
//! IPFIX implementation to check Lumen's bytes against, `ipfixrw`, taught Lumen's
//! enterprise elements. `Decoder` reads what the exporter sends; `ReferenceEncoder`
//! writes the same records with ipfixrw's writer (the benchmark's comparison).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::net::Ipv4Addr;
use std::rc::Rc;

use binrw::BinWrite;
use ipfixrw::information_elements::{Formatter, get_default_formatter};
use ipfixrw::parse_ipfix_message;
use ipfixrw::parser::{
    DataRecord, DataRecordKey, DataRecordType, DataRecordValue, FieldSpecifier, Message,
    OptionsTemplateRecord, Records, Set, TemplateRecord,
};
use ipfixrw::template_store::TemplateStore;
use lumen_api::flow::{
    Counters, DropReason, EndReason, FlowEndpoint, FlowType, PolicyRef, Protocol, RuleAction,
    TcpFlags, Verdict,
};
use lumen_api::{Flow, Identity};

use super::encode::Header;
use super::ie::{
    DataType, FLOW_TEMPLATE, FLOW_TEMPLATE_ID, Ie, Registry, STATS_SCOPE_FIELDS, STATS_TEMPLATE,
    STATS_TEMPLATE_ID,
};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("ipfixrw could not decode the message: {0}")]
    Decode(String),
    #[error("ipfixrw could not encode the message: {0}")]
    Encode(String),
    #[error("truncated IPFIX stream: {0} bytes left over")]
    Truncated(usize),
}

/// A flow with every field set to a distinct, non-default value.
pub fn full_flow() -> Flow {
    Flow {
        node: "node-1".into(),
        start_ns: 1_700_000_000_123_456_789,
        end_ns: 1_700_000_005_987_654_321,
        protocol: Protocol::TCP,
        source: FlowEndpoint {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            port: 40000,
            identity: Identity(258),
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            node: Some("node-1".into()),
            labels: BTreeMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "front \"end\"".into()),
            ]),
        },
        destination: FlowEndpoint {
            ip: Ipv4Addr::new(10, 244, 2, 3),
            port: 8080,
            identity: Identity(515),
            namespace: Some("store".into()),
            pod: Some("db-0".into()),
            node: Some("node-2".into()),
            labels: BTreeMap::from([("app".into(), "db".into())]),
        },
        forward: Counters {
            packets: 1000,
            bytes: 1_500_000,
        },
        reverse: Counters {
            packets: 800,
            bytes: 64_000,
        },
        forward_delta: Counters {
            packets: 10,
            bytes: 15_000,
        },
        reverse_delta: Counters {
            packets: 8,
            bytes: 640,
        },
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN),
        reverse_tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::RST),
        // Not meaningful for TCP; set so that the field is covered.
        icmp_type_code: Some(0x0303),
        verdict: Verdict::Dropped,
        drop_reason: Some(DropReason::Policy),
        ingress_policy: Some(PolicyRef {
            namespace: "store".into(),
            name: "db-ingress".into(),
            rule: "ingress[0]".into(),
            action: RuleAction::Drop,
        }),
        egress_policy: Some(PolicyRef {
            namespace: "shop".into(),
            name: "web-egress".into(),
            rule: "egress[1]".into(),
            action: RuleAction::Allow,
        }),
        flow_type: FlowType::InterNode,
        tag: Some(0x80_0102),
        traced: true,
        end_reason: Some(EndReason::EndOfFlow),
        correlation_id: "0123456789abcdef".into(),
        community_id: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into(),
    }
}

/// A flow with as little as a flow can have: bare endpoints, no options set.
pub fn sparse_flow() -> Flow {
    Flow {
        flow_type: FlowType::ToExternal,
        ..Flow::between(
            "",
            Protocol::UDP,
            FlowEndpoint::bare(Ipv4Addr::new(192, 0, 2, 1), 53, Identity::WORLD),
            FlowEndpoint::bare(Ipv4Addr::new(203, 0, 113, 9), 0, Identity::UNKNOWN),
        )
    }
}

/// The `n`th of a family of realistic pod-to-pod flows: distinct addresses, ports,
/// counters and names, strings of typical length.
pub fn numbered_flow(n: u32) -> Flow {
    let mut flow = full_flow();
    let [_, _, b, c] = n.to_be_bytes();
    flow.source.ip = Ipv4Addr::new(10, 244, 1, c);
    flow.destination.ip = Ipv4Addr::new(10, 244, 2, b);
    flow.source.port = 32768 + (n % 28000) as u16;
    flow.source.pod = Some(format!("web-{}", n % 1000));
    flow.forward_delta.packets = u64::from(n);
    flow.start_ns += u64::from(n) * 1_000_000;
    flow.end_ns += u64::from(n) * 1_000_000;
    flow.correlation_id = format!("{:016x}", u64::from(n) * 0x9e37_79b9);
    flow
}

/// ipfixrw's IANA information model plus Lumen's enterprise elements, so that decoded
/// records carry every element's name and type.
pub fn formatter(lumen_pen: u32) -> Formatter {
    let mut formatter = get_default_formatter();
    for ie in FLOW_TEMPLATE.iter().chain(STATS_TEMPLATE) {
        if ie.registry != Registry::Iana {
            formatter.insert(
                (ie.registry.enterprise(lumen_pen), ie.id),
                (ie.name, record_type(ie.data_type)),
            );
        }
    }
    formatter
}

fn record_type(data_type: DataType) -> DataRecordType {
    match data_type {
        DataType::Unsigned8
        | DataType::Unsigned16
        | DataType::Unsigned16In1
        | DataType::Unsigned32
        | DataType::Unsigned64 => DataRecordType::UnsignedInt,
        DataType::DateTimeMilliseconds => DataRecordType::DateTimeMilliseconds,
        DataType::Ipv4Address => DataRecordType::Ipv4Addr,
        DataType::String => DataRecordType::String,
    }
}

fn field_specifiers(fields: &[Ie], lumen_pen: u32) -> Vec<FieldSpecifier> {
    fields
        .iter()
        .map(|ie| {
            let pen = ie.registry.enterprise(lumen_pen);
            FieldSpecifier::new((pen != 0).then_some(pen), ie.id, ie.data_type.length())
        })
        .collect()
}

fn template_store() -> TemplateStore {
    Rc::new(RefCell::new(HashMap::new()))
}

/// Decodes a collector's view of an IPFIX session with ipfixrw: templates learnt from
/// one message apply to the next, as for a real collector.
#[derive(Debug)]
pub struct Decoder {
    templates: TemplateStore,
    formatter: Rc<Formatter>,
}

impl Decoder {
    pub fn new(lumen_pen: u32) -> Self {
        Self {
            templates: template_store(),
            formatter: Rc::new(formatter(lumen_pen)),
        }
    }

    /// Decode one message.
    pub fn decode(&self, message: &[u8]) -> Result<Message, ReferenceError> {
        parse_ipfix_message(&message, self.templates.clone(), self.formatter.clone())
            .map_err(|e| ReferenceError::Decode(e.to_string()))
    }
}

/// Cut a byte stream (TCP) into messages by their length fields. Fails if bytes are
/// left over that do not make a whole message.
pub fn split_messages(mut stream: &[u8]) -> Result<Vec<&[u8]>, ReferenceError> {
    let mut messages = Vec::new();
    while stream.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([stream[2], stream[3]]));
        if len < 16 || len > stream.len() {
            break;
        }
        let (message, rest) = stream.split_at(len);
        messages.push(message);
        stream = rest;
    }
    if stream.is_empty() {
        Ok(messages)
    } else {
        Err(ReferenceError::Truncated(stream.len()))
    }
}

/// The number of data records (flow and statistics) in a decoded message: what its
/// successor's sequence number must have advanced by.
pub fn data_record_count(message: &Message) -> usize {
    message.iter_data_records().count()
}

/// A value of a decoded record by element name.
pub fn value<'a>(record: &'a DataRecord, name: &'static str) -> Option<&'a DataRecordValue> {
    record.values.get(&DataRecordKey::Str(name))
}

/// The flow records (set 256) of a decoded message.
pub fn flow_records(message: &Message) -> Vec<&DataRecord> {
    data_records(message, FLOW_TEMPLATE_ID)
}

/// The reliability statistics records (set 257) of a decoded message.
pub fn stats_records(message: &Message) -> Vec<&DataRecord> {
    data_records(message, STATS_TEMPLATE_ID)
}

fn data_records(message: &Message, template: u16) -> Vec<&DataRecord> {
    message
        .sets
        .iter()
        .filter_map(|set| match &set.records {
            Records::Data { set_id, data } if *set_id == template => Some(data),
            _ => None,
        })
        .flatten()
        .collect()
}

const INGRESS_POLICY: [&str; 5] = [
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
];
const EGRESS_POLICY: [&str; 5] = [
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyType",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
];

/// A flow as ipfixrw values, keyed by element name: the mapping of `docs/ipfix.md`,
/// written independently of the encoder.
pub fn reference_record(flow: &Flow) -> DataRecord {
    use DataRecordValue::{DateTimeMilliseconds, Ipv4Addr as Ip, String as Str, U8, U16, U32, U64};
    let mut record = DataRecord {
        values: Default::default(),
    };
    let mut put = |name: &'static str, value: DataRecordValue| {
        record.values.insert(DataRecordKey::Str(name), value);
    };
    let (src, dst) = (&flow.source, &flow.destination);
    let opt = |s: &Option<String>| Str(s.clone().unwrap_or_default());
    let labels = |e: &FlowEndpoint| {
        Str(if e.pod.is_some() {
            e.labels_json()
        } else {
            String::new()
        })
    };
    put(
        "flowStartMilliseconds",
        DateTimeMilliseconds(flow.start_ns / 1_000_000),
    );
    put(
        "flowEndMilliseconds",
        DateTimeMilliseconds(flow.end_ns / 1_000_000),
    );
    put("sourceIPv4Address", Ip(src.ip));
    put("destinationIPv4Address", Ip(dst.ip));
    put("sourceTransportPort", U16(src.port));
    put("destinationTransportPort", U16(dst.port));
    put("protocolIdentifier", U8(flow.protocol.0));
    put("icmpTypeCodeIPv4", U16(flow.icmp_type_code.unwrap_or(0)));
    put("packetDeltaCount", U64(flow.forward_delta.packets));
    put("octetDeltaCount", U64(flow.forward_delta.bytes));
    put("packetTotalCount", U64(flow.forward.packets));
    put("octetTotalCount", U64(flow.forward.bytes));
    put("tcpControlBits", U8(flow.tcp_flags.0));
    put(
        "flowEndReason",
        U8(flow.end_reason.map_or(2, EndReason::ipfix)),
    );
    put("reversePacketDeltaCount", U64(flow.reverse_delta.packets));
    put("reverseOctetDeltaCount", U64(flow.reverse_delta.bytes));
    put("reversePacketTotalCount", U64(flow.reverse.packets));
    put("reverseOctetTotalCount", U64(flow.reverse.bytes));
    put("reverseTcpControlBits", U8(flow.reverse_tcp_flags.0));
    put("sourcePodNamespace", opt(&src.namespace));
    put("sourcePodName", opt(&src.pod));
    put("destinationPodNamespace", opt(&dst.namespace));
    put("destinationPodName", opt(&dst.pod));
    put("sourceNodeName", opt(&src.node));
    put("destinationNodeName", opt(&dst.node));
    put("sourcePodLabels", labels(src));
    put("destinationPodLabels", labels(dst));
    put("flowType", U8(flow.flow_type.antrea()));
    for (policy, names) in [
        (&flow.ingress_policy, INGRESS_POLICY),
        (&flow.egress_policy, EGRESS_POLICY),
    ] {
        let p = policy.as_ref();
        put(names[0], Str(p.map(|p| p.name.clone()).unwrap_or_default()));
        put(
            names[1],
            Str(p.map(|p| p.namespace.clone()).unwrap_or_default()),
        );
        put(names[2], U8(u8::from(p.is_some())));
        put(names[3], Str(p.map(|p| p.rule.clone()).unwrap_or_default()));
        let action = p.map_or(0, |p| match p.action {
            RuleAction::Allow => 1,
            RuleAction::Drop => 2,
        });
        put(names[4], U8(action));
    }
    let verdict = match flow.verdict {
        Verdict::Forwarded => 1,
        Verdict::Dropped => 2,
    };
    put("lumenVerdict", U8(verdict));
    put(
        "lumenDropReason",
        U8(flow.drop_reason.map_or(0, DropReason::code)),
    );
    put("lumenTag", U32(flow.tag.unwrap_or(0)));
    put(
        "lumenCorrelationId",
        U64(u64::from_str_radix(&flow.correlation_id, 16).unwrap_or(0)),
    );
    put("lumenCommunityId", Str(flow.community_id.clone()));
    put("lumenSourceIdentity", U32(src.identity.0));
    put("lumenDestinationIdentity", U32(dst.identity.0));
    put("lumenTraced", U8(u8::from(flow.traced)));
    put("lumenObservationNode", Str(flow.node.clone()));
    record
}

/// Writes Lumen's messages with ipfixrw's writer instead of Lumen's encoder.
#[derive(Debug)]
pub struct ReferenceEncoder {
    templates: TemplateStore,
    formatter: Rc<Formatter>,
    lumen_pen: u32,
}

impl ReferenceEncoder {
    pub fn new(lumen_pen: u32) -> Self {
        let formatter = formatter(lumen_pen);
        let templates = template_store();
        templates.insert_template_records(&[flow_template_record(lumen_pen)], &formatter);
        templates.insert_options_template_records(&[stats_template_record()], &formatter);
        Self {
            templates,
            formatter: Rc::new(formatter),
            lumen_pen,
        }
    }

    /// One message of flow records, as `encode::write_message` writes it.
    pub fn write_message(
        &self,
        out: &mut Vec<u8>,
        header: Header,
        flows: &[&Flow],
    ) -> Result<(), ReferenceError> {
        let set = Set {
            records: Records::Data {
                set_id: FLOW_TEMPLATE_ID,
                data: flows.iter().map(|f| reference_record(f)).collect(),
            },
        };
        self.write(out, header, vec![set])
    }

    /// One message with both templates, as `encode::write_template_message` writes it.
    pub fn write_template_message(
        &self,
        out: &mut Vec<u8>,
        header: Header,
    ) -> Result<(), ReferenceError> {
        let sets = vec![
            Set {
                records: Records::Template(vec![flow_template_record(self.lumen_pen)]),
            },
            Set {
                records: Records::OptionsTemplate(vec![stats_template_record()]),
            },
        ];
        self.write(out, header, sets)
    }

    fn write(
        &self,
        out: &mut Vec<u8>,
        header: Header,
        sets: Vec<Set>,
    ) -> Result<(), ReferenceError> {
        let message = Message {
            export_time: header.export_time,
            sequence_number: header.sequence_number,
            observation_domain_id: header.observation_domain_id,
            sets,
        };
        // ipfixrw writes the message length as the absolute stream position, so each
        // message needs a stream of its own that starts at 0.
        let mut cursor = Cursor::new(Vec::new());
        message
            .write_args(
                &mut cursor,
                (self.templates.clone(), self.formatter.clone(), 1),
            )
            .map_err(|e| ReferenceError::Encode(e.to_string()))?;
        out.extend_from_slice(&cursor.into_inner());
        Ok(())
    }
}

fn flow_template_record(lumen_pen: u32) -> TemplateRecord {
    TemplateRecord {
        template_id: FLOW_TEMPLATE_ID,
        field_specifiers: field_specifiers(FLOW_TEMPLATE, lumen_pen),
    }
}

fn stats_template_record() -> OptionsTemplateRecord {
    OptionsTemplateRecord {
        template_id: STATS_TEMPLATE_ID,
        scope_field_count: STATS_SCOPE_FIELDS,
        field_specifiers: field_specifiers(STATS_TEMPLATE, 0),
    }
}
