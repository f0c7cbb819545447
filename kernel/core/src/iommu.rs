//! Glue for IOMMU drivers: page-table frames from the kernel frame allocator,
//! reached through the direct map (the `io-pgtable` frame seam), and the
//! registry of the units brought up at boot.

use crate::mm;
use alloc::boxed::Box;
use alloc::vec::Vec;
use crossbeam_utils::CachePadded;

/// Every registered unit, each under its own lock (docs/smp.md), in
/// registration order; the list only grows, at boot.
static DRIVERS: spin::Mutex<Vec<&'static crate::shared_unit::UnitLock>> = spin::Mutex::new(Vec::new());
/// Per CPU, a [`crate::shared_unit::SharedUnit`] per registered unit: what
/// [`with_units`] lends, locked by its CPU alone (so never contended: a
/// call holding it runs on that CPU from start to end).
static PROXIES: [spin::Mutex<Vec<Box<dyn iommu::Iommu>>>; crate::cpu::MAX_CPUS] =
    [const { spin::Mutex::new(Vec::new()) }; crate::cpu::MAX_CPUS];
/// The topology index of each registered unit (same order as `DRIVERS`).
static TOPOLOGY_INDEX: spin::Mutex<Vec<usize>> = spin::Mutex::new(Vec::new());

/// Reserves the firmware's direct-map regions (RMRR, IVMD unity, IORT RMR) in
/// the frame allocator, so the kernel never hands out memory that devices may
/// still be using, then brings up every unit the platform has a driver for.
pub fn init(boot: &bootinfo::BootInfo) {
    let Some(topo) = crate::pci::topology() else { return };
    for r in topo.reserved().iter().filter(|r| r.kind == topology::ReservedKind::DirectMap) {
        let end = r.end.saturating_add(1);
        let taken = mm::frames_taken(boot, r.start, end);
        if taken > 0 {
            log::error!(
                "iommu: direct-map region {:#x}-{:#x} overlaps {taken} frame(s) the kernel already uses",
                r.start,
                r.end
            );
        }
        match mm::reserve_range(r.start, end) {
            Ok(()) => {
                log::info!("iommu: direct-map region {:#x}-{:#x} kept out of the frame allocator", r.start, r.end)
            }
            Err(e) => log::error!("iommu: cannot reserve {:#x}-{:#x}: {e:?}", r.start, r.end),
        }
    }
    // `trace=1` / `trace=vtd0,smmu0`: before the drivers register their units.
    if let Err(name) = iommu::trace::configure(boot.cmdline_value("trace")) {
        log::warn!("iommu: trace={name}: not a unit trace name (vtd0, amdvi0, smmu0, virtio0, ...)");
    }
    let mut units = crate::platform().iommu_units(boot, topo);
    for (index, _) in topo.units().iter().enumerate().filter(|(_, u)| u.kind == topology::IommuKind::NoIommu) {
        let devices = unit_devices(topo, index).into_iter().map(iommu::DeviceId).collect();
        units.push((index, alloc::boxed::Box::new(iommu::noiommu::NoIommu::new(devices))));
    }
    if !units.is_empty() {
        log::info!("iommu: {} unit(s) registered", units.len());
    }
    for (index, unit) in units {
        let t = unit.tracer();
        if t.on() {
            log::info!("iommu: {} traces as {}", topo.units().get(index).map_or("?", |u| u.name.as_str()), t.name());
        }
        TOPOLOGY_INDEX.lock().push(index);
        register(unit);
    }
    place_functions(topo);
    apply_boot_policy(boot);
}

/// Another ID a unit looks a PCI function's DMA up under, besides the one
/// the topology gives it (a model's quirk: QEMU 10.0's AMD-Vi, `amdvi::qemu`).
/// The platform notes each one while it builds the unit's driver (which
/// programs both entries alike); the grouping links the functions that
/// share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAlias {
    /// The unit's topology index.
    pub unit: usize,
    /// The ID the topology gives the function(s).
    pub id: u32,
    /// The other ID their DMA is (also) looked up under.
    pub alias: u32,
    /// Log prefix (`amdvi`).
    pub who: &'static str,
    /// Why, for the boot log ("by QEMU 10.0 (...)").
    pub why: &'static str,
}

static DMA_ALIASES: spin::Mutex<Vec<DmaAlias>> = spin::Mutex::new(Vec::new());

/// Records `alias` (before the units are registered; see [`DmaAlias`]).
pub fn note_dma_alias(alias: DmaAlias) {
    let mut all = DMA_ALIASES.lock();
    if !all.contains(&alias) {
        all.push(alias);
    }
}

/// Where one PCI function's DMA goes, computed once after the units are
/// registered: its unit (registry index) and ID, and its IOMMU group.
struct Placement {
    bdf: pci::Bdf,
    unit: Option<(usize, iommu::DeviceId)>,
    /// Index (in enumeration order) of the group's first member.
    group: usize,
}

static PLACEMENTS: spin::Mutex<Vec<Placement>> = spin::Mutex::new(Vec::new());

/// Whether `f` only forwards other functions' DMA and issues none of its own:
/// a host bridge, or a PCI-to-PCI bridge / PCIe port (type 1 header). Such a
/// function never joins an IOMMU group through a shared ID
/// (`iommu::groups` says why that is safe); ISA / LPC bridges (ISA DMA) and
/// every endpoint do.
pub fn forwards_only(f: &pci::Function) -> bool {
    f.is_bridge() || (f.class >> 8) & 0xFFFF == 0x0600
}

/// The slot of `f` when it is one of several functions of a device and has
/// no ACS capability (extended capability 000Dh, PCIe 4.0 §7.7.8): such
/// functions may reach each other without the IOMMU (`iommu::groups`).
fn peer_slot(f: &pci::Function, all: &[pci::Function]) -> Option<(u16, u8, u8)> {
    const ACS: u16 = 0x000D;
    let slot = |g: &pci::Function| (g.bdf.segment, g.bdf.bus, g.bdf.dev);
    let siblings = all.iter().filter(|g| slot(g) == slot(f)).count();
    let acs = f.caps.extended.iter().any(|&(id, _, _)| id == ACS);
    (siblings > 1 && !acs).then_some(slot(f))
}

/// Computes every function's unit, ID and group (after the units are
/// registered, before any claim), and logs each function that is looked up
/// under an extra ID, with the reason and its group.
fn place_functions(topo: &topology::Topology) {
    use iommu::groups::{self, Member};
    let all = crate::pci::functions();
    let aliases = DMA_ALIASES.lock().clone();
    let mut units = Vec::new();
    let mut members = Vec::new();
    for f in all {
        let t = topo.translate_pci(f.bdf.segment, pci::dma_requester_id(f, all));
        let placed = t.and_then(|t| Some((registered(t.unit)?, t)));
        let ids = placed.map(|(unit, t)| {
            let mut ids = alloc::vec![t.id];
            ids.extend(aliases.iter().filter(|a| a.unit == t.unit && a.id == t.id).map(|a| a.alias));
            (unit, ids)
        });
        units.push(placed.map(|(unit, t)| (unit, iommu::DeviceId(t.id))));
        members.push(Member { ids, forwards_only: forwards_only(f), peer_slot: peer_slot(f, all) });
    }
    let group = groups::groups(&members);
    for (i, f) in all.iter().enumerate() {
        let Some((unit, own)) = units[i] else { continue };
        let Some(topo_unit) = topology_index(unit) else { continue };
        for a in aliases.iter().filter(|a| a.unit == topo_unit && a.id == own.0) {
            let with: Vec<alloc::string::String> = (0..all.len())
                .filter(|&j| j != i && group[j] == group[i])
                .map(|j| alloc::format!("{}", all[j].bdf))
                .collect();
            let outside: Vec<alloc::string::String> = groups::sharing(&members, i)
                .into_iter()
                .filter(|&j| group[j] != group[i])
                .map(|j| {
                    let kind = if all[j].is_bridge() { "a bridge" } else { "a host bridge" };
                    alloc::format!("{} ({kind}: forwards DMA, issues none; not grouped)", all[j].bdf)
                })
                .collect();
            let with = if with.is_empty() { "no other function".into() } else { with.join(", ") };
            let outside = if outside.is_empty() {
                alloc::string::String::new()
            } else {
                alloc::format!("; sharing it: {}", outside.join(", "))
            };
            log::warn!(
                "{}: {} is translated {} through DeviceID {:#06x}, not its own {:#06x}; programming both entries, grouped with {with}{outside}",
                a.who,
                f.bdf,
                a.why,
                a.alias,
                a.id
            );
        }
    }
    let mut placements = PLACEMENTS.lock();
    placements.clear();
    placements.extend(all.iter().zip(units).zip(group).map(|((f, unit), group)| Placement { bdf: f.bdf, unit, group }));
}

/// The IDs unit `index` of `topology` sees the PCI functions behind it by
/// (requester IDs after aliasing, or stream IDs), sorted, without repeats.
pub fn unit_devices(topology: &topology::Topology, index: usize) -> Vec<u32> {
    let functions = crate::pci::functions();
    let mut ids: Vec<u32> = functions
        .iter()
        .filter_map(|f| topology.translate_pci(f.bdf.segment, pci::dma_requester_id(f, functions)))
        .filter(|t| t.unit == index)
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The IOMMU contract's name for what firmware reserved a region for.
fn reserved_kind(kind: topology::ReservedKind) -> iommu::ReservedKind {
    match kind {
        topology::ReservedKind::DirectMap => iommu::ReservedKind::DirectMap,
        topology::ReservedKind::Msi => iommu::ReservedKind::Msi,
        topology::ReservedKind::MsiDoorbell => iommu::ReservedKind::MsiDoorbell,
        topology::ReservedKind::Reserved => iommu::ReservedKind::Reserved,
    }
}

/// Reserved regions of unit `index`, per device ID (`None`: every device),
/// for the devices in `devices`.
pub fn unit_reserved(
    topology: &topology::Topology,
    index: usize,
    devices: &[u32],
) -> Vec<(Option<u32>, iommu::Region)> {
    let mut out = Vec::new();
    for r in topology.reserved().iter().filter(|r| r.unit == index) {
        let region = iommu::Region { start: r.start, end: r.end, kind: reserved_kind(r.kind) };
        match r.devices {
            None => out.push((None, region)),
            Some((_, m)) => out.extend(
                devices
                    .iter()
                    .filter(|&&id| u16::try_from(id).is_ok_and(|rid| m.covers(rid)))
                    .map(|&id| (Some(id), region)),
            ),
        }
    }
    out
}

/// The registry index of the unit the topology lists at `topology_index`.
pub fn registered(topology_index: usize) -> Option<usize> {
    TOPOLOGY_INDEX.lock().iter().position(|&i| i == topology_index)
}

/// The topology index of registered unit `unit`.
pub fn topology_index(unit: usize) -> Option<usize> {
    TOPOLOGY_INDEX.lock().get(unit).copied()
}

/// The firmware name (`dmar0`, `smmu0`) of registered unit `unit` ("" if unknown).
pub fn unit_name(unit: usize) -> &'static str {
    topology_index(unit)
        .and_then(|t| crate::pci::topology().and_then(|topo| topo.units().get(t).map(|u| u.name.as_str())))
        .unwrap_or_default()
}

/// Turns registered unit `unit`'s register trace on or off
/// ([`iommu::trace`](mod@iommu::trace); by name: `iommu::trace::set("vtd0", on)`); `None` if
/// there is no such unit.
pub fn set_trace(unit: usize, on: bool) -> Option<()> {
    with_units(|units| units.get(unit).map(|u| u.tracer().set(on)))
}

/// Writes registered unit `unit`'s recent queue entries
/// ([`iommu::Iommu::describe_queue`]).
pub fn describe_queue(unit: usize, out: &mut dyn core::fmt::Write) -> Result<(), iommu::Error> {
    with_units(|units| units.get(unit).ok_or(iommu::Error::NotSupported("no such unit"))?.describe_queue(out))
}

/// Takes every fault the registered units recorded, logs each (decoded),
/// keeps it among the recent ones ([`recent_faults`]) and hands each to `f`
/// with the registry index of its unit (allocates nothing).
pub fn take_faults(f: &mut dyn FnMut(usize, iommu::FaultEvent)) {
    with_units(|units| {
        for (i, u) in units.iter_mut().enumerate() {
            u.drain_faults_with(&mut |e| {
                log::warn!("iommu: {}: {e}", unit_name(i));
                RECENT_FAULTS.lock().push(i, e);
                f(i, e);
            });
        }
    })
}

/// Faults [`recent_faults`] keeps.
const RECENT: usize = 64;

/// The last [`RECENT`] faults, numbered from 0 in the order they were taken.
struct RecentFaults {
    slots: [Option<(u64, usize, iommu::FaultEvent)>; RECENT],
    next: u64,
}

impl RecentFaults {
    fn push(&mut self, unit: usize, e: iommu::FaultEvent) {
        self.slots[(self.next % RECENT as u64) as usize] = Some((self.next, unit, e));
        self.next += 1;
    }
}

static RECENT_FAULTS: spin::Mutex<RecentFaults> = spin::Mutex::new(RecentFaults { slots: [None; RECENT], next: 0 });

/// Hands `f` each kept fault numbered `from` or later, oldest first, as
/// (sequence number, unit's registry index, fault); returns the number the
/// next fault will get. Only what [`take_faults`] took is here: a caller
/// that wants the latest collects them first, through the path that also
/// delivers them to their owners' fault queues.
pub fn recent_faults(from: u64, f: &mut dyn FnMut(u64, usize, iommu::FaultEvent)) -> u64 {
    let kept = RECENT_FAULTS.lock();
    let first = kept.next.saturating_sub(RECENT as u64).max(from);
    for seq in first..kept.next {
        if let Some((n, unit, e)) = kept.slots[(seq % RECENT as u64) as usize] {
            if n == seq {
                f(n, unit, e);
            }
        }
    }
    kept.next
}

/// Frames the units' drivers hold in tables now (device / stream tables,
/// queues, every domain's page tables), through the kernel's table memory.
pub fn table_frames() -> usize {
    TABLE_FRAMES.load(core::sync::atomic::Ordering::Relaxed)
}

/// Frames handed out to IOMMU drivers and not given back.
static TABLE_FRAMES: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// Per CPU, table frames taken minus given back by code running there: an
/// iommufd call runs on one CPU from start to end (a task is never
/// preempted in the kernel), so the change of its CPU's count over the call
/// is the call's own, whatever other CPUs do meanwhile.
static CPU_TABLE_FRAMES: [CachePadded<core::sync::atomic::AtomicI64>; crate::cpu::MAX_CPUS] =
    [const { CachePadded::new(core::sync::atomic::AtomicI64::new(0)) }; crate::cpu::MAX_CPUS];

/// The running CPU's count of table frames taken minus given back (one counter per CPU).
pub fn cpu_table_frames() -> i64 {
    CPU_TABLE_FRAMES[crate::cpu::index()].load(core::sync::atomic::Ordering::Relaxed)
}

fn count_table_frames(delta: i64) {
    if delta >= 0 {
        TABLE_FRAMES.fetch_add(delta as usize, core::sync::atomic::Ordering::Relaxed);
    } else {
        TABLE_FRAMES.fetch_sub(delta.unsigned_abs() as usize, core::sync::atomic::Ordering::Relaxed);
    }
    CPU_TABLE_FRAMES[crate::cpu::index()].fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

/// Registers a unit: its lock lives for good, and every CPU gets a proxy
/// for it. Out of memory at boot, the unit is left out (logged).
fn register(unit: Box<dyn iommu::Iommu>) {
    let Ok(lock) = fallible::try_box(spin::Mutex::new(unit)) else {
        log::error!("iommu: no memory to register a unit; it is left out");
        return;
    };
    let lock: &'static crate::shared_unit::UnitLock = Box::leak(lock);
    for proxies in PROXIES.iter() {
        let proxy: Box<dyn iommu::Iommu> = Box::new(crate::shared_unit::SharedUnit(lock));
        proxies.lock().push(proxy);
    }
    DRIVERS.lock().push(lock);
}

/// Runs `f` on the registered units (in topology order): this CPU's
/// proxies, each call of which takes its unit's own lock. Not reentrant (a
/// nested call on the same CPU would wait for itself).
pub fn with_units<R>(f: impl FnOnce(&mut [Box<dyn iommu::Iommu>]) -> R) -> R {
    f(&mut PROXIES[crate::cpu::index()].lock())
}

/// Runs `f` on the drivers themselves (for kernel tests that reach a
/// driver's own type), every unit's lock held, in registration order.
pub fn with_drivers<R>(f: impl FnOnce(&mut [&mut dyn iommu::Iommu]) -> R) -> R {
    let locks: Vec<&'static crate::shared_unit::UnitLock> = DRIVERS.lock().clone();
    let mut guards: Vec<spin::MutexGuard<'static, Box<dyn iommu::Iommu>>> = locks.iter().map(|l| l.lock()).collect();
    let mut drivers: Vec<&mut dyn iommu::Iommu> =
        guards.iter_mut().map(|g| &mut ***g as &mut dyn iommu::Iommu).collect();
    f(&mut drivers)
}

impl iommu::DmaMemory for KernelTables {
    fn alloc_contiguous(&mut self, frames: usize) -> Option<u64> {
        let pa = mm::alloc_frames(frames, frames)?;
        self.live += frames;
        count_table_frames(frames as i64);
        Some(pa)
    }

    fn free_contiguous(&mut self, base: u64, frames: usize) {
        for i in 0..frames as u64 {
            if mm::free_frame(base + i * 4096).is_ok() {
                self.live -= 1;
                count_table_frames(-1);
            }
        }
    }
}

/// [`io_pgtable::TableMemory`] over kernel frames.
#[derive(Debug, Default)]
pub struct KernelTables {
    /// Frames currently allocated through this value.
    pub live: usize,
}

impl io_pgtable::TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = mm::alloc_frame()?;
        self.live += 1;
        count_table_frames(1);
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        if mm::free_frame(pa).is_ok() {
            self.live -= 1;
            count_table_frames(-1);
        }
    }

    fn read(&self, table: u64, index: usize) -> u64 {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *const u64;
        // SAFETY: `table` is a frame handed out by `alloc_table` (still allocated), reached through the direct map; the index stays inside the frame.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        let p = (mm::phys_to_virt(table) + (index as u64 % 512) * 8) as *mut u64;
        // SAFETY: as in `read`; the IOMMU walks these tables coherently (QEMU), real hardware without coherent walks would need a cache flush here.
        unsafe { p.write_volatile(value) }
    }
}

/// The registered unit that translates PCI function `bdf` and the ID it
/// knows the function by (requester ID after aliasing, or stream ID); `None`
/// when no registered unit does (no IOMMU, or its bring-up failed). Computed
/// once at boot ([`init`]).
pub fn unit_of(bdf: pci::Bdf) -> Option<(usize, iommu::DeviceId)> {
    PLACEMENTS.lock().iter().find(|p| p.bdf == bdf)?.unit
}

/// The IOMMU group of `bdf` (`iommu::groups`): every function its unit
/// cannot tell apart from it — the same unit and an ID in common after
/// aliasing (the functions behind one PCIe-to-PCI bridge), including extra
/// IDs the unit looks functions up under ([`DmaAlias`]) — `bdf` included,
/// in enumeration order. Host bridges and bridges never join through a
/// shared ID; a function no registered unit translates is a group of its own.
pub fn group_of(bdf: pci::Bdf) -> Result<Vec<pci::Bdf>, fallible::AllocError> {
    let placements = PLACEMENTS.lock();
    let Some(me) = placements.iter().find(|p| p.bdf == bdf) else { return fallible::try_to_vec(&[bdf]) };
    fallible::try_collect(placements.iter().filter(|p| p.group == me.group).map(|p| p.bdf))
}

/// A small number naming `bdf`'s group in `device_list` (the index of its
/// first member in enumeration order, plus one; 0 is never a group).
pub fn group_id(bdf: pci::Bdf) -> u32 {
    let first = match PLACEMENTS.lock().iter().find(|p| p.bdf == bdf) {
        Some(p) => Some(p.group),
        // No topology: every function is a group of its own.
        None => crate::pci::devices().iter().position(|d| d.function.bdf == bdf),
    };
    first.map_or(0, |i| i as u32 + 1)
}

/// Blocks `bdf`'s DMA at its unit ([`iommu::Iommu::detach`]): when this
/// returns `Ok` the unit has forgotten every translation of it. A function
/// no registered unit translates is `Ok` (nothing to block; see
/// [`protected`]).
pub fn block(bdf: pci::Bdf) -> Result<(), iommu::Error> {
    let Some((unit, id)) = unit_of(bdf) else { return Ok(()) };
    with_units(|units| units[unit].detach(id))
}

/// Asks `bdf`'s unit for an interrupt-remapping entry delivering `target`
/// ([`iommu::Iommu::msi_remap`]): the message to program into the device,
/// or `None` when no registered unit remaps its interrupts (the caller then
/// programs `target` itself, unconfined).
pub fn msi_remap(bdf: pci::Bdf, target: iommu::MsiTarget) -> Result<Option<iommu::MsiMessage>, iommu::Error> {
    let Some((unit, id)) = unit_of(bdf) else { return Ok(None) };
    with_units(|units| units[unit].msi_remap(id, target))
}

/// Removes the entry [`msi_remap`] made for `bdf` and `vector`; afterwards
/// that message from the device is blocked.
pub fn msi_unmap(bdf: pci::Bdf, vector: u8) -> Result<(), iommu::Error> {
    let Some((unit, id)) = unit_of(bdf) else { return Ok(()) };
    with_units(|units| {
        let r = units[unit].msi_unmap(id, vector);
        units[unit].shrink();
        r
    })
}

/// Whether a registered unit translates `bdf` (so its DMA can be confined):
/// only then may a task turn its Bus Master bit on.
pub fn protected(bdf: pci::Bdf) -> bool {
    unit_of(bdf).is_some()
}

/// Whether `bdf`'s DMA writes into the interrupt window are confined. On x86
/// such a write *is* an interrupt message, which no DMA translation stops: a
/// device can send any vector, an NMI or an INIT (a CPU reset) unless its
/// unit remaps interrupts. On aarch64 the doorbell (the GIC ITS) is reached
/// through the device's own translation, is never mapped for a task, and
/// translates only the (DeviceID, EventID) pairs the kernel mapped for the
/// writing device (`drivers/gic-its`).
pub fn interrupts_confined(bdf: pci::Bdf) -> bool {
    if crate::platform().arch() != "x86_64" {
        return true;
    }
    let Some((unit, _)) = unit_of(bdf) else { return false };
    with_units(|units| units[unit].remaps_interrupts())
}

/// Whether `bdf` sits behind the no-IOMMU unit (nothing translates it).
pub fn behind_noiommu(bdf: pci::Bdf) -> bool {
    unit_of(bdf).is_some_and(|(unit, _)| with_units(|units| units[unit].identity_only()))
}

/// `iommu.unsafe_interrupts=allow` on the command line: a task may turn Bus
/// Master on for a function whose interrupts are not confined
/// ([`interrupts_confined`]); off by default, as Linux's
/// `iommufd.allow_unsafe_interrupts`.
pub fn unsafe_interrupts_allowed() -> bool {
    crate::cmdline_value("iommu.unsafe_interrupts") == Some("allow")
}

/// What devices nobody claimed get at boot (`iommu.unclaimed=` on the
/// command line): `blocked` (the default) or `identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnclaimedPolicy {
    /// No DMA until a task (or the kernel) attaches the device.
    Blocked,
    /// DMA reaches memory untranslated (a machine whose firmware or boot
    /// devices need it; off by default).
    Identity,
}

/// The policy the command line chose (unknown values keep the default, logged).
pub fn unclaimed_policy(boot: &bootinfo::BootInfo) -> UnclaimedPolicy {
    match boot.cmdline_value("iommu.unclaimed") {
        None | Some("blocked") => UnclaimedPolicy::Blocked,
        Some("identity") => UnclaimedPolicy::Identity,
        Some(other) => {
            log::warn!("iommu: iommu.unclaimed={other} is not blocked|identity: keeping blocked");
            UnclaimedPolicy::Blocked
        }
    }
}

/// After the units are registered (every device blocked by its driver):
/// devices that firmware names in a direct-map region get a paging domain of
/// their own holding exactly those regions mapped 1:1 (so firmware-owned DMA
/// keeps working and reaches nothing else); with
/// [`UnclaimedPolicy::Identity`] every other device gets its unit's identity
/// domain. A claim takes the device out of these domains ([`block`]).
pub fn apply_boot_policy(boot: &bootinfo::BootInfo) {
    let policy = unclaimed_policy(boot);
    with_units(|units| {
        for (i, u) in units.iter_mut().enumerate() {
            let mut identity = None;
            for dev in u.devices() {
                let direct = u.reserved_regions(dev).iter().any(|r| r.kind == iommu::ReservedKind::DirectMap);
                let domain = if direct {
                    u.domain_alloc(iommu::DomainKind::Paging)
                } else if policy == UnclaimedPolicy::Identity {
                    match identity {
                        Some(d) => Ok(d),
                        None => u.domain_alloc(iommu::DomainKind::Identity).inspect(|&d| identity = Some(d)),
                    }
                } else {
                    continue;
                };
                let what = if direct { "its direct-map regions only" } else { "identity (iommu.unclaimed=identity)" };
                match domain.and_then(|d| u.attach(dev, d)) {
                    Ok(()) => log::info!("iommu: {}: device {:#x} unclaimed: {what}", unit_name(i), dev.0),
                    Err(e) => log::error!("iommu: {}: device {:#x} stays blocked: {e}", unit_name(i), dev.0),
                }
            }
        }
    });
    log::info!("iommu: unclaimed devices: {policy:?} (iommu.unclaimed=), direct-map devices: their regions only");
}
