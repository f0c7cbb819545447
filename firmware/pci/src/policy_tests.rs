//! Host tests for the task configuration-write policy and claim rules, against
//! an independent model of the header and of the fixture's capability layout.

use crate::caps::{id, Capabilities, Msi};
use crate::enumerate::enumerate;
use crate::fake::{FakeConfig, FakeFunction};
use crate::policy::{check_write, claimable, msix_pages, ClaimRefusal, Refusal, WriteKind};
use crate::tests::virt_host;
use crate::{Bdf, Function};
use proptest::prelude::*;

/// An endpoint with PM, MSI (64-bit, per-vector masking), MSI-X, PCIe, VPD and a
/// vendor-specific capability, chained out of offset order:
///
/// | bytes     | what                                      |
/// |-----------|-------------------------------------------|
/// | 0x40–0x47 | PM (8)                                    |
/// | 0x48–0x4F | device specific                           |
/// | 0x50–0x67 | MSI (24)                                  |
/// | 0x68–0x6F | device specific                           |
/// | 0x70–0x7B | MSI-X (12)                                |
/// | 0x7C–0x7F | device specific                           |
/// | 0x80–0xBB | PCIe (0x3C)                               |
/// | 0xBC–0xBF | device specific                           |
/// | 0xC0–0xCF | VPD (unknown length: up to the next cap)  |
/// | 0xD0–0xDB | vendor, length 0x0B rounded to a dword    |
/// | 0xDC–0xFF | device specific                           |
fn fixture() -> Function {
    let msi_ctrl: u16 = (1 << 7) | (1 << 8);
    let f = FakeFunction::endpoint(None, 3, 0, 0x1AF4, 0x1000, 0x020000)
        .with_mem_bar(0, 1 << 14, false, false)
        .with_cap(0x80, id::PCIE, &[0x02, 0x00])
        .with_cap(0x40, id::PM, &[0x03, 0x00, 0x00, 0x00])
        .with_cap(0x70, id::MSIX, &[0x07, 0x00, 0x00, 0x20, 0, 0, 0x00, 0x30, 0, 0])
        .with_cap(0x50, id::MSI, &msi_ctrl.to_le_bytes())
        .with_cap(0xD0, id::VENDOR, &[0x0B, 5, 0, 0, 0, 0, 0, 0, 0])
        .with_cap(0xC0, id::VPD, &[0, 0]);
    let cfg = FakeConfig::new(0, vec![f]);
    let mut fns = enumerate(&cfg, &virt_host(), true).unwrap();
    assert_eq!(fns.len(), 1);
    fns.remove(0)
}

/// What the model says one byte of the fixture is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Cmd,
    Status,
    Misc,
    Dev,
}

/// The fixture's bytes, written out by hand from PCI 3.0 Figure 6-1 and the
/// table on [`fixture`] (not derived from `Capabilities`).
fn model_byte(at: u32) -> Result<M, &'static str> {
    let map: &[(u32, u32, Result<M, &'static str>)] = &[
        (0x00, 0x04, Err("header")),
        (0x04, 0x06, Ok(M::Cmd)),
        (0x06, 0x08, Ok(M::Status)),
        (0x08, 0x0C, Err("header")),
        (0x0C, 0x0E, Ok(M::Misc)),
        (0x0E, 0x10, Err("header")),
        (0x10, 0x28, Err("bar")),
        (0x28, 0x30, Err("header")),
        (0x30, 0x34, Err("rom")),
        (0x34, 0x35, Err("capability-pointer")),
        (0x35, 0x3C, Err("header")),
        (0x3C, 0x3D, Ok(M::Misc)),
        (0x3D, 0x40, Err("header")),
        (0x40, 0x48, Err("power-management")),
        (0x50, 0x68, Err("msi")),
        (0x70, 0x7C, Err("msi-x")),
        (0x80, 0xBC, Err("pci-express")),
        (0xC0, 0xDC, Err("capability")),
        (0x100, 0x1000, Err("extended")),
    ];
    map.iter().find(|r| (r.0..r.1).contains(&at)).map_or(Ok(M::Dev), |r| r.2)
}

/// The whole policy for the fixture, computed a different way: command and
/// status through a dword image of 0x04–0x07.
fn model(off: u32, width: u32, value: u32, cur: u16) -> Result<WriteKind, &'static str> {
    if ![1, 2, 4].contains(&width) || (width < 4 && u64::from(value) >= 1u64 << (8 * width)) {
        return Err("width");
    }
    if !off.is_multiple_of(width) {
        return Err("misaligned");
    }
    if off + width > 4096 {
        return Err("out-of-range");
    }
    let mut kinds = Vec::new();
    for at in off..off + width {
        kinds.push(model_byte(at)?);
    }
    if kinds.contains(&M::Cmd) || kinds.contains(&M::Status) {
        let shift = 8 * (off - 4);
        let mask = ((1u64 << (8 * width)) - 1) as u32;
        let image = (u32::from(cur) & !(mask << shift)) | (value << shift);
        let command = image as u16;
        if kinds.contains(&M::Cmd) && (command ^ cur) & 0b1111_1111_1111_1000 != 0 {
            return Err("command-bits");
        }
        let written_status = ((image & (mask << shift)) >> 16) as u16;
        if kinds.contains(&M::Status) && written_status & !0b1111_1001_0000_0000 != 0 {
            return Err("status");
        }
        return Ok(if kinds.contains(&M::Cmd) { WriteKind::Command { command } } else { WriteKind::StatusClear });
    }
    Ok(if kinds.contains(&M::Misc) { WriteKind::HeaderMisc } else { WriteKind::DeviceSpecific })
}

fn policy(f: &Function, off: u32, width: u32, value: u32, cur: u16) -> Result<WriteKind, &'static str> {
    check_write(f, off as u16, width as u16, value, cur).map_err(|r| r.name())
}

#[test]
fn fixture_capabilities_as_enumerated() {
    let f = fixture();
    let mut offsets: Vec<(u8, u16)> = f.caps.legacy.clone();
    offsets.sort_by_key(|c| c.1);
    assert_eq!(
        offsets,
        vec![(id::PM, 0x40), (id::MSI, 0x50), (id::MSIX, 0x70), (id::PCIE, 0x80), (id::VPD, 0xC0), (id::VENDOR, 0xD0)]
    );
    assert_eq!(f.caps.vendor_lengths, vec![(0xD0, 0x0B)]);
    let msi = f.caps.msi.unwrap();
    assert!(msi.is_64bit && msi.per_vector_mask);
    assert!(!f.caps.malformed);
    assert_eq!(claimable(&f), Ok(()));
}

/// Every (offset, width) pair, with values and command states that hit each
/// rule, compared with the model.
#[test]
fn every_offset_and_width_matches_the_model() {
    let f = fixture();
    let values = [
        0,
        1,
        0x7,
        0x8,
        0xFF,
        0x100,
        0x400,
        0xFFFF,
        0x1_0000,
        0x0007_0000,
        0x0100_0000,
        0x2000_0000,
        0xF900_0006,
        0x0010_0000,
        0xFFFF_FFFF,
    ];
    let currents = [0u16, 0x0007, 0x0400, 0x0106, 0xFFFF];
    let mut seen = std::collections::BTreeSet::new();
    for off in 0..=0x1004u32 {
        for width in [0, 1, 2, 3, 4, 8] {
            for &value in &values {
                for &cur in &currents {
                    let want = model(off, width, value, cur);
                    let got = policy(&f, off, width, value, cur);
                    assert_eq!(got, want, "offset {off:#x} width {width} value {value:#x} command {cur:#x}");
                    seen.insert(match got {
                        Ok(WriteKind::Command { .. }) => "ok-command",
                        Ok(WriteKind::StatusClear) => "ok-status",
                        Ok(WriteKind::HeaderMisc) => "ok-header",
                        Ok(WriteKind::DeviceSpecific) => "ok-device",
                        Err(name) => name,
                    });
                }
            }
        }
    }
    // The sweep reached every outcome, so agreeing with the model is not vacuous.
    let every = [
        "ok-command",
        "ok-status",
        "ok-header",
        "ok-device",
        "width",
        "misaligned",
        "out-of-range",
        "header",
        "command-bits",
        "status",
        "bar",
        "rom",
        "capability-pointer",
        "msi",
        "msi-x",
        "power-management",
        "pci-express",
        "capability",
        "extended",
    ];
    assert_eq!(seen, every.into_iter().collect());
}

#[test]
fn header_fields_one_by_one() {
    let f = fixture();
    let ok = |off: u16, w: u16, v: u32| check_write(&f, off, w, v, 0);
    assert_eq!(ok(0x00, 2, 0x1234), Err(Refusal::Header), "vendor ID");
    assert_eq!(ok(0x02, 2, 0x1234), Err(Refusal::Header), "device ID");
    assert_eq!(ok(0x08, 4, 0), Err(Refusal::Header), "revision and class");
    assert_eq!(ok(0x0C, 1, 0x10), Ok(WriteKind::HeaderMisc), "cache line size");
    assert_eq!(ok(0x0D, 1, 0x40), Ok(WriteKind::HeaderMisc), "latency timer");
    assert_eq!(ok(0x0C, 2, 0x4010), Ok(WriteKind::HeaderMisc), "both at once");
    assert_eq!(ok(0x0C, 4, 0x10), Err(Refusal::Header), "a dword at 0x0C also writes header type and BIST");
    assert_eq!(ok(0x0E, 1, 0), Err(Refusal::Header), "header type");
    assert_eq!(ok(0x0F, 1, 0x40), Err(Refusal::Header), "BIST start");
    for bar in 0..6 {
        assert_eq!(ok(0x10 + 4 * bar, 4, 0xFFFF_FFFF), Err(Refusal::Bar), "BAR{bar}");
        assert_eq!(ok(0x10 + 4 * bar + 3, 1, 0), Err(Refusal::Bar), "BAR{bar} top byte");
    }
    assert_eq!(ok(0x28, 4, 0), Err(Refusal::Header), "CardBus CIS");
    assert_eq!(ok(0x2C, 2, 0), Err(Refusal::Header), "subsystem vendor");
    assert_eq!(ok(0x2E, 2, 0), Err(Refusal::Header), "subsystem ID");
    assert_eq!(ok(0x30, 4, 1), Err(Refusal::Rom), "expansion ROM enable");
    assert_eq!(ok(0x34, 1, 0x40), Err(Refusal::CapabilityPointer));
    assert_eq!(ok(0x34, 4, 0), Err(Refusal::CapabilityPointer), "lowest refused byte names the reason");
    assert_eq!(ok(0x38, 4, 0), Err(Refusal::Header), "reserved");
    assert_eq!(ok(0x3C, 1, 11), Ok(WriteKind::HeaderMisc), "interrupt line");
    assert_eq!(ok(0x3D, 1, 1), Err(Refusal::Header), "interrupt pin");
    assert_eq!(ok(0x3C, 2, 0x010B), Err(Refusal::Header), "line and pin together");
    assert_eq!(ok(0x3E, 2, 0), Err(Refusal::Header), "Min_Gnt and Max_Lat");
}

#[test]
fn command_register_only_io_memory_and_bus_master_change() {
    let f = fixture();
    let w16 = |v: u32, cur: u16| check_write(&f, 0x04, 2, v, cur);
    assert_eq!(w16(0x0006, 0), Ok(WriteKind::Command { command: 0x0006 }), "memory + bus master on");
    assert_eq!(w16(0x0001, 0x0007), Ok(WriteKind::Command { command: 0x0001 }), "two bits off");
    for bit in 3..16 {
        assert_eq!(w16(1 << bit, 0), Err(Refusal::CommandBits), "setting bit {bit}");
        assert_eq!(w16(0x0006, 1 << bit), Err(Refusal::CommandBits), "clearing bit {bit}");
        assert_eq!(w16(0x0006 | 1 << bit, 1 << bit), Ok(WriteKind::Command { command: 0x0006 | 1 << bit }), "{bit}");
    }
    // Interrupt Disable (bit 10) stays as the kernel set it.
    assert_eq!(w16(0x0006, 0x0400), Err(Refusal::CommandBits));
    // Byte writes replace one byte of the current value.
    assert_eq!(check_write(&f, 0x04, 1, 0x02, 0x0400), Ok(WriteKind::Command { command: 0x0402 }));
    assert_eq!(check_write(&f, 0x05, 1, 0x04, 0x0406), Ok(WriteKind::Command { command: 0x0406 }));
    assert_eq!(check_write(&f, 0x05, 1, 0x00, 0x0406), Err(Refusal::CommandBits), "clears Interrupt Disable");
    assert_eq!(check_write(&f, 0x04, 1, 0x0F, 0), Err(Refusal::CommandBits), "special cycles");
    // A dword write carries the status register too.
    assert_eq!(check_write(&f, 0x04, 4, 0x0000_0002, 0), Ok(WriteKind::Command { command: 2 }));
    assert_eq!(check_write(&f, 0x04, 4, 0xF900_0002, 0), Ok(WriteKind::Command { command: 2 }), "clearing errors");
    assert_eq!(check_write(&f, 0x04, 4, 0x0010_0002, 0), Err(Refusal::Status), "capability list bit");
    assert_eq!(check_write(&f, 0x04, 4, 0x0010_0008, 0), Err(Refusal::CommandBits), "command checked first");
}

#[test]
fn status_register_accepts_only_write_one_to_clear() {
    let f = fixture();
    let st = |v: u32| check_write(&f, 0x06, 2, v, 0);
    assert_eq!(st(0), Ok(WriteKind::StatusClear));
    for bit in 0..16 {
        let want =
            if [8, 11, 12, 13, 14, 15].contains(&bit) { Ok(WriteKind::StatusClear) } else { Err(Refusal::Status) };
        assert_eq!(st(1 << bit), want, "status bit {bit}");
    }
    assert_eq!(st(0xF900), Ok(WriteKind::StatusClear));
    assert_eq!(st(0x0290), Err(Refusal::Status), "read-back of a typical status value");
    assert_eq!(check_write(&f, 0x06, 1, 0x10, 0), Err(Refusal::Status), "low byte");
    assert_eq!(check_write(&f, 0x07, 1, 0xF9, 0), Ok(WriteKind::StatusClear), "high byte");
    assert_eq!(check_write(&f, 0x07, 1, 0x02, 0), Err(Refusal::Status), "DEVSEL timing");
}

#[test]
fn capabilities_are_read_only_and_the_gaps_writable() {
    let f = fixture();
    let w = |off: u16, width: u16| check_write(&f, off, width, 0, 0);
    assert_eq!(w(0x44, 2), Err(Refusal::PowerManagement), "PMCSR (D3hot)");
    assert_eq!(w(0x48, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0x52, 2), Err(Refusal::Msi), "MSI control");
    assert_eq!(w(0x54, 4), Err(Refusal::Msi), "MSI address");
    assert_eq!(w(0x64, 4), Err(Refusal::Msi), "MSI pending bits, last dword of 24 bytes");
    assert_eq!(w(0x68, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0x72, 2), Err(Refusal::MsiX), "MSI-X control");
    assert_eq!(w(0x78, 4), Err(Refusal::MsiX), "PBA offset");
    assert_eq!(w(0x7C, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0x88, 2), Err(Refusal::PciExpress), "device control (FLR)");
    assert_eq!(w(0x90, 2), Err(Refusal::PciExpress), "link control");
    assert_eq!(w(0xB8, 4), Err(Refusal::PciExpress), "last dword of a v2 structure");
    assert_eq!(w(0xBC, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0xC2, 2), Err(Refusal::Capability), "VPD address");
    assert_eq!(w(0xCC, 4), Err(Refusal::Capability), "unknown length: up to the next capability");
    assert_eq!(w(0xDA, 2), Err(Refusal::Capability), "vendor length 0x0B rounds up to the dword");
    assert_eq!(w(0xDC, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0xFC, 4), Ok(WriteKind::DeviceSpecific));
    assert_eq!(w(0x100, 4), Err(Refusal::Extended));
    assert_eq!(w(0xFFC, 4), Err(Refusal::Extended));
}

/// A hand-built function with these legacy capabilities (and `msi` fields).
fn with_caps(legacy: &[(u8, u16)], msi: Option<Msi>, vendor_lengths: &[(u16, u8)]) -> Function {
    Function {
        bdf: Bdf::new(0, 0, 1, 0),
        vendor: 0x1234,
        device: 0x5678,
        class: 0xFF00,
        header_type: 0,
        bars: Vec::new(),
        caps: Capabilities {
            legacy: legacy.to_vec(),
            msi,
            vendor_lengths: vendor_lengths.to_vec(),
            ..Default::default()
        },
        path: Vec::new(),
        bridge_buses: None,
    }
}

/// First writable dword at or after 0x40 (0x100 if none).
fn first_writable(f: &Function) -> u16 {
    (0x40..0x100).step_by(4).find(|&o| check_write(f, o, 4, 0, 0).is_ok()).unwrap_or(0x100)
}

#[test]
fn msi_length_follows_its_control_word() {
    // Lengths 10, 14, 20, 24 bytes; each extent ends on the next dword boundary.
    for (is_64bit, per_vector_mask, end) in
        [(false, false, 0x5C), (true, false, 0x60), (false, true, 0x64), (true, true, 0x68)]
    {
        let msi = Msi { offset: 0x50, is_64bit, per_vector_mask, vectors: 1 };
        let f = with_caps(&[(id::MSI, 0x50)], Some(msi), &[]);
        for at in 0x40u16..0x100 {
            let want = if (0x50..end).contains(&at) { Err(Refusal::Msi) } else { Ok(WriteKind::DeviceSpecific) };
            assert_eq!(check_write(&f, at, 1, 0, 0), want, "64-bit {is_64bit} mask {per_vector_mask}, byte {at:#x}");
        }
        assert_eq!(first_writable(&f), 0x40);
    }
    // An MSI structure the function's `Msi` does not describe is taken at its largest.
    let other = Msi { offset: 0x60, is_64bit: false, per_vector_mask: false, vectors: 1 };
    let f = with_caps(&[(id::MSI, 0x50), (id::MSI, 0x70)], Some(other), &[]);
    assert_eq!(check_write(&f, 0x64, 4, 0, 0), Err(Refusal::Msi));
    assert_eq!(check_write(&f, 0x68, 4, 0, 0), Ok(WriteKind::DeviceSpecific));
    let f = with_caps(&[(id::MSI, 0x50)], None, &[]);
    assert_eq!(check_write(&f, 0x64, 4, 0, 0), Err(Refusal::Msi));
    assert_eq!(check_write(&f, 0x68, 4, 0, 0), Ok(WriteKind::DeviceSpecific));
}

#[test]
fn unknown_and_vendor_capabilities_without_lengths_run_to_the_next_one() {
    // Vendor cap with no recorded length: up to the next capability (0x90).
    let f = with_caps(&[(id::VENDOR, 0x40), (id::PM, 0x90), (0x0A, 0xA0)], None, &[]);
    assert_eq!(check_write(&f, 0x8C, 4, 0, 0), Err(Refusal::Capability));
    assert_eq!(check_write(&f, 0x98, 4, 0, 0), Ok(WriteKind::DeviceSpecific), "after PM's 8 bytes");
    // The last unknown capability runs to 0x100.
    assert_eq!(check_write(&f, 0xFC, 4, 0, 0), Err(Refusal::Capability));
    assert_eq!(first_writable(&f), 0x98);
    // A vendor length below 3 still covers the header and length byte; one past 0x100 is clipped.
    let f = with_caps(&[(id::VENDOR, 0x40), (id::VENDOR, 0xF8)], None, &[(0x40, 0), (0xF8, 0xFF)]);
    assert_eq!(check_write(&f, 0x42, 1, 0, 0), Err(Refusal::Capability));
    assert_eq!(check_write(&f, 0x44, 4, 0, 0), Ok(WriteKind::DeviceSpecific));
    assert_eq!(check_write(&f, 0xFC, 4, 0, 0), Err(Refusal::Capability));
    assert_eq!(check_write(&f, 0x100, 4, 0, 0), Err(Refusal::Extended));
    // A hand-built list's unaligned offset still covers its whole dword.
    let f = with_caps(&[(id::PM, 0x4A)], None, &[]);
    assert_eq!(check_write(&f, 0x48, 1, 0, 0), Err(Refusal::PowerManagement));
    assert_eq!(check_write(&f, 0x54, 4, 0, 0), Ok(WriteKind::DeviceSpecific), "0x4A + 8 rounds up to 0x54");
    assert_eq!(check_write(&f, 0x44, 4, 0, 0), Ok(WriteKind::DeviceSpecific));
    // Offsets a hand-built list might hold outside 0x40..0x100 do not disturb the header rules.
    let f = with_caps(&[(id::PM, 0x3C), (id::PM, 0x200)], None, &[]);
    assert_eq!(check_write(&f, 0x3C, 1, 5, 0), Ok(WriteKind::HeaderMisc));
    assert_eq!(first_writable(&f), 0x40);
}

#[test]
fn a_malformed_capability_list_makes_all_of_0x40_to_0x100_read_only() {
    let looped = FakeFunction::endpoint(None, 4, 0, 0x1234, 0x11E8, 0xFF00)
        .with_mem_bar(0, 1 << 20, false, false)
        .with_cap(0x40, id::MSI, &[0, 0])
        .with_bytes(0x41, &[0x40]);
    let cfg = FakeConfig::new(0, vec![looped]);
    let f = enumerate(&cfg, &virt_host(), true).unwrap().remove(0);
    assert!(f.caps.malformed && f.caps.legacy.is_empty());
    for off in (0x40..0x100).step_by(4) {
        assert_eq!(check_write(&f, off, 4, 0, 0), Err(Refusal::Capability), "{off:#x}");
    }
    assert_eq!(check_write(&f, 0x04, 2, 2, 0), Ok(WriteKind::Command { command: 2 }), "header rules unchanged");
}

#[test]
fn bridges_and_unknown_headers_refuse_every_write() {
    for (header_type, why) in
        [(1, Refusal::BridgeFunction), (2, Refusal::BridgeFunction), (0x7F, Refusal::UnknownHeader)]
    {
        let mut f = fixture();
        f.header_type = header_type;
        for off in 0..0x1000u16 {
            for width in [1, 2, 4] {
                if off.is_multiple_of(width) && u32::from(off) + u32::from(width) <= 0x1000 {
                    assert_eq!(check_write(&f, off, width, 0, 0), Err(why), "type {header_type} {off:#x}/{width}");
                }
            }
        }
    }
    // Through enumeration too: a real bridge header.
    let cfg = FakeConfig::new(0, vec![FakeFunction::bridge(None, 1, 0x1B36, 0x0001)]);
    let bridge = enumerate(&cfg, &virt_host(), true).unwrap().remove(0);
    assert_eq!(check_write(&bridge, 0x04, 2, 0x0006, 0), Err(Refusal::BridgeFunction));
    assert_eq!(check_write(&bridge, 0x18, 4, 0, 0), Err(Refusal::BridgeFunction), "bus numbers");
    // The multi-function bit does not hide the layout.
    let mut f = fixture();
    f.header_type = 0x81;
    assert_eq!(check_write(&f, 0x04, 2, 0, 0), Err(Refusal::BridgeFunction));
}

#[test]
fn alignment_width_and_range() {
    let f = fixture();
    for width in [0u16, 3, 5, 8, 16] {
        assert_eq!(check_write(&f, 0x40, width, 0, 0), Err(Refusal::Width), "width {width}");
    }
    assert_eq!(check_write(&f, 0x48, 1, 0x100, 0), Err(Refusal::Width), "value wider than a byte");
    assert_eq!(check_write(&f, 0x48, 2, 0x1_0000, 0), Err(Refusal::Width), "value wider than a word");
    for (off, width) in [(0x49, 2), (0x49, 4), (0x4A, 4), (0x4B, 2), (0x05, 2), (0x0D, 2), (0x3E, 4)] {
        assert_eq!(check_write(&f, off, width, 0, 0), Err(Refusal::Misaligned), "{off:#x}/{width}");
    }
    assert_eq!(check_write(&f, 0xFFF, 1, 0, 0), Err(Refusal::Extended));
    assert_eq!(check_write(&f, 0x1000, 1, 0, 0), Err(Refusal::OutOfRange));
    assert_eq!(check_write(&f, 0xFFFC, 4, 0, 0), Err(Refusal::OutOfRange));
    let mut bridge = fixture();
    bridge.header_type = 1;
    assert_eq!(check_write(&bridge, 0x41, 2, 0, 0), Err(Refusal::Misaligned), "argument checks come first");
}

#[test]
fn refusal_names_are_distinct_and_displayed() {
    let all = [
        Refusal::Width,
        Refusal::Misaligned,
        Refusal::OutOfRange,
        Refusal::BridgeFunction,
        Refusal::UnknownHeader,
        Refusal::Header,
        Refusal::CommandBits,
        Refusal::Status,
        Refusal::Bar,
        Refusal::Rom,
        Refusal::CapabilityPointer,
        Refusal::Msi,
        Refusal::MsiX,
        Refusal::PowerManagement,
        Refusal::PciExpress,
        Refusal::Capability,
        Refusal::Extended,
    ];
    let names: std::collections::BTreeSet<&str> = all.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), all.len());
    for r in all {
        let shown = r.to_string();
        assert!(shown.starts_with(r.name()) && shown.len() > r.name().len() + 3, "{shown}");
    }
}

fn function(class: u32, header_type: u8, port_type: Option<u8>) -> Function {
    let mut f = with_caps(&[], None, &[]);
    f.class = class;
    f.header_type = header_type;
    f.caps.pcie_port_type = port_type;
    f
}

#[test]
fn claimable_refuses_bridges_ports_and_the_iommu() {
    type Case = (u32, u8, Option<u8>, Result<(), ClaimRefusal>);
    let cases: &[Case] = &[
        (0x060000, 0, None, Err(ClaimRefusal::HostBridge)),
        (0x060000, 0, Some(0), Err(ClaimRefusal::HostBridge)),
        (0x060100, 0, None, Err(ClaimRefusal::IsaBridge)),
        (0x060200, 0, None, Err(ClaimRefusal::Bridge(0x02))),
        (0x060400, 1, None, Err(ClaimRefusal::BridgeHeader)),
        (0x060400, 1, Some(4), Err(ClaimRefusal::BridgeHeader)),
        (0x060401, 0, None, Err(ClaimRefusal::Bridge(0x04))),
        (0x060700, 2, None, Err(ClaimRefusal::CardBusHeader)),
        (0x060900, 0, None, Err(ClaimRefusal::Bridge(0x09))),
        (0x068000, 0, None, Err(ClaimRefusal::Bridge(0x80))),
        (0x00FF00, 1, None, Err(ClaimRefusal::BridgeHeader)),
        (0x00FF00, 0x81, None, Err(ClaimRefusal::BridgeHeader)),
        (0x00FF00, 0x03, None, Err(ClaimRefusal::UnknownHeader(3))),
        (0x00FF00, 0x7F, None, Err(ClaimRefusal::UnknownHeader(0x7F))),
        (0x00FF00, 0, Some(4), Err(ClaimRefusal::PciePort(4))),
        (0x00FF00, 0, Some(6), Err(ClaimRefusal::PciePort(6))),
        (0x00FF00, 0, Some(8), Err(ClaimRefusal::PciePort(8))),
        (0x080600, 0, Some(9), Err(ClaimRefusal::Iommu)),
        (0x00FF00, 0, None, Ok(())),
        (0x00FF00, 0x80, None, Ok(())),
        (0x010802, 0, Some(0), Ok(())),
        (0x020000, 0, Some(1), Ok(())),
        (0x0C0330, 0, Some(9), Ok(())),
        (0x080500, 0, None, Ok(())),
        (0x050000, 0, None, Ok(())),
        (0x070000, 0, None, Ok(())),
    ];
    for &(class, header_type, port_type, want) in cases {
        assert_eq!(claimable(&function(class, header_type, port_type)), want, "class {class:06x} type {header_type}");
    }
    // Every class 0x06xx is refused, whatever the subclass.
    for sub in 0..=0xFFu32 {
        assert!(claimable(&function(0x06_00_00 | sub << 8, 0, None)).is_err(), "subclass {sub:#x}");
    }
    // Names and text.
    let all = [
        ClaimRefusal::BridgeHeader,
        ClaimRefusal::CardBusHeader,
        ClaimRefusal::UnknownHeader(3),
        ClaimRefusal::PciePort(4),
        ClaimRefusal::HostBridge,
        ClaimRefusal::IsaBridge,
        ClaimRefusal::Bridge(4),
        ClaimRefusal::Iommu,
    ];
    let names: std::collections::BTreeSet<&str> = all.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), all.len());
    assert_eq!(ClaimRefusal::Bridge(0x80).to_string(), "bridge (class 0x0680)");
    assert_eq!(ClaimRefusal::UnknownHeader(3).to_string(), "unknown-header (header type 0x03)");
}

#[test]
fn claimable_on_enumerated_functions() {
    let host_bridge = FakeFunction::endpoint(None, 0, 0, 0x8086, 0x29C0, 0x060000);
    let lpc = FakeFunction::endpoint(None, 0x1F, 0, 0x8086, 0x2918, 0x060100);
    let rp = FakeFunction::bridge(None, 1, 0x1B36, 0x000C).with_cap(0x40, id::PCIE, &[0x42, 0]);
    let nic = FakeFunction::endpoint(Some(2), 0, 0, 0x8086, 0x10D3, 0x020000).with_mem_bar(0, 1 << 17, false, false);
    let cfg = FakeConfig::new(0, vec![host_bridge, lpc, rp, nic]);
    let fns = enumerate(&cfg, &virt_host(), true).unwrap();
    let got: Vec<(String, Result<(), ClaimRefusal>)> = fns.iter().map(|f| (f.bdf.to_string(), claimable(f))).collect();
    assert_eq!(
        got,
        vec![
            ("0000:00:00.0".to_string(), Err(ClaimRefusal::HostBridge)),
            ("0000:00:01.0".to_string(), Err(ClaimRefusal::BridgeHeader)),
            ("0000:01:00.0".to_string(), Ok(())),
            ("0000:00:1f.0".to_string(), Err(ClaimRefusal::IsaBridge)),
        ]
    );
}

#[test]
fn msix_table_and_pba_pages_are_found() {
    let f = fixture();
    // 8 entries: table at BAR0+0x2000 (128 bytes), PBA at BAR0+0x3000 (8 bytes).
    assert_eq!(f.caps.msix.map(|m| (m.table_size, m.table, m.pba)), Some((8, (0, 0x2000), (0, 0x3000))));
    assert_eq!(msix_pages(&f, 0).as_slice(), vec![(0x2000, 0x4000)], "adjacent pages merge");
    assert_eq!(msix_pages(&f, 1).as_slice(), Vec::<(u64, u64)>::new(), "other BARs hold neither");
    let with = |table: (u8, u32), pba: (u8, u32), size: u16| {
        let mut g = f.clone();
        g.caps.msix = g.caps.msix.map(|m| crate::caps::MsiX { table, pba, table_size: size, ..m });
        g
    };
    // Both in one page (QEMU's nvme: table at 0x2000, PBA at 0x3000 of a 16 KiB BAR, or both close).
    assert_eq!(msix_pages(&with((0, 0x2000), (0, 0x2800), 64), 0).as_slice(), vec![(0x2000, 0x3000)]);
    // A table crossing a page boundary takes both pages; PBA in another BAR.
    assert_eq!(msix_pages(&with((2, 0xFF0), (4, 0), 2), 2).as_slice(), vec![(0, 0x2000)]);
    assert_eq!(msix_pages(&with((2, 0xFF0), (4, 0), 2), 4).as_slice(), vec![(0, 0x1000)]);
    // 2048 entries: a 32 KiB table; the PBA right behind it.
    assert_eq!(msix_pages(&with((0, 0), (0, 0x8000), 2048), 0).as_slice(), vec![(0, 0x9000)]);
    // Apart: two ranges, sorted.
    assert_eq!(msix_pages(&with((0, 0x5000), (0, 0x1000), 8), 0).as_slice(), vec![(0x1000, 0x2000), (0x5000, 0x6000)]);
    let mut none = f.clone();
    none.caps.msix = None;
    assert_eq!(msix_pages(&none, 0).as_slice(), Vec::<(u64, u64)>::new());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    /// Random writes (any offset, width, value and command state) agree with the model.
    #[test]
    fn random_writes_match_the_model(
        off in prop_oneof![0u32..0x110, 0u32..0x1100],
        width in prop_oneof![Just(1u32), Just(2), Just(4), 0u32..9],
        value in prop_oneof![any::<u32>(), 0u32..0x100, 0u32..8, Just(0)],
        cur in any::<u16>(),
    ) {
        let f = fixture();
        prop_assert_eq!(policy(&f, off, width, value, cur), model(off, width, value, cur));
    }
}
