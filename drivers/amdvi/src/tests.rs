//! The unit and the driver against the QEMU-like fake ([`crate::fake`]).

use crate::cmd::{self, Command, PageRange};
use crate::driver::{domain_tag, AmdViIommu};
use crate::dte;
use crate::event::EventCode;
use crate::fake::{FakeMem, QEMU_EFR};
use crate::regs::{CONTROL, DEVTAB_BASE, RING_BASE, STATUS};
use crate::unit::{AmdVi, AmdViError};
use iommu::mock::{MockConfig, MockIommu};
use iommu::{DeviceId, DomainKind, Error, Iommu, Perms, Region, ReservedKind};
use tock_registers::interfaces::{Readable, Writeable};

const DEV: u16 = 0x10;
const OTHER: u16 = 0x18;
const RW: Perms = Perms::READ.union(Perms::WRITE);

fn bring_up(efr: u64) -> (Result<AmdVi, AmdViError>, FakeMem) {
    let mut mem = FakeMem::with_unit(efr);
    let unit = AmdVi::new(mem.register_window(), &mut mem);
    (unit, mem)
}

fn driver(reserved: Vec<(Option<u16>, Region)>) -> AmdViIommu<FakeMem> {
    let (unit, mem) = bring_up(QEMU_EFR);
    AmdViIommu::new(unit.unwrap(), mem, vec![DEV, OTHER], reserved)
}

/// Commands the fake ran since `from`.
fn ran(a: &AmdViIommu<FakeMem>, from: usize) -> Vec<Command> {
    a.mem.log.borrow()[from..].to_vec()
}

fn opcodes(cmds: &[Command]) -> Vec<u64> {
    cmds.iter().map(cmd::opcode).collect()
}

#[test]
fn bring_up_programs_the_unit() {
    let (unit, mem) = bring_up(QEMU_EFR);
    let unit = unit.unwrap();
    let r = mem.regs();
    assert_eq!(r.devtab_base.read(DEVTAB_BASE::SIZE), 0x1FF, "2 MiB: every 16-bit DeviceID");
    assert_eq!((r.cmd_base.read(RING_BASE::LEN), r.evt_base.read(RING_BASE::LEN)), (8, 8));
    let want = CONTROL::IOMMU_EN::SET + CONTROL::EVENT_LOG_EN::SET + CONTROL::CMD_BUF_EN::SET + CONTROL::COHERENT::SET;
    assert_eq!(r.control.get(), want.value);
    assert_eq!((r.excl_base.get(), r.excl_limit.get()), (0, 0), "no exclusion range");
    // INVALIDATE_IOMMU_ALL (QEMU has IASup), then the COMPLETION_WAIT that proves the buffer runs.
    assert_eq!(opcodes(&mem.log.borrow()), [cmd::INVALIDATE_IOMMU_ALL, cmd::COMPLETION_WAIT]);
    assert_eq!(unit.commands, 2);
    // Default deny: every DTE, named by firmware or not, is blocked.
    for devid in [0, 1, DEV, OTHER, 0x0300, 0xFFFF] {
        assert_eq!(mem.dte(devid), unit.blocked_dte(dte::BLOCKED_TAG));
        assert_eq!(mem.translate(devid, 0x1234_5678, true), None);
        assert_eq!(mem.translate(devid, 0x1234_5678, false), None);
    }
    assert_eq!(mem.live(), unit.table_frames());
    let line = unit.describe();
    for part in ["EFR=0x29d3", "PreFSup PPRSup GTSup IASup GASup HESup", "HATS 6 host levels", "65536 entries"] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
}

#[test]
fn bring_up_checks_features_and_memory() {
    // No IASup: a lone COMPLETION_WAIT.
    let (unit, mem) = bring_up(QEMU_EFR & !(1 << 6));
    assert!(unit.is_ok());
    assert_eq!(opcodes(&mem.log.borrow()), [cmd::COMPLETION_WAIT]);
    // HATS = 3 is reserved.
    let (unit, mem) = bring_up(QEMU_EFR | 3 << 10);
    let e = unit.err().unwrap();
    assert!(matches!(e, AmdViError::Unsupported(_)), "{e}");
    assert_eq!(mem.live(), 0);
    // Out of memory after the device table: nothing leaks.
    let mut mem = FakeMem::with_unit(QEMU_EFR);
    mem.limit = Some(513);
    let e = AmdVi::new(mem.register_window(), &mut mem).err().unwrap();
    assert_eq!((e, mem.live()), (AmdViError::NoMemory, 0));
    assert_eq!(Error::from(e), Error::NoMemory);
}

#[test]
fn domains_translate_as_qemu_does() {
    let mut a = driver(Vec::new());
    let (id, bl, pg) = (
        a.domain_alloc(DomainKind::Identity).unwrap(),
        a.domain_alloc(DomainKind::Blocked).unwrap(),
        a.domain_alloc(DomainKind::Paging).unwrap(),
    );
    a.attach(DeviceId(DEV.into()), id).unwrap();
    assert_eq!(a.mem.dte(DEV), dte::identity(a.domain_tag(id).unwrap()));
    assert_eq!(a.mem.translate(DEV, 0x4000_0123, true), Some(0x4000_0123));
    a.attach(DeviceId(DEV.into()), bl).unwrap();
    assert_eq!((a.mem.translate(DEV, 0x9000, false), a.mem.translate(DEV, 0x9000, true)), (None, None));
    a.map(pg, 0x1000, 0x5000, 0x1000, Perms::READ).unwrap();
    a.map(pg, 0x4000_0000, 0x8000_0000, 0x20_0000, RW).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    assert_eq!(dte::mode(&a.mem.dte(DEV)), 4);
    assert_eq!(a.mem.translate(DEV, 0x1234, false), Some(0x5234));
    assert_eq!(a.mem.translate(DEV, 0x1234, true), None, "read-only page");
    assert_eq!(a.mem.translate(DEV, 0x4012_3456, true), Some(0x8012_3456), "2 MiB leaf");
    assert_eq!(a.mem.translate(DEV, 0x3000, false), None, "unmapped");
    assert_eq!(a.mem.translate(OTHER, 0x3000, false), None, "other devices stay blocked");
    assert!(a.translating());
    assert_eq!((a.attached(DeviceId(DEV.into())), a.attached(DeviceId(OTHER.into()))), (Some(pg), None));
    assert_eq!(a.iova_to_phys(pg, 0x1008), Some(0x5008));
    assert_eq!((a.iova_to_phys(id, 0x77), a.iova_to_phys(bl, 0x77)), (Some(0x77), None));
    assert_eq!(a.leaves(pg, 0, 1 << 31), [(1 << 21, 1), (1 << 12, 1)]);
}

#[test]
fn detach_blocks_and_forgets_translations() {
    let mut a = driver(Vec::new());
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    a.map(pg, 0x1000, 0x5000, 0x1000, RW).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    assert_eq!(a.mem.translate(DEV, 0x1000, true), Some(0x5000)); // now in QEMU's IOTLB
    let from = a.mem.log.borrow().len();
    a.detach(DeviceId(DEV.into())).unwrap();
    assert_eq!(a.mem.dte(DEV), a.unit.blocked_dte(dte::BLOCKED_TAG));
    // QEMU answers from its IOTLB before reading the DTE: without the
    // domain invalidation the device would still reach 0x5000.
    assert_eq!(a.mem.translate(DEV, 0x1000, true), None);
    let tag = a.domain_tag(pg).unwrap();
    let cmds = ran(&a, from);
    let at = |c: Command| cmds.iter().position(|&x| x == c);
    let (devtab, pages) = (
        at(cmd::invalidate_devtab_entry(DEV)).expect("devtab invalidation"),
        at(cmd::invalidate_iommu_pages(tag, PageRange::ALL, true)).expect("the old domain's pages invalidated"),
    );
    assert!(devtab < pages);
    assert_eq!(opcodes(&cmds).last(), Some(&cmd::COMPLETION_WAIT), "detach waits for completion");
    assert!(!a.translating());
    a.detach(DeviceId(DEV.into())).unwrap(); // detaching twice is fine
}

#[test]
fn switching_domains_passes_through_blocked() {
    let mut a = driver(Vec::new());
    let (pg, id) = (a.domain_alloc(DomainKind::Paging).unwrap(), a.domain_alloc(DomainKind::Identity).unwrap());
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    let from = a.mem.log.borrow().len();
    a.attach(DeviceId(DEV.into()), id).unwrap();
    // Blocked qword 0 + invalidation, then the new entry, its invalidation and the old domain's.
    let old = a.domain_tag(pg).unwrap();
    assert_eq!(
        ran(&a, from),
        [
            cmd::invalidate_devtab_entry(DEV),
            ran(&a, from)[1],
            cmd::invalidate_devtab_entry(DEV),
            cmd::invalidate_iommu_pages(old, PageRange::ALL, true),
            ran(&a, from)[4],
        ]
    );
    assert_eq!(opcodes(&ran(&a, from))[1], cmd::COMPLETION_WAIT);
    assert_eq!(a.mem.dte(DEV), dte::identity(a.domain_tag(id).unwrap()));
    // Attaching to the domain it is in changes nothing.
    let from = a.mem.log.borrow().len();
    a.attach(DeviceId(DEV.into()), id).unwrap();
    assert!(ran(&a, from).is_empty());
}

#[test]
fn unmap_needs_the_flush() {
    let mut a = driver(Vec::new());
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    let tag = a.domain_tag(pg).unwrap();
    a.map(pg, 0x20_0000, 0x30_0000, 0x3000, RW).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    assert_eq!(a.mem.translate(DEV, 0x20_1000, false), Some(0x30_1000));
    let u = a.unmap(pg, 0x20_1000, 0x2000).unwrap();
    assert_eq!(u.bytes, 0x2000);
    assert_eq!(a.mem.translate(DEV, 0x20_1000, false), Some(0x30_1000), "stale until flushed");
    let (flushes, from) = (a.flushes(), a.mem.log.borrow().len());
    a.flush(pg, u.gather).unwrap();
    assert_eq!(a.flushes(), flushes + 1);
    // Pages 0x201000 and 0x202000: the covering block is 16 KiB at 0x200000.
    assert_eq!(ran(&a, from)[0], cmd::invalidate_iommu_pages(tag, PageRange::covering(0x20_1000, 0x20_3000), false));
    assert_eq!(ran(&a, from)[0].w1.get(), 0x20_1001);
    assert_eq!(a.mem.translate(DEV, 0x20_1000, false), None);
    assert_eq!(a.mem.translate(DEV, 0x20_0000, false), Some(0x30_0000));
    // An unmap of the last page keeps the tables (for the next map there);
    // one covering the root entry's 512 GiB frees them: PDE is set.
    let live = a.mem.live();
    let u = a.unmap(pg, 0x20_0000, 0x1000).unwrap();
    assert_eq!(u.gather.freed_tables(&a.mem), 0, "tables kept");
    let from = a.mem.log.borrow().len();
    a.flush(pg, u.gather).unwrap();
    assert_eq!(ran(&a, from)[0].w1.get() & 3, 0b00, "one page, no PDE");
    let u = a.unmap(pg, 0, 1 << 39).unwrap();
    assert_eq!((u.bytes, u.gather.freed_tables(&a.mem)), (0, 3), "level-1, -2 and -3 tables freed");
    let from = a.mem.log.borrow().len();
    a.flush(pg, u.gather).unwrap();
    assert_eq!(ran(&a, from)[0].w1.get() & 2, 0b10, "PDE");
    assert_eq!(a.mem.live(), live - 3);
    // An empty gather sends nothing.
    let u = a.unmap(pg, 0x7000_0000, 0x1000).unwrap();
    let (flushes, from) = (a.flushes(), a.mem.log.borrow().len());
    a.flush(pg, u.gather).unwrap();
    assert_eq!((a.flushes(), ran(&a, from).len()), (flushes, 0));
}

#[test]
fn map_checks_aperture_and_kind() {
    let mut a = driver(Vec::new());
    let (pg, id) = (a.domain_alloc(DomainKind::Paging).unwrap(), a.domain_alloc(DomainKind::Identity).unwrap());
    assert_eq!(a.map(pg, 1 << 48, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 48, len: 0x1000 }));
    assert_eq!(
        a.map(pg, (1 << 48) - 0x1000, 0, 0x2000, RW),
        Err(Error::OutOfAperture { iova: (1 << 48) - 0x1000, len: 0x2000 })
    );
    a.map(pg, (1 << 48) - 0x1000, 0, 0x1000, RW).unwrap();
    assert_eq!(a.map(id, 0, 0, 0x1000, RW), Err(Error::NotPaging(id)));
    assert_eq!(a.map(iommu::DomainId(99), 0, 0, 0x1000, RW), Err(Error::NoSuchDomain(iommu::DomainId(99))));
    assert!(matches!(a.unmap(id, 0, 0x1000), Err(Error::NotPaging(_))));
    assert_eq!(a.attach(DeviceId(0x20), pg), Err(Error::NoSuchDevice(DeviceId(0x20))));
    assert_eq!(a.attach(DeviceId(0x1_0010), pg), Err(Error::NoSuchDevice(DeviceId(0x1_0010))));
    let info = a.info();
    assert_eq!((info.kind, info.aperture, info.page_sizes), (iommu::UnitKind::AmdVi, (0, (1 << 48) - 1), 0x4020_1000));
    assert!(info.native_identity && info.raw.contains(&("EFR", QEMU_EFR)));
    assert_eq!(Iommu::devices(&a), [DeviceId(DEV.into()), DeviceId(OTHER.into())]);
    assert_eq!(a.devices(), [DEV, OTHER]);
    // No flush on map, unless asked for (units whose capability sets NpCache).
    let from = a.mem.log.borrow().len();
    a.map(pg, 0x1000, 0x1000, 0x1000, RW).unwrap();
    assert!(ran(&a, from).is_empty());
    a.set_flush_on_map(true);
    a.map(pg, 0x2000, 0x2000, 0x1000, RW).unwrap();
    let tag = a.domain_tag(pg).unwrap();
    let single = ran(&a, from);
    assert_eq!(single[0], cmd::invalidate_iommu_pages(tag, PageRange { address: 0x2000, size: false }, false));
    // A batch of runs: one invalidation of the span they cover, not one each.
    let from = a.mem.log.borrow().len();
    let mut runs = [(0x10_000, 0x5000, 0x1000), (0x12_000, 0x9000, 0x2000), (0x11_000, 0x7000, 0x1000)].into_iter();
    a.map_runs(pg, &mut runs, RW).unwrap();
    let batch = ran(&a, from);
    assert_eq!(opcodes(&batch), opcodes(&single), "as many commands as one map");
    assert_eq!(batch[0], cmd::invalidate_iommu_pages(tag, PageRange::covering(0x10_000, 0x14_000), false));
    assert_eq!(a.iova_to_phys(pg, 0x13_008), Some(0xa008));
    // A run outside the aperture stops the batch: the runs before it are mapped (and flushed).
    let mut runs = [(0x20_000, 0x5000, 0x1000), (1 << 60, 0, 0x1000), (0x21_000, 0x6000, 0x1000)].into_iter();
    assert_eq!(a.map_runs(pg, &mut runs, RW), Err((Error::OutOfAperture { iova: 1 << 60, len: 0x1000 }, 1)));
    assert_eq!(a.iova_to_phys(pg, 0x20_000), Some(0x5000));
    assert_eq!(a.iova_to_phys(pg, 0x21_000), None);
}

#[test]
fn domain_free_waits_for_detach_and_releases_everything() {
    let mut a = driver(Vec::new());
    let base = a.mem.live();
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    a.map(pg, 0x4000_0000, 0x4000_0000, 0x40_1000, RW).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    assert_eq!(a.domain_free(pg), Err(Error::Busy(pg)));
    a.detach(DeviceId(DEV.into())).unwrap();
    let tag = a.domain_tag(pg).unwrap();
    let from = a.mem.log.borrow().len();
    a.domain_free(pg).unwrap();
    assert_eq!(ran(&a, from)[0], cmd::invalidate_iommu_pages(tag, PageRange::ALL, true));
    assert_eq!(a.mem.live(), base, "page tables freed");
    assert_eq!(a.domain_free(pg), Err(Error::NoSuchDomain(pg)));
    // The tag is handed out again.
    let again = a.domain_alloc(DomainKind::Blocked).unwrap();
    assert_eq!(a.domain_tag(again), Some(tag));
}

#[test]
fn domain_tags_skip_bit_8() {
    let mut seen = std::collections::BTreeSet::new();
    for index in 1..0x8000u16 {
        let tag = domain_tag(index);
        assert!(tag != 0 && tag & 0x100 == 0, "{index:#x} -> {tag:#x}");
        assert!(seen.insert(tag), "{tag:#x} twice");
    }
    assert_eq!((domain_tag(0xFF), domain_tag(0x100), domain_tag(0x7FFF)), (0xFF, 0x200, 0xFEFF));
}

#[test]
fn direct_map_regions_are_mapped_before_the_dte() {
    let region = Region { start: 0x7000_0000, end: 0x7000_2FFF, kind: ReservedKind::DirectMap };
    let msi = Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: ReservedKind::Msi };
    let mut a = driver(vec![(Some(DEV), region), (None, msi)]);
    assert_eq!(a.reserved_regions(DeviceId(DEV.into())), [region, msi]);
    assert_eq!(a.reserved_regions(DeviceId(OTHER.into())), [msi]);
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    assert_eq!(a.iova_to_phys(pg, 0x7000_2010), Some(0x7000_2010));
    assert_eq!(a.mem.translate(DEV, 0x7000_1008, true), Some(0x7000_1008));
    // Another paging domain where the region is mapped elsewhere: refused.
    let other = a.domain_alloc(DomainKind::Paging).unwrap();
    a.map(other, 0x7000_1000, 0x9000_0000, 0x1000, RW).unwrap();
    assert_eq!(a.attach(DeviceId(DEV.into()), other), Err(Error::Map(io_pgtable::Error::AlreadyMapped(0x7000_1000))));
    assert_eq!(a.attached(DeviceId(DEV.into())), Some(pg));
}

#[test]
fn map_direct_regions_helper_on_the_mock() {
    let region = Region { start: 0x10_0800, end: 0x10_2000, kind: ReservedKind::DirectMap };
    let mut cfg = MockConfig::default();
    cfg.reserved.push((Some(DeviceId(0x10)), region));
    let mut m = MockIommu::new(cfg);
    let d = m.domain_alloc(DomainKind::Paging).unwrap();
    m.map(d, 0x10_1000, 0x10_1000, 0x1000, RW).unwrap(); // already one to one: kept
    iommu::map_direct_regions(&mut m, DeviceId(0x10), d).unwrap();
    for page in [0x10_0000, 0x10_1000, 0x10_2000] {
        assert_eq!(m.iova_to_phys(d, page), Some(page));
    }
    assert_eq!(m.iova_to_phys(d, 0x10_3000), None);
    iommu::map_direct_regions(&mut m, DeviceId(0x10), d).unwrap(); // idempotent
    iommu::map_direct_regions(&mut m, DeviceId(0x18), d).unwrap(); // no region: nothing
    let e = m.domain_alloc(DomainKind::Paging).unwrap();
    m.map(e, 0x10_2000, 0x5000, 0x1000, RW).unwrap();
    assert_eq!(
        iommu::map_direct_regions(&mut m, DeviceId(0x10), e),
        Err(Error::Map(io_pgtable::Error::AlreadyMapped(0x10_2000)))
    );
}

#[test]
fn faults_are_drained_and_other_events_logged() {
    let mut a = driver(Vec::new());
    assert!(a.drain_faults().is_empty());
    // IO_PAGE_FAULT: write (RW, bit 53) by 0x10 in domain 1 at 0x5000; then an illegal command.
    a.mem.push_event([2 << 60 | 1 << 53 | 1 << 32 | u64::from(DEV), 0x5000]);
    a.mem.push_event([5 << 60, 0x1_0000_0000]);
    a.mem.push_event([1 << 60 | u64::from(OTHER), 0x6000]);
    let f = a.drain_faults();
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].device, f[0].address, f[0].access), (DeviceId(DEV.into()), 0x5000, iommu::Access::Write));
    assert_eq!((f[0].reason, f[0].reason_name), (2, "IO_PAGE_FAULT"));
    assert_eq!((f[1].device, f[1].reason_name), (DeviceId(OTHER.into()), "ILLEGAL_DEV_TABLE_ENTRY"));
    assert_eq!(a.mem.regs().evt_head.get(), a.mem.regs().evt_tail.get(), "EvtHead caught up");
    assert!(a.drain_faults().is_empty());
    // Around the ring, in order.
    let mut got = Vec::new();
    for round in 0..3u64 {
        for i in 0..100 {
            a.mem.push_event([2 << 60 | u64::from(DEV), (round * 100 + i) << 12]);
        }
        got.extend(a.drain_faults().into_iter().map(|f| f.address >> 12));
    }
    assert_eq!(got, (0..300).collect::<Vec<u64>>());
}

#[test]
fn event_log_overflow_is_counted_and_restarted() {
    let mut a = driver(Vec::new());
    for i in 0..300u64 {
        a.mem.push_event([2 << 60 | u64::from(DEV), i << 12]);
    }
    let status = a.mem.regs().status.get();
    assert!(status & 1 != 0 && status & STATUS::EVENT_LOG_RUN::SET.value == 0, "fake overflowed: {status:#x}");
    assert_eq!(a.drain_faults().len(), 255, "one slot stays free");
    assert_eq!(a.unit.event_overflows, 1);
    // The overflow was acknowledged (a W1C write of EventOverflow) and EventLogEn is on again.
    assert_eq!(a.mem.regs().status.get(), STATUS::EVENT_OVERFLOW::SET.value);
    assert!(a.mem.regs().control.is_set(CONTROL::EVENT_LOG_EN));
    a.mem.regs().status.set(0); // what the hardware made of the W1C write
    a.mem.push_event([2 << 60 | u64::from(DEV), 0x42_000]);
    assert_eq!(a.drain_faults().len(), 1);
    assert_eq!(a.unit.event_overflows, 1);
}

#[test]
fn refused_command_is_reported_and_the_buffer_restarted() {
    let mut a = driver(Vec::new());
    let bad = Command::from_words([0xF << 60, 0]);
    let base = a.mem.regs().cmd_base.get() & 0x000F_FFFF_FFFF_F000;
    a.mem.push_event([2 << 60 | u64::from(DEV), 0x9000]); // a fault already in the log
    let e = a.unit.submit(&[bad], &mut a.mem).unwrap_err();
    // Bring-up used slots 0 and 1: the bad command sat in slot 2.
    assert_eq!(e, AmdViError::Command { code: EventCode::ILLEGAL_COMMAND_ERROR, address: base + 0x20 });
    assert_eq!(Error::from(e), Error::Hardware("AMD-Vi command refused"));
    // The buffer works again, and the fault that was read on the way is not lost.
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    a.attach(DeviceId(DEV.into()), pg).unwrap();
    let f = a.drain_faults();
    assert_eq!((f.len(), f[0].address), (1, 0x9000));
}

#[test]
fn commands_wrap_around_the_buffer() {
    let mut a = driver(Vec::new());
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    for i in 0..300u64 {
        a.map(pg, i << 12, i << 12, 0x1000, RW).unwrap();
        let u = a.unmap(pg, i << 12, 0x1000).unwrap();
        a.flush(pg, u.gather).unwrap();
    }
    // 2 at bring-up + 2 per flush; QEMU's CmdHead shows 0x1000 after the last slot.
    assert_eq!(a.unit.commands, 602);
    assert_eq!(a.mem.log.borrow().len(), 602);
    assert_eq!(a.flushes(), 300);
    // A batch longer than half the ring goes in parts.
    let many = vec![cmd::invalidate_devtab_entry(DEV); 300];
    let from = a.mem.log.borrow().len();
    a.unit.submit(&many, &mut a.mem).unwrap();
    assert_eq!(opcodes(&ran(&a, from)).iter().filter(|&&o| o == cmd::COMPLETION_WAIT).count(), 3);
}

#[test]
fn status_and_control_show_in_info() {
    let a = driver(Vec::new());
    a.mem.regs().status.set(0x18);
    let raw = a.info().raw;
    assert_eq!(raw[0], ("EFR", QEMU_EFR));
    assert!(raw.contains(&("STATUS", 0x18)));
    assert!(raw.iter().any(|&(n, v)| n == "CONTROL" && v & 1 == 1));
}

// Kernel-managed HWPTs with driver attributes (`hwpt_data::AMDVI_ATTRS`).

mod hwpt {
    use super::*;
    use abi::iommufd::{hwpt_data::AMDVI_ATTRS, HwptAmdviAttrs};
    use iommu::DomainId;
    use std::sync::Mutex;
    use zerocopy::IntoBytes;

    /// Log lines by thread (tests run in parallel, each on its own thread).
    static LINES: Mutex<Vec<(std::thread::ThreadId, log::Level, String)>> = Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            let line = (std::thread::current().id(), r.level(), r.args().to_string());
            LINES.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    /// Starts capturing (once per process) and forgets this thread's old lines.
    fn capture() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            log::set_logger(&Capture).unwrap();
            log::set_max_level(log::LevelFilter::Trace);
        });
        logged();
    }

    /// This thread's lines since the last call, at `level` or more severe.
    fn logged_at(level: log::Level) -> Vec<String> {
        let me = std::thread::current().id();
        let mut all = LINES.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(t, _, _)| *t == me);
        *all = rest;
        mine.into_iter().filter(|(_, l, _)| *l <= level).map(|(_, _, s)| s).collect()
    }

    fn logged() -> Vec<String> {
        logged_at(log::Level::Info)
    }

    pub(super) fn attrs(levels: u32, reserved: u32) -> Vec<u8> {
        HwptAmdviAttrs { levels, reserved }.as_bytes().to_vec()
    }

    fn hwpt(a: &mut AmdViIommu<FakeMem>, levels: u32) -> Result<DomainId, Error> {
        a.domain_alloc_user(AMDVI_ATTRS, &attrs(levels, 0), None)
    }

    /// A unit whose EFR.HATS allows `max` host levels (4, 5 or 6).
    fn driver_with_hats(max: usize) -> AmdViIommu<FakeMem> {
        let (unit, mem) = bring_up((QEMU_EFR & !(3 << 10)) | ((max as u64 - 4) << 10));
        let a = AmdViIommu::new(unit.unwrap(), mem, vec![DEV, OTHER], Vec::new());
        assert_eq!(a.unit.max_levels(), max);
        a
    }

    type Alloc<'a> = &'a dyn Fn(&mut AmdViIommu<FakeMem>) -> Result<DomainId, Error>;

    /// Asserts `alloc` fails with `want`, allocating nothing, and one warning says why.
    fn refused(a: &mut AmdViIommu<FakeMem>, alloc: Alloc, want: Error) {
        let live = a.mem.live();
        assert_eq!(alloc(a), Err(want));
        assert_eq!(a.mem.live(), live, "{want}: nothing allocated");
        let warned = logged_at(log::Level::Warn);
        assert!(warned.len() == 1 && warned[0].starts_with("amdvi: HWPT refused: "), "{want}: {warned:?}");
    }

    #[test]
    fn three_levels_map_and_translate_with_mode_3() {
        capture();
        let mut a = driver(Vec::new());
        let base = a.mem.live();
        let d = hwpt(&mut a, 3).unwrap();
        assert_eq!(logged(), [format!("amdvi: HWPT domain {}: 3 levels (39-bit IOVAs)", d.0)]);
        assert_eq!(a.domain_levels(d), Some(3));
        let top = (1u64 << 39) - 1;
        // The aperture is 39 bits: the last page maps, nothing beyond it.
        a.map(d, top - 0xFFF, 0x7_0000_0000, 0x1000, RW).unwrap();
        for (iova, len) in [(1u64 << 39, 0x1000), (top - 0xFFF, 0x2000), (1 << 47, 0x1000), (u64::MAX - 0xFFF, 0x1000)]
        {
            assert_eq!(a.map(d, iova, 0, len, RW), Err(Error::OutOfAperture { iova, len }));
        }
        a.map(d, 0x1000, 0x5000, 0x1000, Perms::READ).unwrap();
        a.map(d, 1 << 30, 1 << 32, 1 << 30, RW).unwrap(); // a 1 GiB leaf in the root
        a.map(d, 0x4020_0000 + (1 << 32), 0x20_0000, 0x20_0000, RW).unwrap(); // 2 MiB
        a.attach(DeviceId(DEV.into()), d).unwrap();
        let entry = a.mem.dte(DEV);
        assert_eq!((dte::mode(&entry), dte::domain_id(&entry)), (3, a.domain_tag(d).unwrap()));
        assert_eq!(entry.to_words()[1..], [u64::from(a.domain_tag(d).unwrap()), 0, 0]);
        // The fake walks three levels from the DTE.
        assert_eq!(a.mem.translate(DEV, 0x1234, false), Some(0x5234));
        assert_eq!(a.mem.translate(DEV, 0x1234, true), None, "read-only page");
        assert_eq!(a.mem.translate(DEV, 0x4123_4567, true), Some(0x1_0123_4567), "1 GiB leaf");
        assert_eq!(a.mem.translate(DEV, 0x1_4021_0008, true), Some(0x21_0008), "2 MiB leaf");
        assert_eq!(a.mem.translate(DEV, top - 7, true), Some(0x7_0000_0FF8), "last page");
        assert_eq!(a.mem.translate(DEV, 0x3000, false), None, "unmapped");
        assert_eq!(a.iova_to_phys(d, 0x4000_0010), Some(0x1_0000_0010));
        assert_eq!((a.iova_to_phys(d, top), a.iova_to_phys(d, top + 1)), (Some(0x7_0000_0FFF), None));
        assert_eq!(a.leaves(d, 0, 1 << 39), [(1 << 30, 1), (1 << 21, 1), (1 << 12, 2)]);
        // Unmap, flush, gone.
        let tag = a.domain_tag(d).unwrap();
        let u = a.unmap(d, 1 << 30, 1 << 30).unwrap();
        assert_eq!(u.bytes, 1 << 30);
        let from = a.mem.log.borrow().len();
        a.flush(d, u.gather).unwrap();
        assert_eq!(ran(&a, from)[0], cmd::invalidate_iommu_pages(tag, PageRange::covering(1 << 30, 1 << 31), false));
        assert_eq!(a.mem.translate(DEV, 0x4123_4567, true), None);
        assert_eq!(iommu::unmap_and_flush(&mut a, d, top - 0xFFF, 0x1000), Ok(0x1000));
        assert_eq!(a.mem.translate(DEV, top - 7, true), None);
        // The unit's info describes its default domains still.
        assert_eq!(a.info().aperture, (0, (1 << 48) - 1));
        assert_eq!(a.domain_free(d), Err(Error::Busy(d)));
        a.detach(DeviceId(DEV.into())).unwrap();
        a.domain_free(d).unwrap();
        assert_eq!((a.mem.live(), a.domain_levels(d)), (base, None));
    }

    #[test]
    fn every_level_count_the_unit_walks_works() {
        capture();
        let mut a = driver(Vec::new()); // QEMU: HATS = 6 levels
                                        // 1 level: 21-bit IOVAs, 4 KiB leaves only.
        let one = hwpt(&mut a, 1).unwrap();
        a.map(one, 0, 0x4000_0000, 0x20_0000, RW).unwrap();
        assert_eq!(a.leaves(one, 0, 0x20_0000), [(0x1000, 512)]);
        assert_eq!(a.map(one, 0x20_0000, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 0x20_0000, len: 0x1000 }));
        a.attach(DeviceId(DEV.into()), one).unwrap();
        assert_eq!(dte::mode(&a.mem.dte(DEV)), 1);
        assert_eq!(a.mem.translate(DEV, 0x1F_F010, true), Some(0x401F_F010));
        // 2 levels: 30-bit IOVAs, 2 MiB leaves in the root.
        let two = hwpt(&mut a, 2).unwrap();
        a.map(two, 0x3FE0_0000, 0x20_0000, 0x20_0000, RW).unwrap();
        a.map(two, 0x1000, 0x9000, 0x1000, RW).unwrap();
        assert_eq!(a.leaves(two, 0, 1 << 30), [(1 << 21, 1), (1 << 12, 1)]);
        assert_eq!(a.map(two, 1 << 30, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 30, len: 0x1000 }));
        a.attach(DeviceId(OTHER.into()), two).unwrap();
        assert_eq!(dte::mode(&a.mem.dte(OTHER)), 2);
        assert_eq!(a.mem.translate(OTHER, 0x3FF0_0008, true), Some(0x30_0008));
        assert_eq!(a.mem.translate(OTHER, 0x1008, false), Some(0x9008));
        // 5 and 6 levels: 57-bit IOVAs, then the whole 64-bit space.
        let five = hwpt(&mut a, 5).unwrap();
        a.map(five, 1 << 56, 0x6000, 0x1000, RW).unwrap();
        assert_eq!(a.map(five, 1 << 57, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 57, len: 0x1000 }));
        a.attach(DeviceId(DEV.into()), five).unwrap();
        assert_eq!(dte::mode(&a.mem.dte(DEV)), 5);
        assert_eq!(a.mem.translate(DEV, (1 << 56) + 4, false), Some(0x6004));
        let six = hwpt(&mut a, 6).unwrap();
        a.map(six, 1 << 63, 0x7000, 0x1000, RW).unwrap();
        a.attach(DeviceId(DEV.into()), six).unwrap();
        assert_eq!(dte::mode(&a.mem.dte(DEV)), 6);
        assert_eq!(a.mem.translate(DEV, (1 << 63) + 8, true), Some(0x7008));
        assert_eq!(a.iova_to_phys(six, 1 << 63), Some(0x7000));
        let lines = logged();
        for (d, text) in [
            (one, "1 levels (21-bit IOVAs)"),
            (two, "2 levels (30-bit IOVAs)"),
            (five, "5 levels (57-bit IOVAs)"),
            (six, "6 levels (64-bit IOVAs)"),
        ] {
            assert!(lines.contains(&format!("amdvi: HWPT domain {}: {text}", d.0)), "{text}: {lines:?}");
        }
        // Everything is given back.
        a.detach(DeviceId(DEV.into())).unwrap();
        a.detach(DeviceId(OTHER.into())).unwrap();
        let frames = a.unit.table_frames();
        for d in [one, two, five, six] {
            a.domain_free(d).unwrap();
        }
        assert_eq!(a.mem.live(), frames);
    }

    #[test]
    fn levels_beyond_efr_hats_are_not_supported() {
        capture();
        for max in 4..=6 {
            let mut a = driver_with_hats(max);
            for levels in 1..=6u32 {
                if levels as usize <= max {
                    let d = hwpt(&mut a, levels).unwrap();
                    assert_eq!(a.domain_levels(d), Some(levels as usize));
                    a.domain_free(d).unwrap();
                    assert_eq!(logged().len(), 1);
                } else {
                    refused(&mut a, &|a| hwpt(a, levels), Error::NotSupported("levels"));
                }
            }
        }
        // A refusal takes no domain ID: the next domain gets the first tag.
        let mut a = driver_with_hats(4);
        refused(&mut a, &|a| hwpt(a, 5), Error::NotSupported("levels"));
        let d = hwpt(&mut a, 0).unwrap();
        assert_eq!((a.domain_tag(d), a.domain_levels(d)), (Some(domain_tag(1)), Some(4)));
    }

    #[test]
    fn malformed_attributes_are_invalid() {
        capture();
        let mut a = driver(Vec::new());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (attrs(3, 1), "reserved"),
            (attrs(0, 0x8000_0000), "reserved"),
            ([3, 0, 0, 0, 1].to_vec(), "reserved"),
            (attrs(7, 0), "levels"),
            (attrs(8, 0), "levels"),
            (attrs(0x100, 0), "levels"),
            (attrs(u32::MAX, 0), "levels"),
            ([attrs(3, 0), vec![1]].concat(), "non-zero bytes beyond HwptAmdviAttrs"),
            ([attrs(3, 0), vec![0; 55], vec![0x80]].concat(), "non-zero bytes beyond HwptAmdviAttrs"),
        ];
        for (data, what) in cases {
            refused(&mut a, &|a| a.domain_alloc_user(AMDVI_ATTRS, &data, None), Error::InvalidData(what));
        }
        // Reserved is checked before levels; both malformed: reserved.
        refused(&mut a, &|a| a.domain_alloc_user(AMDVI_ATTRS, &attrs(9, 2), None), Error::InvalidData("reserved"));
        let d = hwpt(&mut a, 3).unwrap();
        assert_eq!(a.domain_tag(d), Some(domain_tag(1)), "no domain ID was taken");
    }

    #[test]
    fn other_data_types_and_nesting_are_not_supported() {
        capture();
        let mut a = driver(Vec::new());
        let parent = a.domain_alloc_nest_parent().unwrap();
        for t in [0, 1, 2, 3, 5, u32::MAX] {
            refused(&mut a, &|a| a.domain_alloc_user(t, &attrs(3, 0), None), Error::NotSupported("data type"));
        }
        let nested = Error::NotSupported("AMD-Vi has no nested HWPT of this type");
        refused(&mut a, &|a| a.domain_alloc_user(AMDVI_ATTRS, &attrs(3, 0), Some(parent)), nested);
        // The data type is looked at first; bad data under a parent is still "nested".
        refused(&mut a, &|a| a.domain_alloc_user(1, &[], Some(parent)), Error::NotSupported("data type"));
        refused(&mut a, &|a| a.domain_alloc_user(AMDVI_ATTRS, &attrs(9, 9), Some(parent)), nested);
        assert_eq!(a.domain_levels(parent), Some(4));
    }

    #[test]
    fn defaults_and_short_data() {
        capture();
        let mut a = driver(Vec::new());
        let plain = a.domain_alloc(DomainKind::Paging).unwrap();
        // Zero levels, or no data at all, or zeros of any length: the default (4 levels).
        let zeros: [&[u8]; 5] = [&[], &[0], &[0; 4], &[0; 8], &[0; 64]];
        for data in zeros {
            let d = a.domain_alloc_user(AMDVI_ATTRS, data, None).unwrap();
            assert_eq!(a.domain_levels(d), Some(4), "{} bytes", data.len());
            assert_eq!(logged(), [format!("amdvi: HWPT domain {}: 4 levels (48-bit IOVAs)", d.0)]);
            a.map(d, (1 << 48) - 0x1000, 0, 0x1000, RW).unwrap();
            assert!(matches!(a.map(d, 1 << 48, 0, 0x1000, RW), Err(Error::OutOfAperture { .. })));
        }
        let explicit = hwpt(&mut a, 4).unwrap();
        // Same DTE as a default paging domain but for the root and the tag.
        a.attach(DeviceId(DEV.into()), plain).unwrap();
        a.attach(DeviceId(OTHER.into()), explicit).unwrap();
        let (p, e) = (a.mem.dte(DEV), a.mem.dte(OTHER));
        let root = dte::DTE0::PT_ROOT.mask << dte::DTE0::PT_ROOT.shift;
        assert_eq!(p.q0.get() & !root, e.q0.get() & !root);
        assert_eq!(dte::mode(&p), 4);
        // Short data is zero-filled: levels in the first bytes.
        for (data, levels) in [(&[3u8][..], 3), (&[2, 0][..], 2), (&[5, 0, 0, 0][..], 5), (&[1, 0, 0, 0, 0, 0][..], 1)]
        {
            let d = a.domain_alloc_user(AMDVI_ATTRS, data, None).unwrap();
            assert_eq!(a.domain_levels(d), Some(levels));
        }
        // Trailing zeros beyond the struct are fine.
        let d = a.domain_alloc_user(AMDVI_ATTRS, &[attrs(3, 0), vec![0; 24]].concat(), None).unwrap();
        assert_eq!(a.domain_levels(d), Some(3));
        // info() and identity / blocked domains are untouched.
        assert_eq!(a.info().aperture, (0, (1 << 48) - 1));
        let id = a.domain_alloc(DomainKind::Identity).unwrap();
        assert_eq!(a.domain_levels(id), None);
        assert_eq!(a.map(id, 1 << 48, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 48, len: 0x1000 }));
        assert_eq!(a.map(id, 0, 0, 0x1000, RW), Err(Error::NotPaging(id)));
        let gone = DomainId(999);
        assert_eq!(a.map(gone, 1 << 48, 0, 0x1000, RW), Err(Error::OutOfAperture { iova: 1 << 48, len: 0x1000 }));
        assert_eq!(a.map(gone, 0, 0, 0x1000, RW), Err(Error::NoSuchDomain(gone)));
    }

    #[test]
    fn direct_map_regions_must_fit_the_aperture() {
        capture();
        let region = Region { start: 0x7000_0000, end: 0x7000_2FFF, kind: ReservedKind::DirectMap };
        let mut a = driver(vec![(Some(DEV), region)]);
        // 39 bits hold the region: identity-mapped before the DTE points there.
        let three = hwpt(&mut a, 3).unwrap();
        a.attach(DeviceId(DEV.into()), three).unwrap();
        assert_eq!(a.iova_to_phys(three, 0x7000_2010), Some(0x7000_2010));
        assert_eq!(a.mem.translate(DEV, 0x7000_1008, true), Some(0x7000_1008));
        // 30 bits (1 GiB) do not: the attach fails and the device stays put.
        let two = hwpt(&mut a, 2).unwrap();
        let e = a.attach(DeviceId(DEV.into()), two);
        assert_eq!(e, Err(Error::OutOfAperture { iova: 0x7000_0000, len: 0x3000 }));
        assert_eq!(a.attached(DeviceId(DEV.into())), Some(three));
        assert_eq!(dte::mode(&a.mem.dte(DEV)), 3);
        // A device without the region attaches to it.
        a.attach(DeviceId(OTHER.into()), two).unwrap();
        assert_eq!(dte::mode(&a.mem.dte(OTHER)), 2);
    }
}

/// Devices as QEMU 10.0 sees a host bridge (0x0000) and two functions behind
/// root ports (03:00.0, 04:00.0) whose DMA it looks up under 0x0000.
fn stale_driver() -> AmdViIommu<FakeMem> {
    let (unit, mem) = bring_up(QEMU_EFR);
    AmdViIommu::new(unit.unwrap(), mem, vec![0x0000, 0x0300, 0x0400], Vec::new())
        .with_dte_aliases(vec![(0x0300, 0x0000), (0x0400, 0x0000)])
}

#[test]
fn extra_entry_is_programmed_and_blocked_with_its_device() {
    let mut a = stale_driver();
    assert_eq!(a.dte_aliases(0x0300), [0x0000]);
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    a.map(pg, 0x1000, 0x5000, 0x1000, RW).unwrap();
    a.attach(DeviceId(0x300), pg).unwrap();
    assert_eq!(a.mem.dte(0x0000), a.mem.dte(0x0300), "the stale entry is the real one");
    assert_eq!(dte::mode(&a.mem.dte(0x0000)), 4);
    // QEMU 10.0 translates 03:00.0 through 0x0000; 10.2 through 0x0300.
    assert_eq!(a.mem.translate(0x0000, 0x1000, true), Some(0x5000));
    assert_eq!(a.mem.translate(0x0300, 0x1000, true), Some(0x5000));
    assert_eq!(a.mem.translate(0x0400, 0x1000, true), None, "04:00.0's own entry stays blocked");
    let from = a.mem.log.borrow().len();
    a.detach(DeviceId(0x300)).unwrap();
    for id in [0x0000, 0x0300] {
        assert_eq!(a.mem.dte(id), a.unit.blocked_dte(dte::BLOCKED_TAG));
        assert_eq!(a.mem.translate(id, 0x1000, true), None, "{id:#x}: nothing left in the IOTLB");
    }
    let cmds = ran(&a, from);
    assert!(
        cmds.contains(&cmd::invalidate_devtab_entry(0x0000)) && cmds.contains(&cmd::invalidate_devtab_entry(0x0300))
    );
    assert_eq!(opcodes(&cmds).last(), Some(&cmd::COMPLETION_WAIT));
    assert!(!a.translating());
    a.domain_free(pg).unwrap();
}

#[test]
fn sharers_of_an_entry_must_be_in_one_domain() {
    let mut a = stale_driver();
    let (d1, d2) = (a.domain_alloc(DomainKind::Paging).unwrap(), a.domain_alloc(DomainKind::Paging).unwrap());
    a.attach(DeviceId(0x300), d1).unwrap();
    assert_eq!(a.attach(DeviceId(0x400), d2), Err(Error::Busy(d1)), "0x0000 cannot hold two domains");
    assert_eq!(a.mem.dte(0x0400), a.unit.blocked_dte(dte::BLOCKED_TAG), "refused before any write");
    a.attach(DeviceId(0x400), d1).unwrap();
    // Moving 03:00.0 elsewhere while 04:00.0 stays in d1 is refused too.
    assert_eq!(a.attach(DeviceId(0x300), d2), Err(Error::Busy(d1)));
    a.attach(DeviceId(0x300), d1).unwrap(); // re-attaching to the same domain is fine
                                            // Detaching 03:00.0 blocks the shared entry: 04:00.0 fails closed on
                                            // QEMU 10.0 but keeps its own entry (and stays attached).
    a.detach(DeviceId(0x300)).unwrap();
    assert_eq!(a.mem.dte(0x0000), a.unit.blocked_dte(dte::BLOCKED_TAG));
    assert_eq!(a.attached(DeviceId(0x400)), Some(d1));
    assert_eq!(dte::domain_id(&a.mem.dte(0x0400)), a.domain_tag(d1).unwrap());
    a.detach(DeviceId(0x400)).unwrap();
    assert!(!a.translating());
}

#[test]
fn blocking_the_device_unattaches_the_owner_of_its_extra_entry() {
    // iommu.unclaimed=identity at boot: the host bridge and 03:00.0 in the identity domain.
    let mut a = stale_driver();
    let ident = a.domain_alloc(DomainKind::Identity).unwrap();
    for dev in [0x0000, 0x0300] {
        a.attach(DeviceId(dev), ident).unwrap();
    }
    let pg = a.domain_alloc(DomainKind::Paging).unwrap();
    assert_eq!(a.attach(DeviceId(0x300), pg), Err(Error::Busy(ident)), "the host bridge holds 0x0000");
    // A claim blocks 03:00.0 first: that blocks 0x0000, the host bridge's
    // only entry, so it is no longer attached and the attach goes through.
    a.detach(DeviceId(0x300)).unwrap();
    assert_eq!(a.attached(DeviceId(0x0000)), None);
    a.attach(DeviceId(0x300), pg).unwrap();
    assert_eq!(a.mem.dte(0x0000), a.mem.dte(0x0300));
    a.detach(DeviceId(0x300)).unwrap();
    assert_eq!(a.mem.dte(0x0000), a.unit.blocked_dte(dte::BLOCKED_TAG), "the host bridge is not given identity back");
}

#[test]
fn extra_entries_for_unknown_devices_or_themselves_are_left_out() {
    let (unit, mem) = bring_up(QEMU_EFR);
    let a = AmdViIommu::new(unit.unwrap(), mem, vec![DEV, 0x0310], Vec::new()).with_dte_aliases(vec![
        (0x0500, 0x0000),
        (DEV, DEV),
        (0x0310, 0x0010),
        (0x0310, 0x0010),
    ]);
    assert_eq!((a.dte_aliases(0x0500), a.dte_aliases(DEV), a.dte_aliases(0x0310)), (vec![], vec![], vec![0x0010]));
}

/// What a caller can see of the driver: mappings at a few IOVAs per domain,
/// who is attached where, the frames in use, the commands run.
fn observe(a: &AmdViIommu<FakeMem>, domains: &[iommu::DomainId]) -> String {
    fallible::testing::unarmed(|| {
        let iovas = [0x10_0000u64, 0x10_1000, 0x40_0000, 0x5F_F000, 0x1234_5000];
        let maps: Vec<_> = domains.iter().map(|&d| iovas.map(|i| a.iova_to_phys(d, i))).collect();
        let att: Vec<_> = [DEV, OTHER].map(|r| a.attached(DeviceId(u32::from(r)))).to_vec();
        let dtes: Vec<_> = [DEV, OTHER].map(|r| a.mem.dte(r)).to_vec();
        format!("{maps:?} {att:?} {dtes:x?} live {}", a.mem.live())
    })
}

/// Runs `op` failing its 1st, 2nd, ... heap allocation until it succeeds;
/// each failure must answer `NoMemory` and leave `observe` unchanged.
/// Returns the successful result and how many allocations it made.
fn fail_nth<T: core::fmt::Debug>(
    a: &mut AmdViIommu<FakeMem>,
    domains: &[iommu::DomainId],
    what: &str,
    op: &mut dyn FnMut(&mut AmdViIommu<FakeMem>) -> Result<T, Error>,
) -> (T, u64) {
    fallible::testing::each_failure(a, what, &Error::NoMemory, &|a| observe(a, domains), op)
}

#[test]
fn every_heap_failure_on_a_syscall_path_answers_no_memory_and_changes_nothing() {
    let mut a = driver(vec![]);
    let (dev, other) = (DeviceId(u32::from(DEV)), DeviceId(u32::from(OTHER)));
    let (pg, n) = fail_nth(&mut a, &[], "domain_alloc", &mut |a| a.domain_alloc(DomainKind::Paging));
    assert!(n >= 1, "the domain table grew");
    let (user, _) = fail_nth(&mut a, &[pg], "domain_alloc_user", &mut |a| {
        let data = fallible::testing::unarmed(|| hwpt::attrs(3, 0));
        a.domain_alloc_user(abi::iommufd::hwpt_data::AMDVI_ATTRS, &data, None)
    });
    let ds = [pg, user];
    fail_nth(&mut a, &ds, "map 4K", &mut |a| a.map(pg, 0x10_0000, 0x30_0000, 0x1000, RW));
    fail_nth(&mut a, &ds, "map 2M", &mut |a| a.map(pg, 0x40_0000, 0x80_0000, 0x20_0000, RW));
    fail_nth(&mut a, &ds, "map user", &mut |a| a.map(user, 0x10_0000, 0x30_0000, 0x2000, RW));
    let (_, n) = fail_nth(&mut a, &ds, "attach", &mut |a| a.attach(dev, pg));
    assert!(n >= 1, "the attach record grew");
    fail_nth(&mut a, &ds, "attach other", &mut |a| a.attach(other, user));
    fail_nth(&mut a, &ds, "reattach", &mut |a| a.attach(other, pg));
    // msi_remap is not exercised: the fake refuses INVALIDATE_INTERRUPT_TABLE
    // (QEMU's command check knows opcodes 1, 2, 3 and 8 only).
    let (_, n) = fail_nth(&mut a, &ds, "unmap+flush", &mut |a| {
        let u = a.unmap(pg, 0x40_0000, 0x20_0000)?;
        a.flush(pg, u.gather)
    });
    assert_eq!(n, 0, "unmap and flush of a leaf allocate nothing");
    // An unmap that empties tables allocates once (the gather's first chain
    // head) and never fails for it: without heap the tables stay, empty.
    let live = a.mem.live();
    fallible::testing::arm(1);
    let u = a.unmap(pg, 0, 0x20_0000).unwrap();
    a.flush(pg, u.gather).unwrap();
    assert_eq!(fallible::testing::disarm(), 1);
    assert_eq!((a.iova_to_phys(pg, 0x10_0000), a.mem.live()), (None, live), "unmapped, tables kept");
    let u = a.unmap(user, 0, 0x20_0000).unwrap();
    assert!(u.gather.has_freed_tables());
    a.flush(user, u.gather).unwrap();
    assert!(a.mem.live() < live, "with heap the emptied tables go");
    fail_nth(&mut a, &ds, "detach", &mut |a| a.detach(dev));
    fail_nth(&mut a, &ds, "detach other", &mut |a| a.detach(other));
    fail_nth(&mut a, &ds, "domain_free", &mut |a| a.domain_free(user));
    fail_nth(&mut a, &[pg], "domain_free", &mut |a| a.domain_free(pg));
    // The allocation-free doors allocate nothing.
    fallible::testing::arm(1);
    assert!(a.serves(dev) && !a.serves(DeviceId(0x99)));
    a.drain_faults_with(&mut |_| {});
    a.for_each_reserved(dev, &mut |_| {});
    a.for_each_leaf_size(pg, 0, 1 << 30, &mut |_, _| {});
    assert_eq!((a.kind(), a.page_sizes()), (iommu::UnitKind::AmdVi, 1 << 12 | 1 << 21 | 1 << 30));
    assert_eq!(fallible::testing::disarm(), 0);
    fallible::testing::arm(1);
    assert_eq!(a.try_info().map(|_| ()), Err(Error::NoMemory));
    fallible::testing::arm(1);
    assert!(a.info().raw.is_empty(), "info without heap: no raw registers, no abort");
    fallible::testing::disarm();
    assert_eq!(a.try_info().unwrap().raw.len(), 3);
}
