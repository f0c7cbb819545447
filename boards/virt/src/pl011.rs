//! The Arm PL011 UART console (PrimeCell UART TRM, DDI 0183, §3.3 register summary).

use core::sync::atomic::{AtomicU64, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u32,
    /// Flag register.
    FR [
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) []
    ],
    /// Control register.
    CR [
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) [],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [],
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) []
    ]
];

register_structs! {
    /// PL011 registers used for polled output.
    Pl011Registers {
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01C => _reserved1),
        (0x030 => cr: ReadWrite<u32, CR::Register>),
        (0x034 => @END),
    }
}

/// Bound on polls of TXFF per byte, so a wedged UART never hangs the kernel.
const MAX_POLLS: u32 = 1_000_000;

static BASE_VA: AtomicU64 = AtomicU64::new(0);

/// Uses the PL011 whose registers are at kernel virtual address `va`, enabling
/// it for transmit and receive if firmware left it off (baud rate as firmware set it).
pub fn init(va: u64) {
    // SAFETY: `va` maps the PL011 register page (device memory) for the kernel's life.
    let regs = unsafe { &*(va as *const Pl011Registers) };
    if !regs.cr.is_set(CR::UARTEN) {
        regs.cr.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }
    BASE_VA.store(va, Ordering::Release);
}

/// Writes text (LF as is); dropped if no UART is configured.
pub fn write_str(text: &str) {
    let va = BASE_VA.load(Ordering::Acquire);
    if va == 0 {
        return;
    }
    // SAFETY: `va` maps the PL011 register page (device memory) for the kernel's life.
    let regs = unsafe { &*(va as *const Pl011Registers) };
    for b in text.bytes() {
        let mut polls = 0;
        while regs.fr.is_set(FR::TXFF) && polls < MAX_POLLS {
            polls += 1;
            core::hint::spin_loop();
        }
        regs.dr.set(u32::from(b));
    }
}

/// A received byte, if one is waiting (never blocks); bytes the UART flagged
/// with a framing, parity, break or overrun error (DR bits 11:8) are dropped.
pub fn try_read() -> Option<u8> {
    let va = BASE_VA.load(Ordering::Acquire);
    if va == 0 {
        return None;
    }
    // SAFETY: `va` maps the PL011 register page (device memory) for the kernel's life.
    let regs = unsafe { &*(va as *const Pl011Registers) };
    for _ in 0..32 {
        if regs.fr.is_set(FR::RXFE) {
            return None;
        }
        let d = regs.dr.get();
        if d & 0xF00 == 0 {
            return Some(d as u8);
        }
    }
    None
}
