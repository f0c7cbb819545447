//! Register access: a bounds-checked window over a unit's register MMIO
//! ([`MmioWindow`]) and the register blocks it hands out
//! ([`RegisterBlock`], declared with [`crate::register_blocks!`]).
//!
//! # Why a `&T` over MMIO is sound here
//!
//! A driver reads and writes a unit's registers through tock-registers
//! cells (`ReadOnly`, `ReadWrite`, `WriteOnly`) laid over the register
//! window. Handing out `&T` for such a `T` is sound when:
//!
//! 1. **the memory is there**: [`MmioWindow::new`] is the one place a caller
//!    vouches that `[base, base + len)` is mapped (device memory, or plain
//!    memory in tests) for as long as the window, any copy of it or any
//!    window [`MmioWindow::sub`] cut from it is used; every
//!    [`MmioWindow::block`] is checked to lie inside it and to be aligned for
//!    `T`;
//! 2. **every byte of `T` is a cell valid for any bit pattern**: `T` is a
//!    [`RegisterBlock`], which only [`crate::register_blocks!`] implements,
//!    and only after a compile-time check that every declared field is a
//!    [`RegisterCell`] (a tock-registers cell over an integer, or an array of
//!    them); the gaps are `u8` padding, which nothing reads. Every access
//!    through a cell is a volatile read or write of its integer, which the
//!    compiler neither elides, merges nor caches: the value the device
//!    changes behind the reference is read afresh each time. `ReadWrite` and
//!    `WriteOnly` wrap an `UnsafeCell`, so the shared reference carries no
//!    immutability promise at all; `ReadOnly` wraps the integer directly (as
//!    tock-registers defines it) and relies on the volatile read alone;
//! 3. **nobody else holds a conflicting reference**: the window is made from
//!    an address, never from a Rust allocation, so no `&mut` to the same bytes
//!    exists (the fake window of the `testing` feature lends its heap block
//!    only to windows and to its own atomic accessors).
//!
//! A window (and a [`BlockRef`]) is `Send` and `Sync` like the raw
//! addresses it replaces: two CPUs' volatile accesses to device registers
//! are ordered by the device, and each driver serialises its programming
//! sequences (command, then status poll) with its own locking, as before.
//!
//! Driver crates then carry `#![forbid(unsafe_code)]`: the `unsafe impl` the
//! macro emits comes from this crate's `macro_rules!` expansion, in which
//! rustc does not report the `unsafe_code` lint.
//!
//! ```
//! #![forbid(unsafe_code)] // the driver crate's attribute: the macro's expansion passes it
//! use iommu::mmio::MmioWindow;
//! use iommu::mmio::tock_registers::registers::{ReadOnly, ReadWrite};
//! use iommu::mmio::tock_registers::interfaces::{Readable, Writeable};
//!
//! iommu::register_blocks! {
//!     /// Two registers.
//!     pub Regs {
//!         (0x00 => pub id: ReadOnly<u32>),
//!         (0x04 => _reserved),
//!         (0x08 => pub ctrl: ReadWrite<u64>),
//!         (0x10 => @END),
//!     }
//! }
//!
//! let fake = iommu::mmio::FakeMmio::new(0x1000).unwrap();
//! fake.write_u32(0, 0x10);
//! let window = fake.window();
//! let regs = window.block::<Regs>(0).unwrap();
//! regs.ctrl.set(5);
//! assert_eq!((regs.id.get(), fake.read_u64(8)), (0x10, 5));
//! assert!(window.block::<Regs>(0xFF8).is_err(), "past the end");
//! ```

use core::fmt;

pub use tock_registers;

use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{RegisterLongName, UIntLike};

mod sealed {
    /// Only this crate's cell types are register cells.
    pub trait Sealed {}
}

/// A register cell: a tock-registers `ReadOnly`, `ReadWrite` or `WriteOnly`
/// over an integer, or an array of cells. Every value of every bit pattern is
/// valid and every access is volatile. Sealed: only this crate implements it.
pub trait RegisterCell: sealed::Sealed {}

impl<T: UIntLike, R: RegisterLongName> sealed::Sealed for ReadOnly<T, R> {}
impl<T: UIntLike, R: RegisterLongName> RegisterCell for ReadOnly<T, R> {}
impl<T: UIntLike, R: RegisterLongName> sealed::Sealed for ReadWrite<T, R> {}
impl<T: UIntLike, R: RegisterLongName> RegisterCell for ReadWrite<T, R> {}
impl<T: UIntLike, R: RegisterLongName> sealed::Sealed for WriteOnly<T, R> {}
impl<T: UIntLike, R: RegisterLongName> RegisterCell for WriteOnly<T, R> {}
impl<C: RegisterCell, const N: usize> sealed::Sealed for [C; N] {}
impl<C: RegisterCell, const N: usize> RegisterCell for [C; N] {}

/// A block of registers laid over MMIO by [`MmioWindow::block`].
///
/// # Safety
/// Every field of the type is a [`RegisterCell`] or `u8` padding, so every
/// bit pattern is valid and every access through it is volatile. Implemented
/// only by [`crate::register_blocks!`], which checks the fields at compile time.
pub unsafe trait RegisterBlock: Sized {}

/// Compile-time check used by [`crate::register_blocks!`]: `T` is a register cell.
#[doc(hidden)]
pub const fn assert_register_cell<T: RegisterCell>() {}

/// Declares register blocks in tock-registers' `register_structs!` syntax and
/// makes each a [`RegisterBlock`], after checking at compile time that every
/// field type is a [`RegisterCell`]. See the [module docs](crate::mmio).
#[macro_export]
macro_rules! register_blocks {
    {
        $(
            $(#[$attr:meta])*
            $vis:vis $name:ident {
                $( $(#[$fattr:meta])* ( $($field:tt)* ) ),* $(,)?
            }
        ),* $(,)?
    } => {
        $crate::mmio::tock_registers::register_structs! {
            $(
                $(#[$attr])*
                $vis $name {
                    $( $(#[$fattr])* ( $($field)* ), )*
                }
            ),*
        }
        $(
            const _: () = {
                $( $crate::__register_block_field!($($field)*); )*
            };
            // SAFETY: every declared field was checked above to be a `RegisterCell`; the gaps are `u8` padding.
            unsafe impl $crate::mmio::RegisterBlock for $name {}
        )*
    };
}

/// One field of [`register_blocks!`]: a cell type is checked, padding and the end pass.
#[doc(hidden)]
#[macro_export]
macro_rules! __register_block_field {
    ($offset:expr => @END) => {};
    ($offset:expr => $vis:vis $field:ident : $ty:ty) => {
        $crate::mmio::assert_register_cell::<$ty>()
    };
    ($offset:expr => $padding:ident) => {};
}

/// Why [`MmioWindow::block`] or [`MmioWindow::sub`] refused: the bytes asked
/// for leave the window, or are not aligned for the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideWindow {
    /// First byte asked for, from the window's start.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes in the window.
    pub window: u64,
    /// The block's alignment, when the address was not a multiple of it
    /// (0: the bounds were the problem).
    pub misaligned: u64,
}

impl fmt::Display for OutsideWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.misaligned != 0 {
            write!(f, "registers at {:#x} are not {}-byte aligned", self.offset, self.misaligned)
        } else {
            write!(
                f,
                "registers at {:#x}+{:#x} lie outside the {:#x}-byte register window",
                self.offset, self.len, self.window
            )
        }
    }
}

/// A unit's register MMIO: `len` bytes at virtual address `base`, mapped
/// for as long as this window (or a copy, or a sub-window) is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    base: u64,
    len: u64,
}

impl MmioWindow {
    /// A window of `len` bytes of registers at virtual address `base_va`.
    ///
    /// # Safety
    /// `[base_va, base_va + len)` must be mapped, readable and writable with
    /// volatile accesses of 1 to 8 bytes (device memory or plain memory),
    /// for as long as the window, any copy of it or any window cut from it
    /// is used (in the kernel: an MMIO mapping that is never unmapped), and
    /// no Rust reference other than the cells handed out by windows may
    /// cover those bytes. The range must not wrap the address space.
    pub unsafe fn new(base_va: u64, len: u64) -> MmioWindow {
        MmioWindow { base: base_va, len }
    }

    /// Bytes in the window.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Virtual address of the window's first byte (for logs).
    pub fn base(&self) -> u64 {
        self.base
    }

    fn check(&self, offset: u64, len: u64, align: u64) -> Result<u64, OutsideWindow> {
        let refused = |misaligned| OutsideWindow { offset, len, window: self.len, misaligned };
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(refused(0)),
        }
        let at = self.base + offset; // inside the window, which does not wrap
        if align > 1 && !at.is_multiple_of(align) {
            return Err(refused(align));
        }
        Ok(at)
    }

    /// The register block `T` at byte `offset`: refused when it leaves the
    /// window or its address is not aligned for `T`.
    pub fn block<T: RegisterBlock>(&self, offset: u64) -> Result<&T, OutsideWindow> {
        let size = core::mem::size_of::<T>() as u64;
        let at = self.check(offset, size, core::mem::align_of::<T>() as u64)?;
        // SAFETY: `at..at + size_of::<T>()` lies inside the window, which `new`'s caller vouched is mapped for as long as `self` is used (the reference borrows `self`), and `at` is aligned for `T`; `T` is a `RegisterBlock`: only volatile cells valid for any bit pattern, and padding.
        Ok(unsafe { &*(at as *const T) })
    }

    /// The register block `T` at byte `offset`, checked once (as for
    /// [`MmioWindow::block`]) and kept: a driver checks its blocks at
    /// bring-up and reaches them later without a fallible step.
    pub fn checked<T: RegisterBlock>(&self, offset: u64) -> Result<BlockRef<T>, OutsideWindow> {
        let size = core::mem::size_of::<T>() as u64;
        let addr = self.check(offset, size, core::mem::align_of::<T>() as u64)?;
        Ok(BlockRef { addr, block: core::marker::PhantomData })
    }

    /// The `len` bytes at `offset` as a window of their own.
    pub fn sub(&self, offset: u64, len: u64) -> Result<MmioWindow, OutsideWindow> {
        let at = self.check(offset, len, 1)?;
        Ok(MmioWindow { base: at, len })
    }
}

/// A register block [`MmioWindow::checked`] found inside its window and
/// aligned: part of that window (its mapping contract covers the block for
/// as long as the `BlockRef` is used), dereferencing to `&T`.
pub struct BlockRef<T> {
    addr: u64,
    /// `fn() -> T`: the reference is to MMIO, not an owned `T` (Send and
    /// Sync like the window's addresses).
    block: core::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for BlockRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for BlockRef<T> {}

impl<T> fmt::Debug for BlockRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockRef({:#x})", self.addr)
    }
}

impl<T: RegisterBlock> BlockRef<T> {
    /// Virtual address of the block (for logs).
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl<T: RegisterBlock> core::ops::Deref for BlockRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `MmioWindow::checked` found `addr..addr + size_of::<T>()` inside a window whose maker vouched it stays mapped while anything cut from it (this block) is used, and `addr` aligned for `T`; `T` is a `RegisterBlock` (volatile cells valid for any bit pattern, and padding).
        unsafe { &*(self.addr as *const T) }
    }
}

/// A heap-backed register window for host tests (feature `testing`): zeroed
/// memory that driver code reaches through [`FakeMmio::window`] and the test
/// through the accessors here, standing in for the device. The memory is
/// leaked, so windows made from it stay valid however long they are kept.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy)]
pub struct FakeMmio {
    words: &'static [core::sync::atomic::AtomicU64],
}

#[cfg(any(test, feature = "testing"))]
impl FakeMmio {
    /// `len` bytes (rounded up to 8) of zeroed fake registers, 8-byte
    /// aligned; `None` when the heap has no room.
    pub fn new(len: u64) -> Option<FakeMmio> {
        let n = usize::try_from(len.div_ceil(8)).ok()?;
        let mut v = alloc::vec::Vec::new();
        v.try_reserve_exact(n).ok()?;
        v.resize_with(n, || core::sync::atomic::AtomicU64::new(0));
        Some(FakeMmio { words: alloc::vec::Vec::leak(v) })
    }

    /// The window over the whole fake.
    pub fn window(&self) -> MmioWindow {
        let len = self.words.len() as u64 * 8;
        // SAFETY: the words are leaked heap memory (never freed, so mapped for as long as any window is used), reached only through atomics and window cells, both interior-mutable and volatile or atomic.
        unsafe { MmioWindow::new(self.words.as_ptr() as u64, len) }
    }

    fn word(&self, offset: u64) -> &core::sync::atomic::AtomicU64 {
        &self.words[(offset / 8) as usize]
    }

    /// The 64-bit register at byte `offset` (8-aligned; panics outside: test code).
    pub fn read_u64(&self, offset: u64) -> u64 {
        self.word(offset).load(core::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the 64-bit register at byte `offset`.
    pub fn write_u64(&self, offset: u64, value: u64) {
        self.word(offset).store(value, core::sync::atomic::Ordering::SeqCst)
    }

    /// The 32-bit register at byte `offset` (4-aligned), little-endian.
    pub fn read_u32(&self, offset: u64) -> u32 {
        (self.read_u64(offset & !7) >> ((offset & 4) * 8)) as u32
    }

    /// Sets the 32-bit register at byte `offset`, keeping its neighbour.
    pub fn write_u32(&self, offset: u64, value: u32) {
        let shift = (offset & 4) * 8;
        let w = self.read_u64(offset & !7) & !(0xFFFF_FFFF << shift) | u64::from(value) << shift;
        self.write_u64(offset & !7, w);
    }
}

#[cfg(test)]
#[allow(clippy::modulo_one)] // tock-registers' size checks of the 1-byte block
mod tests {
    use super::*;
    use tock_registers::interfaces::{Readable, Writeable};

    crate::register_blocks! {
        /// A test block.
        pub Block {
            (0x00 => pub a: ReadWrite<u32>),
            (0x04 => pub b: ReadOnly<u32>),
            (0x08 => pub c: [ReadWrite<u64>; 2]),
            (0x18 => @END),
        },
        /// A block of one byte register (alignment 1).
        pub Byte {
            (0x00 => pub v: WriteOnly<u8>),
            (0x01 => @END),
        }
    }

    #[test]
    fn blocks_inside_the_window_are_handed_out() {
        let fake = FakeMmio::new(0x40).unwrap();
        let w = fake.window();
        assert_eq!(w.len(), 0x40);
        let b = w.block::<Block>(0x28).unwrap(); // 0x28..0x40: exactly to the end
        b.a.set(0x1234);
        b.c[1].set(u64::MAX);
        fake.write_u32(0x2C, 7);
        assert_eq!((fake.read_u32(0x28), b.b.get(), fake.read_u64(0x38)), (0x1234, 7, u64::MAX));
        w.block::<Byte>(0x3F).unwrap().v.set(0xAB);
        assert_eq!(fake.read_u64(0x38) >> 56, 0xAB);
    }

    #[test]
    fn bounds_and_alignment_are_refused() {
        let w = FakeMmio::new(0x40).unwrap().window();
        let Err(e) = w.block::<Block>(0x30) else { panic!("past the end") };
        assert_eq!(e, OutsideWindow { offset: 0x30, len: 0x18, window: 0x40, misaligned: 0 });
        assert!(w.block::<Byte>(0x40).is_err());
        assert!(w.block::<Block>(u64::MAX - 4).is_err(), "no wrap-around");
        let Err(e) = w.block::<Block>(4) else { panic!("misaligned") };
        assert_eq!(e.misaligned, 8);
        assert!(alloc::string::ToString::to_string(&e).contains("aligned"));
        // Sub-windows: checked, and their blocks checked against the sub-window.
        let s = w.sub(0x10, 0x18).unwrap();
        assert_eq!((s.len(), s.base()), (0x18, w.base() + 0x10));
        assert!(s.block::<Block>(0).is_ok());
        assert!(s.block::<Byte>(0x18).is_err());
        assert!(w.sub(0x30, 0x11).is_err());
        assert!(w.sub(0x40, 0).is_ok_and(|s| s.is_empty()));
        // Checked blocks: the same refusals, then plain dereferences.
        assert!(w.checked::<Block>(0x30).is_err() && w.checked::<Block>(4).is_err());
        let b = w.checked::<Block>(0x10).unwrap();
        let copy = b;
        copy.a.set(3);
        assert_eq!((b.a.get(), b.addr()), (3, w.base() + 0x10));
    }
}
