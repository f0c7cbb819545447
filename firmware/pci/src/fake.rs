//! A simulated configuration space for host tests: endpoints and bridges with
//! real header layouts, BAR size masks and routing by programmed bus numbers.

use crate::{reg, Bdf, ConfigAccess};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// One simulated function.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    /// Index of the bridge it sits behind (`None` = root bus).
    pub parent: Option<usize>,
    /// Device number on its bus.
    pub dev: u8,
    /// Function number.
    pub func: u8,
    /// 4 KiB of configuration space.
    pub cfg: Vec<u8>,
    /// Writable bits of each BAR dword (0 = not implemented).
    pub bar_masks: [u32; 6],
}

impl FakeFunction {
    fn set16(&mut self, off: usize, v: u16) {
        self.cfg[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.cfg[off..off + 4].try_into().unwrap_or([0xFF; 4]))
    }

    /// An endpoint with IDs and class.
    pub fn endpoint(parent: Option<usize>, dev: u8, func: u8, vendor: u16, device: u16, class: u32) -> Self {
        let mut f = FakeFunction { parent, dev, func, cfg: vec![0; 4096], bar_masks: [0; 6] };
        f.set16(0, vendor);
        f.set16(2, device);
        f.set32(8, class << 8 | 0x01);
        f
    }

    /// A PCI-PCI bridge (class 0x060400, header type 1), bus numbers unassigned.
    pub fn bridge(parent: Option<usize>, dev: u8, vendor: u16, device: u16) -> Self {
        let mut f = Self::endpoint(parent, dev, 0, vendor, device, 0x06_04_00);
        f.cfg[reg::HEADER_TYPE as usize] = 1;
        f
    }

    /// Adds a memory BAR of `size` bytes (power of two) at `index`.
    pub fn with_mem_bar(mut self, index: usize, size: u64, is_64: bool, prefetchable: bool) -> Self {
        let mask = !(size - 1);
        let type_bits = (if is_64 { 0b100 } else { 0 }) | (if prefetchable { 0b1000 } else { 0 });
        self.bar_masks[index] = (mask as u32) & !0xF;
        self.set32(0x10 + index * 4, type_bits);
        if is_64 {
            self.bar_masks[index + 1] = (mask >> 32) as u32;
        }
        self
    }

    /// Adds an I/O BAR of `size` bytes at `index`.
    pub fn with_io_bar(mut self, index: usize, size: u32) -> Self {
        self.bar_masks[index] = !(size - 1) & !0x3;
        self.set32(0x10 + index * 4, 1);
        self
    }

    /// Pre-assigns a BAR (as firmware would).
    pub fn with_bar_value(mut self, index: usize, value: u32) -> Self {
        let type_bits = self.get32(0x10 + index * 4) & 0xF;
        self.set32(0x10 + index * 4, (value & self.bar_masks[index]) | type_bits);
        self
    }

    /// Adds a legacy capability (id, raw bytes after the 2-byte header) at `offset`, chained.
    pub fn with_cap(mut self, offset: u8, id: u8, body: &[u8]) -> Self {
        // Append to the end of the chain.
        self.cfg[reg::STATUS as usize] |= reg::STATUS_CAP_LIST as u8;
        let mut link = reg::CAP_PTR as usize;
        while self.cfg[link] != 0 {
            link = self.cfg[link] as usize + 1;
        }
        self.cfg[link] = offset;
        let o = offset as usize;
        self.cfg[o] = id;
        self.cfg[o + 1] = 0;
        self.cfg[o + 2..o + 2 + body.len()].copy_from_slice(body);
        self
    }

    /// Writes raw configuration bytes.
    pub fn with_bytes(mut self, offset: usize, bytes: &[u8]) -> Self {
        self.cfg[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Marks function 0 as multi-function.
    pub fn multifunction(mut self) -> Self {
        self.cfg[reg::HEADER_TYPE as usize] |= 0x80;
        self
    }
}

/// A simulated segment.
#[derive(Debug, Default)]
pub struct FakeConfig {
    /// The functions.
    pub functions: RefCell<Vec<FakeFunction>>,
    /// Bus number of the root bus.
    pub root_bus: u8,
}

impl FakeConfig {
    /// A segment with these functions on root bus `root_bus`.
    pub fn new(root_bus: u8, functions: Vec<FakeFunction>) -> Self {
        FakeConfig { functions: RefCell::new(functions), root_bus }
    }

    /// Bus number the function at `index` currently appears on, if reachable.
    fn bus_of(&self, index: usize, depth: usize) -> Option<u8> {
        let fns = self.functions.borrow();
        let f = fns.get(index)?;
        match f.parent {
            None => Some(self.root_bus),
            Some(p) if depth < 16 => {
                let parent_bus = self.bus_of(p, depth + 1)?;
                let (primary, secondary) = (fns[p].cfg[0x18], fns[p].cfg[0x19]);
                (secondary != 0 && secondary > parent_bus && primary == parent_bus).then_some(secondary)
            }
            Some(_) => None,
        }
    }

    fn find(&self, bdf: Bdf) -> Option<usize> {
        let n = self.functions.borrow().len();
        (0..n).find(|&i| {
            let (dev, func) = {
                let fns = self.functions.borrow();
                (fns[i].dev, fns[i].func)
            };
            dev == bdf.dev && func == bdf.func && self.bus_of(i, 0) == Some(bdf.bus)
        })
    }

    /// Reads a dword of the function at `index` directly (for assertions).
    pub fn peek32(&self, index: usize, offset: usize) -> u32 {
        self.functions.borrow()[index].get32(offset)
    }
}

impl ConfigAccess for FakeConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.find(bdf) {
            Some(i) => self.functions.borrow()[i].get32(offset as usize & 0xFFC),
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        let Some(i) = self.find(bdf) else { return };
        let mut fns = self.functions.borrow_mut();
        let f = &mut fns[i];
        let off = offset as usize & 0xFFC;
        let is_endpoint = f.cfg[reg::HEADER_TYPE as usize] & 0x7F == 0;
        let bar_slots = if is_endpoint { 6 } else { 2 };
        if (0x10..0x10 + 4 * bar_slots).contains(&off) {
            let idx = (off - 0x10) / 4;
            let old = f.get32(off);
            let mask = f.bar_masks[idx];
            // Type bits of the lower dword are read-only; an absent BAR ignores writes.
            let keep = if mask == 0 { old } else { old & !mask };
            f.set32(off, (value & mask) | keep);
            return;
        }
        match off {
            0x00 | 0x08 => {} // IDs and class are read-only
            _ => f.set32(off, value),
        }
    }

    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let old = self.read32(bdf, offset & !3);
        let shift = (offset & 2) * 8;
        let merged = (old & !(0xFFFF << shift)) | (u32::from(value) << shift);
        self.write32(bdf, offset & !3, merged);
    }
}
