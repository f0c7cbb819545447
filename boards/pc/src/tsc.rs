//! The time-stamp counter as the kernel clock (frequency measured against the PIT).

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_START: AtomicU64 = AtomicU64::new(0);

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
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    let ticks = read().wrapping_sub(TSC_START.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000_000 / u128::from(hz)) as u64
}
