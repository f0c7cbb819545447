//! `cargo xtask bench ioas`: the generic door's map + unmap cost through the
//! real syscall, with an `edu` attached so every map and unmap reaches the
//! IOMMU: 4 KiB, 256 × 4 KiB in one call, 2 MiB and 1 GiB (2 MiB-aligned
//! memory and IOVA; an untimed first map of each size has the kernel log the
//! leaves it used), 1000 separate 4 KiB maps then unmaps, and IOTLB
//! invalidations per unmap call. Prints figures only.
#![no_std]
#![no_main]

use abi::ioas::{MAP_READABLE, MAP_WRITEABLE};
use abi::DeviceInfo;
use userlib::{ioas, println, sys};

const PAGE: u64 = 4096;
const RW: u32 = MAP_READABLE | MAP_WRITEABLE;

fn now() -> u64 {
    sys::clock().unwrap_or(0)
}

fn flushes(dev: u32) -> u64 {
    ioas::hw_info(dev, &mut [Default::default(); 16]).map(|u| u.flushes).unwrap_or(0)
}

/// One untimed map of `pages` pages with leaf reporting on (the kernel logs
/// the leaves it used), then unmapped.
fn show_leaves(ioas_id: u32, va: u64, pages: u64) -> Result<(), &'static str> {
    ioas::set_option(ioas_id, abi::ioas::OPTION_REPORT_LEAVES, 1).map_err(|_| "option")?;
    let at = ioas::map(ioas_id, va, pages * PAGE, None, RW).map_err(|_| "map")?;
    ioas::unmap(ioas_id, at, pages * PAGE).map_err(|_| "unmap")?;
    ioas::set_option(ioas_id, abi::ioas::OPTION_REPORT_LEAVES, 0).map_err(|_| "option")?;
    Ok(())
}

/// `reps` times map + unmap of `pages` pages as one call each.
fn map_unmap(ioas_id: u32, dev: u32, pages: u64, reps: u64, name: &str) -> Result<(), &'static str> {
    let va = map_memory(pages)?;
    show_leaves(ioas_id, va, pages)?;
    let (mut map_ns, mut unmap_ns) = (0, 0);
    let f0 = flushes(dev);
    for _ in 0..reps {
        let t0 = now();
        let at = ioas::map(ioas_id, va, pages * PAGE, None, RW).map_err(|_| "map")?;
        let t1 = now();
        ioas::unmap(ioas_id, at, pages * PAGE).map_err(|_| "unmap")?;
        let t2 = now();
        map_ns += t1 - t0;
        unmap_ns += t2 - t1;
    }
    let inv = flushes(dev) - f0;
    let (m, u) = (map_ns / reps, unmap_ns / reps);
    println!(
        "bench-ioas: {name:<12} map {m:>9} ns  unmap {u:>9} ns  map+unmap per 4K {:>7} ns  invalidations/unmap {}.{:02}",
        (m + u) / pages,
        inv / reps,
        inv * 100 / reps % 100
    );
    unmap_memory(va, pages)?;
    Ok(())
}

/// Task memory for `pages` pages in calls of at most 256 MiB (the per-call
/// limit), at consecutive addresses.
fn map_memory(pages: u64) -> Result<u64, &'static str> {
    const CHUNK: u64 = 65_536;
    let rw = abi::PROT_READ | abi::PROT_WRITE;
    let va = sys::mem_map(0, pages.min(CHUNK) * PAGE, rw).map_err(|_| "mem_map")?;
    let mut done = pages.min(CHUNK);
    while done < pages {
        let n = (pages - done).min(CHUNK);
        sys::mem_map(va + done * PAGE, n * PAGE, rw).map_err(|_| "mem_map (more memory needed)")?;
        done += n;
    }
    Ok(va)
}

fn unmap_memory(va: u64, pages: u64) -> Result<(), &'static str> {
    const CHUNK: u64 = 65_536;
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(CHUNK);
        sys::mem_unmap(va + done * PAGE, n * PAGE).map_err(|_| "mem_unmap")?;
        done += n;
    }
    Ok(())
}

fn separate(ioas_id: u32, dev: u32, n: u64) -> Result<(), &'static str> {
    let va = sys::mem_map(0, n * PAGE, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map")?;
    let mut iovas = [0u64; 1000];
    let t0 = now();
    for (i, slot) in iovas.iter_mut().enumerate().take(n as usize) {
        *slot = ioas::map(ioas_id, va + i as u64 * PAGE, PAGE, None, RW).map_err(|_| "map")?;
    }
    let t1 = now();
    let f0 = flushes(dev);
    for &at in iovas.iter().take(n as usize) {
        ioas::unmap(ioas_id, at, PAGE).map_err(|_| "unmap")?;
    }
    let t2 = now();
    let inv = flushes(dev) - f0;
    println!(
        "bench-ioas: {n} x 4K      map {:>9} ns  unmap {:>9} ns  (per call)  invalidations/unmap {}",
        (t1 - t0) / n,
        (t2 - t1) / n,
        inv / n
    );
    sys::mem_unmap(va, n * PAGE).map_err(|_| "mem_unmap")?;
    Ok(())
}

fn bench() -> Result<(), &'static str> {
    let mut list = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).map_err(|_| "device_list")? as usize;
    let edu = list[..n.min(64)]
        .iter()
        .find(|d| (d.vendor, d.device) == (0x1234, 0x11E8) && d.flags & abi::DEVICE_DMA_ALLOWED != 0)
        .ok_or("no edu behind an IOMMU")?;
    sys::device_claim(edu.bdf).map_err(|_| "claim")?;
    let dev = ioas::device_bind(edu.bdf).map_err(|_| "bind")?;
    let unit = ioas::hw_info(dev, &mut [Default::default(); 16]).map_err(|_| "hw_info")?;
    let ioas_id = ioas::ioas_alloc().map_err(|_| "ioas_alloc")?;
    ioas::device_attach(dev, ioas_id).map_err(|_| "attach")?;
    println!("bench-ioas: unit {} ({}), through the iommufd syscall, TCG", unit.name(), unit.kind_name());
    map_unmap(ioas_id, dev, 1, 200, "4K")?;
    map_unmap(ioas_id, dev, 256, 20, "256 x 4K")?;
    map_unmap(ioas_id, dev, 512, 20, "2M")?;
    map_unmap(ioas_id, dev, 262_144, 3, "1G")?;
    separate(ioas_id, dev, 1000)?;
    Ok(())
}

fn main() -> i32 {
    match bench() {
        Ok(()) => {
            println!("bench-ioas: done");
            0
        }
        Err(e) => {
            println!("bench-ioas: failed: {e}");
            1
        }
    }
}

userlib::entry!(main);
