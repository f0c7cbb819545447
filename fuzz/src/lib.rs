//! Coverage-guided fuzz targets for portcullis's parsers and page-table
//! engine, run by `cargo xtask fuzz <target> [--time S]` (`--list` names them;
//! `docs/fuzzing.md` says what each checks).
//!
//! # Engine: libFuzzer on stable Rust, without cargo-fuzz
//!
//! The toolchain is pinned to stable 1.95 and no nightly can be installed, so
//! `cargo fuzz` in its default mode (`-Zsanitizer=address`) is out. What
//! cargo-fuzz does with `--sanitizer none` needs no nightly feature at all,
//! and the xtask does exactly that itself:
//!
//! - [`libfuzzer-sys`](https://crates.io/crates/libfuzzer-sys) compiles LLVM's
//!   libFuzzer (C++) with the machine's `c++` in its build script and provides
//!   `main`; each target is a `fuzz_target!` closure;
//! - rustc instruments the code under test with SanitizerCoverage through
//!   stable codegen options: `-Cpasses=sancov-module` and
//!   `-Cllvm-args=-sanitizer-coverage-{level=4,inline-8bit-counters,pc-table,trace-compares}`
//!   (edge counters for coverage feedback, comparison tracing so libFuzzer can
//!   solve magic numbers, signatures and lengths), plus `--cfg fuzzing`;
//! - `--target <host triple>` keeps the flags off build scripts and proc
//!   macros, and `fuzz/target` keeps the instrumented build apart from the
//!   workspace's.
//!
//! No AddressSanitizer: every crate under test is `#![forbid(unsafe_code)]`,
//! so memory errors cannot happen in them; what fuzzing looks for is panics
//! (index out of bounds, arithmetic overflow — release profile with
//! `overflow-checks` and `debug-assertions` on —, `unwrap` of `None`, failed
//! invariant checks) and runaway loops (libFuzzer's `-timeout`).
//!
//! AFL++ through cargo-afl was not needed: it would build AFL++ from C and run
//! each input in a forked process, where libFuzzer runs in-process with no
//! extra install beyond a crate. Nothing here is cargo-fuzz specific either,
//! so `cargo +nightly fuzz run <target>` (with ASan) still works in this
//! directory where a nightly toolchain exists.
//!
//! This module holds what the targets share: ACPI image fix-ups, a byte
//! reader for structured inputs, and a small enumerated PCI segment.

use std::sync::OnceLock;

/// A copy of `data` with the ACPI checksum (byte 9) fixed over the length the
/// header declares, so that mutations reach past the checksum check (which the
/// crate's unit tests cover on their own).
pub fn acpi_image(data: &[u8]) -> Vec<u8> {
    let mut t = data.to_vec();
    if t.len() >= 8 {
        let declared = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
        let n = declared.min(t.len());
        acpi_tables::fix_checksum(&mut t[..n]);
    }
    t
}

/// Checks that a table that parsed parses the same with bytes after its
/// declared length (firmware tables sit in memory among other data).
pub fn same_with_trailing<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    table: &[u8],
    parsed: &Result<T, E>,
    parse: impl Fn(&[u8]) -> Result<T, E>,
) {
    if let Ok(first) = parsed {
        let mut longer = table.to_vec();
        longer.extend_from_slice(&[0xA5; 13]);
        match parse(&longer) {
            Ok(again) => assert_eq!(first, &again, "trailing bytes changed the parse"),
            Err(e) => panic!("trailing bytes turned a good table into {e:?}"),
        }
    }
}

/// Reads little-endian fields off the front of a fuzz input; past the end
/// every read is zero, so any input is a complete description.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// Whether bytes are left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let src = self.bytes(N);
        b[..src.len()].copy_from_slice(src);
        b
    }
    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
}

/// The functions of a small segment, as the kernel enumerates them: an
/// endpoint and a bridge on bus 0, an endpoint behind the bridge. The ACPI
/// targets resolve device scopes and build topologies against it.
pub fn sample_functions() -> &'static [pci::Function] {
    static FUNCTIONS: OnceLock<Vec<pci::Function>> = OnceLock::new();
    FUNCTIONS.get_or_init(|| {
        use pci::fake::{FakeConfig, FakeFunction};
        let cfg = FakeConfig::new(
            0,
            vec![
                FakeFunction::endpoint(None, 1, 0, 0x1234, 0x11e8, 0x00ff00).with_mem_bar(0, 0x10_0000, false, false),
                FakeFunction::bridge(None, 2, 0x1b36, 0x000c),
                FakeFunction::endpoint(Some(1), 0, 0, 0x8086, 0x10d3, 0x020000),
            ],
        );
        pci::enumerate::enumerate(&cfg, &sample_host(), true).unwrap_or_default()
    })
}

/// The host bridge [`sample_functions`] sits behind.
pub fn sample_host() -> pci::HostBridge {
    pci::HostBridge {
        segment: 0,
        bus_start: 0,
        bus_end: 0xFF,
        mmio32: Some(pci::Window { cpu_base: 0xC000_0000, pci_base: 0xC000_0000, size: 0x1000_0000 }),
        mmio64: Some(pci::Window { cpu_base: 0x80_0000_0000, pci_base: 0x80_0000_0000, size: 0x10_0000_0000 }),
        io: Some(pci::Window { cpu_base: 0x3eff_0000, pci_base: 0x1000, size: 0xF000 }),
    }
}

/// Asks a topology every question the kernel asks, for a spread of requester IDs.
pub fn query_topology(t: &topology::Topology) {
    let _ = topology::build::lines(t, sample_functions());
    for rid in [0u16, 1, 8, 0x10, 0x100, 0x108, 0x7FFF, 0xFFFF] {
        for segment in [0u16, 1] {
            let _ = t.translate_pci(segment, rid);
            let _ = t.reserved_for(segment, rid).count();
        }
    }
}
