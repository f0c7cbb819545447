//! Kernel address → `function+offset` from the ELF's symbol table, and for
//! backtrace frames `function at file:line` for every frame the DWARF debug
//! information knows at that address, inlined ones included (the `addr2line`
//! crate over `gimli`, the sections read with `object`). The kernel is built
//! with debug information in both profiles (`[profile.release] debug = true`;
//! the dev profile has it by default).

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::borrow::Cow;
use std::path::Path;
use std::rc::Rc;

/// DWARF sections held by reference count (no borrow of the file bytes).
type Reader = gimli::EndianRcSlice<gimli::RunTimeEndian>;

/// One source frame at an address: the function and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFrame {
    /// Demangled function name (`?` when the DWARF has none).
    pub function: String,
    /// Source file, relative to the workspace when it lies inside it.
    pub file: Option<String>,
    /// Line in `file` (0: unknown).
    pub line: u32,
    /// Inlined into the next frame of the list.
    pub inlined: bool,
}

/// Function symbols and DWARF of one ELF.
pub struct Symbolizer {
    /// `(address, size, demangled name)`, sorted by address.
    functions: Vec<(u64, u64, String)>,
    /// The line tables and inline trees (`None`: the ELF has no DWARF).
    dwarf: Option<addr2line::Context<Reader>>,
}

/// The workspace root, which file names are shown relative to.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("/"))
}

/// A source path as a backtrace shows it: relative to the workspace, or
/// from `library/` for the standard library (its rust-src copy or the
/// `/rustc/<commit>/` path of a prebuilt one).
fn shown_path(file: &str) -> String {
    let path = Path::new(file);
    if let Ok(rel) = path.strip_prefix(workspace_root()) {
        return rel.display().to_string();
    }
    for marker in ["/lib/rustlib/src/rust/", "/rustc/"] {
        if let Some((_, rest)) = file.split_once(marker) {
            // `/rustc/<commit>/library/...`: drop the commit too.
            let rest = if marker == "/rustc/" { rest.split_once('/').map_or(rest, |(_, r)| r) } else { rest };
            if rest.starts_with("library/") {
                return rest.to_owned();
            }
        }
    }
    file.to_owned()
}

/// The DWARF of `file`, if it has any.
fn load_dwarf(file: &object::File) -> Option<addr2line::Context<Reader>> {
    file.section_by_name(".debug_info")?;
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let data =
            file.section_by_name(id.name()).and_then(|s| s.uncompressed_data().ok()).unwrap_or(Cow::Borrowed(&[][..]));
        Ok(gimli::EndianRcSlice::new(Rc::from(&*data), endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

impl Symbolizer {
    /// Loads the function symbols and the DWARF of the ELF at `path`.
    pub fn from_elf(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(&data)
    }

    /// Loads the function symbols and the DWARF of an ELF image in memory.
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
        Ok(Symbolizer { functions, dwarf: load_dwarf(&file) })
    }

    /// Link address of the first function whose demangled name contains `part`.
    pub fn address_of(&self, part: &str) -> Option<u64> {
        self.functions.iter().find(|f| f.2.contains(part)).map(|f| f.0)
    }

    /// `(start, size)` of the first function whose demangled name contains `part`.
    pub fn function_range(&self, part: &str) -> Option<(u64, u64)> {
        self.functions.iter().find(|f| f.2.contains(part)).map(|f| (f.0, f.1))
    }

    /// `function+0xoff` for an address inside a known function.
    pub fn lookup(&self, addr: u64) -> Option<String> {
        let i = self.functions.partition_point(|f| f.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.functions[i];
        let end = if *size > 0 { start + size } else { self.functions.get(i + 1).map_or(start + 1, |f| f.0) };
        (addr < end).then(|| format!("{name}+{:#x}", addr - start))
    }

    /// The source frames at `addr`, innermost first: the inlined functions
    /// (each at its line, marked `inlined`), then the function the code
    /// belongs to (at the line of the outermost inlined call). Empty without
    /// DWARF for the address.
    pub fn frames(&self, addr: u64) -> Vec<SourceFrame> {
        let Some(ctx) = &self.dwarf else { return Vec::new() };
        let Ok(mut iter) = ctx.find_frames(addr).skip_all_loads() else { return Vec::new() };
        let mut out = Vec::new();
        while let Ok(Some(frame)) = iter.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok().map(|n| n.into_owned()))
                .unwrap_or_else(|| "?".to_owned());
            let (file, line) = frame.location.as_ref().map_or((None, 0), |l| {
                let file = l.file.map(shown_path);
                (file, l.line.unwrap_or(0))
            });
            out.push(SourceFrame { function, file, line, inlined: true });
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        out
    }

    /// Appends ` <function+0xoff>` after every `0x` + 16-hex-digit token that is a known function address.
    ///
    /// In `backtrace: #N` lines with N > 0 the address is a return address: it is
    /// looked up one byte earlier, so a call at the very end of a function (a call
    /// to a function that never returns) names the caller, not the next function.
    /// A `backtrace:` line is followed by one indented line per source frame
    /// ([`Symbolizer::frames`]): `function at file:line`, inlined frames first.
    pub fn symbolize_line(&self, line: &str) -> String {
        let backtrace = line.starts_with("backtrace: #");
        let return_address =
            line.strip_prefix("backtrace: #").and_then(|r| r.split_whitespace().next()).is_some_and(|n| n != "0");
        let mut out = String::with_capacity(line.len());
        let mut source = Vec::new();
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
                let probe = if return_address && value > 0 { value - 1 } else { value };
                let found =
                    if probe != value { self.lookup(probe).map(|s| bump_offset(&s)) } else { self.lookup(probe) };
                if let Some(sym) = found {
                    out.push_str(&line[copied..i + 18]);
                    out.push_str(" <");
                    out.push_str(&sym);
                    out.push('>');
                    copied = i + 18;
                    if backtrace {
                        source.extend(self.frames(probe));
                    }
                }
                i += 18;
            } else {
                i += 1;
            }
        }
        out.push_str(&line[copied..]);
        for f in source {
            out.push_str("\n    ");
            out.push_str(&f.function);
            match &f.file {
                Some(file) => out.push_str(&format!(" at {file}:{}", f.line)),
                None => out.push_str(" at ??"),
            }
            if f.inlined {
                out.push_str(" (inlined)");
            }
        }
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

    const MARKER_FIRST_LINE: u32 = line!() + 2;
    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u32 {
        std::hint::black_box(42)
    }
    const MARKER_LAST_LINE: u32 = line!() - 1;

    const HELPER_FIRST_LINE: u32 = line!() + 2;
    #[inline(always)]
    fn inlined_helper_for_symbolizer_test(x: u32) -> u32 {
        x.wrapping_mul(3).rotate_left(5) ^ 0x55
    }
    const HELPER_LAST_LINE: u32 = line!() - 1;

    const CALL_LINE: u32 = line!() + 4; // the helper's call below
    #[inline(never)]
    fn outer_function_for_symbolizer_test(x: u32) -> u32 {
        let a = std::hint::black_box(x);
        let b = inlined_helper_for_symbolizer_test(a);
        std::hint::black_box(b) + 1
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
        assert!(out.lines().next().unwrap().ends_with("x"), "a token followed by a letter is still a token: {out}");
    }

    /// The DWARF of the test binary itself: the marker function's first
    /// instruction is in this file, between its first and last line.
    #[test]
    fn an_address_resolves_to_its_file_and_line() {
        let exe = std::env::current_exe().unwrap();
        let s = Symbolizer::from_elf(&exe).unwrap();
        assert_eq!(marker_function_for_symbolizer_test(), 42);
        let start = s.address_of("marker_function_for_symbolizer_test").expect("symbol present");
        let frames = s.frames(start);
        let f = frames.last().expect("DWARF for the marker function");
        assert!(f.function.ends_with("marker_function_for_symbolizer_test"), "{frames:?}");
        assert_eq!(f.file.as_deref(), Some("qemu-tests/src/symbolize.rs"), "{frames:?}");
        assert!((MARKER_FIRST_LINE..=MARKER_LAST_LINE).contains(&f.line), "{frames:?}");
        let out = s.symbolize_line(&format!("backtrace: #0 {start:#018x}"));
        let shown = out.lines().last().unwrap_or_default();
        assert!(
            shown.starts_with("    qemu_tests::symbolize::tests::marker_function_for_symbolizer_test at "),
            "{out}"
        );
        assert!(shown.contains(&format!("qemu-tests/src/symbolize.rs:{}", f.line)), "{out}");
    }

    /// Somewhere in the outer function is the inlined helper's code: its
    /// frames name the helper (inlined, at its own lines) and then the outer
    /// function, at the line of the call.
    #[test]
    fn inlined_frames_are_listed_innermost_first() {
        let exe = std::env::current_exe().unwrap();
        let s = Symbolizer::from_elf(&exe).unwrap();
        assert_eq!(outer_function_for_symbolizer_test(2), (6u32.rotate_left(5) ^ 0x55) + 1);
        let (start, size) = s.function_range("outer_function_for_symbolizer_test").expect("symbol present");
        let is_helper = |f: &SourceFrame| f.function.ends_with("inlined_helper_for_symbolizer_test");
        let inlined = (start..start + size.max(1)).map(|a| s.frames(a)).find(|f| f.iter().any(is_helper));
        let frames = inlined.expect("an address with the helper inlined");
        let helper = frames.iter().position(is_helper).unwrap();
        assert!(frames[helper].inlined, "{frames:?}");
        assert_eq!(frames[helper].file.as_deref(), Some("qemu-tests/src/symbolize.rs"), "{frames:?}");
        assert!((HELPER_FIRST_LINE..=HELPER_LAST_LINE).contains(&frames[helper].line), "{frames:?}");
        assert_eq!(helper + 2, frames.len(), "the helper is inlined straight into the outer function: {frames:?}");
        let outer = frames.last().unwrap();
        assert!(outer.function.ends_with("outer_function_for_symbolizer_test") && !outer.inlined, "{frames:?}");
        assert_eq!((outer.file.as_deref(), outer.line), (Some("qemu-tests/src/symbolize.rs"), CALL_LINE), "{frames:?}");
    }

    #[test]
    fn paths_are_shortened() {
        let root = workspace_root().display().to_string();
        assert_eq!(shown_path(&format!("{root}/kernel/core/src/lib.rs")), "kernel/core/src/lib.rs");
        let src = "/root/.rustup/toolchains/x/lib/rustlib/src/rust/library/core/src/ptr/mod.rs";
        assert_eq!(shown_path(src), "library/core/src/ptr/mod.rs");
        assert_eq!(shown_path("/rustc/59807616e1fa/library/std/src/panicking.rs"), "library/std/src/panicking.rs");
        assert_eq!(shown_path("/elsewhere/x.rs"), "/elsewhere/x.rs");
    }

    #[test]
    fn leaves_other_text_alone() {
        let s = Symbolizer { functions: vec![(0x1000, 0x10, "f".into())], dwarf: None };
        assert_eq!(s.symbolize_line("rax=0x0000000000001004"), "rax=0x0000000000001004 <f+0x4>");
        assert_eq!(s.symbolize_line("0x00000000000010045"), "0x00000000000010045", "17 digits is no address");
        assert_eq!(s.symbolize_line("a0x0000000000001004"), "a0x0000000000001004", "must start a token");
        assert_eq!(s.symbolize_line("0x0000000000002000 end"), "0x0000000000002000 end");
        assert_eq!(s.symbolize_line("short 0x1004"), "short 0x1004");
        assert_eq!(s.symbolize_line("π 0x0000000000001000"), "π 0x0000000000001000 <f+0x0>");
        let two = Symbolizer { functions: vec![(0x1000, 0x10, "f".into()), (0x1010, 0x10, "g".into())], dwarf: None };
        assert_eq!(two.symbolize_line("backtrace: #0 0x0000000000001010"), "backtrace: #0 0x0000000000001010 <g+0x0>");
        assert_eq!(
            two.symbolize_line("backtrace: #2 0x0000000000001010"),
            "backtrace: #2 0x0000000000001010 <f+0x10>",
            "a return address right after a call at the end of f belongs to f"
        );
    }
}
