//! The runtime of portcullis user programs.
//!
//! A program is a `#![no_std] #![no_main]` binary that defines
//! `#[unsafe(no_mangle)] fn main() -> i32` (see [`entry!`]); this crate provides `_start`,
//! a panic handler that reports and exits with status 101, typed syscall
//! wrappers ([`sys`]), [`println!`], and a heap ([`heap`]) so programs can use
//! `alloc` (`Vec`, `Box`, `String`).
#![no_std]

pub mod driver;
pub mod heap;
pub mod iommufd;
pub mod sys;
pub mod time;

extern crate alloc;

pub use abi::{Errno, SysResult};

/// Formats into a fixed buffer and sends it to the kernel log in one syscall.
pub struct LineWriter {
    buf: [u8; 512],
    len: usize,
}

impl LineWriter {
    /// An empty writer.
    pub const fn new() -> Self {
        LineWriter { buf: [0; 512], len: 0 }
    }

    /// Sends what was written.
    pub fn flush(&mut self) {
        if self.len > 0 {
            let text = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>");
            let _ = sys::log(text);
            self.len = 0;
        }
    }
}

impl Default for LineWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for LineWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Prints a line to the kernel log.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut w = $crate::LineWriter::new();
        let _ = writeln!(w, $($arg)*);
        w.flush();
    }};
}

/// Declares the program's `main`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "Rust" fn __portcullis_main() -> i32 {
            $main()
        }
    };
}

unsafe extern "Rust" {
    fn __portcullis_main() -> i32;
}

/// First Rust code of every program (called by the `_start` stub).
#[unsafe(no_mangle)]
extern "C" fn __portcullis_start() -> ! {
    // SAFETY: every program defines `__portcullis_main` through `entry!`.
    let status = unsafe { __portcullis_main() };
    sys::exit(i64::from(status))
}

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call __portcullis_start",
    "    ud2",
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    mov x29, #0",
    "    mov x30, #0",
    "    bl __portcullis_start",
    "    brk #0",
);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("user panic: {info}");
    sys::exit(101)
}
