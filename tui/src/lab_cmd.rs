//! `lumen lab …`: the arguments of the lab subcommands and what they print; the
//! lab itself is built, inspected and removed by `lumen-lab`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use lumen_lab::config::DEFAULT_RELAY_PORT_BASE;
use lumen_lab::netio::serve::{self, ServeConfig};
use lumen_lab::traffic::{self, TrafficConfig};
use lumen_lab::{DEFAULT_NAME, DEFAULT_STATE_ROOT, Lab, LabConfig, LabError};

/// How often `traffic` prints its tally.
const TRAFFIC_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Timeout of each probe `traffic` sends.
const TRAFFIC_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

/// Which lab a subcommand acts on.
#[derive(Debug, Args)]
struct Which {
    /// Name of the lab (the prefix of its namespaces)
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// Directory holding every lab's state
    #[arg(long, default_value = DEFAULT_STATE_ROOT, hide = true)]
    state_root: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab: underlay, nodes with agents, pods attached through CNI, echo servers
    Up {
        #[command(flatten)]
        which: Which,
        /// Number of nodes
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// Pods per node
        #[arg(long, default_value_t = 3)]
        pods: u32,
        /// Directory of lumen-agent, lumen-cni and lumen [default: this program's]
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// An extra flag for every agent, e.g. `--agent-arg=--ipfix-collector=udp://192.0.2.1:4739`
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Run an IPFIX collector (nfcapd) in the underlay and export every node's flows to it
        #[arg(long)]
        ipfix_collector: bool,
        /// Run Prometheus on 127.0.0.1, scraping every node agent (needs /usr/bin/prometheus)
        #[arg(long)]
        prometheus: bool,
        /// With --prometheus: node N's metrics are relayed on 127.0.0.1:<BASE + N>, from the
        /// first base at or above this one whose ports are free
        #[arg(long, default_value_t = DEFAULT_RELAY_PORT_BASE)]
        metrics_relay_base: u16,
    },
    /// Show nodes, pods, their processes and identities
    Status {
        #[command(flatten)]
        which: Which,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// Remove every namespace, process, pin and file of the lab, even after a crash
    Down {
        #[command(flatten)]
        which: Which,
    },
    /// Run a command in the namespace of a pod, node-N, external or underlay
    Exec {
        #[command(flatten)]
        which: Which,
        /// pod-N-M, node-N, external or underlay
        target: String,
        /// The command and its arguments (after --)
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Probe TO from FROM's namespace, e.g. `lumen lab probe pod-1-1 pod-2-1 80/tcp`
    Probe {
        #[command(flatten)]
        which: Which,
        /// A pod, node-N or external
        from: String,
        /// A pod, node-N, external or an IPv4 address
        to: String,
        /// 80/tcp, 81/udp, 80/sctp or icmp
        spec: String,
        /// How long to wait for the answer
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// The echo server each pod runs
    #[command(hide = true)]
    Serve {
        /// Named in every answer
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',', default_value = "80,81")]
        ports: Vec<u16>,
        #[arg(long)]
        stats_file: Option<PathBuf>,
        /// Also answer SCTP INITs
        #[arg(long)]
        sctp: bool,
        #[arg(long, default_value = "0.0.0.0")]
        bind: Ipv4Addr,
    },
    /// Serve each node agent's /metrics on the loopback port `up --prometheus` chose
    #[command(hide = true)]
    RelayMetrics {
        #[command(flatten)]
        which: Which,
    },
    /// Steady probes between all pod pairs, until interrupted
    #[command(hide = true)]
    Traffic {
        #[command(flatten)]
        which: Which,
        /// Pause between probes
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

/// Why a lab subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum LabCmdError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("cannot locate the lumen executable")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot encode the {what} as JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("echo server {name} failed")]
    Serve {
        name: String,
        #[source]
        source: serve::ServeError,
    },
}

pub fn run(args: LabArgs) -> Result<ExitCode, LabCmdError> {
    match args.command {
        LabCommand::Up {
            which,
            nodes,
            pods,
            bin_dir,
            agent_args,
            ipfix_collector,
            prometheus,
            metrics_relay_base,
        } => {
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => exe_dir()?,
            };
            up(&LabConfig {
                name: which.name,
                nodes,
                pods_per_node: pods,
                bin_dir,
                state_root: which.state_root,
                agent_args,
                collector: ipfix_collector,
                prometheus,
                relay_port_base: metrics_relay_base,
            })
        }
        LabCommand::Status { which, output } => {
            let status = Lab::open(&which.name, &which.state_root)?.status();
            match output {
                Output::Text => emit(&status.to_string()),
                Output::Json => emit(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&status).map_err(|source| LabCmdError::Json {
                        what: "status",
                        source
                    })?
                )),
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { which } => {
            emit(&format!(
                "{}\n",
                lumen_lab::down(&which.name, &which.state_root)?
            ));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            which,
            target,
            command,
        } => {
            let status = Lab::open(&which.name, &which.state_root)?.exec(&target, &command)?;
            Ok(exit_code(status))
        }
        LabCommand::Probe {
            which,
            from,
            to,
            spec,
            timeout_ms,
            output,
        } => {
            let lab = Lab::open(&which.name, &which.state_root)?;
            let report = lab.probe(&from, &to, &spec, Duration::from_millis(timeout_ms))?;
            match output {
                Output::Text => emit(&format!("{report}\n")),
                Output::Json => emit(&format!(
                    "{}\n",
                    serde_json::to_string(&report).map_err(|source| LabCmdError::Json {
                        what: "probe report",
                        source
                    })?
                )),
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Serve {
            name,
            ports,
            stats_file,
            sctp,
            bind,
        } => {
            let config = ServeConfig {
                name: name.clone(),
                bind,
                ports,
                sctp,
                stats_file,
            };
            serve::serve(config).map_err(|source| LabCmdError::Serve { name, source })?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::RelayMetrics { which } => {
            let lab = Lab::open(&which.name, &which.state_root)?;
            let stop = traffic::stop_on_signals()?;
            lumen_lab::prometheus::serve_relay(lab.state(), stop)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Traffic { which, interval_ms } => {
            let lab = Lab::open(&which.name, &which.state_root)?;
            let stop = traffic::stop_on_signals()?;
            let config = TrafficConfig {
                exe: std::env::current_exe().map_err(LabCmdError::CurrentExe)?,
                interval: Duration::from_millis(interval_ms),
                report_every: TRAFFIC_REPORT_EVERY,
                probe_timeout: TRAFFIC_PROBE_TIMEOUT,
            };
            traffic::run(&lab, &config, stop, &mut |summary| {
                emit(&format!("{summary}\n"));
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(config: &LabConfig) -> Result<ExitCode, LabCmdError> {
    emit(&format!(
        "lab {}: {} nodes x {} pods (binaries from {})\n",
        config.name,
        config.nodes,
        config.pods_per_node,
        config.bin_dir.display()
    ));
    let lab = Lab::up(config, &mut |step| emit(&format!("  ✓ {step}\n")))?;
    emit(&summary(&lab));
    Ok(ExitCode::SUCCESS)
}

/// What is up and what to try next.
fn summary(lab: &Lab) -> String {
    let mut out = format!("\nlab {} is up\n", lab.name());
    for node in lab.nodes() {
        out.push_str(&format!(
            "  {:<8} {:<12} pods {:<15} agent pid {}\n",
            node.name,
            node.underlay_ip,
            node.pod_cidr,
            node.agent_pid
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ));
    }
    for pod in lab.pods() {
        out.push_str(&format!(
            "  {:<8} {:<12} on {}\n",
            pod.name,
            pod.ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            pod.node,
        ));
    }
    let ext = lab.external();
    out.push_str(&format!("  {:<8} {:<12}\n", ext.name, ext.ip));
    if let Some(prometheus) = lab.prometheus() {
        out.push_str(&format!("  prometheus {}\n", prometheus.url));
    }

    let name_arg = if lab.name() == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", lab.name())
    };
    let from = lab.pods().first().map(|p| p.name.clone());
    // Prefer a destination on another node: that crosses the overlay.
    let to = lab
        .pods()
        .iter()
        .find(|p| lab.pods().first().is_some_and(|f| f.node != p.node))
        .or_else(|| lab.pods().get(1))
        .map(|p| p.name.clone());
    out.push_str("\ntry:\n");
    if let (Some(from), Some(to)) = (from, to) {
        out.push_str(&format!("  lumen lab probe{name_arg} {from} {to} 80/tcp\n"));
    }
    out.push_str(&format!("  lumen lab status{name_arg}\n"));
    out.push_str(&format!("  lumen lab down{name_arg}\n"));
    out
}

/// Print to stdout and flush, so progress shows as it happens. A reader that went
/// away (`lumen lab status | head`) is not an error worth more than silence.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// The directory of this executable: where `cargo build` also put the agent and
/// the CNI plugin.
fn exe_dir() -> Result<PathBuf, LabCmdError> {
    let exe = std::env::current_exe().map_err(LabCmdError::CurrentExe)?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The exit code a shell would report for `status` (128 + signal if killed).
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use lumen_lab::LabState;

    use super::*;

    fn open_planned(root: &Path, name: &str) -> Lab {
        let config = LabConfig {
            name: name.to_owned(),
            nodes: 2,
            pods_per_node: 2,
            bin_dir: PathBuf::from("/bin"),
            state_root: root.to_owned(),
            ..LabConfig::default()
        };
        let state = LabState::plan(&config);
        std::fs::create_dir_all(&state.state_dir).unwrap();
        state.save().unwrap();
        Lab::open(name, root).unwrap()
    }

    #[test]
    fn summary_lists_members_and_hints() {
        let root = std::env::temp_dir().join(format!("lumen-cli-test-{}", std::process::id()));
        let text = summary(&open_planned(&root, "t1"));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(text.contains("lab t1 is up"), "{text}");
        assert!(text.contains("node-2"), "{text}");
        assert!(text.contains("external"), "{text}");
        assert!(
            text.contains("lumen lab probe --name t1 pod-1-1 pod-2-1 80/tcp"),
            "{text}"
        );
        assert!(text.contains("lumen lab down --name t1"), "{text}");
        assert!(!text.contains("prometheus"), "{text}");
    }

    #[test]
    fn summary_shows_the_prometheus_url() {
        let root = std::env::temp_dir().join(format!("lumen-cli-prom-{}", std::process::id()));
        let lab = open_planned(&root, "t2");
        let mut state = lab.state().clone();
        state.prometheus =
            Some(lumen_lab::prometheus::plan(&state, DEFAULT_RELAY_PORT_BASE, Vec::new()).unwrap());
        state.save().unwrap();
        let lab = Lab::open("t2", &root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        let url = lab.prometheus().map(|p| p.url.clone()).unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let text = summary(&lab);
        assert!(text.contains(&format!("  prometheus {url}\n")), "{text}");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(exit_code(ExitStatus::from_raw(9)), ExitCode::from(137));
    }
}
