//! Invalidation: the queued-invalidation interface (VT-d §6.5.2) with
//! context-cache, IOTLB and wait descriptors, and the choice of granularity.

/// Descriptor type: context-cache invalidate (§6.5.2.1).
pub const CONTEXT_CACHE: u64 = 1;
/// Descriptor type: IOTLB invalidate (§6.5.2.3).
pub const IOTLB: u64 = 2;
/// Descriptor type: invalidation wait (§6.5.2.8).
pub const WAIT: u64 = 5;
/// Descriptor type: PASID-cache invalidate (§6.5.2.2), scalable mode.
pub const PASID_CACHE: u64 = 7;

/// A 128-bit descriptor (low, high).
pub type Descriptor = (u64, u64);

/// Global context-cache invalidation.
pub fn context_global() -> Descriptor {
    (CONTEXT_CACHE | 1 << 4, 0)
}

/// PASID-cache invalidation of every PASID of domain `did` (granularity 01b).
pub fn pasid_cache_domain(did: u16) -> Descriptor {
    (PASID_CACHE | 1 << 4 | u64::from(did) << 16, 0)
}

/// Domain-selective IOTLB invalidation, draining reads and writes.
pub fn iotlb_domain(did: u16) -> Descriptor {
    (IOTLB | 2 << 4 | 1 << 7 | 1 << 6 | u64::from(did) << 16, 0)
}

/// Global IOTLB invalidation.
pub fn iotlb_global() -> Descriptor {
    (IOTLB | 1 << 4 | 1 << 7 | 1 << 6, 0)
}

/// Page-selective IOTLB invalidation of 2^`am` pages at `addr` (aligned to that size).
pub fn iotlb_pages(did: u16, addr: u64, am: u32) -> Descriptor {
    (IOTLB | 3 << 4 | 1 << 7 | 1 << 6 | u64::from(did) << 16, (addr & !0xFFF) | u64::from(am))
}

/// Wait descriptor: the unit writes `status` to `status_pa` when all earlier descriptors are done
/// (SW only: QEMU aborts on SW together with IF, QEMU.md G5).
pub fn wait(status: u32, status_pa: u64) -> Descriptor {
    (WAIT | 1 << 5 | u64::from(status) << 32, status_pa & !3)
}

/// The smallest address mask covering `[start, end)` with one aligned block,
/// or `None` when it would exceed `mamv` (then invalidate the whole domain).
pub fn address_mask(start: u64, end: u64, mamv: u32) -> Option<(u64, u32)> {
    (0..=mamv).find_map(|am| {
        let size = 4096u64 << am;
        let base = start & !(size - 1);
        (base.checked_add(size)? >= end).then_some((base, am))
    })
}

/// An error the unit reported about its invalidation queue in FSTS (§6.5.2.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// IQE: the descriptor at IQH is invalid (unknown type or reserved bits
    /// set); the unit stopped fetching at it.
    InvalidDescriptor,
    /// ITE: a device-TLB invalidation was not answered in time; the unit
    /// dropped the wait descriptors still pending.
    TimeOut,
    /// ICE: a device-TLB invalidation completion was invalid.
    Completion,
}

impl QueueError {
    /// The first error FSTS reports, checked in the order IQE, ITE, ICE.
    pub fn from_fsts(fsts: u32) -> Option<Self> {
        [QueueError::InvalidDescriptor, QueueError::TimeOut, QueueError::Completion]
            .into_iter()
            .find(|e| fsts & e.fsts_bit() != 0)
    }

    /// Its write-1-to-clear bit in FSTS.
    pub fn fsts_bit(self) -> u32 {
        match self {
            QueueError::InvalidDescriptor => 1 << 4,
            QueueError::Completion => 1 << 5,
            QueueError::TimeOut => 1 << 6,
        }
    }

    /// Spec name and meaning.
    pub fn name(self) -> &'static str {
        match self {
            QueueError::InvalidDescriptor => "IQE (invalid descriptor)",
            QueueError::TimeOut => "ITE (device-TLB invalidation time-out)",
            QueueError::Completion => "ICE (invalid device-TLB invalidation completion)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(context_global(), (0x11, 0));
        assert_eq!(iotlb_domain(5), (0x2 | 0x20 | 0xC0 | 5 << 16, 0));
        assert_eq!(iotlb_pages(1, 0x20_0000, 9), (0x2 | 0x30 | 0xC0 | 1 << 16, 0x20_0009));
        assert_eq!(wait(7, 0x1000), (0x5 | 0x20 | 7 << 32, 0x1000));
        assert_eq!(pasid_cache_domain(3), (0x7 | 0x10 | 3 << 16, 0));
    }

    #[test]
    fn queue_errors_decode_from_fsts() {
        assert_eq!(QueueError::from_fsts(0), None);
        assert_eq!(QueueError::from_fsts(0b11), None, "fault bits are not queue errors");
        assert_eq!(QueueError::from_fsts(1 << 4), Some(QueueError::InvalidDescriptor));
        assert_eq!(QueueError::from_fsts(1 << 5), Some(QueueError::Completion));
        assert_eq!(QueueError::from_fsts(1 << 6), Some(QueueError::TimeOut));
        assert_eq!(QueueError::from_fsts(0x70), Some(QueueError::InvalidDescriptor));
        for e in [QueueError::InvalidDescriptor, QueueError::TimeOut, QueueError::Completion] {
            assert_eq!(QueueError::from_fsts(e.fsts_bit()), Some(e));
        }
    }

    #[test]
    fn masks_cover_the_range() {
        assert_eq!(address_mask(0x20_0000, 0x20_1000, 18), Some((0x20_0000, 0)));
        assert_eq!(address_mask(0x20_0000, 0x40_0000, 18), Some((0x20_0000, 9)));
        assert_eq!(address_mask(0x1F_F000, 0x20_1000, 18), Some((0, 10)), "straddling a 2M boundary");
        assert_eq!(address_mask(0, 1 << 40, 18), None, "beyond MAMV");
        for (s, e) in [(0x3000u64, 0x9000u64), (0x7FF_F000, 0x800_1000)] {
            let (b, am) = address_mask(s, e, 30).unwrap();
            assert!(b <= s && b + (4096 << am) >= e);
        }
    }
}
