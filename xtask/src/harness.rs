//! Glue between the xtask's machines and the `qemu-tests` harness.

use crate::build::Kernel;
use crate::machine::Machine;
use crate::target::workspace_root;
use qemu_tests::report;
use qemu_tests::runner::{self, Case, Expect};
use std::time::Duration;

pub use qemu_tests::report::Totals;

/// Cores to use for parallel boots.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A test case (KTAP expected) for `machine` booting `kernel`.
pub fn case(machine: &Machine, kernel: &Kernel, timeout: Duration) -> Result<Case, String> {
    let (program, args) = machine.command(kernel)?;
    Ok(Case {
        name: machine.name(),
        program,
        args,
        timeout: Some(timeout),
        success_codes: machine.arch.success_codes(),
        log_file: workspace_root().join("target").join("qemu-tests").join(format!("{}.log", machine.name())),
        elf: Some(kernel.elf.clone()),
        expect: Expect::Ktap,
        must_contain: Vec::new(),
        in_order: Vec::new(),
        // A UEFI loader that gives up returns to the firmware, whose shell waits for a key.
        stop_on: vec!["portcullis-uefi: error:".into()],
        stdin: None,
    })
}

/// Names `c` (and its log file, `target/qemu-tests/<name>.log`).
pub fn rename(c: &mut Case, name: impl Into<String>) {
    c.name = name.into();
    c.log_file.set_file_name(format!("{}.log", c.name));
}

/// Runs the cases in parallel and prints the report.
pub fn run_and_report(cases: Vec<Case>) -> Result<(bool, Totals), String> {
    run_and_report_each(cases).map(|(ok, totals, _)| (ok, totals))
}

/// A case's verdict for the summary file: (name, passed, one-line summary).
pub type Verdict = (String, bool, String);

/// As [`run_and_report`], with each case's [`Verdict`].
pub fn run_and_report_each(cases: Vec<Case>) -> Result<(bool, Totals, Vec<Verdict>), String> {
    let results = runner::run_cases(&cases, parallelism());
    let (totals, ok) = report::print(&results);
    let each = results
        .iter()
        .map(|r| {
            let c = report::count(r);
            let summary = format!(
                "{} passed, {} failed, {} skipped; {:.1} s; {}",
                c.passed,
                c.failed,
                c.skipped,
                r.elapsed.as_secs_f64(),
                r.ending_text()
            );
            (r.case.name.clone(), r.passed(), summary)
        })
        .collect();
    Ok((ok, totals, each))
}

/// Boots one machine with live output (`cargo xtask run`).
pub fn run_live(
    machine: &Machine,
    kernel: &Kernel,
    timeout: Option<Duration>,
    stdin: Option<runner::Input>,
) -> Result<(), String> {
    let mut c = case(machine, kernel, Duration::ZERO)?;
    c.timeout = timeout;
    c.stdin = stdin;
    c.expect = Expect::Exit;
    eprintln!("xtask: {} {}", c.program, c.args.join(" "));
    let r = runner::run_case(&c, true);
    if r.passed() {
        Ok(())
    } else {
        Err(format!("{}: {}", c.name, r.ending_text()))
    }
}

/// Boots once and returns (time to the first line containing each of `markers`, time to exit).
pub fn time_boot_marks(
    machine: &Machine,
    kernel: &Kernel,
    markers: &[&str],
    timeout: Duration,
) -> Result<(Vec<Duration>, Duration), String> {
    let mut c = case(machine, kernel, timeout)?;
    c.expect = Expect::Exit;
    let r = runner::run_case(&c, false);
    if !r.passed() {
        return Err(format!("{}: {}", c.name, r.ending_text()));
    }
    let times = markers
        .iter()
        .map(|m| r.time_to(m).ok_or_else(|| format!("{}: no line containing {m:?}", c.name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((times, r.elapsed))
}

/// Boots once (expecting a successful exit) and returns the console lines.
pub fn boot_lines(machine: &Machine, kernel: &Kernel, timeout: Duration) -> Result<Vec<String>, String> {
    let mut c = case(machine, kernel, timeout)?;
    c.expect = Expect::Exit;
    let r = runner::run_case(&c, false);
    if !r.passed() {
        return Err(format!("{}: {}", c.name, r.ending_text()));
    }
    Ok(r.lines.into_iter().map(|(_, l)| l).collect())
}
