//! Raw syscalls and their typed wrappers (register convention in `abi`).

use abi::{decode, SysResult, Sysno};

/// Issues syscall `n` with up to five arguments and returns the raw result.
#[inline(always)]
pub fn raw(n: u64, a: [u64; 5]) -> u64 {
    let ret: u64;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's syscall entry preserves everything but rax, rcx, r11 and the argument registers, which are declared clobbered here.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            inlateout("rdi") a[0] => _,
            inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _,
            inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _,
            lateout("r9") _,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the kernel's SVC handler returns the result in x0 and preserves every other register except the argument registers declared clobbered.
    unsafe {
        core::arch::asm!(
            "svc #0",
            in("x8") n,
            inlateout("x0") a[0] => ret,
            inlateout("x1") a[1] => _,
            inlateout("x2") a[2] => _,
            inlateout("x3") a[3] => _,
            inlateout("x4") a[4] => _,
            options(nostack)
        );
    }
    ret
}

/// Ends the task.
pub fn exit(status: i64) -> ! {
    raw(Sysno::Exit as u64, [status as u64, 0, 0, 0, 0]);
    // The kernel never returns from exit; trap if it somehow did.
    loop {
        core::hint::spin_loop();
    }
}

/// Writes text to the kernel log.
pub fn log(text: &str) -> SysResult {
    decode(raw(Sysno::Log as u64, [text.as_ptr() as u64, text.len() as u64, 0, 0, 0]))
}

/// Writes `len` bytes at a raw address to the kernel log (for tests of bad pointers).
pub fn log_raw(ptr: u64, len: u64) -> SysResult {
    decode(raw(Sysno::Log as u64, [ptr, len, 0, 0, 0]))
}

/// Gives up the CPU.
pub fn yield_now() -> SysResult {
    decode(raw(Sysno::Yield as u64, [0; 5]))
}

/// Nanoseconds since boot.
pub fn clock() -> SysResult {
    decode(raw(Sysno::Clock as u64, [0; 5]))
}

/// Frequency in Hz of the counter the task may read itself (`ENOSYS`: none); see [`crate::time`].
pub fn clock_counter() -> SysResult {
    decode(raw(Sysno::ClockCounter as u64, [0; 5]))
}

/// Sleeps at least `ns` nanoseconds.
pub fn sleep(ns: u64) -> SysResult {
    decode(raw(Sysno::Sleep as u64, [ns, 0, 0, 0, 0]))
}

/// Maps `len` bytes of anonymous zeroed memory (`addr` 0: the kernel chooses).
pub fn mem_map(addr: u64, len: u64, prot: u64) -> SysResult {
    decode(raw(Sysno::MemMap as u64, [addr, len, prot, 0, 0]))
}

/// Bytes typed on the console (at most 256), waiting up to `timeout_ns` for the first; 0 when none came.
pub fn console_read(buf: &mut [u8], timeout_ns: u64) -> SysResult {
    decode(raw(Sysno::ConsoleRead as u64, [buf.as_mut_ptr() as u64, buf.len() as u64, timeout_ns, 0, 0]))
}

/// Bytes `offset..` of the kernel's text on `topic` (`abi::info_topic`) into `buf`; 0 past the end.
pub fn info_read(topic: u64, offset: u64, buf: &mut [u8]) -> SysResult {
    decode(raw(Sysno::InfoRead as u64, [topic, offset, buf.as_mut_ptr() as u64, buf.len() as u64, 0]))
}

/// `info_query(topic, subject, arg, buf)`: the report's full length (see
/// [`abi::Sysno::InfoQuery`]); as much as fits is in `buf`. [`query`]
/// returns the whole text.
pub fn info_query(topic: u64, subject: u64, arg: u64, buf: &mut [u8]) -> SysResult {
    decode(raw(Sysno::InfoQuery as u64, [topic, subject, arg, buf.as_mut_ptr() as u64, buf.len() as u64]))
}

/// The whole text of an [`info_query`] report (asked again with room for
/// all of it when the first buffer was too small).
pub fn query(topic: u64, subject: u64, arg: u64) -> Result<alloc::string::String, abi::Errno> {
    let mut buf = alloc::vec![0u8; 4096];
    loop {
        let n = info_query(topic, subject, arg, &mut buf)? as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return alloc::string::String::from_utf8(buf).map_err(|_| abi::Errno::EIO);
        }
        buf.resize(n.min(abi::QUERY_MAX), 0);
    }
}

/// Unmaps memory mapped by [`mem_map`].
pub fn mem_unmap(addr: u64, len: u64) -> SysResult {
    decode(raw(Sysno::MemUnmap as u64, [addr, len, 0, 0, 0]))
}

/// Fills `buf` with device records and returns how many devices exist.
pub fn device_list(buf: &mut [abi::DeviceInfo]) -> SysResult {
    let bytes = core::mem::size_of_val(buf) as u64;
    decode(raw(Sysno::DeviceList as u64, [buf.as_mut_ptr() as u64, bytes, 0, 0, 0]))
}

/// Claims a PCI function for this task.
pub fn device_claim(bdf: u64) -> SysResult {
    decode(raw(Sysno::DeviceClaim as u64, [bdf, 0, 0, 0, 0]))
}

/// Maps a claimed function's memory BAR and returns its address.
pub fn device_map_bar(bdf: u64, index: u64) -> SysResult {
    decode(raw(Sysno::DeviceMapBar as u64, [bdf, index, 0, 0, 0]))
}

/// Reads `width` (1, 2, 4) bytes of configuration space.
pub fn device_config_read(bdf: u64, offset: u64, width: u64) -> SysResult {
    decode(raw(Sysno::DeviceConfigRead as u64, [bdf, offset, width, 0, 0]))
}

/// Writes `width` (1, 2, 4) bytes of configuration space.
pub fn device_config_write(bdf: u64, offset: u64, width: u64, value: u64) -> SysResult {
    decode(raw(Sysno::DeviceConfigWrite as u64, [bdf, offset, width, value, 0]))
}

/// The kernel's test canary (ktest boots only): its physical address (`op`
/// 0), or whether it is intact (`op` 1: `Ok(0)`, `EIO` when written).
pub fn test_canary(op: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [op, 0, 0, 0, 0]))
}

/// The test boot's mailbox shared by every task (`test_canary` op 2): word `slot` (0..8).
pub fn test_mailbox_get(slot: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [2, slot, 0, 0, 0]))
}

/// Writes `value` into word `slot` of the test boot's mailbox (`test_canary` op 3).
pub fn test_mailbox_set(slot: u64, value: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [3, slot, value, 0, 0]))
}

/// Kernel counters for leak checks (test boots only, `test_canary` op 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Free frames in the frame allocator.
    FreeFrames = 0,
    /// Frames pinned for DMA by every task.
    PinnedFrames = 1,
    /// Kernel heap bytes in use.
    HeapUsed = 2,
    /// Frames quarantined (never freed).
    QuarantinedFrames = 3,
    /// Tasks alive.
    Tasks = 4,
    /// This task's iommufd objects.
    Objects = 5,
    /// Pages this task's mappings pin.
    PinnedPages = 6,
    /// Frames the IOMMU drivers hold in tables.
    TableFrames = 7,
    /// IOMMU table frames charged to this task (`quota.table_frames`).
    MyTableFrames = 8,
    /// Kernel heap allocations since boot.
    HeapAllocations = 9,
    /// CPUs online.
    Cpus = 10,
    /// The CPU serving this call.
    ThisCpu = 11,
}

/// The counters a leak check compares before and after a task's run: what
/// a task's exit must give back (frames, pins, quarantine, IOMMU table
/// frames, tasks, kernel heap).
pub const LEAK_COUNTERS: [Counter; 6] = [
    Counter::FreeFrames,
    Counter::PinnedFrames,
    Counter::QuarantinedFrames,
    Counter::TableFrames,
    Counter::Tasks,
    Counter::HeapUsed,
];

/// The [`LEAK_COUNTERS`] now (`u64::MAX` for each one not readable: no `ktest=`).
pub fn leak_counters() -> [u64; 6] {
    LEAK_COUNTERS.map(|c| test_counter(c).unwrap_or(u64::MAX))
}

/// The kernel counter `c` (test boots only; `EPERM` without `ktest=`).
pub fn test_counter(c: Counter) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [5, c as u64, 0, 0, 0]))
}

/// A parameter of the syscall fuzzer from the kernel command line (test
/// boots only, `test_canary` op 8): `fuzz.seed=` (`which` 0) or
/// `fuzz.calls=` (1), the concurrency test's `smp.ops=` (2); `ENOENT` when the boot gave none.
pub fn test_fuzz_param(which: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [8, which, 0, 0, 0]))
}

/// fail-nth (test boots only, `test_canary` op 6): the `n`-th injection point
/// (frame allocation, pin, pin-vector growth) this task passes from now on
/// fails as if memory ran out; 0 disarms.
pub fn test_fail_nth(n: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [6, n, 0, 0, 0]))
}

/// Disarms fail-nth; returns the injection points passed since it was armed,
/// the failing one included (`test_canary` op 7): fewer than N means the
/// call ran without an injected failure.
pub fn test_fail_nth_passed() -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [7, 0, 0, 0, 0]))
}

/// The physical address of this task's page at `va` (test boots only, `test_canary` op 4).
pub fn test_phys_addr(va: u64) -> SysResult {
    decode(raw(Sysno::TestCanary as u64, [4, va, 0, 0, 0]))
}

/// Starts the packed program `name` as a new task; returns its id.
pub fn task_spawn(name: &str) -> SysResult {
    decode(raw(Sysno::TaskSpawn as u64, [name.as_ptr() as u64, name.len() as u64, 0, 0, 0]))
}

/// Routes a claimed function's interrupt to this task.
pub fn device_irq_enable(bdf: u64) -> SysResult {
    decode(raw(Sysno::DeviceIrqEnable as u64, [bdf, 0, 0, 0, 0]))
}

/// Waits up to `timeout_ns` for interrupts; returns how many arrived.
pub fn device_irq_wait(bdf: u64, timeout_ns: u64) -> SysResult {
    decode(raw(Sysno::DeviceIrqWait as u64, [bdf, timeout_ns, 0, 0, 0]))
}

/// Pages this task mapped read/write with [`mem_map`] and keeps mapped while
/// a `Pages` is used: page `n` as bytes or as 64-bit words (page tables).
#[derive(Debug, Clone, Copy)]
pub struct Pages {
    /// First virtual address.
    pub va: u64,
    /// How many pages.
    pub count: u64,
}

impl Pages {
    /// Maps `count` fresh read/write pages.
    pub fn map(count: u64) -> Result<Pages, abi::Errno> {
        Ok(Pages { va: mem_map(0, count * 4096, abi::PROT_READ | abi::PROT_WRITE)?, count })
    }

    /// Page `n` as 512 words; panics if `n` is beyond the pages.
    pub fn words(&self, n: u64) -> &'static mut [u64] {
        assert!(n < self.count, "page {n} of {}", self.count);
        // SAFETY: page `n` lies in the pages this task mapped read/write (checked above) and keeps mapped while `self` is used.
        unsafe { core::slice::from_raw_parts_mut((self.va + n * 4096) as *mut u64, 512) }
    }

    /// Page `n` as 4096 bytes; panics if `n` is beyond the pages.
    pub fn bytes(&self, n: u64) -> &'static mut [u8] {
        assert!(n < self.count, "page {n} of {}", self.count);
        // SAFETY: as in `words`.
        unsafe { core::slice::from_raw_parts_mut((self.va + n * 4096) as *mut u8, 4096) }
    }
}
