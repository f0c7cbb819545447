//! The two tables every redistributor reads LPIs from (IHI 0069 §5.1
//! "LPIs"): the *configuration* table, one byte per LPI (priority in bits
//! 7:2, bit 1 RES1, enable in bit 0), shared by all redistributors and named
//! by GICR_PROPBASER; and a *pending* table per redistributor, one bit per
//! INTID (the first 8192 bits, for the INTIDs below the LPI range, unused),
//! 64 KiB aligned, named by GICR_PENDBASER.

use iommu::dma::DmaRegion;
use iommu::DmaMemory;

/// The first LPI INTID.
pub const FIRST_LPI: u32 = 8192;

/// Inner cacheability the tables are given (write-back, read- and write-allocate).
const WB_RAWA: u64 = 0b111;
/// Inner shareable.
const INNER_SHAREABLE: u64 = 0b01;

/// The configuration and (one redistributor's) pending table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LpiTables {
    config: DmaRegion,
    pending: DmaRegion,
    id_bits: u32,
}

/// Frames (a power of two) holding `bytes`.
fn frames_for(bytes: u64) -> usize {
    (bytes.div_ceil(4096) as usize).next_power_of_two()
}

impl LpiTables {
    /// Tables for the INTIDs below `1 << id_bits` (14..=16 here: 8192 to
    /// 57344 LPIs), zeroed (every LPI disabled, none pending). `None`: the
    /// width is out of range or memory is short (nothing kept).
    pub fn new(mem: &mut impl DmaMemory, id_bits: u32) -> Option<LpiTables> {
        if !(14..=16).contains(&id_bits) {
            return None;
        }
        let intids = 1u64 << id_bits;
        let config = DmaRegion::alloc_contiguous(mem, frames_for(intids - u64::from(FIRST_LPI)))?;
        // 64 KiB alignment: at least 16 frames (alloc_contiguous aligns to the size).
        let Some(pending) = DmaRegion::alloc_contiguous(mem, frames_for(intids / 8).max(16)) else {
            config.free_contiguous(mem);
            return None;
        };
        Some(LpiTables { config, pending, id_bits })
    }

    /// Gives the tables back (only once no redistributor uses them).
    pub fn free(self, mem: &mut impl DmaMemory) {
        self.config.free_contiguous(mem);
        self.pending.free_contiguous(mem);
    }

    /// LPIs the tables cover: `FIRST_LPI .. FIRST_LPI + count()`.
    pub fn count(&self) -> u32 {
        (1u32 << self.id_bits) - FIRST_LPI
    }

    /// Whether `lpi` is an INTID these tables describe.
    pub fn covers(&self, lpi: u32) -> bool {
        (FIRST_LPI..FIRST_LPI + self.count()).contains(&lpi)
    }

    /// GICR_PROPBASER: physical address (bits 51:12), inner cacheability
    /// (9:7), shareability (11:10), IDbits (4:0, the INTID width minus one).
    pub fn propbaser(&self) -> u64 {
        self.config.base() | INNER_SHAREABLE << 10 | WB_RAWA << 7 | u64::from(self.id_bits - 1)
    }

    /// GICR_PENDBASER: physical address (bits 51:16), cacheability and
    /// shareability as in PROPBASER, PTZ (bit 62: the table is zero, as
    /// [`LpiTables::new`] left it).
    pub fn pendbaser(&self) -> u64 {
        self.pending.base() | 1 << 62 | INNER_SHAREABLE << 10 | WB_RAWA << 7
    }

    /// Writes `lpi`'s configuration byte: `priority` (its top six bits) and
    /// whether it is enabled. The redistributor sees it after an ITS INV (or
    /// INVALL) for the event that maps to it. `false`: not an LPI of these tables.
    pub fn configure(&self, mem: &mut impl DmaMemory, lpi: u32, priority: u8, enabled: bool) -> bool {
        if !self.covers(lpi) {
            return false;
        }
        let byte = (priority & 0xFC) | 0b10 | u8::from(enabled);
        self.config.write_bytes(mem, u64::from(lpi - FIRST_LPI), &[byte]).is_ok()
    }

    /// `lpi`'s configuration byte (`None` outside the tables).
    pub fn config_byte(&self, mem: &impl DmaMemory, lpi: u32) -> Option<u8> {
        let mut b = [0u8];
        self.covers(lpi).then_some(())?;
        self.config.read_bytes(mem, u64::from(lpi - FIRST_LPI), &mut b).ok()?;
        Some(b[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Mem;

    #[test]
    fn tables_have_the_size_and_alignment_the_redistributor_needs() {
        let mut mem = Mem::default();
        let t = LpiTables::new(&mut mem, 14).unwrap();
        assert_eq!(t.count(), 8192);
        assert_eq!(t.config.len(), 8192, "one byte per LPI");
        assert_eq!(t.pending.base() % 0x1_0000, 0, "pending table 64 KiB aligned");
        assert!(t.pending.len() >= 2048);
        assert_eq!(t.propbaser() & 0x1F, 13, "IDbits is the width minus one");
        assert_eq!(t.propbaser() & !0xFFF, t.config.base());
        assert_eq!(t.pendbaser() >> 62 & 1, 1, "PTZ: the table starts zeroed");
        assert_eq!(t.pendbaser() & 0x000F_FFFF_FFFF_0000, t.pending.base());
        assert!(LpiTables::new(&mut mem, 13).is_none(), "no LPI below 8192");
        assert!(LpiTables::new(&mut mem, 17).is_none());
        t.free(&mut mem);
        assert_eq!(mem.live(), 0);
    }

    #[test]
    fn configuration_bytes_carry_priority_and_enable() {
        let mut mem = Mem::default();
        let t = LpiTables::new(&mut mem, 14).unwrap();
        assert!(t.configure(&mut mem, FIRST_LPI + 5, 0xA1, true));
        assert_eq!(t.config_byte(&mem, FIRST_LPI + 5), Some(0xA3));
        assert!(t.configure(&mut mem, FIRST_LPI + 5, 0xA0, false));
        assert_eq!(t.config_byte(&mem, FIRST_LPI + 5), Some(0xA2));
        assert!(!t.configure(&mut mem, FIRST_LPI - 1, 0xA0, true), "an SPI is no LPI");
        assert!(!t.configure(&mut mem, FIRST_LPI + 8192, 0xA0, true), "past the table");
        assert_eq!(t.config_byte(&mem, 42), None);
        t.free(&mut mem);
    }

    #[test]
    fn short_memory_keeps_nothing() {
        let mut mem = Mem::limited(2);
        assert!(LpiTables::new(&mut mem, 14).is_none());
        assert_eq!(mem.live(), 0);
    }
}
