//! One task of the concurrency test (`test-smp`, docs/smp.md): random map
//! and unmap of its own pages at fixed IOVAs of its own IOAS, each answer
//! checked against a reference model of what is mapped (a map over a
//! mapped slot must be `EEXIST`, an unmap of an empty one `ENOENT`, every
//! other call must succeed with the size asked), the IOAS emptied and
//! remade now and then; while the other workers do the same on other CPUs
//! against the same IOMMU unit.
//!
//! A worker that gets an `edu` of its own (the first free one behind an
//! IOMMU) also drives DMA through its IOAS: after a map the device copies
//! the page and the copy must match it (no stale or lost mapping); right
//! after an unmap returns, the device writes poison at the unmapped IOVA
//! and the page that was mapped there must be untouched (the invalidation
//! was complete before the unmap returned); and the device is detached and
//! attached again now and then. It also gives back memory a mapping still
//! pins: a fresh page is mapped at a spare IOVA, unmapped from the task
//! (`mem_unmap`), and only then written by the device through the IOVA; the
//! page must stay the task's until the IOVA is unmapped too.
//!
//! Every worker also keeps a few fresh anonymous pages for a while: each
//! must be all zeroes when it comes and when it goes. A page the kernel gave
//! out while a device could still write it (the pinned page above, freed
//! too early) would show another task's DMA there.
//!
//! Protocol with `test-smp` (test mailbox): slot 0 hands the worker its
//! index (the worker answers `0xDEAD_0000_0000`), slot 1 the operations to run,
//! slot 2 + index receives `ops << 16 | dma_checks << 4 | status` (status
//! 0: clean; 1: a call answered other than the model; 2: DMA data wrong;
//! 3: a DMA reached unmapped memory; 4: setup failed; 5: a fresh page was
//! not all zeroes).
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::Errno;
use edu_driver as edu;
use userlib::iommufd;
use userlib::{println, sys};

/// IOVA slots per worker, each one IOMMU page.
const SLOTS: usize = 32;
/// Distinct pages a slot may map.
const PAGES: usize = 8;
/// The edu DMA length (its buffer is a page).
const DMA_LEN: usize = 4096;
/// DMA checks at most every this many operations.
const DMA_EVERY: u64 = 16;

const SETUP_FAILED: u64 = 4;
const NOT_ZERO: u64 = 5;
/// Fresh pages a worker holds at once.
const HELD: usize = 4;
/// What the worker leaves in mailbox slot 0 once it took its index (`test-smp`'s `NONE`).
const TAKEN: u64 = 0xDEAD_0000_0000;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The byte page `p` holds at offset `i`.
fn pattern(p: usize, i: usize) -> u8 {
    (i as u8).wrapping_mul(13) ^ (p as u8).wrapping_mul(0x35) ^ 0xA5
}

/// A claimed edu, attached to the worker's IOAS.
struct Dma {
    edu: edu::Edu,
    dev: u32,
}

/// Claims the first edu behind an IOMMU no other task holds.
fn claim_edu() -> Option<(u64, edu::Edu)> {
    let mut list = [abi::DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    for d in list[..n.min(64)].iter().filter(|d| (d.vendor, d.device) == edu::EDU) {
        if d.flags & abi::DEVICE_DMA_ALLOWED == 0 || sys::device_claim(d.bdf).is_err() {
            continue;
        }
        // A function that will not open stays claimed until the task ends.
        if let Ok(e) = edu::Edu::open_claimed(d.bdf) {
            return Some((d.bdf, e));
        }
    }
    None
}

/// First IOVA of `len` bytes aligned to `align` inside a usable range of `ioas`.
fn iova_window(ioas: u32, len: u64, align: u64) -> Option<u64> {
    let mut ranges = [abi::iommufd::IovaRange::default(); 16];
    let (n, _) = iommufd::iova_ranges(ioas, &mut ranges).ok()?;
    ranges[..n.min(16)].iter().find_map(|r| {
        // Stay clear of IOVA 0 and keep below 4 GiB for every device's mask.
        let start = r.start.max(0x10_0000).checked_next_multiple_of(align)?;
        let end = start.checked_add(len)?;
        (end <= r.last.saturating_add(1) && end <= 1 << 32).then_some(start)
    })
}

fn main() -> i32 {
    let index = sys::test_mailbox_get(0).unwrap_or(0);
    let _ = sys::test_mailbox_set(0, TAKEN);
    let ops = sys::test_mailbox_get(1).unwrap_or(0);
    let result = run(index, ops);
    let _ = sys::test_mailbox_set(2 + index, result);
    0
}

/// The checks that need a device, counted.
struct Checks {
    dma: Option<Dma>,
    count: u64,
}

fn run(index: u64, ops: u64) -> u64 {
    let cpu = sys::test_counter(sys::Counter::ThisCpu).unwrap_or(0);
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (index + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ sys::clock().unwrap_or(0));
    let Ok(mut ioas) = iommufd::ioas_alloc() else { return SETUP_FAILED };
    let mut checks = Checks { dma: None, count: 0 };
    if let Some((bdf, edu)) = claim_edu() {
        match iommufd::device_bind(bdf) {
            Ok(dev) if iommufd::device_attach(dev, ioas).is_ok() => checks.dma = Some(Dma { edu, dev }),
            _ => println!("smp-worker {index}: edu {bdf:#x} could not be attached; no DMA checks"),
        }
    }
    let granule = iommufd::iova_alignment(ioas).unwrap_or(4096).max(4096);
    // Pages to map, plus the check and poison pages of the DMA checks.
    let Ok(pages) = iommufd::dma_alloc(ioas, granule * (PAGES as u64 + 2)) else { return SETUP_FAILED };
    let g = granule as usize;
    let buf = Buf { va: pages.va, len: pages.len as usize };
    for p in 0..PAGES {
        for i in 0..g {
            buf.set(p * g + i, pattern(p, i));
        }
    }
    let (check_off, poison_off) = (PAGES * g, (PAGES + 1) * g);
    for i in 0..g {
        buf.set(poison_off + i, 0xEE);
    }
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let Some(base) = iova_window(ioas, granule * (SLOTS as u64 + 3), granule) else { return SETUP_FAILED };
    let iova = |slot: usize| base + slot as u64 * granule;
    let (check_iova, poison_iova, spare_iova) = (iova(SLOTS), iova(SLOTS + 1), iova(SLOTS + 2));
    let mut held = Held { pages: [0; HELD], next: 0 };
    let map_fixed = |ioas: u32, off: usize, at: u64| iommufd::map(ioas, buf.va + off as u64, granule, Some(at), rw);
    if map_fixed(ioas, check_off, check_iova).is_err() || map_fixed(ioas, poison_off, poison_iova).is_err() {
        return SETUP_FAILED;
    }
    let mut model: [Option<usize>; SLOTS] = [None; SLOTS];
    let mut done = 0;
    let mut status = 0;
    while done < ops && status == 0 {
        let r = rng.next();
        let slot = (r % SLOTS as u64) as usize;
        let dma_now = done.is_multiple_of(DMA_EVERY);
        match (r >> 8) % 64 {
            // Now and then the whole IOAS is emptied, or remade from scratch.
            0 => {
                let expect = model.iter().flatten().count() as u64 * granule;
                match iommufd::unmap_all(ioas) {
                    Ok(n) if n == expect + 2 * granule => {}
                    other => {
                        println!(
                            "smp-worker {index}: unmap_all answered {other:?}, the model holds {expect:#x} + 2 pages"
                        );
                        status = 1;
                    }
                }
                model = [None; SLOTS];
                if (r >> 16).is_multiple_of(4) {
                    status = status.max(remake(&mut ioas, &mut checks));
                }
                if map_fixed(ioas, check_off, check_iova).is_err() || map_fixed(ioas, poison_off, poison_iova).is_err()
                {
                    status = SETUP_FAILED;
                }
            }
            // A fresh page kept a while; with a device, memory given back
            // while a mapping still pins it.
            1 | 2 => {
                status = held.churn();
                if status == 0 && (r >> 8) % 64 == 2 && granule == 4096 {
                    status = unmap_under_dma(&checks, ioas, spare_iova, poison_iova);
                }
            }
            // Maps: twice as likely as unmaps, so slots fill.
            k if k < 43 => {
                let page = ((r >> 16) % PAGES as u64) as usize;
                let got = map_fixed(ioas, page * g, iova(slot));
                let want = if model[slot].is_some() { Err(Errno::EEXIST) } else { Ok(iova(slot)) };
                if got != want {
                    println!("smp-worker {index}: map of slot {slot} answered {got:?}, the model says {want:?}");
                    status = 1;
                } else if got.is_ok() {
                    model[slot] = Some(page);
                    if dma_now {
                        status = check_copy(&mut checks, iova(slot), check_iova, &buf, page, check_off, g);
                    }
                }
            }
            _ => {
                let got = iommufd::unmap(ioas, iova(slot), granule);
                let want = if model[slot].is_some() { Ok(granule) } else { Err(Errno::ENOENT) };
                if got != want {
                    println!("smp-worker {index}: unmap of slot {slot} answered {got:?}, the model says {want:?}");
                    status = 1;
                } else if let Some(page) = model[slot].take() {
                    if dma_now {
                        status = check_stray(&mut checks, iova(slot), poison_iova, &buf, page, g);
                    }
                }
            }
        }
        done += 1;
    }
    if status != 0 {
        println!("smp-worker {index} (started on cpu {cpu}): stopped after {done} operations (status {status})");
    }
    if held.release() != 0 && status == 0 {
        status = NOT_ZERO;
    }
    // Teardown in order: device detached (DMA blocked), IOAS gone, pages unmapped.
    if let Some(d) = checks.dma.take() {
        let _ = iommufd::device_detach(d.dev);
        let _ = iommufd::destroy(d.dev);
    }
    let _ = iommufd::destroy(ioas);
    let _ = pages.free();
    (done << 16) | (checks.count.min(0xFFF) << 4) | status
}

/// Fresh anonymous pages held for a while (0: an empty place).
struct Held {
    pages: [u64; HELD],
    next: usize,
}

/// Whether the page at `va` is all zeroes.
fn zeroed(va: u64) -> bool {
    let b = Buf { va, len: 4096 };
    (0..4096).all(|i| b.get(i) == 0)
}

impl Held {
    /// Maps a fresh page (it must be zero) in place of the oldest, which
    /// must still be zero when it is given back.
    fn churn(&mut self) -> u64 {
        let old = core::mem::replace(&mut self.pages[self.next], 0);
        self.next = (self.next + 1) % HELD;
        if old != 0 {
            let clean = zeroed(old);
            let _ = sys::mem_unmap(old, 4096);
            if !clean {
                println!("smp-worker: a page held since it was fresh changed under the task");
                return NOT_ZERO;
            }
        }
        let Ok(va) = sys::mem_map(0, 4096, abi::PROT_READ | abi::PROT_WRITE) else { return 0 };
        if !zeroed(va) {
            println!("smp-worker: a fresh page was not all zeroes");
            let _ = sys::mem_unmap(va, 4096);
            return NOT_ZERO;
        }
        self.pages[(self.next + HELD - 1) % HELD] = va;
        0
    }

    /// Gives every held page back; nonzero when one changed.
    fn release(&mut self) -> u64 {
        let mut status = 0;
        for va in self.pages.iter_mut().filter(|v| **v != 0) {
            if !zeroed(*va) {
                status = NOT_ZERO;
            }
            let _ = sys::mem_unmap(*va, 4096);
            *va = 0;
        }
        status
    }
}

/// A fresh page mapped at `spare`, unmapped from the task, then written by
/// the device through `spare` (allowed: the mapping still pins it), then
/// unmapped from the IOAS (when its frame goes back).
fn unmap_under_dma(checks: &Checks, ioas: u32, spare: u64, poison_iova: u64) -> u64 {
    let Some(d) = &checks.dma else { return 0 };
    let Ok(va) = sys::mem_map(0, 4096, abi::PROT_READ | abi::PROT_WRITE) else { return 0 };
    let rw = MAP_READABLE | MAP_WRITEABLE;
    if iommufd::map(ioas, va, 4096, Some(spare), rw) != Ok(spare) {
        let _ = sys::mem_unmap(va, 4096);
        println!("smp-worker: the spare IOVA {spare:#x} could not be mapped");
        return 1;
    }
    if sys::mem_unmap(va, 4096).is_err() {
        return 1;
    }
    if d.edu.dma(poison_iova, false).is_err() || d.edu.dma(spare, true).is_err() {
        return SETUP_FAILED;
    }
    match iommufd::unmap(ioas, spare, 4096) {
        Ok(4096) => 0,
        other => {
            println!("smp-worker: unmap of the spare IOVA answered {other:?}");
            1
        }
    }
}

/// Empties nothing (the caller did): detaches the device, destroys the
/// IOAS, allocates a new one and attaches the device to it again.
fn remake(ioas: &mut u32, checks: &mut Checks) -> u64 {
    if let Some(d) = &checks.dma {
        if iommufd::device_detach(d.dev).is_err() {
            return SETUP_FAILED;
        }
    }
    if iommufd::destroy(*ioas).is_err() {
        return SETUP_FAILED;
    }
    // The pages stay mapped in the CPU: dma_alloc's buffer belongs to the task, not the IOAS.
    let Ok(new) = iommufd::ioas_alloc() else { return SETUP_FAILED };
    *ioas = new;
    if let Some(d) = &checks.dma {
        if iommufd::device_attach(d.dev, new).is_err() {
            return SETUP_FAILED;
        }
    }
    0
}

/// The worker's pages, read and written with volatile accesses (the device
/// writes them between the task's calls).
struct Buf {
    va: u64,
    len: usize,
}

impl Buf {
    fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        // SAFETY: `va..va + len` is this task's mapped DMA buffer for the life of the worker; `i` is inside it.
        unsafe { ((self.va + i as u64) as *const u8).read_volatile() }
    }

    fn set(&self, i: usize, v: u8) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { ((self.va + i as u64) as *mut u8).write_volatile(v) }
    }
}

/// The device reads the page just mapped at `at` and writes it to the check
/// page: the check page must then hold page `page`'s bytes.
fn check_copy(
    checks: &mut Checks,
    at: u64,
    check_iova: u64,
    buf: &Buf,
    page: usize,
    check_off: usize,
    g: usize,
) -> u64 {
    let Some(d) = &checks.dma else { return 0 };
    for i in 0..DMA_LEN {
        buf.set(check_off + i, 0);
    }
    if d.edu.dma(at, false).is_err() || d.edu.dma(check_iova, true).is_err() {
        return SETUP_FAILED;
    }
    checks.count += 1;
    if (0..DMA_LEN).any(|i| buf.get(check_off + i) != buf.get(page * g + i)) {
        println!("smp-worker: DMA through IOVA {at:#x} did not read page {page}");
        return 2;
    }
    0
}

/// The device loads poison and writes it at `at`, unmapped a moment ago:
/// page `page`, mapped there before, must be untouched.
fn check_stray(checks: &mut Checks, at: u64, poison_iova: u64, buf: &Buf, page: usize, g: usize) -> u64 {
    let Some(d) = &checks.dma else { return 0 };
    if d.edu.dma(poison_iova, false).is_err() || d.edu.dma(at, true).is_err() {
        return SETUP_FAILED;
    }
    checks.count += 1;
    if (0..DMA_LEN).any(|i| buf.get(page * g + i) != pattern(page, i)) {
        println!("smp-worker: DMA to IOVA {at:#x}, unmapped, reached page {page}");
        return 3;
    }
    0
}

userlib::entry!(main);
