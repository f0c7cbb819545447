//! Fault records (VT-d §7.2.1 and Appendix A, "Non-Recoverable Fault Reason Codes").

use crate::regs::{FaultRecordWords, FRCD_HI, FRCD_LO};
use core::fmt;

/// A decoded fault reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultReason(pub u8);

impl FaultReason {
    /// The reason's name from Appendix A.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "root entry not present",
            0x02 => "context entry not present",
            0x03 => "invalid context entry",
            0x04 => "address beyond the guest address width",
            0x05 => "write to a page without write permission",
            0x06 => "read from a page without read permission",
            0x07 => "second-level paging entry address invalid",
            0x08 => "root table address invalid",
            0x0A => "reserved bits set in a root entry",
            0x0B => "reserved bits set in a context entry",
            0x0C => "reserved bits set in a second-level entry",
            0x0D => "translation type blocked",
            0x71 => "first-stage entry not present",
            0x85 => "scalable mode: write to a page without write permission",
            r => crate::intremap::ir_fault_name(r).unwrap_or("other (see VT-d Appendix A)"),
        }
    }

    /// Whether this is an interrupt-remapping fault (20h–2Fh, §7.1.3): the
    /// record names an interrupt index instead of a page.
    pub fn is_interrupt(self) -> bool {
        self.0 & 0xF0 == 0x20
    }
}

/// One recorded DMA-remapping or interrupt-remapping fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Requester ID of the device (0xFFFF when the request carried none:
    /// QEMU's DMA writes into the interrupt window).
    pub source_id: u16,
    /// Faulting page address; for an interrupt-remapping fault
    /// ([`FaultReason::is_interrupt`]) the interrupt index (FI bits 63:48).
    pub address: u64,
    /// True for a write request (T = 0), false for a read.
    pub write: bool,
    /// Why.
    pub reason: FaultReason,
}

impl FaultRecord {
    /// Decodes the 128-bit fault-recording register (`lo`, `hi`).
    pub fn decode(lo: u64, hi: u64) -> Option<Self> {
        let w = FaultRecordWords::from_words([lo, hi]);
        if !w.hi.is_set(FRCD_HI::F) {
            return None; // F clear: no fault recorded
        }
        let reason = FaultReason(w.hi.read(FRCD_HI::FR) as u8);
        Some(FaultRecord {
            source_id: w.hi.read(FRCD_HI::SID) as u16,
            address: if reason.is_interrupt() {
                u64::from(crate::intremap::fault_interrupt_index(lo))
            } else {
                iommu::desc::in_place(w.lo, FRCD_LO::FI)
            },
            write: !w.hi.is_set(FRCD_HI::T),
            reason,
        })
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_interrupt() {
            return write!(
                f,
                "interrupt request from {:02x}:{:02x}.{} blocked, index {:#x}: reason {:#04x} ({})",
                self.source_id >> 8,
                (self.source_id >> 3) & 0x1F,
                self.source_id & 7,
                self.address,
                self.reason.0,
                self.reason.name()
            );
        }
        write!(
            f,
            "DMA {} fault from {:02x}:{:02x}.{} at {:#x}: reason {:#04x} ({})",
            if self.write { "write" } else { "read" },
            self.source_id >> 8,
            (self.source_id >> 3) & 0x1F,
            self.source_id & 7,
            self.address,
            self.reason.0,
            self.reason.name()
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn decode_write_permission_fault() {
        // QEMU: edu at 00:01.0 writing to IOVA 0x300000 without permission.
        let hi = 1u64 << 63 | 0x05u64 << 32 | 0x0008;
        let r = FaultRecord::decode(0x30_0123, hi).unwrap();
        assert_eq!(r, FaultRecord { source_id: 8, address: 0x30_0000, write: true, reason: FaultReason(5) });
        assert_eq!(
            r.to_string(),
            "DMA write fault from 00:01.0 at 0x300000: reason 0x05 (write to a page without write permission)"
        );
        let read = FaultRecord::decode(0, 1 << 63 | 1 << 62 | 6 << 32).unwrap();
        assert!(!read.write);
        assert_eq!(FaultRecord::decode(0x1000, 0x0500_0000_0008), None, "F clear");
    }

    #[test]
    fn decode_interrupt_remapping_fault() {
        // Reason 22h (IRTE not present), index 0x1234 in FI (bits 63:48), no requester ID.
        let r = FaultRecord::decode(0x1234u64 << 48 | 0xABC, 1u64 << 63 | 0x22u64 << 32 | 0xFFFF).unwrap();
        assert!(r.reason.is_interrupt());
        assert_eq!((r.address, r.source_id), (0x1234, 0xFFFF));
        assert_eq!(
            r.to_string(),
            "interrupt request from ff:1f.7 blocked, index 0x1234: reason 0x22 (IR: IRTE not present)"
        );
        assert!(
            !FaultReason(0x05).is_interrupt() && !FaultReason(0x30).is_interrupt() && FaultReason(0x26).is_interrupt()
        );
        assert_eq!(FaultReason(0x26).name(), "IR: source-id verification failed (SID/SQ/SVT)");
    }
}
