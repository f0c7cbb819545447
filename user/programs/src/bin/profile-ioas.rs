//! A workload for `cargo xtask profile`: each of `bench-ioas`'s shapes run
//! long enough (a few hundred milliseconds of guest time) for a sampling
//! profiler to see where the time goes, between console markers
//! `profile-ioas: <shape> start` and `profile-ioas: <shape> end`:
//! `4k`, `4k-no-device`, `error-path`, `1000x4k`, `256x4k`, `2m`.
//!
//! ```text
//! cargo xtask profile --init profile-ioas --from "profile-ioas: 4k start" --until "profile-ioas: 4k end"
//! ```
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use userlib::{iommufd, println, sys};

const PAGE: u64 = 4096;
const RW: u32 = MAP_READABLE | MAP_WRITEABLE;

/// `reps` map + unmap pairs of `pages` pages as one call each.
fn pairs(name: &str, ioas: u32, va: u64, pages: u64, reps: u32) -> Result<(), &'static str> {
    println!("profile-ioas: {name} start");
    for _ in 0..reps {
        let at = iommufd::map(ioas, va, pages * PAGE, None, RW).map_err(|_| "map")?;
        iommufd::unmap(ioas, at, pages * PAGE).map_err(|_| "unmap")?;
    }
    println!("profile-ioas: {name} end");
    Ok(())
}

fn run() -> Result<(), &'static str> {
    let edu = edu_driver::first_behind_iommu().ok_or("no edu behind an IOMMU")?;
    sys::device_claim(edu.bdf).map_err(|_| "claim")?;
    let dev = iommufd::device_bind(edu.bdf).map_err(|_| "bind")?;
    let ioas = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    iommufd::device_attach(dev, ioas).map_err(|_| "attach")?;
    let bare = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    let va = sys::mem_map(0, 1024 * PAGE, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map")?;
    pairs("4k", ioas, va, 1, 20_000)?;
    pairs("4k-no-device", bare, va, 1, 20_000)?;
    println!("profile-ioas: error-path start");
    for _ in 0..100_000 {
        if iommufd::destroy(u32::MAX) != Err(abi::Errno::ENOENT) {
            return Err("destroy of an unknown id did not answer ENOENT");
        }
    }
    println!("profile-ioas: error-path end");
    println!("profile-ioas: 1000x4k start");
    let mut iovas = [0u64; 1000];
    for _ in 0..20 {
        for (i, slot) in iovas.iter_mut().enumerate() {
            *slot = iommufd::map(ioas, va + i as u64 * PAGE, PAGE, None, RW).map_err(|_| "map")?;
        }
        for &at in &iovas {
            iommufd::unmap(ioas, at, PAGE).map_err(|_| "unmap")?;
        }
    }
    println!("profile-ioas: 1000x4k end");
    pairs("256x4k", ioas, va, 256, 2_000)?;
    // 2 MiB of task memory: the kernel backs it with one aligned 2 MiB run (as in bench-ioas).
    let big = sys::mem_map(0, 512 * PAGE, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map")?;
    pairs("2m", ioas, big, 512, 2_000)?;
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => {
            println!("profile-ioas: done");
            0
        }
        Err(e) => {
            println!("profile-ioas: failed: {e}");
            1
        }
    }
}

userlib::entry!(main);
