//! Host tests of the object model against `MockIommu`.

use super::*;
use crate::ioas::lowest_gap;
use crate::pages::Area;
use alloc::boxed::Box;
use alloc::vec::Vec;
use fallible::TryMap;
use iommu::mock::{MockConfig, MockIommu, Op as MockOp};
use iommu::{DeviceId, Iommu, Perms};
use iommu::{Region, ReservedKind};

use crate::testing::{FakeMemory, PA_BASE as BASE};

const RW: Perms = Perms::READ.union(Perms::WRITE);

fn mock(devices: &[u32], extra_reserved: Vec<(Option<DeviceId>, Region)>) -> Box<dyn Iommu> {
    let mut cfg = MockConfig { devices: devices.iter().map(|&d| DeviceId(d)).collect(), ..MockConfig::default() };
    cfg.reserved.extend(extra_reserved);
    Box::new(MockIommu::new(cfg))
}

fn mock_of(units: &mut [Box<dyn Iommu>], i: usize) -> &mut MockIommu {
    units[i].as_any_mut().downcast_mut::<MockIommu>().unwrap()
}

#[test]
fn map_attach_dma_unmap() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), 0x1234, true), None, "bound, unattached: blocked");
    // Mapped before the attach: mirrored into the HWPT the attach creates.
    let iova = fd
        .map(&mut units, &mut mem, ioas, MapArgs { va: 0x8000, len: 0x2000, iova: IovaChoice::Auto, perms: RW })
        .unwrap();
    assert!(iova >= PAGE && iova.is_multiple_of(PAGE));
    let hwpt = fd.device_attach(&mut units, dev, ioas).unwrap();
    assert_eq!(fd.kind(hwpt), Some(Kind::Hwpt));
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), iova + 0x1008, true), Some(BASE + 0x9008));
    // Mapped after the attach: goes straight in.
    let fixed = fd
        .map(
            &mut units,
            &mut mem,
            ioas,
            MapArgs { va: 0x10_0000, len: 0x1000, iova: IovaChoice::Fixed(0x4000_0000), perms: Perms::READ },
        )
        .unwrap();
    assert_eq!(fixed, 0x4000_0000);
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), fixed, false), Some(BASE + 0x10_0000));
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), fixed, true), None, "read-only");
    assert_eq!(mem.pins.len(), 3);
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, iova, 0x2000), Ok(0x2000));
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), iova, true), None, "flushed");
    assert_eq!(mem.pins.len(), 1);
    assert_eq!(fd.destroy(&mut units, &mut mem, ioas), Err(Errno::EBUSY), "attached");
    fd.device_detach(&mut units, dev).unwrap();
    assert_eq!(fd.kind(hwpt), None, "the automatic HWPT goes with its last device");
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), fixed, false), None, "detached: blocked");
    fd.destroy(&mut units, &mut mem, ioas).unwrap();
    assert!(mem.pins.is_empty());
    fd.destroy(&mut units, &mut mem, dev).unwrap();
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), 0x5000, true), None, "unbound: still blocked");
    assert!(fd.is_empty());
}

/// Default deny through every exit of a device's life: bound, attached then
/// detached, destroyed while attached, and the task closed while attached.
#[test]
fn a_device_is_blocked_at_every_step_but_attached() {
    let mut units = vec![mock(&[0x10, 0x18], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let blocked = |units: &mut Vec<Box<dyn Iommu>>, d: u32| {
        let m = mock_of(units, 0);
        m.drain_faults();
        m.dma(DeviceId(d), 0x40_0000, true).is_none() && m.attached(DeviceId(d)).is_none()
    };
    assert!(blocked(&mut units, 0x10), "before bind");
    let ioas = fd.ioas_alloc().unwrap();
    fd.map(
        &mut units,
        &mut mem,
        ioas,
        MapArgs { va: 0x8000, len: 0x1000, iova: IovaChoice::Fixed(0x40_0000), perms: RW },
    )
    .unwrap();
    let a = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    assert!(blocked(&mut units, 0x10), "bound");
    fd.device_attach(&mut units, a, ioas).unwrap();
    assert!(!blocked(&mut units, 0x10), "attached: translated");
    fd.device_detach(&mut units, a).unwrap();
    assert!(blocked(&mut units, 0x10), "detached");
    fd.device_attach(&mut units, a, ioas).unwrap();
    fd.destroy(&mut units, &mut mem, a).unwrap();
    assert!(blocked(&mut units, 0x10), "destroyed while attached");
    let b = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    fd.device_attach(&mut units, b, ioas).unwrap();
    assert!(!blocked(&mut units, 0x18));
    fd.close(&mut units, &mut mem);
    assert!(blocked(&mut units, 0x18), "task exit");
    assert!(mem.pins.is_empty() && mem.quarantined.is_empty());
}

/// A flush that fails during unmap: the unit may still hold the old
/// translation, so the pages are quarantined, never unpinned.
#[test]
fn a_failed_flush_quarantines_the_pages() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, dev, ioas).unwrap();
    let iova = fd
        .map(&mut units, &mut mem, ioas, MapArgs { va: 0x8000, len: 0x2000, iova: IovaChoice::Auto, perms: RW })
        .unwrap();
    mock_of(&mut units, 0).fail_next(MockOp::Flush, iommu::Error::Hardware("injected flush failure"));
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, iova, 0x2000), Err(Errno::EIO));
    assert_eq!(mem.quarantined, [BASE + 0x8000, BASE + 0x9000]);
    assert_eq!(mem.pins.len(), 2, "quarantined pages stay pinned");
    // The next unmap that works unpins as usual.
    let again = fd
        .map(&mut units, &mut mem, ioas, MapArgs { va: 0x20_0000, len: 0x1000, iova: IovaChoice::Auto, perms: RW })
        .unwrap();
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, again, 0x1000), Ok(0x1000));
    assert_eq!(mem.pins.len(), 2);
    fd.close(&mut units, &mut mem);
}

/// A device that cannot be blocked at exit: no page of the task is unpinned.
#[test]
fn a_failed_detach_at_exit_quarantines_everything() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, dev, ioas).unwrap();
    fd.map(&mut units, &mut mem, ioas, MapArgs { va: 0x8000, len: 0x3000, iova: IovaChoice::Auto, perms: RW }).unwrap();
    mock_of(&mut units, 0).fail_next(MockOp::Detach, iommu::Error::Hardware("injected detach failure"));
    fd.close(&mut units, &mut mem);
    assert_eq!(mem.quarantined.len(), 3);
    assert_eq!(mem.pins.len(), 3, "nothing unpinned");
    // A failed destroy of a device keeps the object (the caller sees the error).
    let mut fd = Iommufd::new();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    mock_of(&mut units, 0).fail_next(MockOp::Detach, iommu::Error::Hardware("injected"));
    assert_eq!(fd.destroy(&mut units, &mut mem, dev), Err(Errno::EIO));
    assert_eq!(fd.kind(dev), Some(Kind::Device));
    fd.destroy(&mut units, &mut mem, dev).unwrap();
}

#[test]
fn auto_iova_is_aligned_to_the_largest_page_that_fits_and_never_zero() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    // Room for the 1 GiB attempt below (the default quota would refuse it first).
    let mut fd = Iommufd::with_quota(Quota { pinned_pages: 1 << 20, ..Quota::default() });
    let ioas = fd.ioas_alloc().unwrap();
    let a =
        fd.map(&mut units, &mut mem, ioas, MapArgs { va: 0, len: 0x1000, iova: IovaChoice::Auto, perms: RW }).unwrap();
    assert_eq!(a, PAGE);
    let b = fd
        .map(&mut units, &mut mem, ioas, MapArgs { va: 0x20_0000, len: 0x20_0000, iova: IovaChoice::Auto, perms: RW })
        .unwrap();
    assert!(b.is_multiple_of(0x20_0000));
    let c = fd.map(
        &mut units,
        &mut mem,
        ioas,
        MapArgs { va: 0x4000_0000, len: 1 << 30, iova: IovaChoice::Auto, perms: RW },
    );
    assert_eq!(c, Err(Errno::EFAULT), "beyond the fake memory");
    // Without huge pages the same 2 MiB map takes the lowest 4 KiB-aligned hole.
    let other = fd.ioas_alloc().unwrap();
    fd.map(&mut units, &mut mem, other, MapArgs { va: 0, len: 0x1000, iova: IovaChoice::Auto, perms: RW }).unwrap();
    assert_eq!(fd.set_option(other, option::HUGE_PAGES, 0), Ok(true));
    let d = fd
        .map(&mut units, &mut mem, other, MapArgs { va: 0x40_0000, len: 0x20_0000, iova: IovaChoice::Auto, perms: RW })
        .unwrap();
    assert_eq!(d, 0x2000);
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}

#[test]
fn bad_maps_are_refused_with_their_errno() {
    let msi = Region { start: 0xFEE0_0000, end: 0xFEEF_FFFF, kind: ReservedKind::Msi };
    let mut units = vec![mock(&[0x10], vec![(None, msi)])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, dev, ioas).unwrap();
    let m = |fd: &mut Iommufd, units: &mut Vec<Box<dyn Iommu>>, mem: &mut FakeMemory, va, len, at| {
        fd.map(units, mem, ioas, MapArgs { va, len, iova: IovaChoice::Fixed(at), perms: RW })
    };
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0, 0x1000), Err(Errno::EINVAL), "empty");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1001, 0x1000, 0x1000), Err(Errno::EINVAL), "unaligned VA");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0x1800), Err(Errno::EINVAL), "unaligned IOVA");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0), Err(Errno::ERANGE), "IOVA 0");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0xFEE0_1000), Err(Errno::EADDRINUSE), "MSI window");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 1 << 48), Err(Errno::ERANGE), "beyond the aperture");
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x2000, 0x10_0000), Ok(0x10_0000));
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0x10_1000), Err(Errno::EEXIST), "overlap");
    assert_eq!(
        fd.map(
            &mut units,
            &mut mem,
            ioas,
            MapArgs { va: 0x1000, len: 0x1000, iova: IovaChoice::Auto, perms: Perms::empty() }
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        fd.map(&mut units, &mut mem, 99, MapArgs { va: 0x1000, len: 0x1000, iova: IovaChoice::Auto, perms: RW }),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fd.map(&mut units, &mut mem, dev, MapArgs { va: 0x1000, len: 0x1000, iova: IovaChoice::Auto, perms: RW }),
        Err(Errno::EINVAL)
    );
    mem.fail_pin = true;
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0x20_0000), Err(Errno::EFAULT));
    mem.fail_pin = false;
    mock_of(&mut units, 0).fail_next(iommu::mock::Op::Map, iommu::Error::NoMemory);
    assert_eq!(m(&mut fd, &mut units, &mut mem, 0x1000, 0x1000, 0x20_0000), Err(Errno::ENOMEM));
    assert_eq!(mem.pins.len(), 2, "a failed map leaves no pin behind");
    assert_eq!(fd.areas(ioas).unwrap(), [(0x10_0000, 0x2000)]);
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty() && fd.is_empty());
}

/// An area whose last byte is 2^64 - 1 (possible on an IOAS no device
/// narrows): map, copy, exact unmap, unmap-all and close all work, with
/// every pin given back.
#[test]
fn areas_at_the_top_of_the_iova_space() {
    let mut units: Vec<Box<dyn Iommu>> = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let (a, b) = (fd.ioas_alloc().unwrap(), fd.ioas_alloc().unwrap());
    let top = u64::MAX - 0x1FFF; // two pages: the last byte is u64::MAX
    let at =
        fd.map(&mut units, &mut mem, a, MapArgs { va: 0x4000, len: 0x2000, iova: IovaChoice::Fixed(top), perms: RW });
    assert_eq!(at, Ok(top));
    assert_eq!(fd.areas(a).unwrap(), [(top, 0x2000)]);
    // The same range again overlaps; one page past the top does not exist.
    let again = fd.map(
        &mut units,
        &mut mem,
        a,
        MapArgs { va: 0x4000, len: 0x1000, iova: IovaChoice::Fixed(u64::MAX - 0xFFF), perms: RW },
    );
    assert_eq!(again, Err(Errno::EEXIST));
    let past = fd.map(
        &mut units,
        &mut mem,
        a,
        MapArgs { va: 0x4000, len: 0x2000, iova: IovaChoice::Fixed(u64::MAX - 0xFFF), perms: RW },
    );
    assert_eq!(past, Err(Errno::ERANGE));
    // Copy the top page, and the whole area, into another IOAS, wherever it fits.
    let c = CopyArgs { src: a, src_iova: u64::MAX - 0xFFF, len: 0x1000, dst_iova: IovaChoice::Auto, perms: RW };
    let one = fd.copy(&mut units, &mut mem, b, c).unwrap();
    let c = CopyArgs { src: a, src_iova: top, len: 0x2000, dst_iova: IovaChoice::Auto, perms: RW };
    let both = fd.copy(&mut units, &mut mem, b, c).unwrap();
    assert_ne!(one, both);
    assert_eq!(mem.pins.len(), 2, "two frames, pinned three times");
    // A copy running off the end is refused without a pin.
    let c = CopyArgs { src: a, src_iova: top, len: 0x3000, dst_iova: IovaChoice::Auto, perms: RW };
    assert_eq!(fd.copy(&mut units, &mut mem, b, c), Err(Errno::EINVAL));
    // Unmaps that touch the top: cutting is refused, the exact range works.
    assert_eq!(fd.unmap(&mut units, &mut mem, a, u64::MAX - 0xFFF, 0x1000), Err(Errno::EINVAL), "would cut the area");
    assert_eq!(fd.unmap(&mut units, &mut mem, a, top, 0x2000), Ok(0x2000));
    let again =
        fd.map(&mut units, &mut mem, a, MapArgs { va: 0x4000, len: 0x2000, iova: IovaChoice::Fixed(top), perms: RW });
    assert_eq!(again, Ok(top));
    assert_eq!(fd.unmap(&mut units, &mut mem, a, 0, u64::MAX), Ok(0x2000), "unmap-all reaches the top area");
    fd.map(&mut units, &mut mem, a, MapArgs { va: 0x4000, len: 0x2000, iova: IovaChoice::Fixed(top), perms: RW })
        .unwrap();
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty() && fd.is_empty(), "every pin given back");
}

/// Each per-task limit answers its errno, a refused call changes nothing,
/// and giving back makes room again.
#[test]
fn quotas_have_their_errno() {
    let mut units: Vec<Box<dyn Iommu>> = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let quota = Quota { objects: 3, pinned_pages: 4, fault_records: 100 };
    let mut fd = Iommufd::with_quota(quota);
    assert_eq!(fd.quota(), quota);
    let a = fd.ioas_alloc().unwrap();
    let b = fd.ioas_alloc().unwrap();
    let q = fd.fault_queue_alloc(60).unwrap();
    assert_eq!(fd.ioas_alloc(), Err(Errno::EMFILE), "object quota");
    assert_eq!(fd.len(), 3, "a refused alloc leaves nothing");
    fd.destroy(&mut units, &mut mem, q).unwrap();
    assert_eq!(fd.fault_queue_alloc(101), Err(Errno::EDQUOT), "fault records quota");
    let q = fd.fault_queue_alloc(40).unwrap();
    assert_eq!(fd.fault_queue_alloc(61), Err(Errno::EDQUOT), "the queues' records together");
    fd.destroy(&mut units, &mut mem, q).unwrap();
    let q = fd.fault_queue_alloc(100).unwrap();
    fd.destroy(&mut units, &mut mem, q).unwrap();
    // Pins: 3 pages fit, a 2-page map does not; copies count again.
    let map = |fd: &mut Iommufd, units: &mut Vec<Box<dyn Iommu>>, mem: &mut FakeMemory, len| {
        fd.map(units, mem, a, MapArgs { va: 0x10_0000, len, iova: IovaChoice::Auto, perms: RW })
    };
    let at = map(&mut fd, &mut units, &mut mem, 0x3000).unwrap();
    assert_eq!(fd.pinned_pages(), 3);
    assert_eq!(map(&mut fd, &mut units, &mut mem, 0x2000), Err(Errno::EDQUOT));
    let c = CopyArgs { src: a, src_iova: at, len: 0x2000, dst_iova: IovaChoice::Auto, perms: RW };
    assert_eq!(fd.copy(&mut units, &mut mem, b, c), Err(Errno::EDQUOT), "a copy pins again");
    assert_eq!(mem.pins.len(), 3, "refused calls pin nothing");
    let c = CopyArgs { src: a, src_iova: at, len: 0x1000, dst_iova: IovaChoice::Auto, perms: RW };
    fd.copy(&mut units, &mut mem, b, c).unwrap();
    assert_eq!(fd.pinned_pages(), 4);
    fd.unmap(&mut units, &mut mem, a, 0, u64::MAX).unwrap();
    assert_eq!(fd.pinned_pages(), 1);
    map(&mut fd, &mut units, &mut mem, 0x3000).unwrap();
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty() && fd.is_empty());
}

#[test]
fn unmap_is_exact_or_all() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    for (va, at) in [(0x0, 0x10_0000u64), (0x4000, 0x10_4000), (0x8000, 0x20_0000)] {
        fd.map(&mut units, &mut mem, ioas, MapArgs { va, len: 0x2000, iova: IovaChoice::Fixed(at), perms: RW })
            .unwrap();
    }
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x10_1000, 0x1000), Err(Errno::EINVAL), "cuts an area");
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x10_0000, 0x5000), Err(Errno::EINVAL), "cuts the second");
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x30_0000, 0x1000), Err(Errno::ENOENT));
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x10_0000, 0x6000), Ok(0x4000), "two whole areas");
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0, u64::MAX), Ok(0x2000), "unmap-all");
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0, u64::MAX), Ok(0), "unmap-all of an empty IOAS succeeds");
    assert!(mem.pins.is_empty());
}

#[test]
fn one_flush_per_unmap_call_per_hwpt() {
    let mut units = vec![mock(&[0x10], vec![]), mock(&[0x20], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let d0 = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    let d1 = fd.device_bind(&mut units, 1, DeviceId(0x20)).unwrap();
    fd.device_attach(&mut units, d0, ioas).unwrap();
    fd.device_attach(&mut units, d1, ioas).unwrap();
    assert_eq!(fd.hwpts(ioas).unwrap().len(), 2, "one HWPT per unit");
    for i in 0..8u64 {
        fd.map(
            &mut units,
            &mut mem,
            ioas,
            MapArgs { va: i * 0x1000, len: 0x1000, iova: IovaChoice::Fixed(0x10_0000 + i * 0x1000), perms: RW },
        )
        .unwrap();
    }
    for u in 0..2 {
        assert_eq!(mock_of(&mut units, u).dma(DeviceId(0x10 + 0x10 * u as u32), 0x10_3000, false), Some(BASE + 0x3000));
        mock_of(&mut units, u).flushes.clear();
    }
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x10_0000, 0x8000), Ok(0x8000));
    for u in 0..2 {
        let m = mock_of(&mut units, u);
        assert_eq!(m.flushes.len(), 1);
        assert_eq!((m.flushes[0].1, m.flushes[0].2), (0x10_0000, 0x10_8000));
    }
    fd.close(&mut units, &mut mem);
}

#[test]
fn iova_ranges_narrow_with_attached_devices_and_allowed_ranges_hold() {
    let direct = Region { start: 0x7000_0000, end: 0x7000_FFFF, kind: ReservedKind::DirectMap };
    let mut cfg = MockConfig { aperture: (0, (1 << 39) - 1), devices: vec![DeviceId(0x20)], ..MockConfig::default() };
    cfg.reserved.push((Some(DeviceId(0x20)), direct));
    let mut units: Vec<Box<dyn Iommu>> = vec![mock(&[0x10], vec![]), Box::new(MockIommu::new(cfg))];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    assert_eq!(fd.iova_ranges(&mut units, ioas).unwrap(), [(PAGE, u64::MAX)]);
    let d0 = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, d0, ioas).unwrap();
    assert_eq!(fd.iova_ranges(&mut units, ioas).unwrap(), [(PAGE, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 48) - 1)]);
    // Promise a range the second unit's direct-map region would take.
    fd.allow_iovas(&mut units, ioas, &[(0x7000_0000, 0x7000_0FFF)]).unwrap();
    assert_eq!(fd.allow_iovas(&mut units, ioas, &[(0xFEE0_0000, 0xFEE0_0FFF)]), Err(Errno::EADDRINUSE));
    assert_eq!(fd.allow_iovas(&mut units, ioas, &[(0x1000, 0x1800)]), Err(Errno::EINVAL));
    let d1 = fd.device_bind(&mut units, 1, DeviceId(0x20)).unwrap();
    assert_eq!(fd.device_attach(&mut units, d1, ioas), Err(Errno::EADDRINUSE));
    fd.allow_iovas(&mut units, ioas, &[]).unwrap();
    fd.device_attach(&mut units, d1, ioas).unwrap();
    let r = fd.iova_ranges(&mut units, ioas).unwrap();
    assert_eq!(r, [(PAGE, 0x6FFF_FFFF), (0x7001_0000, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 39) - 1)]);
    // Allowed ranges confine the kernel's choice of IOVA (fixed IOVAs may go anywhere usable).
    fd.allow_iovas(&mut units, ioas, &[(0x5000_0000, 0x5000_1FFF), (0x9000_0000, 0x9FFF_FFFF)]).unwrap();
    let auto = |fd: &mut Iommufd, units: &mut Vec<Box<dyn Iommu>>, mem: &mut FakeMemory, len| {
        fd.map(units, mem, ioas, MapArgs { va: 0x1000, len, iova: IovaChoice::Auto, perms: RW })
    };
    assert_eq!(auto(&mut fd, &mut units, &mut mem, 0x2000), Ok(0x5000_0000));
    assert_eq!(auto(&mut fd, &mut units, &mut mem, 0x1000), Ok(0x9000_0000), "the first range is full");
    fd.allow_iovas(&mut units, ioas, &[(0x5000_0000, 0x5000_1FFF)]).unwrap();
    assert_eq!(auto(&mut fd, &mut units, &mut mem, 0x1000), Err(Errno::ENOSPC), "nothing left where allowed");
    fd.close(&mut units, &mut mem);
}

#[test]
fn attach_refuses_a_device_whose_reserved_regions_collide_with_mappings() {
    let direct = Region { start: 0x10_0000, end: 0x10_0FFF, kind: ReservedKind::DirectMap };
    let mut units = vec![mock(&[0x10, 0x18], vec![(Some(DeviceId(0x18)), direct)])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    fd.map(&mut units, &mut mem, ioas, MapArgs { va: 0, len: 0x1000, iova: IovaChoice::Fixed(0x10_0000), perms: RW })
        .unwrap();
    let d = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    assert_eq!(fd.device_attach(&mut units, d, ioas), Err(Errno::EADDRINUSE));
    assert!(fd.hwpts(ioas).unwrap().is_empty(), "nothing left behind");
    let d2 = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, d2, ioas).unwrap();
    assert_eq!(fd.device_bind(&mut units, 0, DeviceId(0x10)), Err(Errno::EBUSY), "bound twice");
    assert_eq!(fd.device_bind(&mut units, 0, DeviceId(0x99)), Err(Errno::ENOENT));
    assert_eq!(fd.device_bind(&mut units, 7, DeviceId(0x10)), Err(Errno::ENOENT));
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}

/// A map keeps the IOAS's usable ranges for the next one; attach and detach
/// must make it compute them again: a device's reserved region is closed to
/// maps while it is attached and open again once it left.
#[test]
fn usable_ranges_follow_attach_and_detach() {
    let direct = Region { start: 0x10_0000, end: 0x10_0FFF, kind: ReservedKind::Reserved };
    let mut units = vec![mock(&[0x10, 0x18], vec![(Some(DeviceId(0x18)), direct)])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let at = |iova| MapArgs { va: 0, len: 0x1000, iova: IovaChoice::Fixed(iova), perms: RW };
    // Computed with no device: all of it usable.
    fd.map(&mut units, &mut mem, ioas, at(0x20_0000)).unwrap();
    let plain = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    let holed = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    fd.device_attach(&mut units, plain, ioas).unwrap();
    fd.map(&mut units, &mut mem, ioas, at(0x30_0000)).unwrap();
    // Joins the HWPT `plain` made: no HWPT comes or goes, only a device.
    fd.device_attach(&mut units, holed, ioas).unwrap();
    assert_eq!(fd.map(&mut units, &mut mem, ioas, at(0x10_0000)), Err(Errno::EADDRINUSE));
    let auto = fd.map(&mut units, &mut mem, ioas, MapArgs { iova: IovaChoice::Auto, ..at(0) }).unwrap();
    assert!(!(0x10_0000..0x10_1000).contains(&auto), "placed in the reserved hole");
    fd.device_detach(&mut units, holed).unwrap();
    // Kept from the attached state, the hole would still refuse this.
    fd.map(&mut units, &mut mem, ioas, at(0x10_0000)).unwrap();
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}

/// A unit whose smallest page is 64 KiB (virtio-iommu `granule=64k`): the
/// IOAS's alignment follows the units it reaches, and every map, copy and
/// attach that would leave an area it cannot map in its pages is `EINVAL`
/// with nothing changed.
#[test]
fn iova_alignment_follows_the_largest_smallest_page() {
    const K64: u64 = 0x1_0000;
    let mut big = MockConfig { devices: vec![DeviceId(0x20)], ..MockConfig::default() };
    big.page_sizes = K64 | 1 << 21;
    let mut units: Vec<Box<dyn Iommu>> = vec![mock(&[0x10], vec![]), Box::new(MockIommu::new(big))];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let args = |va, len, iova| MapArgs { va, len, iova, perms: RW };
    assert_eq!(fd.iova_alignment(&units, ioas), PAGE);
    // A 4 KiB area, fine until a 64 KiB unit joins: that attach is refused.
    let small = fd.map(&mut units, &mut mem, ioas, args(0x3000, 0x1000, IovaChoice::Auto)).unwrap();
    let d4 = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    let d64 = fd.device_bind(&mut units, 1, DeviceId(0x20)).unwrap();
    fd.device_attach(&mut units, d4, ioas).unwrap();
    // A tripwire: the 64 KiB unit's next map fails with ENOMEM. Every
    // refusal below must come before the unit is asked (EINVAL, the reason
    // logged), so it is still armed when the first good map comes.
    mock_of(&mut units, 1).fail_next(MockOp::Map, iommu::Error::NoMemory);
    assert_eq!(fd.device_attach(&mut units, d64, ioas), Err(Errno::EINVAL), "an area it cannot map");
    assert_eq!(fd.iova_alignment(&units, ioas), PAGE, "the refused attach left nothing");
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, small, 0x1000), Ok(0x1000));
    fd.device_attach(&mut units, d64, ioas).unwrap();
    assert_eq!(fd.iova_alignment(&units, ioas), K64);
    let pins = mem.pins.len();
    // Length, IOVA, and physical runs must all be 64 KiB multiples.
    assert_eq!(fd.map(&mut units, &mut mem, ioas, args(0x10000, 0x1000, IovaChoice::Auto)), Err(Errno::EINVAL));
    assert_eq!(
        fd.map(&mut units, &mut mem, ioas, args(0x10000, K64, IovaChoice::Fixed(0x4000_1000))),
        Err(Errno::EINVAL)
    );
    assert_eq!(fd.map(&mut units, &mut mem, ioas, args(0x11000, K64, IovaChoice::Auto)), Err(Errno::EINVAL), "memory");
    assert_eq!(mem.pins.len(), pins, "a refused map holds no pin");
    let good = args(0x10000, 2 * K64, IovaChoice::Auto);
    assert_eq!(fd.map(&mut units, &mut mem, ioas, good), Err(Errno::ENOMEM), "a refused call reached the unit");
    let at = fd.map(&mut units, &mut mem, ioas, args(0x10000, 2 * K64, IovaChoice::Auto)).unwrap();
    assert!(at.is_multiple_of(K64), "{at:#x}");
    assert_eq!(mock_of(&mut units, 1).dma(DeviceId(0x20), at + K64 + 8, true), Some(BASE + 0x2_0008));
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), at + 8, false), Some(BASE + 0x1_0008));
    // Copies into the IOAS obey it too: a 4 KiB piece of a source area is refused.
    let src = fd.ioas_alloc().unwrap();
    let s = fd.map(&mut units, &mut mem, src, args(0x40000, K64, IovaChoice::Auto)).unwrap();
    let c = |src_iova, len| CopyArgs { src, src_iova, len, dst_iova: IovaChoice::Auto, perms: RW };
    assert_eq!(fd.copy(&mut units, &mut mem, ioas, c(s + 0x1000, 0x1000)), Err(Errno::EINVAL));
    let copied = fd.copy(&mut units, &mut mem, ioas, c(s, K64)).unwrap();
    assert!(copied.is_multiple_of(K64));
    // Once the 64 KiB unit left, 4 KiB maps are fine again.
    fd.device_detach(&mut units, d64).unwrap();
    assert_eq!(fd.iova_alignment(&units, ioas), PAGE);
    fd.map(&mut units, &mut mem, ioas, args(0x3000, 0x1000, IovaChoice::Auto)).unwrap();
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}

#[test]
fn copy_maps_the_same_pages_again() {
    let mut units = vec![mock(&[0x10, 0x18], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let a = fd.ioas_alloc().unwrap();
    let b = fd.ioas_alloc().unwrap();
    fd.map(
        &mut units,
        &mut mem,
        a,
        MapArgs { va: 0x3000, len: 0x4000, iova: IovaChoice::Fixed(0x10_0000), perms: Perms::READ },
    )
    .unwrap();
    let db = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    fd.device_attach(&mut units, db, b).unwrap();
    let at = fd
        .copy(
            &mut units,
            &mut mem,
            b,
            CopyArgs { src: a, src_iova: 0x10_1000, len: 0x2000, dst_iova: IovaChoice::Auto, perms: Perms::READ },
        )
        .unwrap();
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x18), at, false), Some(BASE + 0x4000));
    assert_eq!(mem.pins.get(&(BASE + 0x4000)), Some(&2));
    assert_eq!(
        fd.copy(
            &mut units,
            &mut mem,
            b,
            CopyArgs { src: a, src_iova: 0x10_0000, len: 0x1000, dst_iova: IovaChoice::Auto, perms: RW }
        ),
        Err(Errno::EPERM),
        "the source is read-only"
    );
    assert_eq!(
        fd.copy(
            &mut units,
            &mut mem,
            b,
            CopyArgs { src: a, src_iova: 0x10_3000, len: 0x2000, dst_iova: IovaChoice::Auto, perms: Perms::READ }
        ),
        Err(Errno::ENOENT)
    );
    fd.unmap(&mut units, &mut mem, a, 0, u64::MAX).unwrap();
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x18), at, false), Some(BASE + 0x4000), "still mapped in b");
    assert_eq!(mem.pins.get(&(BASE + 0x4000)), Some(&1));
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}

#[test]
fn close_blocks_devices_before_unpinning() {
    let mut units = vec![mock(&[0x10], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let d = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, d, ioas).unwrap();
    let at =
        fd.map(&mut units, &mut mem, ioas, MapArgs { va: 0, len: 0x1000, iova: IovaChoice::Auto, perms: RW }).unwrap();
    assert!(mock_of(&mut units, 0).dma(DeviceId(0x10), at, true).is_some());
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty() && fd.is_empty());
    assert_eq!(mock_of(&mut units, 0).domain_count(), 0, "every domain freed");
    assert_eq!(mock_of(&mut units, 0).attached(DeviceId(0x10)), None);
}

#[test]
fn hwpt_objects_and_hints() {
    let mut units = vec![mock(&[0x10, 0x18], vec![])];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let d0 = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    let d1 = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    let h = fd.device_attach(&mut units, d0, ioas).unwrap();
    assert_eq!(fd.device_attach(&mut units, d1, h), Ok(h), "attach to the HWPT directly");
    assert_eq!(fd.destroy(&mut units, &mut mem, h), Err(Errno::EBUSY));
    assert_eq!(fd.device_detach(&mut units, d1), Ok(()));
    assert_eq!(fd.device_detach(&mut units, d1), Err(Errno::EINVAL), "not attached");
    assert_eq!(fd.set_option(ioas, option::HUGE_PAGES, 0), Ok(true));
    assert_eq!(fd.set_option(ioas, 77, 1), Ok(false), "unknown hints are reported, not errors");
    assert_eq!(fd.set_option(d0, option::HUGE_PAGES, 1), Err(Errno::EINVAL));
    assert_eq!(fd.destroy(&mut units, &mut mem, 12345), Err(Errno::ENOENT));
    fd.close(&mut units, &mut mem);
}

proptest::proptest! {
    /// The one-walk gap search agrees with subtracting every area from the
    /// usable set and taking the lowest fit.
    #[test]
    fn lowest_gap_matches_the_set_reference(
        spans in proptest::collection::vec((1u64..64, 1u64..16), 0..12),
        len_pages in 1u64..40,
        shift in 0u32..5,
        hole in 0u64..64,
    ) {
        let mut areas = TryMap::new();
        let mut at = PAGE;
        for (gap, pages) in spans {
            at += gap * PAGE;
            areas.try_insert(at, Area { len: pages * PAGE, pages: Runs::new(), perms: RW }).unwrap();
            at += pages * PAGE;
        }
        let usable = ranges::subtract(&[(PAGE, 0x10_0000 - 1)], (hole * PAGE + PAGE, hole * PAGE + 4 * PAGE - 1));
        let (len, align) = (len_pages * PAGE, PAGE << shift);
        let free = areas.iter().fold(usable.clone(), |set, (&s, a)| ranges::subtract(&set, (s, s + a.len - 1)));
        let want = ranges::lowest_fit(&free, len, align);
        proptest::prop_assert_eq!(lowest_gap(&areas, &usable, len, align, (0, 0)), want);
        // With any run of back-to-back areas as the hint, the same answer.
        let all: Vec<(u64, u64)> = areas.iter().map(|(&s, a)| (s, s + a.len)).collect();
        for (k, &(start, mut end)) in all.iter().enumerate() {
            for &(s, e) in &all[k + 1..] {
                if s != end {
                    break;
                }
                end = e;
            }
            proptest::prop_assert_eq!(lowest_gap(&areas, &usable, len, align, (start, end)), want, "run {:#x}..{:#x}", start, end);
        }
    }
}

/// Task memory that is not physically contiguous: every page is its own run
/// and reaches its own frame through the unit, a copy of part of the area
/// pins those frames once more, and each unmap drops exactly its pins.
#[test]
fn scattered_frames_each_land_where_they_belong() {
    let mut units = vec![mock(&[0x10, 0x18], vec![])];
    let mut mem = FakeMemory { scatter: true, ..FakeMemory::default() };
    let mut fd = Iommufd::new();
    let (a, b) = (fd.ioas_alloc().unwrap(), fd.ioas_alloc().unwrap());
    let da = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    let db = fd.device_bind(&mut units, 0, DeviceId(0x18)).unwrap();
    fd.device_attach(&mut units, da, a).unwrap();
    fd.device_attach(&mut units, db, b).unwrap();
    let va = 0x10_0000;
    let iova = fd
        .map(&mut units, &mut mem, a, MapArgs { va, len: 8 * PAGE, iova: IovaChoice::Fixed(0x100_0000), perms: RW })
        .unwrap();
    let Some(Object::Ioas(i)) = fd.objects.get(&a) else { panic!("no IOAS") };
    assert_eq!(i.areas.get(&iova).map(|area| area.pages.run_count()), Some(8), "no two frames adjacent");
    for p in 0..8 {
        let want = mem.frame_of(va + p * PAGE) + 0x18;
        assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), iova + p * PAGE + 0x18, true), Some(want), "page {p}");
    }
    let copy = CopyArgs {
        src: a,
        src_iova: iova + 3 * PAGE,
        len: 3 * PAGE,
        dst_iova: IovaChoice::Fixed(0x200_0000),
        perms: RW,
    };
    assert_eq!(fd.copy(&mut units, &mut mem, b, copy), Ok(0x200_0000));
    for p in 0..3 {
        let want = mem.frame_of(va + (3 + p) * PAGE);
        assert_eq!(
            mock_of(&mut units, 0).dma(DeviceId(0x18), 0x200_0000 + p * PAGE, false),
            Some(want),
            "copied page {p}"
        );
        assert_eq!(mem.pins.get(&want), Some(&2));
    }
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x18), 0x200_0000 + 3 * PAGE, false), None, "only what was copied");
    assert_eq!(fd.unmap(&mut units, &mut mem, a, iova, 8 * PAGE), Ok(8 * PAGE));
    assert_eq!(mock_of(&mut units, 0).dma(DeviceId(0x10), iova, true), None);
    let left: Vec<u64> = (3..6).map(|p| mem.frame_of(va + p * PAGE)).collect();
    assert_eq!(mem.pins.keys().copied().collect::<Vec<_>>(), {
        let mut l = left.clone();
        l.sort();
        l
    });
    assert!(mem.pins.values().all(|&n| n == 1));
    assert_eq!(fd.unmap(&mut units, &mut mem, b, 0, u64::MAX), Ok(3 * PAGE));
    assert!(mem.pins.is_empty() && mem.quarantined.is_empty());
}

/// A map of scattered memory (one unit call per page-run) that fails at each
/// point in turn: whatever run failed, the runs before it are unmapped again,
/// every pin is given back, and the device reaches nothing.
#[test]
fn a_scattered_map_failing_at_any_run_leaves_nothing() {
    let fail = iommu::mock::FailNth::new();
    for n in 1..64 {
        let mut units = vec![mock(&[0x10], vec![])];
        mock_of(&mut units, 0).set_fail_nth(fail.clone());
        let mut mem = FakeMemory { scatter: true, ..FakeMemory::default() };
        let mut fd = Iommufd::new();
        let ioas = fd.ioas_alloc().unwrap();
        let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
        fd.device_attach(&mut units, dev, ioas).unwrap();
        fail.arm(n, false);
        let m = MapArgs { va: 0x10_0000, len: 6 * PAGE, iova: IovaChoice::Fixed(0x100_0000), perms: RW };
        let r = fd.map(&mut units, &mut mem, ioas, m);
        let fired = fail.fired();
        fail.disarm();
        if !fired {
            assert_eq!(r, Ok(0x100_0000), "n={n}");
            assert!(n > 6, "a failure at each of the six runs at least, not {}", n - 1);
            return;
        }
        assert!(r.is_err(), "n={n}: an injected failure is the call's error");
        for p in 0..6 {
            assert_eq!(
                mock_of(&mut units, 0).dma(DeviceId(0x10), 0x100_0000 + p * PAGE, false),
                None,
                "n={n} page {p}"
            );
        }
        assert!(mem.pins.is_empty() && mem.quarantined.is_empty(), "n={n}: {:?}", mem.pins);
    }
    panic!("the map never succeeded");
}

/// An IOAS with a device of the no-IOMMU unit places every area at the
/// physical address of its pages: a fixed IOVA elsewhere and memory that is
/// not physically contiguous are refused (EINVAL) with nothing left pinned;
/// once the device is gone the IOAS chooses IOVAs freely again.
#[test]
fn a_device_without_an_iommu_gets_identity_iovas_only() {
    let mut units: Vec<Box<dyn Iommu>> = vec![Box::new(iommu::noiommu::NoIommu::new(vec![DeviceId(0x10)]))];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DeviceId(0x10)).unwrap();
    fd.device_attach(&mut units, dev, ioas).unwrap();
    // The unit reports 2 MiB pages: the IOAS's alignment asks for 2 MiB physical blocks.
    assert_eq!(fd.iova_alignment(&units, ioas), 2 << 20);
    const MB2: u64 = 2 << 20;
    let map = |fd: &mut Iommufd, mem: &mut FakeMemory, units: &mut Vec<Box<dyn Iommu>>, va, iova| {
        fd.map(units, mem, ioas, MapArgs { va, len: MB2, iova, perms: RW })
    };
    let at = map(&mut fd, &mut mem, &mut units, MB2, IovaChoice::Auto).unwrap();
    assert_eq!(at, BASE + MB2, "the IOVA is the physical address");
    assert_eq!(units[0].iova_to_phys(units[0].attached(DeviceId(0x10)).unwrap(), at + 0x1000), Some(at + 0x1000));
    let pinned = mem.pins.len();
    assert_eq!(map(&mut fd, &mut mem, &mut units, 2 * MB2, IovaChoice::Fixed(8 * MB2)), Err(Errno::EINVAL));
    assert_eq!(map(&mut fd, &mut mem, &mut units, 2 * MB2, IovaChoice::Fixed(BASE + 2 * MB2)), Ok(BASE + 2 * MB2));
    mem.scatter = true;
    assert_eq!(map(&mut fd, &mut mem, &mut units, 4 * MB2, IovaChoice::Auto), Err(Errno::EINVAL), "not contiguous");
    assert_eq!(mem.pins.len(), pinned + 512, "refused maps pin nothing");
    mem.scatter = false;
    fd.device_detach(&mut units, dev).unwrap();
    fd.destroy(&mut units, &mut mem, ioas).unwrap();
    fd.destroy(&mut units, &mut mem, dev).unwrap();
    assert!(mem.pins.is_empty());
    assert!(fd.is_empty());
}
