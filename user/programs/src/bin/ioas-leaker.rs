//! Used by the kernel test `ioas.task_exit_releases_everything`: builds IOAS
//! state (an IOAS with mappings, a copy, a bound `edu` when one is behind an
//! IOMMU, attached to a nested child HWPT whose stage-1 tables live in the
//! mapped pages, over a NEST_PARENT HWPT, with a fault queue), unmaps one
//! DMA-mapped page from its own address space, and exits without tearing
//! anything down. The kernel must clean up.
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::DeviceInfo;
use userlib::{iommufd, sys};

fn main() -> i32 {
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let Ok(a) = iommufd::ioas_alloc() else { return 1 };
    let Ok(b) = iommufd::ioas_alloc() else { return 2 };
    let Ok(buf) = sys::mem_map(0, 8 * 4096, abi::PROT_READ | abi::PROT_WRITE) else { return 3 };
    let mut list = [DeviceInfo::default(); 64];
    let mut dev = None;
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    if let Some(edu) = list[..n.min(64)]
        .iter()
        .find(|d| (d.vendor, d.device) == (0x1234, 0x11E8) && d.flags & abi::DEVICE_DMA_ALLOWED != 0)
    {
        if sys::device_claim(edu.bdf).is_ok() {
            if let Ok(d) = iommufd::device_bind(edu.bdf) {
                let _ = iommufd::device_attach(d, a);
                dev = Some(d);
            }
        }
    }
    let Ok(at) = iommufd::map(a, buf, 8 * 4096, None, rw) else { return 4 };
    if iommufd::copy(b, a, at, 4 * 4096, None, rw).is_err() {
        return 5;
    }
    if let Some(dev) = dev {
        // Hardware-specific door: a nested child with an (empty) stage 1 at
        // the first mapped page, faults routed to a queue, the device on it.
        let s1 = abi::iommufd::HwptVtdS1 { pgtbl_addr: at, addr_width: 48, ..Default::default() };
        let nested =
            iommufd::hwpt_alloc(dev, a, abi::iommufd::HWPT_ALLOC_NEST_PARENT, abi::iommufd::hwpt_data::NONE, &[], None)
                .and_then(|parent| {
                    let queue = iommufd::fault_queue_alloc(16)?;
                    let data = zerocopy::IntoBytes::as_bytes(&s1);
                    iommufd::hwpt_alloc(dev, parent, 0, abi::iommufd::hwpt_data::VTD_S1, data, Some(queue))
                })
                .and_then(|child| iommufd::device_attach(dev, child));
        if nested.is_err() {
            return 7;
        }
    }
    // The first page stays DMA-mapped while the task lets go of it.
    if sys::mem_unmap(buf, 4096).is_err() {
        return 6;
    }
    0
}

userlib::entry!(main);
