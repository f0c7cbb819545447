//! The kernel log: a `log` backend on the platform console, with uptime stamps.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};
use log::{LevelFilter, Log, Metadata, Record};

/// Serialises whole lines so that messages from different contexts do not mix.
static LINE_LOCK: spin::Mutex<()> = spin::Mutex::new(());
/// The CPU holding [`LINE_LOCK`] (`usize::MAX`: none).
static LINE_OWNER: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Polls of the line lock a CPU makes while another CPU writes (a serial
/// line of a few hundred bytes under TCG is far shorter than this).
const LINE_WAIT_POLLS: u32 = 20_000_000;

/// The held line lock; clears the owner before the lock is let go.
struct LineGuard(#[allow(dead_code)] spin::MutexGuard<'static, ()>);

impl Drop for LineGuard {
    fn drop(&mut self) {
        LINE_OWNER.store(usize::MAX, Ordering::Release);
    }
}

/// The line lock, or `None` when this CPU already holds it (an interrupt
/// handler that logs while the code it interrupted writes a line: it must
/// not spin on itself) or when another CPU kept it past a long bound (a
/// CPU that died writing must not silence the others). Without the lock
/// the text is written as is (a line may interleave, nothing is lost).
fn line_guard() -> Option<LineGuard> {
    let me = crate::cpu::index();
    if LINE_OWNER.load(Ordering::Acquire) == me {
        return None;
    }
    for _ in 0..LINE_WAIT_POLLS {
        if let Some(g) = LINE_LOCK.try_lock() {
            LINE_OWNER.store(me, Ordering::Release);
            return Some(LineGuard(g));
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

/// The last [`RING_BYTES`] of the kernel log's records (not the raw text
/// tasks print), for `info_read` (the shell's `log`): what a teacher wants to
/// see again after the fact, a unit's decoded capabilities or a fault.
pub const RING_BYTES: usize = 32 * 1024;

struct Ring {
    buf: [u8; RING_BYTES],
    /// Bytes ever written (the next one goes at `written % RING_BYTES`).
    written: usize,
}

static RING: spin::Mutex<Ring> = spin::Mutex::new(Ring { buf: [0; RING_BYTES], written: 0 });

/// A record's sink: the console, and the ring when its lock was free (a
/// logger that interrupted another keeps its text from the ring only; the
/// console has it). Each record is formatted once for both.
struct RecordWriter<'a>(Option<spin::MutexGuard<'a, Ring>>);

impl Write for RecordWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let _ = Console.write_str(s);
        if let Some(r) = self.0.as_mut() {
            for &b in s.as_bytes() {
                let at = r.written % RING_BYTES;
                r.buf[at] = b;
                r.written = r.written.wrapping_add(1);
            }
        }
        Ok(())
    }
}

/// Copies the kept log records into `out`, oldest first, starting at a line
/// once the ring has wrapped; the bytes copied.
pub fn recent(out: &mut [u8]) -> usize {
    let Some(r) = RING.try_lock() else { return 0 };
    let (older, newer) = if r.written <= RING_BYTES {
        (&r.buf[..r.written], &r.buf[..0])
    } else {
        let at = r.written % RING_BYTES;
        (&r.buf[at..], &r.buf[..at])
    };
    // After a wrap the first line is cut: start after its end.
    let skip =
        if r.written > RING_BYTES { older.iter().position(|&b| b == b'\n').map_or(older.len(), |i| i + 1) } else { 0 };
    let mut n = 0;
    for (o, &b) in out.iter_mut().zip(older[skip..].iter().chain(newer)) {
        *o = b;
        n += 1;
    }
    n
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
            RecordWriter(RING.try_lock()),
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
