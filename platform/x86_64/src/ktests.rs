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

/// The QEMU `edu` device's DMA engine (QEMU docs/specs/edu.rst).
struct Edu {
    regs: u64,
}

impl Edu {
    /// Device-side buffer address.
    const BUFFER: u64 = 0x4_0000;

    fn write64(&self, off: u64, v: u64) {
        // SAFETY: `regs` maps edu's BAR0 (device memory); 0x80..0x98 accept 8-byte writes.
        unsafe { ((self.regs + off) as *mut u64).write_volatile(v) }
    }

    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as above.
        unsafe { ((self.regs + off) as *const u64).read_volatile() }
    }

    /// Copies `len` bytes between RAM (bus address `ram`) and the edu buffer; waits up to 2 s.
    fn dma(&self, ram: u64, len: u64, to_ram: bool) -> Result<(), ktest::TestError> {
        let (src, dst) = if to_ram { (Self::BUFFER, ram) } else { (ram, Self::BUFFER) };
        self.write64(0x80, src);
        self.write64(0x88, dst);
        self.write64(0x90, len);
        self.write64(0x98, 1 | if to_ram { 2 } else { 0 });
        let t0 = kcore::platform().uptime_ns();
        while self.read64(0x98) & 1 != 0 {
            if kcore::platform().uptime_ns() - t0 > 2_000_000_000 {
                return Err(ktest::TestError::Failed("edu DMA did not finish in 2 s".into()));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

fn fill(pa: u64, byte: u8) {
    // SAFETY: `pa` is a frame the test allocated, in the direct map.
    unsafe { core::ptr::write_bytes(kcore::mm::phys_to_virt(pa) as *mut u8, byte, 4096) }
}

fn frame_bytes(pa: u64) -> &'static [u8] {
    // SAFETY: as in `fill`; read while no DMA targets the frame.
    unsafe { core::slice::from_raw_parts(kcore::mm::phys_to_virt(pa) as *const u8, 4096) }
}

/// Runs `f` on the registered driver of the first VT-d unit (skips without one).
fn with_vtd(f: impl FnOnce(&mut vtd::VtdIommu<kcore::iommu::KernelTables>) -> TestResult) -> TestResult {
    kcore::iommu::with_units(|units| {
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
    let Some(dev) = kcore::pci::devices().iter().find(|d| (d.function.vendor, d.function.device) == (0x1234, 0x11E8))
    else {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    };
    let rid = pci::dma_requester_id(
        &dev.function,
        &kcore::pci::devices().iter().map(|d| d.function.clone()).collect::<alloc::vec::Vec<_>>(),
    );
    let bar = dev.function.bars.iter().find(|b| b.index == 0).copied();
    check!(bar.is_some());
    let bar = bar.ok_or_else(|| ktest::TestError::Failed("no BAR0".into()))?;
    let edu_regs = kcore::mm::map_mmio(kcore::pci::bar_cpu_address(dev, &bar), 0x100);
    check!(edu_regs.is_ok());
    let edu = Edu { regs: edu_regs.map(|m| m.va).unwrap_or(0) };
    let access =
        kcore::pci::access(dev.function.bdf).ok_or_else(|| ktest::TestError::Failed("no config access".into()))?;
    pci::set_bus_master(access, dev.function.bdf, true);

    let outcome = with_vtd(|v| {
        check!(!v.translating(), "the registered unit is in use");
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
            let _ = unit.disable();
            let _ = unit.detach(rid, mem);
            let (_, g) =
                dom.table.unmap(mem, 0, 1 << 39).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            g.release(mem);
            dom.table.destroy(mem);
            Ok(())
        })();
        let _ = unit.disable();
        for f in frames {
            let _ = kcore::mm::free_frame(f);
        }
        result?;
        let now = mem.live - unit.table_frames();
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    });
    pci::set_bus_master(access, dev.function.bdf, false);
    outcome
}

/// VT-d: a 2 MiB leaf above 4 GiB carries the DMA, and a second edu in its own
/// domain cannot reach the first one's buffer (it faults instead).
fn vtd_large_pages_high_iovas_and_isolation() -> TestResult {
    use io_pgtable::Perms;
    let edus = edu_devices();
    if edus.is_empty() {
        return Err(ktest::TestError::Skipped("no edu device".into()));
    }
    let err = |e: vtd::VtdError| ktest::TestError::Failed(alloc::format!("{e}"));
    with_vtd(|v| {
        check!(!v.translating(), "the registered unit is in use");
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
            let e0 = open_edu(edus[0].0)?;
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
                let e1 = open_edu(edus[1].0)?;
                // SAFETY: as above.
                unsafe { core::ptr::write_bytes(kcore::mm::phys_to_virt(big) as *mut u8, 0x77, 4096) };
                e1.dma(high, 4096, true)?;
                let f = unit.take_fault();
                check!(f.is_some_and(|f| f.source_id == rid1 && f.address == high), "no isolation fault: {f:?}");
                check!(got.iter().all(|&b| b == 0x77), "the second device reached the first one's buffer");
                let _ = unit.detach(rid1, mem);
                d2.table.destroy(mem);
            }
            let _ = unit.disable();
            let _ = unit.detach(rid0, mem);
            let (n, g) =
                d1.table.unmap(mem, high, 2 << 20).map_err(|e| ktest::TestError::Failed(alloc::format!("{e}")))?;
            check_eq!(n, 2 << 20);
            g.release(mem);
            d1.table.destroy(mem);
            Ok(())
        })();
        let _ = unit.disable();
        for i in 0..512 {
            let _ = kcore::mm::free_frame(big + i * 4096);
        }
        for (d, _) in &edus {
            close_edu(d);
        }
        result?;
        let now = mem.live - unit.table_frames();
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    })
}

/// The edu devices and the requester ID each is seen with.
fn edu_devices() -> alloc::vec::Vec<(&'static kcore::pci::Device, u16)> {
    let all: alloc::vec::Vec<pci::Function> = kcore::pci::devices().iter().map(|d| d.function.clone()).collect();
    kcore::pci::devices()
        .iter()
        .filter(|d| (d.function.vendor, d.function.device) == (0x1234, 0x11E8))
        .map(|d| (d, pci::dma_requester_id(&d.function, &all)))
        .collect()
}

/// Maps edu's BAR0 and turns bus mastering on.
fn open_edu(d: &kcore::pci::Device) -> Result<Edu, ktest::TestError> {
    let bar = d
        .function
        .bars
        .iter()
        .find(|b| b.index == 0)
        .copied()
        .ok_or_else(|| ktest::TestError::Failed("no BAR0".into()))?;
    let m = kcore::mm::map_mmio(kcore::pci::bar_cpu_address(d, &bar), 0x100)
        .map_err(|_| ktest::TestError::Failed("map BAR".into()))?;
    if let Some(a) = kcore::pci::access(d.function.bdf) {
        pci::set_bus_master(a, d.function.bdf, true);
    }
    Ok(Edu { regs: m.va })
}

fn close_edu(d: &kcore::pci::Device) {
    if let Some(a) = kcore::pci::access(d.function.bdf) {
        pci::set_bus_master(a, d.function.bdf, false);
    }
}

fn iommu_err(e: iommu::Error) -> ktest::TestError {
    ktest::TestError::Failed(alloc::format!("{e}"))
}

/// The generic door on VT-d: identity, blocked and paging domains through the
/// `Iommu` trait on the unit registered at boot. Identity lets edu reach
/// physical addresses (native pass-through, or a 1:1 table without ECAP.PT),
/// blocked stops it with one decoded fault, paging translates and faults after
/// unmap + flush; devices nobody attached keep working while translation is
/// on; the last detach turns translation off and frees everything.
fn vtd_generic_domains() -> TestResult {
    use iommu::{DeviceId, DomainKind, Iommu, Perms};
    let edus = edu_devices();
    let Some(&(dev, rid)) = edus.first() else { return Err(ktest::TestError::Skipped("no edu device".into())) };
    let edu = open_edu(dev)?;
    let other = match edus.get(1) {
        Some(&(d, r)) => Some((open_edu(d)?, r)),
        None => None,
    };
    let frames: alloc::vec::Vec<u64> = (0..3).filter_map(|_| kcore::mm::alloc_frame()).collect();
    let outcome = with_vtd(|v| {
        check_eq!(frames.len(), 3);
        check!(!v.translating(), "the registered unit is in use");
        let live0 = domain_frames(v);
        let dev_id = DeviceId(u32::from(rid));
        check!(v.devices().contains(&rid), "edu {rid:#06x} is not in the unit's device list {:?}", v.devices());
        let u: &mut dyn Iommu = v;
        let info = u.info();
        check!(info.kind == iommu::UnitKind::Vtd && info.page_sizes & 0x1000 != 0 && info.aperture.1 >= 0xFFFF_FFFF);
        log::info!(
            "vtd generic: aperture {:#x}-{:#x}, page sizes {:#x}, native identity {}",
            info.aperture.0,
            info.aperture.1,
            info.page_sizes,
            info.native_identity
        );
        let (src, dst, canary) = (frames[0], frames[1], frames[2]);
        for (i, b) in (0..4096u64).map(|i| (i, (i * 5 + 1) as u8)) {
            // SAFETY: `src` is our frame in the direct map.
            unsafe { ((kcore::mm::phys_to_virt(src) + i) as *mut u8).write_volatile(b) };
        }
        // Identity: physical addresses work as IOVAs.
        let ident = u.domain_alloc(DomainKind::Identity).map_err(iommu_err)?;
        u.attach(dev_id, ident).map_err(iommu_err)?;
        check_eq!(u.attached(dev_id), Some(ident));
        fill(dst, 0);
        edu.dma(src, 4096, false)?;
        edu.dma(dst, 4096, true)?;
        check!(frame_bytes(dst) == frame_bytes(src), "identity domain: data did not arrive");
        check!(u.drain_faults().is_empty(), "identity domain: unexpected fault");
        // A device nobody attached sits in the default identity domain.
        if let Some((e1, _)) = &other {
            fill(dst, 0);
            e1.dma(src, 4096, false)?;
            e1.dma(dst, 4096, true)?;
            check!(frame_bytes(dst) == frame_bytes(src), "an unattached device lost its DMA");
        }
        // Blocked: nothing gets through, one decoded fault.
        let blocked = u.domain_alloc(DomainKind::Blocked).map_err(iommu_err)?;
        u.attach(dev_id, blocked).map_err(iommu_err)?;
        fill(canary, 0xCC);
        edu.dma(canary, 4096, true)?;
        check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "a blocked device wrote memory");
        let faults = u.drain_faults();
        check!(
            faults.len() == 1 && faults[0].device == dev_id && faults[0].address == canary && faults[0].write,
            "blocked: {faults:?}"
        );
        log::info!("vtd generic: blocked: {}", faults[0]);
        // A second device faulting while the one recording register is full
        // is an overflow (FSTS.PFO): counted, and the first fault is still there.
        if let Some((e1, r1)) = &other {
            u.attach(DeviceId(u32::from(*r1)), blocked).map_err(iommu_err)?;
            edu.dma(canary, 4096, true)?;
            e1.dma(canary, 4096, true)?;
            check!(frame_bytes(canary).iter().all(|&b| b == 0xCC), "a blocked device wrote memory");
            let v = u.as_any_mut().downcast_mut::<vtd::VtdIommu<kcore::iommu::KernelTables>>();
            let before = v.map_or(0, |v| v.unit.fault_overflows.load(core::sync::atomic::Ordering::Relaxed));
            let f = u.drain_faults();
            let v = u.as_any_mut().downcast_mut::<vtd::VtdIommu<kcore::iommu::KernelTables>>();
            let after = v.map_or(0, |v| v.unit.fault_overflows.load(core::sync::atomic::Ordering::Relaxed));
            check!(f.len() == 1 && f[0].device == dev_id, "with overflow: {f:?}");
            check_eq!(after, before + 1);
            u.detach(DeviceId(u32::from(*r1))).map_err(iommu_err)?;
        }
        // Paging: translated, and after unmap + flush the IOVA faults.
        let paging = u.domain_alloc(DomainKind::Paging).map_err(iommu_err)?;
        u.map(paging, 0x10_0000, src, 4096, Perms::READ).map_err(iommu_err)?;
        u.map(paging, 0x20_0000, dst, 4096, Perms::READ | Perms::WRITE).map_err(iommu_err)?;
        check_eq!(u.iova_to_phys(paging, 0x20_0010), Some(dst + 0x10));
        check!(matches!(u.map(paging, 1 << 60, src, 4096, Perms::READ), Err(iommu::Error::OutOfAperture { .. })));
        check!(matches!(u.map(blocked, 0, src, 4096, Perms::READ), Err(iommu::Error::NotPaging(_))));
        u.attach(dev_id, paging).map_err(iommu_err)?;
        check_eq!(u.domain_free(paging), Err(iommu::Error::Busy(paging)));
        fill(dst, 0);
        edu.dma(0x10_0000, 4096, false)?;
        edu.dma(0x20_0000, 4096, true)?;
        check!(frame_bytes(dst) == frame_bytes(src), "paging domain: data did not arrive");
        check_eq!(iommu::unmap_and_flush(u, paging, 0x20_0000, 4096), Ok(4096));
        fill(dst, 0x5A);
        edu.dma(0x20_0000, 4096, true)?;
        let stale = u.drain_faults();
        check!(stale.len() == 1 && stale[0].address == 0x20_0000, "after unmap + flush: {stale:?}");
        check!(frame_bytes(dst).iter().all(|&b| b == 0x5A), "DMA reached an unmapped page");
        // Back to the default: translation goes off with the last device.
        u.detach(dev_id).map_err(iommu_err)?;
        check_eq!(u.attached(dev_id), None);
        for d in [ident, blocked, paging] {
            u.domain_free(d).map_err(iommu_err)?;
        }
        check_eq!(u.domain_free(paging), Err(iommu::Error::NoSuchDomain(paging)));
        check!(!v.translating());
        let now = domain_frames(v);
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    });
    for f in frames {
        let _ = kcore::mm::free_frame(f);
    }
    for (d, _) in &edus {
        close_edu(d);
    }
    outcome
}

/// RMRR: a device the firmware names in an RMRR finds that region mapped 1:1
/// in a fresh paging domain (its DMA there lands in memory the kernel kept out
/// of the frame allocator), while any other IOVA faults.
fn vtd_rmrr_identity_mapped() -> TestResult {
    use iommu::{DeviceId, DomainKind, Iommu, ReservedKind};
    let edus = edu_devices();
    let found = kcore::iommu::with_units(|units| {
        edus.iter().find_map(|&(d, rid)| {
            units
                .iter()
                .find_map(|u| {
                    u.reserved_regions(DeviceId(u32::from(rid))).into_iter().find(|r| r.kind == ReservedKind::DirectMap)
                })
                .map(|r| (d, rid, r))
        })
    });
    let Some((dev, rid, region)) = found else {
        return Err(ktest::TestError::Skipped("no RMRR names an edu device".into()));
    };
    let edu = open_edu(dev)?;
    let src = kcore::mm::alloc_frame().ok_or_else(|| ktest::TestError::Failed("no frame".into()))?;
    let outcome = with_vtd(|v| {
        check!(!v.translating(), "the registered unit is in use");
        let live0 = domain_frames(v);
        let u: &mut dyn Iommu = v;
        let dev_id = DeviceId(u32::from(rid));
        let d = u.domain_alloc(DomainKind::Paging).map_err(iommu_err)?;
        u.map(d, 0x10_0000, src, 4096, iommu::Perms::READ).map_err(iommu_err)?;
        u.attach(dev_id, d).map_err(iommu_err)?;
        check_eq!(u.iova_to_phys(d, region.start), Some(region.start));
        check_eq!(u.iova_to_phys(d, region.end & !0xFFF), Some(region.end & !0xFFF));
        for i in 0..4096u64 {
            // SAFETY: `src` is our frame in the direct map.
            unsafe { ((kcore::mm::phys_to_virt(src) + i) as *mut u8).write_volatile((i * 3) as u8) };
        }
        // SAFETY: the RMRR region is RAM the kernel reserved at boot (never handed out) and is reached through the direct map; only this test touches it.
        let rmrr = unsafe { core::slice::from_raw_parts_mut(kcore::mm::phys_to_virt(region.start) as *mut u8, 4096) };
        rmrr.fill(0);
        edu.dma(0x10_0000, 4096, false)?;
        edu.dma(region.start, 4096, true)?;
        check!(rmrr == frame_bytes(src), "DMA to the RMRR region did not land 1:1");
        check!(u.drain_faults().is_empty(), "unexpected fault");
        edu.dma(region.end + 1 + 0x10_0000, 4096, true)?;
        check_eq!(u.drain_faults().len(), 1);
        u.detach(dev_id).map_err(iommu_err)?;
        u.domain_free(d).map_err(iommu_err)?;
        let now = domain_frames(v);
        check!(now == live0, "VT-d table frames: {live0} before, {now} after");
        Ok(())
    });
    let _ = kcore::mm::free_frame(src);
    close_edu(dev);
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

ktest::suite!(
    pub IOMMU = "iommu",
    [
        vtd_edu_dma_through_a_domain,
        vtd_large_pages_high_iovas_and_isolation,
        vtd_queue_error_reported,
        vtd_generic_domains,
        vtd_rmrr_identity_mapped
    ]
);

/// The suites of this crate for the boot binary.
pub static SUITES: &[&ktest::Suite] = &[&ARCH, &IOMMU];
