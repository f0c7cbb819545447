//! Fault queue objects (../shared/DESIGN.md §2): faults of the devices of
//! the HWPTs routed to a queue, kept for the task to read. The room of every
//! record is reserved when the queue is created, so delivering a fault (from
//! the unit's fault handling) never allocates; a full queue drops and counts.

use crate::object::{FaultQueue, FaultRecord, Iommufd, Object};
use abi::Errno;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use fallible::VecExt;

/// Most records a fault queue may hold.
pub const MAX_FAULT_QUEUE: usize = 1 << 16;

impl Iommufd {
    /// Creates a fault queue holding up to `capacity` records (1 to
    /// [`MAX_FAULT_QUEUE`], else `EINVAL`); their room is allocated now
    /// (`ENOMEM`), so delivering a fault never allocates.
    pub fn fault_queue_alloc(&mut self, capacity: usize) -> Result<u32, Errno> {
        if capacity == 0 || capacity > MAX_FAULT_QUEUE {
            return Err(Errno::EINVAL);
        }
        let held: usize = self
            .objects
            .values()
            .filter_map(|o| if let Object::FaultQueue(q) = o { Some(q.capacity) } else { None })
            .sum();
        if held + capacity > self.quota.fault_records {
            return Err(Errno::EDQUOT);
        }
        let mut records = VecDeque::new();
        records.try_reserve_exact(capacity).map_err(|_| Errno::ENOMEM)?;
        let id = self.reserve_id()?;
        let q = FaultQueue { capacity, records, overflows: 0 };
        Ok(self.publish(id, Object::FaultQueue(q)))
    }

    /// Takes a fault `unit` reported if it is this table's: the device is bound
    /// here and its HWPT routes faults to a queue. The record goes to the queue
    /// (or, the queue full, is dropped and counted). False: not ours.
    pub fn deliver_fault(&mut self, unit: usize, f: &iommu::FaultEvent) -> bool {
        let found = self.objects.iter().find_map(|(&id, o)| match o {
            Object::Device(d) if d.unit == unit && d.id == f.device => Some((id, d.hwpt)),
            _ => None,
        });
        let Some((dev_id, Some(hwpt_id))) = found else { return false };
        let Some(q) = self.hwpt(hwpt_id).and_then(|h| h.fault_queue) else { return false };
        let Some(Object::FaultQueue(queue)) = self.objects.get_mut(&q) else { return false };
        let r = FaultRecord { dev_id, hwpt_id, address: f.address, access: f.access, reason: f.reason };
        // The room was reserved at creation; should it be missing, the
        // record is dropped and counted as a full queue's would be.
        if queue.records.len() >= queue.capacity || queue.records.try_push(r).is_err() {
            queue.overflows += 1;
        }
        true
    }

    /// Takes up to `max` records from fault queue `q`, oldest first, and the
    /// number of records dropped (queue full) since the last read. `ENOMEM`
    /// takes none.
    pub fn fault_read(&mut self, q: u32, max: usize) -> Result<(Vec<FaultRecord>, u64), Errno> {
        let queue = match self.objects.get_mut(&q) {
            Some(Object::FaultQueue(queue)) => queue,
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::ENOENT),
        };
        let n = max.min(queue.records.len());
        // The room first: a record leaves the queue only into it.
        let mut records = Vec::new();
        records.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
        records.extend(queue.records.drain(..n));
        Ok((records, core::mem::take(&mut queue.overflows)))
    }
}
