//! Lumen's node agent: one per node. It owns the node's datapath (BPF programs
//! loaded with aya, links and routes through rtnetlink), the node's IPAM, the
//! cluster state it follows, and the node API the CNI plugin and the CLI talk to.

pub mod cluster;
pub mod datapath;
pub mod flows;
pub mod ipam;
pub mod masquerade;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod overlay;
pub mod pods;
pub mod policy;
pub mod reaper;
pub mod server;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use cluster::ClusterSource;
use cluster::manifest::{ManifestError, ManifestSource};
use flows::{FlowError, Flows};
use lumen_exporter::IpfixExporter;
use metrics::Metrics;
use node::{Config, Node, NodeError};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("re-adopting existing pods failed")]
    Readopt(#[from] pods::PodError),
    #[error("the API socket {path} cannot be bound")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Flows(#[from] FlowError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("the metrics listener {addr} cannot be bound")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the IPFIX exporter could not start")]
    Exporter(#[from] lumen_exporter::ExportError),
    #[error("the datapath's flow or trace maps are not available")]
    NoFlowMaps,
}

/// The IPFIX exporter, when collectors are configured; its observation domain is
/// the node's address unless set.
fn start_exporter(node: &Node) -> Result<Option<Arc<IpfixExporter>>, AgentError> {
    let mut config = node.config.ipfix.clone();
    if config.collectors.is_empty() {
        return Ok(None);
    }
    if config.observation_domain_id == 0 {
        config.observation_domain_id = u32::from(node.node_ip);
    }
    tracing::info!(
        collectors = ?config.collectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        domain = config.observation_domain_id,
        "exporting IPFIX"
    );
    Ok(Some(Arc::new(IpfixExporter::start(config)?)))
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let source = ManifestSource::start(config.manifests.clone(), Duration::from_secs(2))?;
    let rx = source.watch();
    let state = rx.borrow().clone();
    let socket = config.socket.clone();
    let node = Arc::new(Node::start(config, &state).await?);
    node.readopt().await?;
    let vxlan = node
        .netlink
        .require_link(node::VXLAN_IFACE)
        .await
        .map_err(NodeError::from)?;
    tokio::spawn(node.clone().follow_cluster(rx.clone(), vxlan.index));
    let (maps, trace_maps) = {
        let mut dp = node.datapath.lock().map_err(|_| AgentError::NoFlowMaps)?;
        (
            dp.take_flow_maps().ok_or(AgentError::NoFlowMaps)?,
            dp.take_trace_maps().ok_or(AgentError::NoFlowMaps)?,
        )
    };
    let tracer = trace::Tracer::start(node.clone(), trace_maps, rx.clone());
    let mut agents = node.config.peer_agents.clone();
    if !agents.iter().any(|a| a.node == node.config.node_name) {
        agents.push(lumen_api::trace::orchestrate::NodeAgent {
            node: node.config.node_name.clone(),
            socket: socket.clone(),
        });
    }
    tokio::spawn(trace::objects::follow(
        node.config.manifests.clone(),
        tracer.clone(),
        agents,
    ));
    let metrics = Arc::new(Metrics::new(
        &node.config.node_name,
        node.config.metrics_per_pod,
    )?);
    let exporter = start_exporter(&node)?;
    let mut sinks: Vec<Box<dyn flows::sink::Sink>> = Vec::new();
    if let Some(exporter) = &exporter {
        sinks.push(Box::new(exporter.clone()));
    }
    let flows = Arc::new(Flows::start(
        &node.config.node_name,
        maps,
        node.datapath.clone(),
        rx,
        node.config.flows.clone(),
        sinks,
        Some(metrics.clone()),
    )?);

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Bind {
            path: socket.clone(),
            source,
        })?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|source| AgentError::Bind {
        path: socket.clone(),
        source,
    })?;
    tracing::info!(socket = %socket.display(), "node API listening");
    let state = server::AppState {
        node,
        flows: flows.clone(),
        exporter: exporter.clone(),
        metrics,
        tracer,
    };
    if let Some(addr) = state.node.config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::MetricsBind { addr, source })?;
        tracing::info!(%addr, "metrics listening");
        let app = server::metrics_app(state.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let served = axum::serve(listener, server::app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&socket);
    let stopping = flows.clone();
    if tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .is_err()
    {
        tracing::error!("stopping the flow pipeline failed");
    }
    served.map_err(AgentError::Serve)
}
