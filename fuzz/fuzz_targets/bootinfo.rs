//! The boot hand-off (`BootInfo::from_handoff`), which a separately built
//! loader writes and the kernel must check before trusting.
//!
//! Input byte 0 picks the mode. Even: the rest is the hand-off as found in
//! memory. Odd: the rest describes what a loader records (name, command line,
//! RSDP, DTB, memory regions) and then byte patches; the target builds the
//! `BootInfo` through the loader's API, checks that the kernel reads back
//! exactly what was recorded (a round trip), then applies the patches to the
//! hand-off bytes and parses those — so the raw parser is fuzzed from valid
//! hand-offs without a 3.6 KiB seed. Every accepted hand-off answers every
//! query and re-serialises to the same bytes.
#![no_main]
use bootinfo::{BootInfo, MemoryKind, MemoryRegion};
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::Input;

fn query(b: &BootInfo) {
    let again = BootInfo::from_handoff(b.handoff_bytes()).expect("an accepted hand-off re-parses");
    assert_eq!(again.handoff_bytes(), b.handoff_bytes());
    let _ = b.firmware();
    let _ = b.dtb();
    let _ = b.loader();
    let _ = b.cmdline_value("ktest");
    let _ = b.cmdline_value("");
    let _ = b.usable_bytes();
    for r in b.regions() {
        assert!(r.end() >= r.base);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if let Ok(b) = BootInfo::from_handoff(rest) {
            query(&b);
        }
        return;
    }
    let mut input = Input(rest);
    let n = usize::from(input.u8());
    let loader = String::from_utf8_lossy(input.bytes(n)).into_owned();
    let n = usize::from(input.u16() % 512);
    let cmdline = String::from_utf8_lossy(input.bytes(n)).into_owned();
    let mut b = BootInfo::new(&loader);
    b.set_cmdline(&cmdline);
    b.set_acpi_rsdp(input.u64());
    b.set_dtb(input.u64());
    let kinds =
        [MemoryKind::Usable, MemoryKind::Reserved, MemoryKind::AcpiReclaimable, MemoryKind::AcpiNvs, MemoryKind::Bad];
    for _ in 0..input.u8() {
        let region =
            MemoryRegion { base: input.u64(), size: input.u64(), kind: kinds[usize::from(input.u8()) % kinds.len()] };
        let merged = input.u8() & 1 != 0;
        let _ = if merged { b.push_merged(region) } else { b.push_region(region) };
    }
    let back = BootInfo::from_handoff(b.handoff_bytes()).expect("a hand-off built by the loader API is accepted");
    assert_eq!(back.cmdline(), b.cmdline());
    assert!(cmdline.starts_with(back.cmdline()));
    assert!(loader.starts_with(back.loader()));
    assert_eq!(back.regions(), b.regions());
    query(&back);
    let mut bytes = b.handoff_bytes().to_vec();
    while !input.is_empty() {
        let (at, value) = (usize::from(input.u16()), input.u8());
        if let Some(byte) = bytes.get_mut(at) {
            *byte = value;
        }
    }
    if let Ok(patched) = BootInfo::from_handoff(&bytes) {
        query(&patched);
    }
});
