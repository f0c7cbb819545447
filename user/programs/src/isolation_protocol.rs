//! What `test-isolation` and its victim task `isolation-victim` tell each
//! other through the test boot's mailbox (`sys::test_mailbox_get` / `_set`,
//! words shared by every task while `ktest=` is on the command line).
//!
//! The attacker writes [`SLOT_TARGET`] (the function the victim claims) and
//! spawns the victim; the victim claims it (its whole IOMMU group), attaches
//! it to an IOAS of its own that maps a page filled with [`pattern`], proves
//! its own device reaches that page, publishes the page's IOVA and physical
//! address and [`READY`]; the attacker attacks and writes [`GO`]; the victim
//! checks its page and answers [`DONE_OK`] or [`FAILED`] + the index of the
//! check in [`FAILURES`], then exits with its device still attached.
#![allow(dead_code)]

/// The function the victim claims: its raw BDF + 1 (0: none).
pub const SLOT_TARGET: u64 = 0;
/// The handshake state below.
pub const SLOT_STATE: u64 = 1;
/// IOVA of the victim's page in the victim's IOAS.
pub const SLOT_IOVA: u64 = 2;
/// Physical address of the victim's page.
pub const SLOT_PHYS: u64 = 3;

/// Nothing yet.
pub const IDLE: u64 = 0;
/// The victim's page is pinned and published.
pub const READY: u64 = 1;
/// The attacker is done.
pub const GO: u64 = 2;
/// The victim found its page unchanged and still reachable by its own device.
pub const DONE_OK: u64 = 3;
/// `FAILED + i`: the victim's check `FAILURES[i]` failed.
pub const FAILED: u64 = 100;

/// What the victim checks, in order.
pub const FAILURES: &[&str] = &[
    "victim: no target in the mailbox",
    "victim: claim and open its edu",
    "victim: mem_map",
    "victim: ioas_alloc / map",
    "victim: bind / attach",
    "victim: its own DMA did not reach its pinned page",
    "victim: test_phys_addr",
    "victim: the attacker never said GO (30 s)",
    "victim: its pinned page was changed by the attack",
    "victim: its own device no longer reaches its page after the attack",
    "victim: mailbox",
];

/// The victim page's contents (not a pattern any attacker step writes).
pub fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7) ^ 0x3C
}
