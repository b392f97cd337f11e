//! Calling the CNI plugin exactly as a container runtime does: from the node's
//! namespace, with the CNI environment, the network config on stdin and the pod's
//! namespace path; and reading its result or error back.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::netio::netns;
use crate::state::{Node, Pod, write_atomic};
use crate::topology::describe;
use crate::{LabError, config};

/// The CNI spec version the lab speaks.
pub const CNI_VERSION: &str = "1.1.0";
/// The interface name inside every pod.
pub const POD_IFNAME: &str = "eth0";
/// The PATH handed to the plugin when the caller has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CNI operation on one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        })
    }
}

/// A runtime-style 64-hex-digit container id, stable for a (lab, pod) pair so a
/// re-run of ADD or DEL names the same attachment.
pub fn container_id(lab: &str, pod: &str) -> String {
    (0u8..4)
        .map(|salt| {
            let hash = fmix64(fnv1a(salt, format!("{lab}/{pod}").as_bytes()));
            format!("{hash:016x}")
        })
        .collect()
}

/// MurmurHash3's finalizer: FNV-1a alone leaves names that differ in their last
/// character with ids that share most leading digits, and tools show id prefixes.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// 64-bit FNV-1a over `salt` then `bytes`: tiny, deterministic across builds and
/// Rust versions (unlike std's `DefaultHasher`).
fn fnv1a(salt: u8, bytes: &[u8]) -> u64 {
    std::iter::once(salt)
        .chain(bytes.iter().copied())
        .fold(0xcbf2_9ce4_8422_2325, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The network configuration a runtime would read from `10-lumen.conflist`.
pub fn network_config(node: &Node) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": "lumen",
        "type": "lumen",
        "agentSocket": node.socket,
        "logFile": node.cni_log,
    })
}

/// The conflist a runtime on `node` would have, kept for reference.
pub fn conflist(node: &Node) -> Value {
    let mut plugin = network_config(node);
    if let Some(obj) = plugin.as_object_mut() {
        obj.remove("cniVersion");
        obj.remove("name");
    }
    json!({ "cniVersion": CNI_VERSION, "name": "lumen", "plugins": [plugin] })
}

/// Run `<bin_dir>/lumen-cni` for `pod` from `node`'s namespace, as a runtime
/// does: the ADD result is cached in `pod.cni_result` and handed back as
/// `prevResult` to CHECK and DEL; a successful DEL drops the cache. Returns the
/// plugin's JSON answer (`null` when it printed nothing, as DEL may).
pub fn invoke(
    bin_dir: &Path,
    node: &Node,
    pod: &Pod,
    command: CniCommand,
) -> Result<Value, LabError> {
    let mut config = network_config(node);
    if command != CniCommand::Add
        && let Some(prev) = read_cached_result(&pod.cni_result)
        && let Some(obj) = config.as_object_mut()
    {
        obj.insert("prevResult".to_owned(), prev);
    }
    let answer = run_plugin(bin_dir, node, pod, command, &config)?;
    match command {
        CniCommand::Add => {
            let bytes = serde_json::to_vec(&answer).map_err(|source| LabError::State {
                path: pod.cni_result.clone(),
                source,
            })?;
            write_atomic(&pod.cni_result, &bytes)?;
        }
        CniCommand::Del => match std::fs::remove_file(&pod.cni_result) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::Io {
                    action: "remove",
                    path: pod.cni_result.clone(),
                    source: err,
                });
            }
            _ => {}
        },
        CniCommand::Check => {}
    }
    Ok(answer)
}

/// A cached ADD result; an unreadable cache is as good as none, as for runtimes.
fn read_cached_result(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn run_plugin(
    bin_dir: &Path,
    node: &Node,
    pod: &Pod,
    command: CniCommand,
    config: &Value,
) -> Result<Value, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let node_netns = config::netns_path(&node.netns);
    let mut cmd =
        netns::command_in(&node_netns, config::cni_plugin(bin_dir)).map_err(|source| {
            LabError::Netns {
                netns: node.netns.clone(),
                source,
            }
        })?;
    cmd.env_clear()
        .env("PATH", path)
        .env("CNI_COMMAND", command.to_string())
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", pod.netns_path())
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", bin_dir)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command_line = describe(&cmd);
    let spawn_err = |source| LabError::Spawn {
        command: command_line.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let config = config.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its config shows up in its answer;
        // a broken pipe here adds nothing.
        let _ = stdin.write_all(config.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    parse_answer(
        pod,
        command,
        out.status.success(),
        &out.stdout,
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// Turn the plugin's exit status and output into a result or a [`LabError`].
fn parse_answer(
    pod: &Pod,
    command: CniCommand,
    success: bool,
    stdout: &[u8],
    stderr: &str,
) -> Result<Value, LabError> {
    let text = String::from_utf8_lossy(stdout);
    let output = || {
        format!("{} {}", text.trim(), stderr.trim())
            .trim()
            .to_owned()
    };
    let unexpected = |reason: &str| LabError::CniOutput {
        pod: pod.name.clone(),
        command: command.to_string(),
        reason: reason.to_owned(),
        output: output(),
    };
    if success && text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_str(&text).map_err(|_| unexpected("output is not JSON"))?;
    if success {
        return Ok(value);
    }
    let code = value
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| unexpected("failed without an error code"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Err(LabError::Cni {
        pod: pod.name.clone(),
        command: command.to_string(),
        code,
        msg: field("msg"),
        details: field("details"),
    })
}

/// The pod's address from an ADD result (`ips[0].address`, CIDR notation).
pub fn result_ip(pod: &Pod, result: &Value) -> Result<Ipv4Addr, LabError> {
    result
        .pointer("/ips/0/address")
        .and_then(Value::as_str)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| LabError::CniOutput {
            pod: pod.name.clone(),
            command: CniCommand::Add.to_string(),
            reason: "no ips[0].address in the result".to_owned(),
            output: result.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LabState;
    use crate::state::tests::config;

    #[test]
    fn container_ids_are_stable_and_distinct() {
        let a = container_id("lumen", "pod-1-1");
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(a, container_id("lumen", "pod-1-1"));
        assert_ne!(a, container_id("lumen", "pod-1-2"));
        assert_ne!(a, container_id("other", "pod-1-1"));
        // Pinned so ids survive refactoring: agents persist them in IPAM state.
        assert_eq!(
            &a[..16],
            &format!("{:016x}", fmix64(fnv1a(0, b"lumen/pod-1-1")))
        );
        assert_ne!(&a[..12], &container_id("lumen", "pod-1-2")[..12]);
        assert_eq!(fnv1a(0, b""), 0xaf63_bd4c_8601_b7df);
    }

    #[test]
    fn config_names_socket_and_log() {
        let state = LabState::plan(&config(Path::new("/r")));
        let cfg = network_config(&state.nodes[0]);
        assert_eq!(cfg["cniVersion"], "1.1.0");
        assert_eq!(cfg["type"], "lumen");
        assert_eq!(cfg["agentSocket"], "/r/t/node-1/agent.sock");
        assert_eq!(cfg["logFile"], "/r/t/node-1/cni.log");
        let list = conflist(&state.nodes[0]);
        assert_eq!(list["plugins"][0]["type"], "lumen");
        assert!(list["plugins"][0].get("cniVersion").is_none());
    }

    #[test]
    fn parses_results_and_errors() {
        let state = LabState::plan(&config(Path::new("/r")));
        let pod = &state.pods[0];
        let ok = br#"{"cniVersion":"1.1.0","ips":[{"address":"10.244.1.2/24","gateway":"169.254.1.1"}]}"#;
        let value = parse_answer(pod, CniCommand::Add, true, ok, "").unwrap();
        assert_eq!(
            result_ip(pod, &value).unwrap(),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert!(result_ip(pod, &json!({"ips": []})).is_err());

        assert_eq!(
            parse_answer(pod, CniCommand::Del, true, b"", "").unwrap(),
            Value::Null
        );

        let failed = br#"{"cniVersion":"1.1.0","code":101,"msg":"no address","details":"10.244.1.0/24 is full"}"#;
        match parse_answer(pod, CniCommand::Add, false, failed, "").unwrap_err() {
            LabError::Cni {
                pod,
                command,
                code,
                msg,
                details,
            } => {
                assert_eq!(
                    (pod.as_str(), command.as_str(), code),
                    ("pod-1-1", "ADD", 101)
                );
                assert_eq!(msg, "no address");
                assert_eq!(details, "10.244.1.0/24 is full");
            }
            other => panic!("{other}"),
        }

        let garbage = parse_answer(pod, CniCommand::Add, false, b"", "exec failed").unwrap_err();
        assert!(matches!(garbage, LabError::CniOutput { .. }), "{garbage}");
        assert!(garbage.to_string().contains("exec failed"));
    }
}
