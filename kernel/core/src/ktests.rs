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
    if crate::task::programs().iter().all(|p| p.name != "hello") {
        return Err(ktest::TestError::Skipped("program hello not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let exit = crate::task::run("hello");
    check_eq!(exit, Ok(crate::UserExit::Exited(0)));
    check_eq!(mm::frame_counts().0, free_before);
    check_eq!(crate::task::run("no-such-program"), Err(crate::task::SpawnError::NotFound));
    Ok(())
}

/// A user task that faults is killed and the kernel goes on (and can run the next task).
fn task_fault_kills_only_the_task() -> TestResult {
    if crate::task::programs().iter().all(|p| p.name != "fault") {
        return Err(ktest::TestError::Skipped("program fault not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let exit = crate::task::run("fault");
    check!(matches!(exit, Ok(crate::UserExit::Killed { addr: 0x10, .. })), "got {exit:?}");
    check_eq!(mm::frame_counts().0, free_before);
    check_eq!(crate::task::run("hello"), Ok(crate::UserExit::Exited(0)));
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
    if crate::task::programs().iter().all(|p| p.name != "spin") {
        return Err(ktest::TestError::Skipped("program spin not packed".into()));
    }
    let (free_before, _) = mm::frame_counts();
    let before = crate::task::SWITCHES.load(core::sync::atomic::Ordering::Relaxed);
    let a = crate::task::spawn("spin");
    let f = crate::task::spawn("fault");
    let b = crate::task::spawn("spin");
    check!(a.is_ok() && b.is_ok() && f.is_ok());
    let exits = crate::task::run_until(&[a.unwrap_or(0), f.unwrap_or(0), b.unwrap_or(0)]);
    check_eq!(exits[0], crate::UserExit::Exited(0));
    check!(matches!(exits[1], crate::UserExit::Killed { addr: 0x10, .. }), "fault task: {:?}", exits[1]);
    check_eq!(exits[2], crate::UserExit::Exited(0));
    let switches = crate::task::SWITCHES.load(core::sync::atomic::Ordering::Relaxed) - before;
    // Each spins 60 ms against a 20 ms quantum; without preemption there are exactly 2 switches.
    check!(switches >= 3, "only {switches} context switches: no preemption");
    check_eq!(mm::frame_counts().0, free_before);
    Ok(())
}

ktest::suite!(pub CORE = "core", [
    frames_no_double_handout,
    frames_all_freed_come_back,
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
        match crate::task::run("ioas-leaker") {
            Ok(crate::platform::UserExit::Exited(0)) => Ok(()),
            other => Err(ktest::TestError::Failed(alloc::format!("ioas-leaker: {other:?}"))),
        }
    };
    run()?;
    let (free, _) = crate::mm::frame_counts();
    run()?;
    check_eq!(crate::ioas::pinned_frames(), 0);
    let (after, _) = crate::mm::frame_counts();
    check!(after == free, "free frames {free} before, {after} after: {} lost", free as i64 - after as i64);
    Ok(())
}

ktest::suite!(pub IOAS = "ioas", [task_exit_releases_everything]);

#[cfg(feature = "ktest-selfcheck")]
ktest::suite!(pub SELFCHECK = "selfcheck", [must_fail]);

/// The suites of this crate for the boot binary.
#[cfg(feature = "ktest-selfcheck")]
pub static SUITES: &[&ktest::Suite] = &[&CORE, &IOAS, &SELFCHECK];
/// The suites of this crate for the boot binary.
#[cfg(not(feature = "ktest-selfcheck"))]
pub static SUITES: &[&ktest::Suite] = &[&CORE, &IOAS];
