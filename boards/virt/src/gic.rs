//! GICv3 bring-up: distributor, this CPU's redistributor, the system-register
//! CPU interface, and IRQ dispatch (Arm GICv3/v4 architecture spec, IHI 0069:
//! §12.9 GICD_*, §12.11 GICR_*, §12.2 ICC_* registers).

use core::sync::atomic::{AtomicU64, Ordering};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u32,
    /// GICD_CTLR with a single security state (DS=1) or as seen from Non-secure.
    GICD_CTLR [
        ENABLE_GRP0 OFFSET(0) NUMBITS(1) [],
        ENABLE_GRP1 OFFSET(1) NUMBITS(1) [],
        ARE OFFSET(4) NUMBITS(1) [],
        RWP OFFSET(31) NUMBITS(1) []
    ],
    /// GICR_WAKER.
    GICR_WAKER [
        PROCESSOR_SLEEP OFFSET(1) NUMBITS(1) [],
        CHILDREN_ASLEEP OFFSET(2) NUMBITS(1) []
    ]
];

register_structs! {
    /// Distributor registers used here.
    GicdRegisters {
        (0x0000 => ctlr: ReadWrite<u32, GICD_CTLR::Register>),
        (0x0004 => typer: ReadOnly<u32>),
        (0x0008 => iidr: ReadOnly<u32>),
        (0x000C => _reserved0),
        (0x0080 => igroupr: [ReadWrite<u32>; 32]),
        (0x0100 => isenabler: [ReadWrite<u32>; 32]),
        (0x0180 => icenabler: [ReadWrite<u32>; 32]),
        (0x0200 => _reserved1),
        (0x0400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x07FC => _reserved2),
        (0x0C00 => icfgr: [ReadWrite<u32>; 64]),
        (0x0D00 => _reserved3),
        (0x6100 => irouter: [ReadWrite<u64>; 988]),
        (0x7FE0 => @END),
    }
}

register_structs! {
    /// Redistributor RD_base frame registers used here.
    GicrRdRegisters {
        (0x0000 => ctlr: ReadWrite<u32>),
        (0x0004 => iidr: ReadOnly<u32>),
        (0x0008 => typer_lo: ReadOnly<u32>),
        (0x000C => typer_hi: ReadOnly<u32>),
        (0x0010 => _reserved0),
        (0x0014 => waker: ReadWrite<u32, GICR_WAKER::Register>),
        (0x0018 => _reserved1),
        (0x0070 => propbaser: ReadWrite<u64>),
        (0x0078 => pendbaser: ReadWrite<u64>),
        (0x0080 => @END),
    }
}

register_structs! {
    /// Redistributor SGI_base frame registers used here (SGIs and PPIs).
    GicrSgiRegisters {
        (0x0000 => _reserved0),
        (0x0080 => igroupr0: ReadWrite<u32>),
        (0x0084 => _reserved1),
        (0x0100 => isenabler0: ReadWrite<u32>),
        (0x0104 => _reserved2),
        (0x0180 => icenabler0: ReadWrite<u32>),
        (0x0184 => _reserved3),
        (0x0400 => ipriorityr: [ReadWrite<u32>; 8]),
        (0x0420 => @END),
    }
}

/// Size of one redistributor (RD_base + SGI_base frames).
const GICR_STRIDE: u64 = 0x2_0000;
/// Bound on polls of RWP / ChildrenAsleep.
const MAX_POLLS: u32 = 1_000_000;

static GICD_VA: AtomicU64 = AtomicU64::new(0);

/// Mapped distributor base (0 before [`init`]).
pub fn distributor_va() -> u64 {
    GICD_VA.load(Ordering::Acquire)
}

fn wait(what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), &'static str> {
    for _ in 0..MAX_POLLS {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    log::error!("gic: timeout waiting for {what}");
    Err("GIC did not respond in time")
}

fn read_mpidr_affinity() -> u32 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    // Aff3:Aff2:Aff1:Aff0 in GICR_TYPER[63:32] order.
    (((mpidr >> 32) & 0xFF) << 24 | (mpidr & 0xFF_FFFF)) as u32
}

/// Brings up the distributor, then this CPU's redistributor and CPU
/// interface ([`init_cpu`]); the other CPUs call [`init_cpu`] themselves.
pub fn init(gic: &devicetree::Gic) -> Result<(), &'static str> {
    if gic.version != devicetree::GicVersion::V3 {
        return Err("only GICv3 is supported (boot QEMU virt with gic-version=3)");
    }
    let redist = gic.redist.ok_or("GICv3 without a redistributor region")?;
    let d = kcore::mm::map_mmio(gic.dist.base, gic.dist.size.max(0x1_0000)).map_err(|_| "cannot map GICD")?;
    let r = kcore::mm::map_mmio(redist.base, redist.size).map_err(|_| "cannot map GICR")?;
    GICD_VA.store(d.va, Ordering::Release);
    REDIST.call_once(|| (r.va, redist.base, redist.size));
    // SAFETY: d.va maps the distributor registers (device memory) for the kernel's life.
    let gicd = unsafe { &*(d.va as *const GicdRegisters) };
    gicd.ctlr.write(GICD_CTLR::ARE::SET + GICD_CTLR::ENABLE_GRP0::SET + GICD_CTLR::ENABLE_GRP1::SET);
    wait("GICD_CTLR.RWP", || !gicd.ctlr.is_set(GICD_CTLR::RWP))?;
    let off = init_cpu()?;
    log::info!(
        "gic: v3 dist={:#x} redist={:#x} (frame +{off:#x}) lines={} iidr={:#x}",
        gic.dist.base,
        redist.base,
        32 * ((gicd.typer.get() & 0x1F) + 1),
        gicd.iidr.get()
    );
    Ok(())
}

/// The mapped redistributor region: (kernel virtual, physical, size).
static REDIST: spin::Once<(u64, u64, u64)> = spin::Once::new();

/// Brings up the redistributor of the CPU running this (found by affinity)
/// and its CPU interface; returns the frame's offset in the region.
pub fn init_cpu() -> Result<u64, &'static str> {
    let &(va, pa, size) = REDIST.get().ok_or("GIC distributor not initialised")?;
    // Find this CPU's redistributor by affinity (GICR_TYPER.Last ends the list).
    let me = read_mpidr_affinity();
    let mut frame = None;
    let mut off = 0;
    while off + GICR_STRIDE <= size {
        // SAFETY: off < mapped size; each frame starts with RD_base registers.
        let rd = unsafe { &*((va + off) as *const GicrRdRegisters) };
        if rd.typer_hi.get() == me {
            frame = Some(va + off);
            break;
        }
        if rd.typer_lo.get() & (1 << 4) != 0 {
            break;
        }
        off += GICR_STRIDE;
    }
    let frame = frame.ok_or("no redistributor matches this CPU's affinity")?;
    // SAFETY: `frame` is this CPU's RD_base; SGI_base follows 64 KiB later.
    let (rd, sgi) = unsafe { (&*(frame as *const GicrRdRegisters), &*((frame + 0x1_0000) as *const GicrSgiRegisters)) };
    rd.waker.write(GICR_WAKER::PROCESSOR_SLEEP::CLEAR);
    wait("GICR_WAKER.ChildrenAsleep", || !rd.waker.is_set(GICR_WAKER::CHILDREN_ASLEEP))?;
    sgi.icenabler0.set(u32::MAX);
    sgi.igroupr0.set(u32::MAX); // SGIs and PPIs are Group 1 (Non-secure)
    for p in sgi.ipriorityr.iter() {
        p.set(0xA0A0_A0A0);
    }
    // CPU interface: system registers on, all priorities, Group 1 enabled.
    // SAFETY: EL2 set ICC_SRE_EL2.Enable at boot (every CPU's entry does), so EL1 may use ICC_* registers.
    unsafe {
        core::arch::asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            t = out(reg) _,
            pmr = in(reg) 0xFFu64,
            one = in(reg) 1u64,
            options(nostack)
        );
    }
    let cpu = kcore::cpu::index();
    SGI_FRAMES[cpu].store(sgi as *const GicrSgiRegisters as u64, Ordering::Release);
    if cpu == 0 {
        RD_FRAME.call_once(|| (frame, pa + off));
    }
    Ok(off)
}

/// Per CPU, the SGI_base frame of its redistributor (0: not brought up).
static SGI_FRAMES: [AtomicU64; kcore::cpu::MAX_CPUS] = [const { AtomicU64::new(0) }; kcore::cpu::MAX_CPUS];
/// RD_base frame of the boot CPU's redistributor, the one the ITS delivers
/// LPIs to: (kernel virtual, physical).
static RD_FRAME: spin::Once<(u64, u64)> = spin::Once::new();

/// GICR_CTLR.EnableLPIs and GICR_TYPER.PLPIS (bit 0 of each).
const ENABLE_LPIS: u32 = 1;

/// Points the boot CPU's redistributor at the LPI tables (GICR_PROPBASER and
/// GICR_PENDBASER values, [`gic_its::lpi::LpiTables`]) and enables LPIs
/// (IHI 0069 §5.1; EnableLPIs cannot be cleared again, so the tables then
/// belong to the redistributor for good). Returns the redistributor's
/// physical address and processor number (GICR_TYPER bits 23:8), the two
/// ways an ITS names it.
pub fn enable_lpis(propbaser: u64, pendbaser: u64) -> Result<(u64, u16), &'static str> {
    let &(va, pa) = RD_FRAME.get().ok_or("GIC not initialised")?;
    // SAFETY: `va` is the boot CPU's mapped RD_base frame (set in `init_cpu`).
    let rd = unsafe { &*(va as *const GicrRdRegisters) };
    if rd.typer_lo.get() & ENABLE_LPIS == 0 {
        return Err("the redistributor has no physical LPIs (GICR_TYPER.PLPIS clear)");
    }
    if rd.ctlr.get() & ENABLE_LPIS != 0 {
        return Err("LPIs were already enabled (by firmware): their tables cannot be replaced");
    }
    rd.propbaser.set(propbaser);
    rd.pendbaser.set(pendbaser);
    // The tables' zeroes before the redistributor may read them.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    rd.ctlr.set(rd.ctlr.get() | ENABLE_LPIS);
    Ok((pa, ((rd.typer_lo.get() >> 8) & 0xFFFF) as u16))
}

/// Enables a private peripheral interrupt (INTID 16..31) on this CPU, with
/// `handler` called from [`handle_irq`] each time it fires.
pub fn enable_ppi(intid: u32, handler: fn()) -> Result<(), &'static str> {
    if !(16..32).contains(&intid) {
        return Err("not a PPI");
    }
    let va = SGI_FRAMES[kcore::cpu::index()].load(Ordering::Acquire);
    if va == 0 {
        return Err("GIC not initialised on this CPU");
    }
    PPI_HANDLERS[intid as usize - 16].store(handler as *mut (), core::sync::atomic::Ordering::Release);
    // SAFETY: `va` is this CPU's mapped SGI_base frame (set in `init_cpu`).
    let sgi = unsafe { &*(va as *const GicrSgiRegisters) };
    sgi.isenabler0.set(1 << intid);
    Ok(())
}

fn distributor() -> Option<&'static GicdRegisters> {
    let va = distributor_va();
    // SAFETY: `va` maps the distributor registers for the kernel's life (set in `init`).
    (va != 0).then(|| unsafe { &*(va as *const GicdRegisters) })
}

/// Number of interrupt lines the distributor implements (GICD_TYPER.ITLinesNumber).
pub fn lines() -> u32 {
    distributor().map_or(0, |d| 32 * ((d.typer.get() & 0x1F) + 1)).min(1020)
}

/// Priority byte of shared interrupt `intid` (32..lines).
pub fn spi_priority(intid: u32) -> Option<u8> {
    let d = distributor()?;
    (32..lines()).contains(&intid).then(|| d.ipriorityr[intid as usize].get())
}

/// Sets the priority byte of shared interrupt `intid`.
pub fn set_spi_priority(intid: u32, priority: u8) -> Result<(), &'static str> {
    let d = distributor().ok_or("GIC not initialised")?;
    if !(32..lines()).contains(&intid) {
        return Err("not an implemented SPI");
    }
    d.ipriorityr[intid as usize].set(priority);
    Ok(())
}

/// Shared interrupts routed to device-interrupt slots (0 = unused).
static SLOT_INTID: [core::sync::atomic::AtomicU32; 8] = [const { core::sync::atomic::AtomicU32::new(0) }; 8];
/// LPIs (from the ITS) routed to device-interrupt slots (0 = unused).
static SLOT_LPI: [core::sync::atomic::AtomicU32; 8] = [const { core::sync::atomic::AtomicU32::new(0) }; 8];

/// Delivers LPI `lpi` to device-interrupt `slot` (the ITS mapped it).
pub fn route_lpi(lpi: u32, slot: u32) -> Result<(), &'static str> {
    let s = SLOT_LPI.get(slot as usize).ok_or("no such device-interrupt slot")?;
    s.store(lpi, core::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Stops delivering any LPI to `slot`.
pub fn unroute_lpi(slot: u32) {
    if let Some(s) = SLOT_LPI.get(slot as usize) {
        s.store(0, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Configures SPI `intid` (level, Group 1, to this CPU) for device-interrupt `slot` and enables it.
pub fn route_spi(intid: u32, level: bool, slot: u32) -> Result<(), &'static str> {
    let d = distributor().ok_or("GIC not initialised")?;
    if !(32..lines()).contains(&intid) || slot as usize >= SLOT_INTID.len() {
        return Err("not an implemented SPI");
    }
    let (word, bit) = ((intid / 32) as usize, intid % 32);
    d.icenabler[word].set(1 << bit);
    d.igroupr[word].set(d.igroupr[word].get() | 1 << bit);
    d.ipriorityr[intid as usize].set(0xA0);
    let cfg = &d.icfgr[(intid / 16) as usize];
    let shift = (intid % 16) * 2;
    let edge = if level { 0 } else { 2 };
    cfg.set((cfg.get() & !(3 << shift)) | edge << shift);
    // Affinity of this CPU (Aff3 in bits 39:32, Aff2..0 in 23:0), IRM = 0.
    let aff = u64::from(read_mpidr_affinity());
    d.irouter[(intid - 32) as usize].set((aff >> 24) << 32 | (aff & 0xFF_FFFF));
    SLOT_INTID[slot as usize].store(intid, core::sync::atomic::Ordering::Relaxed);
    d.isenabler[word].set(1 << bit);
    Ok(())
}

/// Disables SPI `intid` (a level line stays masked until its owner re-arms it).
fn mask_spi(intid: u32) {
    if let Some(d) = distributor() {
        d.icenabler[(intid / 32) as usize].set(1 << (intid % 32));
    }
}

/// Re-enables the SPI behind device-interrupt `slot`.
pub fn unmask_slot(slot: u32) {
    let intid = SLOT_INTID.get(slot as usize).map_or(0, |a| a.load(core::sync::atomic::Ordering::Relaxed));
    if let (true, Some(d)) = (intid >= 32, distributor()) {
        d.isenabler[(intid / 32) as usize].set(1 << (intid % 32));
    }
}

/// Disables and forgets the SPI behind `slot`.
pub fn unroute_slot(slot: u32) {
    if let Some(a) = SLOT_INTID.get(slot as usize) {
        let intid = a.swap(0, core::sync::atomic::Ordering::Relaxed);
        if intid >= 32 {
            mask_spi(intid);
        }
    }
}

/// The handler of each enabled PPI (INTID 16..32; null: none), set by
/// [`enable_ppi`]: the GIC dispatches to it without knowing its owner (the
/// timer names the GIC, never the other way round).
static PPI_HANDLERS: [core::sync::atomic::AtomicPtr<()>; 16] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; 16];

/// LPIs taken for a slot since boot.
pub static LPIS_TAKEN: AtomicU64 = AtomicU64::new(0);

/// Acknowledges and dispatches one pending interrupt.
pub fn handle_irq() {
    let intid: u64;
    // SAFETY: reading IAR1 acknowledges the highest-priority Group 1 interrupt.
    unsafe { core::arch::asm!("mrs {}, icc_iar1_el1", out(reg) intid, options(nostack)) };
    let intid = intid & 0xFF_FFFF;
    if (1020..1024).contains(&intid) {
        return; // spurious
    }
    let slot = SLOT_INTID.iter().position(|s| s.load(core::sync::atomic::Ordering::Relaxed) == intid as u32);
    let lpi_slot = (intid >= u64::from(gic_its::lpi::FIRST_LPI))
        .then(|| SLOT_LPI.iter().position(|s| s.load(core::sync::atomic::Ordering::Relaxed) == intid as u32))
        .flatten();
    let ppi = (16..32)
        .contains(&intid)
        .then(|| PPI_HANDLERS[intid as usize - 16].load(core::sync::atomic::Ordering::Acquire));
    if let Some(handler) = ppi.filter(|h| !h.is_null()) {
        // SAFETY: the only non-null values stored in PPI_HANDLERS are `fn()` pointers cast in `enable_ppi`.
        let handler: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(handler) };
        handler();
    } else if let Some(slot) = lpi_slot {
        // An LPI is edge-like and has no active state: nothing to mask.
        LPIS_TAKEN.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        kcore::task::device_irq(slot as u32);
    } else if let Some(slot) = slot {
        // Level-triggered INTx: keep the line masked until the task has serviced
        // the device and waits again (it is unmasked then).
        mask_spi(intid as u32);
        kcore::task::device_irq(slot as u32);
    } else {
        log::warn!("gic: unexpected interrupt {intid}");
    }
    // SAFETY: ends the interrupt acknowledged above (EOImode 0: also deactivates).
    unsafe { core::arch::asm!("msr icc_eoir1_el1, {}", "isb", in(reg) intid, options(nostack)) };
}
