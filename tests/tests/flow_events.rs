//! Privileged: the flow tracker's ring buffer in the kernel, driven with
//! BPF_PROG_TEST_RUN. A full ring buffer and the per-CPU event budget both lose
//! events; the agent's pipeline must turn each loss into a lost-events record
//! with the exact count the datapath kept, and still know every flow.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions};
use lumen_agent::cluster::ClusterState;
use lumen_agent::datapath::abi::names;
use lumen_agent::datapath::{Datapath, FlowSettings, LoadOptions};
use lumen_agent::flows::{FlowConfig, Flows};
use lumen_api::flow::{FlowEvent, LostSource, TcpFlags};
use lumen_api::{FlowFilter, FlowQuery};
use lumen_tests::bench::packet::tcp_packet;
use lumen_tests::harness;

const FIN_ACK: u8 = 0x11;
const PACKETS: u16 = 300;

/// A datapath whose `from_pod` has seen PACKETS FIN segments of distinct flows.
fn datapath_after_fins(events_bytes: u32, events_per_sec: u32) -> Datapath {
    let mut dp = Datapath::load_with(LoadOptions {
        max_flows: 1024,
        events_bytes,
    })
    .expect("datapath loads");
    dp.configure(
        1,
        Ipv4Addr::new(192, 0, 2, 11),
        "10.244.0.0/16".parse().expect("cidr"),
        "10.244.1.0/24".parse().expect("cidr"),
        FlowSettings {
            enabled: true,
            events_per_sec,
        },
    )
    .expect("configure");
    let src = Ipv4Addr::new(10, 244, 1, 2);
    let dst = Ipv4Addr::new(203, 0, 113, 10);
    for i in 0..PACKETS {
        let packet = tcp_packet([[2; 6], [0xee; 6]], (src, 30000 + i), (dst, 80), FIN_ACK);
        let mut out = vec![0u8; packet.len() + 64];
        dp.program(names::FROM_POD)
            .expect("from_pod")
            .test_run(TestRunOptions {
                data_in: Some(&packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("test run");
    }
    dp
}

fn counter(dp: &Datapath, name: &str) -> u64 {
    dp.counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .expect("counter exists")
}

/// Run the pipeline over `dp` until it reported a loss from `source` and every
/// flow; returns the loss count it reported and how many flows it named.
fn pipeline_reports(dp: Datapath, source: LostSource) -> (u64, usize) {
    let mut dp = dp;
    let maps = dp.take_flow_maps().expect("flow maps");
    let dp = Arc::new(Mutex::new(dp));
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(ClusterState::default()));
    let flows = Flows::start(
        "node-1",
        maps,
        dp,
        rx,
        FlowConfig {
            drain_interval: Duration::from_millis(100),
            ..FlowConfig::default()
        },
        Vec::new(),
        None,
    )
    .expect("pipeline starts");
    let all = FlowFilter::try_from(&FlowQuery::default()).expect("filter");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (lost, ended) = loop {
        let (events, _, _) = flows.hub.open(&all, None);
        let lost: u64 = events
            .iter()
            .filter_map(|e| match e.as_ref() {
                FlowEvent::LostEvents(l) if l.source == source => Some(l.count),
                _ => None,
            })
            .sum();
        let ended = events
            .iter()
            .filter_map(|e| match e.as_ref() {
                FlowEvent::Flow(f) if f.tcp_flags.has(TcpFlags::FIN) => Some(f.source.port),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<u16>>()
            .len();
        if (lost > 0 && ended >= usize::from(PACKETS)) || Instant::now() > deadline {
            break (lost, ended);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stats = flows.stats();
    flows.stop();
    // Every FIN was a 40-byte IP packet leaving a pod, each accounted as egress.
    let egress = stats.traffic.egress.forwarded;
    assert_eq!(egress.packets, u64::from(PACKETS), "{stats:?}");
    assert_eq!(egress.bytes, 40 * u64::from(PACKETS), "{stats:?}");
    assert_eq!(stats.traffic.total(), egress, "{stats:?}");
    assert_eq!(
        match source {
            LostSource::RingBuffer => stats.lost.ring_buffer,
            LostSource::RateLimit => stats.lost.rate_limit,
            _ => 0,
        },
        lost,
        "the agent's state counts the same loss: {stats:?}"
    );
    (lost, ended)
}

#[test]
fn a_full_ring_buffer_becomes_a_lost_events_record() {
    if !harness::require_root("a_full_ring_buffer_becomes_a_lost_events_record") {
        return;
    }
    // One page: room for a few dozen events, not 300.
    let dp = datapath_after_fins(4096, 1_000_000);
    let written = counter(&dp, "events");
    let lost_in_kernel = counter(&dp, "events_lost");
    assert!(
        written > 0 && written < u64::from(PACKETS),
        "{written} events fit"
    );
    assert_eq!(written + lost_in_kernel, u64::from(PACKETS));
    assert_eq!(counter(&dp, "flows_created"), u64::from(PACKETS));

    let (reported, flows) = pipeline_reports(dp, LostSource::RingBuffer);
    assert_eq!(
        reported, lost_in_kernel,
        "lost-events record carries the count"
    );
    // The events were lost, the flows were not: the table still has every one.
    assert_eq!(flows, usize::from(PACKETS), "every flow has a record");
}

#[test]
fn the_event_budget_becomes_a_lost_events_record() {
    if !harness::require_root("the_event_budget_becomes_a_lost_events_record") {
        return;
    }
    let dp = datapath_after_fins(256 * 1024, 10);
    let limited = counter(&dp, "events_rate_limited");
    assert_eq!(counter(&dp, "events") + limited, u64::from(PACKETS));
    assert!(
        limited >= u64::from(PACKETS) - 20,
        "{limited} over a budget of 10/s/CPU"
    );
    let (reported, _) = pipeline_reports(dp, LostSource::RateLimit);
    assert_eq!(reported, limited);
}
