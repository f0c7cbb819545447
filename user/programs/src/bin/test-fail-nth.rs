//! fail-nth in the kernel (KTAP `fail_nth.*`, issue 18 item 4): each
//! sequence's call runs with its 1st, 2nd, … injection point failing
//! (`test_canary` op 6: frame allocations, which include every IOMMU table
//! and driver structure and the task's own page tables, pins, and heap
//! allocations inside the call; see `kernel/core/src/fail_nth.rs`)
//! until it runs without an injected failure. After every failed call the
//! kernel counters — free, pinned, quarantined and IOMMU table frames, heap
//! bytes, tasks, our objects and pinned pages — must be exactly where they
//! were; after every successful one, undoing it must bring them back too.
//! With no `edu` behind an IOMMU the device sequences are skipped and the
//! others run on IOASes with no device.
#![no_std]
#![no_main]

extern crate alloc;

use abi::iommufd::{hwpt_data, MAP_READABLE, MAP_WRITEABLE};
use abi::{DeviceInfo, Errno};
use userlib::{iommufd, println, sys};

const PAGE: u64 = 4096;
const RW: u32 = MAP_READABLE | MAP_WRITEABLE;
const BIG: u64 = 2 << 20;
const SMALL: u64 = 4 * PAGE;
/// A sequence passing more points than this is reported, not looped over.
const MAX_N: u64 = 400;

const COUNTERS: [sys::Counter; 8] = [
    sys::Counter::FreeFrames,
    sys::Counter::PinnedFrames,
    sys::Counter::HeapUsed,
    sys::Counter::QuarantinedFrames,
    sys::Counter::Tasks,
    sys::Counter::Objects,
    sys::Counter::PinnedPages,
    sys::Counter::TableFrames,
];

fn counters() -> [u64; 8] {
    COUNTERS.map(|c| sys::test_counter(c).unwrap_or(u64::MAX))
}

/// What the sequences work on: IOAS `a` (the device's) and `b`, a 16 KiB
/// and a 2 MiB-aligned 2 MiB buffer, the bound device if there is one, and
/// what the last call made (an IOVA, an id, an address: for its undo).
struct Ctx {
    a: u32,
    b: u32,
    small: u64,
    big: u64,
    dev: Option<u32>,
    made: u64,
}

type Step = fn(&mut Ctx) -> Result<(), Errno>;

struct Sequence {
    name: &'static str,
    needs_device: bool,
    setup: Step,
    call: Step,
    /// Undoes a successful `call` (back to the state after `setup`).
    undo: Step,
    /// Undoes `setup`.
    cleanup: Step,
}

fn nothing(_: &mut Ctx) -> Result<(), Errno> {
    Ok(())
}

fn dev(c: &Ctx) -> Result<u32, Errno> {
    c.dev.ok_or(Errno::ENODEV)
}

fn attach_a(c: &mut Ctx) -> Result<(), Errno> {
    match c.dev {
        Some(d) => iommufd::device_attach(d, c.a).map(drop),
        None => Ok(()),
    }
}

fn detach(c: &mut Ctx) -> Result<(), Errno> {
    match c.dev {
        Some(d) => iommufd::device_detach(d),
        None => Ok(()),
    }
}

fn unmap_made_small(c: &mut Ctx) -> Result<(), Errno> {
    iommufd::unmap(c.a, c.made, SMALL).map(drop)
}

const SEQUENCES: &[Sequence] = &[
    Sequence {
        name: "mem_map",
        needs_device: false,
        setup: nothing,
        call: |c| {
            c.made = sys::mem_map(0, SMALL, abi::PROT_READ | abi::PROT_WRITE)?;
            Ok(())
        },
        undo: |c| sys::mem_unmap(c.made, SMALL).map(drop),
        cleanup: nothing,
    },
    Sequence {
        name: "ioas_alloc",
        needs_device: false,
        setup: nothing,
        call: |c| {
            c.made = u64::from(iommufd::ioas_alloc()?);
            Ok(())
        },
        undo: |c| iommufd::destroy(c.made as u32),
        cleanup: nothing,
    },
    Sequence {
        name: "map_4k_pages_attached",
        needs_device: false,
        setup: attach_a,
        call: |c| {
            c.made = iommufd::map(c.a, c.small, SMALL, None, RW)?;
            Ok(())
        },
        undo: unmap_made_small,
        cleanup: detach,
    },
    Sequence {
        name: "map_2m_attached",
        needs_device: false,
        setup: attach_a,
        call: |c| {
            c.made = iommufd::map(c.a, c.big, BIG, None, RW)?;
            Ok(())
        },
        undo: |c| iommufd::unmap(c.a, c.made, BIG).map(drop),
        cleanup: detach,
    },
    Sequence {
        name: "copy_attached",
        needs_device: false,
        setup: |c| {
            iommufd::map(c.b, c.small, SMALL, Some(0x100_0000), RW)?;
            attach_a(c)
        },
        call: |c| {
            c.made = iommufd::copy(c.a, c.b, 0x100_0000, SMALL, None, RW)?;
            Ok(())
        },
        undo: unmap_made_small,
        cleanup: |c| {
            iommufd::unmap_all(c.b)?;
            detach(c)
        },
    },
    Sequence {
        name: "attach",
        needs_device: true,
        setup: |c| {
            iommufd::map(c.a, c.small, SMALL, None, RW)?;
            iommufd::map(c.a, c.big, BIG, None, RW).map(drop)
        },
        call: |c| {
            iommufd::device_attach(dev(c)?, c.a)?;
            Ok(())
        },
        undo: detach,
        cleanup: |c| iommufd::unmap_all(c.a).map(drop),
    },
    Sequence {
        name: "replace",
        needs_device: true,
        setup: |c| {
            iommufd::map(c.a, c.small, SMALL, None, RW)?;
            iommufd::map(c.b, c.big, BIG, None, RW)?;
            attach_a(c)
        },
        call: |c| {
            iommufd::device_attach(dev(c)?, c.b)?;
            Ok(())
        },
        undo: attach_a,
        cleanup: |c| {
            detach(c)?;
            iommufd::unmap_all(c.a)?;
            iommufd::unmap_all(c.b).map(drop)
        },
    },
    Sequence {
        name: "hwpt_alloc",
        needs_device: true,
        setup: |c| iommufd::map(c.a, c.big, BIG, None, RW).map(drop),
        call: |c| {
            c.made = u64::from(iommufd::hwpt_alloc(dev(c)?, c.a, 0, hwpt_data::NONE, &[], None)?);
            Ok(())
        },
        undo: |c| iommufd::destroy(c.made as u32),
        cleanup: |c| iommufd::unmap_all(c.a).map(drop),
    },
    Sequence {
        name: "unmap_attached",
        needs_device: false,
        setup: |c| {
            attach_a(c)?;
            iommufd::map(c.a, c.big, BIG, Some(0x4000_0000), RW).map(drop)
        },
        call: |c| iommufd::unmap(c.a, 0x4000_0000, BIG).map(drop),
        undo: |c| iommufd::map(c.a, c.big, BIG, Some(0x4000_0000), RW).map(drop),
        cleanup: |c| {
            iommufd::unmap_all(c.a)?;
            detach(c)
        },
    },
];

/// Kernel heap bytes are compared only between two runs of the same call:
/// the first may grow a long-lived table's capacity for good (a `Vec` or
/// `BTreeMap` that keeps its room), the second must not grow it again.
const HEAP: usize = 2;

/// Whether counters differ between `a` and `b`, leaving out the ones `skip` names.
fn differ(a: &[u64; 8], b: &[u64; 8], skip: &[usize]) -> bool {
    (0..8).any(|i| !skip.contains(&i) && a[i] != b[i])
}

fn report(what: &str, n: u64, before: &[u64; 8], after: &[u64; 8]) -> alloc::string::String {
    alloc::format!("N={n} {what}: {COUNTERS:?} {before:?} before, {after:?} after")
}

/// Runs `call` with the `n`-th point failing; its result and the points passed.
fn attempt(c: &mut Ctx, s: &Sequence, n: u64) -> Result<(Result<(), Errno>, u64), alloc::string::String> {
    sys::test_fail_nth(n).map_err(|e| alloc::format!("arm: {e:?}"))?;
    let r = (s.call)(c);
    let passed = sys::test_fail_nth_passed().map_err(|e| alloc::format!("disarm: {e:?}"))?;
    Ok((r, passed))
}

/// Runs one sequence at N = 1, 2, … ; `Ok(points)` or why it failed. Nothing
/// here allocates between two counter reads (our own heap grows by `mem_map`).
fn run(c: &mut Ctx, s: &Sequence) -> Result<u64, alloc::string::String> {
    use alloc::format;
    (s.setup)(c).map_err(|e| format!("setup: {e:?}"))?;
    // One clean call and undo first: an unmap keeps the page tables it does
    // not cover (as Linux's drivers do; they go with a covering unmap or the
    // domain), so the tables the call's IOVAs need are then in the baseline,
    // and every later run reuses them.
    (s.call)(c).and_then(|()| (s.undo)(c)).map_err(|e| format!("warm-up call and undo: {e:?}"))?;
    let base = counters();
    let mut result = None;
    let first_run: &[usize] = &[HEAP];
    for n in 1..=MAX_N {
        let (r, passed) = attempt(c, s, n)?;
        let now = counters();
        match r {
            Err(e) if passed < n => result = Some(Err(format!("N={n}: failed with {e:?} and no injected failure"))),
            Err(e) => {
                if differ(&base, &now, first_run) {
                    result = Some(Err(report(&format!("({e:?})"), n, &base, &now)));
                } else {
                    // The same failure again: now not even the heap may grow.
                    let (r2, _) = attempt(c, s, n)?;
                    let again = counters();
                    if r2.is_ok() || differ(&now, &again, &[]) {
                        result = Some(Err(report(&format!("({e:?}) run twice ({r2:?})"), n, &now, &again)));
                    }
                }
            }
            Ok(()) => {
                if let Err(e) = (s.undo)(c) {
                    result = Some(Err(format!("N={n}: undo of a successful call: {e:?}")));
                } else if differ(&base, &counters(), first_run) {
                    result = Some(Err(report("(succeeded, undone)", n, &base, &counters())));
                } else if passed < n {
                    // It ran clean; once more, call and undo must not grow the heap.
                    let before = counters();
                    let r2 = (s.call)(c).and_then(|()| (s.undo)(c));
                    let after = counters();
                    result = Some(if r2.is_err() || differ(&before, &after, &[]) {
                        Err(report(&format!("(clean call + undo twice, {r2:?})"), n, &before, &after))
                    } else {
                        Ok(passed)
                    });
                }
                // Otherwise the failure was absorbed (a fallback): the next N goes on.
            }
        }
        if result.is_some() {
            break;
        }
    }
    let _ = sys::test_fail_nth(0);
    (s.cleanup)(c).map_err(|e| format!("cleanup: {e:?}"))?;
    result.unwrap_or_else(|| Err(format!("still failing at N={MAX_N}")))
}

fn find_device() -> Option<u32> {
    let mut list = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    list[..n.min(64)]
        .iter()
        .filter(|d| (d.vendor, d.device) == (0x1234, 0x11E8) && d.flags & abi::DEVICE_DMA_ALLOWED != 0)
        .find_map(|d| {
            sys::device_claim(d.bdf).ok()?;
            iommufd::device_bind(d.bdf).ok()
        })
}

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..{}", SEQUENCES.len());
    let setup = || -> Result<Ctx, Errno> {
        let small = sys::mem_map(0, SMALL, abi::PROT_READ | abi::PROT_WRITE)?;
        let big = sys::mem_map(0, BIG, abi::PROT_READ | abi::PROT_WRITE)?;
        Ok(Ctx { a: iommufd::ioas_alloc()?, b: iommufd::ioas_alloc()?, small, big, dev: find_device(), made: 0 })
    };
    let mut c = match setup() {
        Ok(c) => c,
        Err(e) => {
            for (i, s) in SEQUENCES.iter().enumerate() {
                println!("not ok {} fail_nth.{} # setup: {e:?}", i + 1, s.name);
            }
            return 1;
        }
    };
    let mut failed = 0;
    for (i, s) in SEQUENCES.iter().enumerate() {
        if s.needs_device && c.dev.is_none() {
            println!("ok {} fail_nth.{} # SKIP no edu behind an IOMMU", i + 1, s.name);
            continue;
        }
        match run(&mut c, s) {
            Ok(points) => println!("ok {} fail_nth.{} # {points} injection points", i + 1, s.name),
            // A unit without kernel-managed user HWPTs: nothing to inject into.
            Err(why) if s.name == "hwpt_alloc" && why.contains("EOPNOTSUPP") => {
                println!("ok {} fail_nth.{} # SKIP the unit refuses: {why}", i + 1, s.name);
            }
            Err(why) => {
                failed += 1;
                println!("not ok {} fail_nth.{} # {why}", i + 1, s.name);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
