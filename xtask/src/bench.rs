//! `cargo xtask bench [NAME]`: benchmarks that print figures (never asserts on time).
//!
//! - `boot`: wall time from QEMU start to the kernel's first log line
//!   (`portcullis: kernel_main`), to the first user task's output and to the
//!   kernel's exit, per architecture, for the direct and the UEFI boot.
//! - `syscall`: null-syscall round trip from user space (`yield`), per architecture.
//! - `pgtable`: the I/O page-table engine benchmark (`cargo bench -p io-pgtable`).
//! - `ioas`: the generic IOAS door's map + unmap cost through the syscall, per architecture and IOMMU;
//!   with `--vs-linux [--boots N]`, our VT-d machine against the Linux iommufd peer, booted
//!   alternately with the same machine options, as ratios of medians.

use crate::build;
use crate::harness;
use crate::machine::Machine;
use crate::target::{Arch, Boot, Iommu};
use std::collections::BTreeMap;
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
            iommu: crate::target::Iommu::None,
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
                cmdline: BENCH_IOAS_CMDLINE.iter().map(|s| (*s).to_owned()).collect(),
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
    ioas_scaling()
}

/// The scaling part of `bench ioas`: 4 KiB map + unmap pairs from 1, 2 and
/// up to 4 tasks at once (as many as `--smp` gives CPUs), each on its own
/// IOAS with its own `edu`, on every IOMMU (`bench-smp`); pairs per second
/// of each round and the ratio to one task (medians of 3 rounds). Then the
/// same without devices, pairs of the cheapest syscall, and pairs of a loop
/// without syscalls (the machine's ceiling), to show where scaling stops.
fn ioas_scaling() -> Result<(), String> {
    let cpus = crate::machine::smp();
    println!("bench ioas: scaling with tasks on separate IOAS, {cpus} CPU(s) (--smp N), release kernels");
    for arch in Arch::all() {
        let kernel = build::kernel(arch, true)?;
        for &iommu in Iommu::for_arch(arch).iter().filter(|&&i| i != Iommu::None) {
            // Four edus in all (the machine brings one): one per task.
            let extra: Vec<String> =
                (0..3).flat_map(|_| ["-device".to_owned(), "edu,dma_mask=0xffffffffffffffff".to_owned()]).collect();
            // `ktest=` opens the test mailbox and counters the workers meet through.
            let cmdline = vec!["init=bench-smp".to_owned(), "ktest=bench-smp".to_owned()];
            let machine = Machine { arch, iommu, cmdline, extra, gdb: false, boot: Boot::Direct };
            let label = machine.name();
            let lines = harness::boot_lines(&machine, &kernel, Duration::from_secs(900))?;
            let ours: Vec<&String> = lines.iter().filter(|l| l.starts_with("bench-smp:")).collect();
            if !ours.iter().any(|l| l.contains("bench-smp: done")) {
                return Err(format!("{label}: the scaling benchmark did not finish: {ours:?}"));
            }
            for l in ours.iter().filter(|l| !l.contains("done")) {
                println!("{label:<16} {}", l.trim_start_matches("bench-smp: "));
            }
        }
    }
    Ok(())
}

/// `bench blk`: 4 KiB random and 128 KiB sequential reads on NVMe and
/// virtio-blk through the generic drivers, buffers mapped once (premapped)
/// or mapped and unmapped around each I/O (strict), on every IOMMU, and
/// premapped with no IOMMU at all (`--iommu none` booted with
/// `iommu.noiommu=allow`: IOVA = physical address); the medians of the
/// alternating runs, the ratio strict / premapped, and each to no IOMMU.
fn blk() -> Result<(), String> {
    println!("bench blk: QD1 reads through the generic drivers (TCG, release kernels, completions by MSI-X), every IOMMU and none");
    println!(
        "{:<22} {:<10} {:<8} {:>11} {:>7} {:>11} {:>7} {:>9} {:>10} {:>9}",
        "machine",
        "device",
        "pattern",
        "premap IOPS",
        "MB/s",
        "strict IOPS",
        "MB/s",
        "str/prem",
        "premap/none",
        "strict/none"
    );
    type Medians = std::collections::BTreeMap<(String, String, String), f64>;
    for arch in Arch::all() {
        let kernel = build::kernel(arch, true)?;
        let mut none: Medians = Medians::new();
        // No IOMMU first: the baseline every IOMMU's row is divided by.
        let mut iommus: Vec<Iommu> = vec![Iommu::None];
        iommus.extend(Iommu::for_arch(arch).iter().copied().filter(|&i| i != Iommu::None));
        for iommu in iommus {
            let mut cmdline = vec!["init=bench-blk".to_owned()];
            if iommu == Iommu::None {
                // Linux's VFIO no-IOMMU mode; x86 also needs unremapped MSIs allowed.
                cmdline.extend(["iommu.noiommu=allow".to_owned(), "iommu.unsafe_interrupts=allow".to_owned()]);
            }
            let mut machine = Machine { arch, iommu, cmdline, extra: Vec::new(), gdb: false, boot: Boot::Direct };
            let label = machine.name();
            machine.extra = crate::test::storage_disks(&format!("bench-{label}"))?;
            let lines = harness::boot_lines(&machine, &kernel, Duration::from_secs(900))?;
            if !lines.iter().any(|l| l.contains("bench-blk: done")) {
                let said: Vec<&String> = lines.iter().filter(|l| l.contains("bench-blk")).collect();
                return Err(format!("{label}: the benchmark did not finish: {said:?}"));
            }
            let rs = results(lines.iter().map(String::as_str));
            // Each (device, mode, pattern) the runs name, then its medians.
            let runs: std::collections::BTreeSet<(String, String, String)> = rs
                .iter()
                .filter_map(|r| Some((r.get("dev")?.clone(), r.get("mode")?.clone(), r.get("pattern")?.clone())))
                .collect();
            let mut medians = Medians::new();
            for (dev, mode, pattern) in runs {
                for k in ["iops", "mbps"] {
                    let mut v: Vec<f64> = rs
                        .iter()
                        .filter(|x| {
                            x.get("dev") == Some(&dev)
                                && x.get("mode") == Some(&mode)
                                && x.get("pattern") == Some(&pattern)
                        })
                        .filter_map(|x| field(x, k))
                        .collect();
                    if let Some(m) = median(&mut v) {
                        medians.insert((dev.clone(), format!("{mode}/{k}"), pattern.clone()), m);
                    }
                }
            }
            let get = |m: &Medians, dev: &str, what: &str, pattern: &str| {
                m.get(&(dev.to_owned(), what.to_owned(), pattern.to_owned())).copied()
            };
            for dev in ["nvme", "virtio-blk"] {
                for pattern in ["rand4k", "seq128k"] {
                    let (Some(pi), Some(pm)) =
                        (get(&medians, dev, "premapped/iops", pattern), get(&medians, dev, "premapped/mbps", pattern))
                    else {
                        continue;
                    };
                    let si = get(&medians, dev, "strict/iops", pattern);
                    let sm = get(&medians, dev, "strict/mbps", pattern);
                    let base = get(&none, dev, "premapped/iops", pattern);
                    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
                    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                        (Some(a), Some(b)) => format!("{:.2}", a / b.max(1.0)),
                        _ => "-".to_owned(),
                    };
                    println!(
                        "{label:<22} {dev:<10} {pattern:<8} {pi:>11.0} {pm:>7.0} {:>11} {:>7} {:>9} {:>10} {:>9}",
                        cell(si),
                        cell(sm),
                        ratio(si, Some(pi)),
                        ratio(Some(pi), base),
                        ratio(si, base)
                    );
                }
            }
            if iommu == Iommu::None {
                none = medians;
            }
        }
    }
    println!(
        "bench blk: str/prem = strict IOPS / premapped IOPS; premap/none and strict/none = IOPS over the same \
         device's premapped IOPS with no IOMMU (iommu.noiommu=allow, IOVA = physical address)"
    );
    Ok(())
}

/// `bench-ioas` maps 1 GiB: above the default memory and pin quotas.
const BENCH_IOAS_CMDLINE: [&str; 3] = ["init=bench-ioas", "quota.mem_pages=327680", "quota.pinned_pages=327680"];

/// The machine options the Linux peer boots with (`runner.py`), on top of
/// our VT-d machine: 2 GiB, two CPUs (ours runs on the first), VT-d caching
/// mode as the peer's `intel-iommu` has it.
const PEER_OPTIONS: [&str; 6] = ["-m", "2G", "-smp", "2", "-global", "intel-iommu.caching-mode=on"];

/// The `RESULT key=value …` lines of a boot, as maps.
fn results<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<BTreeMap<String, String>> {
    lines
        .filter_map(|l| l.find("RESULT ").map(|at| &l[at + 7..]))
        .map(|r| r.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
        .collect()
}

/// The `RESULT` line of case `name`, if one was printed.
fn case<'a>(rs: &'a [BTreeMap<String, String>], name: &str) -> Option<&'a BTreeMap<String, String>> {
    rs.iter().find(|r| r.get("case").is_some_and(|c| c == name))
}

fn field(r: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    r.get(key)?.parse().ok()
}

/// The shapes compared with `--vs-linux`: our case, the peer's case, and
/// how each side's figure (map + unmap, ns) is read.
const SHAPES: [(&str, &str, &str); 5] = [
    ("4k", "a_1x4k", "a_1x4k"),
    ("256x4k", "b_256x4k", "b_256x4k"),
    ("2m", "c_2m", "c_2m_hugetlb"),
    ("1000x4k", "d_1000x4k", "d_1000x4k"),
    ("error-path", "error_path", "null_ioctl_destroy_enoent"),
];

/// A case's map + unmap time (ns): `pair_ns`, else `map_ns + unmap_ns`, else `ns`.
fn pair_ns(r: &BTreeMap<String, String>) -> Option<f64> {
    field(r, "pair_ns").or_else(|| Some(field(r, "map_ns")? + field(r, "unmap_ns")?)).or_else(|| field(r, "ns"))
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// How many times one Linux peer boot is tried: under TCG on a loaded
/// machine the peer's guest now and then stalls (RCU stall warnings, then
/// the runner's timeout), which says nothing about either side's figures.
const PEER_ATTEMPTS: usize = 3;

/// Boots the Linux peer once into `dir` (`runner.py --boots 1 --out dir`),
/// trying again when a boot does not complete, at most [`PEER_ATTEMPTS`] times.
fn peer_boot(peer: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    for attempt in 1..=PEER_ATTEMPTS {
        let status = Command::new("python3")
            .arg(peer.join("runner.py"))
            .args(["--boots", "1", "--out"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run the peer's runner.py: {e}"))?;
        if status.success() {
            return Ok(());
        }
        if attempt == PEER_ATTEMPTS {
            return Err(format!(
                "the Linux peer failed {PEER_ATTEMPTS} times ({status}); its last log is in {}",
                dir.display()
            ));
        }
        eprintln!(
            "bench ioas vs linux: the Linux peer's boot did not complete ({status}, log in {}); booting it again",
            dir.display()
        );
    }
    Ok(())
}

/// `cargo xtask bench ioas --vs-linux`: our VT-d machine and the Linux peer
/// booted alternately `boots` times, the same shapes measured on both; per
/// shape the median across boots of each boot's median, and the ratio.
pub fn ioas_vs_linux(boots: usize) -> Result<(), String> {
    let peer = crate::target::workspace_root().join("../shared/peer/linux-iommufd");
    if !peer.join("runner.py").exists() {
        return Err(format!("the Linux peer is not at {} (runner.py missing)", peer.display()));
    }
    let kernel = build::kernel(Arch::X86_64, true)?;
    let machine = Machine {
        arch: Arch::X86_64,
        iommu: Iommu::Vtd,
        cmdline: BENCH_IOAS_CMDLINE.iter().map(|s| (*s).to_owned()).collect(),
        extra: PEER_OPTIONS.iter().map(|s| (*s).to_owned()).collect(),
        gdb: false,
        boot: Boot::Direct,
    };
    let out = crate::target::workspace_root().join("target").join("bench-vs-linux");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "bench ioas vs linux: x86_64 q35 + VT-d (caching mode) + edu, -m 2G -smp 2, TCG, {boots} boot(s) of each, alternating"
    );
    let mut ours: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut linux: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut growth: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..boots {
        let lines = harness::boot_lines(&machine, &kernel, Duration::from_secs(600))?;
        let ours_r = results(lines.iter().map(String::as_str));
        let dir = out.join(format!("linux-{i}"));
        peer_boot(&peer, &dir)?;
        let log = std::fs::read_to_string(dir.join("boot-0.log")).map_err(|e| format!("peer log: {e}"))?;
        let peer_r = results(log.lines());
        let backend = |b: &str| -> Vec<_> {
            peer_r.iter().filter(|r| r.get("backend").is_some_and(|x| x == b)).cloned().collect()
        };
        let (linux_r, linux_bare) = (backend("iommufd"), backend("iommufd-nodomain"));
        for (shape, o, l) in SHAPES {
            let (a, b) = (case(&ours_r, o).and_then(pair_ns), case(&linux_r, l).and_then(pair_ns));
            let (Some(a), Some(b)) = (a, b) else {
                return Err(format!("boot {i}: shape {shape}: ours {a:?}, linux {b:?} (a case did not report)"));
            };
            ours.entry(shape).or_default().push(a);
            linux.entry(shape).or_default().push(b);
        }
        if let (Some(a), Some(b)) =
            (case(&ours_r, "a_1x4k_nodomain").and_then(pair_ns), case(&linux_bare, "a_1x4k").and_then(pair_ns))
        {
            ours.entry("4k-no-device").or_default().push(a);
            linux.entry("4k-no-device").or_default().push(b);
        }
        for (name, case) in [("4K", "a_1x4k"), ("256K", "g_256k"), ("2M", "c_2m"), ("64M", "g_64m"), ("1G", "g_1g")] {
            if let Some(v) = self::case(&ours_r, case).and_then(|r| field(r, "pair_ns_per_4k")) {
                growth.entry(name).or_default().push(v);
            }
        }
        eprintln!("bench ioas vs linux: boot {} of {boots} done", i + 1);
    }
    let mut worst = 0f64;
    for (shape, _, _) in SHAPES {
        let o = ours.get_mut(shape).and_then(|v| median(v)).unwrap_or(f64::NAN);
        let l = linux.get_mut(shape).and_then(|v| median(v)).unwrap_or(f64::NAN);
        let ratio = o / l;
        worst = worst.max(ratio);
        println!("bench ioas vs linux: {shape} ours {o:.0} linux {l:.0} ratio {ratio:.2}");
    }
    println!("bench ioas vs linux: worst ratio {worst:.2}");
    // For reference (not a target): iommufd's own cost, with no IOMMU behind the IOAS.
    if let (Some(o), Some(l)) =
        (ours.get_mut("4k-no-device").and_then(|v| median(v)), linux.get_mut("4k-no-device").and_then(|v| median(v)))
    {
        println!(
            "bench ioas vs linux: 4k-no-device ours {o:.0} linux {l:.0} ratio {:.2} (IOAS with no device; reference)",
            o / l
        );
    }
    for name in ["4K", "256K", "2M", "64M", "1G"] {
        if let Some(v) = growth.get_mut(name).and_then(|v| median(v)) {
            println!("bench ioas growth: {name} map+unmap per 4K {v:.0} ns");
        }
    }
    Ok(())
}

fn pgtable() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::target::workspace_root())
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
        Some("blk") => blk(),
        None => boot().and_then(|()| syscall()).and_then(|()| pgtable()).and_then(|()| ioas()).and_then(|()| blk()),
        Some(other) => Err(format!("unknown benchmark `{other}` (available: boot, syscall, pgtable, ioas, blk)")),
    }
}
