//! What `bench-smp` and its `bench-smp-worker` tasks tell each other through
//! the test boot's mailbox (`sys::test_mailbox_get` / `_set`).
//!
//! Slot 0 hands a worker its index (answered with [`TAKEN`]), slot 1 the
//! pairs to run, slot 2 the start word [`GO`], slot 3 + index receives the
//! user-counter time the worker's last pair ended (or [`FAILED`]; [`NOT_YET`]
//! before), slot 7 the series: 0 (map + unmap with the worker's own `edu`),
//! [`NO_DEVICE`], [`NULL_CALLS`] or [`COMPUTE`].
#![allow(dead_code)]

/// A worker took its index from slot 0.
pub const TAKEN: u64 = 0xDEAD_0000_0000;
/// Slot 2: every worker starts its pairs.
pub const GO: u64 = 0x60_0060;
/// Slot 3 + index: the worker's setup or one of its calls failed.
pub const FAILED: u64 = 0xFA11_0000_0000;
/// Slot 3 + index: the worker has not finished.
pub const NOT_YET: u64 = 0;
/// Slot 7: map + unmap on an IOAS with no device (it reaches no IOMMU).
pub const NO_DEVICE: u64 = 0x0DE0_0001;
/// Slot 7: pairs of the cheapest syscall (the entry and exit path alone).
pub const NULL_CALLS: u64 = 0x0DE0_0002;
/// Slot 7: pairs of a fixed loop without syscalls (the machine's ceiling).
pub const COMPUTE: u64 = 0x0DE0_0003;
