//! The smallest user program: says hello with the time and exits 0.
#![no_std]
#![no_main]

use userlib::{println, sys};

fn main() -> i32 {
    let now = sys::clock().unwrap_or(0);
    println!("hello from user space at {} us", now / 1000);
    0
}

userlib::entry!(main);
