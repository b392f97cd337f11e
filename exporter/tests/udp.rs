//! The exporter over UDP, against a loopback socket decoded with ipfixrw: sequence
//! numbers, message sizes, template refresh, send errors, independent collectors.

mod common;

use std::time::Duration;

use common::{UdpCollector, collector_stats, eventually, free_port, within};
use ipfixrw::parser::{DataRecordValue as V, Message};
use lumen_api::Flow;
use lumen_exporter::ipfix::ie::DEFAULT_LUMEN_PEN;
use lumen_exporter::ipfix::test_util::{
    Decoder, data_record_count, flow_records, full_flow, numbered_flow, reference_record,
    sparse_flow, stats_records, value,
};
use lumen_exporter::{IpfixConfig, IpfixExporter};

fn config(collectors: &[String]) -> IpfixConfig {
    IpfixConfig {
        collectors: collectors
            .iter()
            .map(|c| c.parse().expect("collector"))
            .collect(),
        ..IpfixConfig::default()
    }
}

fn has_stats(msgs: &[Vec<u8>]) -> bool {
    msgs.iter().any(|m| m.len() > 17 && m[16..18] == [1, 1])
}

fn is_template_message(msg: &Message) -> bool {
    msg.iter_template_records().count() == 1 && msg.iter_options_template_records().count() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_order_with_consistent_sequence_numbers_and_bounded_size() {
    let collector = UdpCollector::bind().await;
    let mut cfg = config(&[collector.url()]);
    cfg.max_message_size = 700;
    let exporter = IpfixExporter::start(cfg).expect("start");
    let mut flows: Vec<Flow> = vec![full_flow(), sparse_flow()];
    flows.extend((0..40).map(numbered_flow));
    for flow in &flows {
        exporter.export(flow);
    }
    eventually("all records sent", || {
        collector_stats(&exporter, 0).records_sent == 42
    })
    .await;
    let before_shutdown = collector_stats(&exporter, 0);
    exporter.shutdown().await;

    let datagrams = collector.recv_until(has_stats).await;
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    let msgs: Vec<Message> = datagrams
        .iter()
        .map(|d| decoder.decode(d).expect("decodes"))
        .collect();
    for d in &datagrams {
        assert!(d.len() <= 700, "a {}-byte message", d.len());
    }
    assert!(is_template_message(&msgs[0]), "templates come first");
    assert!(msgs.len() > 4, "records were spread over several messages");
    let mut sequence = 0u32;
    for msg in &msgs {
        assert_eq!(msg.sequence_number, sequence, "sequence number");
        assert_eq!(msg.observation_domain_id, 1);
        sequence += data_record_count(msg) as u32;
    }
    let received: Vec<_> = msgs.iter().flat_map(flow_records).cloned().collect();
    let expected: Vec<_> = flows.iter().map(reference_record).collect();
    assert_eq!(received, expected, "every record, in order");

    // What stats() said matches what the collector saw (the last message, the
    // statistics record, was sent after).
    let bytes: usize = datagrams[..datagrams.len() - 1].iter().map(Vec::len).sum();
    assert_eq!(before_shutdown.bytes_sent, bytes as u64);
    assert_eq!(before_shutdown.messages_sent, datagrams.len() as u64 - 1);
    assert_eq!(before_shutdown.records_lost, 0);
    assert_eq!(before_shutdown.templates_sent, 1);
    assert!(before_shutdown.connected);

    let stats = stats_records(msgs.last().expect("stats message"));
    assert_eq!(stats.len(), 1, "one statistics record at shutdown");
    assert_eq!(
        value(stats[0], "exportedFlowRecordTotalCount"),
        Some(&V::U64(42))
    );
    assert_eq!(value(stats[0], "notSentFlowTotalCount"), Some(&V::U64(0)));
    assert_eq!(
        value(stats[0], "exportedMessageTotalCount"),
        Some(&V::U64(datagrams.len() as u64 - 1))
    );
    assert_eq!(
        value(stats[0], "exportedOctetTotalCount"),
        Some(&V::U64(bytes as u64))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_resent_on_schedule() {
    let collector = UdpCollector::bind().await;
    let mut cfg = config(&[collector.url()]);
    cfg.template_refresh = Duration::from_millis(150);
    let exporter = IpfixExporter::start(cfg).expect("start");
    let start = tokio::time::Instant::now();
    let mut arrivals = Vec::new();
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    while arrivals.len() < 4 {
        let msg = collector
            .recv(common::WAIT)
            .await
            .expect("a template message");
        assert!(is_template_message(&decoder.decode(&msg).expect("decodes")));
        arrivals.push(start.elapsed());
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(120), "templates {gap:?} apart");
    }
    assert!(collector_stats(&exporter, 0).templates_sent >= 4);
    // Records after a refresh still decode with the refreshed templates.
    exporter.export(&full_flow());
    let data = collector
        .recv_until(|m| m.iter().any(|d| d[16..18] == [1, 0]))
        .await;
    let last = decoder.decode(data.last().expect("data")).expect("decodes");
    assert_eq!(flow_records(&last)[0], &reference_record(&full_flow()));
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_count_records_lost_and_the_exporter_carries_on() {
    // Nothing listens: the kernel answers with port unreachable, which fails the
    // following send with ECONNREFUSED.
    let url = format!("udp://127.0.0.1:{}", free_port());
    let exporter = IpfixExporter::start(config(&[url])).expect("start");
    let mut exported = 0u64;
    eventually("a failed send", || {
        let stats = collector_stats(&exporter, 0);
        if stats.records_lost == 0 {
            exporter.export(&full_flow());
            exported += 1;
        }
        stats.records_lost > 0
    })
    .await;
    eventually("every record sent or counted lost", || {
        let s = collector_stats(&exporter, 0);
        s.records_sent + s.records_lost == exported && s.records_buffered == 0
    })
    .await;
    let stats = collector_stats(&exporter, 0);
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{:?}",
        stats.last_error
    );
    assert!(stats.connected, "UDP keeps its socket");
    within("shutdown", exporter.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_hold_back_the_others() {
    let collector = UdpCollector::bind().await;
    let down = format!("tcp://127.0.0.1:{}", free_port());
    let mut cfg = config(&[down, collector.url()]);
    cfg.max_buffered_records = 10;
    cfg.reconnect_backoff_max = Duration::from_millis(50);
    let exporter = IpfixExporter::start(cfg).expect("start");
    let flows: Vec<Flow> = (0..30).map(numbered_flow).collect();
    // In rounds that each fit a buffer: the UDP collector keeps up with every round
    // while the TCP one, unreachable, overflows.
    for (round, chunk) in flows.chunks(10).enumerate() {
        for flow in chunk {
            exporter.export(flow);
        }
        let sent = 10 * (round as u64 + 1);
        eventually("the UDP collector keeps up", || {
            collector_stats(&exporter, 1).records_sent == sent
        })
        .await;
    }
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    let mut received = Vec::new();
    while received.len() < flows.len() {
        let msg = collector
            .recv(common::WAIT)
            .await
            .expect("records over UDP");
        let msg = decoder.decode(&msg).expect("decodes");
        received.extend(flow_records(&msg).into_iter().cloned());
    }
    assert_eq!(
        received,
        flows.iter().map(reference_record).collect::<Vec<_>>()
    );

    let tcp = collector_stats(&exporter, 0);
    assert!(!tcp.connected);
    assert!(
        tcp.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("connect")),
        "{tcp:?}"
    );
    assert_eq!(tcp.records_buffered + tcp.records_lost, 30, "{tcp:?}");
    assert!(
        tcp.records_buffered <= 10 && tcp.records_lost >= 20,
        "{tcp:?}"
    );
    let udp = collector_stats(&exporter, 1);
    assert_eq!((udp.records_sent, udp.records_lost), (30, 0));
    let stats = exporter.stats();
    assert_eq!(stats.records_exported, 30);
    let json = serde_json::to_value(&stats).expect("serialises");
    assert_eq!(json["collectors"][1]["transport"], "udp");
    assert_eq!(json["collectors"][1]["records_sent"], 30);
    // Shutting down does not wait for the unreachable collector for long.
    within("shutdown", exporter.shutdown()).await;
}
