//! The wire format pinned down: a fixed flow at a fixed export time and sequence
//! number, with the template message before it, as hex in `golden/record.hex`.
//! `UPDATE_EXPECT=1 cargo test -p lumen-exporter --test golden` rewrites the file;
//! review the diff, and the independent decoder below must still agree.

use std::path::PathBuf;

use lumen_exporter::ipfix::encode::{Header, write_message, write_template_message};
use lumen_exporter::ipfix::ie::DEFAULT_LUMEN_PEN;
use lumen_exporter::ipfix::test_util::{Decoder, flow_records, full_flow, reference_record};

const HEADER: Header = Header {
    export_time: 1_700_000_010,
    sequence_number: 42,
    observation_domain_id: 7,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn unhex(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

#[test]
fn the_wire_format_matches_the_golden_file() {
    let mut templates = Vec::new();
    write_template_message(&mut templates, HEADER, DEFAULT_LUMEN_PEN).expect("templates");
    let mut data = Vec::new();
    write_message(&mut data, HEADER, &[&full_flow()]).expect("data");
    let text = format!(
        "# IPFIX template message: flow template 256, options template 257 \
         (export time {}, sequence {}, domain {}, Lumen PEN {DEFAULT_LUMEN_PEN})\n{}\n\
         # data message: test_util::full_flow()\n{}\n",
        HEADER.export_time,
        HEADER.sequence_number,
        HEADER.observation_domain_id,
        hex(&templates),
        hex(&data),
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/record.hex");
    if std::env::var("UPDATE_EXPECT").as_deref() == Ok("1") {
        std::fs::write(&path, &text).expect("write the golden file");
    }
    let golden = std::fs::read_to_string(&path)
        .expect("golden file (run with UPDATE_EXPECT=1 to create it)");
    assert_eq!(
        golden, text,
        "the encoding changed; if that is intended, rerun with UPDATE_EXPECT=1 and review"
    );

    // The golden bytes mean what they should to an independent decoder.
    let bytes = unhex(&golden);
    let decoder = Decoder::new(DEFAULT_LUMEN_PEN);
    decoder
        .decode(&bytes[..templates.len()])
        .expect("templates decode");
    let msg = decoder
        .decode(&bytes[templates.len()..])
        .expect("data decodes");
    assert_eq!(flow_records(&msg), [&reference_record(&full_flow())]);
}
