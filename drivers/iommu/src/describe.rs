//! Words for what a unit holds: its registers decoded field by field, the
//! structures it keeps for one device, and the page-table walk it would do
//! for one IOVA ([`crate::Iommu::describe`]). The kernel serves the text to
//! the shell's `show`, `dump` and `walk` (read-only; `abi::Sysno::InfoQuery`).
//!
//! Drivers describe a register with a table of [`Field`]s made by
//! [`fields!`](crate::fields!) from the tock-registers field definitions they already
//! program the unit with, so a field's position is written down once, and
//! the spec's name is the identifier itself.

use core::fmt::{self, Write};
use io_pgtable::{Entry, Format};

/// What to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Describe {
    /// The unit's capability and status registers, every field decoded.
    Registers,
    /// The structures the unit reads for `device` (context / STE / DTE ...).
    Device(crate::DeviceId),
    /// The walk the unit would do for `device`'s DMA at `iova`.
    Walk {
        /// The device (the ID the unit sees).
        device: crate::DeviceId,
        /// The I/O virtual address.
        iova: u64,
    },
}

/// One named field of a register or structure word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The spec's name.
    pub name: &'static str,
    /// Lowest bit.
    pub shift: u32,
    /// Mask after shifting.
    pub mask: u64,
    /// What the field means (a few words).
    pub meaning: &'static str,
}

impl Field {
    /// The field's value in `word`.
    pub fn get(&self, word: u64) -> u64 {
        (word >> self.shift) & self.mask
    }

    /// Bits the field covers, as `[hi:lo]` or `[n]`.
    pub fn bits(&self) -> (u32, u32) {
        let width = 64 - self.mask.leading_zeros();
        (self.shift + width.max(1) - 1, self.shift)
    }
}

/// A `&'static [Field]` from tock-registers fields of one register:
/// `fields![CAP: ND "number of domains: 2^(4+2*ND)", SAGAW "..."]`.
#[macro_export]
macro_rules! fields {
    ($reg:ident : $( $field:ident $meaning:literal ),* $(,)?) => {
        &[ $( $crate::describe::Field {
            name: stringify!($field),
            shift: $reg::$field.shift as u32,
            mask: $reg::$field.mask as u64,
            meaning: $meaning,
        } ),* ]
    };
}

/// Writes `NAME = value` and then one line per field, in bit order:
/// `  SAGAW [12:8] = 0x4  supported guest address widths`. Bits the table
/// does not name and that are set are reported as one `other` line, so
/// nothing the hardware says is hidden.
pub fn write_register(out: &mut dyn Write, name: &str, value: u64, fields: &[Field]) -> fmt::Result {
    writeln!(out, "{name} = {value:#018x}")?;
    let mut order: [usize; 64] = [0; 64];
    let n = fields.len().min(64);
    for (i, slot) in order.iter_mut().enumerate().take(n) {
        *slot = i;
    }
    order[..n].sort_unstable_by_key(|&i| fields[i].shift);
    let mut named = 0u64;
    for &i in &order[..n] {
        let f = &fields[i];
        named |= f.mask << f.shift;
        let (hi, lo) = f.bits();
        writeln!(out, "  {:<8} {:<8} = {:<#8x} {}", f.name, BitRange(hi, lo), f.get(value), f.meaning)?;
    }
    let other = value & !named;
    if other != 0 {
        writeln!(out, "  (bits not decoded here: {other:#x})")?;
    }
    Ok(())
}

/// `[hi:lo]` (or `[n]`), padded like a string.
struct BitRange(u32, u32);

impl fmt::Display for BitRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = heapless_str::<10>();
        if self.0 == self.1 {
            let _ = write!(s, "[{}]", self.0);
        } else {
            let _ = write!(s, "[{}:{}]", self.0, self.1);
        }
        f.pad(s.as_str())
    }
}

/// A tiny fixed-capacity string for padding formatted pieces.
struct Small<const N: usize> {
    buf: [u8; N],
    len: usize,
}

fn heapless_str<const N: usize>() -> Small<N> {
    Small { buf: [0; N], len: 0 }
}

impl<const N: usize> Small<N> {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Write for Small<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        if self.len + b.len() > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// Writes one in-memory structure (context entry, STE, DTE...) word by word,
/// each decoded with its fields: `title` then, per word, `[i] = value` and
/// its fields. `words[i]` is decoded with `fields[i]` (missing: raw only).
pub fn write_words(out: &mut dyn Write, title: &str, words: &[u64], fields: &[&[Field]]) -> fmt::Result {
    writeln!(out, "{title}")?;
    for (i, &w) in words.iter().enumerate() {
        let mut name = heapless_str::<8>();
        let _ = write!(name, "  [{i}]");
        match fields.get(i) {
            Some(f) if !f.is_empty() => write_register(out, name.as_str(), w, f)?,
            _ => writeln!(out, "{} = {w:#018x}", name.as_str())?,
        }
    }
    Ok(())
}

/// How a page-table walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// A leaf maps the IOVA: the physical address, the leaf's size, its rights.
    Mapped {
        /// Physical address of the IOVA's byte.
        pa: u64,
        /// The leaf's size.
        size: u64,
        /// Its rights.
        perms: io_pgtable::Perms,
    },
    /// The entry at `level` is not present: the unit raises a translation fault.
    NotPresent {
        /// The level (0: the 4 KiB leaf level).
        level: usize,
    },
    /// The IOVA is beyond the table's input width: the unit faults before
    /// reading any table.
    OutOfRange {
        /// The table's input bits.
        ia_bits: u32,
    },
    /// A table could not be read (a walk over foreign memory stopped).
    Unreadable {
        /// The level.
        level: usize,
    },
}

/// Walks `iova` through the table at `root` in `fmt`, one line per level
/// (table address, index, raw entry and its meaning), and returns how the
/// walk ended (the caller words the fault). `read(table, index)` reads one
/// entry; `None` stops the walk.
pub fn write_walk<F: Format>(
    out: &mut dyn Write,
    fmt: &F,
    root: u64,
    iova: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<u64>,
) -> Result<WalkEnd, fmt::Error> {
    let levels = fmt.levels();
    writeln!(
        out,
        "walk {iova:#x} through the {} table at {root:#x} ({levels} levels, {}-bit input)",
        fmt.name(),
        fmt.ia_bits()
    )?;
    if fmt.ia_bits() < 64 && iova >> fmt.ia_bits() != 0 {
        return Ok(WalkEnd::OutOfRange { ia_bits: fmt.ia_bits() });
    }
    let mut table = root;
    for level in (0..levels).rev() {
        let index = ((iova >> (12 + 9 * level)) & 0x1FF) as usize;
        let Some(pte) = read(table, index) else {
            writeln!(out, "  level {level}: table {table:#x} cannot be read")?;
            return Ok(WalkEnd::Unreadable { level });
        };
        write!(out, "  level {level}: table {table:#x} [{index:3}] = {pte:#018x}  ")?;
        match fmt.decode(pte, level) {
            Entry::Empty => {
                writeln!(out, "not present")?;
                return Ok(WalkEnd::NotPresent { level });
            }
            Entry::Table(next) if level > 0 => {
                writeln!(out, "next-level table {next:#x}")?;
                table = next;
            }
            Entry::Leaf { pa, perms } if fmt.leaf_allowed(level) => {
                let size = io_pgtable::level_size(level);
                writeln!(out, "leaf {} at {pa:#x}, {}", size_text(size), perms_text(perms))?;
                return Ok(WalkEnd::Mapped { pa: pa + (iova & (size - 1)), size, perms });
            }
            _ => {
                writeln!(out, "malformed at this level")?;
                return Ok(WalkEnd::NotPresent { level });
            }
        }
    }
    Ok(WalkEnd::NotPresent { level: 0 })
}

/// Writes how a walk ended, in the words of the unit's fault (`fault` names
/// the fault reason the unit reports for a not-present entry).
pub fn write_walk_end(out: &mut dyn Write, end: WalkEnd, iova: u64, fault: &str) -> fmt::Result {
    match end {
        WalkEnd::Mapped { pa, size, perms } => {
            writeln!(out, "=> {iova:#x} translates to {pa:#x} ({} leaf, {})", size_text(size), perms_text(perms))
        }
        WalkEnd::NotPresent { level } => {
            writeln!(out, "=> no translation: a DMA here faults at level {level} ({fault})")
        }
        WalkEnd::OutOfRange { ia_bits } => {
            writeln!(out, "=> no translation: {iova:#x} is beyond the table's {ia_bits}-bit input ({fault})")
        }
        WalkEnd::Unreadable { level } => writeln!(out, "=> walk stopped at level {level}: the table cannot be read"),
    }
}

/// `4 KiB`, `2 MiB`, `1 GiB`...
pub fn size_text(size: u64) -> SizeText {
    SizeText(size)
}

/// A byte count in the largest binary unit that divides it (see [`size_text`]).
pub struct SizeText(u64);

impl fmt::Display for SizeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s >= 1 << 30 && s.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", s >> 30)
        } else if s >= 1 << 20 && s.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", s >> 20)
        } else if s >= 1 << 10 && s.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", s >> 10)
        } else {
            write!(f, "{s} bytes")
        }
    }
}

/// `read+write`, `read-only`, `write-only`, `no access`.
pub fn perms_text(p: io_pgtable::Perms) -> &'static str {
    use io_pgtable::Perms;
    match (p.contains(Perms::READ), p.contains(Perms::WRITE)) {
        (true, true) => "read+write",
        (true, false) => "read-only",
        (false, true) => "write-only",
        (false, false) => "no access",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn a_register_is_decoded_field_by_field_in_bit_order() {
        const F: &[Field] = &[
            Field { name: "HIGH", shift: 8, mask: 0x1F, meaning: "five bits" },
            Field { name: "LOW", shift: 0, mask: 1, meaning: "one bit" },
        ];
        let mut s = String::new();
        write_register(&mut s, "REG", 0x0401 | 0x8000_0000, F).unwrap();
        let lines: alloc::vec::Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "REG = 0x0000000080000401");
        assert!(lines[1].starts_with("  LOW      [0]      = 0x1"), "{s}");
        assert!(lines[2].starts_with("  HIGH     [12:8]   = 0x4"), "{s}");
        assert!(lines[2].ends_with("five bits"), "{s}");
        assert_eq!(lines[3], "  (bits not decoded here: 0x80000000)");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn a_walk_reports_each_level_and_where_it_ends() {
        use io_pgtable::arena::Arena;
        use io_pgtable::formats::VtdSecondLevel;
        use io_pgtable::{PageTable, Perms, TableMemory};
        let mut mem = Arena::new();
        let fmt = VtdSecondLevel { levels: 4, max_leaf_level: 2 };
        let mut pt = PageTable::new(fmt, &mut mem).unwrap();
        let _ = pt.map(&mut mem, 0x20_0000, 0x7654_3000, 0x1000, Perms::READ | Perms::WRITE).unwrap();
        let root = pt.root();
        let mut read = |t: u64, i: usize| Some(mem.read(t, i));
        let mut s = String::new();
        let end = write_walk(&mut s, &fmt, root, 0x20_0123, &mut read).unwrap();
        assert_eq!(end, WalkEnd::Mapped { pa: 0x7654_3123, size: 0x1000, perms: Perms::READ | Perms::WRITE });
        assert_eq!(s.lines().filter(|l| l.starts_with("  level")).count(), 4, "{s}");
        assert!(s.contains("[  1] ="), "level 1 index of 2 MiB: {s}");
        let mut s = String::new();
        let end = write_walk(&mut s, &fmt, root, 0x40_0000, &mut read).unwrap();
        assert_eq!(end, WalkEnd::NotPresent { level: 1 }, "{s}");
        let end = write_walk(&mut String::new(), &fmt, root, 1 << 50, &mut read).unwrap();
        assert_eq!(end, WalkEnd::OutOfRange { ia_bits: 48 });
        let end = write_walk(&mut String::new(), &fmt, root, 0x20_0000, &mut |_, _| None).unwrap();
        assert_eq!(end, WalkEnd::Unreadable { level: 3 });
        let mut s = String::new();
        write_walk_end(&mut s, WalkEnd::NotPresent { level: 1 }, 0x40_0000, "reason 6").unwrap();
        assert_eq!(s, "=> no translation: a DMA here faults at level 1 (reason 6)\n");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        use alloc::format;
        assert_eq!(format!("{}", size_text(4096)), "4 KiB");
        assert_eq!(format!("{}", size_text(2 << 20)), "2 MiB");
        assert_eq!(format!("{}", size_text(1 << 30)), "1 GiB");
        assert_eq!(format!("{}", size_text(100)), "100 bytes");
    }
}
