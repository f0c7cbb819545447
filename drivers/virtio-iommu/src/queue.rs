//! A split virtqueue (virtio 1.2 §2.7) in memory from [`iommu::DmaMemory`].
//!
//! One run of contiguous zeroed frames holds, in order, the descriptor table
//! (16 bytes per entry, §2.7.5), the available ring (`flags`, `idx`,
//! `ring[size]`, §2.7.6) and, 8-byte aligned, the used ring (`flags`, `idx`,
//! `ring[size]` of `{ le32 id; le32 len }`, §2.7.8). Neither EVENT_IDX nor
//! indirect descriptors are negotiated, so `used_event` / `avail_event` stay
//! unused. The driver polls: the available ring's NO_INTERRUPT flag asks the
//! device not to interrupt (§2.7.7).
//!
//! The driver keeps its own copy of every chain it posted (which
//! descriptors, which heads are outstanding) and trusts nothing it reads back
//! from the device except the used ring, whose entries are checked against
//! that copy. Indices are free-running 16-bit counters (§2.7.6, §2.7.8); slots
//! are the counters modulo the queue size.

use crate::error::VirtioError;
use crate::transport::Rings;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use iommu::desc::RAW;
use iommu::dma::DmaRegion;
use iommu::DmaMemory;
use tock_registers::register_bitfields;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (else it reads it).
pub const DESC_F_WRITE: u16 = 2;

register_bitfields![u64,
    /// Bytes 8..16 of a split-virtqueue descriptor (virtio 1.2 §2.7.5):
    /// `le32 len; le16 flags; le16 next`.
    pub DESC_W1 [
        /// `len`, bits 31:0: bytes in the buffer (§2.7.5).
        LEN OFFSET(0) NUMBITS(32) [],
        /// `flags` bit 0, VIRTQ_DESC_F_NEXT: the chain continues at `next` (§2.7.5).
        F_NEXT OFFSET(32) NUMBITS(1) [],
        /// `flags` bit 1, VIRTQ_DESC_F_WRITE: the device writes the buffer (§2.7.5).
        F_WRITE OFFSET(33) NUMBITS(1) [],
        /// `next`, bits 63:48: the following descriptor when F_NEXT is set (§2.7.5).
        NEXT OFFSET(48) NUMBITS(16) []
    ]
];

iommu::descriptor! {
    /// One entry of the descriptor table (virtio 1.2 §2.7.5, `struct virtq_desc`).
    pub struct Desc {
        /// `le64 addr` (§2.7.5): physical address of the buffer, the whole word.
        addr: RAW,
        /// `len`, `flags` and `next` (§2.7.5).
        meta: DESC_W1,
    }
}

/// Bytes of a descriptor-table entry (§2.7.5).
const DESC_BYTES: u64 = 16;
/// Offset of `idx` in the available and the used ring (§2.7.6, §2.7.8).
const RING_IDX: u64 = 2;
/// Offset of `ring[0]` in the available and the used ring (§2.7.6, §2.7.8).
const RING_ENTRIES: u64 = 4;
/// Bytes of an available-ring entry (`le16`, §2.7.6).
const AVAIL_ENTRY: u64 = 2;
/// Bytes of a used-ring entry (`struct virtq_used_elem { le32 id; le32 len; }`, §2.7.8).
const USED_ENTRY: u64 = 8;
/// Available-ring flag: do not interrupt when buffers are used.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue this driver builds (the split-ring maximum).
pub const MAX_SIZE: u16 = 32768;

const NO_NEXT: u16 = u16::MAX;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (a response); otherwise it reads it (a request).
    pub device_writes: bool,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain (what [`VirtQueue::add`] returned).
    pub head: u16,
    /// Bytes the device wrote into the chain's device-writable buffers.
    pub len: u32,
}

/// Byte offsets of the three parts of a queue of `size` entries, and its total size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Available ring offset (the descriptor table starts at 0).
    pub avail: u64,
    /// Used ring offset.
    pub used: u64,
    /// Bytes of the whole queue.
    pub bytes: u64,
}

impl Layout {
    /// The layout of a queue of `size` entries.
    pub fn new(size: u16) -> Layout {
        let n = u64::from(size);
        let avail = DESC_BYTES * n;
        let used = (avail + 6 + AVAIL_ENTRY * n).next_multiple_of(8);
        Layout { avail, used, bytes: used + 6 + USED_ENTRY * n }
    }

    /// Frames to allocate (a power of two, as [`DmaMemory::alloc_contiguous`] wants).
    pub fn frames(&self) -> usize {
        (self.bytes.div_ceil(4096) as usize).next_power_of_two()
    }
}

/// A split virtqueue, driver side.
#[derive(Debug)]
pub struct VirtQueue {
    index: u16,
    size: u16,
    region: DmaRegion,
    layout: Layout,
    /// Free descriptors (a stack).
    free: Vec<u16>,
    /// Our copy of each descriptor's `next` ([`NO_NEXT`] ends a chain).
    next: Vec<u16>,
    /// Heads of chains the device owns.
    outstanding: Vec<bool>,
    /// Chains the device owns.
    in_flight: u16,
    /// Our copy of `avail.idx`.
    avail_idx: u16,
    /// Used entries consumed so far.
    last_used: u16,
}

impl VirtQueue {
    /// A queue with index `index` and `size` entries (a power of two up to
    /// [`MAX_SIZE`]) in fresh zeroed frames.
    pub fn new(mem: &mut impl DmaMemory, index: u16, size: u16) -> Result<VirtQueue, VirtioError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_SIZE {
            return Err(VirtioError::BadQueue { queue: index, what: "size is not a power of two up to 32768" });
        }
        let layout = Layout::new(size);
        let region = DmaRegion::alloc_contiguous(mem, layout.frames()).ok_or(VirtioError::NoMemory)?;
        if let Err(e) = region.write_u16(mem, layout.avail, AVAIL_F_NO_INTERRUPT) {
            region.free_contiguous(mem);
            return Err(e.into());
        }
        Ok(VirtQueue {
            index,
            size,
            region,
            layout,
            free: (0..size).rev().collect(),
            next: alloc::vec![NO_NEXT; usize::from(size)],
            outstanding: alloc::vec![false; usize::from(size)],
            in_flight: 0,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// The queue's index on the device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.region.base()
    }

    /// Physical address of the driver area (available ring).
    pub fn driver_area(&self) -> u64 {
        self.region.base() + self.layout.avail
    }

    /// Physical address of the device area (used ring).
    pub fn device_area(&self) -> u64 {
        self.region.base() + self.layout.used
    }

    /// The three ring addresses, for the transport.
    pub fn rings(&self) -> Rings {
        Rings { desc: self.desc_table(), driver: self.driver_area(), device: self.device_area() }
    }

    /// The memory the queue occupies.
    pub fn region(&self) -> DmaRegion {
        self.region
    }

    /// Frames the queue occupies.
    pub fn frames(&self) -> usize {
        self.layout.frames()
    }

    /// Descriptors not in a posted chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains the device has not given back.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Our copy of the available index (chains posted so far, modulo 2^16).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Posts `bufs` as one chain (device-readable buffers first, as §2.7.4
    /// wants) and makes it available. Returns the head descriptor. The device
    /// still has to be notified.
    pub fn add(&mut self, mem: &mut impl DmaMemory, bufs: &[Buffer]) -> Result<u16, VirtioError> {
        if bufs.is_empty() || bufs.iter().any(|b| b.len == 0) {
            return Err(VirtioError::BadBuffer("empty chain or zero-length buffer"));
        }
        if bufs.windows(2).any(|w| w[0].device_writes && !w[1].device_writes) {
            return Err(VirtioError::BadBuffer("device-readable buffer after a device-writable one"));
        }
        if bufs.len() > self.free.len() {
            return Err(VirtioError::QueueFull(self.index));
        }
        // Built from the last buffer back, so each descriptor's `next` is
        // known when it is written (no list of IDs on the heap).
        let mut next = None;
        for b in bufs.iter().rev() {
            let Some(id) = self.free.pop() else {
                // Counted above: unreachable, but give back what was taken.
                self.free_chain(next);
                return Err(VirtioError::QueueFull(self.index));
            };
            let mut desc = Desc::zeroed();
            desc.addr.set(b.addr);
            desc.meta.write(
                DESC_W1::LEN.val(u64::from(b.len))
                    + DESC_W1::F_WRITE.val(u64::from(b.device_writes))
                    + DESC_W1::F_NEXT.val(u64::from(next.is_some()))
                    + DESC_W1::NEXT.val(u64::from(next.unwrap_or(0))),
            );
            let first = usize::from(id) * Desc::WORDS;
            for (i, w) in desc.to_words().into_iter().enumerate() {
                if let Err(e) = self.region.write_u64(mem, first + i, w) {
                    self.free.push(id);
                    self.free_chain(next);
                    return Err(e.into());
                }
            }
            self.next[usize::from(id)] = next.unwrap_or(NO_NEXT);
            next = Some(id);
        }
        let Some(head) = next else { return Err(VirtioError::BadBuffer("empty chain or zero-length buffer")) };
        self.outstanding[usize::from(head)] = true;
        self.in_flight += 1;
        let slot = u64::from(self.avail_idx % self.size);
        self.region.write_u16(mem, self.layout.avail + RING_ENTRIES + AVAIL_ENTRY * slot, head)?;
        // §2.7.13: the ring entry and descriptors are visible before the index moves.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.region.write_u16(mem, self.layout.avail + RING_IDX, self.avail_idx)?;
        // And the index before the caller's notification.
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// Whether the device has returned a chain we have not taken yet.
    pub fn has_used(&self, mem: &impl DmaMemory) -> bool {
        self.region.read_u16(mem, self.layout.used + RING_IDX).is_ok_and(|idx| idx != self.last_used)
    }

    /// Takes the next chain the device has finished with, freeing its
    /// descriptors. A used entry naming a descriptor that is not the head of
    /// an outstanding chain, or more used entries than chains posted, is an
    /// error (the entry is skipped).
    pub fn pop_used(&mut self, mem: &impl DmaMemory) -> Result<Option<Used>, VirtioError> {
        let device_idx = self.region.read_u16(mem, self.layout.used + RING_IDX)?;
        if device_idx == self.last_used {
            return Ok(None);
        }
        if device_idx.wrapping_sub(self.last_used) > self.in_flight {
            return Err(VirtioError::BadUsed { queue: self.index, id: u32::from(device_idx) });
        }
        // §2.7.13: read the entry only after seeing the index.
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        let at = self.layout.used + RING_ENTRIES + USED_ENTRY * slot;
        let (id, len) = (self.region.read_u32(mem, at)?, self.region.read_u32(mem, at + 4)?);
        self.last_used = self.last_used.wrapping_add(1);
        let head = match u16::try_from(id) {
            Ok(h) if h < self.size && self.outstanding[usize::from(h)] => h,
            _ => return Err(VirtioError::BadUsed { queue: self.index, id }),
        };
        self.outstanding[usize::from(head)] = false;
        self.in_flight -= 1;
        self.free_chain(Some(head));
        Ok(Some(Used { head, len }))
    }

    /// Puts the descriptors of the chain starting at `head` back on the free
    /// stack. The stack was built with room for every descriptor and never
    /// holds more, so the pushes do not allocate.
    fn free_chain(&mut self, head: Option<u16>) {
        let Some(mut d) = head else { return };
        // A chain is at most `size` long; the bound keeps a corrupted copy from looping.
        for _ in 0..self.size {
            self.free.push(d);
            let n = core::mem::replace(&mut self.next[usize::from(d)], NO_NEXT);
            if n == NO_NEXT {
                break;
            }
            d = n;
        }
    }

    /// Gives the queue's frames back (the device must no longer use the queue).
    pub fn release(self, mem: &mut impl DmaMemory) {
        self.region.free_contiguous(mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{phys, DeviceQueue, TestMem};

    fn rw(addr: u64, len: u32, device_writes: bool) -> Buffer {
        Buffer { addr, len, device_writes }
    }

    #[test]
    fn layout_follows_the_alignment_rules() {
        let l = Layout::new(256);
        assert_eq!((l.avail, l.used), (4096, 4616));
        assert_eq!(l.bytes, 4616 + 6 + 8 * 256);
        assert_eq!(l.frames(), 2);
        let small = Layout::new(16);
        assert_eq!((small.avail, small.used, small.frames()), (256, 296, 1));
        assert!(small.used.is_multiple_of(4) && small.avail.is_multiple_of(2));
    }

    #[test]
    fn a_chain_is_laid_out_as_the_spec_says() {
        let mut mem = TestMem::new();
        let mut q = VirtQueue::new(&mut mem, 0, 8).unwrap();
        assert_eq!(phys::read_u16(&mem, q.driver_area()), AVAIL_F_NO_INTERRUPT);
        let head = q.add(&mut mem, &[rw(0x1000, 20, false), rw(0x2000, 4, true)]).unwrap();
        // Descriptor `head`: addr, len, flags NEXT, next = the second one.
        let d0 = q.desc_table() + 16 * u64::from(head);
        assert_eq!(phys::read_u64(&mem, d0), 0x1000);
        assert_eq!(phys::read_u32(&mem, d0 + 8), 20);
        assert_eq!(phys::read_u16(&mem, d0 + 12), DESC_F_NEXT);
        let second = phys::read_u16(&mem, d0 + 14);
        let d1 = q.desc_table() + 16 * u64::from(second);
        assert_eq!(phys::read_u64(&mem, d1), 0x2000);
        assert_eq!(phys::read_u32(&mem, d1 + 8), 4);
        assert_eq!(phys::read_u16(&mem, d1 + 12), DESC_F_WRITE);
        // Avail ring: idx 1, ring[0] = head.
        assert_eq!(phys::read_u16(&mem, q.driver_area() + 2), 1);
        assert_eq!(phys::read_u16(&mem, q.driver_area() + 4), head);
        assert_eq!(q.free_descriptors(), 6);
        // The simulated device sees the same chain.
        let mut dev = DeviceQueue::new(q.rings(), 8);
        let chain = dev.pop(&mem).unwrap();
        assert_eq!(chain.head, head);
        assert_eq!(chain.bufs, [rw(0x1000, 20, false), rw(0x2000, 4, true)]);
        assert!(dev.pop(&mem).is_none());
        assert!(!q.has_used(&mem));
        dev.push(&mut mem, head, 4);
        assert!(q.has_used(&mem));
        assert_eq!(q.pop_used(&mem).unwrap(), Some(Used { head, len: 4 }));
        assert_eq!(q.pop_used(&mem).unwrap(), None);
        assert_eq!(q.free_descriptors(), 8);
    }

    #[test]
    fn indices_wrap_past_the_queue_size_and_past_65535() {
        let mut mem = TestMem::new();
        let mut q = VirtQueue::new(&mut mem, 0, 4).unwrap();
        let mut dev = DeviceQueue::new(q.rings(), 4);
        for i in 0..70_000u32 {
            let head =
                q.add(&mut mem, &[rw(0x1000 + u64::from(i % 7), 1 + i % 5, false), rw(0x9000, 4, true)]).unwrap();
            let chain = dev.pop(&mem).expect("the device sees every chain");
            assert_eq!(chain.head, head);
            assert_eq!(chain.bufs[0].len, 1 + i % 5);
            dev.push(&mut mem, head, i);
            assert_eq!(q.pop_used(&mem).unwrap(), Some(Used { head, len: i }), "request {i}");
        }
        assert_eq!(q.avail_idx(), (70_000u32 % 65_536) as u16);
        assert_eq!(phys::read_u16(&mem, q.device_area() + 2), (70_000u32 % 65_536) as u16);
        assert_eq!(q.free_descriptors(), 4);
    }

    #[test]
    fn out_of_order_completion_frees_the_right_descriptors() {
        let mut mem = TestMem::new();
        let mut q = VirtQueue::new(&mut mem, 1, 8).unwrap();
        let mut dev = DeviceQueue::new(q.rings(), 8);
        let a = q.add(&mut mem, &[rw(0xA000, 8, false), rw(0xA100, 8, true)]).unwrap();
        let b = q.add(&mut mem, &[rw(0xB000, 8, true)]).unwrap();
        let c = q.add(&mut mem, &[rw(0xC000, 8, false), rw(0xC100, 8, false), rw(0xC200, 8, true)]).unwrap();
        assert_eq!(q.free_descriptors(), 2);
        assert_eq!(
            q.add(&mut mem, &[rw(0, 1, false), rw(0, 1, false), rw(0, 1, true)]),
            Err(VirtioError::QueueFull(1))
        );
        let chains: Vec<_> = core::iter::from_fn(|| dev.pop(&mem)).collect();
        assert_eq!(chains.iter().map(|c| c.head).collect::<Vec<_>>(), [a, b, c]);
        dev.push(&mut mem, c, 8);
        dev.push(&mut mem, a, 8);
        assert_eq!(q.pop_used(&mem).unwrap().map(|u| u.head), Some(c));
        assert_eq!(q.free_descriptors(), 5);
        assert_eq!(q.pop_used(&mem).unwrap().map(|u| u.head), Some(a));
        assert_eq!((q.free_descriptors(), q.in_flight()), (7, 1));
        dev.push(&mut mem, b, 8);
        assert_eq!(q.pop_used(&mem).unwrap().map(|u| u.head), Some(b));
        assert_eq!(q.free_descriptors(), 8);
    }

    #[test]
    fn a_lying_device_is_caught() {
        let mut mem = TestMem::new();
        let mut q = VirtQueue::new(&mut mem, 0, 4).unwrap();
        let mut dev = DeviceQueue::new(q.rings(), 4);
        let head = q.add(&mut mem, &[rw(0x1000, 8, true)]).unwrap();
        dev.pop(&mem).unwrap();
        // Used entry for a descriptor that is not an outstanding head.
        dev.push(&mut mem, (head + 1) % 4, 8);
        assert!(matches!(q.pop_used(&mem), Err(VirtioError::BadUsed { queue: 0, .. })));
        // More used entries than chains posted.
        dev.push(&mut mem, head, 8);
        dev.push(&mut mem, head, 8);
        assert!(matches!(q.pop_used(&mem), Err(VirtioError::BadUsed { .. })));
    }

    #[test]
    fn bad_chains_and_sizes_are_refused() {
        let mut mem = TestMem::new();
        assert!(matches!(VirtQueue::new(&mut mem, 0, 6), Err(VirtioError::BadQueue { .. })));
        assert!(matches!(VirtQueue::new(&mut mem, 0, 0), Err(VirtioError::BadQueue { .. })));
        let mut q = VirtQueue::new(&mut mem, 0, 4).unwrap();
        assert!(matches!(q.add(&mut mem, &[]), Err(VirtioError::BadBuffer(_))));
        assert!(matches!(q.add(&mut mem, &[rw(0, 0, false)]), Err(VirtioError::BadBuffer(_))));
        assert!(matches!(q.add(&mut mem, &[rw(0, 4, true), rw(0, 4, false)]), Err(VirtioError::BadBuffer(_))));
        assert_eq!(q.free_descriptors(), 4, "refused chains take nothing");
        let frames = mem.live();
        q.release(&mut mem);
        assert_eq!(mem.live(), frames - 1);
    }
}
