//! Unpredictable identifiers for probes (SCTP verification tags, source ports, ICMP
//! ids) without a `rand` dependency: std's `RandomState` is seeded from the OS and each
//! new instance differs, which is all a lab probe needs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

pub(crate) fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// A non-zero 32-bit value: SCTP forbids a zero initiate tag.
pub(crate) fn nonzero_u32() -> u32 {
    loop {
        let value = random_u64() as u32;
        if value != 0 {
            return value;
        }
    }
}

/// A port from the Linux default ephemeral range (32768–60999).
pub(crate) fn ephemeral_port() -> u16 {
    32768 + (random_u64() % (61000 - 32768)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_vary_and_stay_in_range() {
        let tags: std::collections::HashSet<u32> = (0..64).map(|_| nonzero_u32()).collect();
        assert!(tags.len() > 60);
        assert!(!tags.contains(&0));
        for _ in 0..1000 {
            assert!((32768..61000).contains(&ephemeral_port()));
        }
    }
}
