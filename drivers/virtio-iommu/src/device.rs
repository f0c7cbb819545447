//! One virtio-iommu device: initialisation (virtio 1.2 §3.1), feature
//! negotiation (§5.13.3), its configuration (§5.13.4), the request queue with
//! synchronous requests (§5.13.6) and the event queue with fault records
//! (§5.13.7).
//!
//! Requests are issued one at a time: head and body in a DMA buffer the
//! device reads, tail (and PROBE properties) in one it writes, one descriptor
//! chain, a notification, then a bounded poll of the used ring. A request
//! that never completes leaves the device unusable ([`VirtioError::Broken`]
//! afterwards): the device may still write the buffer, so it is not reused.
//!
//! The event queue gets [`EVENT_BUFFERS`] device-writable buffers at start;
//! [`VirtioIommuDevice::take_faults`] decodes the used ones and posts them again.

pub use crate::error::VirtioError;
use crate::queue::{Buffer, VirtQueue};
use crate::request::{self, feature, status, Fault, Request, FAULT_LEN};
pub use crate::transport::Config;
use crate::transport::{self, Mapped, MmioTransport, Transport};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use iommu::dma::DmaRegion;
use iommu::{DmaMemory, Region};

/// Polls of the used ring before a request is declared lost.
pub const REQUEST_POLLS: u32 = 10_000_000;
/// Polls of `device_status` after a reset.
const RESET_POLLS: u32 = 1_000_000;
/// Reads of the configuration before a still-changing generation is an error.
const CONFIG_TRIES: u32 = 64;
/// Index of the request queue.
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 1;
/// Entries of the request queue (requests are synchronous: two suffice).
const REQUEST_QUEUE_SIZE: u16 = 16;
/// Fault buffers kept posted on the event queue (fewer if the queue is smaller).
pub const EVENT_BUFFERS: u16 = 32;
/// Bytes per fault buffer (a record is [`FAULT_LEN`]).
const EVENT_SLOT: u64 = 64;
/// Where the device-writable part starts in the request buffer (after the
/// longest request body, PROBE's 72 bytes).
const RESPONSE_OFFSET: u64 = 128;
/// Requests the queue history keeps ([`VirtioIommuDevice::describe_queue`]).
pub const HISTORY: usize = 32;

/// A request decoded for the trace ([`request::decode`]).
struct Req<'a>(&'a [u8]);

impl core::fmt::Display for Req<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        request::decode(self.0, f)
    }
}
/// Largest `probe_size` this driver provides a buffer for.
const MAX_PROBE_SIZE: u32 = 0x1_0000;

/// Frames allocated during initialisation, given back if it fails.
struct Allocations(Vec<DmaRegion>);

impl Allocations {
    fn take(&mut self, mem: &mut impl DmaMemory, frames: usize) -> Result<DmaRegion, VirtioError> {
        let region = DmaRegion::alloc_contiguous(mem, frames).ok_or(VirtioError::NoMemory)?;
        self.0.push(region);
        Ok(region)
    }

    fn release(self, mem: &mut impl DmaMemory) {
        for region in self.0 {
            region.free_contiguous(mem);
        }
    }
}

/// The largest power of two not above `n` (n > 0).
fn floor_pow2(n: u16) -> u16 {
    1 << (15 - n.leading_zeros())
}

/// A virtio-iommu that went through initialisation: features negotiated,
/// queues live, fault buffers posted.
pub struct VirtioIommuDevice {
    /// The unit's register-trace handle (name `virtioN`).
    tracer: iommu::trace::Tracer,
    /// The last requests sent (whether tracing or not).
    history: iommu::trace::History<5, HISTORY>,
    transport: Box<dyn Transport>,
    /// Feature bits the device offered.
    pub offered: u64,
    /// Feature bits negotiated.
    pub features: u64,
    /// The configuration, read once at start (bypass as written by the driver).
    pub config: Config,
    /// The request queue (queue 0).
    pub requests: VirtQueue,
    /// The event queue (queue 1).
    pub events: VirtQueue,
    request_buf: DmaRegion,
    event_buf: DmaRegion,
    /// Which buffer each outstanding event-queue head carries.
    event_slots: Vec<Option<u64>>,
    /// Used-ring polls before a request counts as lost.
    pub poll_limit: u32,
    broken: bool,
    /// Requests sent so far.
    pub requests_sent: u64,
}

impl VirtioIommuDevice {
    /// Brings up the device whose structures the kernel mapped at `mapped`:
    /// reset, feature negotiation, configuration, both queues, fault buffers,
    /// DRIVER_OK. Queues and buffers come from `mem`. This value becomes
    /// the device's only user; bus mastering is already enabled by the caller.
    pub fn new(mapped: Mapped, mem: &mut impl DmaMemory) -> Result<VirtioIommuDevice, VirtioError> {
        let transport = MmioTransport::new(mapped)?;
        Self::with_transport(Box::new(transport), mem)
    }

    /// As [`VirtioIommuDevice::new`], over any transport (host tests use a simulated device).
    pub fn with_transport(
        mut transport: Box<dyn Transport>,
        mem: &mut impl DmaMemory,
    ) -> Result<VirtioIommuDevice, VirtioError> {
        let mut allocs = Allocations(Vec::new());
        let tracer = iommu::trace::Tracer::register(iommu::UnitKind::VirtioIommu);
        transport.set_tracer(tracer);
        match Self::bring_up(&mut *transport, mem, &mut allocs) {
            Ok(parts) => Ok(Self::assemble(transport, parts, tracer)),
            Err(e) => {
                // §3.1.1: a driver that gives up sets FAILED.
                let s = transport.status();
                transport.set_status(s | transport::status::FAILED);
                allocs.release(mem);
                Err(e)
            }
        }
    }

    fn bring_up(
        t: &mut dyn Transport,
        mem: &mut impl DmaMemory,
        allocs: &mut Allocations,
    ) -> Result<Parts, VirtioError> {
        use transport::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
        // §3.1.1 steps 1–3.
        t.set_status(0);
        if !iommu::poll(RESET_POLLS, || t.status() == 0) {
            return Err(VirtioError::Timeout("device reset"));
        }
        t.set_status(ACKNOWLEDGE);
        t.set_status(ACKNOWLEDGE | DRIVER);
        // Steps 4–6: features.
        let offered = t.device_features();
        let has = |bit: u32| feature::has(offered, bit);
        if !has(feature::VERSION_1) {
            return Err(VirtioError::MissingFeature("VERSION_1"));
        }
        if !has(feature::MAP_UNMAP) {
            return Err(VirtioError::MissingFeature("MAP_UNMAP"));
        }
        let optional = [feature::INPUT_RANGE, feature::DOMAIN_RANGE, feature::PROBE, feature::BYPASS_CONFIG];
        let mut features = feature::bit(feature::VERSION_1) | feature::bit(feature::MAP_UNMAP);
        for bit in optional {
            if has(bit) {
                features |= feature::bit(bit);
            }
        }
        // The legacy BYPASS feature is never negotiated: an endpoint that is
        // not attached must fault, not pass through (default deny).
        t.set_driver_features(features);
        t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if t.status() & FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRejected);
        }
        let negotiated = |bit: u32| feature::has(features, bit);
        // Step 7: device setup. The configuration, read consistently (§4.1.4.3.1).
        let mut raw = None;
        for _ in 0..CONFIG_TRIES {
            let generation = t.config_generation();
            let c = t.read_config();
            if t.config_generation() == generation {
                raw = Some(c);
                break;
            }
        }
        let raw = raw.ok_or(VirtioError::ConfigUnstable)?;
        let mut config = Config {
            page_size_mask: raw.page_size_mask,
            input_range: if negotiated(feature::INPUT_RANGE) { raw.input_range } else { (0, u64::MAX) },
            domain_range: if negotiated(feature::DOMAIN_RANGE) { raw.domain_range } else { (0, u32::MAX) },
            probe_size: if negotiated(feature::PROBE) { raw.probe_size } else { 0 },
            bypass: u8::from(negotiated(feature::BYPASS)),
        };
        if config.page_size_mask == 0 {
            return Err(VirtioError::BadConfig("page_size_mask is 0"));
        }
        if config.input_range.0 > config.input_range.1 {
            return Err(VirtioError::BadConfig("input_range is empty"));
        }
        if config.domain_range.0 > config.domain_range.1 {
            return Err(VirtioError::BadConfig("domain_range is empty"));
        }
        if config.probe_size > MAX_PROBE_SIZE {
            return Err(VirtioError::BadConfig("probe_size above 64 KiB"));
        }
        if negotiated(feature::BYPASS_CONFIG) {
            // Default deny: endpoints not attached to a domain fault (QEMU's
            // boot-bypass default is 1, so this write matters there).
            if raw.bypass != 0 {
                t.set_bypass(0);
            }
            config.bypass = 0;
        }
        // The queues.
        if t.num_queues() < 2 {
            return Err(VirtioError::BadQueue { queue: EVENT_QUEUE, what: "the device has fewer than 2 queues" });
        }
        let mut sizes = [0u16; 2];
        for (q, want) in [(REQUEST_QUEUE, REQUEST_QUEUE_SIZE), (EVENT_QUEUE, EVENT_BUFFERS)] {
            let max = t.queue_max(q);
            if max < 2 {
                return Err(VirtioError::BadQueue { queue: q, what: "maximum size below 2" });
            }
            sizes[usize::from(q)] = floor_pow2(max).min(want);
        }
        let requests = VirtQueue::new(mem, REQUEST_QUEUE, sizes[0])?;
        allocs.0.push(requests.region());
        let mut events = VirtQueue::new(mem, EVENT_QUEUE, sizes[1])?;
        allocs.0.push(events.region());
        let response_len = request::TAIL_LEN as u64 + u64::from(config.probe_size);
        let request_frames = ((RESPONSE_OFFSET + response_len).div_ceil(4096) as usize).next_power_of_two();
        let request_buf = allocs.take(mem, request_frames)?;
        let event_frames = ((EVENT_SLOT * u64::from(sizes[1])).div_ceil(4096) as usize).next_power_of_two();
        let event_buf = allocs.take(mem, event_frames)?;
        t.enable_queue(REQUEST_QUEUE, requests.size(), requests.rings());
        t.enable_queue(EVENT_QUEUE, events.size(), events.rings());
        let mut event_slots = alloc::vec![None; usize::from(events.size())];
        for i in 0..u64::from(events.size()) {
            let addr = event_buf.base() + i * EVENT_SLOT;
            let head = events.add(mem, &[Buffer { addr, len: EVENT_SLOT as u32, device_writes: true }])?;
            event_slots[usize::from(head)] = Some(addr);
        }
        // Step 8.
        t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        t.notify(EVENT_QUEUE);
        let s = t.status();
        if s & (transport::status::DEVICE_NEEDS_RESET | transport::status::FAILED) != 0 {
            return Err(VirtioError::DeviceFailed(s));
        }
        Ok(Parts { offered, features, config, requests, events, request_buf, event_buf, event_slots })
    }

    fn assemble(transport: Box<dyn Transport>, p: Parts, tracer: iommu::trace::Tracer) -> VirtioIommuDevice {
        VirtioIommuDevice {
            tracer,
            history: iommu::trace::History::new(),
            transport,
            offered: p.offered,
            features: p.features,
            config: p.config,
            requests: p.requests,
            events: p.events,
            request_buf: p.request_buf,
            event_buf: p.event_buf,
            event_slots: p.event_slots,
            poll_limit: REQUEST_POLLS,
            broken: false,
            requests_sent: 0,
        }
    }

    /// The device's most recent requests, oldest first, one per line
    /// (`#seq REQ[descriptor] TYPE (fields)`).
    pub fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        self.history.describe("REQ", out, request::decode_words)
    }

    /// The unit's register-trace handle.
    pub fn tracer(&self) -> iommu::trace::Tracer {
        self.tracer
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        feature::has(self.features, bit)
    }

    /// The mapping granule: the smallest page size.
    pub fn granule(&self) -> u64 {
        1 << self.config.page_size_mask.trailing_zeros()
    }

    /// One log line: features by name, page sizes, input range, domain range, probe size.
    pub fn describe(&self) -> String {
        let c = &self.config;
        alloc::format!(
            "virtio-iommu: features {:#x} [{}], page sizes {:#x} (granule {} KiB), input range {:#x}-{:#x}, domains {}-{}, probe size {:#x}, bypass {}, queues {}+{}",
            self.features,
            feature::names(self.features).join(" "),
            c.page_size_mask,
            self.granule() / 1024,
            c.input_range.0,
            c.input_range.1,
            c.domain_range.0,
            c.domain_range.1,
            c.probe_size,
            c.bypass,
            self.requests.size(),
            self.events.size(),
        )
    }

    /// Sends `req` and waits for its answer. Returns the bytes the device
    /// wrote before the tail (PROBE's properties; empty otherwise); a status
    /// other than OK is [`VirtioError::Status`]. The properties are copied
    /// to the heap: a full heap is [`VirtioError::NoMemory`] (after the
    /// device answered). Syscall paths use [`VirtioIommuDevice::send`].
    pub fn request(&mut self, req: &Request, mem: &mut impl DmaMemory) -> Result<Vec<u8>, VirtioError> {
        self.send(req, mem)?;
        let len = req.response_len(self.config.probe_size) - request::TAIL_LEN;
        let mut bytes = fallible::try_filled(0u8, len).map_err(|_| VirtioError::NoMemory)?;
        self.request_buf.read_bytes(mem, RESPONSE_OFFSET, &mut bytes)?;
        Ok(bytes)
    }

    /// Sends `req` and waits for its answer, without touching the heap: the
    /// request is encoded on the stack into the buffer allocated at bring-up,
    /// and only the status is read back (what the device wrote before the
    /// tail stays in that buffer until the next request). A status other
    /// than OK is [`VirtioError::Status`].
    pub fn send(&mut self, req: &Request, mem: &mut impl DmaMemory) -> Result<(), VirtioError> {
        if self.broken {
            return Err(VirtioError::Broken);
        }
        let body = req.encode();
        let response_len = req.response_len(self.config.probe_size);
        let response = RESPONSE_OFFSET;
        let tail = response + response_len as u64 - request::TAIL_LEN as u64;
        self.request_buf.write_bytes(mem, 0, &body)?;
        // A status no device returns, so a tail the device never wrote is an error.
        self.request_buf.write_bytes(mem, tail, &[0xFF])?;
        let head = self.requests.add(
            mem,
            &[
                Buffer { addr: self.request_buf.base(), len: body.len() as u32, device_writes: false },
                Buffer { addr: self.request_buf.pa(response)?, len: response_len as u32, device_writes: true },
            ],
        )?;
        let n = self.history.record(u32::from(head), request::history_words(&body));
        if self.tracer.on() {
            self.tracer.emit_seq(n, format_args!("REQ[{head}] submit {}", Req(&body)));
        }
        self.transport.notify(REQUEST_QUEUE);
        self.requests_sent += 1;
        let (mut used, mut bad) = (None, None);
        let queue = &mut self.requests;
        iommu::poll(self.poll_limit, || match queue.pop_used(mem) {
            Ok(Some(u)) => {
                used = Some(u);
                true
            }
            Ok(None) => false,
            Err(e) => {
                bad = Some(e);
                true
            }
        });
        if let Some(e) = bad {
            self.broken = true;
            log::error!("virtio-iommu: {req}: {e}; the device is no longer used");
            return Err(e);
        }
        let Some(u) = used else {
            self.broken = true;
            log::error!("virtio-iommu: {req}: no answer after {} polls; the device is no longer used", self.poll_limit);
            return Err(VirtioError::Timeout("request"));
        };
        if u.head != head {
            self.broken = true;
            return Err(VirtioError::BadUsed { queue: REQUEST_QUEUE, id: u32::from(u.head) });
        }
        let written = u.len as usize;
        // A device that could not fill the whole reply writes a bare tail
        // first (QEMU 10 does, `virtio_iommu_handle_command`).
        let mut code = [0u8];
        let at = if written >= request::TAIL_LEN && written < response_len { response } else { tail };
        self.request_buf.read_bytes(mem, at, &mut code)?;
        let code = code[0];
        iommu::trace!(self.tracer, "REQ[{head}] used: {} -> {}", Req(&body), request::status_name(code));
        if code != status::OK {
            return Err(VirtioError::Status { request: *req, status: code });
        }
        Ok(())
    }

    /// ATTACH `endpoint` to `domain` (a bypass domain when `bypass`).
    pub fn attach(
        &mut self,
        domain: u32,
        endpoint: u32,
        bypass: bool,
        mem: &mut impl DmaMemory,
    ) -> Result<(), VirtioError> {
        self.send(&request::attach(domain, endpoint, bypass), mem)
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&mut self, domain: u32, endpoint: u32, mem: &mut impl DmaMemory) -> Result<(), VirtioError> {
        self.send(&request::detach(domain, endpoint), mem)
    }

    /// MAP `[start, end]` (inclusive) to `phys` in `domain` with [`request::map_flags`].
    pub fn map(
        &mut self,
        domain: u32,
        start: u64,
        end: u64,
        phys: u64,
        flags: u32,
        mem: &mut impl DmaMemory,
    ) -> Result<(), VirtioError> {
        self.send(&request::map(domain, start, end, phys, flags), mem)
    }

    /// UNMAP `[start, end]` (inclusive) in `domain`.
    pub fn unmap(&mut self, domain: u32, start: u64, end: u64, mem: &mut impl DmaMemory) -> Result<(), VirtioError> {
        self.send(&request::unmap(domain, start, end), mem)
    }

    /// PROBE `endpoint`: its reserved regions (needs VIRTIO_IOMMU_F_PROBE).
    pub fn probe(&mut self, endpoint: u32, mem: &mut impl DmaMemory) -> Result<Vec<Region>, VirtioError> {
        if !self.has(feature::PROBE) {
            return Err(VirtioError::MissingFeature("PROBE"));
        }
        let props = self.request(&request::probe(endpoint), mem)?;
        Ok(request::parse_probe(&props)?)
    }

    /// Takes the fault records the device wrote since the last call and
    /// posts their buffers again (at most one queue's worth per call).
    pub fn take_faults(&mut self, mem: &mut impl DmaMemory) -> Vec<Fault> {
        let mut out = Vec::new();
        self.take_faults_with(mem, &mut |f| out.push(f));
        out
    }

    /// [`VirtioIommuDevice::take_faults`], handing each record to `f` in
    /// order instead of collecting them (allocates nothing).
    pub fn take_faults_with(&mut self, mem: &mut impl DmaMemory, f: &mut dyn FnMut(Fault)) {
        // Acknowledge any interrupt status (the rings ask for none).
        let _ = self.transport.isr();
        let mut reposted = false;
        for _ in 0..self.events.size() {
            let u = match self.events.pop_used(mem) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => {
                    log::error!("virtio-iommu: event queue: {e}");
                    break;
                }
            };
            let Some(addr) = self.event_slots.get_mut(usize::from(u.head)).and_then(Option::take) else { continue };
            let mut record = [0u8; FAULT_LEN];
            if let Err(e) = self.event_buf.read_bytes(mem, addr.wrapping_sub(self.event_buf.base()), &mut record) {
                log::error!("virtio-iommu: fault buffer: {e}");
                continue;
            }
            match Fault::decode(&record[..(u.len as usize).min(FAULT_LEN)]) {
                Some(fault) => {
                    iommu::trace!(self.tracer, "EVENTQ[{}] used: fault {fault:?}", u.head);
                    f(fault)
                }
                None => log::warn!("virtio-iommu: short fault record ({} bytes)", u.len),
            }
            match self.events.add(mem, &[Buffer { addr, len: EVENT_SLOT as u32, device_writes: true }]) {
                Ok(head) => {
                    if let Some(slot) = self.event_slots.get_mut(usize::from(head)) {
                        *slot = Some(addr);
                    }
                    reposted = true;
                }
                Err(e) => log::error!("virtio-iommu: fault buffer not posted again: {e}"),
            }
        }
        if reposted {
            self.transport.notify(EVENT_QUEUE);
        }
    }

    /// Whether a lost request made the device unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Frames the device holds (queues and buffers): what leak checks leave out.
    pub fn frames(&self) -> usize {
        self.requests.frames() + self.events.frames() + self.request_buf.frames() + self.event_buf.frames()
    }

    /// Physical addresses of the request and event buffers (for tests and traces).
    pub fn buffers(&self) -> (u64, u64) {
        (self.request_buf.base(), self.event_buf.base())
    }
}

/// What initialisation produced, before the device value exists.
struct Parts {
    offered: u64,
    features: u64,
    config: Config,
    requests: VirtQueue,
    events: VirtQueue,
    request_buf: DmaRegion,
    event_buf: DmaRegion,
    event_slots: Vec<Option<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{fault_flags, map_flags, reason};
    use crate::testing::{Fake, TestMem, DEFAULT_FEATURES};
    use iommu::{DeviceId, DomainId};

    fn up() -> (Fake, TestMem, VirtioIommuDevice) {
        let fake = Fake::q35();
        let mut mem = TestMem::new();
        let dev = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem).unwrap();
        (fake, mem, dev)
    }

    #[test]
    fn initialisation_negotiates_and_sets_up_queues() {
        let (fake, mem, dev) = up();
        let f = fake.lock();
        assert_eq!(f.status, 0xF, "ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK");
        let want = 1 << feature::VERSION_1
            | 1 << feature::MAP_UNMAP
            | 1 << feature::INPUT_RANGE
            | 1 << feature::DOMAIN_RANGE
            | 1 << feature::PROBE
            | 1 << feature::BYPASS_CONFIG;
        assert_eq!(f.accepted, want, "no EVENT_IDX, INDIRECT_DESC, MMIO or ACCESS_PLATFORM");
        assert_eq!(dev.features, want);
        assert_eq!(dev.offered, DEFAULT_FEATURES);
        assert_eq!(dev.config.input_range, (0, (1 << 39) - 1));
        assert_eq!(dev.config.probe_size, 0x200);
        assert_eq!(dev.config.bypass, 0, "default deny: bypass off");
        assert_eq!(f.queue_sizes(), [16, 32]);
        assert_eq!(f.event_buffers_available(), 32, "every fault buffer is posted");
        assert_eq!(mem.live(), dev.frames());
        let line = dev.describe();
        assert!(
            line.contains("MAP_UNMAP") && line.contains("BYPASS_CONFIG") && line.contains("0x7fffffffff"),
            "{line}"
        );
        assert!(line.contains("granule 4 KiB") && line.contains("probe size 0x200"), "{line}");
    }

    #[test]
    fn bypass_is_turned_off_and_ranges_default_without_their_features() {
        let fake = Fake::q35();
        {
            let mut f = fake.lock();
            f.config.bypass = 1;
            f.offered &= !(1 << feature::INPUT_RANGE | 1 << feature::DOMAIN_RANGE);
        }
        let mut mem = TestMem::new();
        let dev = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem).unwrap();
        assert_eq!(fake.lock().config.bypass, 0, "the driver wrote config.bypass = 0 (default deny)");
        assert_eq!(dev.config.input_range, (0, u64::MAX));
        assert_eq!(dev.config.domain_range, (0, u32::MAX));
    }

    #[test]
    fn devices_that_cannot_be_driven_are_refused_and_nothing_leaks() {
        for (what, change) in [
            ("VERSION_1", (|f: &mut crate::testing::FakeState| f.offered &= !(1 << feature::VERSION_1)) as fn(&mut _)),
            ("MAP_UNMAP", |f| f.offered &= !(1 << feature::MAP_UNMAP)),
        ] {
            let fake = Fake::q35();
            change(&mut fake.lock());
            let mut mem = TestMem::new();
            let r = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem);
            assert_eq!(r.err(), Some(VirtioError::MissingFeature(what)));
            assert_eq!(fake.lock().status & transport::status::FAILED, transport::status::FAILED);
            assert_eq!(mem.live(), 0);
        }
        let fake = Fake::q35();
        fake.lock().refuse_features = true;
        let mut mem = TestMem::new();
        let r = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem);
        assert_eq!(r.err(), Some(VirtioError::FeaturesRejected));
        // Out of memory halfway through: what was taken goes back.
        let fake = Fake::q35();
        let mut mem = TestMem::new();
        mem.fail_after(2);
        let r = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem);
        assert_eq!(r.err(), Some(VirtioError::NoMemory));
        assert_eq!(mem.live(), 0);
        // A device whose reset never completes.
        let fake = Fake::q35();
        {
            let mut f = fake.lock();
            f.status = 0xF;
            f.stuck_status = true;
        }
        let mut mem = TestMem::new();
        let r = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem);
        assert_eq!(r.err(), Some(VirtioError::Timeout("device reset")));
    }

    #[test]
    fn configuration_is_reread_until_the_generation_is_stable() {
        let fake = Fake::q35();
        fake.lock().generation_changes = 3;
        let mut mem = TestMem::new();
        assert!(VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem).is_ok());
        assert!(fake.lock().config_reads >= 4);
        let fake = Fake::q35();
        fake.lock().generation_changes = 1000;
        let mut mem = TestMem::new();
        let r = VirtioIommuDevice::with_transport(fake.transport(&mem), &mut mem);
        assert_eq!(r.err(), Some(VirtioError::ConfigUnstable));
    }

    #[test]
    fn requests_round_trip_and_errors_keep_their_status() {
        let (fake, mut mem, mut dev) = up();
        dev.attach(3, 0x10, false, &mut mem).unwrap();
        dev.map(3, 0x10_0000, 0x10_0FFF, 0x8000, map_flags::READ, &mut mem).unwrap();
        assert_eq!(fake.lock().translate(0x10, 0x10_0010, false), Some(0x8010));
        let e = dev.map(3, 0x10_0000, 0x10_1FFF, 0x8000, map_flags::READ, &mut mem).unwrap_err();
        assert!(matches!(e, VirtioError::Status { status: status::INVAL, .. }), "{e}");
        assert!(alloc::format!("{e}").contains("INVAL"), "{e}");
        assert_eq!(iommu::Error::from(e), iommu::Error::Map(io_pgtable::Error::AlreadyMapped(0x10_0000)));
        let e = dev.unmap(3, 0x10_0000, 0x10_07FF, &mut mem).unwrap_err();
        assert_eq!(iommu::Error::from(e), iommu::Error::Map(io_pgtable::Error::SplitLeaf(0x10_0000)));
        let e = dev.map(77, 0, 0xFFF, 0, map_flags::READ, &mut mem).unwrap_err();
        assert_eq!(iommu::Error::from(e), iommu::Error::NoSuchDomain(DomainId(77)));
        let e = dev.attach(3, 0x99, false, &mut mem).unwrap_err();
        assert_eq!(iommu::Error::from(e), iommu::Error::NoSuchDevice(DeviceId(0x99)));
        fake.lock().fail_next = Some(status::DEVERR);
        let e = dev.detach(3, 0x10, &mut mem).unwrap_err();
        assert_eq!(iommu::Error::from(e), iommu::Error::Hardware(request::status_message(status::DEVERR)));
        assert_eq!(dev.requests_sent, 7);
        assert_eq!(dev.requests.in_flight(), 0);
    }

    #[test]
    fn probe_reports_the_msi_window() {
        let (_fake, mut mem, mut dev) = up();
        let r = dev.probe(0x10, &mut mem).unwrap();
        assert_eq!(r, [Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: iommu::ReservedKind::Msi }]);
        let e = dev.probe(0x99, &mut mem).unwrap_err();
        assert!(matches!(e, VirtioError::Status { status: status::NOENT, .. }));
    }

    #[test]
    fn a_silent_device_times_out_and_is_then_left_alone() {
        let (fake, mut mem, mut dev) = up();
        fake.lock().silent = true;
        dev.poll_limit = 1000;
        assert_eq!(dev.attach(1, 0x10, false, &mut mem), Err(VirtioError::Timeout("request")));
        assert!(dev.is_broken());
        fake.lock().silent = false;
        assert_eq!(dev.attach(1, 0x10, false, &mut mem), Err(VirtioError::Broken));
        assert_eq!(fake.lock().requests_seen(), 0);
        assert!(matches!(iommu::Error::from(VirtioError::Broken), iommu::Error::Hardware(_)));
    }

    #[test]
    fn faults_are_decoded_and_buffers_reposted() {
        let (fake, mut mem, mut dev) = up();
        dev.attach(5, 0x18, false, &mut mem).unwrap();
        dev.map(5, 0x4000, 0x4FFF, 0x9000, map_flags::READ, &mut mem).unwrap();
        for _ in 0..40 {
            assert_eq!(fake.lock().translate(0x18, 0x4008, true), None);
        }
        let mut f = fake.lock();
        assert_eq!(f.events_dropped, 8, "32 buffers, 40 faults");
        drop(f);
        let faults = dev.take_faults(&mut mem);
        assert_eq!(faults.len(), 32);
        assert_eq!(
            faults[0],
            Fault {
                reason: reason::MAPPING,
                flags: fault_flags::WRITE | fault_flags::ADDRESS,
                endpoint: 0x18,
                address: 0x4008
            }
        );
        f = fake.lock();
        assert_eq!(f.event_buffers_available(), 32, "all posted again");
        assert_eq!(f.translate(0x18, 0x7000, false), None);
        drop(f);
        let again = dev.take_faults(&mut mem);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].flags, again[0].address), (fault_flags::ADDRESS, 0x7000), "no mapping: no R/W flag");
        assert!(dev.take_faults(&mut mem).is_empty());
    }
}
