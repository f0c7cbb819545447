//! AMD-Vi: the AMD I/O Virtualization Technology IOMMU (AMD IOMMU
//! specification, doc 48882 rev 3.x; section numbers below are that document's).
//!
//! [`unit::AmdVi`] drives one IOMMU through its 16 KiB MMIO block (§3.4): a
//! device table covering every 16-bit DeviceID (§2.2.2), the command buffer
//! with COMPLETION_WAIT / INVALIDATE_DEVTAB_ENTRY / INVALIDATE_IOMMU_PAGES /
//! INVALIDATE_IOMMU_ALL (§2.4), and the event log decoded into typed events
//! with overflow handling (§2.5). Every register write goes through the
//! register trace ([`iommu::trace`](mod@iommu::trace); the unit traces as `amdviN`, registers
//! decoded by [`regs::decode`], commands by [`cmd::decode`]). [`AmdViIommu`] puts it behind the generic
//! [`iommu::Iommu`] trait: paging domains are AMD v1 host page tables of four
//! levels (48-bit IOVAs) from the shared `io-pgtable` engine, identity and
//! blocked domains are DTEs without translation (Mode 0) whose IR/IW bits
//! allow or refuse every access. A kernel-managed HWPT with driver attributes
//! (`hwpt_data::AMDVI_ATTRS`) is a paging domain of 1–6 levels, as many as
//! EFR.HATS allows, with the matching DTE Mode and aperture.
//!
//! Hardware access: typed registers ([`regs`], an [`iommu::register_blocks!`]
//! block) over the [`iommu::mmio::MmioWindow`] the board made of the 16 KiB
//! MMIO block (checked to hold every register used: [`regs::check_window`]);
//! the command buffer is an [`iommu::ring::ProducerRing`], the device table
//! and the event log [`iommu::dma::DmaRegion`]s in memory the kernel provides
//! ([`iommu::DmaMemory`]); in-memory structures (DTEs, commands, events,
//! IRTEs) are typed with [`iommu::descriptor!`]. Completion is polled (no MSI
//! is programmed); every wait is bounded. Nothing here vouches for
//! memory: the one promise about the register mapping is the board's, made when it builds
//! the window.
//!
//! Facts about QEMU 10.0's model (`hw/i386/amd_iommu.c`) that shaped the
//! driver, besides the QEMU.md gotchas G1 (`pt=off`) and G2 (no events):
//! - Commands run only while IommuEn and CmdBufEn are both set
//!   (`amdvi_handle_control_write`), so the unit is enabled at bring-up; all
//!   DTEs are then zero (V=0), which QEMU and the spec treat as untranslated,
//!   full access (`amdvi_do_translate`), so nothing changes for devices.
//! - Its IOTLB is looked up by DeviceID *before* the DTE is read and is
//!   emptied per domain ID only, so every DTE change also invalidates the
//!   domain the device leaves (see [`unit::AmdVi::set_dte`]).
//! - Its DTE check treats qword-1 bit 8 (DomainID bit 8) as reserved, so
//!   domain IDs never have bit 8 set ([`driver::domain_tag`]).
//! - It translates the DMA of a function off bus 0 through the bus-0 DTE of
//!   its devfn ([`qemu`]); [`AmdViIommu::with_dte_aliases`] programs that
//!   entry together with the real one.
//!
//! Left out: interrupt remapping (DTE IV = 0: interrupts pass unchanged),
//! guest (v2) page tables and PASIDs, ATS / device IOTLBs, PPR, the exclusion
//! range (its registers are cleared: IVMD exclusion ranges are reported as
//! reserved regions and kept out of IOVA allocation instead).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmd;
pub mod describe;
pub mod driver;
pub mod dte;
pub mod error;
pub mod event;
pub mod intremap;
pub mod qemu;
pub mod regs;
pub mod unit;
pub mod user_data;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

/// Heap fail-nth for this crate's tests (`fallible::testing`).
#[cfg(test)]
#[global_allocator]
static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;

pub use driver::AmdViIommu;
pub use unit::{AmdVi, AmdViError};
