//! Building the kernel ELF for one architecture.

use crate::machine::{workspace_root, Arch};
use std::path::PathBuf;
use std::process::Command;

/// A built kernel image.
pub struct Kernel {
    /// Path of the ELF.
    pub elf: PathBuf,
}

/// User programs packed into every kernel image (binaries of `user/programs`).
pub const USER_PROGRAMS: [&str; 12] = [
    "hello",
    "test-syscalls",
    "test-edu",
    "fault",
    "bench-syscall",
    "spin",
    "demo",
    "test-ioas",
    "ioas-leaker",
    "bench-ioas",
    "hw-vtd",
    "hw-smmuv3",
];

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"))
}

/// Builds the user programs for `arch` and returns the directory holding them.
fn user_programs(arch: Arch, release: bool) -> Result<PathBuf, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["build", "--package", "user-programs", "--target", arch.target()]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the {} user programs failed", arch.name()));
    }
    Ok(target_dir().join(arch.target()).join(if release { "release" } else { "debug" }))
}

/// Builds the user programs and the kernel for `arch`.
pub fn kernel(arch: Arch, release: bool) -> Result<Kernel, String> {
    let root = workspace_root();
    let user_dir = user_programs(arch, release)?;
    let package = format!("boot-{}", arch.name());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--package", &package, "--target", arch.target()]);
    cmd.env("PORTCULLIS_USER_DIR", &user_dir).env("PORTCULLIS_USER_PROGRAMS", USER_PROGRAMS.join(","));
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
    let elf = target_dir()
        .join(arch.target())
        .join(if release { "release" } else { "debug" })
        .join(format!("portcullis-{}", arch.name()));
    if !elf.exists() {
        return Err(format!("kernel image {} is missing after the build", elf.display()));
    }
    Ok(Kernel { elf })
}
