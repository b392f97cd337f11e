//! A NetworkPolicy validated and converted into the engine's own form.
//!
//! Validation follows the Kubernetes API server (`ValidateNetworkPolicy` in
//! `pkg/apis/networking/validation`): whatever it would reject is an error
//! naming the field and the reason. Lumen adds one refusal of its own: an IPv6
//! `ipBlock`, which its IPv4 datapath cannot enforce. Defaults are applied here
//! too (`policyTypes`, protocol TCP, the namespace of pod-only peers), so the
//! engine never looks at the Kubernetes types.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lumen_api::Ipv4Cidr;
use lumen_api::flow::Protocol;

use crate::cluster::k8s_protocol;

/// Why a NetworkPolicy is refused. `path` is the offending field, as the API
/// server names it (`spec.ingress[0].from[1].ipBlock.except[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{path}: {operator:?} is not a valid selector operator (In, NotIn, Exists, DoesNotExist)"
    )]
    Operator { path: String, operator: String },
    #[error("{path}: values must be empty when the operator is {operator}")]
    ValuesForbidden { path: String, operator: String },
    #[error("{path}: values must be non-empty when the operator is {operator}")]
    ValuesRequired { path: String, operator: String },
    #[error("{path}: {key:?} is not a valid label key: {reason}")]
    LabelKey {
        path: String,
        key: String,
        reason: &'static str,
    },
    #[error("{path}: {value:?} is not a valid label value: {reason}")]
    LabelValue {
        path: String,
        value: String,
        reason: &'static str,
    },
    #[error("{path}: {port} is not a valid port number (1-65535)")]
    PortNumber { path: String, port: i32 },
    #[error("{path}: endPort {end_port} must be greater than or equal to port {port}")]
    EndPortBelowPort {
        path: String,
        port: i32,
        end_port: i32,
    },
    #[error("{path}: endPort may not be specified when port is the named port {name:?}")]
    EndPortNamed { path: String, name: String },
    #[error("{path}: endPort may not be specified when port is not specified")]
    EndPortAlone { path: String },
    #[error("{path}: {name:?} is not a valid port name: {reason}")]
    PortName {
        path: String,
        name: String,
        reason: &'static str,
    },
    #[error("{path}: {protocol:?} is not a supported protocol (TCP, UDP, SCTP)")]
    Protocol { path: String, protocol: String },
    #[error("{path}: {cidr:?} is not a valid CIDR")]
    Cidr { path: String, cidr: String },
    #[error("{path}: {cidr}: IPv6 is not supported by Lumen's IPv4 datapath")]
    Ipv6 { path: String, cidr: String },
    #[error("{path}: except {except} must be a strict subset of cidr {cidr}")]
    ExceptOutside {
        path: String,
        except: String,
        cidr: String,
    },
    #[error("{path}: a peer must specify podSelector, namespaceSelector or ipBlock")]
    EmptyPeer { path: String },
    #[error("{path}: ipBlock may not be combined with podSelector or namespaceSelector")]
    BlockWithSelector { path: String },
    #[error("{path}: {value:?} is not a policy type (Ingress, Egress)")]
    PolicyType { path: String, value: String },
    #[error("spec.policyTypes: may not specify more than two policy types")]
    TooManyPolicyTypes,
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// The pods of `namespace` the policy applies to.
    pub pod_selector: Selector,
    /// `None` when the policy does not isolate for ingress (its policy types
    /// lack `Ingress`); `Some(vec![])` denies all ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: traffic to or from any of `peers` on any of
/// `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Empty: every peer, in the cluster or not.
    pub peers: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortSpec>,
}

/// Who a rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces of `namespaces`.
    Pods {
        pods: Selector,
        namespaces: Namespaces,
    },
    /// Addresses, pods' included.
    Block(IpBlock),
}

/// The namespaces a pod peer is looked for in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespaces {
    /// The policy's own (a peer with only a podSelector).
    Own,
    /// Every namespace whose labels match.
    Matching(Selector),
}

/// `cidr` without the `except` blocks, each a strict subset of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: Ipv4Cidr,
    pub except: Vec<Ipv4Cidr>,
}

/// A port (or range) of a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of the protocol.
    Any,
    /// `from..=to` (`port` alone is a range of one).
    Range { from: u16, to: u16 },
    /// A container port name, resolved per destination pod.
    Named(String),
}

/// A label selector: every `labels` pair and every requirement must hold; the
/// empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

// === impl Policy ===

impl Policy {
    /// Validate `policy`, stored as `namespace`/`name`, and apply the API's
    /// defaults.
    pub fn validate(
        namespace: &str,
        name: &str,
        policy: &NetworkPolicy,
    ) -> Result<Self, PolicyError> {
        let empty = NetworkPolicySpec::default();
        let spec = policy.spec.as_ref().unwrap_or(&empty);
        let pod_selector = match &spec.pod_selector {
            Some(s) => Selector::validate("spec.podSelector", s)?,
            None => Selector::default(),
        };
        let mut ingress = Vec::new();
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let path = format!("spec.ingress[{i}]");
            ingress.push(Rule::validate(
                &path,
                "from",
                rule.from.as_deref(),
                rule.ports.as_deref(),
            )?);
        }
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let path = format!("spec.egress[{i}]");
            egress.push(Rule::validate(
                &path,
                "to",
                rule.to.as_deref(),
                rule.ports.as_deref(),
            )?);
        }
        let (is_ingress, is_egress) = match &spec.policy_types {
            Some(types) if !types.is_empty() => policy_types(types)?,
            // The API's default: Ingress always, Egress when there are egress rules.
            _ => (true, !egress.is_empty()),
        };
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod_selector,
            ingress: is_ingress.then_some(ingress),
            egress: is_egress.then_some(egress),
        })
    }
}

fn policy_types(types: &[String]) -> Result<(bool, bool), PolicyError> {
    if types.len() > 2 {
        return Err(PolicyError::TooManyPolicyTypes);
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            _ => {
                return Err(PolicyError::PolicyType {
                    path: format!("spec.policyTypes[{i}]"),
                    value: t.clone(),
                });
            }
        }
    }
    Ok((ingress, egress))
}

// === impl Rule ===

impl Rule {
    fn validate(
        path: &str,
        peers_field: &str,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
    ) -> Result<Self, PolicyError> {
        let ports = ports
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| PortSpec::validate(&format!("{path}.ports[{i}]"), p))
            .collect::<Result<_, _>>()?;
        let peers = peers
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| Peer::validate(&format!("{path}.{peers_field}[{i}]"), p))
            .collect::<Result<_, _>>()?;
        Ok(Self { peers, ports })
    }
}

// === impl Peer ===

impl Peer {
    fn validate(path: &str, peer: &NetworkPolicyPeer) -> Result<Self, PolicyError> {
        match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
            (None, None, None) => Err(PolicyError::EmptyPeer {
                path: path.to_owned(),
            }),
            (None, None, Some(block)) => Ok(Self::Block(IpBlock::validate(
                &format!("{path}.ipBlock"),
                block,
            )?)),
            (_, _, Some(_)) => Err(PolicyError::BlockWithSelector {
                path: path.to_owned(),
            }),
            (pods, namespaces, None) => {
                let pods = match pods {
                    Some(s) => Selector::validate(&format!("{path}.podSelector"), s)?,
                    None => Selector::default(),
                };
                let namespaces = match namespaces {
                    Some(s) => Namespaces::Matching(Selector::validate(
                        &format!("{path}.namespaceSelector"),
                        s,
                    )?),
                    None => Namespaces::Own,
                };
                Ok(Self::Pods { pods, namespaces })
            }
        }
    }
}

// === impl IpBlock ===

impl IpBlock {
    fn validate(path: &str, block: &IPBlock) -> Result<Self, PolicyError> {
        let cidr = parse_cidr(&format!("{path}.cidr"), &block.cidr)?;
        let mut except = Vec::new();
        for (i, e) in block.except.iter().flatten().enumerate() {
            let path = format!("{path}.except[{i}]");
            let e = parse_cidr(&path, e)?;
            if !cidr.contains(e.addr()) || e.prefix() <= cidr.prefix() {
                return Err(PolicyError::ExceptOutside {
                    path,
                    except: e.to_string(),
                    cidr: cidr.to_string(),
                });
            }
            except.push(e);
        }
        Ok(Self { cidr, except })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }

    /// The block as disjoint CIDRs: `cidr` with every `except` cut out.
    pub fn cidrs(&self) -> Vec<Ipv4Cidr> {
        let mut out = vec![self.cidr];
        for e in &self.except {
            out = out.into_iter().flat_map(|c| subtract(c, *e)).collect();
        }
        out
    }
}

/// `c` without `e`: `c` itself, nothing, or the halves of `c` that remain.
fn subtract(c: Ipv4Cidr, e: Ipv4Cidr) -> Vec<Ipv4Cidr> {
    if e.prefix() <= c.prefix() {
        return if e.contains(c.addr()) {
            vec![]
        } else {
            vec![c]
        };
    }
    if !c.contains(e.addr()) {
        return vec![c];
    }
    let halves = halves(c);
    halves.into_iter().flat_map(|h| subtract(h, e)).collect()
}

/// The two halves of a CIDR one bit longer; only called with prefix < 32.
fn halves(c: Ipv4Cidr) -> Vec<Ipv4Cidr> {
    let prefix = c.prefix() + 1;
    let low = u32::from(c.addr());
    let high = low | (1u32 << (32 - u32::from(prefix)));
    [low, high]
        .into_iter()
        .filter_map(|a| Ipv4Cidr::new(Ipv4Addr::from(a), prefix).ok())
        .collect()
}

/// A CIDR as the API server reads it (`ParseCIDRSloppy`): host bits are
/// allowed and cleared.
fn parse_cidr(path: &str, text: &str) -> Result<Ipv4Cidr, PolicyError> {
    let bad = || PolicyError::Cidr {
        path: path.to_owned(),
        cidr: text.to_owned(),
    };
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    if let Ok(addr) = addr.parse::<Ipv4Addr>() {
        let prefix = u8::try_from(prefix)
            .ok()
            .filter(|&p| p <= 32)
            .ok_or_else(bad)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        return Ipv4Cidr::new(Ipv4Addr::from(u32::from(addr) & mask), prefix).map_err(|_| bad());
    }
    if addr.parse::<Ipv6Addr>().is_ok() && prefix <= 128 {
        return Err(PolicyError::Ipv6 {
            path: path.to_owned(),
            cidr: text.to_owned(),
        });
    }
    Err(bad())
}

// === impl PortSpec ===

impl PortSpec {
    fn validate(path: &str, port: &NetworkPolicyPort) -> Result<Self, PolicyError> {
        let protocol = match port.protocol.as_deref() {
            None => Protocol::TCP,
            Some(p) => k8s_protocol(p).ok_or_else(|| PolicyError::Protocol {
                path: format!("{path}.protocol"),
                protocol: p.to_owned(),
            })?,
        };
        let port = match (&port.port, port.end_port) {
            (None, None) => PortMatch::Any,
            (None, Some(_)) => {
                return Err(PolicyError::EndPortAlone {
                    path: format!("{path}.endPort"),
                });
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(PolicyError::EndPortNamed {
                        path: format!("{path}.endPort"),
                        name: name.clone(),
                    });
                }
                if let Err(reason) = check_port_name(name) {
                    return Err(PolicyError::PortName {
                        path: format!("{path}.port"),
                        name: name.clone(),
                        reason,
                    });
                }
                PortMatch::Named(name.clone())
            }
            (Some(IntOrString::Int(n)), end) => {
                let from = port_number(&format!("{path}.port"), *n)?;
                let to = match end {
                    None => from,
                    Some(end) => {
                        let to = port_number(&format!("{path}.endPort"), end)?;
                        if to < from {
                            return Err(PolicyError::EndPortBelowPort {
                                path: format!("{path}.endPort"),
                                port: *n,
                                end_port: end,
                            });
                        }
                        to
                    }
                };
                PortMatch::Range { from, to }
            }
        };
        Ok(Self { protocol, port })
    }
}

fn port_number(path: &str, port: i32) -> Result<u16, PolicyError> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| PolicyError::PortNumber {
            path: path.to_owned(),
            port,
        })
}

/// The API's `IsValidPortName` (an IANA service name).
fn check_port_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9) and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens (-)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with a hyphen (-)");
    }
    Ok(())
}

// === impl Selector ===

impl Selector {
    fn validate(path: &str, selector: &LabelSelector) -> Result<Self, PolicyError> {
        let mut labels = BTreeMap::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            let path = format!("{path}.matchLabels");
            check_label_key(&path, key)?;
            check_label_value(&path, value)?;
            labels.insert(key.clone(), value.clone());
        }
        let mut requirements = Vec::new();
        for (i, r) in selector.match_expressions.iter().flatten().enumerate() {
            let path = format!("{path}.matchExpressions[{i}]");
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                _ => {
                    return Err(PolicyError::Operator {
                        path: format!("{path}.operator"),
                        operator: r.operator.clone(),
                    });
                }
            };
            let values = r.values.clone().unwrap_or_default();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(PolicyError::ValuesRequired {
                        path: format!("{path}.values"),
                        operator: r.operator.clone(),
                    });
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(PolicyError::ValuesForbidden {
                        path: format!("{path}.values"),
                        operator: r.operator.clone(),
                    });
                }
                _ => {}
            }
            check_label_key(&format!("{path}.key"), &r.key)?;
            for (j, v) in values.iter().enumerate() {
                check_label_value(&format!("{path}.values[{j}]"), v)?;
            }
            requirements.push(Requirement {
                key: r.key.clone(),
                operator,
                values: values.into_iter().collect(),
            });
        }
        Ok(Self {
            labels,
            requirements,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // Kubernetes: NotIn also matches objects without the key.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// The API's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then
/// a name of up to 63 characters.
fn check_label_key(path: &str, key: &str) -> Result<(), PolicyError> {
    let error = |reason| PolicyError::LabelKey {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err(error("must contain at most one '/'"));
            }
            check_dns_subdomain(prefix).map_err(error)?;
            name
        }
    };
    if name.is_empty() {
        return Err(error("the name part must be non-empty"));
    }
    check_label_name(name).map_err(error)
}

/// The API's `IsValidLabelValue`: empty, or a name of up to 63 characters.
fn check_label_value(path: &str, value: &str) -> Result<(), PolicyError> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|reason| PolicyError::LabelValue {
        path: path.to_owned(),
        value: value.to_owned(),
        reason,
    })
}

fn check_label_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    let inner = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let bytes = name.as_bytes();
    let ends = [bytes.first(), bytes.last()];
    if !bytes.iter().all(|&b| inner(b))
        || !ends
            .iter()
            .all(|b| b.is_some_and(u8::is_ascii_alphanumeric))
    {
        return Err(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    const REASON: &str = "the prefix must be a lowercase DNS subdomain of at most 253 characters";
    if name.is_empty() || name.len() > 253 {
        return Err(REASON);
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
            && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(REASON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(spec: &str) -> Result<Policy, PolicyError> {
        let yaml = format!("metadata: {{name: p, namespace: x}}\nspec: {spec}");
        let object: NetworkPolicy = serde_yaml::from_str(&yaml).expect("a NetworkPolicy");
        Policy::validate("x", "p", &object)
    }

    #[test]
    fn refuses_what_the_api_server_refuses() {
        for (spec, want) in [
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: Equals, values: [a]}]}}",
                "spec.podSelector.matchExpressions[0].operator: \"Equals\" is not a valid selector operator",
            ),
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}}",
                "spec.podSelector.matchExpressions[0].values: values must be empty when the operator is Exists",
            ),
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist, values: [a]}]}}",
                "values must be empty when the operator is DoesNotExist",
            ),
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: In}]}}",
                "values must be non-empty when the operator is In",
            ),
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: []}]}}",
                "values must be non-empty when the operator is NotIn",
            ),
            (
                "{podSelector: {matchLabels: {-pod: a}}}",
                "spec.podSelector.matchLabels: \"-pod\" is not a valid label key",
            ),
            (
                "{podSelector: {matchLabels: {Example.com/pod: a}}}",
                "the prefix must be a lowercase DNS subdomain",
            ),
            (
                "{podSelector: {matchLabels: {a/b/c: a}}}",
                "must contain at most one '/'",
            ),
            (
                "{podSelector: {matchLabels: {pod: not valid}}}",
                "\"not valid\" is not a valid label value",
            ),
            (
                "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [ok, -bad]}]}}",
                "matchExpressions[0].values[1]: \"-bad\" is not a valid label value",
            ),
            (
                "{ingress: [{ports: [{port: 0}]}]}",
                "spec.ingress[0].ports[0].port: 0 is not a valid port number (1-65535)",
            ),
            (
                "{ingress: [{ports: [{port: 65536}]}]}",
                "65536 is not a valid port number",
            ),
            (
                "{egress: [{ports: [{port: 81, endPort: 80}]}]}",
                "spec.egress[0].ports[0].endPort: endPort 80 must be greater than or equal to port 81",
            ),
            (
                "{egress: [{ports: [{port: 80, endPort: 70000}]}]}",
                "spec.egress[0].ports[0].endPort: 70000 is not a valid port number",
            ),
            (
                "{ingress: [{ports: [{port: serve-80-tcp, endPort: 81}]}]}",
                "endPort may not be specified when port is the named port \"serve-80-tcp\"",
            ),
            (
                "{ingress: [{ports: [{endPort: 81}]}]}",
                "endPort may not be specified when port is not specified",
            ),
            (
                "{ingress: [{ports: [{port: \"80\"}]}]}",
                "\"80\" is not a valid port name: must contain at least one letter",
            ),
            (
                "{ingress: [{ports: [{port: Serve}]}]}",
                "must contain only alpha-numeric characters",
            ),
            (
                "{ingress: [{ports: [{port: a--b}]}]}",
                "must not contain consecutive hyphens",
            ),
            (
                "{ingress: [{ports: [{port: -ab}]}]}",
                "must not begin or end with a hyphen",
            ),
            (
                "{ingress: [{ports: [{port: serve-80-tcp-long}]}]}",
                "must be no more than 15 characters",
            ),
            (
                "{ingress: [{ports: [{protocol: tcp, port: 80}]}]}",
                "spec.ingress[0].ports[0].protocol: \"tcp\" is not a supported protocol (TCP, UDP, SCTP)",
            ),
            (
                "{ingress: [{ports: [{protocol: ICMP}]}]}",
                "\"ICMP\" is not a supported protocol",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
                "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\" is not a valid CIDR",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0/8}}]}]}",
                "\"10.0.0/8\" is not a valid CIDR",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]}",
                "\"10.0.0.0\" is not a valid CIDR",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: \"\"}}]}]}",
                "\"\" is not a valid CIDR",
            ),
            (
                "{egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
                "spec.egress[0].to[1].ipBlock.except[0]: except 10.1.0.0/24 must be a strict subset of cidr 10.0.0.0/16",
            ),
            (
                "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
                "except 10.0.0.0/16 must be a strict subset",
            ),
            (
                "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]}",
                "except 10.0.0.0/8 must be a strict subset",
            ),
            (
                "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [nope]}}]}]}",
                "except[0]: \"nope\" is not a valid CIDR",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: \"2001:db8::/32\"}}]}]}",
                "spec.ingress[0].from[0].ipBlock.cidr: 2001:db8::/32: IPv6 is not supported by Lumen's IPv4 datapath",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [\"::1/128\"]}}]}]}",
                "except[0]: ::1/128: IPv6 is not supported",
            ),
            (
                "{ingress: [{from: [{}]}]}",
                "spec.ingress[0].from[0]: a peer must specify podSelector, namespaceSelector or ipBlock",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
                "spec.ingress[0].from[0]: ipBlock may not be combined with podSelector or namespaceSelector",
            ),
            (
                "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}",
                "ipBlock may not be combined",
            ),
            (
                "{egress: [{to: [{namespaceSelector: {matchExpressions: [{key: ns, operator: in, values: [x]}]}}]}]}",
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].operator: \"in\" is not a valid selector operator",
            ),
            (
                "{policyTypes: [Ingress, Sideways]}",
                "spec.policyTypes[1]: \"Sideways\" is not a policy type (Ingress, Egress)",
            ),
            (
                "{policyTypes: [ingress]}",
                "\"ingress\" is not a policy type",
            ),
            (
                "{policyTypes: [Ingress, Egress, Ingress]}",
                "may not specify more than two policy types",
            ),
        ] {
            let got = validate(spec).map(|_| ()).map_err(|e| e.to_string());
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{spec}\n  want an error containing {want:?}\n  got {got:?}"
            );
        }
    }

    #[test]
    fn accepts_and_defaults() {
        let p = validate("{}").expect("an empty spec");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        let p = validate("{egress: [{}]}").expect("egress rules");
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress.map(|e| e.len()), Some(1));
        let p = validate("{egress: []}").expect("an empty egress list");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        let p = validate("{policyTypes: [Egress], ingress: [{}]}").expect("egress only");
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
        let p = validate("{policyTypes: [Ingress, Ingress]}").expect("a repeated type");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));

        let p = validate("{ingress: [{ports: [{port: 80, endPort: 90}, {protocol: SCTP}, {port: web, protocol: UDP}]}]}")
            .expect("ports");
        let ports = &p.ingress.expect("ingress")[0].ports;
        let want = [
            (Protocol::TCP, PortMatch::Range { from: 80, to: 90 }),
            (Protocol::SCTP, PortMatch::Any),
            (Protocol::UDP, PortMatch::Named("web".into())),
        ];
        let got: Vec<_> = ports.iter().map(|p| (p.protocol, p.port.clone())).collect();
        assert_eq!(got, want);

        // The API server accepts host bits in a CIDR (ParseCIDRSloppy) and so does Lumen.
        let p = validate(
            "{egress: [{to: [{ipBlock: {cidr: 10.244.1.7/16, except: [10.244.1.9/24]}}]}]}",
        )
        .expect("host bits");
        let Peer::Block(block) = &p.egress.expect("egress")[0].peers[0] else {
            panic!("an ipBlock");
        };
        assert_eq!(block.cidr.to_string(), "10.244.0.0/16");
        assert_eq!(block.except[0].to_string(), "10.244.1.0/24");
    }

    #[test]
    fn ip_block_without_excepts() {
        let block = IpBlock {
            cidr: "10.0.0.0/8".parse().expect("cidr"),
            except: vec![
                "10.1.0.0/16".parse().expect("cidr"),
                "10.128.0.0/9".parse().expect("cidr"),
            ],
        };
        let cidrs: Vec<String> = block.cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(
            cidrs,
            [
                "10.0.0.0/16",
                "10.2.0.0/15",
                "10.4.0.0/14",
                "10.8.0.0/13",
                "10.16.0.0/12",
                "10.32.0.0/11",
                "10.64.0.0/10"
            ]
        );
        for (ip, inside) in [
            ("10.0.9.9", true),
            ("10.1.2.3", false),
            ("10.127.0.1", true),
            ("10.200.0.1", false),
            ("11.0.0.1", false),
        ] {
            let ip: Ipv4Addr = ip.parse().expect("ip");
            assert_eq!(block.contains(ip), inside, "{ip}");
            assert_eq!(
                block.cidrs().iter().any(|c| c.contains(ip)),
                inside,
                "{ip} in cidrs()"
            );
        }
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let p = validate(
            "{podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: NotIn, values: [db]}, {key: env, operator: Exists}, {key: canary, operator: DoesNotExist}, {key: zone, operator: In, values: [a, b]}]}}",
        )
        .expect("selector");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        for (pairs, want) in [
            (&[("app", "web"), ("env", "x"), ("zone", "a")][..], true),
            (
                &[("app", "web"), ("env", "x"), ("zone", "b"), ("tier", "fe")][..],
                true,
            ),
            (
                &[("app", "web"), ("env", "x"), ("zone", "a"), ("tier", "db")][..],
                false,
            ),
            (&[("app", "web"), ("zone", "a")][..], false),
            (
                &[("app", "web"), ("env", "x"), ("zone", "a"), ("canary", "")][..],
                false,
            ),
            (&[("app", "web"), ("env", "x"), ("zone", "c")][..], false),
            (&[("app", "api"), ("env", "x"), ("zone", "a")][..], false),
        ] {
            assert_eq!(p.pod_selector.matches(&labels(pairs)), want, "{pairs:?}");
        }
        assert!(Selector::default().matches(&BTreeMap::new()));
    }
}
