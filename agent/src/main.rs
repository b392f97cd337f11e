//! `lumen-agent`: parses flags, enters the node's namespace, runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lumen_agent::node::Config;
use lumen_api::Ipv4Cidr;

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
