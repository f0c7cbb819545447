//! The portcullis syscall ABI, shared by the kernel and `user/userlib`.
//!
//! Calling convention (both architectures): the syscall number and up to five
//! arguments in registers, one result register.
//!
//! | arch | number | arguments | result | instruction |
//! |---|---|---|---|---|
//! | x86_64 | rax | rdi, rsi, rdx, r10, r8 | rax | `syscall` |
//! | aarch64 | x8 | x0–x4 | x0 | `svc #0` |
//!
//! The result is a [`SysResult`] encoded in one register: values `>= 0` are
//! success payloads, `-errno` is an [`Errno`]. Operations that take a struct
//! pass a pointer to it; every such struct begins with `size: u32` and
//! `flags: u32`, the kernel copies `min(size, known)` bytes, rejects unknown
//! flags and non-zero bytes past what it knows, so growing a struct never
//! breaks old callers (../shared/DESIGN.md §3).
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

/// Syscall numbers. Stable: never renumber, only append.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sysno {
    /// `exit(code)`: ends the calling task.
    Exit = 0,
    /// `log(ptr, len)`: writes UTF-8 text to the kernel log.
    Log = 1,
    /// `yield()`: gives up the CPU.
    Yield = 2,
    /// `clock()`: nanoseconds since boot.
    Clock = 3,
    /// `sleep(ns)`: sleeps at least `ns` nanoseconds.
    Sleep = 4,
}

impl Sysno {
    /// Decodes a raw number.
    pub fn from_raw(n: u64) -> Option<Sysno> {
        Some(match n {
            0 => Sysno::Exit,
            1 => Sysno::Log,
            2 => Sysno::Yield,
            3 => Sysno::Clock,
            4 => Sysno::Sleep,
            _ => return None,
        })
    }
}

/// Error codes, numbered like their POSIX namesakes where one exists.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such object.
    ENOENT = 2,
    /// I/O error.
    EIO = 5,
    /// Argument list too long / struct too big.
    E2BIG = 7,
    /// Out of memory.
    ENOMEM = 12,
    /// Bad address (a user pointer that is not valid).
    EFAULT = 14,
    /// Resource busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// Invalid argument.
    EINVAL = 22,
    /// No space left.
    ENOSPC = 28,
    /// Result out of range.
    ERANGE = 34,
    /// Unknown syscall number.
    ENOSYS = 38,
    /// Operation not supported.
    EOPNOTSUPP = 95,
    /// Address already in use.
    EADDRINUSE = 98,
    /// Timed out.
    ETIMEDOUT = 110,
}

impl Errno {
    /// Decodes a positive error number.
    pub fn from_raw(n: i64) -> Option<Errno> {
        use Errno::*;
        [
            EPERM, ENOENT, EIO, E2BIG, ENOMEM, EFAULT, EBUSY, EEXIST, EINVAL, ENOSPC, ERANGE, ENOSYS, EOPNOTSUPP,
            EADDRINUSE, ETIMEDOUT,
        ]
        .into_iter()
        .find(|e| *e as i64 == n)
    }

    /// The POSIX-style name.
    pub fn name(self) -> &'static str {
        use Errno::*;
        match self {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            EIO => "EIO",
            E2BIG => "E2BIG",
            ENOMEM => "ENOMEM",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            EEXIST => "EEXIST",
            EINVAL => "EINVAL",
            ENOSPC => "ENOSPC",
            ERANGE => "ERANGE",
            ENOSYS => "ENOSYS",
            EOPNOTSUPP => "EOPNOTSUPP",
            EADDRINUSE => "EADDRINUSE",
            ETIMEDOUT => "ETIMEDOUT",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A syscall result: a non-negative payload or an error.
pub type SysResult = Result<u64, Errno>;

/// Encodes a result into the return register.
pub fn encode(result: SysResult) -> u64 {
    match result {
        Ok(v) => v & (i64::MAX as u64),
        Err(e) => (-(e as i64)) as u64,
    }
}

/// Decodes the return register (unknown negative values become `EIO`).
pub fn decode(raw: u64) -> SysResult {
    let signed = raw as i64;
    if signed >= 0 {
        Ok(raw)
    } else {
        Err(Errno::from_raw(-signed).unwrap_or(Errno::EIO))
    }
}

/// Longest text one `log` call accepts.
pub const LOG_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn results_round_trip() {
        for v in [0u64, 1, 4096, i64::MAX as u64] {
            assert_eq!(decode(encode(Ok(v))), Ok(v));
        }
        for n in 1..200 {
            if let Some(e) = Errno::from_raw(n) {
                assert_eq!(decode(encode(Err(e))), Err(e));
                assert_eq!(e as i64, n);
            }
        }
        assert_eq!(decode((-9999i64) as u64), Err(Errno::EIO));
    }

    #[test]
    fn numbers_are_stable() {
        assert_eq!(Sysno::from_raw(0), Some(Sysno::Exit));
        assert_eq!(Sysno::from_raw(4), Some(Sysno::Sleep));
        assert_eq!(Sysno::from_raw(5), None);
        assert_eq!(Errno::EFAULT as i64, 14);
        assert_eq!(Errno::ENOSYS.to_string(), "ENOSYS");
    }
}
