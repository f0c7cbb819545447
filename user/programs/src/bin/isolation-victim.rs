//! The victim task of `test-isolation`'s attacks on another task's memory
//! and IOMMU group (protocol in `isolation_protocol.rs`): claims the `edu`
//! function the attacker names, pins a page of its own by mapping it into its
//! own IOAS with the device attached, publishes the page's IOVA and physical
//! address, and after the attack checks the page is unchanged and still
//! reachable by its own device. Exits with the device attached (the kernel's
//! exit path releases it).
#![no_std]
#![no_main]

use abi::iommufd::{MAP_READABLE, MAP_WRITEABLE};
use edu_driver::Edu;
use userlib::{iommufd, sys};

#[path = "../isolation_protocol.rs"]
mod protocol;

use protocol::*;

const PAGE: u64 = 4096;

fn page(va: u64) -> &'static mut [u8] {
    // SAFETY: `va` is a page this task mapped read/write with mem_map and never unmaps.
    unsafe { core::slice::from_raw_parts_mut(va as *mut u8, PAGE as usize) }
}

fn holds_pattern(p: &[u8]) -> bool {
    p.iter().enumerate().all(|(i, &b)| b == pattern(i))
}

/// Runs the victim's side; `Err(i)` names `FAILURES[i]`.
fn run() -> Result<(), u64> {
    let target = sys::test_mailbox_get(SLOT_TARGET).map_err(|_| 10u64)?;
    let bdf = target.checked_sub(1).ok_or(0u64)?;
    let dev = Edu::open(bdf).map_err(|_| 1u64)?;
    let buf = sys::mem_map(0, 2 * PAGE, abi::PROT_READ | abi::PROT_WRITE).map_err(|_| 2u64)?;
    let (mine, check) = (page(buf), page(buf + PAGE));
    for (i, b) in mine.iter_mut().enumerate() {
        *b = pattern(i);
    }
    let rw = MAP_READABLE | MAP_WRITEABLE;
    let space = iommufd::ioas_alloc().map_err(|_| 3u64)?;
    let iova = iommufd::map(space, buf, PAGE, None, rw).map_err(|_| 3u64)?;
    let check_iova = iommufd::map(space, buf + PAGE, PAGE, None, rw).map_err(|_| 3u64)?;
    let id = iommufd::device_bind(bdf).map_err(|_| 4u64)?;
    iommufd::device_attach(id, space).map_err(|_| 4u64)?;
    // Our own device reaches the page through its IOVA: the IOVA is live and the page pinned.
    let round_trip = |check: &mut [u8]| -> Result<bool, u64> {
        check.fill(0);
        dev.dma(iova, false).map_err(|_| 5u64)?;
        dev.dma(check_iova, true).map_err(|_| 5u64)?;
        Ok(holds_pattern(check))
    };
    if !round_trip(check)? {
        return Err(5);
    }
    let pa = sys::test_phys_addr(buf).map_err(|_| 6u64)?;
    sys::test_mailbox_set(SLOT_IOVA, iova).map_err(|_| 10u64)?;
    sys::test_mailbox_set(SLOT_PHYS, pa).map_err(|_| 10u64)?;
    sys::test_mailbox_set(SLOT_STATE, READY).map_err(|_| 10u64)?;
    let start = sys::clock().unwrap_or(0);
    while sys::test_mailbox_get(SLOT_STATE) != Ok(GO) {
        if sys::clock().unwrap_or(u64::MAX).saturating_sub(start) > 30_000_000_000 {
            return Err(7);
        }
        let _ = sys::sleep(5_000_000);
    }
    if !holds_pattern(mine) {
        return Err(8);
    }
    if !round_trip(check)? || !holds_pattern(mine) {
        return Err(9);
    }
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => {
            let _ = sys::test_mailbox_set(SLOT_STATE, DONE_OK);
            0
        }
        Err(i) => {
            let _ = sys::test_mailbox_set(SLOT_STATE, FAILED + i);
            1
        }
    }
}

userlib::entry!(main);
