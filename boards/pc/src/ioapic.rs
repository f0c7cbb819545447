//! The I/O APIC: found through the ACPI MADT, every redirection entry masked at
//! boot; entries are programmed when a driver routes a line (Intel 82093AA I/O
//! APIC datasheet §3.2: IOREGSEL/IOWIN indirect access, §3.2.4 IOREDTBL).

use acpi::madt::{Madt, MadtEntry};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;

register_structs! {
    /// The two directly addressed registers.
    IoApicRegisters {
        (0x00 => select: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x10 => window: ReadWrite<u32>),
        (0x14 => @END),
    }
}

/// Index of the version register (bits 23:16 = highest redirection entry).
const IOAPICVER: u32 = 0x01;
/// Index of the low half of redirection entry 0.
const IOREDTBL0: u32 = 0x10;
/// Redirection-entry mask bit.
pub const MASKED: u64 = 1 << 16;

/// One I/O APIC.
pub struct IoApic {
    /// Kernel virtual address of the register window.
    va: u64,
    /// Serialises IOREGSEL/IOWIN pairs.
    lock: spin::Mutex<()>,
    /// APIC ID from the MADT.
    pub id: u8,
    /// Physical base.
    pub base: u64,
    /// First global system interrupt it serves.
    pub gsi_base: u32,
    /// Number of redirection entries.
    pub pins: u32,
}

impl IoApic {
    fn regs(&self) -> &IoApicRegisters {
        // SAFETY: `va` maps the I/O APIC's register window for the kernel's life (set in `init`).
        unsafe { &*(self.va as *const IoApicRegisters) }
    }

    fn read(&self, index: u32) -> u32 {
        let _guard = self.lock.lock();
        self.regs().select.set(index);
        self.regs().window.get()
    }

    fn write(&self, index: u32, value: u32) {
        let _guard = self.lock.lock();
        self.regs().select.set(index);
        self.regs().window.set(value);
    }

    /// Reads redirection entry `pin`.
    pub fn entry(&self, pin: u32) -> Option<u64> {
        (pin < self.pins).then(|| {
            let lo = self.read(IOREDTBL0 + 2 * pin);
            let hi = self.read(IOREDTBL0 + 2 * pin + 1);
            u64::from(hi) << 32 | u64::from(lo)
        })
    }

    /// Writes redirection entry `pin` (high half first, so the entry is never live half-written).
    pub fn set_entry(&self, pin: u32, value: u64) -> Result<(), &'static str> {
        if pin >= self.pins {
            return Err("no such I/O APIC pin");
        }
        self.write(IOREDTBL0 + 2 * pin, MASKED as u32);
        self.write(IOREDTBL0 + 2 * pin + 1, (value >> 32) as u32);
        self.write(IOREDTBL0 + 2 * pin, value as u32);
        Ok(())
    }
}

static IOAPICS: spin::Once<alloc::vec::Vec<IoApic>> = spin::Once::new();

/// The I/O APICs found at boot.
pub fn all() -> &'static [IoApic] {
    IOAPICS.get().map_or(&[], |v| v.as_slice())
}

/// Finds every I/O APIC in the MADT, maps it and masks all of its entries.
pub fn init(rsdp: u64) -> Result<usize, &'static str> {
    let tables = kcore::acpi::tables(rsdp).map_err(|e| {
        log::error!("acpi: cannot read the tables at RSDP {rsdp:#x}: {e:?}");
        "ACPI tables unreadable"
    })?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT in the ACPI tables")?;
    let mut found = alloc::vec::Vec::new();
    for entry in madt.get().entries() {
        let MadtEntry::IoApic(e) = entry else { continue };
        let (id, address, gsi_base) = (e.io_apic_id, e.io_apic_address, e.global_system_interrupt_base);
        let mmio = kcore::mm::map_mmio(u64::from(address), 0x20).map_err(|_| "cannot map an I/O APIC")?;
        let mut ioapic =
            IoApic { va: mmio.va, lock: spin::Mutex::new(()), id, base: u64::from(address), gsi_base, pins: 0 };
        let version = ioapic.read(IOAPICVER);
        ioapic.pins = ((version >> 16) & 0xFF) + 1;
        for pin in 0..ioapic.pins {
            ioapic.set_entry(pin, MASKED)?;
        }
        log::info!(
            "ioapic: id={id} base={address:#x} gsi_base={gsi_base} pins={} version={:#x}, all masked",
            ioapic.pins,
            version & 0xFF
        );
        found.push(ioapic);
    }
    let n = found.len();
    IOAPICS.call_once(|| found);
    Ok(n)
}
