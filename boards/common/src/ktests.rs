//! Kernel tests of the shared bring-up: the virtio-iommu as the device sees it.

use alloc::vec::Vec;
use ktest::{check, check_eq, TestResult};

type VirtioDriver = virtio_iommu::VirtioIommu<kcore::iommu::KernelTables>;

/// virtio-iommu as the device sees it: PROBE's reserved regions (the MSI
/// window: q35's interrupt range, virt's ITS doorbell), mappings made before the first attach replayed
/// by ATTACH + one MAP each, one MAP request per map call and one UNMAP per
/// unmap call, the data right through 256 single-page mappings, the domain's
/// mappings kept across the last detach. Reports map and unmap cost per page.
fn virtio_requests_and_reserved_regions() -> TestResult {
    use iommu::{DomainKind, Iommu, Perms};
    use kcore::edu::{failed, fill, frame_bytes};
    let Some(unit) =
        kcore::ktests::units_without_arch_tests().into_iter().find(|(_, k)| *k == iommu::UnitKind::VirtioIommu)
    else {
        return Err(ktest::TestError::Skipped("no virtio-iommu (boot with --iommu virtio)".into()));
    };
    let (dev, id, edu) = kcore::ktests::edu_behind(unit.0)?;
    const PAGES: u64 = 256;
    let frames: Vec<u64> = (0..PAGES).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = kcore::iommu::with_drivers(|units| {
        let Some(v) = units[unit.0].as_any_mut().downcast_mut::<VirtioDriver>() else {
            return Err(ktest::TestError::Failed("the virtio-iommu unit is not a VirtioIommu".into()));
        };
        check_eq!(frames.len() as u64, PAGES);
        let r = v.reserved_regions(id);
        log::info!("virtio-iommu: PROBE for {:#x}: {r:x?}", id.0);
        // q35: the x86 interrupt window; virt (QEMU 10): the ITS doorbell
        // page (GITS_TRANSLATER's 64 KiB frame). Both are translated 1:1 by
        // the device itself.
        let window = if cfg!(target_arch = "x86_64") { (0xFEE0_0000, 0xFEEF_FFFF) } else { (0x0809_0000, 0x0809_FFFF) };
        check!(
            r.iter().any(|r| (r.start, r.end, r.kind) == (window.0, window.1, iommu::ReservedKind::Msi)),
            "PROBE gave no MSI window {window:x?}: {r:x?}"
        );
        let d = v.domain_alloc(DomainKind::Paging).map_err(failed)?;
        let iova = 0x10_0000_0000;
        // Before any endpoint: the driver keeps the mappings; ATTACH replays them.
        for (i, &pa) in frames.iter().take(4).enumerate() {
            v.map(d, iova + i as u64 * 4096, pa, 4096, Perms::READ | Perms::WRITE).map_err(failed)?;
        }
        let r0 = v.dev.requests_sent;
        v.attach(id, d).map_err(failed)?;
        check_eq!(v.dev.requests_sent - r0, 1 + 4);
        let r0 = v.dev.requests_sent;
        let t0 = kcore::platform().uptime_ns();
        for (i, &pa) in frames.iter().enumerate().skip(4) {
            v.map(d, iova + i as u64 * 4096, pa, 4096, Perms::READ | Perms::WRITE).map_err(failed)?;
        }
        let map_ns = kcore::platform().uptime_ns() - t0;
        check_eq!(v.dev.requests_sent - r0, PAGES - 4);
        kcore::edu::pattern(frames[1], 9);
        fill(frames[200], 0);
        edu.dma(iova + 4096, 4096, false)?;
        edu.dma(iova + 200 * 4096, 4096, true)?;
        check!(frame_bytes(frames[200]) == frame_bytes(frames[1]), "data wrong through the virtio-iommu");
        check!(v.drain_faults().is_empty());
        // The last detach leaves the mappings in the driver; the next attach restores them.
        v.detach(id).map_err(failed)?;
        check_eq!(v.iova_to_phys(d, iova + 200 * 4096), Some(frames[200]));
        v.attach(id, d).map_err(failed)?;
        fill(frames[200], 0);
        edu.dma(iova + 200 * 4096, 4096, true)?;
        check!(frame_bytes(frames[200]) == frame_bytes(frames[1]), "mappings lost across detach / attach");
        let (r0, f0) = (v.dev.requests_sent, v.flushes());
        let t0 = kcore::platform().uptime_ns();
        for i in 0..PAGES {
            check_eq!(iommu::unmap_and_flush(v, d, iova + i * 4096, 4096), Ok(4096));
        }
        let unmap_ns = kcore::platform().uptime_ns() - t0;
        check_eq!((v.dev.requests_sent - r0, v.flushes() - f0), (PAGES, PAGES));
        log::info!(
            "virtio-iommu: per 4 KiB page over {PAGES}: map {} ns, unmap {} ns; 1 request per map and per unmap call",
            map_ns / (PAGES - 4),
            unmap_ns / PAGES
        );
        v.detach(id).map_err(failed)?;
        v.domain_free(d).map_err(failed)?;
        Ok(())
    });
    kcore::edu::release(&frames, &kcore::edu::devices());
    let _ = dev;
    outcome
}

ktest::suite!(pub VIRTIO = "virtio-iommu", [virtio_requests_and_reserved_regions]);
