//! Host tests of the hardware-specific door: user HWPTs, nested children
//! shadowing a user's x86-64 stage-1 table, invalidation, fault queues.

use super::*;
use crate::testing::{FakeMemory, PA_BASE as BASE};
use alloc::boxed::Box;
use alloc::vec::Vec;
use iommu::mock::{reason, MockConfig, MockIommu, Op};
use iommu::Access;
use iommu::{DeviceId, DomainId, DomainKind, Gather, Iommu, Perms};

const RW: Perms = Perms::READ.union(Perms::WRITE);
const DEV: DeviceId = DeviceId(0x10);
const DEV2: DeviceId = DeviceId(0x18);

/// The user's tables: task VAs `TBL_VA..`, parent IOVAs `TBL_IOVA..` (64 pages).
const TBL_VA: u64 = 0x100_0000;
const TBL_IOVA: u64 = 0x4000_0000;
const TBL_LEN: u64 = 64 * PAGE;
/// Data the stage-1 table points at: 4 MiB, 2 MiB aligned on both sides.
const DATA_VA: u64 = 0x400_0000;
const DATA_IOVA: u64 = 0x8000_0000;
const DATA_LEN: u64 = 0x40_0000;

/// Physical address behind parent IOVA `iova` of the data area.
fn data_pa(iova: u64) -> u64 {
    BASE + DATA_VA + (iova - DATA_IOVA)
}

fn mock(devices: &[u32]) -> Box<dyn Iommu> {
    let cfg = MockConfig { devices: devices.iter().map(|&d| DeviceId(d)).collect(), ..MockConfig::default() };
    Box::new(MockIommu::new(cfg))
}

fn mock_of(units: &mut [Box<dyn Iommu>], i: usize) -> &mut MockIommu {
    units[i].as_any_mut().downcast_mut::<MockIommu>().unwrap()
}

/// Builds an x86-64 4-level table in the table area, top level at `TBL_IOVA`.
struct S1 {
    next: u64,
}

impl S1 {
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const PS: u64 = 0x80;

    fn new() -> Self {
        S1 { next: TBL_IOVA + PAGE }
    }

    fn entry_va(table: u64, index: usize) -> u64 {
        table - TBL_IOVA + TBL_VA + 8 * index as u64
    }

    fn get(mem: &FakeMemory, (table, index): (u64, usize)) -> u64 {
        mem.get_u64(Self::entry_va(table, index))
    }

    fn put(mem: &mut FakeMemory, (table, index): (u64, usize), value: u64) {
        mem.write_u64(Self::entry_va(table, index), value);
    }

    /// Maps `iova` to parent IOVA `out` with a leaf at `level` (0: 4 KiB,
    /// 1: 2 MiB, 2: 1 GiB); returns the entries of the path, top first.
    fn map(&mut self, mem: &mut FakeMemory, iova: u64, out: u64, level: usize, write: bool) -> Vec<(u64, usize)> {
        let mut path = Vec::new();
        let mut table = TBL_IOVA;
        for l in (level + 1..4).rev() {
            let e = (table, ((iova >> (12 + 9 * l)) & 0x1FF) as usize);
            path.push(e);
            let v = Self::get(mem, e);
            table = if v & Self::P == 0 {
                let t = self.next;
                self.next += PAGE;
                assert!(t < TBL_IOVA + TBL_LEN, "table area full");
                Self::put(mem, e, t | Self::P | Self::RW | Self::US);
                t
            } else {
                v & 0x000F_FFFF_FFFF_F000
            };
        }
        let e = (table, ((iova >> (12 + 9 * level)) & 0x1FF) as usize);
        path.push(e);
        let ps = if level > 0 { Self::PS } else { 0 };
        Self::put(mem, e, out | Self::P | Self::US | if write { Self::RW } else { 0 } | ps);
        path
    }

    fn map4k(&mut self, mem: &mut FakeMemory, iova: u64, out: u64, write: bool) -> (u64, usize) {
        *self.map(mem, iova, out, 0, write).last().unwrap()
    }
}

/// One unit with two devices, an IOAS with the table and data areas, and a
/// nest parent HWPT made through `dev`.
struct Env {
    units: Vec<Box<dyn Iommu>>,
    mem: FakeMemory,
    fd: Iommufd,
    ioas: u32,
    dev: u32,
    dev2: u32,
    parent: u32,
    s1: S1,
}

impl Env {
    fn new() -> Self {
        let mut units = vec![mock(&[0x10, 0x18])];
        let mut mem = FakeMemory::default();
        let mut fd = Iommufd::new();
        let ioas = fd.ioas_alloc().unwrap();
        let dev = fd.device_bind(&mut units, 0, DEV).unwrap();
        let dev2 = fd.device_bind(&mut units, 0, DEV2).unwrap();
        for (va, len, at) in [(TBL_VA, TBL_LEN, TBL_IOVA), (DATA_VA, DATA_LEN, DATA_IOVA)] {
            fd.map(&mut units, &mut mem, ioas, MapArgs { va, len, iova: IovaChoice::Fixed(at), perms: RW }).unwrap();
        }
        let a =
            HwptAlloc { dev, parent: ioas, flags: hwpt_flags::NEST_PARENT, data: HwptData::Default, fault_queue: None };
        let parent = fd.hwpt_alloc(&mut units, &mut mem, a).unwrap();
        Env { units, mem, fd, ioas, dev, dev2, parent, s1: S1::new() }
    }

    fn alloc(&mut self, parent: u32, flags: u32, data: HwptData, fault_queue: Option<u32>) -> Result<u32, Errno> {
        let a = HwptAlloc { dev: self.dev, parent, flags, data, fault_queue };
        self.fd.hwpt_alloc(&mut self.units, &mut self.mem, a)
    }

    fn child(&mut self) -> Result<u32, Errno> {
        self.alloc(self.parent, 0, HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 }, None)
    }

    fn attach(&mut self, dev: u32, pt: u32) -> Result<u32, Errno> {
        self.fd.device_attach(&mut self.units, dev, pt)
    }

    fn dma(&mut self, dev: DeviceId, iova: u64, write: bool) -> Option<u64> {
        mock_of(&mut self.units, 0).dma(dev, iova, write)
    }

    fn inval(&mut self, hwpt: u32, entries: &[(u64, u64, u32)]) -> (u32, Result<(), Errno>) {
        let e: Vec<Stage1Invalidation> =
            entries.iter().map(|&(addr, npages, flags)| Stage1Invalidation { addr, npages, flags }).collect();
        self.fd.hwpt_invalidate(&mut self.units, &mut self.mem, hwpt, &e)
    }

    fn map(&mut self, va: u64, len: u64, at: u64) -> Result<u64, Errno> {
        self.fd.map(
            &mut self.units,
            &mut self.mem,
            self.ioas,
            MapArgs { va, len, iova: IovaChoice::Fixed(at), perms: RW },
        )
    }

    fn unmap(&mut self, at: u64, len: u64) -> Result<u64, Errno> {
        self.fd.unmap(&mut self.units, &mut self.mem, self.ioas, at, len)
    }

    fn destroy(&mut self, id: u32) -> Result<(), Errno> {
        self.fd.destroy(&mut self.units, &mut self.mem, id)
    }

    fn domains(&mut self) -> usize {
        mock_of(&mut self.units, 0).domain_count()
    }

    /// Closes the table and checks nothing is left anywhere.
    fn close_clean(mut self) {
        self.fd.close(&mut self.units, &mut self.mem);
        assert!(self.mem.pins.is_empty(), "pins left: {:?}", self.mem.pins);
        assert!(self.fd.is_empty());
        let m = mock_of(&mut self.units, 0);
        assert_eq!(m.domain_count(), 0, "every domain freed");
        assert_eq!((m.attached(DEV), m.attached(DEV2)), (None, None));
    }
}

#[test]
fn user_hwpt_mirrors_its_ioas_and_outlives_its_devices() {
    let mut e = Env::new();
    let h = e.parent;
    assert_eq!(e.fd.kind(h), Some(Kind::Hwpt));
    assert_eq!(e.fd.hwpts(e.ioas).unwrap(), [(h, 0)]);
    assert_eq!(e.attach(e.dev, h), Ok(h));
    // Mapped before creation and after: both in the domain.
    assert_eq!(e.dma(DEV, DATA_IOVA + 0x1008, true), Some(data_pa(DATA_IOVA + 0x1008)));
    e.map(0x800_0000, 0x2000, 0xC000_0000).unwrap();
    assert_eq!(e.dma(DEV, 0xC000_1000, false), Some(BASE + 0x800_1000));
    e.unmap(0xC000_0000, 0x2000).unwrap();
    assert_eq!(e.dma(DEV, 0xC000_1000, false), None, "unmapped and flushed");
    // An attach to the IOAS makes an automatic HWPT, never joins the user one.
    let auto = e.attach(e.dev2, e.ioas).unwrap();
    assert_ne!(auto, h);
    assert_eq!(e.destroy(h), Err(Errno::EBUSY), "a device is attached");
    assert_eq!(e.destroy(e.ioas), Err(Errno::EBUSY));
    e.fd.device_detach(&mut e.units, e.dev).unwrap();
    assert_eq!(e.fd.kind(h), Some(Kind::Hwpt), "a user HWPT outlives its last device");
    assert_eq!(e.dma(DEV, DATA_IOVA, false), None, "detached: blocked");
    // Replace: from the automatic HWPT to the user one in one attach; the
    // automatic one goes with its last device.
    assert_eq!(e.attach(e.dev2, h), Ok(h));
    assert_eq!(e.fd.kind(auto), None);
    assert_eq!(e.dma(DEV2, DATA_IOVA, true), Some(data_pa(DATA_IOVA)));
    // A failed replace leaves the device where it was, translating.
    let auto = e.attach(e.dev, e.ioas).unwrap();
    mock_of(&mut e.units, 0).fail_next(Op::Attach, iommu::Error::Hardware("injected"));
    assert_eq!(e.attach(e.dev, h), Err(Errno::EIO));
    assert_eq!(e.fd.kind(auto), Some(Kind::Hwpt));
    assert_eq!(e.dma(DEV, DATA_IOVA, true), Some(data_pa(DATA_IOVA)));
    e.fd.device_detach(&mut e.units, e.dev).unwrap();
    e.fd.device_detach(&mut e.units, e.dev2).unwrap();
    let before = e.domains();
    assert_eq!(e.destroy(e.ioas), Err(Errno::EBUSY), "a HWPT hangs off it");
    e.destroy(h).unwrap();
    assert_eq!(e.domains(), before - 1, "its domain is freed");
    assert_eq!(e.fd.kind(h), None);
    e.destroy(e.ioas).unwrap();
    assert!(e.mem.pins.is_empty());
    e.close_clean();
}

#[test]
fn driver_data_goes_to_the_unit_and_its_refusal_is_the_error() {
    let mut e = Env::new();
    let (objects, domains) = (e.fd.len(), e.domains());
    let data = HwptData::Driver { data_type: 7, bytes: vec![1, 2, 3] };
    assert_eq!(e.alloc(e.ioas, 0, data, None), Err(Errno::EOPNOTSUPP), "the mock has no driver domains");
    assert_eq!((e.fd.len(), e.domains()), (objects, domains), "nothing left behind");
    // A unit failing the default domain fails the call the same way.
    mock_of(&mut e.units, 0).fail_next(Op::DomainAlloc, iommu::Error::NoMemory);
    assert_eq!(e.alloc(e.ioas, 0, HwptData::Default, None), Err(Errno::ENOMEM));
    mock_of(&mut e.units, 0).fail_next(Op::Map, iommu::Error::NoMemory);
    assert_eq!(e.alloc(e.ioas, 0, HwptData::Default, None), Err(Errno::ENOMEM), "the mirror fill failed");
    assert_eq!((e.fd.len(), e.domains()), (objects, domains));
    e.close_clean();
}

#[test]
fn hwpt_alloc_rules() {
    let mut e = Env::new();
    let s1 = HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 };
    let plain = e.alloc(e.ioas, 0, HwptData::Default, None).unwrap();
    assert_eq!(e.alloc(e.ioas, 2, HwptData::Default, None), Err(Errno::EINVAL), "unknown flag");
    assert_eq!(e.alloc(e.ioas, 0, s1.clone(), None), Err(Errno::EINVAL), "an IOAS is no nest parent");
    assert_eq!(e.alloc(plain, 0, s1.clone(), None), Err(Errno::EINVAL), "parent without NEST_PARENT");
    assert_eq!(e.alloc(e.parent, hwpt_flags::NEST_PARENT, s1.clone(), None), Err(Errno::EINVAL));
    assert_eq!(e.alloc(e.parent, 0, HwptData::Stage1X86 { root: TBL_IOVA, levels: 3 }, None), Err(Errno::EINVAL));
    assert_eq!(e.alloc(e.parent, 0, HwptData::Stage1X86 { root: TBL_IOVA + 8, levels: 4 }, None), Err(Errno::EINVAL));
    assert_eq!(e.alloc(999, 0, s1.clone(), None), Err(Errno::ENOENT));
    assert_eq!(e.alloc(e.parent, 0, HwptData::Default, None), Err(Errno::EINVAL), "kernel-managed needs an IOAS");
    let child = e.alloc(e.parent, 0, s1.clone(), None).unwrap();
    assert_eq!(e.fd.hwpt_parent(child), Some(e.parent));
    assert_eq!(e.alloc(child, 0, s1.clone(), None), Err(Errno::EINVAL), "a nested child is no parent");
    assert_eq!(e.alloc(e.ioas, 0, HwptData::Default, Some(e.ioas)), Err(Errno::EINVAL), "not a fault queue");
    assert_eq!(e.alloc(e.ioas, 0, HwptData::Default, Some(999)), Err(Errno::ENOENT));
    let a = HwptAlloc { dev: e.ioas, parent: e.ioas, flags: 0, data: HwptData::Default, fault_queue: None };
    assert_eq!(e.fd.hwpt_alloc(&mut e.units, &mut e.mem, a.clone()), Err(Errno::EINVAL), "dev is not a device");
    assert_eq!(e.fd.hwpt_alloc(&mut e.units, &mut e.mem, HwptAlloc { dev: 999, ..a }), Err(Errno::ENOENT));
    // Parent and child on different units; children only attach on their unit.
    e.units.push(mock(&[0x20]));
    let other = e.fd.device_bind(&mut e.units, 1, DeviceId(0x20)).unwrap();
    let a = HwptAlloc { dev: other, parent: e.parent, flags: 0, data: s1, fault_queue: None };
    assert_eq!(e.fd.hwpt_alloc(&mut e.units, &mut e.mem, a), Err(Errno::EINVAL), "parent on another unit");
    assert_eq!(e.attach(other, child), Err(Errno::EINVAL));
    assert_eq!(e.attach(other, e.parent), Err(Errno::EINVAL));
    // Destroy order: the child first.
    assert_eq!(e.destroy(e.parent), Err(Errno::EBUSY), "a child hangs off it");
    e.destroy(child).unwrap();
    e.destroy(e.parent).unwrap();
    e.destroy(plain).unwrap();
    e.fd.close(&mut e.units, &mut e.mem);
    assert!(e.mem.pins.is_empty());
    assert_eq!(mock_of(&mut e.units, 0).domain_count() + mock_of(&mut e.units, 1).domain_count(), 0);
}

#[test]
fn shadow_translates_through_the_users_stage1() {
    let mut e = Env::new();
    let m = &mut e.mem;
    let rw_page = e.s1.map4k(m, 0x1000, DATA_IOVA, true);
    let ro_page = e.s1.map4k(m, 0x2000, DATA_IOVA + 0x1000, false);
    e.s1.map4k(m, 0x3000, 0x9000_0000, true); // outside the parent IOAS
    let big = *e.s1.map(m, 0x20_0000, DATA_IOVA + 0x20_0000, 1, true).last().unwrap();
    // Writable leaf under a read-only directory entry: read-only.
    let path = e.s1.map(m, 0x4000_0000, DATA_IOVA + 0x2000, 0, true);
    let pdpte = path[1];
    S1::put(m, pdpte, S1::get(m, pdpte) & !S1::RW);
    let child = e.child().unwrap();
    assert_eq!(e.attach(e.dev, child), Ok(child));
    assert_eq!(e.dma(DEV, 0x1008, true), Some(data_pa(DATA_IOVA + 8)));
    assert_eq!(e.dma(DEV, 0x2010, false), Some(data_pa(DATA_IOVA + 0x1010)));
    assert_eq!(e.dma(DEV, 0x2010, true), None, "read-only stage-1 page");
    assert_eq!(e.dma(DEV, 0x3000, false), None, "output outside the parent: fault, not corruption");
    assert_eq!(e.dma(DEV, 0x21_2345, true), Some(data_pa(DATA_IOVA + 0x21_2345)), "2 MiB leaf");
    assert_eq!(e.dma(DEV, 0x4000_0000, false), Some(data_pa(DATA_IOVA + 0x2000)));
    assert_eq!(e.dma(DEV, 0x4000_0000, true), None, "R/W clear higher up the path");
    assert_eq!(e.dma(DEV, DATA_IOVA, false), None, "parent IOVAs mean nothing to the child");
    let reasons: Vec<(u32, Access)> =
        mock_of(&mut e.units, 0).drain_faults().iter().map(|f| (f.reason, f.access)).collect();
    assert_eq!(
        reasons,
        [
            (reason::PERMISSION, Access::Write),
            (reason::NOT_MAPPED, Access::Read),
            (reason::PERMISSION, Access::Write),
            (reason::NOT_MAPPED, Access::Read)
        ]
    );
    let st = e.fd.shadow_stats(child).unwrap();
    assert_eq!((st.pages, st.syncs, st.last_walked), (1 + 1 + 512 + 1, 1, 1 + 1 + 1 + 512 + 1));
    assert_eq!(e.fd.shadow_stats(e.parent), None);
    // A changed entry is seen only after its invalidation.
    S1::put(&mut e.mem, rw_page, (DATA_IOVA + 0x5000) | S1::P | S1::RW | S1::US);
    assert_eq!(e.dma(DEV, 0x1000, true), Some(data_pa(DATA_IOVA)), "old translation until invalidated");
    mock_of(&mut e.units, 0).flushes.clear();
    assert_eq!(e.inval(child, &[(0x1000, 1, Stage1Invalidation::LEAF)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x1000, true), Some(data_pa(DATA_IOVA + 0x5000)));
    let (_, domain) = e.fd.hwpt_domain(child).unwrap();
    assert_eq!(mock_of(&mut e.units, 0).flushes, [(domain, 0x1000, 0x2000)], "one flush for the entry");
    // A cleared entry: the page faults after the invalidation.
    S1::put(&mut e.mem, ro_page, 0);
    assert_eq!(e.inval(child, &[(0x2000, 1, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x2000, false), None);
    // A page inside a 2 MiB leaf: the whole leaf is re-read.
    S1::put(&mut e.mem, big, DATA_IOVA | S1::P | S1::RW | S1::US | S1::PS);
    assert_eq!(e.inval(child, &[(0x20_1000, 1, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x20_1000, false), Some(data_pa(DATA_IOVA + 0x1000)));
    assert_eq!(e.dma(DEV, 0x3F_F000, false), Some(data_pa(DATA_IOVA + 0x1F_F000)));
    let st = e.fd.shadow_stats(child).unwrap();
    assert_eq!((st.pages, st.syncs), (1 + 512 + 1, 4));
    // Replace: from the child to its parent, one attach.
    assert_eq!(e.attach(e.dev, e.parent), Ok(e.parent));
    assert_eq!(e.dma(DEV, DATA_IOVA, false), Some(data_pa(DATA_IOVA)));
    assert_eq!(e.fd.kind(child), Some(Kind::Hwpt));
    assert_eq!(e.attach(e.dev, child), Ok(child));
    assert_eq!(e.dma(DEV, 0x1000, false), Some(data_pa(DATA_IOVA + 0x5000)));
    e.close_clean();
}

#[test]
fn one_page_of_a_merged_run_is_re_read_alone() {
    // Two 4 KiB stage-1 pages onto contiguous parent pages are one map call;
    // invalidating the first re-reads it alone (the run is cut), so the
    // second keeps its old translation until it is invalidated too.
    let mut e = Env::new();
    let a = e.s1.map4k(&mut e.mem, 0x1000, DATA_IOVA, true);
    let b = e.s1.map4k(&mut e.mem, 0x2000, DATA_IOVA + 0x1000, true);
    let child = e.child().unwrap();
    e.attach(e.dev, child).unwrap();
    S1::put(&mut e.mem, a, (DATA_IOVA + 0x7000) | 7);
    S1::put(&mut e.mem, b, (DATA_IOVA + 0x8000) | 7);
    assert_eq!(e.inval(child, &[(0x1000, 1, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x1000, false), Some(data_pa(DATA_IOVA + 0x7000)));
    assert_eq!(e.dma(DEV, 0x2000, false), Some(data_pa(DATA_IOVA + 0x1000)), "not invalidated yet");
    assert_eq!(e.fd.shadow_stats(child).unwrap().last_walked, 1, "one page re-read");
    assert_eq!(e.inval(child, &[(0x2000, 1, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x2000, false), Some(data_pa(DATA_IOVA + 0x8000)));
    e.close_clean();
}

#[test]
fn invalidation_entries_are_checked_and_a_bad_one_stops_the_batch() {
    let mut e = Env::new();
    let a = e.s1.map4k(&mut e.mem, 0x1000, DATA_IOVA, true);
    // Not contiguous with `a`'s page, so the two are separate map calls
    // (contiguous ones join one run, and a re-sync re-reads a whole run).
    let b = e.s1.map4k(&mut e.mem, 0x2000, DATA_IOVA + 0x3000, true);
    let child = e.child().unwrap();
    e.attach(e.dev, child).unwrap();
    S1::put(&mut e.mem, a, (DATA_IOVA + 0x7000) | 7);
    S1::put(&mut e.mem, b, (DATA_IOVA + 0x8000) | 7);
    assert_eq!(e.inval(child, &[(0x1000, 1, 0), (0x1000, 1, 2), (0x2000, 1, 0)]), (1, Err(Errno::EINVAL)));
    assert_eq!(e.dma(DEV, 0x1000, false), Some(data_pa(DATA_IOVA + 0x7000)), "the first was handled");
    assert_eq!(e.dma(DEV, 0x2000, false), Some(data_pa(DATA_IOVA + 0x3000)), "the last was not");
    for bad in [(0x1800, 1, 0), (0x1000, 0, 0), (u64::MAX - 0xFFF, 2, 0), (0, u64::MAX - 1, 0), (0x1000, 1, 1 << 31)] {
        assert_eq!(e.inval(child, &[(0x1000, 1, 0), (0x1000, 1, 0), bad]), (2, Err(Errno::EINVAL)), "{bad:x?}");
    }
    assert_eq!(e.inval(child, &[]), (0, Ok(())));
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())), "everything");
    assert_eq!(e.dma(DEV, 0x2000, false), Some(data_pa(DATA_IOVA + 0x8000)));
    // Beyond the stage-1 input space: nothing to do, not an error.
    assert_eq!(e.inval(child, &[(1 << 50, 16, 0)]), (1, Ok(())));
    assert_eq!(e.inval(e.parent, &[(0x1000, 1, 0)]), (0, Err(Errno::EINVAL)), "not a nested child");
    assert_eq!(e.inval(e.ioas, &[(0x1000, 1, 0)]), (0, Err(Errno::EINVAL)));
    assert_eq!(e.inval(999, &[(0x1000, 1, 0)]), (0, Err(Errno::ENOENT)));
    // A unit failing mid-batch stops it there too.
    mock_of(&mut e.units, 0).fail_next(Op::Unmap, iommu::Error::Hardware("injected"));
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0), (0x1000, 1, 0)]), (0, Err(Errno::EIO)));
    assert_eq!(e.dma(DEV, 0x2000, false), Some(data_pa(DATA_IOVA + 0x8000)), "what failed to unmap stays tracked");
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 2);
    e.close_clean();
}

/// The read budget covers a whole `hwpt_invalidate` call, not each entry:
/// a batch of many whole-space entries stops with ENOSPC part way.
#[test]
fn one_read_budget_per_invalidation_call() {
    let mut e = Env::new();
    e.s1.map4k(&mut e.mem, 0x1000, DATA_IOVA, true);
    let child = e.child().unwrap();
    e.attach(e.dev, child).unwrap();
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    let one = e.fd.shadow_stats(child).unwrap().last_reads;
    assert!(one > 0);
    // Room for about three whole-space syncs in all.
    e.fd.set_shadow_limits(ShadowLimits { max_reads: one * 3 + one / 2, ..ShadowLimits::default() });
    let batch = [(0, u64::MAX, 0); 64];
    let (handled, r) = e.inval(child, &batch);
    assert_eq!(r, Err(Errno::ENOSPC), "the batch must run out of its one budget");
    assert!((3..=4).contains(&handled), "{handled} entries handled with a budget of ~3.5 syncs");
    // The limits are the configured ones again afterwards, and a single entry still fits.
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    e.fd.set_shadow_limits(ShadowLimits::default());
    e.close_clean();
}

#[test]
fn garbage_tables_neither_hang_nor_panic() {
    let mut e = Env::new();
    let root = |i| (TBL_IOVA, i);
    // Every top-level entry points back at the top table: 2^36 leaves in all.
    for i in 0..512 {
        S1::put(&mut e.mem, root(i), TBL_IOVA | 7);
    }
    let (objects, domains) = (e.fd.len(), e.domains());
    e.fd.set_shadow_limits(ShadowLimits { max_pages: 1000, ..ShadowLimits::default() });
    assert_eq!(e.child(), Err(Errno::ENOSPC), "page cap");
    e.fd.set_shadow_limits(ShadowLimits { max_pages: 1 << 20, max_reads: 5000 });
    assert_eq!(e.child(), Err(Errno::ENOSPC), "read budget");
    assert_eq!((e.fd.len(), e.domains()), (objects, domains), "a failed creation leaves nothing");
    e.fd.set_shadow_limits(ShadowLimits::default());
    // One self-reference: page 0 maps the top table itself (it is in the parent IOAS).
    for i in 1..512 {
        S1::put(&mut e.mem, root(i), 0);
    }
    let child = e.child().unwrap();
    e.attach(e.dev, child).unwrap();
    assert_eq!(e.dma(DEV, 0x10, false), Some(BASE + TBL_VA + 0x10));
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 1);
    // All-ones entries: reserved at the top level, 1 GiB leaves far outside
    // the parent below.
    for i in 0..512 {
        S1::put(&mut e.mem, root(i), u64::MAX);
    }
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 0);
    S1::put(&mut e.mem, root(0), (TBL_IOVA + PAGE) | 7);
    for i in 0..512 {
        S1::put(&mut e.mem, (TBL_IOVA + PAGE, i), u64::MAX);
    }
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    let st = e.fd.shadow_stats(child).unwrap();
    assert_eq!((st.pages, st.last_walked), (0, 512 << 18), "walked, nothing composed");
    // Tables outside the parent, and a root outside it: not present.
    S1::put(&mut e.mem, root(0), 0xDEAD_B000 | 7);
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 0);
    let far = e.alloc(e.parent, 0, HwptData::Stage1X86 { root: 0x7000_0000_0000, levels: 5 }, None).unwrap();
    assert_eq!(e.fd.shadow_stats(far).unwrap().pages, 0);
    assert_eq!(e.dma(DEV, 0x10, false), None);
    e.close_clean();
}

#[test]
fn parent_unmap_drops_child_pages_before_their_pins_go() {
    let mut e = Env::new();
    // One more area, a single page at 0x9000_0000.
    e.map(0x600_0000, PAGE, 0x9000_0000).unwrap();
    e.s1.map4k(&mut e.mem, 0x1000, 0x9000_0000, true);
    e.s1.map4k(&mut e.mem, 0x2000, DATA_IOVA, true);
    e.s1.map4k(&mut e.mem, 0x3000, 0xA000_0000, true); // not mapped in the parent yet
    let child = e.child().unwrap();
    e.attach(e.dev, child).unwrap();
    assert_eq!(e.dma(DEV, 0x1000, true), Some(BASE + 0x600_0000), "now cached in the IOTLB");
    assert_eq!(e.dma(DEV, 0x3000, true), None);
    assert_eq!(e.mem.pins.get(&(BASE + 0x600_0000)), Some(&1));
    let (_, domain) = e.fd.hwpt_domain(child).unwrap();
    mock_of(&mut e.units, 0).flushes.clear();
    assert_eq!(e.unmap(0x9000_0000, PAGE), Ok(PAGE));
    assert!(!e.mem.pins.contains_key(&(BASE + 0x600_0000)), "unpinned");
    assert!(mock_of(&mut e.units, 0).flushes.contains(&(domain, 0x1000, 0x2000)), "the child was flushed");
    assert_eq!(e.units[0].iova_to_phys(domain, 0x1000), None);
    assert_eq!(e.dma(DEV, 0x1000, true), None, "no stale translation to the unpinned page");
    assert_eq!(e.dma(DEV, 0x2000, true), Some(data_pa(DATA_IOVA)), "other areas untouched");
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 1);
    // A map into the parent is seen after an invalidation, as on hardware.
    e.map(0x700_0000, PAGE, 0xA000_0000).unwrap();
    assert_eq!(e.dma(DEV, 0x3000, true), None);
    assert_eq!(e.inval(child, &[(0x3000, 1, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x3000, true), Some(BASE + 0x700_0000));
    // The tables' own area unmapped: translations stay until invalidated,
    // then the table cannot be read and nothing is mapped.
    assert_eq!(e.unmap(TBL_IOVA, TBL_LEN), Ok(TBL_LEN));
    assert_eq!(e.dma(DEV, 0x2000, true), Some(data_pa(DATA_IOVA)));
    assert_eq!(e.inval(child, &[(0, u64::MAX, 0)]), (1, Ok(())));
    assert_eq!(e.dma(DEV, 0x2000, true), None);
    assert_eq!(e.fd.shadow_stats(child).unwrap().pages, 0);
    // Teardown by hand: child, then parent, then the IOAS.
    assert_eq!(e.destroy(e.ioas), Err(Errno::EBUSY));
    assert_eq!(e.destroy(e.parent), Err(Errno::EBUSY));
    assert_eq!(e.destroy(child), Err(Errno::EBUSY), "attached");
    e.fd.device_detach(&mut e.units, e.dev).unwrap();
    e.destroy(child).unwrap();
    e.destroy(e.parent).unwrap();
    e.destroy(e.ioas).unwrap();
    assert!(e.mem.pins.is_empty());
    e.close_clean();
}

#[test]
fn fault_queues_take_the_faults_routed_to_them() {
    let mut e = Env::new();
    assert_eq!(e.fd.fault_queue_alloc(0), Err(Errno::EINVAL));
    assert_eq!(e.fd.fault_queue_alloc(MAX_FAULT_QUEUE + 1), Err(Errno::EINVAL));
    let q = e.fd.fault_queue_alloc(2).unwrap();
    assert_eq!(e.fd.kind(q), Some(Kind::FaultQueue));
    let h = e.alloc(e.ioas, 0, HwptData::Default, Some(q)).unwrap();
    e.attach(e.dev, h).unwrap();
    e.attach(e.dev2, e.ioas).unwrap();
    let fault = |dev, address, access| iommu::FaultEvent {
        device: dev,
        address,
        access,
        reason: reason::NOT_MAPPED,
        reason_name: "not mapped",
    };
    // Real faults from the mock: one routed device, one not.
    assert_eq!(e.dma(DEV, 0x5000, true), None);
    assert_eq!(e.dma(DEV2, 0x6000, false), None);
    assert_eq!(e.dma(DEV, 0x7000, false), None);
    let faults = mock_of(&mut e.units, 0).drain_faults();
    let taken: Vec<bool> = faults.iter().map(|f| e.fd.deliver_fault(0, f)).collect();
    assert_eq!(taken, [true, false, true]);
    assert!(!e.fd.deliver_fault(1, &faults[0]), "another unit");
    assert!(!e.fd.deliver_fault(0, &fault(DeviceId(0x99), 0, Access::Read)), "not bound here");
    let (records, overflows) = e.fd.fault_read(q, 1).unwrap();
    assert_eq!(
        records,
        [FaultRecord { dev_id: e.dev, hwpt_id: h, address: 0x5000, access: Access::Write, reason: reason::NOT_MAPPED }]
    );
    assert_eq!(overflows, 0);
    // Full: the third record is dropped and counted.
    assert!(e.fd.deliver_fault(0, &fault(DEV, 0x8000, Access::Unknown)));
    assert!(e.fd.deliver_fault(0, &fault(DEV, 0x9000, Access::Read)));
    let (records, overflows) = e.fd.fault_read(q, 10).unwrap();
    let addrs: Vec<(u64, Access)> = records.iter().map(|r| (r.address, r.access)).collect();
    assert_eq!(addrs, [(0x7000, Access::Read), (0x8000, Access::Unknown)], "oldest first");
    assert_eq!(overflows, 1);
    assert_eq!(e.fd.fault_read(q, 10).unwrap(), (vec![], 0), "read takes them");
    // A nested child routes too, with its own id.
    e.s1.map4k(&mut e.mem, 0x1000, DATA_IOVA, false);
    let child = e.alloc(e.parent, 0, HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 }, Some(q)).unwrap();
    e.attach(e.dev2, child).unwrap();
    assert_eq!(e.dma(DEV2, 0x1000, true), None);
    let f = mock_of(&mut e.units, 0).drain_faults();
    assert!(e.fd.deliver_fault(0, &f[0]));
    let (records, _) = e.fd.fault_read(q, 10).unwrap();
    assert_eq!((records[0].dev_id, records[0].hwpt_id, records[0].reason), (e.dev2, child, reason::PERMISSION));
    // Unattached devices route nowhere.
    e.fd.device_detach(&mut e.units, e.dev).unwrap();
    assert!(!e.fd.deliver_fault(0, &fault(DEV, 0x5000, Access::Read)));
    // Destroy rules.
    assert_eq!(e.destroy(q), Err(Errno::EBUSY), "HWPTs route to it");
    e.destroy(h).unwrap();
    assert_eq!(e.destroy(q), Err(Errno::EBUSY), "the child still does");
    e.fd.device_detach(&mut e.units, e.dev2).unwrap();
    e.destroy(child).unwrap();
    e.destroy(q).unwrap();
    assert_eq!(e.fd.fault_read(q, 1), Err(Errno::ENOENT));
    assert_eq!(e.fd.fault_read(e.ioas, 1), Err(Errno::EINVAL));
    e.close_clean();
}

#[test]
fn close_with_nested_children_live_leaves_nothing() {
    let mut e = Env::new();
    e.s1.map4k(&mut e.mem, 0x1000, DATA_IOVA, true);
    e.s1.map(&mut e.mem, 0x20_0000, DATA_IOVA + 0x20_0000, 1, true);
    let q = e.fd.fault_queue_alloc(4).unwrap();
    let c1 = e.alloc(e.parent, 0, HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 }, Some(q)).unwrap();
    let c2 = e.child().unwrap();
    e.attach(e.dev, c1).unwrap();
    e.attach(e.dev2, e.parent).unwrap();
    let other = e.fd.ioas_alloc().unwrap();
    e.fd.map(&mut e.units, &mut e.mem, other, MapArgs { va: 0, len: PAGE, iova: IovaChoice::Auto, perms: RW }).unwrap();
    let _spare = e.alloc(other, hwpt_flags::NEST_PARENT, HwptData::Default, None).unwrap();
    assert_eq!(e.dma(DEV, 0x1000, true), Some(data_pa(DATA_IOVA)));
    assert!(e.fd.shadow_stats(c2).is_some());
    assert!(e.mem.pins.len() > 3);
    e.close_clean();
}

/// What the user's table says now, for the model test: a 4 MiB stage-1
/// range as two directory entries, each empty, a 2 MiB leaf or a page table.
#[derive(Debug, Clone, Default)]
struct Model {
    dirs: [Dir; 2],
}

#[derive(Debug, Clone, Default)]
enum Dir {
    #[default]
    Empty,
    Big(u64),
    Table(Vec<Option<u64>>),
}

impl Model {
    /// The physical address stage-1 page `p` (0..1024) reaches now.
    fn pa(&self, p: usize) -> Option<u64> {
        match &self.dirs[p / 512] {
            Dir::Empty => None,
            Dir::Big(out) => Some(data_pa(out + (p % 512) as u64 * PAGE)),
            Dir::Table(t) => t[p % 512].map(data_pa),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Page `p` → data page `d` (a page table replaces a 2 MiB leaf).
    Page(usize, u64),
    /// Page `p` cleared.
    Clear(usize),
    /// Directory `i` → 2 MiB leaf to data half `h`.
    Big(usize, u64),
    /// Invalidate `n` pages from page `p`.
    Inval(usize, u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0usize..1024, 0u64..1024).prop_map(|(p, d)| Step::Page(p, d)),
        (0usize..1024).prop_map(Step::Clear),
        (0usize..2, 0u64..2).prop_map(|(i, h)| Step::Big(i, h)),
        (0usize..1024, 1u64..600).prop_map(|(p, n)| Step::Inval(p, n)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    /// After each invalidation the child translates every page of the range
    /// as the user's table says now, and every other page as before or as now
    /// (a re-sync may re-read more than asked, never less); pages always
    /// land in the parent's data area.
    #[test]
    fn shadow_follows_the_table_at_each_invalidation(steps in proptest::collection::vec(step(), 1..40)) {
        let mut e = Env::new();
        let child = e.child().unwrap();
        let (_, domain) = e.fd.hwpt_domain(child).unwrap();
        let mut model = Model::default();
        let mut shadow: Vec<Option<u64>> = vec![None; 1024];
        // Directory entries and page tables live at fixed table pages.
        let pdpt = TBL_IOVA + PAGE;
        let pd = TBL_IOVA + 2 * PAGE;
        let pt = |i: usize| TBL_IOVA + (3 + i as u64) * PAGE;
        S1::put(&mut e.mem, (TBL_IOVA, 0), pdpt | 7);
        S1::put(&mut e.mem, (pdpt, 0), pd | 7);
        for s in steps {
            match s {
                Step::Page(p, d) => {
                    let i = p / 512;
                    if !matches!(model.dirs[i], Dir::Table(_)) {
                        for j in 0..512 {
                            S1::put(&mut e.mem, (pt(i), j), 0);
                        }
                        S1::put(&mut e.mem, (pd, i), pt(i) | 7);
                        model.dirs[i] = Dir::Table(vec![None; 512]);
                    }
                    let out = DATA_IOVA + d * PAGE;
                    S1::put(&mut e.mem, (pt(i), p % 512), out | 7);
                    if let Dir::Table(t) = &mut model.dirs[i] {
                        t[p % 512] = Some(out);
                    }
                }
                Step::Clear(p) => {
                    if let Dir::Table(t) = &mut model.dirs[p / 512] {
                        S1::put(&mut e.mem, (pt(p / 512), p % 512), 0);
                        t[p % 512] = None;
                    }
                }
                Step::Big(i, h) => {
                    let out = DATA_IOVA + h * 0x20_0000;
                    S1::put(&mut e.mem, (pd, i), out | 7 | S1::PS);
                    model.dirs[i] = Dir::Big(out);
                }
                Step::Inval(p, n) => {
                    proptest::prop_assert_eq!(e.inval(child, &[(p as u64 * PAGE, n, 0)]), (1, Ok(())));
                    for (q, old) in shadow.iter_mut().enumerate() {
                        let got = e.units[0].iova_to_phys(domain, q as u64 * PAGE);
                        if (p..p + n as usize).contains(&q) {
                            proptest::prop_assert_eq!(got, model.pa(q), "page {} in the range", q);
                        } else {
                            proptest::prop_assert!(got == *old || got == model.pa(q), "page {} outside", q);
                        }
                        *old = got;
                    }
                    let mapped = shadow.iter().filter(|x| x.is_some()).count() as u64;
                    proptest::prop_assert_eq!(e.fd.shadow_stats(child).unwrap().pages, mapped);
                }
            }
        }
        e.close_clean();
    }
}

/// A mock unit shared with the test's memory, so an unpin can look at what
/// the unit would still translate at that moment.
struct Shared(std::sync::Arc<std::sync::Mutex<MockIommu>>);

impl Iommu for Shared {
    fn info(&self) -> iommu::Info {
        self.0.lock().unwrap().info()
    }
    fn domain_alloc(&mut self, kind: DomainKind) -> Result<DomainId, iommu::Error> {
        self.0.lock().unwrap().domain_alloc(kind)
    }
    fn domain_free(&mut self, domain: DomainId) -> Result<(), iommu::Error> {
        self.0.lock().unwrap().domain_free(domain)
    }
    fn attach(&mut self, device: DeviceId, domain: DomainId) -> Result<(), iommu::Error> {
        self.0.lock().unwrap().attach(device, domain)
    }
    fn detach(&mut self, device: DeviceId) -> Result<(), iommu::Error> {
        self.0.lock().unwrap().detach(device)
    }
    fn attached(&self, device: DeviceId) -> Option<DomainId> {
        self.0.lock().unwrap().attached(device)
    }
    fn devices(&self) -> Vec<DeviceId> {
        self.0.lock().unwrap().devices()
    }
    fn map(&mut self, domain: DomainId, iova: u64, pa: u64, len: u64, perms: Perms) -> Result<(), iommu::Error> {
        self.0.lock().unwrap().map(domain, iova, pa, len, perms)
    }
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> Result<iommu::Unmapped, iommu::Error> {
        self.0.lock().unwrap().unmap(domain, iova, len)
    }
    fn flush(&mut self, domain: DomainId, gather: Gather) -> Result<(), iommu::Error> {
        self.0.lock().unwrap().flush(domain, gather)
    }
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.0.lock().unwrap().iova_to_phys(domain, iova)
    }
    fn drain_faults(&mut self) -> Vec<iommu::FaultEvent> {
        self.0.lock().unwrap().drain_faults()
    }
    fn reserved_regions(&self, device: DeviceId) -> Vec<iommu::Region> {
        self.0.lock().unwrap().reserved_regions(device)
    }
    fn flushes(&self) -> u64 {
        self.0.lock().unwrap().flushes()
    }
    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

/// Task memory that, at every unpin, checks the device cannot reach the page
/// through the unit any more (a DMA through the IOTLB included).
struct Watch {
    inner: FakeMemory,
    unit: std::sync::Arc<std::sync::Mutex<MockIommu>>,
    /// (device, stage-1 IOVA) pairs to try at each unpin.
    probes: Vec<(DeviceId, u64)>,
    /// Unpinned pages a probe still reached.
    reached: Vec<u64>,
    unpins: usize,
}

impl Memory for Watch {
    fn pin(&mut self, va: u64, len: u64, write: bool) -> Result<Runs, Errno> {
        self.inner.pin(va, len, write)
    }
    fn repin(&mut self, pages: &Runs) {
        self.inner.repin(pages)
    }
    fn unpin(&mut self, pages: &Runs) {
        self.unpins += 1;
        let mut unit = self.unit.lock().unwrap();
        for &(dev, iova) in &self.probes {
            if let Some(pa) = unit.dma(dev, iova, false) {
                if pages.frames().any(|f| f == pa & !(PAGE - 1)) {
                    self.reached.push(pa);
                }
            }
        }
        self.inner.unpin(pages)
    }
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.inner.read_u64(pa)
    }
    fn quarantine(&mut self, pages: &Runs) {
        self.inner.quarantine(pages)
    }
}

#[test]
fn no_child_translation_survives_the_unpin_of_its_page() {
    let unit = std::sync::Arc::new(std::sync::Mutex::new(MockIommu::new(MockConfig::default())));
    let mut units: Vec<Box<dyn Iommu>> = vec![Box::new(Shared(unit.clone()))];
    let mut mem =
        Watch { inner: FakeMemory::default(), unit: unit.clone(), probes: vec![], reached: vec![], unpins: 0 };
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let dev = fd.device_bind(&mut units, 0, DEV).unwrap();
    for (va, len, at) in [(TBL_VA, TBL_LEN, TBL_IOVA), (0x600_0000, 2 * PAGE, 0x9000_0000)] {
        fd.map(&mut units, &mut mem, ioas, MapArgs { va, len, iova: IovaChoice::Fixed(at), perms: RW }).unwrap();
    }
    let mut s1 = S1::new();
    s1.map4k(&mut mem.inner, 0x1000, 0x9000_0000, true);
    s1.map4k(&mut mem.inner, 0x2000, 0x9000_1000, true);
    let a = HwptAlloc { dev, parent: ioas, flags: hwpt_flags::NEST_PARENT, data: HwptData::Default, fault_queue: None };
    let parent = fd.hwpt_alloc(&mut units, &mut mem, a).unwrap();
    let s1_data = HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 };
    let a = HwptAlloc { dev, parent, flags: 0, data: s1_data, fault_queue: None };
    let child = fd.hwpt_alloc(&mut units, &mut mem, a).unwrap();
    fd.device_attach(&mut units, dev, child).unwrap();
    mem.probes = vec![(DEV, 0x1000), (DEV, 0x2000)];
    // Both pages are reachable (and now in the IOTLB) before the unmap.
    assert_eq!(unit.lock().unwrap().dma(DEV, 0x2008, true), Some(BASE + 0x600_1008));
    assert_eq!(unit.lock().unwrap().dma(DEV, 0x1008, true), Some(BASE + 0x600_0008));
    assert_eq!(fd.unmap(&mut units, &mut mem, ioas, 0x9000_0000, 2 * PAGE), Ok(2 * PAGE));
    assert_eq!(mem.unpins, 1);
    assert_eq!(mem.reached, [], "a child still reached a page being unpinned");
    fd.close(&mut units, &mut mem);
    assert!(mem.inner.pins.is_empty());
    assert_eq!(unit.lock().unwrap().domain_count(), 0);
}

#[test]
fn a_user_hwpt_holds_its_ioas_to_its_units_aperture() {
    let small = MockConfig { aperture: (0, (1 << 32) - 1), devices: vec![DeviceId(0x20)], ..MockConfig::default() };
    let mut units: Vec<Box<dyn Iommu>> = vec![mock(&[0x10]), Box::new(MockIommu::new(small))];
    let mut mem = FakeMemory::default();
    let mut fd = Iommufd::new();
    let ioas = fd.ioas_alloc().unwrap();
    let d1 = fd.device_bind(&mut units, 1, DeviceId(0x20)).unwrap();
    let high = MapArgs { va: 0, len: PAGE, iova: IovaChoice::Fixed(1 << 33), perms: RW };
    fd.map(&mut units, &mut mem, ioas, high).unwrap();
    let a = HwptAlloc { dev: d1, parent: ioas, flags: 0, data: HwptData::Default, fault_queue: None };
    assert_eq!(fd.hwpt_alloc(&mut units, &mut mem, a.clone()), Err(Errno::EADDRINUSE), "a mapping beyond it");
    fd.unmap(&mut units, &mut mem, ioas, 0, u64::MAX).unwrap();
    let h = fd.hwpt_alloc(&mut units, &mut mem, a).unwrap();
    // No device attached, yet the IOAS keeps to the unit's aperture.
    assert_eq!(fd.iova_ranges(&mut units, ioas).unwrap(), [(PAGE, (1 << 32) - 1)]);
    assert_eq!(fd.map(&mut units, &mut mem, ioas, high), Err(Errno::ERANGE));
    fd.destroy(&mut units, &mut mem, h).unwrap();
    assert_eq!(fd.map(&mut units, &mut mem, ioas, high), Ok(1 << 33));
    fd.close(&mut units, &mut mem);
    assert!(mem.pins.is_empty());
}
