//! `lumen policy`: the NetworkPolicies in force (`list`), what applies to a pod
//! (`for`), and why a packet would pass or not (`explain`), asked of one agent
//! or of every node agent of a lab. Queries are checked here before any
//! request; `combine` merges the agents' answers (each direction from the node
//! that enforces it) and `format` prints them.

mod combine;
mod format;

use std::error::Error;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use lumen_api::client::{Client, ClientError};
use lumen_api::flow::Protocol;
use lumen_api::paths;
use lumen_api::policy::{
    ExplainQuery, ExplainRequest, Explanation, ForQuery, PodPolicies, PodRef, PolicyList,
    PolicyQueryError,
};
use lumen_lab::{DEFAULT_NAME, DEFAULT_STATE_ROOT, Lab, LabError};
use serde::de::DeserializeOwned;

use self::combine::Answers;

/// How long an agent has to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    /// One agent's API socket, instead of a lab's agents
    #[arg(long, global = true, conflicts_with = "lab")]
    socket: Option<PathBuf>,
    /// The lab whose node agents to ask
    #[arg(long, global = true, default_value = DEFAULT_NAME)]
    lab: String,
    /// Directory holding every lab's state
    #[arg(long, global = true, default_value = DEFAULT_STATE_ROOT, hide = true)]
    state_root: PathBuf,
    /// How to print the answer
    #[arg(short = 'o', long, global = true, value_enum, default_value_t)]
    output: Output,
}

/// The `-o` formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Every NetworkPolicy in force, how many pods each selects, and the refused ones with why
    List,
    /// What applies to a pod, per direction: isolation, default deny, allowing rules
    For {
        /// ns/name, or name in the namespace default
        pod: String,
    },
    /// The verdict for one packet and the rule that decides it, with whether the datapath agrees
    Explain {
        /// Source: ns/name, name (namespace default) or an IPv4 address
        from: String,
        /// Destination: ns/name, name or an IPv4 address
        to: String,
        /// PORT/PROTO (80/tcp, 53/udp, 80/sctp), PORT for TCP, or icmp
        port: String,
    },
}

/// Why `lumen policy` failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid query")]
    Query(#[source] PolicyQueryError),
    #[error("{value:?} is not PORT/PROTO (80/tcp, 53/udp), a port, or a protocol without ports")]
    PortSpec { value: String },
    #[error("{value:?} is neither a pod (ns/name or name) nor an IPv4 address")]
    Peer { value: String },
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{agent}")]
    Agent {
        agent: String,
        #[source]
        source: ClientError,
    },
    #[error("the lab has no node agents to ask")]
    NoAgents,
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

/// One agent to ask, named by its node (or its socket).
#[derive(Debug, Clone)]
struct Agent {
    name: String,
    client: Client,
}

impl PolicyArgs {
    fn agents(&self) -> Result<Vec<Agent>, PolicyError> {
        if let Some(socket) = &self.socket {
            return Ok(vec![Agent {
                name: socket.display().to_string(),
                client: Client::new(socket, AGENT_TIMEOUT),
            }]);
        }
        let lab = Lab::open(&self.lab, &self.state_root)?;
        Ok(lab
            .nodes()
            .iter()
            .map(|n| Agent {
                name: n.name.clone(),
                client: Client::new(&n.socket, AGENT_TIMEOUT),
            })
            .collect())
    }
}

/// `FROM`/`TO`: an address, else a pod.
fn peer(value: &str) -> Result<(Option<String>, Option<String>), PolicyError> {
    if value.parse::<Ipv4Addr>().is_ok() {
        return Ok((Some(value.to_owned()), None));
    }
    match PodRef::parse(value) {
        Some(pod) => Ok((None, Some(pod.to_string()))),
        None => Err(PolicyError::Peer {
            value: value.to_owned(),
        }),
    }
}

/// `80/tcp`, `80` (TCP), or a protocol without ports (`icmp`).
fn port_spec(value: &str) -> Result<(Protocol, Option<String>), PolicyError> {
    let bad = || PolicyError::PortSpec {
        value: value.to_owned(),
    };
    match value.split_once('/') {
        Some((port, proto)) => {
            let protocol = Protocol::parse(proto).ok_or_else(bad)?;
            Ok((protocol, Some(port.to_owned())))
        }
        None if value.bytes().all(|b| b.is_ascii_digit()) => {
            Ok((Protocol::TCP, Some(value.to_owned())))
        }
        None => match Protocol::parse(value) {
            Some(p) if !p.has_ports() => Ok((p, None)),
            _ => Err(bad()),
        },
    }
}

/// The explain query for `FROM TO PORT/PROTO`, validated as the agent will.
fn explain_query(from: &str, to: &str, port: &str) -> Result<ExplainQuery, PolicyError> {
    let (from, from_pod) = peer(from)?;
    let (to, to_pod) = peer(to)?;
    let (protocol, port) = port_spec(port)?;
    let query = ExplainQuery {
        from,
        from_pod,
        to,
        to_pod,
        protocol: Some(protocol.name()),
        port,
    };
    ExplainRequest::try_from(&query).map_err(PolicyError::Query)?;
    Ok(query)
}

pub fn run(args: PolicyArgs) -> Result<ExitCode, PolicyError> {
    // The question is checked before any agent is looked for.
    let path = match &args.command {
        PolicyCommand::List => paths::POLICIES.to_owned(),
        PolicyCommand::For { pod } => {
            let query = ForQuery {
                pod: Some(pod.clone()),
            };
            query.pod().map_err(PolicyError::Query)?;
            query.path()
        }
        PolicyCommand::Explain { from, to, port } => explain_query(from, to, port)?.path(),
    };
    let agents = args.agents()?;
    let text = match &args.command {
        PolicyCommand::List => {
            let list: PolicyList = combine::list(ask(&agents, &path)?);
            render(args.output, &list, format::list)
        }
        PolicyCommand::For { .. } => {
            let answer: PodPolicies = combine::for_pod(ask(&agents, &path)?);
            render(args.output, &answer, format::for_pod)
        }
        PolicyCommand::Explain { .. } => {
            let answer: Explanation = combine::explain(ask(&agents, &path)?);
            render(args.output, &answer, format::explain)
        }
    };
    match writeln!(std::io::stdout().lock(), "{text}") {
        // The reader went away (`lumen policy list | head`): nothing is lost.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(PolicyError::Output(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn render<T: serde::Serialize>(output: Output, answer: &T, text: fn(&T) -> String) -> String {
    match output {
        Output::Text => text(answer),
        Output::Json => serde_json::to_string_pretty(answer).unwrap_or_default(),
    }
}

/// Ask every agent at once (one thread each). Agents that fail are warned
/// about while another one answers; with no answer at all, the first failure
/// is the error.
fn ask<T: DeserializeOwned + Send>(
    agents: &[Agent],
    path: &str,
) -> Result<Answers<T>, PolicyError> {
    let results: Vec<(String, Result<T, ClientError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|a| scope.spawn(|| (a.name.clone(), a.client.get::<T>(path))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (agent, result) in results {
        match result {
            Ok(answer) => answers.push(answer),
            Err(source) => failures.push(PolicyError::Agent { agent, source }),
        }
    }
    let mut answers = answers.into_iter();
    let Some(first) = answers.next() else {
        return Err(failures.into_iter().next().unwrap_or(PolicyError::NoAgents));
    };
    failures.iter().for_each(warn);
    Ok(Answers {
        first,
        rest: answers.collect(),
    })
}

/// An agent's trouble on standard error, with its causes.
fn warn(error: &PolicyError) {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("warning: {text}");
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PolicyArgs,
    }

    fn parse(args: &[&str]) -> Result<PolicyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("policy").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn subcommands_and_targets_parse() {
        let args = parse(&["list"]).expect("list");
        assert!(matches!(args.command, PolicyCommand::List));
        assert_eq!(
            (args.lab.as_str(), args.output),
            (DEFAULT_NAME, Output::Text)
        );
        let args = parse(&["for", "x/a", "--socket", "/tmp/a.sock", "-o", "json"]).expect("for");
        assert_eq!(args.socket, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(args.output, Output::Json);
        let args =
            parse(&["--lab", "t1", "explain", "x/a", "10.0.0.2", "80/udp"]).expect("explain");
        assert_eq!(args.lab, "t1");
        assert!(parse(&["list", "--socket", "/a", "--lab", "x"]).is_err());
        assert!(
            parse(&["explain", "x/a", "x/b"]).is_err(),
            "PORT/PROTO needed"
        );
        assert!(parse(&["list", "-o", "yaml"]).is_err());
    }

    #[test]
    fn explain_arguments_become_the_query() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            explain_query("shop/web", "10.244.2.3", "53/udp").expect("valid"),
            ExplainQuery {
                from_pod: s("shop/web"),
                to: s("10.244.2.3"),
                protocol: s("UDP"),
                port: s("53"),
                ..ExplainQuery::default()
            }
        );
        let q = explain_query("web", "db", "5432").expect("valid");
        assert_eq!(
            (q.from_pod, q.to_pod, q.protocol, q.port),
            (s("default/web"), s("default/db"), s("TCP"), s("5432"))
        );
        let q = explain_query("10.0.0.1", "x/b", "icmp").expect("valid");
        assert_eq!((q.protocol, q.port), (s("ICMP"), None));
        assert_eq!(
            explain_query("x/a", "x/b", "80/SCTP")
                .expect("valid")
                .protocol,
            s("SCTP")
        );
    }

    #[test]
    fn bad_explain_arguments_fail_before_any_request() {
        for (args, message) in [
            (["x/a", "x/b", "http"], "\"http\" is not PORT/PROTO"),
            (["x/a", "x/b", "80/tcpx"], "\"80/tcpx\" is not PORT/PROTO"),
            (["x/a", "x/b", "tcp"], "\"tcp\" is not PORT/PROTO"),
            (["x/a/b", "x/b", "80"], "\"x/a/b\" is neither a pod"),
            (
                ["x/a", "x/b", "70000/tcp"],
                "port: \"70000\" is not a valid port",
            ),
        ] {
            let err = explain_query(args[0], args[1], args[2]).expect_err(message);
            let text = match &err {
                PolicyError::Query(e) => format!("{err}: {e}"),
                _ => err.to_string(),
            };
            assert!(text.contains(message), "{args:?}: {text}");
        }
    }
}
