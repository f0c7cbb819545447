//! The Arm generic timer: the virtual counter as the kernel clock and the
//! EL1 virtual timer (CNTV) as the periodic tick (ARM ARM D12 "The Generic Timer").

use aarch64_cpu::registers::{Readable, Writeable, CNTFRQ_EL0, CNTKCTL_EL1, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_TVAL_EL0};
use core::sync::atomic::{AtomicU64, Ordering};

/// Frequency of the periodic timer.
pub const TIMER_HZ: u32 = 100;
/// Timer interrupts handled.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

static START: AtomicU64 = AtomicU64::new(0);
static RELOAD: AtomicU64 = AtomicU64::new(0);

/// Records the boot counter value, and lets EL0 read the virtual counter
/// (CNTKCTL_EL1.EL0VCTEN, ARM ARM D12.6: `CNTVCT_EL0` and `CNTFRQ_EL0` at
/// EL0) so tasks can time themselves without a syscall; the physical
/// counter and every timer stay EL1's.
pub fn mark_start() {
    START.store(CNTVCT_EL0.get(), Ordering::Relaxed);
    CNTKCTL_EL1.write(CNTKCTL_EL1::EL0VCTEN::SET);
}

/// The frequency of the counter tasks may read (`None`: firmware left
/// CNTFRQ_EL0 at 0).
pub fn user_counter_hz() -> Option<u64> {
    Some(CNTFRQ_EL0.get()).filter(|&hz| hz != 0)
}

/// Nanoseconds since [`mark_start`].
pub fn uptime_ns() -> u64 {
    let freq = CNTFRQ_EL0.get().max(1);
    let ticks = CNTVCT_EL0.get().wrapping_sub(START.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000_000 / u128::from(freq)) as u64
}

/// Starts the periodic tick on INTID `virt_intid` at `hz`.
pub fn start(virt_intid: u32, hz: u32) -> Result<(), &'static str> {
    let freq = CNTFRQ_EL0.get();
    if freq == 0 {
        return Err("CNTFRQ_EL0 is 0: firmware did not set the counter frequency");
    }
    let reload = freq / u64::from(hz.max(1));
    RELOAD.store(reload, Ordering::Relaxed);
    VIRT_INTID.store(u64::from(virt_intid), Ordering::Relaxed);
    start_cpu()?;
    log::info!("timer: virtual timer INTID {virt_intid}, counter {freq} Hz, tick {hz} Hz");
    Ok(())
}

/// Handles one tick: counts it and rearms the timer.
/// The virtual timer's INTID (a PPI: every CPU has its own timer behind it).
static VIRT_INTID: AtomicU64 = AtomicU64::new(0);

/// Starts the tick on the CPU running this (after [`start`] on the boot
/// CPU): EL0 access to the virtual counter, the timer's PPI on this CPU's
/// redistributor, the first period.
pub fn start_cpu() -> Result<(), &'static str> {
    CNTKCTL_EL1.write(CNTKCTL_EL1::EL0VCTEN::SET);
    crate::gic::enable_ppi(VIRT_INTID.load(Ordering::Relaxed) as u32, on_tick)?;
    CNTV_TVAL_EL0.set(RELOAD.load(Ordering::Relaxed));
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
    Ok(())
}

pub fn on_tick() {
    // The tick count is the kernel's clock of quanta: the boot CPU's timer
    // alone moves it; the others only re-arm theirs (their tick still ends
    // a user task's quantum there).
    if kcore::cpu::index() == 0 {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }
    CNTV_TVAL_EL0.set(RELOAD.load(Ordering::Relaxed));
}
