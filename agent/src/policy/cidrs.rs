//! A set of IPv4 addresses as disjoint CIDRs: the peers of a compiled rule.
//! Disjoint prefixes go into an LPM map as they are, and membership is a binary
//! search.

use std::net::Ipv4Addr;

use lumen_api::Ipv4Cidr;

/// Sorted, pairwise disjoint CIDRs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet(Vec<Ipv4Cidr>);

impl CidrSet {
    /// The union of `cidrs`; a CIDR inside another is dropped.
    pub fn new(cidrs: impl IntoIterator<Item = Ipv4Cidr>) -> Self {
        let mut all: Vec<Ipv4Cidr> = cidrs.into_iter().collect();
        // By address, the wider first: a CIDR is covered by the last one kept or
        // by none, since two CIDRs are either nested or disjoint.
        all.sort_by_key(|c| (u32::from(c.addr()), c.prefix()));
        let mut kept: Vec<Ipv4Cidr> = Vec::with_capacity(all.len());
        for c in all {
            if kept.last().is_none_or(|last| !last.contains(c.addr())) {
                kept.push(c);
            }
        }
        Self(kept)
    }

    /// Every address.
    pub fn any() -> Self {
        Self(vec![Ipv4Cidr::DEFAULT])
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let at = self.0.partition_point(|c| c.addr() <= ip);
        at > 0 && self.0[at - 1].contains(ip)
    }

    pub fn cidrs(&self) -> &[Ipv4Cidr] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> CidrSet {
        CidrSet::new(cidrs.iter().map(|c| c.parse().expect("cidr")))
    }

    #[test]
    fn nested_cidrs_collapse_and_lookups_hold() {
        let s = set(&[
            "10.0.1.0/24",
            "10.0.0.0/16",
            "192.168.0.7/32",
            "10.0.5.5/32",
        ]);
        let listed: Vec<String> = s.cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(listed, ["10.0.0.0/16", "192.168.0.7/32"]);
        for (ip, inside) in [
            ("10.0.200.1", true),
            ("10.1.0.0", false),
            ("192.168.0.7", true),
            ("192.168.0.8", false),
            ("9.255.255.255", false),
        ] {
            assert_eq!(s.contains(ip.parse().expect("ip")), inside, "{ip}");
        }
        assert!(CidrSet::any().contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(!CidrSet::default().contains(Ipv4Addr::UNSPECIFIED));
    }
}
