//! The IOAS selftest suite (`user/selftest`) through the real `iommufd`
//! syscall: every `edu` behind an IOMMU is claimed and offered to the cases
//! that need a device. KTAP output (`user.ioas.*`).
#![no_std]
#![no_main]

extern crate alloc;

use abi::DeviceInfo;
use alloc::string::String;
use alloc::vec::Vec;
use userlib::{iommufd, println, sys};

#[path = "../door.rs"]
mod door;
use door::SyscallDoor;

fn main() -> i32 {
    let mut list = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    let mut devices = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for d in list[..n.min(64)].iter().filter(|d| (d.vendor, d.device) == (0x1234, 0x11E8)) {
        if d.flags & abi::DEVICE_DMA_ALLOWED == 0 || sys::device_claim(d.bdf).is_err() {
            continue;
        }
        // Which unit is it behind? Bind once to ask, then unbind.
        let Ok(dev) = iommufd::device_bind(d.bdf) else { continue };
        let unit = iommufd::hw_info(dev, &mut []).or_else(|_| iommufd::hw_info(dev, &mut [Default::default(); 16]));
        let _ = iommufd::destroy(dev);
        let Ok(unit) = unit else { continue };
        let name = String::from(unit.name());
        let index = names.iter().position(|x| *x == name).unwrap_or_else(|| {
            names.push(name);
            names.len() - 1
        });
        devices.push((d.bdf, index));
    }
    let mut door = SyscallDoor::new(devices);
    let (_, failed, _) = ioas_selftest::run(&mut door, &mut |line| println!("{line}"));
    i32::from(failed != 0)
}

userlib::entry!(main);
