//! `cargo xtask test` and `cargo xtask run`: host tests, the QEMU matrix and the demo boot.

use crate::build;
use crate::harness;
use crate::machine::{Arch, Iommu, Machine};
use std::process::Command;
use std::time::Duration;

/// Time one test boot may take before it is killed (TCG on 2 shared cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Counts parsed from `cargo test` output.
#[derive(Default, Debug, Clone, Copy)]
pub struct HostCounts {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were ignored.
    pub ignored: usize,
}

/// Sums the `test result:` lines of `cargo test` output.
pub fn parse_cargo_test(output: &str) -> HostCounts {
    let mut c = HostCounts::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { continue };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<usize>() else { continue };
            match what {
                "passed" => c.passed += n,
                "failed" => c.failed += n,
                "ignored" => c.ignored += n,
                _ => {}
            }
        }
    }
    c
}

/// Runs `cargo test` on the host-buildable crates and returns the counts.
fn host_tests() -> Result<HostCounts, String> {
    eprintln!("xtask: host tests (cargo test on the workspace's default members)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(crate::machine::workspace_root())
        .args(["test", "--no-fail-fast"])
        .output()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    let mut counts = parse_cargo_test(&stdout);
    if !out.status.success() {
        eprint!("{stderr}");
        if counts.failed == 0 {
            counts.failed = 1; // a build failure counts as one failure
        }
    }
    eprintln!("xtask: host tests: {} passed, {} failed, {} ignored", counts.passed, counts.failed, counts.ignored);
    Ok(counts)
}

/// The QEMU configurations to test, after `--arch` / `--iommu` restrictions.
fn matrix(arch: Option<Arch>, iommu: Option<Iommu>) -> Result<Vec<(Arch, Iommu)>, String> {
    if let (Some(a), Some(i)) = (arch, iommu) {
        i.check(a)?;
    }
    let cases: Vec<(Arch, Iommu)> = Arch::all()
        .into_iter()
        .filter(|a| arch.is_none_or(|x| x == *a))
        .flat_map(|a| Iommu::for_arch(a).iter().map(move |i| (a, *i)))
        .filter(|(_, i)| iommu.is_none_or(|x| x == *i))
        .collect();
    if cases.is_empty() {
        return Err("no QEMU configuration matches --arch/--iommu".into());
    }
    Ok(cases)
}

/// `cargo xtask test`.
pub fn run_tests(
    host_only: bool,
    qemu_only: bool,
    arch: Option<Arch>,
    iommu: Option<Iommu>,
    filter: Option<&str>,
) -> Result<(), String> {
    let (do_host, do_qemu) = match (host_only, qemu_only) {
        (true, false) => (true, false),
        (false, true) => (false, true),
        _ => (true, true),
    };
    let host = if do_host { host_tests()? } else { HostCounts::default() };
    let mut qemu_ok = true;
    let mut totals = harness::Totals { passed: host.passed, failed: host.failed, skipped: host.ignored };
    if do_qemu {
        let configs = matrix(arch, iommu)?;
        let mut cases = Vec::new();
        for a in Arch::all().into_iter().filter(|a| configs.iter().any(|(x, _)| x == a)) {
            let kernel = build::kernel(a, false)?;
            for &(ca, ci) in configs.iter().filter(|(x, _)| *x == a) {
                let machine = Machine {
                    arch: ca,
                    iommu: ci,
                    cmdline: vec![format!("ktest={}", filter.unwrap_or("all"))],
                    extra: Vec::new(),
                    gdb: false,
                };
                cases.push(harness::case(&machine, &kernel, BOOT_TIMEOUT));
            }
        }
        // The exception and panic report paths, once per architecture.
        if filter.is_none_or(|f| f.contains("crash")) {
            for a in Arch::all().into_iter().filter(|a| configs.iter().any(|(x, _)| x == a)) {
                let kernel = build::kernel(a, false)?;
                for kind in ["page-fault", "panic"] {
                    let machine = Machine {
                        arch: a,
                        iommu: Iommu::None,
                        cmdline: vec![format!("crashtest={kind}")],
                        extra: Vec::new(),
                        gdb: false,
                    };
                    let mut c = harness::case(&machine, &kernel, BOOT_TIMEOUT);
                    c.name = format!("{}-crash-{kind}", a.name());
                    c.log_file.set_file_name(format!("{}.log", c.name));
                    c.expect = qemu_tests::runner::Expect::Crash;
                    cases.push(c);
                }
            }
        }
        let (ok, counts) = harness::run_and_report(cases)?;
        qemu_ok = ok;
        totals.passed += counts.passed;
        totals.failed += counts.failed;
        totals.skipped += counts.skipped;
    }
    // The plain closing line counts host and kernel tests together.
    println!("{} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.skipped);
    if totals.failed == 0 && host.failed == 0 && qemu_ok {
        Ok(())
    } else {
        Err("some tests failed".into())
    }
}

/// `cargo xtask run`: boots one machine with live, symbolized output.
pub fn run_demo(
    arch: Arch,
    iommu: Option<Iommu>,
    release: bool,
    gdb: bool,
    trace: bool,
    qemu_args: &[String],
) -> Result<(), String> {
    let iommu = iommu.unwrap_or(arch.default_iommu());
    iommu.check(arch)?;
    let kernel = build::kernel(arch, release)?;
    // The demo: the first user program.
    let mut cmdline = vec!["init=hello".to_owned()];
    if trace {
        cmdline.push("trace=1".to_owned());
    }
    let machine = Machine { arch, iommu, cmdline, extra: qemu_args.to_vec(), gdb };
    if gdb {
        println!(
            "xtask: QEMU waits for gdb on localhost:1234. In another terminal:\n  gdb {} -ex 'target remote localhost:1234'",
            kernel.elf.display()
        );
    }
    let timeout = if gdb { None } else { Some(Duration::from_secs(600)) };
    harness::run_live(&machine, &kernel, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_lines_are_summed() {
        let out = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 2 passed; 4 failed; 0 ignored; 0 measured\nnoise passed\n";
        let c = parse_cargo_test(out);
        assert_eq!((c.passed, c.failed, c.ignored), (5, 4, 1));
    }

    #[test]
    fn matrix_respects_filters_and_rejects_impossible_pairs() {
        assert_eq!(matrix(Some(Arch::Aarch64), None).unwrap().len(), 3);
        assert_eq!(matrix(None, Some(Iommu::Virtio)).unwrap().len(), 2);
        assert!(matrix(Some(Arch::Aarch64), Some(Iommu::Vtd)).unwrap_err().contains("not available on aarch64"));
        assert_eq!(matrix(None, None).unwrap().len(), 7);
    }
}
