//! x86_64 platform: the COM1 console, descriptor tables and exception entry,
//! kernel page tables, the local APIC timer (calibrated against the PIT), the I/O
//! APICs from the ACPI MADT (masked until a driver routes a line), the
//! TSC clock, the QEMU exit device, and the other CPUs (started from the
//! MADT with INIT-SIPI-SIPI, [`smp`]).
//!
//! Virtual memory layout (4-level paging, set up by `boot/x86_64`):
//! - `0xFFFF_8000_0000_0000` + phys: direct map of the first 512 GiB (1 GiB pages),
//! - `0xFFFF_C000_0000_0000`: dynamic window (MMIO, test pages; 4 KiB pages),
//! - `0xFFFF_FFFF_8000_0000` + phys: the kernel image (code model "kernel").
#![no_std]

extern crate alloc;

pub mod acpi;
pub mod apic;
pub mod exit;
pub mod gdt;
pub mod interrupts;
pub mod ioapic;
pub mod iommu;
pub mod ktests;
pub mod paging;
pub mod pit;
pub mod pvh;
pub mod serial;
pub mod smp;
pub mod tsc;
pub mod user;

use core::sync::atomic::Ordering;
use kcore::{MapError, PageAttr};

/// Offset of the direct map of physical memory.
pub const DIRECT_MAP: u64 = 0xFFFF_8000_0000_0000;
/// Start and size of the dynamic kernel window.
pub const DYNAMIC_WINDOW: (u64, u64) = (0xFFFF_C000_0000_0000, 1 << 39);

/// The x86_64 implementation of [`kcore::Platform`].
pub struct X86Platform;

/// The one platform instance.
pub static PLATFORM: X86Platform = X86Platform;

/// First steps after the switch to long mode: console, GDT/TSS, IDT.
pub fn early_init() {
    serial::init();
    match pit::calibrate_tsc() {
        Ok(hz) => tsc::set_frequency(hz),
        Err(pit::CalibrationTimeout) => serial::write_str("warning: PIT did not count; TSC clock unknown\n"),
    }
    gdt::init();
    interrupts::init_idt();
    user::init_syscalls();
    kcore::mm::set_direct_map(DIRECT_MAP);
    kcore::register_platform(&PLATFORM);
}

impl kcore::Arch for X86Platform {
    fn arch(&self) -> &'static str {
        "x86_64"
    }

    fn elf_machine(&self) -> u16 {
        kcore::loader::EM_X86_64
    }
}

impl kcore::Console for X86Platform {
    fn console_write(&self, text: &str) {
        serial::write_str(text);
    }

    fn console_read_byte(&self) -> Option<u8> {
        serial::try_read()
    }
}

impl kcore::Clock for X86Platform {
    fn uptime_ns(&self) -> u64 {
        tsc::uptime_ns()
    }

    fn timer_ticks(&self) -> u64 {
        interrupts::TICKS.load(Ordering::Relaxed)
    }

    fn timer_hz(&self) -> u32 {
        interrupts::TIMER_HZ
    }

    fn user_counter_hz(&self) -> Option<u64> {
        Some(tsc::frequency()).filter(|&hz| hz != 0)
    }
}

impl kcore::Interrupts for X86Platform {
    fn init_interrupts(&self, boot: &bootinfo::BootInfo) -> Result<(), &'static str> {
        pit::disable_legacy_pic();
        apic::map_and_enable(interrupts::SPURIOUS_VECTOR)?;
        match boot.firmware() {
            bootinfo::FirmwareTables::Acpi { rsdp } => {
                if ioapic::init(rsdp)? == 0 {
                    log::warn!("ioapic: the MADT lists no I/O APIC; legacy interrupts unavailable");
                }
            }
            _ => log::warn!("ioapic: no ACPI tables; legacy interrupts unavailable"),
        }
        let per_10ms = apic::calibrate_against_tsc()?;
        apic::start_periodic(per_10ms, interrupts::TIMER_HZ, interrupts::TIMER_VECTOR)
    }

    fn enable_interrupts(&self) {
        x86_64::instructions::interrupts::enable();
    }

    fn disable_interrupts(&self) {
        x86_64::instructions::interrupts::disable();
    }

    fn wait_for_interrupt(&self) {
        x86_64::instructions::interrupts::enable_and_hlt();
    }

    fn trigger_breakpoint(&self) {
        x86_64::instructions::interrupts::int3();
    }

    fn breakpoints_handled(&self) -> u64 {
        interrupts::BREAKPOINTS.load(Ordering::Relaxed)
    }
}

impl kcore::DeviceIrqs for X86Platform {
    fn route_device_irq(
        &self,
        f: &pci::Function,
        access: &dyn pci::ConfigAccess,
        slot: u32,
    ) -> Result<(), &'static str> {
        apic::route_msi(f, access, interrupts::DEVICE_VECTORS.start() + slot as u8)
    }

    fn unmask_device_irq(&self, _slot: u32) {}

    fn unroute_device_irq(&self, f: &pci::Function, access: &dyn pci::ConfigAccess, slot: u32) {
        apic::unroute_msi(f, access, interrupts::DEVICE_VECTORS.start() + slot as u8);
    }
}

impl kcore::KernelSpace for X86Platform {
    fn map_page(&self, va: u64, pa: u64, attr: PageAttr) -> Result<(), MapError> {
        paging::map_page(va, pa, attr)
    }

    fn unmap_page(&self, va: u64) -> Result<u64, MapError> {
        paging::unmap_page(va)
    }

    fn translate(&self, va: u64) -> Option<u64> {
        paging::translate(va)
    }

    fn dynamic_window(&self) -> (u64, u64) {
        DYNAMIC_WINDOW
    }
}

impl kcore::StackWalk for X86Platform {
    fn frame_pointer(&self) -> usize {
        let fp: usize;
        // SAFETY: reads rbp only; no memory access, no flags changed.
        unsafe { core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags)) };
        // This function has its own frame record (frame pointers are forced), which
        // dies when it returns: hand back the caller's frame pointer saved in it.
        // SAFETY: `fp` points at this function's live frame record on the stack.
        unsafe { (fp as *const usize).read_volatile() }
    }

    fn stack_ranges(&self) -> &[(usize, usize)] {
        gdt::stack_ranges()
    }
}

impl kcore::UserSpace for X86Platform {
    fn user_space_new(&self) -> Result<u64, MapError> {
        user::new_space()
    }

    fn user_map(&self, root: u64, va: u64, pa: u64, perms: kcore::UserPerms) -> Result<(), MapError> {
        user::map(root, va, pa, perms)
    }

    fn user_unmap(&self, root: u64, va: u64) -> Result<u64, MapError> {
        user::unmap(root, va)
    }

    fn user_walk(
        &self,
        root: u64,
        va: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, u64, kcore::UserPerms) -> bool,
    ) -> u64 {
        user::walk(root, va, end, f)
    }

    fn user_prune(&self, root: u64, start: u64, end: u64) {
        user::prune(root, start, end)
    }

    fn user_translate(&self, root: u64, va: u64) -> Option<(u64, kcore::UserPerms)> {
        user::translate(root, va)
    }

    fn user_space_free(&self, root: u64) {
        user::free_space(root)
    }
}

impl kcore::TaskSwitch for X86Platform {
    fn init_task_stack(&self, stack_top: u64, start: extern "C" fn() -> !) -> u64 {
        user::init_task_stack(stack_top, start)
    }

    unsafe fn context_switch(&self, save: *mut u64, load: u64) {
        // SAFETY: the caller upholds the trait's contract, which is this function's.
        unsafe { user::context_switch(save, load) }
    }

    fn activate_task(&self, root: u64, kernel_stack_top: u64) {
        user::activate_task(root, kernel_stack_top)
    }

    fn activate_kernel(&self) {
        user::activate_kernel()
    }

    fn enter_user(&self, entry: u64, user_sp: u64) -> ! {
        user::enter_user(entry, user_sp)
    }
}

impl kcore::PciHosts for X86Platform {
    fn pci_hosts(&self, boot: &bootinfo::BootInfo) -> alloc::vec::Vec<kcore::EcamHost> {
        match boot.firmware() {
            bootinfo::FirmwareTables::Acpi { rsdp } => kcore::acpi::pci_hosts(rsdp),
            _ => alloc::vec::Vec::new(),
        }
    }
}

impl kcore::IommuBringup for X86Platform {
    fn iommu_topology(&self, boot: &bootinfo::BootInfo, functions: &[pci::Function]) -> topology::Topology {
        match boot.firmware() {
            bootinfo::FirmwareTables::Acpi { rsdp } => acpi::topology(rsdp, functions),
            _ => topology::Topology::new(),
        }
    }

    fn iommu_units(
        &self,
        boot: &bootinfo::BootInfo,
        topology: &topology::Topology,
    ) -> alloc::vec::Vec<(usize, alloc::boxed::Box<dyn ::iommu::Iommu>)> {
        iommu::units(boot, topology)
    }
}

impl kcore::Smp for X86Platform {
    fn cpu_index(&self) -> usize {
        user::cpu_index()
    }

    fn start_cpus(&self, boot: &bootinfo::BootInfo, max: usize, entry: extern "C" fn(usize) -> !) -> usize {
        smp::start_cpus(boot, max, entry)
    }
}

impl kcore::Power for X86Platform {
    fn exit(&self, success: bool) -> ! {
        exit::exit(success)
    }
}
