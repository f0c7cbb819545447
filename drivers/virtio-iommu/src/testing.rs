//! Host-test doubles: DMA memory shared between driver and simulated device
//! ([`TestMem`]), the device side of a split virtqueue ([`DeviceQueue`]) and
//! a simulated virtio-iommu ([`Fake`]) that follows what QEMU 10's
//! `hw/virtio/virtio-iommu.c` does with each request, including its domain
//! lifetime (a domain exists only while an endpoint is attached).

use crate::device::Config;
use crate::queue::{Buffer, DESC_F_NEXT, DESC_F_WRITE};
use crate::request::{fault_flags, feature, kind, property, reason, status, ATTACH_F_BYPASS};
use crate::transport::{self, Rings, Transport};
use iommu::DmaMemory;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

const BASE: u64 = 0x4000_0000;

/// Byte access by physical address, as the simulated device has it: one
/// [`iommu::dma::DmaRegion`] over the whole of (fake) physical memory.
pub mod phys {
    use io_pgtable::TableMemory;
    use iommu::dma::DmaRegion;

    fn all() -> DmaRegion {
        DmaRegion::new(0, 1 << 36).unwrap()
    }

    /// Reads `out.len()` bytes at `pa`.
    pub fn read_bytes(mem: &impl TableMemory, pa: u64, out: &mut [u8]) {
        all().read_bytes(mem, pa, out).unwrap()
    }

    /// Writes `data` at `pa`.
    pub fn write_bytes(mem: &mut impl TableMemory, pa: u64, data: &[u8]) {
        all().write_bytes(mem, pa, data).unwrap()
    }

    /// The 16-bit value at `pa`.
    pub fn read_u16(mem: &impl TableMemory, pa: u64) -> u16 {
        all().read_u16(mem, pa).unwrap()
    }

    /// Writes the 16-bit value at `pa`.
    pub fn write_u16(mem: &mut impl TableMemory, pa: u64, value: u16) {
        all().write_u16(mem, pa, value).unwrap()
    }

    /// The 32-bit value at `pa`.
    pub fn read_u32(mem: &impl TableMemory, pa: u64) -> u32 {
        all().read_u32(mem, pa).unwrap()
    }

    /// Writes the 32-bit value at `pa`.
    pub fn write_u32(mem: &mut impl TableMemory, pa: u64, value: u32) {
        all().write_u32(mem, pa, value).unwrap()
    }

    /// The 64-bit value at `pa` (8-aligned).
    pub fn read_u64(mem: &impl TableMemory, pa: u64) -> u64 {
        all().read_u64(mem, (pa / 8) as usize).unwrap()
    }
}

#[derive(Default)]
struct Frames {
    frames: BTreeMap<u64, Box<[u64; 512]>>,
    next: u64,
    allocations: usize,
    fail_after: Option<usize>,
}

/// Frames of fake physical memory, shared by every clone (driver and device
/// see the same bytes).
#[derive(Clone, Default)]
pub struct TestMem(Arc<Mutex<Frames>>);

impl TestMem {
    /// Empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Frames> {
        self.0.lock().unwrap()
    }

    /// Frames allocated now.
    pub fn live(&self) -> usize {
        self.lock().frames.len()
    }

    /// Allocations after the first `n` fail.
    pub fn fail_after(&self, n: usize) {
        let mut f = self.lock();
        f.fail_after = Some(f.allocations + n);
    }
}

impl io_pgtable::TableMemory for TestMem {
    fn alloc_table(&mut self) -> Option<u64> {
        self.alloc_contiguous(1)
    }

    fn free_table(&mut self, pa: u64) {
        self.free_contiguous(pa, 1);
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        self.lock().frames.get(&table).unwrap_or_else(|| panic!("read of unallocated frame {table:#x}"))[index]
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        self.lock().frames.get_mut(&table).unwrap_or_else(|| panic!("write to unallocated frame {table:#x}"))[index] =
            value;
    }
}

impl DmaMemory for TestMem {
    fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
        // The simulated memory's own heap is not the driver's: never failed by fail-nth.
        fallible::testing::unarmed(|| self.take_frames(frames))
    }

    fn free_contiguous(&mut self, base: u64, frames: usize) {
        let mut f = self.lock();
        for i in 0..frames as u64 {
            assert!(f.frames.remove(&(base + i * 4096)).is_some(), "double free of {:#x}", base + i * 4096);
        }
    }
}

impl TestMem {
    fn take_frames(&self, frames: usize) -> Option<u64> {
        assert!(frames.is_power_of_two());
        let mut f = self.lock();
        f.allocations += 1;
        if f.fail_after.is_some_and(|n| f.allocations > n) {
            return None;
        }
        let size = frames as u64 * 4096;
        let base = (BASE + f.next).next_multiple_of(size);
        f.next = base + size - BASE;
        for i in 0..frames as u64 {
            f.frames.insert(base + i * 4096, Box::new([0; 512]));
        }
        Some(base)
    }
}

/// A descriptor chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor.
    pub head: u16,
    /// The buffers, in chain order.
    pub bufs: Vec<Buffer>,
}

/// The device side of a split virtqueue (§2.7): takes available chains,
/// returns used ones.
#[derive(Debug, Clone)]
pub struct DeviceQueue {
    rings: Rings,
    size: u16,
    last_avail: u16,
    used_idx: u16,
}

impl DeviceQueue {
    /// A queue the driver set up at `rings` with `size` entries.
    pub fn new(rings: Rings, size: u16) -> Self {
        DeviceQueue { rings, size, last_avail: 0, used_idx: 0 }
    }

    /// Chains made available and not taken yet.
    pub fn pending(&self, mem: &TestMem) -> u16 {
        phys::read_u16(mem, self.rings.driver + 2).wrapping_sub(self.last_avail)
    }

    /// The next available chain.
    pub fn pop(&mut self, mem: &TestMem) -> Option<Chain> {
        if self.pending(mem) == 0 {
            return None;
        }
        let slot = u64::from(self.last_avail % self.size);
        let head = phys::read_u16(mem, self.rings.driver + 4 + 2 * slot);
        self.last_avail = self.last_avail.wrapping_add(1);
        let mut bufs = Vec::new();
        let mut d = head;
        for _ in 0..self.size {
            let at = self.rings.desc + 16 * u64::from(d);
            let flags = phys::read_u16(mem, at + 12);
            bufs.push(Buffer {
                addr: phys::read_u64(mem, at),
                len: phys::read_u32(mem, at + 8),
                device_writes: flags & DESC_F_WRITE != 0,
            });
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            d = phys::read_u16(mem, at + 14);
        }
        Some(Chain { head, bufs })
    }

    /// Returns chain `head` with `len` bytes written.
    pub fn push(&mut self, mem: &mut TestMem, head: u16, len: u32) {
        let slot = u64::from(self.used_idx % self.size);
        phys::write_u32(mem, self.rings.device + 4 + 8 * slot, u32::from(head));
        phys::write_u32(mem, self.rings.device + 8 + 8 * slot, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        phys::write_u16(mem, self.rings.device + 2, self.used_idx);
    }
}

/// What QEMU 10's virtio-iommu-pci offers (QEMU.md §3.4).
pub const DEFAULT_FEATURES: u64 = 1 << feature::VERSION_1
    | 1 << feature::RING_EVENT_IDX
    | 1 << feature::RING_INDIRECT_DESC
    | 1 << feature::RING_RESET
    | 1 << feature::INPUT_RANGE
    | 1 << feature::DOMAIN_RANGE
    | 1 << feature::MAP_UNMAP
    | 1 << feature::MMIO
    | 1 << feature::PROBE
    | 1 << feature::BYPASS_CONFIG;

/// A domain as the simulated device holds it.
#[derive(Debug, Clone, Default)]
pub struct FakeDomain {
    /// Attached with ATTACH_F_BYPASS.
    pub bypass: bool,
    /// Mappings: start → (end inclusive, phys, flags).
    pub mappings: BTreeMap<u64, (u64, u64, u32)>,
    /// Attached endpoints.
    pub endpoints: BTreeSet<u32>,
}

/// A request the simulated device received: its type and readable bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Request type.
    pub kind: u8,
    /// Device-readable bytes.
    pub bytes: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The simulated device's state.
pub struct FakeState {
    mem: TestMem,
    /// Features offered.
    pub offered: u64,
    /// Features the driver wrote.
    pub accepted: u64,
    /// `device_status`.
    pub status: u8,
    /// FEATURES_OK never sticks.
    pub refuse_features: bool,
    /// Reset never completes (status keeps its value).
    pub stuck_status: bool,
    /// Requests are taken but never answered.
    pub silent: bool,
    /// The next request gets this status whatever it is.
    pub fail_next: Option<u8>,
    /// After this many more requests are answered normally, the next one gets the status.
    fail_countdown: Option<(usize, u8)>,
    /// Queue maximum size.
    pub queue_max: u16,
    queues: [Option<(u16, DeviceQueue)>; 2],
    /// The configuration the device presents.
    pub config: Config,
    generation: u8,
    /// The generation changes during this many more configuration reads.
    pub generation_changes: u32,
    /// Configuration reads so far.
    pub config_reads: u32,
    /// Endpoints behind the device (PCI functions on its bus).
    pub endpoints: BTreeSet<u32>,
    /// Reserved regions every endpoint has: (start, end, RESV_MEM subtype).
    pub resv: Vec<(u64, u64, u8)>,
    /// Endpoint → domain.
    pub attached: BTreeMap<u32, u32>,
    /// Domains that exist in the device.
    pub domains: BTreeMap<u32, FakeDomain>,
    /// Every request processed, in order.
    pub log: Vec<Seen>,
    /// Faults lost for want of an event buffer.
    pub events_dropped: u32,
}

/// A simulated virtio-iommu shared between a test and the driver's transport.
#[derive(Clone)]
pub struct Fake(Arc<Mutex<FakeState>>);

struct FakeTransport {
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    /// A q35-like device: 39-bit input range, 4 KiB granule, the x86 MSI
    /// window reserved, endpoints 0x10, 0x18, 0x20 and 0x28, boot bypass on.
    pub fn q35() -> Fake {
        Fake(Arc::new(Mutex::new(FakeState {
            mem: TestMem::new(),
            offered: DEFAULT_FEATURES,
            accepted: 0,
            status: 0,
            refuse_features: false,
            stuck_status: false,
            silent: false,
            fail_next: None,
            fail_countdown: None,
            queue_max: 256,
            queues: [None, None],
            config: Config {
                page_size_mask: 0xFFFF_FFFF_FFFF_F000,
                input_range: (0, (1 << 39) - 1),
                domain_range: (0, u32::MAX),
                probe_size: 0x200,
                bypass: 1,
            },
            generation: 0,
            generation_changes: 0,
            config_reads: 0,
            endpoints: [0x10, 0x18, 0x20, 0x28].into_iter().collect(),
            resv: vec![(0xFEE0_0000, 0xFEEF_FFFF, property::RESV_MEM_T_MSI)],
            attached: BTreeMap::new(),
            domains: BTreeMap::new(),
            log: Vec::new(),
            events_dropped: 0,
        })))
    }

    /// The state, locked (do not hold it across driver calls).
    pub fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// A transport for the driver; the device works on `mem`.
    pub fn transport(&self, mem: &TestMem) -> Box<dyn Transport> {
        self.lock().mem = mem.clone();
        Box::new(FakeTransport { state: self.0.clone() })
    }
}

impl FakeState {
    /// Sizes the driver gave the two queues.
    pub fn queue_sizes(&self) -> [u16; 2] {
        [0, 1].map(|q| self.queues[q].as_ref().map_or(0, |(s, _)| *s))
    }

    /// Fault buffers posted on the event queue and not used yet.
    pub fn event_buffers_available(&self) -> u16 {
        self.queues[1].as_ref().map_or(0, |(_, q)| q.pending(&self.mem))
    }

    /// Requests processed so far.
    pub fn requests_seen(&self) -> usize {
        self.log.len()
    }

    /// Processed requests of type `kind`.
    pub fn count(&self, kind: u8) -> usize {
        self.log.iter().filter(|s| s.kind == kind).count()
    }

    /// Lets `n` requests through, then answers the next one with `code`.
    pub fn fail_after_requests(&mut self, n: usize, code: u8) {
        self.fail_countdown = Some((n, code));
    }

    fn reset(&mut self) {
        self.status = 0;
        self.accepted = 0;
        self.queues = [None, None];
        self.attached.clear();
        self.domains.clear();
    }

    /// `virtio_iommu_handle_command`: every available request.
    fn process_requests(&mut self) {
        let Some((_, mut q)) = self.queues[0].clone() else { return };
        while let Some(chain) = q.pop(&self.mem) {
            let mut readable = Vec::new();
            let mut writable = Vec::new();
            for b in &chain.bufs {
                if b.device_writes {
                    writable.push(*b);
                } else {
                    let mut bytes = vec![0; b.len as usize];
                    phys::read_bytes(&self.mem, b.addr, &mut bytes);
                    readable.extend(bytes);
                }
            }
            let room: usize = writable.iter().map(|b| b.len as usize).sum();
            assert!(room >= 4 && readable.len() >= 4, "virtio-iommu bad head/tail size");
            let ty = readable[0];
            self.log.push(Seen { kind: ty, bytes: readable.clone() });
            let forced = match self.fail_countdown {
                Some((0, c)) => {
                    self.fail_countdown = None;
                    Some(c)
                }
                Some((n, c)) => {
                    self.fail_countdown = Some((n - 1, c));
                    None
                }
                None => None,
            };
            let forced = self.fail_next.take().or(forced);
            let mut out = vec![0u8; if ty == kind::PROBE { self.config.probe_size as usize + 4 } else { 4 }];
            let code = match (forced, ty) {
                (Some(c), _) => c,
                (None, kind::ATTACH) if readable.len() >= 20 => {
                    self.attach(le32(&readable, 4), le32(&readable, 8), le32(&readable, 12))
                }
                (None, kind::DETACH) if readable.len() >= 20 => self.detach(le32(&readable, 4), le32(&readable, 8)),
                (None, kind::MAP) if readable.len() >= 36 => self.map(
                    le32(&readable, 4),
                    le64(&readable, 8),
                    le64(&readable, 16),
                    le64(&readable, 24),
                    le32(&readable, 32),
                ),
                (None, kind::UNMAP) if readable.len() >= 28 => {
                    self.unmap(le32(&readable, 4), le64(&readable, 8), le64(&readable, 16))
                }
                (None, kind::PROBE) if readable.len() >= 72 => {
                    let n = out.len();
                    self.probe(le32(&readable, 4), &mut out[..n - 4])
                }
                (None, kind::ATTACH | kind::DETACH | kind::MAP | kind::UNMAP | kind::PROBE) => status::INVAL,
                (None, _) => status::UNSUPP,
            };
            let n = out.len();
            out[n - 4] = code;
            if room < out.len() {
                // QEMU 10: a bare tail saying DEVERR.
                out = vec![status::DEVERR, 0, 0, 0];
            }
            let mut done = 0;
            for b in &writable {
                let k = (b.len as usize).min(out.len() - done);
                phys::write_bytes(&mut self.mem, b.addr, &out[done..done + k]);
                done += k;
            }
            if !self.silent {
                q.push(&mut self.mem, chain.head, done as u32);
            }
        }
        if let Some((_, dq)) = self.queues[0].as_mut() {
            *dq = q;
        }
    }

    fn attach(&mut self, domain: u32, ep: u32, flags: u32) -> u8 {
        if flags & !ATTACH_F_BYPASS != 0 {
            return status::INVAL;
        }
        if !self.endpoints.contains(&ep) {
            return status::NOENT;
        }
        // Moving an endpoint detaches it first; a domain left without
        // endpoints is destroyed with its mappings.
        if let Some(prev) = self.attached.remove(&ep) {
            self.drop_endpoint(prev, ep);
        }
        let bypass = flags & ATTACH_F_BYPASS != 0;
        let d = self.domains.entry(domain).or_insert_with(|| FakeDomain { bypass, ..FakeDomain::default() });
        if d.bypass != bypass {
            return status::INVAL;
        }
        d.endpoints.insert(ep);
        self.attached.insert(ep, domain);
        status::OK
    }

    fn drop_endpoint(&mut self, domain: u32, ep: u32) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.endpoints.remove(&ep);
            if d.endpoints.is_empty() {
                self.domains.remove(&domain);
            }
        }
    }

    fn detach(&mut self, domain: u32, ep: u32) -> u8 {
        match self.attached.get(&ep) {
            None => status::NOENT,
            Some(&d) if d != domain => status::INVAL,
            Some(_) => {
                self.attached.remove(&ep);
                self.drop_endpoint(domain, ep);
                status::OK
            }
        }
    }

    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> u8 {
        if flags & !7 != 0 {
            return status::INVAL;
        }
        let Some(d) = self.domains.get_mut(&domain) else { return status::NOENT };
        if d.bypass {
            return status::INVAL;
        }
        if d.mappings.iter().any(|(&s, &(e, _, _))| s <= end && start <= e) {
            return status::INVAL;
        }
        d.mappings.insert(start, (end, phys, flags));
        status::OK
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> u8 {
        let Some(d) = self.domains.get_mut(&domain) else { return status::NOENT };
        if d.bypass {
            return status::INVAL;
        }
        loop {
            let hit = d.mappings.iter().find(|(&s, &(e, _, _))| s <= end && start <= e).map(|(&s, &(e, _, _))| (s, e));
            match hit {
                None => return status::OK,
                Some((s, e)) if start <= s && e <= end => {
                    d.mappings.remove(&s);
                }
                Some(_) => return status::RANGE,
            }
        }
    }

    fn probe(&mut self, ep: u32, buf: &mut [u8]) -> u8 {
        if !self.endpoints.contains(&ep) {
            return status::NOENT;
        }
        if self.resv.len() * 24 > buf.len() {
            return status::INVAL;
        }
        for (i, &(start, end, subtype)) in self.resv.iter().enumerate() {
            let p = &mut buf[i * 24..i * 24 + 24];
            p[..4].copy_from_slice(&[1, 0, 20, 0]);
            p[4] = subtype;
            p[8..16].copy_from_slice(&start.to_le_bytes());
            p[16..24].copy_from_slice(&end.to_le_bytes());
        }
        status::OK
    }

    /// A DMA by endpoint `ep` to `addr` (`virtio_iommu_translate` and the
    /// bypass address-space switch): the physical address reached, or `None`
    /// with a fault written to the event queue.
    pub fn translate(&mut self, ep: u32, addr: u64, write: bool) -> Option<u64> {
        let domain = self.attached.get(&ep).and_then(|d| self.domains.get(d));
        let bypassed = match domain {
            None => self.config.bypass != 0,
            Some(d) => d.bypass,
        };
        if bypassed {
            return Some(addr);
        }
        let Some(d) = domain else {
            self.report(reason::UNKNOWN, fault_flags::ADDRESS, ep, addr);
            return None;
        };
        if let Some(&(_, _, subtype)) = self.resv.iter().find(|(s, e, _)| *s <= addr && addr <= *e) {
            if subtype == property::RESV_MEM_T_MSI {
                return Some(addr);
            }
            self.report(reason::MAPPING, fault_flags::ADDRESS, ep, addr);
            return None;
        }
        let hit = d.mappings.range(..=addr).next_back().filter(|(_, &(e, _, _))| addr <= e).map(|(&s, &m)| (s, m));
        let Some((start, (_, phys, flags))) = hit else {
            self.report(reason::MAPPING, fault_flags::ADDRESS, ep, addr);
            return None;
        };
        let need = if write { 2 } else { 1 };
        if flags & need == 0 {
            let f = if write { fault_flags::WRITE } else { fault_flags::READ };
            self.report(reason::MAPPING, f | fault_flags::ADDRESS, ep, addr);
            return None;
        }
        Some(phys + (addr - start))
    }

    fn report(&mut self, why: u8, flags: u32, ep: u32, addr: u64) {
        let Some((_, mut q)) = self.queues[1].clone() else { return };
        let Some(chain) = q.pop(&self.mem) else {
            self.events_dropped += 1;
            return;
        };
        let b = chain.bufs[0];
        assert!(b.device_writes && b.len >= 24, "error buffer of wrong size");
        let mut rec = vec![why, 0, 0, 0];
        rec.extend(flags.to_le_bytes());
        rec.extend(ep.to_le_bytes());
        rec.extend([0; 4]);
        rec.extend(addr.to_le_bytes());
        phys::write_bytes(&mut self.mem, b.addr, &rec);
        q.push(&mut self.mem, chain.head, 24);
        if let Some((_, dq)) = self.queues[1].as_mut() {
            *dq = q;
        }
    }
}

impl FakeTransport {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl Transport for FakeTransport {
    fn status(&self) -> u8 {
        self.lock().status
    }

    fn set_status(&mut self, value: u8) {
        let mut s = self.lock();
        if s.stuck_status {
            return;
        }
        if value == 0 {
            s.reset();
            return;
        }
        let mut v = value;
        if v & transport::status::FEATURES_OK != 0 && (s.refuse_features || s.accepted & !s.offered != 0) {
            v &= !transport::status::FEATURES_OK;
        }
        s.status = v;
    }

    fn device_features(&mut self) -> u64 {
        self.lock().offered
    }

    fn set_driver_features(&mut self, features: u64) {
        self.lock().accepted = features;
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn queue_max(&mut self, queue: u16) -> u16 {
        if queue < 2 {
            self.lock().queue_max
        } else {
            0
        }
    }

    fn enable_queue(&mut self, queue: u16, size: u16, rings: Rings) {
        let mut s = self.lock();
        assert!(size <= s.queue_max && queue < 2);
        s.queues[usize::from(queue)] = Some((size, DeviceQueue::new(rings, size)));
    }

    fn notify(&mut self, queue: u16) {
        let mut s = self.lock();
        assert!(s.status & transport::status::DRIVER_OK != 0, "notified before DRIVER_OK");
        if queue == 0 && !s.silent {
            // The device's own heap is not the driver's: never failed by fail-nth.
            fallible::testing::unarmed(|| s.process_requests());
        }
    }

    fn config_generation(&self) -> u8 {
        self.lock().generation
    }

    fn read_config(&self) -> Config {
        let mut s = self.lock();
        s.config_reads += 1;
        if s.generation_changes > 0 {
            s.generation_changes -= 1;
            s.generation = s.generation.wrapping_add(1);
        }
        s.config
    }

    fn set_bypass(&mut self, bypass: u8) {
        let mut s = self.lock();
        assert!(s.accepted >> feature::BYPASS_CONFIG & 1 != 0, "cannot set config.bypass");
        s.config.bypass = bypass;
    }

    fn isr(&mut self) -> u8 {
        0
    }
}
