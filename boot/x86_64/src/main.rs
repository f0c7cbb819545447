//! The x86_64 kernel binary, with two entries into the same kernel:
//!
//! - `pvh_start32`, named by the PVH ELF note, for QEMU's `-kernel` (32-bit
//!   protected mode, paging off, EBX = `hvm_start_info`; QEMU.md §5.1);
//! - `entry64`, the ELF entry point, for loaders that run in long mode — the
//!   UEFI loader (`boot/uefi`) enters it with RDI = physical address of a
//!   `BootInfo` hand-off and RSI = `BOOTINFO_MAGIC`, paging on with an identity
//!   map of the low 4 GiB, interrupts off.
//!
//! Both build the same boot page tables — identity for the first 4 GiB, the
//! direct map at `0xFFFF_8000_0000_0000` (1 GiB pages) and the kernel at
//! `0xFFFF_FFFF_8000_0000` — enable NX and call [`x86_64_main`] on the boot
//! stack. `entry64` is position independent: a loader that cannot get the
//! link address (firmware data sits there on OVMF) may load the image at any
//! 2 MiB-aligned address below 4 GiB, and the kernel window then maps there
//! (2 MiB pages).
#![no_std]
#![no_main]

use board_pc::{exit, pvh, PLATFORM};

core::arch::global_asm!(
    r#"
.section .note.pvh, "a"
.balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32

.section .boot.data, "aw"
.balign 4096
boot_pml4:      .fill 512, 8, 0
boot_pdpt_low:  .fill 512, 8, 0
boot_pdpt_dmap: .fill 512, 8, 0
boot_pdpt_kern: .fill 512, 8, 0
boot_pd_kern:   .fill 512, 8, 0
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
boot_gdt_ptr64:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

.section .boot.text, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    mov esi, ebx                        /* keep hvm_start_info */

    /* PML4[0] identity, PML4[256] direct map, PML4[511] kernel */
    mov eax, offset boot_pdpt_low
    or eax, 3
    mov [boot_pml4], eax
    mov eax, offset boot_pdpt_dmap
    or eax, 3
    mov [boot_pml4 + 256 * 8], eax
    mov eax, offset boot_pdpt_kern
    or eax, 3
    mov [boot_pml4 + 511 * 8], eax

    /* direct map: 512 x 1 GiB pages; identity reuses the first 4 */
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 30
    or eax, 0x83                        /* present, writable, 1 GiB */
    mov edx, ecx
    shr edx, 2                          /* bits 32.. of the address */
    mov [boot_pdpt_dmap + ecx * 8], eax
    mov [boot_pdpt_dmap + ecx * 8 + 4], edx
    cmp ecx, 4
    jae 3f
    mov [boot_pdpt_low + ecx * 8], eax
    mov [boot_pdpt_low + ecx * 8 + 4], edx
3:
    inc ecx
    cmp ecx, 512
    jne 2b
    /* kernel: 0xFFFFFFFF80000000 -> physical 0 (PDPT index 510) */
    mov dword ptr [boot_pdpt_kern + 510 * 8], 0x83

    mov eax, cr4
    or eax, 0x20                        /* PAE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080                 /* EFER */
    rdmsr
    or eax, 0x900                       /* LME | NXE */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001                  /* PG | WP | PE */
    mov cr0, eax
    lgdt [boot_gdt_ptr]
    mov eax, offset long_mode
    push 0x08
    push eax
    retf

.code64
long_mode:
    mov r12d, esi                       /* hvm_start_info */
    xor r13d, r13d                      /* no hand-off magic: PVH */
    xor r14d, r14d                      /* loaded at the link address */
    jmp enter_kernel

/* Long-mode entry (UEFI loader): RDI = hand-off, RSI = magic, identity-mapped.
 * The loader may place the image anywhere 2 MiB-aligned below 4 GiB (firmware
 * owns the link address on many machines): everything here is RIP-relative,
 * and the kernel's 1 GiB window maps to where the image really is. */
.global entry64
entry64:
    cli
    mov r12, rdi
    mov r13, rsi
    lea r14, [rip + entry64]
    mov eax, offset entry64
    sub r14, rax                        /* r14 = load address - link address */
    lea rax, [rip + boot_pdpt_low]
    or rax, 3
    mov [rip + boot_pml4], rax
    lea rax, [rip + boot_pdpt_dmap]
    or rax, 3
    mov [rip + boot_pml4 + 256 * 8], rax
    lea rax, [rip + boot_pdpt_kern]
    or rax, 3
    mov [rip + boot_pml4 + 511 * 8], rax
    lea rdx, [rip + boot_pdpt_dmap]
    lea rsi, [rip + boot_pdpt_low]
    xor ecx, ecx
5:
    mov rax, rcx
    shl rax, 30
    or rax, 0x83                        /* present, writable, 1 GiB */
    mov [rdx + rcx * 8], rax
    cmp ecx, 4
    jae 6f
    mov [rsi + rcx * 8], rax
6:
    inc ecx
    cmp ecx, 512
    jne 5b
    /* kernel window: 0xFFFFFFFF80000000 + x -> x + r14, 2 MiB pages */
    lea rdx, [rip + boot_pd_kern]
    xor ecx, ecx
7:
    mov rax, rcx
    shl rax, 21
    add rax, r14
    or rax, 0x83                        /* present, writable, 2 MiB */
    mov [rdx + rcx * 8], rax
    inc ecx
    cmp ecx, 512
    jne 7b
    or rdx, 3
    mov [rip + boot_pdpt_kern + 510 * 8], rdx
    mov ecx, 0xC0000080                 /* EFER.NXE (LME is on already) */
    rdmsr
    or eax, 0x800
    wrmsr
    mov rax, cr0
    or eax, 0x10000                     /* WP */
    mov cr0, rax
    lea rax, [rip + boot_pml4]
    mov cr3, rax
    movabs rsp, offset boot_stack_top
    lea rax, [rip + boot_gdt]
    mov [rip + boot_gdt_ptr64 + 2], rax
    lgdt [rip + boot_gdt_ptr64]
    push 0x08
    lea rax, [rip + enter_kernel]
    push rax
    .byte 0x48, 0xcb                    /* retfq: reload CS from the new GDT */

/* Both entries: 64-bit CS loaded; R12 = argument, R13 = magic, R14 = load offset. */
enter_kernel:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    movabs rsp, offset boot_stack_top
    xor ebp, ebp
    mov rdi, r12
    mov rsi, r13
    mov rdx, r14
    movabs rax, offset x86_64_main
    call rax
9:
    hlt
    jmp 9b

.section .bss.boot_stack, "aw", @nobits
.balign 4096
.global boot_stack_bottom
.global boot_stack_top
boot_stack_bottom:
    .skip 65536
boot_stack_top:
"#
);

unsafe extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
}

/// The first Rust code: long mode, boot page tables, boot stack, interrupts off.
/// `magic` is `BOOTINFO_MAGIC` when `arg` is a loader's `BootInfo` hand-off,
/// 0 when it is PVH's `hvm_start_info`; `delta` is how far from its link
/// address the loader put the image (0 for PVH).
#[unsafe(no_mangle)]
extern "C" fn x86_64_main(arg: u64, magic: u64, delta: u64) -> ! {
    board_pc::tsc::mark_start();
    board_pc::early_init();
    // The symbols sit in the identity-mapped .boot section: their link addresses are physical.
    let image = (
        (core::ptr::addr_of!(__kernel_phys_start) as u64).wrapping_add(delta),
        (core::ptr::addr_of!(__kernel_phys_end) as u64).wrapping_add(delta),
    );
    let boot = if magic == bootinfo::BOOTINFO_MAGIC {
        kcore::boot_handoff(arg, image).map_err(|e| alloc_free_error(format_args!("{e}")))
    } else {
        pvh::boot_info(arg, image).map_err(|e| alloc_free_error(format_args!("{e}")))
    };
    let Ok(boot) = boot else { exit::exit(false) };
    exit::configure(&boot);
    kcore::start(&boot, &PLATFORM, &[kcore::ktests::SUITES, board_pc::ktests::SUITES])
}

/// Prints why there is no `BootInfo` (there is no heap yet).
fn alloc_free_error(e: core::fmt::Arguments<'_>) {
    kcore::console::print_unlocked(format_args!("boot: {e}\n"));
}
