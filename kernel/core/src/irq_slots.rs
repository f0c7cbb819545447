//! Device interrupt slots: the platform routes a claimed function's
//! interrupt to one of [`IRQ_SLOTS`] slots ([`crate::platform::DeviceIrqs`]),
//! its handler counts it here ([`device_irq`]), and the owning task collects
//! the count (`device_irq_wait`).

use core::sync::atomic::{AtomicU64, Ordering};

/// Interrupt slots that can be routed to tasks.
pub const IRQ_SLOTS: usize = 8;
/// Interrupts received per slot since the owner last collected them (written in interrupt context).
static IRQ_PENDING: [AtomicU64; IRQ_SLOTS] = [const { AtomicU64::new(0) }; IRQ_SLOTS];
/// Owner (task id, function) of each slot; touched only in syscall context.
static IRQ_OWNER: spin::Mutex<[Option<(u64, pci::Bdf)>; IRQ_SLOTS]> = spin::Mutex::new([None; IRQ_SLOTS]);

/// Called by the platform's interrupt handler for a routed device interrupt.
pub fn device_irq(slot: u32) {
    if let Some(p) = IRQ_PENDING.get(slot as usize) {
        p.fetch_add(1, Ordering::Relaxed);
    }
}

/// Interrupts counted on `slot` that its owner has not collected yet (for tests).
pub fn irq_pending(slot: u32) -> u64 {
    IRQ_PENDING.get(slot as usize).map_or(0, |p| p.load(Ordering::Relaxed))
}

/// Whether `slot` has interrupts its owner has not collected.
pub fn has_pending(slot: usize) -> bool {
    IRQ_PENDING[slot].load(Ordering::Relaxed) > 0
}

/// Collects (and clears) the interrupts counted on `slot`.
pub fn take(slot: usize) -> u64 {
    IRQ_PENDING[slot].swap(0, Ordering::Relaxed)
}

/// The slot task `task` holds for `bdf`.
pub fn slot_of(task: u64, bdf: pci::Bdf) -> Option<usize> {
    IRQ_OWNER.lock().iter().position(|o| *o == Some((task, bdf)))
}

/// Routes `bdf`'s interrupt to a free slot for task `task`, through `route`
/// (the platform's); the slot, or `None` when every slot is taken. An error
/// of `route` leaves the slot free.
pub fn assign<E>(task: u64, bdf: pci::Bdf, route: impl FnOnce(usize) -> Result<(), E>) -> Option<Result<usize, E>> {
    let slot = IRQ_OWNER.lock().iter().position(Option::is_none)?;
    IRQ_PENDING[slot].store(0, Ordering::Relaxed);
    if let Err(why) = route(slot) {
        return Some(Err(why));
    }
    IRQ_OWNER.lock()[slot] = Some((task, bdf));
    Some(Ok(slot))
}

/// Frees every slot task `task` holds, calling `unroute(slot, bdf)` for each
/// first (the platform stops delivering it).
pub fn release(task: u64, mut unroute: impl FnMut(usize, pci::Bdf)) {
    let mut owners = IRQ_OWNER.lock();
    for (slot, owner) in owners.iter_mut().enumerate() {
        if let Some((t, bdf)) = *owner {
            if t == task {
                unroute(slot, bdf);
                *owner = None;
                IRQ_PENDING[slot].store(0, Ordering::Relaxed);
            }
        }
    }
}
