//! fail-nth over the mock (issue 18 item 4, Linux's `iommufd_fail_nth`):
//! every op of a list of sequences runs with its 1st, 2nd, … injection point
//! failing until it succeeds, and after every failed attempt the whole state
//! — objects with their ids and kinds, areas and their pages, pins per page,
//! quarantine, each mock unit's domains with their mappings and its attached
//! devices — must be what it was before the call.
//!
//! Injection points are the allocations of the model: `Memory::pin`, and the
//! unit's `domain_alloc`, `map` and `attach` (they allocate tables and
//! context structures in a real driver). In the second pass the teardown
//! commands (`unmap`, `flush`, `detach`) fail too; there a failure may end in
//! the documented quarantine instead of the old state, so that pass accepts
//! either the exact old state or a quarantine that grew with the whole state
//! still consistent (every pin owned by an area or the quarantine, every
//! domain by a HWPT, every attachment by a device object). Heap allocations
//! of the model are not injection points: `Vec`/`BTreeMap` growth cannot
//! fail softly in Rust (it calls the allocation error handler), so only the
//! paths that allocate with `try_reserve` could be; the kernel injects those
//! in `TaskMemory::pin` (the pin vector, the one heap allocation a task sizes).
//! `hwpt_invalidate` re-syncs the shadow: a failed sync is not rolled back
//! (hardware may drop more IOTLB entries than asked too), so it is checked
//! for consistency and for a retry reaching the clean result.

use super::*;
use crate::testing::FakeMemory;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::sync::Arc;
use iommu::mock::{FailNth, MockConfig, MockIommu};

const RW: Perms = Perms::READ.union(Perms::WRITE);
/// Most points any op here may pass: a runaway loop is a test failure.
const MAX_N: u64 = 2000;

/// The user's stage-1 tables (task VAs / parent IOVAs) and the data it maps.
const TBL_VA: u64 = 0x100_0000;
const TBL_IOVA: u64 = 0x4000_0000;
const DATA_VA: u64 = 0x200_0000;
const DATA_IOVA: u64 = 0x8000_0000;

/// Two mock units (devices 0x10 and 0x18 behind unit 0, 0x20 behind unit 1),
/// a task memory and a table, all sharing one countdown.
struct World {
    units: Vec<Box<dyn Iommu>>,
    mem: FakeMemory,
    fd: Iommufd,
    inj: Arc<FailNth>,
    ids: BTreeMap<&'static str, u32>,
}

fn mock_of(units: &mut [Box<dyn Iommu>], i: usize) -> &mut MockIommu {
    units[i].as_any_mut().downcast_mut::<MockIommu>().expect("a mock unit")
}

impl World {
    fn new() -> Self {
        let inj = FailNth::new();
        let mut units: Vec<Box<dyn Iommu>> = Vec::new();
        for devs in [&[0x10u32, 0x18][..], &[0x20]] {
            let cfg = MockConfig { devices: devs.iter().map(|&d| DeviceId(d)).collect(), ..MockConfig::default() };
            let mut m = MockIommu::new(cfg);
            m.set_fail_nth(inj.clone());
            units.push(Box::new(m));
        }
        let mem = FakeMemory { fail_nth: Some(inj.clone()), ..FakeMemory::default() };
        World { units, mem, fd: Iommufd::new(), inj, ids: BTreeMap::new() }
    }

    fn id(&self, name: &str) -> u32 {
        *self.ids.get(name).unwrap_or_else(|| panic!("no object {name}"))
    }

    fn ioas(&mut self, name: &'static str) {
        let id = self.fd.ioas_alloc().unwrap();
        self.ids.insert(name, id);
    }

    fn bind(&mut self, name: &'static str, unit: usize, dev: u32) {
        let id = self.fd.device_bind(&mut self.units, unit, DeviceId(dev)).unwrap();
        self.ids.insert(name, id);
    }

    fn attach(&mut self, dev: &str, pt: &str) -> Result<u32, Errno> {
        let (d, p) = (self.id(dev), self.id(pt));
        self.fd.device_attach(&mut self.units, d, p)
    }

    fn map(&mut self, ioas: &str, va: u64, len: u64, iova: IovaChoice) -> Result<u64, Errno> {
        let i = self.id(ioas);
        self.fd.map(&mut self.units, &mut self.mem, i, MapArgs { va, len, iova, perms: RW })
    }

    fn hwpt(&mut self, dev: &str, parent: &str, flags: u32, data: HwptData, fq: Option<&str>) -> Result<u32, Errno> {
        let a =
            HwptAlloc { dev: self.id(dev), parent: self.id(parent), flags, data, fault_queue: fq.map(|q| self.id(q)) };
        self.fd.hwpt_alloc(&mut self.units, &mut self.mem, a)
    }

    fn destroy(&mut self, name: &str) -> Result<(), Errno> {
        let id = self.id(name);
        self.fd.destroy(&mut self.units, &mut self.mem, id)
    }

    /// Everything a call may change, as text.
    fn snapshot(&mut self) -> String {
        let units: Vec<String> = (0..self.units.len()).map(|i| mock_of(&mut self.units, i).snapshot()).collect();
        alloc::format!(
            "objects {:?}\npinned {} poisoned {}\npins {:?}\nquarantined {:?}\nunits {units:?}",
            self.fd.objects,
            self.fd.pinned,
            self.fd.poisoned,
            self.mem.pins,
            self.mem.quarantined,
        )
    }

    /// What must hold after any call, failed or not: nothing leaked, nothing
    /// owned twice, the units agree with the table.
    fn consistent(&mut self) -> Result<(), String> {
        let mut owed: BTreeMap<u64, u32> = BTreeMap::new();
        let mut pinned = 0;
        for o in self.fd.objects.values() {
            if let Object::Ioas(i) = o {
                for a in i.areas.values() {
                    pinned += a.pages.len() as u64;
                    for &p in &a.pages {
                        *owed.entry(p).or_default() += 1;
                    }
                }
            }
        }
        for &p in &self.mem.quarantined {
            *owed.entry(p).or_default() += 1;
        }
        if owed != self.mem.pins {
            let pages: BTreeSet<u64> = owed.keys().chain(self.mem.pins.keys()).copied().collect();
            let off: Vec<(u64, u32, u32)> = pages
                .into_iter()
                .map(|p| (p, self.mem.pins.get(&p).copied().unwrap_or(0), owed.get(&p).copied().unwrap_or(0)))
                .filter(|&(_, have, want)| have != want)
                .collect();
            let first: Vec<String> =
                off.iter().take(3).map(|(p, have, want)| alloc::format!("{p:#x}: {have} pins, {want} owned")).collect();
            return Err(alloc::format!("{} page(s) pinned unlike areas + quarantine: {}", off.len(), first.join(", ")));
        }
        if pinned != self.fd.pinned {
            return Err(alloc::format!("pinned counter {} but areas hold {pinned}", self.fd.pinned));
        }
        for u in 0..self.units.len() {
            let m = mock_of(&mut self.units, u);
            let mut ours: Vec<DomainId> = self
                .fd
                .objects
                .values()
                .filter_map(|o| match o {
                    Object::Hwpt(h) if h.unit == u => Some(h.domain),
                    _ => None,
                })
                .collect();
            ours.sort();
            // A device that could not be blocked keeps its domain (its pages are quarantined).
            if ours != m.domain_ids() && !self.fd.poisoned {
                return Err(alloc::format!("unit {u}: domains {:?} but HWPTs own {ours:?}", m.domain_ids()));
            }
            for (&id, o) in &self.fd.objects {
                match o {
                    Object::Device(d) if d.unit == u => {
                        let want = d.hwpt.and_then(|h| self.fd.hwpt(h)).map(|h| h.domain);
                        if m.attached(d.id) != want && !self.fd.poisoned {
                            return Err(alloc::format!(
                                "device {id}: unit says {:?}, table {want:?}",
                                m.attached(d.id)
                            ));
                        }
                    }
                    Object::Hwpt(h) if h.unit == u => {
                        let want = match &h.kind {
                            HwptKind::Nested { .. } => self.fd.shadow_stats(id).map_or(0, |s| s.pages * PAGE),
                            _ => match self.fd.objects.get(&h.ioas) {
                                Some(Object::Ioas(i)) => i.areas.values().map(|a| a.len).sum(),
                                _ => return Err(alloc::format!("HWPT {id} on a missing IOAS")),
                            },
                        };
                        // An unmap the unit failed leaves quarantined pages mapped.
                        let stale_ok = !self.mem.quarantined.is_empty() && m.mapped_bytes(h.domain) > want;
                        if m.mapped_bytes(h.domain) != want && !stale_ok {
                            return Err(alloc::format!(
                                "HWPT {id}: {:#x} bytes mapped, {want:#x} expected",
                                m.mapped_bytes(h.domain)
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Ioas `a` with two areas (8 KiB, and 2 MiB at a 2 MiB boundary), device
/// `d0` (unit 0) and `d2` (unit 1) attached to it (two automatic HWPTs,
/// `h0` and `h2`), device `d1` (unit 0) bound, not attached.
fn base(w: &mut World) {
    w.ioas("a");
    w.bind("d0", 0, 0x10);
    w.bind("d1", 0, 0x18);
    w.bind("d2", 1, 0x20);
    w.map("a", 0x1_0000, 0x2000, IovaChoice::Fixed(0x10_0000)).unwrap();
    w.map("a", 0x40_0000, 0x20_0000, IovaChoice::Fixed(0x4000_0000)).unwrap();
    let h0 = w.attach("d0", "a").unwrap();
    let h2 = w.attach("d2", "a").unwrap();
    w.ids.insert("h0", h0);
    w.ids.insert("h2", h2);
}

/// `base`, plus IOAS `b` with one area and a user HWPT `u` on `a` (unit 0).
fn base_plus(w: &mut World) {
    base(w);
    w.ioas("b");
    w.map("b", 0x80_0000, 0x3000, IovaChoice::Fixed(0x20_0000)).unwrap();
    let u = w.hwpt("d1", "a", 0, HwptData::Default, None).unwrap();
    w.ids.insert("u", u);
}

/// IOAS `n` with a table area and a data area, device `d0` bound, nest
/// parent `np` on it, and a 4-level stage-1 table mapping stage-1 pages
/// 0..4 to every other data page (four runs: four `map` calls).
fn nested(w: &mut World) {
    w.ioas("n");
    w.bind("d0", 0, 0x10);
    w.bind("d1", 0, 0x18);
    w.map("n", TBL_VA, 8 * PAGE, IovaChoice::Fixed(TBL_IOVA)).unwrap();
    w.map("n", DATA_VA, 16 * PAGE, IovaChoice::Fixed(DATA_IOVA)).unwrap();
    let np = w.hwpt("d0", "n", hwpt_flags::NEST_PARENT, HwptData::Default, None).unwrap();
    w.ids.insert("np", np);
    // Levels 4 → 1 in consecutive table pages, every entry present + RW + US.
    for level in 0..3u64 {
        w.mem.write_u64(TBL_VA + level * PAGE, (TBL_IOVA + (level + 1) * PAGE) | 7);
    }
    for i in 0..4u64 {
        w.mem.write_u64(TBL_VA + 3 * PAGE + 8 * i, (DATA_IOVA + 2 * i * PAGE) | 7);
    }
}

fn child(w: &mut World) -> Result<u32, Errno> {
    w.hwpt("d0", "np", 0, HwptData::Stage1X86 { root: TBL_IOVA, levels: 4 }, None)
}

fn nested_child(w: &mut World) {
    nested(w);
    let c = child(w).unwrap();
    w.ids.insert("c", c);
    let (d1, c) = (w.id("d1"), w.id("c"));
    w.fd.device_attach(&mut w.units, d1, c).unwrap();
    // The table changes: the next invalidation maps the odd data pages.
    for i in 0..4u64 {
        w.mem.write_u64(TBL_VA + 3 * PAGE + 8 * i, (DATA_IOVA + (2 * i + 1) * PAGE) | 7);
    }
}

/// How a failed call is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Back exactly where it was.
    Exact,
    /// Consistent, and the same call once more (no failure) reaches what a
    /// clean call reaches.
    Retry,
    /// Task exit: returns nothing; afterwards nothing is left but quarantine.
    Close,
}

fn ok<T>(r: Result<T, Errno>) -> Result<(), Errno> {
    r.map(drop)
}

fn ok64(r: Result<u64, Errno>) -> Result<(), Errno> {
    r.map(drop)
}

type Setup = fn(&mut World);
type Call = fn(&mut World) -> Result<(), Errno>;

fn sequences() -> Vec<(&'static str, Setup, Call, Check)> {
    use Check::*;
    vec![
        ("ioas_alloc", |_| {}, |w| ok(w.fd.ioas_alloc()), Exact),
        ("map_fixed", base, |w| ok64(w.map("a", 0x80_0000, 0x3000, IovaChoice::Fixed(0x800_0000))), Exact),
        ("map_auto_2m", base, |w| ok64(w.map("a", 0x60_0000, 0x20_0000, IovaChoice::Auto)), Exact),
        (
            "map_small_pages_two_domains",
            |w| {
                base(w);
                let a = w.id("a");
                w.fd.set_option(a, option::HUGE_PAGES, 0).unwrap();
            },
            |w| ok64(w.map("a", 0x80_0000, 4 * PAGE, IovaChoice::Fixed(0x800_0000))),
            Exact,
        ),
        ("map_with_user_hwpt", base_plus, |w| ok64(w.map("a", 0x80_0000, 0x3000, IovaChoice::Auto)), Exact),
        (
            "copy_fixed",
            base_plus,
            |w| {
                let (a, b) = (w.id("a"), w.id("b"));
                let c = CopyArgs {
                    src: b,
                    src_iova: 0x20_0000,
                    len: 0x3000,
                    dst_iova: IovaChoice::Fixed(0x900_0000),
                    perms: RW,
                };
                ok64(w.fd.copy(&mut w.units, &mut w.mem, a, c))
            },
            Exact,
        ),
        (
            "copy_auto",
            base_plus,
            |w| {
                let (a, b) = (w.id("a"), w.id("b"));
                let c =
                    CopyArgs { src: a, src_iova: 0x4000_0000, len: 0x20_0000, dst_iova: IovaChoice::Auto, perms: RW };
                ok64(w.fd.copy(&mut w.units, &mut w.mem, b, c))
            },
            Exact,
        ),
        (
            "unmap",
            base_plus,
            |w| {
                let a = w.id("a");
                ok64(w.fd.unmap(&mut w.units, &mut w.mem, a, 0x10_0000, 0x2000))
            },
            Exact,
        ),
        (
            "unmap_all",
            base_plus,
            |w| {
                let a = w.id("a");
                ok64(w.fd.unmap(&mut w.units, &mut w.mem, a, 0, u64::MAX))
            },
            Exact,
        ),
        (
            "attach_new_hwpt",
            |w| {
                w.ioas("a");
                w.bind("d0", 0, 0x10);
                w.map("a", 0x1_0000, 0x2000, IovaChoice::Fixed(0x10_0000)).unwrap();
                w.map("a", 0x40_0000, 0x20_0000, IovaChoice::Auto).unwrap();
            },
            |w| ok(w.attach("d0", "a")),
            Exact,
        ),
        ("attach_existing_hwpt", base, |w| ok(w.attach("d1", "a")), Exact),
        ("replace_to_user_hwpt", base_plus, |w| ok(w.attach("d0", "u")), Exact),
        ("replace_ioas", base_plus, |w| ok(w.attach("d0", "b")), Exact),
        ("replace_unit1_ioas", base_plus, |w| ok(w.attach("d2", "b")), Exact),
        (
            "detach",
            base,
            |w| {
                let d = w.id("d0");
                w.fd.device_detach(&mut w.units, d)
            },
            Exact,
        ),
        ("hwpt_alloc_default", base, |w| ok(w.hwpt("d1", "a", 0, HwptData::Default, None)), Exact),
        (
            "hwpt_alloc_nest_parent",
            base,
            |w| ok(w.hwpt("d2", "a", hwpt_flags::NEST_PARENT, HwptData::Default, None)),
            Exact,
        ),
        (
            "hwpt_alloc_with_fault_queue",
            |w| {
                base(w);
                let q = w.fd.fault_queue_alloc(16).unwrap();
                w.ids.insert("q", q);
            },
            |w| ok(w.hwpt("d1", "a", 0, HwptData::Default, Some("q"))),
            Exact,
        ),
        ("hwpt_alloc_nested", nested, |w| ok(child(w)), Exact),
        (
            "hwpt_invalidate",
            nested_child,
            |w| {
                let c = w.id("c");
                let all = [Stage1Invalidation { addr: 0, npages: u64::MAX, flags: 0 }];
                w.fd.hwpt_invalidate(&mut w.units, &mut w.mem, c, &all).1
            },
            Retry,
        ),
        ("fault_queue_alloc", base, |w| ok(w.fd.fault_queue_alloc(8)), Exact),
        ("device_bind", |w| w.ioas("a"), |w| ok(w.fd.device_bind(&mut w.units, 1, DeviceId(0x20))), Exact),
        ("destroy_ioas", base_plus, |w| w.destroy("b"), Exact),
        ("destroy_user_hwpt", base_plus, |w| w.destroy("u"), Exact),
        ("destroy_attached_device", base, |w| w.destroy("d0"), Exact),
        ("destroy_bound_device", base, |w| w.destroy("d1"), Exact),
        (
            "destroy_nested_child_after_detach",
            nested_child,
            |w| {
                let d = w.id("d1");
                w.fd.device_detach(&mut w.units, d)?;
                w.destroy("c")
            },
            Exact,
        ),
        (
            "destroy_fault_queue",
            |w| {
                let q = w.fd.fault_queue_alloc(16).unwrap();
                w.ids.insert("q", q);
            },
            |w| w.destroy("q"),
            Exact,
        ),
        (
            "close",
            |w| {
                base_plus(w);
                // The nested world too, in the same table.
                w.map("b", TBL_VA, 8 * PAGE, IovaChoice::Fixed(TBL_IOVA)).unwrap();
            },
            |w| {
                w.fd.close(&mut w.units, &mut w.mem);
                Ok(())
            },
            Close,
        ),
    ]
}

/// Runs `call` after `setup` with the `n`-th point failing (`None`: none);
/// returns the world after, the call's result, whether the failure was
/// injected, and the snapshot before the call.
fn attempt(setup: Setup, call: Call, n: Option<u64>, hardware: bool) -> (World, Result<(), Errno>, bool, String) {
    let mut w = World::new();
    setup(&mut w);
    w.consistent().unwrap_or_else(|e| panic!("setup inconsistent: {e}"));
    let before = w.snapshot();
    if let Some(n) = n {
        w.inj.arm(n, hardware);
    }
    let r = call(&mut w);
    w.inj.disarm();
    let fired = w.inj.fired();
    (w, r, fired, before)
}

/// The lines of two snapshots that differ, shortened.
fn diff(before: &str, after: &str) -> String {
    // Each line from its name to a little past where the two first differ.
    let around = |l: &str, at: usize| {
        let name = l.split(' ').next().unwrap_or("");
        let from = at.saturating_sub(40).max(name.len());
        let text: String = l.chars().skip(from).take(120).collect();
        alloc::format!("{name} …{text}")
    };
    before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| {
            let at = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            alloc::format!("\n  before: {}\n  after:  {}", around(a, at), around(b, at))
        })
        .collect()
}

/// A snapshot without the shadow's work counters (a retry syncs once more).
fn without_counts(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("syncs: ") {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = rest.find('}').map_or("", |j| &rest[j..]);
    }
    out.push_str(rest);
    out
}

/// One sequence at every N until it succeeds; the failures found, as text.
fn run_sequence(name: &str, setup: Setup, call: Call, check: Check, hardware: bool) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    let (mut clean, clean_r, _, _) = attempt(setup, call, None, hardware);
    if let Err(e) = clean_r {
        return (0, alloc::vec![alloc::format!("{name}: fails with no injection: {e:?}")]);
    }
    let clean_snap = clean.snapshot();
    for n in 1..=MAX_N {
        let (mut w, r, fired, before) = attempt(setup, call, Some(n), hardware);
        let mut fail = |why: String| problems.push(alloc::format!("{name} N={n} (hardware {hardware}): {why}"));
        if let Err(e) = w.consistent() {
            fail(alloc::format!("inconsistent after {r:?}: {e}"));
        }
        if !fired {
            // Fewer than N points: the call ran clean, and must look it.
            if r.is_err() || w.snapshot() != clean_snap {
                fail(alloc::format!("no failure injected but {r:?} / a state unlike the clean run's"));
            }
            return (n - 1, problems);
        }
        match check {
            Check::Exact => match r {
                Ok(()) => fail(String::from("the injected failure was swallowed: the call succeeded")),
                Err(_) => {
                    let after = w.snapshot();
                    let quarantined = !w.mem.quarantined.is_empty();
                    if after != before && !(hardware && quarantined) {
                        fail(alloc::format!("state changed by a failed call ({r:?}): {}", diff(&before, &after)));
                    }
                }
            },
            Check::Retry => {
                if r.is_err() {
                    let again = call(&mut w);
                    let same = without_counts(&w.snapshot()) == without_counts(&clean_snap);
                    if again.is_err() || (!same && w.mem.quarantined.is_empty()) {
                        fail(alloc::format!("a retry after {r:?} got {again:?} and a state unlike the clean run's"));
                    }
                }
            }
            Check::Close => {
                let left: Vec<u64> = w.mem.pins.keys().copied().collect();
                let mut q = w.mem.quarantined.clone();
                q.sort();
                q.dedup();
                if !w.fd.objects.is_empty() || left != q {
                    fail(alloc::format!(
                        "close left objects {:?} / pins {:?} beyond quarantine",
                        w.fd.objects,
                        w.mem.pins
                    ));
                }
                if !w.fd.poisoned && (0..w.units.len()).any(|u| !mock_of(&mut w.units, u).domain_ids().is_empty()) {
                    fail(String::from("close left domains with every device blocked"));
                }
            }
        }
    }
    problems.push(alloc::format!("{name}: still failing at N={MAX_N}"));
    (MAX_N, problems)
}

fn run_all(hardware: bool) {
    let mut problems = Vec::new();
    let mut report = Vec::new();
    for (name, setup, call, check) in sequences() {
        let (points, p) = run_sequence(name, setup, call, check, hardware);
        report.push(alloc::format!("{name}: {points} points"));
        problems.extend(p);
    }
    println!("fail-nth (hardware points {hardware}): {}", report.join(", "));
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn fail_nth_allocations_leave_no_trace() {
    run_all(false);
}

#[test]
fn fail_nth_with_teardown_commands_failing_too() {
    run_all(true);
}

/// The harness itself: a sequence with points must pass some, so a broken
/// countdown cannot make every test above pass vacuously.
#[test]
fn fail_nth_counts_points() {
    let (n, p) = run_sequence("map_small_pages_two_domains", sequences()[3].1, sequences()[3].2, Check::Exact, false);
    assert!(p.is_empty(), "{p:?}");
    // One pin, then four 4 KiB maps in each of the two HWPTs.
    assert_eq!(n, 9);
}

/// Regression (fail-nth `destroy_attached_device`, hardware points, N=2):
/// destroying an attached device detached it from its HWPT, then detached it
/// once more; when that second detach failed, the call returned `EIO` with
/// the device already moved off its (freed) HWPT. One detach blocks it now.
#[test]
fn destroy_of_an_attached_device_is_one_detach() {
    let mut w = World::new();
    base(&mut w);
    let before = w.snapshot();
    w.inj.arm(2, true);
    assert_eq!(w.destroy("d0"), Ok(()));
    assert!(!w.inj.fired(), "one injection point only: {} passed", w.inj.disarm());
    let mut w = World::new();
    base(&mut w);
    w.inj.arm(1, true);
    assert_eq!(w.destroy("d0"), Err(Errno::EIO));
    w.inj.disarm();
    assert_eq!(w.snapshot(), before, "a failed destroy leaves the device attached, its HWPT alive");
}
