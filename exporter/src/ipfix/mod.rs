//! IPFIX export (RFC 7011) of Lumen's flow records as biflows (RFC 5103), to UDP and
//! TCP collectors. `ie` is the information model, `encode` the synchronous wire
//! encoder, `config` the settings; `IpfixExporter` runs the transport sessions
//! (`collector`) over the records `export` encodes into shared data sets (`shared`).
//! Every element is documented in `docs/ipfix.md`.

mod collector;
pub mod config;
pub mod encode;
mod exporter;
pub mod ie;
mod shared;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use config::{Collector, ConfigError, IpfixConfig, Transport};
pub use encode::EncodeError;
pub use exporter::{CollectorStats, ExportError, ExporterStats, IpfixExporter};
