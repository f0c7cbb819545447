//! Building the kernel ELF for one architecture.

use crate::machine::{workspace_root, Arch};
use std::path::PathBuf;
use std::process::Command;

/// A built kernel image.
pub struct Kernel {
    /// Path of the ELF.
    pub elf: PathBuf,
}

/// Builds the kernel for `arch`.
pub fn kernel(arch: Arch, release: bool) -> Result<Kernel, String> {
    let root = workspace_root();
    let package = format!("boot-{}", arch.name());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--package", &package, "--target", arch.target()]);
    if release {
        cmd.arg("--release");
    }
    if std::env::var("PORTCULLIS_KTEST_SELFCHECK").is_ok_and(|v| v == "1") {
        cmd.args(["--features", "kcore/ktest-selfcheck"]);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the {} kernel failed", arch.name()));
    }
    let target_dir = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let elf = target_dir
        .join(arch.target())
        .join(if release { "release" } else { "debug" })
        .join(format!("portcullis-{}", arch.name()));
    if !elf.exists() {
        return Err(format!("kernel image {} is missing after the build", elf.display()));
    }
    Ok(Kernel { elf })
}
