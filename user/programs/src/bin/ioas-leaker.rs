//! Used by the kernel test `ioas.task_exit_releases_everything`: builds IOAS
//! state (an IOAS with mappings, a copy, a bound and attached `edu` when one
//! is behind an IOMMU), unmaps one DMA-mapped page from its own address space,
//! and exits without tearing anything down. The kernel must clean up.
#![no_std]
#![no_main]

use abi::ioas::{MAP_READABLE, MAP_WRITEABLE};
use abi::DeviceInfo;
use userlib::{ioas, sys};

fn main() -> i32 {
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let Ok(a) = ioas::ioas_alloc() else { return 1 };
    let Ok(b) = ioas::ioas_alloc() else { return 2 };
    let Ok(buf) = sys::mem_map(0, 8 * 4096, abi::PROT_READ | abi::PROT_WRITE) else { return 3 };
    let mut list = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    if let Some(edu) = list[..n.min(64)]
        .iter()
        .find(|d| (d.vendor, d.device) == (0x1234, 0x11E8) && d.flags & abi::DEVICE_BEHIND_IOMMU != 0)
    {
        if sys::device_claim(edu.bdf).is_ok() {
            if let Ok(dev) = ioas::device_bind(edu.bdf) {
                let _ = ioas::device_attach(dev, a);
            }
        }
    }
    let Ok(at) = ioas::map(a, buf, 8 * 4096, None, rw) else { return 4 };
    if ioas::copy(b, a, at, 4 * 4096, None, rw).is_err() {
        return 5;
    }
    // The first page stays DMA-mapped while the task lets go of it.
    if sys::mem_unmap(buf, 4096).is_err() {
        return 6;
    }
    0
}

userlib::entry!(main);
