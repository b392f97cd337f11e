//! `lumen`: the user's command. Parses arguments and hands each subcommand to its
//! module; the work itself lives in the libraries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod lab_cmd;
mod observe;
mod policy;
mod trace;

#[derive(Debug, Parser)]
#[command(
    name = "lumen",
    version,
    about = "Lumen: a Kubernetes CNI whose product is visibility"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A Lumen cluster on this machine, built from network namespaces
    Lab(lab_cmd::LabArgs),
    /// Flow records from the node agents, like `hubble observe`
    Observe(Box<observe::ObserveArgs>),
    /// NetworkPolicy: what is in force, what applies to a pod, why a packet passes or not
    Policy(policy::PolicyArgs),
    /// One packet's path from a pod, hop by hop across nodes, with the verdict at each hop
    Trace(Box<trace::TraceArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab_cmd::run(args).map_err(anyhow::Error::from),
        Command::Observe(args) => observe::run(*args).map_err(anyhow::Error::from),
        Command::Policy(args) => policy::run(args).map_err(anyhow::Error::from),
        Command::Trace(args) => trace::run(*args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lab_subcommands_parse() {
        for args in [
            &["lumen", "lab", "up"][..],
            &[
                "lumen", "lab", "up", "--name", "t1", "--nodes", "2", "--pods", "2",
            ],
            &["lumen", "lab", "status", "-o", "json"],
            &["lumen", "lab", "down", "--name", "t1"],
            &["lumen", "lab", "exec", "pod-1-1", "--", "ip", "-br", "addr"],
            &["lumen", "lab", "probe", "pod-1-1", "external", "81/udp"],
            &[
                "lumen", "lab", "serve", "--name", "pod-1-1", "--ports", "80,81",
            ],
            &["lumen", "lab", "traffic", "--interval-ms", "100"],
            &["lumen", "lab", "up", "--name", "t1", "--prometheus"],
            &["lumen", "lab", "relay-metrics", "--name", "t1"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["lumen", "lab", "exec", "pod-1-1"]).is_err());
        for args in [
            &["lumen", "observe"][..],
            &["lumen", "observe", "--lab", "t1", "-f", "-o", "table"],
            &[
                "lumen",
                "observe",
                "--socket",
                "/tmp/a.sock",
                "--verdict",
                "DROPPED",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for args in [
            &["lumen", "policy", "list"][..],
            &["lumen", "policy", "for", "default/pod-1-1", "--lab", "t1"],
            &[
                "lumen", "policy", "explain", "pod-1-1", "pod-2-1", "80/tcp", "-o", "json",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for args in [
            &["lumen", "trace", "pod-1-1", "pod-2-1"][..],
            &[
                "lumen",
                "trace",
                "x/a",
                "node/node-2",
                "--lab",
                "t1",
                "-o",
                "yaml",
            ],
            &[
                "lumen",
                "trace",
                "x/a",
                "203.0.113.10:443",
                "--proto",
                "tcp",
                "--flags",
                "SYN,ACK",
                "--sport",
                "40001",
                "--timeout",
                "2s",
                "--color",
                "never",
            ],
            &[
                "lumen",
                "trace",
                "x/a",
                "y/b",
                "--live",
                "--dropped-only",
                "--dport",
                "80",
                "-o",
                "json",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["lumen", "trace", "pod-1-1"]).is_err());
        assert!(Cli::try_parse_from(["lumen", "trace", "a", "b", "--proto", "gre"]).is_err());
        assert!(Cli::try_parse_from(["lumen", "lab", "up", "--nodes", "x"]).is_err());
    }
}
