//! The portcullis syscall ABI, shared by the kernel and `user/userlib`.
//!
//! Calling convention (both architectures): the syscall number and up to five
//! arguments in registers, one result register.
//!
//! | arch | number | arguments | result | instruction |
//! |---|---|---|---|---|
//! | x86_64 | rax | rdi, rsi, rdx, r10, r8 | rax | `syscall` |
//! | aarch64 | x8 | x0–x4 | x0 | `svc #0` |
//!
//! The result is a [`SysResult`] encoded in one register: values `>= 0` are
//! success payloads, `-errno` is an [`Errno`]. Operations that take a struct
//! pass a pointer to it; every such struct begins with `size: u32` and
//! `flags: u32`, the kernel copies `min(size, known)` bytes, rejects unknown
//! flags and non-zero bytes past what it knows, so growing a struct never
//! breaks old callers (../shared/DESIGN.md §3).
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

/// Syscall numbers. Stable: never renumber, only append.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sysno {
    /// `exit(code)`: ends the calling task.
    Exit = 0,
    /// `log(ptr, len)`: writes UTF-8 text to the kernel log.
    Log = 1,
    /// `yield()`: gives up the CPU.
    Yield = 2,
    /// `clock()`: nanoseconds since boot.
    Clock = 3,
    /// `sleep(ns)`: sleeps at least `ns` nanoseconds.
    Sleep = 4,
    /// `mem_map(addr, len, prot)`: maps anonymous zeroed pages; `addr` 0 lets the kernel choose.
    MemMap = 5,
    /// `mem_unmap(addr, len)`: unmaps pages mapped by `mem_map`.
    MemUnmap = 6,
    /// `device_list(buf, len)`: fills `DeviceInfo` records, returns how many devices exist.
    DeviceList = 7,
    /// `device_claim(bdf)`: takes a PCI function for the calling task (`EBUSY` if taken).
    DeviceClaim = 8,
    /// `device_map_bar(bdf, index)`: maps a claimed function's memory BAR, returns its address.
    DeviceMapBar = 9,
    /// `device_config_read(bdf, offset, width)`: reads configuration space.
    DeviceConfigRead = 10,
    /// `device_config_write(bdf, offset, width, value)`: writes configuration space (guarded).
    DeviceConfigWrite = 11,
    /// `task_spawn(name, len)`: starts a packed program as a new task, returns its id.
    TaskSpawn = 12,
    /// `device_irq_enable(bdf)`: routes a claimed function's interrupt to the task.
    DeviceIrqEnable = 13,
    /// `device_irq_wait(bdf, timeout_ns)`: waits for interrupts, returns how many arrived.
    DeviceIrqWait = 14,
    /// The IOAS door: `(op, struct pointer)`, see [`iommufd`].
    Iommufd = 15,
    /// `test_canary(op)`, only while the kernel runs its tests (`ktest=` on
    /// the command line; `ENOSYS`-like `EPERM` otherwise): op 0 returns the
    /// physical address of a kernel frame filled with a known pattern, op 1
    /// returns 0 if the pattern is intact and `EIO` if anything wrote it. The
    /// isolation tests aim device DMA at it. Op 2 reads word `a` (0..8) of a
    /// mailbox every task shares, op 3 writes `b` there, op 4 returns the
    /// physical address of the caller's page at virtual address `a`: the
    /// isolation tests' victim task tells the attacker what to aim at. Op 5
    /// reads kernel counters (leak checks); op 8 returns the syscall
    /// fuzzer's parameters from the command line (`a` 0: `fuzz.seed=`, 1:
    /// `fuzz.calls=`; `ENOENT` when absent).
    TestCanary = 16,
    /// `clock_counter()`: the frequency in Hz of the free-running counter a
    /// task may read itself, without a syscall (x86_64: `rdtsc`; aarch64:
    /// `CNTVCT_EL0`), as Linux's vDSO clock does; `ENOSYS` where the board
    /// offers none. `userlib::time` builds a nanosecond clock on it.
    ClockCounter = 17,
    /// `console_read(buf, len, timeout_ns)`: up to `len` (at most 256) bytes
    /// typed on the console since the last read, waiting up to `timeout_ns`
    /// for the first; 0 when none came. The buffer is checked writable before
    /// any byte is taken (`EFAULT`, nothing lost).
    ConsoleRead = 18,
    /// `info_read(topic, offset, buf, len)`: bytes `offset..` of a read-only
    /// text the kernel keeps about the machine (topic [`info_topic::TOPOLOGY`]:
    /// the `topology:` lines of the boot log — IOMMU units, which unit
    /// translates each PCI function under which ID, reserved regions); the
    /// bytes copied, 0 past the end. Unknown topics are `EINVAL`.
    InfoRead = 19,
    /// `info_query(topic, subject, arg, buf, len)`: a read-only report on
    /// the IOMMU units, rendered as text when asked (topics in
    /// [`query_topic`]); the text's full length is returned and as much as
    /// fits is copied to `buf` (ask again with a larger buffer when the
    /// result exceeds `len`; reports stop at [`QUERY_MAX`] bytes). Nothing a
    /// unit holds changes, except that [`query_topic::TRACE`] switches a
    /// unit's register trace on or off. `ENOENT`: no such unit; `ENODEV`:
    /// no unit translates that device; `EINVAL`: unknown topic; `EPERM`: a
    /// topic about other tasks' state without `info.log=allow`.
    InfoQuery = 20,
}

/// Most bytes an [`Sysno::InfoQuery`] report holds (longer ones end in `(truncated)`).
pub const QUERY_MAX: usize = 64 * 1024;

/// Topics of [`Sysno::InfoQuery`]; `subject` and `arg` as each says.
pub mod query_topic {
    /// The registered units, one line each: `<index> <name> <kind>`. Open to every task.
    pub const UNITS: u64 = 0;
    /// Unit `subject`'s capability and status registers, every field
    /// decoded with the spec's name (the shell's `show`). They name the
    /// physical addresses of the kernel's tables: needs `info.log=allow`.
    pub const REGISTERS: u64 = 1;
    /// The structures device `subject` (a BDF as `device_claim` takes it)
    /// is translated through: VT-d root / context / PASID entries, SMMUv3
    /// STE and CD, AMD-Vi DTE, virtio-iommu domain and mappings (`dump`).
    /// Physical addresses throughout: needs `info.log=allow`, as every
    /// topic but [`UNITS`] does.
    pub const DEVICE: u64 = 2;
    /// The walk device `subject`'s DMA at IOVA `arg` takes, level by level,
    /// to the physical address or the fault (`walk`). As [`DEVICE`].
    pub const WALK: u64 = 3;
    /// The faults the units recorded lately (the last 64), oldest first,
    /// one line each as `#<seq> <unit>: <fault>`, from sequence number
    /// `subject` on (`faults`). Needs `info.log=allow`.
    pub const FAULTS: u64 = 4;
    /// Unit `subject`'s recent queued commands, decoded (`queue`). Needs `info.log=allow`.
    pub const QUEUE: u64 = 5;
    /// Switches the register trace of unit `subject` (`u64::MAX`: every
    /// unit) on (`arg` 1) or off (`arg` 0); the report says what changed
    /// (`trace`). Needs `info.log=allow`.
    pub const TRACE: u64 = 6;
}

/// Topics of [`Sysno::InfoRead`].
pub mod info_topic {
    /// The firmware's IOMMU topology as the kernel understood it.
    pub const TOPOLOGY: u64 = 0;
    /// The kernel log's most recent records (the last 32 KiB), oldest first,
    /// in one call (`offset` must be 0; up to 32 KiB are copied). It tells of
    /// every task's devices and faults, so it is `EPERM` unless the kernel
    /// command line has `info.log=allow` (or the boot runs its tests).
    pub const LOG: u64 = 1;
}

impl Sysno {
    /// Decodes a raw number.
    pub fn from_raw(n: u64) -> Option<Sysno> {
        Some(match n {
            0 => Sysno::Exit,
            1 => Sysno::Log,
            2 => Sysno::Yield,
            3 => Sysno::Clock,
            4 => Sysno::Sleep,
            5 => Sysno::MemMap,
            6 => Sysno::MemUnmap,
            7 => Sysno::DeviceList,
            8 => Sysno::DeviceClaim,
            9 => Sysno::DeviceMapBar,
            10 => Sysno::DeviceConfigRead,
            11 => Sysno::DeviceConfigWrite,
            12 => Sysno::TaskSpawn,
            13 => Sysno::DeviceIrqEnable,
            14 => Sysno::DeviceIrqWait,
            15 => Sysno::Iommufd,
            16 => Sysno::TestCanary,
            17 => Sysno::ClockCounter,
            18 => Sysno::ConsoleRead,
            19 => Sysno::InfoRead,
            20 => Sysno::InfoQuery,
            _ => return None,
        })
    }
}

/// Error codes, numbered like their POSIX namesakes where one exists.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such object.
    ENOENT = 2,
    /// I/O error.
    EIO = 5,
    /// Argument list too long / struct too big.
    E2BIG = 7,
    /// Try again: a system-wide limit (tasks) is reached for now.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Bad address (a user pointer that is not valid).
    EFAULT = 14,
    /// Resource busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// No such device (e.g. no IOMMU translates it).
    ENODEV = 19,
    /// Invalid argument.
    EINVAL = 22,
    /// Too many objects: the task's object quota is reached.
    EMFILE = 24,
    /// No such operation (an unknown iommufd op).
    ENOTTY = 25,
    /// No space left.
    ENOSPC = 28,
    /// Result out of range.
    ERANGE = 34,
    /// Unknown syscall number.
    ENOSYS = 38,
    /// Operation not supported.
    EOPNOTSUPP = 95,
    /// Address already in use.
    EADDRINUSE = 98,
    /// Timed out.
    ETIMEDOUT = 110,
    /// A per-task quota (pinned pages, memory, fault records, children) is reached.
    EDQUOT = 122,
}

impl Errno {
    /// Decodes a positive error number.
    pub fn from_raw(n: i64) -> Option<Errno> {
        use Errno::*;
        [
            EPERM, ENOENT, EIO, E2BIG, EAGAIN, ENOMEM, EFAULT, EBUSY, EEXIST, ENODEV, EINVAL, EMFILE, ENOTTY, ENOSPC,
            ERANGE, ENOSYS, EOPNOTSUPP, EADDRINUSE, ETIMEDOUT, EDQUOT,
        ]
        .into_iter()
        .find(|e| *e as i64 == n)
    }

    /// The POSIX-style name.
    pub fn name(self) -> &'static str {
        use Errno::*;
        match self {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            EIO => "EIO",
            E2BIG => "E2BIG",
            EAGAIN => "EAGAIN",
            EMFILE => "EMFILE",
            ENOTTY => "ENOTTY",
            EDQUOT => "EDQUOT",
            ENOMEM => "ENOMEM",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            EEXIST => "EEXIST",
            ENODEV => "ENODEV",
            EINVAL => "EINVAL",
            ENOSPC => "ENOSPC",
            ERANGE => "ERANGE",
            ENOSYS => "ENOSYS",
            EOPNOTSUPP => "EOPNOTSUPP",
            EADDRINUSE => "EADDRINUSE",
            ETIMEDOUT => "ETIMEDOUT",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A syscall result: a non-negative payload or an error.
pub type SysResult = Result<u64, Errno>;

/// Encodes a result into the return register.
pub fn encode(result: SysResult) -> u64 {
    match result {
        Ok(v) => v & (i64::MAX as u64),
        Err(e) => (-(e as i64)) as u64,
    }
}

/// Decodes the return register (unknown negative values become `EIO`).
pub fn decode(raw: u64) -> SysResult {
    let signed = raw as i64;
    if signed >= 0 {
        Ok(raw)
    } else {
        Err(Errno::from_raw(-signed).unwrap_or(Errno::EIO))
    }
}

/// `mem_map` protection: readable (always implied).
pub const PROT_READ: u64 = 1;
/// `mem_map` protection: writable.
pub const PROT_WRITE: u64 = 2;
/// `mem_map` flags, bits 8..=13: log2 of a physical alignment for the
/// mapping ([`mem_align`]). Zero: 4 KiB, pages anywhere. Otherwise every
/// naturally aligned block of that size in the mapping is one physically
/// contiguous block aligned to its size, as an IOMMU whose smallest page is
/// larger than the CPU's needs for DMA buffers (`ioas_iova_ranges`'s
/// `out_iova_alignment`); the address and length must be multiples of it.
pub const MEM_ALIGN_MASK: u64 = 0x3F << 8;
/// Largest alignment [`mem_align`] may ask for (2 MiB).
pub const MEM_ALIGN_MAX: u64 = 2 << 20;

/// The `mem_map` flag asking for physically contiguous blocks of `bytes`
/// (a power of two from 4 KiB to [`MEM_ALIGN_MAX`]; others are refused by
/// the kernel with `EINVAL`: anything else encodes as a refused value).
pub const fn mem_align(bytes: u64) -> u64 {
    if !bytes.is_power_of_two() {
        return MEM_ALIGN_MASK; // 2^63: refused
    }
    ((bytes.trailing_zeros() as u64) << 8) & MEM_ALIGN_MASK
}

/// The alignment `prot` asks [`mem_map`](Sysno::MemMap) for, in bytes (4 KiB when none);
/// `None` when it is no power of two from 4 KiB to [`MEM_ALIGN_MAX`].
pub const fn mem_align_of(prot: u64) -> Option<u64> {
    let shift = (prot & MEM_ALIGN_MASK) >> 8;
    if shift == 0 {
        return Some(4096);
    }
    if shift < 12 || 1u64 << shift > MEM_ALIGN_MAX {
        return None;
    }
    Some(1 << shift)
}

/// A PCI function address as syscalls pass it: `segment << 16 | bus << 8 | dev << 3 | func`.
pub const fn bdf(segment: u16, bus: u8, dev: u8, func: u8) -> u64 {
    (segment as u64) << 16 | (bus as u64) << 8 | ((dev as u64) & 0x1F) << 3 | (func as u64 & 7)
}

/// Kind of a BAR in [`DeviceInfo`].
pub mod bar_kind {
    /// Not implemented.
    pub const NONE: u32 = 0;
    /// 32-bit memory.
    pub const MEM32: u32 = 1;
    /// 64-bit memory.
    pub const MEM64: u32 = 2;
    /// I/O ports.
    pub const IO: u32 = 3;
}

/// One BAR in [`DeviceInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarInfo {
    /// Bus address (0 = unassigned).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// One of [`bar_kind`].
    pub kind: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// What `device_list` reports per PCI function. Begins with `size` like every ABI struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `size_of::<DeviceInfo>()` as the kernel wrote it.
    pub size: u32,
    /// Bit 0: claimed by some task; bit 1: translated by an IOMMU.
    pub flags: u32,
    /// Address as [`bdf`] encodes it.
    pub bdf: u64,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// BARs by index.
    pub bars: [BarInfo; 6],
    /// IOMMU group (1-based; functions the IOMMU cannot tell apart share
    /// it and are claimed together).
    pub group: u32,
    /// Zero.
    pub reserved: u32,
}

/// `DeviceInfo.flags`: the function is claimed (by a task, or driven by the kernel itself).
pub const DEVICE_CLAIMED: u32 = 1;
/// `DeviceInfo.flags`: the function sits behind an IOMMU.
pub const DEVICE_BEHIND_IOMMU: u32 = 2;
/// `DeviceInfo.flags`: the function's DMA cannot raise interrupts it was not
/// given (its unit remaps interrupts, or the architecture's doorbell is
/// reached only through the device's translation, as the GIC ITS on arm).
pub const DEVICE_INTERRUPTS_CONFINED: u32 = 4;
/// `DeviceInfo.flags`: a task that claims the function may turn its Bus
/// Master bit on: it is behind an IOMMU, and its interrupts are confined or
/// the kernel was booted with `iommu.unsafe_interrupts=allow`.
pub const DEVICE_DMA_ALLOWED: u32 = 8;
/// `DeviceInfo.flags`: no IOMMU translates the function, but the kernel was
/// booted with `iommu.noiommu=allow`: the generic door drives it with IOVA =
/// physical address and nothing confined (never set with
/// [`DEVICE_BEHIND_IOMMU`]; for benchmarks only).
pub const DEVICE_NO_IOMMU: u32 = 16;

impl DeviceInfo {
    /// The record as bytes (for copying out to user memory).
    pub fn to_bytes(&self) -> [u8; core::mem::size_of::<DeviceInfo>()] {
        let mut out = [0u8; core::mem::size_of::<DeviceInfo>()];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.size.to_le_bytes());
        put(4, &self.flags.to_le_bytes());
        put(8, &self.bdf.to_le_bytes());
        put(16, &self.vendor.to_le_bytes());
        put(18, &self.device.to_le_bytes());
        put(20, &self.class.to_le_bytes());
        for (i, b) in self.bars.iter().enumerate() {
            let at = 24 + 24 * i;
            put(at, &b.base.to_le_bytes());
            put(at + 8, &b.size.to_le_bytes());
            put(at + 16, &b.kind.to_le_bytes());
            put(at + 20, &b.reserved.to_le_bytes());
        }
        put(168, &self.group.to_le_bytes());
        put(172, &self.reserved.to_le_bytes());
        out
    }

    /// Reads a record from bytes (`None` if too short).
    pub fn from_bytes(b: &[u8]) -> Option<DeviceInfo> {
        let u16_at = |at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
        let mut bars = [BarInfo::default(); 6];
        for (i, bar) in bars.iter_mut().enumerate() {
            let at = 24 + 24 * i;
            *bar = BarInfo {
                base: u64_at(at)?,
                size: u64_at(at + 8)?,
                kind: u32_at(at + 16)?,
                reserved: u32_at(at + 20)?,
            };
        }
        Some(DeviceInfo {
            size: u32_at(0)?,
            flags: u32_at(4)?,
            bdf: u64_at(8)?,
            vendor: u16_at(16)?,
            device: u16_at(18)?,
            class: u32_at(20)?,
            bars,
            group: u32_at(168)?,
            reserved: u32_at(172)?,
        })
    }
}

pub mod iommufd;

/// Most bytes one `console_read` call returns.
pub const CONSOLE_READ_MAX: usize = 256;

/// Longest text one `log` call accepts.
pub const LOG_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    #[test]
    fn mem_align_round_trips_and_refuses_the_rest() {
        use super::{mem_align, mem_align_of, MEM_ALIGN_MAX, PROT_WRITE};
        assert_eq!(mem_align_of(PROT_WRITE), Some(4096), "no flag: 4 KiB");
        for shift in 12..=21 {
            assert_eq!(mem_align_of(mem_align(1 << shift) | PROT_WRITE), Some(1 << shift));
        }
        for bad in [0, 2048, 0x3000, 2 * MEM_ALIGN_MAX, 1 << 40] {
            assert_eq!(mem_align_of(mem_align(bad)), None, "{bad:#x}");
        }
        // Raw shifts below a page.
        assert_eq!(mem_align_of(11 << 8), None);
    }

    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn results_round_trip() {
        for v in [0u64, 1, 4096, i64::MAX as u64] {
            assert_eq!(decode(encode(Ok(v))), Ok(v));
        }
        for n in 1..200 {
            if let Some(e) = Errno::from_raw(n) {
                assert_eq!(decode(encode(Err(e))), Err(e));
                assert_eq!(e as i64, n);
            }
        }
        assert_eq!(decode((-9999i64) as u64), Err(Errno::EIO));
    }

    #[test]
    fn device_info_round_trips_and_matches_the_layout() {
        assert_eq!(core::mem::size_of::<DeviceInfo>(), 24 + 6 * 24 + 8);
        let mut d = DeviceInfo {
            size: 176,
            group: 7,
            flags: 3,
            bdf: bdf(0, 1, 2, 3),
            vendor: 0x1234,
            device: 0x11E8,
            class: 0xFF00,
            ..Default::default()
        };
        d.bars[5] = BarInfo { base: 0xFE00_0000, size: 0x10_0000, kind: bar_kind::MEM64, reserved: 0 };
        assert_eq!(DeviceInfo::from_bytes(&d.to_bytes()), Some(d));
        assert_eq!(DeviceInfo::from_bytes(&d.to_bytes()[..100]), None);
        assert_eq!(bdf(1, 2, 0x21, 9), 0x1_0209);
    }

    #[test]
    fn numbers_are_stable() {
        assert_eq!(Sysno::from_raw(0), Some(Sysno::Exit));
        assert_eq!(Sysno::from_raw(4), Some(Sysno::Sleep));
        assert_eq!(Sysno::from_raw(11), Some(Sysno::DeviceConfigWrite));
        assert_eq!(Sysno::from_raw(12), Some(Sysno::TaskSpawn));
        assert_eq!(Sysno::from_raw(14), Some(Sysno::DeviceIrqWait));
        assert_eq!(Sysno::from_raw(15), Some(Sysno::Iommufd));
        assert_eq!(Sysno::from_raw(16), Some(Sysno::TestCanary));
        assert_eq!(Sysno::from_raw(17), Some(Sysno::ClockCounter));
        assert_eq!(Sysno::from_raw(18), Some(Sysno::ConsoleRead));
        assert_eq!(Sysno::from_raw(19), Some(Sysno::InfoRead));
        assert_eq!(Sysno::from_raw(20), Some(Sysno::InfoQuery));
        assert_eq!(Sysno::from_raw(21), None);
        assert_eq!(Errno::EFAULT as i64, 14);
        assert_eq!(Errno::ENOSYS.to_string(), "ENOSYS");
    }
}
