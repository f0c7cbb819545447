//! ELF: the kernel's user-program reader (`kernel/core/src/loader/image.rs`,
//! on the `elf` crate) and the
//! UEFI loader's load plan (`boot/load-plan`).
//!
//! Invariants: an accepted image's segments all read back, none is W+X, each
//! one's contents are exactly its file size; a load plan is whole pages, its
//! segments lie inside its span and the image, and filling the span works.
#![no_main]
use libfuzzer_sys::fuzz_target;

// The reader depends on nothing of kcore (only the `elf` crate), so it is
// compiled here from the kernel's own source instead of building the whole
// `kcore` crate with coverage.
#[path = "../../kernel/core/src/loader/image.rs"]
#[allow(dead_code)]
mod elf;

fuzz_target!(|data: &[u8]| {
    let machine = data.get(18..20).map_or(0, |m| u16::from_le_bytes([m[0], m[1]]));
    for m in [machine, elf::EM_X86_64, elf::EM_AARCH64] {
        let Ok(e) = elf::Elf::parse(data, m) else { continue };
        for seg in e.segments() {
            assert!(!(seg.write && seg.exec), "W+X segment accepted");
            assert_eq!(e.contents(&seg).len() as u64, seg.file_size);
        }
    }
    let Ok(plan) = load_plan::Plan::new(data, machine) else { return };
    assert!(plan.size % load_plan::PAGE == 0 && plan.size <= load_plan::MAX_SPAN);
    assert_eq!(plan.link_start % load_plan::PAGE, 0);
    for s in &plan.segments {
        assert!(s.file_size <= s.mem_size);
        assert!(s.span_offset as u64 + s.mem_size as u64 <= plan.size, "segment past the span");
        assert!(s.file_offset as u64 + s.file_size as u64 <= data.len() as u64, "segment past the image");
    }
    let _ = plan.pages();
    let _ = plan.placed_at(0x4000_0000);
    if plan.size <= 1 << 22 {
        let mut span = vec![0xCCu8; plan.size as usize];
        plan.copy_into(data, &mut span).expect("a planned image fills its span");
    }
});
