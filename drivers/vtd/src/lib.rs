//! Intel VT-d (Intel Virtualization Technology for Directed I/O, spec rev 4.1).
//!
//! This first part drives a remapping unit in legacy mode: the root and context
//! tables (§9.1–9.3), second-level domains built by the shared `io-pgtable`
//! engine, register-based context-cache and IOTLB invalidation (§10.4.7, §10.4.8),
//! translation enable (§10.4.4) and the fault-recording registers (§7.2, §10.4.14).
//! Still to come: queued invalidation, scalable mode, first-level tables,
//! caching-mode handling beyond flushing on map, fault MSI, RMRR identity maps.
//!
//! Hardware access: [`regs::Registers`] over an MMIO window the kernel mapped;
//! tables live in frames the kernel provides through [`io_pgtable::TableMemory`].
#![no_std]

extern crate alloc;

pub mod context;
pub mod fault;
pub mod regs;
pub mod unit;

pub use fault::{FaultReason, FaultRecord};
pub use unit::{Domain, Unit, VtdError};
