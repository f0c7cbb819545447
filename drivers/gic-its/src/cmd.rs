//! ITS commands: 32-byte packets of four little-endian doublewords
//! (IHI 0069 §5.3 "ITS commands"; the command number sits in DW0 bits 7:0,
//! the DeviceID in DW0 bits 63:32, the EventID in DW1 bits 31:0).

/// One command packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command(pub [u64; 4]);

/// Command numbers (DW0 bits 7:0).
pub mod op {
    /// Make an event of a device pending now.
    pub const INT: u8 = 0x03;
    /// Wait until earlier commands for a redistributor took effect.
    pub const SYNC: u8 = 0x05;
    /// Map a DeviceID to its interrupt translation table (or unmap it).
    pub const MAPD: u8 = 0x08;
    /// Map a collection to a redistributor (or unmap it).
    pub const MAPC: u8 = 0x09;
    /// Map an event of a device to an LPI in a collection.
    pub const MAPTI: u8 = 0x0A;
    /// Re-read the configuration of the LPI an event maps to.
    pub const INV: u8 = 0x0C;
    /// Re-read the configuration of every LPI of a collection.
    pub const INVALL: u8 = 0x0D;
    /// Remove an event's mapping (and its pending LPI).
    pub const DISCARD: u8 = 0x0F;
}

/// Where a redistributor is as commands name it: its physical address when
/// GITS_TYPER.PTA is 1, its processor number (GICR_TYPER bits 23:8) when 0.
/// The value goes to DW2 bits 51:16 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdBase(pub u64);

impl RdBase {
    /// The field for a redistributor at physical address `pa` (64 KiB aligned).
    pub fn physical(pa: u64) -> RdBase {
        RdBase(pa & 0x000F_FFFF_FFFF_0000)
    }

    /// The field for processor number `n`.
    pub fn processor(n: u16) -> RdBase {
        RdBase(u64::from(n) << 16)
    }
}

fn with_device(op: u8, device: u32) -> u64 {
    u64::from(op) | u64::from(device) << 32
}

impl Command {
    /// MAPD: `device`'s events (`event_bits` of EventID, 1..=32) translate
    /// through the table at `itt` (256-byte aligned); `valid` false unmaps it.
    pub fn mapd(device: u32, event_bits: u32, itt: u64, valid: bool) -> Command {
        let size = u64::from(event_bits.clamp(1, 32) - 1);
        Command([with_device(op::MAPD, device), size, (itt & 0x000F_FFFF_FFFF_FF00) | u64::from(valid) << 63, 0])
    }

    /// MAPC: collection `icid` delivers to `rd`; `valid` false unmaps it.
    pub fn mapc(icid: u16, rd: RdBase, valid: bool) -> Command {
        Command([u64::from(op::MAPC), 0, u64::from(icid) | rd.0 | u64::from(valid) << 63, 0])
    }

    /// MAPTI: `event` of `device` becomes LPI `lpi` in collection `icid`.
    pub fn mapti(device: u32, event: u32, lpi: u32, icid: u16) -> Command {
        Command([with_device(op::MAPTI, device), u64::from(event) | u64::from(lpi) << 32, u64::from(icid), 0])
    }

    /// INV: the LPI of `event` of `device` re-reads its configuration byte.
    pub fn inv(device: u32, event: u32) -> Command {
        Command([with_device(op::INV, device), u64::from(event), 0, 0])
    }

    /// INVALL: every LPI of collection `icid` re-reads its configuration.
    pub fn invall(icid: u16) -> Command {
        Command([u64::from(op::INVALL), 0, u64::from(icid), 0])
    }

    /// DISCARD: `event` of `device` maps to nothing any more; a pending
    /// LPI it raised is cleared.
    pub fn discard(device: u32, event: u32) -> Command {
        Command([with_device(op::DISCARD, device), u64::from(event), 0, 0])
    }

    /// INT: `event` of `device` is raised as if the device had written it.
    pub fn int(device: u32, event: u32) -> Command {
        Command([with_device(op::INT, device), u64::from(event), 0, 0])
    }

    /// SYNC: completes when every earlier command for `rd` took effect.
    pub fn sync(rd: RdBase) -> Command {
        Command([u64::from(op::SYNC), 0, rd.0, 0])
    }

    /// The command number.
    pub fn op(&self) -> u8 {
        self.0[0] as u8
    }

    /// The command's name as the specification spells it.
    pub fn name(&self) -> &'static str {
        match self.op() {
            op::INT => "INT",
            op::SYNC => "SYNC",
            op::MAPD => "MAPD",
            op::MAPC => "MAPC",
            op::MAPTI => "MAPTI",
            op::INV => "INV",
            op::INVALL => "INVALL",
            op::DISCARD => "DISCARD",
            _ => "unknown",
        }
    }
}

impl core::fmt::Display for Command {
    /// The command and its operands, e.g. `MAPTI device=0x8 event=0 lpi=8192 icid=0`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [dw0, dw1, dw2, _] = self.0;
        let (device, event) = (dw0 >> 32, dw1 & 0xFFFF_FFFF);
        match self.op() {
            op::MAPD => write!(
                f,
                "MAPD device={device:#x} event_bits={} itt={:#x} valid={}",
                (dw1 & 0x1F) + 1,
                dw2 & 0x000F_FFFF_FFFF_FF00,
                dw2 >> 63
            ),
            op::MAPC => {
                write!(f, "MAPC icid={} rdbase={:#x} valid={}", dw2 & 0xFFFF, dw2 & 0x000F_FFFF_FFFF_0000, dw2 >> 63)
            }
            op::MAPTI => write!(f, "MAPTI device={device:#x} event={event} lpi={} icid={}", dw1 >> 32, dw2 & 0xFFFF),
            op::INV | op::DISCARD | op::INT => write!(f, "{} device={device:#x} event={event}", self.name()),
            op::INVALL => write!(f, "INVALL icid={}", dw2 & 0xFFFF),
            op::SYNC => write!(f, "SYNC rdbase={:#x}", dw2 & 0x000F_FFFF_FFFF_0000),
            _ => write!(f, "command {:#04x}", self.op()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn packets_put_each_operand_where_the_spec_says() {
        let c = Command::mapd(0x0108, 5, 0x4123_4500, true);
        assert_eq!(c.0, [0x0000_0108_0000_0008, 4, 0x8000_0000_4123_4500, 0]);
        assert_eq!(Command::mapd(0x10, 1, 0x4000_0000, false).0[2], 0x4000_0000, "V clear");
        assert_eq!(Command::mapd(0x10, 0, 0, true).0[1], 0, "at least one EventID bit");
        let c = Command::mapti(0x8, 1, 8192 + 3, 0);
        assert_eq!(c.0, [0x0000_0008_0000_000A, 0x0000_2003_0000_0001, 0, 0]);
        assert_eq!(Command::mapc(0, RdBase::processor(2), true).0, [0x09, 0, 0x8000_0000_0002_0000, 0]);
        assert_eq!(Command::sync(RdBase::physical(0x080A_0000)).0, [0x05, 0, 0x080A_0000, 0]);
        assert_eq!(Command::sync(RdBase::physical(0x080A_1234)).0[2], 0x080A_0000, "low bits dropped");
        assert_eq!(Command::inv(0x20, 7).0, [0x0000_0020_0000_000C, 7, 0, 0]);
        assert_eq!(Command::discard(0x20, 7).0[0] & 0xFF, 0x0F);
        assert_eq!(Command::int(0x20, 7).0[0] & 0xFF, 0x03);
        assert_eq!(Command::invall(3).0, [0x0D, 0, 3, 0]);
    }

    #[test]
    fn commands_read_back_in_words() {
        assert_eq!(Command::mapti(0x8, 0, 8192, 0).to_string(), "MAPTI device=0x8 event=0 lpi=8192 icid=0");
        assert_eq!(
            Command::mapd(0x8, 5, 0x4000_0100, true).to_string(),
            "MAPD device=0x8 event_bits=5 itt=0x40000100 valid=1"
        );
        assert_eq!(Command::mapc(0, RdBase::processor(0), true).to_string(), "MAPC icid=0 rdbase=0x0 valid=1");
        assert_eq!(Command::discard(0x8, 0).to_string(), "DISCARD device=0x8 event=0");
        assert_eq!(Command([0x77, 0, 0, 0]).to_string(), "command 0x77");
        assert_eq!(Command([0x77, 0, 0, 0]).name(), "unknown");
    }
}
