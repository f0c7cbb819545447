//! The arm machine from ACPI (UEFI firmware hands over an RSDP instead of a
//! device tree): SPCR for the console, MADT for the GICv3 (ACPI 6.5
//! §5.2.12.15–18), GTDT for the timer, MCFG for PCI and IORT / VIOT for the
//! IOMMUs (through `kcore::acpi`).

use acpi::madt::{Madt, MadtEntry};
use devicetree::{Gic, GicVersion, MemRange};

/// Size of one GICv3 distributor frame.
const GICD_SIZE: u64 = 0x1_0000;

/// The GIC from the MADT: distributor, redistributor discovery range, ITS (no log line; see [`log_gic`]).
pub fn gic(rsdp: u64) -> Result<Gic, &'static str> {
    let tables = kcore::acpi::tables(rsdp).map_err(|_| "ACPI tables unreadable")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT in the ACPI tables")?;
    let (mut dist, mut redist, mut its, mut version) = (None, None, None, None);
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::Gicd(e) => {
                let (base, v) = (e.physical_base_address, e.gic_version);
                dist = Some(MemRange { base, size: GICD_SIZE });
                version = Some(v);
            }
            MadtEntry::GicRedistributor(e) => {
                let (base, len) = (e.discovery_range_base_address, e.discovery_range_length);
                redist.get_or_insert(MemRange { base, size: u64::from(len) });
            }
            MadtEntry::GicInterruptTranslationService(e) => {
                let base = e.physical_base_address;
                its.get_or_insert(MemRange { base, size: 0x2_0000 });
            }
            _ => {}
        }
    }
    let dist = dist.ok_or("MADT has no GIC distributor")?;
    // Version 0 asks for discovery from the hardware; a redistributor range means GICv3 or later.
    let version = match version {
        Some(3 | 4) => GicVersion::V3,
        Some(0) if redist.is_some() => GicVersion::V3,
        _ => GicVersion::V2,
    };
    Ok(Gic { version, dist, redist, its, v2m: None, cpu_if: None })
}

/// The CPUs of the MADT (GICC entries with Enabled set, ACPI 6.5
/// §5.2.12.14: their MPIDR affinity fields; an Online Capable one is a CPU
/// that may be plugged in later, not one that is there) and the PSCI conduit
/// the FADT names (`arm_boot_arch`: PSCI_COMPLIANT, PSCI_USE_HVC; §5.2.9).
pub fn cpus(rsdp: u64) -> Result<(alloc::vec::Vec<u64>, devicetree::PsciConduit), &'static str> {
    let tables = kcore::acpi::tables(rsdp).map_err(|_| "ACPI tables unreadable")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT in the ACPI tables")?;
    let mut cpus = alloc::vec::Vec::new();
    for entry in madt.get().entries() {
        if let MadtEntry::Gicc(e) = entry {
            let (flags, mpidr) = (e.flags, e.mpidr);
            if flags & 1 != 0 {
                cpus.push(mpidr & 0xFF_00FF_FFFF);
            }
        }
    }
    let fadt = tables.find_table::<acpi::fadt::Fadt>().map_err(|_| "no FADT in the ACPI tables")?;
    let boot = fadt.get().arm_boot_arch;
    if !boot.implements_psci() {
        return Err("the FADT says the machine has no PSCI: other CPUs cannot be started");
    }
    let conduit =
        if boot.use_hvc_as_psci_conduit() { devicetree::PsciConduit::Hvc } else { devicetree::PsciConduit::Smc };
    Ok((cpus, conduit))
}

/// The EL1 virtual timer's INTID from the GTDT.
pub fn virtual_timer(rsdp: u64) -> Result<u32, &'static str> {
    let (_, bytes) = kcore::acpi::raw_tables(rsdp)
        .into_iter()
        .find(|(sig, _)| sig == b"GTDT")
        .ok_or("no GTDT in the ACPI tables")?;
    let gtdt = acpi_tables::gtdt::parse(bytes).map_err(|e| {
        log::error!("acpi: GTDT rejected: {e}");
        "GTDT rejected"
    })?;
    match gtdt.virtual_el1.gsiv {
        intid @ 16..=31 => Ok(intid),
        _ => Err("GTDT names no PPI for the virtual timer"),
    }
}

/// One log line naming what the MADT says about the GIC.
pub fn log_gic(gic: &Gic) {
    let none = || alloc::string::String::from("none");
    log::info!(
        "acpi: MADT: GICD {:#x}, GICR {}, ITS {}",
        gic.dist.base,
        gic.redist.map_or_else(none, |r| alloc::format!("{:#x}+{:#x}", r.base, r.size)),
        gic.its.map_or_else(none, |r| alloc::format!("{:#x}", r.base)),
    );
}

/// The root bridge's routing table, read from the DSDT on first use.
static PRT: spin::Once<Result<alloc::vec::Vec<acpi_tables::prt::PrtEntry>, acpi_tables::prt::PrtError>> =
    spin::Once::new();

fn load_prt(rsdp: u64) -> Result<alloc::vec::Vec<acpi_tables::prt::PrtEntry>, acpi_tables::prt::PrtError> {
    let Ok(dsdt) = kcore::acpi::tables(rsdp).and_then(|t| t.dsdt()) else {
        return Err(acpi_tables::prt::PrtError::NotFound);
    };
    // SAFETY: the DSDT lies in firmware memory covered by the direct map, is never written, and `length` comes from its header.
    let aml = unsafe {
        core::slice::from_raw_parts(kcore::mm::phys_to_virt(dsdt.address as u64) as *const u8, dsdt.length as usize)
    };
    let prt = acpi_tables::prt::parse(aml);
    match &prt {
        Ok(entries) => log::info!("acpi: DSDT _PRT: {} INTx routes", entries.len()),
        Err(e) => log::error!("acpi: DSDT _PRT unusable: {e}"),
    }
    prt
}

/// The GIC INTID that INTx `pin` (1 = INTA .. 4 = INTD) of root-bus device
/// `device` is wired to, from the host bridge's `_PRT` (ACPI 6.5 §6.2.13).
pub fn intx_gsi(rsdp: u64, device: u8, pin: u32) -> Result<u32, &'static str> {
    let prt = PRT.call_once(|| load_prt(rsdp)).as_ref().map_err(|_| "the DSDT has no static _PRT")?;
    prt.iter()
        .find(|e| e.device == u16::from(device) && u32::from(e.pin) + 1 == pin)
        .map(|e| e.gsi)
        .ok_or("the _PRT has no entry for this device and pin")
}
