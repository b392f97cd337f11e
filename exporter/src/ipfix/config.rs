//! The exporter's configuration: where the collectors are, how often templates and
//! statistics go out, and how much to buffer; and its validation.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::encode::{self, EncodeError, MAX_MESSAGE_LEN, MESSAGE_HEADER_LEN};
use super::ie::DEFAULT_LUMEN_PEN;

/// Smallest useful message: a header, a set header and a typical record.
pub const MIN_MESSAGE_SIZE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid collector {input:?}: {reason} (expected udp://ADDR:PORT or tcp://ADDR:PORT)")]
    Collector { input: String, reason: &'static str },
    #[error("no collectors configured")]
    NoCollectors,
    #[error("invalid enterprise number")]
    Enterprise(#[source] EncodeError),
    #[error("max_message_size {size} is outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_LEN}")]
    MessageSize { size: usize },
    #[error("{name} must be greater than zero")]
    Zero { name: &'static str },
}

/// How messages reach a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// One collecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Collector {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl FromStr for Collector {
    type Err = ConfigError;

    /// `udp://127.0.0.1:4739`, `tcp://[::1]:4739`. Addresses only: the exporter does
    /// not resolve names.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConfigError::Collector {
            input: input.to_string(),
            reason,
        };
        let (scheme, addr) = input.split_once("://").ok_or_else(|| err("no scheme"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            _ => return Err(err("unknown scheme")),
        };
        let addr = addr
            .parse()
            .map_err(|_| err("not an IP address and port"))?;
        Ok(Self { addr, transport })
    }
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.scheme(), self.addr)
    }
}

/// The exporter's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfixConfig {
    pub collectors: Vec<Collector>,
    pub observation_domain_id: u32,
    /// Enterprise number of Lumen's own elements. Never Antrea's 56506.
    pub enterprise_number: u32,
    /// How often templates are re-sent over UDP.
    pub template_refresh: Duration,
    /// How often the reliability statistics record goes to each collector.
    pub stats_interval: Duration,
    /// Records buffered per collector (while it is disconnected or slow); beyond
    /// this, new records are counted lost for that collector.
    pub max_buffered_records: usize,
    /// Largest message to send; keep it within the path MTU for UDP.
    pub max_message_size: usize,
    /// Longest wait between TCP connection attempts (the wait doubles from 100 ms).
    pub reconnect_backoff_max: Duration,
}

impl Default for IpfixConfig {
    fn default() -> Self {
        Self {
            collectors: Vec::new(),
            observation_domain_id: 1,
            enterprise_number: DEFAULT_LUMEN_PEN,
            template_refresh: Duration::from_secs(60),
            stats_interval: Duration::from_secs(60),
            max_buffered_records: 10_000,
            max_message_size: 1400,
            reconnect_backoff_max: Duration::from_secs(5),
        }
    }
}

impl IpfixConfig {
    /// Check everything `IpfixExporter::start` relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.collectors.is_empty() {
            return Err(ConfigError::NoCollectors);
        }
        encode::check_enterprise(self.enterprise_number).map_err(ConfigError::Enterprise)?;
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_LEN).contains(&self.max_message_size) {
            return Err(ConfigError::MessageSize {
                size: self.max_message_size,
            });
        }
        for (name, zero) in [
            ("template_refresh", self.template_refresh.is_zero()),
            ("stats_interval", self.stats_interval.is_zero()),
            (
                "reconnect_backoff_max",
                self.reconnect_backoff_max.is_zero(),
            ),
            ("max_buffered_records", self.max_buffered_records == 0),
        ] {
            if zero {
                return Err(ConfigError::Zero { name });
            }
        }
        Ok(())
    }

    /// The most data-set bytes (set header included) a message may carry.
    pub(crate) fn max_set_len(&self) -> usize {
        self.max_message_size - MESSAGE_HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(collector: &str) -> IpfixConfig {
        IpfixConfig {
            collectors: vec![collector.parse().expect("collector")],
            ..IpfixConfig::default()
        }
    }

    #[test]
    fn collectors_parse_and_print() {
        for (input, transport, addr) in [
            ("udp://127.0.0.1:4739", Transport::Udp, "127.0.0.1:4739"),
            ("tcp://127.0.0.1:4740", Transport::Tcp, "127.0.0.1:4740"),
            ("TCP://[::1]:4739", Transport::Tcp, "[::1]:4739"),
        ] {
            let c: Collector = input.parse().expect(input);
            assert_eq!(c.transport, transport);
            assert_eq!(c.addr.to_string(), addr);
            assert_eq!(c.to_string().parse::<Collector>().expect("round trip"), c);
        }
    }

    #[test]
    fn bad_collectors_say_why() {
        for (input, reason) in [
            ("127.0.0.1:4739", "no scheme"),
            ("sctp://127.0.0.1:4739", "unknown scheme"),
            ("udp://collector.example:4739", "not an IP address and port"),
            ("udp://127.0.0.1", "not an IP address and port"),
        ] {
            let err = input.parse::<Collector>().expect_err(input).to_string();
            assert!(err.contains(reason) && err.contains(input), "{err}");
        }
    }

    #[test]
    fn antreas_enterprise_number_is_refused() {
        let mut c = config("udp://127.0.0.1:4739");
        c.enterprise_number = 56506;
        let err = c.validate().expect_err("56506 accepted");
        assert!(matches!(
            err,
            ConfigError::Enterprise(EncodeError::ReservedEnterprise { pen: 56506, .. })
        ));
        for pen in [0, 29305] {
            c.enterprise_number = pen;
            assert!(c.validate().is_err(), "{pen} accepted");
        }
        c.enterprise_number = 32473;
        c.validate().expect("documentation PEN");
    }

    #[test]
    fn limits_are_checked() {
        let mut c = config("tcp://127.0.0.1:4739");
        c.max_message_size = 100;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MessageSize { size: 100 })
        ));
        c.max_message_size = 65535;
        c.validate().expect("TCP-sized messages");
        c.stats_interval = Duration::ZERO;
        assert!(
            c.validate()
                .expect_err("zero")
                .to_string()
                .contains("stats_interval")
        );
        assert!(matches!(
            IpfixConfig::default().validate(),
            Err(ConfigError::NoCollectors)
        ));
    }
}
