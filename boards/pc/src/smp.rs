//! Starting the other CPUs (application processors, APs): found in the
//! ACPI MADT, woken one at a time with INIT-SIPI-SIPI (Intel SDM Vol. 3A
//! §9.4.4, the universal start-up algorithm) into a real-mode trampoline
//! below 1 MiB, which takes them through 32-bit protected mode into long
//! mode on temporary page tables and jumps to the kernel, where each loads
//! the kernel's page tables, its own GDT/TSS, the shared IDT, its syscall
//! MSRs and per-CPU block, enables its local APIC and timer, and enters
//! the portable kernel (`entry(index)`, interrupts masked).
//!
//! The trampoline area ([`TRAMPOLINE_PAGES`] pages, chosen by
//! [`trampoline_base`]): page 0 holds the code (copied from
//! `ap_tramp_start..ap_tramp_end`, position independent: it finds its
//! base in CS) and at offset 0xF00 the `TrampolineData` the boot CPU
//! fills for each AP (temporary GDT, far-jump targets, control registers,
//! stack, index); page 1 the temporary PML4 (entry 0 → page 2, entries
//! 256–511 the kernel's); page 2 a PDPT identity-mapping the first GiB.
//! The area lies in usable RAM below 640 KiB, which the frame allocator
//! never hands out (`kcore::mm` keeps the low megabyte) and which nothing
//! else uses once the kernel runs; it stays reserved for the kernel's life.

use alloc::vec::Vec;
use bootinfo::{BootInfo, MemoryKind};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kcore::cpu::MAX_CPUS;
use x86_64::registers::control::{Cr0, Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, Msr};

/// Pages of the trampoline area: code and data, PML4, PDPT.
pub const TRAMPOLINE_PAGES: u64 = 3;
/// Offset of [`TrampolineData`] in the code page.
const DATA_OFFSET: usize = 0xF00;
/// Kernel stack of each AP (its scheduler runs on it).
const AP_STACK_PAGES: usize = 16;
/// Double-fault / NMI stack of each AP.
const AP_IST_PAGES: usize = gdt_ist_pages();
/// How long the boot CPU waits for an AP to report in.
const START_TIMEOUT_NS: u64 = 200_000_000;
/// Selectors of the temporary GDT.
const TRAMP_CODE32: u32 = 0x08;
const TRAMP_CODE64: u32 = 0x18;
/// IA32_PAT (SDM Vol. 3A §13.12.2).
const IA32_PAT: u32 = 0x277;

const fn gdt_ist_pages() -> usize {
    crate::gdt::IST_STACK_SIZE.div_ceil(4096)
}

/// What the boot CPU hands the trampoline, at [`DATA_OFFSET`] in its page
/// (offsets used by the assembly through `offset_of!`).
#[repr(C)]
struct TrampolineData {
    /// Temporary GDT: null, 32-bit code (0x08), data (0x10), 64-bit code (0x18).
    gdt: [u64; 4],
    /// LGDT operand: limit, base (low 16, high 16), padding.
    gdtr: [u16; 4],
    /// `jmp far m16:32` operand into the 32-bit code: offset, selector.
    far32: [u32; 2],
    /// `jmp far m16:32` operand into the 64-bit code: offset, selector.
    far64: [u32; 2],
    /// CR4 for protected mode (the boot CPU's without the long-mode-only bits, PAE on).
    cr4_32: u32,
    /// Physical address of the temporary PML4 (below 4 GiB: loaded by a 32-bit `mov cr3`).
    pml4: u32,
    /// The boot CPU's CR0 (paging on).
    cr0: u64,
    /// The boot CPU's EFER (LME, NXE, SCE).
    efer: u64,
    /// The boot CPU's CR4, loaded once in long mode.
    cr4: u64,
    /// The kernel's page-table root.
    kernel_cr3: u64,
    /// Top of the AP's kernel stack (kernel virtual).
    stack_top: u64,
    /// The AP's CPU index (first argument of `x86_ap_main`).
    index: u64,
    /// Kernel virtual address of `ap_entry64`.
    entry: u64,
    /// How far the AP got: 1 real mode, 2 protected mode, 3 long mode
    /// (written by the trampoline as a byte; 4+ by [`x86_ap_main`]).
    progress: u64,
}

const _: () = assert!(DATA_OFFSET + core::mem::size_of::<TrampolineData>() <= 4096);

core::arch::global_asm!(
    r#"
/* The AP trampoline: copied to a page below 1 MiB, never run in place. */
.section .rodata.ap_trampoline, "a"
.balign 16
.global ap_tramp_start
.global ap_tramp_32
.global ap_tramp_64
.global ap_tramp_end
ap_tramp_start:
.code16
    cli
    cld
    xor ebx, ebx
    mov bx, cs
    mov ds, bx
    shl ebx, 4                              /* ebx = physical base of the page */
    mov byte ptr [{d} + {progress}], 1
    lgdt [{d} + {gdtr}]                     /* base below 1 MiB: 24 bits suffice */
    mov eax, cr0
    or eax, 1                               /* PE */
    mov cr0, eax
    .byte 0x66, 0xFF, 0x2E                  /* jmp far dword ptr ds:[disp16] (o32 FF /5) */
    .word {d} + {far32}

.code32
ap_tramp_32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov byte ptr [ebx + {d} + {progress}], 2
    mov eax, [ebx + {d} + {cr4_32}]
    mov cr4, eax
    mov eax, [ebx + {d} + {pml4}]
    mov cr3, eax
    mov ecx, 0xC0000080                     /* EFER */
    mov eax, [ebx + {d} + {efer}]
    mov edx, [ebx + {d} + {efer} + 4]
    wrmsr
    mov eax, [ebx + {d} + {cr0}]
    mov cr0, eax                            /* paging on: long mode (compatibility) */
    .byte 0xFF, 0xAB                        /* jmp far fword ptr [ebx + disp32] (FF /5) */
    .long {d} + {far64}

.code64
ap_tramp_64:
    mov ebx, ebx                            /* upper half undefined after the switch */
    mov byte ptr [rbx + {d} + {progress}], 3
    mov rax, [rbx + {d} + {cr4}]
    mov cr4, rax
    mov rcx, [rbx + {d} + {cr3}]
    mov rsp, [rbx + {d} + {stack}]
    mov rdi, [rbx + {d} + {index}]
    mov rax, [rbx + {d} + {entry}]
    jmp rax
ap_tramp_end:

/* In the kernel image (upper half, mapped by the temporary PML4 too):
 * RCX = kernel CR3, RSP = the AP's stack, RDI = its index. */
.section .text.ap_entry, "ax"
.global ap_entry64
ap_entry64:
    mov cr3, rcx
    xor ebp, ebp
    call x86_ap_main
2:
    hlt
    jmp 2b
"#,
    d = const DATA_OFFSET,
    progress = const core::mem::offset_of!(TrampolineData, progress),
    gdtr = const core::mem::offset_of!(TrampolineData, gdtr),
    far32 = const core::mem::offset_of!(TrampolineData, far32),
    far64 = const core::mem::offset_of!(TrampolineData, far64),
    cr4_32 = const core::mem::offset_of!(TrampolineData, cr4_32),
    pml4 = const core::mem::offset_of!(TrampolineData, pml4),
    efer = const core::mem::offset_of!(TrampolineData, efer),
    cr0 = const core::mem::offset_of!(TrampolineData, cr0),
    cr4 = const core::mem::offset_of!(TrampolineData, cr4),
    cr3 = const core::mem::offset_of!(TrampolineData, kernel_cr3),
    stack = const core::mem::offset_of!(TrampolineData, stack_top),
    index = const core::mem::offset_of!(TrampolineData, index),
    entry = const core::mem::offset_of!(TrampolineData, entry),
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_32: u8;
    static ap_tramp_64: u8;
    static ap_tramp_end: u8;
    fn ap_entry64() -> !;
}

/// The portable entry every AP calls once it is set up.
static ENTRY: spin::Once<extern "C" fn(usize) -> !> = spin::Once::new();
/// Per CPU index, the top of its double-fault stack (written before it starts).
static IST_TOP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU index, the top of its kernel stack (its first RSP0).
static STACK_TOP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Index of the last AP that reported in (0: none yet).
static UP: AtomicUsize = AtomicUsize::new(0);
/// How far the AP being started got in Rust (see [`TrampolineData::progress`]).
static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// The boot CPU's IA32_PAT and XCR0 (0: not read), which every AP copies.
static PAT: AtomicU64 = AtomicU64::new(0);
static XCR0: AtomicU64 = AtomicU64::new(0);

/// A CPU the MADT describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadtCpu {
    /// Its local APIC ID.
    pub apic_id: u32,
    /// Enabled (ACPI 6.5 §5.2.12.2 flags bit 0); otherwise only online
    /// capable (bit 1: it may be hot-added, it is not there now).
    pub enabled: bool,
}

/// The processors of the MADT (Processor Local APIC and Local x2APIC
/// entries that are enabled or online capable), in table order, each APIC
/// ID once.
pub fn madt_cpus(rsdp: u64) -> Result<Vec<MadtCpu>, &'static str> {
    use acpi::madt::{Madt, MadtEntry};
    let tables = kcore::acpi::tables(rsdp).map_err(|_| "ACPI tables unreadable")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT in the ACPI tables")?;
    let mut cpus: Vec<MadtCpu> = Vec::new();
    for entry in madt.get().entries() {
        let (apic_id, flags) = match entry {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        if flags & 0b11 == 0 || cpus.iter().any(|c| c.apic_id == apic_id) {
            continue;
        }
        cpus.push(MadtCpu { apic_id, enabled: flags & 1 != 0 });
    }
    Ok(cpus)
}

/// Base of the trampoline area: the highest run of `pages` pages of low
/// usable RAM, wholly inside a usable region, in [4 KiB, 640 KiB) (page 0
/// holds the real-mode vectors and the BIOS data area; 640 KiB up is the
/// legacy video and ROM hole), touching no region of another kind (the
/// maps may overlap) nor the kernel image. Highest first, as Linux places
/// its real-mode trampoline.
pub fn trampoline_base(boot: &BootInfo, pages: u64) -> Option<u64> {
    const LOW: u64 = 0x1000;
    const HIGH: u64 = 0xA_0000;
    let size = pages * 4096;
    let clear = |start: u64| {
        let end = start + size;
        let overlaps = |a: u64, b: u64| start < b && a < end;
        !overlaps(boot.kernel_image.start, boot.kernel_image.end)
            && !boot.regions().iter().any(|r| r.kind != MemoryKind::Usable && overlaps(r.base, r.end()))
    };
    let mut best: Option<u64> = None;
    for r in boot.regions().iter().filter(|r| r.kind == MemoryKind::Usable) {
        let lo = r.base.next_multiple_of(4096).max(LOW);
        let hi = r.end().min(HIGH) & !0xFFF;
        let mut at = match hi.checked_sub(size) {
            Some(at) if at >= lo => at,
            _ => continue,
        };
        loop {
            if clear(at) {
                best = best.max(Some(at));
                break;
            }
            match at.checked_sub(4096) {
                Some(next) if next >= lo => at = next,
                _ => break,
            }
        }
    }
    best
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Copies the trampoline code to `base` and builds its temporary page
/// tables; the per-AP fields are filled by [`prepare_ap`].
fn install_trampoline(base: u64) -> Result<(), &'static str> {
    // SAFETY: (all four) linker symbols of the trampoline above; only their addresses are taken.
    let (start, code32, code64, end) = unsafe {
        (
            sym(&*core::ptr::addr_of!(ap_tramp_start)),
            sym(&*core::ptr::addr_of!(ap_tramp_32)),
            sym(&*core::ptr::addr_of!(ap_tramp_64)),
            sym(&*core::ptr::addr_of!(ap_tramp_end)),
        )
    };
    let len = (end - start) as usize;
    if len > DATA_OFFSET {
        return Err("the AP trampoline does not fit before its data");
    }
    let page = kcore::mm::phys_to_virt(base);
    let pml4_pa = base + 0x1000;
    let pdpt_pa = base + 0x2000;
    // The kernel's root (no task runs on the boot CPU while it starts the others).
    let (kernel_root, cr3_low) = Cr3::read_raw();
    let kernel_root = kernel_root.start_address().as_u64();
    let kernel_pml4 = kcore::mm::phys_to_virt(kernel_root) as *const u64;
    let pml4 = kcore::mm::phys_to_virt(pml4_pa) as *mut u64;
    let pdpt = kcore::mm::phys_to_virt(pdpt_pa) as *mut u64;
    // SAFETY: [base, base + 3 pages) is the trampoline area: usable RAM below 1 MiB that nothing else uses (see `trampoline_base` and the module doc), mapped writable through the direct map; the source is the trampoline's code in the kernel image and the kernel's PML4 (read only). No AP runs the area now (none is being started).
    unsafe {
        core::ptr::write_bytes(page as *mut u8, 0, 3 * 4096);
        core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len);
        // Identity map of the first GiB (the trampoline runs there), one 1 GiB page.
        pdpt.write(0x83); // present, writable, page size
        pml4.write(pdpt_pa | 0x3);
        // The kernel half: the image, the direct map, the dynamic window.
        for i in 256..512 {
            pml4.add(i).write(kernel_pml4.add(i).read());
        }
    }
    let cr4 = Cr4::read();
    let cr4_32 = (cr4 - (Cr4Flags::PCID | Cr4Flags::CONTROL_FLOW_ENFORCEMENT)) | Cr4Flags::PHYSICAL_ADDRESS_EXTENSION;
    let gdtr_base = (base + DATA_OFFSET as u64) as u32; // below 1 MiB
    let data = TrampolineData {
        gdt: [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00AF_9A00_0000_FFFF],
        gdtr: [4 * 8 - 1, gdtr_base as u16, (gdtr_base >> 16) as u16, 0],
        far32: [(base + code32 - start) as u32, TRAMP_CODE32],
        far64: [(base + code64 - start) as u32, TRAMP_CODE64],
        cr4_32: cr4_32.bits() as u32,
        pml4: pml4_pa as u32,
        cr0: Cr0::read_raw(),
        efer: Efer::read_raw(),
        cr4: cr4.bits(),
        kernel_cr3: kernel_root | u64::from(cr3_low),
        stack_top: 0,
        index: 0,
        entry: ap_entry64 as *const () as u64,
        progress: 0,
    };
    // SAFETY: the data area lies inside the trampoline page (checked at compile time), 8-byte aligned, written while no AP runs it.
    unsafe { ((page + DATA_OFFSET as u64) as *mut TrampolineData).write_volatile(data) };
    Ok(())
}

fn data(base: u64) -> *mut TrampolineData {
    (kcore::mm::phys_to_virt(base) + DATA_OFFSET as u64) as *mut TrampolineData
}

/// Fills the per-AP fields of the trampoline for CPU `index`.
fn prepare_ap(base: u64, index: usize, stack_top: u64) {
    let d = data(base);
    // SAFETY: `d` is the trampoline's data area (see `install_trampoline`); no AP runs the trampoline now (the previous one reported in or was parked with INIT).
    unsafe {
        core::ptr::addr_of_mut!((*d).stack_top).write_volatile(stack_top);
        core::ptr::addr_of_mut!((*d).index).write_volatile(index as u64);
        core::ptr::addr_of_mut!((*d).progress).write_volatile(0);
    }
    PROGRESS.store(0, Ordering::Release);
}

/// How far the AP being started got: the trampoline's byte, or Rust's stage.
fn progress(base: u64) -> u64 {
    // SAFETY: a volatile read of the data area of the trampoline (see `prepare_ap`), which the AP may be writing: one byte, no tearing.
    let tramp = unsafe { core::ptr::addr_of!((*data(base)).progress).cast::<u8>().read_volatile() };
    PROGRESS.load(Ordering::Acquire).max(u64::from(tramp))
}

/// Waits up to `ns` for CPU `index` to report in.
fn wait_up(index: usize, ns: u64) -> bool {
    let t0 = crate::tsc::uptime_ns();
    loop {
        if UP.load(Ordering::Acquire) == index {
            return true;
        }
        if crate::tsc::uptime_ns().saturating_sub(t0) >= ns {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// See [`kcore::Smp::start_cpus`].
pub fn start_cpus(boot: &BootInfo, max: usize, entry: extern "C" fn(usize) -> !) -> usize {
    let max = max.min(MAX_CPUS);
    if max <= 1 {
        return 1;
    }
    let bootinfo::FirmwareTables::Acpi { rsdp } = boot.firmware() else {
        log::warn!("smp: no ACPI tables; only the boot CPU runs");
        return 1;
    };
    let cpus = match madt_cpus(rsdp) {
        Ok(cpus) => cpus,
        Err(e) => {
            log::warn!("smp: {e}; only the boot CPU runs");
            return 1;
        }
    };
    let me = crate::apic::id();
    let mut others: Vec<u32> = Vec::new();
    for c in cpus.iter().filter(|c| c.apic_id != me) {
        if !c.enabled {
            log::info!("smp: apic {} is only online capable (not present); not started", c.apic_id);
        } else if c.apic_id > 0xFE {
            log::warn!("smp: apic {} needs x2APIC mode (the kernel drives xAPIC); not started", c.apic_id);
        } else {
            others.push(c.apic_id);
        }
    }
    if others.is_empty() {
        return 1;
    }
    if crate::tsc::frequency() == 0 {
        log::warn!("smp: the TSC is not calibrated, no start-up wait can be bounded; only the boot CPU runs");
        return 1;
    }
    let Some(base) = trampoline_base(boot, TRAMPOLINE_PAGES) else {
        log::warn!("smp: no usable RAM below 640 KiB for the start-up trampoline; only the boot CPU runs");
        return 1;
    };
    // The low megabyte is never handed out; reserved again here so that it stays so.
    let _ = kcore::mm::reserve_range(base, base + TRAMPOLINE_PAGES * 4096);
    if let Err(e) = install_trampoline(base) {
        log::error!("smp: {e}; only the boot CPU runs");
        return 1;
    }
    // SAFETY: reading IA32_PAT has no side effects (PAT is architectural on every x86_64 CPU).
    PAT.store(unsafe { Msr::new(IA32_PAT).read() }, Ordering::Relaxed);
    if Cr4::read().contains(Cr4Flags::OSXSAVE) {
        XCR0.store(x86_64::registers::xcontrol::XCr0::read_raw(), Ordering::Relaxed);
    }
    ENTRY.call_once(|| entry);
    others.truncate(max - 1);
    // Every stack first, so the backtrace walker's table is complete before any AP runs.
    let mut stacks: Vec<(usize, u64, u64)> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for i in 0..others.len() {
        let (Some(stack), Some(ist)) =
            (kcore::mm::alloc_frames(AP_STACK_PAGES, 1), kcore::mm::alloc_frames(AP_IST_PAGES, 1))
        else {
            log::warn!("smp: no frames for the stacks of {} more CPU(s)", others.len() - i);
            break;
        };
        let stack = kcore::mm::phys_to_virt(stack);
        let ist = kcore::mm::phys_to_virt(ist);
        let (stack_top, ist_top) = (stack + (AP_STACK_PAGES * 4096) as u64, ist + (AP_IST_PAGES * 4096) as u64);
        ranges.push((stack as usize, stack_top as usize));
        ranges.push((ist as usize, ist_top as usize));
        stacks.push((i, stack_top, ist_top));
    }
    crate::gdt::publish_stack_ranges(&ranges);
    log::info!("smp: trampoline at {base:#x}; starting up to {} more CPU(s)", stacks.len());
    let page = (base >> 12) as u8;
    let mut online = 1;
    for &(i, stack_top, ist_top) in &stacks {
        let apic_id = others[i];
        let index = online;
        IST_TOP[index].store(ist_top, Ordering::Relaxed);
        STACK_TOP[index].store(stack_top, Ordering::Relaxed);
        prepare_ap(base, index, stack_top);
        let t0 = crate::tsc::uptime_ns();
        let sent = crate::apic::send_init(apic_id as u8).and_then(|()| {
            crate::apic::send_startup(apic_id as u8, page)?;
            // A second SIPI (the start-up algorithm sends two) unless the first one was taken.
            if !wait_up(index, 200_000) && progress(base) == 0 {
                crate::apic::send_startup(apic_id as u8, page)?;
            }
            Ok(())
        });
        if let Err(e) = sent {
            log::warn!("smp: cpu {index} (apic {apic_id}): IPI not sent ({e:?}); left off");
            continue;
        }
        if wait_up(index, START_TIMEOUT_NS) {
            let us = crate::tsc::uptime_ns().saturating_sub(t0) / 1000;
            log::info!("smp: cpu {index} (apic {apic_id}) started ({us} us)");
            online += 1;
        } else {
            log::warn!(
                "smp: cpu {index} (apic {apic_id}) did not start within {} ms (progress {}); left off",
                START_TIMEOUT_NS / 1_000_000,
                progress(base)
            );
            // Parked, so that it cannot run the trampoline prepared for the next CPU.
            let _ = crate::apic::send_init(apic_id as u8);
        }
    }
    online
}

/// First Rust code of an AP: kernel page tables, its stack, interrupts off;
/// the GDT is still the trampoline's (not mapped any more: nothing may load
/// a segment before [`crate::gdt::init_cpu`]), there is no IDT yet.
#[unsafe(no_mangle)]
extern "C" fn x86_ap_main(index: usize) -> ! {
    let index = index.min(MAX_CPUS - 1);
    crate::gdt::init_cpu(index, IST_TOP[index].load(Ordering::Relaxed), STACK_TOP[index].load(Ordering::Relaxed));
    crate::interrupts::init_idt();
    PROGRESS.store(4, Ordering::Release);
    // From here `cpu_index()` answers `index` on this CPU.
    crate::user::init_syscalls_cpu(index);
    let pat = PAT.load(Ordering::Relaxed);
    if pat != 0 {
        // SAFETY: the boot CPU's PAT value, valid on this CPU of the same machine; the kernel's mappings mean the same memory types under it on every CPU.
        unsafe { Msr::new(IA32_PAT).write(pat) };
    }
    let xcr0 = XCR0.load(Ordering::Relaxed);
    if xcr0 != 0 && Cr4::read().contains(Cr4Flags::OSXSAVE) {
        // SAFETY: CR4.OSXSAVE is set (copied from the boot CPU), and the value is the boot CPU's XCR0, which this CPU of the same model supports.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nomem, nostack))
        };
    }
    PROGRESS.store(5, Ordering::Release);
    if let Err(e) = crate::apic::init_secondary(crate::interrupts::TIMER_HZ, crate::interrupts::TIMER_VECTOR) {
        // Without its timer the CPU still schedules (it wakes on other interrupts only).
        log::warn!("cpu {index}: local APIC: {e}");
    }
    PROGRESS.store(6, Ordering::Release);
    let Some(&entry) = ENTRY.get() else {
        loop {
            x86_64::instructions::hlt();
        }
    };
    UP.store(index, Ordering::Release);
    entry(index)
}
