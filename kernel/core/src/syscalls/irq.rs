//! Device interrupt syscalls: `device_irq_enable` routes a claimed
//! function's interrupt to a slot of the caller (`crate::irq_slots`),
//! `device_irq_wait` collects what it counted.

use super::device::{claimed_by_current, decode_bdf};
use crate::irq_slots;
use crate::scheduler::current_name;
use abi::{Errno, SysResult};

fn irq_slot_of_current(bdf: pci::Bdf) -> Result<usize, Errno> {
    irq_slots::slot_of(crate::cpu::running(), bdf).ok_or(Errno::EINVAL)
}

/// `device_irq_enable(bdf)`: the slot `bdf`'s interrupt counts on (routed
/// now, or already); `EBUSY` when every slot is taken.
pub fn sys_irq_enable(raw: u64) -> SysResult {
    let dev = claimed_by_current(decode_bdf(raw)?)?;
    let bdf = dev.function.bdf;
    if let Ok(slot) = irq_slot_of_current(bdf) {
        return Ok(slot as u64);
    }
    let routed = irq_slots::assign(crate::cpu::running(), bdf, |slot| {
        let access = crate::pci::access(bdf).ok_or(Errno::EIO)?;
        crate::platform().route_device_irq(&dev.function, access, slot as u32).map_err(|why| {
            log::warn!("task {}: cannot route {bdf}'s interrupt: {why}", current_name());
            Errno::EOPNOTSUPP
        })
    });
    let slot = routed.ok_or(Errno::EBUSY)??;
    Ok(slot as u64)
}

/// `device_irq_wait(bdf, timeout_ns)`: the interrupts counted since the
/// last call, waiting up to `timeout_ns` for one (`ETIMEDOUT`).
pub fn sys_irq_wait(raw: u64, timeout_ns: u64) -> SysResult {
    let slot = irq_slot_of_current(decode_bdf(raw)?)?;
    let mut n = irq_slots::take(slot);
    if n == 0 && timeout_ns > 0 {
        let deadline = crate::platform().uptime_ns().saturating_add(timeout_ns);
        crate::scheduler::wait_irq(slot, deadline);
        n = irq_slots::take(slot);
    }
    if n == 0 {
        return Err(Errno::ETIMEDOUT);
    }
    crate::platform().unmask_device_irq(slot as u32);
    Ok(n)
}
