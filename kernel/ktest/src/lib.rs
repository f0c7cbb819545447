//! In-kernel test framework: explicit test suites and KTAP v1 output.
//!
//! Each crate that carries kernel tests declares them with [`suite!`]; the boot
//! binary hands the list of suites to [`run`], which prints one KTAP v1 document
//! (`KTAP version 1`, `1..N`, `ok N suite.test`, `not ok N suite.test # reason`)
//! to any [`core::fmt::Write`] sink. Registration is explicit rather than through
//! a linker section: a linker only keeps an archive member that something
//! references, so section-based registration silently loses tests from crates
//! whose other code is not called, while a missing suite here is a compile-time
//! fact anyone can read in the boot crate.
//!
//! Test functions return [`TestResult`]; the [`check!`] and [`check_eq!`] macros
//! return a failure with file and line instead of panicking, so one failing test
//! does not stop the others. A panic still ends the run (the kernel's panic
//! handler reports it) and the harness then sees the missing results.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;

#[doc(hidden)]
pub use alloc::format as __format;
use core::fmt::{self, Write};

/// Why a test did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestError {
    /// The test checked something that was false.
    Failed(String),
    /// The test could not run here (missing hardware, ...); reported as `# SKIP`.
    Skipped(String),
}

/// What a kernel test function returns.
pub type TestResult = Result<(), TestError>;

/// One kernel test.
#[derive(Clone, Copy)]
pub struct KTest {
    /// Name within its suite.
    pub name: &'static str,
    /// The test body.
    pub func: fn() -> TestResult,
}

/// A named group of kernel tests, usually one per crate or module.
pub struct Suite {
    /// Suite name, the first part of every test's KTAP name.
    pub name: &'static str,
    /// The tests, in run order.
    pub tests: &'static [KTest],
}

/// Declares a `pub static` [`Suite`] from a list of test functions.
///
/// ```ignore
/// ktest::suite!(pub FRAMES = "frames", [no_double_handout, all_freed_come_back]);
/// ```
#[macro_export]
macro_rules! suite {
    ($vis:vis $ident:ident = $name:literal, [$($test:path),* $(,)?]) => {
        $vis static $ident: $crate::Suite = $crate::Suite {
            name: $name,
            tests: &[$($crate::KTest { name: $crate::__last_segment(stringify!($test)), func: $test }),*],
        };
    };
}

#[doc(hidden)]
pub const fn __last_segment(path: &'static str) -> &'static str {
    let bytes = path.as_bytes();
    let mut i = bytes.len();
    while i > 0 {
        if bytes[i - 1] == b':' || bytes[i - 1] == b' ' {
            break;
        }
        i -= 1;
    }
    let (_, tail) = bytes.split_at(i);
    match core::str::from_utf8(tail) {
        Ok(s) => s,
        Err(_) => path,
    }
}

/// Fails the current test with file, line and a message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr $(,)?) => {
        $crate::check!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::TestError::Failed($crate::__format!(
                "{}:{}: {}", file!(), line!(), $crate::__format!($($fmt)+)
            )));
        }
    };
}

/// Fails the current test unless both values are equal, showing both.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        $crate::check!(*l == *r, "{} == {} failed: {:?} != {:?}", stringify!($left), stringify!($right), l, r);
    }};
}

/// Counts of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were skipped.
    pub skipped: usize,
}

impl Summary {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// Full KTAP name of a test: `suite.test`.
struct FullName<'a>(&'a Suite, &'a KTest);

impl fmt::Display for FullName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0.name, self.1.name)
    }
}

/// Whether a test is selected by `filter` (a substring of `suite.test`; empty selects all).
fn selected(filter: &str, suite: &Suite, test: &KTest) -> bool {
    if filter.is_empty() || filter == "all" {
        return true;
    }
    let mut name = String::new();
    let _ = write!(name, "{}", FullName(suite, test));
    filter.split(',').any(|f| !f.is_empty() && name.contains(f))
}

/// Writes a reason on one line (KTAP directives cannot span lines).
fn write_reason(out: &mut dyn Write, reason: &str) -> fmt::Result {
    for c in reason.chars() {
        out.write_char(if c == '\n' || c == '\r' { ' ' } else { c })?;
    }
    Ok(())
}

/// Runs every selected test of `suites` and prints one KTAP v1 document.
///
/// `before_each` is called with the full test name before each test runs (the
/// kernel uses it to log the start, so a hang names its test).
pub fn run(
    suites: &[&Suite],
    filter: &str,
    out: &mut dyn Write,
    before_each: &mut dyn FnMut(&str),
) -> Result<Summary, fmt::Error> {
    let total = suites.iter().map(|s| s.tests.iter().filter(|t| selected(filter, s, t)).count()).sum::<usize>();
    writeln!(out, "KTAP version 1")?;
    writeln!(out, "1..{total}")?;
    let mut summary = Summary::default();
    let mut number = 0;
    for suite in suites {
        for test in suite.tests.iter().filter(|t| selected(filter, suite, t)) {
            number += 1;
            let mut name = String::new();
            write!(name, "{}", FullName(suite, test))?;
            before_each(&name);
            match (test.func)() {
                Ok(()) => {
                    summary.passed += 1;
                    writeln!(out, "ok {number} {name}")?;
                }
                Err(TestError::Skipped(reason)) => {
                    summary.skipped += 1;
                    write!(out, "ok {number} {name} # SKIP ")?;
                    write_reason(out, &reason)?;
                    writeln!(out)?;
                }
                Err(TestError::Failed(reason)) => {
                    summary.failed += 1;
                    write!(out, "not ok {number} {name} # ")?;
                    write_reason(out, &reason)?;
                    writeln!(out)?;
                }
            }
        }
    }
    writeln!(out, "# ktest: {} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes() -> TestResult {
        check_eq!(1 + 1, 2);
        Ok(())
    }
    fn fails() -> TestResult {
        check!(1 > 2, "one is not\nbigger");
        Ok(())
    }
    fn skips() -> TestResult {
        Err(TestError::Skipped("no device".into()))
    }
    fn fails_eq() -> TestResult {
        check_eq!(3, 4);
        Ok(())
    }

    suite!(pub A = "alpha", [passes, fails]);
    suite!(B = "beta", [self::skips, fails_eq]);

    #[test]
    fn ktap_document_for_all() {
        let mut out = String::new();
        let mut started = Vec::new();
        let s = run(&[&A, &B], "", &mut out, &mut |n| started.push(n.to_string())).unwrap();
        assert_eq!(s, Summary { passed: 1, failed: 2, skipped: 1 });
        assert!(!s.ok());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "KTAP version 1");
        assert_eq!(lines[1], "1..4");
        assert_eq!(lines[2], "ok 1 alpha.passes");
        assert!(lines[3].starts_with("not ok 2 alpha.fails # "), "{}", lines[3]);
        assert!(lines[3].ends_with("one is not bigger"), "newline flattened: {}", lines[3]);
        assert_eq!(lines[4], "ok 3 beta.skips # SKIP no device");
        assert!(lines[5].contains("3 == 4 failed: 3 != 4"), "{}", lines[5]);
        assert_eq!(started, ["alpha.passes", "alpha.fails", "beta.skips", "beta.fails_eq"]);
    }

    #[test]
    fn filter_selects_substrings() {
        let mut out = String::new();
        let s = run(&[&A, &B], "passes,beta.skips", &mut out, &mut |_| {}).unwrap();
        assert_eq!(s, Summary { passed: 1, failed: 0, skipped: 1 });
        assert!(out.contains("1..2\n"));
        let mut out = String::new();
        let s = run(&[&A, &B], "nothing-matches", &mut out, &mut |_| {}).unwrap();
        assert_eq!(s, Summary::default());
        assert!(out.contains("1..0\n"));
    }
}
