//! One producer ring in DMA memory: the VT-d invalidation queue (VT-d
//! §6.5.2), the SMMUv3 command queue (SMMUv3 §3.5) and the AMD-Vi command
//! buffer (AMD IOMMU §2.4) have the same shape: a power of two of slots of a
//! fixed number of 64-bit words, a producer index the driver advances and
//! writes to a doorbell register, a consumer index the unit advances.
//!
//! [`ProducerRing`] keeps both indices free-running with the wrap bit (the
//! bit above the slot index, SMMUv3's PROD/CONS encoding) and converts them
//! for the units that give byte offsets without a wrap bit (VT-d IQT/IQH,
//! AMD-Vi CmdTail/CmdHead): those tell a full ring from an empty one only by
//! keeping one slot free ([`Indexing::Offsets`]).
//!
//! [`ProducerRing::publish`] orders the slot stores before the doorbell
//! store with a full fence. Every unit needs it: the slots are normal
//! (cacheable) memory and the doorbell is device memory, and on Arm a store to
//! normal memory may become visible after a later store to device memory
//! unless a barrier (DSB) separates them, so the unit could fetch a stale
//! slot; on x86 stores are not reordered with each other, and the fence costs
//! one serialising instruction per batch while stopping the compiler from
//! sinking a slot store below the doorbell. (SMMUv3 §3.5.2 and the AMD-Vi
//! spec both ask for the command to be visible before the tail moves.)

use crate::dma::{DmaRegion, OutsideRegion};
use io_pgtable::TableMemory;

/// How the unit reports its indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexing {
    /// Slot index plus a wrap bit (SMMUv3 PROD/CONS): every slot usable.
    WrapBit,
    /// Byte offsets of the slot, no wrap bit (VT-d IQT/IQH, AMD-Vi
    /// CmdTail/CmdHead): head == tail means empty, so one slot stays free.
    Offsets,
}

/// The ring has no room for the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// A bounded wait ran out of polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout;

/// Why [`ProducerRing::new`] refused a geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingGeometry {
    /// More than 2^20 slots, or slots of no words.
    Unsupported,
    /// The slots do not fit in the region.
    TooSmall,
}

/// A producer ring: `1 << log2` slots of `slot_words` 64-bit words in a
/// [`DmaRegion`], with the driver's producer and its copy of the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerRing {
    region: DmaRegion,
    log2: u32,
    slot_words: usize,
    indexing: Indexing,
    /// Producer: slot index with the wrap bit, `0 .. 2 << log2`.
    prod: u32,
    /// Consumer, same encoding.
    cons: u32,
}

impl ProducerRing {
    /// An empty ring of `1 << log2` slots of `slot_words` words at the start
    /// of `region` (which the caller allocated, zeroed).
    pub fn new(region: DmaRegion, log2: u32, slot_words: usize, indexing: Indexing) -> Result<Self, RingGeometry> {
        if log2 > 20 || slot_words == 0 || slot_words > 64 {
            return Err(RingGeometry::Unsupported);
        }
        if (slot_words << log2) > region.words() {
            return Err(RingGeometry::TooSmall);
        }
        Ok(ProducerRing { region, log2, slot_words, indexing, prod: 0, cons: 0 })
    }

    /// The memory the ring lives in.
    pub fn region(&self) -> DmaRegion {
        self.region
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        1 << self.log2
    }

    /// log2 of the number of slots (the size fields of IQA, CMDQ_BASE, CmdBufLen).
    pub fn log2_slots(&self) -> u32 {
        self.log2
    }

    /// Words per slot.
    pub fn slot_words(&self) -> usize {
        self.slot_words
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> u64 {
        self.slot_words as u64 * 8
    }

    fn mask(&self) -> u32 {
        (2 << self.log2) - 1
    }

    /// Entries the ring can hold at once: every slot with a wrap bit, one
    /// fewer with byte offsets.
    pub fn capacity(&self) -> u32 {
        match self.indexing {
            Indexing::WrapBit => self.slots(),
            Indexing::Offsets => self.slots() - 1,
        }
    }

    /// Entries pushed and not yet consumed (as far as the driver knows).
    pub fn used(&self) -> u32 {
        self.prod.wrapping_sub(self.cons) & self.mask()
    }

    /// Entries that can be pushed now.
    pub fn free(&self) -> u32 {
        self.capacity().saturating_sub(self.used())
    }

    /// The producer with its wrap bit (SMMUv3 CMDQ_PROD: index | wrap << log2).
    pub fn prod(&self) -> u32 {
        self.prod
    }

    /// The consumer with its wrap bit.
    pub fn cons(&self) -> u32 {
        self.cons
    }

    /// Slot index the next entry goes to (the producer without its wrap bit).
    pub fn tail_index(&self) -> u32 {
        self.prod & (self.slots() - 1)
    }

    /// The producer as a byte offset (VT-d IQT, AMD-Vi CmdTail).
    pub fn tail_offset(&self) -> u64 {
        u64::from(self.tail_index()) * self.slot_bytes()
    }

    /// Takes the unit's consumer with its wrap bit (SMMUv3 CMDQ_CONS);
    /// bits above the wrap bit are ignored.
    pub fn set_cons(&mut self, cons: u32) {
        self.cons = cons & self.mask();
    }

    /// Slot index of a byte offset the unit reported (VT-d IQH, AMD-Vi CmdHead).
    pub fn index_of_offset(&self, offset: u64) -> u32 {
        ((offset / self.slot_bytes()) as u32) & (self.slots() - 1)
    }

    /// Takes the unit's consumer as a byte offset (VT-d IQH, AMD-Vi
    /// CmdHead): it is behind the producer by less than a lap.
    pub fn set_head_offset(&mut self, offset: u64) {
        let head = self.index_of_offset(offset);
        let behind = self.tail_index().wrapping_sub(head) & (self.slots() - 1);
        self.cons = self.prod.wrapping_sub(behind) & self.mask();
    }

    /// Records that the unit consumed everything pushed (a completion wait
    /// behind the last entry came back).
    pub fn retire_all(&mut self) {
        self.cons = self.prod;
    }

    /// Empties the ring at slot 0: producer and consumer both back to the
    /// start, as for a unit whose head and tail registers were reset to 0
    /// (AMD-Vi restarting its command buffer after a refused command).
    pub fn reset(&mut self) {
        self.prod = 0;
        self.cons = 0;
    }

    /// Writes `entry` (at most `slot_words` words; the rest of the slot is
    /// zeroed) into slot `index`, without moving the producer.
    pub fn write_slot(&self, mem: &mut impl TableMemory, index: u32, entry: &[u64]) -> Result<(), OutsideRegion> {
        let first = (index & (self.slots() - 1)) as usize * self.slot_words;
        for i in 0..self.slot_words {
            self.region.write_u64(mem, first + i, entry.get(i).copied().unwrap_or(0))?;
        }
        Ok(())
    }

    /// Reads slot `index` into `out` (its first `out.len()` words, at most a slot).
    pub fn read_slot(&self, mem: &impl TableMemory, index: u32, out: &mut [u64]) -> Result<(), OutsideRegion> {
        let first = (index & (self.slots() - 1)) as usize * self.slot_words;
        for (i, w) in out.iter_mut().enumerate().take(self.slot_words) {
            *w = self.region.read_u64(mem, first + i)?;
        }
        Ok(())
    }

    /// Writes `entry` into the next slot and advances the producer (the unit
    /// sees it only after [`ProducerRing::publish`]). Refused when the ring
    /// is full or the entry is longer than a slot.
    pub fn push(&mut self, mem: &mut impl TableMemory, entry: &[u64]) -> Result<(), RingFull> {
        if self.free() == 0 || entry.len() > self.slot_words {
            return Err(RingFull);
        }
        // The geometry was checked against the region in `new`: the slot is inside it.
        self.write_slot(mem, self.tail_index(), entry).map_err(|_| RingFull)?;
        self.prod = self.prod.wrapping_add(1) & self.mask();
        Ok(())
    }

    /// Makes the pushed entries visible to the unit: a full fence (see the
    /// module docs), then `doorbell` writes the producer register from this
    /// ring ([`ProducerRing::prod`] or [`ProducerRing::tail_offset`]).
    pub fn publish<R>(&self, doorbell: impl FnOnce(&ProducerRing) -> R) -> R {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        doorbell(self)
    }

    /// Polls `done` up to `limit` times ([`crate::poll`]): the bounded wait
    /// for a completion (wait descriptor status, CONS catching up).
    pub fn wait(limit: u32, done: impl FnMut() -> bool) -> Result<(), Timeout> {
        if crate::poll(limit, done) {
            Ok(())
        } else {
            Err(Timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[derive(Default)]
    struct Mem(BTreeMap<(u64, usize), u64>);

    impl TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            Some(0x1000)
        }
        fn free_table(&mut self, _: u64) {}
        fn read(&self, table: u64, index: usize) -> u64 {
            self.0.get(&(table, index)).copied().unwrap_or(0)
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.0.insert((table, index), value);
        }
    }

    fn region() -> DmaRegion {
        DmaRegion::new(0x1000, 1).unwrap()
    }

    #[test]
    fn geometry_is_checked() {
        assert_eq!(ProducerRing::new(region(), 8, 2, Indexing::Offsets).map(|r| r.slots()), Ok(256));
        assert_eq!(ProducerRing::new(region(), 9, 2, Indexing::Offsets), Err(RingGeometry::TooSmall));
        assert_eq!(ProducerRing::new(region(), 2, 0, Indexing::Offsets), Err(RingGeometry::Unsupported));
        assert_eq!(ProducerRing::new(region(), 21, 1, Indexing::Offsets), Err(RingGeometry::Unsupported));
    }

    #[test]
    fn wrap_bit_ring_fills_every_slot_and_wraps() {
        let mut mem = Mem::default();
        let mut r = ProducerRing::new(region(), 2, 2, Indexing::WrapBit).unwrap();
        for i in 0..4 {
            r.push(&mut mem, &[i, 100 + i]).unwrap();
        }
        assert_eq!((r.free(), r.used(), r.prod()), (0, 4, 0b100), "wrap bit set, index 0");
        assert_eq!(r.push(&mut mem, &[9]), Err(RingFull));
        assert_eq!((mem.read(0x1000, 6), mem.read(0x1000, 7)), (3, 103));
        // The unit consumed three: CONS = 3, no wrap.
        r.set_cons(3);
        assert_eq!(r.free(), 3);
        r.push(&mut mem, &[7]).unwrap(); // a short entry: the rest of the slot is zeroed
        assert_eq!((mem.read(0x1000, 0), mem.read(0x1000, 1)), (7, 0));
        assert_eq!((r.prod(), r.tail_index(), r.tail_offset()), (0b101, 1, 16));
        r.set_cons(0b101 | 0xF0); // caught up; junk above the wrap bit ignored
        assert_eq!((r.used(), r.free(), r.cons()), (0, 4, 0b101));
        assert_eq!(r.push(&mut mem, &[1, 2, 3]), Err(RingFull), "longer than a slot");
    }

    #[test]
    fn offset_ring_keeps_a_slot_free_and_reads_head_offsets() {
        let mut mem = Mem::default();
        let mut r = ProducerRing::new(region(), 2, 2, Indexing::Offsets).unwrap();
        assert_eq!(r.capacity(), 3);
        for i in 0..3 {
            r.push(&mut mem, &[i, 0]).unwrap();
        }
        assert_eq!(r.push(&mut mem, &[3, 0]), Err(RingFull));
        assert_eq!(r.tail_offset(), 48);
        r.set_head_offset(32); // the unit is at slot 2: one still pending
        assert_eq!((r.used(), r.free()), (1, 2));
        for i in 3..5 {
            r.push(&mut mem, &[i, 0]).unwrap();
        }
        assert_eq!((r.tail_index(), r.tail_offset()), (1, 16), "wrapped");
        r.set_head_offset(16); // head == tail: empty
        assert_eq!(r.used(), 0);
        r.push(&mut mem, &[5, 0]).unwrap();
        r.retire_all();
        let mut copy = r;
        copy.reset();
        assert_eq!((copy.prod(), copy.cons(), copy.tail_offset(), copy.free()), (0, 0, 0, 3), "reset: empty at slot 0");
        assert_eq!((r.used(), r.free()), (0, 3));
        let mut slot = [0; 2];
        r.read_slot(&mem, 1, &mut slot).unwrap();
        assert_eq!(slot, [5, 0]);
        r.write_slot(&mut mem, 1, &[8, 9]).unwrap();
        r.read_slot(&mem, 5, &mut slot).unwrap(); // indices wrap
        assert_eq!(slot, [8, 9]);
    }

    #[test]
    fn publish_hands_the_ring_to_the_doorbell_and_wait_is_bounded() {
        let mut mem = Mem::default();
        let mut r = ProducerRing::new(region(), 8, 2, Indexing::Offsets).unwrap();
        r.push(&mut mem, &[1, 2]).unwrap();
        assert_eq!(r.publish(|r| r.tail_offset()), 16);
        let mut polls = 0;
        assert_eq!(
            ProducerRing::wait(10, || {
                polls += 1;
                false
            }),
            Err(Timeout)
        );
        assert_eq!(polls, 10);
        assert_eq!(ProducerRing::wait(10, || true), Ok(()));
    }
}
