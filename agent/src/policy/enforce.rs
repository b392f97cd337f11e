//! Enforcement on this node: the compiled policy of the node's own endpoints
//! written into the datapath's maps, and the names of the rule handles those
//! maps use handed to the flow pipeline, so flows name what decided them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use lumen_api::Ipv4Cidr;
use lumen_api::flow::PolicyRef;

use super::cidrs::CidrSet;
use super::engine::{Compiled, DirectionRules, Ports};
use crate::cluster::ClusterState;
use crate::datapath::policy::{self as dp, EndpointRules};
use crate::datapath::{Datapath, DatapathError};
use crate::flows::enrich::PolicyRules;

use super::PolicyEngine;

/// The compiled rules of the endpoints `local` says are this node's. Rules
/// and peer sets the engine shares between endpoints stay shared, so each is
/// converted once and the datapath lays it out once.
pub fn local_rules(compiled: &Compiled, local: impl Fn(Ipv4Addr) -> bool) -> Vec<EndpointRules> {
    let mut convert = Convert::default();
    compiled
        .endpoints()
        .filter(|ep| local(ep.ip) && (ep.ingress.is_some() || ep.egress.is_some()))
        .map(|ep| EndpointRules {
            ip: ep.ip,
            ingress: ep.ingress.as_ref().map(|d| convert.direction(d)),
            egress: ep.egress.as_ref().map(|d| convert.direction(d)),
        })
        .collect()
}

/// The datapath's form of the engine's, by the engine's allocation.
#[derive(Default)]
struct Convert {
    rules: HashMap<*const DirectionRules, Arc<[dp::RuleEntry]>>,
    peers: HashMap<*const CidrSet, Arc<[(Ipv4Cidr, bool)]>>,
}

impl Convert {
    fn direction(&mut self, rules: &Arc<DirectionRules>) -> dp::DirectionRules {
        let converted = match self.rules.get(&Arc::as_ptr(rules)) {
            Some(converted) => converted.clone(),
            None => {
                let converted: Arc<[dp::RuleEntry]> = rules
                    .rules
                    .iter()
                    .map(|r| dp::RuleEntry {
                        id: r.id,
                        peers: self.peers(&r.peers),
                        ports: match &r.ports {
                            Ports::Any => None,
                            Ports::Ranges(ranges) => Some(
                                ranges
                                    .iter()
                                    .map(|p| (p.protocol.0, p.from, p.to))
                                    .collect(),
                            ),
                        },
                    })
                    .collect();
                self.rules.insert(Arc::as_ptr(rules), converted.clone());
                converted
            }
        };
        dp::DirectionRules {
            deny_id: rules.deny_id,
            rules: converted,
        }
    }

    fn peers(&mut self, set: &Arc<CidrSet>) -> Arc<[(Ipv4Cidr, bool)]> {
        self.peers
            .entry(Arc::as_ptr(set))
            .or_insert_with(|| set.cidrs().iter().map(|c| (*c, true)).collect())
            .clone()
    }
}

/// The policy in force on this node.
#[derive(Debug, Default)]
pub struct Enforcer {
    compiled: Mutex<Compiled>,
    /// Rule names, shared with the flow pipeline.
    pub rules: PolicyRules,
}

impl Enforcer {
    pub fn new(rules: PolicyRules) -> Self {
        Self {
            compiled: Mutex::new(Compiled::default()),
            rules,
        }
    }

    /// Compile `state` and enforce it for the endpoints `local` selects. If the
    /// datapath cannot take the result, the previous policy stays enforced.
    pub fn apply(
        &self,
        state: &ClusterState,
        datapath: &Mutex<Datapath>,
        local: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<(), DatapathError> {
        let Ok(mut current) = self.compiled.lock() else {
            return Ok(());
        };
        let compiled = PolicyEngine::compile(state, Some(&current));
        if compiled == *current {
            return Ok(());
        }
        let endpoints = local_rules(&compiled, local);
        if let Ok(mut dp) = datapath.lock() {
            // Flows and traces carry the maps' handles: the new ones are named
            // before the maps can hand them out. A retired handle keeps its
            // name while its rule is still in the compiled policy.
            dp.set_policy_with(&endpoints, |next| {
                let names: HashMap<u16, PolicyRef> = next
                    .handles()
                    .filter_map(|(handle, id)| Some((handle, compiled.rule(id)?.clone())))
                    .collect();
                self.rules.replace(names);
            })?;
        }
        tracing::info!(
            policies = compiled.policies().len(),
            rejected = compiled.rejected.len(),
            isolated_endpoints = endpoints.len(),
            "policy enforced"
        );
        *current = compiled;
        Ok(())
    }

    /// `f` of the policy in force, for the API. It stays in force meanwhile:
    /// reading the datapath inside `f` sees the maps of exactly this policy.
    pub fn with_compiled<T>(&self, f: impl FnOnce(&Compiled) -> T) -> T {
        let compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&compiled)
    }
}
