//! The scrape-cost benchmark: rendering `/metrics` for a node with 10,000
//! NetworkPolicy rules and 100,000 active flows, against the same render for an
//! idle node, in time and in allocations (a counting allocator in lumen-bench).
//! The render reads aggregated sources, so its cost grows with the number of
//! series (rules, collectors, maps), not with flows.

use std::time::Instant;

use anyhow::Result;
use lumen_agent::metrics::{CollectorCounts, MapFill, Metrics, Snapshot};
use lumen_api::flow::{Counters, DirectionTraffic, FlowStats, PolicyRef, RuleAction, Traffic};

use super::alloc;
use super::report::{Verdict, print_verdicts, ratio};
use super::stats::median;

const TARGET_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub rules: usize,
    pub flows: u64,
    pub scrapes: usize,
}

/// A busy node's sources: every family with data, `flows` active.
fn busy(flows: u64) -> Snapshot {
    let c = |n: u64| Counters {
        packets: n,
        bytes: n * 1000,
    };
    let dir = DirectionTraffic {
        forwarded: c(flows * 100),
        dropped: c(flows),
    };
    let mut stats = FlowStats {
        node: "node-1".into(),
        active_flows: flows,
        table_entries: flows,
        records: flows * 3,
        snapshots: flows * 4,
        events: flows,
        traffic: Traffic {
            egress: dir,
            ingress: dir,
        },
        ..FlowStats::default()
    };
    stats.drops.insert("POLICY".into(), c(flows));
    stats.ended.insert("IDLE_TIMEOUT".into(), flows);
    Snapshot {
        flows: stats,
        flows_created: flows * 4,
        maps: vec![MapFill {
            name: "flows",
            entries: flows,
            capacity: 131_072,
        }],
        collectors: vec![CollectorCounts {
            collector: "udp://192.0.2.1:4739".into(),
            up: true,
            records_sent: flows * 3,
            messages_sent: flows,
            records_lost: 0,
            reconnects: 0,
            template_sends: 10,
        }],
        ipam: (100, 154),
        ..Snapshot::default()
    }
}

/// Median render time (ms) and allocated bytes per render over `scrapes`.
fn measure(metrics: &Metrics, snap: &Snapshot, scrapes: usize) -> Result<(f64, f64, usize)> {
    let mut times = Vec::with_capacity(scrapes);
    let mut bytes = Vec::with_capacity(scrapes);
    let mut len = 0;
    for _ in 0..scrapes {
        let before = alloc::allocated();
        let start = Instant::now();
        let text = metrics.render(snap)?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        bytes.push((alloc::allocated() - before) as f64);
        len = text.len();
    }
    Ok((median(&times), median(&bytes), len))
}

pub fn run(options: Options) -> Result<()> {
    println!(
        "metrics: render /metrics in process, {} policy rules and {} active flows vs an idle node, median of {} scrapes",
        options.rules, options.flows, options.scrapes
    );
    let idle = Metrics::new("node-1", None)?;
    let (idle_ms, idle_bytes, idle_len) = measure(&idle, &Snapshot::default(), options.scrapes)?;

    let busy_metrics = Metrics::new("node-1", None)?;
    let rules: Vec<PolicyRef> = (0..options.rules)
        .map(|i| PolicyRef {
            namespace: format!("ns-{}", i % 50),
            name: format!("policy-{}", i / 10),
            rule: format!("ingress[{}]", i % 10),
            action: if i % 7 == 0 {
                RuleAction::Drop
            } else {
                RuleAction::Allow
            },
        })
        .collect();
    busy_metrics.policy_hits(rules.iter().map(|r| (r, 42)));
    let snap = busy(options.flows);
    let (ms, bytes, len) = measure(&busy_metrics, &snap, options.scrapes)?;

    println!();
    println!(
        "{:<36} {:>12} {:>14} {:>12}",
        "", "render ms", "allocated KiB", "body KiB"
    );
    println!(
        "{:<36} {:>12.2} {:>14.1} {:>12.1}",
        format!("{} rules, {} flows", options.rules, options.flows),
        ms,
        bytes / 1024.0,
        len as f64 / 1024.0
    );
    println!(
        "{:<36} {:>12.2} {:>14.1} {:>12.1}",
        "idle node (baseline)",
        idle_ms,
        idle_bytes / 1024.0,
        idle_len as f64 / 1024.0
    );
    println!(
        "{:<36} {:>11.1}x {:>13.1}x {:>11.1}x",
        "ratio",
        ratio(ms, idle_ms),
        ratio(bytes, idle_bytes),
        ratio(len as f64, idle_len as f64)
    );
    print_verdicts(&[Verdict::new(
        format!(
            "scrape < {TARGET_MS} ms with {} rules and {} flows",
            options.rules, options.flows
        ),
        ms < TARGET_MS,
        format!("{ms:.2} ms"),
    )]);
    Ok(())
}
