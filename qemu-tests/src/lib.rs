//! Host harness for portcullis under QEMU.
//!
//! - [`ktap`] parses the kernel's serial output (KTAP v1, tolerant of log lines,
//!   CRLF, nesting and several documents) into results and problems.
//! - [`runner`] starts QEMU cases with a per-boot timeout (several at once),
//!   captures the console with timestamps, keeps a log file per case and
//!   decides a verdict.
//! - [`symbolize`] appends `<function+0xoff>` to kernel addresses using the ELF, and
//!   `function at file:line` for each source frame (inlined ones too) of a backtrace.
//! - [`gdbstub`] is a minimal client of QEMU's gdbstub (stop, read a register,
//!   continue) and [`profile`] turns sampled program counters into tables
//!   (`cargo xtask profile`).
//! - [`report`] prints every failure with its serial tail and the closing
//!   `N passed, N failed, N skipped` counts.
//!
//! Verdict rules: a case passes only if QEMU exited with one of the case's
//! success statuses, the output holds a KTAP plan, every planned test reported,
//! none reported `not ok`, and no `PANIC`/`EXCEPTION` line appeared. A timeout,
//! a signal, a crash or a missing plan fails the case; missing tests count as
//! failed tests.

pub mod gdbstub;
pub mod ktap;
pub mod profile;
pub mod report;
pub mod runner;
pub mod symbolize;
