//! Why an AMD-Vi operation failed: [`AmdViError`], shared by the register
//! checks ([`crate::regs`]) and the unit ([`crate::unit`]).

use crate::event::EventCode;

/// Why an AMD-Vi operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdViError {
    /// The IOMMU did not complete something in time.
    Timeout(&'static str),
    /// No memory for tables or buffers.
    NoMemory,
    /// The IOMMU lacks something this driver needs (named).
    Unsupported(&'static str),
    /// The IOMMU refused a command (ILLEGAL_COMMAND_ERROR or
    /// COMMAND_HARDWARE_ERROR in the event log); the command buffer was
    /// restarted empty.
    Command {
        /// The event code.
        code: EventCode,
        /// Physical address of the command (or of the failed access).
        address: u64,
    },
    /// Registers the driver uses lie outside the mapped register window
    /// ([`crate::regs::check_window`]): the unit is not used.
    RegisterOutsideWindow {
        /// Which registers.
        register: &'static str,
        /// Their first byte, from the register base.
        offset: u64,
        /// One past their last byte.
        end: u64,
        /// Bytes in the window.
        window: u64,
    },
}

impl core::fmt::Display for AmdViError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AmdViError::Timeout(what) => write!(f, "AMD-Vi did not complete {what} in time"),
            AmdViError::NoMemory => f.write_str("out of memory for AMD-Vi tables or buffers"),
            AmdViError::Unsupported(what) => write!(f, "AMD-Vi unit lacks {what}"),
            AmdViError::Command { code, address } => {
                write!(f, "AMD-Vi refused the command at {address:#x}: {}", code.name())
            }
            AmdViError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "AMD-Vi {register} at {offset:#x}..{end:#x} lie outside the {window:#x}-byte register window \
                 (the 16 KiB block of AMD IOMMU spec 3.4)"
            ),
        }
    }
}
