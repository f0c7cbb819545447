//! Event queue records (SMMUv3 §7.3): 32 bytes, decoded into a typed event.

use core::fmt;

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
        Event {
            kind: EventType(w[0] as u8),
            stream: (w[0] >> 32) as u32,
            substream: (w[0] >> 11 & 1 != 0).then_some((w[0] >> 12 & 0xF_FFFF) as u32),
            address: w[2],
            read: w[1] >> 35 & 1 != 0,
            stage2: w[1] >> 39 & 1 != 0,
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
