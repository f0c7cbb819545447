//! Driver data of the hardware-specific door: kernel-managed HWPTs with
//! driver attributes (`hwpt_data::VTD_ATTRS`, [`abi::iommufd::HwptVtdAttrs`])
//! decoded into a [`DomainConfig`].
//!
//! [`hwpt_config`] is a pure function of CAP, ECAP, the unit's mode and the
//! request, so every answer it can give is tested on the host. A request the
//! unit cannot honour is refused ([`Error::NotSupported`]); a malformed one is
//! [`Error::InvalidData`], checked first.
//!
//! Spec references (Intel VT-d rev 4.x): §3.6 first-stage translation (x86
//! paging, 4 levels, or 5 with CAP.FL5LP; inputs must be canonical), §3.7
//! second-stage translation (3, 4 or 5 levels as CAP.SAGAW allows, inputs below
//! 2^(MGAW + 1)), §9.6 PASID entry (FLPM, PGSNP), §9.8 second-stage SNP bit 11,
//! §11.4.2 CAP (SAGAW, MGAW, FS1GP, FL5LP), §11.4.3 ECAP (SC, SMTS, SLTS, FLTS).

pub use crate::config::{default_config, sagaw_default_levels, DomainConfig, Stage};
use crate::config::{default_second, first, max_input_bits};
use crate::regs::{CAP, ECAP};
use abi::iommufd::{hwpt_data, HwptVtdAttrs, VTD_ATTR_FIRST_STAGE, VTD_ATTR_SNOOP};
use iommu::{DomainId, Error};

/// The attributes in `data`: an [`HwptVtdAttrs`] by length, shorter input
/// zero-filled, longer input zero past its 8 bytes.
fn decode(data: &[u8]) -> Result<HwptVtdAttrs, Error> {
    iommu::user_data::read_struct(data).map_err(|_| Error::InvalidData("non-zero bytes past HwptVtdAttrs"))
}

/// The configuration of a kernel-managed HWPT asked for with `data_type`
/// and `data` on a unit with `cap`/`ecap` in `mode` (only legacy versus
/// scalable matters; the unit's default stage does not limit the request).
///
/// - `data_type` must be `hwpt_data::VTD_ATTRS`, and there is no parent:
///   else [`Error::NotSupported`].
/// - Malformed data ([`Error::InvalidData`]): bytes past the struct not zero,
///   unknown flag bits, an address width other than 0, 39, 48, 57.
/// - Stage: `VTD_ATTR_FIRST_STAGE` needs scalable mode and ECAP.FLTS; without
///   it, second stage, which in scalable mode needs ECAP.SLTS.
/// - Address width 0: the stage's default (for the unit's default stage,
///   exactly what `domain_alloc(Paging)` gives); 39/48/57: 3/4/5 levels,
///   which the stage must offer (second stage: the SAGAW bit; first stage:
///   48, or 57 with CAP.FL5LP) within MGAW + 1.
/// - `VTD_ATTR_SNOOP` needs ECAP.SC.
pub fn hwpt_config(
    cap: u64,
    ecap: u64,
    mode: Stage,
    data_type: u32,
    data: &[u8],
    parent: Option<DomainId>,
) -> Result<DomainConfig, Error> {
    if data_type != hwpt_data::VTD_ATTRS {
        return Err(Error::NotSupported("data type"));
    }
    if parent.is_some() {
        return Err(Error::NotSupported("VT-d has no nested HWPT of this type"));
    }
    let attrs = decode(data)?;
    if attrs.flags & !(VTD_ATTR_FIRST_STAGE | VTD_ATTR_SNOOP) != 0 {
        return Err(Error::InvalidData("unknown flags"));
    }
    let levels = match attrs.addr_width {
        0 => None,
        39 => Some(3),
        48 => Some(4),
        57 => Some(5),
        _ => return Err(Error::InvalidData("address width (0, 39, 48 or 57)")),
    };
    let scalable = mode != Stage::Legacy;
    let want_first = attrs.flags & VTD_ATTR_FIRST_STAGE != 0;
    let mut config = if want_first {
        if !scalable || ECAP::FLTS.read(ecap) == 0 {
            return Err(Error::NotSupported("first stage"));
        }
        match levels {
            None => first(4),
            Some(4) => first(4),
            Some(5) if CAP::FL5LP.is_set(cap) => first(5),
            Some(_) => return Err(Error::NotSupported("address width")),
        }
    } else {
        if scalable && ECAP::SLTS.read(ecap) == 0 {
            return Err(Error::NotSupported("second stage"));
        }
        match levels {
            None => default_second(cap).ok_or(Error::NotSupported("address width"))?,
            Some(l) if crate::config::sagaw_bit(CAP::SAGAW.read(cap), l) => {
                DomainConfig { first_stage: false, levels: l, input_bits: 12 + 9 * l as u32, snoop: false }
            }
            Some(_) => return Err(Error::NotSupported("address width")),
        }
    };
    if levels.is_some() && config.table_bits() > max_input_bits(cap) {
        return Err(Error::NotSupported("address width"));
    }
    if attrs.flags & VTD_ATTR_SNOOP != 0 {
        if !ECAP::SC.is_set(ecap) {
            return Err(Error::NotSupported("snoop control"));
        }
        config.snoop = true;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// CAP with SAGAW `sagaw` and MGAW `mgaw_bits - 1`.
    fn cap(sagaw: u64, mgaw_bits: u64) -> u64 {
        sagaw << 8 | (mgaw_bits - 1) << 16
    }
    /// QEMU's legacy-mode CAP with aw-bits=48: SAGAW 39 and 48, MGAW 47.
    const SAGAW_39_48: u64 = 0b0110;
    const SMTS: u64 = 1 << 43;
    const CAP_FL5LP: u64 = 1 << 60;
    const ECAP_SC: u64 = 1 << 7;
    const SLTS: u64 = 1 << 46;
    const FLTS: u64 = 1 << 47;

    fn attrs(flags: u32, addr_width: u32) -> Vec<u8> {
        let mut v = flags.to_ne_bytes().to_vec();
        v.extend_from_slice(&addr_width.to_ne_bytes());
        v
    }

    fn legacy(data: &[u8]) -> Result<DomainConfig, Error> {
        hwpt_config(cap(SAGAW_39_48, 48), 0, Stage::Legacy, hwpt_data::VTD_ATTRS, data, None)
    }

    fn second(levels: usize, input_bits: u32) -> DomainConfig {
        DomainConfig { first_stage: false, levels, input_bits, snoop: false }
    }

    const NO_WIDTH: Error = Error::NotSupported("address width");

    #[test]
    fn other_data_types_and_parents_are_not_supported() {
        let c = cap(SAGAW_39_48, 48);
        for t in [hwpt_data::NONE, hwpt_data::VTD_S1, hwpt_data::SMMUV3_ATTRS, hwpt_data::AMDVI_ATTRS, 99] {
            assert_eq!(hwpt_config(c, 0, Stage::Legacy, t, &[], None), Err(Error::NotSupported("data type")));
        }
        assert_eq!(
            hwpt_config(c, 0, Stage::Legacy, hwpt_data::VTD_ATTRS, &[], Some(DomainId(1))),
            Err(Error::NotSupported("VT-d has no nested HWPT of this type"))
        );
    }

    #[test]
    fn short_data_is_zero_filled_and_long_data_must_be_zero_past_the_struct() {
        let default = second(4, 48);
        assert_eq!(legacy(&[]), Ok(default));
        assert_eq!(legacy(&[0; 3]), Ok(default));
        assert_eq!(legacy(&attrs(0, 0)), Ok(default));
        // Only flags (4 bytes), or flags and part of the width.
        assert_eq!(legacy(&0u32.to_ne_bytes()), Ok(default));
        assert_eq!(legacy(&attrs(0, 39)[..5]), Ok(second(3, 39)));
        let mut long = attrs(0, 39);
        long.extend_from_slice(&[0; 24]);
        assert_eq!(legacy(&long), Ok(second(3, 39)));
        for at in [8, 9, 31] {
            let mut bad = long.clone();
            bad[at] = 1;
            assert_eq!(legacy(&bad), Err(Error::InvalidData("non-zero bytes past HwptVtdAttrs")));
        }
    }

    #[test]
    fn unknown_flags_and_widths_are_invalid() {
        for flags in [4, 8, 1 << 31, u32::MAX] {
            assert_eq!(legacy(&attrs(flags, 0)), Err(Error::InvalidData("unknown flags")));
        }
        for w in [1, 12, 32, 38, 40, 47, 52, 56, 58, 64, u32::MAX] {
            assert_eq!(legacy(&attrs(0, w)), Err(Error::InvalidData("address width (0, 39, 48 or 57)")));
        }
        // Malformed before unsupported: a legacy unit has no first stage nor
        // snoop control, yet the bad bits are what it reports.
        assert!(matches!(legacy(&attrs(VTD_ATTR_FIRST_STAGE | VTD_ATTR_SNOOP | 4, 0)), Err(Error::InvalidData(_))));
        assert!(matches!(legacy(&attrs(VTD_ATTR_FIRST_STAGE, 40)), Err(Error::InvalidData(_))));
    }

    #[test]
    fn second_stage_widths_follow_sagaw_and_mgaw() {
        // QEMU legacy (aw-bits=48): 39 and 48; no 57.
        assert_eq!(legacy(&attrs(0, 39)), Ok(second(3, 39)));
        assert_eq!(legacy(&attrs(0, 48)), Ok(second(4, 48)));
        assert_eq!(legacy(&attrs(0, 57)), Err(NO_WIDTH));
        // QEMU aw-bits=39: SAGAW 39 only, MGAW 38.
        let c39 = cap(0b0010, 39);
        let ask = |c, w| hwpt_config(c, 0, Stage::Legacy, hwpt_data::VTD_ATTRS, &attrs(0, w), None);
        assert_eq!(ask(c39, 0), Ok(second(3, 39)));
        assert_eq!(ask(c39, 48), Err(NO_WIDTH));
        // 57 needs SAGAW bit 3 and MGAW >= 56.
        assert_eq!(ask(cap(0b1110, 48), 57), Err(NO_WIDTH));
        assert_eq!(ask(cap(0b1110, 57), 57), Ok(second(5, 57)));
        assert_eq!(ask(cap(0b1110, 57), 0), Ok(second(4, 48)));
        // A 48-bit table on a unit addressing 40 bits: the default clips the
        // aperture (as domain_alloc does), an explicit 48 is refused.
        let narrow = cap(0b0100, 40);
        assert_eq!(ask(narrow, 0), Ok(second(4, 40)));
        assert_eq!(ask(narrow, 48), Err(NO_WIDTH));
        assert_eq!(ask(narrow, 39), Err(NO_WIDTH));
        // Only 57-bit tables: the default is 5 levels within MGAW.
        assert_eq!(ask(cap(0b1000, 57), 0), Ok(second(5, 57)));
        assert_eq!(ask(cap(0b1000, 52), 0), Ok(second(5, 52)));
        // No usable SAGAW bit at all.
        assert_eq!(ask(cap(0b0001, 48), 0), Err(NO_WIDTH));
        assert_eq!(ask(cap(0, 48), 48), Err(NO_WIDTH));
    }

    #[test]
    fn stages_follow_mode_and_ecap() {
        let c = cap(SAGAW_39_48, 48);
        let ask = |ecap, mode, flags, w| hwpt_config(c, ecap, mode, hwpt_data::VTD_ATTRS, &attrs(flags, w), None);
        let fs = VTD_ATTR_FIRST_STAGE;
        // Legacy mode: second stage always, first stage never (even with FLTS set).
        assert_eq!(ask(FLTS | SLTS, Stage::Legacy, 0, 0), Ok(second(4, 48)));
        assert_eq!(ask(FLTS, Stage::Legacy, fs, 0), Err(Error::NotSupported("first stage")));
        // Scalable mode with SLTS only (QEMU x-scalable-mode=on).
        let sl = SMTS | SLTS;
        assert_eq!(ask(sl, Stage::ScalableSecond, 0, 39), Ok(second(3, 39)));
        assert_eq!(ask(sl, Stage::ScalableSecond, fs, 0), Err(Error::NotSupported("first stage")));
        // FLTS only (QEMU x-flts=on): first stage 4 levels, canonical lower half.
        let fl = SMTS | FLTS;
        assert_eq!(ask(fl, Stage::ScalableFirst, 0, 0), Err(Error::NotSupported("second stage")));
        assert_eq!(ask(fl, Stage::ScalableFirst, 0, 48), Err(Error::NotSupported("second stage")));
        let first4 = DomainConfig { first_stage: true, levels: 4, input_bits: 47, snoop: false };
        assert_eq!(ask(fl, Stage::ScalableFirst, fs, 0), Ok(first4));
        assert_eq!(ask(fl, Stage::ScalableFirst, fs, 48), Ok(first4));
        assert_eq!(ask(fl, Stage::ScalableFirst, fs, 39), Err(NO_WIDTH));
        assert_eq!(ask(fl, Stage::ScalableFirst, fs, 57), Err(NO_WIDTH));
        // Both: either stage, whatever the unit's default is.
        let both = SMTS | SLTS | FLTS;
        assert_eq!(ask(both, Stage::ScalableSecond, fs, 0), Ok(first4));
        assert_eq!(ask(both, Stage::ScalableSecond, 0, 0), Ok(second(4, 48)));
    }

    #[test]
    fn first_stage_five_levels_need_fl5lp_and_mgaw() {
        let fs = VTD_ATTR_FIRST_STAGE;
        let ecap = SMTS | FLTS;
        let ask = |c, w| hwpt_config(c, ecap, Stage::ScalableFirst, hwpt_data::VTD_ATTRS, &attrs(fs, w), None);
        let first5 = DomainConfig { first_stage: true, levels: 5, input_bits: 56, snoop: false };
        assert_eq!(ask(cap(SAGAW_39_48, 57) | CAP_FL5LP, 57), Ok(first5));
        assert_eq!(ask(cap(SAGAW_39_48, 57), 57), Err(NO_WIDTH));
        assert_eq!(ask(cap(SAGAW_39_48, 48) | CAP_FL5LP, 57), Err(NO_WIDTH));
        // The default stays 4 levels even with FL5LP (as domain_alloc).
        assert_eq!(ask(cap(SAGAW_39_48, 57) | CAP_FL5LP, 0).map(|c| c.levels), Ok(4));
        // An explicit 48 must fit MGAW; the default is not checked (as domain_alloc).
        assert_eq!(ask(cap(SAGAW_39_48, 39), 48), Err(NO_WIDTH));
        assert_eq!(ask(cap(SAGAW_39_48, 39), 0).map(|c| c.input_bits), Ok(47));
    }

    #[test]
    fn snoop_needs_snoop_control() {
        let c = cap(SAGAW_39_48, 48);
        let ask = |ecap, mode, flags| hwpt_config(c, ecap, mode, hwpt_data::VTD_ATTRS, &attrs(flags, 0), None);
        let (sn, fs) = (VTD_ATTR_SNOOP, VTD_ATTR_FIRST_STAGE);
        // QEMU: ECAP.SC = 0.
        assert_eq!(ask(0, Stage::Legacy, sn), Err(Error::NotSupported("snoop control")));
        assert_eq!(ask(SMTS | FLTS, Stage::ScalableFirst, sn | fs), Err(Error::NotSupported("snoop control")));
        // The stage is checked first.
        assert_eq!(ask(SMTS | FLTS, Stage::ScalableFirst, sn), Err(Error::NotSupported("second stage")));
        let on = |cfg: DomainConfig| DomainConfig { snoop: true, ..cfg };
        assert_eq!(ask(ECAP_SC, Stage::Legacy, sn), Ok(on(second(4, 48))));
        assert_eq!(ask(ECAP_SC, Stage::Legacy, 0), Ok(second(4, 48)));
        let fl = SMTS | FLTS | ECAP_SC;
        assert_eq!(ask(fl, Stage::ScalableFirst, sn | fs), Ok(on(first(4))));
    }

    #[test]
    fn defaults_match_domain_alloc() {
        // Unit with its default stage, empty data: exactly default_config.
        for (c, ecap, mode) in [
            (cap(SAGAW_39_48, 48), 0, Stage::Legacy),
            (cap(0b0010, 39), 0, Stage::Legacy),
            (cap(0b0100, 40), SMTS | SLTS, Stage::ScalableSecond),
            (cap(0b1000, 57), SMTS | SLTS | FLTS, Stage::ScalableSecond),
            (cap(SAGAW_39_48, 48), SMTS | FLTS, Stage::ScalableFirst),
        ] {
            let flags = if mode == Stage::ScalableFirst { VTD_ATTR_FIRST_STAGE } else { 0 };
            let got = hwpt_config(c, ecap, mode, hwpt_data::VTD_ATTRS, &attrs(flags, 0), None);
            assert_eq!(got.ok(), default_config(c, mode), "cap {c:#x} ecap {ecap:#x} {mode:?}");
        }
        // domain_alloc's apertures, as the driver had them per unit.
        assert_eq!(default_config(cap(SAGAW_39_48, 48), Stage::Legacy).map(|c| c.aperture()), Some((0, (1 << 48) - 1)));
        assert_eq!(
            default_config(cap(SAGAW_39_48, 48), Stage::ScalableFirst).map(|c| c.aperture()),
            Some((0, (1 << 47) - 1))
        );
        assert_eq!(default_config(cap(0b0100, 40), Stage::Legacy).map(|c| c.aperture()), Some((0, (1 << 40) - 1)));
        assert_eq!(default_config(cap(0, 48), Stage::Legacy), None);
    }

    #[test]
    fn sagaw_preference_and_descriptions() {
        assert_eq!(sagaw_default_levels(cap(0b1110, 57)), Some(4));
        assert_eq!(sagaw_default_levels(cap(0b1010, 57)), Some(3));
        assert_eq!(sagaw_default_levels(cap(0b1000, 57)), Some(5));
        assert_eq!(sagaw_default_levels(cap(0b10001, 57)), None);
        assert_eq!(second(4, 48).describe(), "second stage, 4 levels (48-bit), snoop off");
        assert_eq!(DomainConfig { snoop: true, ..first(5) }.describe(), "first stage, 5 levels (57-bit), snoop on");
    }
}
