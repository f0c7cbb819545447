//! The main demo: runs the generic drivers on every device they drive —
//! `edu` (`user/drivers/edu`), NVMe controllers (`user/drivers/nvme`) and
//! virtio-blk devices (`user/drivers/virtio-blk`) —
//! and prints one line per device, then `demo: passed <n> devices`. Exits 1
//! if any device failed or none could be driven.
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
    let kind = |d: &DeviceInfo| {
        if (d.vendor, d.device) == edu_driver::EDU {
            Some("edu")
        } else if d.class == nvme_driver::CLASS_NVME {
            Some("nvme")
        } else if (d.vendor, d.device) == virtio_blk_driver::VIRTIO_BLK {
            Some("virtio-blk")
        } else {
            None
        }
    };
    let devices = buf[..(n as usize).min(buf.len())].iter().filter_map(|d| kind(d).map(|k| (d, k)));
    let (mut passed, mut failed) = (0, 0);
    for (d, dev_kind) in devices {
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
        let result = match dev_kind {
            "nvme" => nvme_driver::check(d.bdf).map(|r| {
                println!(
                    "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} nvme: {} blocks of {} bytes written, flushed, read back; \
                     read through an unmapped PRP list: {}; completions {}",
                    r.blocks,
                    r.block_size,
                    r.stray,
                    if r.interrupts { "by interrupt" } else { "polled" }
                );
                r.unit
            }),
            "virtio-blk" => virtio_blk_driver::check(d.bdf).map(|r| {
                let how = if r.interrupts { "by interrupt" } else { "polled" };
                match r.stray {
                    Some(e) => println!(
                        "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} virtio-blk: {} sectors written, flushed, read back; \
                         read into an unmapped IOVA: {e}, device restarted; completions {how}",
                        r.sectors
                    ),
                    None => println!(
                        "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} virtio-blk: {} sectors written, flushed, read back; \
                         read into an unmapped IOVA: completed, every write to it dropped; completions {how}",
                        r.sectors
                    ),
                }
                r.unit
            }),
            _ => edu_driver::check(d.bdf).map(|r| r.unit),
        };
        match result {
            Ok(unit) => {
                println!(
                    "demo: {seg:04x}:{bus:02x}:{dev:02x}.{func} iommu={} kind={} dev={dev_kind} dma=ok stray-dma=blocked",
                    unit.name(),
                    unit.kind_name()
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
