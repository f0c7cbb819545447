//! `cargo xtask bench ioas`: the generic door's map + unmap cost through the
//! real syscall, with an `edu` attached so every map and unmap reaches the
//! IOMMU, in the Linux peer's shapes and repetitions (medians): 4 KiB,
//! 256 × 4 KiB in one call, 2 MiB (2 MiB-aligned memory and IOVA: one 2M
//! leaf), 1000 separate 4 KiB maps then unmaps, the cheapest failing call;
//! then growth (256 KiB, 64 MiB, 1 GiB). An untimed first map of each size
//! has the kernel log the leaves it used; IOTLB invalidations per unmap call
//! are counted. Prints figures only, and a `RESULT` line per case for
//! `--vs-linux`.
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use userlib::{iommufd, println, sys};

const PAGE: u64 = 4096;
const RW: u32 = MAP_READABLE | MAP_WRITEABLE;

/// Nanoseconds read without a syscall (the user-readable counter, as the
/// Linux peer's vDSO `clock_gettime`), so a figure holds only the timed call.
fn now() -> u64 {
    userlib::time::now_ns()
}

fn flushes(dev: u32) -> u64 {
    iommufd::hw_info(dev, &mut [Default::default(); 16]).map(|u| u.flushes).unwrap_or(0)
}

/// One untimed map of `pages` pages with leaf reporting on (the kernel logs
/// the leaves it used), then unmapped.
fn show_leaves(ioas_id: u32, va: u64, pages: u64) -> Result<(), &'static str> {
    iommufd::set_option(ioas_id, abi::iommufd::OPTION_REPORT_LEAVES, 1).map_err(|_| "option")?;
    let at = iommufd::map(ioas_id, va, pages * PAGE, None, RW).map_err(|_| "map")?;
    iommufd::unmap(ioas_id, at, pages * PAGE).map_err(|_| "unmap")?;
    iommufd::set_option(ioas_id, abi::iommufd::OPTION_REPORT_LEAVES, 0).map_err(|_| "option")?;
    Ok(())
}

/// Most repetitions one case keeps samples for.
const MAX_REPS: usize = 1001;

/// The median of `v` (sorted in place; 0 for none).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// `warm` untimed, then `reps` timed map + unmap of `pages` pages as one
/// call each; prints the medians (human line, then a `RESULT` line that
/// `cargo xtask bench ioas --vs-linux` reads, named as the Linux peer's cases).
fn map_unmap(
    ioas_id: u32,
    dev: u32,
    pages: u64,
    warm: usize,
    reps: usize,
    name: &str,
    case: &str,
) -> Result<(), &'static str> {
    let reps = reps.min(MAX_REPS);
    let va = map_memory(pages)?;
    show_leaves(ioas_id, va, pages)?;
    let (mut maps, mut unmaps, mut pairs) = ([0u64; MAX_REPS], [0u64; MAX_REPS], [0u64; MAX_REPS]);
    let f0 = flushes(dev);
    for i in 0..warm + reps {
        let t0 = now();
        let at = iommufd::map(ioas_id, va, pages * PAGE, None, RW).map_err(|_| "map")?;
        let t1 = now();
        iommufd::unmap(ioas_id, at, pages * PAGE).map_err(|_| "unmap")?;
        let t2 = now();
        if let Some(k) = i.checked_sub(warm) {
            (maps[k], unmaps[k], pairs[k]) = (t1 - t0, t2 - t1, t2 - t0);
        }
    }
    let inv = flushes(dev) - f0;
    let runs = (warm + reps) as u64;
    let (inv_map, inv_unmap) = counted_pair(ioas_id, dev, va, pages)?;
    let (m, u, p) = (median(&mut maps[..reps]), median(&mut unmaps[..reps]), median(&mut pairs[..reps]));
    println!(
        "bench-ioas: {name:<12} map {m:>9} ns  unmap {u:>9} ns  map+unmap per 4K {:>7} ns  invalidations map {inv_map} unmap {inv_unmap} (per pair {}.{:02})",
        p / pages,
        inv / runs,
        inv * 100 / runs % 100
    );
    println!(
        "RESULT case={case} pages4k={pages} reps={reps} map_ns={m} unmap_ns={u} pair_ns={p} pair_ns_per_4k={} invalidations_per_pair_x100={} invalidations_map={inv_map} invalidations_unmap={inv_unmap}",
        p / pages,
        inv * 100 / runs
    );
    unmap_memory(va, pages)?;
    Ok(())
}

/// One untimed map and unmap of `pages` pages with the unit's invalidation
/// count read around each: (invalidations the map issued, the unmap's). Each
/// invalidation is one command and one completion wait (VT-d: the IOTLB
/// descriptor and a wait descriptor), so this is both counts per call.
fn counted_pair(ioas_id: u32, dev: u32, va: u64, pages: u64) -> Result<(u64, u64), &'static str> {
    let f0 = flushes(dev);
    let at = iommufd::map(ioas_id, va, pages * PAGE, None, RW).map_err(|_| "map")?;
    let f1 = flushes(dev);
    iommufd::unmap(ioas_id, at, pages * PAGE).map_err(|_| "unmap")?;
    Ok((f1 - f0, flushes(dev) - f1))
}

/// The median time (ns) of `reps` timed calls of `call`, one syscall each.
fn median_call(reps: usize, mut call: impl FnMut() -> Result<(), &'static str>) -> Result<u64, &'static str> {
    let reps = reps.min(MAX_REPS);
    let mut t = [0u64; MAX_REPS];
    for slot in t.iter_mut().take(reps) {
        let t0 = now();
        call()?;
        *slot = now() - t0;
    }
    Ok(median(&mut t[..reps]))
}

/// The cheapest failing IOAS call: destroying an id that does not exist
/// (`ENOENT`; the Linux peer's `null_ioctl_destroy_enoent`).
fn error_path(reps: usize) -> Result<(), &'static str> {
    let ns = median_call(reps, || match iommufd::destroy(u32::MAX) {
        Err(abi::Errno::ENOENT) => Ok(()),
        _ => Err("destroy of an unknown id did not answer ENOENT"),
    })?;
    let reps = reps.min(MAX_REPS);
    println!("bench-ioas: error path   destroy of an unknown id {ns:>7} ns");
    println!("RESULT case=error_path reps={reps} ns={ns}");
    Ok(())
}

/// The floor under every figure: the cheapest syscall there is
/// (`clock_counter`, which takes no lock and touches no user memory), timed
/// as [`error_path`] is. A reference, not a shape compared with Linux.
fn null_syscall(reps: usize) -> Result<(), &'static str> {
    let ns = median_call(reps, || sys::clock_counter().map(|_| ()).map_err(|_| "clock_counter"))?;
    let reps = reps.min(MAX_REPS);
    println!("bench-ioas: null syscall clock_counter      {ns:>7} ns");
    println!("RESULT case=null_syscall reps={reps} ns={ns}");
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

/// `n` separate 4 KiB maps, then their unmaps, `reps` times after one warm-up
/// round; the medians of the per-call averages.
fn separate(ioas_id: u32, dev: u32, n: u64, reps: usize) -> Result<(), &'static str> {
    const MAX_ROUNDS: usize = 16;
    let reps = reps.min(MAX_ROUNDS);
    let va = sys::mem_map(0, n * PAGE, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| "mem_map")?;
    let mut iovas = [0u64; 1000];
    let (mut maps, mut unmaps) = ([0u64; MAX_ROUNDS], [0u64; MAX_ROUNDS]);
    let f0 = flushes(dev);
    for round in 0..=reps {
        let t0 = now();
        for (i, slot) in iovas.iter_mut().enumerate().take(n as usize) {
            *slot = iommufd::map(ioas_id, va + i as u64 * PAGE, PAGE, None, RW).map_err(|_| "map")?;
        }
        let t1 = now();
        for &at in iovas.iter().take(n as usize) {
            iommufd::unmap(ioas_id, at, PAGE).map_err(|_| "unmap")?;
        }
        let t2 = now();
        if let Some(k) = round.checked_sub(1) {
            (maps[k], unmaps[k]) = ((t1 - t0) / n, (t2 - t1) / n);
        }
    }
    let inv = flushes(dev) - f0;
    let (m, u) = (median(&mut maps[..reps]), median(&mut unmaps[..reps]));
    let calls = n * (reps as u64 + 1);
    println!(
        "bench-ioas: {n} x 4K      map {m:>9} ns  unmap {u:>9} ns  (per call)  invalidations per map+unmap {}",
        inv / calls
    );
    println!(
        "RESULT case=d_1000x4k pages4k={n} reps={reps} map_ns={m} unmap_ns={u} pair_ns={} pair_ns_per_4k={} invalidations_per_pair_x100={}",
        m + u,
        m + u,
        inv * 100 / calls
    );
    sys::mem_unmap(va, n * PAGE).map_err(|_| "mem_unmap")?;
    Ok(())
}

fn bench() -> Result<(), &'static str> {
    let edu = edu_driver::first_behind_iommu().ok_or("no edu behind an IOMMU")?;
    sys::device_claim(edu.bdf).map_err(|_| "claim")?;
    let dev = iommufd::device_bind(edu.bdf).map_err(|_| "bind")?;
    let unit = iommufd::hw_info(dev, &mut [Default::default(); 16]).map_err(|_| "hw_info")?;
    let ioas_id = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    iommufd::device_attach(dev, ioas_id).map_err(|_| "attach")?;
    println!("bench-ioas: unit {} ({}), through the iommufd syscall, TCG", unit.name(), unit.kind_name());
    // The shapes and repetitions of the Linux peer (`../shared/peer/linux-iommufd`).
    map_unmap(ioas_id, dev, 1, 3, 1001, "4K", "a_1x4k")?;
    map_unmap(ioas_id, dev, 256, 3, 201, "256 x 4K", "b_256x4k")?;
    // 2 MiB-aligned physically contiguous memory: one 2M leaf (Linux: hugetlb).
    map_unmap(ioas_id, dev, 512, 3, 201, "2M", "c_2m")?;
    separate(ioas_id, dev, 1000, 11)?;
    error_path(1001)?;
    null_syscall(1001)?;
    // The same 4 KiB on an IOAS with no device: iommufd's own bookkeeping
    // and the pin, no IOMMU (Linux's `iommufd-nodomain` backend).
    let bare = iommufd::ioas_alloc().map_err(|_| "ioas_alloc")?;
    map_unmap(bare, dev, 1, 3, 1001, "4K no dev", "a_1x4k_nodomain")?;
    iommufd::destroy(bare).map_err(|_| "destroy")?;
    // Growth: the cost per 4 KiB as maps get larger.
    map_unmap(ioas_id, dev, 64, 1, 51, "256K", "g_256k")?;
    map_unmap(ioas_id, dev, 16_384, 1, 5, "64M", "g_64m")?;
    map_unmap(ioas_id, dev, 262_144, 1, 3, "1G", "g_1g")?;
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
