//! Prints case verdicts, failure details with the serial tail, and totals.

use crate::ktap::Outcome;
use crate::runner::{CaseResult, Expect};
use crate::symbolize::Symbolizer;

/// Lines of serial output shown for a failing case.
pub const TAIL_LINES: usize = 40;

/// Test counts over all cases.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed (including missing ones, and 1 per case without KTAP).
    pub failed: usize,
    /// Tests that were skipped.
    pub skipped: usize,
}

/// Counts one case's tests.
pub fn count(r: &CaseResult) -> Totals {
    let rep = &r.report;
    if r.case.expect == Expect::Crash {
        // A crash case is one test: did the report path work?
        return Totals { passed: usize::from(r.passed()), failed: usize::from(!r.passed()), skipped: 0 };
    }
    let mut t = Totals { passed: rep.passed(), failed: rep.failed() + rep.missing(), skipped: rep.skipped() };
    if r.case.expect == Expect::Ktap && rep.planned.is_none() {
        t.failed += 1;
    }
    if !r.passed() && t.failed == 0 {
        // Clean KTAP but a crash, a bad exit status or a numbering problem.
        t.failed = 1;
    }
    t
}

/// Prints the report and returns the totals and whether every case passed.
pub fn print(results: &[CaseResult]) -> (Totals, bool) {
    let mut totals = Totals::default();
    let mut all_ok = true;
    println!();
    for r in results {
        let c = count(r);
        totals.passed += c.passed;
        totals.failed += c.failed;
        totals.skipped += c.skipped;
        let verdict = if r.passed() { "PASS" } else { "FAIL" };
        println!(
            "{verdict} {} ({} passed, {} failed, {} skipped; {:.1} s; {})",
            r.case.name,
            c.passed,
            c.failed,
            c.skipped,
            r.elapsed.as_secs_f64(),
            r.ending_text()
        );
        if r.passed() {
            continue;
        }
        all_ok = false;
        for t in &r.report.results {
            if let Outcome::Fail(reason) = &t.outcome {
                println!("  not ok {}: {reason}", t.name);
            }
        }
        for text in r.missing_texts() {
            println!("  missing output: {text:?}");
        }
        if let Some(p) = r.order_problem() {
            println!("  order: {p}");
        }
        for p in &r.report.problems {
            println!("  problem: {p}");
        }
        if let Some(crash) = &r.report.crash {
            println!("  crash: {crash}");
        }
        let symbolizer = r.case.elf.as_deref().and_then(|p| Symbolizer::from_elf(p).ok());
        println!("  --- last {TAIL_LINES} lines of {} ---", r.case.log_file.display());
        let skip = r.lines.len().saturating_sub(TAIL_LINES);
        for (_, line) in &r.lines[skip..] {
            let shown = symbolizer.as_ref().map_or_else(|| line.clone(), |s| s.symbolize_line(line));
            // A backtrace line brings its source frames on lines of their own.
            println!("  | {}", shown.replace('\n', "\n  | "));
        }
    }
    (totals, all_ok)
}
