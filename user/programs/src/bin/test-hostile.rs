//! Hostile inputs, run as a test (KTAP `user.hostile.*`): lengths that would
//! make the kernel allocate without bound, areas at the top of the IOVA
//! space, offsets that overflow, and floods of objects, pins, memory and
//! tasks. Each must get its errno, leave nothing behind, and the kernel must
//! keep answering. The quotas checked are the defaults (README, "Limits").
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::Errno;
use userlib::{iommufd, println, sys};

const PAGE: u64 = 4096;
const RW: u32 = MAP_READABLE | MAP_WRITEABLE;
/// `quota.objects`, `quota.pinned_pages`, `quota.mem_pages`, `quota.children` defaults.
const OBJECTS: u64 = 1024;
const PINNED_PAGES: u64 = 1 << 16;
const MEM_PAGES: u64 = 32 * 1024;
const CHILDREN: u64 = 8;

type Step = fn() -> Result<(), &'static str>;

fn alive() -> Result<(), &'static str> {
    sys::clock().map(drop).map_err(|_| "the kernel stopped answering")
}

/// A map of 2^46 bytes with a kernel-chosen IOVA: refused before anything
/// is allocated for its length (once it panicked the heap).
fn huge_map() -> Result<(), &'static str> {
    let space = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    let page = sys::mem_map(0, PAGE, 3).map_err(|_| "mem_map")?;
    match iommufd::map(space, page, 1 << 46, None, RW) {
        Err(Errno::EDQUOT | Errno::EFAULT) => {}
        _ => return Err("a 2^46-byte map was not EDQUOT / EFAULT"),
    }
    iommufd::destroy(space).map_err(|_| "destroy")?;
    sys::mem_unmap(page, PAGE).map_err(|_| "mem_unmap")?;
    alive()
}

/// An area ending at 2^64 (an IOAS no device narrows): map, copy, unmap and
/// unmap-all all work (once unmap, copy and exit overflowed there).
fn top_of_the_iova_space() -> Result<(), &'static str> {
    let (a, b) = (iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?, iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?);
    let page = sys::mem_map(0, 2 * PAGE, 3).map_err(|_| "mem_map")?;
    let top = u64::MAX - (2 * PAGE - 1);
    if iommufd::map(a, page, 2 * PAGE, Some(top), RW) != Ok(top) {
        return Err("map at the top refused");
    }
    iommufd::copy(b, a, top, 2 * PAGE, None, RW).map_err(|_| "copy of the top area")?;
    if iommufd::unmap(a, u64::MAX - (PAGE - 1), PAGE) != Err(Errno::EINVAL) {
        return Err("an unmap cutting the top area not EINVAL");
    }
    if iommufd::unmap(a, top, 2 * PAGE) != Ok(2 * PAGE) {
        return Err("exact unmap of the top area");
    }
    if iommufd::unmap_all(a) != Ok(0) {
        return Err("unmap-all of an empty IOAS did not succeed with 0");
    }
    iommufd::map(a, page, 2 * PAGE, Some(top), RW).map_err(|_| "map at the top again")?;
    // Left mapped on purpose: destroy (and exit) must unpin it too.
    iommufd::destroy(a).map_err(|_| "destroy with the top area mapped")?;
    iommufd::destroy(b).map_err(|_| "destroy")?;
    sys::mem_unmap(page, 2 * PAGE).map_err(|_| "mem_unmap")?;
    alive()
}

/// `mem_unmap` of 2^46 bytes: refused at once (once it collected every page).
fn huge_mem_unmap() -> Result<(), &'static str> {
    let page = sys::mem_map(0, PAGE, 3).map_err(|_| "mem_map")?;
    if sys::mem_unmap(page, 1 << 46) != Err(Errno::EINVAL) {
        return Err("a 2^46-byte mem_unmap not EINVAL");
    }
    sys::mem_unmap(page, PAGE).map_err(|_| "the page is still ours to unmap")?;
    alive()
}

/// Config access at offsets near 2^64 (once an overflow) and an unknown op.
fn overflowing_offsets_and_unknown_ops() -> Result<(), &'static str> {
    let mut buf = [abi::DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(|_| "device_list")? as usize;
    if let Some(d) = buf[..n.min(buf.len())].iter().find(|d| sys::device_claim(d.bdf).is_ok()) {
        for off in [u64::MAX - 1, u64::MAX - 3, 1 << 63] {
            if sys::device_config_read(d.bdf, off, 2) != Err(Errno::EINVAL) {
                return Err("a config read near 2^64 not EINVAL");
            }
            if sys::device_config_write(d.bdf, off, 2, 0) != Err(Errno::EINVAL) {
                return Err("a config write near 2^64 not EINVAL");
            }
        }
    }
    let mut s = abi::iommufd::IoasAlloc { size: 16, ..Default::default() };
    let ptr = &mut s as *mut abi::iommufd::IoasAlloc as u64;
    for op in [0, 99, u64::MAX] {
        if abi::decode(sys::raw(abi::Sysno::Iommufd as u64, [op, ptr, 0, 0, 0])) != Err(Errno::ENOTTY) {
            return Err("an unknown iommufd op not ENOTTY");
        }
    }
    alive()
}

/// IOAS objects until the quota: exactly `OBJECTS` fit, then EMFILE.
fn object_flood() -> Result<(), &'static str> {
    let mut ids = [0u32; OBJECTS as usize];
    let mut made = 0usize;
    let stop = loop {
        match iommufd::ioas_alloc() {
            Ok(id) if made < ids.len() => {
                ids[made] = id;
                made += 1;
            }
            Ok(_) => return Err("more objects than the quota"),
            Err(e) => break e,
        }
    };
    for &id in &ids[..made] {
        iommufd::destroy(id).map_err(|_| "destroy")?;
    }
    if stop != Errno::EMFILE || made != OBJECTS as usize {
        return Err("the object flood did not stop at the quota with EMFILE");
    }
    iommufd::destroy(iommufd::ioas_alloc().map_err(|_| "no object fits after the flood")?).map_err(|_| "destroy")?;
    alive()
}

/// One 1 MiB buffer mapped again and again: `PINNED_PAGES` pins fit, the
/// next map is EDQUOT, and unmap-all gives the room back.
fn pin_flood() -> Result<(), &'static str> {
    const CHUNK: u64 = 256;
    let space = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    let buf = sys::mem_map(0, CHUNK * PAGE, 3).map_err(|_| "mem_map")?;
    for _ in 0..PINNED_PAGES / CHUNK {
        iommufd::map(space, buf, CHUNK * PAGE, None, RW).map_err(|_| "a map inside the pin quota failed")?;
    }
    if iommufd::map(space, buf, PAGE, None, RW) != Err(Errno::EDQUOT) {
        return Err("a map beyond the pin quota not EDQUOT");
    }
    if iommufd::unmap_all(space) != Ok(PINNED_PAGES * PAGE) {
        return Err("unmap-all did not take every pin");
    }
    iommufd::map(space, buf, CHUNK * PAGE, None, RW).map_err(|_| "no room after unmap-all")?;
    iommufd::destroy(space).map_err(|_| "destroy")?;
    sys::mem_unmap(buf, CHUNK * PAGE).map_err(|_| "mem_unmap")?;
    alive()
}

/// Memory beyond the per-task quota is EDQUOT before a frame is taken.
fn memory_flood() -> Result<(), &'static str> {
    if sys::mem_map(0, (MEM_PAGES + 1) * PAGE, 3) != Err(Errno::EDQUOT) {
        return Err("a mem_map beyond the memory quota not EDQUOT");
    }
    let page = sys::mem_map(0, PAGE, 3).map_err(|_| "a page after the refused flood")?;
    sys::mem_unmap(page, PAGE).map_err(|_| "mem_unmap")?;
    alive()
}

/// Children until the quota: `spin` busy-loops until mailbox slot 5 lets
/// it go (on other CPUs it runs at once; 10 s at most), so all of them are
/// alive when the next spawn is `EAGAIN`.
fn spawn_flood() -> Result<(), &'static str> {
    const HOLD_SLOT: u64 = 5;
    const HOLD: u64 = 0x5917_0001;
    let _ = sys::test_mailbox_set(HOLD_SLOT, HOLD);
    let mut spawned = 0;
    let stop = loop {
        match sys::task_spawn("spin") {
            Ok(_) if spawned < 64 => spawned += 1,
            Ok(_) => break Errno::E2BIG,
            Err(e) => break e,
        }
    };
    let _ = sys::test_mailbox_set(HOLD_SLOT, 0);
    if stop == Errno::E2BIG {
        return Err("64 children and no limit");
    }
    if stop != Errno::EAGAIN || spawned != CHILDREN {
        return Err("the spawn flood did not stop at the children quota with EAGAIN");
    }
    alive()
}

/// What must be back where it was once every step ran.
const BASELINE: [sys::Counter; 4] =
    [sys::Counter::PinnedFrames, sys::Counter::Objects, sys::Counter::PinnedPages, sys::Counter::TableFrames];

fn counters() -> [u64; 4] {
    BASELINE.map(|c| sys::test_counter(c).unwrap_or(u64::MAX))
}

/// Single pages mapped 1 GiB apart through a device's IOMMU: each needs
/// page tables of its own, so the task reaches `quota.table_frames` \[4096\]
/// and the next map is `EDQUOT`; unmapping gives the frames back. Skipped
/// where no unit here keeps page tables in kernel frames (virtio-iommu
/// holds its mappings in the device) or no device can be attached.
fn table_flood() -> Result<(), &'static str> {
    const TABLE_FRAMES: u64 = 4096;
    let Some(edu) = edu_driver::first_behind_iommu() else { return Err("SKIP no edu this task may drive") };
    // EBUSY when an earlier step already claimed it for this task.
    let _ = sys::device_claim(edu.bdf);
    let Ok(dev) = iommufd::device_bind(edu.bdf) else { return Err("SKIP the edu is another task's") };
    let space = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    iommufd::device_attach(dev, space).map_err(|_| "attach")?;
    let page = sys::mem_map(0, PAGE, 3).map_err(|_| "mem_map")?;
    let start = sys::test_counter(sys::Counter::MyTableFrames).map_err(|_| "no counters")?;
    let mut maps = 0u64;
    let stop = loop {
        let iova = (maps + 1) << 30;
        match iommufd::map(space, page, PAGE, Some(iova), RW) {
            Ok(_) => maps += 1,
            Err(e) => break e,
        }
        if maps == 4 && sys::test_counter(sys::Counter::MyTableFrames).unwrap_or(0) == start {
            break Errno::ENOSYS; // no kernel page tables on this unit
        }
        if maps > 2 * TABLE_FRAMES {
            return Err("no table quota after 8192 scattered maps");
        }
    };
    let held = sys::test_counter(sys::Counter::MyTableFrames).unwrap_or(0);
    iommufd::unmap_all(space).map_err(|_| "unmap-all")?;
    iommufd::destroy(dev).map_err(|_| "destroy the device")?;
    iommufd::destroy(space).map_err(|_| "destroy the IOAS")?;
    sys::mem_unmap(page, PAGE).map_err(|_| "mem_unmap")?;
    let after = sys::test_counter(sys::Counter::MyTableFrames).unwrap_or(u64::MAX);
    if stop == Errno::ENOSYS {
        alive()?;
        return Err("SKIP this unit keeps no page tables in kernel frames (virtio-iommu)");
    }
    if stop != Errno::EDQUOT || held < TABLE_FRAMES {
        return Err("the scattered maps did not stop at the table quota with EDQUOT");
    }
    if after > start {
        return Err("unmap and destroy did not give the table frames back");
    }
    alive()
}

const STEPS: &[(&str, Step)] = &[
    ("huge_map", huge_map),
    ("top_of_the_iova_space", top_of_the_iova_space),
    ("huge_mem_unmap", huge_mem_unmap),
    ("overflowing_offsets_and_unknown_ops", overflowing_offsets_and_unknown_ops),
    ("object_flood", object_flood),
    ("pin_flood", pin_flood),
    ("memory_flood", memory_flood),
    ("spawn_flood", spawn_flood),
    ("table_flood", table_flood),
];

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..{}", STEPS.len() + 1);
    let before = counters();
    let mut failed = 0;
    for (i, (name, step)) in STEPS.iter().enumerate() {
        match step() {
            Ok(()) => println!("ok {} user.hostile.{name}", i + 1),
            Err(why) if why.starts_with("SKIP ") => println!("ok {} user.hostile.{name} # {why}", i + 1),
            Err(why) => {
                failed += 1;
                println!("not ok {} user.hostile.{name} # {why}", i + 1);
            }
        }
    }
    let after = counters();
    let n = STEPS.len() + 1;
    if before.contains(&u64::MAX) {
        println!("ok {n} user.hostile.baseline_restored # SKIP no kernel counters (boot with ktest=)");
    } else if after == before {
        println!("ok {n} user.hostile.baseline_restored");
    } else {
        failed += 1;
        println!("not ok {n} user.hostile.baseline_restored # {BASELINE:?}: {before:?} before, {after:?} after");
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
