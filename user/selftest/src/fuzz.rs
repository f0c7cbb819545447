//! The syscall fuzzer's iommufd half (issue 18 item 5): seeded random
//! sequences of every iommufd op with valid, edge and garbage arguments —
//! ids that exist, were destroyed or never existed, lengths 0 / 1 / page /
//! huge / wrapping, IOVAs at both ends of the space, user addresses that are
//! unmapped, read-only, kernel or BAR memory — written once against
//! [`Door`], so the same sequence (same seed) runs in QEMU through the real
//! syscall (`test-fuzz`, which adds the other syscalls and raw structs) and
//! on the host over the object model and `MockIommu` (`tests/mock.rs`).
//!
//! The oracle, besides "the kernel keeps answering": no call succeeds with
//! an id that never existed or was destroyed, a length that is zero or not a
//! page multiple, or memory the task may not hand to a device; a fixed IOVA
//! comes back as asked; the bytes an unmap reports are exactly those of the
//! mappings it covers (a model of every mapping); the pages the door says
//! the task pins equal the model's; the raw ABI answers unknown ops
//! `ENOTTY`, cut-off structs `EINVAL`, oversized ones `E2BIG` and bad struct
//! pointers `EFAULT`; errnos no op documents (`ENOSYS`, `ETIMEDOUT` outside
//! `fault_read`) never come back. [`Fuzzer::finish`] then destroys
//! everything and requires no object and no pin left.

use crate::{Door, PAGE, RO, RW};
use abi::iommufd as a;
use abi::Errno;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// splitmix64: small, seedable, and good enough to pick arguments.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.bits() % n
        }
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Kinds of ids the fuzzer keeps apart.
const IOAS: usize = 0;
const DEV: usize = 1;
const HWPT: usize = 2;
const FAULT: usize = 3;

/// Ids at or above this are never handed out in a fuzz run (ids start at 1
/// and count up, one per object made), so a call naming one must fail.
pub const NEVER_ID: u32 = 0x4000_0000;

/// Addresses a backend offers as hostile user memory.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Addresses no device may be given: unmapped, kernel, BAR (any length fails).
    pub bad_vas: Vec<u64>,
    /// A read-only page run of the task: (address, pages); a writeable map of it fails.
    pub read_only: Option<(u64, u64)>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls issued.
    pub calls: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Mappings made (map or copy).
    pub mappings: u64,
}

/// Struct sizes of ops 1..=16 (`abi::iommufd`), each op's minimum.
pub const STRUCT_SIZES: [u32; 16] = [16, 16, 32, 24, 40, 32, 40, 32, 24, 24, 16, 88, 40, 32, 16, 40];

#[derive(Debug, Clone, Copy)]
struct Mapping {
    ioas: u32,
    iova: u64,
    len: u64,
}

/// One fuzz run's state: the ids it has seen, the mappings it believes exist,
/// its buffers.
pub struct Fuzzer<'a> {
    door: &'a mut dyn Door,
    rng: Rng,
    seed: u64,
    targets: Targets,
    /// Ids the door handed out and that were not destroyed by us (some may
    /// have gone implicitly, as an automatic HWPT on detach).
    live: Vec<u32>,
    /// Of `live`, by kind as made: IOAS, device, HWPT, fault queue.
    kinds: [Vec<u32>; 4],
    /// Ids destroyed successfully: never valid again.
    dead: Vec<u32>,
    maps: Vec<Mapping>,
    /// Whether `maps` is the truth (raw calls with random structs may map
    /// behind the model's back).
    model_exact: bool,
    bufs: Vec<(u64, u64)>,
    stats: Stats,
}

fn is_page_len(len: u64) -> bool {
    len != 0 && len.is_multiple_of(PAGE)
}

impl<'a> Fuzzer<'a> {
    /// A fuzzer over `door` with `seed`.
    pub fn new(door: &'a mut dyn Door, seed: u64, targets: Targets) -> Self {
        Fuzzer {
            door,
            rng: Rng::new(seed),
            seed,
            targets,
            live: Vec::new(),
            kinds: Default::default(),
            dead: Vec::new(),
            maps: Vec::new(),
            model_exact: true,
            bufs: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// What the run did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The generator (the caller's own calls draw from the same sequence).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The door.
    pub fn door(&mut self) -> &mut dyn Door {
        self.door
    }

    fn fail(&self, what: String) -> String {
        format!("seed {:#x} call {}: {what}", self.seed, self.stats.calls)
    }

    fn note<T>(&mut self, r: &Result<T, Errno>) {
        self.stats.calls += 1;
        if r.is_ok() {
            self.stats.ok += 1;
        }
    }

    fn add_id(&mut self, id: u32, kind: usize) -> Result<(), String> {
        if id == 0 || id >= NEVER_ID || self.dead.contains(&id) {
            return Err(self.fail(format!("the kernel handed out id {id}, never valid or destroyed")));
        }
        if !self.live.contains(&id) {
            self.live.push(id);
            self.kinds[kind].push(id);
            if self.live.len() > 64 {
                // Forget the oldest (the kernel still has it; `finish` sweeps every id).
                let old = self.live.remove(0);
                self.kinds.iter_mut().for_each(|k| k.retain(|&x| x != old));
            }
        }
        Ok(())
    }

    /// An id, mostly of `kind` (`IOAS`, `DEV`, `HWPT`, `FAULT`): (id, whether it is known not to exist).
    fn id(&mut self, kind: usize) -> (u32, bool) {
        match self.rng.below(10) {
            0..=5 if !self.kinds[kind].is_empty() => (self.rng.pick(&self.kinds[kind]), false),
            6 if !self.live.is_empty() => (self.rng.pick(&self.live), false),
            7 if !self.dead.is_empty() => (self.rng.pick(&self.dead), true),
            _ => {
                let garbage = [0, u32::MAX, NEVER_ID, NEVER_ID + self.rng.below(1 << 20) as u32];
                (self.rng.pick(&garbage), true)
            }
        }
    }

    /// An IOAS or HWPT id (a page table to attach to or allocate under).
    fn id_pt(&mut self) -> (u32, bool) {
        let kind = if self.rng.one_in(3) { HWPT } else { IOAS };
        self.id(kind)
    }

    /// An id of any kind.
    fn id_any(&mut self) -> (u32, bool) {
        let kind = self.rng.below(4) as usize;
        self.id(kind)
    }

    fn len(&mut self, buf_pages: u64) -> u64 {
        match self.rng.below(20) {
            0 => 0,
            1 => 1,
            2 => PAGE - 1,
            3 => PAGE + 1,
            4 => 1 << 46,
            5 => u64::MAX,
            6 => u64::MAX - PAGE + 1,
            7 => 1 << 63,
            8 => (buf_pages + 1) * PAGE,
            _ if buf_pages == 0 => PAGE,
            _ => (1 + self.rng.below(buf_pages.max(1))) * PAGE,
        }
    }

    fn iova(&mut self) -> u64 {
        match self.rng.below(12) {
            0 => 0,
            1 => PAGE,
            2 => u64::MAX - PAGE + 1,
            3 => u64::MAX - 16 * PAGE + 1,
            4 => (1 << 39) - PAGE,
            5 => (1 << 48) - PAGE,
            6 => 0xFEE0_0000, // the x86 MSI window
            7 => self.rng.bits(),
            8 | 9 if !self.maps.is_empty() => {
                let m = self.rng.pick(&self.maps);
                m.iova.wrapping_add(self.rng.below(2) * PAGE)
            }
            _ => 0x100_0000 + self.rng.below(256) * PAGE,
        }
    }

    /// A user address: (address, pages behind it, known bad for DMA, read-only).
    fn va(&mut self) -> (u64, u64, bool, bool) {
        match self.rng.below(16) {
            0 if !self.targets.bad_vas.is_empty() => (self.rng.pick(&self.targets.bad_vas), 0, true, false),
            1 => (self.door.unmapped_va(), 0, true, false),
            2 => match self.targets.read_only {
                Some((va, pages)) => (va, pages, false, true),
                None => (0, 0, true, false),
            },
            3 => (self.rng.pick(&[0, u64::MAX - PAGE + 1, 0xFFFF_8000_0000_0000, 1]), 0, true, false),
            _ if !self.bufs.is_empty() => {
                let (va, pages) = self.rng.pick(&self.bufs);
                let skip = self.rng.below(pages);
                let va = va + skip * PAGE + if self.rng.one_in(16) { 8 } else { 0 };
                (va, pages - skip, false, false)
            }
            _ => (self.door.unmapped_va(), 0, true, false),
        }
    }

    fn flags(&mut self) -> u32 {
        match self.rng.below(8) {
            0 => self.rng.bits() as u32,
            1 => 0,
            2 => RO,
            3 => a::MAP_WRITEABLE,
            _ => RW,
        }
    }

    /// Errnos no iommufd op documents.
    fn check_errno(&self, op: &str, r: &Result<(), Errno>, may_time_out: bool) -> Result<(), String> {
        match r {
            Err(Errno::ENOSYS) => Err(self.fail(format!("{op}: ENOSYS"))),
            Err(Errno::ETIMEDOUT) if !may_time_out => Err(self.fail(format!("{op}: ETIMEDOUT"))),
            _ => Ok(()),
        }
    }

    /// One random call; `Err` names the seed and the call that broke a rule.
    pub fn step(&mut self) -> Result<(), String> {
        match self.rng.below(24) {
            0 | 1 => {
                let r = self.door.ioas_alloc();
                self.note(&r);
                match r {
                    Ok(id) => self.add_id(id, IOAS)?,
                    Err(Errno::EMFILE | Errno::ENOMEM) => {}
                    Err(e) => return Err(self.fail(format!("ioas_alloc: {e:?}"))),
                }
            }
            2 | 3 => {
                let (id, gone) = self.id_any();
                let r = self.door.destroy(id);
                self.note(&r);
                self.check_errno("destroy", &r, false)?;
                if r.is_ok() {
                    if gone {
                        return Err(self.fail(format!("destroy of id {id}, which does not exist, succeeded")));
                    }
                    self.live.retain(|&x| x != id);
                    self.kinds.iter_mut().for_each(|k| k.retain(|&x| x != id));
                    self.dead.push(id);
                    if self.dead.len() > 64 {
                        self.dead.remove(0);
                    }
                    self.maps.retain(|m| m.ioas != id);
                }
            }
            4 => {
                let (id, gone) = self.id(IOAS);
                let r = self.door.iova_ranges(id);
                self.note(&r);
                if let Ok((ranges, align)) = &r {
                    if gone {
                        return Err(self.fail(format!("iova_ranges of missing id {id} succeeded")));
                    }
                    if !align.is_power_of_two() || ranges.iter().any(|&(s, l)| s > l || s == 0) {
                        return Err(self.fail(format!("iova_ranges: {ranges:x?} alignment {align:#x}")));
                    }
                }
            }
            5 => {
                let (id, gone) = self.id(IOAS);
                let n = self.rng.below(4);
                let ranges: Vec<(u64, u64)> = (0..n)
                    .map(|_| {
                        let s = self.iova();
                        let l = match self.rng.below(3) {
                            0 => u64::MAX,
                            1 => s.wrapping_sub(1),
                            _ => s.saturating_add(self.rng.below(1 << 30)),
                        };
                        (s, l)
                    })
                    .collect();
                let r = self.door.allow_iovas(id, &ranges);
                self.note(&r);
                self.check_errno("allow_iovas", &r, false)?;
                if r.is_ok() && gone {
                    return Err(self.fail(format!("allow_iovas of missing id {id} succeeded")));
                }
                // Allowed ranges make later auto maps fail more often, never wrong: withdraw now and then.
                if r.is_ok() && self.rng.one_in(2) {
                    let r = self.door.allow_iovas(id, &[]);
                    self.note(&r);
                }
            }
            6..=9 => self.map()?,
            10..=12 => self.unmap()?,
            13 => self.copy()?,
            14 => {
                let (id, gone) = self.id(IOAS);
                let option = self.rng.pick(&[0, a::OPTION_HUGE_PAGES, 3, u32::MAX]);
                let value = self.rng.pick(&[0, 1, 2, u64::MAX]);
                let r = self.door.set_option(id, option, value);
                self.note(&r);
                if r.is_ok() && gone {
                    return Err(self.fail(format!("set_option of missing id {id} succeeded")));
                }
            }
            15 => {
                let n = self.door.devices().len() as u64;
                let which = self.rng.below(n + 2) as usize;
                let r = self.door.bind(which);
                self.note(&r);
                match r {
                    Ok(id) if which >= n as usize => {
                        return Err(self.fail(format!("bind of device {which} of {n} succeeded: {id}")));
                    }
                    Ok(id) => self.add_id(id, DEV)?,
                    Err(_) => {}
                }
            }
            16 | 17 => {
                let (dev, gone_dev) = self.id(DEV);
                let (pt, gone_pt) = self.id_pt();
                let r = self.door.attach(dev, pt);
                self.note(&r);
                if let Ok(hwpt) = r {
                    if gone_dev || gone_pt {
                        return Err(self.fail(format!("attach({dev}, {pt}) of a missing id succeeded")));
                    }
                    self.add_id(hwpt, HWPT)?;
                }
            }
            18 => {
                let (dev, gone) = self.id(DEV);
                let r = self.door.detach(dev);
                self.note(&r);
                if r.is_ok() && gone {
                    return Err(self.fail(format!("detach of missing id {dev} succeeded")));
                }
            }
            19 => {
                let (dev, gone) = self.id(DEV);
                let mut data = vec![0u8; self.rng.pick(&[0usize, 1, 8, 16, 40, 64])];
                let r = self.door.hw_info_typed(dev, &mut data);
                self.note(&r);
                if let Ok((_, n, _, _)) = r {
                    if gone || n > data.len() {
                        return Err(self.fail(format!("hw_info of {dev}: {n} bytes into {}", data.len())));
                    }
                }
            }
            20 => self.hwpt_alloc()?,
            21 => {
                let (hwpt, gone) = self.id(HWPT);
                let data_type = self.rng.pick(&[0, a::hwpt_data::VTD_S1, a::hwpt_data::SMMUV3_STE, 7, u32::MAX]);
                let entry_len = self.rng.pick(&[0u32, 1, 8, 16, 24, 32, 4096, u32::MAX]);
                let n = self.rng.below(4) as usize;
                let mut entries = vec![0u8; n * (entry_len.min(64) as usize)];
                for b in entries.iter_mut() {
                    *b = if self.rng.one_in(2) { 0 } else { self.rng.bits() as u8 };
                }
                let (handled, r) = self.door.hwpt_invalidate(hwpt, data_type, &entries, entry_len.min(64));
                self.note(&r);
                self.check_errno("hwpt_invalidate", &r, false)?;
                if r.is_ok() && gone {
                    return Err(self.fail(format!("hwpt_invalidate of missing id {hwpt} succeeded")));
                }
                if handled as usize > n {
                    return Err(self.fail(format!("hwpt_invalidate handled {handled} of {n}")));
                }
            }
            22 => {
                let capacity = self.rng.pick(&[0, 1, 16, 4096, 4097, u32::MAX]);
                let r = self.door.fault_queue_alloc(capacity);
                self.note(&r);
                match r {
                    Ok(id) if capacity == 0 || capacity > 4096 => {
                        return Err(self.fail(format!("fault queue of capacity {capacity} made: {id}")));
                    }
                    Ok(id) => self.add_id(id, FAULT)?,
                    Err(_) => {}
                }
            }
            _ => {
                let (q, gone) = self.id(FAULT);
                let room = self.rng.below(4) as usize;
                let r = self.door.fault_read(q, room, 0);
                self.note(&r);
                match &r {
                    Ok(_) if gone => return Err(self.fail(format!("fault_read of missing id {q} succeeded"))),
                    Ok((records, _)) if records.len() > room => {
                        return Err(self.fail(format!("fault_read: {} records into room for {room}", records.len())));
                    }
                    Err(Errno::ETIMEDOUT) => return Err(self.fail("fault_read without a wait: ETIMEDOUT".into())),
                    _ => {}
                }
            }
        }
        if self.stats.calls.is_multiple_of(16) {
            self.buffers()?;
            self.check_pins()?;
        }
        if self.rng.one_in(24) {
            self.raw()?;
        }
        Ok(())
    }

    /// Keeps a few buffers of task memory around (1..=16 pages; now and then 2 MiB).
    fn buffers(&mut self) -> Result<(), String> {
        if self.bufs.len() >= 6 || (self.bufs.len() >= 2 && self.rng.one_in(3)) {
            let i = self.rng.below(self.bufs.len() as u64) as usize;
            let (va, pages) = self.bufs.swap_remove(i);
            // Pages still DMA-mapped stay pinned: the model keeps them.
            self.door.free_pages(va, pages);
        }
        let pages = if self.rng.one_in(8) { 512 } else { 1 + self.rng.below(16) };
        if let Ok(va) = self.door.alloc_pages(pages) {
            self.bufs.push((va, pages));
        }
        Ok(())
    }

    fn check_pins(&mut self) -> Result<(), String> {
        if !self.model_exact {
            return Ok(());
        }
        let model: u64 = self.maps.iter().map(|m| m.len / PAGE).sum();
        match self.door.pinned_pages() {
            Some(n) if n != model => {
                Err(self.fail(format!("the task pins {n} pages, its {} mappings {model}", self.maps.len())))
            }
            _ => Ok(()),
        }
    }

    fn map(&mut self) -> Result<(), String> {
        let (ioas, gone) = self.id(IOAS);
        let (va, pages, bad, ro) = self.va();
        let len = self.len(pages);
        let flags = self.flags();
        let fixed = (!self.rng.one_in(3)).then(|| self.iova());
        let r = self.door.map(ioas, va, len, fixed, flags);
        self.note(&r);
        let iova = match r {
            Ok(iova) => iova,
            Err(e) => return self.check_errno("map", &Err(e), false),
        };
        let why = if gone {
            Some("missing IOAS")
        } else if bad {
            Some("memory no device may reach")
        } else if !is_page_len(len) || !va.is_multiple_of(PAGE) {
            Some("a length or address off the page grid")
        } else if len / PAGE > pages {
            Some("more pages than the buffer has")
        } else if ro && flags & a::MAP_WRITEABLE != 0 {
            Some("device writes to read-only memory")
        } else if flags & !(RW | a::MAP_FIXED_IOVA) != 0 {
            Some("unknown flags")
        } else if fixed.is_some_and(|f| f != iova) {
            Some("a fixed IOVA moved")
        } else if !iova.is_multiple_of(PAGE) || iova.checked_add(len - 1).is_none() {
            Some("an IOVA off the grid or wrapping")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(self.fail(format!(
                "map(ioas {ioas}, va {va:#x}, len {len:#x}, iova {fixed:x?}, flags {flags:#x}) = {iova:#x}: {why}"
            )));
        }
        if self.maps.iter().any(|m| m.ioas == ioas && iova <= m.iova + (m.len - 1) && m.iova <= iova + (len - 1)) {
            return Err(self.fail(format!("map at {iova:#x}+{len:#x} overlaps a mapping of IOAS {ioas}")));
        }
        self.maps.push(Mapping { ioas, iova, len });
        self.stats.mappings += 1;
        Ok(())
    }

    fn unmap(&mut self) -> Result<(), String> {
        let (ioas, gone) = self.id(IOAS);
        let (iova, len) = match self.rng.below(6) {
            0 => (0, u64::MAX),
            1 | 2 if !self.maps.is_empty() => {
                let m = self.rng.pick(&self.maps);
                (m.iova, m.len)
            }
            _ => {
                let iova = self.iova();
                (iova, self.len(16))
            }
        };
        let r = self.door.unmap(ioas, iova, len);
        self.note(&r);
        let bytes = match r {
            Ok(b) => b,
            Err(e) => return self.check_errno("unmap", &Err(e), false),
        };
        if gone {
            return Err(self.fail(format!("unmap of missing IOAS {ioas} succeeded")));
        }
        let all = iova == 0 && len == u64::MAX;
        let last = if all { u64::MAX } else { iova.wrapping_add(len.wrapping_sub(1)) };
        if !all && (!is_page_len(len) || iova.checked_add(len - 1).is_none()) {
            return Err(self.fail(format!("unmap({iova:#x}, {len:#x}) succeeded")));
        }
        let (gone_maps, kept): (Vec<Mapping>, Vec<Mapping>) =
            self.maps.iter().partition(|m| m.ioas == ioas && m.iova >= iova && m.iova + (m.len - 1) <= last);
        let model: u64 = gone_maps.iter().map(|m| m.len).sum();
        if self.model_exact && model != bytes {
            return Err(self.fail(format!(
                "unmap(ioas {ioas}, {iova:#x}, {len:#x}) = {bytes:#x} bytes, the model's mappings there {model:#x}"
            )));
        }
        self.maps = kept;
        Ok(())
    }

    fn copy(&mut self) -> Result<(), String> {
        let (dst, gone_dst) = self.id(IOAS);
        let (src, gone_src) = self.id(IOAS);
        let (src_iova, len) = match self.rng.below(3) {
            0 | 1 if !self.maps.is_empty() => {
                let m = self.rng.pick(&self.maps);
                let len = if self.rng.one_in(4) { self.len(m.len / PAGE) } else { m.len };
                (m.iova, len)
            }
            _ => {
                let iova = self.iova();
                (iova, self.len(8))
            }
        };
        let fixed = (!self.rng.one_in(3)).then(|| self.iova());
        let flags = self.flags();
        let r = self.door.copy(dst, src, src_iova, len, fixed, flags);
        self.note(&r);
        let at = match r {
            Ok(at) => at,
            Err(e) => return self.check_errno("copy", &Err(e), false),
        };
        if gone_dst || gone_src || !is_page_len(len) || fixed.is_some_and(|f| f != at) {
            return Err(self.fail(format!(
                "copy(dst {dst}, src {src}, {src_iova:#x}, len {len:#x}, {fixed:x?}) = {at:#x} should have failed"
            )));
        }
        let covered = self.maps.iter().any(|m| m.ioas == src && m.iova <= src_iova && src_iova <= m.iova + (m.len - 1));
        if self.model_exact && !covered {
            return Err(self.fail(format!("copy from IOAS {src} with no mapping at {src_iova:#x} succeeded")));
        }
        self.maps.push(Mapping { ioas: dst, iova: at, len });
        self.stats.mappings += 1;
        Ok(())
    }

    fn hwpt_alloc(&mut self) -> Result<(), String> {
        let (dev, gone_dev) = self.id(DEV);
        let (pt, gone_pt) = self.id_pt();
        let mut flags = self.rng.pick(&[0, a::HWPT_ALLOC_NEST_PARENT, a::HWPT_ALLOC_FAULT_ID_VALID, 3, 4, u32::MAX]);
        let data_type = self.rng.pick(&[
            a::hwpt_data::NONE,
            a::hwpt_data::NONE,
            a::hwpt_data::VTD_S1,
            a::hwpt_data::VTD_ATTRS,
            a::hwpt_data::SMMUV3_ATTRS,
            a::hwpt_data::AMDVI_ATTRS,
            a::hwpt_data::SMMUV3_STE,
            9,
        ]);
        let data: Vec<u8> = match data_type {
            a::hwpt_data::NONE => vec![0; self.rng.pick(&[0usize, 0, 8])],
            a::hwpt_data::VTD_S1 => {
                // A top-level table at an IOVA of a mapping (or anywhere), a width.
                let at = if self.maps.is_empty() { self.iova() } else { self.rng.pick(&self.maps).iova };
                let s1 = a::HwptVtdS1 {
                    flags: self.rng.pick(&[0, 1]),
                    pgtbl_addr: at,
                    addr_width: self.rng.pick(&[48, 57, 39, 0]),
                    reserved: 0,
                };
                zerocopy::IntoBytes::as_bytes(&s1).to_vec()
            }
            _ => {
                let n = self.rng.pick(&[0usize, 4, 8, 16, 24]);
                (0..n).map(|_| if self.rng.one_in(2) { 0 } else { self.rng.bits() as u8 }).collect()
            }
        };
        let (fault, gone_fault) = self.id(FAULT);
        if self.rng.one_in(2) {
            flags &= !a::HWPT_ALLOC_FAULT_ID_VALID;
        }
        let r = self.door.hwpt_alloc(dev, pt, flags, data_type, &data, fault);
        self.note(&r);
        match r {
            Ok(id) => {
                let fault_used = flags & a::HWPT_ALLOC_FAULT_ID_VALID != 0;
                if gone_dev || gone_pt || (fault_used && gone_fault) {
                    return Err(self.fail(format!("hwpt_alloc(dev {dev}, pt {pt}, fault {fault}) succeeded: {id}")));
                }
                self.add_id(id, HWPT)
            }
            Err(e) => self.check_errno("hwpt_alloc", &Err(e), false),
        }
    }

    /// The raw ABI: unknown ops, cut-off, oversized and garbage structs, bad
    /// struct pointers (only where the door has the raw syscall).
    fn raw(&mut self) -> Result<(), String> {
        let op = 1 + self.rng.below(16);
        let known = STRUCT_SIZES[op as usize - 1];
        match self.rng.below(5) {
            0 => {
                let far = 17 + self.rng.below(1 << 32);
                let unknown = self.rng.pick(&[0, 17, 99, u64::MAX, far]);
                let mut s = [0u8; 16];
                s[0] = 16;
                if let Some(r) = self.door.raw(unknown, &mut s) {
                    self.note(&r);
                    if r != Err(Errno::ENOTTY) {
                        return Err(self.fail(format!("iommufd op {unknown:#x}: {r:?}, not ENOTTY")));
                    }
                }
            }
            1 => {
                let size = self.rng.below(known as u64) as u32;
                let mut s = vec![0u8; known as usize];
                s[..4].copy_from_slice(&size.to_le_bytes());
                if let Some(r) = self.door.raw(op, &mut s) {
                    self.note(&r);
                    if r != Err(Errno::EINVAL) {
                        return Err(self.fail(format!("op {op} with size {size} < {known}: {r:?}, not EINVAL")));
                    }
                }
            }
            2 => {
                let size = self.rng.pick(&[a::MAX_STRUCT + 1, 4096, u32::MAX]);
                let mut s = vec![0u8; 16];
                s[..4].copy_from_slice(&size.to_le_bytes());
                if let Some(r) = self.door.raw(op, &mut s) {
                    self.note(&r);
                    if r != Err(Errno::E2BIG) {
                        return Err(self.fail(format!("op {op} with size {size}: {r:?}, not E2BIG")));
                    }
                }
            }
            3 => {
                let (ptr, _, bad, _) = self.va();
                if !bad {
                    return Ok(());
                }
                if let Some(r) = self.door.raw_ptr(op, ptr) {
                    self.note(&r);
                    if r != Err(Errno::EFAULT) {
                        return Err(self.fail(format!("op {op} with its struct at {ptr:#x}: {r:?}, not EFAULT")));
                    }
                }
            }
            _ => {
                // Garbage past a valid size: mostly zero, some random bytes.
                let size = known + self.rng.pick(&[0u32, 0, 8, 64]);
                let mut s: Vec<u8> =
                    (0..size).map(|_| if self.rng.one_in(3) { self.rng.bits() as u8 } else { 0 }).collect();
                s[..4].copy_from_slice(&size.to_le_bytes());
                if let Some(r) = self.door.raw(op, &mut s) {
                    self.note(&r);
                    self.check_errno("raw", &r, op == a::Op::FaultRead as u64)?;
                    if r.is_ok() {
                        self.harvest(op, &s)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Learns what a raw call that succeeded made: new ids, and mappings (the
    /// model is then no longer exact).
    fn harvest(&mut self, op: u64, s: &[u8]) -> Result<(), String> {
        let word = |at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
        match op {
            1 => self.add_id(word(8), IOAS)?,
            9 => self.add_id(word(16), DEV)?,
            10 => self.add_id(word(16), HWPT)?,
            13 => self.add_id(word(36), HWPT)?,
            15 => self.add_id(word(12), FAULT)?,
            2 => {
                let id = word(8);
                if id == 0 || id >= NEVER_ID {
                    return Err(self.fail(format!("a raw destroy of id {id} succeeded")));
                }
                self.live.retain(|&x| x != id);
                self.kinds.iter_mut().for_each(|k| k.retain(|&x| x != id));
                self.dead.push(id);
                self.maps.retain(|m| m.ioas != id);
                self.model_exact = false;
            }
            5..=7 => self.model_exact = false,
            _ => {}
        }
        Ok(())
    }

    /// Destroys everything the run made (every id up to the largest seen,
    /// devices first so IOASes and HWPTs are free), frees the buffers, and
    /// checks no object and no pin is left. Returns the stats.
    pub fn finish(mut self) -> Result<Stats, String> {
        let top = self.live.iter().chain(self.dead.iter()).copied().max().unwrap_or(0);
        // Ids count up from 1 and each call makes at most one: the sweep stays small.
        for _round in 0..8 {
            let mut left = false;
            for id in 1..=top {
                match self.door.destroy(id) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(_) => left = true,
                }
            }
            if !left {
                break;
            }
        }
        for (va, pages) in core::mem::take(&mut self.bufs) {
            self.door.free_pages(va, pages);
        }
        self.maps.clear();
        self.model_exact = true;
        self.check_pins()?;
        if let Some(n) = self.door.objects().filter(|&n| n != 0) {
            return Err(self.fail(format!("{n} objects left after destroying every id up to {top}")));
        }
        Ok(self.stats)
    }
}

/// Runs `calls` random calls with `seed` over `door` and cleans up;
/// `Err` names the seed and the call.
pub fn run(door: &mut dyn Door, seed: u64, calls: u64, targets: Targets) -> Result<Stats, String> {
    let mut f = Fuzzer::new(door, seed, targets);
    while f.stats().calls < calls {
        f.step()?;
    }
    f.finish()
}
