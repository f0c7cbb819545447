//! Packs the user programs the xtask built into the kernel image.
//!
//! `PORTCULLIS_USER_DIR` names the directory holding the program binaries and
//! `PORTCULLIS_USER_PROGRAMS` their comma-separated names, packed in that order
//! (the xtask passes every binary of `user/programs`, sorted by name:
//! `xtask/src/programs.rs`); without them (plain `cargo build`, host tests) the
//! kernel carries no programs.
use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_USER_DIR");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_USER_PROGRAMS");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut code = String::from("/// Programs packed at build time.\npub static PACKED: &[Program] = &[\n");
    if let (Ok(dir), Ok(names)) = (std::env::var("PORTCULLIS_USER_DIR"), std::env::var("PORTCULLIS_USER_PROGRAMS")) {
        for name in names.split(',').filter(|n| !n.is_empty()) {
            let path = std::path::Path::new(&dir).join(name);
            println!("cargo:rerun-if-changed={}", path.display());
            let _ = writeln!(
                code,
                "    Program {{ name: {name:?}, image: include_bytes!({:?}) }},",
                path.display().to_string()
            );
        }
    }
    code.push_str("];\n");
    std::fs::write(format!("{out}/user_programs.rs"), code).expect("write user_programs.rs");
}
