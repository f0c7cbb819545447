//! IVRS (AMD-Vi): parse, re-parse with trailing bytes, pick the units, build
//! the firmware topology and query it as the kernel does.
#![no_main]
use acpi_tables::ivrs;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{acpi_image, query_topology, same_with_trailing};

fuzz_target!(|data: &[u8]| {
    let t = acpi_image(data);
    let parsed = ivrs::parse(&t);
    same_with_trailing(&t, &parsed, ivrs::parse);
    let Ok(v) = parsed else { return };
    let units = v.units();
    assert!(units.len() <= v.ivhds.len());
    let mut topo = topology::Topology::new();
    topology::build::add_ivrs(&mut topo, &v, (0xFEE0_0000, 0xFEEF_FFFF));
    query_topology(&topo);
});
