//! [`SmmuIommu`]: one SMMU behind the [`iommu::Iommu`] trait.
//!
//! Policy (as for the VT-d driver): **default deny**. [`SmmuIommu::new`]
//! gives every stream behind the SMMU an abort STE and sets SMMUEN (GBPA
//! aborts while SMMUEN is off, from bring-up on); detaching puts a stream
//! back on its abort STE; a stream ID nobody listed has an invalid STE
//! (C_BAD_STE: aborted, reported). SMMUEN never goes off again.
//! Identity = bypass STE, blocked = abort STE (transactions end silently),
//! paging = stage 1 (a context descriptor with a fresh ASID) or, when the SMMU
//! has no stage 1 or stage 2 is asked for, stage 2 (a fresh VMID).
//!
//! The hardware-specific door ([`crate::user_data`] checks what comes in):
//! - `SMMUV3_ATTRS` domains: paging domains with their own stage and input
//!   size (their aperture), otherwise like any other.
//! - Nest parents: stage-2 paging domains. Nested children (`SMMUV3_STE`):
//!   the owner's stage-1 STE words over the parent's stage 2 (STE.Config =
//!   0b111, §3.3.4); the SMMU fetches the owner's CD and stage-1 tables at
//!   IPAs through the parent's tables. Their TLB entries are tagged with the
//!   owner's ASIDs and the parent's VMID, never 0, the VMID of the kernel's
//!   stage-1 domains, so nothing the owner does reaches other domains' entries.
//! - The owner's invalidation commands go to the queue checked, with the
//!   parent's VMID and the attached streams' IDs put in by the kernel.

use crate::cd;
use crate::cmd::{self, Range, Scope};
use crate::ste;
use crate::unit::{Smmu, SmmuError};
use crate::user_data::{self, Attrs, UserSte};
use abi::iommufd::hwpt_data;
use alloc::vec::Vec;
use fallible::TryMap;
use io_pgtable::formats::ArmLpae;
use io_pgtable::{Gather, PageTable, Perms};
use iommu::dma::DmaRegion;
use iommu::ids::IdAllocator;
use iommu::DmaMemory;
use iommu::{DeviceId, DomainId, DomainKind, Error, FaultEvent, Info, Iommu, Region, UnitKind, Unmapped};

/// Stage-1 tables by default: 4 levels, 48-bit input.
const S1_LEVELS: usize = 4;
/// Stage-2 tables by default: 3 levels, 39-bit input (within QEMU's 44-bit
/// output limit, which also bounds a stage-2 input: §5.2 STE.S2T0SZ).
const S2_LEVELS: usize = 3;
/// Hardware commands per queue submission of user invalidations (each batch
/// ends with a CMD_SYNC; the queue holds 256).
const USER_BATCH: usize = 128;

/// A paging domain's translation stage and its TLB tag.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// Stage 1 with its context descriptor frame.
    Asid { asid: u16, cd: u64 },
    /// Stage 2.
    Vmid(u16),
}

enum Slot {
    /// A page table; `ias` input bits (its aperture); `children`: nested
    /// children over it (stage 2 only).
    Paging {
        table: PageTable<ArmLpae>,
        tag: Tag,
        ias: u32,
        children: u32,
    },
    /// A nested child: the owner's checked stage-1 STE words over `parent`.
    Nested {
        parent: DomainId,
        ste: UserSte,
    },
    Identity,
    Blocked,
}

impl From<SmmuError> for Error {
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::Timeout(what) => Error::Hardware(what),
            SmmuError::NoMemory => Error::NoMemory,
            SmmuError::Unsupported(what) => Error::NotSupported(what),
            SmmuError::BadStream(sid) => Error::NoSuchDevice(DeviceId(sid)),
            SmmuError::Command { .. } => Error::Hardware("SMMU command refused"),
            SmmuError::Map(e) => Error::from(e),
            SmmuError::NoTags => Error::NoDomainIds,
            SmmuError::RegisterOutsideWindow { .. } => Error::Hardware("registers outside the register window"),
            SmmuError::Dma(_) => Error::Hardware("SMMU table or queue access outside its memory"),
        }
    }
}

/// An SMMU driven through the generic IOMMU interface.
pub struct SmmuIommu<M: DmaMemory> {
    /// The hardware (driver-specific calls and tests reach it here).
    pub smmu: Smmu,
    /// Where tables and queues come from.
    pub mem: M,
    devices: Vec<u32>,
    reserved: Vec<(Option<u32>, Region)>,
    domains: TryMap<u32, Slot>,
    next_handle: u32,
    attached: TryMap<u32, DomainId>,
    asids: IdAllocator,
    vmids: IdAllocator,
    use_stage2: bool,
    flushes: u64,
}

/// Leaf sizes of paging domains: 4 KiB, 2 MiB, 1 GiB.
const PAGE_SIZES: u64 = 0x1000 | 0x20_0000 | 0x4000_0000;

/// A nested child's STE for the log, without allocating.
struct Describe<'a>(&'a UserSte);

impl core::fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            UserSte::Abort => f.write_str("abort"),
            UserSte::Bypass => f.write_str("stage-1 bypass, the parent's stage 2 alone"),
            UserSte::Translate(w) => write!(
                f,
                "stage-1 CD at IPA {:#x}",
                iommu::desc::in_place(
                    ste::Ste::from_words([w[0], w[1], 0, 0, 0, 0, 0, 0]).w0,
                    ste::STE0::S1_CONTEXT_PTR
                )
            ),
        }
    }
}

impl<M: DmaMemory + Send + 'static> SmmuIommu<M> {
    /// Takes an SMMU that was just brought up (SMMUEN off, GBPA abort),
    /// gives every stream in `devices` an abort STE and sets SMMUEN (default
    /// deny). `reserved`: its reserved regions, per stream or (`None`) for
    /// all; `prefer_stage2`: paging domains use stage 2 even when stage 1 exists.
    pub fn new(
        smmu: Smmu,
        mem: M,
        devices: Vec<u32>,
        reserved: Vec<(Option<u32>, Region)>,
        prefer_stage2: bool,
    ) -> Result<Self, Error> {
        let use_stage2 = smmu.stage2() && (prefer_stage2 || !smmu.stage1());
        let (asids, vmids) = (IdAllocator::new(1 << smmu.asid_bits()), IdAllocator::new(1 << smmu.vmid_bits()));
        let mut s = SmmuIommu {
            smmu,
            mem,
            devices,
            reserved,
            domains: TryMap::new(),
            next_handle: 1,
            attached: TryMap::new(),
            asids,
            vmids,
            use_stage2,
            flushes: 0,
        };
        for sid in s.devices.clone() {
            s.smmu.write_ste(sid, &ste::abort(), &mut s.mem)?;
        }
        s.smmu.set_translation(true)?;
        log::info!("smmuv3: translation on, {} stream(s) aborted until attached", s.devices.len());
        Ok(s)
    }

    /// Stream IDs behind the SMMU.
    pub fn devices(&self) -> &[u32] {
        &self.devices
    }

    /// Whether paging domains use stage 2.
    pub fn uses_stage2(&self) -> bool {
        self.use_stage2
    }

    /// Whether some stream is attached to a domain (SMMUEN itself is always
    /// on: the others abort).
    pub fn translating(&self) -> bool {
        !self.attached.is_empty()
    }

    /// Input bits of the default paging domains (the unit's aperture).
    fn input_bits(&self) -> u32 {
        if self.use_stage2 {
            12 + 9 * S2_LEVELS as u32
        } else {
            12 + 9 * S1_LEVELS as u32
        }
    }

    /// The defaults of [`Iommu::domain_alloc`]'s paging domains.
    fn default_attrs(&self) -> Attrs {
        Attrs { stage2: self.use_stage2, input_bits: self.input_bits() }
    }

    /// Room for one more domain: callers reserve before they build a slot,
    /// so [`Self::insert`] never allocates.
    fn reserve_domain(&mut self) -> Result<(), Error> {
        self.domains.try_reserve(1).map_err(|_| Error::NoMemory)
    }

    fn insert(&mut self, slot: Slot) -> DomainId {
        let id = DomainId(self.next_handle);
        self.next_handle += 1;
        // Room reserved by the caller (`reserve_domain`): no allocation.
        let _ = self.domains.try_insert(id.0, slot);
        id
    }

    /// The parent's stage 2 as an STE carries it.
    fn stage2_of(&self, domain: DomainId) -> Option<ste::Stage2> {
        match self.domains.get(&domain.0)? {
            Slot::Paging { table, tag: Tag::Vmid(vmid), ias, .. } => Some(ste::Stage2 {
                vmid: *vmid,
                ttb: table.root(),
                ias: *ias,
                levels: table.format().levels,
                ps: self.smmu.oas(),
            }),
            _ => None,
        }
    }

    /// The streams attached to `domain` (`NoMemory` without heap for the list).
    fn streams_of(&self, domain: DomainId) -> Result<Vec<u32>, Error> {
        fallible::try_collect(self.attached.iter().filter(|(_, d)| **d == domain).map(|(&sid, _)| sid))
            .map_err(|_| Error::NoMemory)
    }

    /// Submits user batch number `n` (`cmds`, each from entry `from[i]`);
    /// on a refusal, the entries handled before it and the error.
    fn submit_user_batch(
        &mut self,
        domain: DomainId,
        n: usize,
        cmds: &[cmd::Command],
        from: &[usize],
    ) -> Result<(), (u32, Error)> {
        self.flushes += 1;
        self.smmu.submit_batch(cmds, &mut self.mem).map_err(|(e, at)| {
            // The entries before the refused command's were handled;
            // without a position, those wholly before this batch.
            let handled = from[at.map_or(0, |k| k.min(from.len() - 1))];
            log::warn!("smmuv3: user invalidation batch {n} of domain {}: {e}", domain.0);
            let err = match e {
                SmmuError::Command { .. } => Error::Hardware("SMMU refused a user command"),
                e => Error::from(e),
            };
            (handled as u32, err)
        })
    }

    /// The streams attached to nested children of `parent`.
    fn streams_under(&self, parent: DomainId) -> impl Iterator<Item = u32> + '_ {
        self.attached
            .iter()
            .filter(
                move |(_, d)| matches!(self.domains.get(&d.0), Some(Slot::Nested { parent: p, .. }) if *p == parent),
            )
            .map(|(&sid, _)| sid)
    }

    /// A stage-2 paging domain for nested children (`SMMUV3_STE`), or a plain
    /// paging domain where the SMMU has no stage 2.
    fn nest_parent(&mut self) -> Result<DomainId, Error> {
        if !self.smmu.stage2() {
            return self.domain_alloc(DomainKind::Paging);
        }
        let attrs = Attrs { stage2: true, input_bits: user_data::S2_DEFAULT_BITS };
        let id = self.insert_paging(attrs)?;
        log::info!(
            "smmuv3: domain {}: nest parent, stage 2, {}-bit input ({} levels)",
            id.0,
            attrs.input_bits,
            attrs.levels()
        );
        Ok(id)
    }

    fn insert_paging(&mut self, attrs: Attrs) -> Result<DomainId, Error> {
        self.reserve_domain()?;
        let slot = self.new_paging(attrs)?;
        Ok(self.insert(slot))
    }

    /// A nested child of `parent` from the owner's STE words (§5.2).
    fn nested_child(&mut self, data: &[u8], parent: DomainId) -> Result<DomainId, Error> {
        if !(self.smmu.stage1() && self.smmu.stage2()) {
            return Err(Error::NotSupported("nesting"));
        }
        let Some(s2) = self.stage2_of(parent) else {
            return Err(Error::InvalidData("parent is not a stage-2 domain"));
        };
        let ste = user_data::check_ste(&self.smmu.idr, s2.ias, data)?;
        self.reserve_domain()?;
        if let Some(Slot::Paging { children, .. }) = self.domains.get_mut(&parent.0) {
            *children += 1;
        }
        let id = self.insert(Slot::Nested { parent, ste });
        log::info!(
            "smmuv3: domain {}: nested child of domain {} (VMID {}): {}",
            id.0,
            parent.0,
            s2.vmid,
            Describe(&ste)
        );
        Ok(id)
    }

    fn stream(&self, device: DeviceId) -> Result<u32, Error> {
        Some(device.0).filter(|s| self.devices.contains(s)).ok_or(Error::NoSuchDevice(device))
    }

    fn new_paging(&mut self, attrs: Attrs) -> Result<Slot, Error> {
        let ias = attrs.input_bits;
        if attrs.stage2 {
            let vmid = self.vmids.alloc().ok_or(Error::NoDomainIds)?;
            match PageTable::new(ArmLpae::stage2(attrs.levels()), &mut self.mem) {
                Ok(table) => Ok(Slot::Paging { table, tag: Tag::Vmid(vmid), ias, children: 0 }),
                Err(e) => {
                    self.vmids.free(vmid);
                    Err(e.into())
                }
            }
        } else {
            let asid = self.asids.alloc().ok_or(Error::NoDomainIds)?;
            let fmt = ArmLpae::stage1(attrs.levels(), cd::MAIR_CACHED, cd::MAIR_DEVICE);
            let (table, frame) = match (PageTable::new(fmt, &mut self.mem), DmaRegion::alloc_frame(&mut self.mem)) {
                (Ok(t), Some(f)) => (t, f),
                (t, f) => {
                    if let Ok(t) = t {
                        t.destroy(&mut self.mem);
                    }
                    if let Some(f) = f {
                        f.free_frame(&mut self.mem);
                    }
                    self.asids.free(asid);
                    return Err(Error::NoMemory);
                }
            };
            let desc = cd::stage1(cd::Stage1 { asid, ttb0: table.root(), ias, ips: self.smmu.oas(), mair: cd::MAIR });
            for (i, w) in desc.to_words().into_iter().enumerate() {
                if let Err(e) = frame.write_u64(&mut self.mem, i, w) {
                    table.destroy(&mut self.mem);
                    frame.free_frame(&mut self.mem);
                    self.asids.free(asid);
                    return Err(SmmuError::Dma(e).into());
                }
            }
            Ok(Slot::Paging { table, tag: Tag::Asid { asid, cd: frame.base() }, ias, children: 0 })
        }
    }

    /// The STE that puts a stream in `domain`.
    fn ste_for(&self, domain: DomainId) -> Result<ste::Ste, Error> {
        match self.domains.get(&domain.0) {
            Some(Slot::Identity) => Ok(ste::bypass()),
            Some(Slot::Blocked) => Ok(ste::abort()),
            Some(Slot::Paging { tag: Tag::Asid { cd, .. }, .. }) => Ok(ste::stage1(*cd)),
            Some(Slot::Paging { tag: Tag::Vmid(_), .. }) => {
                self.stage2_of(domain).map(ste::stage2).ok_or(Error::NoSuchDomain(domain))
            }
            Some(Slot::Nested { parent, ste: user }) => {
                let s2 = self.stage2_of(*parent).ok_or(Error::NoSuchDomain(*parent))?;
                Ok(match user {
                    UserSte::Abort => ste::abort(),
                    UserSte::Bypass => ste::stage2(s2),
                    UserSte::Translate(words) => ste::nested(*words, s2),
                })
            }
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn raw_regs(&self) -> [(&'static str, u64); 8] {
        let idr = self.smmu.idr.map(u64::from);
        [
            ("IDR0", idr[0]),
            ("IDR1", idr[1]),
            ("IDR2", idr[2]),
            ("IDR3", idr[3]),
            ("IDR4", idr[4]),
            ("IDR5", idr[5]),
            ("IIDR", u64::from(self.smmu.iidr)),
            ("AIDR", u64::from(self.smmu.aidr)),
        ]
    }

    fn info_with(&self, raw: Vec<(&'static str, u64)>) -> Info {
        Info {
            kind: UnitKind::Smmuv3,
            raw,
            page_sizes: PAGE_SIZES,
            aperture: (0, (1u64 << self.input_bits()) - 1),
            native_identity: true,
        }
    }

    /// The TLB invalidation for `gather` in a domain tagged `tag`.
    fn invalidation(&self, tag: Tag, g: &Gather) -> cmd::Command {
        let ranged = self.smmu.range_invalidation();
        let range = Range::covering(g.start, g.end.max(g.start + 1));
        let scope = range.map(|range| Scope { range, ranged, leaf: !g.has_freed_tables() });
        let one_page = range.is_some_and(|r| r.num == 0 && r.scale == 0);
        match (tag, scope) {
            (Tag::Asid { asid, .. }, Some(s)) if ranged || one_page => cmd::tlbi_nh_va(asid, s),
            (Tag::Vmid(vmid), Some(s)) if ranged || one_page => cmd::tlbi_s2_ipa(vmid, s),
            (Tag::Asid { asid, .. }, _) => cmd::tlbi_nh_asid(asid),
            (Tag::Vmid(vmid), _) => cmd::tlbi_s12_vmall(vmid),
        }
    }
}

impl<M: DmaMemory + Send + 'static> Iommu for SmmuIommu<M> {
    fn describe(&self, what: iommu::describe::Describe, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        use crate::describe::{self as d, StreamTable};
        use iommu::describe::Describe;
        let known = |device: DeviceId| {
            if self.devices.contains(&device.0) {
                Ok(device.0)
            } else {
                Err(Error::NoSuchDevice(device))
            }
        };
        let written = match what {
            Describe::Registers => d::registers(&self.smmu, out),
            Describe::Device(device) => d::device(StreamTable::of(&self.smmu), &self.mem, known(device)?, out),
            Describe::Walk { device, iova } => {
                d::walk(StreamTable::of(&self.smmu), &self.mem, known(device)?, iova, out)
            }
        };
        written.map_err(|_| Error::NoMemory)
    }

    fn info(&self) -> Info {
        self.info_with(iommu::raw_regs(&self.raw_regs()).unwrap_or_default())
    }

    fn try_info(&self) -> Result<Info, Error> {
        Ok(self.info_with(iommu::raw_regs(&self.raw_regs())?))
    }

    fn kind(&self) -> UnitKind {
        UnitKind::Smmuv3
    }

    fn page_sizes(&self) -> u64 {
        PAGE_SIZES
    }

    fn aperture(&self) -> (u64, u64) {
        (0, (1u64 << self.input_bits()) - 1)
    }

    fn serves(&self, device: DeviceId) -> bool {
        self.devices.contains(&device.0)
    }

    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, Error> {
        self.reserve_domain()?;
        let slot = match kind {
            DomainKind::Paging => self.new_paging(self.default_attrs())?,
            DomainKind::Identity => Slot::Identity,
            DomainKind::Blocked => Slot::Blocked,
        };
        Ok(self.insert(slot))
    }

    /// `SMMUV3_ATTRS` (no parent): a paging domain with the stage, granule and
    /// input size asked for ([`user_data::decode_attrs`]). `SMMUV3_STE` (parent: a
    /// stage-2 domain of this SMMU): a nested child ([`user_data::check_ste`]);
    /// needs both stages (IDR0.S1P and S2P, §6.3.1).
    fn domain_alloc_user(&mut self, data_type: u32, data: &[u8], parent: Option<DomainId>) -> Result<DomainId, Error> {
        match (data_type, parent) {
            (hwpt_data::SMMUV3_ATTRS, None) => {
                let attrs = user_data::decode_attrs(&self.smmu.idr, self.use_stage2, data)?;
                let id = self.insert_paging(attrs)?;
                log::info!(
                    "smmuv3: domain {}: stage {}, {}-bit input ({} levels, 4 KiB granule) from driver attributes",
                    id.0,
                    if attrs.stage2 { 2 } else { 1 },
                    attrs.input_bits,
                    attrs.levels()
                );
                Ok(id)
            }
            (hwpt_data::SMMUV3_ATTRS, Some(_)) => Err(Error::InvalidData("driver attributes take no parent")),
            (hwpt_data::SMMUV3_STE, Some(parent)) => self.nested_child(data, parent),
            (hwpt_data::SMMUV3_STE, None) => Err(Error::InvalidData("a nested domain needs a parent")),
            _ => Err(Error::NotSupported("driver data type")),
        }
    }

    /// A stage-2 domain (VMID, 3-level 39-bit tables) where the SMMU has
    /// stage 2; a plain paging domain otherwise.
    fn domain_alloc_nest_parent(&mut self) -> Result<DomainId, Error> {
        self.nest_parent()
    }

    /// `SMMUV3_STE` entries ([`abi::iommufd::HwptSmmuv3Command`]) for a nested
    /// child, checked by [`user_data::check_commands`]: the accepted ones go to the
    /// queue (CFGI_CD* once per stream attached to the child) in batches,
    /// each closed by a CMD_SYNC. A command the SMMU refuses (CERROR, §4.7.3)
    /// is [`Error::Hardware`], and only the entries before it count as handled.
    fn invalidate_user(
        &mut self,
        domain: DomainId,
        data_type: u32,
        entries: &[u8],
        entry_len: usize,
    ) -> (u32, Result<(), Error>) {
        let parent = match self.domains.get(&domain.0) {
            Some(Slot::Nested { parent, .. }) => *parent,
            Some(_) => return (0, Err(Error::InvalidData("not a nested domain"))),
            None => return (0, Err(Error::NoSuchDomain(domain))),
        };
        if data_type != hwpt_data::SMMUV3_STE {
            return (0, Err(Error::NotSupported("invalidation data type")));
        }
        let Some(s2) = self.stage2_of(parent) else { return (0, Err(Error::NoSuchDomain(parent))) };
        let (accepted, stop) = user_data::check_commands(&self.smmu.idr, s2.vmid, entries, entry_len);
        let streams = match self.streams_of(domain) {
            Ok(s) => s,
            Err(e) => return (0, Err(e)),
        };
        // Hardware commands in batches on the stack, each with the index
        // of the entry it came from.
        let (mut batch, mut from) = ([[0u64; 2]; USER_BATCH], [0usize; USER_BATCH]);
        let (mut len, mut n) = (0, 0);
        for (i, c) in accepted.iter().enumerate() {
            for hw in c.commands(&streams) {
                (batch[len], from[len]) = (hw, i);
                len += 1;
                if len == USER_BATCH {
                    if let Err((handled, e)) = self.submit_user_batch(domain, n, &batch, &from) {
                        return (handled, Err(e));
                    }
                    (len, n) = (0, n + 1);
                }
            }
        }
        if len > 0 {
            if let Err((handled, e)) = self.submit_user_batch(domain, n, &batch[..len], &from[..len]) {
                return (handled, Err(e));
            }
        }
        (accepted.len() as u32, stop.map_or(Ok(()), Err))
    }

    fn domain_free(&mut self, domain: DomainId) -> Result<(), Error> {
        if !self.domains.contains_key(&domain.0) {
            return Err(Error::NoSuchDomain(domain));
        }
        if self.attached.values().any(|d| *d == domain) {
            return Err(Error::Busy(domain));
        }
        if let Some(Slot::Paging { children, .. }) = self.domains.get(&domain.0) {
            if *children > 0 {
                return Err(Error::Busy(domain));
            }
        }
        match self.domains.remove(&domain.0) {
            Some(Slot::Paging { table, tag, .. }) => {
                table.destroy(&mut self.mem);
                match tag {
                    Tag::Asid { asid, cd } => {
                        let _ = self.smmu.submit(&[cmd::tlbi_nh_asid(asid)], &mut self.mem);
                        self.mem.free_table(cd);
                        self.asids.free(asid);
                    }
                    Tag::Vmid(vmid) => {
                        let _ = self.smmu.submit(&[cmd::tlbi_s12_vmall(vmid)], &mut self.mem);
                        self.vmids.free(vmid);
                    }
                }
            }
            Some(Slot::Nested { parent, .. }) => {
                // No stream uses the child any more (its STEs were replaced,
                // and CFGI_STE dropped the CDs cached under them, §4.3.1);
                // the stage-1 entries its owner's ASIDs left under the
                // parent's VMID go now.
                if let Some(Slot::Paging { tag: Tag::Vmid(vmid), children, .. }) = self.domains.get_mut(&parent.0) {
                    *children = children.saturating_sub(1);
                    let vmid = *vmid;
                    let _ = self.smmu.submit(&[cmd::tlbi_nh_all(vmid)], &mut self.mem);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), Error> {
        let sid = self.stream(device)?;
        let entry = self.ste_for(domain)?;
        // The ITS doorbell (and any RMR) identity-mapped before the stream
        // can reach the domain: its MSIs are translated like its DMA.
        if matches!(self.domains.get(&domain.0), Some(Slot::Paging { .. })) {
            iommu::map_direct_regions(self, device, domain)?;
        }
        // Room for the record before the STE changes.
        if !self.attached.contains_key(&sid) {
            self.attached.try_reserve(1).map_err(|_| Error::NoMemory)?;
        }
        if let Err(e) = self.smmu.write_ste(sid, &entry, &mut self.mem) {
            let _ = self.smmu.write_ste(sid, &ste::abort(), &mut self.mem);
            self.attached.remove(&sid);
            return Err(e.into());
        }
        let _ = self.attached.try_insert(sid, domain); // reserved: no allocation
        Ok(())
    }

    /// Gives the stream its abort STE; `write_ste` ends with CFGI_STE and a
    /// CMD_SYNC, so the SMMU has dropped the old configuration (and its TLB
    /// entries are unreachable) when this returns.
    fn detach(&mut self, device: DeviceId) -> Result<(), Error> {
        let sid = self.stream(device)?;
        self.smmu.write_ste(sid, &ste::abort(), &mut self.mem)?;
        self.attached.remove(&sid);
        Ok(())
    }

    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.attached.get(&device.0).copied()
    }

    fn devices(&self) -> Vec<DeviceId> {
        self.devices.iter().map(|&s| DeviceId(s)).collect()
    }

    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), Error> {
        let beyond = |bits: u32| len > 0 && iova.checked_add(len - 1).is_none_or(|last| last >> bits != 0);
        let unit_bits = self.input_bits();
        match self.domains.get_mut(&domain.0) {
            // Each paging domain's aperture is its own input size.
            Some(Slot::Paging { ias, .. }) if beyond(*ias) => Err(Error::OutOfAperture { iova, len }),
            // New entries replace invalid ones, which the SMMU never caches:
            // nothing to invalidate (§3.21.3).
            Some(Slot::Paging { table, .. }) => {
                let t = self.smmu.tracer();
                iommu::trace!(t, "map domain={:#x} iova={iova:#x} pa={pa:#x} len={len:#x} {perms:?}", domain.0);
                table.map(&mut self.mem, iova, pa, len, perms)?.release(&mut self.mem);
                Ok(())
            }
            _ if beyond(unit_bits) => Err(Error::OutOfAperture { iova, len }),
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<Unmapped, Error> {
        match self.domains.get_mut(&domain.0) {
            Some(Slot::Paging { table, .. }) => {
                let (bytes, gather) = table.unmap(&mut self.mem, iova, len)?;
                Ok(Unmapped { bytes, gather })
            }
            Some(_) => Err(Error::NotPaging(domain)),
            None => Err(Error::NoSuchDomain(domain)),
        }
    }

    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), Error> {
        let (tag, children) = match self.domains.get(&domain.0) {
            Some(Slot::Paging { tag, children, .. }) => (*tag, *children),
            other => {
                gather.release(&mut self.mem);
                return if other.is_some() { Ok(()) } else { Err(Error::NoSuchDomain(domain)) };
            }
        };
        if !gather.is_empty() {
            // One TLBI for the whole gather (a range when IDR3.RIL, else the
            // page or the whole ASID / VMID), then the CMD_SYNC `submit` adds.
            let first = self.invalidation(tag, &gather);
            self.flushes += 1;
            if let (Tag::Vmid(vmid), true) = (tag, children > 0) {
                // A nest parent: TLBI_S2_IPA leaves the combined stage-1 +
                // stage-2 entries of its children (§4.4.3.1), which go with
                // TLBI_NH_ALL; QEMU also keeps the stage-2 translation of the
                // children's CD and table pointers in its configuration cache,
                // which CFGI_STE of their streams drops (§4.3.1). Sent in
                // batches from a buffer on the stack (no heap).
                let mut batch = [first; USER_BATCH];
                batch[1] = cmd::tlbi_nh_all(vmid);
                let (mut n, mut done) = (2, 0);
                loop {
                    let mut more = false;
                    for sid in self.streams_under(domain).skip(done) {
                        if n == batch.len() {
                            more = true;
                            break;
                        }
                        batch[n] = cmd::cfgi_ste(sid);
                        n += 1;
                        done += 1;
                    }
                    self.smmu.submit(&batch[..n], &mut self.mem)?;
                    if !more {
                        break;
                    }
                    n = 0;
                }
            } else {
                self.smmu.submit(&[first], &mut self.mem)?;
            }
        }
        gather.release(&mut self.mem);
        Ok(())
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        match self.domains.get(&domain.0)? {
            Slot::Paging { table, .. } => table.iova_to_phys(&self.mem, iova),
            Slot::Identity => Some(iova),
            // The owner's stage 1 is not the kernel's to walk.
            Slot::Blocked | Slot::Nested { .. } => None,
        }
    }

    /// Events of one faulting DMA are merged ([`iommu::coalesce_faults`]):
    /// QEMU queues one per 4-byte retry of a blocked transfer.
    fn drain_faults(&mut self) -> Vec<FaultEvent> {
        let mut out = Vec::new();
        self.drain_faults_with(&mut |f| out.push(f));
        out
    }

    fn drain_faults_with(&mut self, f: &mut dyn FnMut(FaultEvent)) {
        let mut runs = iommu::FaultCoalescer::default();
        self.smmu.take_events_with(&self.mem, &mut |e| {
            let event = FaultEvent {
                device: DeviceId(e.stream),
                address: e.address,
                access: iommu::Access::from_write(!e.read),
                reason: u32::from(e.kind.0),
                reason_name: e.kind.name(),
            };
            if runs.starts_run(event) {
                f(event);
            }
        });
    }

    fn for_each_reserved(&self, device: DeviceId, f: &mut dyn FnMut(Region)) {
        self.reserved.iter().filter(|(d, _)| d.is_none_or(|d| d == device.0)).for_each(|(_, r)| f(*r));
    }

    fn for_each_leaf_size(&self, domain: DomainId, iova: u64, len: u64, f: &mut dyn FnMut(u64, u64)) {
        let Some(Slot::Paging { table, .. }) = self.domains.get(&domain.0) else { return };
        iommu::for_each_table_leaf_size(|g| table.for_each_mapping(&self.mem, g), iova, len, f);
    }

    fn reserved_regions(&self, device: DeviceId) -> Vec<Region> {
        self.reserved.iter().filter(|(d, _)| d.is_none_or(|d| d == device.0)).map(|(_, r)| *r).collect()
    }

    fn shrink(&mut self) {
        self.domains.shrink();
        self.attached.shrink();
    }

    fn flushes(&self) -> u64 {
        self.flushes
    }

    fn leaves(&self, domain: DomainId, iova: u64, len: u64) -> Vec<(u64, u64)> {
        let Some(Slot::Paging { table, .. }) = self.domains.get(&domain.0) else { return Vec::new() };
        iommu::table_leaves(|f| table.for_each_mapping(&self.mem, f), iova, len)
    }

    fn describe_queue(&self, out: &mut dyn core::fmt::Write) -> Result<(), Error> {
        self.smmu.describe_queue(out).map_err(|_| Error::NoMemory)
    }

    fn tracer(&self) -> iommu::trace::Tracer {
        self.smmu.tracer()
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
