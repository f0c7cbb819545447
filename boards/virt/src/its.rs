//! The GICv3 ITS on this board ([`gic_its`]): brought up at boot beside the
//! GIC when firmware describes one, then the route for every PCI function's
//! MSI or MSI-X. A function claimed by a task, interrupt slot `s`, gets
//! DeviceID = its DMA requester ID (QEMU virt's `msi-map` and IORT map
//! requester IDs to DeviceIDs one to one, through the SMMU or not), EventID
//! `s`, LPI `8192 + s`; its message is (GITS_TRANSLATER, `s`). The ITS knows
//! the writer by DeviceID, so whatever the device writes to the doorbell it
//! can raise only the events mapped for it. The doorbell page sits behind
//! the device's IOMMU like any DMA target: the topology reserves it and the
//! SMMUv3 driver maps it into every paging domain the device joins
//! (`iommu::ReservedKind::MsiDoorbell`), so a device the SMMU blocks cannot
//! even reach it (a virtio-iommu passes the doorbell untranslated, its
//! PROBE's MSI region; the ITS still confines what the device raises).

use alloc::format;
use alloc::string::String;
use gic_its::lpi::{LpiTables, FIRST_LPI};
use gic_its::Its;
use kcore::iommu::KernelTables;

/// Priority of device LPIs (as the SPIs: below the timer's PPI default).
const PRIORITY: u8 = 0xA0;
/// INTID width of the LPI tables: INTIDs below 16384, LPIs 8192..16383.
const ID_BITS: u32 = 14;

struct State {
    its: Its<KernelTables>,
    lpis: LpiTables,
    /// Frames of the LPI tables (they belong to the redistributor for good).
    tables: KernelTables,
}

static ITS: spin::Mutex<Option<State>> = spin::Mutex::new(None);

/// Brings up the ITS at physical address `base` and enables LPIs on this
/// CPU's redistributor. Called once, after [`crate::gic::init`].
pub fn init(base: u64) -> Result<(), String> {
    let m = kcore::mm::map_mmio(base, 0x1_0000).map_err(|_| String::from("cannot map the ITS control frame"))?;
    let mut tables = KernelTables::default();
    let lpis = LpiTables::new(&mut tables, ID_BITS).ok_or("no memory for the LPI tables")?;
    let (rd_pa, processor) = match crate::gic::enable_lpis(lpis.propbaser(), lpis.pendbaser()) {
        Ok(rd) => rd,
        Err(e) => {
            lpis.free(&mut tables);
            return Err(e.into());
        }
    };
    // SAFETY: `m.va` maps the ITS control frame (device memory, 64 KiB) for the kernel's life; nothing else makes a reference to it.
    let window = unsafe { iommu::mmio::MmioWindow::new(m.va, 0x1_0000) };
    // Every requester ID of segment 0.
    let its =
        Its::new(window, base, KernelTables::default(), 0x1_0000, rd_pa, processor).map_err(|e| format!("{e}"))?;
    log::info!(
        "its: {base:#x} doorbell {:#x}, DeviceIDs 0..{:#x}, LPIs {FIRST_LPI}..{} on redistributor {rd_pa:#x} (processor {processor})",
        its.translater(),
        its.device_ids(),
        FIRST_LPI + lpis.count() - 1
    );
    *ITS.lock() = Some(State { its, lpis, tables });
    Ok(())
}

/// Whether an ITS was brought up (MSIs can be routed).
pub fn present() -> bool {
    ITS.lock().is_some()
}

/// The DeviceID the ITS sees `f`'s messages with.
fn device_id(f: &pci::Function) -> Result<u32, &'static str> {
    if f.bdf.segment != 0 {
        return Err("the ITS DeviceIDs are mapped for PCI segment 0 only");
    }
    Ok(u32::from(pci::dma_requester_id(f, kcore::pci::functions())))
}

impl State {
    /// Maps EventID `event` of DeviceID `device` to the LPI of `slot`
    /// (configured, translated by the ITS, delivered to the slot); nothing
    /// is left behind on failure. Returns the LPI.
    fn map_slot(&mut self, device: u32, event: u32, slot: u32) -> Result<u32, gic_its::Error> {
        let lpi = FIRST_LPI + slot;
        if !self.lpis.configure(&mut self.tables, lpi, PRIORITY, true) {
            return Err(gic_its::Error::EventOutOfRange(slot));
        }
        if let Err(e) = self.its.map_event(device, event, lpi) {
            self.lpis.configure(&mut self.tables, lpi, PRIORITY, false);
            return Err(e);
        }
        // Delivered before the device can send.
        if crate::gic::route_lpi(lpi, slot).is_err() {
            self.unmap_slot(device, event, slot);
            return Err(gic_its::Error::EventOutOfRange(slot));
        }
        Ok(lpi)
    }

    /// Undoes [`State::map_slot`]: the event discarded (a write already on
    /// its way raises nothing), the LPI disabled, the slot forgotten.
    fn unmap_slot(&mut self, device: u32, event: u32, slot: u32) {
        crate::gic::unroute_lpi(slot);
        if let Err(e) = self.its.unmap_event(device, event) {
            log::error!("its: DeviceID {device:#x} EventID {event} not discarded: {e}");
        }
        self.lpis.configure(&mut self.tables, FIRST_LPI + slot, PRIORITY, false);
    }
}

/// Routes `f`'s MSI (or MSI-X entry 0) through the ITS to device-interrupt
/// `slot`. Returns the log line's text.
pub fn route(f: &pci::Function, access: &dyn pci::ConfigAccess, slot: u32) -> Result<String, &'static str> {
    if f.caps.msi.is_none() && f.caps.msix.is_none() {
        return Err("function has neither MSI nor MSI-X");
    }
    let device = device_id(f)?;
    let mut guard = ITS.lock();
    let s = guard.as_mut().ok_or("no ITS")?;
    let lpi = s.map_slot(device, slot, slot).map_err(|e| {
        log::error!("its: {}: mapping DeviceID {device:#x} EventID {slot}: {e}", f.bdf);
        "the ITS refused the interrupt mapping"
    })?;
    let doorbell = s.its.translater();
    match board_common::msi::program(f, access, doorbell, slot) {
        Ok(kind) => Ok(format!(
            "{}: {} -> LPI {lpi} through the ITS (DeviceID {device:#x}, EventID {slot}; message {doorbell:#x}/{slot:#x})",
            kind.name(),
            f.bdf
        )),
        Err(why) => {
            s.unmap_slot(device, slot, slot);
            Err(why)
        }
    }
}

/// Stops `f`'s messages (MSI off at the device, then the ITS mapping
/// discarded: a write already on its way raises nothing) and forgets the slot.
pub fn unroute(f: &pci::Function, access: &dyn pci::ConfigAccess, slot: u32) {
    board_common::msi::disable(f, access);
    match (device_id(f), ITS.lock().as_mut()) {
        (Ok(device), Some(s)) => s.unmap_slot(device, slot, slot),
        _ => crate::gic::unroute_lpi(slot),
    }
}

/// Whether `f` has an event mapped in the ITS (for tests).
pub fn is_mapped(f: &pci::Function) -> bool {
    let Ok(device) = device_id(f) else { return false };
    ITS.lock().as_ref().is_some_and(|s| s.its.is_mapped(device))
}

/// The doorbell's physical address (for tests).
pub fn doorbell() -> Option<u64> {
    ITS.lock().as_ref().map(|s| s.its.translater())
}

/// Raises EventID `event` of DeviceID `device` with the ITS's INT command,
/// as if the device had written it (for tests).
pub fn raise(device: u32, event: u32) -> Result<(), String> {
    let mut guard = ITS.lock();
    let s = guard.as_mut().ok_or(String::from("no ITS"))?;
    s.its.raise(device, event).map_err(|e| format!("{e}"))
}

/// Maps EventID `event` of DeviceID `device` to the LPI of `slot` directly,
/// for no function (for tests: a "victim" mapping another device must not
/// be able to raise).
pub fn route_raw(device: u32, event: u32, slot: u32) -> Result<(), String> {
    let mut guard = ITS.lock();
    let s = guard.as_mut().ok_or(String::from("no ITS"))?;
    s.map_slot(device, event, slot).map(|_| ()).map_err(|e| format!("{e}"))
}

/// Undoes [`route_raw`].
pub fn unroute_raw(device: u32, event: u32, slot: u32) {
    match ITS.lock().as_mut() {
        Some(s) => s.unmap_slot(device, event, slot),
        None => crate::gic::unroute_lpi(slot),
    }
}
