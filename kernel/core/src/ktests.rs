//! Kernel tests of the portable core, run on every architecture.

use crate::frames::FRAME_SIZE;
use crate::{mm, platform, PageAttr};
use alloc::boxed::Box;
use alloc::vec::Vec;
use ktest::{check, check_eq, TestResult};

/// Frames handed out are distinct, aligned, not in the kernel image, and writable.
fn frames_no_double_handout() -> TestResult {
    let (before, _) = mm::frame_counts();
    let mut got = Vec::new();
    for _ in 0..256 {
        let pa = mm::alloc_frame();
        check!(pa.is_some(), "allocation failed with {} frames free", mm::frame_counts().0);
        got.push(pa.unwrap_or_default());
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    check_eq!(sorted.len(), got.len());
    for &pa in &got {
        check_eq!(pa % FRAME_SIZE, 0);
        let va = mm::phys_to_virt(pa) as *mut u64;
        // SAFETY: the frame was just allocated for this test and is in the direct map.
        unsafe { va.write_volatile(pa) };
    }
    for &pa in &got {
        // SAFETY: as above; the frame is still ours.
        let v = unsafe { (mm::phys_to_virt(pa) as *const u64).read_volatile() };
        check_eq!(v, pa);
        check!(mm::free_frame(pa).is_ok());
    }
    check_eq!(mm::frame_counts().0, before);
    Ok(())
}

/// Every freed frame comes back; double frees are refused; contiguous runs are aligned.
fn frames_all_freed_come_back() -> TestResult {
    let (before, _) = mm::frame_counts();
    let run = mm::alloc_frames(16, 16);
    check!(run.is_some());
    let run = run.unwrap_or_default();
    check_eq!(run % (16 * FRAME_SIZE), 0);
    check_eq!(mm::frame_counts().0, before - 16);
    for i in 0..16 {
        check!(mm::free_frame(run + i * FRAME_SIZE).is_ok());
    }
    check!(mm::free_frame(run).is_err(), "double free accepted");
    check_eq!(mm::frame_counts().0, before);
    Ok(())
}

/// Firmware memory in the boot memory map (reserved, ACPI reclaimable and NVS
/// — under UEFI also runtime services), the firmware tables and the kernel
/// image are never handed out; loader memory (usable under UEFI) is.
fn frames_firmware_memory_never_handed_out() -> TestResult {
    let boot = crate::boot_info().ok_or_else(|| ktest::TestError::Failed("no boot info kept".into()))?;
    let mut checked = 0;
    for r in boot.regions().iter().filter(|r| r.kind != bootinfo::MemoryKind::Usable) {
        let last = (r.end() - 1) & !(FRAME_SIZE - 1);
        for pa in [r.base & !(FRAME_SIZE - 1), (r.base + r.size / 2) & !(FRAME_SIZE - 1), last] {
            check!(
                mm::frame_unavailable(pa),
                "frame {pa:#x} of {:?} region {:#x}+{:#x} is allocatable",
                r.kind,
                r.base,
                r.size
            );
            checked += 1;
        }
    }
    let tables = match boot.firmware() {
        bootinfo::FirmwareTables::Acpi { rsdp } => Some(rsdp),
        bootinfo::FirmwareTables::DeviceTree { dtb } => Some(dtb),
        bootinfo::FirmwareTables::None => None,
    };
    if let Some(pa) = tables {
        check!(mm::frame_unavailable(pa), "the firmware tables at {pa:#x} are allocatable");
    }
    for pa in (boot.kernel_image.start..boot.kernel_image.end).step_by(FRAME_SIZE as usize) {
        check!(mm::frame_unavailable(pa), "kernel image frame {pa:#x} is allocatable");
    }
    // And what the allocator hands out lies in usable RAM only.
    let mut got = Vec::new();
    for _ in 0..64 {
        let Some(pa) = mm::alloc_frame() else { break };
        got.push(pa);
    }
    let outside = got.iter().find(|&&pa| {
        !boot.regions().iter().any(|r| r.kind == bootinfo::MemoryKind::Usable && r.base <= pa && pa < r.end())
    });
    let outside = outside.copied();
    for pa in got {
        check!(mm::free_frame(pa).is_ok());
    }
    check!(outside.is_none(), "frame {outside:#x?} handed out outside usable RAM");
    log::info!("frames: {checked} frames of firmware memory checked reserved (loader {})", boot.loader());
    Ok(())
}

/// The heap grows, keeps contents and returns memory.
fn heap_alloc_and_free() -> TestResult {
    let (used_before, _) = crate::heap::usage();
    {
        let mut v: Vec<u32> = Vec::new();
        for i in 0..100_000u32 {
            v.push(i.wrapping_mul(2_654_435_761));
        }
        check!(v.iter().enumerate().all(|(i, &x)| x == (i as u32).wrapping_mul(2_654_435_761)));
        let boxes: Vec<Box<[u8; 100]>> = (0..1000).map(|i| Box::new([i as u8; 100])).collect();
        check!(boxes.iter().enumerate().all(|(i, b)| b.iter().all(|&x| x == i as u8)));
    }
    check_eq!(crate::heap::usage().0, used_before);
    Ok(())
}

/// A kernel page mapped in the dynamic window reads the frame's contents; unmapping removes it.
fn mm_map_unmap_kernel_page() -> TestResult {
    let p = platform();
    let pa = mm::alloc_frame();
    check!(pa.is_some());
    let pa = pa.unwrap_or_default();
    // SAFETY: the frame is ours and in the direct map.
    unsafe { (mm::phys_to_virt(pa) as *mut u64).write_volatile(0x5eed_f00d_cafe_0001) };
    let va = mm::reserve_virtual(FRAME_SIZE);
    check!(va.is_ok());
    let va = va.unwrap_or_default();
    check_eq!(p.translate(va), None);
    check!(p.map_page(va, pa, PageAttr::Data).is_ok());
    check_eq!(p.map_page(va, pa, PageAttr::Data), Err(crate::MapError::AlreadyMapped(va)));
    check_eq!(p.translate(va + 8), Some(pa + 8));
    // SAFETY: `va` maps the frame we own (checked through translate above).
    let seen = unsafe { (va as *const u64).read_volatile() };
    check_eq!(seen, 0x5eed_f00d_cafe_0001);
    // SAFETY: as above; writing through the new mapping.
    unsafe { (va as *mut u64).add(1).write_volatile(7) };
    // SAFETY: the frame is ours; reading back through the direct map.
    let back = unsafe { (mm::phys_to_virt(pa) as *const u64).add(1).read_volatile() };
    check_eq!(back, 7);
    check_eq!(p.unmap_page(va), Ok(pa));
    check_eq!(p.translate(va), None);
    check_eq!(p.unmap_page(va), Err(crate::MapError::NotMapped(va)));
    check!(mm::free_frame(pa).is_ok());
    Ok(())
}

/// A breakpoint exception is caught, reported and returned from.
fn exceptions_breakpoint_returns() -> TestResult {
    let p = platform();
    let before = p.breakpoints_handled();
    p.trigger_breakpoint();
    check_eq!(p.breakpoints_handled(), before + 1);
    p.trigger_breakpoint();
    check_eq!(p.breakpoints_handled(), before + 2);
    Ok(())
}

/// The periodic timer interrupt fires and the tick count advances.
fn timer_ticks_advance() -> TestResult {
    let p = platform();
    let start = p.timer_ticks();
    let t0 = p.uptime_ns();
    // Bounded wait: at most 2 s of uptime for 3 ticks.
    while p.timer_ticks() < start + 3 && p.uptime_ns() - t0 < 2_000_000_000 {
        p.wait_for_interrupt();
    }
    let got = p.timer_ticks() - start;
    check!(got >= 3, "only {got} ticks in 2 s at {} Hz", p.timer_hz());
    let elapsed = p.uptime_ns() - t0;
    check!(elapsed > 0, "uptime did not advance");
    Ok(())
}

/// A user program runs in its own address space and exits with status 0.
fn task_user_program_runs_and_exits() -> TestResult {
    if crate::loader::programs().iter().all(|p| p.name != "hello") {
        return Err(ktest::TestError::Skipped("program hello not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let exit = crate::scheduler::run("hello");
    check_eq!(exit, Ok(crate::UserExit::Exited(0)));
    check_eq!(mm::frame_counts().0, free_before);
    check_eq!(crate::scheduler::run("no-such-program"), Err(crate::loader::SpawnError::NotFound));
    Ok(())
}

/// A user task that faults is killed and the kernel goes on (and can run the next task).
fn task_fault_kills_only_the_task() -> TestResult {
    if crate::loader::programs().iter().all(|p| p.name != "fault") {
        return Err(ktest::TestError::Skipped("program fault not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let exit = crate::scheduler::run("fault");
    check!(matches!(exit, Ok(crate::UserExit::Killed { addr: 0x10, .. })), "got {exit:?}");
    check_eq!(mm::frame_counts().0, free_before);
    check_eq!(crate::scheduler::run("hello"), Ok(crate::UserExit::Exited(0)));
    Ok(())
}

/// Maps BAR0 of an `edu` function and returns the address of its registers.
fn edu_registers(dev: &crate::pci::Device) -> Result<u64, ktest::TestError> {
    let bar = dev.function.bars.iter().find(|b| b.index == 0).copied();
    check!(bar.is_some_and(|b| b.base != 0 && b.size == 1 << 20), "{}: BAR0 not assigned: {bar:?}", dev.function.bdf);
    let bar = bar.ok_or_else(|| ktest::TestError::Failed("no BAR0".into()))?;
    let regs = crate::mm::map_mmio(crate::pci::bar_cpu_address(dev, &bar), 0x100);
    check!(regs.is_ok(), "cannot map {}", dev.function.bdf);
    Ok(regs.map(|m| m.va).unwrap_or(0))
}

/// PCI enumeration found every QEMU `edu` device (also behind bridges), their
/// BARs are assigned, and their registers answer through them: identity and
/// liveness (inverted echo) on each, a factorial on the first.
fn pci_edu_registers_through_bar() -> TestResult {
    let edus: Vec<&crate::pci::Device> =
        crate::pci::devices().iter().filter(|d| (d.function.vendor, d.function.device) == (0x1234, 0x11E8)).collect();
    if edus.is_empty() {
        return Err(ktest::TestError::Skipped("no edu device (add -device edu)".into()));
    }
    for (i, dev) in edus.iter().enumerate() {
        let va = edu_registers(dev)?;
        let reg = |off: u64| (va + off) as *mut u32;
        // SAFETY: `va` maps the edu BAR (device memory); offsets are edu registers (QEMU docs/specs/edu.rst).
        let id = unsafe { reg(0).read_volatile() };
        check_eq!(id, 0x0100_00ED);
        let probe = 0x1234_5678 ^ i as u32;
        // SAFETY: as above; 0x04 is the liveness register.
        let echo = unsafe {
            reg(4).write_volatile(probe);
            reg(4).read_volatile()
        };
        check_eq!(echo, !probe);
        if i == 0 {
            // SAFETY: as above; 0x08 starts a factorial, 0x20 bit 0 is "computing".
            unsafe { reg(8).write_volatile(10) };
            let t0 = platform().uptime_ns();
            // SAFETY: as above.
            while unsafe { reg(0x20).read_volatile() } & 1 != 0 && platform().uptime_ns() - t0 < 1_000_000_000 {
                core::hint::spin_loop();
            }
            // SAFETY: as above.
            let fact = unsafe { reg(8).read_volatile() };
            check_eq!(fact, 0x0037_5F00);
        }
    }
    Ok(())
}

/// Two tasks that never yield both finish, interleaved by timer preemption,
/// while a third task faults and is killed without disturbing them.
fn task_preemptive_round_robin() -> TestResult {
    if crate::loader::programs().iter().all(|p| p.name != "spin") {
        return Err(ktest::TestError::Skipped("program spin not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let before = crate::scheduler::SWITCHES.load(core::sync::atomic::Ordering::Relaxed);
    let a = crate::scheduler::spawn("spin");
    let f = crate::scheduler::spawn("fault");
    let b = crate::scheduler::spawn("spin");
    check!(a.is_ok() && b.is_ok() && f.is_ok());
    let exits = crate::scheduler::run_until(&[a.unwrap_or(0), f.unwrap_or(0), b.unwrap_or(0)]);
    check_eq!(exits[0], crate::UserExit::Exited(0));
    check!(matches!(exits[1], crate::UserExit::Killed { addr: 0x10, .. }), "fault task: {:?}", exits[1]);
    check_eq!(exits[2], crate::UserExit::Exited(0));
    let switches = crate::scheduler::SWITCHES.load(core::sync::atomic::Ordering::Relaxed) - before;
    // Each spins 60 ms against a 20 ms quantum; without preemption there are exactly 2 switches.
    check!(switches >= 3, "only {switches} context switches: no preemption");
    check_eq!(mm::frame_counts().0, free_before);
    Ok(())
}

ktest::suite!(pub CORE = "core", [
    frames_no_double_handout,
    frames_all_freed_come_back,
    frames_firmware_memory_never_handed_out,
    heap_alloc_and_free,
    mm_map_unmap_kernel_page,
    exceptions_breakpoint_returns,
    timer_ticks_advance,
    pci_edu_registers_through_bar,
    task_user_program_runs_and_exits,
    task_fault_kills_only_the_task,
    task_preemptive_round_robin,
]);

/// A test that must fail: proves that a failing kernel test fails the suite.
#[cfg(feature = "ktest-selfcheck")]
fn must_fail() -> TestResult {
    check!(1 + 1 == 3, "selfcheck: this test fails on purpose");
    Ok(())
}

/// A task that exits with IOAS state (mappings, a copy, an attached device,
/// a DMA-mapped page it unmapped itself) leaves nothing behind: every pin is
/// dropped and the free-frame count is back where it was (measured after one
/// warm-up run, so structures the drivers keep for good are not counted).
fn task_exit_releases_everything() -> TestResult {
    let run = || -> Result<(), ktest::TestError> {
        match crate::scheduler::run("ioas-leaker") {
            Ok(crate::platform::UserExit::Exited(0)) => Ok(()),
            other => Err(ktest::TestError::Failed(alloc::format!("ioas-leaker: {other:?}"))),
        }
    };
    run()?;
    let (free, _) = crate::mm::frame_counts();
    run()?;
    check_eq!(crate::dma::pinned_frames(), 0);
    let (after, _) = crate::mm::frame_counts();
    check!(after == free, "free frames {free} before, {after} after: {} lost", free as i64 - after as i64);
    Ok(())
}

/// Registered units of the kinds no architecture crate has its own tests for
/// (AMD-Vi, virtio-iommu), with the device ID their first edu has there.
pub fn units_without_arch_tests() -> Vec<(usize, iommu::UnitKind)> {
    crate::iommu::with_units(|units| {
        units
            .iter()
            .enumerate()
            .map(|(i, u)| (i, u.info().kind))
            .filter(|(_, k)| matches!(k, iommu::UnitKind::AmdVi | iommu::UnitKind::VirtioIommu))
            .collect()
    })
}

/// Whether a unit kind records DMA faults where the tests can see them: QEMU
/// 10's AMD-Vi never writes its event log (QEMU.md G2).
fn records_faults(kind: iommu::UnitKind) -> bool {
    kind != iommu::UnitKind::AmdVi
}

/// The first edu behind registered unit `unit`, its device ID, and the edu opened.
pub fn edu_behind(
    unit: usize,
) -> Result<(&'static crate::pci::Device, iommu::DeviceId, crate::edu::Edu), ktest::TestError> {
    let topo = crate::iommu::topology_index(unit);
    for (dev, rid) in crate::edu::devices() {
        let Some(t) = crate::pci::topology().and_then(|t| t.translate_pci(0, rid)) else { continue };
        if Some(t.unit) == topo {
            return Ok((dev, iommu::DeviceId(t.id), crate::edu::open(dev)?));
        }
    }
    Err(ktest::TestError::Skipped("no edu behind the unit".into()))
}

/// The generic door (`edu::generic_domains`) on every AMD-Vi and
/// virtio-iommu unit: identity, blocked, paging, stale IOVA after unmap,
/// with faults checked where the unit records them; afterwards the unit
/// holds no more frames than before.
fn units_generic_domains() -> TestResult {
    let units = units_without_arch_tests();
    if units.is_empty() {
        return Err(ktest::TestError::Skipped("no AMD-Vi or virtio-iommu unit".into()));
    }
    for (unit, kind) in units {
        let (dev, id, edu) = edu_behind(unit)?;
        let others = crate::edu::devices();
        let other = match others.iter().find(|(d, _)| d.function.bdf != dev.function.bdf) {
            Some((d, _)) => Some(crate::edu::open(d)?),
            None => None,
        };
        let (free0, _) = mm::frame_counts();
        let frames: Vec<u64> = (0..3).filter_map(|_| mm::alloc_frame()).collect();
        check_eq!(frames.len(), 3);
        let report = crate::iommu::with_units(|u| {
            crate::edu::generic_domains(
                u[unit].as_mut(),
                id,
                &edu,
                other.as_ref(),
                [frames[0], frames[1], frames[2]],
                records_faults(kind),
            )
        });
        crate::edu::release(&frames, &others);
        let report = report?;
        log::info!(
            "{} generic: {} fault(s) for the blocked DMA, {} for the stale IOVA",
            kind.name(),
            report.blocked.len(),
            report.stale.len()
        );
        if let Some(f) = report.stale.first() {
            log::info!("{} generic: stale IOVA: {f}", kind.name());
        }
        let (free1, _) = mm::frame_counts();
        check!(free1 == free0, "{}: {free0} free frames before, {free1} after", kind.name());
    }
    Ok(())
}

/// On every AMD-Vi and virtio-iommu unit: a 2 MiB mapping above 4 GiB
/// carries edu's DMA, one unmap call costs one invalidation, and a second
/// edu in its own empty domain cannot reach the first one's buffer (memory
/// unchanged; a decoded fault naming it where the unit records faults).
fn units_large_pages_high_iovas_and_isolation() -> TestResult {
    use crate::edu::failed;
    use iommu::{DomainKind, Perms};
    let units = units_without_arch_tests();
    if units.is_empty() {
        return Err(ktest::TestError::Skipped("no AMD-Vi or virtio-iommu unit".into()));
    }
    for (unit, kind) in units {
        let (dev, id, e0) = edu_behind(unit)?;
        let edus = crate::edu::devices();
        let second = edus.iter().find(|(d, _)| d.function.bdf != dev.function.bdf);
        let big = mm::alloc_frames(512, 512).ok_or_else(|| ktest::TestError::Failed("no 2 MiB block".into()))?;
        let outcome = crate::iommu::with_units(|units| {
            let u = units[unit].as_mut();
            let high = 0x1_4000_0000; // above 4 GiB, inside every unit's aperture
            let d1 = u.domain_alloc(DomainKind::Paging).map_err(failed)?;
            u.map(d1, high, big, 2 << 20, Perms::READ | Perms::WRITE).map_err(failed)?;
            u.attach(id, d1).map_err(failed)?;
            let off = (1 << 20) + 0x1000;
            crate::edu::pattern(big + off, 13);
            e0.dma(high + off, 4096, false)?;
            e0.dma(high, 4096, true)?;
            check!(crate::edu::frame_bytes(big) == crate::edu::frame_bytes(big + off), "data wrong through 2 MiB");
            check!(u.drain_faults().is_empty());
            if let Some(&(d, rid)) = second {
                let id1 = crate::edu::device_id(rid).ok_or_else(|| ktest::TestError::Failed("no device ID".into()))?;
                let e1 = crate::edu::open(d)?;
                let d2 = u.domain_alloc(DomainKind::Paging).map_err(failed)?;
                u.attach(id1, d2).map_err(failed)?;
                crate::edu::fill(big, 0x77);
                e1.dma(high, 4096, true)?;
                let f = u.drain_faults();
                if records_faults(kind) {
                    check!(!f.is_empty() && f.iter().all(|f| f.device == id1 && f.address & !0xFFF == high), "{f:?}");
                    log::info!("{} isolation: {}", kind.name(), f[0]);
                } else {
                    check!(f.is_empty(), "{f:?}");
                }
                check!(
                    crate::edu::frame_bytes(big).iter().all(|&b| b == 0x77),
                    "the second edu reached the first one's buffer"
                );
                u.detach(id1).map_err(failed)?;
                u.domain_free(d2).map_err(failed)?;
                crate::edu::close(d);
            }
            let flushes = u.flushes();
            check_eq!(iommu::unmap_and_flush(u, d1, high, 2 << 20), Ok(2 << 20));
            check_eq!(u.flushes(), flushes + 1);
            u.detach(id).map_err(failed)?;
            u.domain_free(d1).map_err(failed)?;
            Ok(())
        });
        for i in 0..512 {
            let _ = mm::free_frame(big + i * FRAME_SIZE);
        }
        crate::edu::close(dev);
        outcome?;
    }
    Ok(())
}

ktest::suite!(
    pub IOMMU_GENERIC = "iommu-generic",
    [units_generic_domains, units_large_pages_high_iovas_and_isolation]
);

/// The hardware-specific door's user demo (`hw-vtd`): a task-owned stage 1
/// over a NEST_PARENT HWPT carries edu's DMA, a changed PTE takes effect after
/// `hwpt_invalidate`, a stray DMA and a PTE outside the parent are blocked
/// and read back from a fault queue. Reports what a shadow sync cost.
fn hw_vtd_program_passes() -> TestResult {
    if crate::iommu::with_units(|u| u.is_empty()) || crate::edu::devices().is_empty() {
        return Err(ktest::TestError::Skipped("no edu behind an IOMMU".into()));
    }
    match crate::scheduler::run("hw-vtd") {
        Ok(crate::platform::UserExit::Exited(0)) => Ok(()),
        other => Err(ktest::TestError::Failed(alloc::format!("hw-vtd: {other:?}"))),
    }
}

/// The SMMUv3 hardware-door demo (`hw-smmuv3`): the task's context
/// descriptor and stage-1 tables nested in hardware over a NEST_PARENT
/// (stage-2) HWPT, TLBI_NH_VA through `hwpt_invalidate`, an illegal command
/// refused in place, faults from a fault queue.
fn hw_smmuv3_program_passes() -> TestResult {
    let smmu = crate::iommu::with_units(|u| u.iter().any(|u| u.info().kind == iommu::UnitKind::Smmuv3));
    if !smmu || crate::edu::devices().is_empty() {
        return Err(ktest::TestError::Skipped("no edu behind an SMMUv3".into()));
    }
    match crate::scheduler::run("hw-smmuv3") {
        Ok(crate::platform::UserExit::Exited(0)) => Ok(()),
        other => Err(ktest::TestError::Failed(alloc::format!("hw-smmuv3: {other:?}"))),
    }
}

ktest::suite!(
    pub IOAS = "ioas",
    [task_exit_releases_everything, hw_vtd_program_passes, hw_smmuv3_program_passes]
);

#[cfg(feature = "ktest-selfcheck")]
ktest::suite!(pub SELFCHECK = "selfcheck", [must_fail]);

/// The suites of this crate for the boot binary.
#[cfg(feature = "ktest-selfcheck")]
pub static SUITES: &[&ktest::Suite] = &[&CORE, &IOMMU_GENERIC, &IOAS, &SELFCHECK];
/// The suites of this crate for the boot binary.
#[cfg(not(feature = "ktest-selfcheck"))]
pub static SUITES: &[&ktest::Suite] = &[&CORE, &IOMMU_GENERIC, &IOAS];
