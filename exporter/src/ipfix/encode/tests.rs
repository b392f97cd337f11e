//! The encoder checked against an independent implementation: ipfixrw decodes what
//! it writes, and ipfixrw's writer produces the same bytes.

use std::net::Ipv4Addr;

use ipfixrw::parser::{DataRecordValue as V, FieldSpecifier, Records};

use super::*;
use crate::ipfix::ie::DEFAULT_LUMEN_PEN;
use crate::ipfix::test_util::{
    Decoder, ReferenceEncoder, flow_records, full_flow, numbered_flow, reference_record,
    sparse_flow, stats_records, value,
};

const HEADER: Header = Header {
    export_time: 1_700_000_010,
    sequence_number: 42,
    observation_domain_id: 7,
};

fn templates() -> Vec<u8> {
    let mut out = Vec::new();
    write_template_message(&mut out, HEADER, DEFAULT_LUMEN_PEN).expect("templates");
    out
}

fn message(flows: &[&Flow]) -> Vec<u8> {
    let mut out = Vec::new();
    write_message(&mut out, HEADER, flows).expect("message");
    out
}

/// Decode `flows` after the templates, as a collector would.
fn decode(flows: &[&Flow]) -> Vec<ipfixrw::parser::DataRecord> {
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    decoder.decode(&templates()).expect("templates decode");
    let msg = decoder.decode(&message(flows)).expect("data decodes");
    assert_eq!(msg.export_time, HEADER.export_time);
    assert_eq!(msg.sequence_number, HEADER.sequence_number);
    assert_eq!(msg.observation_domain_id, HEADER.observation_domain_id);
    flow_records(&msg).into_iter().cloned().collect()
}

fn s(v: &str) -> V {
    V::String(v.into())
}

#[test]
fn a_full_flow_round_trips_through_an_independent_decoder() {
    let records = decode(&[&full_flow()]);
    let [record] = &records[..] else {
        panic!("{} records", records.len())
    };
    let expected = [
        (
            "flowStartMilliseconds",
            V::DateTimeMilliseconds(1_700_000_000_123),
        ),
        (
            "flowEndMilliseconds",
            V::DateTimeMilliseconds(1_700_000_005_987),
        ),
        (
            "sourceIPv4Address",
            V::Ipv4Addr(Ipv4Addr::new(10, 244, 1, 2)),
        ),
        (
            "destinationIPv4Address",
            V::Ipv4Addr(Ipv4Addr::new(10, 244, 2, 3)),
        ),
        ("sourceTransportPort", V::U16(40000)),
        ("destinationTransportPort", V::U16(8080)),
        ("protocolIdentifier", V::U8(6)),
        ("icmpTypeCodeIPv4", V::U16(0x0303)),
        ("packetDeltaCount", V::U64(10)),
        ("octetDeltaCount", V::U64(15_000)),
        ("packetTotalCount", V::U64(1000)),
        ("octetTotalCount", V::U64(1_500_000)),
        ("tcpControlBits", V::U8(0x1b)),
        ("flowEndReason", V::U8(3)),
        ("reversePacketDeltaCount", V::U64(8)),
        ("reverseOctetDeltaCount", V::U64(640)),
        ("reversePacketTotalCount", V::U64(800)),
        ("reverseOctetTotalCount", V::U64(64_000)),
        ("reverseTcpControlBits", V::U8(0x16)),
        ("sourcePodNamespace", s("shop")),
        ("sourcePodName", s("web-1")),
        ("destinationPodNamespace", s("store")),
        ("destinationPodName", s("db-0")),
        ("sourceNodeName", s("node-1")),
        ("destinationNodeName", s("node-2")),
        (
            "sourcePodLabels",
            s(r#"{"app":"web","tier":"front \"end\""}"#),
        ),
        ("destinationPodLabels", s(r#"{"app":"db"}"#)),
        ("flowType", V::U8(2)),
        ("ingressNetworkPolicyName", s("db-ingress")),
        ("ingressNetworkPolicyNamespace", s("store")),
        ("ingressNetworkPolicyType", V::U8(1)),
        ("ingressNetworkPolicyRuleName", s("ingress[0]")),
        ("ingressNetworkPolicyRuleAction", V::U8(2)),
        ("egressNetworkPolicyName", s("web-egress")),
        ("egressNetworkPolicyNamespace", s("shop")),
        ("egressNetworkPolicyType", V::U8(1)),
        ("egressNetworkPolicyRuleName", s("egress[1]")),
        ("egressNetworkPolicyRuleAction", V::U8(1)),
        ("lumenVerdict", V::U8(2)),
        ("lumenDropReason", V::U8(1)),
        ("lumenTag", V::U32(0x80_0102)),
        ("lumenCorrelationId", V::U64(0x0123_4567_89ab_cdef)),
        ("lumenCommunityId", s("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")),
        ("lumenSourceIdentity", V::U32(258)),
        ("lumenDestinationIdentity", V::U32(515)),
        ("lumenTraced", V::U8(1)),
        ("lumenObservationNode", s("node-1")),
    ];
    assert_eq!(
        expected.len(),
        FLOW_TEMPLATE.len(),
        "every element is checked"
    );
    for (name, want) in expected {
        assert_eq!(value(record, name), Some(&want), "{name}");
    }
    assert_eq!(
        record.values.len(),
        FLOW_TEMPLATE.len(),
        "no unknown elements"
    );
}

#[test]
fn a_sparse_flow_round_trips_with_empty_strings_and_zeroes() {
    let records = decode(&[&sparse_flow()]);
    let [record] = &records[..] else {
        panic!("{} records", records.len())
    };
    for (name, want) in [
        (
            "sourceIPv4Address",
            V::Ipv4Addr(Ipv4Addr::new(192, 0, 2, 1)),
        ),
        ("destinationTransportPort", V::U16(0)),
        ("protocolIdentifier", V::U8(17)),
        ("icmpTypeCodeIPv4", V::U16(0)),
        // A snapshot of a live flow: active timeout.
        ("flowEndReason", V::U8(2)),
        ("sourcePodNamespace", s("")),
        ("sourcePodName", s("")),
        ("destinationNodeName", s("")),
        // Not pods: no label object at all.
        ("sourcePodLabels", s("")),
        ("destinationPodLabels", s("")),
        ("flowType", V::U8(3)),
        ("ingressNetworkPolicyName", s("")),
        ("ingressNetworkPolicyType", V::U8(0)),
        ("ingressNetworkPolicyRuleAction", V::U8(0)),
        ("egressNetworkPolicyRuleName", s("")),
        ("egressNetworkPolicyRuleAction", V::U8(0)),
        ("lumenVerdict", V::U8(1)),
        ("lumenDropReason", V::U8(0)),
        ("lumenTag", V::U32(0)),
        // Unparsable correlation id.
        ("lumenCorrelationId", V::U64(0)),
        ("lumenCommunityId", s("")),
        ("lumenSourceIdentity", V::U32(2)),
        ("lumenTraced", V::U8(0)),
        ("lumenObservationNode", s("")),
    ] {
        assert_eq!(value(record, name), Some(&want), "{name}");
    }
    // Everything else matches the reference mapping too.
    assert_eq!(record, &reference_record(&sparse_flow()));
}

#[test]
fn a_pod_without_labels_exports_an_empty_object() {
    let mut flow = full_flow();
    flow.source.labels.clear();
    let records = decode(&[&flow]);
    assert_eq!(value(&records[0], "sourcePodLabels"), Some(&s("{}")));
}

#[test]
fn ipfixrws_writer_produces_the_same_bytes() {
    let reference = ReferenceEncoder::new(DEFAULT_LUMEN_PEN);
    let mut theirs = Vec::new();
    reference
        .write_template_message(&mut theirs, HEADER)
        .expect("reference templates");
    assert_eq!(templates(), theirs, "template message");

    let flows: Vec<Flow> = [full_flow(), sparse_flow()]
        .into_iter()
        .chain((0..5).map(numbered_flow))
        .collect();
    let refs: Vec<&Flow> = flows.iter().collect();
    let mut theirs = Vec::new();
    reference
        .write_message(&mut theirs, HEADER, &refs)
        .expect("reference data");
    assert_eq!(message(&refs), theirs, "data message");
}

#[test]
fn the_flow_template_declares_every_element_with_its_enterprise() {
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    let msg = decoder.decode(&templates()).expect("templates decode");
    let flow_template: Vec<_> = msg.iter_template_records().collect();
    assert_eq!(flow_template.len(), 1);
    assert_eq!(flow_template[0].template_id, 256);
    let fields = &flow_template[0].field_specifiers;
    assert_eq!(fields.len(), FLOW_TEMPLATE.len());
    assert_eq!(fields[0], FieldSpecifier::new(None, 152, 8));
    assert_eq!(fields[8], FieldSpecifier::new(None, 86, 8), "totals first");
    assert_eq!(
        fields[12],
        FieldSpecifier::new(None, 6, 1),
        "flags in one byte"
    );
    assert_eq!(
        fields[14],
        FieldSpecifier::new(Some(32473), 1, 1),
        "Lumen's next"
    );
    assert_eq!(fields[23], FieldSpecifier::new(Some(56506), 100, 65535));
    assert_eq!(
        fields[42],
        FieldSpecifier::new(Some(29305), 86, 8),
        "reverse last"
    );
    assert!(
        fields
            .iter()
            .all(|f| f.enterprise_number != Some(56506) || f.information_element_identifier >= 100)
    );

    let options: Vec<_> = msg.iter_options_template_records().collect();
    assert_eq!(options.len(), 1);
    assert_eq!(options[0].template_id, 257);
    assert_eq!(options[0].scope_field_count, 1);
    let ids: Vec<u16> = options[0]
        .field_specifiers
        .iter()
        .map(|f| f.information_element_identifier)
        .collect();
    assert_eq!(ids, [144, 166, 167, 168, 323, 323, 41, 42, 40]);
}

#[test]
fn lumens_elements_follow_the_configured_enterprise_number() {
    let mut out = Vec::new();
    write_template_message(&mut out, HEADER, 4_242_424).expect("templates");
    let decoder = Decoder::new(4_242_424);
    let msg = decoder.decode(&out).expect("templates decode");
    let fields = &msg
        .iter_template_records()
        .next()
        .expect("template")
        .field_specifiers;
    let lumen: Vec<_> = fields
        .iter()
        .filter(|f| f.enterprise_number == Some(4_242_424))
        .collect();
    assert_eq!(lumen.len(), 9);
    decoder
        .decode(&message(&[&full_flow()]))
        .expect("data decodes");
    assert_eq!(
        write_template_message(&mut out, HEADER, 56506),
        Err(EncodeError::ReservedEnterprise {
            pen: 56506,
            owner: "Project Antrea"
        })
    );
}

#[test]
fn the_statistics_record_decodes() {
    let stats = ReliabilityStats {
        exporting_process_id: 4321,
        not_sent_flows: 17,
        not_sent_packets: 170,
        not_sent_octets: 17_000,
        first_not_sent_ms: 1_700_000_000_001,
        last_not_sent_ms: 1_700_000_009_999,
        exported_messages: 12,
        exported_flow_records: 345,
        exported_octets: 67_890,
    };
    let mut out = Vec::new();
    write_stats_message(&mut out, HEADER, &stats).expect("stats");
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    decoder.decode(&templates()).expect("templates decode");
    let msg = decoder.decode(&out).expect("stats decode");
    let records = stats_records(&msg);
    let [record] = &records[..] else {
        panic!("{} records", records.len())
    };
    for (name, want) in [
        ("exportingProcessId", V::U32(4321)),
        ("notSentFlowTotalCount", V::U64(17)),
        ("notSentPacketTotalCount", V::U64(170)),
        ("notSentOctetTotalCount", V::U64(17_000)),
        ("exportedMessageTotalCount", V::U64(12)),
        ("exportedFlowRecordTotalCount", V::U64(345)),
        ("exportedOctetTotalCount", V::U64(67_890)),
        // ipfixrw keys records by name, so of the pair it keeps the last.
        (
            "observationTimeMilliseconds",
            V::DateTimeMilliseconds(1_700_000_009_999),
        ),
    ] {
        assert_eq!(value(record, name), Some(&want), "{name}");
    }
    // The first of the pair, read from the bytes: after the header, the set header,
    // the 4-byte scope and three 8-byte counts.
    let first = 16 + 4 + 4 + 24;
    assert_eq!(out[first..first + 8], 1_700_000_000_001u64.to_be_bytes());
}

#[test]
fn long_strings_use_the_three_octet_length() {
    let mut flow = full_flow();
    flow.source.pod = Some("p".repeat(300));
    flow.destination.labels = (0..40)
        .map(|i| (format!("key{i}"), "v".repeat(5)))
        .collect();
    let records = decode(&[&flow]);
    assert_eq!(
        value(&records[0], "sourcePodName"),
        Some(&s(&"p".repeat(300)))
    );
    let labels = flow.destination.labels_json();
    assert!(labels.len() > 255);
    assert_eq!(
        value(&records[0], "destinationPodLabels"),
        Some(&s(&labels))
    );
    // The same bytes as ipfixrw's writer, which implements the length rules itself.
    let mut theirs = Vec::new();
    ReferenceEncoder::new(DEFAULT_LUMEN_PEN)
        .write_message(&mut theirs, HEADER, &[&flow])
        .expect("reference");
    assert_eq!(message(&[&flow]), theirs);
}

#[test]
fn over_long_strings_are_cut_at_a_character_boundary() {
    let mut flow = sparse_flow();
    // 3-byte characters: 65,000 is not a multiple of 3.
    flow.community_id = "€".repeat(30_000);
    let mut labels_flow = full_flow();
    labels_flow.source.labels = [("k".to_string(), "€".repeat(30_000))].into();
    let records: Vec<_> = [&flow, &labels_flow]
        .into_iter()
        .flat_map(|f| decode(&[f]))
        .collect();
    let Some(V::String(cut)) = value(&records[0], "lumenCommunityId") else {
        panic!("no community id")
    };
    assert_eq!(cut.len(), 64_998);
    assert_eq!(cut.as_str(), &flow.community_id[..64_998]);
    let Some(V::String(labels)) = value(&records[1], "sourcePodLabels") else {
        panic!("no labels")
    };
    assert!(labels.len() <= MAX_STRING_LEN && labels.len() > MAX_STRING_LEN - 3);
    assert!(
        labels_flow
            .source
            .labels_json()
            .starts_with(labels.as_str())
    );
}

#[test]
fn a_record_too_large_for_any_message_is_refused_cleanly() {
    let mut flow = full_flow();
    flow.node = "n".repeat(60_000);
    flow.community_id = "c".repeat(60_000);
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        write_record(&mut out, &flow),
        Err(EncodeError::RecordTooLarge { .. })
    ));
    assert_eq!(out, [1, 2, 3], "nothing written");
    assert!(matches!(
        write_message(&mut out, HEADER, &[&full_flow(), &flow]),
        Err(EncodeError::RecordTooLarge { .. })
    ));
    assert_eq!(out, [1, 2, 3], "nothing written");
}

#[test]
fn a_message_over_the_ipfix_maximum_is_refused() {
    let mut big = full_flow();
    big.node = "n".repeat(40_000);
    let mut out = Vec::new();
    assert!(matches!(
        write_message(&mut out, HEADER, &[&big, &big]),
        Err(EncodeError::MessageTooLarge { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn messages_are_whole_sets_behind_a_header() {
    let flows: Vec<Flow> = (0..3).map(numbered_flow).collect();
    let refs: Vec<&Flow> = flows.iter().collect();
    let out = message(&refs);
    assert_eq!(out[0..2], [0, 10]);
    assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), out.len());
    assert_eq!(out[16..18], [1, 0], "set 256");
    assert_eq!(
        usize::from(u16::from_be_bytes([out[18], out[19]])),
        out.len() - 16
    );
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    decoder.decode(&templates()).expect("templates");
    let msg = decoder.decode(&out).expect("decodes");
    assert!(matches!(&msg.sets[0].records, Records::Data { data, .. } if data.len() == 3));
}
