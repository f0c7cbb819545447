//! `cargo xtask fuzz`: coverage-guided fuzzing of the parsers and the
//! page-table engine with libFuzzer (the `fuzz/` crate, outside the
//! workspace; its `src/lib.rs` says why libFuzzer and how it runs on stable).
//!
//! The targets are built with rustc's SanitizerCoverage codegen options (all
//! stable) for the host triple into `fuzz/target`, and run with their corpus
//! in `fuzz/corpus/<target>` (gitignored), seeded from the captured QEMU
//! tables in the tree and `fuzz/seeds/<target>`. A crash writes the input to
//! `fuzz/artifacts/<target>/` and fails the run with that path.
//! `cargo xtask test` runs [`BRIEF_RUNS`] inputs through every target,
//! reproducibly, and counts each as a test.

use crate::machine::Machine;
use crate::target::{workspace_root, Arch, Boot, Iommu};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How many inputs `cargo xtask test` runs through each target, from the
/// seeds alone with a fixed libFuzzer seed: the same inputs on every run of
/// the same build, so the suite's verdict does not depend on luck (a longer
/// `cargo xtask fuzz` run is where new inputs are found; what it finds
/// becomes a regression test).
pub const BRIEF_RUNS: u64 = 40_000;

/// Inputs for `target`'s brief run: [`BRIEF_RUNS`] scaled by how fast the
/// target is (about 1–2 s each on this project's 2-core machines).
pub fn brief_runs(target: &str) -> u64 {
    match target {
        "dmar" | "ivrs" | "iort" | "gtdt" | "elf" => 10 * BRIEF_RUNS,
        "prt" | "bootinfo" => 6 * BRIEF_RUNS,
        "pci" => 4 * BRIEF_RUNS,
        "walker" => 2 * BRIEF_RUNS,
        "viot" => BRIEF_RUNS / 2,
        "devicetree" => BRIEF_RUNS / 4,
        "pgtable" => BRIEF_RUNS / 5,
        _ => BRIEF_RUNS,
    }
}
/// libFuzzer's `-seed` for the brief runs.
pub const BRIEF_SEED: u64 = 1;

/// Targets, what they exercise, and their seeds (files, or directories of files).
pub const TARGETS: [(&str, &str, &[&str]); 12] = [
    (
        "dmar",
        "DMAR parser + VT-d topology",
        &["firmware/acpi-tables/tests/data/vtd-DMAR.bin", "firmware/acpi-tables/tests/data/vtd-iotlb-DMAR.bin"],
    ),
    ("ivrs", "IVRS parser + AMD-Vi topology", &["firmware/acpi-tables/tests/data/amdvi-IVRS.bin"]),
    ("iort", "IORT parser, ID mapping + Arm topology", &["firmware/acpi-tables/tests/data/virt-smmuv3-IORT.bin"]),
    ("viot", "VIOT parser + virtio-iommu topology", &["firmware/acpi-tables/tests/data/virtio-VIOT.bin"]),
    ("gtdt", "GTDT parser", &["fuzz/seeds/gtdt"]),
    ("prt", "_PRT from DSDT AML", &["fuzz/seeds/prt"]),
    (
        "devicetree",
        "device tree queries + topology",
        &["firmware/devicetree/tests/data/virt-smmuv3.dtb", "firmware/devicetree/tests/data/virt-virtio.dtb"],
    ),
    ("pci", "PCI enumeration, caps, policy, BAR assignment", &[]),
    ("bootinfo", "boot hand-off (BootInfo::from_handoff)", &["fuzz/seeds/bootinfo"]),
    ("elf", "kernel ELF reader + UEFI load plan", &["fuzz/seeds/elf"]),
    ("pgtable", "io-pgtable map/unmap vs a model", &["fuzz/seeds/pgtable"]),
    ("walker", "io-pgtable walk_foreign over hostile tables", &["fuzz/seeds/walker"]),
];

/// The SanitizerCoverage flags cargo-fuzz uses with `--sanitizer none`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing";

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn host_triple() -> Result<String, String> {
    let out = Command::new("rustc").arg("-vV").output().map_err(|e| format!("cannot run rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// Builds every target; returns the directory holding the binaries.
pub fn build() -> Result<PathBuf, String> {
    let triple = host_triple()?;
    eprintln!("xtask: building the fuzz targets (libFuzzer, SanitizerCoverage) for {triple}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(fuzz_dir())
        .args(["build", "--release", "--target", &triple, "--bins"])
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", fuzz_dir().join("target"))
        .status()
        .map_err(|e| format!("cannot run cargo build for the fuzz targets: {e}"))?;
    if !status.success() {
        return Err("building the fuzz targets failed".into());
    }
    Ok(fuzz_dir().join("target").join(triple).join("release"))
}

/// How long a run goes on.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// For this long, from the corpus kept in `fuzz/corpus/<target>`.
    Time(Duration),
    /// This many inputs with [`BRIEF_SEED`], from the seeds alone.
    Runs(u64),
}

/// Copies the seeds of `target` into its corpus directory (once each); a
/// fresh directory of the seeds alone when `fresh`.
fn corpus(target: &str, seeds: &[&str], fresh: bool) -> Result<PathBuf, String> {
    let dir = fuzz_dir().join(if fresh { "brief-corpus" } else { "corpus" }).join(target);
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for s in seeds {
        let p = workspace_root().join(s);
        if p.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            files.extend(entries.flatten().map(|e| e.path()).filter(|f| f.is_file()));
        } else {
            files.push(p);
        }
    }
    for f in files {
        let Some(name) = f.file_name() else { continue };
        let to = dir.join(format!("seed-{}", name.to_string_lossy()));
        if !to.exists() {
            std::fs::copy(&f, &to).map_err(|e| format!("seed {}: {e}", f.display()))?;
        }
    }
    Ok(dir)
}

/// What one run did.
pub struct Outcome {
    /// Inputs executed.
    pub execs: u64,
    /// Executions per second (libFuzzer's average).
    pub per_sec: u64,
    /// The input that crashed the target, if any (or the failure text).
    pub crash: Option<String>,
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Fuzzes `target` within `budget`.
pub fn run_one(bin_dir: &Path, target: &str, budget: Budget) -> Result<Outcome, String> {
    let (_, _, seeds) =
        TARGETS.iter().find(|t| t.0 == target).ok_or_else(|| format!("no fuzz target {target:?}; try --list"))?;
    let dir = corpus(target, seeds, matches!(budget, Budget::Runs(_)))?;
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts).map_err(|e| format!("{}: {e}", artifacts.display()))?;
    let limits = match budget {
        Budget::Time(t) => vec![format!("-max_total_time={}", t.as_secs().max(1))],
        Budget::Runs(n) => vec![format!("-runs={n}"), format!("-seed={BRIEF_SEED}")],
    };
    let out = Command::new(bin_dir.join(target))
        .args(&limits)
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run fuzz target {target}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let crash = (!out.status.success()).then(|| {
        text.lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_owned()))
            .unwrap_or_else(|| format!("exit {}: {}", out.status, text.lines().last().unwrap_or("")))
    });
    if crash.is_some() {
        eprint!("{text}");
    }
    Ok(Outcome {
        execs: stat(&text, "stat::number_of_executed_units:"),
        per_sec: stat(&text, "stat::average_exec_per_sec:"),
        crash,
    })
}

fn report(target: &str, o: &Outcome) -> bool {
    match &o.crash {
        None => {
            println!("PASS fuzz.{target} ({} execs, {} exec/s)", o.execs, o.per_sec);
            true
        }
        Some(input) => {
            println!(
                "FAIL fuzz.{target}: crashing input {input} (reproduce: cargo xtask fuzz {target} --input {input})"
            );
            false
        }
    }
}

/// `cargo xtask test`'s fuzz phase: [`brief_runs`] inputs through every target; (passed, failed).
pub fn brief() -> (usize, usize) {
    eprintln!(
        "xtask: fuzz phase: {} targets, a fixed number of inputs each (libFuzzer seed {BRIEF_SEED})",
        TARGETS.len()
    );
    let bin_dir = match build() {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL fuzz (build): {e}");
            return (0, 1);
        }
    };
    let (mut passed, mut failed, mut total) = (0, 0, 0);
    for (target, _, _) in TARGETS {
        match run_one(&bin_dir, target, Budget::Runs(brief_runs(target))) {
            Ok(o) => {
                total += o.execs;
                if report(target, &o) {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("FAIL fuzz.{target}: {e}");
                failed += 1;
            }
        }
    }
    eprintln!("xtask: fuzz phase: {passed} passed, {failed} failed, {total} inputs executed");
    (passed, failed)
}

/// `cargo xtask fuzz`.
pub fn run(target: Option<&str>, time: u64, list: bool, input: Option<&Path>) -> Result<(), String> {
    let target = match target {
        Some(t) if !list => t,
        _ => {
            for (name, what, _) in TARGETS {
                println!("{name:<11} {what}");
            }
            println!("{:<11} the syscall fuzzer in QEMU (--calls N --seed S --arch A --iommu I)", "syscalls");
            return Ok(());
        }
    };
    let bin_dir = build()?;
    if let Some(input) = input {
        // Re-run one input (a crash artifact) with the panic message and backtrace.
        let status = Command::new(bin_dir.join(target))
            .arg(input)
            .env("RUST_BACKTRACE", "1")
            .status()
            .map_err(|e| format!("cannot run fuzz target {target}: {e}"))?;
        return if status.success() { Ok(()) } else { Err(format!("{target} fails on {}", input.display())) };
    }
    let targets: Vec<&str> = if target == "all" { TARGETS.iter().map(|t| t.0).collect() } else { vec![target] };
    let mut failed = 0;
    for t in targets {
        let o = run_one(&bin_dir, t, Budget::Time(Duration::from_secs(time)))?;
        if !report(t, &o) {
            failed += 1;
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} fuzz target(s) crashed"))
    }
}

/// `cargo xtask fuzz syscalls`: boots one machine (the test suite's, with
/// its second `edu`) running only `test-fuzz`, with `fuzz.calls=` and
/// `fuzz.seed=` on the command line, and checks its KTAP results.
pub fn syscalls(arch: Arch, iommu: Option<Iommu>, calls: u64, seed: Option<&str>) -> Result<(), String> {
    let iommu = iommu.unwrap_or(arch.default_iommu());
    iommu.check(arch)?;
    let mut cmdline = vec!["ktest=test-fuzz".to_owned(), format!("fuzz.calls={calls}")];
    if let Some(s) = seed {
        let ok = s.strip_prefix("0x").map_or(s.parse::<u64>().is_ok(), |h| u64::from_str_radix(h, 16).is_ok());
        if !ok {
            return Err(format!("--seed {s:?}: a decimal or 0x-hex number"));
        }
        cmdline.push(format!("fuzz.seed={s}"));
    } else {
        // A new seed each time (the test boots use a fixed one per IOMMU).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let s = format!("{:#x}", (now ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) & (i64::MAX as u64));
        eprintln!("xtask: fuzz syscalls: seed {s} (replay with --seed {s})");
        cmdline.push(format!("fuzz.seed={s}"));
    }
    let extra = match iommu {
        Iommu::None => Vec::new(),
        _ => vec!["-device".to_owned(), "edu,dma_mask=0xffffffffffffffff".to_owned()],
    };
    let kernel = crate::build::kernel_for(arch, false, Boot::Direct)?;
    let machine = Machine { arch, iommu, cmdline, extra, gdb: false, boot: Boot::Direct };
    // About 40 us a call under TCG, with a margin.
    let timeout = Duration::from_secs(120 + calls / 5_000);
    let mut case = crate::harness::case(&machine, &kernel, timeout)?;
    case.name = format!("{}-fuzz-syscalls", machine.name());
    case.log_file.set_file_name(format!("{}.log", case.name));
    case.must_contain = vec!["ok 1 user.fuzz.calls".into(), "ok 3 user.fuzz.baseline_restored".into()];
    let started = std::time::Instant::now();
    let (ok, _) = crate::harness::run_and_report(vec![case])?;
    eprintln!("xtask: fuzz syscalls: {calls} calls on {} in {:.1} s", machine.name(), started.elapsed().as_secs_f64());
    if ok {
        Ok(())
    } else {
        Err("the syscall fuzzer failed (the log names the seed)".into())
    }
}
