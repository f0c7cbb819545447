//! Event log entries (§2.5, "Event Logging"): 16 bytes each. Common layout:
//! word 0 holds DeviceID (bits 15:0), PASID bits 19:16 (bits 19:16), DomainID
//! or PASID bits 15:0 (bits 47:32), event flags (bits 59:48) and the event
//! code (bits 63:60); word 1 holds an address whose meaning depends on the
//! code (the IOVA of a faulting request, the physical address of a DTE, PTE
//! or command).
//!
//! Flags (bits 59:48 of word 0, numbered from bit 48 here): GN 0 (the
//! request had a PASID), NX 1, US 2, I 3 (interrupt request), PR 4 (the
//! entry was present), RW 5 (write), PE 6 (permission denied), RZ 7 (a
//! reserved bit was set), TR 8 (translation request); hardware-error events
//! carry the error type in bits 10:9.

use core::fmt;
use tock_registers::register_bitfields;

register_bitfields![u64,
    /// Event log entry bits 63:0 (§2.5, the common layout of §2.5.2–§2.5.10).
    pub EVT0 [
        /// Bits 15:0, DeviceID of the request (codes that name a device).
        DEVICE_ID OFFSET(0) NUMBITS(16) [],
        /// Bits 19:16, PASID bits 19:16 (codes that carry a PASID, with GN).
        PASID_HI OFFSET(16) NUMBITS(4) [],
        /// Bits 47:32, DomainID, or PASID bits 15:0 when GN is set.
        DOMAIN_OR_PASID OFFSET(32) NUMBITS(16) [],
        /// Bits 59:48, the event flags ([`Flags`]).
        FLAGS OFFSET(48) NUMBITS(12) [],
        /// Bits 63:60, EventCode.
        CODE OFFSET(60) NUMBITS(4) []
    ],
    /// Event log entry bits 127:64 (§2.5).
    pub EVT1 [
        /// IOTLB_INV_TIMEOUT bits 127:68: the command's address bits 63:4 (§2.5.8).
        COMMAND_ADDRESS OFFSET(4) NUMBITS(60) []
    ]
];

register_bitfields![u16,
    /// The event flags, bits 59:48 of an event log entry (§2.5), numbered from bit 48.
    pub EVT_FLAGS [
        /// Bit 48, GN: the request carried a PASID.
        GN OFFSET(0) NUMBITS(1) [],
        /// Bit 49, NX: an instruction fetch.
        NX OFFSET(1) NUMBITS(1) [],
        /// Bit 50, US: a user-mode request.
        US OFFSET(2) NUMBITS(1) [],
        /// Bit 51, I: an interrupt request.
        I OFFSET(3) NUMBITS(1) [],
        /// Bit 52, PR: the entry was present.
        PR OFFSET(4) NUMBITS(1) [],
        /// Bit 53, RW: a write.
        RW OFFSET(5) NUMBITS(1) [],
        /// Bit 54, PE: permission denied.
        PE OFFSET(6) NUMBITS(1) [],
        /// Bit 55, RZ: a reserved bit was set.
        RZ OFFSET(7) NUMBITS(1) [],
        /// Bit 56, TR: a translation request.
        TR OFFSET(8) NUMBITS(1) [],
        /// Bits 58:57, Type of a hardware-error event (§2.5.4, §2.5.5, §2.5.7).
        TYPE OFFSET(9) NUMBITS(2) []
    ]
];

iommu::descriptor! {
    /// An event log entry (§2.5) as it lies in the log: two 64-bit words.
    pub struct EventEntry {
        /// Bits 63:0: DeviceID, PASID / DomainID, flags, code.
        w0: EVT0,
        /// Bits 127:64: the address (its meaning depends on the code).
        w1: EVT1,
    }
}

/// An event code and its spec name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCode(pub u8);

impl EventCode {
    /// ILLEGAL_DEV_TABLE_ENTRY: a DTE with reserved or invalid bits.
    pub const ILLEGAL_DEV_TABLE_ENTRY: EventCode = EventCode(0x1);
    /// IO_PAGE_FAULT: no translation or no permission for a request.
    pub const IO_PAGE_FAULT: EventCode = EventCode(0x2);
    /// DEV_TAB_HARDWARE_ERROR: reading a DTE failed.
    pub const DEV_TAB_HARDWARE_ERROR: EventCode = EventCode(0x3);
    /// PAGE_TAB_HARDWARE_ERROR: reading a page-table entry failed.
    pub const PAGE_TAB_HARDWARE_ERROR: EventCode = EventCode(0x4);
    /// ILLEGAL_COMMAND_ERROR: an unknown opcode or reserved bits in a command.
    pub const ILLEGAL_COMMAND_ERROR: EventCode = EventCode(0x5);
    /// COMMAND_HARDWARE_ERROR: fetching a command or storing its result failed.
    pub const COMMAND_HARDWARE_ERROR: EventCode = EventCode(0x6);
    /// IOTLB_INV_TIMEOUT: a device did not answer an IOTLB invalidation.
    pub const IOTLB_INV_TIMEOUT: EventCode = EventCode(0x7);
    /// INVALID_DEVICE_REQUEST: a request the device may not make.
    pub const INVALID_DEVICE_REQUEST: EventCode = EventCode(0x8);
    /// INVALID_PPR_REQUEST: a peripheral page request the IOMMU refused.
    pub const INVALID_PPR_REQUEST: EventCode = EventCode(0x9);

    /// The code's name from §2.5.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x1 => "ILLEGAL_DEV_TABLE_ENTRY",
            0x2 => "IO_PAGE_FAULT",
            0x3 => "DEV_TAB_HARDWARE_ERROR",
            0x4 => "PAGE_TAB_HARDWARE_ERROR",
            0x5 => "ILLEGAL_COMMAND_ERROR",
            0x6 => "COMMAND_HARDWARE_ERROR",
            0x7 => "IOTLB_INV_TIMEOUT",
            0x8 => "INVALID_DEVICE_REQUEST",
            0x9 => "INVALID_PPR_REQUEST",
            _ => "unknown event code",
        }
    }

    /// Whether word 0 bits 15:0 name the requesting device.
    fn has_device(self) -> bool {
        matches!(self.0, 0x1..=0x4 | 0x7..=0x9)
    }

    /// Whether events of this code may carry a PASID (bits 19:16 and 47:32).
    fn has_pasid(self) -> bool {
        matches!(self.0, 0x1 | 0x2 | 0x4 | 0x8 | 0x9)
    }

    /// Whether word 0 bits 47:32 hold a DomainID when GN is clear.
    fn has_domain(self) -> bool {
        matches!(self.0, 0x2 | 0x4)
    }
}

/// Event flags (word 0 bits 59:48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags(pub u16);

impl Flags {
    /// GN: the request carried a PASID (guest / nested address).
    pub const GN: u16 = EVT_FLAGS::GN::SET.value;
    /// NX: an instruction fetch.
    pub const NX: u16 = EVT_FLAGS::NX::SET.value;
    /// US: a user-mode request.
    pub const US: u16 = EVT_FLAGS::US::SET.value;
    /// I: an interrupt request (not a memory access).
    pub const I: u16 = EVT_FLAGS::I::SET.value;
    /// PR: the entry that stopped the request was present.
    pub const PR: u16 = EVT_FLAGS::PR::SET.value;
    /// RW: a write.
    pub const RW: u16 = EVT_FLAGS::RW::SET.value;
    /// PE: the entry did not grant the permission.
    pub const PE: u16 = EVT_FLAGS::PE::SET.value;
    /// RZ: a reserved bit was set (or a level encoding was invalid).
    pub const RZ: u16 = EVT_FLAGS::RZ::SET.value;
    /// TR: a translation request (ATS), not a memory access.
    pub const TR: u16 = EVT_FLAGS::TR::SET.value;

    /// Whether `bit` is set.
    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// The hardware-error type of DEV_TAB / PAGE_TAB / COMMAND_HARDWARE_ERROR
    /// (bits 58:57: 1 master abort, 2 target abort, 3 data error).
    pub fn hardware_error_type(self) -> u8 {
        tock_registers::LocalRegisterCopy::<u16, EVT_FLAGS::Register>::new(self.0).read(EVT_FLAGS::TYPE) as u8
    }
}

/// One decoded event log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event code.
    pub code: EventCode,
    /// The requesting device, for codes that name one.
    pub device: Option<u16>,
    /// The domain of the request (IO_PAGE_FAULT, PAGE_TAB_HARDWARE_ERROR without GN).
    pub domain: Option<u16>,
    /// The PASID of the request (codes that carry one, with GN set).
    pub pasid: Option<u32>,
    /// Flags (their meaning depends on the code).
    pub flags: Flags,
    /// The address word: the IOVA for device requests, a physical address
    /// for table and command errors.
    pub address: u64,
    /// The raw entry.
    pub raw: [u64; 2],
}

impl Event {
    /// Decodes an entry given as its two little-endian 64-bit words.
    pub fn decode(raw: [u64; 2]) -> Event {
        let e = EventEntry::from_words(raw);
        let code = EventCode(e.w0.read(EVT0::CODE) as u8);
        let flags = Flags(e.w0.read(EVT0::FLAGS) as u16);
        let guest = flags.has(Flags::GN);
        let low16 = e.w0.read(EVT0::DOMAIN_OR_PASID) as u16;
        let pasid =
            (code.has_pasid() && guest).then_some(e.w0.read(EVT0::PASID_HI) as u32 * 0x1_0000 + u32::from(low16));
        let domain = (code.has_domain() && !guest).then_some(low16);
        let address = match code {
            // Bits 127:68: the command's address, 16-byte aligned.
            EventCode::IOTLB_INV_TIMEOUT => iommu::desc::in_place(e.w1, EVT1::COMMAND_ADDRESS),
            _ => e.w1.get(),
        };
        let device = code.has_device().then_some(e.w0.read(EVT0::DEVICE_ID) as u16);
        Event { code, device, domain, pasid, flags, address, raw }
    }

    /// Whether the request was a write (RW flag).
    pub fn write(&self) -> bool {
        self.flags.has(Flags::RW)
    }

    /// Whether the event reports a device's DMA (or interrupt) request that
    /// was refused, with the request's IOVA in [`Event::address`]; the others
    /// report trouble of the IOMMU itself (hardware errors, commands, timeouts).
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self.code,
            EventCode::IO_PAGE_FAULT | EventCode::ILLEGAL_DEV_TABLE_ENTRY | EventCode::INVALID_DEVICE_REQUEST
        )
    }

    /// Whether the event reports a refused or failed command.
    pub fn is_command_error(&self) -> bool {
        matches!(self.code, EventCode::ILLEGAL_COMMAND_ERROR | EventCode::COMMAND_HARDWARE_ERROR)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code.name())?;
        if let Some(d) = self.device {
            write!(f, " device {d:#06x}")?;
        }
        if let Some(d) = self.domain {
            write!(f, " domain {d}")?;
        }
        if let Some(p) = self.pasid {
            write!(f, " pasid {p:#x}")?;
        }
        write!(f, " address {:#x}", self.address)?;
        let names = [
            (Flags::RW, "write"),
            (Flags::I, "interrupt"),
            (Flags::PR, "present"),
            (Flags::PE, "permission"),
            (Flags::RZ, "reserved-bit"),
            (Flags::TR, "translation-request"),
            (Flags::US, "user"),
            (Flags::NX, "exec"),
        ];
        let mut sep = " (";
        for (bit, name) in names {
            if self.flags.has(bit) {
                write!(f, "{sep}{name}")?;
                sep = ", ";
            }
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry built field by field from §2.5: code, flags (bits 59:48),
    /// DomainID / PASID[15:0] (47:32), PASID[19:16] (19:16), DeviceID (15:0), address word.
    fn entry(code: u64, flags: u64, d_or_p: u64, pasid_hi: u64, devid: u64, address: u64) -> [u64; 2] {
        [code << 60 | flags << 48 | d_or_p << 32 | pasid_hi << 16 | devid, address]
    }

    #[test]
    fn io_page_fault() {
        // A write to a present entry without permission: PR (52), RW (53), PE (54).
        let e = Event::decode(entry(2, 0b111 << 4, 7, 0, 0x0010, 0xDEAD_B000));
        assert_eq!(e.code, EventCode::IO_PAGE_FAULT);
        assert_eq!((e.device, e.domain, e.pasid, e.address), (Some(0x10), Some(7), None, 0xDEAD_B000));
        assert!(e.write() && e.flags.has(Flags::PR) && e.flags.has(Flags::PE) && !e.flags.has(Flags::I));
        assert!(e.is_request_fault() && !e.is_command_error());
        assert_eq!(
            alloc::format!("{e}"),
            "IO_PAGE_FAULT device 0x0010 domain 7 address 0xdeadb000 (write, present, permission)"
        );
        // A read with a PASID (GN): bits 47:32 are PASID[15:0], no domain.
        let g = Event::decode(entry(2, 1, 0x1234, 0x5, 0x0018, 0x4000));
        assert_eq!((g.pasid, g.domain, g.write()), (Some(0x5_1234), None, false));
    }

    #[test]
    fn qemu_style_page_fault() {
        // QEMU's `amdvi_encode_event`: DeviceID in bits 15:0, (code << 12 | flags) in 63:48,
        // address in word 1; `amdvi_page_fault` sets the I flag.
        let info: u64 = 2 << 12 | 1 << 3;
        let e = Event::decode([0x0010 | info << 48, 0x30_0000]);
        assert_eq!((e.code, e.device, e.address), (EventCode::IO_PAGE_FAULT, Some(0x10), 0x30_0000));
        assert!(e.flags.has(Flags::I));
    }

    #[test]
    fn table_errors() {
        // RZ (55) and TR (56) set, address = the IOVA.
        let e = Event::decode(entry(1, 0b11 << 7, 0, 0, 0x00F8, 0x1000));
        assert_eq!(e.code.name(), "ILLEGAL_DEV_TABLE_ENTRY");
        assert_eq!((e.device, e.domain, e.address), (Some(0xF8), None, 0x1000));
        assert!(e.flags.has(Flags::RZ) && e.flags.has(Flags::TR) && e.is_request_fault());
        // Hardware error type 2 (target abort) in bits 58:57; address = the DTE.
        let d = Event::decode(entry(3, 2 << 9, 0, 0, 0x0020, 0x1_0000_0400));
        assert_eq!((d.code.name(), d.device, d.domain), ("DEV_TAB_HARDWARE_ERROR", Some(0x20), None));
        assert_eq!((d.flags.hardware_error_type(), d.address, d.is_request_fault()), (2, 0x1_0000_0400, false));
        let p = Event::decode(entry(4, 1 << 9, 9, 0, 0x0020, 0x2_0000_0008));
        assert_eq!((p.code.name(), p.domain, p.flags.hardware_error_type()), ("PAGE_TAB_HARDWARE_ERROR", Some(9), 1));
    }

    #[test]
    fn command_errors() {
        let e = Event::decode(entry(5, 0, 0, 0, 0, 0x1_0000_0030));
        assert_eq!((e.code, e.device, e.address), (EventCode::ILLEGAL_COMMAND_ERROR, None, 0x1_0000_0030));
        assert!(e.is_command_error() && !e.is_request_fault());
        let h = Event::decode(entry(6, 3 << 9, 0, 0, 0, 0x1_0000_0040));
        assert_eq!((h.code.name(), h.flags.hardware_error_type(), h.device), ("COMMAND_HARDWARE_ERROR", 3, None));
        assert!(h.is_command_error());
        // The command address is bits 127:68: the low 4 bits of word 1 are not part of it.
        let t = Event::decode(entry(7, 0, 0, 0, 0x0100, 0x1_0000_0055));
        assert_eq!((t.code.name(), t.device, t.address), ("IOTLB_INV_TIMEOUT", Some(0x100), 0x1_0000_0050));
    }

    #[test]
    fn device_requests_and_unknown_codes() {
        let e = Event::decode(entry(8, 1 | 1 << 8, 0x42, 0x1, 0x0028, 0x7000));
        assert_eq!(e.code.name(), "INVALID_DEVICE_REQUEST");
        assert_eq!((e.device, e.pasid, e.domain, e.address), (Some(0x28), Some(0x1_0042), None, 0x7000));
        assert!(e.is_request_fault());
        assert_eq!(Event::decode(entry(9, 0, 0, 0, 0x30, 0)).code.name(), "INVALID_PPR_REQUEST");
        for code in [0u64, 0xA, 0xF] {
            let u = Event::decode(entry(code, 0, 0, 0, 0x30, 0x10));
            assert_eq!((u.code.0, u.code.name(), u.device), (code as u8, "unknown event code", None));
            assert!(!u.is_request_fault() && !u.is_command_error());
        }
    }
}
