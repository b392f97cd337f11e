//! `lumen trace`: the path of one packet from a pod, hop by hop across nodes,
//! with the verdict at each hop (Antrea's Traceflow). The arguments become a
//! [`TraceRequest`], checked here (the request itself, then the pods and nodes
//! it names against the lab's state) before any request is sent;
//! `lumen_api::trace::orchestrate` runs it over every node agent of the lab,
//! and `format` prints the result as a tree, JSON or YAML.

mod format;

use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use lumen_api::flow::{Protocol, TcpFlags};
use lumen_api::policy::PodRef;
use lumen_api::trace::orchestrate::{self, NodeAgent, OrchestrateError};
use lumen_api::trace::{
    TraceDestination, TraceMode, TracePhase, TraceRequest, TraceRequestError, TraceResult,
};
use lumen_lab::{DEFAULT_NAME, DEFAULT_STATE_ROOT, Lab, LabError, LabState};

use self::format::{FormatError, Output};
use crate::observe::ColorChoice;

/// The destination port of an injected TCP, UDP or SCTP trace that names none.
const DEFAULT_PORT: u16 = 80;
/// How many names an unknown-pod error lists before it stops.
const KNOWN_SHOWN: usize = 12;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Source pod: ns/name, or name in the namespace default
    #[arg(value_name = "SRC")]
    source: String,
    /// Destination: a pod (ns/name or name), node/NAME, an IPv4 address or IP:PORT
    #[arg(value_name = "DST")]
    destination: String,
    /// Protocol of the traced packet (ICMP: an echo request)
    #[arg(long, value_enum, default_value_t)]
    proto: Proto,
    /// Destination port [default: 80 when injected]; with --live, only packets to it
    #[arg(long, value_name = "PORT")]
    dport: Option<u16>,
    /// Source port [default: the agent's choice]; with --live, only packets from it
    #[arg(long, value_name = "PORT")]
    sport: Option<u16>,
    /// TCP flags of the injected packet: SYN,ACK,FIN,RST,PSH,URG [default: SYN]
    #[arg(long, value_name = "FLAGS")]
    flags: Option<String>,
    /// Trace the next real packet from SRC to DST instead of injecting one
    #[arg(long)]
    live: bool,
    /// With --live: trace only a packet that ends up dropped
    #[arg(long)]
    dropped_only: bool,
    /// How long the trace may take: 500ms, 5s, 1m (a bare number is seconds)
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    timeout: String,
    /// How to print the result
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    /// Colour the actions and the verdict (and draw the tree with box characters)
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
    /// The lab whose node agents run the trace
    #[arg(long, default_value = DEFAULT_NAME)]
    lab: String,
    /// Directory holding every lab's state
    #[arg(long, default_value = DEFAULT_STATE_ROOT, hide = true)]
    state_root: PathBuf,
}

/// The protocols a trace can carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl Proto {
    fn protocol(self) -> Protocol {
        match self {
            Self::Tcp => Protocol::TCP,
            Self::Udp => Protocol::UDP,
            Self::Sctp => Protocol::SCTP,
            Self::Icmp => Protocol::ICMP,
        }
    }
}

/// Why `lumen trace` failed. A trace that ran and found no complete path is
/// not an error: it is printed, and the exit status says so.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("source {value:?} is not a pod (ns/name or name)")]
    Source { value: String },
    #[error(
        "destination {value:?} is neither a pod (ns/name or name), node/NAME, \
         an IPv4 address nor IP:PORT"
    )]
    Destination { value: String },
    #[error("destination {value:?} says port {port} but --dport says {dport}")]
    PortConflict {
        value: String,
        port: u16,
        dport: u16,
    },
    #[error("--flags {value:?}: {flag:?} is not a TCP flag (SYN, ACK, FIN, RST, PSH, URG)")]
    Flag { value: String, flag: String },
    #[error("--timeout {value:?} is not a duration (500ms, 5s, 1m)")]
    Timeout { value: String },
    #[error("invalid trace")]
    Request(#[source] TraceRequestError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("lab {lab} has no pod {pod} (its pods: {known})")]
    UnknownPod {
        lab: String,
        pod: String,
        known: String,
    },
    #[error("lab {lab} has no node {node} (its nodes: {known})")]
    UnknownNode {
        lab: String,
        node: String,
        known: String,
    },
    #[error("the trace could not run")]
    Orchestrate(#[source] OrchestrateError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

/// Where a checked request runs: the source pod's node, and every node agent
/// of the lab (any of them may see the packet).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    source_node: String,
    agents: Vec<NodeAgent>,
}

impl TraceArgs {
    /// The request the arguments ask for, checked as far as it can be without
    /// the lab (the agent checks the same again).
    fn request(&self) -> Result<TraceRequest, TraceError> {
        let source = PodRef::parse(&self.source).ok_or_else(|| TraceError::Source {
            value: self.source.clone(),
        })?;
        let (destination, port) = destination(&self.destination)?;
        let destination_port = match (port, self.dport) {
            (Some(port), Some(dport)) if port != dport => {
                return Err(TraceError::PortConflict {
                    value: self.destination.clone(),
                    port,
                    dport,
                });
            }
            (port, dport) => port.or(dport),
        };
        let protocol = self.proto.protocol();
        let mode = if self.live {
            TraceMode::Live
        } else {
            TraceMode::Injected
        };
        let destination_port = match destination_port {
            // `validate` checks the source port alone, and an injected trace's
            // destination port only as "missing".
            Some(0) => {
                return Err(TraceError::Request(TraceRequestError::ZeroPort(
                    "destination",
                )));
            }
            None if mode == TraceMode::Injected && protocol.has_ports() => Some(DEFAULT_PORT),
            port => port,
        };
        let request = TraceRequest {
            source,
            destination,
            protocol,
            source_port: self.sport,
            destination_port,
            tcp_flags: self.flags.as_deref().map(tcp_flags).transpose()?,
            mode,
            dropped_only: self.dropped_only,
            timeout_ms: timeout_ms(&self.timeout)?,
        };
        request.validate().map_err(TraceError::Request)?;
        Ok(request)
    }
}

/// `DST` as written: what it names, and the port `IP:PORT` gives.
fn destination(value: &str) -> Result<(TraceDestination, Option<u16>), TraceError> {
    let bad = || TraceError::Destination {
        value: value.to_owned(),
    };
    if let Some(node) = value.strip_prefix("node/") {
        if node.is_empty() || node.contains('/') {
            return Err(bad());
        }
        return Ok((TraceDestination::Node(node.to_owned()), None));
    }
    if let Ok(ip) = value.parse::<Ipv4Addr>() {
        return Ok((TraceDestination::Ip(ip), None));
    }
    // Pod names never hold a colon: this is an address with a port, or nothing.
    if value.contains(':') {
        let address: SocketAddrV4 = value.parse().map_err(|_| bad())?;
        return Ok((TraceDestination::Ip(*address.ip()), Some(address.port())));
    }
    PodRef::parse(value)
        .map(|pod| (TraceDestination::Pod(pod), None))
        .ok_or_else(bad)
}

/// `SYN,ACK`: flag names in any case, separated by commas.
fn tcp_flags(value: &str) -> Result<TcpFlags, TraceError> {
    let mut bits = 0;
    for flag in value.split(',').map(str::trim) {
        bits |= match flag.to_ascii_uppercase().as_str() {
            "FIN" => TcpFlags::FIN,
            "SYN" => TcpFlags::SYN,
            "RST" => TcpFlags::RST,
            "PSH" => TcpFlags::PSH,
            "ACK" => TcpFlags::ACK,
            "URG" => TcpFlags::URG,
            _ => {
                return Err(TraceError::Flag {
                    value: value.to_owned(),
                    flag: flag.to_owned(),
                });
            }
        };
    }
    Ok(TcpFlags(bits))
}

/// `500ms`, `5s`, `1m` or `5` (seconds), in milliseconds. The range is
/// `TraceRequest::validate`'s to check.
fn timeout_ms(value: &str) -> Result<u64, TraceError> {
    let bad = || TraceError::Timeout {
        value: value.to_owned(),
    };
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

/// The pods and node `request` names, looked up in the lab; where it runs.
fn resolve(lab: &LabState, request: &TraceRequest) -> Result<Target, TraceError> {
    let find_pod = |pod: &PodRef| {
        lab.pods
            .iter()
            .find(|p| p.namespace == pod.namespace && p.name == pod.name)
            .ok_or_else(|| TraceError::UnknownPod {
                lab: lab.name.clone(),
                pod: pod.to_string(),
                known: known(
                    lab.pods
                        .iter()
                        .map(|p| format!("{}/{}", p.namespace, p.name)),
                ),
            })
    };
    let source = find_pod(&request.source)?;
    match &request.destination {
        TraceDestination::Pod(pod) => {
            find_pod(pod)?;
        }
        TraceDestination::Node(node) if lab.node(node).is_none() => {
            return Err(TraceError::UnknownNode {
                lab: lab.name.clone(),
                node: node.clone(),
                known: known(lab.nodes.iter().map(|n| n.name.clone())),
            });
        }
        TraceDestination::Node(_) | TraceDestination::Ip(_) => {}
    }
    Ok(Target {
        source_node: source.node.clone(),
        agents: lab
            .nodes
            .iter()
            .map(|n| NodeAgent {
                node: n.name.clone(),
                socket: n.socket.clone(),
            })
            .collect(),
    })
}

/// `a, b, c`, cut short after [`KNOWN_SHOWN`] names.
fn known(names: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = names.collect();
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut text = names
        .iter()
        .take(KNOWN_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > KNOWN_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - KNOWN_SHOWN));
    }
    text
}

pub fn run(args: TraceArgs) -> Result<ExitCode, TraceError> {
    let request = args.request()?;
    let lab = Lab::open(&args.lab, &args.state_root)?;
    let target = resolve(lab.state(), &request)?;
    let result = orchestrate::run(&target.agents, &target.source_node, &request)
        .map_err(TraceError::Orchestrate)?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = args
        .color
        .enabled(std::io::stdout().is_terminal(), no_color);
    let text = format::render(args.output, &result, color)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        // The reader went away (`lumen trace … | head`): the status still counts.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(TraceError::Output(e)),
        _ => {}
    }
    Ok(outcome(&result, args.output))
}

/// The exit status: success when the trace completed, whatever its verdict.
/// The tree already says why a trace failed; JSON and YAML readers get it on
/// standard error too.
fn outcome(result: &TraceResult, output: Output) -> ExitCode {
    let reason = result.reason.as_deref();
    let succeeded = result.phase == TracePhase::Succeeded;
    if output != Output::Tree {
        match (succeeded, reason) {
            (true, Some(note)) => eprintln!("warning: trace {}: {note}", result.id),
            (true, None) => {}
            (false, reason) => eprintln!(
                "error: trace {} failed: {}",
                result.id,
                reason.unwrap_or("no reason given")
            ),
        }
    }
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests;
