//! Why an SMMU operation failed: the one error type the queue, table and register code share.

use crate::cmd::CommandError;

/// Why an SMMU operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU did not acknowledge in time.
    Timeout(&'static str),
    /// No memory for tables or queues.
    NoMemory,
    /// The SMMU lacks something this driver needs (named).
    Unsupported(&'static str),
    /// The stream ID is beyond the stream table.
    BadStream(u32),
    /// The SMMU refused a command; it was replaced by a CMD_SYNC and the queue
    /// runs again.
    Command {
        /// CERROR.
        error: CommandError,
        /// Queue index of the refused command.
        index: u32,
    },
    /// A page-table operation failed.
    Map(io_pgtable::Error),
    /// Every ASID or VMID is in use.
    NoTags,
    /// A table or queue access left its DMA region (a driver bug: the
    /// geometry is checked when the memory is allocated).
    Dma(iommu::dma::OutsideRegion),
    /// Registers the driver needs lie outside the register window the
    /// firmware described (device-tree `reg` or IORT): the SMMU is not used
    /// ([`crate::regs::check_window`]).
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

impl core::fmt::Display for SmmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmmuError::Timeout(what) => write!(f, "SMMU did not complete {what} in time"),
            SmmuError::NoMemory => f.write_str("out of memory for SMMU tables or queues"),
            SmmuError::Unsupported(what) => write!(f, "SMMU lacks {what}"),
            SmmuError::BadStream(sid) => write!(f, "stream ID {sid:#x} is beyond the stream table"),
            SmmuError::Command { error, index } => write!(f, "command {index} refused: {}", error.name()),
            SmmuError::Map(e) => write!(f, "page table: {e}"),
            SmmuError::NoTags => f.write_str("every ASID / VMID is in use"),
            SmmuError::Dma(e) => write!(f, "SMMU table or queue: {e}"),
            SmmuError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "{register} at {offset:#x}..{end:#x} lie outside the SMMU's {window:#x}-byte register window \
                 (the firmware's reg / IORT size; the architecture needs page 0 and page 1, 0x20000 bytes)"
            ),
        }
    }
}
