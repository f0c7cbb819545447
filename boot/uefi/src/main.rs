//! The portcullis UEFI loader (`\EFI\BOOT\BOOTX64.EFI` / `BOOTAA64.EFI`).
//!
//! It runs as a UEFI application on real firmware or OVMF / AAVMF and:
//! 1. reads the kernel ELF `\portcullis\kernel` from the volume it was
//!    loaded from (the EFI system partition) and the optional command line
//!    `\portcullis\cmdline`;
//! 2. allocates the `PT_LOAD` segments at their physical addresses
//!    (`p_paddr`) — or, when firmware owns the link address (OVMF keeps
//!    boot-services data at 16 MiB; arm servers have no RAM at 1 GiB), all
//!    shifted to a free 2 MiB-aligned block (both kernels' entries are position
//!    independent and map their image window to where it lands) — copies them
//!    and zeroes the rest (`p_memsz` > `p_filesz`); `uefi.relocate=1` on the
//!    command line forces the move, to test that path;
//! 3. finds the ACPI RSDP (`ACPI_20` table, else `ACPI`) and a device tree
//!    (`EFI_DTB_TABLE`) among the configuration tables (UEFI 2.10 §4.6);
//! 4. exits boot services, turns the final memory map into the
//!    [`bootinfo::BootInfo`] memory map, and enters the kernel at `e_entry`
//!    with the hand-off's physical address and [`bootinfo::BOOTINFO_MAGIC`]
//!    (x86_64: RDI, RSI, interrupts off, long mode with the firmware's identity
//!    map; aarch64: x0, x1, MMU and caches off after cleaning the image to the
//!    point of coherency, as the arm64 Linux boot protocol asks).
//!
//! The kernel checks the hand-off with `BootInfo::from_handoff` and then runs
//! exactly as after the direct boot paths: one entry contract, several loaders.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use bootinfo::{BootInfo, MemoryRegion, PhysRange};
use core::fmt::Write as _;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::proto::media::file::{File, FileAttribute, FileInfo, FileMode};
use uefi::table::cfg::ConfigTableEntry;
use uefi::{cstr16, CStr16, Guid, Status};

/// Path of the kernel ELF on the loader's volume.
const KERNEL_PATH: &CStr16 = cstr16!("\\portcullis\\kernel");
/// Path of the optional kernel command line (one line of text).
const CMDLINE_PATH: &CStr16 = cstr16!("\\portcullis\\cmdline");
/// `EFI_DTB_TABLE_GUID` (the device tree configuration table, UEFI 2.10 §4.6.1.3).
const DTB_GUID: Guid = uefi::guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");
const PAGE: u64 = load_plan::PAGE;

/// `e_machine` of x86-64.
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62;
/// `e_machine` of AArch64.
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183;
#[cfg(target_arch = "x86_64")]
const LOADER_NAME: &str = "uefi (x86_64)";
#[cfg(target_arch = "aarch64")]
const LOADER_NAME: &str = "uefi (aarch64)";

/// Writes one line to the firmware console (serial on OVMF / AAVMF).
fn say(args: core::fmt::Arguments<'_>) {
    uefi::system::with_stdout(|out| {
        let _ = out.write_fmt(args);
        let _ = out.write_str("\r\n");
    });
}

#[uefi::entry]
fn main() -> Status {
    if uefi::helpers::init().is_err() {
        return Status::ABORTED;
    }
    // A hung kernel load must not reboot the machine under our feet.
    let _ = boot::set_watchdog_timer(0, 0x10000, None);
    match load() {
        Ok(never) => match never {},
        Err(e) => {
            say(format_args!("portcullis-uefi: error: {e}"));
            Status::LOAD_ERROR
        }
    }
}

/// Everything that can stop the loader before it hands over.
enum LoadError {
    /// The firmware refused a request.
    Firmware(&'static str, Status),
    /// The kernel file is not a kernel this loader can enter.
    Kernel(&'static str),
    /// The kernel ELF cannot be loaded.
    Plan(load_plan::PlanError),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Firmware(what, status) => write!(f, "{what}: {status:?}"),
            LoadError::Kernel(what) => write!(f, "kernel image: {what}"),
            LoadError::Plan(e) => write!(f, "kernel image: {e}"),
        }
    }
}

fn fw<T: core::fmt::Debug>(what: &'static str) -> impl FnOnce(uefi::Error<T>) -> LoadError {
    move |e| LoadError::Firmware(what, e.status())
}

/// Reads a whole file from the loader's own volume; `None` if it does not exist.
fn read_file(path: &CStr16) -> Result<Option<Vec<u8>>, LoadError> {
    let mut fs = boot::get_image_file_system(boot::image_handle()).map_err(fw("opening the boot volume"))?;
    let mut root = fs.open_volume().map_err(fw("opening the boot volume's root"))?;
    let handle = match root.open(path, FileMode::Read, FileAttribute::empty()) {
        Ok(h) => h,
        Err(e) if e.status() == Status::NOT_FOUND => return Ok(None),
        Err(e) => return Err(LoadError::Firmware("opening a file", e.status())),
    };
    let mut file = handle.into_regular_file().ok_or(LoadError::Kernel("a directory, not a file"))?;
    let info = file.get_boxed_info::<FileInfo>().map_err(fw("reading file information"))?;
    let size = usize::try_from(info.file_size()).map_err(|_| LoadError::Kernel("file too large"))?;
    let mut data = vec![0u8; size];
    let mut done = 0;
    while done < size {
        let n = file.read(&mut data[done..]).map_err(fw("reading a file"))?;
        if n == 0 {
            return Err(LoadError::Kernel("file shorter than its size"));
        }
        done += n;
    }
    Ok(Some(data))
}

/// Alignment of a relocated image: both kernels map their image window with
/// 2 MiB pages / blocks to wherever the image really is.
const RELOCATION_ALIGN: u64 = 2 << 20;
/// Highest address a relocated image may reach: the x86_64 long-mode entry
/// runs on an identity map of the low 4 GiB until it jumps high; the aarch64
/// kernel's direct map covers 512 GiB.
#[cfg(target_arch = "x86_64")]
const RELOCATION_LIMIT: u64 = 0xFFFF_FFFF;
#[cfg(target_arch = "aarch64")]
const RELOCATION_LIMIT: u64 = (512 << 30) - 1;

/// Finds `pages` pages for the image linked at `start`: the link address if
/// free (and `force_move` is off), else a 2 MiB-aligned block below
/// [`RELOCATION_LIMIT`]. Returns where the image goes.
fn place_image(start: u64, pages: usize, force_move: bool) -> Result<u64, LoadError> {
    if !force_move && boot::allocate_pages(AllocateType::Address(start), MemoryType::LOADER_DATA, pages).is_ok() {
        return Ok(start);
    }
    let end = start + pages as u64 * PAGE;
    if force_move {
        say(format_args!("portcullis-uefi: uefi.relocate=1: not using the link address {start:#x}"));
    } else {
        say(format_args!("portcullis-uefi: physical {start:#x}-{end:#x} is not free; the firmware has there:"));
        report_map(start, end);
    }
    let slack = (RELOCATION_ALIGN / PAGE) as usize;
    let block =
        boot::allocate_pages(AllocateType::MaxAddress(RELOCATION_LIMIT), MemoryType::LOADER_DATA, pages + slack)
            .map_err(fw("allocating the kernel's pages elsewhere"))?;
    let block = block.as_ptr() as u64;
    let (base, head, tail) = load_plan::carve_aligned(block, RELOCATION_ALIGN);
    // SAFETY: the head and tail pages are the unused ends of the block just allocated; nothing refers to them.
    unsafe {
        if head > 0 {
            let _ = boot::free_pages(core::ptr::NonNull::new_unchecked(block as *mut u8), head);
        }
        if tail > 0 {
            let _ = boot::free_pages(core::ptr::NonNull::new_unchecked((base + pages as u64 * PAGE) as *mut u8), tail);
        }
    }
    say(format_args!("portcullis-uefi: image relocated from its link address {start:#x} to {base:#x}"));
    Ok(base)
}

/// Loads the image's segments (at their link addresses, or all moved by one
/// 2 MiB-aligned offset) and returns (entry point, physical range of the image).
fn load_segments(image: &[u8], force_move: bool) -> Result<(u64, PhysRange), LoadError> {
    let plan = load_plan::Plan::new(image, MACHINE).map_err(LoadError::Plan)?;
    let base = place_image(plan.link_start, plan.pages(), force_move)?;
    // SAFETY: the firmware gave us [base, base + plan.size), identity-mapped while boot services run.
    let span = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, plan.size as usize) };
    plan.copy_into(image, span).map_err(LoadError::Plan)?;
    let (entry, start, end) = plan.placed_at(base);
    Ok((entry, PhysRange { start, end }))
}

/// Prints the firmware memory-map entries that overlap `[start, end)`.
fn report_map(start: u64, end: u64) {
    let Ok(map) = boot::memory_map(MemoryType::LOADER_DATA) else { return };
    for d in map.entries() {
        let (s, e) = (d.phys_start, d.phys_start + d.page_count * PAGE);
        if s < end && start < e {
            say(format_args!("portcullis-uefi:   {s:#x}-{e:#x} {:?}", d.ty));
        }
    }
}

/// The RSDP (ACPI 2.0 preferred) and the device tree from the configuration tables.
fn firmware_tables() -> (u64, u64) {
    uefi::system::with_config_table(|entries| {
        let find = |guid: Guid| entries.iter().find(|e| e.guid == guid).map_or(0, |e| e.address as u64);
        let rsdp = match find(ConfigTableEntry::ACPI2_GUID) {
            0 => find(ConfigTableEntry::ACPI_GUID),
            a => a,
        };
        (rsdp, find(DTB_GUID))
    })
}

fn load() -> Result<core::convert::Infallible, LoadError> {
    say(format_args!("portcullis-uefi: loading \\portcullis\\kernel"));
    let cmdline = read_file(CMDLINE_PATH)?.unwrap_or_default();
    let cmdline =
        core::str::from_utf8(&cmdline).map_err(|_| LoadError::Kernel("\\portcullis\\cmdline is not UTF-8"))?;
    let cmdline = cmdline.trim();
    // `uefi.relocate=1` moves the image even when its link address is free (tests the relocation path).
    let force_move = cmdline.split_ascii_whitespace().any(|w| w == "uefi.relocate=1");
    let image =
        read_file(KERNEL_PATH)?.ok_or(LoadError::Kernel("\\portcullis\\kernel not found on the boot volume"))?;
    let (entry, range) = load_segments(&image, force_move)?;
    drop(image);
    let (rsdp, dtb) = firmware_tables();
    say(format_args!(
        "portcullis-uefi: kernel {:#x}-{:#x} entry {entry:#x}; acpi rsdp {rsdp:#x}, dtb {dtb:#x}; cmdline \"{cmdline}\"",
        range.start, range.end
    ));

    // The hand-off lives in its own pages; the kernel copies it before it allocates.
    let pages = core::mem::size_of::<BootInfo>().div_ceil(PAGE as usize);
    let handoff = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .map_err(fw("allocating the boot information"))?;
    let mut info = BootInfo::new(LOADER_NAME);
    info.set_cmdline(cmdline);
    info.set_acpi_rsdp(rsdp);
    info.set_dtb(dtb);
    info.kernel_image = range;
    say(format_args!("portcullis-uefi: exiting boot services"));

    // SAFETY: nothing from boot services (protocols, pool memory) is used after this point; the kernel pages and the hand-off pages are LOADER_DATA, which the firmware leaves alone.
    let map = unsafe { boot::exit_boot_services(None) };
    let mut overflow = false;
    for d in map.entries() {
        if let Some(kind) = bootinfo::uefi_memory_kind(d.ty.0) {
            let region = MemoryRegion { base: d.phys_start, size: d.page_count * PAGE, kind };
            overflow |= info.push_merged(region).is_err();
        }
    }
    if overflow {
        // Nothing can be printed any more: the kernel warns when it sees the flag.
        // Memory the map leaves out is never handed out, so this costs RAM, not safety.
        info.set_cmdline(&alloc::format!("{} bootinfo.truncated=1", info.cmdline()));
    }
    let bytes = info.handoff_bytes();
    // SAFETY: `handoff` is `pages` pages of LOADER_DATA that nothing else uses, and `bytes` is no longer than that.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), handoff.as_ptr(), bytes.len()) };
    core::mem::forget(map);
    // SAFETY: the image is loaded at its physical addresses, `entry` is its entry point, and the hand-off is complete.
    unsafe { enter(entry, handoff.as_ptr() as u64, range) }
}

/// Jumps to the kernel with the hand-off in the first argument register and
/// the magic in the second; never returns.
///
/// # Safety
/// `entry` must be the entry point of a loaded portcullis kernel and `handoff`
/// the physical address of a complete `BootInfo`; boot services must be gone.
#[cfg(target_arch = "x86_64")]
unsafe fn enter(entry: u64, handoff: u64, _image: PhysRange) -> ! {
    // SAFETY: the caller's contract; the firmware's identity map covers the kernel's 64-bit entry, which builds its own page tables and stack.
    unsafe {
        core::arch::asm!(
            "cli",
            "jmp {entry}",
            entry = in(reg) entry,
            in("rdi") handoff,
            in("rsi") bootinfo::BOOTINFO_MAGIC,
            options(noreturn)
        )
    }
}

/// As on x86_64, after cleaning and invalidating the image and the hand-off
/// to the point of coherency and turning the MMU and caches off at the
/// current exception level (the kernel's entry expects them off).
///
/// # Safety
/// As on x86_64.
#[cfg(target_arch = "aarch64")]
unsafe fn enter(entry: u64, handoff: u64, image: PhysRange) -> ! {
    let line = {
        let ctr: u64;
        // SAFETY: reads CTR_EL0, which EL1 and EL2 may read.
        unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
        4u64 << ((ctr >> 16) & 0xF)
    };
    let handoff_end = handoff + core::mem::size_of::<BootInfo>() as u64;
    for (start, end) in [(image.start, image.end), (handoff, handoff_end)] {
        let mut a = start & !(line - 1);
        while a < end {
            // SAFETY: clean + invalidate by VA of memory the loader owns (identity-mapped); no data changes.
            unsafe { core::arch::asm!("dc civac, {}", in(reg) a, options(nostack)) };
            a += line;
        }
    }
    // SAFETY: the caller's contract; the trampoline runs from the identity-mapped loader image and branches to the kernel with the MMU off.
    unsafe {
        core::arch::asm!(
            "dsb sy",
            "msr daifset, #0xf",
            "mrs x9, CurrentEL",
            "lsr x9, x9, #2",
            "mov x10, #0x1005",          // SCTLR M | C | I
            "cmp x9, #2",
            "b.ne 1f",
            "mrs x11, sctlr_el2",
            "bic x11, x11, x10",
            "msr sctlr_el2, x11",
            "b 2f",
            "1:",
            "mrs x11, sctlr_el1",
            "bic x11, x11, x10",
            "msr sctlr_el1, x11",
            "2:",
            "isb",
            "ic iallu",
            "dsb sy",
            "isb",
            "br x12",
            in("x12") entry,
            in("x0") handoff,
            in("x1") bootinfo::BOOTINFO_MAGIC,
            options(noreturn)
        )
    }
}
