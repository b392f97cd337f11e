//! Every way an invocation fails, its CNI error code and the error JSON the
//! spec has the plugin print on stdout.

use std::error::Error as _;

use lumen_api::client::ClientError;
use lumen_api::cni::code;
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::env::{Command, EnvError};
use crate::version::CniVersion;

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("reading the network configuration from stdin failed")]
    ReadStdin(#[source] std::io::Error),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{command} needs cniVersion 1.1.0 or later, the configuration says {version}")]
    CommandNotInVersion {
        command: Command,
        version: CniVersion,
    },
    #[error("CHECK needs the prevResult of ADD")]
    MissingPrevResult,
    #[error("prevResult has no interface {ifname} in {netns}")]
    PrevResultMismatch { ifname: String, netns: String },
    #[error("GC needs cni.dev/valid-attachments")]
    MissingValidAttachments,
    #[error("{command} failed talking to the agent")]
    Agent {
        command: Command,
        #[source]
        source: ClientError,
    },
}

impl CniError {
    /// The CNI error code.
    ///
    /// Agent failures: no connection, an I/O error or a timeout is 11 (try again
    /// later: the agent is restarting), except for STATUS where it is 50 (plugin
    /// not available); an error the agent answers itself carries its own code;
    /// an answer we cannot understand is 100 (the agent is at fault, not the
    /// runtime's input, so none of the spec's I/O or decoding codes fits), again
    /// 50 for STATUS.
    pub fn code(&self) -> u32 {
        match self {
            Self::ReadStdin(_) => code::IO_FAILURE,
            Self::Env(e) => e.code(),
            Self::Config(e) => e.code(),
            Self::CommandNotInVersion { .. } => code::INCOMPATIBLE_VERSION,
            Self::MissingPrevResult
            | Self::PrevResultMismatch { .. }
            | Self::MissingValidAttachments => code::INVALID_CONFIG,
            Self::Agent { command, source } => match (source, command) {
                (ClientError::Agent(refusal), _) => refusal.code,
                (_, Command::Status) => code::PLUGIN_NOT_AVAILABLE,
                (ClientError::Connect { .. } | ClientError::Io { .. }, _) => code::TRY_AGAIN_LATER,
                (
                    ClientError::Protocol { .. }
                    | ClientError::Decode(_)
                    | ClientError::Status { .. },
                    _,
                ) => code::INTERNAL,
            },
        }
    }

    /// The spec's error object. An agent's refusal keeps its own message and
    /// details; otherwise `msg` is this error and `details` its causes.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let (msg, details) = self.msg_and_details();
        let mut error = json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": msg,
        });
        if !details.is_empty() {
            error["details"] = json!(details);
        }
        error
    }

    /// The spec's `msg` and `details` (empty if there are none).
    pub fn msg_and_details(&self) -> (String, String) {
        match self {
            Self::Agent {
                source: ClientError::Agent(refusal),
                ..
            } => (refusal.msg.clone(), refusal.details.clone()),
            _ => (self.to_string(), self.causes()),
        }
    }

    fn causes(&self) -> String {
        let mut causes = Vec::new();
        // `transparent` variants forward `source` to their inner error's cause.
        let mut source = self.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        causes.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lumen_api::cni::AgentError;

    use super::*;

    fn agent(command: Command, source: ClientError) -> CniError {
        CniError::Agent { command, source }
    }

    fn connect() -> ClientError {
        ClientError::Connect {
            path: PathBuf::from("/run/lumen/agent.sock"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    #[test]
    fn agent_failure_codes() {
        assert_eq!(agent(Command::Add, connect()).code(), 11);
        assert_eq!(agent(Command::Del, connect()).code(), 11);
        assert_eq!(agent(Command::Status, connect()).code(), 50);
        let timeout = ClientError::Io {
            path: PathBuf::from("/s"),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        };
        assert_eq!(agent(Command::Check, timeout).code(), 11);
        let garbled = ClientError::Protocol {
            reason: "bad status line".into(),
        };
        assert_eq!(agent(Command::Add, garbled).code(), 100);
        let refusal = ClientError::Agent(AgentError {
            code: 101,
            msg: "no free address".into(),
            details: "10.244.0.0/24 is full".into(),
        });
        assert_eq!(agent(Command::Add, refusal).code(), 101);
    }

    #[test]
    fn error_json() {
        let json = agent(Command::Add, connect()).to_json(CniVersion::V1_0_0);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 11);
        assert_eq!(json["msg"], "ADD failed talking to the agent");
        let details = json["details"].as_str().unwrap();
        assert!(
            details.starts_with("agent socket /run/lumen/agent.sock is unreachable: "),
            "{details}"
        );

        let refusal = ClientError::Agent(AgentError {
            code: 101,
            msg: "no free address".into(),
            details: String::new(),
        });
        assert_eq!(
            agent(Command::Add, refusal).to_json(CniVersion::V1_1_0),
            json!({"cniVersion": "1.1.0", "code": 101, "msg": "no free address"})
        );

        let json = CniError::from(EnvError::MissingCommand).to_json(CniVersion::V1_1_0);
        assert_eq!(
            json,
            json!({"cniVersion": "1.1.0", "code": 4, "msg": "CNI_COMMAND is not set"})
        );
    }
}
