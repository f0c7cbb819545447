//! Kernel tests specific to aarch64.

use ktest::{check, check_eq, TestResult};

/// Mapping the GIC distributor a second time reads the same registers, as device memory.
fn mmio_map_reads_device_register() -> TestResult {
    let first = crate::gic::distributor_va();
    check!(first != 0, "GIC distributor not mapped");
    let pa = crate::paging::translate(first);
    check!(pa.is_some());
    let pa = pa.unwrap_or_default();
    let m = kcore::mm::map_mmio(pa, 0x1000);
    check!(m.is_ok(), "map_mmio failed: {:?}", m.err());
    let m = m.map_err(|_| ktest::TestError::Failed("unreachable".into()))?;
    check_eq!(crate::paging::attr_index(m.va), Some(0));
    // SAFETY: both addresses map the distributor page; 0x8 is GICD_IIDR, 0x4 GICD_TYPER (read-only).
    let (a, b, t) = unsafe {
        (
            ((first + 8) as *const u32).read_volatile(),
            ((m.va + 8) as *const u32).read_volatile(),
            ((m.va + 4) as *const u32).read_volatile(),
        )
    };
    check_eq!(a, b);
    check!(t != 0 && t != u32::MAX, "GICD_TYPER reads {t:#x}");
    Ok(())
}

/// A GIC distributor priority register written for the last SPI reads back, and is restored.
fn irq_controller_roundtrip() -> TestResult {
    let lines = crate::gic::lines();
    check!(lines > 32, "distributor reports {lines} lines");
    let intid = lines - 1;
    let before = crate::gic::spi_priority(intid);
    check!(before.is_some());
    // Implemented priority bits are the top ones: 0xA0 survives any implementation of >= 3 bits.
    check!(crate::gic::set_spi_priority(intid, 0xA0).is_ok());
    check_eq!(crate::gic::spi_priority(intid), Some(0xA0));
    check!(crate::gic::set_spi_priority(intid, before.unwrap_or(0)).is_ok());
    check!(crate::gic::set_spi_priority(lines, 0).is_err(), "INTID past the last line accepted");
    Ok(())
}

ktest::suite!(pub ARCH = "arch", [mmio_map_reads_device_register, irq_controller_roundtrip]);

type Driver = smmuv3::SmmuIommu<kcore::iommu::KernelTables>;

/// Runs `f` on the registered driver of the first SMMU (skips without one).
fn with_smmu(f: impl FnOnce(&mut Driver) -> TestResult) -> TestResult {
    kcore::iommu::with_drivers(|units| match units.iter_mut().find_map(|u| u.as_any_mut().downcast_mut::<Driver>()) {
        Some(s) => f(s),
        None => Err(ktest::TestError::Skipped("no SMMUv3 (boot with --iommu smmuv3)".into())),
    })
}

/// Frames held by the domains (stream table, level-2 tables and queues
/// excluded): what leak checks compare.
fn domain_frames(s: &Driver) -> usize {
    s.mem.live - s.smmu.table_frames()
}

/// The first edu, its stream ID, and the edu opened.
fn first_edu() -> Result<(&'static kcore::pci::Device, iommu::DeviceId, kcore::edu::Edu), ktest::TestError> {
    let Some(&(dev, rid)) = kcore::edu::devices().first() else {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    };
    let id = kcore::edu::device_id(rid).ok_or_else(|| ktest::TestError::Skipped("edu is behind no IOMMU".into()))?;
    Ok((dev, id, kcore::edu::open(dev)?))
}

/// SMMUv3 end to end through one paging domain: edu DMAs with the right
/// data; a DMA to an unmapped IOVA and a write to a read-only page are
/// blocked (canaries unchanged) and reported as decoded events naming the
/// stream and address; after unmap + TLBI + SYNC the old IOVA faults. Reports
/// commands per unmap and map/unmap cost per 4 KiB page.
fn smmu_edu_dma_through_a_domain() -> TestResult {
    use iommu::{DomainKind, Iommu, Perms};
    use kcore::edu::{failed, fill, frame_bytes};
    let (dev, id, edu) = first_edu()?;
    let frames: alloc::vec::Vec<u64> = (0..4).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = with_smmu(|s| {
        check_eq!(frames.len(), 4);
        check!(!s.translating(), "the registered SMMU is in use");
        let live0 = domain_frames(s);
        let (src, dst, canary, ro) = (frames[0], frames[1], frames[2], frames[3]);
        kcore::edu::pattern(src, 7);
        fill(ro, 0x11);
        let d = s.domain_alloc(DomainKind::Paging).map_err(failed)?;
        // Cost of map + unmap (with its flush) per 4 KiB page, and commands per unmap.
        let t0 = kcore::platform().uptime_ns();
        for i in 0..256u64 {
            s.map(d, 0x100_0000 + i * 4096, src, 4096, Perms::READ).map_err(failed)?;
        }
        let t1 = kcore::platform().uptime_ns();
        let c0 = s.smmu.commands;
        for i in 0..256u64 {
            iommu::unmap_and_flush(s, d, 0x100_0000 + i * 4096, 4096).map_err(failed)?;
        }
        let t2 = kcore::platform().uptime_ns();
        let per_unmap = (s.smmu.commands - c0) / 256;
        log::info!(
            "smmuv3: map {} ns/page, unmap+flush {} ns/page, {per_unmap} command(s) per unmap call (TLBI + SYNC; TCG)",
            (t1 - t0) / 256,
            (t2 - t1) / 256
        );
        check_eq!(per_unmap, 2);
        s.map(d, 0x10_0000, src, 4096, Perms::READ).map_err(failed)?;
        s.map(d, 0x20_0000, dst, 4096, Perms::READ | Perms::WRITE).map_err(failed)?;
        s.map(d, 0x40_0000, ro, 4096, Perms::READ).map_err(failed)?;
        s.attach(id, d).map_err(failed)?;
        fill(dst, 0);
        edu.dma(0x10_0000, 4096, false)?;
        edu.dma(0x20_0000, 4096, true)?;
        check!(frame_bytes(dst) == frame_bytes(src), "data did not arrive through the SMMU");
        check!(s.drain_faults().is_empty(), "unexpected event");
        // Unmapped IOVA: blocked, reported.
        fill(canary, 0xCC);
        edu.dma(0x30_0000, 4096, true)?;
        let f = s.drain_faults();
        log::info!("smmuv3: unmapped IOVA: {} event(s), first {:?}", f.len(), f.first().map(|e| alloc::format!("{e}")));
        check!(
            f.len() == 1
                && f[0].device == id
                && f[0].address == 0x30_0000
                && f[0].access == iommu::Access::Write
                && f[0].reason == 0x10,
            "unmapped: {f:?}"
        );
        check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "canary changed");
        // Read-only page: the write is blocked and reported as a permission fault.
        edu.dma(0x40_0000, 4096, true)?;
        let f = s.drain_faults();
        check!(f.len() == 1 && f[0].address == 0x40_0000 && f[0].reason == 0x13, "read-only: {f:?}");
        check!(frame_bytes(ro).iter().all(|&b| b == 0x11), "write to a read-only mapping reached memory");
        // Unmap + TLBI + SYNC: the old IOVA faults now.
        check_eq!(iommu::unmap_and_flush(s, d, 0x20_0000, 4096), Ok(4096));
        fill(dst, 0x5A);
        edu.dma(0x20_0000, 4096, true)?;
        let f = s.drain_faults();
        check!(f.len() == 1 && f[0].address == 0x20_0000, "after unmap: {f:?}");
        check!(frame_bytes(dst).iter().all(|&b| b == 0x5A), "DMA reached an unmapped page");
        s.detach(id).map_err(failed)?;
        s.domain_free(d).map_err(failed)?;
        check!(!s.translating());
        let now = domain_frames(s);
        check!(now == live0, "SMMU table frames: {live0} before, {now} after");
        Ok(())
    });
    for f in frames {
        let _ = kcore::mm::free_frame(f);
    }
    kcore::edu::close(dev);
    outcome
}

/// A 2 MiB block above 4 GiB carries the DMA, and a second edu in its own
/// domain cannot reach the first one's buffer (its DMA faults instead).
fn smmu_large_pages_high_iovas_and_isolation() -> TestResult {
    use iommu::{DomainKind, Iommu, Perms};
    use kcore::edu::failed;
    let edus = kcore::edu::devices();
    let (dev, id, e0) = first_edu()?;
    let big = kcore::mm::alloc_frames(512, 512).ok_or_else(|| ktest::TestError::Failed("no 2 MiB block".into()))?;
    let outcome = with_smmu(|s| {
        let live0 = domain_frames(s);
        let high = 0x1_4000_0000; // above 4 GiB, inside both stages' apertures
        let d1 = s.domain_alloc(DomainKind::Paging).map_err(failed)?;
        s.map(d1, high, big, 2 << 20, Perms::READ | Perms::WRITE).map_err(failed)?;
        s.attach(id, d1).map_err(failed)?;
        let off = (1 << 20) + 0x1000;
        kcore::edu::pattern(big + off, 13);
        e0.dma(high + off, 4096, false)?;
        e0.dma(high, 4096, true)?;
        check!(kcore::edu::frame_bytes(big) == kcore::edu::frame_bytes(big + off), "data wrong through a 2 MiB block");
        check!(s.drain_faults().is_empty());
        if let Some(&(d, rid)) = edus.get(1) {
            let id1 = kcore::edu::device_id(rid).ok_or_else(|| ktest::TestError::Failed("no stream ID".into()))?;
            let e1 = kcore::edu::open(d)?;
            let d2 = s.domain_alloc(DomainKind::Paging).map_err(failed)?;
            s.attach(id1, d2).map_err(failed)?;
            kcore::edu::fill(big, 0x77);
            e1.dma(high, 4096, true)?;
            let f = s.drain_faults();
            check!(f.len() == 1 && f[0].device == id1 && f[0].address == high, "no isolation fault: {f:?}");
            check!(
                kcore::edu::frame_bytes(big).iter().all(|&b| b == 0x77),
                "the second device reached the first one's buffer"
            );
            s.detach(id1).map_err(failed)?;
            s.domain_free(d2).map_err(failed)?;
            kcore::edu::close(d);
        }
        check_eq!(iommu::unmap_and_flush(s, d1, high, 2 << 20), Ok(2 << 20));
        s.detach(id).map_err(failed)?;
        s.domain_free(d1).map_err(failed)?;
        let now = domain_frames(s);
        check!(now == live0, "SMMU table frames: {live0} before, {now} after");
        Ok(())
    });
    for i in 0..512 {
        let _ = kcore::mm::free_frame(big + i * 4096);
    }
    kcore::edu::close(dev);
    outcome
}

/// An illegal command is reported with its CERROR and index, and the queue
/// runs on afterwards.
fn smmu_command_error_reported() -> TestResult {
    with_smmu(|s| {
        // Opcode 0x7F is no command (SMMUv3 §4.1).
        let r = s.smmu.submit(&[[0x7F, 0]], &mut s.mem);
        check!(matches!(r, Err(smmuv3::SmmuError::Command { error: smmuv3::cmd::CommandError::Illegal, .. })), "{r:?}");
        let ok = s.smmu.submit(&[smmuv3::cmd::tlbi_nsnh_all()], &mut s.mem);
        check!(ok.is_ok(), "queue dead after the error: {ok:?}");
        Ok(())
    })
}

/// The generic door on the SMMU (`kcore::edu::generic_domains`), plus what
/// this driver adds: the abort STE of a blocked domain ends transactions
/// without an event, the last detach turns translation off, no frame leaks.
fn smmu_generic_domains() -> TestResult {
    let edus = kcore::edu::devices();
    let (_, id, edu) = first_edu()?;
    let other = match edus.get(1) {
        Some(&(d, _)) => Some(kcore::edu::open(d)?),
        None => None,
    };
    let frames: alloc::vec::Vec<u64> = (0..3).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = with_smmu(|s| {
        check_eq!(frames.len(), 3);
        check!(!s.translating(), "the registered SMMU is in use");
        let live0 = domain_frames(s);
        let report = kcore::edu::generic_domains(s, id, &edu, other.as_ref(), [frames[0], frames[1], frames[2]], true)?;
        check!(report.blocked.is_empty(), "abort STE raised events: {:?}", report.blocked);
        check_eq!(report.stale.len(), 1);
        check!(!s.translating(), "a stream is still attached after the last detach");
        check!(s.smmu.translating(), "SMMUEN went off: default deny lost");
        let now = domain_frames(s);
        check!(now == live0, "SMMU table frames: {live0} before, {now} after");
        Ok(())
    });
    kcore::edu::release(&frames, &edus);
    outcome
}

/// Spins up to `ns` with IRQs unmasked until `done`; masks them again if
/// they were masked. Whether `done` came true.
fn wait_with_interrupts(ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { core::arch::asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack)) };
    let masked = daif & (1 << 7) != 0;
    let p = kcore::platform();
    if masked {
        p.enable_interrupts();
    }
    let t0 = p.uptime_ns();
    let mut ok = done();
    while !ok && p.uptime_ns() - t0 < ns {
        core::hint::spin_loop();
        ok = done();
    }
    if masked {
        p.disable_interrupts();
    }
    ok
}

/// The GICv3 ITS end to end, with edu's MSI through its IOMMU: routed by
/// the kernel (DeviceID = edu's requester ID), it arrives while edu is
/// attached to a paging domain (the doorbell page is mapped there) and, on a
/// unit that translates the doorbell (SMMUv3), not while edu is blocked (the
/// write faults in the IOMMU and raises nothing; a virtio-iommu passes the
/// doorbell untranslated, its PROBE's MSI region, so there it arrives); a
/// message edu forges by DMA-writing another device's EventID to the
/// doorbell raises nothing (the ITS tells writers apart by DeviceID, which
/// the device does not choose), though that event is live (the ITS's INT
/// command raises it); once the kernel takes the route back, neither edu's
/// MSI nor an INT for its old event arrives.
fn its_confines_device_msis() -> TestResult {
    use iommu::{DomainKind, Perms};
    use kcore::edu::failed;
    if !crate::its::present() {
        return Err(ktest::TestError::Skipped("no ITS (boot virt with gic-version=3)".into()));
    }
    let Some(&(dev, rid)) = kcore::edu::devices().first() else {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    };
    let f = &dev.function;
    let Some((unit, id)) = kcore::iommu::unit_of(f.bdf) else {
        return Err(ktest::TestError::Skipped("edu is behind no IOMMU".into()));
    };
    let access = kcore::pci::access(f.bdf).ok_or(ktest::TestError::Failed("no config access".into()))?;
    let doorbell = crate::its::doorbell().ok_or(ktest::TestError::Failed("no doorbell".into()))?;
    let frame = kcore::mm::alloc_frame().ok_or(ktest::TestError::Failed("no frame".into()))?;
    let edu = kcore::edu::open(dev)?;
    let (slot, victim_slot, victim) = (7u32, 6u32, 0xFFF0u32);
    let raise = |wait: u64| {
        let before = kcore::task::irq_pending(slot);
        edu.raise_interrupt(1);
        let delivered = wait_with_interrupts(wait, || kcore::task::irq_pending(slot) > before);
        edu.ack_interrupt(1);
        delivered
    };
    let mut domain = None;
    let outcome = (|| -> TestResult {
        crate::its::route(f, access, slot).map_err(|e| ktest::TestError::Failed(e.into()))?;
        check!(crate::its::is_mapped(f), "no ITS mapping for edu");
        let d = kcore::iommu::with_units(|units| -> Result<iommu::DomainId, iommu::Error> {
            let u = &mut units[unit];
            u.detach(id)?;
            let d = u.domain_alloc(DomainKind::Paging)?;
            u.map(d, 0x10_0000, frame, 4096, Perms::READ)?;
            Ok(d)
        })
        .map_err(failed)?;
        domain = Some(d);
        let lpis0 = crate::gic::LPIS_TAKEN.load(core::sync::atomic::Ordering::Relaxed);
        let bypassed = kcore::iommu::with_units(|units| {
            units[unit]
                .reserved_regions(id)
                .iter()
                .any(|r| r.kind == iommu::ReservedKind::Msi && r.start <= doorbell && doorbell <= r.end)
        });
        let arrived = raise(50_000_000);
        if bypassed {
            log::info!("its: the unit passes the doorbell untranslated: edu's MSI while blocked arrived={arrived}");
        } else {
            check!(!arrived, "edu's MSI arrived while edu was blocked");
        }
        kcore::iommu::with_units(|units| units[unit].attach(id, d)).map_err(failed)?;
        check!(raise(500_000_000), "edu's MSI did not arrive through the ITS while attached");
        let lpis = crate::gic::LPIS_TAKEN.load(core::sync::atomic::Ordering::Relaxed) - lpis0;
        check!(lpis >= 1, "the interrupt was not an LPI");
        // A victim event, live (INT raises it) but not edu's to raise.
        crate::its::route_raw(victim, victim_slot, victim_slot).map_err(ktest::TestError::Failed)?;
        let before = kcore::task::irq_pending(victim_slot);
        crate::its::raise(victim, victim_slot).map_err(ktest::TestError::Failed)?;
        check!(
            wait_with_interrupts(500_000_000, || kcore::task::irq_pending(victim_slot) > before),
            "the victim event raised by INT did not arrive"
        );
        // SAFETY: `frame` is the test's frame, in the direct map.
        unsafe { (kcore::mm::phys_to_virt(frame) as *mut u32).write_volatile(victim_slot) };
        let before = kcore::task::irq_pending(victim_slot);
        edu.dma(0x10_0000, 4, false)?;
        edu.dma(doorbell, 4, true)?;
        check!(
            !wait_with_interrupts(50_000_000, || kcore::task::irq_pending(victim_slot) > before),
            "edu raised another device's event by writing it to the doorbell"
        );
        // Taken back: nothing arrives, by MSI or by INT of the old event.
        let before = kcore::task::irq_pending(slot);
        crate::its::unroute(f, access, slot);
        check!(!crate::its::is_mapped(f), "edu still has an ITS mapping");
        check!(!raise(50_000_000), "edu's MSI arrived after the kernel took the route back");
        crate::its::raise(u32::from(rid), slot).map_err(ktest::TestError::Failed)?;
        check!(
            !wait_with_interrupts(50_000_000, || kcore::task::irq_pending(slot) > before),
            "an INT for edu's old event arrived after the unroute"
        );
        Ok(())
    })();
    crate::its::unroute(f, access, slot);
    crate::its::unroute_raw(victim, victim_slot, victim_slot);
    kcore::iommu::with_units(|units| {
        let _ = units[unit].detach(id);
        if let Some(d) = domain {
            let _ = iommu::unmap_and_flush(&mut *units[unit], d, 0x10_0000, 4096);
            let _ = units[unit].domain_free(d);
        }
        let _ = units[unit].drain_faults();
    });
    kcore::edu::release(&[frame], &[(dev, rid)]);
    outcome
}

ktest::suite!(
    pub IOMMU = "iommu",
    [
        smmu_edu_dma_through_a_domain,
        smmu_large_pages_high_iovas_and_isolation,
        smmu_command_error_reported,
        smmu_generic_domains,
        its_confines_device_msis
    ]
);

/// The suites of this crate for the boot binary.
pub static SUITES: &[&ktest::Suite] = &[&ARCH, &IOMMU, &board_common::ktests::VIRTIO];
