//! Parsers for the ACPI tables that describe IOMMUs, over raw table images:
//! [`dmar`] (Intel VT-d), [`ivrs`] (AMD-Vi), [`iort`] (Arm), [`viot`] (virtio-iommu),
//! and [`gtdt`] (the Arm generic timer's interrupts, which the `acpi` crate does not model).
//!
//! Every parser checks the common header (signature, length, checksum) and the
//! bounds of every structure, returns a typed [`TableError`] for malformed
//! input, skips unknown structure types with a log line, and never panics
//! (property-tested and fuzzed on random and mutated images). Finding the
//! tables (RSDP → RSDT/XSDT) and MADT/MCFG are the `acpi` crate's job in the
//! kernel; these parsers only need the bytes of one table.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dmar;
pub mod gtdt;
pub mod iort;

pub mod ivrs;
pub mod prt;
pub mod viot;

use core::fmt;

/// Why a table image was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Shorter than its header or than the length it declares.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The signature is not the expected one.
    BadSignature([u8; 4]),
    /// The bytes do not sum to zero.
    BadChecksum(u8),
    /// A structure's length is impossible (zero, too small, or past the table end).
    BadLength {
        /// Offset of the structure in the table.
        offset: usize,
        /// Its declared length.
        length: usize,
    },
    /// Two structures claim the same bytes (an offset points back into another).
    Overlap {
        /// Offset of the structure.
        offset: usize,
    },
    /// A reference to another structure points nowhere valid.
    BadReference {
        /// Offset of the structure holding the reference.
        offset: usize,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Truncated { needed, available } => {
                write!(f, "table truncated: {needed} bytes needed, {available} present")
            }
            TableError::BadSignature(s) => {
                write!(f, "unexpected signature {:?}", core::str::from_utf8(s).unwrap_or("????"))
            }
            TableError::BadChecksum(sum) => write!(f, "checksum error (bytes sum to {sum:#04x}, not 0)"),
            TableError::BadLength { offset, length } => write!(f, "structure at {offset:#x} has bad length {length}"),
            TableError::Overlap { offset } => write!(f, "structure at {offset:#x} overlaps another"),
            TableError::BadReference { offset } => write!(f, "structure at {offset:#x} references nothing valid"),
        }
    }
}

/// Size of the standard ACPI table header (ACPI 6.5 §5.2.6).
pub const HEADER_LEN: usize = 36;

/// Little-endian readers that return `None` past the end instead of panicking.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&self, o: usize) -> Option<u8> {
        self.0.get(o).copied()
    }
    pub fn u16(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.0.get(o..o.checked_add(2)?)?.try_into().ok()?))
    }
    pub fn u32(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.0.get(o..o.checked_add(4)?)?.try_into().ok()?))
    }
    pub fn u64(&self, o: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.0.get(o..o.checked_add(8)?)?.try_into().ok()?))
    }
}

/// Checks signature, declared length and checksum; returns the table's bytes (exactly its length).
pub fn check_header<'a>(data: &'a [u8], signature: &[u8; 4], min_len: usize) -> Result<&'a [u8], TableError> {
    if data.len() < HEADER_LEN {
        return Err(TableError::Truncated { needed: HEADER_LEN, available: data.len() });
    }
    let sig: [u8; 4] = [data[0], data[1], data[2], data[3]];
    if &sig != signature {
        return Err(TableError::BadSignature(sig));
    }
    let length = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    if length < min_len.max(HEADER_LEN) {
        return Err(TableError::BadLength { offset: 0, length });
    }
    if length > data.len() {
        return Err(TableError::Truncated { needed: length, available: data.len() });
    }
    let table = &data[..length];
    let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    if sum != 0 {
        return Err(TableError::BadChecksum(sum));
    }
    Ok(table)
}

/// Walks `[start, end)` as a sequence of structures whose length is read by
/// `len_at(offset)`; yields `(offset, length)` or the first error.
pub(crate) fn structures<'t>(
    table: &'t [u8],
    start: usize,
    min_len: usize,
    len_at: impl Fn(&Bytes<'_>, usize) -> Option<usize> + 't,
) -> impl Iterator<Item = Result<(usize, usize), TableError>> + 't {
    let mut offset = start;
    let mut failed = false;
    core::iter::from_fn(move || {
        if failed || offset >= table.len() {
            return None;
        }
        let b = Bytes(table);
        let r = match len_at(&b, offset) {
            None => Err(TableError::Truncated { needed: offset + min_len, available: table.len() }),
            Some(len) if len < min_len || offset + len > table.len() => {
                Err(TableError::BadLength { offset, length: len })
            }
            Some(len) => {
                let item = (offset, len);
                offset += len;
                Ok(item)
            }
        };
        failed = r.is_err();
        Some(r)
    })
}

/// Recomputes the checksum byte (offset 9) of a table image; for tests and tools.
pub fn fix_checksum(table: &mut [u8]) {
    if table.len() > 9 {
        table[9] = 0;
        let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        table[9] = 0u8.wrapping_sub(sum);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// A table image with a header, body, correct length and checksum.
    pub fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; super::HEADER_LEN];
        t[0..4].copy_from_slice(sig);
        t[8] = revision;
        t[10..16].copy_from_slice(b"PCULLS");
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        super::fix_checksum(&mut t);
        t
    }

    /// Mutates random bytes (xorshift) and runs `f` on each variant;
    /// `ACPI_FUZZ_ROUNDS` overrides the number of rounds for long runs.
    pub fn mutate(base: &[u8], rounds: usize, mut f: impl FnMut(&[u8])) {
        let rounds = std::env::var("ACPI_FUZZ_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(rounds);
        let seed =
            std::env::var("ACPI_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x2545_F491_4F6C_DD1Du64);
        let mut x = seed | 1;
        for round in 0..rounds {
            let mut d = base.to_vec();
            for _ in 0..1 + round % 4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % d.len().max(1);
                if let Some(b) = d.get_mut(i) {
                    *b = (x >> 32) as u8;
                }
            }
            if round % 2 == 0 {
                super::fix_checksum(&mut d);
            }
            if round % 7 == 0 {
                d.truncate((x as usize) % (d.len() + 1));
            }
            f(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let t = testutil::table(b"DMAR", 1, &[0u8; 12]);
        assert!(check_header(&t, b"DMAR", 48).is_ok());
        assert_eq!(check_header(&t, b"IVRS", 48), Err(TableError::BadSignature(*b"DMAR")));
        assert_eq!(check_header(&t[..20], b"DMAR", 48), Err(TableError::Truncated { needed: 36, available: 20 }));
        assert_eq!(check_header(&t[..40], b"DMAR", 48), Err(TableError::Truncated { needed: 48, available: 40 }));
        let mut bad = t.clone();
        bad[20] ^= 1;
        assert!(matches!(check_header(&bad, b"DMAR", 48), Err(TableError::BadChecksum(_))));
        let short = testutil::table(b"DMAR", 1, &[0u8; 2]);
        assert_eq!(check_header(&short, b"DMAR", 48), Err(TableError::BadLength { offset: 0, length: 38 }));
    }
}

#[cfg(test)]
mod random_bytes {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes, with a valid-looking header or without, never panic any parser.
        #[test]
        fn never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), sig in 0usize..4, fix in any::<bool>()) {
            let sigs: [&[u8; 4]; 4] = [b"DMAR", b"IVRS", b"IORT", b"VIOT"];
            let mut t = super::testutil::table(sigs[sig], 1, &body);
            if !fix {
                t[9] ^= 0x5A;
            }
            let _ = super::dmar::parse(&t);
            let _ = super::ivrs::parse(&t);
            let _ = super::viot::parse(&t);
            if let Ok(i) = super::iort::parse(&t) {
                for n in &i.nodes {
                    let _ = i.map_rid(n.offset, 7);
                }
            }
            let _ = super::dmar::parse(&body);
        }
    }
}
