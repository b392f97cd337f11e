//! The network configuration the runtime hands the plugin on stdin: parsing,
//! validation and the lenient peek used to answer even when it is invalid.

use std::path::PathBuf;
use std::time::Duration;

use lumen_api::cni::{AttachmentKey, code};
use serde::Deserialize;
use serde_json::Value;

use crate::version::CniVersion;

/// The only `type` this plugin answers to (the executable's name in `CNI_PATH`
/// is `lumen-cni`, but configurations name the network type `lumen`).
pub const PLUGIN_TYPE: &str = "lumen";
/// Where the node agent listens unless `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/lumen/agent.sock";
/// How long one call to the agent may take unless `timeoutMs` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// IPv4's minimum link MTU (RFC 791).
const MIN_MTU: u32 = 68;
/// The largest MTU Linux accepts on a veth.
const MAX_MTU: u32 = 65535;

/// Why the network configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the network configuration is not valid JSON")]
    Malformed(#[source] serde_json::Error),
    #[error("the network configuration is not a JSON object")]
    NotAnObject,
    #[error("cniVersion must be a string")]
    VersionNotString,
    #[error("cniVersion {found:?} is not supported (supported: 0.4.0, 1.0.0, 1.1.0)")]
    UnsupportedVersion { found: String },
    #[error("the network configuration has an invalid field")]
    Field(#[source] serde_json::Error),
    #[error("the network configuration has no name")]
    MissingName,
    #[error(
        "network name {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
    )]
    InvalidName { name: String },
    #[error("plugin type {} is not {PLUGIN_TYPE:?}", found.as_deref().map_or("(missing)".to_owned(), |t| format!("{t:?}")))]
    WrongType { found: Option<String> },
    #[error("mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}")]
    Mtu { mtu: u32 },
    #[error("timeoutMs must be at least 1")]
    ZeroTimeout,
    #[error("agentSocket must not be empty")]
    EmptyAgentSocket,
}

impl ConfigError {
    /// The CNI error code: 6 when stdin cannot be decoded at all, 1 for a
    /// version we do not speak, 7 for a decodable but invalid configuration.
    pub fn code(&self) -> u32 {
        match self {
            Self::Malformed(_) | Self::NotAnObject => code::DECODE_FAILURE,
            Self::UnsupportedVersion { .. } => code::INCOMPATIBLE_VERSION,
            Self::VersionNotString
            | Self::Field(_)
            | Self::MissingName
            | Self::InvalidName { .. }
            | Self::WrongType { .. }
            | Self::Mtu { .. }
            | Self::ZeroTimeout
            | Self::EmptyAgentSocket => code::INVALID_CONFIG,
        }
    }
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    pub agent_socket: PathBuf,
    pub mtu: Option<u32>,
    pub log_file: Option<PathBuf>,
    pub timeout: Duration,
    /// The result of the previous ADD (CHECK, DEL) or of the previous plugin in a
    /// chain (ADD); only CHECK looks at it.
    pub prev_result: Option<Value>,
    /// GC's list of attachments the runtime still uses; `None` if absent.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// The fields we read; everything else (`ipam`, `dns`, `args`, `runtimeConfig`,
/// `capabilities`, ...) is ignored as the spec allows.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    agent_socket: Option<PathBuf>,
    mtu: Option<u32>,
    log_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawKey>>,
    // libcni also sends the name an earlier 1.1.0 draft used (cni issue #1101).
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawKey>>,
}

#[derive(Debug, Deserialize)]
struct RawKey {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl From<RawKey> for AttachmentKey {
    fn from(raw: RawKey) -> Self {
        AttachmentKey {
            container_id: raw.container_id,
            ifname: raw.ifname,
        }
    }
}

/// Parse and validate the configuration; the version is checked before any other
/// field so an old runtime learns first that it speaks the wrong version.
pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfigError> {
    let value: Value = serde_json::from_slice(stdin).map_err(ConfigError::Malformed)?;
    if !value.is_object() {
        return Err(ConfigError::NotAnObject);
    }
    let version = match value.get("cniVersion") {
        // libcni reads an absent cniVersion as the legacy 0.1.0.
        None | Some(Value::Null) => {
            return Err(ConfigError::UnsupportedVersion {
                found: "0.1.0".to_owned(),
            });
        }
        Some(Value::String(s)) => CniVersion::parse(s)
            .ok_or_else(|| ConfigError::UnsupportedVersion { found: s.clone() })?,
        Some(_) => return Err(ConfigError::VersionNotString),
    };
    let raw: RawConf = serde_json::from_value(value).map_err(ConfigError::Field)?;

    let name = raw.name.ok_or(ConfigError::MissingName)?;
    if !valid_network_name(&name) {
        return Err(ConfigError::InvalidName { name });
    }
    if raw.kind.as_deref() != Some(PLUGIN_TYPE) {
        return Err(ConfigError::WrongType { found: raw.kind });
    }
    if let Some(mtu) = raw.mtu
        && !(MIN_MTU..=MAX_MTU).contains(&mtu)
    {
        return Err(ConfigError::Mtu { mtu });
    }
    let timeout = match raw.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(0) => return Err(ConfigError::ZeroTimeout),
        Some(ms) => Duration::from_millis(ms),
    };
    let agent_socket = raw
        .agent_socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    if agent_socket.as_os_str().is_empty() {
        return Err(ConfigError::EmptyAgentSocket);
    }
    let valid_attachments = raw
        .valid_attachments
        .or(raw.attachments)
        .map(|keys| keys.into_iter().map(AttachmentKey::from).collect());

    Ok(NetConf {
        version,
        name,
        agent_socket,
        mtu: raw.mtu,
        log_file: raw.log_file,
        timeout,
        prev_result: raw.prev_result.filter(|v| !v.is_null()),
        valid_attachments,
    })
}

/// The spec's rule for network names.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What can be read from stdin even when it does not validate: the version to
/// answer errors in and the log file to record the failure in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peek {
    pub version: Option<CniVersion>,
    pub log_file: Option<PathBuf>,
}

/// Read what [`Peek`] holds, ignoring anything malformed.
pub fn peek(stdin: &[u8]) -> Peek {
    let Ok(value) = serde_json::from_slice::<Value>(stdin) else {
        return Peek::default();
    };
    Peek {
        version: value
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(CniVersion::parse),
        log_file: value
            .get("logFile")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(stdin: &str) -> u32 {
        parse(stdin.as_bytes()).unwrap_err().code()
    }

    #[test]
    fn rejects_invalid_configurations() {
        let cases: &[(&str, u32)] = &[
            ("", 6),
            ("{not json", 6),
            ("[1, 2]", 6),
            (r#""lumen""#, 6),
            (r#"{"name":"n","type":"lumen"}"#, 1),
            (r#"{"cniVersion":"0.3.1","name":"n","type":"lumen"}"#, 1),
            (r#"{"cniVersion":"2.0.0","name":"n","type":"lumen"}"#, 1),
            (r#"{"cniVersion":"0.3.1"}"#, 1),
            (r#"{"cniVersion":100,"name":"n","type":"lumen"}"#, 7),
            (r#"{"cniVersion":"1.0.0","type":"lumen"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"","type":"lumen"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"-n","type":"lumen"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"a b","type":"lumen"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":7,"type":"lumen"}"#, 7),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","mtu":"1450"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","mtu":-1}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","mtu":0}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","mtu":65536}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","timeoutMs":0}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"lumen","agentSocket":""}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"lumen","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                7,
            ),
        ];
        for (stdin, code) in cases {
            assert_eq!(code_of(stdin), *code, "{stdin}");
        }
    }

    #[test]
    fn accepts_every_supported_version_with_defaults() {
        for version in CniVersion::SUPPORTED {
            let stdin =
                format!(r#"{{"cniVersion":"{version}","name":"lumen-net","type":"lumen"}}"#);
            let conf = parse(stdin.as_bytes()).unwrap();
            assert_eq!(conf.version, version);
            assert_eq!(conf.name, "lumen-net");
            assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
            assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
            assert_eq!(conf.mtu, None);
            assert_eq!(conf.log_file, None);
            assert_eq!(conf.prev_result, None);
            assert_eq!(conf.valid_attachments, None);
        }
    }

    #[test]
    fn reads_every_field_and_ignores_unknown_ones() {
        let stdin = r#"{
            "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "lumen",
            "agentSocket": "/tmp/agent.sock", "mtu": 1450, "logFile": "/tmp/cni.log",
            "timeoutMs": 250, "prevResult": {"interfaces": []},
            "ipam": {"type": "host-local"}, "runtimeConfig": {"portMappings": []},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "stale", "ifname": "eth0"}]
        }"#;
        let conf = parse(stdin.as_bytes()).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/agent.sock"));
        assert_eq!(conf.mtu, Some(1450));
        assert_eq!(conf.log_file, Some(PathBuf::from("/tmp/cni.log")));
        assert_eq!(conf.timeout, Duration::from_millis(250));
        assert_eq!(
            conf.prev_result,
            Some(serde_json::json!({"interfaces": []}))
        );
        assert_eq!(
            conf.valid_attachments,
            Some(vec![AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn falls_back_to_the_draft_attachments_name() {
        let stdin = r#"{"cniVersion":"1.1.0","name":"n","type":"lumen",
            "cni.dev/attachments":[{"containerID":"c2","ifname":"net1"}]}"#;
        let keys = parse(stdin.as_bytes()).unwrap().valid_attachments.unwrap();
        assert_eq!(keys[0].container_id, "c2");
        assert_eq!(keys[0].ifname, "net1");
    }

    #[test]
    fn peek_is_lenient() {
        assert_eq!(peek(b"{not json"), Peek::default());
        assert_eq!(
            peek(br#"{"cniVersion":"1.0.0","logFile":"/tmp/x.log","type":"bridge"}"#),
            Peek {
                version: Some(CniVersion::V1_0_0),
                log_file: Some(PathBuf::from("/tmp/x.log")),
            }
        );
        assert_eq!(peek(br#"{"cniVersion":"9.9.9"}"#).version, None);
    }
}
