//! A PCI function's message-signalled interrupt, programmed by the kernel
//! (never by the task that drives the function): the MSI capability when it
//! has one (PCI Local Bus 3.0 §6.8.1), else entry 0 of its MSI-X table
//! ([`crate::msix`]). The boards compute the message (x86: an interrupt
//! remapping handle or a local APIC address; aarch64: the ITS doorbell and
//! an EventID) and call [`program`]; [`disable`] stops the function using it.

/// Which capability carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The MSI capability.
    Msi,
    /// Entry 0 of the MSI-X table.
    MsiX,
}

impl Kind {
    /// `msi` or `msi-x`, as the logs say.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Msi => "msi",
            Kind::MsiX => "msi-x",
        }
    }
}

/// Programs `f` to send (`address`, `data`) as its one interrupt message,
/// enables it and turns INTx off. MSI data is 16 bits: `data` above that is
/// refused, as is a 64-bit address for a 32-bit MSI capability.
pub fn program(
    f: &pci::Function,
    access: &dyn pci::ConfigAccess,
    address: u64,
    data: u32,
) -> Result<Kind, &'static str> {
    let Some(msi) = f.caps.msi else {
        if f.caps.msix.is_none() {
            return Err("function has neither an MSI nor an MSI-X capability");
        }
        crate::msix::route(f, access, address, data)?;
        return Ok(Kind::MsiX);
    };
    let (bdf, o) = (f.bdf, msi.offset);
    if address >> 32 != 0 && !msi.is_64bit {
        return Err("the MSI address needs 64 bits and the function's MSI capability has 32");
    }
    let Ok(data) = u16::try_from(data) else {
        return Err("MSI data has 16 bits");
    };
    let ctrl = access.read16(bdf, o + 2);
    access.write16(bdf, o + 2, ctrl & !1); // disable while reprogramming
    access.write32(bdf, o + 4, address as u32);
    let data_at = if msi.is_64bit {
        access.write32(bdf, o + 8, (address >> 32) as u32);
        o + 0xC
    } else {
        o + 8
    };
    access.write16(bdf, data_at, data);
    // One vector (MME = 0), enabled.
    access.write16(bdf, o + 2, (ctrl & !(0x7 << 4)) | 1);
    let cmd = access.read16(bdf, pci::reg::COMMAND);
    access.write16(bdf, pci::reg::COMMAND, cmd | pci::reg::CMD_INTX_DISABLE);
    Ok(Kind::Msi)
}

/// Turns `f`'s MSI (or MSI-X) off: it sends no message afterwards.
pub fn disable(f: &pci::Function, access: &dyn pci::ConfigAccess) {
    if let Some(msi) = f.caps.msi {
        let ctrl = access.read16(f.bdf, msi.offset + 2);
        access.write16(f.bdf, msi.offset + 2, ctrl & !1);
    } else {
        crate::msix::unroute(f, access);
    }
}
