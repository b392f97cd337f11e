//! Prometheus metrics (STYLE rule 9): every family's name, help and labels are
//! defined here and nowhere else, and `docs/metrics.md` documents them. Values
//! are read at scrape time from their sources — the kernel's per-CPU counters
//! (through the flow pipeline's last read), the flow cache, the exporter, IPAM —
//! so they are exact, not sampled. Labels come from small fixed sets; per-pod
//! series exist only when switched on, under a cap.

use std::collections::HashSet;
use std::sync::Mutex;

use lumen_api::flow::{
    Counters, DirectionTraffic, Flow, FlowStats, LostCounts, PolicyRef, RuleAction,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric family {name} failed")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding the metrics failed")]
    Encode(#[source] prometheus::Error),
}

/// Per-pod series: off unless a cap is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerPod {
    pub max_series: usize,
}

/// One BPF map's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// One IPFIX collector's counters, as the exporter reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorCounts {
    pub collector: String,
    pub up: bool,
    pub records_sent: u64,
    pub messages_sent: u64,
    pub records_lost: u64,
    pub reconnects: u64,
    pub template_sends: u64,
}

/// Everything a scrape reads, gathered by the caller from the agent's parts.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub flows: FlowStats,
    pub flows_created: u64,
    pub maps: Vec<MapFill>,
    pub collectors: Vec<CollectorCounts>,
    /// (used, free) addresses of the node's pod CIDR.
    pub ipam: (u64, u64),
    pub traces: TraceSnapshot,
}

/// Traces started on this node, how they ended, and the datapath's hop reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceSnapshot {
    pub started: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub left_cluster: u64,
    pub failed: u64,
    /// Hop observations the datapath wrote, and those lost (ring buffer full).
    pub hops: u64,
    pub hops_lost: u64,
}

/// The registry and every family.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    drops: IntCounterVec,
    drop_bytes: IntCounterVec,
    flows_created: IntCounter,
    flows_ended: IntCounterVec,
    flows_active: IntGauge,
    flow_records: IntCounterVec,
    flow_events: IntCounter,
    flow_lost: IntCounterVec,
    ipfix_up: IntGaugeVec,
    ipfix_records_sent: IntCounterVec,
    ipfix_messages_sent: IntCounterVec,
    ipfix_records_lost: IntCounterVec,
    ipfix_reconnects: IntCounterVec,
    ipfix_template_sends: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    cni_duration: HistogramVec,
    cni_errors: IntCounterVec,
    ipam: IntGaugeVec,
    policy_hits: IntCounterVec,
    traces_started: IntCounter,
    traces: IntCounterVec,
    trace_hops: IntCounter,
    trace_hops_lost: IntCounter,
    pod_packets: IntCounterVec,
    pod_bytes: IntCounterVec,
    series_refused: IntCounter,
    per_pod: Option<PerPod>,
    pod_series: Mutex<HashSet<(String, String, &'static str)>>,
    node: String,
}

/// Register a family built by `make`, naming it in any error.
fn register<T>(
    registry: &Registry,
    name: &'static str,
    make: impl FnOnce() -> prometheus::Result<T>,
) -> Result<T, MetricsError>
where
    T: prometheus::core::Collector + Clone + 'static,
{
    let err = |source| MetricsError::Register { name, source };
    let family = make().map_err(err)?;
    registry.register(Box::new(family.clone())).map_err(err)?;
    Ok(family)
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

/// Move a counter up to `value`: sources are monotonic, so this is exact.
fn sync(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// CNI request durations: 1 ms to ~8 s.
const CNI_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

impl Metrics {
    pub fn new(node: &str, per_pod: Option<PerPod>) -> Result<Self, MetricsError> {
        let r = Registry::new();
        let build = register(&r, "lumen_build_info", || {
            gauge_vec(
                "lumen_build_info",
                "Lumen's version; always 1.",
                &["version"],
            )
        })?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Self {
            packets: register(&r, "lumen_datapath_packets_total", || {
                counter_vec(
                    "lumen_datapath_packets_total",
                    "IP packets the datapath accounted, by direction and verdict.",
                    &["direction", "verdict"],
                )
            })?,
            bytes: register(&r, "lumen_datapath_bytes_total", || {
                counter_vec(
                    "lumen_datapath_bytes_total",
                    "IP bytes the datapath accounted, by direction and verdict.",
                    &["direction", "verdict"],
                )
            })?,
            drops: register(&r, "lumen_datapath_drops_total", || {
                counter_vec(
                    "lumen_datapath_drops_total",
                    "Packets the datapath dropped, by reason.",
                    &["reason"],
                )
            })?,
            drop_bytes: register(&r, "lumen_datapath_drop_bytes_total", || {
                counter_vec(
                    "lumen_datapath_drop_bytes_total",
                    "Bytes of packets the datapath dropped, by reason.",
                    &["reason"],
                )
            })?,
            flows_created: register(&r, "lumen_flows_created_total", || {
                IntCounter::new(
                    "lumen_flows_created_total",
                    "Flows the datapath added to its flow table.",
                )
            })?,
            flows_ended: register(&r, "lumen_flows_ended_total", || {
                counter_vec(
                    "lumen_flows_ended_total",
                    "Flows whose final record was emitted, by end reason.",
                    &["reason"],
                )
            })?,
            flows_active: register(&r, "lumen_flows_active", || {
                IntGauge::new("lumen_flows_active", "Flows the agent tracks now.")
            })?,
            flow_records: register(&r, "lumen_flow_records_total", || {
                counter_vec(
                    "lumen_flow_records_total",
                    "Flow records emitted: final, periodic (active timeout), snapshot.",
                    &["kind"],
                )
            })?,
            flow_events: register(&r, "lumen_flow_events_total", || {
                IntCounter::new(
                    "lumen_flow_events_total",
                    "Ring-buffer events read (TCP ends, drops).",
                )
            })?,
            flow_lost: register(&r, "lumen_flow_lost_total", || {
                counter_vec(
                    "lumen_flow_lost_total",
                    "Flow records lost on the way, by where.",
                    &["source"],
                )
            })?,
            ipfix_up: register(&r, "lumen_ipfix_collector_up", || {
                gauge_vec(
                    "lumen_ipfix_collector_up",
                    "1 while the IPFIX collector is connected (TCP) or being sent to (UDP).",
                    &["collector"],
                )
            })?,
            ipfix_records_sent: register(&r, "lumen_ipfix_records_sent_total", || {
                counter_vec(
                    "lumen_ipfix_records_sent_total",
                    "Flow records sent to the IPFIX collector.",
                    &["collector"],
                )
            })?,
            ipfix_messages_sent: register(&r, "lumen_ipfix_messages_sent_total", || {
                counter_vec(
                    "lumen_ipfix_messages_sent_total",
                    "IPFIX messages sent to the collector (templates and statistics included).",
                    &["collector"],
                )
            })?,
            ipfix_records_lost: register(&r, "lumen_ipfix_records_lost_total", || {
                counter_vec(
                    "lumen_ipfix_records_lost_total",
                    "Flow records that could not be delivered to the IPFIX collector.",
                    &["collector"],
                )
            })?,
            ipfix_reconnects: register(&r, "lumen_ipfix_reconnects_total", || {
                counter_vec(
                    "lumen_ipfix_reconnects_total",
                    "TCP reconnections to the IPFIX collector.",
                    &["collector"],
                )
            })?,
            ipfix_template_sends: register(&r, "lumen_ipfix_template_sends_total", || {
                counter_vec(
                    "lumen_ipfix_template_sends_total",
                    "IPFIX template sets sent to the collector.",
                    &["collector"],
                )
            })?,
            map_entries: register(&r, "lumen_bpf_map_entries", || {
                gauge_vec(
                    "lumen_bpf_map_entries",
                    "Entries in a BPF map now.",
                    &["map"],
                )
            })?,
            map_capacity: register(&r, "lumen_bpf_map_capacity", || {
                gauge_vec(
                    "lumen_bpf_map_capacity",
                    "Entries a BPF map can hold.",
                    &["map"],
                )
            })?,
            cni_duration: register(&r, "lumen_cni_operation_duration_seconds", || {
                HistogramVec::new(
                    HistogramOpts::new(
                        "lumen_cni_operation_duration_seconds",
                        "Time the agent spent on a CNI request.",
                    )
                    .buckets(CNI_BUCKETS.to_vec()),
                    &["operation"],
                )
            })?,
            cni_errors: register(&r, "lumen_cni_errors_total", || {
                counter_vec(
                    "lumen_cni_errors_total",
                    "Failed CNI requests, by operation and CNI error code.",
                    &["operation", "code"],
                )
            })?,
            ipam: register(&r, "lumen_ipam_addresses", || {
                gauge_vec(
                    "lumen_ipam_addresses",
                    "Addresses of the node's pod CIDR, used and free.",
                    &["state"],
                )
            })?,
            traces_started: register(&r, "lumen_traces_started_total", || {
                IntCounter::new(
                    "lumen_traces_started_total",
                    "Traces started from a pod of this node.",
                )
            })?,
            traces: register(&r, "lumen_traces_total", || {
                counter_vec(
                    "lumen_traces_total",
                    "Traces started from a pod of this node that ended, by result.",
                    &["result"],
                )
            })?,
            trace_hops: register(&r, "lumen_trace_hops_total", || {
                IntCounter::new(
                    "lumen_trace_hops_total",
                    "Hop observations of traced packets the datapath wrote on this node.",
                )
            })?,
            trace_hops_lost: register(&r, "lumen_trace_hops_lost_total", || {
                IntCounter::new(
                    "lumen_trace_hops_lost_total",
                    "Hop observations lost because the trace ring buffer was full.",
                )
            })?,
            policy_hits: register(&r, "lumen_policy_rule_hits_total", || {
                counter_vec(
                    "lumen_policy_rule_hits_total",
                    "Flows decided by each NetworkPolicy rule.",
                    &["policy_namespace", "policy", "rule", "action"],
                )
            })?,
            pod_packets: register(&r, "lumen_pod_packets_total", || {
                counter_vec(
                    "lumen_pod_packets_total",
                    "Packets of flows with a local pod (per-pod series, opt-in).",
                    &["namespace", "pod", "direction"],
                )
            })?,
            pod_bytes: register(&r, "lumen_pod_bytes_total", || {
                counter_vec(
                    "lumen_pod_bytes_total",
                    "Bytes of flows with a local pod (per-pod series, opt-in).",
                    &["namespace", "pod", "direction"],
                )
            })?,
            series_refused: register(&r, "lumen_metrics_series_refused_total", || {
                IntCounter::new(
                    "lumen_metrics_series_refused_total",
                    "Per-pod series not created because of the cap.",
                )
            })?,
            registry: r,
            per_pod,
            pod_series: Mutex::new(HashSet::new()),
            node: node.to_owned(),
        };
        // Families with fixed labels exist from the start, at zero.
        for direction in ["egress", "ingress"] {
            for verdict in ["forwarded", "dropped"] {
                metrics.packets.with_label_values(&[direction, verdict]);
                metrics.bytes.with_label_values(&[direction, verdict]);
            }
        }
        for source in ["ring_buffer", "rate_limit", "flow_table", "sink"] {
            metrics.flow_lost.with_label_values(&[source]);
        }
        for kind in ["final", "periodic", "snapshot"] {
            metrics.flow_records.with_label_values(&[kind]);
        }
        for operation in ["add", "del", "check", "gc"] {
            metrics.cni_duration.with_label_values(&[operation]);
        }
        for reason in ["policy", "tunnel_key", "no_config"] {
            metrics.drops.with_label_values(&[reason]);
            metrics.drop_bytes.with_label_values(&[reason]);
        }
        for reason in [
            "idle_timeout",
            "end_of_flow",
            "forced_end",
            "lack_of_resources",
        ] {
            metrics.flows_ended.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    /// Time one CNI request; the histogram gets it when the guard drops.
    pub fn cni_timer(&self, operation: &'static str) -> prometheus::HistogramTimer {
        self.cni_duration
            .with_label_values(&[operation])
            .start_timer()
    }

    pub fn cni_error(&self, operation: &'static str, code: u32) {
        self.cni_errors
            .with_label_values(&[operation, &code.to_string()])
            .inc();
    }

    /// Per-pod traffic from a record's deltas, for the sides that are pods on
    /// this node; a new series beyond the cap is refused and counted.
    pub fn pod_record(&self, flow: &Flow) {
        let Some(per_pod) = self.per_pod else {
            return;
        };
        let sides = [
            (&flow.source, flow.forward_delta, flow.reverse_delta),
            (&flow.destination, flow.reverse_delta, flow.forward_delta),
        ];
        for (ep, sent, received) in sides {
            let (Some(ns), Some(pod)) = (ep.namespace.as_deref(), ep.pod.as_deref()) else {
                continue;
            };
            if ep.node.as_deref() != Some(self.node.as_str()) {
                continue;
            }
            for (direction, c) in [("egress", sent), ("ingress", received)] {
                if !self.admit(ns, pod, direction, per_pod.max_series) {
                    self.series_refused.inc();
                    continue;
                }
                self.pod_packets
                    .with_label_values(&[ns, pod, direction])
                    .inc_by(c.packets);
                self.pod_bytes
                    .with_label_values(&[ns, pod, direction])
                    .inc_by(c.bytes);
            }
        }
    }

    /// Whether the series (ns, pod, direction) exists or may be created.
    fn admit(&self, ns: &str, pod: &str, direction: &'static str, max: usize) -> bool {
        let Ok(mut series) = self.pod_series.lock() else {
            return false;
        };
        let key = (ns.to_owned(), pod.to_owned(), direction);
        if series.contains(&key) {
            return true;
        }
        if series.len() >= max {
            return false;
        }
        series.insert(key);
        true
    }

    /// Hits of each policy rule so far (monotonic per rule).
    pub fn policy_hits<'a>(&self, hits: impl IntoIterator<Item = (&'a PolicyRef, u64)>) {
        for (rule, n) in hits {
            let action = match rule.action {
                RuleAction::Allow => "allow",
                RuleAction::Drop => "drop",
            };
            sync(
                &self.policy_hits.with_label_values(&[
                    rule.namespace.as_str(),
                    rule.name.as_str(),
                    rule.rule.as_str(),
                    action,
                ]),
                n,
            );
        }
    }

    /// Bring every family up to `snap` and render the text format.
    pub fn render(&self, snap: &Snapshot) -> Result<String, MetricsError> {
        self.update(snap);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn update(&self, snap: &Snapshot) {
        let f = &snap.flows;
        for (direction, t) in [("egress", f.traffic.egress), ("ingress", f.traffic.ingress)] {
            let DirectionTraffic { forwarded, dropped } = t;
            for (verdict, c) in [("forwarded", forwarded), ("dropped", dropped)] {
                sync(
                    &self.packets.with_label_values(&[direction, verdict]),
                    c.packets,
                );
                sync(
                    &self.bytes.with_label_values(&[direction, verdict]),
                    c.bytes,
                );
            }
        }
        for (reason, Counters { packets, bytes }) in &f.drops {
            let reason = reason.to_ascii_lowercase();
            sync(&self.drops.with_label_values(&[&reason]), *packets);
            sync(&self.drop_bytes.with_label_values(&[&reason]), *bytes);
        }
        sync(&self.flows_created, snap.flows_created);
        for (reason, n) in &f.ended {
            sync(
                &self
                    .flows_ended
                    .with_label_values(&[&reason.to_ascii_lowercase()]),
                *n,
            );
        }
        self.flows_active
            .set(i64::try_from(f.active_flows).unwrap_or(i64::MAX));
        for (kind, n) in [
            ("final", f.records),
            ("periodic", f.periodic),
            ("snapshot", f.snapshots),
        ] {
            sync(&self.flow_records.with_label_values(&[kind]), n);
        }
        sync(&self.flow_events, f.events);
        let LostCounts {
            ring_buffer,
            rate_limit,
            flow_table,
            sink,
        } = f.lost;
        for (source, n) in [
            ("ring_buffer", ring_buffer),
            ("rate_limit", rate_limit),
            ("flow_table", flow_table),
            ("sink", sink),
        ] {
            sync(&self.flow_lost.with_label_values(&[source]), n);
        }
        for c in &snap.collectors {
            let l = [c.collector.as_str()];
            self.ipfix_up.with_label_values(&l).set(i64::from(c.up));
            sync(
                &self.ipfix_records_sent.with_label_values(&l),
                c.records_sent,
            );
            sync(
                &self.ipfix_messages_sent.with_label_values(&l),
                c.messages_sent,
            );
            sync(
                &self.ipfix_records_lost.with_label_values(&l),
                c.records_lost,
            );
            sync(&self.ipfix_reconnects.with_label_values(&l), c.reconnects);
            sync(
                &self.ipfix_template_sends.with_label_values(&l),
                c.template_sends,
            );
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for m in &snap.maps {
            self.map_entries
                .with_label_values(&[m.name])
                .set(gauge(m.entries));
            self.map_capacity
                .with_label_values(&[m.name])
                .set(gauge(m.capacity));
        }
        let t = &snap.traces;
        sync(&self.traces_started, t.started);
        for (result, n) in [
            ("delivered", t.delivered),
            ("dropped", t.dropped),
            ("left_cluster", t.left_cluster),
            ("failed", t.failed),
        ] {
            sync(&self.traces.with_label_values(&[result]), n);
        }
        sync(&self.trace_hops, t.hops);
        sync(&self.trace_hops_lost, t.hops_lost);
        self.ipam
            .with_label_values(&["used"])
            .set(gauge(snap.ipam.0));
        self.ipam
            .with_label_values(&["free"])
            .set(gauge(snap.ipam.1));
    }
}
