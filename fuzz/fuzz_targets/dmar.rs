//! DMAR (VT-d): parse, re-parse with trailing bytes, resolve every device
//! scope, build the firmware topology and query it as the kernel does.
#![no_main]
use acpi_tables::dmar;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{acpi_image, query_topology, same_with_trailing, sample_functions};

fuzz_target!(|data: &[u8]| {
    let t = acpi_image(data);
    let parsed = dmar::parse(&t);
    same_with_trailing(&t, &parsed, dmar::parse);
    let Ok(d) = parsed else { return };
    for s in d.drhds.iter().flat_map(|u| &u.scopes).chain(d.rmrrs.iter().flat_map(|r| &r.scopes)) {
        let _ = s.resolve(|bus, dev, func| bus.checked_add((dev ^ func).wrapping_add(1)));
    }
    let mut topo = topology::Topology::new();
    topology::build::add_dmar(&mut topo, &d, sample_functions(), (0xFEE0_0000, 0xFEEF_FFFF));
    query_topology(&topo);
});
