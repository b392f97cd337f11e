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
    /// An `unsigned16` sent in one byte (reduced-size encoding).
    Unsigned16In1,
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
            Self::Unsigned8 | Self::Unsigned16In1 => 1,
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
            Self::Unsigned16 | Self::Unsigned16In1 => "unsigned16",
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

use DataType::{
    DateTimeMilliseconds as Millis, Ipv4Address as Ipv4, String as Str, Unsigned8 as U8,
    Unsigned16 as U16, Unsigned16In1 as U16In1, Unsigned32 as U32, Unsigned64 as U64,
};
use Registry::{Antrea, Iana, Lumen, Reverse};

/// The flow template (id 256), in record order: the encoder writes records in
/// exactly this order, and a test decodes them with an independent decoder. The order is for the collectors that read fields
/// by id alone: totals before deltas (nfcapd keeps the later of the two in one
/// column, and deltas are what it adds up), and Lumen's elements before the RFC
/// 5103 reverse ones (pmacct's primitives take the first field with an id,
/// whatever its enterprise). TCP flags go in one byte (RFC 7011 §6.2 reduced-size
/// encoding): pmacct reads only the first byte of the field.
pub const FLOW_TEMPLATE: &[Ie] = &[
    ie("flowStartMilliseconds", Iana, 152, Millis),
    ie("flowEndMilliseconds", Iana, 153, Millis),
    ie("sourceIPv4Address", Iana, 8, Ipv4),
    ie("destinationIPv4Address", Iana, 12, Ipv4),
    ie("sourceTransportPort", Iana, 7, U16),
    ie("destinationTransportPort", Iana, 11, U16),
    ie("protocolIdentifier", Iana, 4, U8),
    ie("icmpTypeCodeIPv4", Iana, 32, U16),
    ie("packetTotalCount", Iana, 86, U64),
    ie("octetTotalCount", Iana, 85, U64),
    ie("packetDeltaCount", Iana, 2, U64),
    ie("octetDeltaCount", Iana, 1, U64),
    ie("tcpControlBits", Iana, 6, U16In1),
    ie("flowEndReason", Iana, 136, U8),
    ie("lumenVerdict", Lumen, 1, U8),
    ie("lumenDropReason", Lumen, 2, U8),
    ie("lumenTag", Lumen, 3, U32),
    ie("lumenCorrelationId", Lumen, 4, U64),
    ie("lumenCommunityId", Lumen, 5, Str),
    ie("lumenSourceIdentity", Lumen, 6, U32),
    ie("lumenDestinationIdentity", Lumen, 7, U32),
    ie("lumenTraced", Lumen, 8, U8),
    ie("lumenObservationNode", Lumen, 9, Str),
    ie("sourcePodNamespace", Antrea, 100, Str),
    ie("sourcePodName", Antrea, 101, Str),
    ie("destinationPodNamespace", Antrea, 102, Str),
    ie("destinationPodName", Antrea, 103, Str),
    ie("sourceNodeName", Antrea, 104, Str),
    ie("destinationNodeName", Antrea, 105, Str),
    ie("sourcePodLabels", Antrea, 143, Str),
    ie("destinationPodLabels", Antrea, 144, Str),
    ie("flowType", Antrea, 137, U8),
    ie("ingressNetworkPolicyName", Antrea, 110, Str),
    ie("ingressNetworkPolicyNamespace", Antrea, 111, Str),
    ie("ingressNetworkPolicyType", Antrea, 115, U8),
    ie("ingressNetworkPolicyRuleName", Antrea, 141, Str),
    ie("ingressNetworkPolicyRuleAction", Antrea, 139, U8),
    ie("egressNetworkPolicyName", Antrea, 112, Str),
    ie("egressNetworkPolicyNamespace", Antrea, 113, Str),
    ie("egressNetworkPolicyType", Antrea, 118, U8),
    ie("egressNetworkPolicyRuleName", Antrea, 142, Str),
    ie("egressNetworkPolicyRuleAction", Antrea, 140, U8),
    ie("reversePacketTotalCount", Reverse, 86, U64),
    ie("reverseOctetTotalCount", Reverse, 85, U64),
    ie("reversePacketDeltaCount", Reverse, 2, U64),
    ie("reverseOctetDeltaCount", Reverse, 1, U64),
    ie("reverseTcpControlBits", Reverse, 6, U16In1),
];

/// The Exporting Process Reliability Statistics options template (id 257): RFC 7011
/// §4.3's elements (scope `exportingProcessId`; the not-sent counts; the times the
/// first and the last record were dropped, as a pair of `observationTimeMilliseconds`)
/// plus the exported totals of §4.1.
pub const STATS_TEMPLATE: &[Ie] = &[
    ie("exportingProcessId", Iana, 144, U32),
    ie("notSentFlowTotalCount", Iana, 166, U64),
    ie("notSentPacketTotalCount", Iana, 167, U64),
    ie("notSentOctetTotalCount", Iana, 168, U64),
    ie("observationTimeMilliseconds", Iana, 323, Millis),
    ie("observationTimeMilliseconds", Iana, 323, Millis),
    ie("exportedMessageTotalCount", Iana, 41, U64),
    ie("exportedFlowRecordTotalCount", Iana, 42, U64),
    ie("exportedOctetTotalCount", Iana, 40, U64),
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
        for ie in FLOW_TEMPLATE
            .iter()
            .filter(|ie| ie.registry == Registry::Antrea)
        {
            let (id, ty) = rows
                .get(ie.name)
                .unwrap_or_else(|| panic!("{} is not in Antrea's registry", ie.name));
            assert_eq!(id, &ie.id.to_string(), "{}", ie.name);
            assert_eq!(ty, ie.data_type.name(), "{}", ie.name);
        }
    }
}
