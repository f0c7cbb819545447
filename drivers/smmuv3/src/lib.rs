//! Arm SMMUv3 (Arm IHI 0070, SMMU architecture v3.x).
//!
//! [`unit::Smmu`] drives one SMMU: ID registers decoded, a linear or 2-level
//! stream table (§3.3), the command queue with CFGI / TLBI / SYNC commands and
//! command-error recovery (§4), the event queue decoded into typed events with
//! overflow handling (§7), STEs for abort, bypass, stage 1 (one context
//! descriptor, §5.4) and stage 2 (§5.2). [`SmmuIommu`] puts it behind the
//! generic [`iommu::Iommu`] trait with paging domains on stage 1 or stage 2
//! tables from the shared `io-pgtable` engine (ASIDs and VMIDs allocated),
//! bypass for identity and abort for blocked domains. The hardware-specific
//! door ([`user_data`]): paging domains with driver attributes (stage, input size),
//! stage-2 nest parents, nested children whose stage-1 STE words (and so
//! their CDs and tables, at IPAs of the parent) a task supplies, with
//! Config = 0b111 in hardware (§3.3.4, §5.2), and the task's TLBI_NH_* /
//! CFGI_CD* commands, checked and tagged with the parent's VMID (§4.3, §4.4).
//!
//! Hardware access: typed registers over the MMIO window the firmware described
//! (128 KiB architected, checked to hold page 1's queue indices:
//! [`regs::check_window`]) and the kernel mapped ([`iommu::mmio::MmioWindow`]);
//! tables and queues in memory the kernel provides ([`iommu::DmaMemory`]),
//! reached through [`iommu::dma::DmaRegion`], the command queue an
//! [`iommu::ring::ProducerRing`]; STEs, CDs, commands and event records typed
//! with [`iommu::descriptor!`]. Every register write goes through the
//! register trace ([`iommu::trace`](mod@iommu::trace); the unit traces as `smmuN`, registers
//! decoded by [`regs::decode`], commands by [`cmd::decode`]). Nothing here vouches for memory; every failure
//! is an [`error::SmmuError`].
//! Left out: MSIs (QEMU's SMMU has none; completion is polled), substreams /
//! PASIDs and CD tables, ATS / PRI, stall mode, non-coherent SMMUs.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cd;
pub mod cmd;
pub mod describe;
pub mod driver;
pub mod error;
pub mod event;
pub mod regs;
pub mod ste;
pub mod unit;
pub mod user_data;

pub use driver::SmmuIommu;
pub use unit::{Smmu, SmmuError};
