//! `test_canary(op, a, b)`: hooks the isolation, leak and fail-nth tests
//! use, only in a test boot (`ktest=` on the command line): a canary frame
//! DMA must never reach (ops 0, 1), a mailbox between two test tasks (2, 3),
//! a user page's frame (4), kernel counters (5), fail-nth (6, 7) and the
//! syscall fuzzer's parameters (8).

use crate::frames::FRAME_SIZE;
use crate::mm;
use crate::scheduler::with_current;
use abi::{Errno, SysResult};

/// The frame isolation tests aim DMA at, filled with [`canary_byte`].
static CANARY: spin::Once<Option<u64>> = spin::Once::new();

fn canary_byte(i: u64) -> u8 {
    (i as u8).wrapping_mul(37) ^ 0xA5
}

/// Slots two test tasks exchange words through (`test_canary` ops 2 and 3):
/// the isolation tests' victim task publishes what the attacker aims at.
static TEST_MAILBOX: [core::sync::atomic::AtomicU64; 8] = [const { core::sync::atomic::AtomicU64::new(0) }; 8];

/// `test_canary(op, a, b)`: only in a test boot (`ktest=` on the command line).
pub fn sys_test_canary(op: u64, a: u64, b: u64) -> SysResult {
    use core::sync::atomic::Ordering;
    if crate::cmdline_value("ktest").is_none() {
        return Err(Errno::EPERM);
    }
    match op {
        2 => return TEST_MAILBOX.get(a as usize).map(|s| s.load(Ordering::SeqCst)).ok_or(Errno::EINVAL),
        3 => {
            let slot = TEST_MAILBOX.get(a as usize).ok_or(Errno::EINVAL)?;
            slot.store(b, Ordering::SeqCst);
            return Ok(0);
        }
        5 => {
            // Kernel counters a test compares before and after (leak checks).
            return match a {
                0 => Ok(mm::frame_counts().0 as u64),
                1 => Ok(crate::dma::pinned_frames() as u64),
                2 => Ok(crate::heap::usage().0 as u64),
                3 => Ok(crate::dma::quarantined_frames() as u64),
                4 => Ok(crate::scheduler::task_count() as u64),
                5 => with_current(|cur| Ok(cur.iommufd.len() as u64)),
                6 => with_current(|cur| Ok(cur.iommufd.pinned_pages())),
                7 => Ok(crate::iommu::table_frames() as u64),
                8 => with_current(|cur| Ok(cur.table_frames.max(0) as u64)),
                9 => Ok(crate::heap::allocations()),
                10 => Ok(crate::smp::online() as u64),
                11 => Ok(crate::cpu::index() as u64),
                _ => Err(Errno::EINVAL),
            };
        }
        8 => {
            // The syscall fuzzer's parameters from the command line
            // (`fuzz.seed=`, `fuzz.calls=`; decimal or 0x hex), and the
            // concurrency test's operations per worker (`smp.ops=`): `ENOENT` when absent.
            let key = match a {
                0 => "fuzz.seed",
                1 => "fuzz.calls",
                2 => "smp.ops",
                _ => return Err(Errno::EINVAL),
            };
            let v = crate::cmdline_value(key).ok_or(Errno::ENOENT)?;
            let n = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            // Results are 63-bit: a seed keeps its low 63 bits.
            return n.map(|n| n & (i64::MAX as u64)).map_err(|_| Errno::EINVAL);
        }
        // fail-nth (`crate::fail_nth`): 6 arms the calling task's countdown
        // (the `a`-th injection point from now fails; 0 disarms), 7 disarms and
        // returns the points passed since.
        6 => {
            crate::fail_nth::arm(crate::cpu::running(), a);
            return Ok(0);
        }
        7 => return Ok(crate::fail_nth::disarm()),
        4 => return crate::user_access::translate_user(a),
        _ => {}
    }
    let pa = CANARY
        .call_once(|| {
            let pa = mm::alloc_frame()?;
            for i in 0..FRAME_SIZE {
                // SAFETY: `pa` is a frame just allocated for the canary (kept forever), in the direct map.
                unsafe { ((mm::phys_to_virt(pa) + i) as *mut u8).write_volatile(canary_byte(i)) };
            }
            Some(pa)
        })
        .ok_or(Errno::ENOMEM)?;
    match op {
        0 => Ok(pa),
        1 => {
            let intact = (0..FRAME_SIZE).all(|i| {
                // SAFETY: `pa` is the canary frame (allocated once, never freed), in the direct map; read-only.
                let b = unsafe { ((mm::phys_to_virt(pa) + i) as *const u8).read_volatile() };
                b == canary_byte(i)
            });
            if intact {
                Ok(0)
            } else {
                log::error!("test canary at {pa:#x} was written: DMA reached kernel memory");
                Err(Errno::EIO)
            }
        }
        _ => Err(Errno::EINVAL),
    }
}
