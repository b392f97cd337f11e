//! The information elements Lumen exports and the two templates made of them: the
//! flow template (id 256) and the Exporting Process Reliability Statistics options
//! template (id 257, RFC 7011 §4.3). This table is the single description of both:
//! the encoder writes the template sets from it, and `docs/ipfix.md` documents it
//! (a test checks the document lists every element).
//!
//! Kubernetes metadata uses Antrea's enterprise number and exactly Antrea's ids and
//! types, so collectors configured for Antrea read it unchanged; Lumen's own elements
//! use a separate, configurable enterprise number that is never Antrea's.

/// RFC 5103: reverse-direction elements are the IANA ones under this enterprise number.
pub const REVERSE_PEN: u32 = 29305;
/// Project Antrea's enterprise number.
pub const ANTREA_PEN: u32 = 56506;
/// The default enterprise number of Lumen's own elements: RFC 5612's documentation
/// number, until Lumen has one of its own.
pub const DEFAULT_LUMEN_PEN: u32 = 32473;

/// The flow template's id.
pub const FLOW_TEMPLATE_ID: u16 = 256;
/// The reliability statistics options template's id.
pub const STATS_TEMPLATE_ID: u16 = 257;
/// The statistics template's scope fields (the leading `exportingProcessId`).
pub const STATS_SCOPE_FIELDS: u16 = 1;

/// The field length that marks a variable-length element (RFC 7011 §7).
pub const VARIABLE_LENGTH: u16 = 65535;

/// Who defines an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Registry {
    /// IANA's registry (enterprise bit clear).
    Iana,
    /// IANA's element in the reverse direction (RFC 5103).
    Reverse,
    /// Project Antrea's registry.
    Antrea,
    /// Lumen's own, under the configured enterprise number.
    Lumen,
}

impl Registry {
    /// The enterprise number, given the one configured for Lumen; 0 for IANA.
    pub fn enterprise(self, lumen_pen: u32) -> u32 {
        match self {
            Self::Iana => 0,
            Self::Reverse => REVERSE_PEN,
            Self::Antrea => ANTREA_PEN,
            Self::Lumen => lumen_pen,
        }
    }
}

/// The abstract data types Lumen's elements use (RFC 7012 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Unsigned8,
    Unsigned16,
    Unsigned32,
    Unsigned64,
    DateTimeMilliseconds,
    Ipv4Address,
    String,
}

impl DataType {
    /// The field length in the template.
    pub fn length(self) -> u16 {
        match self {
            Self::Unsigned8 => 1,
            Self::Unsigned16 => 2,
            Self::Unsigned32 | Self::Ipv4Address => 4,
            Self::Unsigned64 | Self::DateTimeMilliseconds => 8,
            Self::String => VARIABLE_LENGTH,
        }
    }

    /// The type's name in the IANA registry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsigned8 => "unsigned8",
            Self::Unsigned16 => "unsigned16",
            Self::Unsigned32 => "unsigned32",
            Self::Unsigned64 => "unsigned64",
            Self::DateTimeMilliseconds => "dateTimeMilliseconds",
            Self::Ipv4Address => "ipv4Address",
            Self::String => "string",
        }
    }
}

/// One information element as a template names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ie {
    pub name: &'static str,
    pub registry: Registry,
    pub id: u16,
    pub data_type: DataType,
}

const fn ie(name: &'static str, registry: Registry, id: u16, data_type: DataType) -> Ie {
    Ie {
        name,
        registry,
        id,
        data_type,
    }
}

use DataType::{DateTimeMilliseconds, Ipv4Address, String, Unsigned8, Unsigned16, Unsigned32, Unsigned64};
use Registry::{Antrea, Iana, Lumen, Reverse};

/// The flow template (id 256), in record order. The encoder writes records in
/// exactly this order; a test decodes them with an independent decoder.
pub const FLOW_TEMPLATE: &[Ie] = &[
    ie("flowStartMilliseconds", Iana, 152, DateTimeMilliseconds),
    ie("flowEndMilliseconds", Iana, 153, DateTimeMilliseconds),
    ie("sourceIPv4Address", Iana, 8, Ipv4Address),
    ie("destinationIPv4Address", Iana, 12, Ipv4Address),
    ie("sourceTransportPort", Iana, 7, Unsigned16),
    ie("destinationTransportPort", Iana, 11, Unsigned16),
    ie("protocolIdentifier", Iana, 4, Unsigned8),
    ie("icmpTypeCodeIPv4", Iana, 32, Unsigned16),
    ie("packetDeltaCount", Iana, 2, Unsigned64),
    ie("octetDeltaCount", Iana, 1, Unsigned64),
    ie("packetTotalCount", Iana, 86, Unsigned64),
    ie("octetTotalCount", Iana, 85, Unsigned64),
    ie("tcpControlBits", Iana, 6, Unsigned16),
    ie("flowEndReason", Iana, 136, Unsigned8),
    ie("reversePacketDeltaCount", Reverse, 2, Unsigned64),
    ie("reverseOctetDeltaCount", Reverse, 1, Unsigned64),
    ie("reversePacketTotalCount", Reverse, 86, Unsigned64),
    ie("reverseOctetTotalCount", Reverse, 85, Unsigned64),
    ie("reverseTcpControlBits", Reverse, 6, Unsigned16),
    ie("sourcePodNamespace", Antrea, 100, String),
    ie("sourcePodName", Antrea, 101, String),
    ie("destinationPodNamespace", Antrea, 102, String),
    ie("destinationPodName", Antrea, 103, String),
    ie("sourceNodeName", Antrea, 104, String),
    ie("destinationNodeName", Antrea, 105, String),
    ie("sourcePodLabels", Antrea, 143, String),
    ie("destinationPodLabels", Antrea, 144, String),
    ie("flowType", Antrea, 137, Unsigned8),
    ie("ingressNetworkPolicyName", Antrea, 110, String),
    ie("ingressNetworkPolicyNamespace", Antrea, 111, String),
    ie("ingressNetworkPolicyType", Antrea, 115, Unsigned8),
    ie("ingressNetworkPolicyRuleName", Antrea, 141, String),
    ie("ingressNetworkPolicyRuleAction", Antrea, 139, Unsigned8),
    ie("egressNetworkPolicyName", Antrea, 112, String),
    ie("egressNetworkPolicyNamespace", Antrea, 113, String),
    ie("egressNetworkPolicyType", Antrea, 118, Unsigned8),
    ie("egressNetworkPolicyRuleName", Antrea, 142, String),
    ie("egressNetworkPolicyRuleAction", Antrea, 140, Unsigned8),
    ie("lumenVerdict", Lumen, 1, Unsigned8),
    ie("lumenDropReason", Lumen, 2, Unsigned8),
    ie("lumenTag", Lumen, 3, Unsigned32),
    ie("lumenCorrelationId", Lumen, 4, Unsigned64),
    ie("lumenCommunityId", Lumen, 5, String),
    ie("lumenSourceIdentity", Lumen, 6, Unsigned32),
    ie("lumenDestinationIdentity", Lumen, 7, Unsigned32),
    ie("lumenTraced", Lumen, 8, Unsigned8),
    ie("lumenObservationNode", Lumen, 9, String),
];

/// The Exporting Process Reliability Statistics options template (id 257): RFC 7011
/// §4.3's elements (scope `exportingProcessId`; the not-sent counts; the times the
/// first and the last record were dropped, as a pair of `observationTimeMilliseconds`)
/// plus the exported totals of §4.1.
pub const STATS_TEMPLATE: &[Ie] = &[
    ie("exportingProcessId", Iana, 144, Unsigned32),
    ie("notSentFlowTotalCount", Iana, 166, Unsigned64),
    ie("notSentPacketTotalCount", Iana, 167, Unsigned64),
    ie("notSentOctetTotalCount", Iana, 168, Unsigned64),
    ie("observationTimeMilliseconds", Iana, 323, DateTimeMilliseconds),
    ie("observationTimeMilliseconds", Iana, 323, DateTimeMilliseconds),
    ie("exportedMessageTotalCount", Iana, 41, Unsigned64),
    ie("exportedFlowRecordTotalCount", Iana, 42, Unsigned64),
    ie("exportedOctetTotalCount", Iana, 40, Unsigned64),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn flow_template_has_no_duplicate_elements() {
        let mut seen = HashSet::new();
        for ie in FLOW_TEMPLATE {
            assert!(seen.insert((ie.registry, ie.id)), "{} twice", ie.name);
        }
    }

    #[test]
    fn antrea_elements_match_antreas_registry() {
        // Antrea's registry as published (vmware/go-ipfix registry_antrea.csv), the
        // columns Lumen relies on: id, name, type.
        let registry = include_str!("../../tests/data/antrea_registry.csv");
        let mut rows = std::collections::HashMap::new();
        for line in registry.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            if let [id, name, ty, ..] = cols[..] {
                rows.insert(name.to_string(), (id.to_string(), ty.to_string()));
            }
        }
        for ie in FLOW_TEMPLATE.iter().filter(|ie| ie.registry == Registry::Antrea) {
            let (id, ty) = rows
                .get(ie.name)
                .unwrap_or_else(|| panic!("{} is not in Antrea's registry", ie.name));
            assert_eq!(id, &ie.id.to_string(), "{}", ie.name);
            assert_eq!(ty, ie.data_type.name(), "{}", ie.name);
        }
    }
}
