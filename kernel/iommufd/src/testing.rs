//! A fake task memory for host tests (feature `testing`): pages map to
//! `PA_BASE + va`, pins are counted, pinning can be made to fail, and 64-bit
//! words can be written and read back (user page tables for shadowing).
//! With a [`FailNth`] countdown, every `pin` is an allocation injection point.
//!
//! Under heap fail-nth (this crate's unit tests) it behaves as the kernel's
//! task memory: the pin vector is allocated fallibly (`ENOMEM`), while the
//! fake's own records (pin counts, quarantine list) are kept outside the
//! count ([`fallible::testing::unarmed`]): they are the test's, not the
//! code under test.

use crate::pages::{Memory, PAGE};
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
}

/// Runs the fake's own bookkeeping outside heap fail-nth.
fn bookkeeping<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    return fallible::testing::unarmed(f);
    #[cfg(not(test))]
    f()
}

impl FakeMemory {
    fn is_mapped(&self, page: u64) -> bool {
        match &self.mapped {
            None => page < 1 << 30,
            Some(set) => set.contains(&page),
        }
    }

    /// Writes `value` at task virtual address `va` (8-byte aligned).
    pub fn write_u64(&mut self, va: u64, value: u64) {
        assert!(va.is_multiple_of(8), "unaligned word at {va:#x}");
        self.ram.insert(PA_BASE + va, value);
    }

    /// The word at task virtual address `va` (zero when never written).
    pub fn get_u64(&self, va: u64) -> u64 {
        self.ram.get(&(PA_BASE + va)).copied().unwrap_or(0)
    }
}

impl Memory for FakeMemory {
    fn pin(&mut self, va: u64, len: u64, _write: bool) -> Result<Vec<u64>, Errno> {
        let end = va.checked_add(len).ok_or(Errno::EFAULT)?;
        // Bounded before anything is allocated: no more pages than exist.
        let limit = self.mapped.as_ref().map_or(1 << 18, |m| m.len() as u64);
        if self.fail_pin || len / PAGE > limit {
            return Err(Errno::EFAULT);
        }
        if self.fail_nth.as_ref().is_some_and(|f| f.hit(Point::Alloc)) {
            return Err(Errno::ENOMEM);
        }
        // The one allocation a pin makes, fallible as the kernel's.
        let mut pas: Vec<u64> = Vec::new();
        pas.try_reserve_exact((len / PAGE) as usize).map_err(|_| Errno::ENOMEM)?;
        for p in (va..end).step_by(PAGE as usize) {
            if !self.is_mapped(p) {
                return Err(Errno::EFAULT);
            }
            pas.push(PA_BASE + p);
        }
        self.repin(&pas);
        Ok(pas)
    }

    fn repin(&mut self, pages: &[u64]) {
        bookkeeping(|| {
            for p in pages {
                *self.pins.entry(*p).or_default() += 1;
            }
        })
    }

    fn read_u64(&self, pa: u64) -> Option<u64> {
        let va = pa.checked_sub(PA_BASE)?;
        (pa.is_multiple_of(8) && self.is_mapped(va & !(PAGE - 1))).then(|| self.ram.get(&pa).copied().unwrap_or(0))
    }

    fn unpin(&mut self, pages: &[u64]) {
        for p in pages {
            let n = self.pins.get_mut(p).expect("unpin of a page never pinned");
            *n -= 1;
            if *n == 0 {
                self.pins.remove(p);
            }
        }
    }

    fn quarantine(&mut self, pages: &[u64]) {
        for p in pages {
            assert!(self.pins.contains_key(p), "quarantine of a page never pinned");
        }
        bookkeeping(|| self.quarantined.extend_from_slice(pages));
    }
}
