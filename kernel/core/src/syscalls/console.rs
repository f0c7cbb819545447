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

/// `info_read(topic, offset, ptr, len)`: a piece of a read-only text the
/// kernel keeps (see [`abi::Sysno::InfoRead`]); copies at most 4 KiB a call.
pub fn sys_info_read(topic: u64, offset: u64, ptr: u64, len: u64) -> SysResult {
    if topic == abi::info_topic::LOG {
        // The log tells of every task's devices and faults: readable only
        // when whoever booted the machine said so (`info.log=allow`, as
        // `cargo xtask run --shell` does), or in a test boot.
        if !super::info::introspection_allowed() {
            return Err(Errno::EPERM);
        }
        if offset != 0 {
            return Err(Errno::EINVAL);
        }
        // One snapshot (the ring moves on as the kernel logs); reading it
        // takes nothing away, so a bad buffer loses nothing.
        let n = (len as usize).min(crate::console::RING_BYTES);
        let mut copy = alloc::vec::Vec::new();
        copy.try_reserve_exact(n).map_err(|_| Errno::ENOMEM)?;
        copy.resize(n, 0);
        let got = crate::console::recent(&mut copy);
        crate::user_access::copy_to_user(ptr, &copy[..got])?;
        return Ok(got as u64);
    }
    let text = match topic {
        abi::info_topic::TOPOLOGY => crate::pci::topology_text().as_bytes(),
        _ => return Err(Errno::EINVAL),
    };
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
    let n = (len.min(4096) as usize).min(text.len() - start);
    if n == 0 {
        return Ok(0);
    }
    crate::user_access::copy_to_user(ptr, &text[start..start + n])?;
    Ok(n as u64)
}

/// `console_read(ptr, len, timeout_ns)`: bytes typed on the console (see
/// [`abi::Sysno::ConsoleRead`]). The buffer is checked writable first, so a
/// bad pointer takes nothing from the console; between polls the task sleeps
/// (10 ms at most), so a waiting reader costs the others nothing.
pub fn sys_console_read(ptr: u64, len: u64, timeout_ns: u64) -> SysResult {
    let len = (len.min(abi::CONSOLE_READ_MAX as u64)) as usize;
    if len == 0 {
        return Ok(0);
    }
    let mut buf = [0u8; abi::CONSOLE_READ_MAX];
    crate::user_access::copy_to_user(ptr, &buf[..len])?;
    let p = crate::platform();
    let deadline = p.uptime_ns().saturating_add(timeout_ns);
    loop {
        let mut n = 0;
        while n < len {
            match p.console_read_byte() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            crate::user_access::copy_to_user(ptr, &buf[..n])?;
            return Ok(n as u64);
        }
        let now = p.uptime_ns();
        if now >= deadline {
            return Ok(0);
        }
        crate::scheduler::sleep_current((deadline - now).min(10_000_000));
    }
}
