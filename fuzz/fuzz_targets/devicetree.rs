//! Device tree: parse, then every query the kernel makes at boot (memory,
//! reservations, bootargs, console, GIC, timer, PCI hosts with their maps and
//! windows, SMMUs, virtio-iommus, IOMMU clients) and the firmware topology
//! built from it. Invariant: a node found by phandle carries that phandle.
#![no_main]
use devicetree::pci::PciSpace;
use devicetree::DeviceTree;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::query_topology;

fuzz_target!(|data: &[u8]| {
    let _ = DeviceTree::total_size(data);
    let Ok(dt) = DeviceTree::from_bytes(data) else { return };
    for (i, node) in dt.nodes().enumerate().take(256) {
        for p in dt.properties(&node).take(64) {
            let _ = p.cells().count();
            let _ = p.as_u32();
            let _ = p.strings().count();
        }
        let _ = dt.reg(&node).take(16).count();
        if i < 32 {
            let _ = dt.children(&node).take(64).count();
        }
        if let Some(ph) = dt.property(&node, "phandle").and_then(|p| p.as_u32()) {
            let found = dt.find_phandle(ph).expect("a node with a phandle is found by it");
            assert_eq!(dt.property(&found, "phandle").and_then(|p| p.as_u32()), Some(ph));
        }
    }
    let _ = dt.memory().take(64).count();
    let _ = dt.reserved().take(64).count();
    let _ = dt.bootargs();
    let _ = dt.console();
    let _ = dt.gic();
    let _ = dt.timer();
    let _ = dt.find_path("/chosen");
    let _ = dt.find_path("/pcie@10000000");
    let _ = dt.find_compatible(&["pci-host-ecam-generic"]);
    for host in dt.pci_hosts().into_iter().flatten() {
        for rid in [0u16, 8, 0x10, 0x100, u16::MAX] {
            let _ = host.map_rid(rid);
            for pin in 1..=4 {
                let _ = host.intx(rid, pin);
            }
        }
        for space in [PciSpace::Io, PciSpace::Mem32, PciSpace::Mem64, PciSpace::Config] {
            let _ = host.window(space);
        }
    }
    let _ = dt.smmus();
    let _ = dt.virtio_iommus();
    let _ = dt.iommu_clients();
    let mut errors = Vec::new();
    let topo = topology::build::from_devicetree(&dt, &mut errors);
    query_topology(&topo);
});
