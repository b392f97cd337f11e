//! IP address management for the node's pod CIDR.
//!
//! Every change is written to disk (temp file, then an atomic rename) before the
//! caller may use the address, so a restart — even after `kill -9` — never hands
//! out an address that is in use. There is deliberately no fsync: it cost tens of
//! milliseconds per ADD under the IPAM lock, and it only protects against a machine
//! crash, after which every pod network namespace is gone and every allocation
//! stale anyway. Addresses are handed out round robin, so a released address is the
//! last to be reused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use lumen_api::Ipv4Cidr;
use lumen_api::cni::{Allocation, AttachmentKey, IpamState};

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {cidr} has no free address ({used} in use)")]
    Exhausted { cidr: Ipv4Cidr, used: usize },
    #[error("reading IPAM state {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM state {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("IPAM state {path} is for pod CIDR {found}, but this node's pod CIDR is {want}")]
    CidrChanged {
        path: PathBuf,
        found: Ipv4Cidr,
        want: Ipv4Cidr,
    },
    #[error("writing IPAM state {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The allocator and its persisted state.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    cidr: Ipv4Cidr,
    by_ip: BTreeMap<Ipv4Addr, Allocation>,
    cursor: u64,
}

impl Ipam {
    /// Open (or create) the state file for `cidr`.
    pub fn open(path: &Path, cidr: Ipv4Cidr) -> Result<Self, IpamError> {
        let mut ipam = Self {
            path: path.to_owned(),
            cidr,
            by_ip: BTreeMap::new(),
            cursor: 0,
        };
        match fs::read(path) {
            Ok(bytes) => {
                let state: IpamState =
                    serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                        path: path.to_owned(),
                        source,
                    })?;
                if state.cidr != cidr {
                    return Err(IpamError::CidrChanged {
                        path: path.to_owned(),
                        found: state.cidr,
                        want: cidr,
                    });
                }
                ipam.by_ip = state.allocations.into_iter().map(|a| (a.ip, a)).collect();
                ipam.cursor = ipam
                    .by_ip
                    .keys()
                    .filter_map(|ip| cidr.offset_of(*ip))
                    .max()
                    .map_or(0, u64::from);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ipam.persist()?,
            Err(source) => {
                return Err(IpamError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        Ok(ipam)
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// The allocation of an attachment, if any.
    pub fn get(&self, key: &AttachmentKey) -> Option<&Allocation> {
        self.by_ip.values().find(|a| &a.key == key)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.by_ip.values()
    }

    /// Allocate an address for `alloc.key` (the `ip` field is ignored); an
    /// attachment that already has one gets the same address back. Persisted
    /// before it returns.
    pub fn allocate(&mut self, mut alloc: Allocation) -> Result<Ipv4Addr, IpamError> {
        if let Some(existing) = self.get(&alloc.key) {
            return Ok(existing.ip);
        }
        let size = self.cidr.size();
        // Offset 0 is the network address and the last one the broadcast address.
        let usable = size.saturating_sub(2).max(1);
        for step in 1..=usable {
            let offset = (self.cursor + step - 1) % usable + 1;
            let Some(ip) = self.cidr.nth(offset) else {
                continue;
            };
            if self.by_ip.contains_key(&ip) {
                continue;
            }
            alloc.ip = ip;
            self.by_ip.insert(ip, alloc);
            if let Err(e) = self.persist() {
                self.by_ip.remove(&ip);
                return Err(e);
            }
            self.cursor = offset;
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            used: self.by_ip.len(),
        })
    }

    /// Release the address of `key`; `None` if it had none.
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Allocation>, IpamError> {
        let Some(ip) = self.get(key).map(|a| a.ip) else {
            return Ok(None);
        };
        let removed = self.by_ip.remove(&ip);
        if let Err(e) = self.persist() {
            if let Some(a) = removed {
                self.by_ip.insert(ip, a);
            }
            return Err(e);
        }
        Ok(removed)
    }

    /// (used, free) addresses, network and broadcast addresses excluded.
    pub fn usage(&self) -> (u64, u64) {
        let usable = self.cidr.size().saturating_sub(2).max(1);
        let used = self.by_ip.len() as u64;
        (used, usable.saturating_sub(used))
    }

    pub fn state(&self) -> IpamState {
        IpamState {
            cidr: self.cidr,
            allocations: self.by_ip.values().cloned().collect(),
        }
    }

    fn persist(&self) -> Result<(), IpamError> {
        let write = |source| IpamError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(write)?;
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&self.state()).map_err(|e| write(e.into()))?;
        File::create(&tmp)
            .and_then(|mut file| file.write_all(&bytes))
            .map_err(write)?;
        fs::rename(&tmp, &self.path).map_err(write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str) -> Allocation {
        Allocation {
            ip: Ipv4Addr::UNSPECIFIED,
            key: AttachmentKey {
                container_id: id.to_owned(),
                ifname: "eth0".to_owned(),
            },
            netns: format!("/run/netns/{id}"),
            pod_namespace: None,
            pod_name: None,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn allocates_round_robin_and_survives_reopen() {
        let dir = tempdir("rr");
        let path = dir.join("ipam.json");
        let cidr: Ipv4Cidr = "10.244.1.0/29".parse().unwrap();
        let mut ipam = Ipam::open(&path, cidr).unwrap();
        let a = ipam.allocate(alloc("a")).unwrap();
        let b = ipam.allocate(alloc("b")).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(
            ipam.allocate(alloc("a")).unwrap(),
            a,
            "same key, same address"
        );
        ipam.release(&alloc("a").key).unwrap();
        let c = ipam.allocate(alloc("c")).unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(10, 244, 1, 3),
            "released address is not reused first"
        );

        let mut reopened = Ipam::open(&path, cidr).unwrap();
        assert_eq!(reopened.state(), ipam.state());
        let d = reopened.allocate(alloc("d")).unwrap();
        assert_eq!(
            d,
            Ipv4Addr::new(10, 244, 1, 4),
            "cursor resumes after the highest"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exhaustion_and_cidr_change_are_errors() {
        let dir = tempdir("full");
        let path = dir.join("ipam.json");
        let cidr: Ipv4Cidr = "10.244.1.0/30".parse().unwrap();
        let mut ipam = Ipam::open(&path, cidr).unwrap();
        ipam.allocate(alloc("a")).unwrap();
        ipam.allocate(alloc("b")).unwrap();
        let err = ipam.allocate(alloc("c")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 2, .. }), "{err}");
        let other: Ipv4Cidr = "10.244.2.0/24".parse().unwrap();
        assert!(matches!(
            Ipam::open(&path, other).unwrap_err(),
            IpamError::CidrChanged { .. }
        ));
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Ipam::open(&path, cidr).unwrap_err(),
            IpamError::Corrupt { .. }
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
