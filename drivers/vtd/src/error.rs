//! Why a VT-d operation failed ([`VtdError`]).

use crate::invalidation::QueueError;

/// Why a unit operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The hardware did not acknowledge a command in time.
    Timeout(&'static str),
    /// No table memory.
    NoMemory,
    /// SAGAW offers no address width this driver can use.
    NoAddressWidth,
    /// A page-table operation failed.
    Map(io_pgtable::Error),
    /// Every domain ID the unit supports (CAP.ND) is in use.
    NoDomainId,
    /// The unit reported an invalidation-queue error; `head` is the descriptor
    /// index IQH pointed at. The queue was made to run again before returning.
    Queue {
        /// Which error.
        error: QueueError,
        /// Descriptor index at IQH when the error was seen.
        head: usize,
    },
    /// The operation needs the invalidation queue and the unit has none.
    NoQueue,
    /// The unit cannot do this (a missing capability, named).
    NotSupported(&'static str),
    /// Registers the capability registers locate (ECAP.IRO, CAP.FRO and
    /// CAP.NFR) do not fit in the register window the firmware described
    /// (DRHD size), or sit over the fixed registers: the unit is not used
    /// ([`crate::layout::check_window`]).
    RegisterOutsideWindow {
        /// Which registers, and the capability field that placed them.
        register: &'static str,
        /// Their first byte, from the register base.
        offset: u64,
        /// One past their last byte.
        end: u64,
        /// Bytes in the window.
        window: u64,
    },
    /// ECAP.IRO puts the IOTLB registers over the fault-recording registers
    /// CAP.FRO and CAP.NFR describe.
    RegistersOverlap {
        /// IOTLB register offset (ECAP.IRO × 16).
        iotlb: u64,
        /// First fault-recording register (CAP.FRO × 16).
        records: u64,
        /// One past the last fault-recording register.
        records_end: u64,
    },
}

impl core::fmt::Display for VtdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtdError::Timeout(what) => write!(f, "VT-d did not complete {what} in time"),
            VtdError::NoMemory => f.write_str("out of memory for VT-d tables"),
            VtdError::NoAddressWidth => f.write_str("no supported second-level address width in CAP.SAGAW"),
            VtdError::Map(e) => write!(f, "page table: {e}"),
            VtdError::NoDomainId => f.write_str("every VT-d domain ID (CAP.ND) is in use"),
            VtdError::Queue { error, head } => {
                write!(f, "invalidation queue error {} at descriptor {head}", error.name())
            }
            VtdError::NoQueue => f.write_str("the unit has no invalidation queue (ECAP.QI = 0)"),
            VtdError::NotSupported(what) => write!(f, "the unit does not support {what}"),
            VtdError::RegisterOutsideWindow { register, offset, end, window } => write!(
                f,
                "{register} at {offset:#x}..{end:#x} lie outside the unit's {window:#x}-byte register window \
                 (DRHD size) or over its fixed registers"
            ),
            VtdError::RegistersOverlap { iotlb, records, records_end } => write!(
                f,
                "IOTLB registers (ECAP.IRO) at {iotlb:#x} overlap the fault-recording registers \
                 (CAP.FRO, CAP.NFR) at {records:#x}..{records_end:#x}"
            ),
        }
    }
}
