//! Paging-domain configurations: which translation a unit's domains use
//! ([`Stage`]), how one domain translates ([`DomainConfig`]) and the
//! unit's default (what `domain_alloc(Paging)` gives).
//!
//! Spec references (Intel VT-d rev 4.x): §3.6 first-stage translation (x86
//! paging, 4 levels, or 5 with CAP.FL5LP; inputs must be canonical), §3.7
//! second-stage translation (3, 4 or 5 levels as CAP.SAGAW allows, inputs below
//! 2^(MGAW + 1)), §11.4.2 CAP (SAGAW, MGAW, FS1GP, FL5LP), §11.4.3 ECAP (SC).

use crate::regs::CAP;

/// Which translation a unit's domains use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Legacy root/context tables, second-level page tables.
    Legacy,
    /// Scalable mode, second-stage tables (ECAP.SLTS).
    ScalableSecond,
    /// Scalable mode, first-stage tables in x86 paging format (ECAP.FLTS only).
    ScalableFirst,
}

/// How a paging domain translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConfig {
    /// First-stage tables (x86 paging format, scalable mode only) instead of
    /// second-stage (second-level) tables.
    pub first_stage: bool,
    /// Page-table levels: 3, 4 or 5.
    pub levels: usize,
    /// The domain translates IOVAs below 2^`input_bits` (its aperture).
    pub input_bits: u32,
    /// Snooped DMA: second-stage leaves carry SNP; a first-stage PASID entry has PGSNP.
    pub snoop: bool,
}

impl DomainConfig {
    /// Width of the page table's input, 12 + 9 per level (39, 48 or 57).
    pub fn table_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }

    /// Lowest and highest (inclusive) IOVA the domain translates.
    pub fn aperture(&self) -> (u64, u64) {
        (0, (1u64 << self.input_bits) - 1)
    }

    /// One-line description for the log: "second stage, 4 levels (48-bit), snoop off".
    pub fn describe(&self) -> alloc::string::String {
        alloc::format!("{}", self.display())
    }

    /// [`DomainConfig::describe`] as a `Display` (logs without allocating).
    pub fn display(&self) -> impl core::fmt::Display + '_ {
        struct D<'a>(&'a DomainConfig);
        impl core::fmt::Display for D<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let c = self.0;
                write!(
                    f,
                    "{} stage, {} levels ({}-bit), snoop {}",
                    if c.first_stage { "first" } else { "second" },
                    c.levels,
                    c.table_bits(),
                    if c.snoop { "on" } else { "off" }
                )
            }
        }
        D(self)
    }
}

/// Whether SAGAW (CAP bits 12:8, §11.4.2) offers `levels`-level second-stage
/// tables: bit 1 for 3 levels (39-bit), bit 2 for 4 (48-bit), bit 3 for 5 (57-bit).
pub fn sagaw_bit(sagaw: u64, levels: usize) -> bool {
    levels >= 2 && sagaw.checked_shr((levels - 2) as u32).is_some_and(|v| v & 1 != 0)
}

/// The second-stage levels a unit's domains use by default: 4 when SAGAW
/// offers 48-bit tables, else 3 (39-bit), else 5 (57-bit); `None` when it
/// offers none of them.
pub fn sagaw_default_levels(cap: u64) -> Option<usize> {
    let sagaw = CAP::SAGAW.read(cap);
    [4, 3, 5].into_iter().find(|&l| sagaw_bit(sagaw, l))
}

/// Largest second-stage input width the unit translates: MGAW + 1.
pub(crate) fn max_input_bits(cap: u64) -> u32 {
    CAP::MGAW.read(cap) as u32 + 1
}

/// The default second-stage configuration: SAGAW's preferred levels, the
/// input clipped to MGAW + 1.
pub(crate) fn default_second(cap: u64) -> Option<DomainConfig> {
    let levels = sagaw_default_levels(cap)?;
    let input_bits = (12 + 9 * levels as u32).min(max_input_bits(cap));
    Some(DomainConfig { first_stage: false, levels, input_bits, snoop: false })
}

/// A first-stage configuration with `levels` (4 or 5) levels: inputs must be
/// canonical, so only the lower half (bit N-1 clear) is used.
pub(crate) fn first(levels: usize) -> DomainConfig {
    DomainConfig { first_stage: true, levels, input_bits: 12 + 9 * levels as u32 - 1, snoop: false }
}

/// What `domain_alloc(Paging)` gives on a unit in `mode`: first-stage 4-level
/// tables when the unit is in scalable mode with first-stage tables only,
/// otherwise second-stage tables as [`sagaw_default_levels`] says (`None`
/// when SAGAW offers no width).
pub fn default_config(cap: u64, mode: Stage) -> Option<DomainConfig> {
    match mode {
        Stage::ScalableFirst => Some(first(4)),
        Stage::Legacy | Stage::ScalableSecond => default_second(cap),
    }
}
