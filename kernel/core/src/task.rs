//! What a board's trap and interrupt handlers call into kcore: a syscall, a
//! fatal fault, a timer tick taken in user mode, a routed device interrupt
//! (and the count a board's tests read back).
//!
//! Re-exports only: tasks live in [`crate::scheduler`], the syscalls in
//! [`crate::syscalls`], the interrupt slots in [`crate::irq_slots`].

pub use crate::irq_slots::{device_irq, irq_pending};
pub use crate::scheduler::{exit_current, preempt};
pub use crate::syscalls::{syscall, SyscallOutcome};
