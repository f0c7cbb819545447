//! IORT (Arm): parse, re-parse with trailing bytes, follow the ID mappings of
//! every node for a spread of IDs, build the firmware topology and query it.
#![no_main]
use acpi_tables::iort;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{acpi_image, query_topology, same_with_trailing};

fuzz_target!(|data: &[u8]| {
    let t = acpi_image(data);
    let parsed = iort::parse(&t);
    same_with_trailing(&t, &parsed, iort::parse);
    let Ok(i) = parsed else { return };
    for n in &i.nodes {
        assert_eq!(i.node(n.offset).map(|m| m.offset), Some(n.offset));
        for m in &n.mappings {
            for id in [m.input_base, m.input_base.wrapping_add(m.count_minus_one), u32::MAX] {
                let _ = m.map(id);
            }
        }
        for rid in [0, 8, 0xFFFF, u32::MAX] {
            let _ = i.map_rid(n.offset, rid);
        }
    }
    for segment in [0, 1] {
        let _ = i.root_complex(segment);
    }
    let mut topo = topology::Topology::new();
    topology::build::add_iort(&mut topo, &i);
    query_topology(&topo);
});
