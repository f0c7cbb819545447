//! Attacks on DMA and configuration isolation, run as a test (KTAP
//! `user.isolation.*`). Each step aims an `edu` function's DMA at memory it
//! was never given — the kernel's test canary frame (`test_canary`) and a
//! page of this task that is not mapped for the device — in every state of
//! the device's life but "attached", and writes configuration fields a task
//! must not touch. After each step the canary must be intact and this task's
//! page unchanged; the kernel keeps running (the next step proves it).
#![no_std]
#![no_main]

use abi::ioas::{MAP_READABLE, MAP_WRITEABLE};
use abi::{DeviceInfo, Errno};
use edu_driver::{check_that, fail, Edu, Failure};
use userlib::{ioas, println, sys};

const PAGE: u64 = 4096;

struct Ctx {
    edu: Option<DeviceInfo>,
    dev: Option<Edu>,
    canary: u64,
    /// A page of this task, never mapped for the device.
    own: u64,
}

fn canary_intact(what: &'static str) -> Result<(), Failure> {
    sys::test_canary(1).map(drop).map_err(|_| Failure::new(what))
}

fn own_page(ctx: &Ctx) -> &'static mut [u8] {
    // SAFETY: `own` is a page this task mapped read/write with mem_map and never unmaps.
    unsafe { core::slice::from_raw_parts_mut(ctx.own as *mut u8, PAGE as usize) }
}

/// edu's buffer → the canary and → this task's page's physical address is
/// unknown to us, so the page is attacked through its would-be IOVA instead
/// (the address it had when it was mapped); both must stay unchanged.
fn attack(ctx: &Ctx, edu: &Edu, iovas: &[u64], what: &'static str) -> Result<(), Failure> {
    own_page(ctx).fill(0x6B);
    edu.dma(ctx.canary, true)?;
    for &iova in iovas {
        edu.dma(iova, true)?;
    }
    canary_intact(what)?;
    check_that(own_page(ctx).iter().all(|&b| b == 0x6B), what)
}

fn setup(ctx: &mut Ctx) -> Result<(), Failure> {
    ctx.canary = sys::test_canary(0).map_err(fail("test_canary (boot with ktest=)"))?;
    // edu masks DMA addresses to 28 bits: a canary above that is out of its
    // reach anyway (aarch64 RAM starts at 1 GiB); aim at a low address then.
    if ctx.canary >= 1 << 28 {
        ctx.canary = 0x10_0000;
    }
    canary_intact("canary not intact at the start")?;
    ctx.own = sys::mem_map(0, PAGE, 3).map_err(fail("mem_map"))?;
    ctx.edu = edu_driver::first_behind_iommu();
    Ok(())
}

/// Someone else's device first: a child task claims the edu, attaches it with
/// DMA running, and exits; while it lives our claim is EBUSY; after, the
/// device is ours again and blocked (its old IOAS is gone).
fn after_owner_exit(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    sys::task_spawn("isolation-child").map_err(fail("spawn isolation-child"))?;
    // Let the child run and claim (it holds the device 200 ms after that).
    let start = sys::clock().unwrap_or(0);
    let _ = sys::sleep(50_000_000);
    match sys::device_claim(edu.bdf) {
        Err(Errno::EBUSY) => {}
        Ok(_) => return Err(Failure::new("claimed the edu while the child held it")),
        Err(e) => return Err(Failure { what: "claim while the child lives", errno: Some(e) }),
    }
    // Wait for the child to exit (its claim goes with it), up to 5 s.
    loop {
        match sys::device_claim(edu.bdf) {
            Ok(_) => break,
            Err(Errno::EBUSY) if sys::clock().unwrap_or(u64::MAX).saturating_sub(start) < 5_000_000_000 => {
                let _ = sys::sleep(10_000_000);
            }
            Err(e) => return Err(Failure { what: "claim after the child's exit", errno: Some(e) }),
        }
    }
    // Ours now (Edu::open claims again: EBUSY from our own claim is fine).
    let dev = Edu::open_claimed(edu.bdf)?;
    attack(ctx, &dev, &[0x10_0000], "DMA after its owner exited reached memory")?;
    ctx.dev = Some(dev);
    Ok(())
}

/// Claimed, bus master on, never bound or attached.
fn claimed_never_attached(ctx: &mut Ctx) -> Result<(), Failure> {
    let dev = ctx.dev.as_ref().ok_or(Failure::new("no device"))?;
    attack(ctx, dev, &[], "DMA of a claimed, never attached device reached memory")
}

/// Bound, attached to an IOAS that maps a scratch page, then detached.
fn after_detach(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let dev = ctx.dev.as_ref().ok_or(Failure::new("no device"))?;
    let scratch = sys::mem_map(0, PAGE, 3).map_err(fail("mem_map scratch"))?;
    let space = ioas::ioas_alloc().map_err(fail("ioas_alloc"))?;
    let iova = ioas::map(space, scratch, PAGE, None, MAP_READABLE | MAP_WRITEABLE).map_err(fail("map"))?;
    let id = ioas::device_bind(edu.bdf).map_err(fail("bind"))?;
    attack(ctx, dev, &[iova], "DMA of a bound, unattached device reached memory")?;
    ioas::device_attach(id, space).map_err(fail("attach"))?;
    // Attached: the mapped page is reachable (proves the DMA engine works).
    // SAFETY: `scratch` is a page this task mapped read/write.
    let s = unsafe { core::slice::from_raw_parts_mut(scratch as *mut u8, PAGE as usize) };
    s.fill(0x77);
    dev.dma(iova, false)?; // page -> edu buffer
    s.fill(0);
    dev.dma(iova, true)?; // edu buffer -> page
    check_that(s.iter().all(|&b| b == 0x77), "attached: the DMA did not arrive")?;
    ioas::device_detach(id).map_err(fail("detach"))?;
    s.fill(0x11);
    attack(ctx, dev, &[iova], "DMA after detach reached memory")?;
    check_that(s.iter().all(|&b| b == 0x11), "DMA after detach reached the once-mapped page")?;
    // Attached again, then destroyed while attached.
    ioas::device_attach(id, space).map_err(fail("attach again"))?;
    ioas::destroy(id).map_err(fail("destroy the device"))?;
    attack(ctx, dev, &[iova], "DMA after destroy reached memory")?;
    check_that(s.iter().all(|&b| b == 0x11), "DMA after destroy reached the once-mapped page")?;
    ioas::destroy(space).map_err(fail("destroy the IOAS"))?;
    Ok(())
}

/// Configuration fields and functions a task may not write.
fn config_policy(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let eperm = |r: Result<u64, Errno>| r == Err(Errno::EPERM);
    check_that(eperm(sys::device_config_write(edu.bdf, 0x10, 4, 0)), "BAR0 write not EPERM")?;
    check_that(eperm(sys::device_config_write(edu.bdf, 0x30, 4, 0)), "ROM write not EPERM")?;
    check_that(eperm(sys::device_config_write(edu.bdf, 0x34, 1, 0)), "capability pointer write not EPERM")?;
    check_that(eperm(sys::device_config_write(edu.bdf, 0x100, 4, 0)), "extended config write not EPERM")?;
    let command = sys::device_config_read(edu.bdf, 4, 2).map_err(fail("read command"))?;
    check_that(
        eperm(sys::device_config_write(edu.bdf, 4, 2, command ^ (1 << 10))),
        "INTx-disable (command bit 10) write not EPERM",
    )?;
    // Every capability structure is the kernel's (edu has MSI).
    let mut at = sys::device_config_read(edu.bdf, 0x34, 1).map_err(fail("read cap pointer"))? & 0xFC;
    let mut caps = 0;
    while at >= 0x40 && caps < 48 {
        let head = sys::device_config_read(edu.bdf, at, 2).map_err(fail("read a capability"))?;
        check_that(eperm(sys::device_config_write(edu.bdf, at + 2, 2, 0)), "capability write not EPERM")?;
        at = (head >> 8) & 0xFC;
        caps += 1;
    }
    check_that(caps > 0, "edu lists no capability (MSI expected)")?;
    // Bridges and host bridges cannot be claimed at all.
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(fail("device_list"))? as usize;
    let mut bridges = 0;
    for d in buf[..n.min(buf.len())].iter().filter(|d| d.class >> 16 == 0x06) {
        check_that(sys::device_claim(d.bdf) == Err(Errno::EPERM), "claim of a bridge not EPERM")?;
        bridges += 1;
    }
    check_that(bridges > 0, "no bridge to try (a host bridge is always there)")?;
    canary_intact("config attacks changed the canary")
}

/// Functions in one IOMMU group go to one task: all members are ours now.
fn groups(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(fail("device_list"))? as usize;
    let list = &buf[..n.min(buf.len())];
    let me = list.iter().find(|d| d.bdf == edu.bdf).ok_or(Failure::new("edu not listed"))?;
    check_that(me.group != 0, "no group number")?;
    for d in list.iter().filter(|d| d.group == me.group && d.bdf != edu.bdf) {
        // Claimed with the edu: config reads work for us.
        check_that(d.flags & abi::DEVICE_CLAIMED != 0, "a group member is not claimed with the edu")?;
        check_that(sys::device_config_read(d.bdf, 0, 4).is_ok(), "a group member is not ours")?;
    }
    Ok(())
}

type Step = fn(&mut Ctx) -> Result<(), Failure>;

const STEPS: &[(&str, Step)] = &[
    ("setup", setup),
    ("dma_after_owner_exit_is_blocked", after_owner_exit),
    ("dma_claimed_never_attached_is_blocked", claimed_never_attached),
    ("dma_after_detach_and_destroy_is_blocked", after_detach),
    ("config_writes_and_bridge_claims_refused", config_policy),
    ("group_claimed_whole", groups),
];

fn main() -> i32 {
    let mut ctx = Ctx { edu: None, dev: None, canary: 0, own: 0 };
    println!("KTAP version 1");
    println!("1..{}", STEPS.len());
    let mut failed = 0;
    let mut skip: Option<&'static str> = None;
    for (i, (name, step)) in STEPS.iter().enumerate() {
        if let Some(why) = skip {
            println!("ok {} user.isolation.{name} # SKIP {why}", i + 1);
            continue;
        }
        match step(&mut ctx) {
            Ok(()) if i == 0 && ctx.edu.is_none() => {
                skip = Some("no edu behind an IOMMU");
                println!("ok {} user.isolation.{name}", i + 1);
            }
            Ok(()) => println!("ok {} user.isolation.{name}", i + 1),
            Err(f) => {
                failed += 1;
                println!("not ok {} user.isolation.{name} # {f}", i + 1);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
