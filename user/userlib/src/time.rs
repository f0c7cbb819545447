//! A nanosecond clock read without a syscall, as Linux's vDSO clock is: the
//! task reads the free-running counter itself (x86_64 `rdtsc`, aarch64
//! `CNTVCT_EL0`), at the frequency the kernel measured
//! ([`crate::sys::clock_counter`]). Benchmarks time a syscall with it so the
//! figure holds that syscall only, not a second one that reads the clock.

use core::sync::atomic::{AtomicU64, Ordering};

/// The counter's frequency, once asked (0: not yet; `u64::MAX`: none).
static HZ: AtomicU64 = AtomicU64::new(0);

/// Reads the raw counter.
#[cfg(target_arch = "x86_64")]
fn counter() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter; the kernel leaves CR4.TSD clear, so it is allowed at CPL 3.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Reads the raw counter.
#[cfg(target_arch = "aarch64")]
fn counter() -> u64 {
    let v: u64;
    // SAFETY: reads CNTVCT_EL0, which the kernel lets EL0 read (CNTKCTL_EL1.EL0VCTEN); the ISB orders it after earlier instructions.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The counter's frequency in Hz, `None` when the kernel offers no
/// user-readable counter.
pub fn counter_hz() -> Option<u64> {
    match HZ.load(Ordering::Relaxed) {
        0 => {
            let hz = crate::sys::clock_counter().ok().filter(|&hz| hz != 0).unwrap_or(u64::MAX);
            HZ.store(hz, Ordering::Relaxed);
            (hz != u64::MAX).then_some(hz)
        }
        u64::MAX => None,
        hz => Some(hz),
    }
}

/// Nanoseconds on the user-readable counter (an arbitrary origin: use
/// differences), or the `clock` syscall's figure where there is no such
/// counter.
pub fn now_ns() -> u64 {
    match counter_hz() {
        Some(hz) => (u128::from(counter()) * 1_000_000_000 / u128::from(hz)) as u64,
        None => crate::sys::clock().unwrap_or(0),
    }
}
