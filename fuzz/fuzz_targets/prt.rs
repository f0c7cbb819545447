//! `_PRT` from a DSDT's AML: parse; invariants: a parse is deterministic and
//! every entry's pin is INTA..INTD.
#![no_main]
use acpi_tables::prt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = prt::parse(data);
    if let Ok(entries) = &parsed {
        assert!(entries.iter().all(|e| e.pin <= 3), "pin outside INTA..INTD: {entries:?}");
    }
    assert_eq!(parsed, prt::parse(data));
});
