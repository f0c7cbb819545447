//! Attacks on DMA and configuration isolation, run as a test (KTAP
//! `user.isolation.*`). Each step aims an `edu` function's DMA at memory it
//! was never given — the kernel's test canary frame (`test_canary`) and a
//! page of this task that is not mapped for the device — in every state of
//! the device's life but "attached", and writes configuration fields a task
//! must not touch. After each step the canary must be intact and this task's
//! page unchanged; the kernel keeps running (the next step proves it).
//!
//! Against another task (`isolation-victim`, protocol in
//! `isolation_protocol.rs`): DMA aimed at the IOVA and the physical address of
//! a page the victim pinned for its own device, and claims, binds and config
//! writes of a member of an IOMMU group the victim holds; the victim checks
//! its page afterwards.
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use abi::{DeviceInfo, Errno};
use edu_driver::{check_that, fail, Edu, Failure};
use userlib::{iommufd, println, sys};

#[path = "../isolation_protocol.rs"]
mod protocol;

const PAGE: u64 = 4096;

struct Ctx {
    edu: Option<DeviceInfo>,
    dev: Option<Edu>,
    canary: u64,
    /// A page of this task, never mapped for the device.
    own: u64,
    /// Set by a step that found the machine lacks what it needs: the SKIP reason.
    skip: Option<&'static str>,
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
    // The child left memory decoding off; the release put it back.
    let cmd = sys::device_config_read(edu.bdf, 4, 2).map_err(fail("read the command register"))?;
    check_that(cmd & 2 != 0, "the previous owner's command register outlived its release (memory decode off)")?;
    check_that(cmd & 4 == 0, "bus master still on after the previous owner's release")?;
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
    let space = iommufd::ioas_alloc().map_err(fail("ioas_alloc"))?;
    let iova = iommufd::map(space, scratch, PAGE, None, MAP_READABLE | MAP_WRITEABLE).map_err(fail("map"))?;
    let id = iommufd::device_bind(edu.bdf).map_err(fail("bind"))?;
    attack(ctx, dev, &[iova], "DMA of a bound, unattached device reached memory")?;
    iommufd::device_attach(id, space).map_err(fail("attach"))?;
    // Attached: the mapped page is reachable (proves the DMA engine works).
    // SAFETY: `scratch` is a page this task mapped read/write.
    let s = unsafe { core::slice::from_raw_parts_mut(scratch as *mut u8, PAGE as usize) };
    s.fill(0x77);
    dev.dma(iova, false)?; // page -> edu buffer
    s.fill(0);
    dev.dma(iova, true)?; // edu buffer -> page
    check_that(s.iter().all(|&b| b == 0x77), "attached: the DMA did not arrive")?;
    iommufd::device_detach(id).map_err(fail("detach"))?;
    s.fill(0x11);
    attack(ctx, dev, &[iova], "DMA after detach reached memory")?;
    check_that(s.iter().all(|&b| b == 0x11), "DMA after detach reached the once-mapped page")?;
    // Attached again, then destroyed while attached.
    iommufd::device_attach(id, space).map_err(fail("attach again"))?;
    iommufd::destroy(id).map_err(fail("destroy the device"))?;
    attack(ctx, dev, &[iova], "DMA after destroy reached memory")?;
    check_that(s.iter().all(|&b| b == 0x11), "DMA after destroy reached the once-mapped page")?;
    iommufd::destroy(space).map_err(fail("destroy the IOAS"))?;
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
    whole_group_ours(edu.bdf).map(drop)?;
    // The functions of one multi-function device without ACS (q35's ICH9 at
    // 00:1f: LPC, SATA, SMBus) are one group, and the LPC bridge in it makes
    // every member unclaimable.
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(fail("device_list"))? as usize;
    let ich9 = || buf[..n.min(buf.len())].iter().filter(|d| d.vendor == 0x8086 && (d.bdf >> 3) & 0x1FFF == 0x1F);
    if let (Some(first), true) = (ich9().next(), ich9().count() > 1) {
        if first.flags & abi::DEVICE_BEHIND_IOMMU == 0 {
            return Ok(());
        }
        check_that(ich9().all(|d| d.group == first.group && d.group != 0), "00:1f.* are not one group")?;
        for d in ich9() {
            check_that(
                sys::device_claim(d.bdf) == Err(Errno::EPERM),
                "a function of the LPC bridge's group was claimed",
            )?;
        }
    }
    Ok(())
}

/// The victim task while it runs: what it published.
struct Victim {
    iova: u64,
    pa: u64,
}

/// Waits up to `secs` for the mailbox state to satisfy `done`; returns it.
fn wait_state(secs: u64, done: impl Fn(u64) -> bool) -> Result<u64, Failure> {
    let start = sys::clock().unwrap_or(0);
    loop {
        let state = sys::test_mailbox_get(protocol::SLOT_STATE).map_err(fail("mailbox read"))?;
        if done(state) {
            return Ok(state);
        }
        if sys::clock().unwrap_or(u64::MAX).saturating_sub(start) > secs * 1_000_000_000 {
            return Err(Failure::new("the victim task did not answer in time"));
        }
        let _ = sys::sleep(5_000_000);
    }
}

/// The victim's own failure, by the index it reported.
fn victim_failure(state: u64) -> Failure {
    let i = state.saturating_sub(protocol::FAILED) as usize;
    Failure::new(protocol::FAILURES.get(i).copied().unwrap_or("victim: unknown failure"))
}

impl Victim {
    /// Spawns `isolation-victim` on the function `bdf` and waits until its page is pinned.
    fn start(bdf: u64) -> Result<Victim, Failure> {
        let set = |slot, v| sys::test_mailbox_set(slot, v).map_err(fail("mailbox write"));
        set(protocol::SLOT_STATE, protocol::IDLE)?;
        set(protocol::SLOT_IOVA, 0)?;
        set(protocol::SLOT_PHYS, 0)?;
        set(protocol::SLOT_TARGET, bdf + 1)?;
        sys::task_spawn("isolation-victim").map_err(fail("spawn isolation-victim"))?;
        let state = wait_state(30, |s| s != protocol::IDLE)?;
        if state != protocol::READY {
            return Err(victim_failure(state));
        }
        let get = |slot| sys::test_mailbox_get(slot).map_err(fail("mailbox read"));
        Ok(Victim { iova: get(protocol::SLOT_IOVA)?, pa: get(protocol::SLOT_PHYS)? })
    }

    /// Tells the victim the attack is over, takes its verdict on its page,
    /// and waits for it to exit (our claim of `reclaim` succeeds then).
    fn finish(self, reclaim: u64) -> Result<(), Failure> {
        sys::test_mailbox_set(protocol::SLOT_STATE, protocol::GO).map_err(fail("mailbox write"))?;
        let state = wait_state(30, |s| s == protocol::DONE_OK || s >= protocol::FAILED)?;
        let start = sys::clock().unwrap_or(0);
        loop {
            match sys::device_claim(reclaim) {
                Ok(_) => break,
                Err(Errno::EBUSY) if sys::clock().unwrap_or(u64::MAX).saturating_sub(start) < 10_000_000_000 => {
                    let _ = sys::sleep(10_000_000);
                }
                Err(e) => return Err(Failure { what: "claim after the victim's exit", errno: Some(e) }),
            }
        }
        if state == protocol::DONE_OK {
            Ok(())
        } else {
            Err(victim_failure(state))
        }
    }
}

fn device_list(buf: &mut [DeviceInfo; 64]) -> Result<&[DeviceInfo], Failure> {
    let n = sys::device_list(buf).map_err(fail("device_list"))? as usize;
    Ok(&buf[..n.min(buf.len())])
}

fn is_free_edu(d: &DeviceInfo) -> bool {
    (d.vendor, d.device) == edu_driver::EDU
        && d.flags & abi::DEVICE_DMA_ALLOWED != 0
        && d.flags & abi::DEVICE_CLAIMED == 0
        && d.group != 0
}

/// A page of ours is filled with the victim's pattern (DMA carried its data to us).
fn holds_victim_pattern(p: &[u8]) -> bool {
    p.iter().enumerate().all(|(i, &b)| b == protocol::pattern(i))
}

/// DMA into another task's pinned memory: the victim pins a page for its own
/// `edu` (another IOMMU group); our `edu` aims DMA writes and reads at that
/// page's IOVA (the same number in our IOAS, where it is not mapped) and at
/// its physical address, first while our device is claimed but unattached,
/// then attached to an IOAS of our own.
fn into_other_task(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let mut buf = [DeviceInfo::default(); 64];
    let list = device_list(&mut buf)?;
    let group_of = |g: u32| list.iter().filter(|d| d.group == g && !is_bridge(d)).count();
    let mine = list.iter().find(|d| d.bdf == edu.bdf).map_or(0, |d| d.group);
    let free = |d: &&DeviceInfo| is_free_edu(d) && d.group != mine;
    // A function alone in its group, so that a group of two stays free for `other_tasks_group_member`.
    let Some(target) = list.iter().filter(free).find(|d| group_of(d.group) == 1).or(list.iter().find(free)) else {
        ctx.skip = Some("one edu behind an IOMMU: the victim task needs a second one, in another IOMMU group");
        return Ok(());
    };
    let target = target.bdf;
    let victim = Victim::start(target)?;
    let attacked = attack_victim(ctx, &victim);
    // The victim's verdict on its page first: it names what reached it.
    victim.finish(target).and(attacked)?;
    canary_intact("the kernel canary changed in the attack on another task")
}

fn attack_victim(ctx: &Ctx, v: &Victim) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let dev = ctx.dev.as_ref().ok_or(Failure::new("no device"))?;
    check_that(v.iova != 0 && v.pa != 0, "the victim published no IOVA or physical address")?;
    // Claimed, bus master on, not bound: blocked.
    attack(ctx, dev, &[v.iova, v.pa], "DMA of an unattached device reached memory")?;
    // Attached to an IOAS of ours that maps one page of ours at an IOVA that
    // is neither the victim's IOVA nor its physical address.
    let page_of = |a: u64| a & !(PAGE - 1);
    let iova = [0x80_0000u64, 0x90_0000, 0xA0_0000]
        .into_iter()
        .find(|&c| c != page_of(v.iova) && c != page_of(v.pa))
        .ok_or(Failure::new("no IOVA left to map"))?;
    let scratch = sys::mem_map(0, PAGE, 3).map_err(fail("mem_map scratch"))?;
    // SAFETY: `scratch` is a page this task mapped read/write and never unmaps.
    let s = unsafe { core::slice::from_raw_parts_mut(scratch as *mut u8, PAGE as usize) };
    let space = iommufd::ioas_alloc().map_err(fail("ioas_alloc"))?;
    iommufd::map(space, scratch, PAGE, Some(iova), MAP_READABLE | MAP_WRITEABLE).map_err(fail("map"))?;
    let id = iommufd::device_bind(edu.bdf).map_err(fail("bind"))?;
    iommufd::device_attach(id, space).map_err(fail("attach"))?;
    // Our DMA works: a round trip through our own page.
    s.fill(0x5C);
    dev.dma(iova, false)?;
    s.fill(0);
    dev.dma(iova, true)?;
    check_that(s.iter().all(|&b| b == 0x5C), "attached: our own DMA did not arrive")?;
    // Writes (the device buffer holds 0x5C…) aimed at the victim's page.
    for &t in &[v.iova, v.pa] {
        dev.dma(t, true)?;
    }
    // Reads of the victim's page into the device, then the device buffer into
    // our page: the victim's data must not arrive.
    for &t in &[v.iova, v.pa] {
        dev.dma(t, false)?;
        s.fill(0);
        dev.dma(iova, true)?;
        check_that(!holds_victim_pattern(s), "DMA read another task's pinned page")?;
    }
    attack(ctx, dev, &[v.iova, v.pa], "DMA of an attached device reached memory")?;
    iommufd::device_detach(id).map_err(fail("detach"))?;
    iommufd::destroy(id).map_err(fail("destroy the device"))?;
    iommufd::destroy(space).map_err(fail("destroy the IOAS"))?;
    Ok(())
}

fn is_bridge(d: &DeviceInfo) -> bool {
    d.class >> 16 == 0x06
}

/// Every function of `bdf`'s group is claimed with it, and ours; a bridge
/// in the group (a PCIe-to-PCI bridge shares the ID of the functions behind
/// it) is not: tasks never own bridges. Returns how many functions are ours.
fn whole_group_ours(bdf: u64) -> Result<usize, Failure> {
    let mut buf = [DeviceInfo::default(); 64];
    let list = device_list(&mut buf)?;
    let me = list.iter().find(|d| d.bdf == bdf).ok_or(Failure::new("function not listed"))?;
    check_that(me.group != 0, "no group number")?;
    let mut members = 0;
    for d in list.iter().filter(|d| d.group == me.group) {
        if is_bridge(d) {
            check_that(d.flags & abi::DEVICE_CLAIMED == 0, "a bridge was claimed with its group")?;
            check_that(sys::device_config_read(d.bdf, 0, 4) == Err(Errno::EPERM), "a bridge of the group is ours")?;
            continue;
        }
        check_that(d.flags & abi::DEVICE_CLAIMED != 0, "a group member is not claimed with the function")?;
        check_that(sys::device_config_read(d.bdf, 0, 4).is_ok(), "a group member is not ours")?;
        members += 1;
    }
    Ok(members)
}

/// A group member of another task: the victim claims one function of a
/// two-function IOMMU group (behind a PCIe-to-PCI bridge) and pins a page
/// for it; our claims of either member are EBUSY, our binds, config writes
/// and BAR maps of them refused. After the victim exits our claim of the
/// other member takes the whole group.
fn other_tasks_group_member(ctx: &mut Ctx) -> Result<(), Failure> {
    let mut buf = [DeviceInfo::default(); 64];
    let list = device_list(&mut buf)?;
    let pair = list.iter().filter(|d| is_free_edu(d)).find_map(|a| {
        let members = list.iter().filter(|d| d.group == a.group && !is_bridge(d)).count();
        let b = list.iter().find(|d| d.group == a.group && d.bdf != a.bdf && is_free_edu(d));
        b.filter(|_| members == 2).map(|b| (a.bdf, b.bdf))
    });
    let Some((theirs, other)) = pair else {
        ctx.skip =
            Some("no free IOMMU group of two edus on this machine (two behind one PCI bridge: the <arch>-isolation-groups case, VT-d and SMMUv3)");
        return Ok(());
    };
    let victim = Victim::start(theirs)?;
    let attacked = (|| {
        let mut buf = [DeviceInfo::default(); 64];
        let list = device_list(&mut buf)?;
        let flags = |bdf| list.iter().find(|d| d.bdf == bdf).map_or(0, |d| d.flags);
        let group = |bdf| list.iter().find(|d| d.bdf == bdf).map_or(0, |d| d.group);
        check_that(group(theirs) == group(other), "the two functions are not listed in one group")?;
        check_that(flags(other) & abi::DEVICE_CLAIMED != 0, "the victim's claim did not take the whole group")?;
        for (bdf, what) in [(other, "the other member"), (theirs, "the victim's member")] {
            match sys::device_claim(bdf) {
                Err(Errno::EBUSY) => {}
                Ok(_) => return Err(Failure::new("claimed a member of another task's IOMMU group")),
                Err(e) => return Err(Failure { what, errno: Some(e) }),
            }
            check_that(
                iommufd::device_bind(bdf) == Err(Errno::EBUSY),
                "bind of another task's group member not EBUSY",
            )?;
            check_that(sys::device_config_write(bdf, 4, 2, 4).is_err(), "config write to another task's group member")?;
            check_that(sys::device_map_bar(bdf, 0).is_err(), "mapped the BAR of another task's group member")?;
        }
        canary_intact("the kernel canary changed in the group attack")
    })();
    victim.finish(other).and(attacked)?;
    // The victim is gone: our claim of the other member took both.
    check_that(whole_group_ours(other)? == 2, "the group did not come to us whole")?;
    canary_intact("the kernel canary changed")
}

/// The interrupt window: a device's DMA writes there forged messages —
/// remappable handles with no entry (x86 VT-d: blocked, each a decoded
/// fault; handle 0xABC lies beyond the table), a message through a DeviceID
/// whose entry blocks every interrupt (AMD-Vi), the ITS doorbell (aarch64:
/// a reserved region never mapped, so the translation faults). The kernel
/// must keep running and the canary stay intact. Skipped where the kernel
/// was told to let unconfined interrupts through (`iommu.unsafe_interrupts=allow`):
/// there a forged message would be delivered, by design of that option.
fn into_interrupt_window(ctx: &mut Ctx) -> Result<(), Failure> {
    let edu = ctx.edu.ok_or(Failure::new("no edu"))?;
    let dev = ctx.dev.as_ref().ok_or(Failure::new("no device"))?;
    if edu.flags & abi::DEVICE_INTERRUPTS_CONFINED == 0 {
        ctx.skip = Some("interrupts not remapped here (iommu.unsafe_interrupts=allow): a forged message is delivered");
        return Ok(());
    }
    // Remappable format (bit 4), SHV (bit 3), handle in bits 19:5 and 2.
    let remappable = |h: u64| 0xFEE0_0000 | (h & 0x7FFF) << 5 | 1 << 4 | 1 << 3 | (h >> 15) << 2;
    let targets: &[u64] = if cfg!(target_arch = "x86_64") {
        &[remappable(200), remappable(0xABC), 0xFEE0_0000 | 1 << 4 | 1 << 3]
    } else {
        &[0x0809_0040, 0x0809_0000]
    };
    let scratch = sys::mem_map(0, PAGE, 3).map_err(fail("mem_map scratch"))?;
    let space = iommufd::ioas_alloc().map_err(fail("ioas_alloc"))?;
    let iova = iommufd::map(space, scratch, PAGE, None, MAP_READABLE | MAP_WRITEABLE).map_err(fail("map"))?;
    let id = iommufd::device_bind(edu.bdf).map_err(fail("bind"))?;
    iommufd::device_attach(id, space).map_err(fail("attach"))?;
    // SAFETY: `scratch` is a page this task mapped read/write.
    let s = unsafe { core::slice::from_raw_parts_mut(scratch as *mut u8, PAGE as usize) };
    s.fill(0); // message data 0: subhandle 0 (VT-d), entry 0 (AMD-Vi), EventID 0 (ITS)
    dev.dma(iova, false)?; // the page -> edu's buffer
    for &t in targets {
        dev.dma_len(t, 4, true)?;
        sys::clock().map_err(fail("the kernel stopped answering after a forged interrupt message"))?;
        // Any iommufd call first logs what the units recorded (VT-d keeps one
        // fault per source until it is read): an id that names nothing will do.
        let _ = iommufd::destroy(u32::MAX);
    }
    iommufd::destroy(id).map_err(fail("destroy the device"))?;
    iommufd::destroy(space).map_err(fail("destroy the IOAS"))?;
    canary_intact("the kernel canary changed")
}

/// On x86 a unit that does not remap interrupts cannot stop a device's DMA
/// from sending any interrupt message (any vector, NMI, INIT): unless the
/// kernel was booted with `iommu.unsafe_interrupts=allow`, Bus Master is
/// refused for such a function, and `device_list` says so. Needs no usable
/// `edu` (it looks for one whose DMA is refused).
fn unsafe_interrupts_refused(ctx: &mut Ctx) -> Result<(), Failure> {
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).map_err(fail("device_list"))? as usize;
    let edus = buf[..n.min(buf.len())].iter().filter(|d| (d.vendor, d.device) == edu_driver::EDU);
    let mut refused = None;
    for d in edus {
        let confined = d.flags & abi::DEVICE_INTERRUPTS_CONFINED != 0;
        let allowed = d.flags & abi::DEVICE_DMA_ALLOWED != 0;
        let behind = d.flags & abi::DEVICE_BEHIND_IOMMU != 0;
        check_that(!allowed || behind, "DMA allowed for a function no IOMMU translates")?;
        check_that(!behind || allowed || !confined, "DMA refused although the interrupts are confined")?;
        if behind && !allowed && refused.is_none() {
            refused = Some(*d);
        }
    }
    let Some(d) = refused else {
        ctx.skip = Some("every edu behind an IOMMU may do DMA here (interrupts remapped, or allowed)");
        return Ok(());
    };
    sys::device_claim(d.bdf).map_err(fail("claim"))?;
    let cmd = sys::device_config_read(d.bdf, 4, 2).map_err(fail("read the command register"))?;
    check_that(
        sys::device_config_write(d.bdf, 4, 2, cmd | 4) == Err(Errno::EPERM),
        "Bus Master allowed for a function whose interrupts are not remapped",
    )?;
    let now = sys::device_config_read(d.bdf, 4, 2).map_err(fail("read the command register"))?;
    check_that(now & 4 == 0, "the Bus Master bit is set")?;
    canary_intact("the kernel canary changed")
}

type Step = fn(&mut Ctx) -> Result<(), Failure>;

/// Steps that run even when no `edu` can be driven.
const FIRST: &[(&str, Step)] = &[("bus_master_refused_without_interrupt_remapping", unsafe_interrupts_refused)];

const STEPS: &[(&str, Step)] = &[
    ("setup", setup),
    ("dma_after_owner_exit_is_blocked", after_owner_exit),
    ("dma_claimed_never_attached_is_blocked", claimed_never_attached),
    ("dma_after_detach_and_destroy_is_blocked", after_detach),
    ("dma_into_other_task_pinned_memory_is_blocked", into_other_task),
    ("dma_into_interrupt_window_is_blocked", into_interrupt_window),
    ("config_writes_and_bridge_claims_refused", config_policy),
    ("group_claimed_whole", groups),
    ("other_tasks_group_member_refused", other_tasks_group_member),
];

fn main() -> i32 {
    let mut ctx = Ctx { edu: None, dev: None, canary: 0, own: 0, skip: None };
    println!("KTAP version 1");
    println!("1..{}", FIRST.len() + STEPS.len());
    let mut failed = 0;
    for (i, (name, step)) in FIRST.iter().enumerate() {
        match step(&mut ctx) {
            Ok(()) => match ctx.skip.take() {
                Some(why) => println!("ok {} user.isolation.{name} # SKIP {why}", i + 1),
                None => println!("ok {} user.isolation.{name}", i + 1),
            },
            Err(f) => {
                failed += 1;
                println!("not ok {} user.isolation.{name} # {f}", i + 1);
            }
        }
    }
    let mut skip: Option<&'static str> = None;
    for (i, (name, step)) in STEPS.iter().enumerate() {
        let i = i + FIRST.len();
        if let Some(why) = skip {
            println!("ok {} user.isolation.{name} # SKIP {why}", i + 1);
            continue;
        }
        match step(&mut ctx) {
            Ok(()) if i == FIRST.len() && ctx.edu.is_none() => {
                skip = Some("no edu behind an IOMMU");
                println!("ok {} user.isolation.{name}", i + 1);
            }
            Ok(()) => match ctx.skip.take() {
                Some(why) => println!("ok {} user.isolation.{name} # SKIP {why}", i + 1),
                None => println!("ok {} user.isolation.{name}", i + 1),
            },
            Err(f) => {
                failed += 1;
                println!("not ok {} user.isolation.{name} # {f}", i + 1);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
