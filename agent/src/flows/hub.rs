//! The hub: the bounded buffer of recent flow events behind `GET /v1/flows`, and
//! the broadcast that follow-mode readers subscribe to. A reader too slow for the
//! broadcast gets a lost-events record with the count it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lumen_api::FlowFilter;
use lumen_api::flow::{FlowEvent, LostEvents, LostSource};
use tokio::sync::broadcast;

/// A published event and its place in the hub's order.
pub type Sequenced = (u64, Arc<FlowEvent>);

#[derive(Debug)]
pub struct Hub {
    node: String,
    capacity: usize,
    recent: Mutex<VecDeque<Sequenced>>,
    tx: broadcast::Sender<Sequenced>,
    next: AtomicU64,
}

impl Hub {
    /// `capacity` recent events are kept; followers may fall `capacity` behind.
    pub fn new(node: &str, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            node: node.to_owned(),
            capacity,
            recent: Mutex::new(VecDeque::with_capacity(capacity)),
            tx: broadcast::channel(capacity).0,
            next: AtomicU64::new(1),
        }
    }

    pub fn publish(&self, event: FlowEvent) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let item = (self.next.fetch_add(1, Ordering::Relaxed), Arc::new(event));
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(item.clone());
        // No followers is not an error.
        let _ = self.tx.send(item);
    }

    /// Subscribe first, then snapshot, so a follower misses nothing in between;
    /// the follower skips broadcast items at or below the returned sequence.
    pub fn open(
        &self,
        filter: &FlowFilter,
        last: Option<usize>,
    ) -> (Vec<Arc<FlowEvent>>, u64, broadcast::Receiver<Sequenced>) {
        let rx = self.tx.subscribe();
        let Ok(recent) = self.recent.lock() else {
            return (Vec::new(), 0, rx);
        };
        let upto = recent.back().map_or(0, |(seq, _)| *seq);
        let mut matching: Vec<Arc<FlowEvent>> = recent
            .iter()
            .filter(|(_, e)| filter.matches(e))
            .map(|(_, e)| e.clone())
            .collect();
        if let Some(n) = last {
            let skip = matching.len().saturating_sub(n);
            matching.drain(..skip);
        }
        (matching, upto, rx)
    }

    /// The lost-events record for a follower that fell `count` events behind.
    pub fn lagged(&self, count: u64) -> FlowEvent {
        FlowEvent::LostEvents(LostEvents {
            node: self.node.clone(),
            source: LostSource::Sink,
            count,
            time_ns: super::clock::now_epoch_ns(),
        })
    }
}

#[cfg(test)]
mod tests {
    use lumen_api::FlowQuery;

    use super::*;

    fn lost(n: u64) -> FlowEvent {
        FlowEvent::LostEvents(LostEvents {
            node: "node-1".into(),
            source: LostSource::RingBuffer,
            count: n,
            time_ns: n,
        })
    }

    #[test]
    fn keeps_the_newest_and_hands_followers_the_rest() {
        let hub = Hub::new("node-1", 3);
        for n in 1..=5 {
            hub.publish(lost(n));
        }
        let all = FlowFilter::try_from(&FlowQuery::default()).expect("filter");
        let (snap, upto, mut rx) = hub.open(&all, Some(2));
        let counts: Vec<u64> = snap.iter().map(|e| e.time_ns()).collect();
        assert_eq!(counts, vec![4, 5]);
        assert_eq!(upto, 5);
        hub.publish(lost(6));
        let (seq, e) = rx.try_recv().expect("followed");
        assert_eq!((seq, e.time_ns()), (6, 6));
    }

    #[test]
    fn filters_the_snapshot() {
        let hub = Hub::new("node-1", 8);
        hub.publish(lost(1));
        let other = FlowFilter::try_from(&FlowQuery {
            node: Some("node-2".into()),
            ..FlowQuery::default()
        })
        .expect("filter");
        assert!(hub.open(&other, None).0.is_empty());
    }
}
