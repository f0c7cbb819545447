//! `cargo xtask`: builds portcullis, boots it under QEMU, runs the test suite
//! and the benchmarks, and installs what is missing.
//!
//! ```text
//! cargo xtask run   [--arch x86_64|aarch64] [--iommu vtd|amdvi|smmuv3|virtio|none] [--boot direct|uefi] [--hw | --init NAME[,NAME…] | --shell [--script FILE]] [--release] [--gdb] [--trace] [--disk nvme|virtio-blk] [--cmdline TEXT] [--memory SIZE] [-- <extra QEMU args>]
//! cargo xtask test  [--host] [--qemu] [--arch A] [--iommu I] [--boot direct|uefi] [--filter PATTERN] [--list | --case NAME]
//! cargo xtask image [--arch A] [--debug] [--cmdline TEXT] [--output PATH]
//! cargo xtask bench [NAME] [--vs-linux [--boots N]]
//! cargo xtask profile [--arch A] [--iommu I] [--init NAME[,NAME…]] [--samples N] [--interval-ms MS] [--from TEXT] [--until TEXT] [--top N] [--cmdline WORD…] [-- <extra QEMU args>]
//! cargo xtask fuzz  [TARGET|all] [--time S] [--list] [--input FILE]
//! cargo xtask fuzz  syscalls [--calls N] [--seed S] [--arch A] [--iommu I]
//! cargo xtask doc   [--guide | --api]
//! cargo xtask setup
//! ```
//! `doc` builds the guide (`docs/guide`, mdBook) into `target/guide/` and the API docs of every
//! crate (`cargo doc --no-deps`, rustdoc warnings denied); see [`doc`].
//! `--smp N` (before or after the subcommand) gives every machine booted N CPUs.
//! `PORTCULLIS_QEMU_EXTRA` (whitespace-split) is appended to every QEMU command line.
//! `PORTCULLIS_KTEST_SELFCHECK=1` builds the kernel with a test that fails on purpose.

mod bench;
mod build;
mod doc;
mod fuzz;
mod harness;
mod image;
mod layers;
mod machine;
mod profile;
mod programs;
mod setup;
mod target;
mod test;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use target::{Arch, Boot, Iommu};

/// The portcullis build tool.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot, test and benchmark portcullis", version)]
struct Cli {
    /// CPUs of every QEMU machine booted (`-smp N`, multi-threaded TCG when
    /// above 1; default 2). Cases that need one CPU keep one.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=16))]
    smp: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the kernel and boot it under QEMU, running the main demo (or the programs of `--init`).
    Run {
        /// Architecture to boot.
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// IOMMU to put in the machine (default: vtd on x86_64, smmuv3 on aarch64).
        #[arg(long, value_enum)]
        iommu: Option<Iommu>,
        /// Build the kernel with optimisations.
        #[arg(long)]
        release: bool,
        /// Start QEMU halted with a gdbstub on :1234 and print the gdb command.
        #[arg(long)]
        gdb: bool,
        /// Log every IOMMU register write and command (kernel command line `trace=1`).
        #[arg(long)]
        trace: bool,
        /// Run the hardware-specific door's demos instead of the generic one:
        /// `hw-vtd` (a task-owned VT-d stage 1 nested over a NEST_PARENT HWPT,
        /// shadowed where the unit cannot nest; every IOMMU) and `hw-smmuv3`
        /// (SMMUv3 hardware nesting with the task's CD and tables; SMMUv3 only).
        #[arg(long)]
        hw: bool,
        /// Run these user programs instead of the demo, one after the other, each
        /// to its exit (kernel command line `init=NAME,NAME`). A program that fails
        /// (non-zero status, killed) is reported and the next one runs; QEMU exits
        /// with failure if any failed. Every binary of `user/programs` is packed
        /// into the image; an unknown name is refused with the list of programs.
        #[arg(long, value_name = "NAME[,NAME…]", conflicts_with = "hw")]
        init: Option<String>,
        /// How the kernel is loaded: QEMU's `-kernel`, or UEFI firmware
        /// (OVMF / AAVMF) running the portcullis loader from a disk image.
        #[arg(long, value_enum, default_value_t = Boot::Direct)]
        boot: Boot,
        /// Add a storage device on a 16 MiB disk image made on the fly
        /// (`target/disks/`); the demo writes, reads back and attacks it.
        #[arg(long, value_enum)]
        disk: Option<target::Disk>,
        /// More words for the kernel command line (e.g. `--cmdline "quota.mem_pages=65536"`).
        #[arg(long, value_name = "TEXT")]
        cmdline: Option<String>,
        /// Guest memory, as QEMU's `-m` takes it (e.g. `2G`; default 512M on x86_64, 1G on aarch64).
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Boot into the interactive shell on the serial console (`help` lists its commands).
        #[arg(long, conflicts_with_all = ["hw", "init"])]
        shell: bool,
        /// With `--shell`: feed FILE to it as typed input (a lesson), then `exit`.
        #[arg(long, value_name = "FILE", requires = "shell")]
        script: Option<std::path::PathBuf>,
        /// Extra QEMU arguments (after `--`).
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Run the test suite: host tests and the QEMU matrix (both unless one is chosen).
    Test {
        /// Run only the host tests (`cargo test` on the host-buildable crates).
        #[arg(long)]
        host: bool,
        /// Run only the QEMU tests.
        #[arg(long)]
        qemu: bool,
        /// Restrict the QEMU matrix to one architecture.
        #[arg(long, value_enum)]
        arch: Option<Arch>,
        /// Restrict the QEMU matrix to one IOMMU.
        #[arg(long, value_enum)]
        iommu: Option<Iommu>,
        /// Run only kernel tests whose `suite.test` name contains PATTERN (comma-separated list).
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
        /// Only the boots through this path (default: both `direct` and `uefi`).
        #[arg(long, value_enum)]
        boot: Option<Boot>,
        /// Print the QEMU cases the matrix holds (for `--arch` / `--boot`), one name a line, and run nothing.
        #[arg(long, conflicts_with_all = ["host", "case", "filter"])]
        list: bool,
        /// Run only the QEMU case NAME (exact name, else every case whose name contains it; see `--list`).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["host", "filter", "iommu"])]
        case: Option<String>,
    },
    /// Write a bootable GPT disk image (EFI system partition with the UEFI
    /// loader, the kernel and its command line) for a real machine or QEMU.
    Image {
        /// Architecture of the image.
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// Build the kernel and loader without optimisations (default: release).
        #[arg(long)]
        debug: bool,
        /// Kernel command line written to `\portcullis\cmdline`.
        #[arg(long, default_value = "init=demo")]
        cmdline: String,
        /// Where to write the image (default: `target/portcullis-<arch>.img`).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Print the crates by layer and check the tree's shape: crate dependencies
    /// point down the layers, and no crate has an import circle between its
    /// modules (`docs/architecture.md`; also run as a host test).
    Layers,
    /// Run benchmarks and print figures: `boot`, `syscall`, `pgtable`, `ioas`, `blk` (all when NAME is omitted).
    Bench {
        /// Benchmark to run.
        name: Option<String>,
        /// `ioas` only: boot our kernel (x86_64, VT-d) and the Linux iommufd
        /// peer (`../shared/peer/linux-iommufd`) alternately with the same
        /// machine options, and print both medians and their ratio per shape.
        #[arg(long)]
        vs_linux: bool,
        /// Boots of each side with `--vs-linux`.
        #[arg(long, default_value_t = 5)]
        boots: usize,
    },
    /// Sample where the kernel (and its first user program) spends its time:
    /// QEMU runs with a gdbstub, the xtask stops the guest every interval,
    /// reads the first CPU's program counter and resumes it; the samples are
    /// symbolized (inlined functions too) and printed by function, symbol and
    /// source line. Release build, direct boot.
    Profile {
        /// Architecture to boot.
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// IOMMU to put in the machine (default: vtd on x86_64, smmuv3 on aarch64).
        #[arg(long, value_enum)]
        iommu: Option<Iommu>,
        /// User programs to run (`init=`); the first is symbolized for user-mode samples.
        #[arg(long, value_name = "NAME[,NAME…]", default_value = "demo")]
        init: String,
        /// Extra kernel command-line words (e.g. `quota.mem_pages=327680`).
        #[arg(long, value_name = "WORD", num_args = 1..)]
        cmdline: Vec<String>,
        /// Most samples to take.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Host milliseconds between samples.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Start sampling when a console line contains TEXT (default: at once).
        #[arg(long, value_name = "TEXT")]
        from: Option<String>,
        /// Stop sampling when a console line contains TEXT (default: at exit or N samples).
        #[arg(long, value_name = "TEXT")]
        until: Option<String>,
        /// Rows per table.
        #[arg(long, default_value_t = 25)]
        top: usize,
        /// Extra QEMU arguments (after `--`).
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Coverage-guided fuzzing (libFuzzer) of a parser or the page-table engine; `--list` names the
    /// targets. `syscalls` instead boots one machine and runs the syscall fuzzer (`test-fuzz`).
    Fuzz {
        /// Target to fuzz (`all` runs each in turn).
        target: Option<String>,
        /// Seconds to run (each target, with `all`).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// List the targets.
        #[arg(long)]
        list: bool,
        /// Run the target once on this input (a crash artifact) instead of fuzzing.
        #[arg(long)]
        input: Option<std::path::PathBuf>,
        /// `syscalls`: calls to issue (default 10^6).
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// `syscalls`: the seed (default: the kernel's clock, printed first).
        #[arg(long)]
        seed: Option<String>,
        /// `syscalls`: architecture.
        #[arg(long, value_enum, default_value_t = Arch::X86_64)]
        arch: Arch,
        /// `syscalls`: IOMMU (default: the architecture's).
        #[arg(long, value_enum)]
        iommu: Option<Iommu>,
    },
    /// Build the guide (`docs/guide`, mdBook; installed into target/tools the first time) into
    /// target/guide/, and the API docs of every crate (`cargo doc --no-deps` per target); any
    /// warning fails.
    Doc {
        /// Only the guide.
        #[arg(long, conflicts_with = "api")]
        guide: bool,
        /// Only the API docs.
        #[arg(long)]
        api: bool,
    },
    /// Install what is missing: rustup targets and components, QEMU >= 10, UEFI firmware (OVMF, AAVMF), a C++ compiler.
    Setup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.smp {
        machine::set_smp(usize::from(n));
    }
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Doc { guide, api } => setup::ensure(setup::Needs::default()).and_then(|()| doc::run(guide, api)),
        Command::Layers => layers::run(&target::workspace_root()),
        Command::Run {
            arch,
            iommu,
            release,
            gdb,
            trace,
            hw,
            init,
            boot,
            disk,
            cmdline,
            memory,
            shell,
            script,
            qemu_args: qemu_args_after,
        } => {
            let words = cmdline.map(|t| t.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
            let init = if shell { Some("shell".to_owned()) } else { init };
            let options = test::RunOptions { arch, iommu, release, gdb, trace, hw, init, boot, cmdline: words, script };
            // The last -m wins: the chosen size after the machine's default.
            let mut qemu_args: Vec<String> = memory.map(|m| vec!["-m".to_owned(), m]).unwrap_or_default();
            qemu_args.extend(qemu_args_after);
            let disk = match disk {
                Some(d) => target::disk_args(d, &format!("run-{}", arch.name())),
                None => Ok(Vec::new()),
            };
            let needs = setup::Needs {
                firmware: boot == Boot::Uefi,
                gdb_multiarch: gdb && arch == Arch::Aarch64,
                ..setup::Needs::QEMU
            };
            setup::ensure(needs).and(disk).and_then(|d| {
                qemu_args.extend(d);
                test::run_demo(options, &qemu_args)
            })
        }
        Command::Test { host, qemu, arch, iommu, filter, boot, list, case } => {
            // `--host` needs no QEMU; the host phase's fuzz runs need a C++ compiler.
            let boots = !host || qemu || list || case.is_some();
            let hosted = (host || !qemu) && !list && case.is_none();
            let needs = setup::Needs {
                qemu: boots,
                firmware: boots && boot != Some(Boot::Direct),
                cxx: hosted,
                gdb_multiarch: false,
            };
            setup::ensure(needs).and_then(|()| {
                let select = test::Select { list, case: case.as_deref() };
                test::run_tests(host, qemu, arch, iommu, filter.as_deref(), boot, select)
            })
        }
        Command::Image { arch, debug, cmdline, output } => {
            setup::ensure(setup::Needs::default()).and_then(|()| image::build_image(arch, !debug, &cmdline, output))
        }
        Command::Bench { name, vs_linux: true, boots } => {
            if name.as_deref() != Some("ioas") {
                Err("--vs-linux goes with `cargo xtask bench ioas`".into())
            } else {
                setup::ensure(setup::Needs::QEMU).and_then(|()| bench::ioas_vs_linux(boots))
            }
        }
        Command::Bench { name, .. } => {
            let needs = if name.as_deref() == Some("pgtable") { setup::Needs::default() } else { setup::Needs::QEMU };
            setup::ensure(needs).and_then(|()| bench::run(name.as_deref()))
        }
        Command::Profile { arch, iommu, init, cmdline, samples, interval_ms, from, until, top, qemu_args } => {
            let options = profile::Options { arch, iommu, init, cmdline, samples, interval_ms, from, until, top };
            setup::ensure(setup::Needs::QEMU).and_then(|()| profile::run(options, &qemu_args))
        }
        Command::Fuzz { target, list: false, calls, seed, arch, iommu, .. }
            if target.as_deref() == Some("syscalls") =>
        {
            setup::ensure(setup::Needs::QEMU).and_then(|()| fuzz::syscalls(arch, iommu, calls, seed.as_deref()))
        }
        Command::Fuzz { target, time, list, input, .. } => {
            let needs = setup::Needs { cxx: true, ..setup::Needs::default() };
            setup::ensure(needs).and_then(|()| fuzz::run(target.as_deref(), time, list, input.as_deref()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
