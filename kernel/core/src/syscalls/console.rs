//! `log(ptr, len)`: a task's text on the console.

use crate::user_access::copy_from_user;
use abi::{Errno, SysResult};

/// `log`: prints `len` bytes of UTF-8 at `ptr` (at most `abi::LOG_MAX`).
pub fn sys_log(ptr: u64, len: u64) -> SysResult {
    if len as usize > abi::LOG_MAX {
        return Err(Errno::E2BIG);
    }
    let bytes = copy_from_user(ptr, len as usize)?;
    let text = core::str::from_utf8(&bytes).map_err(|_| Errno::EINVAL)?;
    crate::console::print(format_args!("{text}"));
    Ok(len)
}
