//! A fake task memory for host tests (feature `testing`): pages map to
//! `PA_BASE + va` (or, with `scatter`, to swapped neighbours), pins are counted, pinning can be made to fail, and 64-bit
//! words can be written and read back (user page tables for shadowing).
//! With a [`FailNth`] countdown, every `pin` is an allocation injection point.
//!
//! Under heap fail-nth (this crate's unit tests) it behaves as the kernel's
//! task memory: the runs a pin returns grow fallibly (`ENOMEM`), while the
//! fake's own records (pin counts, quarantine list) are kept outside the
//! count ([`fallible::testing::unarmed`]): they are the test's, not the
//! code under test.

use crate::pages::{Memory, Runs, PAGE};
use abi::Errno;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu::mock::{FailNth, Point};

/// Physical address of task page 0.
pub const PA_BASE: u64 = 0x10_0000_0000;

/// Task memory for tests.
#[derive(Debug, Default)]
pub struct FakeMemory {
    /// Mapped pages; `None`: every page below 1 GiB is mapped.
    pub mapped: Option<BTreeSet<u64>>,
    /// Pins per physical page.
    pub pins: BTreeMap<u64, u32>,
    /// Make every `pin` fail with `EFAULT`.
    pub fail_pin: bool,
    /// Memory contents by physical address (8-byte aligned words; absent: zero).
    pub ram: BTreeMap<u64, u64>,
    /// Pages given up on ([`Memory::quarantine`]), one entry per pin given up.
    pub quarantined: Vec<u64>,
    /// A fail-nth countdown: each `pin` is a [`Point::Alloc`] (`ENOMEM`).
    pub fail_nth: Option<Arc<FailNth>>,
    /// Scatter the frames: task pages `2k` and `2k + 1` swap frames, so no
    /// two consecutive pages are physically contiguous (every page its own
    /// run) while [`PA_BASE`]` + va` stays the frame of some page.
    pub scatter: bool,
}

/// Runs the fake's own bookkeeping outside heap fail-nth.
fn bookkeeping<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    return fallible::testing::unarmed(f);
    #[cfg(not(test))]
    f()
}

impl FakeMemory {
    /// The frame behind task page `va` (page aligned).
    pub fn frame_of(&self, va: u64) -> u64 {
        PA_BASE + if self.scatter { va ^ PAGE } else { va }
    }

    fn is_mapped(&self, page: u64) -> bool {
        match &self.mapped {
            None => page < 1 << 30,
            Some(set) => set.contains(&page),
        }
    }

    /// Writes `value` at task virtual address `va` (8-byte aligned).
    pub fn write_u64(&mut self, va: u64, value: u64) {
        assert!(va.is_multiple_of(8), "unaligned word at {va:#x}");
        self.ram.insert(self.frame_of(va & !(PAGE - 1)) + va % PAGE, value);
    }

    /// The word at task virtual address `va` (zero when never written).
    pub fn get_u64(&self, va: u64) -> u64 {
        self.ram.get(&(self.frame_of(va & !(PAGE - 1)) + va % PAGE)).copied().unwrap_or(0)
    }
}

impl Memory for FakeMemory {
    fn pin(&mut self, va: u64, len: u64, _write: bool) -> Result<Runs, Errno> {
        let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
        // Bounded before anything is allocated: no more pages than exist.
        let limit = self.mapped.as_ref().map_or(1 << 18, |m| m.len() as u64);
        if self.fail_pin || len / PAGE > limit {
            return Err(Errno::EFAULT);
        }
        if self.fail_nth.as_ref().is_some_and(|f| f.hit(Point::Alloc)) {
            return Err(Errno::ENOMEM);
        }
        // Runs grow fallibly, as the kernel's (a new run is an allocation).
        let mut pas = Runs::new();
        for p in (va..end).step_by(PAGE as usize) {
            if !self.is_mapped(p) {
                return Err(Errno::EFAULT);
            }
            pas.push(self.frame_of(p))?;
        }
        self.repin(&pas);
        Ok(pas)
    }

    fn repin(&mut self, pages: &Runs) {
        bookkeeping(|| {
            for p in pages.frames() {
                *self.pins.entry(p).or_default() += 1;
            }
        })
    }

    fn read_u64(&self, pa: u64) -> Option<u64> {
        let frame = pa.checked_sub(PA_BASE)? & !(PAGE - 1);
        let page = if self.scatter { frame ^ PAGE } else { frame };
        (pa.is_multiple_of(8) && self.is_mapped(page)).then(|| self.ram.get(&pa).copied().unwrap_or(0))
    }

    fn unpin(&mut self, pages: &Runs) {
        for p in pages.frames() {
            let n = self.pins.get_mut(&p).expect("unpin of a page never pinned");
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&p);
            }
        }
    }

    fn quarantine(&mut self, pages: &Runs) {
        for p in pages.frames() {
            assert!(self.pins.contains_key(&p), "quarantine of a page never pinned");
        }
        bookkeeping(|| self.quarantined.extend(pages.frames()));
    }
}
