//! The IOAS object model (../shared/DESIGN.md §2): one per task, behind both
//! syscall doors.
//!
//! Objects are named by `u32` ids in a per-task table: **IOAS** (an IOVA space:
//! areas of pinned user pages), **HWPT** (a domain of one IOMMU unit: mirroring
//! an IOAS, or a nested child shadowing a user's stage-1 table), **DEVICE** (a
//! PCI function the task claimed, with its unit and the ID the unit knows it
//! by), **FAULT QUEUE** (faults of the devices of the HWPTs routed to it).
//! Everything is generic over [`iommu::Iommu`] and a [`Memory`] that pins user
//! pages, so the whole model is tested on the host against
//! `iommu::mock::MockIommu`.
//!
//! Rules kept here (generic door):
//! - Two-phase create: an id is published only when its object is complete.
//! - A map pins its pages (one pin per page per mapping) and mirrors them into
//!   every HWPT of the IOAS; a failure anywhere undoes all of it.
//! - Unmap removes whole areas only (a range that cuts an area is an error,
//!   never a split), flushes each HWPT once per call, then unpins.
//! - Usable IOVAs: everything above page 0, narrowed to each attached unit's
//!   aperture, minus each attached device's reserved regions. Ranges given to
//!   `allow_iovas` must stay usable: an attach that would narrow them fails.
//! - A bound device not attached to an IOAS is blocked (its unit's default,
//!   [`Iommu::detach`](iommu::Iommu::detach)): DMA stops. Bind, detach and destroy all block it.
//! - [`Iommufd::close`] (task exit) blocks every device before any page is
//!   unpinned, then frees nested children, then their parents, then unmaps and
//!   unpins every IOAS.
//! - **Quarantine.** Pages are unpinned only after the unit confirmed it can
//!   no longer reach them. If a flush fails during unmap, that call's pages
//!   are quarantined ([`Memory::quarantine`]) instead; if a device cannot be
//!   blocked at exit, every page of the task's IOAS is.
//! - An automatic HWPT (made by an attach to an IOAS) goes with its last device.
//!
//! Rules of the hardware-specific door ([`Iommufd::hwpt_alloc`] and friends):
//! - A HWPT is created on the unit of the device named at creation; attaching
//!   a device of another unit is `EINVAL`.
//! - A kernel-managed user HWPT ([`HwptData::Default`], [`HwptData::Driver`])
//!   mirrors its IOAS like an automatic one but lives until `destroy`
//!   (`EBUSY` while a device is attached or a nested child hangs off it).
//!   Driver data goes to the unit unchanged; a unit that cannot honour it fails
//!   the call (unlike the generic door).
//! - A nested child ([`HwptData::Stage1X86`]) needs a parent HWPT created with
//!   [`hwpt_flags::NEST_PARENT`]. Its stage 1 is the user's table in the parent
//!   IOAS, shadowed into a kernel-owned paging domain (any unit kind): see
//!   [`shadow`]. The user's table is read at creation and at each
//!   [`Iommufd::hwpt_invalidate`] entry, never otherwise: a change to the
//!   table, or a new map in the parent IOAS, is seen after an invalidation
//!   (as on hardware). An unmap in the parent IOAS drops the child pages
//!   pointing into it (unmapped and flushed) before the pages are unpinned.
//! - Attach to any HWPT replaces the device's domain with one `attach` call:
//!   the device is never left untranslated nor on a freed domain.
//! - An IOAS with a HWPT on it is `EBUSY` for `destroy`; so is a fault queue
//!   a HWPT routes to.
//! - Faults of a device whose HWPT routes to a queue go to that queue
//!   ([`Iommufd::deliver_fault`]); a full queue drops and counts them.
//!
//! Heap (issue 18): every allocation a public method or
//! [`syscall::dispatch`] makes goes through the `fallible` crate and answers
//! `ENOMEM` with the table, the units and the task's pins as they were
//! before the call. Teardown ([`Iommufd::unmap`], `destroy`, `close`)
//! allocates nothing, so it cannot be stopped half-way by a full heap. The
//! object table and the areas are [`fallible::TryMap`]s.
//!
//! Where things are (each file uses only files listed before it, so the
//! dependencies point one way):
//! - `error`: the errno of an IOMMU error or a full heap;
//!   `ranges`: sets of IOVA ranges.
//! - `pages`: pinned user pages ([`Memory`]), the runs an IOAS maps, and how
//!   they get into a unit's domain and out again.
//! - [`shadow`]: shadowing a user's stage-1 table into a nested child.
//! - `object`: the object table ([`Iommufd`]): ids, [`Kind`]s, the record
//!   each kind holds, lookup, [`Quota`], the two-phase create.
//! - `ioas`: the IOAS: usable IOVA ranges, map / unmap / copy, hints.
//! - `hwpt`: HWPTs: automatic, user ([`Iommufd::hwpt_alloc`]), nested
//!   (shadowed or hardware-nested), invalidation.
//! - `device`: devices: bind, attach, detach (blocking).
//! - `fault`: fault queues: creation, delivery, reading.
//! - this file: the rules above that span every kind ([`Iommufd::destroy`],
//!   [`Iommufd::close`]) and the crate's public names.
//! - [`abi_glue`] and [`syscall`]: the ABI structs and the byte-level
//!   `iommufd(op, ptr)` syscall over all of it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi_glue;
mod device;
mod error;
mod fault;
mod hwpt;
mod ioas;
mod object;
mod pages;
pub mod ranges;
pub mod shadow;
pub mod syscall;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::errno;
pub use fault::MAX_FAULT_QUEUE;
pub use hwpt::{hwpt_flags, HwptAlloc, HwptData, Stage1Invalidation};
pub use ioas::{option, CopyArgs, IovaChoice, Leaves, MapArgs};
pub use object::{FaultRecord, Hints, Iommufd, Kind, Quota, Units};
pub use pages::{Memory, Run, Runs, PAGE};
pub use shadow::{ShadowLimits, ShadowStats};

use abi::Errno;
use object::{Device, Object};

impl Iommufd {
    /// Destroys any object: an IOAS with attached devices or any HWPT on it,
    /// a HWPT with devices or nested children, a fault queue a HWPT routes to
    /// are `EBUSY`; destroying a device detaches and unbinds it (it stays
    /// blocked; if the unit cannot block it, the object stays and the error
    /// is returned).
    pub fn destroy(&mut self, units: Units<'_>, mem: &mut dyn Memory, id: u32) -> Result<(), Errno> {
        match self.kind(id) {
            None => Err(Errno::ENOENT),
            Some(Kind::Ioas) => {
                let has_hwpt = self.objects.values().any(|o| matches!(o, Object::Hwpt(h) if h.ioas == id));
                if has_hwpt || self.attached_devices(id).next().is_some() {
                    return Err(Errno::EBUSY);
                }
                if self.ioas(id)?.areas.is_empty() {
                    self.objects.remove(&id);
                    return Ok(());
                }
                let r = self.unmap(units, mem, id, 0, u64::MAX);
                self.objects.remove(&id);
                r.map(|_| ())
            }
            Some(Kind::Hwpt) => {
                if self.hwpt(id).is_some_and(|h| h.devices > 0) || self.has_children(id) {
                    return Err(Errno::EBUSY);
                }
                self.free_hwpt(units, id);
                Ok(())
            }
            Some(Kind::FaultQueue) => {
                if self.objects.values().any(|o| matches!(o, Object::Hwpt(h) if h.fault_queue == Some(id))) {
                    return Err(Errno::EBUSY);
                }
                self.objects.remove(&id);
                Ok(())
            }
            Some(Kind::Device) => {
                // Blocked by one detach: from its HWPT when attached (a second
                // detach that failed would leave the call failed with the
                // device already moved — fail-nth `destroy_attached_device`).
                if self.device(id)?.hwpt.is_some() {
                    self.device_detach(units, id)?;
                } else {
                    let (unit, dev) = self.device_unit(id)?;
                    units[unit].detach(dev).map_err(errno)?;
                }
                self.objects.remove(&id);
                Ok(())
            }
        }
    }

    /// Task exit: every device blocked first (no DMA can reach a page after
    /// this), then nested children freed, then the HWPTs left (their parents),
    /// then every IOAS unmapped and unpinned, devices unbound, blocked domains
    /// freed. Nothing is left, and nothing is allocated on the way.
    pub fn close(&mut self, units: Units<'_>, mem: &mut dyn Memory) {
        let is_device = |o: &Object| matches!(o, Object::Device(_));
        let mut at = None;
        while let Some(d) = self.next_id_where(at, is_device) {
            at = Some(d);
            let Ok(&Device { unit, id, hwpt }) = self.device(d) else { continue };
            let blocked = match hwpt {
                Some(_) => self.device_detach(units, d).is_ok(),
                None => units[unit].detach(id).is_ok(),
            };
            if !blocked {
                log::error!(
                    "iommufd: device {:#x} of unit {unit} could not be blocked: the task's pages are quarantined",
                    id.0
                );
                self.poisoned = true;
            }
        }
        // Nested children first, then the HWPTs they hang off.
        for nested in [true, false] {
            let mut at = None;
            while let Some(h) = self.next_id_where(at, |o| matches!(o, Object::Hwpt(h) if h.mirrors() != nested)) {
                at = Some(h);
                self.free_hwpt(units, h);
            }
        }
        let mut at = None;
        while let Some(i) = self.next_id_where(at, |o| matches!(o, Object::Ioas(_))) {
            at = Some(i);
            let _ = self.destroy(units, mem, i);
        }
        let mut at = None;
        while let Some(d) = self.next_id_where(at, is_device) {
            at = Some(d);
            let _ = self.destroy(units, mem, d);
        }
        self.objects.clear();
    }
}

/// Heap fail-nth for every unit test of the crate: allocations fail only
/// where a test arms it (`fail_nth_tests`), and otherwise go to the system.
#[cfg(test)]
#[global_allocator]
static HEAP: fallible::testing::FailingAlloc = fallible::testing::FailingAlloc;

#[cfg(test)]
mod fail_nth_tests;
#[cfg(test)]
mod hw_tests;
#[cfg(test)]
mod tests;
