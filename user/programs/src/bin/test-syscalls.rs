//! User-space tests of every syscall's success and error paths, printed as KTAP.
#![no_std]
#![no_main]

use abi::Errno;
use userlib::{println, sys};

type Check = fn() -> Result<(), &'static str>;

fn log_ok() -> Result<(), &'static str> {
    (sys::log("# log works\n") == Ok(12)).then_some(()).ok_or("log did not return its length")
}

fn log_bad_pointer() -> Result<(), &'static str> {
    // Kernel address, unmapped user address, and a range that wraps.
    let kernel = sys::log_raw(0xFFFF_8000_0000_0000, 8);
    let unmapped = sys::log_raw(0x10, 8);
    let wraps = sys::log_raw(u64::MAX - 4, 16);
    (kernel == Err(Errno::EFAULT) && unmapped == Err(Errno::EFAULT) && wraps == Err(Errno::EFAULT))
        .then_some(())
        .ok_or("a bad pointer was not EFAULT")
}

fn log_too_long() -> Result<(), &'static str> {
    (sys::log_raw(0x40_0000, abi::LOG_MAX as u64 + 1) == Err(Errno::E2BIG)).then_some(()).ok_or("no E2BIG")
}

fn log_invalid_utf8() -> Result<(), &'static str> {
    let bytes = [0xFFu8, 0xFE, b'\n'];
    (sys::log_raw(bytes.as_ptr() as u64, 3) == Err(Errno::EINVAL)).then_some(()).ok_or("no EINVAL")
}

fn unknown_syscall() -> Result<(), &'static str> {
    (abi::decode(sys::raw(9999, [0; 5])) == Err(Errno::ENOSYS)).then_some(()).ok_or("no ENOSYS")
}

fn clock_advances() -> Result<(), &'static str> {
    let a = sys::clock().map_err(|_| "clock failed")?;
    sys::sleep(2_000_000).map_err(|_| "sleep failed")?;
    let b = sys::clock().map_err(|_| "clock failed")?;
    (b >= a + 2_000_000).then_some(()).ok_or("sleep(2 ms) returned early")
}

fn yield_returns() -> Result<(), &'static str> {
    (sys::yield_now() == Ok(0)).then_some(()).ok_or("yield failed")
}

const TESTS: &[(&str, Check)] = &[
    ("log_ok", log_ok),
    ("log_bad_pointer_is_efault", log_bad_pointer),
    ("log_too_long_is_e2big", log_too_long),
    ("log_invalid_utf8_is_einval", log_invalid_utf8),
    ("unknown_syscall_is_enosys", unknown_syscall),
    ("clock_and_sleep", clock_advances),
    ("yield_returns", yield_returns),
];

fn main() -> i32 {
    println!("KTAP version 1");
    println!("1..{}", TESTS.len());
    let mut failed = 0;
    for (i, (name, test)) in TESTS.iter().enumerate() {
        match test() {
            Ok(()) => println!("ok {} user.syscalls.{name}", i + 1),
            Err(why) => {
                failed += 1;
                println!("not ok {} user.syscalls.{name} # {why}", i + 1);
            }
        }
    }
    i32::from(failed != 0)
}

userlib::entry!(main);
