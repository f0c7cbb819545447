//! `cargo xtask bench [NAME]`: benchmarks that print figures (never asserts on time).
//!
//! - `boot`: wall time from QEMU start to the kernel's first log line
//!   (`portcullis: kernel_main`), to the first user task's output and to the
//!   kernel's exit, per architecture, for the direct and the UEFI boot.
//! - `syscall`: null-syscall round trip from user space (`yield`), per architecture.
//! - `pgtable`: the I/O page-table engine benchmark (`cargo bench -p io-pgtable`).
//! - `ioas`: the generic IOAS door's map + unmap cost through the syscall, per architecture and IOMMU.

use crate::build;
use crate::harness;
use crate::machine::{Arch, Boot, Iommu, Machine};
use std::process::Command;
use std::time::Duration;

/// Boots per architecture for `bench boot`.
const BOOT_RUNS: usize = 3;

fn boot() -> Result<(), String> {
    println!(
        "bench boot: wall time from QEMU start to the first kernel log line and to the first user task's output \
         (`init=hello`), direct (-kernel) and UEFI (OVMF / AAVMF + the portcullis loader) boot \
         (TCG, {BOOT_RUNS} runs each, release kernels)"
    );
    println!(
        "{:<9} {:<7} {:>24} {:>24} {:>24}",
        "arch", "boot", "first kernel log (ms)", "first user task (ms)", "kernel exit (ms)"
    );
    for arch in Arch::all() {
        let kernel = build::kernel_for(arch, true, Boot::Uefi)?;
        for boot in [Boot::Direct, Boot::Uefi] {
            let machine = Machine {
                arch,
                iommu: arch.default_iommu(),
                cmdline: vec!["init=hello".to_owned()],
                extra: Vec::new(),
                gdb: false,
                boot,
            };
            let (mut first, mut user, mut total) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..BOOT_RUNS {
                let marks = ["portcullis: kernel_main", "hello from user space"];
                let t = harness::time_boot_marks(&machine, &kernel, &marks, Duration::from_secs(180))?;
                first.push(t.0[0].as_secs_f64() * 1000.0);
                user.push(t.0[1].as_secs_f64() * 1000.0);
                total.push(t.1.as_secs_f64() * 1000.0);
            }
            let fmt = |v: &[f64]| {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let avg = v.iter().sum::<f64>() / v.len() as f64;
                format!("min {min:.0} / avg {avg:.0}")
            };
            let boot_name = if boot == Boot::Uefi { "uefi" } else { "direct" };
            println!("{:<9} {:<7} {:>24} {:>24} {:>24}", arch.name(), boot_name, fmt(&first), fmt(&user), fmt(&total));
        }
    }
    Ok(())
}

fn syscall() -> Result<(), String> {
    println!("bench syscall: null syscall round trip from user space (TCG, release kernels)");
    for arch in Arch::all() {
        let kernel = build::kernel(arch, true)?;
        let machine = Machine {
            arch,
            iommu: crate::machine::Iommu::None,
            cmdline: vec!["init=bench-syscall".into()],
            extra: Vec::new(),
            gdb: false,
            boot: Boot::Direct,
        };
        let line = harness::boot_lines(&machine, &kernel, Duration::from_secs(300))?
            .into_iter()
            .find(|l| l.starts_with("bench: null syscall"))
            .ok_or_else(|| format!("{}: the benchmark printed no result", arch.name()))?;
        println!("{:<10} {}", arch.name(), line.trim_start_matches("bench: "));
    }
    Ok(())
}

fn ioas() -> Result<(), String> {
    println!("bench ioas: generic map + unmap through the iommufd syscall (TCG, release kernels), every IOMMU");
    for arch in Arch::all() {
        let kernel = build::kernel(arch, true)?;
        for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
            let machine = Machine {
                arch,
                iommu,
                cmdline: vec!["init=bench-ioas".into()],
                // Room for the 1 GiB case (the last -m wins).
                extra: vec!["-m".into(), "2G".into()],
                gdb: false,
                boot: Boot::Direct,
            };
            let label = machine.name();
            let lines = harness::boot_lines(&machine, &kernel, Duration::from_secs(600))?;
            let ours: Vec<&String> = lines.iter().filter(|l| l.starts_with("bench-ioas:")).collect();
            for l in lines.iter().filter_map(|l| l.find("ioas: 0x").map(|at| &l[at..])) {
                println!("{label:<16} {}", l.replacen("ioas: ", "leaves: ", 1));
            }
            if !ours.iter().any(|l| l.contains("bench-ioas: done")) {
                return Err(format!("{label}: the benchmark did not finish: {ours:?}"));
            }
            for l in ours.iter().filter(|l| !l.contains("done")) {
                println!("{label:<16} {}", l.trim_start_matches("bench-ioas: "));
            }
        }
    }
    Ok(())
}

fn pgtable() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::machine::workspace_root())
        .args(["bench", "--package", "io-pgtable", "--bench", "pgtable"])
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("the pgtable benchmark failed".into())
    }
}

/// Runs one benchmark by name, or all.
pub fn run(name: Option<&str>) -> Result<(), String> {
    match name {
        Some("boot") => boot(),
        Some("syscall") => syscall(),
        Some("pgtable") => pgtable(),
        Some("ioas") => ioas(),
        None => boot().and_then(|()| syscall()).and_then(|()| pgtable()).and_then(|()| ioas()),
        Some(other) => Err(format!("unknown benchmark `{other}` (available: boot, syscall, pgtable, ioas)")),
    }
}
