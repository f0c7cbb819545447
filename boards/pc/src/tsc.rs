//! The time-stamp counter as the kernel clock (frequency measured against the PIT).

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_START: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per tick in 32.32 fixed point (`uptime_ns` multiplies
/// instead of dividing: a 128-bit division on every syscall showed in
/// `cargo xtask profile`).
static NS_PER_TICK_Q32: AtomicU64 = AtomicU64::new(0);

/// Reads the TSC.
pub fn read() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Records the boot time stamp (first call wins).
pub fn mark_start() {
    let _ = TSC_START.compare_exchange(0, read(), Ordering::Relaxed, Ordering::Relaxed);
}

/// Sets the measured TSC frequency.
pub fn set_frequency(hz: u64) {
    let q32 = if hz == 0 { 0 } else { ((1_000_000_000u128 << 32) / u128::from(hz)).min(u128::from(u64::MAX)) as u64 };
    NS_PER_TICK_Q32.store(q32, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
}

/// The measured TSC frequency in Hz (0 until measured). Tasks may read the
/// TSC themselves (`rdtsc` at CPL 3: CR4.TSD stays clear, Intel SDM Vol. 2B
/// RDTSC), so this is the `clock_counter` syscall's answer.
pub fn frequency() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since [`mark_start`]; 0 until the frequency is known.
pub fn uptime_ns() -> u64 {
    let q32 = NS_PER_TICK_Q32.load(Ordering::Relaxed);
    let ticks = read().wrapping_sub(TSC_START.load(Ordering::Relaxed));
    // 0 until the frequency is known (the factor is 0 then).
    ((u128::from(ticks) * u128::from(q32)) >> 32) as u64
}

/// Spins for at least `ns` nanoseconds of the calibrated clock (returns at
/// once while the frequency is unknown: every wait stays bounded).
pub fn delay_ns(ns: u64) {
    let t0 = uptime_ns();
    if t0 == 0 && uptime_ns() == 0 {
        return;
    }
    while uptime_ns().saturating_sub(t0) < ns {
        core::hint::spin_loop();
    }
}
