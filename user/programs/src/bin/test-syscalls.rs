//! User-space tests of every syscall's success and error paths, printed as KTAP.
#![no_std]
#![no_main]

use abi::Errno;
use userlib::{println, sys};

type Check = fn() -> Result<(), &'static str>;

fn log_ok() -> Result<(), &'static str> {
    (sys::log("# log works\n") == Ok(12)).then_some(()).ok_or("log did not return its length")
}

fn log_bad_pointer() -> Result<(), &'static str> {
    // Kernel address, unmapped user address, and a range that wraps.
    let kernel = sys::log_raw(0xFFFF_8000_0000_0000, 8);
    let unmapped = sys::log_raw(0x10, 8);
    let wraps = sys::log_raw(u64::MAX - 4, 16);
    (kernel == Err(Errno::EFAULT) && unmapped == Err(Errno::EFAULT) && wraps == Err(Errno::EFAULT))
        .then_some(())
        .ok_or("a bad pointer was not EFAULT")
}

fn log_too_long() -> Result<(), &'static str> {
    (sys::log_raw(0x40_0000, abi::LOG_MAX as u64 + 1) == Err(Errno::E2BIG)).then_some(()).ok_or("no E2BIG")
}

fn log_invalid_utf8() -> Result<(), &'static str> {
    let bytes = [0xFFu8, 0xFE, b'\n'];
    (sys::log_raw(bytes.as_ptr() as u64, 3) == Err(Errno::EINVAL)).then_some(()).ok_or("no EINVAL")
}

fn unknown_syscall() -> Result<(), &'static str> {
    (abi::decode(sys::raw(9999, [0; 5])) == Err(Errno::ENOSYS)).then_some(()).ok_or("no ENOSYS")
}

fn clock_advances() -> Result<(), &'static str> {
    let a = sys::clock().map_err(|_| "clock failed")?;
    sys::sleep(2_000_000).map_err(|_| "sleep failed")?;
    let b = sys::clock().map_err(|_| "clock failed")?;
    (b >= a + 2_000_000).then_some(()).ok_or("sleep(2 ms) returned early")
}

/// The user-readable counter (no syscall per read) runs at the rate the
/// kernel reports: across a 20 ms sleep it agrees with the kernel's clock
/// within 10 %, never runs backwards, and ignores whatever the arguments
/// registers hold.
fn user_counter_matches_the_kernel_clock() -> Result<(), &'static str> {
    let hz = sys::clock_counter().map_err(|_| "clock_counter failed")?;
    if hz < 1_000_000 {
        return Err("clock_counter reports under 1 MHz");
    }
    if abi::decode(sys::raw(abi::Sysno::ClockCounter as u64, [u64::MAX, 1, 2, 3, 4])) != Ok(hz) {
        return Err("clock_counter changed with garbage arguments");
    }
    let (k0, u0) = (sys::clock().map_err(|_| "clock failed")?, userlib::time::now_ns());
    sys::sleep(20_000_000).map_err(|_| "sleep failed")?;
    let (u1, k1) = (userlib::time::now_ns(), sys::clock().map_err(|_| "clock failed")?);
    let (user, kernel) = (u1.checked_sub(u0).ok_or("the user counter ran backwards")?, k1 - k0);
    let off = user.abs_diff(kernel);
    (user >= 20_000_000 && off * 10 <= kernel).then_some(()).ok_or("the user counter disagrees with the kernel clock")
}

fn yield_returns() -> Result<(), &'static str> {
    (sys::yield_now() == Ok(0)).then_some(()).ok_or("yield failed")
}

fn mem_map_and_unmap() -> Result<(), &'static str> {
    let len = 3 * 4096;
    let va = sys::mem_map(0, len, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map failed")?;
    let p = va as *mut u64;
    // SAFETY: the kernel just mapped `len` writable bytes at `va`.
    let ok = unsafe {
        let zero = p.read_volatile() == 0 && p.add(1023).read_volatile() == 0;
        p.add(700).write_volatile(0xDEAD_BEEF);
        zero && p.add(700).read_volatile() == 0xDEAD_BEEF
    };
    if !ok {
        return Err("mapped memory not zeroed or not writable");
    }
    // The kernel can write into it (device_list) and read from it (log).
    if sys::log_raw(va + 8, 0) != Ok(0) {
        return Err("log from mapped memory failed");
    }
    if sys::mem_map(va, 4096, abi::PROT_READ) != Err(Errno::EADDRINUSE) {
        return Err("overlapping fixed mapping not EADDRINUSE");
    }
    if sys::mem_unmap(va, len + 4096) != Err(Errno::EINVAL) {
        return Err("unmapping past the mapping not EINVAL");
    }
    sys::mem_unmap(va, len).map_err(|_| "mem_unmap failed")?;
    if sys::mem_unmap(va, len) != Err(Errno::EINVAL) {
        return Err("double unmap not EINVAL");
    }
    if sys::log_raw(va, 8) != Err(Errno::EFAULT) {
        return Err("unmapped memory still readable by the kernel");
    }
    Ok(())
}

/// Reads the marker word of page `i` of the mapping at `va`.
fn marker(va: u64, i: u64) -> u64 {
    // SAFETY: the callers only read pages of their own live mappings.
    unsafe { ((va + i * 4096) as *const u64).read_volatile() }
}

/// The kernel keeps one ordered record per anonymous page: a hole unmapped
/// in the middle of a mapping and mapped again (its records go in between
/// the others), an unmap that meets the hole (refused, nothing changed), a
/// whole mapping unmapped in one call, and a large one mapped and unmapped
/// at once (one pass over the records, not one search per page).
fn mem_unmap_holes_and_refills() -> Result<(), &'static str> {
    let rw = abi::PROT_READ | abi::PROT_WRITE;
    let a = sys::mem_map(0, 64 * 4096, rw).map_err(|_| "mem_map a failed")?;
    let b = sys::mem_map(0, 8 * 4096, rw).map_err(|_| "mem_map b failed")?;
    for i in 0..64 {
        // SAFETY: page i of the 64 just mapped writable at `a`.
        unsafe { ((a + i * 4096) as *mut u64).write_volatile(0x5A00 + i) };
    }
    // SAFETY: page 0 of the 8 just mapped writable at `b`.
    unsafe { (b as *mut u64).write_volatile(0xB0B) };
    sys::mem_unmap(a + 16 * 4096, 16 * 4096).map_err(|_| "unmapping the middle failed")?;
    if sys::mem_unmap(a + 8 * 4096, 16 * 4096) != Err(Errno::EINVAL) {
        return Err("an unmap over a hole was not EINVAL");
    }
    if marker(a, 8) != 0x5A08 || marker(a, 15) != 0x5A0F || marker(a, 32) != 0x5A20 {
        return Err("a refused unmap changed pages");
    }
    if sys::log_raw(a + 16 * 4096, 8) != Err(Errno::EFAULT) {
        return Err("the hole is still mapped");
    }
    if sys::mem_map(a + 16 * 4096, 16 * 4096, rw) != Ok(a + 16 * 4096) {
        return Err("mapping the hole again failed");
    }
    if marker(a, 16) != 0 || marker(a, 31) != 0 || marker(a, 15) != 0x5A0F || marker(a, 32) != 0x5A20 {
        return Err("the refilled hole is not zeroed, or its neighbours changed");
    }
    sys::mem_unmap(a, 64 * 4096).map_err(|_| "unmapping the whole refilled mapping failed")?;
    if marker(b, 0) != 0xB0B {
        return Err("the other mapping changed");
    }
    sys::mem_unmap(b, 8 * 4096).map_err(|_| "unmapping b failed")?;
    let pages = 8192;
    let big = sys::mem_map(0, pages * 4096, rw).map_err(|_| "mem_map of 32 MiB failed")?;
    if sys::mem_unmap(big + 4096, pages * 4096) != Err(Errno::EINVAL) {
        return Err("an unmap one page past the mapping was not EINVAL");
    }
    sys::mem_unmap(big, pages * 4096).map_err(|_| "mem_unmap of 32 MiB failed")?;
    if sys::log_raw(big, 8) != Err(Errno::EFAULT) || sys::log_raw(big + (pages - 1) * 4096, 8) != Err(Errno::EFAULT) {
        return Err("the 32 MiB mapping is still there");
    }
    Ok(())
}

fn mem_map_bad_arguments() -> Result<(), &'static str> {
    let bad = [
        sys::mem_map(0, 0, abi::PROT_READ),
        sys::mem_map(0, 100, abi::PROT_READ),
        sys::mem_map(0x1234, 4096, abi::PROT_READ),
        sys::mem_map(0, 4096, 0x80),
        sys::mem_map(0xFFFF_8000_0000_0000, 4096, abi::PROT_READ),
    ];
    if bad.iter().any(|r| *r != Err(Errno::EINVAL)) {
        return Err("a bad mem_map argument was not EINVAL");
    }
    if sys::mem_map(0, 1 << 40, abi::PROT_READ) != Err(Errno::ENOMEM) {
        return Err("a huge mem_map was not ENOMEM");
    }
    Ok(())
}

/// `mem_map` with `abi::mem_align`: the address comes back aligned, the
/// memory zeroed and writable; an alignment that is no power of two from
/// 4 KiB to 2 MiB, or an address or length that is no multiple of it, is
/// EINVAL (the physical contiguity is what the virtio-64k demo relies on).
fn mem_map_aligned_blocks() -> Result<(), &'static str> {
    const K64: u64 = 0x1_0000;
    let rw = abi::PROT_READ | abi::PROT_WRITE;
    // Something unaligned first, so the next kernel-chosen address is not aligned by chance.
    let pad = sys::mem_map(0, 4096, rw).map_err(|_| "mem_map of a page failed")?;
    let va = sys::mem_map(0, 3 * K64, rw | abi::mem_align(K64)).map_err(|_| "aligned mem_map failed")?;
    if !va.is_multiple_of(K64) {
        return Err("an aligned mem_map came back unaligned");
    }
    for i in 0..3 * K64 / 4096 {
        if marker(va, i) != 0 {
            return Err("aligned memory not zeroed");
        }
    }
    // SAFETY: the last page of the mapping just made writable at `va`.
    unsafe { ((va + 3 * K64 - 8) as *mut u64).write_volatile(0xA11) };
    let big = sys::mem_map(0, 2 << 20, rw | abi::mem_align(2 << 20)).map_err(|_| "2 MiB-aligned mem_map failed")?;
    if !big.is_multiple_of(2 << 20) {
        return Err("a 2 MiB-aligned mem_map came back unaligned");
    }
    let bad = [
        sys::mem_map(0, 4096, rw | abi::mem_align(K64)),
        sys::mem_map(va + 3 * K64 + 4096, K64, rw | abi::mem_align(K64)),
        sys::mem_map(0, K64, rw | abi::mem_align(0x3000)),
        sys::mem_map(0, 4 << 20, rw | abi::mem_align(4 << 20)),
        sys::mem_map(0, K64, rw | 11 << 8),
    ];
    if bad.iter().any(|r| *r != Err(Errno::EINVAL)) {
        return Err("a bad aligned mem_map was not EINVAL");
    }
    sys::mem_unmap(big, 2 << 20).map_err(|_| "mem_unmap of the 2 MiB block failed")?;
    sys::mem_unmap(va, 3 * K64).map_err(|_| "mem_unmap of the aligned blocks failed")?;
    sys::mem_unmap(pad, 4096).map_err(|_| "mem_unmap of the page failed")?;
    Ok(())
}

/// `console_read` checks its buffer before it takes a byte from the console:
/// a bad or read-only buffer is EFAULT, an empty one reads nothing, and with
/// a timeout of zero and nothing typed it answers 0 at once.
fn console_read_checks_its_buffer() -> Result<(), &'static str> {
    let r = |ptr: u64, len: u64, timeout: u64| {
        abi::decode(sys::raw(abi::Sysno::ConsoleRead as u64, [ptr, len, timeout, 0, 0]))
    };
    if r(0x10, 8, 0) != Err(Errno::EFAULT) || r(0xFFFF_8000_0000_0000, 8, 0) != Err(Errno::EFAULT) {
        return Err("console_read into an unmapped or kernel address was not EFAULT");
    }
    let ro = sys::mem_map(0, 4096, abi::PROT_READ).map_err(|_| "mem_map failed")?;
    let refused = r(ro, 8, 0) == Err(Errno::EFAULT);
    let _ = sys::mem_unmap(ro, 4096);
    if !refused {
        return Err("console_read into a read-only page was not EFAULT");
    }
    let mut buf = [0u8; 8];
    if r(buf.as_mut_ptr() as u64, 0, 0) != Ok(0) {
        return Err("console_read of 0 bytes did not answer 0");
    }
    match r(buf.as_mut_ptr() as u64, 8, 0) {
        Ok(n) if n <= 8 => Ok(()),
        _ => Err("console_read with no wait failed or overran its buffer"),
    }
}

/// `info_read` hands out the boot log's topology lines, piece by piece, and
/// refuses a bad topic or buffer.
fn info_read_serves_the_topology() -> Result<(), &'static str> {
    let mut buf = [0u8; 64];
    let n = sys::info_read(abi::info_topic::TOPOLOGY, 0, &mut buf).map_err(|_| "info_read failed")? as usize;
    if n == 0 || !buf[..n].starts_with(b"topology: source ") {
        return Err("the topology text does not start with its source line");
    }
    let r = |topic: u64, offset: u64, ptr: u64, len: u64| {
        abi::decode(sys::raw(abi::Sysno::InfoRead as u64, [topic, offset, ptr, len, 0]))
    };
    if r(7, 0, buf.as_mut_ptr() as u64, 8) != Err(Errno::EINVAL) {
        return Err("an unknown info topic was not EINVAL");
    }
    if r(abi::info_topic::TOPOLOGY, 0, 0x10, 8) != Err(Errno::EFAULT) {
        return Err("info_read into an unmapped address was not EFAULT");
    }
    if r(abi::info_topic::TOPOLOGY, u64::MAX, buf.as_mut_ptr() as u64, 8) != Ok(0) {
        return Err("info_read past the end did not answer 0");
    }
    // The log topic: one snapshot from offset 0, the kernel's own records.
    extern crate alloc;
    let mut log = alloc::vec![0u8; 32 * 1024];
    let n = sys::info_read(abi::info_topic::LOG, 0, &mut log).map_err(|_| "info_read of the log failed")? as usize;
    // Records look like `[    0.123456] INFO  target: text`.
    let record = |w: &[u8]| w == b"] INFO " || w == b"] WARN " || w == b"] ERROR";
    if n == 0 || !log[..n].windows(7).any(record) {
        return Err("the log topic holds no kernel record");
    }
    if r(abi::info_topic::LOG, 1, log.as_mut_ptr() as u64, 8) != Err(Errno::EINVAL) {
        return Err("a log read from a non-zero offset was not EINVAL");
    }
    if r(abi::info_topic::LOG, 0, 0x10, 8) != Err(Errno::EFAULT) {
        return Err("a log read into an unmapped address was not EFAULT");
    }
    Ok(())
}

/// `info_query`: every topic's refusals, and a report cut to a small buffer
/// is a prefix of the whole with the whole length returned.
fn info_query_checks_its_arguments() -> Result<(), &'static str> {
    use abi::query_topic as t;
    extern crate alloc;
    let q = |topic: u64, subject: u64, arg: u64, ptr: u64, len: u64| {
        abi::decode(sys::raw(abi::Sysno::InfoQuery as u64, [topic, subject, arg, ptr, len]))
    };
    let units = sys::query(t::UNITS, 0, 0).map_err(|_| "the unit list failed")?;
    let count = units.lines().count() as u64;
    let mut small = [0u8; 16];
    if q(99, 0, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::EINVAL) {
        return Err("an unknown topic was not EINVAL");
    }
    if q(t::REGISTERS, count, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::ENOENT) {
        return Err("the registers of a unit past the last were not ENOENT");
    }
    if q(t::REGISTERS, u64::MAX, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::ENOENT) {
        return Err("the registers of unit u64::MAX were not ENOENT");
    }
    if q(t::DEVICE, 1 << 40, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::EINVAL) {
        return Err("a BDF with bits above 31 was not EINVAL");
    }
    if q(t::WALK, abi::bdf(0, 0xFF, 31, 7), 0, small.as_mut_ptr() as u64, 16) != Err(Errno::ENOENT) {
        return Err("the walk of a function that does not exist was not ENOENT");
    }
    if q(t::TRACE, u64::MAX, 2, small.as_mut_ptr() as u64, 16) != Err(Errno::EINVAL) {
        return Err("a trace switch other than 0 or 1 was not EINVAL");
    }
    if q(t::TRACE, count, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::ENOENT) {
        return Err("the trace of a unit past the last was not ENOENT");
    }
    if q(t::QUEUE, count, 0, small.as_mut_ptr() as u64, 16) != Err(Errno::ENOENT) {
        return Err("the queue of a unit past the last was not ENOENT");
    }
    if q(t::FAULTS, 0, 0, 0x10, 64) != Err(Errno::EFAULT) {
        return Err("a report into an unmapped address was not EFAULT");
    }
    let whole = sys::query(t::FAULTS, 0, 0).map_err(|_| "the fault report failed")?;
    if !whole.contains("next #") {
        return Err("the fault report does not say the next sequence number");
    }
    if count == 0 {
        return Ok(());
    }
    let full = sys::query(t::REGISTERS, 0, 0).map_err(|_| "unit 0's registers failed")?;
    let n = q(t::REGISTERS, 0, 0, small.as_mut_ptr() as u64, 16).map_err(|_| "a short read failed")?;
    if n as usize != full.len() || full.len() <= 16 || &full.as_bytes()[..16] != small.as_slice() {
        return Err("a report cut to the buffer is not the whole one's prefix with its length");
    }
    if !full.starts_with("unit 0: ") || full.lines().count() < 5 {
        return Err("unit 0's registers are not decoded");
    }
    let queue = sys::query(t::QUEUE, 0, 0).map_err(|_| "unit 0's queue failed")?;
    if !queue.starts_with("unit 0 (") {
        return Err("unit 0's queue report has no heading");
    }
    // A length query: no buffer, no copy, the length.
    if q(t::REGISTERS, 0, 0, 0x10, 0) != Ok(n) {
        return Err("a zero-length query did not answer the length");
    }
    Ok(())
}

fn read_only_mapping_refuses_kernel_writes() -> Result<(), &'static str> {
    let va = sys::mem_map(0, 4096 * 8, abi::PROT_READ).map_err(|_| "mem_map failed")?;
    // device_list writes into the buffer: a read-only buffer is EFAULT.
    let r = sys::raw(abi::Sysno::DeviceList as u64, [va, 4096 * 8, 0, 0, 0]);
    let _ = sys::mem_unmap(va, 4096 * 8);
    (abi::decode(r) == Err(Errno::EFAULT)).then_some(()).ok_or("kernel wrote into a read-only page")
}

fn heap_allocations() -> Result<(), &'static str> {
    extern crate alloc;
    use alloc::vec::Vec;
    let mut v: Vec<u64> = Vec::new();
    for i in 0..50_000u64 {
        v.push(i * 3);
    }
    let boxes: Vec<alloc::boxed::Box<[u8; 300]>> = (0..200).map(|i| alloc::boxed::Box::new([i as u8; 300])).collect();
    let s = alloc::format!("{} {}", v[49_999], boxes[199][299]);
    (v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3) && s == "149997 199")
        .then_some(())
        .ok_or("heap contents wrong")
}

fn task_spawn() -> Result<(), &'static str> {
    let id = sys::task_spawn("hello").map_err(|_| "spawning hello failed")?;
    if id == 0 {
        return Err("task id 0");
    }
    let checks = [
        (sys::task_spawn("no-such-program"), Err(Errno::ENOENT)),
        (abi::decode(sys::raw(abi::Sysno::TaskSpawn as u64, [0x10, 5, 0, 0, 0])), Err(Errno::EFAULT)),
        (abi::decode(sys::raw(abi::Sysno::TaskSpawn as u64, [0x40_0000, 100, 0, 0, 0])), Err(Errno::E2BIG)),
    ];
    checks.iter().all(|(got, want)| got == want).then_some(()).ok_or("a bad spawn was not refused correctly")
}

/// The 4 KiB fast path of the IOAS door allocates nothing on the kernel
/// heap once warm: a map and unmap of one page on an IOAS, repeated, leaves
/// the kernel's allocation count where it was (issue 19: "nothing allocated
/// per call on the 4 KiB fast path"), and the heap in use too.
fn ioas_4k_map_unmap_allocates_nothing() -> Result<(), &'static str> {
    use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
    use userlib::iommufd;
    let va = sys::mem_map(0, 4096, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map failed")?;
    let ioas = iommufd::ioas_alloc().map_err(|_| "ioas_alloc failed")?;
    // With an edu behind an IOMMU attached where there is one, so the unit's
    // map, unmap and invalidation are on the path too.
    let edu = edu_driver::first_behind_iommu().filter(|d| sys::device_claim(d.bdf).is_ok());
    let device = match edu {
        Some(d) => {
            let dev = iommufd::device_bind(d.bdf).map_err(|_| "device_bind failed")?;
            iommufd::device_attach(dev, ioas).map_err(|_| "device_attach failed")?;
            Some(dev)
        }
        None => None,
    };
    let pair = || -> Result<(), &'static str> {
        let at = iommufd::map(ioas, va, 4096, None, MAP_READABLE | MAP_WRITEABLE).map_err(|_| "map failed")?;
        iommufd::unmap(ioas, at, 4096).map_err(|_| "unmap failed")?;
        Ok(())
    };
    pair()?;
    let counter = |c| sys::test_counter(c).map_err(|_| "test_counter failed");
    let (allocs, heap) = (counter(sys::Counter::HeapAllocations)?, counter(sys::Counter::HeapUsed)?);
    for _ in 0..100 {
        pair()?;
    }
    let (allocs_after, heap_after) = (counter(sys::Counter::HeapAllocations)?, counter(sys::Counter::HeapUsed)?);
    if let Some(dev) = device {
        iommufd::destroy(dev).map_err(|_| "destroy of the device failed")?;
    }
    iommufd::destroy(ioas).map_err(|_| "destroy failed")?;
    sys::mem_unmap(va, 4096).map_err(|_| "mem_unmap failed")?;
    let with = if device.is_some() { "an edu attached" } else { "no device" };
    println!("# user.syscalls: 100 x (4 KiB map + unmap), {with}: {} heap allocation(s)", allocs_after - allocs);
    if heap_after != heap {
        return Err("the heap in use changed over map + unmap pairs");
    }
    (allocs_after == allocs).then_some(()).ok_or("the 4 KiB map + unmap allocated on the kernel heap")
}

/// The pin path refuses what a device must not reach, now that it hands
/// the page walk's runs up whole: a writable DMA map of memory whose second
/// half is read-only is `EFAULT` with nothing pinned (the read-only run is
/// refused even though the run before it was fine), the same range mapped
/// read-only works, and a mapped BAR (device memory) is no DMA target.
fn ioas_map_refuses_read_only_and_device_memory() -> Result<(), &'static str> {
    use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
    use userlib::iommufd;
    let page = 4096;
    let rw = abi::PROT_READ | abi::PROT_WRITE;
    let a = sys::mem_map(0, 4 * page, rw).map_err(|_| "mem_map failed")?;
    sys::mem_unmap(a + 2 * page, 2 * page).map_err(|_| "mem_unmap of the second half failed")?;
    sys::mem_map(a + 2 * page, 2 * page, abi::PROT_READ).map_err(|_| "read-only mem_map failed")?;
    let ioas = iommufd::ioas_alloc().map_err(|_| "ioas_alloc failed")?;
    let pinned = || sys::test_counter(sys::Counter::PinnedPages).map_err(|_| "test_counter failed");
    let before = pinned()?;
    if iommufd::map(ioas, a, 4 * page, None, MAP_READABLE | MAP_WRITEABLE) != Err(Errno::EFAULT) {
        return Err("a writable DMA map over read-only memory was not EFAULT");
    }
    if pinned()? != before {
        return Err("a refused map left pages pinned");
    }
    let at = iommufd::map(ioas, a, 4 * page, None, MAP_READABLE).map_err(|_| "a read-only DMA map failed")?;
    iommufd::unmap(ioas, at, 4 * page).map_err(|_| "unmap failed")?;
    // A BAR of an edu this task holds (claimed here, or by the test before).
    if let Some(edu) = edu_driver::first_behind_iommu() {
        let claimed = matches!(sys::device_claim(edu.bdf), Ok(_) | Err(Errno::EBUSY));
        if let (true, Ok(bar)) = (claimed, sys::device_map_bar(edu.bdf, 0)) {
            if iommufd::map(ioas, bar, page, None, MAP_READABLE) != Err(Errno::EFAULT) {
                return Err("a mapped BAR was accepted as a DMA target");
            }
            println!("# user.syscalls: a mapped BAR refused as a DMA target");
        }
    }
    if pinned()? != before {
        return Err("pages left pinned");
    }
    iommufd::destroy(ioas).map_err(|_| "destroy failed")?;
    sys::mem_unmap(a, 4 * page).map_err(|_| "mem_unmap failed")?;
    Ok(())
}

/// The kernel keeps the last user page it translated for a copy
/// (`kcore::user_access`): once the task unmaps that page, a struct there
/// must be `EFAULT` (never read from the frame it had), and a page mapped
/// again at the address is read afresh (zeroed: a size of 0 is `EINVAL`).
fn a_struct_on_a_page_just_unmapped_is_efault() -> Result<(), &'static str> {
    use abi::iommufd::{IoasAlloc, Op};
    let rw = abi::PROT_READ | abi::PROT_WRITE;
    let alloc_at = |ptr: u64| abi::decode(sys::raw(abi::Sysno::Iommufd as u64, [Op::IoasAlloc as u64, ptr, 0, 0, 0]));
    let va = sys::mem_map(0, 4096, rw).map_err(|_| "mem_map failed")?;
    let s = IoasAlloc { size: core::mem::size_of::<IoasAlloc>() as u32, ..Default::default() };
    // SAFETY: `va` is a fresh, writable, page-aligned mapping of this task.
    unsafe { (va as *mut IoasAlloc).write(s) };
    alloc_at(va).map_err(|_| "ioas_alloc from a mapped page failed")?;
    // SAFETY: as above; the kernel wrote its answer there.
    let id = unsafe { (va as *const IoasAlloc).read() }.out_ioas_id;
    // No call in between: the page the kernel translated last is `va`'s.
    sys::mem_unmap(va, 4096).map_err(|_| "mem_unmap failed")?;
    let stale = alloc_at(va);
    userlib::iommufd::destroy(id).map_err(|_| "destroy failed")?;
    if let Ok(other) = stale {
        let _ = userlib::iommufd::destroy(other as u32);
    }
    if stale != Err(Errno::EFAULT) {
        return Err("a struct on a page just unmapped was not EFAULT");
    }
    let again = sys::mem_map(va, 4096, rw).map_err(|_| "mem_map at the same address failed")?;
    if again != va {
        return Err("mem_map did not map at the address asked");
    }
    let r = alloc_at(va);
    let _ = sys::mem_unmap(va, 4096);
    (r == Err(Errno::EINVAL)).then_some(()).ok_or("a page mapped again was not read afresh")
}

const TESTS: &[(&str, Check)] = &[
    ("log_ok", log_ok),
    ("a_struct_on_a_page_just_unmapped_is_efault", a_struct_on_a_page_just_unmapped_is_efault),
    ("log_bad_pointer_is_efault", log_bad_pointer),
    ("log_too_long_is_e2big", log_too_long),
    ("log_invalid_utf8_is_einval", log_invalid_utf8),
    ("unknown_syscall_is_enosys", unknown_syscall),
    ("clock_and_sleep", clock_advances),
    ("user_counter_matches_the_kernel_clock", user_counter_matches_the_kernel_clock),
    ("yield_returns", yield_returns),
    ("mem_map_and_unmap", mem_map_and_unmap),
    ("mem_unmap_holes_and_refills", mem_unmap_holes_and_refills),
    ("mem_map_bad_arguments", mem_map_bad_arguments),
    ("mem_map_aligned_blocks", mem_map_aligned_blocks),
    ("console_read_checks_its_buffer", console_read_checks_its_buffer),
    ("info_read_serves_the_topology", info_read_serves_the_topology),
    ("info_query_checks_its_arguments", info_query_checks_its_arguments),
    ("read_only_buffer_is_efault", read_only_mapping_refuses_kernel_writes),
    ("heap_allocations", heap_allocations),
    ("ioas_4k_map_unmap_allocates_nothing", ioas_4k_map_unmap_allocates_nothing),
    ("ioas_map_refuses_read_only_and_device_memory", ioas_map_refuses_read_only_and_device_memory),
    ("task_spawn", task_spawn),
];

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..{}", TESTS.len());
    let mut failed = 0;
    for (i, (name, test)) in TESTS.iter().enumerate() {
        match test() {
            Ok(()) => println!("ok {} user.syscalls.{name}", i + 1),
            Err(why) => {
                failed += 1;
                println!("not ok {} user.syscalls.{name} # {why}", i + 1);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
