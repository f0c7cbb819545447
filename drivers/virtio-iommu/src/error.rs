//! Why a virtio-iommu operation failed: the error type the transport, the
//! queues and the device share, and what it means to the generic layer.

use crate::request::{self, status, ProbeError, Request};
use core::fmt;
use iommu::{DeviceId, DomainId};

/// Why a virtio-iommu operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// A bounded wait ran out (what was awaited).
    Timeout(&'static str),
    /// No memory for queues or buffers.
    NoMemory,
    /// The function lacks a virtio capability (which).
    MissingCapability(&'static str),
    /// A capability or mapped structure is unusable (why).
    BadCapability(&'static str),
    /// The device does not offer a feature this driver needs (which).
    MissingFeature(&'static str),
    /// The device did not accept the features (FEATURES_OK did not stick).
    FeaturesRejected,
    /// The device reports DEVICE_NEEDS_RESET or FAILED (the status byte).
    DeviceFailed(u8),
    /// The device configuration is unusable (why).
    BadConfig(&'static str),
    /// `config_generation` kept changing while the configuration was read.
    ConfigUnstable,
    /// A virtqueue cannot be set up (which, why).
    BadQueue {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        what: &'static str,
    },
    /// No free descriptors in a queue.
    QueueFull(u16),
    /// A chain the driver built is malformed (a driver bug).
    BadBuffer(&'static str),
    /// The device returned a used entry that matches no outstanding chain.
    BadUsed {
        /// Queue index.
        queue: u16,
        /// The descriptor ID (or used index) it named.
        id: u32,
    },
    /// The device answered a request with an error status.
    Status {
        /// The request.
        request: Request,
        /// Its status code ([`request::status`]).
        status: u8,
    },
    /// A PROBE reply does not parse (where, why).
    BadProbe {
        /// Byte offset of the bad property.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// An earlier request never completed; the device is not used any more.
    Broken,
    /// A queue or buffer access left its DMA memory (a driver bug: the
    /// layouts are checked when the memory is allocated).
    Dma(iommu::dma::OutsideRegion),
}

impl From<ProbeError> for VirtioError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Bad { offset, what } => VirtioError::BadProbe { offset, what },
            ProbeError::NoMemory => VirtioError::NoMemory,
        }
    }
}

impl From<iommu::dma::OutsideRegion> for VirtioError {
    fn from(e: iommu::dma::OutsideRegion) -> Self {
        VirtioError::Dma(e)
    }
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioError::Timeout(what) => write!(f, "virtio-iommu: no answer in time ({what})"),
            VirtioError::NoMemory => f.write_str("virtio-iommu: out of memory for queues or buffers"),
            VirtioError::MissingCapability(what) => write!(f, "virtio-iommu: no {what} capability"),
            VirtioError::BadCapability(what) => write!(f, "virtio-iommu: bad capability: {what}"),
            VirtioError::MissingFeature(what) => write!(f, "virtio-iommu: device lacks feature {what}"),
            VirtioError::FeaturesRejected => f.write_str("virtio-iommu: device refused the features (FEATURES_OK)"),
            VirtioError::DeviceFailed(s) => write!(f, "virtio-iommu: device failed (status {s:#x})"),
            VirtioError::BadConfig(what) => write!(f, "virtio-iommu: bad configuration: {what}"),
            VirtioError::ConfigUnstable => f.write_str("virtio-iommu: configuration kept changing while read"),
            VirtioError::BadQueue { queue, what } => write!(f, "virtio-iommu: queue {queue}: {what}"),
            VirtioError::QueueFull(q) => write!(f, "virtio-iommu: queue {q} is full"),
            VirtioError::BadBuffer(what) => write!(f, "virtio-iommu: bad descriptor chain: {what}"),
            VirtioError::BadUsed { queue, id } => write!(f, "virtio-iommu: queue {queue}: bogus used entry {id}"),
            VirtioError::Status { request, status } => write!(
                f,
                "virtio-iommu: {request}: {} ({})",
                request::status_name(*status),
                request::status_message(*status).trim_start_matches("virtio-iommu: ")
            ),
            VirtioError::BadProbe { offset, what } => write!(f, "virtio-iommu: PROBE reply at byte {offset}: {what}"),
            VirtioError::Broken => f.write_str("virtio-iommu: device unusable after a lost request"),
            VirtioError::Dma(e) => write!(f, "virtio-iommu: {e}"),
        }
    }
}

impl From<VirtioError> for iommu::Error {
    fn from(e: VirtioError) -> Self {
        use io_pgtable::Error as Pt;
        use iommu::Error as E;
        match e {
            VirtioError::NoMemory => E::NoMemory,
            VirtioError::Status { request, status } => match (status, request) {
                (status::NOENT, Request::Map { domain, .. } | Request::Unmap { domain, .. }) => {
                    E::NoSuchDomain(DomainId(domain))
                }
                (
                    status::NOENT,
                    Request::Attach { endpoint, .. } | Request::Detach { endpoint, .. } | Request::Probe { endpoint },
                ) => E::NoSuchDevice(DeviceId(endpoint)),
                (status::RANGE, Request::Unmap { virt_start, .. }) => E::Map(Pt::SplitLeaf(virt_start)),
                (status::RANGE, Request::Map { virt_start, virt_end, .. }) => {
                    E::OutOfAperture { iova: virt_start, len: virt_end.wrapping_sub(virt_start).wrapping_add(1) }
                }
                (status::INVAL, Request::Map { virt_start, .. }) => E::Map(Pt::AlreadyMapped(virt_start)),
                (status::NOMEM, _) => E::NoMemory,
                (status::UNSUPP, _) => E::NotSupported(request::status_message(status)),
                _ => E::Hardware(request::status_message(status)),
            },
            VirtioError::MissingFeature(what) => E::NotSupported(what),
            VirtioError::Timeout(_) => E::Hardware("virtio-iommu: the device did not answer in time"),
            VirtioError::Broken => E::Hardware("virtio-iommu: device unusable after a lost request"),
            VirtioError::QueueFull(_) => E::Hardware("virtio-iommu: request queue full"),
            VirtioError::BadUsed { .. } => E::Hardware("virtio-iommu: bogus used-ring entry"),
            VirtioError::BadProbe { .. } => E::Hardware("virtio-iommu: malformed PROBE reply"),
            VirtioError::MissingCapability(_) | VirtioError::BadCapability(_) => {
                E::Hardware("virtio-iommu: unusable PCI capabilities")
            }
            VirtioError::FeaturesRejected | VirtioError::DeviceFailed(_) => E::Hardware("virtio-iommu: device failed"),
            VirtioError::BadConfig(_) | VirtioError::ConfigUnstable => E::Hardware("virtio-iommu: bad configuration"),
            VirtioError::BadQueue { .. } | VirtioError::BadBuffer(_) => E::Hardware("virtio-iommu: queue setup failed"),
            VirtioError::Dma(_) => E::Hardware("virtio-iommu: queue or buffer access outside its memory"),
        }
    }
}
