//! `docs/ipfix.md` documents every element of both templates, with the id,
//! enterprise and type the encoder uses.

use lumen_exporter::ipfix::ie::{FLOW_TEMPLATE, Ie, Registry, STATS_TEMPLATE};

fn enterprise(ie: &Ie) -> &'static str {
    match ie.registry {
        Registry::Iana => "0 (IANA)",
        Registry::Reverse => "29305 (RFC 5103)",
        Registry::Antrea => "56506 (Antrea)",
        Registry::Lumen => "Lumen (default 32473)",
    }
}

#[test]
fn every_element_is_documented() {
    let doc = include_str!("../../docs/ipfix.md");
    for ie in FLOW_TEMPLATE.iter().chain(STATS_TEMPLATE) {
        let row = format!(
            "| {} | {} | {} | {} |",
            ie.id,
            enterprise(ie),
            ie.name,
            ie.data_type.name()
        );
        assert!(
            doc.contains(&row),
            "docs/ipfix.md lacks the row starting {row}"
        );
    }
}
