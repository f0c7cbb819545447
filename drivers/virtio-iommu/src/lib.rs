//! virtio-iommu (virtio 1.2 §5.13) over the virtio PCI modern transport (§4.1).
//!
//! - [`transport`]: the virtio PCI capabilities (§4.1.4) and the typed
//!   registers behind them ([`regs`]), plus the [`transport::Transport`] seam
//!   host tests put a simulated device behind.
//! - [`queue`]: a split virtqueue (§2.7) in memory from [`iommu::DmaMemory`],
//!   reached through [`iommu::dma::DmaRegion`], its descriptors typed
//!   ([`queue::Desc`]).
//! - [`request`]: ATTACH / DETACH / MAP / UNMAP / PROBE encodings, PROBE
//!   properties and fault records (§5.13.6, §5.13.7), as pure functions.
//! - [`device`]: [`VirtioIommuDevice`], device initialisation (§3.1),
//!   synchronous requests and the event queue.
//! - [`driver`]: [`VirtioIommu`], the device behind [`iommu::Iommu`]; its
//!   module documentation explains how QEMU's domain lifetime is handled.
//! - [`error`]: [`VirtioError`], shared by the layers above.
//!
//! Register access goes through [`iommu::mmio::MmioWindow`]s the board cuts
//! from the device's BARs: nothing here vouches for memory. Every write to
//! them goes through the register trace ([`iommu::trace`](mod@iommu::trace); the device traces
//! as `virtioN`, fields decoded by [`transport::decode`], requests by
//! [`request::decode`], each with its status when the device used it).
//!
//! Every wait on the device is bounded ([`iommu::poll`]) and ends in an error.
//!
//! # Why not the `virtio-drivers` crate
//!
//! rcore-os/virtio-drivers (0.13) was considered for the queue handling and
//! left out. Its `VirtQueue` reaches queue memory through raw pointers from
//! `Hal::dma_alloc`, while this kernel gives drivers DMA memory only as
//! physical frames behind `iommu::DmaMemory` (which host tests simulate and
//! share with a simulated device); its `add_notify_wait_pop` spins on the used
//! ring with no bound; its `PciTransport` finds capabilities and maps BARs
//! through its own `PciRoot` / `ConfigurationAccess` and `Hal::mmio_phys_to_virt`
//! instead of our `pci` crate and the kernel's BAR mapping; and it has no
//! virtio-iommu device. Adapting it would have meant a pointer-based `Hal`
//! over the kernel's direct map (host tests could no longer see the rings as
//! frames) and a fork of the wait loop, for about 200 lines of ring code.
//!
//! # Memory ordering
//!
//! The rings are ordinary coherent memory shared with the device; the driver
//! publishes descriptors, then the available index, then notifies, with a
//! `SeqCst` fence between the steps, and reads used entries only after the
//! used index (§2.7.13). QEMU (the only device this has met) processes a
//! notification synchronously in the vCPU that wrote it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
pub mod driver;
pub mod error;
pub mod queue;
pub mod regs;
pub mod request;
pub mod transport;

#[cfg(test)]
mod testing;

/// Heap fail-nth for this crate's tests (`fallible::testing`).
#[cfg(test)]
#[global_allocator]
static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;

pub use device::{Config, VirtioError, VirtioIommuDevice};
pub use driver::VirtioIommu;
pub use transport::{find_caps, CapRegion, Mapped, PciCaps};
