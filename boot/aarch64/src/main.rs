//! The aarch64 kernel binary, booted by QEMU's `-kernel` as an ELF or by the
//! UEFI loader (`boot/uefi`).
//!
//! `_start` runs at its physical address with the MMU off (QEMU.md §5.2;
//! the UEFI loader turns the MMU off before it jumps). x0 is the DTB (or 0)
//! from QEMU, or the physical address of a `BootInfo` hand-off when x1 is
//! `BOOTINFO_MAGIC`.
//! at EL2 it configures EL2 (timer access, GICv3 system registers, no traps)
//! and drops to EL1, keeping EL2 reachable through a minimal vector table; at
//! EL1 it zeroes .bss, builds one level-0 and one level-1 table that map the
//! first 512 GiB both at 0 (TTBR0, identity) and at the direct map (TTBR1),
//! maps the kernel window (`KERNEL_WINDOW` + link address) to wherever the
//! image really is (2 MiB blocks: the code is position independent until the
//! MMU is on, so a loader may move the image by any 2 MiB multiple), enables
//! the MMU and caches, and jumps to the linked (high) address.
#![no_std]
#![no_main]

use board_virt::{exit, PLATFORM};
use bootinfo::{BootInfo, MemoryKind, MemoryRegion};

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mov x19, x0                     /* DTB pointer per the Linux protocol (QEMU passes 0), or a hand-off */
    mov x21, x1                     /* BOOTINFO_MAGIC when x0 is a hand-off */
    mrs x20, CurrentEL
    lsr x20, x20, #2
    bl el2_enter_el1                /* EL2: configure it, drop to EL1 (boards/virt/src/smp.rs) */
    /* ---- EL1, MMU off ---- */
    mov x0, #(3 << 20)              /* CPACR_EL1.FPEN */
    msr cpacr_el1, x0
    isb

    /* zero .bss (physical addresses: PC-relative) */
    adrp x0, __bss_start
    add x0, x0, :lo12:__bss_start
    adrp x1, __bss_end
    add x1, x1, :lo12:__bss_end
3:  cmp x0, x1
    b.hs 4f
    str xzr, [x0], #8
    b 3b
4:
    /* L0[0] -> L1; L1[i] = 1 GiB block at i GiB. Device for GiB 0 and >= 256. */
    adrp x0, boot_l0
    adrp x1, boot_l1
    orr x2, x1, #3
    str x2, [x0]
    mov x3, #0                      /* i */
5:  lsl x4, x3, #30
    cmp x3, #0
    b.eq 6f
    cmp x3, #256
    b.hs 6f
    mov x5, #0x705                  /* normal: AF | SH inner | AttrIndx 1 | block */
    orr x4, x4, x5
    mov x5, #(1 << 54)              /* UXN: never executable at EL0 */
    b 7f
6:  mov x5, #0x401                  /* device: AF | AttrIndx 0 | block */
    orr x4, x4, x5
    mov x5, #(3 << 53)              /* PXN | UXN: never executable */
7:  orr x4, x4, x5
    str x4, [x1, x3, lsl #3]
    add x3, x3, #1
    cmp x3, #512
    b.ne 5b

    /* Kernel window (TTBR1 L0[511]): the image's link addresses map to where
     * it really is, in 2 MiB blocks. x22 = load address - link address (0 for
     * QEMU's -kernel; a UEFI loader may move the image when firmware owns the
     * link address). */
    adr x6, _start
    ldr x7, =_start_phys
    sub x22, x6, x7
    adrp x0, boot_l0
    adrp x1, boot_l1k
    orr x2, x1, #3
    str x2, [x0, #(511 * 8)]
    lsr x3, x7, #30                 /* L1 slot of the link address */
    adrp x4, boot_l2k
    orr x2, x4, #3
    str x2, [x1, x3, lsl #3]
    lsl x5, x3, #30
    add x5, x5, x22                 /* physical base of that GiB, moved */
    mov x3, #0
8:  lsl x2, x3, #21
    add x2, x2, x5
    mov x6, #0x705                  /* normal: AF | SH inner | AttrIndx 1 | block */
    orr x2, x2, x6
    mov x6, #(1 << 54)              /* UXN */
    orr x2, x2, x6
    str x2, [x4, x3, lsl #3]
    add x3, x3, #1
    cmp x3, #512
    b.ne 8b

    ldr x0, =0xff00                 /* MAIR: attr0 Device-nGnRnE, attr1 Normal WB */
    msr mair_el1, x0
    mrs x1, id_aa64mmfr0_el1
    and x1, x1, #0xf                /* PARange */
    cmp x1, #5
    mov x2, #5
    csel x1, x1, x2, ls             /* IPS = min(PARange, 48 bits) */
    ldr x0, =0xB5103510             /* T0SZ=T1SZ=16, WBWA inner/outer, inner shareable, TG0=4K, TG1=4K */
    orr x0, x0, x1, lsl #32
    msr tcr_el1, x0
    adrp x0, boot_l0
    msr ttbr0_el1, x0
    msr ttbr1_el1, x0
    isb
    tlbi vmalle1
    dsb nsh
    isb
    mrs x0, sctlr_el1
    mov x1, #0x1005                 /* M | C | I */
    orr x0, x0, x1
    msr sctlr_el1, x0
    isb

    ldr x0, =boot_stack_top
    mov sp, x0
    mov x29, #0
    mov x30, #0
    mov x0, x19
    mov x1, x20
    mov x2, x21
    mov x3, x22
    ldr x4, =aarch64_main
    br x4

.section .bss.boot, "aw", @nobits
.balign 4096
boot_l0: .skip 4096
boot_l1: .skip 4096
boot_l1k: .skip 4096
boot_l2k: .skip 4096
.global boot_stack_bottom
.global boot_stack_top
boot_stack_bottom:
    .skip 65536
boot_stack_top:
"#
);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Where QEMU places the DTB for an ELF kernel that passes none: the start of
/// RAM, which is the 1 GiB-aligned base below the kernel (QEMU.md §5.2, G10).
fn find_dtb(x0: u64, kernel_phys: u64) -> Option<u64> {
    let candidates = [x0, kernel_phys & !0x3FFF_FFFF];
    candidates.into_iter().filter(|&pa| pa != 0).find(|&pa| {
        let va = kcore::mm::phys_to_virt(pa) as *const u32;
        // SAFETY: the boot tables map the first 512 GiB; the candidate is RAM or the pointer the loader passed, and the read is 4 bytes, aligned.
        u32::from_be(unsafe { va.read_volatile() }) == 0xD00D_FEED
    })
}

/// Physical range of the kernel image, which the boot code found `delta`
/// bytes away from its link address.
fn image_range(delta: u64) -> (u64, u64) {
    let phys = |va: u64| (va - board_virt::KERNEL_WINDOW).wrapping_add(delta);
    (phys(core::ptr::addr_of!(__kernel_start) as u64), phys(core::ptr::addr_of!(__kernel_end) as u64))
}

fn build_boot_info(x0: u64, entry_el: u64, delta: u64) -> Result<BootInfo, &'static str> {
    let (start, end) = image_range(delta);
    let mut boot = BootInfo::new(if entry_el == 2 { "arm64-elf, entered at EL2" } else { "arm64-elf, entered at EL1" });
    boot.kernel_image = bootinfo::PhysRange { start, end };
    let dtb_pa = find_dtb(x0, start).ok_or("no device tree (x0 = 0 and none at the start of RAM)")?;
    boot.set_dtb(dtb_pa);
    let dt = board_virt::dtb_at(dtb_pa).ok_or("device tree header invalid")?;
    if let Some(uart) = dt.console() {
        // No frame allocator yet, so no dynamic mapping: the boot tables map the
        // first GiB (QEMU virt's device area) as device memory in the direct map.
        board_virt::pl011::init(kcore::mm::phys_to_virt(uart.base));
    }
    for m in dt.memory() {
        boot.push_region(MemoryRegion { base: m.base, size: m.size, kind: MemoryKind::Usable })
            .map_err(|_| "too many memory regions")?;
    }
    for r in dt.reserved() {
        let _ = boot.push_region(MemoryRegion { base: r.base, size: r.size, kind: MemoryKind::Reserved });
    }
    let dtb_size = board_virt::dtb_size(dtb_pa).ok_or("device tree header invalid")?;
    boot.push_region(MemoryRegion { base: dtb_pa, size: dtb_size as u64, kind: MemoryKind::Reserved })
        .map_err(|_| "too many memory regions")?;
    if let Some(args) = dt.bootargs() {
        boot.set_cmdline(args);
    }
    Ok(boot)
}

/// The boot info a loader handed over (UEFI): checked, with the console
/// brought up from what the firmware describes (SPCR under ACPI, else the
/// device tree) and the device tree kept out of the frame allocator.
fn handoff_boot_info(pa: u64, delta: u64) -> Result<BootInfo, &'static str> {
    let (start, end) = image_range(delta);
    // No console is known before the hand-off is accepted: a refusal only shows in the exit status.
    let mut boot = kcore::boot_handoff(pa, (start, end)).map_err(|_| "the loader's boot information was refused")?;
    board_virt::early_console(&boot);
    if let Some(dtb) = boot.dtb() {
        let size = board_virt::dtb_size(dtb).ok_or("device tree header invalid")?;
        boot.push_region(MemoryRegion { base: dtb, size: size as u64, kind: MemoryKind::Reserved })
            .map_err(|_| "too many memory regions")?;
    }
    Ok(boot)
}

/// The first Rust code: EL1, MMU on, boot stack, interrupts masked.
#[unsafe(no_mangle)]
extern "C" fn aarch64_main(x0: u64, entry_el: u64, magic: u64, delta: u64) -> ! {
    board_virt::early_init();
    let boot = if magic == bootinfo::BOOTINFO_MAGIC {
        handoff_boot_info(x0, delta)
    } else {
        build_boot_info(x0, entry_el, delta)
    };
    let boot = match boot {
        Ok(b) => b,
        Err(e) => {
            kcore::console::print_unlocked(format_args!("boot: {e}\n"));
            exit::exit(false)
        }
    };
    exit::configure(&boot);
    kcore::start(&boot, &PLATFORM, &[kcore::ktests::SUITES, board_virt::ktests::SUITES])
}
