//! The hardware-specific door on an SMMUv3, in the SMMU's own language: real
//! hardware nesting (SMMUv3 §3.3.2, STE.Config = nested):
//!
//! 1. `edu` is bound; the typed `hw_info` must be an SMMUv3 with stage 1
//!    and stage 2 (IDR0.S1P, S2P) that takes `hwpt_data::SMMUV3_STE` children.
//! 2. An IOAS holds this task's context descriptor, AArch64 stage-1
//!    translation tables (4 KiB granule, 48-bit input) and data pages; a
//!    `HWPT_ALLOC_NEST_PARENT` HWPT (the SMMU's stage 2) is created on it.
//! 3. The task writes its CD and tables (addresses are parent IOVAs = IPAs),
//!    creates a nested child from stage-1 STE words pointing at its CD, with
//!    its faults routed to a fault queue, and attaches `edu` to it.
//! 4. DMA through stage-1 IOVAs carries the data; a PTE is changed and takes
//!    effect after a TLBI_NH_VA queued with `hwpt_invalidate`; an illegal
//!    command stops the batch; a DMA to an unmapped stage-1 IOVA is blocked
//!    and read back from the fault queue.
//!
//! On any other IOMMU it says so and exits 0 (`hw-vtd` runs everywhere).
#![no_std]
#![no_main]

use abi::iommufd::{self as a, HWPT_ALLOC_NEST_PARENT, MAP_READABLE, MAP_WRITEABLE};
use edu_driver::{check_that as ensure, fail as step, Edu, Failure};
use userlib::{iommufd, println, sys};
use zerocopy::IntoBytes;

const PAGE: u64 = 4096;
/// Parent IOVAs (IPAs): CD + 4 tables at 0x10_0000.., data at 0x20_0000.. (below edu's 28-bit mask).
const TABLES_IOVA: u64 = 0x10_0000;
const DATA_IOVA: u64 = 0x20_0000;
/// Stage-1 IOVAs the device uses.
const S1_SRC: u64 = 0x0800_0000;
const S1_DST: u64 = 0x0800_1000;
const S1_STRAY: u64 = 0x0800_5000;
/// ASID of the task's context.
const ASID: u64 = 7;

/// AArch64 stage-1 descriptor bits (Arm ARM D8.3): valid, table/page, AttrIndx 0,
/// `AP[1]` unprivileged, `AP[2]` read-only, SH inner, AF.
const VALID: u64 = 1;
const TABLE: u64 = 2;
const AP_UNPRIV: u64 = 1 << 6;
const AP_RDONLY: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;

fn index(iova: u64, level: u32) -> usize {
    ((iova >> (12 + 9 * level)) & 511) as usize
}

/// A stage-1 context descriptor (SMMUv3 §5.4) for 4 KiB-granule AArch64
/// tables at `ttb0`, 48-bit input, TTB1 walks disabled, faults recorded and
/// aborted, ASID [`ASID`], MAIR index 0 = normal write-back memory.
fn context_descriptor(ttb0: u64) -> [u64; 8] {
    let w0 = 16 // T0SZ: 64 - 48
        | 1 << 8 // IR0: write-back
        | 1 << 10 // OR0: write-back
        | 3 << 12 // SH0: inner shareable
        | 1 << 30 // EPD1
        | 1 << 31 // V
        | 2 << 32 // IPS: 40-bit intermediate addresses
        | 1 << 41 // AA64
        | 1 << 45 // R: record faults
        | 1 << 46 // A: abort faulting transactions
        | ASID << 48;
    [w0, ttb0, 0, 0xFF, 0, 0, 0, 0]
}

/// TLBI_NH_VA (SMMUv3 §4.4.2, opcode 0x12) for one leaf at `iova` in [`ASID`];
/// the kernel supplies the VMID.
fn tlbi_nh_va(iova: u64) -> a::HwptSmmuv3Command {
    a::HwptSmmuv3Command { cmd: [0x12 | ASID << 48, iova & !0xFFF | 1] }
}

fn expect_fault(queue: u32, dev: u32, child: u32, iova: u64) -> Result<(), Failure> {
    let mut records = [a::FaultRecord::default(); 8];
    let (n, _) = iommufd::fault_read(queue, &mut records, 500).map_err(step("fault_read"))?;
    let r = &records[..n];
    ensure(n >= 1 && r.iter().all(|f| f.dev_id == dev && f.hwpt_id == child), "fault record names the wrong device")?;
    ensure(r.iter().any(|f| f.address & !(PAGE - 1) == iova), "no fault record at the blocked IOVA")?;
    println!(
        "hw-smmuv3: fault record: device {} hwpt {} address {:#x} reason {:#x}",
        r[0].dev_id, r[0].hwpt_id, r[0].address, r[0].reason
    );
    Ok(())
}

fn run(bdf: u64) -> Result<bool, Failure> {
    let edu = Edu::open(bdf)?;
    let dev = iommufd::device_bind(bdf).map_err(step("bind"))?;
    let mut typed = [0u8; 64];
    let info = iommufd::hw_info_typed(dev, &mut typed).map_err(step("hw_info"))?;
    if info.data_type != a::hw_kind::SMMUV3 {
        println!("hw-smmuv3: skipped: the unit is not an SMMUv3 (kind {})", info.data_type);
        return Ok(false);
    }
    let (idr, _) =
        zerocopy::FromBytes::read_from_prefix(&typed).map(|(v, r): (a::HwInfoSmmuv3, _)| (v, r)).unwrap_or_default();
    println!(
        "hw-smmuv3: IDR0 {:#x} IDR1 {:#x} IDR5 {:#x} IIDR {:#x} AIDR {:#x}",
        idr.idr[0], idr.idr[1], idr.idr[5], idr.iidr, idr.aidr
    );
    let (s1p, s2p) = (idr.idr[0] & 2 != 0, idr.idr[0] & 1 != 0);
    if !(s1p && s2p) || info.hwpt_alloc_types & 1 << a::hwpt_data::SMMUV3_STE == 0 {
        println!("hw-smmuv3: skipped: this SMMU cannot nest (S1P {s1p}, S2P {s2p})");
        return Ok(false);
    }
    let mem = sys::Pages::map(9).map_err(step("mem_map"))?;
    let ioas_id = iommufd::ioas_alloc().map_err(step("ioas_alloc"))?;
    let rw = MAP_READABLE | MAP_WRITEABLE;
    iommufd::map(ioas_id, mem.va, 5 * PAGE, Some(TABLES_IOVA), MAP_READABLE).map_err(step("map CD and tables"))?;
    iommufd::map(ioas_id, mem.va + 5 * PAGE, 4 * PAGE, Some(DATA_IOVA), rw).map_err(step("map data"))?;
    let parent = iommufd::hwpt_alloc(dev, ioas_id, HWPT_ALLOC_NEST_PARENT, a::hwpt_data::NONE, &[], None)
        .map_err(step("NEST_PARENT hwpt_alloc"))?;
    let ipa = |n: u64| TABLES_IOVA + n * PAGE;
    let data = |n: u64| DATA_IOVA + n * PAGE;
    let cd = context_descriptor(ipa(1));
    mem.words(0)[..8].copy_from_slice(&cd);
    mem.words(1)[index(S1_SRC, 3)] = ipa(2) | VALID | TABLE;
    mem.words(2)[index(S1_SRC, 2)] = ipa(3) | VALID | TABLE;
    mem.words(3)[index(S1_SRC, 1)] = ipa(4) | VALID | TABLE;
    let page = |pa: u64, ro: bool| pa | VALID | TABLE | AF | SH_INNER | AP_UNPRIV | if ro { AP_RDONLY } else { 0 };
    mem.words(4)[index(S1_SRC, 0)] = page(data(0), true);
    mem.words(4)[index(S1_DST, 0)] = page(data(1), false);
    // STE words: V, Config = S1 translate (nested over the parent's stage 2),
    // S1Fmt 0 (one CD), S1ContextPtr = the CD's IPA; word 1: S1CIR/S1COR
    // write-back, S1CSH inner shareable.
    let ste = a::HwptSmmuv3Ste { ste: [1 | 0b101 << 1 | ipa(0), 1 << 2 | 1 << 4 | 3 << 6] };
    let queue = iommufd::fault_queue_alloc(64).map_err(step("fault_queue_alloc"))?;
    let child = iommufd::hwpt_alloc(dev, parent, 0, a::hwpt_data::SMMUV3_STE, ste.as_bytes(), Some(queue))
        .map_err(step("nested hwpt_alloc"))?;
    iommufd::device_attach(dev, child).map_err(step("attach to the nested HWPT"))?;
    for (i, b) in mem.bytes(5).iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(11) ^ 0xA5;
    }
    mem.bytes(6).fill(0);
    edu.dma(S1_SRC, false)?;
    edu.dma(S1_DST, true)?;
    ensure(mem.bytes(6) == mem.bytes(5), "data did not arrive through the nested stages")?;
    // Repoint S1_DST at data page 2; the SMMU may keep the old entry until TLBI_NH_VA.
    mem.words(4)[index(S1_DST, 0)] = page(data(2), false);
    let tlbi = tlbi_nh_va(S1_DST);
    let (handled, r) = iommufd::hwpt_invalidate(child, a::hwpt_data::SMMUV3_STE, tlbi.as_bytes(), 16);
    r.map_err(step("hwpt_invalidate TLBI_NH_VA"))?;
    ensure(handled == 1, "the TLBI was not handled")?;
    mem.bytes(7).fill(0);
    edu.dma(S1_DST, true)?;
    ensure(mem.bytes(7) == mem.bytes(5), "the changed PTE did not take effect after TLBI_NH_VA")?;
    // A batch with an illegal command (CMD_SYNC, 0x46, is the kernel's) stops there.
    let batch: [a::HwptSmmuv3Command; 2] = [tlbi_nh_va(S1_SRC), a::HwptSmmuv3Command { cmd: [0x46, 0] }];
    let (handled, r) = iommufd::hwpt_invalidate(child, a::hwpt_data::SMMUV3_STE, batch.as_bytes(), 16);
    ensure(handled == 1 && r == Err(abi::Errno::EINVAL), "an illegal command was not refused in place")?;
    // Stray DMA: no stage-1 entry.
    mem.bytes(8).fill(0xCC);
    edu.dma(S1_STRAY, true)?;
    ensure(mem.bytes(8).iter().all(|&b| b == 0xCC), "a DMA to an unmapped stage-1 IOVA reached memory")?;
    expect_fault(queue, dev, child, S1_STRAY)?;
    println!("hw-smmuv3: nested stage-1 DMA ok, PTE change after TLBI_NH_VA ok, illegal command refused, stray DMA blocked and reported");
    iommufd::device_attach(dev, ioas_id).map_err(step("re-attach to the IOAS"))?;
    ensure(iommufd::destroy(parent) == Err(abi::Errno::EBUSY), "a parent with children was destroyed")?;
    iommufd::destroy(child).map_err(step("destroy child"))?;
    iommufd::destroy(parent).map_err(step("destroy parent"))?;
    iommufd::destroy(queue).map_err(step("destroy fault queue"))?;
    Ok(true)
}

fn main() -> i32 {
    let Some(d) = edu_driver::first_behind_iommu() else {
        println!("hw-smmuv3: no edu behind an IOMMU");
        return 1;
    };
    match run(d.bdf) {
        Ok(ran) => {
            if ran {
                println!("hw-smmuv3: passed");
            }
            0
        }
        Err(f) => {
            println!("hw-smmuv3: failed: {f}");
            1
        }
    }
}

userlib::entry!(main);
