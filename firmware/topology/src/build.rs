//! Building a [`Topology`] from firmware tables and the enumerated PCI functions.

use crate::{IommuKind, IommuUnit, PciMatch, PciRule, ReservedKind, ReservedRegion, Topology, UnitLocation};
use acpi_tables::{dmar, iort, ivrs, viot};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use pci::Function;

/// Secondary and subordinate bus of the bridge at `segment:bus:dev.func`, from enumeration.
fn bridge_buses(functions: &[Function], segment: u16, bus: u8, dev: u8, func: u8) -> Option<(u8, u8)> {
    functions.iter().find(|f| f.bdf == pci::Bdf::new(segment, bus, dev, func)).and_then(|f| f.bridge_buses)
}

fn rid(bus: u8, dev: u8, func: u8) -> u16 {
    pci::Bdf::new(0, bus, dev, func).rid()
}

/// What a device scope covers, resolved against the enumerated functions.
fn scope_match(s: &dmar::DeviceScope, segment: u16, functions: &[Function]) -> Option<Vec<PciMatch>> {
    let (bus, dev, func) = s.resolve(|b, d, f| bridge_buses(functions, segment, b, d, f).map(|x| x.0))?;
    let r = rid(bus, dev, func);
    match s.kind {
        dmar::ScopeKind::Endpoint => Some(alloc::vec![PciMatch::Rids { first: r, last: r }]),
        dmar::ScopeKind::Bridge => {
            let mut v = alloc::vec![PciMatch::Rids { first: r, last: r }];
            if let Some((first, last)) = bridge_buses(functions, segment, bus, dev, func) {
                v.push(PciMatch::Buses { first, last });
            }
            Some(v)
        }
        _ => None,
    }
}

/// Adds the units, rules and reserved regions a DMAR describes.
/// `msi_window` is the architecture's interrupt address range (x86: 0xFEE00000–0xFEEFFFFF).
pub fn add_dmar(t: &mut Topology, d: &dmar::Dmar, functions: &[Function], msi_window: (u64, u64)) {
    for (i, u) in d.drhds.iter().enumerate() {
        let unit = t.add_unit(IommuUnit {
            name: format!("dmar{i}"),
            kind: IommuKind::Vtd,
            location: UnitLocation::Mmio { base: u.base, size: 0x1000 << u.size },
            segment: u.segment,
            interrupts: Vec::new(),
            flags: u32::from(u.include_pci_all),
            interrupt_remapping: Some(d.flags & 1 != 0),
        });
        if u.include_pci_all {
            let _ = t.add_rule(PciRule {
                segment: u.segment,
                matches: PciMatch::All,
                unit: Some(unit),
                id_base: 0,
                alias: None,
            });
        }
        for s in &u.scopes {
            for m in scope_match(s, u.segment, functions).unwrap_or_default() {
                let _ = t.add_rule(PciRule {
                    segment: u.segment,
                    matches: m,
                    unit: Some(unit),
                    id_base: u32::from(m.first_rid()),
                    alias: None,
                });
            }
        }
        let _ = t.add_reserved(ReservedRegion {
            unit,
            devices: None,
            start: msi_window.0,
            end: msi_window.1,
            kind: ReservedKind::Msi,
        });
    }
    for r in &d.rmrrs {
        for s in &r.scopes {
            for m in scope_match(s, r.segment, functions).unwrap_or_default() {
                if let Some(tr) = t.translate_pci(r.segment, m.first_rid()) {
                    let region = ReservedRegion {
                        unit: tr.unit,
                        devices: Some((r.segment, m)),
                        start: r.base,
                        end: r.limit,
                        kind: ReservedKind::DirectMap,
                    };
                    let _ = t.add_reserved(region);
                }
            }
        }
    }
}

/// Adds the units, rules and reserved regions an IVRS describes. Add an
/// IVRS without IVHDs after the others: its IVMDs apply to their units.
pub fn add_ivrs(t: &mut Topology, v: &ivrs::Ivrs, msi_window: (u64, u64)) {
    let first_unit = t.units().len();
    for (i, h) in v.units().into_iter().enumerate() {
        let unit = t.add_unit(IommuUnit {
            name: format!("ivhd{i}"),
            kind: IommuKind::AmdVi,
            location: UnitLocation::Mmio { base: h.base, size: 0x4000 },
            segment: h.segment,
            interrupts: Vec::new(),
            flags: u32::from(h.flags),
            interrupt_remapping: Some(h.specials.iter().any(|s| s.variety == 1)),
        });
        if h.all.is_some() {
            let _ = t.add_rule(PciRule {
                segment: h.segment,
                matches: PciMatch::All,
                unit: Some(unit),
                id_base: 0,
                alias: None,
            });
        }
        for d in &h.devices {
            let _ = t.add_rule(PciRule {
                segment: h.segment,
                matches: PciMatch::Rids { first: d.first, last: d.last },
                unit: Some(unit),
                id_base: u32::from(d.first),
                alias: d.alias,
            });
        }
        let _ = t.add_reserved(ReservedRegion {
            unit,
            devices: None,
            start: msi_window.0,
            end: msi_window.1,
            kind: ReservedKind::Msi,
        });
    }
    // IVMDs belong to this table's units; a table without IVHDs (a second
    // IVRS, like a DMAR holding only RMRRs) names devices of the units added before.
    let units: Vec<usize> = if v.ivhds.is_empty() {
        (0..t.units().len()).filter(|&u| t.units()[u].kind == IommuKind::AmdVi).collect()
    } else {
        (first_unit..t.units().len()).collect()
    };
    for m in &v.ivmds {
        // §5.2.2.3: ExclusionRange (bit 3) wins; otherwise Unity (bit 0) asks
        // for an identity mapping; a block with neither asks for nothing.
        let kind = match m.flags {
            f if f & 8 != 0 => ReservedKind::Reserved,
            f if f & 1 != 0 => ReservedKind::DirectMap,
            _ => continue,
        };
        let end = m.start.saturating_add(m.length.max(1) - 1);
        for &unit in &units {
            let devices = (m.block_type != 0x20)
                .then_some((t.units()[unit].segment, PciMatch::Rids { first: m.first, last: m.last }));
            let _ = t.add_reserved(ReservedRegion { unit, devices, start: m.start, end, kind });
        }
    }
}

/// Adds the virtio-iommus and endpoint ranges a VIOT describes; `msi_window`
/// (x86 only) is reserved for every unit.
pub fn add_viot(t: &mut Topology, v: &viot::Viot, msi_window: Option<(u64, u64)>) {
    let mut by_offset: Vec<(u16, usize)> = Vec::new();
    for n in &v.nodes {
        let (offset, location, segment) = match *n {
            viot::Node::VirtioPci { offset, segment, bdf } => {
                (offset, UnitLocation::Pci { segment, rid: bdf }, segment)
            }
            viot::Node::VirtioMmio { offset, base } => (offset, UnitLocation::Mmio { base, size: 0x200 }, 0),
            _ => continue,
        };
        let unit = t.add_unit(IommuUnit {
            name: format!("viommu{}", by_offset.len()),
            kind: IommuKind::Virtio,
            location,
            segment,
            interrupts: Vec::new(),
            flags: 0,
            interrupt_remapping: None,
        });
        if let UnitLocation::Pci { segment, rid } = location {
            // The virtio-iommu's own DMA (its queues) is never translated by itself.
            let _ = t.add_rule(PciRule {
                segment,
                matches: PciMatch::Rids { first: rid, last: rid },
                unit: None,
                id_base: 0,
                alias: None,
            });
        }
        if let Some((s, e)) = msi_window {
            let _ = t.add_reserved(ReservedRegion { unit, devices: None, start: s, end: e, kind: ReservedKind::Msi });
        }
        by_offset.push((offset, unit));
    }
    for n in &v.nodes {
        if let viot::Node::PciRange { endpoint_start, segment_start, segment_end, bdf_start, bdf_end, output, .. } = *n
        {
            let Some(&(_, unit)) = by_offset.iter().find(|(o, _)| *o == output) else { continue };
            for segment in segment_start..=segment_end {
                let _ = t.add_rule(PciRule {
                    segment,
                    matches: PciMatch::Rids { first: bdf_start, last: bdf_end },
                    unit: Some(unit),
                    id_base: endpoint_start,
                    alias: None,
                });
            }
        }
    }
}

/// Adds the SMMUv3 units and root-complex ID mappings an IORT describes (the
/// ACPI path on arm, used with UEFI firmware). RMR ranges become direct-map
/// reservations for the stream IDs that name them.
pub fn add_iort(t: &mut Topology, table: &iort::Iort) {
    let mut units: Vec<(u32, usize)> = Vec::new();
    for n in &table.nodes {
        if let iort::NodeKind::SmmuV3 { base, flags, gsiv, .. } = n.kind {
            let names = ["eventq", "priq", "gerror", "cmdq-sync"];
            let unit = t.add_unit(IommuUnit {
                name: format!("smmu{}", units.len()),
                kind: IommuKind::Smmuv3,
                location: UnitLocation::Mmio { base, size: 0x2_0000 },
                segment: 0,
                interrupts: names
                    .iter()
                    .zip(gsiv)
                    .filter(|(_, g)| *g != 0)
                    .map(|(n, g)| (String::from(*n), g))
                    .collect(),
                flags,
                interrupt_remapping: None,
            });
            units.push((n.offset, unit));
        }
    }
    for n in &table.nodes {
        let iort::NodeKind::RootComplex { segment, .. } = n.kind else { continue };
        let Ok(segment) = u16::try_from(segment) else { continue };
        for m in n.mappings.iter().filter(|m| m.flags & 1 == 0) {
            let Some(&(_, unit)) = units.iter().find(|(o, _)| *o == m.output_ref) else { continue };
            let Ok(first) = u16::try_from(m.input_base) else { continue };
            let last = u16::try_from(u64::from(m.input_base) + u64::from(m.count_minus_one)).unwrap_or(u16::MAX);
            let _ = t.add_rule(PciRule {
                segment,
                matches: PciMatch::Rids { first, last },
                unit: Some(unit),
                id_base: m.output_base,
                alias: None,
            });
        }
    }
    for n in &table.nodes {
        let iort::NodeKind::Rmr { ranges, .. } = &n.kind else { continue };
        for m in &n.mappings {
            let Some(&(_, unit)) = units.iter().find(|(o, _)| *o == m.output_ref) else { continue };
            for r in ranges.iter().filter(|r| r.length > 0) {
                let _ = t.add_reserved(ReservedRegion {
                    unit,
                    devices: None,
                    start: r.base,
                    end: r.base + (r.length - 1),
                    kind: ReservedKind::DirectMap,
                });
            }
        }
    }
}

/// Builds the topology a device tree describes (SMMUv3 and virtio-iommu behind
/// PCI hosts through `iommu-map`). The ITS doorbell page, which every device's
/// MSIs write to through its IOMMU, is reserved as an MSI window per unit.
pub fn from_devicetree(dt: &devicetree::DeviceTree<'_>, errors: &mut Vec<String>) -> Topology {
    let mut t = Topology::new();
    let mut phandles: Vec<(u32, usize)> = Vec::new();
    for (i, s) in dt.smmus().into_iter().enumerate() {
        match s {
            Ok(s) => {
                let unit = t.add_unit(IommuUnit {
                    name: format!("smmu{i}"),
                    kind: IommuKind::Smmuv3,
                    location: UnitLocation::Mmio { base: s.regs.base, size: s.regs.size },
                    segment: 0,
                    interrupts: s.irqs.iter().map(|q| (q.name.clone(), q.intid)).collect(),
                    flags: u32::from(s.dma_coherent),
                    interrupt_remapping: None,
                });
                if let Some(p) = s.phandle {
                    phandles.push((p, unit));
                }
            }
            Err(e) => errors.push(format!("smmu node {i}: {e}; unit ignored")),
        }
    }
    let hosts: Vec<_> =
        dt.pci_hosts().into_iter().filter_map(|h| h.map_err(|e| errors.push(format!("pci host: {e}"))).ok()).collect();
    for (i, v) in dt.virtio_iommus().into_iter().enumerate() {
        match v {
            Ok(v) => {
                let segment = hosts.first().map_or(0, |h| h.segment);
                let unit = t.add_unit(IommuUnit {
                    name: format!("viommu{i}"),
                    kind: IommuKind::Virtio,
                    location: UnitLocation::Pci { segment, rid: v.rid },
                    segment,
                    interrupts: Vec::new(),
                    flags: 0,
                    interrupt_remapping: None,
                });
                if let Some(p) = v.phandle {
                    phandles.push((p, unit));
                }
            }
            Err(e) => errors.push(format!("virtio-iommu node {i}: {e}; unit ignored")),
        }
    }
    for h in &hosts {
        for m in &h.iommu_map {
            let Some(&(_, unit)) = phandles.iter().find(|(p, _)| *p == m.target) else {
                errors.push(format!("{}: iommu-map names phandle {:#x}, which is no IOMMU", h.name, m.target));
                continue;
            };
            let (Ok(first), Some(last)) = (u16::try_from(m.rid_base), m.rid_base.checked_add(m.len.saturating_sub(1)))
            else {
                continue;
            };
            let last = u16::try_from(last).unwrap_or(u16::MAX);
            let _ = t.add_rule(PciRule {
                segment: h.segment,
                matches: PciMatch::Rids { first, last },
                unit: Some(unit),
                id_base: m.out_base,
                alias: None,
            });
        }
    }
    if let Some(its) = dt.gic().and_then(|g| g.its) {
        reserve_its_doorbell(&mut t, its.base);
    }
    t
}

/// Reserves the doorbell page of the GICv3 ITS at `its_base` as an MSI
/// doorbell on every unit: devices behind an IOMMU write their MSIs there
/// through it, so the kernel maps it into their domains.
/// (The ITS base comes from the device tree or the MADT; IORT names ITS groups
/// by ID only.)
pub fn reserve_its_doorbell(t: &mut Topology, its_base: u64) {
    // GITS_TRANSLATER lives in the second 64 KiB frame of the ITS (GICv3 spec §12.19).
    let doorbell = its_base + 0x1_0000;
    for unit in 0..t.units().len() {
        let _ = t.add_reserved(ReservedRegion {
            unit,
            devices: None,
            start: doorbell,
            end: doorbell + 0xFFF,
            kind: ReservedKind::MsiDoorbell,
        });
    }
}

/// Adds the no-IOMMU unit `noiommu0` (no registers) and a rule putting
/// every requester ID of each segment in `segments` behind it, for a machine
/// whose firmware describes no IOMMU, booted with `iommu.noiommu=allow`: the
/// kernel then registers `iommu::noiommu::NoIommu` for it, which translates
/// and blocks nothing (benchmarks of what an IOMMU costs). Returns the unit's
/// index; a topology that has units already is left alone (`None`).
pub fn add_noiommu(t: &mut Topology, segments: &[u16]) -> Option<usize> {
    if !t.units().is_empty() {
        return None;
    }
    let unit = t.add_unit(IommuUnit {
        name: "noiommu0".into(),
        kind: IommuKind::NoIommu,
        location: UnitLocation::Mmio { base: 0, size: 0 },
        segment: segments.first().copied().unwrap_or(0),
        interrupts: Vec::new(),
        flags: 0,
        interrupt_remapping: Some(false),
    });
    for &segment in segments {
        let _ = t.add_rule(PciRule {
            segment,
            matches: PciMatch::Rids { first: 0, last: u16::MAX },
            unit: Some(unit),
            id_base: 0,
            alias: None,
        });
    }
    Some(unit)
}

/// The lines the kernel prints for a topology, in the documented format.
pub fn lines(t: &Topology, functions: &[Function]) -> Vec<String> {
    let mut out = Vec::new();
    for u in t.units() {
        let (base, extra) = match u.location {
            UnitLocation::Mmio { base, .. } => (base, String::new()),
            UnitLocation::Pci { segment, rid } => {
                let bdf = pci::Bdf::from_rid(segment, rid);
                let bar = functions
                    .iter()
                    .find(|f| f.bdf == bdf)
                    .and_then(|f| f.bars.iter().find(|b| b.kind != pci::BarKind::Io))
                    .map_or(0, |b| b.base);
                (bar, format!(" pci={bdf}"))
            }
        };
        out.push(format!(
            "topology: iommu {} kind={} base={base:#x} segment={}{extra}",
            u.name,
            u.kind.name(),
            u.segment
        ));
    }
    for f in functions {
        let rid = pci::dma_requester_id(f, functions);
        let (name, id) = match t.translate_pci(f.bdf.segment, rid) {
            Some(tr) => (t.units()[tr.unit].name.as_str(), tr.id),
            None => ("none", u32::from(rid)),
        };
        let alias = if rid != f.bdf.rid() { format!(" alias={:#x}", rid) } else { String::new() };
        out.push(format!(
            "topology: pci {} {:04x}:{:04x} class={:06x} iommu={name} id={id:#x}{alias}",
            f.bdf, f.vendor, f.device, f.class
        ));
    }
    for r in t.reserved() {
        let devices = match r.devices {
            None => String::new(),
            Some((seg, PciMatch::Rids { first, last })) if first == last => {
                format!(" devices={}", crate::RidDisplay(seg, first))
            }
            Some((seg, PciMatch::Rids { first, last })) => {
                format!(" devices={}-{}", crate::RidDisplay(seg, first), crate::RidDisplay(seg, last))
            }
            Some((seg, PciMatch::Buses { first, last })) => format!(" devices={seg:04x}:buses {first:02x}-{last:02x}"),
            Some((seg, PciMatch::All)) => format!(" devices={seg:04x}:all"),
        };
        out.push(format!(
            "topology: reserved {} {:#x}-{:#x} {}{devices}",
            t.units()[r.unit].name,
            r.start,
            r.end,
            r.kind.name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noiommu_unit_covers_every_function_of_a_machine_without_iommus() {
        let mut t = Topology::new();
        let u = add_noiommu(&mut t, &[0, 1]).unwrap();
        assert_eq!(t.units()[u].kind, IommuKind::NoIommu);
        assert_eq!(t.units()[u].name, "noiommu0");
        for (segment, rid) in [(0, 0), (0, 0x0108), (1, 0xFFFF)] {
            let x = t.translate_pci(segment, rid).unwrap();
            assert_eq!((x.unit, x.id), (u, u32::from(rid)));
        }
        assert!(t.translate_pci(2, 0).is_none(), "a segment not named");
        assert_eq!(add_noiommu(&mut t, &[0]), None, "never beside a real unit (or twice)");
        assert_eq!(t.units().len(), 1);
    }

    #[test]
    fn qemu_tables_build_topologies() {
        let mut t = Topology::new();
        let d = dmar::parse(include_bytes!("../../acpi-tables/tests/data/vtd-DMAR.bin")).unwrap();
        let edu = Function {
            bdf: pci::Bdf::new(0, 0, 1, 0),
            vendor: 0x1234,
            device: 0x11E8,
            class: 0xFF00,
            header_type: 0,
            bars: Vec::new(),
            caps: Default::default(),
            path: Vec::new(),
            bridge_buses: None,
        };
        add_dmar(&mut t, &d, core::slice::from_ref(&edu), (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(
            t.translate_pci(0, 0x0008).map(|x| (t.units()[x.unit].name.clone(), x.id)),
            Some(("dmar0".into(), 8))
        );
        assert_eq!(t.translate_pci(0, 0x0100), None, "not in any scope");
        assert_eq!(t.reserved_for(0, 0x0008).count(), 1);
        // The DRHD's Size (2^n pages; QEMU's is 0) is the register window the driver gets.
        assert_eq!(t.units()[0].location, UnitLocation::Mmio { base: 0xFED9_0000, size: 0x1000 });
        let mut bigger = d.clone();
        bigger.drhds[0].size = 2;
        let mut t4 = Topology::new();
        add_dmar(&mut t4, &bigger, core::slice::from_ref(&edu), (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(t4.units()[0].location, UnitLocation::Mmio { base: 0xFED9_0000, size: 0x4000 });
        bigger.drhds[0].size = 15;
        let mut t15 = Topology::new();
        add_dmar(&mut t15, &bigger, core::slice::from_ref(&edu), (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(t15.units()[0].location, UnitLocation::Mmio { base: 0xFED9_0000, size: 0x1000 << 15 });
        let lines = lines(&t, core::slice::from_ref(&edu));
        assert_eq!(lines[0], "topology: iommu dmar0 kind=vtd base=0xfed90000 segment=0");
        assert_eq!(lines[1], "topology: pci 0000:00:01.0 1234:11e8 class=00ff00 iommu=dmar0 id=0x8");
        assert_eq!(lines[2], "topology: reserved dmar0 0xfee00000-0xfeefffff msi");
        // QEMU's DMAR (intremap on) sets INTR_REMAP; without it the unit is no remapper.
        assert_eq!(t.units()[0].interrupt_remapping, Some(true));
        let mut t2 = Topology::new();
        add_dmar(
            &mut t2,
            &dmar::Dmar { flags: 0, ..d.clone() },
            core::slice::from_ref(&edu),
            (0xFEE0_0000, 0xFEEF_FFFF),
        );
        assert_eq!(t2.units()[0].interrupt_remapping, Some(false));

        // An RMRR naming edu becomes a direct-map region for edu alone.
        let mut with_rmrr = d.clone();
        with_rmrr.rmrrs.push(dmar::Rmrr {
            segment: 0,
            base: 0x1E00_0000,
            limit: 0x1E00_FFFF,
            scopes: alloc::vec![dmar::DeviceScope {
                kind: dmar::ScopeKind::Endpoint,
                enumeration_id: 0,
                start_bus: 0,
                path: alloc::vec![(1, 0)],
            }],
        });
        let mut t = Topology::new();
        add_dmar(&mut t, &with_rmrr, core::slice::from_ref(&edu), (0xFEE0_0000, 0xFEEF_FFFF));
        let direct: Vec<_> = t.reserved_for(0, 0x0008).filter(|r| r.kind == ReservedKind::DirectMap).collect();
        assert_eq!(direct.len(), 1);
        assert_eq!((direct[0].start, direct[0].end), (0x1E00_0000, 0x1E00_FFFF));
        assert_eq!(t.reserved_for(0, 0x0010).filter(|r| r.kind == ReservedKind::DirectMap).count(), 0);
        let lines = super::lines(&t, core::slice::from_ref(&edu));
        assert_eq!(lines[3], "topology: reserved dmar0 0x1e000000-0x1e00ffff direct-map devices=0000:00:01.0");

        let mut t = Topology::new();
        add_ivrs(
            &mut t,
            &ivrs::parse(include_bytes!("../../acpi-tables/tests/data/amdvi-IVRS.bin")).unwrap(),
            (0xFEE0_0000, 0xFEEF_FFFF),
        );
        assert_eq!(t.units().len(), 1);
        assert_eq!(t.translate_pci(0, 0x0008).map(|x| x.id), Some(8));
        // The IVHD names the I/O APIC (QEMU gives that entry only with intremap on).
        assert_eq!(t.units()[0].interrupt_remapping, Some(true));
        let mut no_ioapic = ivrs::parse(include_bytes!("../../acpi-tables/tests/data/amdvi-IVRS.bin")).unwrap();
        for h in &mut no_ioapic.ivhds {
            h.specials.clear();
        }
        let mut t2 = Topology::new();
        add_ivrs(&mut t2, &no_ioapic, (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(t2.units()[0].interrupt_remapping, Some(false));
        // A second IVRS with IVMDs only: unity for 00:02.0, an exclusion
        // range for all, a block with neither flag (ignored).
        let ivmd = |block_type: u8, flags: u8, device: u16, start: u64| ivrs::Ivmd {
            block_type,
            flags,
            first: device,
            last: if block_type == 0x20 { 0xFFFF } else { device },
            start,
            length: 0x1_0000,
        };
        let extra = ivrs::Ivrs {
            ivmds: alloc::vec![
                ivmd(0x21, 7, 0x10, 0x1E00_0000),
                ivmd(0x20, 8, 0, 0x1F00_0000),
                ivmd(0x21, 0, 0x10, 0x1D00_0000)
            ],
            ..Default::default()
        };
        add_ivrs(&mut t, &extra, (0xFEE0_0000, 0xFEEF_FFFF));
        assert_eq!(t.units().len(), 1, "no unit of its own");
        let for_edu: Vec<(u64, ReservedKind)> = t.reserved_for(0, 0x0010).map(|r| (r.start, r.kind)).collect();
        assert!(for_edu.contains(&(0x1E00_0000, ReservedKind::DirectMap)), "{for_edu:x?}");
        assert!(for_edu.contains(&(0x1F00_0000, ReservedKind::Reserved)), "{for_edu:x?}");
        assert!(!for_edu.iter().any(|r| r.0 == 0x1D00_0000), "{for_edu:x?}");
        let others: Vec<u64> = t.reserved_for(0, 0x0008).map(|r| r.start).collect();
        assert!(!others.contains(&0x1E00_0000) && others.contains(&0x1F00_0000), "{others:x?}");

        let mut t = Topology::new();
        add_viot(&mut t, &viot::parse(include_bytes!("../../acpi-tables/tests/data/virtio-VIOT.bin")).unwrap(), None);
        let UnitLocation::Pci { rid, .. } = t.units()[0].location else { panic!("virtio-iommu is a PCI function") };
        assert_eq!(t.translate_pci(0, rid), None, "the virtio-iommu does not translate itself");
        assert_eq!(t.translate_pci(0, rid + 8).map(|x| x.id), Some(u32::from(rid) + 8));

        let mut t = Topology::new();
        add_iort(&mut t, &iort::parse(include_bytes!("../../acpi-tables/tests/data/virt-smmuv3-IORT.bin")).unwrap());
        assert_eq!(t.units()[0].kind, IommuKind::Smmuv3);
        // An IORT SMMUv3 node has no size: the architected page 0 + page 1.
        assert!(matches!(t.units()[0].location, UnitLocation::Mmio { size: 0x2_0000, .. }));
        assert_eq!(t.translate_pci(0, 0x0008).map(|x| x.id), Some(8));
        assert_eq!(t.translate_pci(0, 0x0300), None, "RIDs past the SMMU range go straight to the ITS");
    }

    #[test]
    fn devicetree_topologies() {
        let dtb = include_bytes!("../../devicetree/tests/data/virt-smmuv3.dtb");
        let dt = devicetree::DeviceTree::from_bytes(dtb).unwrap();
        let mut errors = Vec::new();
        let t = from_devicetree(&dt, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.units()[0].name, "smmu0");
        // QEMU virt's `reg` size: page 0 and page 1.
        assert!(
            matches!(t.units()[0].location, UnitLocation::Mmio { size: 0x2_0000, .. }),
            "{:?}",
            t.units()[0].location
        );
        assert_eq!(t.units()[0].interrupts.len(), 4);
        assert_eq!(t.translate_pci(0, 0x0010).map(|x| x.id), Some(0x10));
        assert_eq!(t.reserved().len(), 1, "ITS doorbell");
    }
}
