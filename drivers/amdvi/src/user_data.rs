//! The hardware-specific user data this driver takes: `HwptAmdviAttrs`
//! (`hwpt_data::AMDVI_ATTRS`), the attributes of a kernel-managed HWPT.

use abi::iommufd::HwptAmdviAttrs;
use iommu::Error;

/// Decodes `HwptAmdviAttrs` as the task gave it: shorter data is read as if
/// zero-filled, longer data must be zero beyond the struct
/// ([`iommu::user_data::read_struct`]); `reserved` must be zero. Nothing
/// else is checked here.
pub fn decode_attrs(data: &[u8]) -> Result<HwptAmdviAttrs, Error> {
    let attrs = iommu::user_data::read_struct::<HwptAmdviAttrs>(data).map_err(|e| {
        log::warn!(
            "amdvi: HWPT refused: {} bytes of driver data, non-zero beyond the {} of HwptAmdviAttrs",
            data.len(),
            e.known
        );
        Error::InvalidData("non-zero bytes beyond HwptAmdviAttrs")
    })?;
    if attrs.reserved != 0 {
        log::warn!("amdvi: HWPT refused: HwptAmdviAttrs.reserved = {:#x}, must be 0", attrs.reserved);
        return Err(Error::InvalidData("reserved"));
    }
    Ok(attrs)
}
