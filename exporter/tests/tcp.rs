//! The exporter over TCP against a loopback listener that comes and goes: records
//! buffered while the collector is away, templates first on every connection,
//! sequence numbers per session, overflow counted in stats() and in the statistics
//! record.

mod common;

use std::time::Duration;

use common::{TcpSession, collector_stats, eventually, free_port, listen, within};
use ipfixrw::parser::{DataRecord, DataRecordValue as V, Message};
use lumen_api::Flow;
use lumen_exporter::ipfix::ie::DEFAULT_LUMEN_PEN;
use lumen_exporter::ipfix::test_util::{
    Decoder, data_record_count, flow_records, numbered_flow, reference_record, stats_records, value,
};
use lumen_exporter::{IpfixConfig, IpfixExporter};

/// What one connection delivered.
#[derive(Default)]
struct Received {
    messages: Vec<Message>,
    flows: Vec<DataRecord>,
    stats: Vec<DataRecord>,
}

/// Read messages until `done`, checking that templates come first and that sequence
/// numbers start at 0 and count every data record.
async fn read_until(
    session: &mut TcpSession,
    got: &mut Received,
    decoder: &Decoder,
    done: impl Fn(&Received) -> bool,
) {
    while !done(got) {
        let bytes = session.next().await.expect("connection open");
        let msg = decoder.decode(&bytes).expect("decodes");
        if got.messages.is_empty() {
            assert_eq!(msg.iter_template_records().count(), 1, "templates first");
            assert_eq!(
                msg.iter_options_template_records().count(),
                1,
                "then the options template"
            );
            assert_eq!(data_record_count(&msg), 0);
            assert_eq!(msg.sequence_number, 0, "a new session starts at 0");
        }
        let before: usize = got.messages.iter().map(data_record_count).sum();
        assert_eq!(msg.sequence_number as usize, before, "sequence number");
        got.flows.extend(flow_records(&msg).into_iter().cloned());
        got.stats.extend(stats_records(&msg).into_iter().cloned());
        got.messages.push(msg);
    }
}

fn expected(flows: &[Flow]) -> Vec<DataRecord> {
    flows.iter().map(reference_record).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_the_collector_and_survive_a_reconnect() {
    let port = free_port();
    let cfg = IpfixConfig {
        collectors: vec![
            format!("tcp://127.0.0.1:{port}")
                .parse()
                .expect("collector"),
        ],
        reconnect_backoff_max: Duration::from_millis(50),
        stats_interval: Duration::from_millis(300),
        max_buffered_records: 10,
        ..IpfixConfig::default()
    };
    let exporter = IpfixExporter::start(cfg).expect("start");

    // The collector is not up yet: records wait.
    let first: Vec<Flow> = (0..5).map(numbered_flow).collect();
    for flow in &first {
        exporter.export(flow);
    }
    eventually("a failed connection attempt", || {
        let s = collector_stats(&exporter, 0);
        s.last_error.is_some() && s.records_buffered == 5
    })
    .await;
    assert!(!collector_stats(&exporter, 0).connected);

    // It comes up: templates, then the buffered records, in order.
    let listener = listen(port).await;
    let mut session = TcpSession::accept(&listener).await;
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    let mut got = Received::default();
    read_until(&mut session, &mut got, &decoder, |g| g.flows.len() == 5).await;
    assert_eq!(got.flows, expected(&first));
    let stats = collector_stats(&exporter, 0);
    assert!(stats.connected);
    assert_eq!(
        (stats.records_sent, stats.records_lost, stats.reconnects),
        (5, 0, 0)
    );

    // It goes away mid-stream. The listener first: a quick reconnect must not
    // land in its backlog (that would count as one more session).
    drop(listener);
    drop(session);
    eventually("the exporter notices", || {
        !collector_stats(&exporter, 0).connected
    })
    .await;

    // More records than the buffer holds: the overflow is lost and counted.
    let second: Vec<Flow> = (100..130).map(numbered_flow).collect();
    for flow in &second {
        exporter.export(flow);
    }
    exporter.add_lost(7);
    eventually("every record buffered or lost", || {
        let s = collector_stats(&exporter, 0);
        s.records_buffered + s.records_lost == 30
    })
    .await;
    let stats = collector_stats(&exporter, 0);
    assert!(
        stats.records_lost > 0 && stats.records_buffered <= 10,
        "{stats:?}"
    );
    let lost = stats.records_lost;
    let buffered = stats.records_buffered as usize;

    // It is back: a new session, templates again, the buffered records in order,
    // then a statistics record with the loss.
    let listener = listen(port).await;
    let mut session = TcpSession::accept(&listener).await;
    let mut again = Received::default();
    read_until(&mut session, &mut again, &decoder, |g| !g.stats.is_empty()).await;
    assert_eq!(again.flows.len(), buffered);
    let all = expected(&second);
    let mut rest = all.iter();
    for record in &again.flows {
        assert!(
            rest.any(|r| r == record),
            "records in order, each from the second round"
        );
    }
    let record = &again.stats[0];
    assert_eq!(
        value(record, "notSentFlowTotalCount"),
        Some(&V::U64(lost + 7))
    );
    assert_eq!(
        value(record, "exportedFlowRecordTotalCount"),
        Some(&V::U64(5 + buffered as u64))
    );
    let lost_packets: u64 = second
        .iter()
        .filter(|f| !again.flows.contains(&reference_record(f)))
        .map(|f| f.forward_delta.packets + f.reverse_delta.packets)
        .sum();
    assert_eq!(
        value(record, "notSentPacketTotalCount"),
        Some(&V::U64(lost_packets))
    );
    assert!(matches!(
        value(record, "observationTimeMilliseconds"),
        Some(V::DateTimeMilliseconds(t)) if *t > 1_600_000_000_000
    ));
    let stats = collector_stats(&exporter, 0);
    assert_eq!((stats.reconnects, stats.templates_sent), (1, 2));
    assert_eq!(exporter.stats().records_lost_upstream, 7);

    // Shutdown: a last statistics record, then the connection closes.
    let last_stats = again.stats.len();
    let shutdown = tokio::spawn(exporter.shutdown());
    let mut closing = Received {
        messages: again.messages,
        ..Received::default()
    };
    while let Some(bytes) = session.next().await {
        let msg = decoder.decode(&bytes).expect("decodes");
        closing
            .stats
            .extend(stats_records(&msg).into_iter().cloned());
        closing.messages.push(msg);
    }
    assert!(
        !closing.stats.is_empty(),
        "a final statistics record ({last_stats} before)"
    );
    within("shutdown", shutdown).await.expect("shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_allowed_over_tcp() {
    let listener = listen(0).await;
    let port = listener.local_addr().expect("addr").port();
    let cfg = IpfixConfig {
        collectors: vec![
            format!("tcp://127.0.0.1:{port}")
                .parse()
                .expect("collector"),
        ],
        max_message_size: 65535,
        ..IpfixConfig::default()
    };
    let exporter = IpfixExporter::start(cfg).expect("start");
    let flows: Vec<Flow> = (0..500).map(numbered_flow).collect();
    for flow in &flows {
        exporter.export(flow);
    }
    let mut session = TcpSession::accept(&listener).await;
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    let mut got = Received::default();
    read_until(&mut session, &mut got, &decoder, |g| g.flows.len() == 500).await;
    assert_eq!(got.flows, expected(&flows));
    // 500 records of a few hundred bytes: a handful of messages, none over the limit.
    assert!(got.messages.len() < 10, "{} messages", got.messages.len());
    exporter.shutdown().await;
}
