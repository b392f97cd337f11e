//! Sinks: where finished flow records go besides the live stream (the hub).
//! A sink never blocks the pipeline: one that cannot keep up counts what it
//! dropped and reports it in its own statistics.

use lumen_api::flow::{Flow, LostEvents};

pub trait Sink: Send {
    /// A record that closes a period of a flow (it has an end reason).
    fn record(&mut self, flow: &Flow);
    /// Records the pipeline lost before they reached any sink.
    fn lost(&mut self, lost: &LostEvents);
}

/// IPFIX to every configured collector.
impl Sink for std::sync::Arc<lumen_exporter::IpfixExporter> {
    fn record(&mut self, flow: &Flow) {
        self.export(flow);
    }

    fn lost(&mut self, lost: &LostEvents) {
        self.add_lost(lost.count);
    }
}
