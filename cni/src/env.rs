//! The `CNI_*` environment: collected from any list of variables (not from the
//! process directly, so tests need no `set_var`) and validated per command.

use std::fmt;

use lumen_api::cni::code;

/// The longest interface name Linux accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME_LEN: usize = 15;

/// Why the environment was rejected; always CNI code 4.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    #[error("CNI_COMMAND {command:?} is not a CNI command")]
    UnknownCommand { command: String },
    #[error("{command} needs {var}, which is not set")]
    Missing { command: Command, var: &'static str },
    #[error(
        "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
    )]
    InvalidContainerId { id: String },
    #[error("CNI_IFNAME {ifname:?} is not a valid interface name")]
    InvalidIfname { ifname: String },
    #[error("CNI_ARGS entry {pair:?} is not KEY=VALUE")]
    InvalidArgs { pair: String },
}

impl EnvError {
    pub fn code(&self) -> u32 {
        code::INVALID_ENV
    }
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The raw `CNI_*` variables; empty values count as unset. `CNI_PATH` is not
/// read: the plugin delegates to no other plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl CniEnv {
    /// Collect the `CNI_*` variables from `(name, value)` pairs, e.g.
    /// `std::env::vars()`; other names are ignored.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut env = Self::default();
        for (name, value) in vars {
            let slot = match name.as_ref() {
                "CNI_COMMAND" => &mut env.command,
                "CNI_CONTAINERID" => &mut env.container_id,
                "CNI_NETNS" => &mut env.netns,
                "CNI_IFNAME" => &mut env.ifname,
                "CNI_ARGS" => &mut env.args,
                _ => continue,
            };
            *slot = Some(value.into()).filter(|v: &String| !v.is_empty());
        }
        env
    }

    pub fn command(&self) -> Result<Command, EnvError> {
        let command = self.command.as_deref().ok_or(EnvError::MissingCommand)?;
        Command::parse(command).ok_or_else(|| EnvError::UnknownCommand {
            command: command.to_owned(),
        })
    }

    /// The attachment ADD, CHECK or DEL acts on. The spec lets DEL come without
    /// a namespace (it may already be gone), so DEL's `netns` may be empty.
    pub fn attachment(&self, command: Command) -> Result<AttachmentEnv, EnvError> {
        let require = |value: &Option<String>, var: &'static str| {
            value.clone().ok_or(EnvError::Missing { command, var })
        };
        let container_id = require(&self.container_id, "CNI_CONTAINERID")?;
        if !valid_container_id(&container_id) {
            return Err(EnvError::InvalidContainerId { id: container_id });
        }
        let netns = match command {
            Command::Del => self.netns.clone().unwrap_or_default(),
            _ => require(&self.netns, "CNI_NETNS")?,
        };
        let ifname = require(&self.ifname, "CNI_IFNAME")?;
        if !valid_ifname(&ifname) {
            return Err(EnvError::InvalidIfname { ifname });
        }
        let pod = PodArgs::parse(self.args.as_deref().unwrap_or_default())?;
        Ok(AttachmentEnv {
            container_id,
            netns,
            ifname,
            pod,
        })
    }
}

/// What ADD, CHECK and DEL read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    pub container_id: String,
    /// Empty on a DEL without a namespace.
    pub netns: String,
    pub ifname: String,
    pub pod: PodArgs,
}

/// The Kubernetes pod identity kubelet passes in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl PodArgs {
    /// Parse `K=V;K=V`; keys other than the pod's namespace and name (e.g.
    /// `IgnoreUnknown`, `K8S_POD_UID`) are ignored.
    pub fn parse(args: &str) -> Result<Self, EnvError> {
        let mut pod = Self::default();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| EnvError::InvalidArgs {
                pair: pair.to_owned(),
            })?;
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "K8S_POD_NAMESPACE" => pod.namespace = value,
                "K8S_POD_NAME" => pod.name = value,
                _ => {}
            }
        }
        Ok(pod)
    }
}

/// libcni's rule for container ids.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What the kernel accepts as an interface name.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> CniEnv {
        CniEnv::from_vars(vars.iter().map(|(k, v)| (*k, *v)))
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
        ("HOME", "/root"),
    ];

    fn with(overrides: &[(&str, &str)]) -> CniEnv {
        let mut vars: Vec<(&str, &str)> = FULL
            .iter()
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        vars.extend_from_slice(overrides);
        env(&vars)
    }

    #[test]
    fn reads_a_full_environment() {
        let e = env(FULL);
        assert_eq!(e.command().unwrap(), Command::Add);
        let a = e.attachment(Command::Add).unwrap();
        assert_eq!(
            a,
            AttachmentEnv {
                container_id: "abc123".into(),
                netns: "/var/run/netns/pod".into(),
                ifname: "eth0".into(),
                pod: PodArgs {
                    namespace: Some("default".into()),
                    name: Some("web-0".into()),
                },
            }
        );
    }

    #[test]
    fn commands() {
        for c in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
            assert_eq!(Command::parse(c).unwrap().as_str(), c);
        }
        assert!(matches!(env(&[]).command(), Err(EnvError::MissingCommand)));
        assert!(matches!(
            env(&[("CNI_COMMAND", "")]).command(),
            Err(EnvError::MissingCommand)
        ));
        assert!(matches!(
            env(&[("CNI_COMMAND", "add")]).command(),
            Err(EnvError::UnknownCommand { .. })
        ));
    }

    #[test]
    fn rejects_invalid_environments() {
        let cases: &[(Command, &[(&str, &str)])] = &[
            (Command::Add, &[("CNI_CONTAINERID", "")]),
            (Command::Add, &[("CNI_NETNS", "")]),
            (Command::Check, &[("CNI_NETNS", "")]),
            (Command::Add, &[("CNI_IFNAME", "")]),
            (Command::Del, &[("CNI_CONTAINERID", "")]),
            (Command::Del, &[("CNI_IFNAME", "")]),
            (Command::Add, &[("CNI_CONTAINERID", "-abc")]),
            (Command::Add, &[("CNI_CONTAINERID", "a/b")]),
            (Command::Add, &[("CNI_IFNAME", "a-very-long-ifname")]),
            (Command::Add, &[("CNI_IFNAME", "eth 0")]),
            (Command::Add, &[("CNI_IFNAME", "..")]),
            (Command::Add, &[("CNI_IFNAME", "eth0:1")]),
            (Command::Add, &[("CNI_ARGS", "K8S_POD_NAME")]),
        ];
        for (command, overrides) in cases {
            let err = with(overrides).attachment(*command).unwrap_err();
            assert_eq!(err.code(), 4, "{command} {overrides:?}: {err}");
        }
    }

    #[test]
    fn del_may_come_without_namespace_or_args() {
        let a = with(&[("CNI_NETNS", ""), ("CNI_ARGS", "")])
            .attachment(Command::Del)
            .unwrap();
        assert_eq!(a.netns, "");
        assert_eq!(a.pod, PodArgs::default());
    }

    #[test]
    fn pod_args() {
        let pod = PodArgs::parse("K8S_POD_NAME=p;;K8S_POD_NAMESPACE=;X=a=b").unwrap();
        assert_eq!(pod.name.as_deref(), Some("p"));
        assert_eq!(pod.namespace, None);
    }
}
