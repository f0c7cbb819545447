//! `cargo xtask setup`: installs what the build and the QEMU tests need.
//!
//! - rustup targets and components named in `rust-toolchain.toml`;
//! - QEMU >= 10 (`qemu-system-x86`, `qemu-system-arm`): on Debian bookworm from
//!   bookworm-backports through apt when running as root, otherwise a message
//!   with the exact commands;
//! - UEFI firmware for the `--boot uefi` path (`ovmf`, `qemu-efi-aarch64`), the same way;
//! - a C++ compiler (`g++`) for libFuzzer, which `cargo xtask fuzz` builds from source;
//! - `gdb-multiarch`, the gdb that debugs an aarch64 guest (`run --gdb --arch aarch64`).
//!
//! mdBook, for the guide, is not here: Debian bookworm has no package of it, and only
//! `cargo xtask doc` needs it, which installs its pinned version itself (`crate::doc`).
//!
//! `cargo xtask setup` installs all of it; every other command checks only
//! what it needs ([`Needs`]: `test --host` and `image` need no QEMU), and
//! when everything is there it asks nothing and changes nothing.

use crate::target::workspace_root;
use std::process::Command;

/// Oldest QEMU with the IOMMU modes portcullis uses.
const MIN_QEMU_MAJOR: u32 = 10;
const TARGETS: [&str; 4] =
    ["x86_64-unknown-none", "aarch64-unknown-none-softfloat", "x86_64-unknown-uefi", "aarch64-unknown-uefi"];
/// Debian packages holding the UEFI firmware images `machine::uefi_firmware` names.
const FIRMWARE_PACKAGES: [&str; 2] = ["ovmf", "qemu-efi-aarch64"];
const COMPONENTS: [&str; 4] = ["rust-src", "llvm-tools", "clippy", "rustfmt"];
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/portcullis-bookworm-backports.list";

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(workspace_root()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: running {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd} {}` failed ({status})", args.join(" ")))
    }
}

/// Installs missing rustup targets and components for the pinned toolchain.
fn rust() -> Result<(), String> {
    let Some(installed) = output("rustup", &["target", "list", "--installed"]) else {
        eprintln!("xtask: rustup not found; make sure the targets {TARGETS:?} are installed");
        return Ok(());
    };
    let missing: Vec<&str> = TARGETS.iter().copied().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
    if !missing.is_empty() {
        let mut args = vec!["target", "add"];
        args.extend(&missing);
        run_cmd("rustup", &args)?;
    }
    let comps = output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| !comps.lines().any(|l| l.trim() == *c || l.trim().starts_with(&format!("{c}-"))))
        .collect();
    if !missing.is_empty() {
        let mut args = vec!["component", "add"];
        args.extend(&missing);
        run_cmd("rustup", &args)?;
    }
    Ok(())
}

/// Major version of `qemu-system-<arch>`, if installed.
fn qemu_major(binary: &str) -> Option<u32> {
    let text = output(binary, &["--version"])?;
    let version = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?;
    version.split('.').next()?.parse().ok()
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn debian_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|s| s.trim_matches('"').to_owned())
}

/// Makes sure QEMU >= 10 is installed for both architectures.
fn qemu() -> Result<(), String> {
    let ok = |b: &str| qemu_major(b).is_some_and(|m| m >= MIN_QEMU_MAJOR);
    if ok("qemu-system-x86_64") && ok("qemu-system-aarch64") {
        return Ok(());
    }
    let codename = debian_codename().unwrap_or_default();
    let packages = ["qemu-system-x86", "qemu-system-arm"];
    let (prep, install): (Vec<String>, Vec<String>) = if codename == "bookworm" {
        (
            vec![
                format!("echo 'deb http://deb.debian.org/debian bookworm-backports main' > {BACKPORTS_LIST}"),
                "apt-get update".into(),
            ],
            vec![format!("apt-get install -y -t bookworm-backports {}", packages.join(" "))],
        )
    } else {
        (vec!["apt-get update".into()], vec![format!("apt-get install -y {}", packages.join(" "))])
    };
    if !is_root() {
        return Err(format!(
            "QEMU >= {MIN_QEMU_MAJOR} is missing. Install it as root with:\n  {}\n  {}",
            prep.iter().map(|c| format!("sudo sh -c \"{c}\"")).collect::<Vec<_>>().join("\n  "),
            install.iter().map(|c| format!("sudo {c}")).collect::<Vec<_>>().join("\n  ")
        ));
    }
    eprintln!("xtask: QEMU >= {MIN_QEMU_MAJOR} not found; installing {}", packages.join(", "));
    if codename == "bookworm" {
        let already = std::fs::read_dir("/etc/apt/sources.list.d")
            .map(|d| {
                d.flatten().any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("bookworm-backports")))
            })
            .unwrap_or(false)
            || std::fs::read_to_string("/etc/apt/sources.list").is_ok_and(|t| t.contains("bookworm-backports"));
        if !already {
            std::fs::write(BACKPORTS_LIST, "deb http://deb.debian.org/debian bookworm-backports main\n")
                .map_err(|e| format!("cannot write {BACKPORTS_LIST}: {e}"))?;
        }
        run_cmd("apt-get", &["update", "-q"])?;
        run_cmd("apt-get", &["install", "-y", "-q", "-t", "bookworm-backports", packages[0], packages[1]])?;
    } else {
        run_cmd("apt-get", &["update", "-q"])?;
        run_cmd("apt-get", &["install", "-y", "-q", packages[0], packages[1]])?;
    }
    if ok("qemu-system-x86_64") && ok("qemu-system-aarch64") {
        Ok(())
    } else {
        Err(format!(
            "QEMU was installed but is older than {MIN_QEMU_MAJOR}; portcullis needs QEMU {MIN_QEMU_MAJOR} or newer"
        ))
    }
}

/// Makes sure the UEFI firmware images for both architectures are installed.
fn firmware() -> Result<(), String> {
    let present = || {
        crate::target::Arch::all().into_iter().all(|a| {
            let (code, vars) = crate::target::uefi_firmware(a);
            std::path::Path::new(code).exists() && std::path::Path::new(vars).exists()
        })
    };
    if present() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "UEFI firmware (OVMF / AAVMF) is missing. Install it as root with:\n  sudo apt-get install -y {}",
            FIRMWARE_PACKAGES.join(" ")
        ));
    }
    eprintln!("xtask: UEFI firmware not found; installing {}", FIRMWARE_PACKAGES.join(", "));
    run_cmd("apt-get", &["install", "-y", "-q", FIRMWARE_PACKAGES[0], FIRMWARE_PACKAGES[1]]).or_else(|_| {
        run_cmd("apt-get", &["update", "-q"])?;
        run_cmd("apt-get", &["install", "-y", "-q", FIRMWARE_PACKAGES[0], FIRMWARE_PACKAGES[1]])
    })?;
    if present() {
        Ok(())
    } else {
        Err("the UEFI firmware packages were installed but the firmware images are not where expected".into())
    }
}

/// Makes sure a C++ compiler is there for libFuzzer (the fuzz targets' `libfuzzer-sys`).
fn cxx() -> Result<(), String> {
    if output("c++", &["--version"]).is_some() || output("g++", &["--version"]).is_some() {
        return Ok(());
    }
    if !is_root() {
        return Err("no C++ compiler (for libFuzzer). Install it as root with:\n  sudo apt-get install -y g++".into());
    }
    run_cmd("apt-get", &["install", "-y", "-q", "g++"]).or_else(|_| {
        run_cmd("apt-get", &["update", "-q"]).and_then(|()| run_cmd("apt-get", &["install", "-y", "-q", "g++"]))
    })
}

/// Makes sure `gdb-multiarch` is there (Debian's gdb debugs only the host's architecture).
fn gdb_multiarch() -> Result<(), String> {
    if output("gdb-multiarch", &["--version"]).is_some() {
        return Ok(());
    }
    if !is_root() {
        return Err("gdb-multiarch (to debug an aarch64 guest) is missing. Install it as root with:\n  sudo apt-get install -y gdb-multiarch".into());
    }
    run_cmd("apt-get", &["install", "-y", "-q", "gdb-multiarch"]).or_else(|_| {
        run_cmd("apt-get", &["update", "-q"])
            .and_then(|()| run_cmd("apt-get", &["install", "-y", "-q", "gdb-multiarch"]))
    })
}

/// What a command needs besides the Rust targets and components (always checked).
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// QEMU >= 10 for both architectures.
    pub qemu: bool,
    /// The UEFI firmware images (`--boot uefi`).
    pub firmware: bool,
    /// A C++ compiler (libFuzzer: the fuzz phase of `test`, `fuzz`).
    pub cxx: bool,
    /// `gdb-multiarch` (`run --gdb` on aarch64).
    pub gdb_multiarch: bool,
}

impl Needs {
    /// Everything (`cargo xtask setup`).
    pub const ALL: Needs = Needs { qemu: true, firmware: true, cxx: true, gdb_multiarch: true };
    /// QEMU only (boots with `-kernel`).
    pub const QEMU: Needs = Needs { qemu: true, firmware: false, cxx: false, gdb_multiarch: false };
}

/// Installs what `needs` names and is missing (and the Rust targets and components).
pub fn ensure(needs: Needs) -> Result<(), String> {
    rust()?;
    if needs.qemu {
        qemu()?;
    }
    if needs.firmware {
        firmware()?;
    }
    if needs.cxx {
        cxx()?;
    }
    if needs.gdb_multiarch {
        gdb_multiarch()?;
    }
    Ok(())
}

/// Installs everything that is missing.
pub fn run() -> Result<(), String> {
    ensure(Needs::ALL)
}
