//! PCI interrupt routing (`_PRT`, ACPI 6.5 §6.2.13) read from a DSDT's AML
//! without an interpreter, for the shape firmware uses on arm: a `_PRT`
//! declared as a static package (`Name (_PRT, Package {...})`) whose entries
//! name either a GSI directly (source 0) or an interrupt link device whose
//! `_CRS` is a static resource template holding an Extended Interrupt
//! descriptor (ACPI 6.5 §6.4.3.6). QEMU virt builds exactly that
//! (`hw/pci-host/gpex-acpi.c`: links `L000`..`L003`, `_HID` PNP0C0F).
//!
//! A `_PRT` that is a method, or a link whose `_CRS` is computed, is reported
//! as [`PrtError::NotStatic`]: evaluating AML needs an interpreter, which the
//! kernel does not have.

use alloc::vec::Vec;
use core::fmt;

/// One routing entry: device `device` (all functions), INTx `pin` (0 = INTA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrtEntry {
    /// PCI device number on the bridge's bus.
    pub device: u16,
    /// Interrupt pin, 0 = INTA .. 3 = INTD.
    pub pin: u8,
    /// Global system interrupt the pin is wired to.
    pub gsi: u32,
}

/// Why no routing table could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrtError {
    /// The DSDT declares no `_PRT`.
    NotFound,
    /// The `_PRT` (or a link's `_CRS`) is code, not data.
    NotStatic(&'static str),
    /// The AML ends or nests impossibly.
    Malformed(usize),
}

impl fmt::Display for PrtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrtError::NotFound => f.write_str("the DSDT declares no _PRT"),
            PrtError::NotStatic(what) => write!(f, "{what} is computed by AML, which is not interpreted"),
            PrtError::Malformed(at) => write!(f, "AML malformed at byte {at:#x}"),
        }
    }
}

const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const VAR_PACKAGE_OP: u8 = 0x13;
const BUFFER_OP: u8 = 0x11;
const EXT_OP: u8 = 0x5B;
const DEVICE_OP: u8 = 0x82;
const EXTENDED_INTERRUPT: u8 = 0x89;
const END_TAG: u8 = 0x79;

/// Reads a PkgLength (ACPI 6.5 §20.2.4) at `at`: (length including its own bytes, bytes it took).
fn pkg_length(aml: &[u8], at: usize) -> Result<(usize, usize), PrtError> {
    let lead = *aml.get(at).ok_or(PrtError::Malformed(at))?;
    let extra = usize::from(lead >> 6);
    if extra == 0 {
        return Ok((usize::from(lead & 0x3F), 1));
    }
    let mut len = usize::from(lead & 0x0F);
    for i in 0..extra {
        let b = *aml.get(at + 1 + i).ok_or(PrtError::Malformed(at))?;
        len |= usize::from(b) << (4 + 8 * i);
    }
    Ok((len, 1 + extra))
}

/// The end of a structure whose PkgLength starts at `at`, checked against the stream.
fn pkg_end(aml: &[u8], at: usize) -> Result<(usize, usize), PrtError> {
    let (len, took) = pkg_length(aml, at)?;
    let end = at.checked_add(len).filter(|&e| e <= aml.len() && len >= took).ok_or(PrtError::Malformed(at))?;
    Ok((end, at + took))
}

/// An AML data object that is a constant integer; `None` for anything else.
fn integer(aml: &[u8], at: usize) -> Result<Option<(u64, usize)>, PrtError> {
    let op = *aml.get(at).ok_or(PrtError::Malformed(at))?;
    let bytes = |n: usize| -> Result<u64, PrtError> {
        let b = aml.get(at + 1..at + 1 + n).ok_or(PrtError::Malformed(at))?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    Ok(Some(match op {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0xFF => (u64::MAX, 1),
        0x0A => (bytes(1)?, 2),
        0x0B => (bytes(2)?, 3),
        0x0C => (bytes(4)?, 5),
        0x0E => (bytes(8)?, 9),
        _ => return Ok(None),
    }))
}

fn is_lead(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'_'
}

/// A NameString at `at` (ACPI 6.5 §20.2.2): its last segment and its length.
fn name_string(aml: &[u8], at: usize) -> Result<Option<([u8; 4], usize)>, PrtError> {
    let mut i = at;
    while matches!(aml.get(i), Some(b'\\') | Some(b'^')) {
        i += 1;
    }
    let segments = match aml.get(i) {
        Some(0x2E) => {
            i += 1;
            2
        }
        Some(0x2F) => {
            i += 1;
            let n = usize::from(*aml.get(i).ok_or(PrtError::Malformed(i))?);
            i += 1;
            n
        }
        Some(0x00) => return Ok(Some(([0; 4], i + 1 - at))),
        Some(&b) if is_lead(b) => 1,
        _ => return Ok(None),
    };
    if segments == 0 {
        return Err(PrtError::Malformed(at));
    }
    let end = i + 4 * segments;
    let last = aml.get(end - 4..end).ok_or(PrtError::Malformed(at))?;
    Ok(Some(([last[0], last[1], last[2], last[3]], end - at)))
}

/// Offsets right after every `NameOp <seg>` in `aml[range]` (a byte scan: a
/// NameOp followed by the exact segment).
fn names<'a>(aml: &'a [u8], start: usize, end: usize, seg: &[u8; 4]) -> impl Iterator<Item = usize> + 'a {
    let seg = *seg;
    (start..end.saturating_sub(5)).filter(move |&i| aml[i] == NAME_OP && aml[i + 1..i + 5] == seg).map(|i| i + 5)
}

/// The first interrupt of the Extended Interrupt descriptor in the static
/// `_CRS` of device `link` (a link device in the DSDT).
fn link_gsi(aml: &[u8], link: [u8; 4]) -> Result<u32, PrtError> {
    // Device (LNKx) { ... }: ExtOpPrefix DeviceOp PkgLength NameString TermList.
    for i in 0..aml.len().saturating_sub(2) {
        if aml[i] != EXT_OP || aml[i + 1] != DEVICE_OP {
            continue;
        }
        let Ok((end, body)) = pkg_end(aml, i + 2) else { continue };
        let Ok(Some((name, took))) = name_string(aml, body) else { continue };
        if name != link {
            continue;
        }
        let Some(crs) = names(aml, body + took, end, b"_CRS").next() else {
            return Err(PrtError::NotStatic("an interrupt link's _CRS"));
        };
        if aml.get(crs) != Some(&BUFFER_OP) {
            return Err(PrtError::NotStatic("an interrupt link's _CRS"));
        }
        let (buf_end, inner) = pkg_end(aml, crs + 1)?;
        let (_, took) = integer(aml, inner)?.ok_or(PrtError::NotStatic("a _CRS buffer size"))?;
        let mut r = inner + took;
        while r < buf_end {
            let tag = aml[r];
            if tag == END_TAG || tag & 0x80 == 0 {
                // Small descriptors: length in the tag's low 3 bits.
                if tag == END_TAG || tag >> 3 == 0x0F {
                    break;
                }
                r += 1 + usize::from(tag & 7);
                continue;
            }
            let len = usize::from(*aml.get(r + 1).ok_or(PrtError::Malformed(r))?)
                | usize::from(*aml.get(r + 2).ok_or(PrtError::Malformed(r))?) << 8;
            if tag == EXTENDED_INTERRUPT {
                let count = *aml.get(r + 4).ok_or(PrtError::Malformed(r))?;
                let first = aml.get(r + 5..r + 9).ok_or(PrtError::Malformed(r))?;
                if count == 0 || len < 6 {
                    return Err(PrtError::Malformed(r));
                }
                return Ok(u32::from_le_bytes([first[0], first[1], first[2], first[3]]));
            }
            r += 3 + len;
        }
        return Err(PrtError::NotStatic("an interrupt link without an Extended Interrupt descriptor"));
    }
    Err(PrtError::NotStatic("an interrupt link that is not a device of the DSDT"))
}

/// The routing entries of the first static `_PRT` in `aml` (a DSDT's AML
/// stream, after its 36-byte header).
pub fn parse(aml: &[u8]) -> Result<Vec<PrtEntry>, PrtError> {
    let at = names(aml, 0, aml.len(), b"_PRT").next().ok_or_else(|| {
        // A method declares `MethodOp PkgLength _PRT`: tell it apart from no _PRT at all.
        if aml.windows(4).any(|w| w == b"_PRT") {
            PrtError::NotStatic("the _PRT")
        } else {
            PrtError::NotFound
        }
    })?;
    let op = *aml.get(at).ok_or(PrtError::Malformed(at))?;
    if op != PACKAGE_OP && op != VAR_PACKAGE_OP {
        return Err(PrtError::NotStatic("the _PRT"));
    }
    let (end, mut i) = pkg_end(aml, at + 1)?;
    // NumElements: a byte (Package) or an integer TermArg (VarPackage).
    if op == PACKAGE_OP {
        i += 1;
    } else {
        let (_, took) = integer(aml, i)?.ok_or(PrtError::NotStatic("the _PRT's size"))?;
        i += took;
    }
    let mut out = Vec::new();
    while i < end {
        if aml[i] != PACKAGE_OP {
            return Err(PrtError::NotStatic("a _PRT entry"));
        }
        let (entry_end, mut j) = pkg_end(aml, i + 1)?;
        j += 1; // NumElements (4)
        let (address, took) = integer(aml, j)?.ok_or(PrtError::NotStatic("a _PRT address"))?;
        j += took;
        let (pin, took) = integer(aml, j)?.ok_or(PrtError::NotStatic("a _PRT pin"))?;
        j += took;
        let gsi = if let Some((_, took)) = integer(aml, j)? {
            // Source 0: the fourth element is the GSI.
            j += took;
            integer(aml, j)?.ok_or(PrtError::NotStatic("a _PRT GSI"))?.0 as u32
        } else {
            let (link, _) = name_string(aml, j)?.ok_or(PrtError::Malformed(j))?;
            link_gsi(aml, link)?
        };
        if pin > 3 {
            return Err(PrtError::Malformed(i));
        }
        out.push(PrtEntry { device: (address >> 16) as u16, pin: pin as u8, gsi });
        i = entry_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PkgLength encoding for `len` bytes of content (plus the length's own bytes).
    fn pkg(content: &[u8]) -> Vec<u8> {
        let mut total = content.len() + 1;
        let mut out = Vec::new();
        if total < 0x40 {
            out.push(total as u8);
        } else {
            total += 1;
            if total >= 0x1000 {
                total += 1;
                out.extend_from_slice(&[0x80 | (total & 0xF) as u8, (total >> 4) as u8, (total >> 12) as u8]);
            } else {
                out.extend_from_slice(&[0x40 | (total & 0xF) as u8, (total >> 4) as u8]);
            }
        }
        out.extend_from_slice(content);
        out
    }

    fn dword(v: u32) -> Vec<u8> {
        let mut out = vec![0x0C];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    /// The DSDT shape QEMU virt builds: _PRT over 32 slots x 4 pins naming L000..L003,
    /// and the four link devices with _CRS = Interrupt {base + i}.
    fn qemu_like(base: u32) -> Vec<u8> {
        let mut entries = Vec::new();
        for slot in 0..32u32 {
            for pin in 0..4u32 {
                let link = (pin + slot) % 4;
                let mut e = vec![4];
                e.extend(dword((slot << 16) | 0xFFFF));
                e.extend(if pin == 0 { vec![0x00] } else { vec![0x0A, pin as u8] });
                e.extend_from_slice(format!("L00{link}").as_bytes());
                e.push(0x00);
                entries.push(PACKAGE_OP);
                entries.extend(pkg(&e));
            }
        }
        let mut prt_body = vec![0x0B, 128, 0]; // VarPackage, 128 elements
        prt_body.extend(entries);
        let mut aml = vec![NAME_OP];
        aml.extend_from_slice(b"_PRT");
        aml.push(VAR_PACKAGE_OP);
        aml.extend(pkg(&prt_body));
        for i in 0..4u32 {
            let mut crs = vec![0x0A, 14, EXTENDED_INTERRUPT, 6, 0, 0x09, 1];
            crs.extend_from_slice(&(base + i).to_le_bytes());
            crs.extend_from_slice(&[END_TAG, 0]);
            let mut body = format!("L00{i}").into_bytes();
            body.push(NAME_OP);
            body.extend_from_slice(b"_HID");
            body.extend_from_slice(&[0x0D]);
            body.extend_from_slice(b"PNP0C0F\0");
            body.push(NAME_OP);
            body.extend_from_slice(b"_CRS");
            body.push(BUFFER_OP);
            body.extend(pkg(&crs));
            aml.extend_from_slice(&[EXT_OP, DEVICE_OP]);
            aml.extend(pkg(&body));
        }
        aml
    }

    #[test]
    fn routes_through_link_devices_like_qemu_virt() {
        let entries = parse(&qemu_like(35)).unwrap();
        assert_eq!(entries.len(), 128);
        // Slot 1 (edu), INTA: link (0 + 1) % 4 = L001 = GSI 36.
        let e = entries.iter().find(|e| e.device == 1 && e.pin == 0).unwrap();
        assert_eq!(e.gsi, 36);
        let e = entries.iter().find(|e| e.device == 3 && e.pin == 2).unwrap();
        assert_eq!(e.gsi, 35 + (3 + 2) % 4);
    }

    #[test]
    fn direct_gsis_and_refusals() {
        // Package(1) { Package(4) { 0x0002FFFF, One, Zero, 0x30 } }
        let mut e = vec![4];
        e.extend(dword(0x0002_FFFF));
        e.extend_from_slice(&[0x01, 0x00, 0x0A, 0x30]);
        let mut entry = vec![PACKAGE_OP];
        entry.extend(pkg(&e));
        let mut body = vec![1];
        body.extend(entry);
        let mut aml = vec![NAME_OP];
        aml.extend_from_slice(b"_PRT");
        aml.push(PACKAGE_OP);
        aml.extend(pkg(&body));
        assert_eq!(parse(&aml).unwrap(), vec![PrtEntry { device: 2, pin: 1, gsi: 0x30 }]);
        assert_eq!(parse(&[0x10, 0x20]), Err(PrtError::NotFound));
        // Method (_PRT, 0) { Return (...) }
        let method = [0x14, 0x08, b'_', b'P', b'R', b'T', 0x00, 0xA4, 0x00];
        assert_eq!(parse(&method), Err(PrtError::NotStatic("the _PRT")));
        // A link that does not exist.
        let mut broken = qemu_like(35);
        let cut = broken.windows(2).position(|w| w == [EXT_OP, DEVICE_OP]).unwrap();
        broken.truncate(cut);
        assert!(matches!(parse(&broken), Err(PrtError::NotStatic(_))));
    }

    #[test]
    fn mutated_aml_never_panics() {
        let base = qemu_like(35);
        crate::testutil::mutate(&base, 3000, |d| {
            let _ = parse(d);
        });
    }
}
