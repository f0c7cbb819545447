//! aarch64 platform: PL011 console, exception vectors, kernel page tables
//! (TTBR1), GICv3, the generic timer, and the exit paths (semihosting, PSCI).
//!
//! Virtual memory layout (4 KiB granule, 48-bit VAs, set up by `boot/aarch64`):
//! - `0xFFFF_0000_0000_0000` + phys: direct map of the first 512 GiB (1 GiB blocks),
//! - `0xFFFF_8000_0000_0000`: dynamic window (MMIO, test pages; 4 KiB pages),
//! - `0xFFFF_FF80_0000_0000` + link address: the kernel image (2 MiB blocks to
//!   wherever the loader put it).
//!
//! MAIR_EL1 (set at boot): index 0 = Device-nGnRnE, index 1 = Normal write-back.
#![no_std]

extern crate alloc;

pub mod acpi;
pub mod exceptions;
pub mod exit;
pub mod gic;
pub mod iommu;
pub mod its;
pub mod ktests;
pub mod paging;
pub mod pl011;
pub mod smp;
pub mod timer;
pub mod user;

use bootinfo::FirmwareTables;
use core::sync::atomic::Ordering;
use kcore::{MapError, PageAttr};

/// Offset of the direct map of physical memory.
pub const DIRECT_MAP: u64 = 0xFFFF_0000_0000_0000;
/// Base of the kernel window: the image is linked at this + its link (physical) address.
pub const KERNEL_WINDOW: u64 = 0xFFFF_FF80_0000_0000;
/// Start and size of the dynamic kernel window.
pub const DYNAMIC_WINDOW: (u64, u64) = (0xFFFF_8000_0000_0000, 1 << 39);

/// The aarch64 implementation of [`kcore::Platform`].
pub struct ArmPlatform;

/// The one platform instance.
pub static PLATFORM: ArmPlatform = ArmPlatform;

/// First steps at EL1 with the MMU on: exception vectors, direct map, clock.
pub fn early_init() {
    smp::set_boot_cpu();
    exceptions::install_vectors();
    kcore::mm::set_direct_map(DIRECT_MAP);
    timer::mark_start();
    kcore::register_platform(&PLATFORM);
}

impl kcore::Arch for ArmPlatform {
    fn arch(&self) -> &'static str {
        "aarch64"
    }

    fn elf_machine(&self) -> u16 {
        kcore::loader::EM_AARCH64
    }
}

impl kcore::Console for ArmPlatform {
    fn console_write(&self, text: &str) {
        pl011::write_str(text);
    }

    fn console_read_byte(&self) -> Option<u8> {
        pl011::try_read()
    }
}

impl kcore::Clock for ArmPlatform {
    fn uptime_ns(&self) -> u64 {
        timer::uptime_ns()
    }

    fn timer_ticks(&self) -> u64 {
        timer::TICKS.load(Ordering::Relaxed)
    }

    fn timer_hz(&self) -> u32 {
        timer::TIMER_HZ
    }

    fn user_counter_hz(&self) -> Option<u64> {
        timer::user_counter_hz()
    }
}

impl kcore::Interrupts for ArmPlatform {
    fn init_interrupts(&self, boot: &bootinfo::BootInfo) -> Result<(), &'static str> {
        let (gic, virt_timer) = match boot.firmware() {
            FirmwareTables::Acpi { rsdp } => {
                ACPI_RSDP.call_once(|| rsdp);
                let gic = acpi::gic(rsdp)?;
                acpi::log_gic(&gic);
                (gic, acpi::virtual_timer(rsdp)?)
            }
            FirmwareTables::DeviceTree { .. } => {
                let dtb = crate::dtb(boot).ok_or("device tree unreadable: cannot find the GIC and timer")?;
                let gic = dtb.gic().ok_or("device tree has no interrupt controller")?;
                (gic, dtb.timer().ok_or("device tree has no arm,armv8-timer node")?.virt)
            }
            FirmwareTables::None => return Err("no firmware tables: cannot find the GIC and timer"),
        };
        gic::init(&gic)?;
        match gic.its {
            Some(its) => {
                if let Err(e) = its::init(its.base) {
                    log::error!("its: {:#x}: {e}; device interrupts stay on INTx", its.base);
                }
            }
            None => log::info!("its: none described; device interrupts use INTx"),
        }
        timer::start(virt_timer, timer::TIMER_HZ)
    }

    fn enable_interrupts(&self) {
        // SAFETY: unmasking IRQs at EL1; the vector table is installed.
        unsafe { core::arch::asm!("msr daifclr, #2", options(nomem, nostack)) };
    }

    fn disable_interrupts(&self) {
        // SAFETY: masking IRQs at EL1.
        unsafe { core::arch::asm!("msr daifset, #2", options(nomem, nostack)) };
    }

    fn wait_for_interrupt(&self) {
        self.enable_interrupts();
        aarch64_cpu::asm::wfi();
    }

    fn trigger_breakpoint(&self) {
        // SAFETY: `brk` raises a synchronous exception that the vector handler counts and returns from, past the instruction.
        unsafe { core::arch::asm!("brk #0x1") };
    }

    fn breakpoints_handled(&self) -> u64 {
        exceptions::BREAKPOINTS.load(Ordering::Relaxed)
    }
}

impl kcore::DeviceIrqs for ArmPlatform {
    fn route_device_irq(
        &self,
        f: &pci::Function,
        access: &dyn pci::ConfigAccess,
        slot: u32,
    ) -> Result<(), &'static str> {
        // MSI or MSI-X through the ITS where there is one and the function
        // may master the bus (an MSI is a DMA write: only behind an IOMMU);
        // INTx otherwise.
        if its::present() && kcore::iommu::protected(f.bdf) && (f.caps.msi.is_some() || f.caps.msix.is_some()) {
            let line = its::route(f, access, slot)?;
            log::info!("{line}");
            return Ok(());
        }
        let intid = intx_intid(f, access)?;
        let cmd = access.read16(f.bdf, pci::reg::COMMAND);
        access.write16(f.bdf, pci::reg::COMMAND, cmd & !(1 << 10)); // INTx enabled
        gic::route_spi(intid, true, slot)?;
        log::info!("intx: {} -> GIC INTID {intid} (level)", f.bdf);
        Ok(())
    }

    fn unmask_device_irq(&self, slot: u32) {
        gic::unmask_slot(slot);
    }

    fn unroute_device_irq(&self, f: &pci::Function, access: &dyn pci::ConfigAccess, slot: u32) {
        its::unroute(f, access, slot);
        gic::unroute_slot(slot);
    }
}

impl kcore::KernelSpace for ArmPlatform {
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

impl kcore::StackWalk for ArmPlatform {
    fn frame_pointer(&self) -> usize {
        let fp: usize;
        // SAFETY: reads x29 only; no memory access, no flags changed.
        unsafe { core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags)) };
        // This function has its own frame record (frame pointers are forced), which
        // dies when it returns: hand back the caller's frame pointer saved in it.
        // SAFETY: `fp` points at this function's live frame record on the stack.
        unsafe { (fp as *const usize).read_volatile() }
    }

    fn stack_ranges(&self) -> &[(usize, usize)] {
        exceptions::stack_ranges()
    }
}

impl kcore::UserSpace for ArmPlatform {
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

impl kcore::TaskSwitch for ArmPlatform {
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

impl kcore::PciHosts for ArmPlatform {
    fn pci_hosts(&self, boot: &bootinfo::BootInfo) -> alloc::vec::Vec<kcore::EcamHost> {
        if let FirmwareTables::Acpi { rsdp } = boot.firmware() {
            return kcore::acpi::pci_hosts(rsdp);
        }
        let Some(dt) = dtb(boot) else { return alloc::vec::Vec::new() };
        let mut out = alloc::vec::Vec::new();
        for host in dt.pci_hosts() {
            let h = match host {
                Ok(h) => h,
                Err(e) => {
                    log::error!("devicetree: PCI host node rejected: {e}");
                    continue;
                }
            };
            let window = |space| {
                h.window(space).map(|r| pci::Window { cpu_base: r.cpu_addr, pci_base: r.pci_addr, size: r.size })
            };
            use devicetree::pci::PciSpace;
            let bridge = pci::HostBridge {
                segment: h.segment,
                bus_start: h.bus_start,
                bus_end: h.bus_end,
                mmio32: window(PciSpace::Mem32),
                mmio64: window(PciSpace::Mem64),
                io: window(PciSpace::Io),
            };
            out.push(kcore::EcamHost { base: h.ecam.base, host: bridge });
        }
        out
    }
}

impl kcore::IommuBringup for ArmPlatform {
    fn iommu_topology(&self, boot: &bootinfo::BootInfo, functions: &[pci::Function]) -> topology::Topology {
        if let FirmwareTables::Acpi { rsdp } = boot.firmware() {
            // MSIs go through the ITS doorbell, which the IOMMU translates like any DMA:
            // reserve it as the device tree path does (IORT names the ITS by ID; its base is in the MADT).
            let mut t = kcore::acpi::topology(rsdp, functions, None);
            if let Some(its) = acpi::gic(rsdp).ok().and_then(|g| g.its) {
                topology::build::reserve_its_doorbell(&mut t, its.base);
            }
            return t;
        }
        let Some(dt) = dtb(boot) else { return topology::Topology::new() };
        let mut errors = alloc::vec::Vec::new();
        let t = topology::build::from_devicetree(&dt, &mut errors);
        for e in errors {
            log::error!("devicetree: {e}");
        }
        t
    }

    fn iommu_units(
        &self,
        boot: &bootinfo::BootInfo,
        topology: &topology::Topology,
    ) -> alloc::vec::Vec<(usize, alloc::boxed::Box<dyn ::iommu::Iommu>)> {
        iommu::units(boot, topology)
    }
}

impl kcore::Smp for ArmPlatform {
    fn cpu_index(&self) -> usize {
        smp::index()
    }

    fn start_cpus(&self, boot: &bootinfo::BootInfo, max: usize, entry: extern "C" fn(usize) -> !) -> usize {
        smp::start_cpus(boot, max, entry)
    }
}

impl kcore::Power for ArmPlatform {
    fn exit(&self, success: bool) -> ! {
        exit::exit(success)
    }
}

/// The GIC INTID of `f`'s INTx line: its pin swizzled through every bridge up
/// to the root bus (PCI-to-PCI Bridge spec 1.2 §9.1), then looked up in the
/// host's `interrupt-map` (device tree) or `_PRT` (ACPI): the fallback for a
/// machine without an ITS ([`its`]).
fn intx_intid(f: &pci::Function, access: &dyn pci::ConfigAccess) -> Result<u32, &'static str> {
    let pin = u32::from(access.read8(f.bdf, pci::reg::INTERRUPT + 1));
    if !(1..=4).contains(&pin) {
        return Err("function has no interrupt pin");
    }
    let (mut pin, mut at) = (pin, f.bdf);
    for bridge in f.path.iter().rev() {
        pin = ((pin - 1 + u32::from(at.dev)) % 4) + 1;
        at = *bridge;
    }
    if let Some(rsdp) = ACPI_RSDP.get() {
        // The routing lives in the DSDT's _PRT; its GSIs are GIC INTIDs.
        return acpi::intx_gsi(*rsdp, at.dev, pin);
    }
    let dt = dtb_at(DTB_PA.load(core::sync::atomic::Ordering::Relaxed)).ok_or("no device tree")?;
    let host = dt
        .pci_hosts()
        .into_iter()
        .flatten()
        .find(|h| h.segment == f.bdf.segment)
        .ok_or("no PCI host for this segment in the device tree")?;
    let route = host.intx(at.rid(), pin).ok_or("interrupt-map has no entry for this device")?;
    match route.parent_spec.as_slice() {
        [0, spi, _] => Ok(32 + spi),
        _ => Err("interrupt-map parent is not a GIC SPI"),
    }
}

/// The RSDP when ACPI describes the machine (set by `init_interrupts`).
static ACPI_RSDP: spin::Once<u64> = spin::Once::new();

/// Brings up the PL011 console a loader's hand-off points at: the SPCR's
/// UART under ACPI, else the device tree's `stdout-path`. Before the frame
/// allocator exists, so through the boot direct map (device memory for the
/// first GiB, where QEMU virt's UART lives).
pub fn early_console(boot: &bootinfo::BootInfo) {
    let base = match boot.firmware() {
        FirmwareTables::Acpi { rsdp } => kcore::acpi::spcr_console(rsdp),
        FirmwareTables::DeviceTree { dtb } => dtb_at(dtb).and_then(|dt| dt.console()).map(|u| u.base),
        FirmwareTables::None => None,
    };
    if let Some(base) = base {
        pl011::init(kcore::mm::phys_to_virt(base));
    }
}

/// Physical address of the boot device tree (set by `dtb`).
static DTB_PA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The device tree the boot path handed over, parsed through the direct map.
pub fn dtb(boot: &bootinfo::BootInfo) -> Option<devicetree::DeviceTree<'static>> {
    let bootinfo::FirmwareTables::DeviceTree { dtb } = boot.firmware() else {
        return None;
    };
    DTB_PA.store(dtb, core::sync::atomic::Ordering::Relaxed);
    dtb_at(dtb)
}

/// Size in bytes of the device tree at physical address `pa`, from its header.
pub fn dtb_size(pa: u64) -> Option<usize> {
    let va = kcore::mm::phys_to_virt(pa) as *const u8;
    // SAFETY: `pa` is RAM holding the DTB (the boot path checked the magic); the direct map covers it and the range stays reserved for the kernel's lifetime.
    let header = unsafe { core::slice::from_raw_parts(va, 40) };
    devicetree::DeviceTree::total_size(header).ok()
}

/// Parses the device tree at physical address `pa`.
pub fn dtb_at(pa: u64) -> Option<devicetree::DeviceTree<'static>> {
    let va = kcore::mm::phys_to_virt(pa) as *const u8;
    let size = dtb_size(pa)?;
    // SAFETY: as in `dtb_size`, for the full size the header declares.
    let blob = unsafe { core::slice::from_raw_parts(va, size) };
    devicetree::DeviceTree::from_bytes(blob).ok()
}
