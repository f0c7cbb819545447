//! Run as `init=isolation-no-ktest` in a boot *without* `ktest=` (the
//! `<arch>-isolation-no-ktest` case): every `test_canary` operation — the
//! canary's physical address, its check, the test mailbox and the physical
//! address of a page of ours, the kernel counters, fail-nth — must be refused with `EPERM`, since outside a
//! test boot they would hand a task kernel and physical addresses; so must
//! reading the kernel log (`info_read` topic LOG without `info.log=allow`), and
//! every `info_query` report but the unit list (they name physical addresses). Prints one
//! KTAP result and exits non-zero if anything was not refused.
#![no_std]
#![no_main]

use abi::Errno;
use userlib::{println, sys};

fn main() -> i32 {
    let page = sys::mem_map(0, 4096, abi::PROT_READ | abi::PROT_WRITE);
    // A function this task did not claim: its structures and walks describe
    // another owner's memory (physical addresses).
    let mut list = [abi::DeviceInfo::default(); 8];
    let other = sys::device_list(&mut list).ok().filter(|&n| n > 0).map_or(0, |_| list[0].bdf);
    let q = |topic, subject, arg| sys::info_query(topic, subject, arg, &mut [0u8; 64]);
    let answers = [
        ("canary address", sys::test_canary(0)),
        ("canary check", sys::test_canary(1)),
        ("mailbox read", sys::test_mailbox_get(0)),
        ("mailbox write", sys::test_mailbox_set(0, 1)),
        ("physical address", page.and_then(sys::test_phys_addr)),
        ("kernel counter", sys::test_counter(sys::Counter::FreeFrames)),
        ("fail-nth arm", sys::test_fail_nth(1)),
        ("fail-nth disarm", sys::test_fail_nth_passed()),
        // The kernel log tells of every task's devices and faults.
        ("kernel log", sys::info_read(abi::info_topic::LOG, 0, &mut [0u8; 64])),
        ("a unit's registers", q(abi::query_topic::REGISTERS, 0, 0)),
        ("structures of an unclaimed device", q(abi::query_topic::DEVICE, other, 0)),
        ("walk of an unclaimed device", q(abi::query_topic::WALK, other, 0x1000)),
        ("recent faults", q(abi::query_topic::FAULTS, 0, 0)),
        ("a unit's queue", q(abi::query_topic::QUEUE, 0, 0)),
        ("the register trace switch", q(abi::query_topic::TRACE, u64::MAX, 1)),
    ];
    println!("KTAP version 1");
    println!("1..1");
    match answers.iter().find(|(_, r)| *r != Err(Errno::EPERM)) {
        None => {
            println!("ok 1 user.isolation.test_canary_refused_without_ktest");
            0
        }
        Some((what, r)) => {
            println!("not ok 1 user.isolation.test_canary_refused_without_ktest # {what} not EPERM: {r:?}");
            1
        }
    }
}

userlib::entry!(main);
