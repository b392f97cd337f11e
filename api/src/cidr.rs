//! A minimal IPv4 CIDR type: enough for pod CIDRs and identities, no dependency.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR notation; the address is always the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{input:?} is not in a.b.c.d/len form")]
    Syntax { input: String },
    #[error("prefix length {prefix} is larger than 32")]
    Prefix { prefix: u8 },
    #[error("{input:?} has host bits set")]
    HostBits { input: String },
}

impl Ipv4Cidr {
    /// A CIDR from a network address and a prefix length.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix { prefix });
        }
        let cidr = Self { addr, prefix };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(CidrError::HostBits {
                input: format!("{addr}/{prefix}"),
            });
        }
        Ok(cidr)
    }

    /// The /32 of one address; infallible, unlike [`Ipv4Cidr::new`].
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, prefix: 32 }
    }

    /// 0.0.0.0/0.
    pub const DEFAULT: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// The address at `offset` from the network address, if inside the network.
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        if offset >= self.size() {
            return None;
        }
        let offset = u32::try_from(offset).ok()?;
        Some(Ipv4Addr::from(u32::from(self.addr) + offset))
    }

    /// The offset of `ip` from the network address, if inside the network.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| u32::from(ip) - u32::from(self.addr))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax {
            input: s.to_owned(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Self::new(addr, prefix)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> Self {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_queries() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(c.size(), 256);
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(c.nth(5), Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.offset_of(Ipv4Addr::new(10, 244, 1, 9)), Some(9));
        assert_eq!(c.to_string(), "10.244.1.0/24");
    }

    #[test]
    fn rejects_bad_input() {
        for (input, want) in [
            ("10.0.0.0", "is not in"),
            ("10.0.0.1/24", "host bits"),
            ("10.0.0.0/33", "larger than 32"),
            ("x/8", "is not in"),
        ] {
            let err = input.parse::<Ipv4Cidr>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
