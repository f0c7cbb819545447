//! QEMU 10.0's amd-iommu looks the DMA of a function off bus 0 up under a
//! stale DeviceID (hardware-free; docs/qemu.md has the whole story).
//!
//! `amdvi_host_dma_iommu` (`hw/i386/amd_iommu.c`) creates a function's
//! address space once, when the machine is created, and stores the bus number
//! of the bus the request is seen on (the function's own bus, or the bus of
//! the alias a bridge supplies, `pci_device_get_iommu_bus_devfn`) as
//! `pci_bus_num()` reads it *then*. No firmware has numbered the bridges yet,
//! so every secondary bus reads 0, and every later DMA of the function is
//! translated through DTE `PCI_BUILD_BDF(0, devfn)` — `devfn` of the function,
//! or of its alias — instead of its real DeviceID. MSIs carry the live
//! requester ID, so interrupt remapping uses the real entry. QEMU 10.2 keys
//! the address spaces by bus object and reads the bus number per request.
//!
//! The workaround ([`crate::AmdViIommu::with_dte_aliases`]): program the
//! stale entry exactly like the real one on attach and block it again on
//! detach, and group the functions that share it (`iommu::groups`). On a unit
//! that is not affected (QEMU 10.2) the extra entry is never consulted for
//! that function, so the workaround is only conservative there.

/// PCI subsystem vendor ID QEMU gives every function that has no subsystem
/// ID of its own (`pci_set_default_subsystem_id`: Red Hat / Qumranet).
pub const QEMU_SUBSYSTEM_VENDOR: u16 = 0x1AF4;

/// Vendor and device ID of QEMU's AMD-Vi PCI function (`amdvi_pci_class_init`;
/// the same ID as AMD's family 15h IOMMU, so it is not QEMU's alone).
pub const QEMU_IOMMU_FUNCTION: (u16, u16) = (0x1022, 0x1419);

/// Class code of an IOMMU function (base 08h, sub-class 06h, prog-if 0).
pub const IOMMU_CLASS: u32 = 0x08_0600;

/// The DeviceID QEMU 10.0 translates the DMA of a function seen as
/// `device_id` (its requester ID after aliasing) through, when that is not
/// `device_id` itself: bus 0 with the same devfn for every ID off bus 0.
pub fn stale_device_id(device_id: u16) -> Option<u16> {
    (device_id & 0xFF00 != 0).then_some(device_id & 0x00FF)
}

/// Whether a PCI function with these IDs is QEMU's AMD-Vi function: AMD's
/// 1022:1419 with class IOMMU *and* QEMU's default subsystem vendor (a real
/// 1022:1419 carries its board vendor's subsystem ID). This is the signal
/// `amdvi.stale_bus=auto` uses; the IVRS OEM ID ("BOCHS ") can be changed
/// with `-machine oem-id=` and says nothing about which IOMMU model runs.
pub fn is_qemu_iommu_function(vendor: u16, device: u16, class: u32, subsystem_vendor: u16) -> bool {
    (vendor, device) == QEMU_IOMMU_FUNCTION
        && class & 0xFF_FFFF == IOMMU_CLASS
        && subsystem_vendor == QEMU_SUBSYSTEM_VENDOR
}

/// `amdvi.stale_bus=` on the kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleBus {
    /// Apply the workaround when the unit is QEMU's (the default).
    Auto,
    /// Apply it on every AMD-Vi unit.
    On,
    /// Never apply it (functions off bus 0 then stay blocked on QEMU 10.0:
    /// the stale entry they are translated through is never programmed).
    Off,
}

impl StaleBus {
    /// The option's value (`None`: not given, the default). An unknown value
    /// is an error naming it; the caller logs it and keeps the default.
    pub fn parse(value: Option<&str>) -> Result<StaleBus, &str> {
        match value {
            None | Some("auto") => Ok(StaleBus::Auto),
            Some("on") => Ok(StaleBus::On),
            Some("off") => Ok(StaleBus::Off),
            Some(other) => Err(other),
        }
    }

    /// Whether the workaround applies to a unit; `qemu`: whether its IOMMU
    /// function is QEMU's ([`is_qemu_iommu_function`]).
    pub fn applies(self, qemu: bool) -> bool {
        match self {
            StaleBus::Auto => qemu,
            StaleBus::On => true,
            StaleBus::Off => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_keep_devfn_and_drop_the_bus() {
        assert_eq!(stale_device_id(0x0300), Some(0x0000), "edu at 03:00.0 behind a root port");
        assert_eq!(stale_device_id(0x0118), Some(0x0018), "behind a PCI bridge 01:03.0 behind a root port");
        assert_eq!(stale_device_id(0x0200), Some(0x0000), "alias of a PCIe-to-PCI bridge: secondary bus, devfn 0");
        assert_eq!(stale_device_id(0xFFFF), Some(0x00FF));
        assert_eq!(stale_device_id(0x0010), None, "bus 0: translated through its own entry");
        assert_eq!(stale_device_id(0x0018), None, "alias on bus 0 (conventional bridge on bus 0)");
    }

    #[test]
    fn qemu_function_needs_all_four_ids() {
        assert!(is_qemu_iommu_function(0x1022, 0x1419, 0x08_0600, 0x1AF4));
        assert!(is_qemu_iommu_function(0x1022, 0x1419, 0x08_0600 | 0x0100_0000, 0x1AF4), "upper bits ignored");
        assert!(!is_qemu_iommu_function(0x1022, 0x1419, 0x08_0600, 0x1022), "a real family 15h IOMMU");
        assert!(!is_qemu_iommu_function(0x1022, 0x1419, 0x06_0000, 0x1AF4));
        assert!(!is_qemu_iommu_function(0x1022, 0x1481, 0x08_0600, 0x1AF4));
        assert!(!is_qemu_iommu_function(0x8086, 0x1419, 0x08_0600, 0x1AF4));
    }

    #[test]
    fn option_values() {
        assert_eq!(StaleBus::parse(None), Ok(StaleBus::Auto));
        assert_eq!(StaleBus::parse(Some("auto")), Ok(StaleBus::Auto));
        assert_eq!(StaleBus::parse(Some("on")), Ok(StaleBus::On));
        assert_eq!(StaleBus::parse(Some("off")), Ok(StaleBus::Off));
        assert_eq!(StaleBus::parse(Some("yes")), Err("yes"));
        assert_eq!(StaleBus::parse(Some("")), Err(""));
        assert!(StaleBus::Auto.applies(true) && !StaleBus::Auto.applies(false));
        assert!(StaleBus::On.applies(false) && !StaleBus::Off.applies(true));
    }
}
