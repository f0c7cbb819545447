//! The main demo: runs the generic `edu` driver (`user/drivers/edu`) on every
//! `edu` function and prints one line per device, then `demo: passed <n>
//! devices`. Exits 1 if any device failed or none could be driven.
#![no_std]
#![no_main]

use abi::DeviceInfo;
use userlib::{println, sys};

fn bdf_text(bdf: u64) -> (u64, u64, u64, u64) {
    (bdf >> 16 & 0xFFFF, bdf >> 8 & 0xFF, bdf >> 3 & 0x1F, bdf & 7)
}

fn main() -> i32 {
    let mut buf = [DeviceInfo::default(); 64];
    let Ok(n) = sys::device_list(&mut buf) else {
        println!("demo: device_list failed");
        return 1;
    };
    let edus = buf[..(n as usize).min(buf.len())].iter().filter(|d| (d.vendor, d.device) == edu_driver::EDU);
    let (mut passed, mut failed) = (0, 0);
    for d in edus {
        let (seg, bus, dev, func) = bdf_text(d.bdf);
        if d.flags & abi::DEVICE_BEHIND_IOMMU == 0 {
            println!("demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} iommu=none skipped (no IOMMU translates it)");
            continue;
        }
        if d.flags & abi::DEVICE_DMA_ALLOWED == 0 {
            println!(
                "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} skipped (its IOMMU does not remap interrupts; \
                 boot with iommu.unsafe_interrupts=allow to drive it anyway)"
            );
            continue;
        }
        match edu_driver::check(d.bdf) {
            Ok(r) => {
                println!(
                    "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} iommu={} kind={} dma=ok stray-dma=blocked",
                    r.unit.name(),
                    r.unit.kind_name()
                );
                passed += 1;
            }
            Err(f) => {
                match f.errno {
                    Some(e) => println!("demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} failed: {} ({e})", f.what),
                    None => println!("demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} failed: {}", f.what),
                }
                failed += 1;
            }
        }
    }
    if failed > 0 || passed == 0 {
        println!("demo: failed ({passed} passed, {failed} failed)");
        return 1;
    }
    println!("demo: passed {passed} devices");
    0
}

userlib::entry!(main);
