//! Event queue records (SMMUv3 §7.3): 32 bytes, decoded into a typed event.

use core::fmt;
use iommu::desc::RAW;
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// Event record word 0, bits 63:0 (§7.3).
    pub EVT0 [
        /// Event type, bits 7:0 (§7.3).
        TYPE OFFSET(0) NUMBITS(8) [],
        /// SSV, bit 11: SubstreamID is valid (§7.3).
        SSV OFFSET(11) NUMBITS(1) [],
        /// SubstreamID, bits 31:12 (§7.3).
        SUBSTREAM_ID OFFSET(12) NUMBITS(20) [],
        /// StreamID, bits 63:32 (§7.3).
        STREAM_ID OFFSET(32) NUMBITS(32) []
    ],
    /// Event record word 1, bits 127:64, of the translation-fault types (§7.3.12 - §7.3.15).
    pub EVT1 [
        /// RnW, bit 99: a read (1) or a write (§7.3).
        RNW OFFSET(35) NUMBITS(1) [],
        /// S2, bit 103: the fault was at stage 2 (§7.3).
        S2 OFFSET(39) NUMBITS(1) []
    ]
];

iommu::descriptor! {
    /// An event queue record (§7.3): 32 bytes.
    pub struct Record {
        /// Bits 63:0: type, stream and substream.
        w0: EVT0,
        /// Bits 127:64: access and stage of a fault.
        w1: EVT1,
        /// Bits 191:128: the input address of the address-carrying types (§7.3), the whole word.
        w2: RAW,
        /// Bits 255:192: the IPA of stage-2 faults (unused here).
        w3: RAW,
    }
}

/// An event type code and its spec name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType(pub u8);

impl EventType {
    /// F_TRANSLATION: no valid translation for the address.
    pub const TRANSLATION: EventType = EventType(0x10);
    /// F_PERMISSION: the translation does not allow the access.
    pub const PERMISSION: EventType = EventType(0x13);

    /// The type's name from §7.3.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "F_UUT (unsupported upstream transaction)",
            0x02 => "C_BAD_STREAMID (stream ID out of range)",
            0x03 => "F_STE_FETCH (STE fetch aborted)",
            0x04 => "C_BAD_STE (invalid STE)",
            0x05 => "F_BAD_ATS_TREQ",
            0x06 => "F_STREAM_DISABLED (non-substream traffic disabled)",
            0x07 => "F_TRANSL_FORBIDDEN (translated transaction forbidden)",
            0x08 => "C_BAD_SUBSTREAMID",
            0x09 => "F_CD_FETCH (CD fetch aborted)",
            0x0A => "C_BAD_CD (invalid CD)",
            0x0B => "F_WALK_EABT (table walk aborted)",
            0x10 => "F_TRANSLATION (no translation)",
            0x11 => "F_ADDR_SIZE (address beyond the table's size)",
            0x12 => "F_ACCESS (access flag clear)",
            0x13 => "F_PERMISSION (access not permitted)",
            0x20 => "F_TLB_CONFLICT",
            0x21 => "F_CFG_CONFLICT",
            0x24 => "E_PAGE_REQUEST",
            0x25 => "F_VMS_FETCH",
            _ => "unknown event type",
        }
    }
}

/// One decoded event record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Type.
    pub kind: EventType,
    /// Stream ID of the transaction.
    pub stream: u32,
    /// Substream ID, when SSV is set.
    pub substream: Option<u32>,
    /// Input address (IOVA), for the address-carrying types.
    pub address: u64,
    /// Read (true) or write, for the translation-fault types.
    pub read: bool,
    /// The fault happened in stage 2 (S2 bit).
    pub stage2: bool,
}

impl Event {
    /// Decodes a record given as four little-endian 64-bit words.
    pub fn decode(w: [u64; 4]) -> Event {
        let r = Record::from_words(w);
        Event {
            kind: EventType(r.w0.read(EVT0::TYPE) as u8),
            stream: r.w0.read(EVT0::STREAM_ID) as u32,
            substream: r.w0.is_set(EVT0::SSV).then_some(r.w0.read(EVT0::SUBSTREAM_ID) as u32),
            address: r.w2.get(),
            read: r.w1.is_set(EVT1::RNW),
            stage2: r.w1.is_set(EVT1::S2),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from stream {:#x} at {:#x} ({}{})",
            self.kind.name(),
            self.stream,
            self.address,
            if self.read { "read" } else { "write" },
            if self.stage2 { ", stage 2" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_qemu_translation_fault() {
        // QEMU.md §3.3: w0 = 0x10 | SID << 32; RnW is bit 35 of the second
        // word; CLASS 2 in bits 41:40; the IOVA in the third word.
        let e = Event::decode([0x10 | 0x8 << 32, 1 << 35 | 2 << 40, 0x30_0000, 0]);
        assert_eq!(e.kind, EventType::TRANSLATION);
        assert_eq!((e.stream, e.address, e.read, e.stage2, e.substream), (8, 0x30_0000, true, false, None));
        let w = Event::decode([0x13 | 0x10 << 32 | 1 << 11 | 5 << 12, 1 << 39, 0x1000, 0]);
        assert_eq!((w.kind, w.read, w.stage2, w.substream), (EventType::PERMISSION, false, true, Some(5)));
        assert_eq!(
            alloc::format!("{w}"),
            "F_PERMISSION (access not permitted) from stream 0x10 at 0x1000 (write, stage 2)"
        );
        assert_eq!(EventType(0x77).name(), "unknown event type");
    }
}
