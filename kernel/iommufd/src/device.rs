//! Device objects (../shared/DESIGN.md §2): a PCI function the task claimed,
//! with its unit and the ID the unit knows it by. Bound, it is blocked (its
//! unit's default: DMA stops) until attached to an IOAS (through that IOAS's
//! automatic HWPT for the device's unit) or to a HWPT; detach blocks it again.
//! An attach replaces the device's domain with one `attach` call: the device
//! is never left untranslated nor on a freed domain.

use crate::error::errno;
use crate::object::{Device, HwptKind, Iommufd, Kind, Object, Units};
use abi::Errno;
use iommu::DeviceId;

impl Iommufd {
    /// Binds a device the task owns: `unit` and `id` say where it sits. It is
    /// blocked (again) until it is attached.
    pub fn device_bind(&mut self, units: Units<'_>, unit: usize, id: DeviceId) -> Result<u32, Errno> {
        if unit >= units.len() || !units[unit].serves(id) {
            return Err(Errno::ENOENT);
        }
        let bound = self.objects.values().any(|o| matches!(o, Object::Device(d) if d.unit == unit && d.id == id));
        if bound {
            return Err(Errno::EBUSY);
        }
        let obj = self.reserve_id()?;
        if let Err(e) = units[unit].detach(id) {
            self.abort(obj);
            return Err(errno(e));
        }
        Ok(self.publish(obj, Object::Device(Device { unit, id, hwpt: None })))
    }

    /// Attaches device `dev` to `ioas` (through the IOAS's HWPT for the
    /// device's unit, created and filled on first use) or to a HWPT directly;
    /// returns the HWPT id.
    pub fn device_attach(&mut self, units: Units<'_>, dev: u32, pt: u32) -> Result<u32, Errno> {
        let d = self.device(dev)?;
        let (unit, id, old) = (d.unit, d.id, d.hwpt);
        let hwpt = match self.kind(pt) {
            Some(Kind::Hwpt) => {
                let h = self.hwpt(pt).ok_or(Errno::ENOENT)?;
                if h.unit != unit {
                    return Err(Errno::EINVAL);
                }
                if old != Some(pt) {
                    self.check_fits(units, h.ioas, &[(unit, id)])?;
                }
                pt
            }
            Some(Kind::Ioas) => {
                self.check_fits(units, pt, &[(unit, id)])?;
                let i = self.ioas(pt)?;
                let existing = i
                    .hwpts
                    .iter()
                    .copied()
                    .find(|&h| self.hwpt(h).is_some_and(|h| h.unit == unit && matches!(h.kind, HwptKind::Auto)));
                match existing {
                    Some(h) => h,
                    None => self.hwpt_create(units, unit, pt)?,
                }
            }
            // An id of another kind is EINVAL, as everywhere; no object at all ENOENT.
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::ENOENT),
        };
        if old == Some(hwpt) {
            return Ok(hwpt);
        }
        let domain = self.hwpt(hwpt).map(|h| h.domain).ok_or(Errno::ENOENT)?;
        if let Err(e) = units[unit].attach(id, domain) {
            self.release_hwpt_if_unused(units, hwpt);
            return Err(errno(e));
        }
        if let Some(Object::Hwpt(h)) = self.objects.get_mut(&hwpt) {
            h.devices += 1;
        }
        if let Some(Object::Device(d)) = self.objects.get_mut(&dev) {
            d.hwpt = Some(hwpt);
        }
        self.topology_changed();
        if let Some(old) = old {
            self.drop_hwpt_ref(units, old);
        }
        Ok(hwpt)
    }

    /// Detaches `dev`: its DMA is blocked until it is attached again.
    pub fn device_detach(&mut self, units: Units<'_>, dev: u32) -> Result<(), Errno> {
        let d = self.device(dev)?;
        let (unit, id, hwpt) = (d.unit, d.id, d.hwpt);
        let Some(hwpt) = hwpt else { return Err(Errno::EINVAL) };
        units[unit].detach(id).map_err(errno)?;
        if let Some(Object::Device(d)) = self.objects.get_mut(&dev) {
            d.hwpt = None;
        }
        self.topology_changed();
        self.drop_hwpt_ref(units, hwpt);
        Ok(())
    }

    /// The unit a bound device sits behind, and the ID it knows it by.
    pub fn device_unit(&self, dev: u32) -> Result<(usize, DeviceId), Errno> {
        let d = self.device(dev)?;
        Ok((d.unit, d.id))
    }
}
