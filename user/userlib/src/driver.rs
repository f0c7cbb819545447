//! What user-space device drivers share: a step-named [`Failure`] with the
//! kernel's errno when a syscall said so, helpers to make one, a bounded
//! wait, the DMA write barrier, and the generic door's first steps ([`bind_to_new_ioas`]).

use abi::Errno;

/// What went wrong, and the errno when a syscall said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The step.
    pub what: &'static str,
    /// The kernel's answer, if a syscall failed.
    pub errno: Option<Errno>,
}

impl Failure {
    /// A failure at step `what` with no errno.
    pub const fn new(what: &'static str) -> Failure {
        Failure { what, errno: None }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{} ({e})", self.what),
            None => f.write_str(self.what),
        }
    }
}

/// Turns a syscall error at step `what` into a [`Failure`] (for `map_err`).
pub fn fail(what: &'static str) -> impl FnOnce(Errno) -> Failure {
    move |e| Failure { what, errno: Some(e) }
}

/// A [`Failure`] at step `what` unless `ok`.
pub fn check_that(ok: bool, what: &'static str) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure { what, errno: None })
    }
}

/// Waits until `done()` holds, yielding the CPU between looks, for at most
/// `timeout_ns` of the kernel clock: `Err(Failure::new(what))` after that.
pub fn wait_until(timeout_ns: u64, what: &'static str, done: impl FnMut() -> bool) -> Result<(), Failure> {
    wait_on(None, timeout_ns, what, done)
}

/// [`wait_until`], sleeping between looks on the interrupt of the function
/// `irq` names (its `device_irq_enable` succeeded) until the interrupt or the
/// deadline wakes the task; `None`: yielding, as [`wait_until`].
pub fn wait_on(
    irq: Option<u64>,
    timeout_ns: u64,
    what: &'static str,
    done: impl FnMut() -> bool,
) -> Result<(), Failure> {
    wait_with(timeout_ns, what, done, |left| match irq {
        // Woken by the interrupt, or by the deadline (ETIMEDOUT): look again either way.
        Some(bdf) => {
            let _ = crate::sys::device_irq_wait(bdf, left);
        }
        None => {
            let _ = crate::sys::yield_now();
        }
    })
}

/// [`wait_until`], sleeping 1 ms between looks: a waiter that leaves the
/// CPUs to the tasks it waits for (a parent waiting for its workers).
pub fn sleep_until(timeout_ns: u64, what: &'static str, done: impl FnMut() -> bool) -> Result<(), Failure> {
    wait_with(timeout_ns, what, done, |_| {
        let _ = crate::sys::sleep(1_000_000);
    })
}

/// The one wait loop: looks at `done` until it holds or `timeout_ns` of the
/// kernel clock passed (then one last look), calling `pause(ns left)` between looks.
fn wait_with(
    timeout_ns: u64,
    what: &'static str,
    mut done: impl FnMut() -> bool,
    mut pause: impl FnMut(u64),
) -> Result<(), Failure> {
    let start = crate::sys::clock().unwrap_or(0);
    loop {
        if done() {
            return Ok(());
        }
        let spent = crate::sys::clock().unwrap_or(u64::MAX).saturating_sub(start);
        if spent > timeout_ns {
            // One last look: the clock may have run on while this task waited to run.
            return if done() { Ok(()) } else { Err(Failure::new(what)) };
        }
        pause(timeout_ns - spent);
    }
}

/// Orders this task's writes to DMA memory (a queue entry, a descriptor)
/// before a later write to a device register (the doorbell that tells the
/// device to read them): a full fence, and on aarch64 `dsb st`, since
/// Device memory is outside the inner-shareable domain a `dmb ish` orders.
#[inline]
pub fn dma_write_barrier() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory or register the compiler tracks.
    unsafe {
        core::arch::asm!("dsb st", options(nostack, preserves_flags))
    };
}

/// A claimed function bound to the IOAS door and attached to an IOAS of its own.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The device object.
    pub dev: u32,
    /// The fresh IOAS it is attached to.
    pub ioas: u32,
    /// The unit that translates it.
    pub unit: crate::iommufd::UnitInfo,
}

/// Binds the claimed function `bdf`, asks which unit translates it, and
/// attaches it to a new IOAS: the generic door's first steps for any driver.
pub fn bind_to_new_ioas(bdf: u64) -> Result<Bound, Failure> {
    use crate::iommufd;
    let dev = iommufd::device_bind(bdf).map_err(fail("bind (is an IOMMU driving it?)"))?;
    let unit = iommufd::unit_info(dev).map_err(fail("hw_info"))?;
    let ioas = iommufd::ioas_alloc().map_err(fail("ioas_alloc"))?;
    iommufd::device_attach(dev, ioas).map_err(fail("attach"))?;
    Ok(Bound { dev, ioas, unit })
}

/// PCI command register bit 1: memory space decoding.
pub const COMMAND_MEMORY: u64 = 1 << 1;
/// PCI command register bit 2: bus mastering (the function may DMA).
pub const COMMAND_BUS_MASTER: u64 = 1 << 2;

/// Sets `bits` of claimed function `bdf`'s command register (read, or, write back).
pub fn set_command_bits(bdf: u64, bits: u64) -> Result<(), Failure> {
    let command = crate::sys::device_config_read(bdf, 4, 2).map_err(fail("read the command register"))?;
    crate::sys::device_config_write(bdf, 4, 2, command | bits).map_err(fail("enable bus mastering")).map(|_| ())
}
