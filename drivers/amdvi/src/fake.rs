//! A QEMU-like AMD-Vi in host memory, for the driver's tests.
//!
//! [`FakeMem`] is the DMA memory (frames in a map, addressed by made-up
//! physical addresses) and, through a 16 KiB register block it allocates,
//! the IOMMU: whenever the driver reads DMA memory (it polls the
//! COMPLETION_WAIT frame), the fake runs the commands between CmdHead and
//! CmdTail as QEMU 10.0 does (`amdvi_cmdbuf_run`, including the unwrapped
//! CmdHead after the last slot), with the reserved-field checks of
//! `amdvi_completion_wait`, `amdvi_inval_devtab_entry`, `amdvi_inval_pages`
//! and `amdvi_inval_all`. Unlike QEMU it stops at a refused command and logs
//! ILLEGAL_COMMAND_ERROR, as the spec says hardware does. [`FakeMem::translate`]
//! follows `amdvi_translate` / `amdvi_do_translate` / `amdvi_page_walk`,
//! with QEMU's IOTLB (looked up by DeviceID before the DTE, emptied per
//! DomainID) and its 10.0 DTE reserved masks. Events can be injected.

use crate::cmd::Command;
use crate::dte::Dte;
use crate::regs::{Regs, CONTROL, STATUS};
use iommu::mmio::{BlockRef, FakeMmio, MmioWindow};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use tock_registers::interfaces::{Readable, Writeable};

/// QEMU 10.0's EFR (QEMU.md §3.2).
pub const QEMU_EFR: u64 = 0x29D3;
/// QEMU 10.0's DTE reserved masks (`AMDVI_DTE_{LOWER,MIDDLE,UPPER}_QUAD_RESERVED`; qword 3 must be 0).
pub const QEMU_DTE_RESERVED: [u64; 4] = [0x8030_0000_0000_00FC, 0x100, 0x08F0_0000_0000_0000, u64::MAX];

const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
const FIRST_FRAME: u64 = 0x1_0000_0000;

/// Whether QEMU 10.0 accepts `c` without logging ILLEGAL_COMMAND_ERROR.
pub fn qemu_accepts(c: &Command) -> bool {
    let c = c.to_words();
    let bits = |w: u64, lo: u32, n: u32| (w >> lo) & ((1u64 << n) - 1);
    match c[0] >> 60 {
        0x1 => bits(c[0], 52, 8) == 0,
        0x2 => bits(c[0], 16, 44) == 0 && c[1] == 0,
        0x3 => bits(c[0], 20, 12) == 0 && bits(c[0], 48, 12) == 0 && bits(c[1], 3, 9) == 0,
        0x8 => bits(c[0], 0, 60) == 0 && c[1] == 0,
        _ => false,
    }
}

/// One IOTLB entry of the fake.
#[derive(Clone, Copy)]
struct Cached {
    domain: u16,
    page: u64,
    perms: u64,
}

/// DMA memory plus a simulated IOMMU.
pub struct FakeMem {
    frames: RefCell<BTreeMap<u64, Box<[u64; 512]>>>,
    next: Cell<u64>,
    /// Frames that may be allocated in all (`None`: no limit).
    pub limit: Option<usize>,
    regs: FakeMmio,
    /// Every command the fake ran (or refused), in order.
    pub log: RefCell<Vec<Command>>,
    /// (DeviceID, IOVA page) → cached translation.
    iotlb: RefCell<BTreeMap<(u16, u64), Cached>>,
    /// (CmdHead, CmdTail) when the fake stopped at a refused command; it runs
    /// again once the driver moved either (restarted the buffer).
    halted_at: Cell<Option<(u64, u64)>>,
}

impl FakeMem {
    /// Memory with a register block whose EFR reads `efr`.
    pub fn with_unit(efr: u64) -> FakeMem {
        let regs = FakeMmio::new(crate::regs::MMIO_SIZE as u64).unwrap();
        regs.write_u64(0x30, efr);
        FakeMem {
            frames: RefCell::new(BTreeMap::new()),
            next: Cell::new(FIRST_FRAME),
            limit: None,
            // The block is never freed: the driver may hold its window as long as the test runs.
            regs,
            log: RefCell::new(Vec::new()),
            iotlb: RefCell::new(BTreeMap::new()),
            halted_at: Cell::new(None),
        }
    }

    /// The window over the register block (what `AmdVi::new` takes).
    pub fn register_window(&self) -> MmioWindow {
        self.regs.window()
    }

    /// The register block, as the device sees it.
    pub fn regs(&self) -> BlockRef<Regs> {
        self.regs.window().checked::<Regs>(0).unwrap()
    }

    /// Frames allocated now.
    pub fn live(&self) -> usize {
        self.frames.borrow().len()
    }

    /// Word at physical address `pa` (no simulation step).
    pub fn word(&self, pa: u64) -> u64 {
        self.frames.borrow().get(&(pa & !0xFFF)).map_or(0, |f| f[((pa & 0xFFF) / 8) as usize])
    }

    fn set_word(&self, pa: u64, value: u64) {
        if let Some(f) = self.frames.borrow_mut().get_mut(&(pa & !0xFFF)) {
            f[((pa & 0xFFF) / 8) as usize] = value;
        }
    }

    fn take(&self, frames: usize) -> Option<u64> {
        // The fake's own heap is not the driver's: never failed by fail-nth.
        fallible::testing::unarmed(|| self.take_frames(frames))
    }

    fn take_frames(&self, frames: usize) -> Option<u64> {
        if self.limit.is_some_and(|l| self.live() + frames > l) {
            return None;
        }
        let align = frames as u64 * 4096;
        let base = self.next.get().next_multiple_of(align);
        self.next.set(base + align);
        let mut map = self.frames.borrow_mut();
        for i in 0..frames as u64 {
            map.insert(base + i * 4096, Box::new([0; 512]));
        }
        Some(base)
    }

    /// Runs the commands the driver queued (one simulation step).
    pub fn step(&self) {
        fallible::testing::unarmed(|| self.run())
    }

    fn run(&self) {
        let r = self.regs();
        let on = (CONTROL::IOMMU_EN::SET + CONTROL::CMD_BUF_EN::SET).value;
        if r.control.get() & on != on {
            return;
        }
        let base = r.cmd_base.get() & ADDR;
        let size = 16u64 << ((r.cmd_base.get() >> 56) & 0xF);
        let mut head = (r.cmd_head.get() & 0x7FFF0) % size;
        let tail = r.cmd_tail.get() & 0x7FFF0;
        if let Some(h) = self.halted_at.get() {
            if h == (head, tail) {
                return;
            }
            self.halted_at.set(None);
        }
        while head != tail {
            let c = Command::from_words([self.word(base + head), self.word(base + head + 8)]);
            self.log.borrow_mut().push(c);
            if !self.execute(&c) {
                self.push_event([0x5 << 60, base + head]);
                self.halted_at.set(Some((head, tail)));
                r.cmd_head.set(head);
                return;
            }
            head += 16;
            // As QEMU: the register gets the unwrapped value, then the pointer wraps.
            r.cmd_head.set(head);
            head %= size;
        }
    }

    fn execute(&self, c: &Command) -> bool {
        if !qemu_accepts(c) {
            return false;
        }
        let c = c.to_words();
        match c[0] >> 60 {
            0x1 if c[0] & 1 != 0 => self.set_word(c[0] & 0x000F_FFFF_FFFF_FFF8, c[1]),
            0x3 => {
                let domain = (c[0] >> 32) as u16;
                self.iotlb.borrow_mut().retain(|_, c| c.domain != domain);
            }
            0x8 => self.iotlb.borrow_mut().clear(),
            _ => {}
        }
        true
    }

    /// Logs an event as hardware would: at EvtTail, which then advances; a
    /// full log sets EventOverflow and stops logging (EventLogRun clear).
    pub fn push_event(&self, e: [u64; 2]) {
        let r = self.regs();
        let base = r.evt_base.get() & ADDR;
        let size = 16u64 << ((r.evt_base.get() >> 56) & 0xF);
        let (head, tail) = (r.evt_head.get() & 0x7FFF0, r.evt_tail.get() & 0x7FFF0);
        let next = (tail + 16) % size;
        if next == head {
            r.status.set((r.status.get() | STATUS::EVENT_OVERFLOW::SET.value) & !STATUS::EVENT_LOG_RUN::SET.value);
            return;
        }
        self.set_word(base + tail, e[0]);
        self.set_word(base + tail + 8, e[1]);
        r.evt_tail.set(next);
    }

    /// The DTE of `devid` in the table the registers point at.
    pub fn dte(&self, devid: u16) -> Dte {
        let at = (self.regs().devtab_base.get() & ADDR) + u64::from(devid) * 32;
        Dte::from_words([0, 8, 16, 24].map(|o| self.word(at + o)))
    }

    /// What a DMA of `devid` to `iova` reaches (`None`: refused), as QEMU
    /// 10.0 decides it.
    pub fn translate(&self, devid: u16, iova: u64, write: bool) -> Option<u64> {
        self.step();
        let need = if write { 2 } else { 1 };
        if !self.regs().control.is_set(CONTROL::IOMMU_EN) {
            return Some(iova);
        }
        if (0xFEE0_0000..=0xFEEF_FFFF).contains(&iova) {
            return write.then_some(iova);
        }
        let page = iova >> 12;
        if let Some(c) = self.iotlb.borrow().get(&(devid, page)) {
            return (c.perms & need == need).then_some(c.page << 12 | (iova & 0xFFF));
        }
        let dte = self.dte(devid).to_words();
        if dte.iter().zip(QEMU_DTE_RESERVED).any(|(q, m)| q & m != 0) {
            return None; // ILLEGAL_DEV_TABLE_ENTRY
        }
        if dte[0] & 1 == 0 {
            return Some(iova); // V = 0: untranslated, not cached
        }
        let (pa, perms) = self.walk(&dte, iova, need)?;
        if perms != 0 {
            fallible::testing::unarmed(|| {
                self.iotlb.borrow_mut().insert((devid, page), Cached { domain: dte[1] as u16, page: pa >> 12, perms })
            });
        }
        (perms & need == need).then_some(pa)
    }

    /// `amdvi_page_walk`: (physical address, IR/IW of the final entry), or
    /// `None` where QEMU faults or gives up.
    fn walk(&self, dte: &[u64; 4], iova: u64, need: u64) -> Option<(u64, u64)> {
        let mut pte = dte[0];
        let perms = |e: u64| (e >> 61) & 3;
        if pte & 2 == 0 {
            return Some((iova, perms(pte)));
        }
        let mut level = (pte >> 9) & 7;
        if level == 7 {
            return None;
        }
        if level == 0 {
            return Some((iova, perms(pte)));
        }
        let mut old;
        loop {
            if pte & 1 == 0 || perms(pte) & need != need {
                return None; // IO_PAGE_FAULT
            }
            pte = self.word((pte & ADDR) + (((iova >> (3 + 9 * level)) & 0x1FF) << 3));
            if pte == 0 {
                return None;
            }
            old = level;
            level = (pte >> 9) & 7;
            if level == 0 || level == 7 {
                break;
            }
        }
        if level == 7 {
            return None; // page-size override encoding: never written by this driver
        }
        let mask = !((1u64 << (old * 9 + 3)) - 1);
        Some(((pte & ADDR & mask) | (iova & !mask), perms(pte)))
    }
}

impl io_pgtable::TableMemory for FakeMem {
    fn alloc_table(&mut self) -> Option<u64> {
        self.take(1)
    }

    fn free_table(&mut self, pa: u64) {
        assert!(self.frames.borrow_mut().remove(&pa).is_some(), "freeing {pa:#x}, which is not allocated");
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.step();
        self.word(table + index as u64 * 8)
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        assert!(self.frames.borrow().contains_key(&table), "write to unallocated frame {table:#x}");
        self.set_word(table + index as u64 * 8, value);
    }
}

impl iommu::DmaMemory for FakeMem {
    fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
        assert!(frames.is_power_of_two());
        self.take(frames)
    }

    fn free_contiguous(&mut self, base: u64, frames: usize) {
        for i in 0..frames as u64 {
            io_pgtable::TableMemory::free_table(self, base + i * 4096);
        }
    }
}
