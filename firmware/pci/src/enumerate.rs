//! Depth-first enumeration from a host bridge: functions, BAR sizes,
//! capabilities, and bus numbers for bridges firmware left unprogrammed.

use crate::{caps, reg, Bar, BarKind, Bdf, ConfigAccess, Function, HostBridge, PciError};
use alloc::vec::Vec;

/// Sizes the BARs of `bdf` (decode is off while sizing; the command register is restored).
pub fn size_bars(access: &dyn ConfigAccess, bdf: Bdf, header_type: u8) -> Vec<Bar> {
    let count = if header_type == 1 { 2 } else { 6 };
    let cmd = access.read16(bdf, reg::COMMAND);
    access.write16(bdf, reg::COMMAND, cmd & !(reg::CMD_IO | reg::CMD_MEMORY));
    let mut bars = Vec::new();
    let mut i = 0;
    while i < count {
        let off = reg::BAR0 + 4 * i as u16;
        let orig = access.read32(bdf, off);
        access.write32(bdf, off, u32::MAX);
        let probe = access.read32(bdf, off);
        access.write32(bdf, off, orig);
        if probe == 0 || probe == u32::MAX && orig == u32::MAX {
            i += 1;
            continue;
        }
        if orig & 1 == 1 {
            // The size is the lowest writable address bit (PCI 3.0 §6.2.5.1); a
            // device whose writable bits are not contiguous gets no odd size.
            let mask = probe & 0xFFFC;
            let size = u64::from(mask & mask.wrapping_neg());
            if size > 0 {
                bars.push(Bar {
                    index: i as u8,
                    kind: BarKind::Io,
                    prefetchable: false,
                    base: u64::from(orig & !3),
                    size,
                });
            }
            i += 1;
            continue;
        }
        let prefetchable = orig & 8 != 0;
        let is_64 = (orig >> 1) & 3 == 2 && i + 1 < count;
        let (mask, base) = if is_64 {
            let hi_off = off + 4;
            let orig_hi = access.read32(bdf, hi_off);
            access.write32(bdf, hi_off, u32::MAX);
            let probe_hi = access.read32(bdf, hi_off);
            access.write32(bdf, hi_off, orig_hi);
            (u64::from(probe_hi) << 32 | u64::from(probe & !0xF), u64::from(orig_hi) << 32 | u64::from(orig & !0xF))
        } else {
            (0xFFFF_FFFF_0000_0000 | u64::from(probe & !0xF), u64::from(orig & !0xF))
        };
        // Lowest writable address bit, as for I/O: always a power of two.
        let size = mask & mask.wrapping_neg();
        if size != 0 && mask != 0 {
            let kind = if is_64 { BarKind::Mem64 } else { BarKind::Mem32 };
            bars.push(Bar { index: i as u8, kind, prefetchable, base, size });
        }
        i += if is_64 { 2 } else { 1 };
    }
    access.write16(bdf, reg::COMMAND, cmd);
    bars
}

struct Walk<'a> {
    access: &'a dyn ConfigAccess,
    host: HostBridge,
    assign_buses: bool,
    last_bus: u8,
    visited: Vec<u8>,
    out: Vec<Function>,
}

impl Walk<'_> {
    fn scan(&mut self, bus: u8, path: &mut Vec<Bdf>) -> Result<(), PciError> {
        if self.visited.contains(&bus) {
            let at = path.last().copied().unwrap_or(Bdf::new(self.host.segment, bus, 0, 0));
            return Err(PciError::BadBusNumbers(at));
        }
        self.visited.push(bus);
        for dev in 0..32 {
            let f0 = Bdf::new(self.host.segment, bus, dev, 0);
            if self.access.read16(f0, reg::VENDOR) == 0xFFFF {
                continue;
            }
            let functions = if self.access.read8(f0, reg::HEADER_TYPE) & 0x80 != 0 { 8 } else { 1 };
            for func in 0..functions {
                let bdf = Bdf::new(self.host.segment, bus, dev, func);
                if self.access.read16(bdf, reg::VENDOR) == 0xFFFF {
                    continue;
                }
                self.function(bdf, bus, path)?;
            }
        }
        Ok(())
    }

    fn function(&mut self, bdf: Bdf, bus: u8, path: &mut Vec<Bdf>) -> Result<(), PciError> {
        let a = self.access;
        let header_type = a.read8(bdf, reg::HEADER_TYPE) & 0x7F;
        let caps = match caps::read(a, bdf) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("pci: {e}; capabilities ignored");
                caps::Capabilities { malformed: true, ..Default::default() }
            }
        };
        let mut f = Function {
            bdf,
            vendor: a.read16(bdf, reg::VENDOR),
            device: a.read16(bdf, reg::DEVICE),
            class: a.read32(bdf, reg::CLASS_REV) >> 8,
            header_type,
            bars: size_bars(a, bdf, header_type),
            caps,
            path: path.clone(),
            bridge_buses: None,
        };
        if header_type != 1 {
            self.out.push(f);
            return Ok(());
        }
        let numbers = a.read32(bdf, reg::BUS_NUMBERS);
        let (secondary, subordinate) = ((numbers >> 8) as u8, (numbers >> 16) as u8);
        let index = self.out.len();
        self.out.push(f.clone());
        path.push(bdf);
        let result = if secondary > bus && secondary <= self.host.bus_end && subordinate >= secondary {
            // Firmware programmed this bridge: keep its numbers.
            self.last_bus = self.last_bus.max(subordinate);
            f.bridge_buses = Some((secondary, subordinate));
            self.scan(secondary, path)
        } else if self.assign_buses {
            let new = self
                .last_bus
                .checked_add(1)
                .filter(|&b| b <= self.host.bus_end)
                .ok_or(PciError::OutOfBusNumbers(bdf))?;
            self.last_bus = new;
            // Open the bridge to every remaining bus while its subtree is scanned.
            let keep = numbers & 0xFF00_0000;
            a.write32(
                bdf,
                reg::BUS_NUMBERS,
                keep | u32::from(self.host.bus_end) << 16 | u32::from(new) << 8 | u32::from(bus),
            );
            let r = self.scan(new, path);
            a.write32(
                bdf,
                reg::BUS_NUMBERS,
                keep | u32::from(self.last_bus) << 16 | u32::from(new) << 8 | u32::from(bus),
            );
            f.bridge_buses = Some((new, self.last_bus));
            r
        } else {
            log::warn!("pci: bridge {bdf} has no bus numbers; its subtree is not enumerated");
            Ok(())
        };
        path.pop();
        self.out[index] = f;
        result
    }
}

/// Enumerates every function under `host`, assigning bridge bus numbers where
/// firmware left them unprogrammed when `assign_buses` is set.
pub fn enumerate(access: &dyn ConfigAccess, host: &HostBridge, assign_buses: bool) -> Result<Vec<Function>, PciError> {
    let mut walk =
        Walk { access, host: *host, assign_buses, last_bus: host.bus_start, visited: Vec::new(), out: Vec::new() };
    walk.scan(host.bus_start, &mut Vec::new())?;
    Ok(walk.out)
}
