//! The kernel log: a `log` backend on the platform console, with uptime stamps.

use core::fmt::{self, Write};
use log::{LevelFilter, Log, Metadata, Record};

/// Serialises whole lines so that messages from different contexts do not mix.
static LINE_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// The line lock, or `None` after a bounded wait: an interrupt handler that
/// logs while the code it interrupted holds the lock (syscalls run with
/// interrupts on) must not spin forever on this CPU; it writes unlocked (a
/// line may interleave, nothing is lost).
fn line_guard() -> Option<spin::MutexGuard<'static, ()>> {
    for _ in 0..10_000 {
        if let Some(g) = LINE_LOCK.try_lock() {
            return Some(g);
        }
        core::hint::spin_loop();
    }
    None
}

/// A `fmt::Write` sink on the platform console.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(p) = crate::try_platform() {
            p.console_write(s);
        }
        Ok(())
    }
}

struct KernelLogger;

impl Log for KernelLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let ns = crate::try_platform().map_or(0, |p| p.uptime_ns());
        let _guard = line_guard();
        let _ = writeln!(
            Console,
            "[{:5}.{:06}] {:<5} {}: {}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: KernelLogger = KernelLogger;

/// Installs the kernel logger at the level named by `log=` on the command line (default info).
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some("trace") => LevelFilter::Trace,
        Some("debug") => LevelFilter::Debug,
        Some("warn") => LevelFilter::Warn,
        Some("error") => LevelFilter::Error,
        _ => LevelFilter::Info,
    };
    // A second call keeps the first logger; that is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}

/// Prints raw text (KTAP lines) under the line lock.
pub fn print(args: fmt::Arguments) {
    let _guard = line_guard();
    let _ = Console.write_fmt(args);
}

/// Writes to the console without taking the line lock (panic and exception paths).
pub fn print_unlocked(args: fmt::Arguments) {
    let _ = Console.write_fmt(args);
}
