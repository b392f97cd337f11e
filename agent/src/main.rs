//! `lumen-agent`: parses flags, enters the node's namespace, runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lumen_agent::datapath::{FlowSettings, LoadOptions};
use lumen_agent::flows::FlowConfig;
use lumen_agent::flows::cache::Timeouts;
use lumen_agent::flows::filter::ExportFilter;
use lumen_agent::metrics::PerPod;
use lumen_agent::node::Config;
use lumen_api::{FlowFilter, FlowQuery, Ipv4Cidr};

/// Lumen node agent.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (its Node object).
    #[arg(long)]
    node_name: String,
    /// Enter this network namespace (a path such as /run/netns/NAME) first.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Unix socket of the node API.
    #[arg(long, default_value = "/run/lumen/agent.sock")]
    socket: PathBuf,
    /// Directory for persistent state (IPAM).
    #[arg(long, default_value = "/var/lib/lumen")]
    state_dir: PathBuf,
    /// Directory of Kubernetes manifests (Namespace, Node, Pod) to follow.
    #[arg(long)]
    manifests: PathBuf,
    /// Interface facing the underlay; its MTU sets the pod MTU.
    #[arg(long, default_value = "eth0")]
    underlay_iface: String,
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Cidr,
    /// Override the Node's spec.podCIDR.
    #[arg(long)]
    pod_cidr: Option<Ipv4Cidr>,
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// Track flows in the datapath (`off` only to measure what tracking costs).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    observability: String,
    /// Entries of the kernel flow table (least recently used evicted).
    #[arg(long, default_value_t = 131_072)]
    max_flows: u32,
    /// Bytes of the flow-event ring buffer (a power of two ≥ 4096).
    #[arg(long, default_value_t = 256 * 1024)]
    flow_events_bytes: u32,
    /// Flow events (TCP ends, drops) each CPU may emit a second.
    #[arg(long, default_value_t = 10_000)]
    flow_events_per_sec: u32,
    /// How often the kernel flow table is read (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = duration)]
    flow_drain_interval: Duration,
    /// A flow without packets this long has ended.
    #[arg(long, default_value = "15s", value_parser = duration)]
    idle_timeout: Duration,
    /// A live flow gets a record this often.
    #[arg(long, default_value = "60s", value_parser = duration)]
    active_timeout: Duration,
    /// Recent flow events kept for `GET /v1/flows`.
    #[arg(long, default_value_t = 8192)]
    recent_flows: usize,
    /// Export IPFIX to this collector (`udp://HOST:PORT` or `tcp://HOST:PORT`); repeatable.
    #[arg(long = "ipfix-collector")]
    ipfix_collectors: Vec<lumen_exporter::Collector>,
    /// Enterprise number of Lumen's own IPFIX elements (never 56506, Antrea's).
    #[arg(long, default_value_t = lumen_exporter::IpfixConfig::default().enterprise_number)]
    ipfix_enterprise: u32,
    /// IPFIX observation domain id [default: the node's IPv4 address as a number].
    #[arg(long, default_value_t = 0)]
    ipfix_domain: u32,
    /// How often templates are re-sent over UDP.
    #[arg(long, default_value = "60s", value_parser = duration)]
    ipfix_template_refresh: Duration,
    /// How often each collector gets the exporting process's reliability statistics.
    #[arg(long, default_value = "60s", value_parser = duration)]
    ipfix_stats_interval: Duration,
    /// Serve GET /metrics on this TCP address too (inside the node's namespace);
    /// `off` for the unix socket only.
    #[arg(long, default_value = "0.0.0.0:9965")]
    metrics_addr: String,
    /// Per-pod traffic series (namespace, pod, direction), off by default.
    #[arg(long)]
    metrics_per_pod: bool,
    /// At most this many per-pod series; the rest are refused and counted.
    #[arg(long, default_value_t = 1000)]
    metrics_per_pod_max_series: usize,
    /// Export only records matching this filter (repeatable, any may match), in
    /// the query syntax of GET /v1/flows, e.g. `namespace=shop&protocol=tcp`.
    #[arg(long, value_parser = flow_filter)]
    export_allow: Vec<FlowFilter>,
    /// Never export records matching this filter (repeatable).
    #[arg(long, value_parser = flow_filter)]
    export_deny: Vec<FlowFilter>,
    /// Another node's agent, for traces this agent runs from `Traceflow`
    /// objects: `NODE=SOCKET` (repeatable; include this node's own).
    #[arg(long = "peer-agent", value_parser = peer_agent)]
    peer_agents: Vec<lumen_api::trace::orchestrate::NodeAgent>,
    /// Records buffered per collector while it is unreachable; beyond, counted lost.
    #[arg(long, default_value_t = lumen_exporter::IpfixConfig::default().max_buffered_records)]
    ipfix_max_buffered: usize,
}

/// A `GET /v1/flows` query string as a filter.
fn flow_filter(s: &str) -> Result<FlowFilter, String> {
    let uri: axum::http::Uri = format!("/?{s}")
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    let axum::extract::Query(query) =
        axum::extract::Query::<FlowQuery>::try_from_uri(&uri).map_err(|e| format!("{s:?}: {e}"))?;
    FlowFilter::try_from(&query).map_err(|e| format!("{s:?}: {e}"))
}

/// `NODE=SOCKET`.
fn peer_agent(s: &str) -> Result<lumen_api::trace::orchestrate::NodeAgent, String> {
    let (node, socket) = s
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("{s:?}: expected NODE=SOCKET"))?;
    Ok(lumen_api::trace::orchestrate::NodeAgent {
        node: node.to_owned(),
        socket: PathBuf::from(socket),
    })
}

/// `250ms`, `15s`, `2m`.
fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the runtime exists: its threads inherit the namespace.
    if let Some(netns) = &args.netns {
        lumen_agent::netns::enter(netns)?;
    }
    let config = Config {
        node_name: args.node_name,
        socket: args.socket,
        state_dir: args.state_dir,
        manifests: args.manifests,
        underlay_iface: args.underlay_iface,
        cluster_cidr: args.cluster_cidr,
        pod_cidr: args.pod_cidr,
        vxlan_port: args.vxlan_port,
        datapath: LoadOptions {
            max_flows: args.max_flows,
            events_bytes: args.flow_events_bytes,
        },
        flow_settings: FlowSettings {
            enabled: args.observability == "on",
            events_per_sec: args.flow_events_per_sec,
        },
        flows: FlowConfig {
            timeouts: Timeouts {
                idle: args.idle_timeout,
                active: args.active_timeout,
                ..Timeouts::default()
            },
            drain_interval: args.flow_drain_interval,
            recent: args.recent_flows,
            export: ExportFilter {
                allow: args.export_allow,
                deny: args.export_deny,
            },
            ..FlowConfig::default()
        },
        metrics_addr: match args.metrics_addr.as_str() {
            "off" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("--metrics-addr {addr:?}"))?,
            ),
        },
        metrics_per_pod: args.metrics_per_pod.then_some(PerPod {
            max_series: args.metrics_per_pod_max_series,
        }),
        ipfix: lumen_exporter::IpfixConfig {
            collectors: args.ipfix_collectors,
            observation_domain_id: args.ipfix_domain,
            enterprise_number: args.ipfix_enterprise,
            template_refresh: args.ipfix_template_refresh,
            stats_interval: args.ipfix_stats_interval,
            max_buffered_records: args.ipfix_max_buffered,
            ..lumen_exporter::IpfixConfig::default()
        },
        peer_agents: args.peer_agents,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, "no SIGTERM handler");
                        return std::future::pending().await;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        lumen_agent::run(config, shutdown).await
    })?;
    Ok(())
}
