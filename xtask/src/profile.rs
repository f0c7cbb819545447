//! `cargo xtask profile`: a sampling profiler for the kernel (and its first
//! user program) under QEMU. QEMU runs with a gdbstub; every interval the
//! xtask stops the guest, reads the program counter of the first CPU and
//! lets it run again; the samples are symbolized from the ELFs (inlined
//! functions included) and printed as tables (`qemu_tests::profile`).
//!
//! Stopping the guest costs it nothing it can see (TCG's virtual clock stops
//! too), so the samples are spread over guest time as the guest sees it.

use crate::build;
use crate::machine::Machine;
use crate::target::{Arch, Boot, Iommu};
use qemu_tests::gdbstub::Client;
use qemu_tests::profile;
use qemu_tests::symbolize::Symbolizer;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `cargo xtask profile` was asked for.
pub struct Options {
    /// Architecture.
    pub arch: Arch,
    /// IOMMU (default: the architecture's).
    pub iommu: Option<Iommu>,
    /// Programs to run (`init=`), the first of which is symbolized for user samples.
    pub init: String,
    /// Extra kernel command-line words.
    pub cmdline: Vec<String>,
    /// Samples to take at most.
    pub samples: usize,
    /// Time between samples, in host milliseconds.
    pub interval_ms: u64,
    /// Start sampling once a console line contains this.
    pub from: Option<String>,
    /// Stop sampling once a console line contains this.
    pub until: Option<String>,
    /// Rows per table.
    pub top: usize,
}

/// The gdb register number of the program counter (x86_64: `rip` is 16,
/// after the 16 general registers; aarch64: `pc` is 32, after x0–x30 and sp).
fn pc_register(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => 16,
        Arch::Aarch64 => 32,
    }
}

/// A free TCP port on the loopback (bound, then released for QEMU).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Runs the profile and prints it.
pub fn run(o: Options, qemu_args: &[String]) -> Result<(), String> {
    let iommu = o.iommu.unwrap_or(o.arch.default_iommu());
    iommu.check(o.arch)?;
    let names = crate::programs::names()?;
    let init = crate::programs::init_word(&o.init, &names)?;
    let kernel = build::kernel(o.arch, true)?;
    let first = o.init.split(',').next().unwrap_or_default().to_owned();
    let kernel_syms = Symbolizer::from_elf(&kernel.elf)?;
    let user_elf = kernel.elf.with_file_name(&first);
    let user_syms = Symbolizer::from_elf(&user_elf).ok();
    let port = free_port()?;
    let mut cmdline = vec![init];
    cmdline.extend(o.cmdline.iter().cloned());
    let mut extra = qemu_args.to_vec();
    extra.extend(["-gdb".to_owned(), format!("tcp:127.0.0.1:{port}")]);
    let machine = Machine { arch: o.arch, iommu, cmdline, extra, gdb: false, boot: Boot::Direct };
    let (program, args) = machine.command(&kernel)?;
    eprintln!("xtask: {program} {}", args.join(" "));
    let log_path = crate::target::workspace_root().join("target").join("profile.log");
    let mut log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stdout = child.stdout.take().ok_or("QEMU's console is not piped")?;
    let started = Arc::new(AtomicBool::new(o.from.is_none()));
    let stopped = Arc::new(AtomicBool::new(false));
    let reader = {
        let (started, stopped, from, until) = (started.clone(), stopped.clone(), o.from.clone(), o.until.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if from.as_deref().is_some_and(|f| line.contains(f)) {
                    started.store(true, Ordering::SeqCst);
                }
                if until.as_deref().is_some_and(|u| line.contains(u)) && started.load(Ordering::SeqCst) {
                    stopped.store(true, Ordering::SeqCst);
                }
            }
            stopped.store(true, Ordering::SeqCst);
        })
    };
    let result = sample(&o, port, &started, &stopped);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let pcs = result?;
    if pcs.is_empty() {
        return Err(format!(
            "no samples taken (the start marker {:?} never appeared?); the console is in {}",
            o.from,
            log_path.display()
        ));
    }
    let places: Vec<_> = pcs.iter().map(|&pc| profile::place(pc, &kernel_syms, user_syms.as_ref())).collect();
    println!(
        "profile: {} {} init={} every {} ms; console in {}",
        o.arch.name(),
        iommu.name(),
        o.init,
        o.interval_ms,
        log_path.display()
    );
    print!("{}", profile::report(&places, o.top));
    Ok(())
}

/// Takes the samples: connects, lets the guest run, and while sampling is on
/// stops it every interval to read the first CPU's program counter.
fn sample(o: &Options, port: u16, started: &AtomicBool, stopped: &AtomicBool) -> Result<Vec<u64>, String> {
    let mut gdb = Client::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(60))?;
    // QEMU pauses the guest for a new connection; `?` asks why, `c` resumes.
    gdb.request("?")?;
    gdb.resume()?;
    let mut pcs = Vec::with_capacity(o.samples);
    let deadline = Instant::now() + Duration::from_secs(1800);
    while pcs.len() < o.samples && !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(o.interval_ms));
        if !started.load(Ordering::SeqCst) {
            continue;
        }
        if gdb.interrupt().is_err() {
            break; // QEMU exited
        }
        match gdb.register(1, pc_register(o.arch)) {
            Ok(pc) => pcs.push(pc),
            Err(e) => return Err(e),
        }
        if gdb.resume().is_err() {
            break;
        }
    }
    Ok(pcs)
}
