//! The pipeline's filter stage: which finished records reach the sinks (IPFIX),
//! as Hubble's export allow/deny lists. The live stream is not filtered here;
//! each reader of `GET /v1/flows` brings its own filter.

use lumen_api::{Flow, FlowFilter};

/// A record passes when some allow filter matches it (or there are none) and no
/// deny filter does.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub allow: Vec<FlowFilter>,
    pub deny: Vec<FlowFilter>,
}

impl ExportFilter {
    pub fn passes(&self, flow: &Flow) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches_flow(flow)))
            && !self.deny.iter().any(|f| f.matches_flow(flow))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lumen_api::flow::{FlowEndpoint, FlowType, Protocol};
    use lumen_api::{FlowQuery, Identity};

    use super::*;

    fn flow(ns: &str, protocol: Protocol) -> Flow {
        let mut src = FlowEndpoint::bare(Ipv4Addr::new(10, 244, 1, 2), 40000, Identity(258));
        src.namespace = Some(ns.into());
        src.pod = Some("client".into());
        Flow {
            flow_type: FlowType::InterNode,
            ..Flow::between(
                "node-1",
                protocol,
                src,
                FlowEndpoint::bare(Ipv4Addr::new(10, 244, 2, 2), 80, Identity(514)),
            )
        }
    }

    fn filter(q: FlowQuery) -> FlowFilter {
        FlowFilter::try_from(&q).expect("valid")
    }

    #[test]
    fn allow_then_deny() {
        let shop = FlowQuery {
            namespace: Some("shop".into()),
            ..FlowQuery::default()
        };
        let udp = FlowQuery {
            protocol: Some("udp".into()),
            ..FlowQuery::default()
        };
        let cases = [
            (ExportFilter::default(), "default", Protocol::TCP, true),
            (
                ExportFilter {
                    allow: vec![filter(shop.clone())],
                    deny: vec![],
                },
                "default",
                Protocol::TCP,
                false,
            ),
            (
                ExportFilter {
                    allow: vec![filter(shop.clone())],
                    deny: vec![],
                },
                "shop",
                Protocol::TCP,
                true,
            ),
            (
                ExportFilter {
                    allow: vec![filter(shop)],
                    deny: vec![filter(udp.clone())],
                },
                "shop",
                Protocol::UDP,
                false,
            ),
            (
                ExportFilter {
                    allow: vec![],
                    deny: vec![filter(udp)],
                },
                "default",
                Protocol::TCP,
                true,
            ),
        ];
        for (f, ns, proto, want) in cases {
            assert_eq!(f.passes(&flow(ns, proto)), want, "{f:?} {ns} {proto}");
        }
    }
}
