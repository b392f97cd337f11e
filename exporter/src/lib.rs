//! Lumen's flow exporters. Today: IPFIX, to any number of UDP and TCP collectors, with
//! Kubernetes metadata under Antrea's information elements so that collectors set up
//! for Antrea read Lumen's records unchanged.

pub mod ipfix;

pub use ipfix::{
    Collector, CollectorStats, ExportError, ExporterStats, IpfixConfig, IpfixExporter, Transport,
};
