//! Kernel tests specific to x86_64.

use ktest::{check, check_eq, TestResult};
use x86_64::registers::model_specific::Msr;
use x86_64::structures::paging::PageTableFlags;

/// Mapping the local APIC page a second time reads the same registers, uncached.
fn mmio_map_reads_device_register() -> TestResult {
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let base = unsafe { Msr::new(0x1B).read() } & 0x000F_FFFF_FFFF_F000;
    let m = kcore::mm::map_mmio(base, 0x1000);
    check!(m.is_ok(), "map_mmio failed: {:?}", m.err());
    let m = m.map_err(|_| ktest::TestError::Failed("unreachable".into()))?;
    let flags = crate::paging::leaf_flags(m.va);
    check!(flags.is_some_and(|f| f.contains(PageTableFlags::NO_CACHE)), "MMIO page not uncached: {flags:?}");
    check_eq!(crate::paging::translate(m.va), Some(base));
    // SAFETY: m.va maps the local APIC page; 0x30 is its read-only version register.
    let version = unsafe { ((m.va + 0x30) as *const u32).read_volatile() };
    check!((0x10..=0x15).contains(&(version & 0xFF)), "LAPIC version {version:#x} is not an integrated APIC");
    check!(version != u32::MAX);
    Ok(())
}

/// An I/O APIC redirection entry written (masked) reads back, and is restored.
fn irq_controller_roundtrip() -> TestResult {
    let all = crate::ioapic::all();
    check!(!all.is_empty(), "no I/O APIC was brought up");
    let io = &all[0];
    check!(io.pins >= 16, "only {} pins", io.pins);
    let pin = io.pins - 1;
    let before = io.entry(pin);
    check_eq!(before.map(|e| e & crate::ioapic::MASKED), Some(crate::ioapic::MASKED));
    let probe = crate::ioapic::MASKED | 0x4A | (1u64 << 56);
    check!(io.set_entry(pin, probe).is_ok());
    check_eq!(io.entry(pin).map(|e| e & 0xFF00_0000_0001_00FF), Some(probe));
    check!(io.set_entry(pin, before.unwrap_or(crate::ioapic::MASKED)).is_ok());
    check!(io.set_entry(io.pins, 0).is_err(), "pin out of range accepted");
    Ok(())
}

ktest::suite!(pub ARCH = "arch", [mmio_map_reads_device_register, irq_controller_roundtrip]);

use kcore::edu::{fill, frame_bytes};

/// Runs `f` on the registered driver of the first VT-d unit (skips without one).
fn with_vtd(f: impl FnOnce(&mut vtd::VtdIommu<kcore::iommu::KernelTables>) -> TestResult) -> TestResult {
    kcore::iommu::with_drivers(|units| {
        match units.iter_mut().find_map(|u| u.as_any_mut().downcast_mut::<vtd::VtdIommu<kcore::iommu::KernelTables>>())
        {
            Some(v) => f(v),
            None => Err(ktest::TestError::Skipped("no VT-d unit (boot with --iommu vtd)".into())),
        }
    })
}

/// Frames held by the domains' page tables of a registered VT-d unit (its
/// root, context, PASID and queue frames excluded): what leak checks compare.
fn domain_frames(v: &vtd::VtdIommu<kcore::iommu::KernelTables>) -> usize {
    v.mem.live - v.unit.table_frames()
}

/// VT-d legacy mode end to end: edu DMAs through a second-level domain with the
/// right data, a DMA to an unmapped IOVA is blocked and recorded as a decoded
/// fault naming the device and address, and after unmap + flush the old IOVA faults.
fn vtd_edu_dma_through_a_domain() -> TestResult {
    use io_pgtable::Perms;
    let Some(&(dev, rid)) = kcore::edu::devices().first() else {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    };
    let edu = kcore::edu::open(dev)?;

    let outcome = with_vtd(|v| {
        // The kernel takes the unit's devices for the test: out of any boot
        // (direct-map) domain, blocked.
        for d in iommu::Iommu::devices(v) {
            iommu::Iommu::detach(v, d).map_err(kcore::edu::failed)?;
        }
        let live0 = domain_frames(v);
        let (unit, mem) = (&mut v.unit, &mut v.mem);
        log::info!("{}", unit.describe());
        let want_queue = unit.ecap >> 1 & 1 == 1
            && (kcore::cmdline_value("vtd_qi") != Some("off") || unit.stage != vtd::Stage::Legacy);
        check!(unit.queued() == want_queue, "queued invalidation: used {}, expected {want_queue}", unit.queued());

        let frames: alloc::vec::Vec<u64> = (0..4).filter_map(|_| kcore::mm::alloc_frame()).collect();
        check_eq!(frames.len(), 4);
        let (src, dst, canary, ro) = (frames[0], frames[1], frames[2], frames[3]);
        for (i, b) in (0..4096).map(|i| (i, (i * 7 + 3) as u8)) {
            // SAFETY: `src` is our frame in the direct map.
            unsafe { ((kcore::mm::phys_to_virt(src) + i) as *mut u8).write_volatile(b) };
        }
        fill(dst, 0);
        fill(canary, 0xCC);
        fill(ro, 0x11);
        // Cost of map + unmap (with its flush) per 4 KiB page, for the report.
        {
            let mut d = unit.new_domain(9, mem).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            let t0 = kcore::platform().uptime_ns();
            for i in 0..256u64 {
                let _ = unit.map(&mut d, 0x100_0000 + i * 4096, src, 4096, Perms::READ, mem);
            }
            let t1 = kcore::platform().uptime_ns();
            let inv0 = unit.invalidations;
            for i in 0..256u64 {
                let _ = unit.unmap(&mut d, 0x100_0000 + i * 4096, 4096, mem);
            }
            let t2 = kcore::platform().uptime_ns();
            log::info!(
                "vtd: map {} ns/page, unmap+flush {} ns/page, {} invalidation(s) per unmap call (TCG)",
                (t1 - t0) / 256,
                (t2 - t1) / 256,
                (unit.invalidations - inv0) / 256
            );
            d.table.destroy(mem);
        }

        let result = (|| -> TestResult {
            let mut dom = unit.alloc_domain(mem).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            check!(dom.id != 0 && u32::from(dom.id) < unit.domain_id_count());
            let map =
                |unit: &mut vtd::Unit, dom: &mut vtd::Domain, mem: &mut kcore::iommu::KernelTables, iova, pa, perms| {
                    unit.map(dom, iova, pa, 4096, perms, mem)
                        .map_err(|e| ktest::TestError::Failed(alloc::format!("map: {e}")))
                };
            map(unit, &mut dom, mem, 0x10_0000, src, Perms::READ)?;
            map(unit, &mut dom, mem, 0x20_0000, dst, Perms::READ | Perms::WRITE)?;
            map(unit, &mut dom, mem, 0x40_0000, ro, Perms::READ)?;
            unit.attach(rid, &dom, mem).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            unit.enable().map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            // RAM (IOVA 0x100000) -> edu -> RAM (IOVA 0x200000).
            edu.dma(0x10_0000, 4096, false)?;
            edu.dma(0x20_0000, 4096, true)?;
            check!(frame_bytes(dst) == frame_bytes(src), "data did not arrive through the IOMMU");
            check!(unit.take_fault().is_none(), "unexpected fault");
            // Unmapped IOVA: blocked, one decoded fault naming edu and the address,
            // announced by the fault-event MSI.
            unit.enable_fault_interrupt(crate::apic::msi_address(), u32::from(crate::interrupts::IOMMU_FAULT_VECTOR));
            let irqs = crate::interrupts::IOMMU_FAULT_IRQS.load(core::sync::atomic::Ordering::Relaxed);
            edu.dma(0x30_0000, 4096, true)?;
            let t0 = kcore::platform().uptime_ns();
            while crate::interrupts::IOMMU_FAULT_IRQS.load(core::sync::atomic::Ordering::Relaxed) == irqs
                && kcore::platform().uptime_ns() - t0 < 500_000_000
            {
                kcore::platform().wait_for_interrupt();
            }
            unit.disable_fault_interrupt();
            check!(
                crate::interrupts::IOMMU_FAULT_IRQS.load(core::sync::atomic::Ordering::Relaxed) > irqs,
                "no fault-event interrupt"
            );
            let f = unit.take_fault();
            check!(f.is_some_and(|f| f.source_id == rid && f.address == 0x30_0000 && f.write), "fault: {f:?}");
            if let Some(f) = f {
                log::info!("vtd: {f}");
            }
            check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "canary changed");
            // Read-only mapping, cached by a read first: QEMU blocks the write without
            // a fault record (QEMU.md G3). The block alone: the page keeps its bytes.
            edu.dma(0x40_0000, 4096, false)?;
            edu.dma(0x10_0000, 4096, false)?; // the edu buffer now differs from `ro`
            edu.dma(0x40_0000, 4096, true)?;
            check!(frame_bytes(ro).iter().all(|&b| b == 0x11), "write to a read-only mapping reached memory");
            let _ = unit.take_fault();
            // After an IOTLB flush the same write is blocked and recorded (reason 5).
            unit.invalidate_domain(dom.id, mem).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            edu.dma(0x40_0000, 4096, true)?;
            let rof = unit.take_fault();
            // Reason 0x05 (second level), 0x85 in scalable mode's first stage.
            check!(
                rof.is_some_and(|f| f.address == 0x40_0000 && f.write && (f.reason.0 == 5 || f.reason.0 == 0x85)),
                "read-only fault: {rof:?}"
            );
            check!(frame_bytes(ro).iter().all(|&b| b == 0x11), "write to a read-only mapping reached memory");
            check!(unit.take_fault().is_none(), "more than one fault recorded");
            // Unmap + flush: the old IOVA faults now.
            let before = unit.invalidations;
            let n = unit
                .unmap(&mut dom, 0x20_0000, 4096, mem)
                .map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            check_eq!(n, 4096);
            check_eq!(unit.invalidations - before, 1);
            fill(dst, 0x5A);
            edu.dma(0x20_0000, 4096, true)?;
            let stale = unit.take_fault();
            check!(stale.is_some_and(|f| f.address == 0x20_0000), "no fault after unmap: {stale:?}");
            check!(frame_bytes(dst).iter().all(|&b| b == 0x5A), "DMA reached an unmapped page");
            let _ = unit.detach(rid, mem);
            let (_, g) =
                dom.table.unmap(mem, 0, 1 << 39).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            g.release(mem);
            dom.table.destroy(mem);
            Ok(())
        })();
        for f in frames {
            let _ = kcore::mm::free_frame(f);
        }
        result?;
        let now = mem.live - unit.table_frames();
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    });
    kcore::edu::close(dev);
    outcome
}

/// VT-d: a 2 MiB leaf above 4 GiB carries the DMA, and a second edu in its own
/// domain cannot reach the first one's buffer (it faults instead).
fn vtd_large_pages_high_iovas_and_isolation() -> TestResult {
    use io_pgtable::Perms;
    let edus = kcore::edu::devices();
    if edus.is_empty() {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    }
    let err = |e: vtd::VtdError| ktest::TestError::Failed(alloc::format!("{e}"));
    with_vtd(|v| {
        // The kernel takes the unit's devices for the test: out of any boot
        // (direct-map) domain, blocked.
        for d in iommu::Iommu::devices(v) {
            iommu::Iommu::detach(v, d).map_err(kcore::edu::failed)?;
        }
        let live0 = domain_frames(v);
        let (unit, mem) = (&mut v.unit, &mut v.mem);
        // 2 MiB of physically contiguous, 2 MiB-aligned memory for a large leaf.
        let big = kcore::mm::alloc_frames(512, 512).ok_or_else(|| ktest::TestError::Failed("no 2 MiB block".into()))?;
        let result = (|| -> TestResult {
            let mut d1 = unit.new_domain(1, mem).map_err(err)?;
            let high = if unit.levels >= 4 { 0x1_4000_0000 } else { 0x4000_0000 }; // above 4 GiB when 48-bit
            unit.map(&mut d1, high, big, 2 << 20, Perms::READ | Perms::WRITE, mem).map_err(err)?;
            let mut leaves = 0;
            d1.table.for_each_mapping(&*mem, &mut |_, size, _, _| {
                if size == 2 << 20 {
                    leaves += 1;
                }
            });
            check_eq!(leaves, 1);
            let rid0 = edus[0].1;
            unit.attach(rid0, &d1, mem).map_err(err)?;
            unit.enable().map_err(err)?;
            let e0 = kcore::edu::open(edus[0].0)?;
            // Pattern at offset 1 MiB + 4 KiB inside the 2 MiB leaf, copied to offset 0.
            let off = (1 << 20) + 0x1000;
            for i in 0..4096u64 {
                // SAFETY: `big` is our 2 MiB block in the direct map.
                unsafe { ((kcore::mm::phys_to_virt(big) + off + i) as *mut u8).write_volatile((i * 13) as u8) };
            }
            e0.dma(high + off, 4096, false)?;
            e0.dma(high, 4096, true)?;
            // SAFETY: as above.
            let got = unsafe { core::slice::from_raw_parts(kcore::mm::phys_to_virt(big) as *const u8, 4096) };
            check!(got.iter().enumerate().all(|(i, &b)| b == (i as u64 * 13) as u8), "data wrong through a 2 MiB leaf");
            check!(unit.take_fault().is_none());
            if edus.len() >= 2 {
                // Second edu, second (empty) domain: the same IOVA is not mapped for it.
                let d2 = unit.new_domain(2, mem).map_err(err)?;
                let rid1 = edus[1].1;
                unit.attach(rid1, &d2, mem).map_err(err)?;
                let e1 = kcore::edu::open(edus[1].0)?;
                // SAFETY: as above.
                unsafe { core::ptr::write_bytes(kcore::mm::phys_to_virt(big) as *mut u8, 0x77, 4096) };
                e1.dma(high, 4096, true)?;
                let f = unit.take_fault();
                check!(f.is_some_and(|f| f.source_id == rid1 && f.address == high), "no isolation fault: {f:?}");
                check!(got.iter().all(|&b| b == 0x77), "the second device reached the first one's buffer");
                let _ = unit.detach(rid1, mem);
                d2.table.destroy(mem);
            }
            let _ = unit.detach(rid0, mem);
            let (n, g) =
                d1.table.unmap(mem, high, 2 << 20).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            check_eq!(n, 2 << 20);
            g.release(mem);
            d1.table.destroy(mem);
            Ok(())
        })();
        for i in 0..512 {
            let _ = kcore::mm::free_frame(big + i * 4096);
        }
        for (d, _) in &edus {
            kcore::edu::close(d);
        }
        result?;
        let now = mem.live - unit.table_frames();
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    })
}

/// The generic door on VT-d (`kcore::edu::generic_domains`) on the unit
/// registered at boot, plus what VT-d adds: a blocked DMA is recorded as
/// exactly one decoded fault, so is the DMA to an unmapped IOVA; a second
/// device faulting while the one recording register is full is a primary
/// fault overflow; the last detach turns translation off and every table
/// frame is freed.
fn vtd_generic_domains() -> TestResult {
    use iommu::{DeviceId, DomainKind, Iommu};
    let edus = kcore::edu::devices();
    let Some(&(dev, rid)) = edus.first() else { return Err(ktest::TestError::Skipped("no edu device".into())) };
    let edu = kcore::edu::open(dev)?;
    let other = match edus.get(1) {
        Some(&(d, r)) => Some((kcore::edu::open(d)?, r)),
        None => None,
    };
    let frames: alloc::vec::Vec<u64> = (0..3).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = with_vtd(|v| {
        check_eq!(frames.len(), 3);
        // The kernel takes the unit's devices for the test: out of any boot
        // (direct-map) domain, blocked.
        for d in iommu::Iommu::devices(v) {
            iommu::Iommu::detach(v, d).map_err(kcore::edu::failed)?;
        }
        let live0 = domain_frames(v);
        let dev_id = DeviceId(u32::from(rid));
        let report = kcore::edu::generic_domains(
            v,
            dev_id,
            &edu,
            other.as_ref().map(|o| &o.0),
            [frames[0], frames[1], frames[2]],
            true,
        )?;
        check!(
            report.blocked.len() == 1 && report.blocked[0].access == iommu::Access::Write,
            "blocked: {:?}",
            report.blocked
        );
        log::info!("vtd generic: blocked: {}", report.blocked[0]);
        check!(report.stale.len() == 1, "after unmap + flush: {:?}", report.stale);
        check!(!v.translating(), "a device is still attached after the last detach");
        check!(v.unit.enabled(), "translation went off: default deny lost");
        // A second device faulting while the one recording register is full
        // is an overflow (FSTS.PFO): counted, and the first fault is still there.
        if let Some((e1, r1)) = &other {
            let canary = frames[2];
            let u: &mut dyn Iommu = v;
            let blocked = u.domain_alloc(DomainKind::Blocked).map_err(kcore::edu::failed)?;
            u.attach(dev_id, blocked).map_err(kcore::edu::failed)?;
            u.attach(DeviceId(u32::from(*r1)), blocked).map_err(kcore::edu::failed)?;
            edu.dma(canary, 4096, true)?;
            e1.dma(canary, 4096, true)?;
            check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "a blocked device wrote memory");
            let before = v.unit.fault_overflows.load(core::sync::atomic::Ordering::Relaxed);
            let f = v.drain_faults();
            let after = v.unit.fault_overflows.load(core::sync::atomic::Ordering::Relaxed);
            check!(f.len() == 1 && f[0].device == dev_id, "with overflow: {f:?}");
            check_eq!(after, before + 1);
            for d in [dev_id, DeviceId(u32::from(*r1))] {
                v.detach(d).map_err(kcore::edu::failed)?;
            }
            v.domain_free(blocked).map_err(kcore::edu::failed)?;
        }
        let now = domain_frames(v);
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    });
    kcore::edu::release(&frames, &edus);
    outcome
}

/// Frames a registered x86 unit holds for its domains (its own root, context,
/// device-table and queue frames excluded): what leak checks compare.
fn unit_domain_frames(u: &mut dyn iommu::Iommu) -> Option<usize> {
    let any = u.as_any_mut();
    if let Some(v) = any.downcast_ref::<vtd::VtdIommu<kcore::iommu::KernelTables>>() {
        return Some(domain_frames(v));
    }
    any.downcast_ref::<AmdDriver>().map(|a| a.mem.live - a.unit.table_frames())
}

/// Direct-map regions (VT-d RMRR, AMD-Vi IVMD unity range): a device the
/// firmware names finds that region mapped 1:1 in a fresh paging domain (its
/// DMA there lands in memory the kernel kept out of the frame allocator),
/// while any other IOVA is blocked (with one fault where the unit records
/// faults; QEMU's AMD-Vi does not, QEMU.md G2).
fn direct_map_regions_identity_mapped() -> TestResult {
    use iommu::{DeviceId, DomainKind, ReservedKind, UnitKind};
    let edus = kcore::edu::devices();
    let found = kcore::iommu::with_units(|units| {
        edus.iter().find_map(|&(d, rid)| {
            units.iter().enumerate().find_map(|(i, u)| {
                u.reserved_regions(DeviceId(u32::from(rid)))
                    .into_iter()
                    .find(|r| r.kind == ReservedKind::DirectMap)
                    .map(|r| (d, rid, i, r))
            })
        })
    });
    let Some((dev, rid, unit, region)) = found else {
        return Err(ktest::TestError::Skipped("no direct-map region names an edu device".into()));
    };
    let edu = kcore::edu::open(dev)?;
    let (Some(src), Some(canary)) = (kcore::mm::alloc_frame(), kcore::mm::alloc_frame()) else {
        return Err(ktest::TestError::Failed("no frame".into()));
    };
    let outcome = kcore::iommu::with_drivers(|units| {
        let u = &mut *units[unit];
        let records_faults = u.info().kind != UnitKind::AmdVi;
        let live0 = unit_domain_frames(u);
        let dev_id = DeviceId(u32::from(rid));
        u.detach(dev_id).map_err(kcore::edu::failed)?; // out of its boot direct-map domain
        let d = u.domain_alloc(DomainKind::Paging).map_err(kcore::edu::failed)?;
        u.map(d, 0x10_0000, src, 4096, iommu::Perms::READ).map_err(kcore::edu::failed)?;
        u.attach(dev_id, d).map_err(kcore::edu::failed)?;
        check_eq!(u.iova_to_phys(d, region.start), Some(region.start));
        check_eq!(u.iova_to_phys(d, region.end & !0xFFF), Some(region.end & !0xFFF));
        for i in 0..4096u64 {
            // SAFETY: `src` is our frame in the direct map.
            unsafe { ((kcore::mm::phys_to_virt(src) + i) as *mut u8).write_volatile((i * 3) as u8) };
        }
        // SAFETY: the direct-map region is RAM the kernel reserved at boot (never handed out) and is reached through the direct map; only this test touches it.
        let direct = unsafe { core::slice::from_raw_parts_mut(kcore::mm::phys_to_virt(region.start) as *mut u8, 4096) };
        direct.fill(0);
        edu.dma(0x10_0000, 4096, false)?;
        edu.dma(region.start, 4096, true)?;
        check!(direct == frame_bytes(src), "DMA to the direct-map region did not land 1:1");
        check!(u.drain_faults().is_empty(), "unexpected fault");
        // Any other IOVA is blocked: a write to the canary's own address
        // (unmapped in the domain) leaves it untouched.
        check_eq!(u.iova_to_phys(d, canary), None);
        kcore::edu::fill(canary, 0xEE);
        edu.dma(canary, 4096, true)?;
        check!(frame_bytes(canary).iter().all(|&b| b == 0xEE), "a write to an unmapped IOVA reached memory");
        check_eq!(u.drain_faults().len(), usize::from(records_faults));
        u.detach(dev_id).map_err(kcore::edu::failed)?;
        u.domain_free(d).map_err(kcore::edu::failed)?;
        let now = unit_domain_frames(u);
        check!(now == live0, "table frames: {live0:?} before, {now:?} after");
        Ok(())
    });
    let _ = kcore::mm::free_frame(src);
    let _ = kcore::mm::free_frame(canary);
    kcore::edu::close(dev);
    outcome
}

/// An invalid descriptor in the invalidation queue is reported as IQE with
/// the descriptor's index, and the queue runs on afterwards.
fn vtd_queue_error_reported() -> TestResult {
    with_vtd(|v| {
        if !v.unit.queued() {
            return Err(ktest::TestError::Skipped("register-based invalidation (no queue)".into()));
        }
        // Type 0xF is no descriptor type (VT-d §6.5.2).
        let r = v.unit.submit_descriptors(&[(0xF, 0)], &mut v.mem);
        check!(
            matches!(r, Err(vtd::VtdError::Queue { error: vtd::invalidation::QueueError::InvalidDescriptor, .. })),
            "{r:?}"
        );
        check!(!v.unit.queue_error(), "FSTS.IQE still set");
        let ok = v.unit.submit_descriptors(&[vtd::invalidation::iotlb_global()], &mut v.mem);
        check!(ok.is_ok(), "queue dead after the error: {ok:?}");
        Ok(())
    })
}

type AmdDriver = amdvi::AmdViIommu<kcore::iommu::KernelTables>;

/// Runs `f` on the registered driver of the first AMD-Vi unit (skips without one).
/// `rid`'s DTE is the blocked one: no translation, no access, and (with
/// interrupt remapping on) its interrupts blocked or remapped, never passed.
fn check_blocked_dte(a: &AmdDriver, rid: u16) -> TestResult {
    let e = a.unit.dte(rid, &a.mem).to_words();
    check_eq!(e[..2], a.unit.blocked_dte(amdvi::dte::BLOCKED_TAG).to_words()[..2]);
    check_eq!(e[3], 0);
    if iommu::Iommu::remaps_interrupts(a) {
        check!(e[2] & amdvi::intremap::DTE_IV != 0, "interrupt fields {:#x}: IV clear, interrupts pass", e[2]);
    } else {
        check_eq!(e[2], 0);
    }
    Ok(())
}

fn with_amdvi(f: impl FnOnce(&mut AmdDriver) -> TestResult) -> TestResult {
    kcore::iommu::with_drivers(|units| {
        match units.iter_mut().find_map(|u| u.as_any_mut().downcast_mut::<AmdDriver>()) {
            Some(a) => f(a),
            None => Err(ktest::TestError::Skipped("no AMD-Vi unit (boot with --iommu amdvi)".into())),
        }
    })
}

/// AMD-Vi as the hardware sees it: the device-table entry of edu for each
/// domain kind (identity: Mode 0 with IR/IW; blocked: Mode 0 without; paging:
/// Mode 4 and the domain's DomainID), DMA through 256 mapped pages with the
/// right data, one INVALIDATE_IOMMU_PAGES + COMPLETION_WAIT per unmap call,
/// detach back to the untranslated (V = 0) entry, no table frame leaked.
/// Reports map and unmap cost per 4 KiB page. (QEMU 10 never writes the
/// event log, QEMU.md G2, so faults are proven by memory in the generic tests.)
fn amdvi_device_table_and_invalidations() -> TestResult {
    use amdvi::dte;
    use iommu::{DomainKind, Iommu, Perms};
    use kcore::edu::failed;
    let Some(&(dev, rid)) = kcore::edu::devices().first() else {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    };
    let edu = kcore::edu::open(dev)?;
    const PAGES: u64 = 256;
    let frames: alloc::vec::Vec<u64> = (0..PAGES).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = with_amdvi(|a| {
        check_eq!(frames.len() as u64, PAGES);
        check!(!a.translating(), "the registered unit is in use");
        let live0 = a.mem.live;
        let id = iommu::DeviceId(u32::from(rid));
        check_blocked_dte(a, rid)?;
        for (kind, mode, access) in [(DomainKind::Identity, 0, true), (DomainKind::Blocked, 1, false)] {
            let d = a.domain_alloc(kind).map_err(failed)?;
            a.attach(id, d).map_err(failed)?;
            let e = a.unit.dte(rid, &a.mem);
            check!(dte::valid(&e) && dte::mode(&e) == mode, "{kind:?}: DTE {:#x?}", e.to_words());
            check_eq!(dte::access(&e) == (true, true), access);
            check_eq!(Some(dte::domain_id(&e)), a.domain_tag(d));
            a.detach(id).map_err(failed)?;
            a.domain_free(d).map_err(failed)?;
        }
        let d = a.domain_alloc(DomainKind::Paging).map_err(failed)?;
        let iova = 0x40_0000_0000; // 256 GiB: needs the fourth level
        let t0 = kcore::platform().uptime_ns();
        for (i, &pa) in frames.iter().enumerate() {
            a.map(d, iova + i as u64 * 4096, pa, 4096, Perms::READ | Perms::WRITE).map_err(failed)?;
        }
        let map_ns = kcore::platform().uptime_ns() - t0;
        a.attach(id, d).map_err(failed)?;
        let e = a.unit.dte(rid, &a.mem);
        check!(dte::valid(&e) && dte::mode(&e) == amdvi::driver::LEVELS as u64, "paging: DTE {:#x?}", e.to_words());
        check_eq!(Some(dte::domain_id(&e)), a.domain_tag(d));
        kcore::edu::pattern(frames[7], 3);
        fill(frames[200], 0);
        edu.dma(iova + 7 * 4096, 4096, false)?;
        edu.dma(iova + 200 * 4096, 4096, true)?;
        check!(frame_bytes(frames[200]) == frame_bytes(frames[7]), "data wrong through the paging domain");
        let (commands, flushes) = (a.unit.commands, a.flushes());
        let t0 = kcore::platform().uptime_ns();
        for i in 0..PAGES {
            check_eq!(iommu::unmap_and_flush(a, d, iova + i * 4096, 4096), Ok(4096));
        }
        let unmap_ns = kcore::platform().uptime_ns() - t0;
        check_eq!(a.flushes(), flushes + PAGES);
        let per_unmap = (a.unit.commands - commands) as f64 / PAGES as f64;
        check!(per_unmap == 2.0, "{per_unmap} commands per unmap (INVALIDATE_IOMMU_PAGES + COMPLETION_WAIT expected)");
        log::info!(
            "amdvi: per 4 KiB page over {PAGES}: map {} ns, unmap + flush {} ns; {per_unmap} commands per unmap",
            map_ns / PAGES,
            unmap_ns / PAGES
        );
        fill(frames[200], 0x5A);
        edu.dma(iova + 200 * 4096, 4096, true)?;
        check!(frame_bytes(frames[200]).iter().all(|&b| b == 0x5A), "DMA reached an unmapped page");
        a.detach(id).map_err(failed)?;
        check_blocked_dte(a, rid)?;
        a.domain_free(d).map_err(failed)?;
        check!(a.mem.live == live0, "table frames: {live0} before, {} after", a.mem.live);
        Ok(())
    });
    kcore::edu::release(&frames, &kcore::edu::devices());
    outcome
}

/// Waits up to `ns` of uptime, interrupts enabled, for `done`.
fn wait_with_interrupts(ns: u64, done: impl Fn() -> bool) -> bool {
    let was = x86_64::instructions::interrupts::are_enabled();
    x86_64::instructions::interrupts::enable();
    let t0 = kcore::platform().uptime_ns();
    let mut ok = done();
    while !ok && kcore::platform().uptime_ns() - t0 < ns {
        core::hint::spin_loop();
        ok = done();
    }
    if !was {
        x86_64::instructions::interrupts::disable();
    }
    ok
}

/// A device's forged interrupt: edu (attached, `frame` mapped at IOVA
/// 0x100000) copies `data` from `frame` into its buffer, then writes it to
/// `address` in the interrupt window. True when `slot` then counted an
/// interrupt within 50 ms.
fn forge_msi(edu: &kcore::edu::Edu, frame: u64, address: u32, data: u32, slot: u32) -> Result<bool, ktest::TestError> {
    // SAFETY: `frame` is the test's frame, in the direct map.
    unsafe { (kcore::mm::phys_to_virt(frame) as *mut u32).write_volatile(data) };
    let before = kcore::task::irq_pending(slot);
    edu.dma(0x10_0000, 4, false)?;
    edu.dma(u64::from(address), 4, true)?;
    Ok(wait_with_interrupts(50_000_000, || kcore::task::irq_pending(slot) > before))
}

/// The interrupt-remapping faults a registered VT-d unit recorded since the
/// last call, as (interrupt index, reason).
fn vtd_interrupt_faults() -> alloc::vec::Vec<(u64, u32)> {
    let mut out = alloc::vec::Vec::new();
    let _ = with_vtd(|v| {
        for f in iommu::Iommu::drain_faults(v) {
            log::info!("vtd: {f}");
            if f.access == iommu::Access::Interrupt {
                out.push((f.address, f.reason));
            }
        }
        Ok(())
    });
    out
}

/// What both interrupt-remapping tests share: the first edu, its config
/// access, the last device vector (and its slot), a scratch frame and edu's
/// BAR opened.
struct IrBench {
    dev: &'static kcore::pci::Device,
    rid: u16,
    access: &'static dyn pci::ConfigAccess,
    vector: u8,
    slot: u32,
    frame: u64,
    edu: kcore::edu::Edu,
    domain: Option<iommu::DomainId>,
}

impl IrBench {
    fn new() -> Result<IrBench, ktest::TestError> {
        let Some(&(dev, rid)) = kcore::edu::devices().first() else {
            return Err(ktest::TestError::Skipped("no edu device".into()));
        };
        let access = kcore::pci::access(dev.function.bdf).ok_or(ktest::TestError::Failed("no config access".into()))?;
        let vector = *crate::interrupts::DEVICE_VECTORS.end();
        let slot = u32::from(vector - crate::interrupts::DEVICE_VECTORS.start());
        let frame = kcore::mm::alloc_frame().ok_or(ktest::TestError::Failed("no frame".into()))?;
        let edu = kcore::edu::open(dev)?;
        Ok(IrBench { dev, rid, access, vector, slot, frame, edu, domain: None })
    }

    /// Routes edu's MSI through the kernel (and so through its unit).
    fn route(&self) -> TestResult {
        crate::apic::route_msi(&self.dev.function, self.access, self.vector)
            .map_err(|e| ktest::TestError::Failed(e.into()))
    }

    /// Takes edu's MSI route (and its remapping entry) back.
    fn unroute(&self) {
        crate::apic::unroute_msi(&self.dev.function, self.access, self.vector);
    }

    /// Raises edu's interrupt; true when its vector fired within 500 ms.
    fn raise(&self) -> bool {
        let before = kcore::task::irq_pending(self.slot);
        self.edu.raise_interrupt(1);
        let delivered = wait_with_interrupts(500_000_000, || kcore::task::irq_pending(self.slot) > before);
        self.edu.ack_interrupt(1);
        delivered
    }

    /// Attaches edu, through the generic interface of its unit, to a paging
    /// domain that maps the scratch frame at IOVA 0x100000 (what `forge` needs).
    fn attach_frame(&mut self) -> TestResult {
        let (unit, id) =
            kcore::iommu::unit_of(self.dev.function.bdf).ok_or(ktest::TestError::Failed("edu has no unit".into()))?;
        let frame = self.frame;
        let d = kcore::iommu::with_units(|units| -> Result<iommu::DomainId, iommu::Error> {
            let u = &mut units[unit];
            let d = u.domain_alloc(iommu::DomainKind::Paging)?;
            u.map(d, 0x10_0000, frame, 4096, io_pgtable::Perms::READ)?;
            u.attach(id, d)?;
            Ok(d)
        })
        .map_err(kcore::edu::failed)?;
        self.domain = Some(d);
        Ok(())
    }

    /// A forged message: true when it raised edu's vector ([`forge_msi`]).
    fn forge(&self, address: u32, data: u32) -> Result<bool, ktest::TestError> {
        forge_msi(&self.edu, self.frame, address, data, self.slot)
    }

    /// Undoes everything, whatever the test's outcome.
    fn finish(self) {
        self.unroute();
        if let Some((unit, id)) = kcore::iommu::unit_of(self.dev.function.bdf) {
            kcore::iommu::with_units(|units| {
                let _ = units[unit].detach(id);
                if let Some(d) = self.domain {
                    let _ = iommu::unmap_and_flush(&mut *units[unit], d, 0x10_0000, 4096);
                    let _ = units[unit].domain_free(d);
                }
            });
        }
        kcore::edu::release(&[self.frame], &kcore::edu::devices());
    }
}

/// VT-d interrupt remapping end to end: edu's MSI, routed by the kernel,
/// reaches its vector through a remapped entry checked against edu's
/// requester ID; messages a device forges with a DMA write into the
/// interrupt window — a handle with no entry, one beyond the table, edu's
/// own handle after the kernel took it back — are blocked, raise nothing,
/// and are recorded as decoded interrupt-remapping faults naming the index.
fn vtd_interrupt_remapping() -> TestResult {
    use vtd::intremap::{msi_address, Destination, RemappedIrte};
    let mut on = false;
    with_vtd(|v| {
        on = iommu::Iommu::remaps_interrupts(v);
        check!(on == v.unit.interrupt_remapping_enabled(), "driver and GSTS.IRES disagree");
        Ok(())
    })?;
    if !on {
        return Err(ktest::TestError::Skipped("interrupt remapping off (boot with intel-iommu,intremap=on)".into()));
    }
    let mut b = IrBench::new()?;
    let (rid, vector) = (b.rid, b.vector);
    let outcome = (|| -> TestResult {
        b.route()?;
        let mut handle = 0;
        with_vtd(|v| {
            handle = v.msi_handle(rid, vector).ok_or(ktest::TestError::Failed("no entry for edu".into()))?;
            let irte = v.irte(handle).ok_or(ktest::TestError::Failed("entry out of range".into()))?;
            let want = RemappedIrte::fixed(vector, Destination::XApic(crate::apic::irq_destination() as u8), rid);
            check_eq!(irte.decode(false), Ok(want));
            Ok(())
        })?;
        let _ = vtd_interrupt_faults();
        check!(b.raise(), "edu's MSI did not arrive through its remapped entry (handle {handle})");
        check!(vtd_interrupt_faults().is_empty(), "the real MSI raised an interrupt-remapping fault");
        b.attach_frame()?;
        for (index, reason, what) in
            [(200u16, 0x22u32, "a handle with no entry"), (300, 0x21, "a handle beyond the 256-entry table")]
        {
            check!(!b.forge(msi_address(index), 0)?, "a forged MSI through {what} was delivered");
            let faults = vtd_interrupt_faults();
            check!(
                faults.contains(&(u64::from(index), reason)),
                "{what}: faults {faults:x?}, want index {index} reason {reason:#x}"
            );
        }
        // The kernel takes edu's entry back: its handle is blocked from then on.
        b.unroute();
        with_vtd(|v| {
            check!(v.msi_handle(rid, vector).is_none());
            check!(v.irte(handle).is_some_and(|e| !e.present()), "edu's entry is still present");
            Ok(())
        })?;
        check!(!b.forge(msi_address(handle), 0)?, "a forged MSI through edu's old handle was delivered");
        let faults = vtd_interrupt_faults();
        check!(faults.contains(&(u64::from(handle), 0x22)), "old handle: faults {faults:x?}");
        // Compatibility format (address bit 4 clear): VT-d blocks it with
        // CFI clear (fault 25h), QEMU does not model CFI and delivers it.
        let compat = b.forge(crate::apic::msi_address(), u32::from(vector))?;
        let faults = vtd_interrupt_faults();
        log::info!(
            "vtd: a forged compatibility-format MSI was {} (faults {faults:x?}; QEMU does not model GCMD.CFI)",
            if compat { "delivered" } else { "blocked" }
        );
        Ok(())
    })();
    b.finish();
    outcome
}

/// AMD-Vi interrupt remapping end to end: edu's MSI, routed by the kernel,
/// reaches its vector through edu's own interrupt table (DTE IntCtl = 10b);
/// messages forged by a DMA write into the interrupt window — edu's real
/// message, a compatibility-style one — raise nothing. (QEMU looks a DMA
/// write's interrupt up under the I/O APIC's DeviceID, 00:14.0, whose DTE
/// blocks every interrupt; it logs no event for a refused interrupt, so
/// "blocked" is shown by the vector that never fires.)
fn amdvi_interrupt_remapping() -> TestResult {
    use amdvi::intremap::{DteInterrupt, RemapFields};
    let mut on = false;
    with_amdvi(|a| {
        on = iommu::Iommu::remaps_interrupts(a);
        Ok(())
    })?;
    if !on {
        return Err(ktest::TestError::Skipped("interrupt remapping off (amd-iommu with intremap=on)".into()));
    }
    let mut b = IrBench::new()?;
    let (rid, vector) = (b.rid, b.vector);
    let outcome = (|| -> TestResult {
        b.route()?;
        let mut index = 0;
        with_amdvi(|a| {
            index = a.msi_index(rid, vector).ok_or(ktest::TestError::Failed("no entry for edu".into()))?;
            check!(index != 0, "index 0 handed out");
            let irte = a.irte(rid, index).ok_or(ktest::TestError::Failed("entry out of range".into()))?;
            check_eq!(irte.decode(), Ok(RemapFields::fixed(vector, crate::apic::irq_destination())));
            let q2 = DteInterrupt::decode(a.unit.dte(rid, &a.mem).q2.get());
            check!(q2.valid && q2.int_ctl == 2 && q2.len_log2 == 4, "edu's interrupt fields {q2:?}");
            check!(!(q2.nmi_pass || q2.init_pass || q2.eint_pass || q2.lint0_pass || q2.lint1_pass), "{q2:?}");
            // The I/O APIC's DeviceID (and every other) blocks interrupts.
            let io = DteInterrupt::decode(a.unit.dte(0x00A0, &a.mem).q2.get());
            check!(io.valid && io.int_ctl == 0, "00:14.0's interrupt fields {io:?}");
            Ok(())
        })?;
        check!(b.raise(), "edu's MSI did not arrive through its interrupt table (index {index})");
        b.attach_frame()?;
        let msg = (amdvi::intremap::msi_address(false), amdvi::intremap::msi_data(index));
        check!(!b.forge(msg.0, msg.1)?, "edu's own message, forged by DMA, was delivered");
        let compat = (crate::apic::msi_address(), u32::from(vector));
        check!(!b.forge(compat.0, compat.1)?, "a forged destination-format MSI was delivered");
        b.unroute();
        with_amdvi(|a| {
            check!(a.msi_index(rid, vector).is_none());
            // Its last vector gone, the device's table is too, and its DTE aborts again.
            check!(a.irte(rid, index).is_none(), "edu's interrupt table outlived its last vector");
            let q2 = DteInterrupt::decode(a.unit.dte(rid, &a.mem).q2.get());
            check!(q2.valid && q2.int_ctl == 0, "edu's interrupt fields after its last vector {q2:?}");
            Ok(())
        })?;
        Ok(())
    })();
    b.finish();
    outcome
}

ktest::suite!(
    pub IOMMU = "iommu",
    [
        vtd_edu_dma_through_a_domain,
        vtd_large_pages_high_iovas_and_isolation,
        vtd_queue_error_reported,
        vtd_generic_domains,
        vtd_interrupt_remapping,
        direct_map_regions_identity_mapped,
        amdvi_device_table_and_invalidations,
        amdvi_interrupt_remapping
    ]
);

/// The suites of this crate for the boot binary.
pub static SUITES: &[&ktest::Suite] = &[&ARCH, &IOMMU, &board_common::ktests::VIRTIO];
