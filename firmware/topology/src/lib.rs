//! The arch-neutral IOMMU topology: which IOMMU units exist, which device each
//! one translates (PCI requester ID or platform device → unit and the ID the
//! unit sees: RID, stream ID or endpoint ID), and which address ranges are
//! reserved for which devices.
//!
//! Boards build one [`Topology`] from whatever the firmware offers (DMAR, IVRS,
//! IORT, VIOT, or the device tree) and hand each driver its part of it. Lookups
//! honour specificity: an exact requester-ID rule beats a bus-range rule (a
//! bridge scope), which beats a whole-segment rule (`INCLUDE_PCI_ALL`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod build;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The kind of an IOMMU unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuKind {
    /// Intel VT-d remapping hardware unit (DMAR DRHD).
    Vtd,
    /// AMD-Vi IOMMU (IVRS IVHD).
    AmdVi,
    /// Arm SMMUv3 (IORT node or `arm,smmu-v3`).
    Smmuv3,
    /// virtio-iommu (VIOT node or `virtio,pci-iommu`).
    Virtio,
    /// No IOMMU at all, standing in for one (`iommu.noiommu=allow`; see
    /// [`build::add_noiommu`]).
    NoIommu,
}

impl IommuKind {
    /// Short name used in the topology log (`vtd`, `amdvi`, `smmuv3`, `virtio`).
    pub fn name(self) -> &'static str {
        match self {
            IommuKind::Vtd => "vtd",
            IommuKind::AmdVi => "amdvi",
            IommuKind::Smmuv3 => "smmuv3",
            IommuKind::Virtio => "virtio",
            IommuKind::NoIommu => "noiommu",
        }
    }
}

/// Where a unit's registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitLocation {
    /// An MMIO register window.
    Mmio {
        /// Physical base address.
        base: u64,
        /// Size in bytes (0 when the firmware does not say).
        size: u64,
    },
    /// A PCI function (virtio-iommu-pci): its registers are in its BARs.
    Pci {
        /// PCI segment.
        segment: u16,
        /// Requester ID (bus << 8 | devfn).
        rid: u16,
    },
}

/// One IOMMU unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuUnit {
    /// Name used in logs (`dmar0`, `ivhd0`, `smmu0`, `viommu0`).
    pub name: String,
    /// Kind of hardware.
    pub kind: IommuKind,
    /// Register location.
    pub location: UnitLocation,
    /// PCI segment the unit serves.
    pub segment: u16,
    /// Wired interrupts (GIC INTIDs / GSIs) by purpose, as the firmware names them.
    pub interrupts: Vec<(String, u32)>,
    /// Firmware flags as given (DRHD flags, IVHD flags, IORT flags ...).
    pub flags: u32,
    /// What firmware says about interrupt remapping by this unit: the DMAR's
    /// INTR_REMAP flag; for an IVHD, whether it names the I/O APIC (a type
    /// 48h special device entry, which firmware gives only when the IOMMU
    /// remaps interrupts). `None`: the table says nothing.
    pub interrupt_remapping: Option<bool>,
}

/// Which PCI functions a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciMatch {
    /// An inclusive range of requester IDs (a single device: first == last).
    Rids {
        /// First RID.
        first: u16,
        /// Last RID (inclusive).
        last: u16,
    },
    /// Every function on buses `first..=last` (a bridge's subtree).
    Buses {
        /// First bus.
        first: u8,
        /// Last bus (inclusive).
        last: u8,
    },
    /// Every function of the segment not matched by a more specific rule.
    All,
}

impl PciMatch {
    /// Whether requester ID `rid` is one of the functions this match names.
    pub fn covers(&self, rid: u16) -> bool {
        match *self {
            PciMatch::Rids { first, last } => (first..=last).contains(&rid),
            PciMatch::Buses { first, last } => (first..=last).contains(&((rid >> 8) as u8)),
            PciMatch::All => true,
        }
    }

    /// Lower is more specific: RID ranges before bus ranges before everything,
    /// and within a kind the narrower range first.
    fn rank(&self) -> (u8, u32) {
        match *self {
            PciMatch::Rids { first, last } => (0, u32::from(last) - u32::from(first)),
            PciMatch::Buses { first, last } => (1, u32::from(last) - u32::from(first)),
            PciMatch::All => (2, 0),
        }
    }

    /// The first requester ID the match covers.
    pub fn first_rid(&self) -> u16 {
        match *self {
            PciMatch::Rids { first, .. } => first,
            PciMatch::Buses { first, .. } => u16::from(first) << 8,
            PciMatch::All => 0,
        }
    }
}

/// Translation of PCI functions to a unit and the ID the unit sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRule {
    /// PCI segment.
    pub segment: u16,
    /// Which functions.
    pub matches: PciMatch,
    /// Index of the unit in [`Topology::units`]; `None` = explicitly untranslated (bypass).
    pub unit: Option<usize>,
    /// Output ID of the first matched RID; IDs grow with the RID (identity when equal).
    pub id_base: u32,
    /// A requester ID the unit sees instead of the device's own (an alias), if any.
    pub alias: Option<u16>,
}

/// What a reserved region is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservedKind {
    /// Firmware needs an identity mapping (RMRR, IVMD unity, IORT RMR).
    DirectMap,
    /// MSI window the platform handles untranslated (x86 0xFEEx_xxxx):
    /// never usable for DMA.
    Msi,
    /// An interrupt controller's doorbell reached through the unit like any
    /// DMA target (the GICv3 ITS's GITS_TRANSLATER page): never usable for
    /// DMA by a task; the kernel maps it into its devices' domains.
    MsiDoorbell,
    /// Must not be used for DMA at all (IVMD exclusion, holes).
    Reserved,
}

impl ReservedKind {
    /// Name used in the topology log.
    pub fn name(self) -> &'static str {
        match self {
            ReservedKind::DirectMap => "direct-map",
            ReservedKind::Msi => "msi",
            ReservedKind::MsiDoorbell => "msi-doorbell",
            ReservedKind::Reserved => "reserved",
        }
    }
}

/// An address range reserved for the devices of one unit (optionally only some).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    /// Unit index.
    pub unit: usize,
    /// Devices concerned (`None` = every device behind the unit).
    pub devices: Option<(u16, PciMatch)>,
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// Purpose.
    pub kind: ReservedKind,
}

/// Where a PCI function's DMA goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Unit index.
    pub unit: usize,
    /// The ID the unit uses for the device: RID (VT-d, AMD-Vi), stream ID, endpoint ID.
    pub id: u32,
}

/// Why a topology could not take an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// A rule or region names a unit that does not exist.
    NoSuchUnit(usize),
    /// A range is empty or inverted.
    BadRange,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::NoSuchUnit(i) => write!(f, "no IOMMU unit #{i}"),
            TopologyError::BadRange => f.write_str("empty or inverted range"),
        }
    }
}

/// The machine's IOMMU topology.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    units: Vec<IommuUnit>,
    rules: Vec<PciRule>,
    reserved: Vec<ReservedRegion>,
}

impl Topology {
    /// An empty topology (no IOMMU).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a unit and returns its index.
    pub fn add_unit(&mut self, unit: IommuUnit) -> usize {
        self.units.push(unit);
        self.units.len() - 1
    }

    /// Adds a PCI translation rule.
    pub fn add_rule(&mut self, rule: PciRule) -> Result<(), TopologyError> {
        if let Some(u) = rule.unit {
            if u >= self.units.len() {
                return Err(TopologyError::NoSuchUnit(u));
            }
        }
        let inverted = match rule.matches {
            PciMatch::Rids { first, last } => first > last,
            PciMatch::Buses { first, last } => first > last,
            PciMatch::All => false,
        };
        if inverted {
            return Err(TopologyError::BadRange);
        }
        self.rules.push(rule);
        Ok(())
    }

    /// Adds a reserved region.
    pub fn add_reserved(&mut self, region: ReservedRegion) -> Result<(), TopologyError> {
        if region.unit >= self.units.len() {
            return Err(TopologyError::NoSuchUnit(region.unit));
        }
        if region.start > region.end {
            return Err(TopologyError::BadRange);
        }
        self.reserved.push(region);
        Ok(())
    }

    /// The units.
    pub fn units(&self) -> &[IommuUnit] {
        &self.units
    }

    /// The rules, in insertion order.
    pub fn rules(&self) -> &[PciRule] {
        &self.rules
    }

    /// All reserved regions.
    pub fn reserved(&self) -> &[ReservedRegion] {
        &self.reserved
    }

    /// The most specific rule covering `segment:rid`.
    pub fn rule_for(&self, segment: u16, rid: u16) -> Option<&PciRule> {
        self.rules.iter().filter(|r| r.segment == segment && r.matches.covers(rid)).min_by_key(|r| r.matches.rank())
    }

    /// Which unit translates PCI function `segment:rid`, and under which ID.
    pub fn translate_pci(&self, segment: u16, rid: u16) -> Option<Translation> {
        let rule = self.rule_for(segment, rid)?;
        if let Some(alias) = rule.alias.filter(|&a| a != rid) {
            // The unit sees the alias: translate as the alias, ignoring alias rules
            // of the alias itself (aliases do not chain).
            let base = self
                .rules
                .iter()
                .filter(|r| r.segment == segment && r.alias.is_none() && r.matches.covers(alias))
                .min_by_key(|r| r.matches.rank())?;
            return Self::apply(base, alias);
        }
        Self::apply(rule, rid)
    }

    fn apply(rule: &PciRule, seen: u16) -> Option<Translation> {
        let unit = rule.unit?;
        let offset = u32::from(seen).wrapping_sub(u32::from(rule.matches.first_rid()));
        let id = match rule.matches {
            // Whole-segment rules map RIDs one to one.
            PciMatch::All => rule.id_base.wrapping_add(u32::from(seen)),
            _ => rule.id_base.wrapping_add(offset),
        };
        Some(Translation { unit, id })
    }

    /// Reserved regions that apply to PCI function `segment:rid`.
    pub fn reserved_for(&self, segment: u16, rid: u16) -> impl Iterator<Item = &ReservedRegion> + '_ {
        let unit = self.translate_pci(segment, rid).map(|t| t.unit);
        self.reserved.iter().filter(move |r| {
            Some(r.unit) == unit
                && match r.devices {
                    None => true,
                    Some((seg, m)) => seg == segment && m.covers(rid),
                }
        })
    }
}

/// Formats a requester ID as `bus:dev.fn`.
pub struct RidDisplay(pub u16, pub u16);

impl fmt::Display for RidDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.0, self.1 >> 8, (self.1 >> 3) & 0x1F, self.1 & 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn unit(name: &str, kind: IommuKind) -> IommuUnit {
        IommuUnit {
            name: name.to_string(),
            kind,
            location: UnitLocation::Mmio { base: 0xFED9_0000, size: 0x1000 },
            segment: 0,
            interrupts: vec![],
            flags: 0,
            interrupt_remapping: None,
        }
    }

    #[test]
    fn specific_rules_beat_bridges_beat_include_all() {
        let mut t = Topology::new();
        let a = t.add_unit(unit("dmar0", IommuKind::Vtd));
        let b = t.add_unit(unit("dmar1", IommuKind::Vtd));
        t.add_rule(PciRule { segment: 0, matches: PciMatch::All, unit: Some(a), id_base: 0, alias: None }).unwrap();
        t.add_rule(PciRule {
            segment: 0,
            matches: PciMatch::Buses { first: 2, last: 3 },
            unit: Some(b),
            id_base: 0x200,
            alias: None,
        })
        .unwrap();
        t.add_rule(PciRule {
            segment: 0,
            matches: PciMatch::Rids { first: 0x210, last: 0x210 },
            unit: None,
            id_base: 0,
            alias: None,
        })
        .unwrap();
        assert_eq!(t.translate_pci(0, 0x0020), Some(Translation { unit: a, id: 0x20 }));
        assert_eq!(t.translate_pci(0, 0x0308), Some(Translation { unit: b, id: 0x308 }));
        assert_eq!(t.translate_pci(0, 0x0210), None, "explicit bypass rule wins");
        assert_eq!(t.translate_pci(1, 0x0020), None, "other segment");
    }

    #[test]
    fn id_maps_offset_and_aliases() {
        let mut t = Topology::new();
        let s = t.add_unit(unit("smmu0", IommuKind::Smmuv3));
        t.add_rule(PciRule {
            segment: 0,
            matches: PciMatch::Rids { first: 0x100, last: 0x1FF },
            unit: Some(s),
            id_base: 0x8000,
            alias: None,
        })
        .unwrap();
        t.add_rule(PciRule {
            segment: 0,
            matches: PciMatch::Rids { first: 0x118, last: 0x118 },
            unit: Some(s),
            id_base: 0x8000,
            alias: Some(0x100),
        })
        .unwrap();
        assert_eq!(t.translate_pci(0, 0x105).map(|x| x.id), Some(0x8005));
        assert_eq!(t.translate_pci(0, 0x118).map(|x| x.id), Some(0x8000), "alias seen as RID 0x100");
    }

    #[test]
    fn reserved_regions_filter_by_device() {
        let mut t = Topology::new();
        let u = t.add_unit(unit("dmar0", IommuKind::Vtd));
        t.add_rule(PciRule { segment: 0, matches: PciMatch::All, unit: Some(u), id_base: 0, alias: None }).unwrap();
        t.add_reserved(ReservedRegion {
            unit: u,
            devices: None,
            start: 0xFEE0_0000,
            end: 0xFEEF_FFFF,
            kind: ReservedKind::Msi,
        })
        .unwrap();
        t.add_reserved(ReservedRegion {
            unit: u,
            devices: Some((0, PciMatch::Rids { first: 0x10, last: 0x10 })),
            start: 0x1000,
            end: 0x1FFF,
            kind: ReservedKind::DirectMap,
        })
        .unwrap();
        assert_eq!(t.reserved_for(0, 0x10).count(), 2);
        assert_eq!(t.reserved_for(0, 0x18).count(), 1);
        assert_eq!(
            t.add_reserved(ReservedRegion { unit: 9, devices: None, start: 0, end: 1, kind: ReservedKind::Reserved }),
            Err(TopologyError::NoSuchUnit(9))
        );
        assert_eq!(
            t.add_rule(PciRule {
                segment: 0,
                matches: PciMatch::Buses { first: 3, last: 2 },
                unit: None,
                id_base: 0,
                alias: None
            }),
            Err(TopologyError::BadRange)
        );
    }

    #[test]
    fn rid_display() {
        assert_eq!(RidDisplay(0, 0x0020).to_string(), "0000:00:04.0");
        assert_eq!(RidDisplay(1, 0x01FF).to_string(), "0001:01:1f.7");
    }
}
