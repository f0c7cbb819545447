//! What the portable core needs from an architecture, by concern: one small
//! trait each ([`Arch`], [`Console`], [`Clock`], [`Interrupts`],
//! [`DeviceIrqs`], [`KernelSpace`], [`StackWalk`], [`UserSpace`],
//! [`TaskSwitch`], [`PciHosts`], [`IommuBringup`], [`Power`]), and
//! [`Platform`], the supertrait of them all, which kcore reaches through one
//! `&'static dyn Platform` (`crate::platform()`).
//!
//! Why a supertrait rather than a struct of `&'static dyn` references: the
//! running board is one object with one vtable, so every call site stays
//! `platform().user_map(..)`; a board that forgets a concern does not
//! compile (the blanket impl needs every small trait); and code that needs
//! one concern only can take the small trait (`&dyn UserSpace` upcasts from
//! `&dyn Platform`).

use core::fmt;

/// Memory type and access rights of a kernel mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAttr {
    /// Normal write-back memory, read/write, never executable.
    Data,
    /// Device memory (uncached, no speculation), read/write, never executable.
    Mmio,
}

/// Why a kernel mapping could not be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The virtual address is already mapped.
    AlreadyMapped(u64),
    /// The virtual address is not mapped.
    NotMapped(u64),
    /// A page-table frame could not be allocated.
    OutOfFrames,
    /// The address is not page aligned or outside the allowed window.
    BadAddress(u64),
    /// The address lies inside a larger (block/huge) mapping that cannot be split.
    InsideHugePage(u64),
    /// The kernel virtual window for this purpose is exhausted.
    WindowFull,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::AlreadyMapped(a) => write!(f, "{a:#x} is already mapped"),
            MapError::NotMapped(a) => write!(f, "{a:#x} is not mapped"),
            MapError::OutOfFrames => f.write_str("out of page-table frames"),
            MapError::BadAddress(a) => write!(f, "bad address {a:#x}"),
            MapError::InsideHugePage(a) => write!(f, "{a:#x} is inside a huge page"),
            MapError::WindowFull => f.write_str("kernel virtual window exhausted"),
        }
    }
}

/// Access rights of a user page (always readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserPerms {
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Device memory (uncached, for mapped BARs); never executable.
    pub device: bool,
}

/// Joins the pages a user walk finds, in address order, into runs of
/// physically contiguous pages with the same rights, and hands each run to
/// a `Platform::user_walk` callback once it is complete.
pub struct UserRuns<'a> {
    f: &'a mut dyn FnMut(u64, u64, u64, UserPerms) -> bool,
    /// The run being built: (va, pa, pages, perms).
    run: Option<(u64, u64, u64, UserPerms)>,
}

impl<'a> UserRuns<'a> {
    /// Runs for `f`.
    pub fn new(f: &'a mut dyn FnMut(u64, u64, u64, UserPerms) -> bool) -> Self {
        UserRuns { f, run: None }
    }

    /// Adds `pages` pages at `va` → `pa` (right after the pages added
    /// before). `Err(at)`: the callback refused the run starting at `at`.
    pub fn add(&mut self, va: u64, pa: u64, pages: u64, perms: UserPerms) -> Result<(), u64> {
        if let Some((rva, rpa, n, p)) = &mut self.run {
            if p == &perms && rpa.checked_add(*n * 4096) == Some(pa) && *rva + *n * 4096 == va {
                *n += pages;
                return Ok(());
            }
        }
        self.flush()?;
        self.run = Some((va, pa, pages, perms));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), u64> {
        match self.run.take() {
            Some((va, pa, n, p)) if !(self.f)(va, pa, n, p) => Err(va),
            _ => Ok(()),
        }
    }

    /// Hands over the last run. `Err(at)`: refused, as for [`UserRuns::add`].
    pub fn finish(mut self) -> Result<(), u64> {
        self.flush()
    }
}

/// How a user task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserExit {
    /// It called `exit(status)`.
    Exited(i64),
    /// It broke a rule the kernel enforces (a fault, an illegal instruction).
    Killed {
        /// What happened.
        reason: &'static str,
        /// Program counter at the fault.
        pc: u64,
        /// Faulting address (0 when not applicable).
        addr: u64,
    },
}

/// A PCI host bridge's ECAM window as the firmware describes it (PCIe 4.0
/// §7.2.2): the physical base of bus `host.bus_start` and the bridge.
/// `crate::pci` maps the buses on first use.
#[derive(Debug, Clone)]
pub struct EcamHost {
    /// Physical base of bus `host.bus_start`.
    pub base: u64,
    /// The host bridge the window serves.
    pub host: pci::HostBridge,
}

/// The architecture's names.
pub trait Arch {
    /// Architecture name for the log (`"x86_64"`, `"aarch64"`).
    fn arch(&self) -> &'static str;
    /// ELF `e_machine` of user programs for this architecture.
    fn elf_machine(&self) -> u16;
}

/// The console the log and KTAP go to.
pub trait Console {
    /// Writes text to the console without taking any lock that a panic could hold.
    fn console_write(&self, text: &str);
    /// A byte typed on the console, if one is waiting (polled; none where the console has no input).
    fn console_read_byte(&self) -> Option<u8> {
        None
    }
}

/// Time: the uptime clock and the periodic timer.
pub trait Clock {
    /// Nanoseconds since an arbitrary point early in boot.
    fn uptime_ns(&self) -> u64;
    /// Periodic timer interrupts handled so far.
    fn timer_ticks(&self) -> u64;
    /// Configured timer frequency in Hz.
    fn timer_hz(&self) -> u32;
    /// Frequency in Hz of the counter user code may read directly (x86 TSC,
    /// Arm virtual count), or `None` when tasks cannot read one.
    fn user_counter_hz(&self) -> Option<u64> {
        None
    }
}

/// The interrupt controller(s) and this CPU's interrupt mask.
pub trait Interrupts {
    /// Brings up the interrupt controller(s) and the periodic timer.
    fn init_interrupts(&self, boot: &bootinfo::BootInfo) -> Result<(), &'static str>;
    /// Unmasks interrupts on this CPU.
    fn enable_interrupts(&self);
    /// Masks interrupts on this CPU.
    fn disable_interrupts(&self);
    /// Sleeps until the next interrupt (interrupts must be enabled).
    fn wait_for_interrupt(&self);
    /// Executes a breakpoint instruction that the exception handler catches and returns from.
    fn trigger_breakpoint(&self);
    /// Breakpoint exceptions handled so far.
    fn breakpoints_handled(&self) -> u64;
}

/// Device interrupts routed to the slots tasks wait on.
pub trait DeviceIrqs {
    /// Routes the interrupt of PCI function `f` (MSI, else INTx) so that each one
    /// ends in [`crate::irq_slots::device_irq`]`(slot)`; `slot` < 8.
    fn route_device_irq(
        &self,
        f: &pci::Function,
        access: &dyn pci::ConfigAccess,
        slot: u32,
    ) -> Result<(), &'static str>;
    /// Re-enables a level-triggered line masked when it fired (no-op for MSI).
    fn unmask_device_irq(&self, slot: u32);
    /// Stops delivering `f`'s interrupts to `slot`.
    fn unroute_device_irq(&self, f: &pci::Function, access: &dyn pci::ConfigAccess, slot: u32);
}

/// The kernel's own address space.
pub trait KernelSpace {
    /// Maps one 4 KiB kernel page; page-table frames come from [`crate::mm`].
    fn map_page(&self, va: u64, pa: u64, attr: PageAttr) -> Result<(), MapError>;
    /// Unmaps one 4 KiB kernel page and returns the physical address it mapped.
    fn unmap_page(&self, va: u64) -> Result<u64, MapError>;
    /// Physical address behind a kernel virtual address, if mapped.
    fn translate(&self, va: u64) -> Option<u64>;
    /// Kernel virtual window `(start, size)` for dynamic mappings (MMIO, tests).
    fn dynamic_window(&self) -> (u64, u64);
}

/// What a backtrace walk needs.
pub trait StackWalk {
    /// Frame pointer of the caller's frame (for backtraces).
    fn frame_pointer(&self) -> usize;
    /// Address ranges `(low, high)` that hold kernel stacks, for safe backtrace walks.
    fn stack_ranges(&self) -> &[(usize, usize)];
}

/// User address spaces: create, map, unmap, prune, walk, free.
pub trait UserSpace {
    /// Creates an empty user address space (kernel half shared) and returns its root.
    fn user_space_new(&self) -> Result<u64, MapError>;
    /// Maps one 4 KiB user page.
    fn user_map(&self, root: u64, va: u64, pa: u64, perms: UserPerms) -> Result<(), MapError>;
    /// Unmaps one user page and returns the physical address it mapped.
    fn user_unmap(&self, root: u64, va: u64) -> Result<u64, MapError>;
    /// Frees the page tables under `[start, end)` of a user space that map
    /// nothing any more (a rolled-back or undone map leaves none behind).
    fn user_prune(&self, root: u64, start: u64, end: u64);
    /// Physical address and rights of a user page, if mapped.
    fn user_translate(&self, root: u64, va: u64) -> Option<(u64, UserPerms)>;
    /// Hands `f(va, pa, pages, perms)` the mapped user pages from `va`
    /// (page aligned) up to `end`, in order, as runs of physically
    /// contiguous pages with the same rights ([`UserRuns`]), while `f`
    /// answers true; returns where it stopped (`end`, the first unmapped
    /// page, or the start of the run `f` refused). Platforms walk each
    /// last-level table once instead of translating page by page (the pin
    /// path of a DMA map: contiguous memory is one call however long).
    fn user_walk(&self, root: u64, va: u64, end: u64, f: &mut dyn FnMut(u64, u64, u64, UserPerms) -> bool) -> u64 {
        let mut runs = UserRuns::new(f);
        let mut va = va;
        while va < end {
            let Some((pa, perms)) = self.user_translate(root, va) else { break };
            if let Err(at) = runs.add(va, pa, 1, perms) {
                return at;
            }
            va += 4096;
        }
        runs.finish().err().unwrap_or(va)
    }
    /// Frees the page tables of a user address space (not the frames it mapped).
    fn user_space_free(&self, root: u64);
}

/// Kernel contexts of tasks, and the way into user mode.
pub trait TaskSwitch {
    /// Prepares a new task's kernel stack (top at `stack_top`) so that the first
    /// [`TaskSwitch::context_switch`] to the returned stack pointer calls `start` on it.
    fn init_task_stack(&self, stack_top: u64, start: extern "C" fn() -> !) -> u64;
    /// Saves the callee-saved registers and stack pointer to `*save` and
    /// resumes the context whose stack pointer is `load`.
    ///
    /// # Safety
    /// `save` must be valid for a write for as long as the saved context may be
    /// resumed, and `load` must be a stack pointer saved by this function or
    /// returned by [`TaskSwitch::init_task_stack`] whose stack is still alive.
    unsafe fn context_switch(&self, save: *mut u64, load: u64);
    /// Makes `root` the user address space and `kernel_stack_top` the stack
    /// used for traps from user mode.
    fn activate_task(&self, root: u64, kernel_stack_top: u64);
    /// Returns to the kernel's own address space (before a task's tables are freed).
    fn activate_kernel(&self);
    /// Enters user mode at `entry` with stack `user_sp`, on the current task's
    /// kernel stack; syscalls go to [`crate::syscalls::syscall`].
    fn enter_user(&self, entry: u64, user_sp: u64) -> !;
}

/// The PCI host bridges the firmware describes.
pub trait PciHosts {
    /// The PCI host bridges (ECAM windows) the firmware describes.
    fn pci_hosts(&self, boot: &bootinfo::BootInfo) -> alloc::vec::Vec<EcamHost>;
}

/// IOMMU bring-up: the topology the firmware describes, and the units this
/// architecture has drivers for.
pub trait IommuBringup {
    /// The IOMMU topology the firmware describes, resolved against the PCI functions.
    fn iommu_topology(&self, boot: &bootinfo::BootInfo, functions: &[pci::Function]) -> topology::Topology;
    /// Brings up the IOMMU units of `topology` this architecture has drivers
    /// for (translation still off) and returns them with their topology
    /// indices. The default has none.
    fn iommu_units(
        &self,
        boot: &bootinfo::BootInfo,
        topology: &topology::Topology,
    ) -> alloc::vec::Vec<(usize, alloc::boxed::Box<dyn iommu::Iommu>)> {
        let _ = (boot, topology);
        alloc::vec::Vec::new()
    }
}

/// Multiprocessing: which CPU runs this code, and bringing up the others.
pub trait Smp {
    /// Index of the CPU executing this call: 0 for the boot CPU, then the
    /// order [`Smp::start_cpus`] started them in; always below
    /// [`crate::cpu::MAX_CPUS`]. The default is a machine of one CPU.
    fn cpu_index(&self) -> usize {
        0
    }
    /// Starts the other CPUs the firmware describes, at most `max` CPUs in
    /// all: each sets itself up (descriptor tables or vectors, its interrupt
    /// controller interface, its timer) and calls `entry(index)` with
    /// interrupts masked. Returns how many CPUs run, the boot CPU included;
    /// a CPU that does not answer within its bound is left out (logged).
    fn start_cpus(&self, boot: &bootinfo::BootInfo, max: usize, entry: extern "C" fn(usize) -> !) -> usize {
        let _ = (boot, max, entry);
        1
    }
}

/// The end of a machine run.
pub trait Power {
    /// Ends the machine run with a status (QEMU exit device where present, else halt).
    fn exit(&self, success: bool) -> !;
}

/// Every service one architecture provides to the portable kernel core.
///
/// Implemented by implementing each small trait (once per board:
/// `boards/pc`, `boards/virt`); the blanket impl below makes the board a
/// `Platform`, and the boot binary passes a `&'static` instance to
/// [`crate::start`].
pub trait Platform:
    Arch
    + Console
    + Clock
    + Interrupts
    + DeviceIrqs
    + KernelSpace
    + StackWalk
    + UserSpace
    + TaskSwitch
    + PciHosts
    + IommuBringup
    + Smp
    + Power
    + Sync
{
}

impl<T> Platform for T where
    T: Arch
        + Console
        + Clock
        + Interrupts
        + DeviceIrqs
        + KernelSpace
        + StackWalk
        + UserSpace
        + TaskSwitch
        + PciHosts
        + IommuBringup
        + Smp
        + Power
        + Sync
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const RW: UserPerms = UserPerms { write: true, exec: false, device: false };
    const RO: UserPerms = UserPerms { write: false, exec: false, device: false };

    /// Runs handed over, as (va, pa, pages), and how the walk ended.
    type Joined = (Vec<(u64, u64, u64)>, Result<(), u64>);

    /// The runs `pages` (va, pa, perms) make, and where a callback that
    /// refuses the run at `refuse` stops.
    fn join(pages: &[(u64, u64, UserPerms)], refuse: Option<u64>) -> Joined {
        let mut got = Vec::new();
        let mut f = |va, pa, n, _| {
            got.push((va, pa, n));
            Some(va) != refuse
        };
        let mut runs = UserRuns::new(&mut f);
        let mut r = Ok(());
        for &(va, pa, p) in pages {
            r = runs.add(va, pa, 1, p);
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|()| runs.finish());
        (got, r)
    }

    #[test]
    fn contiguous_pages_with_the_same_rights_are_one_run() {
        let p = [(0x1000, 0x8000, RW), (0x2000, 0x9000, RW), (0x3000, 0xA000, RW)];
        assert_eq!(join(&p, None), (vec![(0x1000, 0x8000, 3)], Ok(())));
    }

    #[test]
    fn a_frame_gap_or_other_rights_start_a_new_run() {
        let p = [(0x1000, 0x8000, RW), (0x2000, 0x3000, RW), (0x3000, 0x4000, RO), (0x4000, 0x5000, RO)];
        assert_eq!(join(&p, None), (vec![(0x1000, 0x8000, 1), (0x2000, 0x3000, 1), (0x3000, 0x4000, 2)], Ok(())));
        assert_eq!(join(&[], None), (vec![], Ok(())), "no pages, no call");
    }

    #[test]
    fn a_refused_run_stops_the_walk_at_its_start() {
        let p = [(0x1000, 0x8000, RW), (0x2000, 0x9000, RO), (0x3000, 0xA000, RO), (0x4000, 0x1000, RW)];
        // The RO run is handed over when the RW page after it arrives, and refused.
        assert_eq!(join(&p, Some(0x2000)), (vec![(0x1000, 0x8000, 1), (0x2000, 0x9000, 2)], Err(0x2000)));
        // The last run is refused at finish.
        assert_eq!(join(&p[..2], Some(0x2000)).1, Err(0x2000));
    }
}
