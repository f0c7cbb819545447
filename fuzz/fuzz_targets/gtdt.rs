//! GTDT (Arm generic timer): parse, and re-parse with trailing bytes.
#![no_main]
use acpi_tables::gtdt;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{acpi_image, same_with_trailing};

fuzz_target!(|data: &[u8]| {
    let t = acpi_image(data);
    let parsed = gtdt::parse(&t);
    same_with_trailing(&t, &parsed, gtdt::parse);
});
