//! The portable kernel core: frames, heap, kernel mappings, logging, the boot
//! flow and the core kernel tests. Architecture specifics arrive through the
//! [`Platform`] traits, implemented by each board (`boards/pc`, `boards/virt`).
//!
//! Boot flow ([`start`]): logger → memory map → frame allocator → heap →
//! interrupts and timer → summary → kernel tests (when the command line asks
//! for them with `ktest=all` or `ktest=<filter>`) → exit.
//!
//! Modules, bottom up (each names only modules listed before it;
//! `cargo xtask layers` checks there is no import circle):
//! - leaves: [`platform`](mod@platform) (the board's traits), [`frames`], [`cpu`] (the
//!   running task), [`user_layout`], [`limits`], [`irq_slots`], [`console`];
//! - memory: [`fail_nth`], [`mm`], [`heap`], [`pins`];
//! - firmware and devices: [`acpi`], [`pci`], [`iommu`] (the unit registry);
//! - task support: [`claims`] (device claims), [`dma`] (pinned task memory,
//!   kcore's `iommufd::Memory`), [`loader`] (packed programs, ELF checks);
//! - [`scheduler`] (tasks, switching, a task's end), [`user_access`];
//! - [`syscalls`] (one module per family), [`task`] (the boards' entry
//!   points); [`backtrace`], [`edu`] and [`ktests`] for diagnostics and tests.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod backtrace;
pub mod claims;
pub mod console;
pub mod cpu;
pub mod dma;
pub mod edu;
pub mod fail_nth;
pub mod frames;
pub mod heap;
pub mod iommu;
pub mod irq_slots;
pub mod ktests;
pub mod limits;
pub mod loader;
pub mod mm;
pub mod pci;
pub mod pins;
pub mod platform;
pub mod scheduler;
pub mod shared_unit;
pub mod smp;
pub mod syscalls;
pub mod task;
pub mod user_access;
pub mod user_layout;

pub use platform::{
    Arch, Clock, Console, DeviceIrqs, EcamHost, Interrupts, IommuBringup, KernelSpace, MapError, PageAttr, PciHosts,
    Platform, Power, Smp, StackWalk, TaskSwitch, UserExit, UserPerms, UserRuns, UserSpace,
};

use bootinfo::{BootInfo, FirmwareTables, MemoryKind};

static PLATFORM: spin::Once<&'static dyn Platform> = spin::Once::new();
static CMDLINE: spin::Once<alloc::string::String> = spin::Once::new();
/// The boot information the kernel started with (kept for tests and diagnostics).
static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// The boot information the kernel started with, once `start` has run.
pub fn boot_info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

/// Value of `key=value` on the kernel command line.
pub fn cmdline_value(key: &str) -> Option<&'static str> {
    CMDLINE.get()?.split_ascii_whitespace().find_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// The running platform. Panics only if called before [`start`], which is a kernel bug.
pub fn platform() -> &'static dyn Platform {
    *PLATFORM.get().expect("kcore::platform() used before kcore::start()")
}

/// The running platform, if [`start`] has registered it.
pub fn try_platform() -> Option<&'static dyn Platform> {
    PLATFORM.get().copied()
}

/// Registers the platform early (before [`start`]) so that exception handlers can log.
pub fn register_platform(p: &'static dyn Platform) {
    PLATFORM.call_once(|| p);
}

/// Prints a line on the console (not through `log`): KTAP and raw reports.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Usable => "usable",
        MemoryKind::Reserved => "reserved",
        MemoryKind::AcpiReclaimable => "acpi-reclaimable",
        MemoryKind::AcpiNvs => "acpi-nvs",
        MemoryKind::Bad => "bad",
    }
}

/// Reads and checks the `BootInfo` a separate loader (UEFI) left at physical
/// address `pa`, then records the kernel image range `image` the kernel knows
/// from its own linker symbols. Called before the heap exists.
pub fn boot_handoff(pa: u64, image: (u64, u64)) -> Result<BootInfo, bootinfo::HandoffError> {
    if pa == 0 || !pa.is_multiple_of(8) {
        return Err(bootinfo::HandoffError::Invalid("hand-off address is null or misaligned"));
    }
    let va = mm::phys_to_virt(pa) as *const u8;
    // SAFETY: the loader put the hand-off in RAM it owns (below 512 GiB, covered by the boot direct map) and nothing writes it while the kernel reads; the length is exactly one BootInfo.
    let bytes = unsafe { core::slice::from_raw_parts(va, core::mem::size_of::<BootInfo>()) };
    let mut boot = BootInfo::from_handoff(bytes)?;
    boot.kernel_image = bootinfo::PhysRange { start: image.0, end: image.1 };
    Ok(boot)
}

/// The kernel's main function, called by each boot path once the CPU runs in
/// the kernel's address space with a stack, a console and exception vectors.
///
/// `suites` are the kernel test suites linked into this image, one slice per crate.
pub fn start(boot: &BootInfo, platform: &'static dyn Platform, suites: &[&[&ktest::Suite]]) -> ! {
    register_platform(platform);
    console::init(boot.cmdline_value("log"));
    log::info!("portcullis: kernel_main on {} (loader {})", platform.arch(), boot.loader());
    log::info!("cmdline: \"{}\"", boot.cmdline());
    if boot.cmdline_value("bootinfo.truncated") == Some("1") {
        // Memory the map leaves out is never handed out, so this costs RAM, not safety.
        log::warn!(
            "boot: the loader's memory map had more than {} regions; the rest is ignored",
            bootinfo::MAX_MEMORY_REGIONS
        );
    }
    for r in boot.regions() {
        log::info!("memory: {:#018x}-{:#018x} {}", r.base, r.end().saturating_sub(1), kind_name(r.kind));
    }
    log::info!("kernel image: {:#x}-{:#x}", boot.kernel_image.start, boot.kernel_image.end);
    let ok = match boot_core(boot, platform) {
        Ok(()) => {
            crash_test(boot);
            log::info!("user programs: {}", packed_programs());
            let init_ok = boot.cmdline_value("init").is_none_or(run_init);
            init_ok && run_tests(boot, suites)
        }
        Err(e) => {
            log::error!("boot failed: {e}");
            false
        }
    };
    smp::log_spread();
    log::info!("portcullis: exit {}", if ok { "success" } else { "failure" });
    platform.exit(ok)
}

/// The names of the packed programs, for messages.
fn packed_programs() -> alloc::string::String {
    let names: alloc::vec::Vec<&str> = loader::programs().iter().map(|p| p.name).collect();
    if names.is_empty() {
        "none packed".into()
    } else {
        names.join(", ")
    }
}

/// `init=a,b`: runs the programs one after the other, each to its exit, and
/// reports how each ended. One that fails (a non-zero status, a kill, a name
/// no program has) does not stop the next; true when every one exited 0.
fn run_init(list: &str) -> bool {
    let names: alloc::vec::Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        log::error!("init: no program named (init=NAME[,NAME...]); user programs: {}", packed_programs());
        return false;
    }
    let mut failed = alloc::vec::Vec::new();
    for &name in &names {
        let ok = match scheduler::run(name) {
            Ok(UserExit::Exited(0)) => true,
            Ok(UserExit::Exited(status)) => {
                log::error!("init {name}: exited with status {status}");
                false
            }
            Ok(UserExit::Killed { reason, .. }) => {
                log::error!("init {name}: killed: {reason}");
                false
            }
            Err(loader::SpawnError::NotFound) => {
                log::error!("init {name}: no such program; user programs: {}", packed_programs());
                false
            }
            Err(e) => {
                log::error!("init {name}: cannot start: {e}");
                false
            }
        };
        if !ok {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        log::info!("init: {} of {} programs exited 0", names.len(), names.len());
    } else {
        log::error!("init: {} of {} programs failed: {}", failed.len(), names.len(), failed.join(", "));
    }
    failed.is_empty()
}

fn boot_core(boot: &BootInfo, platform: &'static dyn Platform) -> Result<(), &'static str> {
    mm::init_frames(boot).map_err(|e| {
        log::error!("frames: {e}");
        "frame allocator"
    })?;
    let ram = boot.usable_bytes();
    heap::init(heap::heap_size_for(ram))?;
    // Without the table (no contiguous run of frames for it) the kernel
    // still boots; DMA mappings are then refused (`ENOMEM`).
    if let Err(e) = dma::init_pins() {
        log::error!("{e}: DMA mappings will be refused");
    }
    CMDLINE.call_once(|| alloc::string::String::from(boot.cmdline()));
    BOOT_INFO.call_once(|| boot.clone());
    platform.init_interrupts(boot)?;
    platform.enable_interrupts();
    pci::init(platform.pci_hosts(boot));
    pci::init_topology(boot);
    iommu::init(boot);
    smp::start(boot);
    let (free, total) = mm::frame_counts();
    let (_, heap_free) = heap::usage();
    let firmware = match boot.firmware() {
        FirmwareTables::Acpi { rsdp } => alloc::format!("acpi rsdp={rsdp:#x}"),
        FirmwareTables::DeviceTree { dtb } => alloc::format!("devicetree dtb={dtb:#x}"),
        FirmwareTables::None => alloc::string::String::from("none"),
    };
    log::info!(
        "summary: arch={} ram={} MiB free_frames={free}/{total} heap={} KiB timer_hz={} firmware=\"{firmware}\"",
        platform.arch(),
        ram >> 20,
        heap_free >> 10,
        platform.timer_hz(),
    );
    Ok(())
}

/// `crashtest=page-fault` or `crashtest=panic` on the command line crashes the
/// kernel on purpose, so the test suite can check the exception report path.
fn crash_test(boot: &BootInfo) {
    match boot.cmdline_value("crashtest") {
        Some("page-fault") => {
            let (start, size) = platform().dynamic_window();
            // The last page of the dynamic window is never handed out.
            let addr = start + size - 8;
            log::warn!("crashtest: reading unmapped address {addr:#x}");
            // SAFETY: deliberately faulting access; the exception handler reports it and ends the run, so execution never continues past this read.
            let value = unsafe { (addr as *const u64).read_volatile() };
            log::error!("crashtest: read {value:#x} from an unmapped address: no fault was raised");
        }
        Some("panic") => panic!("crashtest: deliberate panic"),
        Some(other) => log::warn!("crashtest: unknown kind {other:?} (page-fault, panic)"),
        None => {}
    }
}

fn run_tests(boot: &BootInfo, suites: &[&[&ktest::Suite]]) -> bool {
    let suites: alloc::vec::Vec<&ktest::Suite> = suites.iter().flat_map(|s| s.iter().copied()).collect();
    let Some(filter) = boot.cmdline_value("ktest") else {
        log::info!("ktest: not requested (boot with ktest=all or ktest=<filter>)");
        return true;
    };
    let mut out = console::Console;
    let result = ktest::run(&suites, filter, &mut out, &mut |name| log::debug!("ktest: running {name}"));
    let kernel_ok = matches!(result, Ok(summary) if summary.ok());
    // User test programs print their own KTAP documents.
    let user_ok = scheduler::run_user_tests(filter);
    kernel_ok && user_ok
}

/// The kernel panic handler: location, message, backtrace, failure exit.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print_unlocked(format_args!("\nPANIC: {info}\n"));
    backtrace::print_here();
    match try_platform() {
        Some(p) => p.exit(false),
        None => loop {
            core::hint::spin_loop();
        },
    }
}
