//! The device's PCI structures as typed registers (virtio 1.2 §4.1.4.3
//! common configuration, §4.1.4.4 notification, §4.1.4.5 ISR status,
//! §5.13.4 virtio-iommu device configuration).
//!
//! Every field has its natural width: §4.1.3.1 asks for 8-bit accesses to
//! 8-bit fields, 16-bit to 16-bit ones and 32-bit accesses for 32- and 64-bit
//! fields, so the 64-bit queue addresses and configuration values are split
//! into `_lo` / `_hi` halves (QEMU's `virtio_pci_common_write` keeps them as
//! two 32-bit registers anyway, `VIRTIO_PCI_COMMON_Q_DESCLO`/`HI` etc.).
//! All of it is little-endian, like the targets this kernel runs on.

use tock_registers::register_bitfields;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_bitfields! [u8,
    /// Device status (§2.1).
    pub STATUS [
        /// The guest noticed the device.
        ACKNOWLEDGE OFFSET(0) NUMBITS(1) [],
        /// The guest knows how to drive it.
        DRIVER OFFSET(1) NUMBITS(1) [],
        /// The driver is set up and ready.
        DRIVER_OK OFFSET(2) NUMBITS(1) [],
        /// Feature negotiation is complete.
        FEATURES_OK OFFSET(3) NUMBITS(1) [],
        /// The device hit an error it cannot recover from without a reset.
        DEVICE_NEEDS_RESET OFFSET(6) NUMBITS(1) [],
        /// The driver gave up on the device.
        FAILED OFFSET(7) NUMBITS(1) []
    ],
    /// ISR status (§4.1.4.5); reading it clears it.
    pub ISR [
        /// A virtqueue has used buffers.
        QUEUE OFFSET(0) NUMBITS(1) [],
        /// The device configuration changed.
        CONFIG OFFSET(1) NUMBITS(1) []
    ]
];

iommu::register_blocks! {
    /// `struct virtio_pci_common_cfg` up to `queue_device` (§4.1.4.3); the
    /// queue fields apply to the queue named by `queue_select`.
    pub CommonCfg {
        /// Which 32 feature bits `device_feature` shows (0: bits 0–31, 1: bits 32–63).
        (0x00 => pub device_feature_select: ReadWrite<u32>),
        /// The offered feature bits selected by `device_feature_select`.
        (0x04 => pub device_feature: ReadOnly<u32>),
        /// Which 32 feature bits `driver_feature` takes.
        (0x08 => pub driver_feature_select: ReadWrite<u32>),
        /// The accepted feature bits selected by `driver_feature_select`.
        (0x0C => pub driver_feature: ReadWrite<u32>),
        /// MSI-X vector for configuration changes (unused: no MSI-X).
        (0x10 => pub config_msix_vector: ReadWrite<u16>),
        /// Number of virtqueues.
        (0x12 => pub num_queues: ReadOnly<u16>),
        /// Device status (§2.1); writing 0 resets the device.
        (0x14 => pub device_status: ReadWrite<u8, STATUS::Register>),
        /// Changes when the device configuration may have changed.
        (0x15 => pub config_generation: ReadOnly<u8>),
        /// The queue the following fields apply to.
        (0x16 => pub queue_select: ReadWrite<u16>),
        /// Entries of the selected queue (its maximum until the driver writes it).
        (0x18 => pub queue_size: ReadWrite<u16>),
        /// MSI-X vector of the selected queue (unused).
        (0x1A => pub queue_msix_vector: ReadWrite<u16>),
        /// Write 1 to start using the selected queue.
        (0x1C => pub queue_enable: ReadWrite<u16>),
        /// Notification offset of the selected queue, in multiplier units.
        (0x1E => pub queue_notify_off: ReadOnly<u16>),
        /// Descriptor table address, bits 31:0.
        (0x20 => pub queue_desc_lo: ReadWrite<u32>),
        /// Descriptor table address, bits 63:32.
        (0x24 => pub queue_desc_hi: ReadWrite<u32>),
        /// Driver area (available ring) address, bits 31:0.
        (0x28 => pub queue_driver_lo: ReadWrite<u32>),
        /// Driver area address, bits 63:32.
        (0x2C => pub queue_driver_hi: ReadWrite<u32>),
        /// Device area (used ring) address, bits 31:0.
        (0x30 => pub queue_device_lo: ReadWrite<u32>),
        /// Device area address, bits 63:32.
        (0x34 => pub queue_device_hi: ReadWrite<u32>),
        (0x38 => @END),
    },
    /// One queue's notification address (§4.1.4.4): `notify base +
    /// queue_notify_off * notify_off_multiplier`. Writing the queue index
    /// tells the device the queue has new available buffers.
    pub Notify {
        /// The index of the queue that has new buffers.
        (0x0 => pub queue_index: WriteOnly<u16>),
        (0x2 => @END),
    },
    /// `struct virtio_iommu_config` (§5.13.4) up to `probe_size`, 64-bit
    /// fields as two 32-bit halves: what every virtio-iommu has.
    pub IommuConfig {
        /// Supported page sizes, bits 31:0.
        (0x00 => pub page_size_mask_lo: ReadOnly<u32>),
        /// Supported page sizes, bits 63:32.
        (0x04 => pub page_size_mask_hi: ReadOnly<u32>),
        /// First IOVA, bits 31:0.
        (0x08 => pub input_start_lo: ReadOnly<u32>),
        /// First IOVA, bits 63:32.
        (0x0C => pub input_start_hi: ReadOnly<u32>),
        /// Last IOVA, bits 31:0.
        (0x10 => pub input_end_lo: ReadOnly<u32>),
        /// Last IOVA, bits 63:32.
        (0x14 => pub input_end_hi: ReadOnly<u32>),
        /// First domain ID.
        (0x18 => pub domain_start: ReadOnly<u32>),
        /// Last domain ID.
        (0x1C => pub domain_end: ReadOnly<u32>),
        /// Bytes of properties in a PROBE reply.
        (0x20 => pub probe_size: ReadOnly<u32>),
        (0x24 => @END),
    }
}

/// Bytes of the common configuration this driver touches: a common cfg
/// capability shorter than this is refused.
pub const COMMON_CFG_LEN: u32 = 0x38;

/// The one-byte registers (in a module: tock's layout check divides by the
/// struct's alignment, which is 1 here, and clippy objects to `% 1`).
#[allow(clippy::modulo_one)]
mod bytes {
    use super::ISR;
    use tock_registers::registers::{ReadOnly, ReadWrite};

    iommu::register_blocks! {
        /// The ISR status byte (§4.1.4.5).
        pub Isr {
            /// Bit 0: a queue was used; bit 1: the configuration changed.
            (0x0 => pub status: ReadOnly<u8, ISR::Register>),
            (0x1 => @END),
        },
        /// `bypass` of `struct virtio_iommu_config` (§5.13.4), at
        /// [`super::BYPASS_OFFSET`]: there with VIRTIO_IOMMU_F_BYPASS_CONFIG.
        pub Bypass {
            /// 1: unattached endpoints bypass translation.
            (0x0 => pub bypass: ReadWrite<u8>),
            (0x1 => @END),
        }
    }
}

pub use bytes::{Bypass, Isr};

/// Offset of `bypass` in the device configuration (§5.13.4).
pub const BYPASS_OFFSET: u64 = 0x24;

/// Bytes of the device configuration every virtio-iommu has (up to and
/// including `probe_size`; `bypass` exists with VIRTIO_IOMMU_F_BYPASS_CONFIG).
pub const IOMMU_CFG_LEN: u32 = 0x24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_spec_sizes() {
        assert_eq!(core::mem::size_of::<CommonCfg>(), COMMON_CFG_LEN as usize);
        assert_eq!(core::mem::size_of::<IommuConfig>(), IOMMU_CFG_LEN as usize);
        assert_eq!(BYPASS_OFFSET, u64::from(IOMMU_CFG_LEN));
        assert_eq!(core::mem::size_of::<Bypass>(), 1);
        assert_eq!(core::mem::size_of::<Notify>(), 2);
        assert_eq!(core::mem::size_of::<Isr>(), 1);
        assert_eq!(STATUS::FEATURES_OK.mask << STATUS::FEATURES_OK.shift, 8);
        assert_eq!(STATUS::FAILED.mask << STATUS::FAILED.shift, 0x80);
    }
}
