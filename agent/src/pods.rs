//! Pod attachments: the CNI operations ADD, DEL, CHECK and GC on a [`Node`], and
//! re-adoption of existing attachments when the agent starts.
//!
//! ADD follows the reference `ptp` plugin's discipline: the address is persisted
//! first, and every later failure undoes what was done, releasing the address.
//! DEL is idempotent: a missing netns, link or allocation is success. It
//! returns once the pod is out of the datapath and its address released; its
//! veth is deleted in the background (`reaper`).

use std::error::Error as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use lumen_api::cni::{
    AgentError, Allocation, Attachment, AttachmentKey, CniRequest, GATEWAY, GcReport, code,
};
use lumen_api::{Endpoint, Identity, Ipv4Cidr};

use crate::datapath::abi::EndpointValue;
use crate::datapath::{DatapathError, Iface};
use crate::ipam::IpamError;
use crate::netlink::{Link, Netlink, NetlinkError, format_mac};
use crate::netns::{self, NetnsError};
use crate::node::Node;

/// Why a pod operation failed; each maps to a CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("network namespace {path} does not exist")]
    NoNetns { path: String },
    #[error("interface name {ifname:?} is not valid (1-15 characters, no '/' or whitespace)")]
    BadIfname { ifname: String },
    #[error("no address for {container_id}")]
    Ipam {
        container_id: String,
        #[source]
        source: IpamError,
    },
    #[error("setting up interface {ifname} failed")]
    Netlink {
        ifname: String,
        #[source]
        source: NetlinkError,
    },
    #[error("interface {ifname} already exists in {netns}")]
    IfnameTaken { ifname: String, netns: String },
    #[error("working in network namespace {netns} failed")]
    Netns {
        netns: String,
        #[source]
        source: NetnsError,
    },
    #[error("attaching the datapath to {host_ifname} failed")]
    Datapath {
        host_ifname: String,
        /// Boxed: aya's errors are large and this enum travels on every result.
        #[source]
        source: Box<DatapathError>,
    },
    #[error("address {ip} is outside the cluster CIDR {cluster}")]
    NoIdentity { ip: Ipv4Addr, cluster: Ipv4Cidr },
    #[error("{container_id}/{ifname} is not attached on this node")]
    UnknownAttachment {
        container_id: String,
        ifname: String,
    },
    #[error("check of {container_id}/{ifname} failed: {reason}")]
    CheckFailed {
        container_id: String,
        ifname: String,
        reason: String,
    },
    #[error("agent state lock poisoned")]
    Poisoned,
}

impl PodError {
    pub fn code(&self) -> u32 {
        match self {
            Self::NoNetns { .. } | Self::UnknownAttachment { .. } => code::UNKNOWN_CONTAINER,
            Self::BadIfname { .. } => code::INVALID_ENV,
            Self::Ipam {
                source: IpamError::Exhausted { .. },
                ..
            } => code::NO_ADDRESS,
            Self::Ipam { .. } => code::IO_FAILURE,
            _ => code::INTERNAL,
        }
    }

    /// The error as the agent answers it: code, message, and the cause chain.
    pub fn to_agent_error(&self) -> AgentError {
        let mut details = Vec::new();
        let mut source = self.source();
        while let Some(e) = source {
            details.push(e.to_string());
            source = e.source();
        }
        AgentError {
            code: self.code(),
            msg: self.to_string(),
            details: details.join(": "),
        }
    }
}

/// Whether `name` is shaped like a [`host_ifname`].
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 14
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

const HOST_PREFIX: &str = "lmn";

/// Whether taking an attachment apart waits for its veth to be deleted. DEL
/// does not (the reaper deletes it with the next batch); an ADD being undone
/// does, and GC and re-adoption wait once for all of theirs, so what they
/// report is what the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    Wait,
    Background,
}

/// Host-side veth name: stable per attachment, 14 characters.
pub fn host_ifname(key: &AttachmentKey) -> String {
    // FNV-1a: stable across releases and processes, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .container_id
        .bytes()
        .chain([b'/'])
        .chain(key.ifname.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_PREFIX}{:011x}", hash & 0x0fff_ffff_ffff)
}

fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != ".."
}

fn netlink_err(ifname: &str) -> impl FnOnce(NetlinkError) -> PodError + '_ {
    move |source| PodError::Netlink {
        ifname: ifname.to_owned(),
        source,
    }
}

impl Node {
    /// CNI ADD.
    pub async fn add(&self, req: &CniRequest) -> Result<Attachment, PodError> {
        if !valid_ifname(&req.ifname) {
            return Err(PodError::BadIfname {
                ifname: req.ifname.clone(),
            });
        }
        if req.netns.is_empty() || !Path::new(&req.netns).exists() {
            return Err(PodError::NoNetns {
                path: req.netns.clone(),
            });
        }
        let key = req.key();
        let ip = {
            let mut ipam = self.ipam.lock().map_err(|_| PodError::Poisoned)?;
            ipam.allocate(Allocation {
                ip: Ipv4Addr::UNSPECIFIED,
                key: key.clone(),
                netns: req.netns.clone(),
                pod_namespace: req.pod_namespace.clone(),
                pod_name: req.pod_name.clone(),
            })
            .map_err(|source| PodError::Ipam {
                container_id: req.container_id.clone(),
                source,
            })?
        };
        match self.plumb(req, ip).await {
            Ok(attachment) => Ok(attachment),
            Err(error) => {
                tracing::warn!(container = %req.container_id, %ip, %error, "ADD failed, undoing");
                self.unplumb(&key, ip, Teardown::Wait).await;
                if let Ok(mut ipam) = self.ipam.lock()
                    && let Err(release) = ipam.release(&key)
                {
                    tracing::error!(%ip, error = %release, "releasing the address after a failed ADD failed");
                }
                Err(error)
            }
        }
    }

    /// Create the veth pair, configure both ends and attach the datapath.
    async fn plumb(&self, req: &CniRequest, ip: Ipv4Addr) -> Result<Attachment, PodError> {
        let key = req.key();
        let host_name = host_ifname(&key);
        let mtu = req.mtu.unwrap_or(self.pod_mtu);
        // A retried ADD may find the veth of an earlier, interrupted attempt,
        // or of a DEL still being deleted.
        self.reaper.settled(&host_name).await;
        self.netlink
            .delete_link(&host_name)
            .await
            .map_err(netlink_err(&host_name))?;
        // Off the runtime's workers: opening an arbitrary path can block (a FIFO),
        // and a blocked worker must not stall the whole node API.
        let path = PathBuf::from(&req.netns);
        let ns = tokio::task::spawn_blocking(move || netns::open(&path))
            .await
            .unwrap_or_else(|_| {
                Err(NetnsError::Panicked {
                    path: PathBuf::from(&req.netns),
                })
            })
            .map_err(|source| PodError::Netns {
                netns: req.netns.clone(),
                source,
            })?;
        let host = {
            use std::os::fd::AsRawFd;
            let create = || {
                self.netlink
                    .create_veth(&host_name, &req.ifname, ns.as_raw_fd(), mtu)
            };
            let taken = |source: &NetlinkError| source.errno() == Some(libc::EEXIST);
            let created = match create().await {
                // The pod's interface may be a DELeted attachment's, not
                // deleted yet (same namespace, another container id).
                Err(source) if taken(&source) => {
                    self.reaper.all_settled().await;
                    create().await
                }
                other => other,
            };
            created.map_err(|source| {
                if taken(&source) {
                    PodError::IfnameTaken {
                        ifname: req.ifname.clone(),
                        netns: req.netns.clone(),
                    }
                } else {
                    PodError::Netlink {
                        ifname: host_name.clone(),
                        source,
                    }
                }
            })?
        };
        self.datapath
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .prepare_veth(&host_name)
            .map_err(|source| PodError::Datapath {
                host_ifname: host_name.clone(),
                source: Box::new(source),
            })?;
        let ifname = req.ifname.clone();
        let host_mac = host.mac;
        let pod_mac = in_pod(&req.netns, &req.ifname, move || {
            configure_pod(ifname, ip, host_mac)
        })
        .await?;
        let alloc = Allocation {
            ip,
            key,
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
        };
        // The programs go on while the host end is still down: a qdisc added
        // to a device that is up makes the kernel wait out an RCU grace period
        // under the RTNL lock.
        let identity = self.publish(&alloc, &host, Iface::Prepared, pod_mac)?;
        self.netlink
            .set_up(host.index)
            .await
            .map_err(netlink_err(&host_name))?;
        self.netlink
            .route_dev(Ipv4Cidr::host(ip), host.index)
            .await
            .map_err(netlink_err(&host_name))?;
        self.netlink
            .neighbour(host.index, ip, pod_mac)
            .await
            .map_err(netlink_err(&host_name))?;
        tracing::info!(container = %req.container_id, pod = ?req.pod_name, %ip, %identity, host = %host_name, "pod attached");
        Ok(Attachment {
            ifname: req.ifname.clone(),
            mac: format_mac(&pod_mac),
            sandbox: req.netns.clone(),
            host_ifname: host_name,
            host_mac: format_mac(&host_mac),
            ip,
            gateway: GATEWAY,
            mtu,
        })
    }

    /// Remove the datapath entry and the veth of an attachment; best effort.
    async fn unplumb(&self, key: &AttachmentKey, ip: Ipv4Addr, teardown: Teardown) {
        let host_name = host_ifname(key);
        let attachments = match self.datapath.lock() {
            Ok(mut dp) => dp.remove_endpoint(&host_name, ip),
            Err(_) => Vec::new(),
        };
        if let Ok(mut eps) = self.endpoints.lock() {
            eps.remove(key);
        }
        // The filters go with the veth: detached before it, each would cost
        // a request.
        self.delete_veth(&host_name, attachments).await;
        if teardown == Teardown::Wait {
            self.reaper.settled(&host_name).await;
        }
    }

    /// Hand the veth `name` to the reaper, with what must live until it is
    /// gone; without a reaper, delete it here. Best effort.
    async fn delete_veth(&self, name: &str, keep: impl std::any::Any + Send) {
        let Err(error) = self.reaper.delete(name, keep) else {
            return;
        };
        tracing::warn!(host = %name, %error, "deleting the veth here instead");
        if let Err(error) = self.netlink.delete_link(name).await {
            tracing::warn!(host = %name, %error, "deleting the veth failed");
        }
    }

    /// CNI DEL: idempotent.
    pub async fn del(&self, req: &CniRequest) -> Result<(), PodError> {
        let key = req.key();
        let alloc = self
            .ipam
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .get(&key)
            .cloned();
        let Some(alloc) = alloc else {
            // Nothing allocated; still remove a veth an interrupted ADD may have
            // left, and return only once an earlier DEL's veth is gone too.
            let host_name = host_ifname(&key);
            self.reaper.settled(&host_name).await;
            self.netlink
                .delete_link(&host_name)
                .await
                .map_err(netlink_err(&req.ifname))?;
            return Ok(());
        };
        self.release(&alloc, Teardown::Background).await
    }

    async fn release(&self, alloc: &Allocation, teardown: Teardown) -> Result<(), PodError> {
        self.unplumb(&alloc.key, alloc.ip, teardown).await;
        self.ipam
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .release(&alloc.key)
            .map_err(|source| PodError::Ipam {
                container_id: alloc.key.container_id.clone(),
                source,
            })?;
        tracing::info!(container = %alloc.key.container_id, ip = %alloc.ip, "pod detached");
        Ok(())
    }

    /// CNI CHECK: the allocation, the host veth, the datapath entry and the pod's
    /// interface with its address are all still there.
    pub async fn check(&self, req: &CniRequest) -> Result<(), PodError> {
        let key = req.key();
        let fail = |reason: String| PodError::CheckFailed {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            reason,
        };
        let alloc = self
            .ipam
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .get(&key)
            .cloned()
            .ok_or_else(|| PodError::UnknownAttachment {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            })?;
        let host_name = host_ifname(&key);
        let host = self
            .netlink
            .link(&host_name)
            .await
            .map_err(netlink_err(&host_name))?
            .ok_or_else(|| fail(format!("host veth {host_name} is missing")))?;
        if !host.up {
            return Err(fail(format!("host veth {host_name} is down")));
        }
        if !self
            .endpoints
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .contains_key(&key)
        {
            return Err(fail("no datapath endpoint".to_owned()));
        }
        if !Path::new(&req.netns).exists() {
            return Err(PodError::NoNetns {
                path: req.netns.clone(),
            });
        }
        let ifname = req.ifname.clone();
        let found = in_pod(&req.netns, &req.ifname, move || async move {
            let nl = Netlink::connect()?;
            match nl.link(&ifname).await? {
                Some(link) => nl.first_ipv4(link.index).await,
                None => Ok(None),
            }
        })
        .await?;
        match found {
            Some(ip) if ip == alloc.ip => Ok(()),
            Some(ip) => Err(fail(format!(
                "{} has {ip}, expected {}",
                req.ifname, alloc.ip
            ))),
            None => Err(fail(format!("{} is missing or has no address", req.ifname))),
        }
    }

    /// CNI GC: release every attachment the runtime no longer has.
    pub async fn gc(&self, valid: &[AttachmentKey]) -> Result<GcReport, PodError> {
        let stale: Vec<Allocation> = self
            .ipam
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .allocations()
            .filter(|a| !valid.contains(&a.key))
            .cloned()
            .collect();
        let mut released = Vec::new();
        // One batch for all their veths, and GC answers once they are gone.
        for alloc in stale {
            self.release(&alloc, Teardown::Background).await?;
            released.push(alloc.key);
        }
        self.reaper.all_settled().await;
        Ok(GcReport { released })
    }

    /// On start: re-attach every allocation whose pod still exists; release the
    /// rest; delete host veths of no allocation (DELs whose veth an earlier
    /// agent had not deleted yet when it stopped).
    pub async fn readopt(&self) -> Result<(), PodError> {
        let allocs: Vec<Allocation> = self
            .ipam
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .allocations()
            .cloned()
            .collect();
        let ours: std::collections::HashSet<String> =
            allocs.iter().map(|a| host_ifname(&a.key)).collect();
        let names = self
            .netlink
            .link_names()
            .await
            .map_err(netlink_err("the node's links"))?;
        for name in names {
            if is_host_ifname(&name) && !ours.contains(&name) {
                tracing::info!(host = %name, "deleting the veth of a detached pod");
                self.delete_veth(&name, ()).await;
            }
        }
        for alloc in allocs {
            match self.readopt_one(&alloc).await {
                Ok(()) => {
                    tracing::info!(container = %alloc.key.container_id, ip = %alloc.ip, "pod re-adopted")
                }
                Err(error) => {
                    tracing::warn!(container = %alloc.key.container_id, ip = %alloc.ip, %error, "pod is gone, releasing");
                    self.release(&alloc, Teardown::Background).await?;
                }
            }
        }
        // One batch for every veth above; the node API opens after this.
        self.reaper.all_settled().await;
        Ok(())
    }

    async fn readopt_one(&self, alloc: &Allocation) -> Result<(), PodError> {
        let key = &alloc.key;
        let host_name = host_ifname(key);
        let host = self
            .netlink
            .link(&host_name)
            .await
            .map_err(netlink_err(&host_name))?
            .ok_or_else(|| PodError::UnknownAttachment {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
            })?;
        if !Path::new(&alloc.netns).exists() {
            return Err(PodError::NoNetns {
                path: alloc.netns.clone(),
            });
        }
        let ifname = key.ifname.clone();
        let (pod_mac, pod_ip) = in_pod(&alloc.netns, &key.ifname, move || async move {
            let nl = Netlink::connect()?;
            let link = nl.require_link(&ifname).await?;
            Ok((link.mac, nl.first_ipv4(link.index).await?))
        })
        .await?;
        // An ADD cut off before it configured the pod left a bare interface.
        if pod_ip != Some(alloc.ip) {
            return Err(PodError::CheckFailed {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                reason: format!("pod interface has {pod_ip:?}, expected {}", alloc.ip),
            });
        }
        self.publish(alloc, &host, Iface::Existing, pod_mac)?;
        Ok(())
    }

    /// Put an attached pod into the datapath and the endpoint list; the one place
    /// both ADD and re-adoption go through.
    fn publish(
        &self,
        alloc: &Allocation,
        host: &Link,
        iface: Iface,
        pod_mac: [u8; 6],
    ) -> Result<Identity, PodError> {
        let cluster = self.config.cluster_cidr;
        let identity = Identity::for_pod(cluster, alloc.ip).ok_or(PodError::NoIdentity {
            ip: alloc.ip,
            cluster,
        })?;
        let host_name = host_ifname(&alloc.key);
        self.datapath
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .add_endpoint(
                &host_name,
                iface,
                alloc.ip,
                EndpointValue {
                    ifindex: host.index,
                    identity: identity.0,
                    mac: pod_mac,
                    host_mac: host.mac,
                    flags: 0,
                },
            )
            .map_err(|source| PodError::Datapath {
                host_ifname: host_name.clone(),
                source: Box::new(source),
            })?;
        let endpoint = Endpoint {
            container_id: alloc.key.container_id.clone(),
            ifname: alloc.key.ifname.clone(),
            namespace: alloc.pod_namespace.clone(),
            pod: alloc.pod_name.clone(),
            ip: alloc.ip,
            identity,
            host_ifname: host_name,
            host_ifindex: host.index,
            mac: format_mac(&pod_mac),
            netns: alloc.netns.clone(),
        };
        self.endpoints
            .lock()
            .map_err(|_| PodError::Poisoned)?
            .insert(alloc.key.clone(), endpoint);
        Ok(identity)
    }
}

/// Run netlink work inside a pod's namespace, mapping both failure layers.
async fn in_pod<F, Fut, T>(netns: &str, ifname: &str, work: F) -> Result<T, PodError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    netns::run_in(Path::new(netns), work)
        .await
        .map_err(|source| PodError::Netns {
            netns: netns.to_owned(),
            source,
        })?
        .map_err(netlink_err(ifname))
}

/// Inside the pod's namespace: address, link up, and the Calico-style gateway
/// layout (169.254.1.1 on-link, default via it, a permanent neighbour entry).
async fn configure_pod(
    ifname: String,
    ip: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<[u8; 6], NetlinkError> {
    let nl = Netlink::connect()?;
    if let Some(lo) = nl.link("lo").await? {
        nl.set_up(lo.index).await?;
    }
    let link = nl.require_link(&ifname).await?;
    nl.add_address(link.index, ip, 32).await?;
    nl.set_up(link.index).await?;
    nl.route_dev(Ipv4Cidr::host(GATEWAY), link.index).await?;
    nl.route_via(Ipv4Cidr::DEFAULT, GATEWAY, link.index).await?;
    nl.neighbour(link.index, GATEWAY, host_mac).await?;
    Ok(link.mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = AttachmentKey {
            container_id: "abc".to_owned(),
            ifname: "eth0".to_owned(),
        };
        let b = AttachmentKey {
            container_id: "abc".to_owned(),
            ifname: "eth1".to_owned(),
        };
        assert_eq!(host_ifname(&a), host_ifname(&a.clone()));
        assert_ne!(host_ifname(&a), host_ifname(&b));
        assert_eq!(host_ifname(&a).len(), 14);
        assert!(is_host_ifname(&host_ifname(&a)));
        for other in [
            "lumen_vxlan",
            "eth0",
            "lmn",
            "lmn0123456789g",
            "lmn0123456789ab",
        ] {
            assert!(!is_host_ifname(other), "{other}");
        }
    }

    #[test]
    fn ifname_validation() {
        for ok in ["eth0", "net1", "a", "x234567890abcde"] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in ["", "has space", "a/b", "x234567890abcdef", ".."] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    #[test]
    fn errors_map_to_cni_codes() {
        let e = PodError::NoNetns { path: "/x".into() };
        assert_eq!(e.to_agent_error().code, code::UNKNOWN_CONTAINER);
        let e = PodError::BadIfname { ifname: "".into() };
        assert_eq!(e.code(), code::INVALID_ENV);
        let e = PodError::Ipam {
            container_id: "c".into(),
            source: IpamError::Exhausted {
                cidr: "10.0.0.0/30".parse().unwrap(),
                used: 2,
            },
        };
        let agent = e.to_agent_error();
        assert_eq!(agent.code, code::NO_ADDRESS);
        assert!(
            agent.details.contains("no free address"),
            "{}",
            agent.details
        );
    }
}
