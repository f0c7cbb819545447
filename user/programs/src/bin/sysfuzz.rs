//! The syscall fuzzer's worker (issue 18 item 5), started by `test-fuzz`:
//! seeded random sequences of every syscall and iommufd op with valid, edge
//! and garbage arguments, the devices of the boot claimed and bound. The
//! iommufd half is `ioas_selftest::fuzz` (the same generator and oracle the
//! host runs over the mock); this program adds the other syscalls, hostile
//! user memory (unmapped, read-only, kernel, a mapped BAR) and raw syscall
//! numbers. It never dereferences a garbage pointer itself: garbage goes to
//! the kernel only. `exit` is left out (it would end the fuzzer); children
//! are bounded. Prints `user.fuzz.calls` and `user.fuzz.worker_clean` (KTAP
//! numbers 1 and 2 of `test-fuzz`'s plan); every failure names the seed.
#![no_std]
#![no_main]

extern crate alloc;

use abi::{DeviceInfo, Errno, Sysno};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ioas_selftest::fuzz::{Fuzzer, Rng, Targets};
use userlib::{iommufd, println, sys};

#[path = "../door.rs"]
mod door;
use door::SyscallDoor;

const PAGE: u64 = 4096;
/// Calls per boot when the command line names none (sized so the QEMU suite's
/// boots that run it add up to more than 10^5 calls in a few seconds each).
const DEFAULT_CALLS: u64 = 20_000;
/// The test mailbox word `test-fuzz` sets for a warm-up run.
const WARM_UP_SLOT: u64 = 7;
/// The mailbox word `test-fuzz` sets to [`PARALLEL`] for its round of one
/// worker per CPU at once (each run as a warm-up, with a seed of its own);
/// a worker whose run fails sets it to [`PARALLEL_FAILED`].
const PARALLEL_SLOT: u64 = 6;
const PARALLEL: u64 = 0x5A5A_0001;
const PARALLEL_FAILED: u64 = 0x5A5A_0002;
/// Children alive at once and in all (`hello` exits at once).
const MAX_SPAWNS: u64 = 16;

/// The rest of the syscall surface: what it has mapped and claimed.
struct Sys {
    seed: u64,
    /// `mem_map`s of this fuzzer: (address, pages).
    anon: Vec<(u64, u64)>,
    /// Every PCI function of the boot (claimed or not).
    bdfs: Vec<u64>,
    /// Functions this task claimed, with their command register at claim time.
    claimed: Vec<(u64, u64)>,
    bars: u64,
    spawns: u64,
    calls: u64,
    /// Hostile addresses for pointers.
    bad: Vec<u64>,
    /// A writeable scratch buffer.
    scratch: Vec<u8>,
    /// Bytes that are not UTF-8.
    not_utf8: [u8; 8],
}

fn r(n: Sysno, a: [u64; 5]) -> Result<u64, Errno> {
    abi::decode(sys::raw(n as u64, a))
}

impl Sys {
    fn fail(&self, what: String) -> String {
        format!("seed {:#x} syscall {}: {what}", self.seed, self.calls)
    }

    fn expect(&self, what: &str, got: Result<u64, Errno>, want: Errno) -> Result<(), String> {
        if got != Err(want) {
            return Err(self.fail(format!("{what}: {got:?}, not {want:?}")));
        }
        Ok(())
    }

    fn ptr(&self, rng: &mut Rng) -> u64 {
        rng.pick(&self.bad)
    }

    fn bdf(&self, rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => {
                let any = rng.bits();
                rng.pick(&[1 << 32, u64::MAX, abi::bdf(0, 0xFF, 31, 7), any])
            }
            _ if !self.bdfs.is_empty() => rng.pick(&self.bdfs),
            _ => 0,
        }
    }

    /// One random syscall that is not `iommufd` (the fuzzer's half does those).
    fn step(&mut self, rng: &mut Rng) -> Result<(), String> {
        self.calls += 1;
        match rng.below(20) {
            0 => {
                // log: never a successful write of random bytes (the console is KTAP).
                let p = self.ptr(rng);
                self.expect("log of a bad pointer", r(Sysno::Log, [p, 1 + rng.below(64), 0, 0, 0]), Errno::EFAULT)?;
                let big = abi::LOG_MAX as u64 + 1 + rng.below(1 << 40);
                self.expect("log too long", r(Sysno::Log, [self.scratch.as_ptr() as u64, big, 0, 0, 0]), Errno::E2BIG)?;
                let bytes = self.not_utf8.as_ptr() as u64;
                self.expect("log of bytes that are no UTF-8", r(Sysno::Log, [bytes, 8, 0, 0, 0]), Errno::EINVAL)?;
                if r(Sysno::Log, [p, 0, 0, 0, 0]).is_err_and(|e| e != Errno::EFAULT) {
                    return Err(self.fail("log of 0 bytes".into()));
                }
            }
            1 => {
                let _ = r(Sysno::Yield, [0; 5]);
                let a = r(Sysno::Clock, [0; 5]).map_err(|e| self.fail(format!("clock: {e:?}")))?;
                let _ = r(Sysno::Sleep, [rng.pick(&[0, 1, 1000]), 0, 0, 0, 0]);
                let b = r(Sysno::Clock, [0; 5]).map_err(|e| self.fail(format!("clock: {e:?}")))?;
                if b < a {
                    return Err(self.fail(format!("the clock went back from {a} to {b}")));
                }
                // The counter's frequency is one fact: arguments change nothing.
                let hz = r(Sysno::ClockCounter, [0; 5]);
                let again = r(Sysno::ClockCounter, [u64::MAX, a, b, 0, 1]);
                if hz != again || hz.is_ok_and(|hz| hz == 0) {
                    return Err(self.fail(format!("clock_counter answered {hz:?}, then {again:?}")));
                }
            }
            2..=4 => {
                let addr = match rng.below(6) {
                    0 | 1 => 0,
                    // Kernel, non-canonical and top-of-space addresses (the unmapped ones of
                    // `bad` must stay unmapped: they are the hostile pointers).
                    2 => rng.pick(&[0xFFFF_8000_0000_0000, u64::MAX - PAGE + 1, 1 << 63, 0x7FFF_FFFF_F000]),
                    3 if !self.anon.is_empty() => rng.pick(&self.anon).0,
                    _ => {
                        let free = 0x6000_0000_0000 + rng.below(64) * PAGE;
                        rng.pick(&[free, 0x7000_0000_0000 - PAGE, 123])
                    }
                };
                let len = rng.pick(&[0, 1, PAGE, 2 * PAGE, 16 * PAGE, PAGE + 1, 1 << 46, !(PAGE - 1)]);
                let prot = rng.pick(&[0, 1, 2, 3, 3, 4, u64::MAX]);
                let got = r(Sysno::MemMap, [addr, len, prot, 0, 0]);
                if let Ok(va) = got {
                    let bad = len == 0
                        || !len.is_multiple_of(PAGE)
                        || !addr.is_multiple_of(PAGE)
                        || prot > 3
                        || !va.is_multiple_of(PAGE);
                    if bad || va >= 0x7000_0000_0000 {
                        return Err(self.fail(format!("mem_map({addr:#x}, {len:#x}, {prot}) = {va:#x}")));
                    }
                    self.anon.push((va, len / PAGE));
                }
                if self.anon.len() > 8 || self.anon.iter().map(|a| a.1).sum::<u64>() > 256 {
                    let (va, pages) = self.anon.remove(0);
                    r(Sysno::MemUnmap, [va, pages * PAGE, 0, 0, 0])
                        .map_err(|e| self.fail(format!("mem_unmap of its own {pages} pages: {e:?}")))?;
                }
            }
            5 | 6 => {
                // mem_unmap: own pages exactly, cut or overrun; never the heap's.
                let (addr, len) = match rng.below(4) {
                    0 | 1 if !self.anon.is_empty() => {
                        let i = rng.below(self.anon.len() as u64) as usize;
                        let (va, pages) = self.anon[i];
                        if rng.one_in(2) {
                            self.anon.remove(i);
                            r(Sysno::MemUnmap, [va, pages * PAGE, 0, 0, 0])
                                .map_err(|e| self.fail(format!("mem_unmap of its own mapping: {e:?}")))?;
                            return Ok(());
                        }
                        (va, (pages + 1 + rng.below(1 << 30)) * PAGE)
                    }
                    2 => (self.ptr(rng), rng.pick(&[PAGE, 1 << 46, !(PAGE - 1)])),
                    _ => (main as fn() -> i32 as usize as u64 & !(PAGE - 1), PAGE),
                };
                let got = r(Sysno::MemUnmap, [addr, len, 0, 0, 0]);
                if got.is_ok() {
                    return Err(self.fail(format!("mem_unmap({addr:#x}, {len:#x}) of pages not all its own")));
                }
            }
            7 => {
                let room = rng.pick(&[0u64, 1, 3, 8]);
                let size = core::mem::size_of::<DeviceInfo>() as u64;
                let (ptr, len) = match rng.below(3) {
                    0 => (self.ptr(rng), rng.pick(&[size, 1 << 40, u64::MAX])),
                    _ => (self.scratch.as_mut_ptr() as u64, (room * size).min(self.scratch.len() as u64)),
                };
                match r(Sysno::DeviceList, [ptr, len, 0, 0, 0]) {
                    Ok(n) if n as usize != self.bdfs.len() => {
                        return Err(self.fail(format!("device_list says {n} devices, not {}", self.bdfs.len())));
                    }
                    _ => {}
                }
            }
            8 => {
                let bdf = self.bdf(rng);
                if r(Sysno::DeviceClaim, [bdf, 0, 0, 0, 0]).is_ok() && !self.claimed.iter().any(|c| c.0 == bdf) {
                    let command = sys::device_config_read(bdf, 4, 2).unwrap_or(0);
                    self.claimed.push((bdf, command));
                }
            }
            9 => {
                let bdf = self.bdf(rng);
                let index = rng.pick(&[0, 1, 5, 6, u64::MAX]);
                if self.bars < 4 {
                    if let Ok(va) = r(Sysno::DeviceMapBar, [bdf, index, 0, 0, 0]) {
                        self.bars += 1;
                        // A BAR is no memory a device may be given, nor a buffer the kernel copies from.
                        self.bad.push(va);
                    }
                }
            }
            10 | 11 => {
                let bdf = self.bdf(rng);
                let offset = rng.pick(&[0, 4, 6, 0x10, 0x3C, 0x40, 0xFFC, 0xFFF, 0x1000, u64::MAX - 1, 1 << 63]);
                let width = rng.pick(&[0, 1, 2, 3, 4, 8]);
                let got = r(Sysno::DeviceConfigRead, [bdf, offset, width, 0, 0]);
                if got.is_ok()
                    && (!matches!(width, 1 | 2 | 4)
                        || offset.saturating_add(width) > 4096
                        || !offset.is_multiple_of(width))
                {
                    return Err(self.fail(format!("config read +{offset:#x}/{width} succeeded")));
                }
            }
            12 => {
                // Config writes: the command register and device-specific bytes
                // (restored at the end), BARs and garbage (refused, logged: rare).
                if !rng.one_in(4) {
                    return Ok(());
                }
                let bdf = self.bdf(rng);
                let (offset, width) = rng.pick(&[(4, 2), (4, 2), (0x40, 4), (0x10, 4), (0x1000, 4), (u64::MAX - 1, 2)]);
                let value = rng.pick(&[0, 6, 7, 0x400, 0xFFFF, 1 << 40]);
                let got = r(Sysno::DeviceConfigWrite, [bdf, offset, width, value, 0]);
                if got.is_ok() && (offset >= 4096 || value >> (8 * width) != 0 || offset == 0x10) {
                    return Err(self.fail(format!("config write +{offset:#x} = {value:#x} succeeded")));
                }
            }
            13 => {
                let name: &[u8] = rng.pick(&[&b"hello"[..], b"no-such-program", b"", b"test-fuzz/../hello"]);
                let got = match rng.below(4) {
                    0 => r(Sysno::TaskSpawn, [self.ptr(rng), 5, 0, 0, 0]),
                    1 => r(Sysno::TaskSpawn, [self.not_utf8.as_ptr() as u64, 8, 0, 0, 0]),
                    2 => r(Sysno::TaskSpawn, [self.scratch.as_ptr() as u64, 65 + rng.below(1 << 40), 0, 0, 0]),
                    _ if name == b"hello" && self.spawns >= MAX_SPAWNS => return Ok(()),
                    _ => r(Sysno::TaskSpawn, [name.as_ptr() as u64, name.len() as u64, 0, 0, 0]),
                };
                match got {
                    Ok(_) if name == b"hello" => self.spawns += 1,
                    Ok(id) => return Err(self.fail(format!("task_spawn of a bad name made task {id}"))),
                    Err(Errno::EAGAIN) => {}
                    Err(_) => {}
                }
            }
            14 => {
                let bdf = self.bdf(rng);
                let _ = r(Sysno::DeviceIrqEnable, [bdf, 0, 0, 0, 0]);
                let got = r(Sysno::DeviceIrqWait, [bdf, rng.pick(&[0, 1000]), 0, 0, 0]);
                if got.is_ok_and(|n| n == 0) {
                    return Err(self.fail("device_irq_wait returned 0 interrupts".into()));
                }
            }
            15 => {
                // test_canary: counters, the mailbox (read), physical addresses, unknown ops.
                let op = rng.pick(&[2, 4, 5, 5, 8, 9, 99, u64::MAX]);
                let p = self.ptr(rng);
                let a = rng.pick(&[0, 1, 7, 8, u64::MAX, p]);
                let got = r(Sysno::TestCanary, [op, a, 0, 0, 0]);
                if matches!(op, 9 | 99 | u64::MAX) && got.is_ok() {
                    return Err(self.fail(format!("test_canary op {op:#x} succeeded")));
                }
            }
            17 => {
                // info_query: every report topic with random subjects, IOVAs and buffers
                // (not TRACE, which would switch the register trace on); unknown topics are EINVAL.
                let topic = rng.pick(&[0, 1, 2, 3, 4, 5, 7, 99, u64::MAX]);
                let any = rng_next(rng);
                let subject = rng.pick(&[0, 1, u64::MAX, abi::bdf(0, 0, 1, 0), any]);
                let arg = rng_next(rng);
                let (p, len) = (self.ptr(rng), rng.pick(&[0, 1, 64, 4096, u64::MAX]));
                let got = r(Sysno::InfoQuery, [topic, subject, arg, p, len]);
                if matches!(topic, 7 | 99 | u64::MAX) && got != Err(Errno::EINVAL) {
                    return Err(self.fail(format!("info_query topic {topic:#x}: {got:?}, not EINVAL")));
                }
            }
            16 => {
                let far = 21 + rng.below(1 << 40);
                let n = rng.pick(&[21, 22, 64, 1 << 20, u64::MAX, far]);
                let a = [rng_next(rng), self.ptr(rng), 0, u64::MAX, 1];
                let got = abi::decode(sys::raw(n, a));
                if got != Err(Errno::ENOSYS) {
                    return Err(self.fail(format!("syscall {n:#x}: {got:?}, not ENOSYS")));
                }
            }
            _ => {
                // iommufd with garbage registers (the struct pointer and the op).
                let op = rng.pick(&[1, 5, 12, 16, 0, 17]);
                let p = self.ptr(rng);
                let got = abi::decode(sys::raw(Sysno::Iommufd as u64, [op, p, rng_next(rng), 0, 0]));
                let want = if (1..=16).contains(&op) { Errno::EFAULT } else { Errno::ENOTTY };
                self.expect(&format!("iommufd op {op} with its struct at {p:#x}"), got, want)?;
            }
        }
        Ok(())
    }

    /// Gives back what the syscall half holds (claims and BARs go at exit).
    fn finish(&mut self) -> Result<(), String> {
        for (va, pages) in core::mem::take(&mut self.anon) {
            r(Sysno::MemUnmap, [va, pages * PAGE, 0, 0, 0])
                .map_err(|e| self.fail(format!("final mem_unmap of {pages} pages at {va:#x}: {e:?}")))?;
        }
        for &(bdf, command) in &self.claimed {
            let _ = sys::device_config_write(bdf, 4, 2, command);
        }
        Ok(())
    }
}

fn rng_next(rng: &mut Rng) -> u64 {
    rng.bits()
}

/// The seed: `fuzz.seed=` (`cargo xtask fuzz syscalls` passes a new one
/// each run), else a fixed one mixed with the name of the first IOMMU unit:
/// the suite's boots make the same calls every time, so their verdict is
/// reproducible (a longer run with new seeds is where new bugs are found).
fn seed(unit: &str) -> u64 {
    let salt = unit.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    sys::test_fuzz_param(0).unwrap_or((0x5EED_5EED_5EED_5EED ^ salt) & (i64::MAX as u64))
}

fn main() -> i32 {
    let mut list = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut list).unwrap_or(0) as usize;
    let all = &list[..n.min(64)];
    let mut devices = Vec::new();
    let mut unit = String::from("none");
    let mut claimed = Vec::new();
    for d in all.iter().filter(|d| (d.vendor, d.device) == (0x1234, 0x11E8)) {
        if sys::device_claim(d.bdf).is_err() {
            continue;
        }
        claimed.push((d.bdf, sys::device_config_read(d.bdf, 4, 2).unwrap_or(0)));
        if d.flags & abi::DEVICE_DMA_ALLOWED == 0 {
            continue;
        }
        let Ok(dev) = iommufd::device_bind(d.bdf) else { continue };
        if let Ok(u) = iommufd::hw_info(dev, &mut [Default::default(); 16]) {
            if devices.is_empty() {
                unit = String::from(u.name());
            }
        }
        let _ = iommufd::destroy(dev);
        devices.push((d.bdf, devices.len()));
    }
    let parallel = sys::test_mailbox_get(PARALLEL_SLOT) == Ok(PARALLEL);
    // Workers of the parallel round start together: the clock tells them apart.
    let seed = if parallel {
        (seed(&unit) ^ sys::clock().unwrap_or(0).wrapping_mul(0x9E37_79B9)) & (i64::MAX as u64)
    } else {
        seed(&unit)
    };
    // A warm-up run (`test-fuzz` puts its call count in mailbox slot 7) prints no results.
    let warm_up = sys::test_mailbox_get(WARM_UP_SLOT).unwrap_or(0);
    let calls = if warm_up != 0 { warm_up } else { sys::test_fuzz_param(1).unwrap_or(DEFAULT_CALLS) };
    let tag = if warm_up != 0 { "warm-up " } else { "" };
    println!("# user.fuzz: {tag}seed {seed:#x}, {calls} calls, unit {unit}, {} device(s) (replay: cargo xtask fuzz syscalls --seed {seed:#x})", devices.len());

    // Hostile memory: unmapped, kernel, non-canonical, wrapping, a read-only run, a BAR.
    let mut bad =
        alloc::vec![0, 8, 0x6800_0000_0000, 0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000, u64::MAX - PAGE + 1, 1 << 63];
    if let Some(&(bdf, _)) = claimed.first() {
        if let Ok(va) = sys::device_map_bar(bdf, 0) {
            bad.push(va);
        }
    }
    let read_only = sys::mem_map(0, 4 * PAGE, abi::PROT_READ).ok().map(|va| (va, 4));
    let targets = Targets { bad_vas: bad.clone(), read_only };
    let mut s = Sys {
        seed,
        anon: Vec::new(),
        bdfs: all.iter().map(|d| d.bdf).collect(),
        claimed,
        bars: 0,
        spawns: 0,
        calls: 0,
        bad,
        scratch: alloc::vec![0u8; 8 * core::mem::size_of::<DeviceInfo>()],
        not_utf8: [0xFF, 0xFE, 0xC0, 0x80, 0xFF, 0xFF, 0xFF, 0xFF],
    };

    let start = sys::clock().unwrap_or(0);
    let mut door = SyscallDoor::new(devices);
    let mut f = Fuzzer::new(&mut door, seed, targets);
    let mut result = Ok(());
    while result.is_ok() && f.stats().calls + s.calls < calls {
        result = f.step();
        if result.is_ok() && f.rng().one_in(3) {
            let mut rng = f.rng().clone();
            result = s.step(&mut rng);
            // The syscall half draws from its own copy; keep the sequences apart but seeded.
            *f.rng() = Rng::new(rng.bits());
        }
    }
    let stats = f.stats();
    let elapsed_ms = sys::clock().unwrap_or(0).saturating_sub(start) / 1_000_000;
    let total = stats.calls + s.calls;
    let mut failed = false;
    let clean = |f: Fuzzer<'_>, s: &mut Sys| f.finish().and_then(|_| s.finish());
    if warm_up != 0 {
        let r = result.and_then(|()| clean(f, &mut s));
        if let Some(va) = read_only.map(|r| r.0) {
            let _ = sys::mem_unmap(va, 4 * PAGE);
        }
        println!("# user.fuzz: warm-up of {total} calls: {r:?}");
        if parallel && r.is_err() {
            let _ = sys::test_mailbox_set(PARALLEL_SLOT, PARALLEL_FAILED);
        }
        return i32::from(r.is_err());
    }
    match &result {
        Ok(()) => println!(
            "ok 1 user.fuzz.calls # {total} calls ({} iommufd, {} ok, {} mappings; {} other syscalls) in {elapsed_ms} ms, seed {seed:#x}",
            stats.calls, stats.ok, stats.mappings, s.calls
        ),
        Err(why) => {
            failed = true;
            println!("not ok 1 user.fuzz.calls # {why}");
        }
    }
    let clean = clean(f, &mut s);
    if let Some(va) = read_only.map(|r| r.0) {
        let _ = sys::mem_unmap(va, 4 * PAGE);
    }
    match clean {
        Ok(()) => println!("ok 2 user.fuzz.worker_clean"),
        Err(why) => {
            failed = true;
            println!("not ok 2 user.fuzz.worker_clean # {why}");
        }
    }
    i32::from(failed)
}

userlib::entry!(main);
