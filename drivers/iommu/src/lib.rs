//! The IOMMU hardware interface (../shared/DESIGN.md §4).
//!
//! Every IOMMU driver (VT-d, SMMUv3, AMD-Vi, virtio-iommu) implements [`Iommu`]
//! for each unit it drives; the kernel's IOAS layer depends on this trait only.
//! [`mock::MockIommu`] implements it in plain memory for host tests: its own
//! aperture, page-size bitmap, reserved regions, simulated DMA and injectable
//! failures.
//!
//! Model, in iommufd's terms:
//! - A **domain** is a translation context owned by one unit: a *paging*
//!   domain has an I/O page table; the *identity* domain lets DMA through
//!   untranslated; the *blocked* domain stops every DMA.
//! - A **device** is named by the ID the unit sees (PCI requester ID after
//!   aliasing, or stream ID). **Default deny**: from the moment a driver has
//!   brought its unit up, every device behind it is *blocked* (no DMA of it
//!   reaches memory) until it is attached to a domain, and
//!   [`Iommu::detach`] returns it there. Whoever wants a device to keep
//!   reaching memory untranslated (the kernel's own devices, an opt-in
//!   policy for unclaimed functions) attaches it to an identity domain
//!   explicitly. The states per driver:
//!   VT-d: a present context entry pointing at an empty page table;
//!   AMD-Vi: a valid DTE with no translation permission (every DeviceID of
//!   the device table, not just the known ones); SMMUv3: an abort STE with
//!   SMMUEN on (GBPA abort whenever SMMUEN is off); virtio-iommu: attached
//!   to a domain with no mappings, `bypass` off.
//! - `unmap` hands back a [`Gather`] that the caller passes to [`Iommu::flush`]
//!   once per batch; table frames are freed only after the flush.
//!
//! The driver toolkit, shared by every driver so each keeps only what its
//! hardware makes different:
//! - [`mmio`]: [`mmio::MmioWindow`], a bounds-checked register window, and
//!   [`register_blocks!`] (the one `unsafe` of register access lives here,
//!   so driver crates can `#![forbid(unsafe_code)]`);
//! - [`dma`]: [`dma::DmaRegion`], bounds-checked word and byte access to a
//!   run of DMA frames;
//! - [`ring`]: [`ring::ProducerRing`], the command / invalidation queue
//!   shape with its doorbell barrier and bounded wait;
//! - [`desc`]: [`descriptor!`], typed in-memory descriptors;
//! - [`user_data`]: [`user_data::read_struct`], the extensible-struct rule
//!   for driver data a task passes;
//! - [`trace`](mod@trace): the register trace (`trace=` on the command line): one
//!   numbered log line per register write, submitted descriptor and
//!   completion, a switch per unit, and the queue [`trace::History`] behind
//!   [`Iommu::describe_queue`].
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod desc;
pub mod describe;
pub mod dma;
pub mod groups;
pub mod ids;
pub mod mmio;
pub mod mock;
pub mod noiommu;
pub mod ring;
pub mod trace;
pub mod user_data;

use alloc::vec::Vec;
use core::fmt;

pub use io_pgtable::{Gather, Perms};

/// What a reserved region of a domain is for. The IOMMU's own vocabulary:
/// firmware tables (through `topology`) and the device itself (virtio-iommu
/// PROBE) both produce regions of these kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservedKind {
    /// Must stay identity-mapped for a device (RMRR, IVMD unity, IORT RMR).
    DirectMap,
    /// An MSI window the unit (or the platform) handles itself, untranslated
    /// (x86's 0xFEEx_xxxx, a virtio-iommu's RESV_MEM MSI region): never
    /// usable for DMA and never mapped.
    Msi,
    /// An interrupt controller's doorbell that the unit translates like any
    /// DMA target (the GICv3 ITS behind an SMMU; Linux's "software MSI"):
    /// never usable for DMA by a task, identity-mapped by the kernel into
    /// every paging domain a device joins ([`map_direct_regions`]) so that
    /// its MSIs arrive. The interrupt controller confines what a device can
    /// raise there (the ITS by DeviceID), not the IOMMU.
    MsiDoorbell,
    /// Not usable for DMA at all (IVMD exclusion, holes, RESV_MEM reserved).
    Reserved,
}

/// Which hardware a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// Intel VT-d remapping unit.
    Vtd,
    /// AMD-Vi IOMMU.
    AmdVi,
    /// Arm SMMUv3.
    Smmuv3,
    /// virtio-iommu device.
    VirtioIommu,
    /// The host-test mock.
    Mock,
    /// No IOMMU: the unit `iommu.noiommu=allow` registers ([`noiommu`]).
    NoIommu,
}

impl UnitKind {
    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Vtd => "vtd",
            UnitKind::AmdVi => "amdvi",
            UnitKind::Smmuv3 => "smmuv3",
            UnitKind::VirtioIommu => "virtio-iommu",
            UnitKind::Mock => "mock",
            UnitKind::NoIommu => "noiommu",
        }
    }
}

/// What a unit offers: enough for the generic door to choose IOVAs and page
/// sizes, plus the raw capability registers for the hardware-specific door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The hardware kind.
    pub kind: UnitKind,
    /// Raw capability registers by their spec names (e.g. `("CAP", ..)`, `("ECAP", ..)`).
    pub raw: Vec<(&'static str, u64)>,
    /// Leaf sizes paging domains support: bit n set = 2^n bytes.
    pub page_sizes: u64,
    /// Lowest and highest (inclusive) IOVA a paging domain can translate.
    pub aperture: (u64, u64),
    /// Whether the identity domain is native (false: emulated with a page table).
    pub native_identity: bool,
}

impl Info {
    /// Smallest page size, in bytes.
    pub fn min_page(&self) -> u64 {
        1 << self.page_sizes.trailing_zeros().min(63)
    }
}

/// The kind of domain to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainKind {
    /// An I/O page table, empty at first.
    Paging,
    /// DMA passes untranslated (every address reaches memory).
    Identity,
    /// Every DMA is refused.
    Blocked,
}

/// A domain of one unit (a handle, valid until [`Iommu::domain_free`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

/// A device as its unit sees it: PCI requester ID (after aliasing) or stream ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// An address range reserved for a device (inclusive end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// Last address.
    pub end: u64,
    /// What it is for: direct-map regions are identity-mapped into every
    /// paging domain the device joins; MSI and reserved regions must never be
    /// used as IOVAs.
    pub kind: ReservedKind,
}

/// The direction of a faulting DMA, as far as the unit said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A read from memory.
    Read,
    /// A write to memory.
    Write,
    /// The unit did not say (virtio-iommu names the direction only for
    /// permission faults, virtio 1.2 §5.13.6.7).
    Unknown,
    /// An interrupt request (a write to the interrupt window) that the
    /// unit's interrupt remapping refused; the event's `address` holds the
    /// interrupt index the request named.
    Interrupt,
}

impl Access {
    /// `Write` when `write`, else `Read` (units that always say).
    pub fn from_write(write: bool) -> Access {
        if write {
            Access::Write
        } else {
            Access::Read
        }
    }

    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Unknown => "access",
            Access::Interrupt => "interrupt",
        }
    }
}

/// A DMA fault a unit reported, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEvent {
    /// The device that issued the request.
    pub device: DeviceId,
    /// The faulting IOVA (page-aligned on units that record only the page).
    pub address: u64,
    /// Read, write, or not said.
    pub access: Access,
    /// The unit's own reason code.
    pub reason: u32,
    /// The reason code's name from the unit's spec.
    pub reason_name: &'static str,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.access == Access::Interrupt {
            return write!(
                f,
                "interrupt request from device {:#x} blocked (interrupt index {:#x}): reason {:#x} ({})",
                self.device.0, self.address, self.reason, self.reason_name
            );
        }
        write!(
            f,
            "DMA {} fault from device {:#x} at {:#x}: reason {:#x} ({})",
            self.access.name(),
            self.device.0,
            self.address,
            self.reason,
            self.reason_name
        )
    }
}

/// Merges runs of faults that describe one faulting DMA: same device,
/// reason and direction, in the same 4 KiB page, one after the other. A
/// device's DMA reaches the unit as many transactions (QEMU retries a failed
/// access 4 bytes at a time, so one blocked 4 KiB transfer can raise a
/// thousand events); the first of a run stands for it, with the run's length.
pub fn coalesce_faults(faults: impl IntoIterator<Item = FaultEvent>) -> Vec<(FaultEvent, usize)> {
    let mut out: Vec<(FaultEvent, usize)> = Vec::new();
    for f in faults {
        match out.last_mut() {
            Some((first, n))
                if (first.device, first.reason, first.access) == (f.device, f.reason, f.access)
                    && first.address >> 12 == f.address >> 12 =>
            {
                *n += 1
            }
            _ => out.push((f, 1)),
        }
    }
    out
}

/// What `unmap` removed; the gather must be flushed ([`Iommu::flush`]).
#[must_use = "the IOTLB still holds the old translations until the gather is flushed"]
#[derive(Debug)]
pub struct Unmapped {
    /// Bytes unmapped.
    pub bytes: u64,
    /// Range and freed tables to flush.
    pub gather: Gather,
}

/// Why a unit operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The unit cannot do this (hardware-specific requests only; the generic
    /// operations never fail for this reason).
    NotSupported(&'static str),
    /// Out of memory for tables.
    NoMemory,
    /// Every domain ID / ASID / VMID the unit has is in use.
    NoDomainIds,
    /// No such domain on this unit.
    NoSuchDomain(DomainId),
    /// This device is not behind this unit.
    NoSuchDevice(DeviceId),
    /// The domain still has devices attached.
    Busy(DomainId),
    /// The operation needs a paging domain.
    NotPaging(DomainId),
    /// The range leaves the unit's aperture.
    OutOfAperture {
        /// First IOVA of the request.
        iova: u64,
        /// Length of the request.
        len: u64,
    },
    /// The page-table engine refused the change (alignment, overlap, split...).
    Map(io_pgtable::Error),
    /// The hardware did not do what it was asked (a timeout, a queue error).
    Hardware(&'static str),
    /// Driver data (hardware-specific door) the unit refuses: a reserved or
    /// forbidden field set, a value out of range (named).
    InvalidData(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotSupported(what) => write!(f, "not supported by this unit: {what}"),
            Error::NoMemory => f.write_str("out of memory for IOMMU tables"),
            Error::NoDomainIds => f.write_str("no free domain ID"),
            Error::NoSuchDomain(d) => write!(f, "no domain {}", d.0),
            Error::NoSuchDevice(d) => write!(f, "device {:#x} is not behind this unit", d.0),
            Error::Busy(d) => write!(f, "domain {} still has devices attached", d.0),
            Error::NotPaging(d) => write!(f, "domain {} has no page table", d.0),
            Error::OutOfAperture { iova, len } => {
                write!(f, "IOVA range {iova:#x}+{len:#x} is outside the unit's aperture")
            }
            Error::Map(e) => write!(f, "page table: {e}"),
            Error::Hardware(what) => write!(f, "hardware error: {what}"),
            Error::InvalidData(what) => write!(f, "invalid driver data: {what}"),
        }
    }
}

impl From<io_pgtable::Error> for Error {
    fn from(e: io_pgtable::Error) -> Self {
        match e {
            io_pgtable::Error::NoMemory => Error::NoMemory,
            e => Error::Map(e),
        }
    }
}

/// Memory for IOMMU tables and queues: the page-table frame seam plus
/// zeroed, naturally aligned runs of frames (stream tables, command queues).
pub trait DmaMemory: io_pgtable::TableMemory {
    /// `frames` (a power of two) contiguous zeroed frames aligned to their size.
    fn alloc_contiguous(&mut self, frames: usize) -> Option<u64>;
    /// Gives back what `alloc_contiguous` returned.
    fn free_contiguous(&mut self, base: u64, frames: usize);
}

/// Where a device's message-signalled interrupt should land: on x86 a
/// vector and the local APIC ID of the CPU that takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiTarget {
    /// The vector the CPU sees.
    pub vector: u8,
    /// The destination CPU's interrupt-controller ID (x86: APIC ID).
    pub cpu: u32,
}

/// The address / data pair a device's MSI capability is programmed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (x86: in the 0xFEEx_xxxx window).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// One IOMMU unit, as its driver presents it.
pub trait Iommu: Send {
    /// Kind, capabilities, aperture and page sizes. Drivers build it
    /// without failing: should the heap have no room for the raw registers,
    /// `raw` is empty ([`Iommu::try_info`] says so instead).
    fn info(&self) -> Info;

    /// [`Iommu::info`] that answers [`Error::NoMemory`] when the raw
    /// registers find no heap (the hw_info door uses this one).
    fn try_info(&self) -> Result<Info, Error> {
        Ok(self.info())
    }

    /// The hardware kind ([`Info::kind`], without building an [`Info`]).
    fn kind(&self) -> UnitKind {
        self.info().kind
    }

    /// The leaf sizes of paging domains ([`Info::page_sizes`], without
    /// building an [`Info`]).
    fn page_sizes(&self) -> u64 {
        self.info().page_sizes
    }

    /// The IOVAs a default paging domain translates ([`Info::aperture`],
    /// without building an [`Info`]: syscall paths ask this one).
    fn aperture(&self) -> (u64, u64) {
        self.info().aperture
    }

    /// A new domain. Identity and blocked domains always succeed when memory
    /// and IDs allow (a unit without a native identity mode emulates it).
    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error>;

    /// A domain described in the unit's own language (the hardware-specific
    /// door: driver attributes, nested stage-1 tables); `parent` is the
    /// stage-2 domain of a nested one.
    fn domain_alloc_user(&mut self, data_type: u32, data: &[u8], parent: Option<DomainId>) -> Result<DomainId, Error> {
        let _ = (data_type, data, parent);
        Err(Error::NotSupported("driver-specific domains"))
    }

    /// A paging domain that may serve as the parent (stage 2) of nested
    /// children made by [`Iommu::domain_alloc_user`]; units that nest in
    /// hardware give their stage-2 format, the others a plain paging domain.
    fn domain_alloc_nest_parent(&mut self) -> Result<DomainId, Error> {
        self.domain_alloc(DomainKind::Paging)
    }

    /// Hands the unit a batch of invalidation entries (`entry_len` bytes each,
    /// of `data_type`) for a nested child made by [`Iommu::domain_alloc_user`]:
    /// each is checked before it reaches the hardware, the batch stops at the
    /// first bad one; returns how many were handled and why it stopped.
    fn invalidate_user(
        &mut self,
        domain: DomainId,
        data_type: u32,
        entries: &[u8],
        entry_len: usize,
    ) -> (u32, Result<(), Error>) {
        let _ = (domain, data_type, entries, entry_len);
        (0, Err(Error::NotSupported("user invalidation")))
    }

    /// Frees a domain with no device attached ([`Error::Busy`] otherwise); a
    /// paging domain's tables go with it.
    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error>;

    /// Points `device` at `domain` (replacing what it had). Direct-map regions
    /// of the device are identity-mapped into a paging domain first.
    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error>;

    /// Returns `device` to the blocked state (no DMA of it reaches memory)
    /// and waits until the unit has forgotten every cached translation and
    /// context of it: when this returns `Ok`, the device's DMA is stopped.
    /// An `Err` means the unit may still let it through (the caller must not
    /// free memory the device could reach).
    fn detach(&mut self, device: DeviceId) -> Result<(), Error>;

    /// The domain `device` is attached to (`None`: blocked).
    fn attached(&self, device: DeviceId) -> Option<DomainId>;

    /// The devices behind this unit.
    fn devices(&self) -> Vec<DeviceId>;

    /// Whether `device` is behind this unit. Syscall paths ask this rather
    /// than [`Iommu::devices`], so a driver should answer it without
    /// allocating.
    fn serves(&self, device: DeviceId) -> bool {
        self.devices().contains(&device)
    }

    /// Maps `[iova, iova + len)` to `pa` in a paging domain; takes effect for
    /// the hardware before it returns (the driver flushes on map where the
    /// unit caches not-present entries).
    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error>;

    /// Maps each `(iova, pa, len)` of `runs` as [`Iommu::map`] does, but with
    /// at most one invalidation for them all where the unit needs one on map
    /// (VT-d caching mode, AMD-Vi's flush on map). On failure: the error and
    /// how many runs were mapped before it (the failing one left nothing);
    /// the caller unmaps those. The default maps them one by one.
    fn map_runs(
        &mut self,
        domain: DomainId,
        runs: &mut dyn Iterator<Item = (u64, u64, u64)>,
        perms: Perms,
    ) -> Result<(), (Error, usize)> {
        for (done, (iova, pa, len)) in runs.enumerate() {
            self.map(domain, iova, pa, len, perms).map_err(|e| (e, done))?;
        }
        Ok(())
    }

    /// Removes whole mappings in `[iova, iova + len)`; the caller flushes the
    /// returned gather (once for a batch of unmaps).
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error>;

    /// Invalidates the unit's caches for what `gather` covers, then frees its tables.
    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error>;

    /// The physical address `iova` translates to in a paging domain.
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64>;

    /// Takes every fault the unit recorded since the last call.
    fn drain_faults(&mut self) -> Vec<FaultEvent>;

    /// Takes every fault the unit recorded since the last call, handing each
    /// to `f` in order. Syscall paths use this one: a driver should
    /// implement it without allocating, so a full heap loses no fault.
    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        for e in self.drain_faults() {
            f(e);
        }
    }

    /// Reserved regions for `device`: the interrupt window, firmware
    /// direct-map regions, holes.
    fn reserved_regions(&self, device: DeviceId) -> Vec<Region>;

    /// Hands each of `device`'s reserved regions to `f` (as
    /// [`Iommu::reserved_regions`]). Syscall paths use this one: a driver
    /// should implement it without allocating.
    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        for r in self.reserved_regions(device) {
            f(r);
        }
    }

    /// The leaves mapping `[iova, iova + len)` in a paging domain, as
    /// (leaf size, count) pairs, largest first (for reports; empty when the
    /// driver cannot tell).
    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let _ = (domain, iova, len);
        Vec::new()
    }

    /// Hands each (leaf size, count) pair of [`Iommu::leaves`] to `f`,
    /// largest first. Syscall paths use this one: a driver should implement
    /// it without allocating.
    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        for (size, n) in self.leaves(domain, iova, len) {
            f(size, n);
        }
    }

    /// Gives back heap the driver's bookkeeping no longer needs (room its
    /// maps kept after entries left them: `fallible::TryMap::shrink`).
    /// Called once a call that removed entries is over (never between a
    /// reserve and its insert); never fails.
    fn shrink(&mut self) {}

    /// IOTLB invalidations (flushes that reached the hardware) so far.
    fn flushes(&self) -> u64;

    /// Whether this unit remaps (and so confines) its devices' interrupts.
    fn remaps_interrupts(&self) -> bool {
        false
    }

    /// Whether paging domains take only identity mappings (IOVA = physical
    /// address): the no-IOMMU unit ([`noiommu`]), which translates nothing.
    /// An IOAS with such a device places each area at the physical address
    /// of its pages (which must then be contiguous).
    fn identity_only(&self) -> bool {
        false
    }

    /// Gives `device` an interrupt-remapping entry that turns one message
    /// into `target`, and returns the message to program into the device
    /// (a remappable-format handle, not a destination). A device can then
    /// raise exactly this interrupt and no other. `Ok(None)`: the unit does
    /// not remap interrupts, and the caller programs `target` directly
    /// (unconfined). Asking again for the same `device` and vector replaces
    /// the entry.
    fn msi_remap(&mut self, device: DeviceId, target: MsiTarget) -> Result<Option<MsiMessage>, Error> {
        let _ = (device, target);
        Ok(None)
    }

    /// Removes the entry [`Iommu::msi_remap`] made for `device` and `vector`
    /// and waits until the unit's interrupt entry cache has forgotten it:
    /// afterwards that message is blocked. Nothing to remove is `Ok`.
    fn msi_unmap(&mut self, device: DeviceId, vector: u8) -> Result<(), Error> {
        let _ = (device, vector);
        Ok(())
    }

    /// Writes what `what` asks about in words (registers decoded field by
    /// field, a device's structures, a page-table walk; see [`describe`]).
    /// Read-only: nothing the unit holds changes. A unit that cannot say
    /// answers [`Error::NotSupported`]; a device it does not serve,
    /// [`Error::NoSuchDevice`].
    fn describe(&self, what: describe::Describe, out: &mut dyn fmt::Write) -> Result<(), Error> {
        let _ = (what, out);
        Err(Error::NotSupported("describe"))
    }

    /// The unit's most recently submitted queue entries (VT-d invalidation
    /// descriptors, SMMUv3 commands, AMD-Vi command-buffer entries,
    /// virtio-iommu requests), oldest first, one line each: its sequence
    /// number (the one its trace line had), its slot and its decode by spec
    /// names. Kept whether tracing is on or off.
    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        let _ = out;
        Err(Error::NotSupported("queue history"))
    }

    /// The unit's handle on the register trace (its name and switch;
    /// [`trace::Tracer::NONE`] for a unit that is never traced).
    fn tracer(&self) -> trace::Tracer {
        trace::Tracer::NONE
    }

    /// The driver behind the trait, for driver-specific tests and the
    /// hardware-specific door.
    fn as_any_mut(&mut self) -> &mut dyn core::any::Any;
}

/// Polls `done` up to `limit` times (spinning between polls); false when it
/// never became true. Every wait on IOMMU hardware goes through this bound.
pub fn poll(limit: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..limit {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// The raw capability registers of an [`Info`], copied to the heap fallibly.
pub fn raw_regs(regs: &[(&'static str, u64)]) -> Result<Vec<(&'static str, u64)>, Error> {
    fallible::try_to_vec(regs).map_err(|_| Error::NoMemory)
}

/// Passes on the first fault of each run [`coalesce_faults`] would merge,
/// without allocating: feed it every fault in order.
#[derive(Debug, Default)]
pub struct FaultCoalescer {
    last: Option<FaultEvent>,
}

impl FaultCoalescer {
    /// Whether `f` starts a new run (and so is to be reported).
    pub fn starts_run(&mut self, f: FaultEvent) -> bool {
        let same = self.last.is_some_and(|first| {
            (first.device, first.reason, first.access) == (f.device, f.reason, f.access)
                && first.address >> 12 == f.address >> 12
        });
        if !same {
            self.last = Some(f);
        }
        !same
    }
}

/// Leaves counted by size without allocating: one counter per power of two.
#[derive(Debug, Clone, Copy)]
pub struct LeafCounts([u64; 64]);

impl Default for LeafCounts {
    fn default() -> Self {
        LeafCounts([0; 64])
    }
}

impl LeafCounts {
    /// Counts a leaf of `size` bytes (a power of two).
    pub fn add(&mut self, size: u64) {
        self.0[size.trailing_zeros().min(63) as usize] += 1;
    }

    /// Hands each (size, count) to `f`, largest first.
    pub fn report(&self, f: &mut dyn FnMut(u64, u64)) {
        for bit in (0..64).rev() {
            if self.0[bit] != 0 {
                f(1u64 << bit, self.0[bit]);
            }
        }
    }
}

/// [`table_leaves`] without allocating: the leaves a table walk finds
/// meeting `[iova, iova + len)`, counted by size, handed to `f` largest
/// first ([`Iommu::for_each_leaf_size`] for drivers with I/O page tables).
pub fn for_each_table_leaf_size(
    for_each_mapping: impl FnOnce(&mut dyn FnMut(u64, u64, u64, Perms)),
    iova: u64,
    len: u64,
    f: &mut dyn FnMut(u64, u64),
) {
    let mut counts = LeafCounts::default();
    let end = iova.saturating_add(len);
    for_each_mapping(&mut |at, size, _, _| {
        if at < end && iova < at + size {
            counts.add(size);
        }
    });
    counts.report(f);
}

/// Counts leaves by size, largest first: the helper drivers use for [`Iommu::leaves`].
pub fn count_leaves(sizes: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for size in sizes {
        match v.iter_mut().find(|(s, _)| *s == size) {
            Some((_, n)) => *n += 1,
            None => v.push((size, 1)),
        }
    }
    v.sort_unstable_by_key(|&(size, _)| core::cmp::Reverse(size));
    v
}

/// The leaves a table walk (`for_each_mapping`, called with the visitor)
/// finds meeting `[iova, iova + len)`, counted by size ([`count_leaves`]):
/// [`Iommu::leaves`] for drivers with I/O page tables.
pub fn table_leaves(
    for_each_mapping: impl FnOnce(&mut dyn FnMut(u64, u64, u64, Perms)),
    iova: u64,
    len: u64,
) -> Vec<(u64, u64)> {
    let mut sizes = Vec::new();
    let end = iova.saturating_add(len);
    for_each_mapping(&mut |at, size, _, _| {
        if at < end && iova < at + size {
            sizes.push(size);
        }
    });
    count_leaves(sizes)
}

/// Unmaps and flushes in one step (for callers that do not batch).
pub fn unmap_and_flush(unit: &mut dyn Iommu, domain: DomainId, iova: u64, len: u64) -> Result<u64, Error> {
    let u = unit.unmap(domain, iova, len)?;
    unit.flush(domain, u.gather)?;
    Ok(u.bytes)
}

/// Whether `[start, end]` (inclusive) overlaps any region in `regions` that
/// must never be used as IOVA (MSI windows and holes; direct maps are usable
/// only as their identity mapping).
pub fn overlaps_reserved(regions: &[Region], start: u64, end: u64) -> Option<Region> {
    regions.iter().copied().find(|r| r.start <= end && start <= r.end)
}

/// Identity-maps `device`'s direct-map regions ([`ReservedKind::DirectMap`]:
/// RMRRs, IVMD unity ranges, RMRs) and interrupt doorbells
/// ([`ReservedKind::MsiDoorbell`], unless an untranslated MSI region of the
/// device already covers the doorbell, as a virtio-iommu's PROBE reports)
/// read/write into paging domain `domain`, using only the trait, so any
/// driver can call it from `attach` before the device is pointed at the
/// domain. Pages already mapped one to one are kept;
/// a page mapped elsewhere is [`io_pgtable::Error::AlreadyMapped`].
pub fn map_direct_regions(unit: &mut dyn Iommu, device: DeviceId, domain: DomainId) -> Result<(), Error> {
    let page = 1u64 << unit.page_sizes().trailing_zeros().min(63);
    // The runs this call mapped, undone if a later one fails (no heap: a
    // device has a handful of direct-map regions; runs beyond the record
    // stay mapped on failure, which is harmless for identity mappings the
    // device needs anyway).
    let mut done = [(0u64, 0u64); 8];
    let mut n = 0;
    let mut result = Ok(());
    'regions: for k in 0.. {
        // The k-th direct-map region, found without collecting them.
        let (mut i, mut found, mut bypassed) = (0usize, None, [(0u64, 0u64); 4]);
        let mut b = 0;
        unit.for_each_reserved(device, &mut |r| {
            if matches!(r.kind, ReservedKind::DirectMap | ReservedKind::MsiDoorbell) {
                if i == k {
                    found = Some(r);
                }
                i += 1;
            } else if r.kind == ReservedKind::Msi && b < bypassed.len() {
                bypassed[b] = (r.start, r.end);
                b += 1;
            }
        });
        let Some(r) = found else { break };
        if r.kind == ReservedKind::MsiDoorbell && bypassed[..b].iter().any(|&(s, e)| s <= r.start && r.end <= e) {
            continue;
        }
        let (start, end) = (r.start & !(page - 1), (r.end | (page - 1)).saturating_add(1));
        let mut at = start;
        while at < end {
            match unit.iova_to_phys(domain, at) {
                Some(pa) if pa == at => at += page,
                Some(_) => {
                    result = Err(Error::Map(io_pgtable::Error::AlreadyMapped(at)));
                    break 'regions;
                }
                None => {
                    let mut run = at + page;
                    while run < end && unit.iova_to_phys(domain, run).is_none() {
                        run += page;
                    }
                    if let Err(e) = unit.map(domain, at, at, run - at, Perms::READ | Perms::WRITE) {
                        result = Err(e);
                        break 'regions;
                    }
                    if n < done.len() {
                        done[n] = (at, run - at);
                        n += 1;
                    }
                    let what = if r.kind == ReservedKind::MsiDoorbell { "MSI doorbell" } else { "direct-map region" };
                    log::info!(
                        "{}: {what} {at:#x}-{:#x} identity-mapped for device {:#06x}",
                        unit.kind().name(),
                        run - 1,
                        device.0
                    );
                    at = run;
                }
            }
        }
    }
    if result.is_err() {
        for &(at, len) in &done[..n] {
            let _ = unmap_and_flush(unit, domain, at, len);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(device: u32, address: u64, reason: u32, access: Access) -> FaultEvent {
        FaultEvent { device: DeviceId(device), address, access, reason, reason_name: "test" }
    }

    #[test]
    fn runs_of_one_dma_coalesce() {
        // One blocked 4 KiB transfer retried 4 bytes at a time, then faults
        // that each differ in one respect from the run before them.
        let mut v: Vec<FaultEvent> = (0..1024).map(|i| fault(8, 0x30_0000 + 4 * i, 2, Access::Write)).collect();
        v.push(fault(8, 0x30_1000, 2, Access::Write)); // next page
        v.push(fault(9, 0x30_1000, 2, Access::Write)); // other device
        v.push(fault(9, 0x30_1004, 5, Access::Write)); // other reason
        v.push(fault(9, 0x30_1008, 5, Access::Write));
        v.push(fault(9, 0x30_100C, 5, Access::Unknown)); // other direction
        let got: Vec<(u32, u64, u32, usize)> =
            coalesce_faults(v).iter().map(|(f, n)| (f.device.0, f.address, f.reason, *n)).collect();
        assert_eq!(
            got,
            [
                (8, 0x30_0000, 2, 1024),
                (8, 0x30_1000, 2, 1),
                (9, 0x30_1000, 2, 1),
                (9, 0x30_1004, 5, 2),
                (9, 0x30_100C, 5, 1)
            ]
        );
        assert!(coalesce_faults(Vec::new()).is_empty());
    }

    #[test]
    fn faults_print_their_direction() {
        assert_eq!(
            alloc::format!("{}", fault(0x10, 0x2000, 2, Access::Unknown)),
            "DMA access fault from device 0x10 at 0x2000: reason 0x2 (test)"
        );
        assert_eq!(Access::from_write(true), Access::Write);
        assert_eq!(Access::from_write(false).name(), "read");
    }
}
