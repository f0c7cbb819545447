//! Kernel address → `function+offset`, from the ELF's symbol table.

use object::{Object, ObjectSymbol, SymbolKind};
use std::path::Path;

/// Function symbols of one ELF, sorted by address.
pub struct Symbolizer {
    functions: Vec<(u64, u64, String)>,
}

impl Symbolizer {
    /// Loads the function symbols of the ELF at `path`.
    pub fn from_elf(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(&data)
    }

    /// Loads the function symbols of an ELF image in memory.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let file = object::File::parse(data).map_err(|e| format!("not an object file: {e}"))?;
        let mut functions: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some((s.address(), s.size(), format!("{:#}", rustc_demangle::demangle(name))))
            })
            .collect();
        functions.sort_by_key(|f| f.0);
        Ok(Symbolizer { functions })
    }

    /// Link address of the first function whose demangled name contains `part`.
    pub fn address_of(&self, part: &str) -> Option<u64> {
        self.functions.iter().find(|f| f.2.contains(part)).map(|f| f.0)
    }

    /// `function+0xoff` for an address inside a known function.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let i = self.functions.partition_point(|f| f.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.functions[i];
        let end = if *size > 0 { start + size } else { self.functions.get(i + 1).map_or(start + 1, |f| f.0) };
        (addr < end).then(|| format!("{name}+{:#x}", addr - start))
    }

    /// Appends ` <function+0xoff>` after every `0x` + 16-hex-digit token that is a known function address.
    ///
    /// In `backtrace: #N` lines with N > 0 the address is a return address: it is
    /// looked up one byte earlier, so a call at the very end of a function (a call
    /// to a function that never returns) names the caller, not the next function.
    pub fn symbolize_line(&self, line: &str) -> String {
        let return_address =
            line.strip_prefix("backtrace: #").and_then(|r| r.split_whitespace().next()).is_some_and(|n| n != "0");
        let mut out = String::with_capacity(line.len());
        let bytes = line.as_bytes();
        let mut i = 0;
        let mut copied = 0;
        while i + 18 <= bytes.len() {
            let boundary_before = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            let is_token = boundary_before
                && bytes[i] == b'0'
                && bytes[i + 1] == b'x'
                && bytes[i + 2..i + 18].iter().all(u8::is_ascii_hexdigit)
                && bytes.get(i + 18).is_none_or(|b| !b.is_ascii_hexdigit());
            if is_token {
                let value = u64::from_str_radix(&line[i + 2..i + 18], 16).unwrap_or(0);
                let found = if return_address && value > 0 {
                    self.lookup(value - 1).map(|s| bump_offset(&s))
                } else {
                    self.lookup(value)
                };
                if let Some(sym) = found {
                    out.push_str(&line[copied..i + 18]);
                    out.push_str(" <");
                    out.push_str(&sym);
                    out.push('>');
                    copied = i + 18;
                }
                i += 18;
            } else {
                i += 1;
            }
        }
        out.push_str(&line[copied..]);
        out
    }
}

/// `name+0xN` for a lookup of `addr - 1` becomes `name+0x(N+1)`, the offset of `addr`.
fn bump_offset(sym: &str) -> String {
    match sym.rsplit_once("+0x").and_then(|(n, o)| Some((n, u64::from_str_radix(o, 16).ok()?))) {
        Some((name, off)) => format!("{name}+{:#x}", off + 1),
        None => sym.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u32 {
        std::hint::black_box(42)
    }

    #[test]
    fn finds_a_known_function_in_the_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let s = Symbolizer::from_elf(&exe).unwrap();
        assert_eq!(marker_function_for_symbolizer_test(), 42);
        // The test binary is position independent: find the symbol's link address by name.
        let (start, _, _) = s
            .functions
            .iter()
            .find(|f| f.2.contains("marker_function_for_symbolizer_test"))
            .expect("symbol present")
            .clone();
        let line = format!("backtrace: #1 {:#018x} and 0x{:016x}x", start + 3, start);
        let out = s.symbolize_line(&line);
        assert!(out.contains(&format!("{:#018x} <", start + 3)), "{out}");
        assert!(out.contains("marker_function_for_symbolizer_test+0x3>"), "{out}");
        assert!(out.ends_with("x"), "a token followed by a letter is still a token: {out}");
    }

    #[test]
    fn leaves_other_text_alone() {
        let s = Symbolizer { functions: vec![(0x1000, 0x10, "f".into())] };
        assert_eq!(s.symbolize_line("rax=0x0000000000001004"), "rax=0x0000000000001004 <f+0x4>");
        assert_eq!(s.symbolize_line("0x00000000000010045"), "0x00000000000010045", "17 digits is no address");
        assert_eq!(s.symbolize_line("a0x0000000000001004"), "a0x0000000000001004", "must start a token");
        assert_eq!(s.symbolize_line("0x0000000000002000 end"), "0x0000000000002000 end");
        assert_eq!(s.symbolize_line("short 0x1004"), "short 0x1004");
        assert_eq!(s.symbolize_line("π 0x0000000000001000"), "π 0x0000000000001000 <f+0x0>");
        let two = Symbolizer { functions: vec![(0x1000, 0x10, "f".into()), (0x1010, 0x10, "g".into())] };
        assert_eq!(two.symbolize_line("backtrace: #0 0x0000000000001010"), "backtrace: #0 0x0000000000001010 <g+0x0>");
        assert_eq!(
            two.symbolize_line("backtrace: #2 0x0000000000001010"),
            "backtrace: #2 0x0000000000001010 <f+0x10>",
            "a return address right after a call at the end of f belongs to f"
        );
    }
}
