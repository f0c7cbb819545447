//! MSI-X for functions that have no MSI capability (NVMe, virtio on QEMU):
//! the kernel programs table entry 0 itself (PCI Local Bus 3.0 §6.8.2; the
//! task that drives the function never maps the table's pages, see
//! `pci::policy::msix_pages`), with the message the IOMMU's interrupt
//! remapping gives (so the device can raise this interrupt and no other).
//! One vector: entry 0; the others stay masked.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::ReadWrite;

register_structs! {
    /// One MSI-X table entry (§6.8.2.6–§6.8.2.9).
    TableEntry {
        (0x0 => address_lo: ReadWrite<u32>),
        (0x4 => address_hi: ReadWrite<u32>),
        (0x8 => data: ReadWrite<u32>),
        (0xC => control: ReadWrite<u32>),
        (0x10 => @END),
    }
}

/// Message Control (capability + 2): MSI-X Enable, Function Mask.
const ENABLE: u16 = 1 << 15;
const FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control bit 0: masked.
const MASKED: u32 = 1;

/// Tables mapped so far (physical, kernel virtual): a function claimed and
/// released again reuses its mapping (the dynamic window never shrinks).
static MAPPED: spin::Mutex<[(u64, u64); 16]> = spin::Mutex::new([(0, 0); 16]);

/// Entry 0 of `f`'s table, mapped into the kernel.
fn entry0(f: &pci::Function) -> Result<&'static TableEntry, &'static str> {
    let x = f.caps.msix.ok_or("function has neither an MSI nor an MSI-X capability")?;
    let (bir, offset) = x.table;
    let bar = f.bars.iter().find(|b| b.index == bir).ok_or("MSI-X table in a BAR the function does not have")?;
    if bar.base == 0 || u64::from(offset) + 16 > bar.size {
        return Err("MSI-X table outside its BAR (or the BAR unassigned)");
    }
    let pa = bar.base + u64::from(offset);
    let mut mapped = MAPPED.lock();
    let va = match mapped.iter().find(|&&(p, _)| p == pa) {
        Some(&(_, va)) => va,
        None => {
            let slot = mapped.iter_mut().find(|(p, _)| *p == 0).ok_or("too many MSI-X tables mapped")?;
            let r = kcore::mm::map_mmio(pa, 16).map_err(|_| "cannot map the MSI-X table")?;
            *slot = (pa, r.va);
            r.va
        }
    };
    // SAFETY: `va` maps the 16 bytes of entry 0 with device attributes for the kernel's life (kept in MAPPED); the register block is exactly one entry, accessed through tock-registers cells.
    Ok(unsafe { &*(va as *const TableEntry) })
}

/// Programs entry 0 with (`address`, `data`), unmasks it, enables MSI-X and
/// turns INTx off.
pub fn route(f: &pci::Function, access: &dyn pci::ConfigAccess, address: u64, data: u32) -> Result<(), &'static str> {
    let x = f.caps.msix.ok_or("function has neither an MSI nor an MSI-X capability")?;
    let e = entry0(f)?;
    let ctrl_at = x.offset + 2;
    let ctrl = access.read16(f.bdf, ctrl_at);
    // Masked as a whole while the entry changes (§6.8.2.3).
    access.write16(f.bdf, ctrl_at, ctrl | ENABLE | FUNCTION_MASK);
    e.control.set(e.control.get() | MASKED);
    e.address_lo.set(address as u32);
    e.address_hi.set((address >> 32) as u32);
    e.data.set(data);
    e.control.set(e.control.get() & !MASKED);
    access.write16(f.bdf, ctrl_at, (ctrl | ENABLE) & !FUNCTION_MASK);
    let cmd = access.read16(f.bdf, pci::reg::COMMAND);
    access.write16(f.bdf, pci::reg::COMMAND, cmd | pci::reg::CMD_INTX_DISABLE);
    Ok(())
}

/// Masks entry 0 and turns MSI-X off.
pub fn unroute(f: &pci::Function, access: &dyn pci::ConfigAccess) {
    let Some(x) = f.caps.msix else { return };
    if let Ok(e) = entry0(f) {
        e.control.set(e.control.get() | MASKED);
    }
    let ctrl = access.read16(f.bdf, x.offset + 2);
    access.write16(f.bdf, x.offset + 2, ctrl & !ENABLE);
}
