//! Building the kernel ELF for one architecture.

use crate::target::{workspace_root, Arch};
use std::path::PathBuf;
use std::process::Command;

/// A built kernel image.
pub struct Kernel {
    /// Path of the ELF.
    pub elf: PathBuf,
    /// What a UEFI boot puts on the EFI system partition, when one needs it.
    pub uefi: Option<UefiFiles>,
}

/// The files of a UEFI boot, built and prepared once per kernel.
pub struct UefiFiles {
    /// The loader (`.efi`).
    pub loader: Vec<u8>,
    /// The kernel ELF without debug sections.
    pub kernel: Vec<u8>,
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"))
}

/// Builds the user programs for `arch`; returns the directory holding them
/// and their names (every binary of `user/programs`, sorted: `programs.rs`).
fn user_programs(arch: Arch, release: bool) -> Result<(PathBuf, Vec<String>), String> {
    let names = crate::programs::names()?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["build", "--package", "user-programs", "--target", arch.target()]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the {} user programs failed", arch.name()));
    }
    let dir = target_dir().join(arch.target()).join(if release { "release" } else { "debug" });
    if let Some(missing) = names.iter().find(|n| !dir.join(n).is_file()) {
        return Err(format!("user program {missing} was not built (no {})", dir.join(missing).display()));
    }
    Ok((dir, names))
}

/// Builds the user programs and the kernel for `arch`.
pub fn kernel(arch: Arch, release: bool) -> Result<Kernel, String> {
    let root = workspace_root();
    let (user_dir, programs) = user_programs(arch, release)?;
    let package = format!("boot-{}", arch.name());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--package", &package, "--target", arch.target()]);
    cmd.env("PORTCULLIS_USER_DIR", &user_dir).env("PORTCULLIS_USER_PROGRAMS", programs.join(","));
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
    Ok(Kernel { elf, uefi: None })
}

/// Builds the UEFI loader (`boot/uefi`) for `arch` and returns the `.efi` file.
pub fn uefi_loader(arch: Arch, release: bool) -> Result<PathBuf, String> {
    let target = arch.uefi_target();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["build", "--package", "boot-uefi", "--target", target]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the {} UEFI loader failed", arch.name()));
    }
    let efi = target_dir().join(target).join(if release { "release" } else { "debug" }).join("portcullis-uefi.efi");
    if !efi.exists() {
        return Err(format!("UEFI loader {} is missing after the build", efi.display()));
    }
    Ok(efi)
}

/// Builds the kernel and, for a UEFI boot, its loader.
pub fn kernel_for(arch: Arch, release: bool, boot: crate::target::Boot) -> Result<Kernel, String> {
    let mut k = kernel(arch, release)?;
    if boot == crate::target::Boot::Uefi {
        let loader = uefi_loader(arch, release)?;
        let loader = std::fs::read(&loader).map_err(|e| format!("reading {}: {e}", loader.display()))?;
        k.uefi = Some(UefiFiles { loader, kernel: stripped(&k.elf)? });
    }
    Ok(k)
}

/// The kernel ELF without its debug sections (what goes on an EFI system
/// partition: the firmware reads every byte, and symbols for backtraces are
/// taken from the unstripped ELF on the host). Uses `llvm-strip` from the
/// `llvm-tools` component; without it, the ELF as it is.
fn stripped(elf: &std::path::Path) -> Result<Vec<u8>, String> {
    let out = elf.with_extension("stripped");
    let strip = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .and_then(|sysroot| {
            std::fs::read_dir(PathBuf::from(sysroot).join("lib/rustlib"))
                .ok()?
                .flatten()
                .map(|e| e.path().join("bin/llvm-strip"))
                .find(|p| p.exists())
        });
    let ok = strip.is_some_and(|tool| {
        Command::new(tool).arg("--strip-debug").arg("-o").arg(&out).arg(elf).status().is_ok_and(|s| s.success())
    });
    let path = if ok { out.as_path() } else { elf };
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}
