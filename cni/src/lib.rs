//! Lumen's CNI plugin: a thin, synchronous shim between the container runtime
//! and the node agent. It validates what the runtime passes, forwards ADD,
//! CHECK, DEL, STATUS and GC over the agent's unix socket with a deadline, and
//! renders the answer in the CNI format the runtime asked for. It starts no
//! runtime and no threads: an invocation is one process, one request.
//!
//! # Spec versions
//!
//! 0.4.0, 1.0.0 and 1.1.0. STATUS and GC need 1.1.0.
//!
//! # Network configuration (stdin)
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `cniVersion` | string | one of the supported versions (required) |
//! | `name` | string | network name (required; spec's character rules) |
//! | `type` | string | must be `"lumen"` |
//! | `agentSocket` | path | the agent's socket; default `/run/lumen/agent.sock` |
//! | `mtu` | integer | pod MTU, 68..=65535; the agent's default otherwise |
//! | `logFile` | path | append one line per invocation: command, container, outcome, duration |
//! | `timeoutMs` | integer | deadline for each agent call, ≥ 1; default 5000 |
//! | `prevResult` | object | required by CHECK, which checks it names `CNI_IFNAME` in `CNI_NETNS` |
//! | `cni.dev/valid-attachments` | list of `{containerID, ifname}` | GC: what to keep (required for GC) |
//!
//! Anything else (`ipam`, `dns`, `args`, `runtimeConfig`, ...) is ignored. The
//! plugin is a chain's interface plugin: ADD replaces any `prevResult` with its
//! own result rather than merging into it.
//!
//! # Environment
//!
//! `CNI_COMMAND` always; `CNI_CONTAINERID`, `CNI_IFNAME` and `CNI_NETNS` for ADD
//! and CHECK; DEL may come without `CNI_NETNS`. `CNI_ARGS` may carry
//! `K8S_POD_NAMESPACE` and `K8S_POD_NAME`; other keys are ignored.
//!
//! # Error codes
//!
//! Errors are printed as the spec's JSON object on stdout (`cniVersion` is the
//! requested one if supported, else 1.1.0) and the exit status is 1.
//!
//! | code | when |
//! |---|---|
//! | 1 | unsupported `cniVersion`; STATUS or GC with a version before 1.1.0 |
//! | 4 | `CNI_*` variable missing or invalid, or `CNI_COMMAND` not a command |
//! | 5 | stdin could not be read |
//! | 6 | stdin is not a JSON object |
//! | 7 | a field is missing or invalid (`name`, `type`, `mtu`, `timeoutMs`, `agentSocket`, CHECK's `prevResult`, GC's attachments) |
//! | 11 | the agent is unreachable or timed out (the runtime retries; DEL too) |
//! | 50 | STATUS: the agent is unreachable, unhealthy or answers garbage |
//! | 100 | the agent's answer could not be understood (not HTTP, not the expected JSON, or an error status without an error body) |
//! | any | an error the agent answers itself (`{code, msg, details}`) is passed through unchanged, e.g. 101 when the pod CIDR is full |

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod log;
pub mod result;
pub mod version;

#[cfg(test)]
mod fake_agent;

use std::io::Read;
use std::time::{Instant, SystemTime};

use lumen_api::client::Client;
use lumen_api::cni::{CniRequest, GcRequest};
use serde_json::Value;

pub use crate::config::NetConf;
pub use crate::env::{CniEnv, Command};
pub use crate::error::CniError;
pub use crate::version::CniVersion;

/// What one invocation prints and how it exits.
#[derive(Debug)]
pub struct Invocation {
    /// The result or error JSON for stdout; `None` when the command prints
    /// nothing on success (CHECK, DEL, STATUS, GC).
    pub stdout: Option<String>,
    /// Exit status 0 if true, 1 otherwise.
    pub success: bool,
    /// The `logFile` line could not be written; the command's outcome stands.
    pub log_error: Option<log::LogError>,
}

/// Run one invocation end to end: read stdin, [`run`], log it and render the
/// outcome for stdout.
pub fn invoke(env: &CniEnv, stdin: &mut dyn Read) -> Invocation {
    let at = SystemTime::now();
    let started = Instant::now();
    let mut input = Vec::new();
    let (result, peek) = match stdin.read_to_end(&mut input) {
        Ok(_) => (run(env, &input), config::peek(&input)),
        Err(source) => (Err(CniError::ReadStdin(source)), config::Peek::default()),
    };
    let log_error = peek.log_file.as_deref().and_then(|path| {
        let entry = log::Entry {
            at,
            command: env.command.as_deref(),
            container_id: env.container_id.as_deref(),
            error: result.as_ref().err(),
            duration: started.elapsed(),
        };
        log::append(path, &entry).err()
    });
    match result {
        Ok(output) => Invocation {
            stdout: output.map(|v| v.to_string()),
            success: true,
            log_error,
        },
        Err(error) => Invocation {
            stdout: Some(
                error
                    .to_json(peek.version.unwrap_or(CniVersion::LATEST))
                    .to_string(),
            ),
            success: false,
            log_error,
        },
    }
}

/// Carry out one command: `Some(json)` is what to print on success.
///
/// The environment is validated before the configuration, as libcni's skeleton
/// does, so the runtime hears about the most basic mistake first.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = env.command()?;
    match command {
        Command::Version => Ok(Some(version::version_info(config::peek(stdin).version))),
        Command::Add => {
            let (request, conf) = prepare(env, command, stdin)?;
            let created = agent::add(&client(&conf), &request)
                .map_err(|source| CniError::Agent { command, source })?;
            Ok(Some(result::render(conf.version, &created)))
        }
        Command::Check => {
            let (request, conf) = prepare(env, command, stdin)?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or(CniError::MissingPrevResult)?;
            if !result::describes(prev, &request.ifname, &request.netns) {
                return Err(CniError::PrevResultMismatch {
                    ifname: request.ifname,
                    netns: request.netns,
                });
            }
            agent::check(&client(&conf), &request)
                .map_err(|source| CniError::Agent { command, source })?;
            Ok(None)
        }
        Command::Del => {
            let (request, conf) = prepare(env, command, stdin)?;
            agent::del(&client(&conf), &request)
                .map_err(|source| CniError::Agent { command, source })?;
            Ok(None)
        }
        Command::Status | Command::Gc => {
            let conf = config::parse(stdin)?;
            if !conf.version.has_status_and_gc() {
                return Err(CniError::CommandNotInVersion {
                    command,
                    version: conf.version,
                });
            }
            let client = client(&conf);
            let agent_failed = |source| CniError::Agent { command, source };
            if command == Command::Status {
                agent::status(&client).map_err(agent_failed)?;
            } else {
                let valid = conf
                    .valid_attachments
                    .ok_or(CniError::MissingValidAttachments)?;
                agent::gc(&client, &GcRequest { valid }).map_err(agent_failed)?;
            }
            Ok(None)
        }
    }
}

/// The agent request for ADD, CHECK or DEL, and the configuration to send it with.
fn prepare(
    env: &CniEnv,
    command: Command,
    stdin: &[u8],
) -> Result<(CniRequest, NetConf), CniError> {
    let attachment = env.attachment(command)?;
    let conf = config::parse(stdin)?;
    let request = CniRequest {
        container_id: attachment.container_id,
        netns: attachment.netns,
        ifname: attachment.ifname,
        pod_namespace: attachment.pod.namespace,
        pod_name: attachment.pod.name,
        mtu: conf.mtu,
    };
    Ok((request, conf))
}

fn client(conf: &NetConf) -> Client {
    Client::new(&conf.agent_socket, conf.timeout)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::fake_agent::{FakeAgent, TempDir};

    const NETNS: &str = "/var/run/netns/pod";

    fn env(command: &str) -> CniEnv {
        CniEnv::from_vars([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    fn conf(version: &str, socket: &Path) -> serde_json::Value {
        json!({
            "cniVersion": version,
            "name": "lumen-net",
            "type": "lumen",
            "agentSocket": socket,
            "mtu": 1450,
            "timeoutMs": 200,
        })
    }

    fn stdin(conf: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(conf).unwrap()
    }

    fn code(result: Result<Option<Value>, CniError>) -> u32 {
        result.unwrap_err().code()
    }

    fn attachment_json() -> String {
        serde_json::to_string(&result::tests::attachment()).unwrap()
    }

    #[test]
    fn version_answers_without_configuration() {
        let out = run(&env("VERSION"), b"").unwrap().unwrap();
        assert_eq!(
            out.to_string(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
        let out = run(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        let out = run(&env("VERSION"), b"{garbage").unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn unknown_or_missing_command_is_code_4() {
        assert_eq!(code(run(&env("ATTACH"), b"{}")), 4);
        assert_eq!(code(run(&CniEnv::default(), b"{}")), 4);
    }

    #[test]
    fn status_and_gc_need_1_1_0() {
        let missing = Path::new("/nonexistent/agent.sock");
        for version in ["0.4.0", "1.0.0"] {
            let mut gc = conf(version, missing);
            gc["cni.dev/valid-attachments"] = json!([]);
            assert_eq!(code(run(&env("STATUS"), &stdin(&gc))), 1, "{version}");
            assert_eq!(code(run(&env("GC"), &stdin(&gc))), 1, "{version}");
        }
    }

    #[test]
    fn unreachable_agent() {
        let dir = TempDir::new();
        let missing = dir.path().join("agent.sock");
        for (command, expected) in [("ADD", 11), ("CHECK", 11), ("DEL", 11), ("STATUS", 50)] {
            let mut conf = conf("1.1.0", &missing);
            conf["prevResult"] = result::render(CniVersion::V1_1_0, &result::tests::attachment());
            assert_eq!(
                code(run(&env(command), &stdin(&conf))),
                expected,
                "{command}"
            );
        }
    }

    #[test]
    fn hung_agent_times_out_as_try_again_later() {
        let agent = FakeAgent::silent(Duration::from_secs(2));
        let started = Instant::now();
        let result = run(&env("ADD"), &stdin(&conf("1.0.0", &agent.socket())));
        assert_eq!(code(result), 11);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn add_renders_the_agents_attachment() {
        for version in CniVersion::SUPPORTED {
            let agent = FakeAgent::answering(200, &attachment_json());
            let out = run(
                &env("ADD"),
                &stdin(&conf(version.as_str(), &agent.socket())),
            )
            .unwrap()
            .unwrap();
            assert_eq!(out, result::render(version, &result::tests::attachment()));
            let request = agent.request();
            assert_eq!(request.line, "POST /v1/cni/add HTTP/1.1");
            let sent: CniRequest = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(
                sent,
                CniRequest {
                    container_id: "abc123".into(),
                    netns: NETNS.into(),
                    ifname: "eth0".into(),
                    pod_namespace: Some("default".into()),
                    pod_name: Some("web-0".into()),
                    mtu: Some(1450),
                }
            );
        }
    }

    #[test]
    fn agent_errors_pass_through() {
        let refusal = r#"{"code":101,"msg":"no free address","details":"10.244.0.0/24 is full"}"#;
        let agent = FakeAgent::answering(500, refusal);
        let err = run(&env("ADD"), &stdin(&conf("1.0.0", &agent.socket()))).unwrap_err();
        assert_eq!(
            err.to_json(CniVersion::V1_0_0),
            json!({"cniVersion": "1.0.0", "code": 101, "msg": "no free address",
                   "details": "10.244.0.0/24 is full"})
        );

        let agent =
            FakeAgent::answering(409, r#"{"code":3,"msg":"unknown container","details":""}"#);
        let mut check = conf("1.1.0", &agent.socket());
        check["prevResult"] = result::render(CniVersion::V1_1_0, &result::tests::attachment());
        assert_eq!(code(run(&env("CHECK"), &stdin(&check))), 3);
    }

    #[test]
    fn unintelligible_answers_are_code_100() {
        for (status, body) in [(200, r#"{"ip":"not an attachment"}"#), (502, "bad gateway")] {
            let agent = FakeAgent::answering(status, body);
            assert_eq!(
                code(run(&env("ADD"), &stdin(&conf("1.1.0", &agent.socket())))),
                100,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn del_of_an_unknown_attachment_succeeds() {
        for (status, body) in [(200, "{}"), (204, "")] {
            let agent = FakeAgent::answering(status, body);
            let del_env = CniEnv {
                netns: None,
                ..env("DEL")
            };
            let out = run(&del_env, &stdin(&conf("0.4.0", &agent.socket()))).unwrap();
            assert_eq!(out, None);
            let request = agent.request();
            assert_eq!(request.line, "POST /v1/cni/del HTTP/1.1");
            assert_eq!(request.json()["netns"], "");
        }
    }

    #[test]
    fn check_needs_a_matching_prev_result() {
        let missing = Path::new("/nonexistent/agent.sock");
        let plain = conf("1.0.0", missing);
        assert!(matches!(
            run(&env("CHECK"), &stdin(&plain)),
            Err(CniError::MissingPrevResult)
        ));
        let mut other = result::tests::attachment();
        other.sandbox = "/var/run/netns/other".into();
        let mut mismatched = plain;
        mismatched["prevResult"] = result::render(CniVersion::V1_0_0, &other);
        assert_eq!(code(run(&env("CHECK"), &stdin(&mismatched))), 7);

        let agent = FakeAgent::answering(200, "");
        let mut matching = conf("1.0.0", &agent.socket());
        matching["prevResult"] = result::render(CniVersion::V1_0_0, &result::tests::attachment());
        assert_eq!(run(&env("CHECK"), &stdin(&matching)).unwrap(), None);
        assert_eq!(agent.request().line, "POST /v1/cni/check HTTP/1.1");
    }

    #[test]
    fn gc_sends_the_valid_attachments() {
        let agent = FakeAgent::answering(200, r#"{"released":[]}"#);
        let mut gc = conf("1.1.0", &agent.socket());
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "abc123", "ifname": "eth0"}]);
        let gc_env = CniEnv::from_vars([("CNI_COMMAND", "GC")]);
        assert_eq!(run(&gc_env, &stdin(&gc)).unwrap(), None);
        let request = agent.request();
        assert_eq!(request.line, "POST /v1/cni/gc HTTP/1.1");
        assert_eq!(
            request.json(),
            json!({"valid": [{"container_id": "abc123", "ifname": "eth0"}]})
        );

        let without = conf("1.1.0", Path::new("/nonexistent/agent.sock"));
        assert_eq!(code(run(&gc_env, &stdin(&without))), 7);
    }

    #[test]
    fn status_asks_healthz() {
        let status_env = CniEnv::from_vars([("CNI_COMMAND", "STATUS")]);
        let agent = FakeAgent::answering(200, "ok");
        assert_eq!(
            run(&status_env, &stdin(&conf("1.1.0", &agent.socket()))).unwrap(),
            None
        );
        assert_eq!(agent.request().line, "GET /healthz HTTP/1.1");

        let agent = FakeAgent::answering(503, "starting");
        assert_eq!(
            code(run(&status_env, &stdin(&conf("1.1.0", &agent.socket())))),
            50
        );
    }

    #[test]
    fn invoke_prints_errors_and_logs() {
        let dir = TempDir::new();
        let log_file = dir.path().join("cni.log");
        let mut conf = conf("1.0.0", &dir.path().join("agent.sock"));
        conf["logFile"] = json!(log_file);
        let input = stdin(&conf);

        let invocation = invoke(&env("ADD"), &mut input.as_slice());
        assert!(!invocation.success);
        assert!(invocation.log_error.is_none());
        let printed: Value = serde_json::from_str(invocation.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(printed["cniVersion"], "1.0.0");
        assert_eq!(printed["code"], 11);

        let agent = FakeAgent::answering(204, "");
        conf["agentSocket"] = json!(agent.socket());
        let invocation = invoke(&env("DEL"), &mut stdin(&conf).as_slice());
        assert!(invocation.success);
        assert_eq!(invocation.stdout, None);

        let log = std::fs::read_to_string(&log_file).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains("command=ADD container=abc123 outcome=error code=11 error="),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("command=DEL container=abc123 outcome=ok duration_ms="),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn invoke_reports_unreadable_stdin_and_unwritable_log() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("stdin closed badly"))
            }
        }
        let invocation = invoke(&env("ADD"), &mut Broken);
        assert!(!invocation.success);
        let printed: Value = serde_json::from_str(invocation.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(printed["code"], 5);
        assert_eq!(printed["cniVersion"], "1.1.0");

        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
                          "logFile": "/nonexistent/dir/cni.log"});
        let invocation = invoke(&env("ADD"), &mut stdin(&conf).as_slice());
        assert!(!invocation.success);
        assert!(invocation.log_error.is_some());
    }
}
