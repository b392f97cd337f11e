//! The lab's Prometheus: a real server (Debian's `prometheus`) in the root network
//! namespace on loopback, scraping every node agent through the metrics relay
//! ([`crate::relay`]), since nothing in the root namespace may reach a lab
//! address. This module plans its ports, writes its scrape config, builds the
//! command lines of both processes, waits for them, and is a small client of the
//! server's HTTP API for the tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::LabError;
use crate::process::{self, log_tail};
use crate::relay::{Relay, Target};
use crate::state::{LabState, MetricsRelay, Prometheus, RelayTarget};

/// Where Debian's package installs the server.
pub const BINARY: &str = "/usr/bin/prometheus";
/// The scrape job of every node agent, as in the repository's
/// `dashboards/prometheus/scrape-lab.yml`.
pub const JOB: &str = "lumen-agent";
/// How often every agent is scraped.
pub const SCRAPE_INTERVAL: &str = "5s";
/// Lab data is for looking at now, not for keeping.
const RETENTION: &str = "1h";
/// Below the scrape interval, so a hung agent cannot stack up scrapes.
const SCRAPE_TIMEOUT: &str = "4s";
/// How long the relay waits for an agent's metrics (within the scrape timeout).
const RELAY_AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many candidate ports are tried before giving up.
const PORT_SEARCH: u16 = 1000;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);
/// How many log lines an error quotes.
const TAIL_LINES: usize = 20;

/// The alert rules shipped in this repository, if they are there: the lab loads
/// them, so a rule that does not parse fails `up`.
pub fn default_rule_files() -> Vec<PathBuf> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|repo| repo.join("dashboards/prometheus/alerts.yml"));
    rules.into_iter().filter(|p| p.is_file()).collect()
}

/// Plan the server and the relay for `state`'s nodes: the relay on
/// `127.0.0.1:<base + i>` for node `i`, from the first base at or above
/// `relay_base` whose ports are all free, and the server on the first free port
/// from [`crate::config::PROMETHEUS_PORT`].
pub fn plan(
    state: &LabState,
    relay_base: u16,
    rule_files: Vec<PathBuf>,
) -> Result<Prometheus, LabError> {
    let indexes: Vec<u16> = state
        .nodes
        .iter()
        .map(|n| u16::try_from(n.index).unwrap_or(u16::MAX))
        .collect();
    let base = (0..PORT_SEARCH)
        .filter_map(|step| relay_base.checked_add(step))
        .find(|base| {
            indexes
                .iter()
                .all(|&i| base.checked_add(i).is_some_and(is_free))
        })
        .ok_or(LabError::NoFreePort {
            what: "the metrics relay",
            from: relay_base,
        })?;
    let relay_ports: Vec<u16> = indexes.iter().map(|&i| base.saturating_add(i)).collect();
    let from = crate::config::PROMETHEUS_PORT;
    let port = (0..PORT_SEARCH)
        .filter_map(|step| from.checked_add(step))
        .find(|p| !relay_ports.contains(p) && is_free(*p))
        .ok_or(LabError::NoFreePort {
            what: "Prometheus",
            from,
        })?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let dir = &state.state_dir;
    Ok(Prometheus {
        url: format!("http://{listen}"),
        listen,
        config_file: dir.join("prometheus.yml"),
        data_dir: dir.join("prometheus"),
        rule_files,
        log: dir.join("prometheus.log"),
        pid: None,
        relay: MetricsRelay {
            targets: state
                .nodes
                .iter()
                .zip(relay_ports)
                .map(|(node, port)| RelayTarget {
                    node: node.name.clone(),
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                })
                .collect(),
            log: dir.join("relay.log"),
            pid: None,
        },
    })
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `prometheus.yml`: one job, one static target per node relay labelled with
/// the node's name, and the alert rules.
pub fn scrape_config(prometheus: &Prometheus) -> String {
    let static_configs: Vec<Value> = prometheus
        .relay
        .targets
        .iter()
        .map(|t| json!({ "targets": [t.listen.to_string()], "labels": { "node": t.node } }))
        .collect();
    let config = json!({
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_TIMEOUT,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": prometheus.rule_files,
        "scrape_configs": [{ "job_name": JOB, "static_configs": static_configs }],
    });
    // A JSON value of strings, lists and maps always has a YAML form.
    serde_yaml::to_string(&config).unwrap_or_default()
}

/// The server's command line, marked as the lab's (see [`process::mark`]).
pub fn command(state: &LabState, prometheus: &Prometheus) -> Command {
    let mut cmd = Command::new(BINARY);
    cmd.arg(format!(
        "--config.file={}",
        prometheus.config_file.display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        prometheus.data_dir.display()
    ))
    .arg(format!("--web.listen-address={}", prometheus.listen))
    .arg(format!("--storage.tsdb.retention.time={RETENTION}"));
    process::mark(&mut cmd, &state.state_dir);
    cmd
}

/// `lumen lab relay-metrics --name LAB --state-root ROOT`, marked as the lab's.
pub fn relay_command(state: &LabState) -> Command {
    let mut cmd = Command::new(state.bin_dir.join("lumen"));
    cmd.args([
        "lab",
        "relay-metrics",
        "--name",
        &state.name,
        "--state-root",
    ])
    .arg(&state.state_root);
    process::mark(&mut cmd, &state.state_dir);
    cmd
}

/// Run the relay of the lab in `state` until `stop` is set.
pub fn serve_relay(state: &LabState, stop: &AtomicBool) -> Result<(), LabError> {
    let relay = state.prometheus.as_ref().map(|p| &p.relay);
    let targets: Vec<Target> = relay
        .map(|r| r.targets.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            state.node(&t.node).map(|node| Target {
                listen: t.listen,
                socket: node.socket.clone(),
            })
        })
        .collect();
    Relay::bind(&targets, RELAY_AGENT_TIMEOUT)
        .and_then(|relay| relay.serve(stop))
        .map_err(LabError::Relay)
}

/// Wait until `child` accepts connections on every address in `addrs`.
pub fn wait_relay(
    child: &mut Child,
    addrs: &[SocketAddr],
    log: &Path,
    timeout: Duration,
) -> Result<(), LabError> {
    wait(child, "the metrics relay", log, timeout, || {
        addrs
            .iter()
            .all(|a| TcpStream::connect_timeout(a, POLL).is_ok())
    })
}

/// Wait until the server at `listen` says it is ready (`GET /-/ready`).
pub fn wait_ready(
    child: &mut Child,
    listen: SocketAddr,
    log: &Path,
    timeout: Duration,
) -> Result<(), LabError> {
    wait(child, "Prometheus", log, timeout, || {
        matches!(http_get(listen, "/-/ready", POLL * 5), Ok((200, _)))
    })
}

fn wait(
    child: &mut Child,
    name: &str,
    log: &Path,
    timeout: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || start.elapsed() >= timeout {
            return Err(LabError::NotReady {
                name: name.to_owned(),
                waited: start.elapsed(),
                log: log.to_owned(),
                log_tail: log_tail(log, TAIL_LINES),
            });
        }
        std::thread::sleep(POLL);
    }
}

// === HTTP API ===

/// Why a call to the server's HTTP API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("talking to Prometheus on {addr} failed")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus's answer is not valid HTTP")]
    Protocol,
    #[error("Prometheus answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Prometheus's answer could not be decoded")]
    Decode(#[source] serde_json::Error),
    #[error("Prometheus refused the query ({error_type}): {error}")]
    Query { error_type: String, error: String },
}

/// `GET path_and_query` from the server at `addr`: the status and the body.
/// HTTP/1.0, so the body is never chunked and ends when the server closes.
pub fn http_get(
    addr: SocketAddr,
    path_and_query: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ApiError> {
    let io = |source| ApiError::Io { addr, source };
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    conn.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        conn,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).map_err(io)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ApiError::Protocol)?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ApiError::Protocol)?;
    Ok((status, answer[split + 4..].to_vec()))
}

/// The `data` of an instant query's answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryData {
    /// `vector`, `matrix`, `scalar` or `string`.
    #[serde(rename = "resultType")]
    pub result_type: String,
    pub result: Value,
}

impl QueryData {
    /// Whether the query found anything: a series for vectors and matrices (a
    /// scalar or string always has a value).
    pub fn has_data(&self) -> bool {
        match self.result.as_array() {
            Some(series) if self.result_type == "vector" || self.result_type == "matrix" => {
                !series.is_empty()
            }
            _ => !self.result.is_null(),
        }
    }
}

/// `GET /api/v1/query?query=EXPR` (evaluated now).
pub fn query(addr: SocketAddr, expr: &str, timeout: Duration) -> Result<QueryData, ApiError> {
    let query = serde_urlencoded::to_string([("query", expr)]).map_err(|_| ApiError::Protocol)?;
    let (status, body) = http_get(addr, &format!("/api/v1/query?{query}"), timeout)?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        status: String,
        data: Option<QueryData>,
        error_type: Option<String>,
        error: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&body).map_err(|source| {
        if (200..300).contains(&status) {
            ApiError::Decode(source)
        } else {
            ApiError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }
    })?;
    match (answer.status.as_str(), answer.data) {
        ("success", Some(data)) => Ok(data),
        _ => Err(ApiError::Query {
            error_type: answer.error_type.unwrap_or_default(),
            error: answer.error.unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;
    use crate::state::tests::{TempDir, config};

    fn planned(root: &Path) -> (LabState, Prometheus) {
        let state = LabState::plan(&config(root));
        let prometheus = plan(
            &state,
            crate::config::DEFAULT_RELAY_PORT_BASE,
            vec![PathBuf::from("/r/alerts.yml")],
        )
        .unwrap();
        (state, prometheus)
    }

    #[test]
    fn plans_free_ports_past_taken_ones() {
        let (state, p) = planned(Path::new("/r"));
        let ports: Vec<u16> = p.relay.targets.iter().map(|t| t.listen.port()).collect();
        let nodes: Vec<&str> = p.relay.targets.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(nodes, ["node-1", "node-2"]);
        assert_eq!(ports[1], ports[0] + 1, "node i on base + i");
        assert!(ports[0] > crate::config::DEFAULT_RELAY_PORT_BASE);
        assert!(p.listen.ip().is_loopback());
        assert!(p.relay.targets.iter().all(|t| t.listen.ip().is_loopback()));
        assert_eq!(p.url, format!("http://127.0.0.1:{}", p.listen.port()));
        assert_eq!(p.config_file, Path::new("/r/t/prometheus.yml"));

        // With node-1's port taken, the whole block moves up.
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
        let again = plan(&state, ports[0] - 1, Vec::new()).unwrap();
        let moved: Vec<u16> = again
            .relay
            .targets
            .iter()
            .map(|t| t.listen.port())
            .collect();
        assert!(!moved.contains(&ports[0]), "{moved:?}");
        drop(taken);
        let err = plan(&state, u16::MAX - 1, Vec::new()).unwrap_err();
        assert!(matches!(err, LabError::NoFreePort { .. }), "{err}");
    }

    #[test]
    fn scrape_config_has_a_target_per_node_with_its_label() {
        let (_, p) = planned(Path::new("/r"));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&scrape_config(&p)).unwrap();
        assert_eq!(yaml["global"]["scrape_interval"], "5s");
        assert_eq!(yaml["rule_files"][0], "/r/alerts.yml");
        let job = &yaml["scrape_configs"][0];
        assert_eq!(job["job_name"], JOB);
        for (i, target) in p.relay.targets.iter().enumerate() {
            let sc = &job["static_configs"][i];
            assert_eq!(sc["targets"][0], target.listen.to_string().as_str());
            assert_eq!(sc["labels"]["node"], target.node.as_str());
        }
    }

    /// The shipped `scrape-lab.yml` and the generated configuration scrape
    /// alike, and the default lab's relay ports are its example targets.
    #[test]
    fn scrape_config_agrees_with_the_repositorys() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/prometheus/scrape-lab.yml");
        let shipped: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (_, mut p) = planned(Path::new("/r"));
        p.rule_files = default_rule_files();
        let ours: serde_yaml::Value = serde_yaml::from_str(&scrape_config(&p)).unwrap();
        assert_eq!(ours["global"], shipped["global"]);
        let shipped_job = &shipped["scrape_configs"][0];
        assert_eq!(
            ours["scrape_configs"][0]["job_name"],
            shipped_job["job_name"]
        );
        let rule_names = |v: &serde_yaml::Value| -> Vec<String> {
            v["rule_files"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|f| {
                    let f = Path::new(f.as_str().unwrap());
                    f.file_name().unwrap().to_string_lossy().into_owned()
                })
                .collect()
        };
        assert_eq!(rule_names(&ours), rule_names(&shipped));
        let examples: Vec<(String, String)> = shipped_job["static_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["labels"]["node"].as_str().unwrap().to_owned(),
                    s["targets"][0].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let defaults: Vec<(String, String)> = (1..=2u16)
            .map(|i| {
                let port = crate::config::DEFAULT_RELAY_PORT_BASE + i;
                (format!("node-{i}"), format!("127.0.0.1:{port}"))
            })
            .collect();
        assert_eq!(examples, defaults);
    }

    #[test]
    fn command_lines_are_the_labs() {
        let (mut state, p) = planned(Path::new("/r"));
        let line = crate::topology::describe(&command(&state, &p));
        assert_eq!(
            line,
            format!(
                "/usr/bin/prometheus --config.file=/r/t/prometheus.yml \
                 --storage.tsdb.path=/r/t/prometheus --web.listen-address={} \
                 --storage.tsdb.retention.time=1h",
                p.listen
            )
        );
        state.prometheus = Some(p);
        let relay = relay_command(&state);
        assert_eq!(
            crate::topology::describe(&relay),
            "/opt/lumen/bin/lumen lab relay-metrics --name t --state-root /r"
        );
        let marked = relay
            .get_envs()
            .any(|(k, v)| k == process::LAB_DIR_ENV && v == Some(Path::new("/r/t").as_os_str()));
        assert!(marked);
    }

    /// A stand-in for the server's API: one answer, the request line back.
    fn one_answer(answer: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            // The whole head, or closing with unread bytes resets the connection.
            let mut header = String::from("-");
            while !header.trim_end().is_empty() {
                header.clear();
                reader.read_line(&mut header).unwrap();
            }
            conn.write_all(answer.as_bytes()).unwrap();
            line.trim_end().to_owned()
        });
        (addr, server)
    }

    #[test]
    fn query_encodes_the_expression_and_reads_the_result() {
        let (addr, server) = one_answer(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\
             {\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":\
             [{\"metric\":{\"node\":\"node-1\"},\"value\":[1,\"3\"]}]}}",
        );
        let data = query(
            addr,
            "sum by (node) (up{job=\"lumen\"})",
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(data.has_data());
        assert_eq!(data.result[0]["metric"]["node"], "node-1");
        assert_eq!(
            server.join().unwrap(),
            "GET /api/v1/query?query=sum+by+%28node%29+%28up%7Bjob%3D%22lumen%22%7D%29 HTTP/1.0"
        );

        let (addr, _server) = one_answer(
            "HTTP/1.1 200 OK\r\n\r\n\
             {\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[]}}",
        );
        assert!(
            !query(addr, "nothing", Duration::from_secs(2))
                .unwrap()
                .has_data()
        );

        let (addr, _server) = one_answer(
            "HTTP/1.1 400 Bad Request\r\n\r\n\
             {\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"parse error\"}",
        );
        let err = query(addr, "sum(", Duration::from_secs(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus refused the query (bad_data): parse error"
        );

        let (addr, _server) = one_answer("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
        let err = query(addr, "up", Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.to_string(), "Prometheus answered HTTP 503: not ready");
    }

    #[test]
    fn a_process_that_exits_is_not_ready_with_its_log() {
        let dir = TempDir::new("prom-wait");
        let log = dir.0.join("p.log");
        let mut child = process::spawn_detached(
            Command::new("sh").args(["-c", "echo bad config; exit 1"]),
            &log,
        )
        .unwrap();
        let err = wait_ready(
            &mut child,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            &log,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("Prometheus is not ready after"),
            "{err}"
        );
        assert!(err.to_string().ends_with("bad config"), "{err}");
    }
}
