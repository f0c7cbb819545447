//! The other task of `test-isolation`: claims the first `edu` behind an
//! IOMMU, attaches it to an IOAS mapping one page, starts DMA into it, and
//! exits without cleaning up, so the kernel's exit path must stop the DMA
//! (Bus Master off, device blocked, flush completed) before it frees the page.
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use edu_driver::Edu;
use userlib::{iommufd, sys};

fn main() -> i32 {
    let Some(edu) = edu_driver::first_behind_iommu() else { return 1 };
    let Ok(dev) = Edu::open(edu.bdf) else { return 2 };
    let Ok(page) = sys::mem_map(0, 4096, 3) else { return 3 };
    let Ok(space) = iommufd::ioas_alloc() else { return 4 };
    let Ok(iova) = iommufd::map(space, page, 4096, None, MAP_READABLE | MAP_WRITEABLE) else { return 5 };
    let Ok(id) = iommufd::device_bind(edu.bdf) else { return 6 };
    if iommufd::device_attach(id, space).is_err() {
        return 7;
    }
    let _ = dev.dma(iova, true);
    // Hold the device a while so the parent sees EBUSY, then exit with it attached.
    let _ = sys::sleep(200_000_000);
    dev.start_dma(iova, true);
    // Leave the function with memory decoding off: the kernel must put the
    // command register back at release, or the next owner's BAR reads 0.
    let cmd = sys::device_config_read(edu.bdf, 4, 2).unwrap_or(0);
    let _ = sys::device_config_write(edu.bdf, 4, 2, cmd & !2);
    0
}

userlib::entry!(main);
