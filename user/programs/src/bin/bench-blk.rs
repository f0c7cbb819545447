//! `cargo xtask bench blk`: what the IOMMU costs real I/O. On every NVMe
//! controller and virtio-blk device it finds (through the generic drivers,
//! one request in flight, completions by MSI-X where the kernel routes it),
//! 4 KiB random reads and 128 KiB
//! sequential reads, each in two modes:
//!
//! - `premapped`: the buffer is mapped once, before the loop;
//! - `strict`: the buffer is mapped before each I/O and unmapped after it
//!   (the unmap's invalidation waited for), as a driver that never leaves a
//!   buffer reachable between I/Os does.
//!
//! On a machine without an IOMMU booted with `iommu.noiommu=allow` (the
//! xtask's "none" column) the devices sit behind the no-IOMMU unit (IOVA =
//! physical address, nothing translated) and only `premapped` runs: there is
//! no translation to tear down between I/Os.
//!
//! Prints `RESULT dev=<nvme|virtio-blk> mode=<premapped|strict>
//! pattern=<rand4k|seq128k> ios=<n> ns=<total> iops=<n> mbps=<n>` per run;
//! figures only, nothing asserted (the machine is noisy; the xtask prints
//! the ratios).
#![no_std]
#![no_main]

use abi::DeviceInfo;
use userlib::driver::{fail, Failure};
use userlib::{println, sys};

const K4: u64 = 4096;
const K128: u64 = 128 * 1024;
/// I/Os per random run and per sequential run.
const RANDOM_IOS: u64 = 2000;
const SEQUENTIAL_IOS: u64 = 200;

/// A device under test: read `len` bytes at byte offset `at` into `iova`
/// (with `prp2` for NVMe), and its size.
trait Reader {
    fn name(&self) -> &'static str;
    fn bytes(&self) -> u64;
    fn read(&mut self, at: u64, len: u64, iova: u64, prp2: u64) -> Result<(), Failure>;
}

struct Nvme(nvme_driver::Nvme);

impl Reader for Nvme {
    fn name(&self) -> &'static str {
        "nvme"
    }
    fn bytes(&self) -> u64 {
        self.0.blocks * self.0.block_size
    }
    fn read(&mut self, at: u64, len: u64, iova: u64, prp2: u64) -> Result<(), Failure> {
        let bs = self.0.block_size;
        self.0.rw(false, at / bs, (len / bs) as u32, iova, prp2).map_err(|_| Failure::new("an NVMe read failed"))
    }
}

struct Blk(virtio_blk_driver::VirtioBlk);

impl Reader for Blk {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }
    fn bytes(&self) -> u64 {
        self.0.sectors * 512
    }
    fn read(&mut self, at: u64, len: u64, iova: u64, _prp2: u64) -> Result<(), Failure> {
        self.0.rw(false, at / 512, iova, len as u32).map_err(|_| Failure::new("a virtio-blk read failed"))
    }
}

/// xorshift64: the random offsets (the same sequence in every mode).
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One run: `ios` reads of `len` bytes, random or sequential, in `strict`
/// mode or not. The buffer (`t`) is an NVMe transfer (its PRP list stays
/// mapped: it is the driver's, like a queue) reused by virtio-blk too.
fn run(
    dev: &mut dyn Reader,
    ioas: u32,
    t: &nvme_driver::Transfer,
    len: u64,
    random: bool,
    strict: bool,
) -> Result<(), Failure> {
    let ios = if random { RANDOM_IOS } else { SEQUENTIAL_IOS };
    let span = dev.bytes() / len;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    if strict {
        t.unmap(ioas).map_err(fail("unmap the buffer"))?;
    }
    let prp2 = t.prp2(len);
    let start = sys::clock().map_err(fail("clock"))?;
    for i in 0..ios {
        let block = if random { next(&mut seed) % span } else { i % span };
        if strict {
            t.map_again(ioas).map_err(fail("map the buffer"))?;
        }
        dev.read(block * len, len, t.iova, prp2)?;
        if strict {
            t.unmap(ioas).map_err(fail("unmap the buffer"))?;
        }
    }
    let ns = sys::clock().map_err(fail("clock"))?.saturating_sub(start).max(1);
    if strict {
        t.map_again(ioas).map_err(fail("map the buffer"))?;
    }
    let iops = ios * 1_000_000_000 / ns;
    // Bytes per µs = MB/s.
    let mbps = ios * len * 1000 / ns;
    let (mode, pattern) = (if strict { "strict" } else { "premapped" }, if random { "rand4k" } else { "seq128k" });
    println!("bench-blk: {:<10} {mode:<9} {pattern:<7} {iops:>7} IOPS {mbps:>5} MB/s ({ios} I/Os)", dev.name());
    println!("RESULT dev={} mode={mode} pattern={pattern} ios={ios} ns={ns} iops={iops} mbps={mbps}", dev.name());
    Ok(())
}

/// Every run on one device whose buffer lives in `ioas` (premapped only
/// when no IOMMU translates it).
fn bench(dev: &mut dyn Reader, ioas: u32, translated: bool) -> Result<(), Failure> {
    let t = nvme_driver::Transfer::new(ioas, K128, true)?;
    for (len, random) in [(K4, true), (K128, false)] {
        // Premapped and strict alternate, so drift in the machine's speed hits both.
        for strict in [false, true, false, true] {
            if strict && !translated {
                continue;
            }
            run(dev, ioas, &t, len, random, strict)?;
        }
    }
    Ok(())
}

fn main() -> i32 {
    let mut buf = [DeviceInfo::default(); 64];
    let n = sys::device_list(&mut buf).unwrap_or(0) as usize;
    let mut benched = 0;
    for d in buf[..n.min(buf.len())].iter().filter(|d| d.flags & (abi::DEVICE_BEHIND_IOMMU | abi::DEVICE_NO_IOMMU) != 0)
    {
        let translated = d.flags & abi::DEVICE_BEHIND_IOMMU != 0;
        let is_nvme = d.class == nvme_driver::CLASS_NVME;
        let is_blk = (d.vendor, d.device) == virtio_blk_driver::VIRTIO_BLK;
        if !is_nvme && !is_blk {
            continue;
        }
        let r = (|| -> Result<(), Failure> {
            sys::device_claim(d.bdf).map_err(fail("claim"))?;
            let b = userlib::driver::bind_to_new_ioas(d.bdf)?;
            if is_nvme {
                bench(&mut Nvme(nvme_driver::Nvme::open(d.bdf, b.ioas)?), b.ioas, translated)
            } else {
                bench(&mut Blk(virtio_blk_driver::VirtioBlk::open(d.bdf, b.ioas)?), b.ioas, translated)
            }
        })();
        match r {
            Ok(()) => benched += 1,
            Err(f) => {
                println!("bench-blk: {:#x} failed: {f}", d.bdf);
                return 1;
            }
        }
    }
    if benched == 0 {
        println!("bench-blk: no NVMe or virtio-blk device behind an IOMMU or iommu.noiommu=allow (cargo xtask bench blk adds them)");
        return 1;
    }
    println!("bench-blk: done");
    0
}
userlib::entry!(main);
