//! `lumen observe`: the agents' flow records at the terminal, like `hubble
//! observe`. The flags become a [`FlowQuery`], checked here before any request;
//! `source` asks one agent or every node agent of a lab and merges the answers,
//! and `format` prints them compact, as JSON or as a table.

mod format;
mod since;
mod source;

use std::error::Error;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use lumen_api::client::Client;
use lumen_api::{FilterError, FlowFilter, FlowQuery};
use lumen_lab::{DEFAULT_NAME, DEFAULT_STATE_ROOT, Lab, LabError};

pub(crate) use self::format::ColorChoice;
use self::format::{Output, Streaming};
use self::since::{SinceError, parse_since};
use self::source::{Agent, Problem, Update};

/// How long an agent has to take the query and answer with headers.
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Records shown when neither `--last`, `--since` nor `--follow` says (Hubble's
/// default).
const DEFAULT_LAST: usize = 20;

#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Source pod: ns/name, name (namespace default) or ns/ (any pod in ns)
    #[arg(long, value_name = "POD")]
    from_pod: Vec<String>,
    /// Destination pod: ns/name, name or ns/
    #[arg(long, value_name = "POD")]
    to_pod: Vec<String>,
    /// Either side in this namespace
    #[arg(long)]
    namespace: Vec<String>,
    /// Source labels: key=value, key!=value or key (all terms must match)
    #[arg(long, value_name = "SELECTOR")]
    from_label: Vec<String>,
    /// Destination labels: key=value, key!=value or key (all terms must match)
    #[arg(long, value_name = "SELECTOR")]
    to_label: Vec<String>,
    /// TCP, UDP, ICMP, SCTP or a protocol number
    #[arg(long)]
    protocol: Vec<String>,
    /// Either side's port
    #[arg(long)]
    port: Vec<String>,
    /// FORWARDED, DROPPED, or TRACED (flows that carried a traced packet)
    #[arg(long)]
    verdict: Vec<String>,
    /// The node that observed the flow (with --lab, only its agent is asked)
    #[arg(long)]
    node: Vec<String>,
    /// Only the newest N records [default: 20, unless --follow or --since]
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Only records since then: a duration back (5m, 2h, 1h30m) or an RFC 3339 time
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Keep printing new records as they come
    #[arg(short = 'f', long)]
    follow: bool,
    /// How to print records
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    /// Colour the verdicts
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
    /// One agent's API socket, instead of a lab's agents
    #[arg(long, conflicts_with = "lab")]
    socket: Option<PathBuf>,
    /// The lab whose node agents to ask
    #[arg(long, default_value = DEFAULT_NAME)]
    lab: String,
    /// Directory holding every lab's state
    #[arg(long, default_value = DEFAULT_STATE_ROOT, hide = true)]
    state_root: PathBuf,
}

/// Why `lumen observe` failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("invalid filter")]
    Filter(#[source] FilterError),
    #[error(transparent)]
    Since(#[from] SinceError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("lab {lab} has no node {node} (its nodes: {known})")]
    UnknownNode {
        lab: String,
        node: String,
        known: String,
    },
    #[error("could not read flows from {target}")]
    NoAnswer { target: String },
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl ObserveArgs {
    /// The query the flags ask for, validated as the agent will validate it.
    fn query(&self, now: jiff::Timestamp) -> Result<FlowQuery, ObserveError> {
        let join = |values: &[String]| (!values.is_empty()).then(|| values.join(","));
        let since_ns = self
            .since
            .as_deref()
            .map(|s| parse_since(s, now))
            .transpose()?;
        let default_last = !self.follow && since_ns.is_none();
        let query = FlowQuery {
            from_pod: join(&self.from_pod),
            to_pod: join(&self.to_pod),
            namespace: join(&self.namespace),
            from_label: join(&self.from_label),
            to_label: join(&self.to_label),
            protocol: join(&self.protocol),
            port: join(&self.port),
            verdict: join(&self.verdict),
            node: join(&self.node),
            last: self.last.or(default_last.then_some(DEFAULT_LAST)),
            since_ns,
            follow: self.follow,
        };
        FlowFilter::try_from(&query).map_err(ObserveError::Filter)?;
        Ok(query)
    }

    /// The agents to ask, and how to name them all in an error.
    fn agents(&self) -> Result<(Vec<Agent>, String), ObserveError> {
        if let Some(socket) = &self.socket {
            let agent = Agent {
                name: socket.display().to_string(),
                client: Client::new(socket, AGENT_TIMEOUT),
            };
            return Ok((vec![agent], format!("the agent on {}", socket.display())));
        }
        let lab = Lab::open(&self.lab, &self.state_root)?;
        let wanted: Vec<&str> = self
            .node
            .iter()
            .flat_map(|n| n.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        for name in &wanted {
            if lab.node(name).is_none() {
                let known: Vec<&str> = lab.nodes().iter().map(|n| n.name.as_str()).collect();
                return Err(ObserveError::UnknownNode {
                    lab: self.lab.clone(),
                    node: (*name).to_owned(),
                    known: known.join(", "),
                });
            }
        }
        let agents: Vec<Agent> = lab
            .nodes()
            .iter()
            .filter(|n| wanted.is_empty() || wanted.contains(&n.name.as_str()))
            .map(|n| Agent {
                name: n.name.clone(),
                client: Client::new(&n.socket, AGENT_TIMEOUT),
            })
            .collect();
        let target = format!("any agent of lab {} ({} asked)", self.lab, agents.len());
        Ok((agents, target))
    }
}

pub fn run(args: ObserveArgs) -> Result<ExitCode, ObserveError> {
    match observe(&args) {
        // The reader went away (`lumen observe | head`): that is how it ends.
        Err(ObserveError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn observe(args: &ObserveArgs) -> Result<ExitCode, ObserveError> {
    let query = args.query(jiff::Timestamp::now())?;
    let (agents, target) = args.agents()?;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = args
        .color
        .enabled(std::io::stdout().is_terminal(), no_color);
    let answered = if query.follow {
        follow(agents, &query, Streaming::new(args.output, color))?
    } else {
        let merged = source::query_all(&agents, &query, query.last);
        let mut out = BufWriter::new(std::io::stdout().lock());
        for line in format::render_all(args.output, color, &merged.lines) {
            writeln!(out, "{line}").map_err(ObserveError::Output)?;
        }
        out.flush().map_err(ObserveError::Output)?;
        merged.problems.iter().for_each(warn);
        merged.answered
    };
    if answered == 0 {
        return Err(ObserveError::NoAnswer { target });
    }
    Ok(ExitCode::SUCCESS)
}

/// Print records as they arrive until every agent's stream has ended; returns
/// how many agents took the query.
fn follow(
    agents: Vec<Agent>,
    query: &FlowQuery,
    mut streaming: Streaming,
) -> Result<usize, ObserveError> {
    let count = agents.len();
    let sources = agents
        .into_iter()
        .map(|agent| {
            let query = query.clone();
            (agent.name, move || agent.client.flows(&query))
        })
        .collect();
    let updates = source::follow(sources);
    // Standard output is line-buffered: each record shows as it is written.
    let mut out = std::io::stdout().lock();
    if let Some(header) = streaming.start() {
        writeln!(out, "{header}").map_err(ObserveError::Output)?;
    }
    let (mut ended, mut answered) = (0, 0);
    while ended < count {
        let Ok(update) = updates.recv() else { break };
        match update {
            Update::Line(line) => {
                writeln!(out, "{}", streaming.line(&line)).map_err(ObserveError::Output)?;
            }
            Update::Problem(problem) => warn(&problem),
            Update::Ended { answered: yes } => {
                ended += 1;
                answered += usize::from(yes);
            }
        }
    }
    Ok(answered)
}

/// One agent's trouble on standard error, with its causes.
fn warn(problem: &Problem) {
    let mut text = problem.error.to_string();
    let mut source = problem.error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("warning: {}: {text}", problem.agent);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn parse(args: &[&str]) -> ObserveArgs {
        Cli::try_parse_from(std::iter::once("observe").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .args
    }

    const NOW_NS: i128 = 1_732_390_201_123_000_000;

    fn query(args: &[&str]) -> Result<FlowQuery, ObserveError> {
        parse(args).query(jiff::Timestamp::from_nanosecond(NOW_NS).unwrap())
    }

    #[test]
    fn flags_map_to_the_query() {
        let s = |v: &str| Some(v.to_owned());
        let q = query(&[
            "--from-pod",
            "default/pod-1-1",
            "--from-pod",
            "shop/",
            "--to-pod",
            "web",
            "--namespace",
            "default",
            "--from-label",
            "app=web",
            "--from-label",
            "tier",
            "--to-label",
            "app!=db",
            "--protocol",
            "tcp",
            "--protocol",
            "UDP",
            "--port",
            "80,81",
            "--verdict",
            "DROPPED",
            "--node",
            "node-1",
            "--last",
            "5",
            "--since",
            "5m",
            "-f",
        ])
        .unwrap();
        assert_eq!(
            q,
            FlowQuery {
                from_pod: s("default/pod-1-1,shop/"),
                to_pod: s("web"),
                namespace: s("default"),
                from_label: s("app=web,tier"),
                to_label: s("app!=db"),
                protocol: s("tcp,UDP"),
                port: s("80,81"),
                verdict: s("DROPPED"),
                node: s("node-1"),
                last: Some(5),
                since_ns: Some(u64::try_from(NOW_NS).unwrap() - 300_000_000_000),
                follow: true,
            }
        );
    }

    #[test]
    fn last_defaults_to_20_only_for_a_plain_look_back() {
        assert_eq!(query(&[]).unwrap().last, Some(20));
        assert_eq!(query(&["--last", "3"]).unwrap().last, Some(3));
        assert_eq!(query(&["-f"]).unwrap().last, None);
        assert_eq!(query(&["--since", "1h"]).unwrap().last, None);
        assert_eq!(query(&["-f", "--last", "3"]).unwrap().last, Some(3));
        let plain = query(&[]).unwrap();
        assert_eq!(
            plain,
            FlowQuery {
                last: Some(20),
                ..FlowQuery::default()
            }
        );
    }

    #[test]
    fn bad_flags_fail_before_any_request() {
        for (args, message) in [
            (
                &["--port", "http"][..],
                "port: \"http\" is not a valid port number",
            ),
            (
                &["--verdict", "LOST"],
                "verdict: \"LOST\" is not a valid verdict",
            ),
            (
                &["--protocol", "tcpx"],
                "protocol: \"tcpx\" is not a valid protocol",
            ),
            (&["--from-pod", "/x"], "pod: \"/x\" is not a valid pod"),
            (
                &["--since", "yesterday"],
                "--since \"yesterday\" is neither",
            ),
        ] {
            let err = query(args).unwrap_err();
            let text = match &err {
                ObserveError::Filter(e) => format!("{err}: {e}"),
                _ => err.to_string(),
            };
            assert!(text.contains(message), "{args:?}: {text}");
        }
    }

    #[test]
    fn target_and_output_flags() {
        let args = parse(&["--socket", "/tmp/a.sock", "-o", "json", "--color", "never"]);
        assert_eq!(args.socket, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(args.output, Output::Json);
        assert_eq!(args.color, ColorChoice::Never);
        let default = parse(&[]);
        assert_eq!(default.lab, DEFAULT_NAME);
        assert_eq!(default.output, Output::Compact);
        assert_eq!(default.color, ColorChoice::Auto);
        assert!(
            Cli::try_parse_from(["observe", "--socket", "/a", "--lab", "x"]).is_err(),
            "--socket and --lab are exclusive"
        );
        assert!(Cli::try_parse_from(["observe", "-o", "yaml"]).is_err());
    }

    #[test]
    fn lab_nodes_named_by_node_are_the_only_ones_asked() {
        let root = std::env::temp_dir().join(format!("lumen-observe-{}", std::process::id()));
        let config = lumen_lab::LabConfig {
            name: "t1".into(),
            nodes: 3,
            pods_per_node: 1,
            bin_dir: PathBuf::from("/bin"),
            state_root: root.clone(),
            ..lumen_lab::LabConfig::default()
        };
        let state = lumen_lab::LabState::plan(&config);
        std::fs::create_dir_all(&state.state_dir).unwrap();
        state.save().unwrap();
        let root_arg = root.display().to_string();
        let lab_args = |extra: &[&str]| {
            let mut args = vec!["--lab", "t1", "--state-root", root_arg.as_str()];
            args.extend_from_slice(extra);
            parse(&args)
        };
        let (all, target) = lab_args(&[]).agents().unwrap();
        let (some, _) = lab_args(&["--node", "node-3,node-1"]).agents().unwrap();
        let unknown = lab_args(&["--node", "node-9"]).agents().unwrap_err();
        let missing = parse(&["--lab", "nope", "--state-root", &root_arg])
            .agents()
            .unwrap_err();
        std::fs::remove_dir_all(&root).unwrap();

        let names = |agents: &[Agent]| agents.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&all), ["node-1", "node-2", "node-3"]);
        assert_eq!(
            all[1].client.path(),
            root.join("t1/node-2/agent.sock").as_path()
        );
        assert_eq!(target, "any agent of lab t1 (3 asked)");
        assert_eq!(names(&some), ["node-1", "node-3"]);
        assert_eq!(
            unknown.to_string(),
            "lab t1 has no node node-9 (its nodes: node-1, node-2, node-3)"
        );
        assert!(
            matches!(missing, ObserveError::Lab(LabError::NotUp { .. })),
            "{missing}"
        );
    }
}
