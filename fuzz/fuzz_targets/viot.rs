//! VIOT (virtio-iommu): parse, re-parse with trailing bytes, translate a
//! spread of PCI functions, build the firmware topology and query it.
#![no_main]
use acpi_tables::viot;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{acpi_image, query_topology, same_with_trailing};

fuzz_target!(|data: &[u8]| {
    let t = acpi_image(data);
    let parsed = viot::parse(&t);
    same_with_trailing(&t, &parsed, viot::parse);
    let Ok(v) = parsed else { return };
    for segment in [0u16, 1, u16::MAX] {
        for bdf in [0u16, 8, 0x100, u16::MAX] {
            if let Some((iommu, _)) = v.translate_pci(segment, bdf) {
                // Parse refuses references to missing IOMMU nodes.
                assert!(v.iommu_at(iommu).is_some(), "PCI range points at no IOMMU node");
            }
        }
    }
    let mut topo = topology::Topology::new();
    topology::build::add_viot(&mut topo, &v, Some((0xFEE0_0000, 0xFEEF_FFFF)));
    query_topology(&topo);
});
