//! Intel VT-d (Intel Virtualization Technology for Directed I/O, spec rev 4.1).
//!
//! This first part drives a remapping unit in legacy mode: the root and context
//! tables (§9.1–9.3), second-level domains built by the shared `io-pgtable`
//! engine, queued invalidation (§6.5.2) with page-selective IOTLB flushes sized
//! to each gather, or register-based invalidation (§10.4.7, §10.4.8) when the
//! unit has no queue, flushing on map in caching mode, translation enable
//! (§10.4.4) and the fault-recording registers (§7.2, §10.4.14).
//! Scalable mode (§9.2–9.6) with second-stage tables, or first-stage tables in
//! x86 paging format when the unit offers only those (QEMU `x-flts=on`).
//! Fault-event MSI (§10.4.10–10.4.13), domain IDs bounded by CAP.ND,
//! invalidation-queue errors (IQE/ITE/ICE) reported and recovered from.
//! [`VtdIommu`] puts a unit behind the generic [`iommu::Iommu`] trait with
//! paging, pass-through (or emulated identity) and blocked domains, and RMRR
//! regions identity-mapped into the paging domains of the devices that name
//! them. The hardware-specific door takes kernel-managed HWPTs with driver
//! attributes (stage, address width, snoop control; [`user_data`]). Still to
//! come: nested translation.
//!
//! Hardware access: [`regs::Registers`] over the [`iommu::mmio::MmioWindow`]
//! the DRHD describes (§8.3), every write through one traced path
//! ([`iommu::trace`](mod@iommu::trace): the unit traces as `vtdN`; registers named and decoded
//! by [`regs::decode`], invalidation descriptors by [`invalidation::decode`]), with the IOTLB and fault-recording registers that
//! ECAP.IRO, CAP.FRO and CAP.NFR locate checked to lie inside it before use
//! ([`layout::check_window`]); the invalidation queue is an
//! [`iommu::ring::ProducerRing`]; in-memory structures (root, context and
//! PASID entries, descriptors, fault records) are typed
//! ([`iommu::descriptor!`]); tables live in frames the kernel provides
//! through [`io_pgtable::TableMemory`]. Nothing here vouches for memory: the
//! one promise about the register mapping is the board's, made when it builds
//! the window.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod context;
pub mod describe;
pub mod driver;
pub mod error;
pub mod fault;
pub mod intremap;
pub mod invalidation;
pub mod layout;
pub mod regs;
pub mod unit;
pub mod user_data;

pub use fault::{FaultReason, FaultRecord};

pub use config::{DomainConfig, Stage};
pub use driver::VtdIommu;
pub use unit::{Domain, DomainTable, Unit, VtdError};
